"""AsyncLLMEngine: the synchronous LLMEngine driven by one background thread, for asyncio callers.

``LLMEngine.step()`` is CPU/GPU-bound and not thread-safe, so exactly one thread (the *engine
thread*) ever touches the engine. The asyncio side talks to it through two channels:

    event loop --(commands: add / abort / stop, a queue.Queue)--> engine thread
    engine thread --(loop.call_soon_threadsafe, one call per step)--> per-request RequestStream

Each engine iteration drains the commands, then runs one ``step()`` if anything is unfinished.
Outputs are cumulative (text and token ids so far), so a RequestStream keeps only the latest one:
a consumer that falls behind skips intermediate outputs instead of queueing them (the next chunk
it sends just carries more tokens).

Admission is bounded: an add is refused with :class:`QueueFullError` when the engine already has
``max_waiting_requests`` waiting (not yet running) sequences. A request that can never fit
raises the engine's ``ValueError`` back to the caller of :meth:`AsyncLLMEngine.add_request`.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

logger = logging.getLogger(__name__)

__all__ = [
    "AsyncLLMEngine",
    "EngineDeadError",
    "EngineObserver",
    "QueueFullError",
    "RequestAbortedError",
    "RequestStream",
]

_IDLE_WAIT_S = 0.1  # how long an idle engine thread blocks on the command queue per iteration
_STALL_WAIT_S = 0.002  # pause after a step that produced nothing, so a stalled engine can't spin


class QueueFullError(RuntimeError):
    """The waiting queue is full; the caller should retry later (HTTP 503)."""


class EngineDeadError(RuntimeError):
    """The engine thread has stopped (it crashed or was shut down)."""


class RequestAbortedError(RuntimeError):
    """The request was aborted before it finished (``abort`` or shutdown)."""


class EngineObserver(Protocol):
    """Receives per-request timing events from the engine thread (e.g. Prometheus metrics).

    Called from the engine thread: implementations must be thread-safe and quick.
    """

    def on_first_token(self, ttft_s: float, num_prompt_tokens: int) -> None: ...

    def on_new_tokens(self, num_tokens: int, interval_s: float | None) -> None: ...

    def on_finished(self, e2e_s: float, finish_reasons: list[str]) -> None: ...


class RequestStream:
    """The asyncio end of one request: iterate it to get cumulative RequestOutputs.

    Iteration ends after the output with ``finished=True``. If the request is aborted or the
    engine stops first, iteration raises :class:`RequestAbortedError` / :class:`EngineDeadError`.
    """

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.finished = False  # set once the final output (or an error) has been delivered
        self._latest: Any = None
        self._error: BaseException | None = None
        self._closed = False
        self._event = asyncio.Event()

    # -- called on the event loop by the engine thread's callbacks --
    def _put(self, output: Any) -> None:
        if self._closed:
            return
        self._latest = output
        if getattr(output, "finished", False):
            self._closed = True
        self._event.set()

    def _fail(self, error: BaseException) -> None:
        if self._closed:
            return
        self._error = error
        self._closed = True
        self._event.set()

    # -- consumer side --
    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> Any:
        while True:
            if self._latest is not None:
                out, self._latest = self._latest, None
                if getattr(out, "finished", False):
                    self.finished = True
                return out
            if self._error is not None:
                self.finished = True
                raise self._error
            if self.finished:
                raise StopAsyncIteration
            self._event.clear()
            await self._event.wait()


@dataclass
class _Add:
    request_id: str
    prompt: Any
    params: Any
    arrival_time: float | None
    stream: RequestStream
    admitted: asyncio.Future
    submitted: float  # perf_counter() when the caller submitted it: TTFT and e2e start here


@dataclass
class _Abort:
    request_id: str


@dataclass
class _Track:
    """Timing of one request, kept by the engine thread for the observer."""

    arrival: float
    first_token: float | None = None
    last_token: float | None = None
    num_tokens: int = 0
    finish_reasons: list[str] = field(default_factory=list)


class AsyncLLMEngine:
    """Runs ``engine`` in a background thread and serves asyncio callers.

    Args:
        engine: an ``LLMEngine`` (or anything with its interface: add_request, abort_request,
            step, has_unfinished_requests, stats, tokenizer, max_model_len).
        max_waiting_requests: refuse new requests (QueueFullError) while the engine has this
            many waiting sequences; None = unbounded.
        observer: optional :class:`EngineObserver` fed with per-request timings.
    """

    def __init__(
        self,
        engine: Any,
        *,
        max_waiting_requests: int | None = 256,
        observer: EngineObserver | None = None,
    ) -> None:
        if max_waiting_requests is not None and (
            not isinstance(max_waiting_requests, int) or max_waiting_requests < 0
        ):
            raise ValueError(
                f"max_waiting_requests must be an int >= 0 or None, got {max_waiting_requests!r}"
            )
        self.engine = engine
        self.max_waiting_requests = max_waiting_requests
        self.observer = observer
        self._commands: queue.Queue = queue.Queue()
        self._streams: dict[str, RequestStream] = {}  # engine thread only
        self._tracks: dict[str, _Track] = {}  # engine thread only
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._dead: BaseException | None = None
        self._stats: dict[str, Any] = {}
        self._stats_lock = threading.Lock()
        self._steps = 0

    @classmethod
    def from_config(cls, config: Any, **kwargs: Any) -> AsyncLLMEngine:
        """Build the ``LLMEngine`` from an ``EngineConfig`` (loads the model) and wrap it."""
        from tritium.engine.llm_engine import LLMEngine

        return cls(LLMEngine.from_config(config), **kwargs)

    # -- engine facts the server needs --
    @property
    def tokenizer(self) -> Any:
        return self.engine.tokenizer

    @property
    def max_model_len(self) -> int:
        return int(self.engine.max_model_len)

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self._dead is None

    @property
    def dead_error(self) -> BaseException | None:
        return self._dead

    # -- lifecycle --
    def start(self) -> None:
        """Start the engine thread, bound to the running event loop. Idempotent."""
        if self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="tritium-engine", daemon=True)
        self._thread.start()

    def begin_shutdown(self) -> None:
        """Ask the engine thread to stop after its current step (thread-safe, non-blocking):
        every unfinished request is then aborted and its stream fails with EngineDeadError."""
        self._stopping.set()
        self._commands.put(None)  # wake an idle thread

    def shutdown(self, timeout: float = 10.0) -> None:
        """:meth:`begin_shutdown`, then wait for the thread to exit (at most ``timeout`` s)."""
        self.begin_shutdown()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.warning("engine thread did not stop within %.1f s", timeout)

    # -- requests --
    async def add_request(
        self, request_id: str, prompt: Any, params: Any, arrival_time: float | None = None
    ) -> RequestStream:
        """Submit a request; returns its stream once the engine thread has accepted it.

        Raises QueueFullError (waiting queue full), ValueError/TypeError (the engine rejected
        the request, e.g. a prompt that can never fit), EngineDeadError (engine stopped).
        """
        if self._thread is None:
            self.start()
        self._check_alive()
        stream = RequestStream(request_id)
        admitted = asyncio.get_running_loop().create_future()
        self._commands.put(_Add(request_id, prompt, params, arrival_time, stream, admitted,
                                time.perf_counter()))
        try:
            await admitted  # raises what the engine thread raised
        except asyncio.CancelledError:
            self.abort(request_id)  # queued after the add, so it always finds the request
            raise
        return stream

    async def generate(
        self, prompt: Any, params: Any, request_id: str, arrival_time: float | None = None
    ) -> AsyncIterator[Any]:
        """Yield cumulative RequestOutputs until the request finishes; aborts it if the caller
        stops early (break, cancellation, exception)."""
        stream = await self.add_request(request_id, prompt, params, arrival_time)
        try:
            async for out in stream:
                yield out
        finally:
            if not stream.finished:
                self.abort(request_id)

    def abort(self, request_id: str) -> None:
        """Abort a request (thread-safe, non-blocking; unknown or finished ids are ignored).
        Its KV blocks are freed by the engine thread before its next step."""
        self._commands.put(_Abort(request_id))

    def stats(self) -> dict[str, Any]:
        """The latest ``engine.stats()`` snapshot (refreshed every engine iteration), plus
        ``num_requests`` (requests this wrapper is tracking) and ``engine_steps``."""
        with self._stats_lock:
            return dict(self._stats)

    def _check_alive(self) -> None:
        if self._dead is not None:
            raise EngineDeadError(f"the engine has stopped: {self._dead}")
        if self._stopping.is_set():
            raise EngineDeadError("the engine is shutting down")

    # ------------------------------------------------------------------ engine thread
    def _run(self) -> None:
        try:
            self._refresh_stats()
            stalled = False
            while not self._stopping.is_set():
                busy = self.engine.has_unfinished_requests()
                wait = _IDLE_WAIT_S if not busy else _STALL_WAIT_S if stalled else None
                self._apply(self._drain(wait))
                if self._stopping.is_set():
                    break
                if self.engine.has_unfinished_requests():
                    outputs = self.engine.step()
                    self._steps += 1
                    self._dispatch(outputs)
                    stalled = not outputs  # e.g. nothing fits yet: don't spin on step()
                self._refresh_stats()
            self._dead = EngineDeadError("the engine was shut down")
        except BaseException as e:  # noqa: BLE001 - report any crash to every waiting client
            logger.exception("engine thread crashed")
            self._dead = EngineDeadError(f"engine step failed: {type(e).__name__}: {e}")
        finally:
            self._close_all(self._dead)

    def _drain(self, wait: float | None) -> list[Any]:
        """Every queued command; blocks up to ``wait`` seconds for the first one (None: no)."""
        cmds = []
        try:
            cmds.append(self._commands.get(timeout=wait) if wait is not None
                        else self._commands.get_nowait())
            while True:
                cmds.append(self._commands.get_nowait())
        except queue.Empty:
            pass
        return [c for c in cmds if c is not None]

    def _apply(self, cmds: list[Any]) -> None:
        waiting = None
        for cmd in cmds:
            if isinstance(cmd, _Abort):
                self._abort_now(cmd.request_id, RequestAbortedError(f"{cmd.request_id} aborted"))
                continue
            if waiting is None:
                waiting = int(self.engine.stats().get("num_waiting", 0))
            error = None
            if self.max_waiting_requests is not None and waiting >= self.max_waiting_requests:
                error = QueueFullError(
                    f"the server is busy: {waiting} requests are already waiting "
                    f"(limit {self.max_waiting_requests}); retry later"
                )
            elif cmd.request_id in self._streams:
                error = ValueError(f"request id {cmd.request_id!r} is already in use")
            else:
                try:
                    self.engine.add_request(cmd.request_id, cmd.prompt, cmd.params,
                                            arrival_time=cmd.arrival_time)
                except Exception as e:  # noqa: BLE001 - the caller gets the engine's error
                    error = e
            if error is None:
                self._streams[cmd.request_id] = cmd.stream
                self._tracks[cmd.request_id] = _Track(arrival=cmd.submitted)
                waiting += max(1, int(getattr(cmd.params, "n", 1) or 1))
            self._call_loop(_resolve, cmd.admitted, error)

    def _abort_now(self, request_id: str, error: BaseException) -> None:
        stream = self._streams.pop(request_id, None)
        if stream is None:
            return
        try:
            self.engine.abort_request(request_id)
        except Exception:  # noqa: BLE001 - aborting must never kill the engine thread
            logger.exception("abort_request(%s) failed", request_id)
        track = self._tracks.pop(request_id, None)
        if track is not None and self.observer is not None:
            self.observer.on_finished(time.perf_counter() - track.arrival, ["abort"])
        self._call_loop(stream._fail, error)

    def _dispatch(self, outputs: list[Any]) -> None:
        now = time.perf_counter()
        batch = []
        for out in outputs:
            stream = self._streams.get(out.request_id)
            if stream is None:
                continue  # aborted meanwhile
            self._observe(out, now)
            batch.append((stream, _snapshot(out)))
            if out.finished:
                del self._streams[out.request_id]
        if batch:
            self._call_loop(_deliver, batch)

    def _observe(self, out: Any, now: float) -> None:
        track = self._tracks.get(out.request_id)
        if track is None:
            return
        total = sum(len(c.token_ids) for c in out.outputs)
        new = total - track.num_tokens
        if new > 0 and self.observer is not None:
            if track.first_token is None:
                self.observer.on_first_token(now - track.arrival, len(out.prompt_token_ids or []))
                self.observer.on_new_tokens(new, None)
            else:
                self.observer.on_new_tokens(new, (now - track.last_token) / new)
        if new > 0:
            track.first_token = track.first_token or now
            track.last_token = now
            track.num_tokens = total
        if out.finished:
            del self._tracks[out.request_id]
            if self.observer is not None:
                reasons = [c.finish_reason or "abort" for c in out.outputs]
                self.observer.on_finished(now - track.arrival, reasons)

    def _refresh_stats(self) -> None:
        stats = dict(self.engine.stats())
        stats["num_requests"] = len(self._streams)
        stats["engine_steps"] = self._steps
        with self._stats_lock:
            self._stats = stats

    def _close_all(self, error: BaseException | None) -> None:
        error = error or EngineDeadError("the engine has stopped")
        for request_id in list(self._streams):
            self._abort_now(request_id, error)
        while True:  # fail adds that never got an answer
            try:
                cmd = self._commands.get_nowait()
            except queue.Empty:
                break
            if isinstance(cmd, _Add):
                self._call_loop(_resolve, cmd.admitted, error)

    def _call_loop(self, fn: Any, *args: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            pass


def _resolve(future: asyncio.Future, error: BaseException | None) -> None:
    if future.done():  # the caller was cancelled while waiting
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


def _deliver(batch: list[tuple[RequestStream, Any]]) -> None:
    for stream, out in batch:
        stream._put(out)


def _snapshot(out: Any) -> Any:
    """A copy of a RequestOutput whose lists the engine thread will not mutate any more."""
    snap = copy.copy(out)
    snap.outputs = []
    for c in out.outputs:
        cc = copy.copy(c)
        cc.token_ids = list(c.token_ids)
        if getattr(c, "logprobs", None) is not None:
            cc.logprobs = list(c.logprobs)
        snap.outputs.append(cc)
    return snap
