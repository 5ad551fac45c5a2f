"""Fixtures of the server tests: fake-engine servers, and the real-engine server (started once)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch

# pytest's default "prepend" import mode puts this folder on sys.path.
from server_utils import REAL_MAX_MODEL_LEN, LiveServer, start_fake_server

from tritium.engine.async_engine import AsyncLLMEngine
from tritium.engine.config import CacheConfig, EngineConfig, SchedulerConfig
from tritium.engine.llm_engine import LLMEngine
from tritium.server.app import build_app


@pytest.fixture(scope="module")
def fake_server() -> Iterator[LiveServer]:
    server = start_fake_server()
    yield server
    server.stop()


@pytest.fixture
def make_fake_server() -> Iterator[Callable[..., LiveServer]]:
    started: list[LiveServer] = []

    def make(**kwargs) -> LiveServer:
        started.append(start_fake_server(**kwargs))
        return started[-1]

    yield make
    for s in started:
        s.stop()


@pytest.fixture(scope="module")  # one model load; freed when test_openai_real.py ends
def real_server() -> Iterator[LiveServer]:
    """The embedded SmolLM2-135M on CPU behind the real engine, with a small KV cache."""
    config = EngineConfig(
        device="cpu", dtype="float32", seed=0,
        scheduler=SchedulerConfig(max_num_seqs=48, max_num_batched_tokens=2048,
                                  max_model_len=REAL_MAX_MODEL_LEN),
        cache=CacheConfig(block_size=16, num_kv_blocks=256),
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on the busy shared CPU, 1 thread beats 2 competing ones
    engine = AsyncLLMEngine(LLMEngine.from_config(config), max_waiting_requests=128)
    app = build_app(engine, model_name="SmolLM2-135M-Instruct")
    server = LiveServer(app, engine).start()
    yield server
    server.stop()
    torch.set_num_threads(threads)
