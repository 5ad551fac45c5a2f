"""The server application: the FastAPI app around an AsyncLLMEngine, and its uvicorn runner.

    engine = AsyncLLMEngine(LLMEngine.from_config(EngineConfig(...)))
    app = build_app(engine, model_name="SmolLM2-135M-Instruct")
    run_server(app, host="127.0.0.1", port=8000)      # blocks; SIGINT/SIGTERM stop it cleanly

Shutdown: on SIGINT/SIGTERM the engine thread stops after its current step; unfinished
requests end (streams get an error event and ``data: [DONE]``, others a 503), uvicorn closes the
connections and the lifespan hook joins the engine thread. The process then exits with status 0.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tritium.engine.async_engine import AsyncLLMEngine
from tritium.server.api import ServerState, router
from tritium.server.args import DEFAULT_MAX_REQUEST_BYTES
from tritium.server.errors import APIError, error_response
from tritium.server.metrics import ServerMetrics

logger = logging.getLogger(__name__)



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
               log_level: str = "info", graceful_timeout_s: float = 10.0,
               access_log: bool = True) -> None:
    """Serve until SIGINT/SIGTERM (blocking). Binds loopback unless ``host`` says otherwise.
    ``access_log=False`` drops uvicorn's line per request (benchmarks: it costs event-loop time).
    """
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
                            timeout_graceful_shutdown=graceful_timeout_s, access_log=access_log)
    _Server(config).run()
    logger.info("server stopped")
