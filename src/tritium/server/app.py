"""The server application: FastAPI app around an AsyncLLMEngine, uvicorn runner, ``tritium serve``.

    engine = AsyncLLMEngine(LLMEngine.from_config(EngineConfig(...)))
    app = build_app(engine, model_name="SmolLM2-135M-Instruct")
    run_server(app, host="127.0.0.1", port=8000)      # blocks; SIGINT/SIGTERM stop it cleanly

Shutdown: on SIGINT/SIGTERM the engine thread stops after its current step; unfinished
requests end (streams get an error event and ``data: [DONE]``, others a 503), uvicorn closes the
connections and the lifespan hook joins the engine thread. The process then exits with status 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tritium.engine.async_engine import AsyncLLMEngine
from tritium.server.api import ServerState, router
from tritium.server.errors import APIError, error_response
from tritium.server.metrics import ServerMetrics

logger = logging.getLogger(__name__)

DEFAULT_MAX_REQUEST_BYTES = 4 << 20  # 4 MiB of JSON: ~1M tokens of text, far above any context
DEFAULT_MAX_WAITING = 512


def build_app(engine: AsyncLLMEngine, *, model_name: str, model_root: str | None = None,
              api_key: str | None = None,
              max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES) -> FastAPI:
    """The ASGI app. Starts the engine thread on startup and stops it on shutdown."""
    if not isinstance(max_request_bytes, int) or max_request_bytes < 1:
        raise ValueError(f"max_request_bytes must be an int >= 1, got {max_request_bytes!r}")
    if api_key is not None and not api_key:
        raise ValueError("api_key must be a non-empty string or None")
    metrics = engine.observer if isinstance(engine.observer, ServerMetrics) else None
    if metrics is None:
        metrics = ServerMetrics(model_name)
        engine.observer = metrics

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        engine.start()
        logger.info("serving %s", model_name)
        try:
            yield
        finally:
            await asyncio.to_thread(engine.shutdown)

    app = FastAPI(title="tritium", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.tritium = ServerState(engine=engine, metrics=metrics, model_name=model_name,
                                    model_root=model_root, api_key=api_key,
                                    max_request_bytes=max_request_bytes)
    app.include_router(router)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        if exc.status >= 500:
            logger.warning("%s %s -> %d: %s", request.method, request.url.path, exc.status,
                           exc.message)
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return error_response(exc.status_code, f"{request.method} {request.url.path}: "
                              f"{exc.detail}", kind)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error in %s %s", request.method, request.url.path)
        return error_response(500, f"internal server error: {type(exc).__name__}",
                              "internal_server_error")

    return app


def run_server(app: FastAPI, *, host: str = "127.0.0.1", port: int = 8000,
               log_level: str = "info", graceful_timeout_s: float = 10.0) -> None:
    """Serve until SIGINT/SIGTERM (blocking). Binds loopback unless ``host`` says otherwise."""
    import uvicorn

    engine: AsyncLLMEngine = app.state.tritium.engine

    class _Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            engine.begin_shutdown()  # in-flight requests end now instead of being waited for
            super().handle_exit(sig, frame)
            # uvicorn re-raises the signal after its graceful shutdown, which would turn a clean
            # stop into KeyboardInterrupt / death by SIGTERM: forget it, we exit normally.
            captured = getattr(self, "_captured_signals", None)
            if isinstance(captured, list):
                captured.clear()

    config = uvicorn.Config(app, host=host, port=port, log_level=log_level,
                            timeout_graceful_shutdown=graceful_timeout_s)
    _Server(config).run()
    logger.info("server stopped")


# ----------------------------------------------------------------------------- tritium serve
def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``tritium serve`` (vLLM's names where the concept is the same)."""
    p.add_argument("--model", default=None, metavar="PATH",
                   help="GGUF file or Hugging Face folder (default: the embedded SmolLM2-135M)")
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
    g = p.add_argument_group("engine")
    g.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    g.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    g.add_argument("--seed", type=int, default=0)
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


def engine_config_from_args(args: argparse.Namespace) -> Any:
    """EngineConfig filled from ``tritium serve`` flags (its __post_init__ validates them)."""
    from tritium.engine.config import CacheConfig, EngineConfig, SchedulerConfig

    return EngineConfig(
        model=args.model, dtype=args.dtype, device=args.device, seed=args.seed,
        served_model_name=args.served_model_name,
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


def run_serve(args: argparse.Namespace) -> int:
    """``tritium serve``: load the engine, then serve until interrupted."""
    from tritium.engine.llm_engine import LLMEngine

    logging.getLogger("tritium").setLevel(args.log_level.upper())
    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be in 1..65535, got {args.port}")
    if args.max_waiting_requests < 0:
        raise ValueError(f"--max-waiting-requests must be >= 0, got {args.max_waiting_requests}")
    config = engine_config_from_args(args)
    engine = AsyncLLMEngine(LLMEngine.from_config(config),
                            max_waiting_requests=args.max_waiting_requests)
    app = build_app(engine, model_name=served_name(args.model, args.served_model_name),
                    model_root=args.model, api_key=args.api_key or None,
                    max_request_bytes=args.max_request_bytes)
    run_server(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0
