"""Helpers of the server tests: live servers on loopback, one shared HTTP client.

``LiveServer`` runs uvicorn in a background thread on a socket bound to 127.0.0.1:0 (a free
port). Fake-engine servers (tests/server/fake_engine.py) are cheap and test server logic; the
real-engine server (embedded SmolLM2 on CPU, small KV cache) is started once per session by
conftest.py. (A plain module, not conftest: test modules import it by a unique name.)
"""

from __future__ import annotations

import socket
import threading
import time

import httpx
from fake_engine import FakeEngine

from tritium.engine.async_engine import AsyncLLMEngine
from tritium.server.app import build_app
from tritium.server.metrics import parse_prometheus

FAKE_MODEL = "fake-model"
HTTP = httpx.Client(timeout=30)  # one client: building one costs ~0.1 s (SSL context)


class LiveServer:
    """uvicorn serving ``app`` from a background thread; ``url`` is http://127.0.0.1:PORT."""

    def __init__(self, app, engine: AsyncLLMEngine) -> None:
        import uvicorn

        self.app, self.engine = app, engine
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       daemon=True)

    def start(self, timeout: float = 60.0) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        self.sock.close()

    def metrics(self) -> dict[str, float]:
        text = HTTP.get(f"{self.url}/metrics").text
        return {k.split("{")[0]: v for k, v in parse_prometheus(text).items()
                if "_bucket" not in k and "request_success" not in k}

    def wait_idle(self, timeout: float = 10.0) -> dict[str, float]:
        """Poll /metrics until nothing runs or waits and the KV cache is empty."""
        deadline = time.monotonic() + timeout
        while True:
            m = self.metrics()
            idle = (m["tritium:num_requests_running"] == 0
                    and m["tritium:num_requests_waiting"] == 0
                    and m["tritium:kv_cache_usage_perc"] == 0)
            if idle or time.monotonic() > deadline:
                return m
            time.sleep(0.05)


def start_fake_server(*, api_key: str | None = None, max_waiting_requests: int | None = 64,
                      max_request_bytes: int = 1 << 16, **engine_kwargs) -> LiveServer:
    engine = AsyncLLMEngine(FakeEngine(**engine_kwargs), max_waiting_requests=max_waiting_requests)
    app = build_app(engine, model_name=FAKE_MODEL, api_key=api_key,
                    max_request_bytes=max_request_bytes)
    return LiveServer(app, engine).start()


# ------------------------------------------------------------------------- real engine
REAL_MAX_MODEL_LEN = 512
