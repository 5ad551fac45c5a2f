"""Routes of the OpenAI-compatible server, and the plumbing every route shares.

    POST /v1/completions          POST /v1/chat/completions      GET /v1/models
    GET  /health                  GET  /metrics (Prometheus)     GET /stats (JSON, playground)
    GET  /                        the chat playground (static/index.html)

Every error leaves as OpenAI's body ``{"error": {"message", "type", "param", "code"}}`` with a
4xx/5xx status. Request bodies are read by hand (not through FastAPI's body parameters) so that
the size limit, malformed JSON and type errors all produce that body.
"""

from __future__ import annotations

import hmac
import json
import logging
from dataclasses import dataclass
from importlib import resources
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ValidationError

from tritium.engine.async_engine import AsyncLLMEngine
from tritium.server.errors import APIError, error_response
from tritium.server.metrics import ServerMetrics
from tritium.server.protocol import ChatCompletionRequest, CompletionRequest, ModelCard, ModelList
from tritium.server.serving import serve_chat, serve_completion

logger = logging.getLogger(__name__)

router = APIRouter()


@dataclass
class ServerState:
    """What the routes need, stored on ``app.state.tritium``."""

    engine: AsyncLLMEngine
    metrics: ServerMetrics
    model_name: str
    model_root: str | None = None
    api_key: str | None = None
    max_request_bytes: int = 1 << 20


def get_state(request: Request) -> ServerState:
    return request.app.state.tritium


def check_api_key(request: Request, state: ServerState) -> None:
    """401 unless ``Authorization: Bearer <key>`` matches (when the server has a key)."""
    if state.api_key is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(),
                                                             state.api_key.encode()):
        raise APIError(401, "invalid or missing API key: send 'Authorization: Bearer <key>'",
                       code="invalid_api_key")


async def read_json(request: Request, state: ServerState, model: type[BaseModel]) -> Any:
    """Read the body (at most ``max_request_bytes``), parse JSON, validate against ``model``."""
    limit = state.max_request_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise APIError(413, f"request body of {declared} bytes exceeds the limit of {limit} bytes",
                       code="request_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise APIError(413, f"request body exceeds the limit of {limit} bytes",
                           code="request_too_large")
        chunks.append(chunk)
    try:
        data = json.loads(b"".join(chunks))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise APIError(400, f"the request body is not valid JSON: {e}", code="invalid_json") from e
    except RecursionError as e:
        raise APIError(400, "the request body is nested too deeply", code="invalid_json") from e
    if not isinstance(data, dict):
        raise APIError(400, f"the request body must be a JSON object, got {type(data).__name__}",
                       code="invalid_json")
    try:
        parsed = model.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        param = ".".join(str(p) for p in err["loc"]) or None
        got = f" (got {json.dumps(err['input'])[:80]})" if "input" in err else ""
        raise APIError(400, f"{param}: {err['msg']}{got}", param=param,
                       code="invalid_value") from e
    extra = sorted((parsed.model_extra or {}).keys())
    if extra:
        logger.info("ignoring unknown request fields: %s", ", ".join(extra))
    return parsed


def check_model(state: ServerState, name: str | None) -> None:
    if name is not None and name != state.model_name:
        raise APIError(404, f"the model {name!r} does not exist; this server serves "
                       f"{state.model_name!r}", param="model", code="model_not_found")


# ------------------------------------------------------------------------------ routes
@router.post("/v1/completions")
async def completions(request: Request) -> Response:
    state = get_state(request)
    check_api_key(request, state)
    req = await read_json(request, state, CompletionRequest)
    check_model(state, req.model)
    return await serve_completion(request, state, req)


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    state = get_state(request)
    check_api_key(request, state)
    req = await read_json(request, state, ChatCompletionRequest)
    check_model(state, req.model)
    return await serve_chat(request, state, req)


@router.get("/v1/models")
async def models(request: Request) -> Response:
    state = get_state(request)
    check_api_key(request, state)
    card = ModelCard(id=state.model_name, root=state.model_root,
                     max_model_len=state.engine.max_model_len)
    return JSONResponse(ModelList(data=[card]).model_dump())


@router.get("/health")
async def health(request: Request) -> Response:
    engine = get_state(request).engine
    if engine.dead_error is not None:
        return error_response(503, f"engine unavailable: {engine.dead_error}",
                              "service_unavailable_error", code="engine_unavailable")
    return JSONResponse({"status": "ok"})


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    state = get_state(request)
    text = state.metrics.render(state.engine.stats())
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")


@router.get("/stats")
async def stats(request: Request) -> Response:
    """Live engine numbers for the playground (not part of OpenAI's API)."""
    state = get_state(request)
    s = state.engine.stats()
    return JSONResponse({
        "model": state.model_name,
        "num_running": s.get("num_running", 0),
        "num_waiting": s.get("num_waiting", 0),
        "kv_cache_usage": s.get("kv_cache_usage", 0.0),
        "generation_tokens_per_s": round(state.metrics.tokens_per_second(), 2),
        "generation_tokens_total": state.metrics.generation_tokens,
        "max_model_len": state.engine.max_model_len,
        "api_key_required": state.api_key is not None,
    })


@router.get("/")
async def index() -> Response:
    page = resources.files("tritium.server").joinpath("static/index.html").read_text("utf-8")
    return HTMLResponse(page)
