"""Decode attention micro-benchmark: tritium's paged decode kernel in GB/s, against the card.

One new token per sequence attends over ``context`` cached tokens in a paged bf16 cache
(pages scattered at random over the pool, as after a while of serving). Bytes moved, the
floor of any decode kernel:
    K + V:   2 * batch * context * Hk * D * elt     (read once: GQA groups share each page)
    q + out: 2 * batch * Hq * D * elt
Achieved GB/s = bytes / median time, reported against the device-to-device copy bandwidth
measured in the same run (bytes read + bytes written, the METHOD.md convention) and against a
plain-PyTorch baseline (gather pages with indexing, then SDPA). FlashInfer / vLLM are timed
only if importable (recorded either way).

    python benchmarks/decode_attention.py --out decode.json              # headline + table
    python benchmarks/decode_attention.py --sweep --tune --out d.json    # + sweep, configs
    python benchmarks/decode_attention.py --smoke --out smoke.json       # CPU, interpreter
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.util
import json
import math
import os
import platform
import sys
import time


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--context", type=int, default=4096)
    p.add_argument("--num-q-heads", type=int, default=32)
    p.add_argument("--num-kv-heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--page", type=int, default=16)
    p.add_argument("--dtype", choices=["bf16", "fp16"], default="bf16")
    p.add_argument("--kv-dtype", choices=["auto", "fp8"], default="auto",
                   help="fp8: e4m3 cache (scale 1), half the K/V bytes")
    p.add_argument("--sweep", action="store_true", help="batch 1..256 x context 512..32k")
    p.add_argument("--tune", action="store_true", help="time kernel configs at the headline")
    p.add_argument("--splits", default="",
                   help="also time these forced split counts, e.g. '1,2,4', at each point")
    p.add_argument("--points", default="",
                   help="more batch x context points, e.g. '136x2048,96x3072'")
    p.add_argument("--max-kv-gib", type=float, default=8.0, help="skip larger sweep points")
    p.add_argument("--rep-ms", type=int, default=40, help="do_bench repetition time")
    p.add_argument("--smoke", action="store_true", help="tiny CPU run under the interpreter")
    p.add_argument("--out", default=None, help="JSON output path")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# inputs and peers
# ---------------------------------------------------------------------------------------------
def make_inputs(batch, context, hq, hk, d, page, dtype, device, seed=0, kv_dtype=None):
    """Random q and a paged cache with each sequence's pages scattered over the pool."""
    import torch

    from tritium.ops.paged_attention import AttentionMetadata

    g = torch.Generator(device=device).manual_seed(seed)
    nblk = math.ceil(context / page)
    num_blocks = batch * nblk
    k_cache = torch.randn(num_blocks, page, hk, d, device=device, dtype=dtype, generator=g)
    v_cache = torch.randn(num_blocks, page, hk, d, device=device, dtype=dtype, generator=g)
    perm = torch.randperm(num_blocks, device=device, generator=g)
    block_tables = perm.view(batch, nblk).to(torch.int32)
    if kv_dtype is not None:
        k_cache, v_cache = k_cache.to(kv_dtype), v_cache.to(kv_dtype)
    q = torch.randn(batch, hq, d, device=device, dtype=dtype, generator=g)
    seq_lens = torch.full((batch,), context, dtype=torch.int32, device=device)
    meta = AttentionMetadata(
        slot_mapping=torch.zeros(batch, dtype=torch.int64, device=device),
        block_tables=block_tables, seq_lens=seq_lens,
        cu_seqlens_q=torch.arange(batch + 1, dtype=torch.int32, device=device),
        max_seqlen_q=1, max_seqlen_k=context, decode_only=True)
    return q, k_cache, v_cache, meta


def decode_bytes(batch, context, hq, hk, d, elt, kv_elt) -> int:
    return 2 * batch * context * hk * d * kv_elt + 2 * batch * hq * d * elt


def torch_gather(k_cache, v_cache, meta):
    """(B, Hk, L, D) K and V gathered page by page with plain indexing."""
    B, nblk = meta.block_tables.shape
    L = meta.max_seqlen_k
    idx = meta.block_tables.long()
    k = k_cache[idx].flatten(1, 2)[:, :L].transpose(1, 2)
    v = v_cache[idx].flatten(1, 2)[:, :L].transpose(1, 2)
    return k, v


