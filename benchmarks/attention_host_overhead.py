"""Host time of one public attention call with the kernel stubbed out (no GPU needed).

``tritium.flash_attn_func`` / ``flash_attn_varlen_func`` with inputs that need gradients, the
Triton launcher replaced by a function returning empty outputs: what remains is the Python
and dispatcher work per call (input checks, autograd node, custom-op machinery when compiling).
At S = 1k that host time is comparable to the kernel's own GPU time.

    python benchmarks/attention_host_overhead.py [--calls 200]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import tritium
import tritium.kernels.flash_attn as fa_kernels
import tritium.ops.attention as attention_ops


def _stub_fwd(q, k, v, **kw):
    varlen = kw.get("cu_seqlens_q") is not None
    lse_shape = (q.shape[1], q.shape[0]) if varlen else (q.shape[0], q.shape[2], q.shape[1])
    return torch.empty_like(q), torch.empty(lse_shape)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--calls", type=int, default=200)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    attention_ops.use_triton = lambda t: True  # route to the (stubbed) launcher
    fa_kernels.flash_attn_fwd = _stub_fwd
    q = torch.randn(1, 16384, 16, 128, dtype=torch.float16, requires_grad=True)
    flat = q.detach().view(-1, 16, 128).requires_grad_()
    cu = torch.tensor([0, 3000, 7000, 16384], dtype=torch.int32)
    cases = {
        "dense": lambda: tritium.flash_attn_func(q, q, q, causal=True),
        "varlen": lambda: tritium.flash_attn_varlen_func(flat, flat, flat, cu, cu, 9384, 9384,
                                                         causal=True),
    }
    res = {}
    for name, fn in cases.items():
        for _ in range(20):
            fn()
        t0 = time.perf_counter()
        for _ in range(args.calls):
            fn()
        res[name] = 1e6 * (time.perf_counter() - t0) / args.calls
        print(f"{name:>7}: {res[name]:.0f} us per call (kernel stubbed)")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"torch": torch.__version__, "us_per_call": res}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
