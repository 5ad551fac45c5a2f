#!/usr/bin/env python3
"""Warp-specialised Gluon forward (kernels/flash_attn_hopper.py) against cuDNN and the library.

    PYTHONPATH=src python benchmarks/attn_fwd_ws_probe.py --out ws.json

Needs an sm_90 GPU. Each variant (ping-pong on/off, ring depth, key tile) runs in a child
process with a time limit, so that a deadlocked mbarrier protocol costs one variant, not the
run: the child first compares its output and log-sum-exp with the library's launcher
(``kernels.flash_attn.flash_attn_fwd``) on every shape, including a GQA one, then times the
dense non-causal forward at 16k tokens (H = 2048 / D, S = 1k / 4k / 16k), bf16. A separate child
times cuDNN SDPA and the library launcher on the same shapes. Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys

SEQS = (1024, 4096, 16384)
TOKENS = 16384
VARIANTS = {  # name: (pingpong, stages, block_n, head_dim)
    "ws_pp_s2": (True, 2, 128, 128),
    "ws_nopp_s2": (False, 2, 128, 128),
    "ws_pp_s3": (True, 3, 128, 128),
    "ws_pp_s2_n64": (True, 2, 64, 128),
    "ws_pp_s2_d64": (True, 2, 128, 64),
}


def _shapes(D):
    H = 2048 // D
    return [(TOKENS // S, S, H, H, D) for S in SEQS]


def _inputs(B, S, Hq, Hk, D, seed=0):
    import torch
    g = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(B, S, Hq, D, device="cuda", dtype=torch.bfloat16, generator=g)
    k = torch.randn(B, S, Hk, D, device="cuda", dtype=torch.bfloat16, generator=g)
    v = torch.randn(B, S, Hk, D, device="cuda", dtype=torch.bfloat16, generator=g)
    return q, k, v


def child_variant(name: str) -> dict:
    import torch
    import triton

    from tritium.kernels.flash_attn import flash_attn_fwd
    from tritium.kernels.flash_attn_hopper import flash_attn_fwd_ws
    pp, stages, bn, D = VARIANTS[name]
    res = {"variant": name, "checks": [], "tflops": {}}
    checks = [(2, 1024, 16, 4, D), (1, 384, 8, 8, D)] + _shapes(D)[:1]
    for B, S, Hq, Hk, _ in checks:
        q, k, v = _inputs(B, S, Hq, Hk, D)
        scale = D ** -0.5
        o, lse = flash_attn_fwd_ws(q, k, v, softmax_scale=scale, block_n=bn, stages=stages,
                                   pingpong=pp)
        ro, rlse = flash_attn_fwd(q, k, v, softmax_scale=scale)
        torch.cuda.synchronize()
        res["checks"].append({"shape": [B, S, Hq, Hk, D],
                              "out_max_diff": (o.float() - ro.float()).abs().max().item(),
                              "lse_max_diff": (lse - rlse).abs().max().item()})
    for B, S, Hq, Hk, _ in _shapes(D):
        q, k, v = _inputs(B, S, Hq, Hk, D)
        ms = triton.testing.do_bench(lambda q=q, k=k, v=v: flash_attn_fwd_ws(
            q, k, v, softmax_scale=D ** -0.5, block_n=bn, stages=stages, pingpong=pp),
            warmup=25, rep=100)
        res["tflops"][str(S)] = round(4 * B * Hq * S * S * D / ms / 1e9, 1)
    return res


def child_peers(D: int) -> dict:
    import torch
    import triton
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from tritium.kernels.flash_attn import flash_attn_fwd
    res = {"variant": f"peers_d{D}", "tflops": {"cudnn": {}, "library": {}}}
    for B, S, Hq, Hk, _ in _shapes(D):
        q, k, v = _inputs(B, S, Hq, Hk, D)
        qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
        flops = 4 * B * Hq * S * S * D

        def cudnn(qt=qt, kt=kt, vt=vt):
            with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                return torch.nn.functional.scaled_dot_product_attention(qt, kt, vt)

        def library(q=q, k=k, v=v):
            return flash_attn_fwd(q, k, v, softmax_scale=D ** -0.5)
        for key, fn in (("cudnn", cudnn), ("library", library)):
            ms = triton.testing.do_bench(fn, warmup=25, rep=100)
            res["tflops"][key][str(S)] = round(flops / ms / 1e9, 1)
    return res


def run_child(arg: str, timeout: int) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", arg]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"variant": arg, "error": f"timed out after {timeout} s (deadlock?)"}
    for line in reversed(p.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return {"variant": arg, "error": (p.stderr or p.stdout)[-1500:]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="attn_fwd_ws_probe.json")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--timeout", type=int, default=90)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        res = (child_peers(int(args.child[len("peers_d"):])) if args.child.startswith("peers_d")
               else child_variant(args.child))
        print(json.dumps(res))
        return
    import torch
    import triton
    report = {"date": datetime.date.today().isoformat(),
              "device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "triton": triton.__version__, "tokens": TOKENS, "dtype": "bfloat16",
              "results": []}
    names = [n for n in args.variants.split(",") if n]
    for arg in ["peers_d128", "peers_d64"] + names:
        r = run_child(arg, args.timeout if not arg.startswith("peers") else 300)
        report["results"].append(r)
        print(json.dumps(r), flush=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    print(f"\n{'variant':<16}" + "".join(f"{'S=' + str(s):>10}" for s in SEQS) + "  checks")
    for r in report["results"]:
        if r["variant"].startswith("peers"):
            for key in ("cudnn", "library"):
                row = r.get("tflops", {}).get(key, {})
                print(f"{key + '_' + r['variant'][-3:]:<16}"
                      + "".join(f"{row.get(str(s), '-'):>10}" for s in SEQS))
            continue
        if "error" in r:
            print(f"{r['variant']:<16} ERROR {r['error'][-200:]}")
            continue
        worst = max(c["out_max_diff"] for c in r["checks"])
        worst_lse = max(c["lse_max_diff"] for c in r["checks"])
        print(f"{r['variant']:<16}" + "".join(f"{r['tflops'].get(str(s), '-'):>10}" for s in SEQS)
              + f"  out {worst:.3g} lse {worst_lse:.3g}")


if __name__ == "__main__":
    main()