def torch_decode(q, k_cache, v_cache, meta, scale):
    """Plain PyTorch: gather, then SDPA (GQA through enable_gqa, or repeat_interleave)."""
    import torch.nn.functional as F

    k, v = torch_gather(k_cache, v_cache, meta)
    qq = q.unsqueeze(2)  # (B, Hq, 1, D)
    try:
        o = F.scaled_dot_product_attention(qq, k, v, scale=scale, enable_gqa=True)
    except TypeError:  # torch < 2.5
        g = q.shape[1] // k.shape[1]
        o = F.scaled_dot_product_attention(qq, k.repeat_interleave(g, 1),
                                           v.repeat_interleave(g, 1), scale=scale)
    return o.squeeze(2)


def peers_available() -> dict:
    return {name: importlib.util.find_spec(name) is not None for name in ("flashinfer", "vllm")}


# ---------------------------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------------------------
def bench_ms(fn, rep_ms, device) -> float:
    """Median milliseconds: triton's do_bench (CUDA events) on GPU, a wall clock on CPU."""
    if device.type == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=10, rep=rep_ms, return_mode="median"))
    fn()
    ts = []
    for _ in range(2):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
    return sorted(ts)[len(ts) // 2]


def copy_bandwidth(device, nbytes, rep_ms) -> float:
    """Device-to-device copy GB/s, counting bytes read plus bytes written."""
    import torch

    src = torch.empty(nbytes // 2, dtype=torch.bfloat16, device=device).normal_()
    dst = torch.empty_like(src)
    ms = bench_ms(lambda: dst.copy_(src), rep_ms, device)
    return 2 * nbytes / ms / 1e6


def run_point(args, batch, context, device, dtype, copy_gbs, baseline=True, **cfg) -> dict:
    """Time one (batch, context) point; the caches are freed when this returns."""
    row = _run_point(args, batch, context, device, dtype, copy_gbs, baseline, **cfg)
    if device.type == "cuda":
        import torch

        torch.cuda.empty_cache()
    return row


def _run_point(args, batch, context, device, dtype, copy_gbs, baseline, **cfg) -> dict:
    import torch

    from tritium.kernels.paged_attention import choose_num_splits, num_sms, paged_decode

    hq, hk, d = args.num_q_heads, args.num_kv_heads, args.head_dim
    fp8 = args.kv_dtype == "fp8"
    q, kc, vc, meta = make_inputs(batch, context, hq, hk, d, args.page, dtype, device,
                                  kv_dtype=torch.float8_e4m3fn if fp8 else None)
    scale = d ** -0.5
    run = lambda: paged_decode(q, kc, vc, meta.block_tables, meta.seq_lens,  # noqa: E731
                               meta.max_seqlen_k, scale, **cfg)
    out = run()
    # fp32 reference on (at most) 4 sequences: an fp32 copy of a large cache would not fit
    n = min(batch, 4)
    sub = dataclasses.replace(meta, block_tables=meta.block_tables[:n], seq_lens=meta.seq_lens[:n])
    ref = torch_decode(q[:n].float(), kc.float(), vc.float(), sub, scale)
    rel_err = ((out[:n].float() - ref).norm() / ref.norm()).item()
    nbytes = decode_bytes(batch, context, hq, hk, d, q.element_size(), kc.element_size())
    baseline = baseline and not fp8
    ms = bench_ms(run, args.rep_ms, device)
    splits = cfg.get("num_splits") or choose_num_splits(batch, hk, context, num_sms(device),
                                                        cfg.get("block_n") or 64)
    row = {"batch": batch, "context": context, "splits": splits,
           "config": {k: v for k, v in cfg.items() if v is not None}, "tritium_ms": ms,
           "tritium_gbs": nbytes / ms / 1e6, "pct_of_copy": 100 * nbytes / ms / 1e6 / copy_gbs,
           "rel_err_vs_fp32": rel_err, "bytes": nbytes}
    if baseline:
        row["torch_gather_ms"] = bench_ms(lambda: torch_gather(kc, vc, meta), args.rep_ms,
                                          device)
        row["torch_gather_sdpa_ms"] = bench_ms(lambda: torch_decode(q, kc, vc, meta, scale),
                                               args.rep_ms, device)
        row["torch_gather_gbs"] = (nbytes - 2 * batch * hq * d * q.element_size()) \
            / row["torch_gather_ms"] / 1e6
        row["torch_sdpa_effective_gbs"] = nbytes / row["torch_gather_sdpa_ms"] / 1e6
    return row


# ---------------------------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------------------------
# (block_n, num_warps, num_stages) around the default (64, 4, 3)
TUNE_CONFIGS = [dict(block_n=bn, num_warps=w, num_stages=st) for bn, w, st in (
    (64, 4, 2), (64, 4, 3), (64, 4, 4), (64, 8, 3), (32, 4, 3), (32, 4, 4), (128, 4, 3),
    (128, 8, 3), (128, 8, 2))]
SWEEP_BATCH = (1, 16, 64, 256)
SWEEP_CONTEXT = (512, 4096, 32768)
HEADER = (f"{'batch':>5} {'context':>7} {'splits':>6} {'config':>16} {'ms':>8} {'GB/s':>7} "
          f"{'%copy':>6} {'torch GB/s':>10} {'gather GB/s':>11} {'rel err':>8}")


def _row_line(r) -> str:
    cfg = ",".join(f"{k[4:] if k.startswith('num_') else k[-1]}{v}"
                   for k, v in r["config"].items()) or "default"
    return (f"{r['batch']:>5} {r['context']:>7} {r['splits']:>6} {cfg:>16} "
            f"{r['tritium_ms']:>8.4f} {r['tritium_gbs']:>7,.0f} {r['pct_of_copy']:>6.1f} "
            f"{r.get('torch_sdpa_effective_gbs', float('nan')):>10,.0f} "
            f"{r.get('torch_gather_gbs', float('nan')):>11,.0f} {r['rel_err_vs_fp32']:>8.1e}")


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.smoke:
        # The kernels must be decorated in interpreter mode: set it before tritium imports them.
        os.environ["TRITON_INTERPRET"] = "1"
        args.batch, args.context, args.num_q_heads, args.num_kv_heads = 3, 40, 4, 2
        args.head_dim, args.page, args.dtype = 32, 16, "fp16"
    import torch

    device = torch.device("cpu" if args.smoke else "cuda")
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float16
    copy_gbs = copy_bandwidth(device, (1 << 20) if args.smoke else (2 << 30), args.rep_ms)
    print(f"copy bandwidth (read+write): {copy_gbs:,.0f} GB/s\n{HEADER}", flush=True)

    def point(b, c, **kw):
        row = run_point(args, b, c, device, dtype, copy_gbs, **kw)
        print(_row_line(row), flush=True)  # as it comes: a run cut short keeps its lines
        return row

    rows = [point(args.batch, args.context)]
    tuned, split_study = [], []
    points = [(args.batch, args.context)] + [
        tuple(int(x) for x in pc.split("x")) for pc in args.points.split(",") if pc]
    for b, c in points:
        if (b, c) != points[0]:
            rows.append(point(b, c, baseline=False))
        for splits in (int(x) for x in args.splits.split(",") if x):
            split_study.append(point(b, c, baseline=False, num_splits=splits))
    if args.tune and not args.smoke:
        for cfg in TUNE_CONFIGS:
            tuned.append(point(args.batch, args.context, baseline=False, **cfg))
        for splits in (2, 4):
            tuned.append(point(args.batch, args.context, baseline=False, num_splits=splits))
        print("split count study (auto choice is in the sweep):", flush=True)
        for b, c, choices in ((16, 4096, (1, 2, 4, 8)), (2, 32768, (8, 16, 32, 64))):
            for splits in choices:
                split_study.append(point(b, c, baseline=False, num_splits=splits))
    if args.sweep or args.smoke:
        batches = (1, 2) if args.smoke else SWEEP_BATCH
        contexts = (17, 33) if args.smoke else SWEEP_CONTEXT
        elt = 2
        for b in batches:
            for c in contexts:
                kv = 2 * b * c * args.num_kv_heads * args.head_dim * elt
                if kv > args.max_kv_gib * 2**30 or (b, c) == (args.batch, args.context):
                    continue
                rows.append(point(b, c, baseline=kv <= args.max_kv_gib * 2**30 / 2))
    if tuned:
        print("\nfastest configs at the headline shape:")
        for r in sorted(tuned + rows[:1], key=lambda r: r["tritium_ms"])[:4]:
            print(_row_line(r))
    result = {
        "benchmark": "decode_attention",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor(),
        "torch": torch.__version__, "triton": __import__("triton").__version__,
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "copy_gbs": copy_gbs, "peers_importable": peers_available(),
        "rows": rows, "tune": tuned, "split_study": split_study,
    }
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
