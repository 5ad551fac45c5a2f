"""Engine jobs of one HTTP request: admission, waiting (watching for disconnects), merging
streams, and the server-sent-events response that aborts its jobs when the client leaves.

A client that disconnects, mid-stream or while waiting for a non-streamed answer, has its engine
requests aborted, which frees their KV blocks before the engine's next step.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
from fastapi import Request
from fastapi.responses import StreamingResponse

from tritium.engine.async_engine import (
    EngineDeadError,
    QueueFullError,
    RequestAbortedError,
    RequestStream,
)
from tritium.engine.sampling_params import SamplingParams
from tritium.server.errors import APIError
from tritium.server.protocol import UsageInfo

if TYPE_CHECKING:
    from tritium.server.api import ServerState

logger = logging.getLogger(__name__)


@dataclass
class Job:
    """One engine request: a tokenized prompt and, once admitted, its stream."""

    request_id: str
    prompt_ids: list[int]
    prompt_text: str
    stream: RequestStream | None = None


async def submit(state: ServerState, jobs: list[Job], params: list[SamplingParams]) -> None:
    """Admit every job, or none: on any failure the admitted ones are aborted."""
    try:
        for job, p in zip(jobs, params):
            job.stream = await state.engine.add_request(job.request_id, job.prompt_ids, p)
    except BaseException as e:
        abort_unfinished(state, jobs)
        if isinstance(e, QueueFullError):
            raise APIError(503, str(e), "service_unavailable_error", code="queue_full") from e
        if isinstance(e, EngineDeadError):
            raise APIError(503, str(e), "service_unavailable_error",
                           code="engine_unavailable") from e
        if isinstance(e, (ValueError, TypeError)):
            raise APIError(400, str(e)) from e
        raise


def abort_unfinished(state: ServerState, jobs: list[Job]) -> None:
    for job in jobs:
        if job.stream is not None and not job.stream.finished:
            state.engine.abort(job.request_id)


async def run_to_end(request: Request, state: ServerState, jobs: list[Job]) -> list[Any] | None:
    """Final outputs of every job; None if the client disconnected first (jobs aborted)."""

    async def last(stream: RequestStream) -> Any:
        out = None
        async for out in stream:  # noqa: B007 - only the final (cumulative) output matters
            pass
        return out

    gathered = asyncio.gather(*(last(j.stream) for j in jobs))
    watcher = asyncio.ensure_future(wait_disconnect(request))
    try:
        done, _ = await asyncio.wait({gathered, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if gathered in done:
            return gathered.result()
        logger.info("client disconnected; aborting %s", ", ".join(j.request_id for j in jobs))
        return None
    except (RequestAbortedError, EngineDeadError) as e:
        raise APIError(503, f"the request was aborted: {e}", "service_unavailable_error",
                       code="aborted") from e
    finally:
        watcher.cancel()
        gathered.cancel()
        abort_unfinished(state, jobs)


async def wait_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def merged(jobs: list[Job]) -> AsyncIterator[tuple[int, Any]]:
    """(job index, cumulative output) from every job's stream, as they arrive."""
    if len(jobs) == 1:
        async for out in jobs[0].stream:
            yield 0, out
        return
    q: asyncio.Queue = asyncio.Queue()

    async def pump(i: int, stream: RequestStream) -> None:
        try:
            async for out in stream:
                q.put_nowait((i, out, None))
            q.put_nowait((i, None, None))
        except Exception as e:  # noqa: BLE001 - re-raised in the consumer
            q.put_nowait((i, None, e))

    tasks = [asyncio.ensure_future(pump(i, j.stream)) for i, j in enumerate(jobs)]
    remaining = len(jobs)
    try:
        while remaining:
            i, out, err = await q.get()
            if err is not None:
                raise err
            if out is None:
                remaining -= 1
            else:
                yield i, out
    finally:
        for t in tasks:
            t.cancel()


class SSEResponse(StreamingResponse):
    """Server-sent events that stop (and call ``on_close``) as soon as the client disconnects,
    whatever ASGI spec version the server speaks."""

    media_type = "text/event-stream"

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], None]) -> None:
        super().__init__(content, headers={"Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
        self._on_close = on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            async with anyio.create_task_group() as tg:

                async def stream_then_stop() -> None:
                    try:
                        await self.stream_response(send)
                    except OSError:  # the client went away while we were writing
                        pass
                    tg.cancel_scope.cancel()

                tg.start_soon(stream_then_stop)
                await self.listen_for_disconnect(receive)
                tg.cancel_scope.cancel()
        finally:
            self._on_close()
            with anyio.CancelScope(shield=True):
                await self.body_iterator.aclose()


def sse(payload: Any) -> str:
    data = payload if isinstance(payload, str) else payload.model_dump_json()
    return f"data: {data}\n\n"


def usage_of(jobs: list[Job], finals: list[Any]) -> UsageInfo:
    prompt = sum(len(j.prompt_ids) for j in jobs)
    completion = sum(len(c.token_ids) for out in finals if out is not None for c in out.outputs)
    return UsageInfo(prompt_tokens=prompt, completion_tokens=completion,
                     total_tokens=prompt + completion)


def stream_error(e: Exception) -> str:
    err = APIError(503, f"the request was aborted: {e}", "service_unavailable_error",
                   code="aborted")
    return sse(json.dumps(err.body()))
