"""Command-line flags of ``tritium serve`` and ``tritium bench serve``, and their entry points.

Kept free of heavy imports (FastAPI, httpx, torch load lazily inside ``run_*``) so that building
the ``tritium`` parser stays fast.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
from typing import Any

from tritium.argtypes import add_model_flags

DEFAULT_MAX_REQUEST_BYTES = 4 << 20  # 4 MiB of JSON: ~1M tokens of text, far above any context
DEFAULT_MAX_WAITING = 512


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``tritium serve`` (vLLM's names where the concept is the same)."""
    add_model_flags(p, default="the embedded SmolLM2-135M-Instruct",
                    tokenizer_note="required for random:<preset> models")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument("--api-key", default=os.environ.get("TRITIUM_API_KEY"), metavar="KEY",
                   help="require 'Authorization: Bearer KEY' on /v1 routes "
                   "(default: $TRITIUM_API_KEY, else none)")
    p.add_argument("--served-model-name", default=None, metavar="NAME",
                   help="model name clients send (default: from the model file name)")
    p.add_argument("--max-waiting-requests", type=int, default=DEFAULT_MAX_WAITING, metavar="N",
                   help=f"answer 503 while this many sequences wait (default: "
                   f"{DEFAULT_MAX_WAITING})")
    p.add_argument("--max-request-bytes", type=int, default=DEFAULT_MAX_REQUEST_BYTES,
                   metavar="B", help="largest accepted request body (default: 4 MiB)")
    p.add_argument("--log-level", default="info",
                   choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument("--disable-uvicorn-access-log", action="store_true",
                   help="no log line per request (vLLM's flag; for benchmarks)")
    g = p.add_argument_group("engine")
    g.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    g.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--threads", type=int, default=None, metavar="N",
                   help="CPU threads for PyTorch (default: PyTorch's; 1 is often faster on a "
                   "busy machine)")
    g.add_argument("--max-model-len", type=int, default=None, metavar="N")
    g.add_argument("--max-num-seqs", type=int, default=256, metavar="N")
    g.add_argument("--max-num-batched-tokens", type=int, default=8192, metavar="N")
    g.add_argument("--block-size", type=int, default=16, metavar="N")
    g.add_argument("--num-kv-blocks", type=int, default=None, metavar="N",
                   help="KV-cache blocks (default: from --gpu-memory-utilization)")
    g.add_argument("--gpu-memory-utilization", type=float, default=0.9, metavar="F")
    g.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction,
                   default=True)
    g.add_argument("--kv-cache-dtype", default="auto")
    g.add_argument("--enforce-eager", action="store_true",
                   help="no CUDA graphs for decode steps (vLLM's flag; CPU is always eager)")
    g.add_argument("--max-cudagraph-capture-size", type=int, default=None, metavar="N",
                   help="largest decode batch replayed from a CUDA graph "
                        "(default: min(max-num-seqs, 512))")
    g.add_argument("--async-scheduling", action="store_true",
                   help="schedule step N+1 while step N runs (hides the host's per-step work)")


def engine_config_from_args(args: argparse.Namespace) -> Any:
    """EngineConfig filled from ``tritium serve`` flags (its __post_init__ validates them)."""
    from tritium.engine.config import CacheConfig, EngineConfig, SchedulerConfig

    return EngineConfig(
        model=args.model, tokenizer=args.tokenizer, dtype=args.dtype, device=args.device,
        seed=args.seed,
        served_model_name=args.served_model_name,
        enforce_eager=args.enforce_eager,
        max_cudagraph_capture_size=args.max_cudagraph_capture_size,
        async_scheduling=args.async_scheduling,
        scheduler=SchedulerConfig(max_num_seqs=args.max_num_seqs,
                                  max_num_batched_tokens=args.max_num_batched_tokens,
                                  max_model_len=args.max_model_len),
        cache=CacheConfig(block_size=args.block_size, num_kv_blocks=args.num_kv_blocks,
                          gpu_memory_utilization=args.gpu_memory_utilization,
                          enable_prefix_caching=args.enable_prefix_caching,
                          kv_cache_dtype=args.kv_cache_dtype),
    )


