"""Metrics of a serving benchmark run (vLLM ``bench serve`` definitions) and their table.

Statistics use numpy's defaults (``np.percentile`` linear interpolation, population ``np.std``),
as vLLM does; times are reported in milliseconds.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _stats(name: str, values_s: list[float], percentiles: list[float]) -> dict[str, float]:
    ms = np.asarray(values_s or [0.0], dtype=np.float64) * 1000.0
    out = {f"mean_{name}_ms": float(ms.mean()), f"median_{name}_ms": float(np.median(ms)),
           f"std_{name}_ms": float(ms.std())}
    for p in percentiles:
        out[f"p{p:g}_{name}_ms"] = float(np.percentile(ms, p))
    return out


def summarize(results: list[Any], duration: float, slos_ms: dict[str, float],
              percentiles: list[float]) -> dict[str, Any]:
    """Aggregate RequestResults of one run (duration in s) into vLLM's metrics."""
    ok = [r for r in results if r.success]
    total_in = sum(r.prompt_len for r in ok)
    total_out = sum(r.output_tokens for r in ok)
    ttfts = [r.ttft for r in ok]
    e2els = [r.latency for r in ok]
    tpots = [(r.latency - r.ttft) / (r.output_tokens - 1) for r in ok if r.output_tokens > 1]
    itls = [gap for r in ok for gap in r.itl]
    good = 0
    for r in ok:
        tpot = (r.latency - r.ttft) / (r.output_tokens - 1) if r.output_tokens > 1 else 0.0
        measured = {"ttft": r.ttft, "tpot": tpot, "e2el": r.latency}
        if all(measured[k] * 1000.0 <= slo for k, slo in slos_ms.items()):
            good += 1
    metrics: dict[str, Any] = {
        "completed": len(ok),
        "failed": len(results) - len(ok),
        "error_samples": sorted({r.error for r in results if not r.success})[:5],
        "duration": duration,
        "total_input_tokens": total_in,
        "total_output_tokens": total_out,
        "request_throughput": len(ok) / duration,
        "output_throughput": total_out / duration,
        "total_token_throughput": (total_in + total_out) / duration,
        "request_goodput": good / duration if slos_ms else None,
        "slos_ms": slos_ms,
    }
    metrics.update(per_second_peaks(ok))
    for name, values in (("ttft", ttfts), ("tpot", tpots), ("itl", itls), ("e2el", e2els)):
        metrics.update(_stats(name, values, percentiles))
    metrics["percentiles"] = percentiles
    return metrics


def per_second_peaks(ok: list[Any]) -> dict[str, float | int]:
    """vLLM's peaks over 1-second buckets from the first request's start: the most content
    chunks received in one bucket (``max_output_tokens_per_s``; vLLM counts chunks too, which
    carry one token each unless a client falls a step behind and the stream coalesces them)
    and the most requests in flight during some part of one bucket
    (``max_concurrent_requests``)."""
    if not ok:
        return {"max_output_tokens_per_s": 0.0, "max_concurrent_requests": 0}
    t0 = min(r.start for r in ok)
    n = int(max(r.start + r.latency for r in ok) - t0) + 1
    chunks = np.zeros(n, dtype=np.int64)
    in_flight = np.zeros(n, dtype=np.int64)
    for r in ok:
        times = r.start - t0 + r.ttft + np.concatenate([[0.0], np.cumsum(r.itl)])
        np.add.at(chunks, np.minimum(times.astype(np.int64), n - 1), 1)
        in_flight[int(r.start - t0): int(r.start + r.latency - t0) + 1] += 1
    return {"max_output_tokens_per_s": float(chunks.max()),
            "max_concurrent_requests": int(in_flight.max())}


def format_report(m: dict[str, Any], config: dict[str, Any]) -> str:
    """A table in the layout of vLLM's report."""
    rows = [("=", " Serving Benchmark Result ")]
    add = rows.append
    add(("Workload:", f"{config.get('workload')} x {config.get('num_prompts')}"))
    add(("Request rate (req/s):", str(config.get("request_rate"))))
    add(("Max concurrency:", str(config.get("max_concurrency"))))
    add(("Successful requests:", str(m["completed"])))
    if m["failed"]:
        add(("Failed requests:", f"{m['failed']} ({'; '.join(m['error_samples'])[:120]})"))
    add(("Benchmark duration (s):", f"{m['duration']:.2f}"))
    add(("Total input tokens:", str(m["total_input_tokens"])))
    add(("Total generated tokens:", str(m["total_output_tokens"])))
    add(("Request throughput (req/s):", f"{m['request_throughput']:.2f}"))
    if m["request_goodput"] is not None:
        add(("Request goodput (req/s):", f"{m['request_goodput']:.2f}"))
    add(("Output token throughput (tok/s):", f"{m['output_throughput']:.2f}"))
    add(("Peak output token throughput (tok/s):", f"{m['max_output_tokens_per_s']:.2f}"))
    add(("Peak concurrent requests:", str(m["max_concurrent_requests"])))
    add(("Total token throughput (tok/s):", f"{m['total_token_throughput']:.2f}"))
    for key, title in (("ttft", "Time to First Token"), ("tpot", "Time per Output Token "
                       "(excl. 1st token)"), ("itl", "Inter-token Latency"),
                       ("e2el", "End-to-end Latency")):
        add(("-", f" {title} "))
        add((f"Mean {key.upper()} (ms):", f"{m[f'mean_{key}_ms']:.2f}"))
        add((f"Median {key.upper()} (ms):", f"{m[f'median_{key}_ms']:.2f}"))
        for p in m["percentiles"]:
            add((f"P{p:g} {key.upper()} (ms):", f"{m[f'p{p:g}_{key}_ms']:.2f}"))
    add(("=", ""))
    lines = []
    for left, right in rows:
        if left in ("=", "-"):
            lines.append(right.center(50, left))
        else:
            lines.append(f"{left:<40}{right:>10}")
    return "\n".join(lines)


def markdown_table(records: list[dict[str, Any]]) -> str:
    """One Markdown row per run record (docs/benchmarks.md's serving table, p99 = the
    record's highest percentile)."""
    head = ("| workload | rate | max conc. | ok / failed | req/s | out tok/s | total tok/s | "
            "peak out tok/s | TTFT mean / p{p} (ms) | TPOT mean / p{p} (ms) | "
            "ITL mean / p{p} (ms) | E2EL mean / p{p} (ms) |")
    p = f"{max(records[0]['percentiles']):g}" if records else "99"
    lines = [head.format(p=p), "|" + "---|" * 12]
    for r in records:
        cfg = r.get("config", {})
        if r.get("backend") == "openai-chat":
            work = f"chat {r['num_prompts']} x ~{cfg.get('chat_input_words')} words / " \
                   f"~{cfg.get('chat_output_len')}"
        else:
            work = f"random {r['num_prompts']} x {cfg.get('random_input_len')} / " \
                   f"{cfg.get('random_output_len')}"
        lat = " | ".join(f"{r[f'mean_{k}_ms']:,.1f} / {r[f'p{p}_{k}_ms']:,.1f}"
                         for k in ("ttft", "tpot", "itl", "e2el"))
        lines.append(f"| {work} | {r['request_rate']} | {r['max_concurrency']} | "
                     f"{r['completed']} / {r['failed']} | {r['request_throughput']:.2f} | "
                     f"{r['output_throughput']:,.0f} | {r['total_token_throughput']:,.0f} | "
                     f"{r['max_output_tokens_per_s']:,.0f} | {lat} |")
    return "\n".join(lines)
