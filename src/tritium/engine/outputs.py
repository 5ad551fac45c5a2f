"""What the engine hands back per request and step (vLLM's shapes). Pure Python.

Times are seconds from one monotonic clock (the scheduler's; ``time.monotonic`` by default).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class RequestMetrics:
    """Timeline of one sequence (or, merged, of one request). ``None`` = not happened yet.

    Attributes:
        arrival_time: the request reached the engine.
        first_scheduled_time: its first chunk was scheduled.
        first_token_time: its first output token was sampled.
        last_token_time: its latest output token was sampled.
        finished_time: it finished (stopped, hit a length limit, or was aborted).
        num_output_tokens: output tokens so far.
        num_cached_tokens: prompt tokens served by the prefix cache at (latest) admission.
        num_preemptions: times it was preempted (freed and recomputed).
    """

    arrival_time: float
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    last_token_time: float | None = None
    finished_time: float | None = None
    num_output_tokens: int = 0
    num_cached_tokens: int = 0
    num_preemptions: int = 0

    @property
    def queue_time(self) -> float | None:
        """Arrival to first scheduled chunk."""
        if self.first_scheduled_time is None:
            return None
        return self.first_scheduled_time - self.arrival_time

    @property
    def ttft(self) -> float | None:
        """Time to first token: arrival to first sampled token."""
        if self.first_token_time is None:
            return None
        return self.first_token_time - self.arrival_time

    @property
    def tpot(self) -> float | None:
        """Time per output token after the first: (last - first token time) / (tokens - 1)."""
        if self.first_token_time is None or self.last_token_time is None:
            return None
        if self.num_output_tokens < 2:
            return None
        return (self.last_token_time - self.first_token_time) / (self.num_output_tokens - 1)

    @property
    def e2e_latency(self) -> float | None:
        """Arrival to finish."""
        if self.finished_time is None:
            return None
        return self.finished_time - self.arrival_time

    @classmethod
    def merged(cls, parts: Iterable[RequestMetrics]) -> RequestMetrics:
        """One request's metrics from its n sequences' (earliest start, latest end, summed counts).

        ``num_cached_tokens`` is the largest of the parts (siblings share one prompt).
        """
        parts = list(parts)
        if not parts:
            raise ValueError("merged() needs at least one RequestMetrics")

        def first(name: str) -> float | None:
            vals = [getattr(p, name) for p in parts if getattr(p, name) is not None]
            return min(vals) if vals else None

        def last(name: str, all_needed: bool) -> float | None:
            vals = [getattr(p, name) for p in parts]
            if any(v is None for v in vals) and all_needed:
                return None
            vals = [v for v in vals if v is not None]
            return max(vals) if vals else None

        return cls(
            arrival_time=min(p.arrival_time for p in parts),
            first_scheduled_time=first("first_scheduled_time"),
            first_token_time=first("first_token_time"),
            last_token_time=last("last_token_time", all_needed=False),
            finished_time=last("finished_time", all_needed=True),
            num_output_tokens=sum(p.num_output_tokens for p in parts),
            num_cached_tokens=max(p.num_cached_tokens for p in parts),
            num_preemptions=sum(p.num_preemptions for p in parts),
        )


@dataclass
class CompletionOutput:
    """One of a request's n completions.

    Attributes:
        index: which of the n sequences (0-based).
        text: generated text so far (stop string removed unless include_stop_str_in_output).
        token_ids: generated token ids so far.
        cumulative_logprob: sum of the sampled tokens' logprobs; None unless logprobs asked.
        logprobs: per output token logprobs (engine.logprobs.TokenLogprobs); None unless asked.
        finish_reason: None while running; "stop" (EOS, stop token or stop string), "length"
            (max_tokens or max_model_len) or "abort".
        stop_reason: the stop string or stop token id that ended it; None for EOS and otherwise.
    """

    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None = None
    logprobs: list[Any] | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestOutput:
    """A request's state after an engine step.

    Attributes:
        request_id: the caller's id.
        prompt: prompt text, or None when the request came as token ids.
        prompt_token_ids: the prompt's token ids.
        prompt_logprobs: per prompt token logprobs (the first is None); None unless asked.
        outputs: one CompletionOutput per sequence, ordered by index.
        finished: every sequence has finished.
        metrics: the request's merged metrics.
    """

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    prompt_logprobs: list[Any] | None
    outputs: list[CompletionOutput] = field(default_factory=list)
    finished: bool = False
    metrics: RequestMetrics | None = None
