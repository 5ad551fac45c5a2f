"""``tritium serve`` / ``tritium bench serve`` flags: parsing, EngineConfig mapping, names."""

from __future__ import annotations

import pytest

from tritium.cli import build_parser
from tritium.server.args import engine_config_from_args, run_serve, served_name


def test_serve_flags_fill_engine_config():
    args = build_parser().parse_args([
        "serve", "--max-model-len", "1024", "--max-num-seqs", "8",
        "--max-num-batched-tokens", "512", "--block-size", "32", "--num-kv-blocks", "100",
        "--no-enable-prefix-caching", "--device", "cpu", "--dtype", "float32", "--port", "9000"])
    assert args.host == "127.0.0.1" and args.port == 9000  # loopback unless told otherwise
    config = engine_config_from_args(args)
    assert config.model is None and config.device == "cpu" and config.dtype == "float32"
    assert (config.scheduler.max_model_len, config.scheduler.max_num_seqs,
            config.scheduler.max_num_batched_tokens) == (1024, 8, 512)
    assert (config.cache.block_size, config.cache.num_kv_blocks,
            config.cache.enable_prefix_caching) == (32, 100, False)
    assert config.tokenizer is None and not args.disable_uvicorn_access_log
    assert config.enforce_eager is False and config.max_cudagraph_capture_size is None
    args = build_parser().parse_args(["serve", "--enforce-eager",
                                      "--max-cudagraph-capture-size", "64"])
    config = engine_config_from_args(args)
    assert config.enforce_eager is True and config.max_cudagraph_capture_size == 64
    args = build_parser().parse_args(["serve", "--model", "random:tiny", "--tokenizer", "/t"])
    assert engine_config_from_args(args).tokenizer == "/t"
    bad = build_parser().parse_args(["serve", "--max-num-seqs", "0"])
    with pytest.raises(ValueError, match="max_num_seqs"):
        engine_config_from_args(bad)


def test_serve_random_preset_needs_a_tokenizer(monkeypatch):
    # refused before anything loads (the engine is never built)
    monkeypatch.setattr("tritium.engine.llm_engine.LLMEngine.from_config",
                        lambda *a: pytest.fail("the engine was built"))
    args = build_parser().parse_args(["serve", "--model", "random:llama3-8b"])
    with pytest.raises(ValueError, match="no tokenizer, which the server needs: pass --tokenizer"):
        run_serve(args)


def test_served_name():
    assert served_name(None) == "SmolLM2-135M-Instruct"
    assert served_name("/m/Qwen2.5-0.5B.Q4_K_M.gguf") == "Qwen2.5-0.5B.Q4_K_M"
    assert served_name("/m/llama-3-8b/") == "llama-3-8b"
    assert served_name("/m/x.gguf", "mine") == "mine"


def test_bench_serve_flags():
    args = build_parser().parse_args([
        "bench", "serve", "--base-url", "http://h:1", "--request-rate", "1", "4", "inf",
        "--goodput", "ttft:500", "tpot:50", "--max-concurrency", "8", "--workload", "chat"])
    assert args.request_rate == [1.0, 4.0, float("inf")]
    assert args.goodput == ["ttft:500", "tpot:50"] and args.max_concurrency == 8
    assert args.func.__name__ == "run_bench_serve"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "serve", "--workload", "sharegpt"])
