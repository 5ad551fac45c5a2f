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
        "errors": sorted({r.error for r in results if not r.success})[:5],
        "duration_s": duration,
        "total_input_tokens": total_in,
        "total_output_tokens": total_out,
        "request_throughput": len(ok) / duration,
        "output_throughput": total_out / duration,
        "total_token_throughput": (total_in + total_out) / duration,
        "request_goodput": good / duration if slos_ms else None,
        "slos_ms": slos_ms,
    }
    for name, values in (("ttft", ttfts), ("tpot", tpots), ("itl", itls), ("e2el", e2els)):
        metrics.update(_stats(name, values, percentiles))
    metrics["percentiles"] = percentiles
    return metrics


def format_report(m: dict[str, Any], config: dict[str, Any]) -> str:
    """A table in the layout of vLLM's report."""
    rows = [("=", " Serving Benchmark Result ")]
    add = rows.append
    add(("Workload:", f"{config.get('workload')} x {config.get('num_prompts')}"))
    add(("Request rate (req/s):", str(config.get("request_rate"))))
    add(("Max concurrency:", str(config.get("max_concurrency"))))
    add(("Successful requests:", str(m["completed"])))
    if m["failed"]:
        add(("Failed requests:", f"{m['failed']} ({'; '.join(m['errors'])[:120]})"))
    add(("Benchmark duration (s):", f"{m['duration_s']:.2f}"))
    add(("Total input tokens:", str(m["total_input_tokens"])))
    add(("Total generated tokens:", str(m["total_output_tokens"])))
    add(("Request throughput (req/s):", f"{m['request_throughput']:.2f}"))
    if m["request_goodput"] is not None:
        add(("Request goodput (req/s):", f"{m['request_goodput']:.2f}"))
    add(("Output token throughput (tok/s):", f"{m['output_throughput']:.2f}"))
    add(("Total token throughput (tok/s):", f"{m['total_token_throughput']:.2f}"))
    add(("Peak concurrent requests:", str(m.get("peak_concurrency"))))
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
