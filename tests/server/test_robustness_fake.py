"""Disconnects free KV blocks, the waiting queue is bounded (503), the body size is limited
(413), the API key is enforced (401), and SIGINT/SIGTERM stop the server cleanly."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import httpx
import pytest
from server_utils import HTTP

from tritium.server.metrics import parse_prometheus

LONG = {"prompt": "long one", "max_tokens": 400, "temperature": 0}


def aborted_count(server) -> float:
    samples = parse_prometheus(HTTP.get(f"{server.url}/metrics").text)
    return sum(v for k, v in samples.items()
               if k.startswith("tritium:request_success_total") and 'reason="abort"' in k)


def test_stream_disconnect_aborts_and_frees_blocks(make_fake_server):
    server = make_fake_server(step_delay=0.02)  # 400 tokens would take 8 s
    t0 = time.monotonic()
    with HTTP.stream("POST", f"{server.url}/v1/completions", json={**LONG, "stream": True}) as r:
        lines = r.iter_lines()
        got = [next(lines) for _ in range(6)]  # 3 events (each followed by a blank line)
        assert got[0].startswith("data: ")
        busy = server.metrics()
        assert busy["tritium:num_requests_running"] == 1
        assert busy["tritium:kv_cache_usage_perc"] > 0
    # leaving the block closes the connection mid-stream
    idle = server.wait_idle(timeout=5)
    assert idle["tritium:kv_cache_usage_perc"] == 0
    assert idle["tritium:num_requests_running"] == 0
    assert time.monotonic() - t0 < 5  # aborted, not run to its 400 tokens
    assert aborted_count(server) == 1
    assert idle["tritium:generation_tokens_total"] < 400


def test_non_stream_disconnect_aborts(make_fake_server):
    server = make_fake_server(step_delay=0.02)
    with pytest.raises(httpx.ReadTimeout):
        HTTP.post(f"{server.url}/v1/completions", json=LONG, timeout=0.5)
    idle = server.wait_idle(timeout=5)
    assert idle["tritium:kv_cache_usage_perc"] == 0 and idle["tritium:num_requests_running"] == 0
    assert aborted_count(server) == 1


def test_queue_full_answers_503_then_recovers(make_fake_server):
    # one sequence runs, one may wait: of 6 simultaneous requests at least 3 are refused
    server = make_fake_server(step_delay=0.01, max_num_seqs=1, max_waiting_requests=1)
    body = {"prompt": "q", "max_tokens": 20, "temperature": 0}

    async def main():
        async with httpx.AsyncClient(timeout=30) as client:
            return await asyncio.gather(*(client.post(f"{server.url}/v1/completions", json=body)
                                          for _ in range(6)))

    responses = asyncio.run(main())
    codes = sorted(r.status_code for r in responses)
    assert codes.count(503) >= 3 and codes.count(200) >= 1, codes
    for r in responses:
        if r.status_code == 503:
            err = r.json()["error"]
            assert err["code"] == "queue_full" and "busy" in err["message"]
        else:
            assert r.json()["usage"]["completion_tokens"] == 20
    server.wait_idle()
    assert HTTP.post(f"{server.url}/v1/completions", json=body).status_code == 200


def test_request_size_limit(make_fake_server):
    server = make_fake_server(max_request_bytes=1000)
    r = HTTP.post(f"{server.url}/v1/completions", json={"prompt": "x" * 2000})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

    def chunks():  # no Content-Length: the limit must hold while reading
        yield b'{"prompt": "'
        for _ in range(20):
            yield b"y" * 100
        yield b'"}'

    r = HTTP.post(f"{server.url}/v1/completions", content=chunks())
    assert r.status_code == 413
    assert HTTP.post(f"{server.url}/v1/completions", json={"prompt": "ok"}).status_code == 200


def test_api_key(make_fake_server):
    server = make_fake_server(api_key="s3cret")
    body = {"prompt": "k", "max_tokens": 2}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
        r = HTTP.post(f"{server.url}/v1/completions", json=body, headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert HTTP.get(f"{server.url}/v1/models").status_code == 401
    ok = {"Authorization": "Bearer s3cret"}
    assert HTTP.post(f"{server.url}/v1/completions", json=body, headers=ok).status_code == 200
    assert HTTP.get(f"{server.url}/v1/models", headers=ok).status_code == 200
    assert HTTP.get(f"{server.url}/health").status_code == 200  # probes need no key
    assert HTTP.get(f"{server.url}/stats").json()["api_key_required"] is True


def test_engine_crash_is_reported(make_fake_server):
    server = make_fake_server()

    def boom():
        raise RuntimeError("simulated device failure")

    server.engine.engine.step = boom
    r = HTTP.post(f"{server.url}/v1/completions", json={"prompt": "x", "max_tokens": 2})
    assert r.status_code == 503 and "simulated device failure" in r.json()["error"]["message"]
    assert HTTP.get(f"{server.url}/health").status_code == 503
    r = HTTP.post(f"{server.url}/v1/completions", json={"prompt": "x", "max_tokens": 2})
    assert r.status_code == 503


SERVE_SCRIPT = textwrap.dedent("""
    import sys
    from fake_engine import FakeEngine
    from tritium.engine.async_engine import AsyncLLMEngine
    from tritium.server.app import build_app, run_server
    engine = AsyncLLMEngine(FakeEngine(step_delay=0.02))
    app = build_app(engine, model_name="fake-model")
    run_server(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
    print("clean exit", flush=True)
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_shuts_down_cleanly(sig):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.path.dirname(__file__)}
    proc = subprocess.Popen([sys.executable, "-c", SERVE_SCRIPT, str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if HTTP.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.1)
        events = []
        with HTTP.stream("POST", f"{url}/v1/completions",
                         json={**LONG, "stream": True}) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])
                    if len(events) == 2:
                        proc.send_signal(sig)
        # the open stream ended promptly with an error event, then [DONE]
        assert events[-1] == "[DONE]"
        assert json.loads(events[-2])["error"]["code"] == "aborted"
        assert len(events) < 100
        out, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        assert "clean exit" in out
        assert "Traceback" not in err, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
