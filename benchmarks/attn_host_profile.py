#!/usr/bin/env python3
"""Host-bound or not: tritium.flash_attn_func's wall time against its GPU time at short lengths.

    PYTHONPATH=src python3 benchmarks/attn_host_profile.py [--seqlen 1024]

Needs a CUDA GPU. D 128, bf16, 16k tokens (B = 16384 / S), H 16, causal and not: forward
(no grad), backward (replaying a retained graph) and forward + backward, timed with
``triton.testing.do_bench``; then 10 forward + backward iterations under ``torch.profiler``,
whose table gives the GPU time per kernel. Wall time well above the kernels' sum means the
GPU waits on the host (Python, autograd, launch paths). With ``--host``: the host time per call
(``time.perf_counter`` over 100 calls with no synchronisation, after a long GPU job queued first
so that no call waits on the device; then with the GPU idle at each call, and back to back with
one sync at the end) and a ``cProfile`` table of where it goes. With ``--gaps``: the GPU
timeline of fwd+bwd in do_bench's loop, each kernel with the idle time before it.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time


def main() -> None:
    import torch
    import triton
    from torch.profiler import ProfilerActivity, profile

    import tritium

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seqlen", type=int, default=1024)
    ap.add_argument("--host", action="store_true", help="host time per call and cProfile only")
    ap.add_argument("--gaps", action="store_true",
                    help="GPU timeline of fwd+bwd in a do_bench-like loop: kernels and idle gaps")
    args = ap.parse_args()
    S = args.seqlen
    B, H, D = 16384 // S, 16, 128
    for causal in (True, False):
        q, k, v = (torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16,
                               requires_grad=True) for _ in range(3))
        do = torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16)
        out = tritium.flash_attn_func(q, k, v, causal=causal)

        def fwd(causal=causal, q=q, k=k, v=v):
            with torch.no_grad():
                return tritium.flash_attn_func(q, k, v, causal=causal)

        def bwd(out=out, q=q, k=k, v=v, do=do):
            torch.autograd.grad(out, (q, k, v), do, retain_graph=True)

        def fwd_bwd(causal=causal, q=q, k=k, v=v, do=do):
            torch.autograd.grad(tritium.flash_attn_func(q, k, v, causal=causal), (q, k, v), do)

        if args.gaps:
            _gaps(torch, causal, fwd_bwd)
            continue
        if args.host:
            for name, fn in (("fwd", fwd), ("bwd", bwd), ("fwd+bwd", fwd_bwd)):
                _host_time(torch, name, causal, fn)
            continue
        for name, fn in (("fwd", fwd), ("bwd", bwd), ("fwd+bwd", fwd_bwd)):
            ms = triton.testing.do_bench(fn, warmup=10, rep=60)
            print(f"causal={causal} {name}: {ms:.3f} ms")
        for _ in range(5):
            fwd_bwd()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
            for _ in range(10):
                fwd_bwd()
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=14,
                                        max_name_column_width=60))


def _host_time(torch, name: str, causal: bool, fn, calls: int = 100) -> None:
    """Host microseconds per call while the GPU is busy (a long matmul chain queued first, so
    that the calls only enqueue work), then a cProfile table of the same calls."""
    for _ in range(5):
        fn()
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)

    def busy():
        torch.cuda.synchronize()
        for _ in range(60):  # 8192^3 matmuls, ~85 ms of queued work on an H100
            a @ a

    busy()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    us = 1e6 * (time.perf_counter() - t0) / calls
    torch.cuda.synchronize()
    idle = []  # the same, each call starting on an idle GPU (which runs its kernels meanwhile)
    for _ in range(20):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        idle.append(1e6 * (time.perf_counter() - t0))
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):  # back to back, one sync at the end: max(host, GPU) per call
        fn()
    torch.cuda.synchronize()
    loop = 1e6 * (time.perf_counter() - t0) / calls
    print(f"causal={causal} {name}: {us:.0f} us of host time per call (GPU busy), "
          f"{sorted(idle)[10]:.0f} us (GPU idle at the call), {loop:.0f} us per call back to back")
    busy()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(calls):
        fn()
    prof.disable()
    torch.cuda.synchronize()
    pstats.Stats(prof).sort_stats("tottime").print_stats(18)


def _gaps(torch, causal: bool, fn, iters: int = 12) -> None:
    """fn in do_bench's loop (zero a 256 MB buffer, fn) under torch.profiler; prints the last
    three iterations' span and kernel time, then each kernel with the idle time before it."""
    import json
    import tempfile

    from torch.profiler import ProfilerActivity, profile

    cache = torch.empty(256 * 2**20, dtype=torch.int8, device="cuda")
    for _ in range(5):
        cache.zero_()
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        for _ in range(iters):
            cache.zero_()
            fn()
        torch.cuda.synchronize()
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        prof.export_chrome_trace(f.name)
        with open(f.name) as g:
            trace = json.load(g)
    ks = sorted((e for e in trace["traceEvents"] if e.get("cat") == "kernel"),
                key=lambda e: e["ts"])
    zeros = [i for i, e in enumerate(ks) if "elementwise" in e["name"].lower()
             and e["dur"] > 40]  # the 256 MB zero_ (one per iteration)
    start = zeros[-3] if len(zeros) >= 3 else 0
    end_t = ks[-1]["ts"] + ks[-1]["dur"]
    busy = sum(e["dur"] for e in ks[start:])
    print(f"causal={causal}: last iterations span {end_t - ks[start]['ts']:.0f} us, "
          f"kernels busy {busy:.0f} us")
    prev_end = None
    for e in ks[start:]:
        gap = 0.0 if prev_end is None else e["ts"] - prev_end
        print(f"  gap {gap:7.1f} us  dur {e['dur']:7.1f} us  {e['name'][:70]}")
        prev_end = e["ts"] + e["dur"]


if __name__ == "__main__":
    main()
