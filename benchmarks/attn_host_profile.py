#!/usr/bin/env python3
"""Host-bound or not: tritium.flash_attn_func's wall time against its GPU time at short lengths.

    PYTHONPATH=src python3 benchmarks/attn_host_profile.py [--seqlen 1024]

Needs a CUDA GPU. D 128, bf16, 16k tokens (B = 16384 / S), H 16, causal and not: forward
(no grad), backward (replaying a retained graph) and forward + backward, timed with
``triton.testing.do_bench``; then 10 forward + backward iterations under ``torch.profiler``,
whose table gives the GPU time per kernel. Wall time well above the kernels' sum means the
GPU waits on the host (Python, autograd, launch paths).
"""

from __future__ import annotations

import argparse


def main() -> None:
    import torch
    import triton
    from torch.profiler import ProfilerActivity, profile

    import tritium

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seqlen", type=int, default=1024)
    S = ap.parse_args().seqlen
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


if __name__ == "__main__":
    main()
