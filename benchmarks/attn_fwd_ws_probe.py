#!/usr/bin/env python3
"""Warp-specialised Gluon forward (kernels/flash_attn_hopper.py) against cuDNN and the library.

    PYTHONPATH=src python benchmarks/attn_fwd_ws_probe.py --out ws.json

Needs an sm_90 GPU. Each variant (persistent or one item per program, ring depth, causal)
runs in a child process with a time limit, so that a deadlocked mbarrier protocol costs one
variant, not the run: the child first compares its output and log-sum-exp with the library's
Triton launcher (``kernels.flash_attn.flash_attn_fwd`` with ``TRITIUM_HOPPER_WS=0``) on a few
shapes (GQA, Sq != Sk), then times the dense forward at 16k tokens (H = 2048 / D, S = 1k / 4k /
16k), bf16. Separate children time cuDNN SDPA and the Triton launcher on the same shapes.
Prints a table, writes JSON.
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
VARIANTS = {  # name: (persistent, stages, block_n, head_dim, causal, intra, pairs)
    "ws_persist": (True, 3, 128, 128, False, False, False),
    "ws_persist_intra": (True, 3, 128, 128, False, True, False),
    "ws_causal_intra": (False, 3, 128, 128, True, True, False),
    "ws_causal_intra_pairs": (False, 3, 128, 128, True, True, True),
    "ws_causal_pairs_persist": (True, 3, 128, 128, True, True, True),
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
    persistent, stages, bn, D, causal, intra, pairs = VARIANTS[name]
    res = {"variant": name, "checks": [], "tflops": {}}
    checks = [(2, 1024, 1024, 16, 4), (1, 384, 384, 8, 8), (1, 256, 640, 4, 2)] + [
        (B, S, S, Hq, Hk) for B, S, Hq, Hk, _ in _shapes(D)[:1]]
    os.environ["TRITIUM_HOPPER_WS"] = "0"  # the reference: the library's Triton kernel
    for B, Sq, Sk, Hq, Hk in checks:
        q, _, _ = _inputs(B, Sq, Hq, Hk, D)
        _, k, v = _inputs(B, Sk, Hq, Hk, D, seed=1)
        scale = D ** -0.5
        o, lse = flash_attn_fwd_ws(q, k, v, softmax_scale=scale, causal=causal, block_n=bn,
                                   stages=stages, persistent=persistent,
                                   intra=intra, pairs=pairs)
        ro, rlse = flash_attn_fwd(q, k, v, softmax_scale=scale, causal=causal)
        torch.cuda.synchronize()
        res["checks"].append({"shape": [B, Sq, Sk, Hq, Hk, D],
                              "out_max_diff": (o.float() - ro.float()).abs().max().item(),
                              "lse_max_diff": (lse - rlse).abs().max().item()})
    for B, S, Hq, Hk, _ in _shapes(D):
        q, k, v = _inputs(B, S, Hq, Hk, D)
        ms = triton.testing.do_bench(lambda q=q, k=k, v=v: flash_attn_fwd_ws(
            q, k, v, softmax_scale=D ** -0.5, causal=causal, block_n=bn, stages=stages,
            persistent=persistent, intra=intra, pairs=pairs), warmup=25, rep=100)
        flops = 4 * B * Hq * S * S * D / (2 if causal else 1)
        res["tflops"][str(S)] = round(flops / ms / 1e9, 1)
    return res


def child_peers(D: int, causal: bool) -> dict:
    import torch
    import triton
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from tritium.kernels.flash_attn import flash_attn_fwd
    os.environ["TRITIUM_HOPPER_WS"] = "0"  # "library" = the Triton kernel
    res = {"variant": f"peers_d{D}" + ("_causal" if causal else ""),
           "tflops": {"cudnn": {}, "library": {}}}
    for B, S, Hq, Hk, _ in _shapes(D):
        q, k, v = _inputs(B, S, Hq, Hk, D)
        qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
        flops = 4 * B * Hq * S * S * D / (2 if causal else 1)

        def cudnn(qt=qt, kt=kt, vt=vt):
            with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                return torch.nn.functional.scaled_dot_product_attention(qt, kt, vt,
                                                                        is_causal=causal)

        def library(q=q, k=k, v=v):
            return flash_attn_fwd(q, k, v, softmax_scale=D ** -0.5, causal=causal)
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
        if args.child.startswith("peers_d"):
            res = child_peers(int(args.child[7:10]), args.child.endswith("_causal"))
        else:
            res = child_variant(args.child)
        print(json.dumps(res))
        return
    import torch
    import triton
    report = {"date": datetime.date.today().isoformat(),
              "device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "triton": triton.__version__, "tokens": TOKENS, "dtype": "bfloat16",
              "results": []}
    names = [n for n in args.variants.split(",") if n]
    for arg in ["peers_d128", "peers_d128_causal"] + names:
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
                print(f"{key + r['variant'][7:]:<16}"
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
