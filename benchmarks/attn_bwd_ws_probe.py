#!/usr/bin/env python3
"""Warp-specialised Gluon dK/dV (kernels/flash_attn_hopper_bwd.py) against cuDNN and Triton.

    PYTHONPATH=src python benchmarks/attn_bwd_ws_probe.py --out ws_bwd.json

Needs an sm_90 GPU. Times ``kernels.flash_attn_bwd.flash_attn_bwd`` (the backward launcher:
preprocess, dK/dV, dQ) with the Gluon dK/dV and dQ kernels (``ws``, deterministic), the
one-kernel Gluon backward that adds dQ by TMA reduce-add (``fused``, deterministic=False;
``fused_s3`` with a 3-slot ring), the
Gluon dK/dV with the Triton dQ kernel (``ws_dkdv``), the Gluon dK/dV on 32-row tiles
(``ws_bm32``), the Triton kernels (``TRITIUM_HOPPER_WS=0``), and cuDNN SDPA's backward
(``autograd.grad`` of a retained graph), at D 128, 16k tokens (H 16, S 1k / 4k / 16k), bf16,
causal and not; FLOPs 2.5x the forward's. Before timing, each Gluon child compares dq, dk, dv
with the deterministic Triton launcher's on shapes with GQA and Sq != Sk (max error relative to
the largest entry). Each child runs with a time limit (a deadlock costs one row).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys

SEQS = (1024, 4096, 16384)
KINDS = ("cudnn", "triton", "ws", "fused", "fused_s3")
TOKENS, H, D = 16384, 16, 128


def _inputs(B, Sq, Sk, Hq, Hk, seed=0):
    import torch
    g = torch.Generator(device="cuda").manual_seed(seed)
    mk = lambda S, Hh: torch.randn(B, S, Hh, D, device="cuda", dtype=torch.bfloat16,  # noqa: E731
                                   generator=g)
    return mk(Sq, Hq), mk(Sk, Hk), mk(Sk, Hk), mk(Sq, Hq)


def child(kind: str, causal: bool) -> dict:
    import torch
    import triton

    from tritium.kernels import flash_attn_bwd as bwd_mod
    from tritium.kernels.flash_attn import flash_attn_fwd
    from tritium.kernels.flash_attn_bwd import flash_attn_bwd
    scale = D ** -0.5
    bwd_mod.WS_DQ = kind != "ws_dkdv"  # "ws_dkdv": Gluon dK/dV with the Triton dQ kernel
    if kind == "fused_s3":  # the fused kernel with a 3-slot Q/dO ring (2 is the default)
        from tritium.kernels import flash_attn_hopper_bwd_fused
        flash_attn_hopper_bwd_fused.STAGES = 3
    if kind == "ws_bm32":  # dK/dV on 32-row query tiles (no register spills), 6 slots
        from tritium.kernels import flash_attn_hopper_bwd
        flash_attn_hopper_bwd.DKDV_TILE = (32, 6)
    res = {"variant": f"{kind}_causal{int(causal)}", "tflops": {}, "checks": []}

    atomic = kind.startswith("fused")  # the one-kernel backward: deterministic=False

    def bwd(q, k, v, do, o, lse, deterministic=not atomic):
        return flash_attn_bwd(do, q, k, v, o, lse, softmax_scale=scale, causal=causal,
                              deterministic=deterministic)

    if kind.startswith(("ws", "fused")):
        for B, Sq, Sk, Hq, Hk in [(2, 512, 1024, 8, 2), (1, 1024, 1024, 16, 16),
                                  (1, 384, 640, 9, 3)]:
            q, k, v, do = _inputs(B, Sq, Sk, Hq, Hk)
            os.environ["TRITIUM_HOPPER_WS"] = "0"
            o, lse = flash_attn_fwd(q, k, v, softmax_scale=scale, causal=causal)
            ref = bwd(q, k, v, do, o, lse, deterministic=True)
            os.environ["TRITIUM_HOPPER_WS"] = "1"
            got = bwd(q, k, v, do, o, lse)
            torch.cuda.synchronize()
            res["checks"].append({"shape": [B, Sq, Sk, Hq, Hk], **{
                n: (a.float() - b.float()).abs().max().item() / max(b.float().abs().max().item(),
                                                                   1e-6)
                for n, a, b in zip(("dq", "dk", "dv"), got, ref)}})
    os.environ["TRITIUM_HOPPER_WS"] = "0" if kind in ("cudnn", "triton") else "1"
    for S in SEQS:
        B = TOKENS // S
        q, k, v, do = _inputs(B, S, S, H, H)
        flops = 2.5 * 4 * B * H * S * S * D / (2 if causal else 1)
        if kind == "cudnn":
            from torch.nn.attention import SDPBackend, sdpa_kernel
            qt, kt, vt = (t.transpose(1, 2).detach().requires_grad_() for t in (q, k, v))
            with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                out = torch.nn.functional.scaled_dot_product_attention(qt, kt, vt,
                                                                       is_causal=causal)
            dot = do.transpose(1, 2)
            fn = lambda out=out, qt=qt, kt=kt, vt=vt, dot=dot: torch.autograd.grad(  # noqa: E731
                out, (qt, kt, vt), dot, retain_graph=True)
        else:
            o, lse = flash_attn_fwd(q, k, v, softmax_scale=scale, causal=causal)
            fn = lambda q=q, k=k, v=v, do=do, o=o, lse=lse: bwd(q, k, v, do, o, lse)  # noqa: E731
        ms = triton.testing.do_bench(fn, warmup=10, rep=60)
        res["tflops"][str(S)] = round(flops / ms / 1e9, 1)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="attn_bwd_ws_probe.json")
    ap.add_argument("--timeout", type=int, default=150)
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--child", nargs=2, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1] == "1")))
        return
    import torch
    import triton
    report = {"date": datetime.date.today().isoformat(), "device": torch.cuda.get_device_name(),
              "torch": torch.__version__, "triton": triton.__version__, "results": []}
    for causal in ("0", "1"):
        for kind in args.kinds.split(","):
            cmd = [sys.executable, os.path.abspath(__file__), "--child", kind, causal]
            try:
                p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
                lines = [x for x in p.stdout.splitlines() if x.startswith("{")]
                r = json.loads(lines[-1]) if lines else {
                    "variant": f"{kind}_causal{causal}", "error": p.stderr[-1500:]}
            except subprocess.TimeoutExpired:
                r = {"variant": f"{kind}_causal{causal}", "error": "timed out (deadlock?)"}
            report["results"].append(r)
            print(json.dumps(r), flush=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    print(f"\n{'backward':<16}" + "".join(f"{'S=' + str(s):>10}" for s in SEQS))
    for r in report["results"]:
        if "error" in r:
            print(f"{r['variant']:<16} ERROR {r['error'][-300:]}")
            continue
        print(f"{r['variant']:<16}" + "".join(f"{r['tflops'].get(str(s), '-'):>10}"
                                            for s in SEQS))
        for c in r["checks"]:
            print(f"  check {c}")


if __name__ == "__main__":
    main()
