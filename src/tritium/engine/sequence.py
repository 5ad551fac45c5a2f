"""One sequence of tokens the engine is generating. Pure Python (no torch).

A request with ``SamplingParams.n == k`` becomes k sibling sequences that share the request id
and prompt; sibling ``index`` i draws with seed ``seed + i`` (vLLM's rule), so each sibling
produces exactly what a separate request with that seed would.

Progress is one counter: ``num_computed_tokens`` tokens of ``token_ids`` have their K/V in the
cache; the scheduler moves it toward ``num_tokens`` (no prefill/decode phases). After a sampled
step it trails ``num_tokens`` by one: the newest token is known but not yet computed.

Under async scheduling the engine schedules step N+1 while step N runs: the token step N will
sample is then a *placeholder* (``PLACEHOLDER``, at most one, always the last token) until the
step's result arrives and :meth:`Sequence.resolve_placeholder` writes the real id in.
"""

from __future__ import annotations

import enum
import itertools
import operator
import secrets
import time
from collections.abc import Sequence as SequenceABC
from typing import Any

from tritium.engine.outputs import RequestMetrics
from tritium.engine.sampling_params import SamplingParams

_seq_counter = itertools.count()

PLACEHOLDER = -1  # the token id of a token sampled by a step still in flight


class SequenceStatus(enum.Enum):
    WAITING = "waiting"  # queued, never admitted
    RUNNING = "running"  # admitted: holds KV blocks
    PREEMPTED = "preempted"  # queued again after its blocks were freed (will recompute)
    FINISHED_STOPPED = "finished_stopped"  # EOS, a stop token or a stop string
    FINISHED_LENGTH = "finished_length"  # max_tokens or max_model_len
    FINISHED_ABORTED = "finished_aborted"  # the caller aborted it

    @property
    def is_finished(self) -> bool:
        return self in _FINISH_REASONS

    @property
    def finish_reason(self) -> str | None:
        """OpenAI's finish_reason ("stop", "length", "abort"), None while unfinished."""
        return _FINISH_REASONS.get(self)


_FINISH_REASONS = {
    SequenceStatus.FINISHED_STOPPED: "stop",
    SequenceStatus.FINISHED_LENGTH: "length",
    SequenceStatus.FINISHED_ABORTED: "abort",
}


def default_seed(seed: int | None, index: int) -> int:
    """Seed of sibling ``index``: ``seed + index``, or a fresh random 63-bit seed when unseeded.

    Same rule as ``engine.sampler.sequence_seed`` (which imports torch, hence this copy).
    """
    return secrets.randbits(63) if seed is None else seed + index


