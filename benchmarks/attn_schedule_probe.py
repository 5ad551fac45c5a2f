#!/usr/bin/env python3
"""Program order and block-mask cost probe for the attention kernels, on one GPU.

    PYTHONPATH=src python benchmarks/attn_schedule_probe.py --out probe.json

Times the kernel launchers (no autograd, no API checks) on the cases where the document
BlockMask trails varlen (docs/perf-notes.md): 16k tokens of random causal documents (the
documents of ``benchmarks/attention.py``), D = 128, H = 16, bf16, plus dense causal and
non-causal controls; each under the launch schedules of ``kernels/flash_attn.py``
(``SCHEDULES``: "tiles", "bh_first", "ordered"). Also a cost probe that is *not* a valid
attention: the document mask with every partial block listed as full (no element tiles),
which bounds what cheaper partial-block masking could gain.

First checks on the device that every schedule gives bitwise the default's outputs and
gradients, and the document mask's error against varlen. Prints a table and writes JSON
(device, versions, every timing). ``--smoke``: a tiny CPU run under the Triton interpreter
(fp16, 128 tokens), for tests.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import sys
import time
from types import SimpleNamespace

if "--smoke" in sys.argv:  # before triton is imported: the interpreter replaces the driver
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402
import triton  # noqa: E402
from triton.testing import do_bench  # noqa: E402

from tritium.kernels.flash_attn import SCHEDULES, flash_attn_fwd  # noqa: E402
from tritium.kernels.flash_attn_bwd import flash_attn_bwd  # noqa: E402
from tritium.ops import block_mask as tbm  # noqa: E402
from tritium.ops.attention_reference import transpose_block_mask  # noqa: E402

GPU = dict(D=128, H=16, tokens=16384, docs=(256, 4096), blocks=128, dtype=torch.bfloat16,
           dense=((4096, True), (16384, True), (16384, False), (1024, True)))
SMOKE = dict(D=32, H=2, tokens=128, docs=(16, 96), blocks=32, dtype=torch.float16,
             dense=((128, True),))


def doc_lens(tokens: int, lo: int, hi: int, seed: int = 0) -> list[int]:
    """benchmarks/attention.py's random_doc_lens(tokens, lo, hi, seed)."""
    rng, lens = random.Random(seed), []
    while sum(lens) < tokens:
        lens.append(min(rng.randint(lo, hi), tokens - sum(lens)))
    return lens


def wall_ms(fn, rep: int = 1) -> float:
    """Interpreter smoke timing: mean wall time (do_bench needs a GPU)."""
    fn()
    t = time.perf_counter()
    for _ in range(rep):
        fn()
    return (time.perf_counter() - t) / rep * 1e3


def partial_as_full(bm):
    """The mask with every partial block moved to the full lists (not a valid mask: a cost
    probe only). Lists stay ascending."""
    nkb = bm.kv_indices.shape[-1]
    ar = torch.arange(nkb, device=bm.kv_indices.device)
    sel = (ar < bm.kv_num_blocks[..., None]).to(torch.int32)
    sel_f = (ar < bm.full_kv_num_blocks[..., None]).to(torch.int32)
    onehot = torch.zeros(*bm.kv_indices.shape[:-1], nkb + 1, dtype=torch.int32,
                         device=ar.device)
    onehot.scatter_add_(-1, torch.where(sel > 0, bm.kv_indices, nkb).long(), sel)
    onehot.scatter_add_(-1, torch.where(sel_f > 0, bm.full_kv_indices, nkb).long(), sel_f)
    listed = onehot[..., :nkb] > 0
    idx = torch.where(listed, ar, nkb).sort(-1).values.clamp_max(nkb - 1).to(torch.int32)
    fields = {**vars(bm)}
    fields.pop("_transposed", None)
    fields.update(full_kv_num_blocks=listed.sum(-1).to(torch.int32),
                  full_kv_indices=idx.contiguous(),
                  kv_num_blocks=torch.zeros_like(bm.kv_num_blocks))
    return SimpleNamespace(**fields)


