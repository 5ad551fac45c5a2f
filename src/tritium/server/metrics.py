"""Prometheus metrics of the server, in the text exposition format (version 0.0.4), by hand.

Names follow vLLM's (``vllm:`` becomes ``tritium:``) so existing dashboards map over:

    tritium:num_requests_running / num_requests_waiting   gauges, sequences in the engine
    tritium:kv_cache_usage_perc                           gauge, used KV blocks / all, in [0, 1]
    tritium:prefix_cache_queries_total / _hits_total      counters (tokens), from engine.stats()
    tritium:prefix_cache_hit_rate                         gauge, hits / queries since start
    tritium:num_preemptions_total                         counter
    tritium:time_to_first_token_seconds                   histogram, arrival -> first token
    tritium:time_per_output_token_seconds                 histogram, gap per token after the first
    tritium:e2e_request_latency_seconds                   histogram, arrival -> finished
    tritium:prompt_tokens_total / generation_tokens_total counters
    tritium:request_success_total{finished_reason=...}   counter

Timings are taken in the engine thread (``AsyncLLMEngine``'s observer hooks), from the moment the
request was submitted to the engine (after parsing and tokenization) to the end of the step that
produced the token.
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections import deque
from typing import Any

# vLLM's bucket boundaries, so histograms are comparable.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
                7.5, 10.0, 20.0, 40.0, 80.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
               120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
_THROUGHPUT_WINDOW_S = 5.0


class Histogram:
    """Cumulative-bucket histogram (Prometheus semantics: ``le`` upper bounds, +Inf last)."""

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.bounds = tuple(sorted(buckets))
        self.counts = [0] * (len(self.bounds) + 1)  # last: +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float, weight: int = 1) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += weight
        self.sum += value * weight
        self.count += weight

    def lines(self, name: str, labels: str) -> list[str]:
        out, running = [], 0
        for bound, c in zip((*self.bounds, math.inf), self.counts):
            running += c
            le = "+Inf" if bound == math.inf else repr(float(bound))
            out.append(f'{name}_bucket{{{labels}{"," if labels else ""}le="{le}"}} {running}')
        out.append(f"{name}_sum{{{labels}}} {self.sum!r}")
        out.append(f"{name}_count{{{labels}}} {self.count}")
        return out


class ServerMetrics:
    """Counters and histograms fed by the engine thread (an ``EngineObserver``), rendered on
    scrape together with the engine's gauges. Thread-safe."""

    def __init__(self, model_name: str) -> None:
        self.model_name = model_name
        self._lock = threading.Lock()
        self.ttft = Histogram(TTFT_BUCKETS)
        self.tpot = Histogram(TPOT_BUCKETS)
        self.e2e = Histogram(E2E_BUCKETS)
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.finished: dict[str, int] = {}
        self._recent: deque[tuple[float, int]] = deque()  # (time, tokens) for tokens/s

    # -- EngineObserver --
    def on_first_token(self, ttft_s: float, num_prompt_tokens: int) -> None:
        with self._lock:
            self.ttft.observe(ttft_s)
            self.prompt_tokens += num_prompt_tokens

    def on_new_tokens(self, num_tokens: int, interval_s: float | None) -> None:
        now = time.monotonic()
        with self._lock:
            self.generation_tokens += num_tokens
            if interval_s is not None:
                self.tpot.observe(interval_s, weight=num_tokens)
            self._recent.append((now, num_tokens))
            self._trim(now)

    def on_finished(self, e2e_s: float, finish_reasons: list[str]) -> None:
        with self._lock:
            self.e2e.observe(e2e_s)
            for r in finish_reasons:
                self.finished[r] = self.finished.get(r, 0) + 1

    # -- readers --
    def _trim(self, now: float) -> None:
        while self._recent and self._recent[0][0] < now - _THROUGHPUT_WINDOW_S:
            self._recent.popleft()

    def tokens_per_second(self) -> float:
        """Generation throughput over the last few seconds."""
        now = time.monotonic()
        with self._lock:
            self._trim(now)
            return sum(n for _, n in self._recent) / _THROUGHPUT_WINDOW_S

    def render(self, engine_stats: dict[str, Any]) -> str:
        """The Prometheus text exposition of every metric."""
        lab = f'model_name="{_escape(self.model_name)}"'
        queries = int(engine_stats.get("prefix_cache_queries", 0) or 0)
        hits = int(engine_stats.get("prefix_cache_hits", 0) or 0)
        lines: list[str] = []

        def metric(name: str, kind: str, help_: str, value: float) -> None:
            lines.extend([f"# HELP {name} {help_}", f"# TYPE {name} {kind}",
                          f"{name}{{{lab}}} {_num(value)}"])

        metric("tritium:num_requests_running", "gauge", "Sequences running in the engine.",
               engine_stats.get("num_running", 0))
        metric("tritium:num_requests_waiting", "gauge", "Sequences waiting to be scheduled.",
               engine_stats.get("num_waiting", 0))
        metric("tritium:kv_cache_usage_perc", "gauge", "Fraction of KV-cache blocks in use (0-1).",
               engine_stats.get("kv_cache_usage", 0.0))
        metric("tritium:prefix_cache_queries_total", "counter",
               "Prompt tokens looked up in the prefix cache.", queries)
        metric("tritium:prefix_cache_hits_total", "counter",
               "Prompt tokens found in the prefix cache.", hits)
        metric("tritium:prefix_cache_hit_rate", "gauge",
               "Prefix-cache hits / queries since start (0 when no query yet).",
               hits / queries if queries else 0.0)
        metric("tritium:num_preemptions_total", "counter", "Sequences preempted (recomputed).",
               engine_stats.get("num_preemptions", 0))
        with self._lock:
            metric("tritium:prompt_tokens_total", "counter", "Prefilled prompt tokens.",
                   self.prompt_tokens)
            metric("tritium:generation_tokens_total", "counter", "Generated tokens.",
                   self.generation_tokens)
            name = "tritium:request_success_total"
            lines += [f"# HELP {name} Finished requests by finish reason.",
                      f"# TYPE {name} counter"]
            for reason in sorted(set(self.finished) | {"stop", "length", "abort"}):
                lines.append(f'{name}{{{lab},finished_reason="{_escape(reason)}"}} '
                             f"{self.finished.get(reason, 0)}")
            for name, hist, help_ in (
                ("tritium:time_to_first_token_seconds", self.ttft, "Time to first token."),
                ("tritium:time_per_output_token_seconds", self.tpot,
                 "Time per output token after the first."),
                ("tritium:e2e_request_latency_seconds", self.e2e, "End-to-end request latency."),
            ):
                lines += [f"# HELP {name} {help_}", f"# TYPE {name} histogram"]
                lines += hist.lines(name, lab)
        return "\n".join(lines) + "\n"


def _num(value: Any) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


def _escape(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def parse_prometheus(text: str) -> dict[str, float]:
    """Sample name (with labels, as written) -> value; ignores comments. For tests and tools."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out