class Sequence:
    """Tokens, KV blocks and progress of one generated sequence.

    Attributes:
        seq_id: unique across the process.
        request_id: the caller's id, shared by the n siblings of one request.
        index: sibling index in [0, n).
        sampling_params: the request's settings (shared by siblings).
        seed: this sibling's sampling seed (the sampler's per-row seed).
        prompt_token_ids: the prompt.
        token_ids: prompt followed by outputs.
        num_prompt_tokens: length of the prompt.
        output_token_ids: generated tokens.
        num_computed_tokens: tokens whose K/V are in the cache.
        num_cached_tokens: tokens served by the prefix cache at (latest) admission.
        block_table: KV block ids, block i holding tokens [i * block_size, (i + 1) * block_size).
        block_hashes: chained content hashes of the full blocks of ``token_ids`` computed so far
            (filled lazily by the block manager; depend on tokens only, so survive preemption).
        status: see :class:`SequenceStatus`.
        stop_reason: the stop token id or stop string that ended it, else None.
        metrics: timeline (arrival, first scheduled/token, finish) and counters.
        output_logprobs / cumulative_logprob: per-token logprobs when the request asked for them.
    """

    def __init__(
        self,
        request_id: str,
        prompt_token_ids: SequenceABC[int],
        sampling_params: SamplingParams | None = None,
        *,
        index: int = 0,
        seed: int | None = None,
        arrival_time: float | None = None,
        prompt: str | None = None,
    ) -> None:
        params = sampling_params if sampling_params is not None else SamplingParams()
        if not isinstance(params, SamplingParams):
            raise TypeError(f"sampling_params must be SamplingParams, got {type(params).__name__}")
        tokens = _token_ids(request_id, prompt_token_ids)
        if not 0 <= index < params.n:
            raise ValueError(f"index must be in [0, n={params.n}), got {index}")
        self.seq_id = next(_seq_counter)
        self.request_id = request_id
        self.index = index
        self.sampling_params = params
        self.seed = default_seed(params.seed, index) if seed is None else seed
        self.prompt = prompt
        self.prompt_token_ids: list[int] = tokens  # kept apart: read every step, never copied
        self.token_ids: list[int] = list(tokens)
        self.num_prompt_tokens = len(tokens)
        self.output_token_ids: list[int] = []
        self.num_computed_tokens = 0
        self.num_cached_tokens = 0
        self.block_table: list[int] = []
        self.block_hashes: list[bytes] = []
        self.status = SequenceStatus.WAITING
        self.stop_reason: int | str | None = None
        now = time.monotonic() if arrival_time is None else arrival_time
        self.metrics = RequestMetrics(arrival_time=now)
        self.output_logprobs: list[Any] | None = None if params.logprobs is None else []
        self.cumulative_logprob: float | None = None if params.logprobs is None else 0.0
        self.has_placeholder = False  # the last token is PLACEHOLDER (async scheduling)

    def __repr__(self) -> str:
        return (
            f"Sequence(id={self.seq_id}, request={self.request_id!r}#{self.index}, "
            f"{self.status.name}, tokens={self.num_prompt_tokens}+{self.num_output_tokens}, "
            f"computed={self.num_computed_tokens}, blocks={self.block_table})"
        )

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def last_token_id(self) -> int:
        return self.token_ids[-1]

    @property
    def is_finished(self) -> bool:
        return self.status.is_finished

    @property
    def finish_reason(self) -> str | None:
        return self.status.finish_reason

    @property
    def is_prefilling(self) -> bool:
        """Some prompt tokens are not computed yet."""
        return self.num_computed_tokens < self.num_prompt_tokens

    def append_token(self, token_id: int, logprob: Any | None = None) -> None:
        """Add one sampled token (and its logprobs entry when the request asked for logprobs)."""
        self.token_ids.append(token_id)
        self.output_token_ids.append(token_id)
        self.metrics.num_output_tokens += 1
        if self.output_logprobs is not None and logprob is not None:
            self.output_logprobs.append(logprob)
            self.cumulative_logprob += float(logprob.logprob)


    def append_placeholder(self) -> None:
        """Stand in for the token a launched step will sample (async scheduling)."""
        if self.has_placeholder:
            raise RuntimeError(f"{self} already waits for a sampled token")
        self.token_ids.append(PLACEHOLDER)
        self.output_token_ids.append(PLACEHOLDER)
        self.has_placeholder = True

    def resolve_placeholder(self, token_id: int) -> None:
        """The step's result arrived: the placeholder becomes ``token_id``."""
        if not self.has_placeholder:
            raise RuntimeError(f"{self} has no placeholder to resolve")
        self.token_ids[-1] = self.output_token_ids[-1] = token_id
        self.metrics.num_output_tokens += 1
        self.has_placeholder = False

    def drop_placeholder(self) -> None:
        """Forget the placeholder (the sequence finished before its token arrived)."""
        if self.has_placeholder:
            self.token_ids.pop()
            self.output_token_ids.pop()
            self.has_placeholder = False


def _token_ids(request_id: str, ids: SequenceABC[int]) -> list[int]:
    try:
        tokens = [operator.index(t) for t in ids]  # accepts numpy ints, refuses floats
    except TypeError:
        raise ValueError(f"request {request_id!r}: prompt token ids must be integers") from None
    if not tokens:
        raise ValueError(f"request {request_id!r}: the prompt must have at least one token")
    if min(tokens) < 0:
        raise ValueError(f"request {request_id!r}: negative prompt token id {min(tokens)}")
    return tokens


def create_sequences(
    request_id: str,
    prompt_token_ids: SequenceABC[int],
    sampling_params: SamplingParams | None = None,
    *,
    seeds: SequenceABC[int] | None = None,
    arrival_time: float | None = None,
    prompt: str | None = None,
) -> list[Sequence]:
    """The ``n`` sibling sequences of one request.

    Args:
        seeds: one seed per sibling; None = :func:`default_seed` for each.
    """
    params = sampling_params if sampling_params is not None else SamplingParams()
    if seeds is not None and len(seeds) != params.n:
        raise ValueError(f"got {len(seeds)} seeds for n={params.n} sequences")
    now = time.monotonic() if arrival_time is None else arrival_time
    return [
        Sequence(request_id, prompt_token_ids, params, index=i,
                 seed=None if seeds is None else seeds[i], arrival_time=now, prompt=prompt)
        for i in range(params.n)
    ]