def tflops(flops: float, ms: float) -> float:
    return flops / ms * 1e-9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="attn_schedule_probe.json")
    ap.add_argument("--rep", type=int, default=200, help="do_bench rep (ms)")
    ap.add_argument("--smoke", action="store_true", help="tiny CPU run (Triton interpreter)")
    ap.add_argument("--sweep", action="store_true",
                    help="instead of the schedule table: tile configs of the three kernels on "
                         "the document mask (default schedule), with varlen as reference")
    args = ap.parse_args()
    cfg = SMOKE if args.smoke else GPU
    D, H, TOKENS, dt = cfg["D"], cfg["H"], cfg["tokens"], cfg["dtype"]
    dev = torch.device("cpu" if args.smoke else "cuda")
    timer = wall_ms if args.smoke else (lambda fn: do_bench(fn, rep=args.rep))
    res: dict = {"device": "cpu (interpreter)" if args.smoke else torch.cuda.get_device_name(),
                 "torch": torch.__version__,
                 "triton": triton.__version__, "date": datetime.date.today().isoformat(),
                 "checks": [], "timings": []}
    torch.manual_seed(0)
    scale = D ** -0.5
    lens = doc_lens(TOKENS, *cfg["docs"])
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32,
                      device=dev)
    visible = sum(L * L for L in lens) / 2  # causal pairs (the benchmark's convention)
    q, k, v = (torch.randn(1, TOKENS, H, D, device=dev, dtype=dt) for _ in range(3))
    dout = torch.randn_like(q)
    mod = tbm.causal_mask & tbm.document_mask(cu_seqlens=cu)
    bm = tbm.create_block_mask(mod, None, None, TOKENS, TOKENS, device=dev,
                               q_block_size=cfg["blocks"], kv_block_size=cfg["blocks"])
    bm_t = transpose_block_mask(bm)
    probe = partial_as_full(bm)
    probe_t = transpose_block_mask(probe)
    res["docs"] = lens
    res["mask_blocks"] = dict(full=int(bm.full_kv_num_blocks.sum()),
                              partial=int(bm.kv_num_blocks.sum()))

    # -- checks: schedules are bitwise equal; the mask matches the fp32 reference --
    def run_doc(sched, m=bm, mt=bm_t):
        o, lse = flash_attn_fwd(q, k, v, softmax_scale=scale, block_mask=m,
                                schedule=sched)
        g = flash_attn_bwd(dout, q, k, v, o, lse, softmax_scale=scale, block_mask=m,
                           block_mask_t=mt, deterministic=True, schedule=sched)
        return (o, lse, *g)

    base = run_doc("tiles")
    for sched in SCHEDULES[1:]:
        same = all(torch.equal(a, b) for a, b in zip(base, run_doc(sched)))
        res["checks"].append(dict(check=f"document mask, schedule {sched} == tiles",
                                  ok=same))
    qv, kv_, vv = (t[0] for t in (q, k, v))
    ov, lv = flash_attn_fwd(qv, kv_, vv, softmax_scale=scale, causal=True, cu_seqlens_q=cu,
                            cu_seqlens_k=cu, max_seqlen_q=max(lens))
    err = ((base[0][0].float() - ov.float()).norm() / ov.float().norm()).item()
    res["checks"].append(dict(check="document mask out vs varlen out (rel L2)", value=err,
                              ok=err < 1e-2))
    gv = flash_attn_bwd(dout[0], qv, kv_, vv, ov, lv, softmax_scale=scale, causal=True,
                        cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=max(lens),
                        max_seqlen_k=max(lens), deterministic=True)
    for name, a, b in zip(("dq", "dk", "dv"), base[2:], gv):
        e = ((a[0].float() - b.float()).norm() / b.float().norm()).item()
        res["checks"].append(dict(check=f"document mask {name} vs varlen (rel L2)", value=e,
                                  ok=e < 2e-2))
    for c in res["checks"]:
        print(c, flush=True)

    # -- timings --
    def bench(label, flops, fwd, bwd):
        fwd_ms, bwd_ms = timer(fwd), timer(bwd)
        row = dict(case=label, fwd_ms=fwd_ms, bwd_ms=bwd_ms,
                   fwd_tflops=tflops(flops, fwd_ms), bwd_tflops=tflops(2.5 * flops, bwd_ms))
        res["timings"].append(row)
        print(f"{label:48s} fwd {row['fwd_tflops']:6.1f}  bwd {row['bwd_tflops']:6.1f} "
              f"TFLOP/s", flush=True)

    def launchers(sched, m, mt, qq=q, kk=k, vv_=v, dd=dout, fcfg=None, bcfg=None, **kw):
        o, lse = flash_attn_fwd(qq, kk, vv_, softmax_scale=scale, block_mask=m,
                                schedule=sched, **kw)
        bkw = {x: kw[x] for x in kw if x != "max_seqlen_q"}
        if "cu_seqlens_q" in kw:
            bkw.update(max_seqlen_q=kw["max_seqlen_q"], max_seqlen_k=kw["max_seqlen_q"])
        return (lambda: flash_attn_fwd(qq, kk, vv_, softmax_scale=scale, block_mask=m,
                                       schedule=sched, config=fcfg, **kw),
                lambda: flash_attn_bwd(dd, qq, kk, vv_, o, lse, softmax_scale=scale,
                                       block_mask=m, block_mask_t=mt, deterministic=True,
                                       schedule=sched, config=bcfg, **bkw))

    doc_flops = 4 * H * D * visible
    if args.sweep:
        bench("varlen documents, default", doc_flops,
              *launchers(None, None, None, qv, kv_, vv, dout[0], causal=True,
                         cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=max(lens)))
        bench("document mask, default", doc_flops, *launchers(None, bm, bm_t))
        fwd_cfgs = [(128, 64, 8, 2), (128, 64, 8, 3), (128, 128, 8, 2), (128, 128, 8, 3),
                    (128, 32, 8, 3), (64, 64, 4, 3)]
        dkdv_cfgs = [(64, 128, 8, 1), (32, 128, 8, 2), (64, 64, 4, 2), (128, 128, 8, 2)]
        dq_cfgs = [(64, 64, 4, 3), (128, 64, 8, 2), (64, 128, 8, 2), (128, 128, 8, 2)]
        default_b = ((64, 128, 8, 2), (64, 64, 4, 2))
        if args.smoke:
            fwd_cfgs, dkdv_cfgs, dq_cfgs = [(32, 32, 4, 1)], [(32, 32, 4, 1)], [(32, 32, 4, 1)]
            default_b = ((32, 32, 4, 1), (32, 32, 4, 1))
        for c in fwd_cfgs:
            bench(f"document mask, fwd {c}", doc_flops, *launchers(None, bm, bm_t, fcfg=c))
        for c in dkdv_cfgs:
            bench(f"document mask, dK/dV {c}", doc_flops,
                  *launchers(None, bm, bm_t, bcfg=(c, default_b[1])))
        for c in dq_cfgs:
            bench(f"document mask, dQ {c}", doc_flops,
                  *launchers(None, bm, bm_t, bcfg=(default_b[0], c)))
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)
        print(f"\nall checks ok: {all(c['ok'] for c in res['checks'])}; wrote {args.out}")
        return

    for sched in SCHEDULES:
        bench(f"document mask, {sched}", doc_flops, *launchers(sched, bm, bm_t))
    for sched in SCHEDULES:
        bench(f"document mask, partial as full (probe), {sched}", doc_flops,
              *launchers(sched, probe, probe_t))
    for sched in ("tiles", "bh_first"):
        bench(f"varlen documents, {sched}", doc_flops,
              *launchers(sched, None, None, qv, kv_, vv, dout[0], causal=True,
                         cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=max(lens)))
    for S, causal in cfg["dense"]:
        B = TOKENS // S
        qd, kd, vd = (torch.randn(B, S, H, D, device=dev, dtype=dt) for _ in range(3))
        dd = torch.randn_like(qd)
        flops = 4 * B * H * S * S * D / (2 if causal else 1)
        for sched in ("tiles", "bh_first"):
            bench(f"dense {'causal' if causal else 'full'} S={S}, {sched}", flops,
                  *launchers(sched, None, None, qd, kd, vd, dd, causal=causal))
        del qd, kd, vd, dd

    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)
    print(f"\nall checks ok: {all(c['ok'] for c in res['checks'])}; wrote {args.out}")


if __name__ == "__main__":
    main()
