"""Server logic against the deterministic fake engine: formats, streaming, n, stop, usage,
logprobs, metrics. Cheap (no model); the real-engine tests are in test_openai_real.py."""

from __future__ import annotations

import json

import httpx
import pytest
from server_utils import FAKE_MODEL, HTTP

from tritium.server.metrics import parse_prometheus


def post(server, path, body, **kw):
    return HTTP.post(f"{server.url}{path}", json=body, timeout=30, **kw)


def sse_events(server, path, body) -> list:
    """Every event of a streamed request, parsed ('[DONE]' kept as a string)."""
    events = []
    with HTTP.stream("POST", f"{server.url}{path}", json=body, timeout=30) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line:
                assert line.startswith("data: ")
                data = line[len("data: "):]
                events.append(data if data == "[DONE]" else json.loads(data))
    return events


CHAT = {"model": FAKE_MODEL, "messages": [{"role": "system", "content": "be brief"},
                                          {"role": "user", "content": "hello"}]}


def test_completion_text_and_exact_usage(fake_server):
    r = post(fake_server, "/v1/completions",
             {"model": FAKE_MODEL, "prompt": "héllo", "max_tokens": 7, "temperature": 0})
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "text_completion" and body["model"] == FAKE_MODEL
    (choice,) = body["choices"]
    assert len(choice["text"]) == 7 and choice["finish_reason"] == "length"
    # fake tokens are UTF-8 bytes: 'héllo' is 6 of them
    assert body["usage"] == {"prompt_tokens": 6, "completion_tokens": 7, "total_tokens": 13}
    again = post(fake_server, "/v1/completions",
                 {"model": FAKE_MODEL, "prompt": "héllo", "max_tokens": 7, "temperature": 0})
    assert again.json()["choices"][0]["text"] == choice["text"]  # greedy is deterministic


def test_completion_default_max_tokens_is_16(fake_server):
    r = post(fake_server, "/v1/completions", {"prompt": "abc", "temperature": 0})
    assert r.json()["usage"]["completion_tokens"] == 16


def test_completion_batch_prompts_and_token_ids(fake_server):
    body = {"prompt": ["ab", "cd"], "max_tokens": 3, "n": 2, "temperature": 0}
    choices = post(fake_server, "/v1/completions", body).json()["choices"]
    assert [c["index"] for c in choices] == [0, 1, 2, 3]
    single = post(fake_server, "/v1/completions",
                  {"prompt": [99, 100], "max_tokens": 3, "temperature": 0}).json()
    assert single["choices"][0]["text"] == choices[2]["text"]  # [99, 100] is "cd"
    assert single["usage"]["prompt_tokens"] == 2


def test_chat_stream_matches_non_stream(fake_server):
    body = {**CHAT, "max_tokens": 9, "temperature": 0}
    full = post(fake_server, "/v1/chat/completions", body).json()
    assert full["object"] == "chat.completion"
    assert full["choices"][0]["message"]["role"] == "assistant"
    events = sse_events(fake_server, "/v1/chat/completions",
                        {**body, "stream": True, "stream_options": {"include_usage": True}})
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == full["choices"][0]["message"]["content"]
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] == "length" and all(f is None for f in finishes[:-1])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == full["usage"]
    assert all(c["usage"] is None for c in chunks[:-1])


def test_stream_without_usage_has_no_usage_chunk(fake_server):
    events = sse_events(fake_server, "/v1/completions",
                        {"prompt": "x", "max_tokens": 4, "stream": True})
    assert events[-1] == "[DONE]"
    assert all(e["choices"] for e in events[:-1])
    assert "".join(e["choices"][0]["text"] for e in events[:-1]).__len__() == 4


