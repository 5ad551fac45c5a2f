"""A random-weight model served with a tokenizer from elsewhere (``--model random:tiny
--tokenizer DIR``, as the GPU serving benchmark runs random:llama3-8b): text completions,
streamed chat through the tokenizer's chat template, vocabulary checks, and a short
``tritium bench serve`` run of both workloads against it."""

from __future__ import annotations

import argparse
import json

import openai
import pytest
import torch
from server_utils import HTTP, LiveServer

from tritium.engine.async_engine import AsyncLLMEngine
from tritium.engine.config import CacheConfig, EngineConfig, SchedulerConfig
from tritium.engine.llm_engine import LLMEngine
from tritium.models.tokenizer_cache import embedded_tokenizer_dir
from tritium.server.app import build_app
from tritium.server.args import add_bench_serve_arguments
from tritium.server.bench import main as bench_main

MODEL = "random:tiny"


@pytest.fixture(scope="module")
def server():
    config = EngineConfig(
        model=MODEL, tokenizer=str(embedded_tokenizer_dir()), device="cpu", dtype="float32",
        scheduler=SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=512, max_model_len=256),
        cache=CacheConfig(num_kv_blocks=128),
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    engine = AsyncLLMEngine(LLMEngine.from_config(config), max_waiting_requests=64)
    live = LiveServer(build_app(engine, model_name=MODEL), engine).start()
    yield live
    live.stop()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0,
                         timeout=120)


def test_text_completion_and_streamed_chat(server, client):
    tok = server.engine.tokenizer
    assert len(tok) == server.engine.engine.model_config.vocab_size == 49152
    prompt = "Paged attention keeps"
    full = client.completions.create(model=MODEL, prompt=prompt, max_tokens=8, temperature=0,
                                     extra_body={"ignore_eos": True})
    assert full.usage.prompt_tokens == len(tok.encode(prompt))
    assert full.usage.completion_tokens == 8 and full.choices[0].text
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    stream = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=6,
                                            temperature=0, stream=True,
                                            stream_options={"include_usage": True},
                                            extra_body={"ignore_eos": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert chunks[-1].usage.prompt_tokens == len(tok.encode(rendered, add_special_tokens=False))
    assert chunks[-1].usage.completion_tokens == 6 and text


def test_token_ids_checked_against_the_fitted_vocab(server):
    ok = HTTP.post(f"{server.url}/v1/completions",
                   json={"model": MODEL, "prompt": [5, 49151], "max_tokens": 1})
    assert ok.status_code == 200, ok.text
    bad = HTTP.post(f"{server.url}/v1/completions",
                    json={"model": MODEL, "prompt": [5, 49152], "max_tokens": 1})
    assert bad.status_code == 400 and "outside the vocabulary [0, 49152)" in bad.text


def test_bench_serve_both_workloads(server, tmp_path):
    parser = argparse.ArgumentParser()
    add_bench_serve_arguments(parser)
    out = tmp_path / "bench.json"
    common = ["--base-url", server.url, "--num-prompts", "4", "--max-concurrency", "4"]
    (rnd,) = bench_main(parser.parse_args(common + [
        "--workload", "random", "--random-input-len", "24", "--random-output-len", "6",
        "--random-vocab-range", "1000", "49000", "--result-json", str(out)]))
    assert rnd["completed"] == 4 and rnd["total_output_tokens"] == 24  # ignore_eos
    assert json.loads(out.read_text())[0]["model_id"] == MODEL
    (chat,) = bench_main(parser.parse_args(common + [
        "--workload", "chat", "--chat-input-words", "12", "--chat-output-len", "4",
        "--ignore-eos"]))
    assert chat["completed"] == 4 and chat["failed"] == 0
    assert chat["total_output_tokens"] == sum(chat["output_lens"]) > 0