def served_name(model_path: str | None, override: str | None = None) -> str:
    """The model name clients use: the override, else the file or folder name without suffix."""
    if override:
        return override
    if model_path is None:
        return "SmolLM2-135M-Instruct"
    base = os.path.basename(os.path.normpath(model_path))
    return base[: -len(".gguf")] if base.endswith(".gguf") else base


def check_has_tokenizer(model: str | None, tokenizer: str | None) -> None:
    """The server tokenizes text and renders chat templates: a random:<preset> model (no
    tokenizer of its own) needs ``--tokenizer``. Checked before the model loads."""
    if tokenizer is None and isinstance(model, str) and model.startswith("random:"):
        raise ValueError(f"--model {model} has random weights and no tokenizer, which the "
                         "server needs: pass --tokenizer PATH (a tokenizer folder or .gguf file)")


def run_serve(args: argparse.Namespace) -> int:
    """``tritium serve``: load the engine, then serve until interrupted."""
    from tritium.engine.async_engine import AsyncLLMEngine
    from tritium.engine.llm_engine import LLMEngine
    from tritium.server.app import build_app, run_server

    logging.getLogger("tritium").setLevel(args.log_level.upper())
    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be in 1..65535, got {args.port}")
    if args.max_waiting_requests < 0:
        raise ValueError(f"--max-waiting-requests must be >= 0, got {args.max_waiting_requests}")
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)  # global: the engine thread uses it too
    check_has_tokenizer(args.model, args.tokenizer)
    config = engine_config_from_args(args)
    llm_engine = LLMEngine.from_config(config)
    if llm_engine.tokenizer is None:  # e.g. a model class that loads none; the server needs one
        raise ValueError(f"{args.model} came without a tokenizer: pass --tokenizer PATH")
    engine = AsyncLLMEngine(llm_engine, max_waiting_requests=args.max_waiting_requests)
    app = build_app(engine, model_name=served_name(args.model, args.served_model_name),
                    model_root=args.model, api_key=args.api_key or None,
                    max_request_bytes=args.max_request_bytes)
    run_server(app, host=args.host, port=args.port, log_level=args.log_level,
               access_log=not args.disable_uvicorn_access_log)
    return 0


def add_bench_serve_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``tritium bench serve`` / benchmarks/serve.py (vLLM bench serve's names)."""
    p.add_argument("--base-url", default="http://127.0.0.1:8000",
                   help="server to benchmark: tritium, vLLM, SGLang, ... (default: %(default)s)")
    p.add_argument("--model", default=None, help="model name to send (default: the server's "
                   "first /v1/models entry)")
    p.add_argument("--api-key", default=None)
    p.add_argument("--workload", choices=["random", "chat"], default="random")
    p.add_argument("--num-prompts", type=int, default=100)
    p.add_argument("--random-input-len", type=int, default=128)
    p.add_argument("--random-output-len", type=int, default=64)
    p.add_argument("--random-range-ratio", type=float, default=0.0)
    p.add_argument("--random-vocab-range", type=int, nargs=2, default=[1000, 20000],
                   metavar=("LO", "HI"), help="token ids drawn from [LO, HI)")
    p.add_argument("--chat-input-words", type=int, default=60)
    p.add_argument("--chat-output-len", type=int, default=64)
    p.add_argument("--ignore-eos", action="store_true", help="chat workload: never stop early")
    p.add_argument("--request-rate", type=float, nargs="+", default=[math.inf],
                   help="requests/s (one run per value; inf = all at once)")
    p.add_argument("--burstiness", type=float, default=1.0,
                   help="gamma shape of inter-arrival times (1 = Poisson)")
    p.add_argument("--max-concurrency", type=int, default=None)
    p.add_argument("--goodput", nargs="*", default=[], metavar="METRIC:MS",
                   help="SLOs for goodput, e.g. ttft:500 tpot:100 e2el:5000")
    p.add_argument("--percentiles", default="50,90,99")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--result-json", default=None, metavar="PATH",
                   help="write config, metrics and per-request results here")
    p.add_argument("--label", default=None, help="free text stored in the JSON (device, ...)")


def run_bench_serve(args: argparse.Namespace) -> int:
    """``tritium bench serve``: benchmark a running OpenAI-compatible server."""
    from tritium.server.bench import main

    main(args)
    return 0