def test_n_and_seed(fake_server):
    body = {**CHAT, "max_tokens": 12, "n": 3, "seed": 1234, "temperature": 1.0}
    a = post(fake_server, "/v1/chat/completions", body).json()
    b = post(fake_server, "/v1/chat/completions", body).json()
    texts = [c["message"]["content"] for c in a["choices"]]
    assert [c["index"] for c in a["choices"]] == [0, 1, 2]
    assert texts == [c["message"]["content"] for c in b["choices"]]  # same seed, same texts
    assert len(set(texts)) == 3  # siblings differ (seed + index)
    assert a["usage"]["completion_tokens"] == 36
    c = post(fake_server, "/v1/chat/completions", {**body, "seed": 99}).json()
    assert [x["message"]["content"] for x in c["choices"]] != texts


def test_stream_n_collects_every_choice(fake_server):
    body = {**CHAT, "max_tokens": 6, "n": 2, "seed": 5, "stream": True}
    events = sse_events(fake_server, "/v1/chat/completions", body)
    texts, finish = {0: "", 1: ""}, {}
    for e in events[:-1]:
        for ch in e["choices"]:
            texts[ch["index"]] += ch["delta"].get("content") or ""
            if ch["finish_reason"]:
                finish[ch["index"]] = ch["finish_reason"]
    full = post(fake_server, "/v1/chat/completions", {**body, "stream": False}).json()
    assert texts == {c["index"]: c["message"]["content"] for c in full["choices"]}
    assert finish == {0: "length", 1: "length"}


def test_stop_strings_and_eos(fake_server):
    base = post(fake_server, "/v1/completions",
                {"prompt": "stop test", "max_tokens": 20, "temperature": 0}).json()
    text = base["choices"][0]["text"]
    stop = text[5:7]
    cut = post(fake_server, "/v1/completions", {"prompt": "stop test", "max_tokens": 20,
                                                "temperature": 0, "stop": [stop]}).json()
    choice = cut["choices"][0]
    assert choice["text"] == text[: text.find(stop)]
    assert choice["finish_reason"] == "stop" and choice["stop_reason"] == stop
    eos = post(fake_server, "/v1/completions",
               {"prompt": "x<eos:3>", "max_tokens": 10, "temperature": 0}).json()
    assert eos["choices"][0]["finish_reason"] == "stop"
    assert eos["usage"]["completion_tokens"] == 3  # EOS counts as a generated token
    ignored = post(fake_server, "/v1/completions", {"prompt": "x<eos:3>", "max_tokens": 10,
                                                    "temperature": 0, "ignore_eos": True}).json()
    assert ignored["choices"][0]["finish_reason"] == "length"
    assert ignored["usage"]["completion_tokens"] == 10
    held = post(fake_server, "/v1/completions", {"prompt": "x<eos:3>", "max_tokens": 10,
                                                 "temperature": 0, "min_tokens": 5}).json()
    assert held["usage"]["completion_tokens"] == 10


def test_completion_logprobs_format(fake_server):
    body = {"prompt": "lp", "max_tokens": 4, "temperature": 0, "logprobs": 2}
    lp = post(fake_server, "/v1/completions", body).json()["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == 4
    assert lp["text_offset"] == [0, 1, 2, 3]
    assert all(len(d) == 2 for d in lp["top_logprobs"])
    events = sse_events(fake_server, "/v1/completions", {**body, "stream": True})
    streamed = [t for e in events[:-1] for t in e["choices"][0]["logprobs"]["tokens"]]
    assert streamed == lp["tokens"]
    offsets = [o for e in events[:-1] for o in e["choices"][0]["logprobs"]["text_offset"]]
    assert offsets == [0, 1, 2, 3]


def test_chat_logprobs_format(fake_server):
    body = {**CHAT, "max_tokens": 3, "temperature": 0, "logprobs": True, "top_logprobs": 1}
    content = post(fake_server, "/v1/chat/completions", body).json()[
        "choices"][0]["logprobs"]["content"]
    assert len(content) == 3
    for entry in content:
        assert set(entry) == {"token", "logprob", "bytes", "top_logprobs"}
        assert entry["bytes"] == list(entry["token"].encode())
        assert len(entry["top_logprobs"]) == 1
    no_lp = post(fake_server, "/v1/chat/completions", {**CHAT, "max_tokens": 2}).json()
    assert no_lp["choices"][0]["logprobs"] is None


def test_echo(fake_server):
    r = post(fake_server, "/v1/completions",
             {"prompt": "echo:", "max_tokens": 3, "temperature": 0, "echo": True}).json()
    assert r["choices"][0]["text"].startswith("echo:") and len(r["choices"][0]["text"]) == 8


def test_models_health_stats_and_page(fake_server):
    models = HTTP.get(f"{fake_server.url}/v1/models").json()
    assert models["object"] == "list" and models["data"][0]["id"] == FAKE_MODEL
    assert models["data"][0]["max_model_len"] == 512
    assert HTTP.get(f"{fake_server.url}/health").status_code == 200
    stats = HTTP.get(f"{fake_server.url}/stats").json()
    assert {"num_running", "num_waiting", "kv_cache_usage", "generation_tokens_per_s"} <= set(
        stats)
    page = HTTP.get(f"{fake_server.url}/")
    assert page.status_code == 200 and "<html" in page.text.lower()


def test_metrics_exposition(fake_server):
    post(fake_server, "/v1/completions", {"prompt": "metrics", "max_tokens": 5})
    text = HTTP.get(f"{fake_server.url}/metrics").text
    samples = parse_prometheus(text)
    lab = f'model_name="{FAKE_MODEL}"'
    for name in ("num_requests_running", "num_requests_waiting", "kv_cache_usage_perc",
                 "prefix_cache_hit_rate", "prompt_tokens_total", "generation_tokens_total"):
        assert f"tritium:{name}{{{lab}}}" in samples, name
    for hist in ("time_to_first_token_seconds", "time_per_output_token_seconds",
                 "e2e_request_latency_seconds"):
        buckets = [v for k, v in samples.items() if k.startswith(f"tritium:{hist}_bucket")]
        assert buckets == sorted(buckets) and buckets[-1] == samples[
            f"tritium:{hist}_count{{{lab}}}"]
        assert f'# TYPE tritium:{hist} histogram' in text
    assert samples[f"tritium:time_to_first_token_seconds_count{{{lab}}}"] >= 1
    assert samples[f"tritium:generation_tokens_total{{{lab}}}"] >= 5
    assert samples[f'tritium:request_success_total{{{lab},finished_reason="length"}}'] >= 1


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_concurrent_streams_match_single(make_fake_server, path):
    """32 concurrent streaming clients through a 4-sequence engine get a single client's text."""
    import asyncio

    server = make_fake_server(max_num_seqs=4, num_blocks=64, block_size=4)
    body = ({"prompt": "p{i}", "max_tokens": 12, "temperature": 0} if "chat" not in path else
            {"messages": [{"role": "user", "content": "p{i}"}], "max_tokens": 12,
             "temperature": 0})

    def make(i):
        return json.loads(json.dumps(body).replace("{i}", str(i % 5)))

    async def one(client, i):
        text = ""
        async with client.stream("POST", f"{server.url}{path}",
                                 json={**make(i), "stream": True}) as r:
            assert r.status_code == 200
            async for line in r.aiter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    for ch in json.loads(line[6:])["choices"]:
                        text += ch.get("text") or ch.get("delta", {}).get("content") or ""
        return text

    async def main():
        async with httpx.AsyncClient(timeout=60) as client:
            return await asyncio.gather(*(one(client, i) for i in range(32)))

    texts = asyncio.run(main())
    singles = {}
    for i in range(5):
        r = post(server, path, make(i)).json()["choices"][0]
        singles[i] = r.get("text") or r.get("message", {}).get("content")
    assert texts == [singles[i % 5] for i in range(32)]
    m = server.wait_idle()
    assert m["tritium:kv_cache_usage_perc"] == 0
