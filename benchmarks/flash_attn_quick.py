#!/usr/bin/env python3
"""Quick FlashAttention check, tile sweep and benchmark on one GPU, in one process.

    PYTHONPATH=src python benchmarks/flash_attn_quick.py --out fa_quick.json [--no-sweep]

1. Correctness (bf16/fp16): forward out + lse and dQ/dK/dV through the public API against the
   fp32 reference (relative L2 error), for causal / non-causal, head dims 32-256, GQA 4:1 and
   9:3, Sq != Sk, sliding window + softcap, varlen with empty sequences, a document BlockMask,
   and the gradient through lse.
2. Sweep (unless --no-sweep): tile configs of the forward, dK/dV and dQ kernels at S = 4096,
   non-causal, head dims 64 and 128; the fastest of each is used below (with --no-sweep the
   kernels' default configs are used: the numbers then describe what users get).
3. Benchmark: 16k tokens per batch (B = 16384 / S), H = 2048 / D, bf16, S in {1k, 4k, 16k},
   causal and not: tritium (kernel launchers, and the public API with autograd) against SDPA's
   FlashAttention-2 and cuDNN backends in the same process. TFLOP/s use FlashAttention's
   convention: forward 4*B*H*S^2*D (halved when causal), backward 2.5x forward;
   triton.testing.do_bench medians. Backward launchers: tritium_bwd = the deterministic path
   (swept or default tiles), tritium_bwd_atomic = the default atomic-dQ path (default tiles);
   the API's backward is the default.
Prints a table last and writes everything (device, versions, configs, numbers) as JSON.
"""

from __future__ import annotations

import argparse
import datetime
import json
import traceback

import torch
import triton
from triton.testing import do_bench

import tritium
from tritium.kernels.flash_attn import flash_attn_fwd, fwd_config
from tritium.kernels.flash_attn_bwd import bwd_config, flash_attn_bwd
from tritium.ops.attention_reference import attention_reference, attention_varlen_reference

RESULTS: dict = {"correctness": [], "sweep": [], "bench": [], "errors": []}


def log(*args) -> None:
    print(*args, flush=True)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float(), b.float()
    fin = torch.isfinite(b)
    return ((a[fin] - b[fin]).norm() / b[fin].norm().clamp_min(1e-30)).item()


# -- 1. correctness --------------------------------------------------------------------------

def _grads(out, lse, leaves, dout, dlse):
    loss = (out.float() * dout).sum()
    if dlse is not None:
        loss = loss + (torch.where(torch.isinf(lse), 0.0, lse) * dlse).sum()
    return torch.autograd.grad(loss, leaves)


def check(name, dtype, q, k, v, api, ref, dlse=False, **kw):
    """API forward/backward vs the fp32 reference; relative L2 errors of out, lse, dq, dk, dv."""
    leaves = [t.to(dtype).requires_grad_() for t in (q, k, v)]
    out, lse = api(*leaves, return_lse=True, **kw)
    dout = torch.randn_like(out, dtype=torch.float32)
    g_lse = torch.randn_like(lse) if dlse else None
    got = _grads(out, lse, leaves, dout, g_lse)
    ref_leaves = [t.detach().float().requires_grad_() for t in leaves]
    r_out, r_lse = ref(*ref_leaves, return_lse=True)
    want = _grads(r_out, r_lse, ref_leaves, dout, g_lse)
    inf_ok = bool(torch.equal(torch.isinf(lse), torch.isinf(r_lse)))
    errs = dict(out=rel(out, r_out), lse=rel(lse, r_lse), dq=rel(got[0], want[0]),
                dk=rel(got[1], want[1]), dv=rel(got[2], want[2]))
    limit = 2e-2 if dtype == torch.bfloat16 else 5e-3  # bf16 eps 7.8e-3, fp16 eps 9.8e-4
    ok = inf_ok and all(e < limit for e in errs.values()) and all(
        torch.isfinite(g).all().item() for g in got)
    RESULTS["correctness"].append(dict(name=name, dtype=str(dtype), ok=ok, limit=limit,
                                       inf_pattern_ok=inf_ok, **errs))
    log(f"{'ok  ' if ok else 'FAIL'} {name:44s} {str(dtype):15s} " +
        " ".join(f"{k_}={v_:.1e}" for k_, v_ in errs.items()))


def correctness(dev) -> None:
    g = torch.Generator(device=dev).manual_seed(0)

    def rnd(*shape, scale=1.0):
        return torch.randn(*shape, device=dev, generator=g) * scale

    fa, ref = tritium.flash_attn_func, attention_reference
    for D in (64, 128):
        for causal in (False, True):
            q, k, v = rnd(2, 1000, 8, D), rnd(2, 1000, 2, D), rnd(2, 1000, 2, D)
            check(f"dense D={D} causal={causal} GQA 4:1", torch.bfloat16, q, k, v,
                  lambda *a, c=causal, **k_: fa(*a, causal=c, **k_),
                  lambda *a, c=causal, **k_: ref(*a, c, **k_))
    # Shapes the Hopper warp-specialised forward takes (kernels/flash_attn_hopper.py: D 128,
    # Sq multiple of 128, Sk of 128): its output and lse feed the Triton backward.
    for causal in (False, True):
        q, k, v = rnd(2, 512, 8, 128), rnd(2, 1024, 2, 128), rnd(2, 1024, 2, 128)
        check(f"WS-eligible Sq=512 Sk=1024 causal={causal} GQA 4:1", torch.bfloat16, q, k, v,
              lambda *a, c=causal, **k_: fa(*a, causal=c, **k_),
              lambda *a, c=causal, **k_: ref(*a, c, **k_), dlse=True)
    # B 2: 54 work items, so causal pairs run, and (3 query tiles per head) cross heads.
    q, k, v = rnd(2, 384, 9, 128), rnd(2, 640, 3, 128), rnd(2, 640, 3, 128)
    check("WS-eligible fp16 B=2 Sq=384 Sk=640 causal GQA 9:3", torch.float16, q, k, v,
          lambda *a, **k_: fa(*a, causal=True, **k_), lambda *a, **k_: ref(*a, True, **k_))
    q, k, v = rnd(2, 777, 4, 128), rnd(2, 1000, 4, 128), rnd(2, 1000, 4, 128)
    check("Sq=777 Sk=1000 causal", torch.float16, q, k, v,
          lambda *a, **k_: fa(*a, causal=True, **k_), lambda *a, **k_: ref(*a, True, **k_))
    q, k, v = rnd(2, 900, 9, 64, scale=3), rnd(2, 900, 3, 64, scale=3), rnd(2, 900, 3, 64)
    kw = dict(window_size=(128, 0), softcap=30.0)
    check("window (128, 0) + softcap 30, GQA 9:3, dlse", torch.bfloat16, q, k, v,
          lambda *a, **k_: fa(*a, causal=True, **kw, **k_),
          lambda *a, **k_: ref(*a, True, **kw, **k_), dlse=True)
    for D in (32, 96, 256):
        q, k, v = rnd(1, 333, 4, D), rnd(1, 400, 2, D), rnd(1, 400, 2, D)
        check(f"head dim {D}", torch.bfloat16, q, k, v,
              lambda *a, **k_: fa(*a, causal=True, **k_), lambda *a, **k_: ref(*a, True, **k_))
    lens = [300, 1, 0, 1000, 517]
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32,
                      device=dev)
    q, k, v = rnd(sum(lens), 9, 128), rnd(sum(lens), 3, 128), rnd(sum(lens), 3, 128)
    check("varlen [300,1,0,1000,517] causal 9:3", torch.bfloat16, q, k, v,
          lambda *a, **k_: tritium.flash_attn_varlen_func(*a, cu, cu, 1000, 1000, causal=True,
                                                          **k_),
          lambda *a, **k_: attention_varlen_reference(*a, cu, cu, True, **k_))
    try:
        from tritium.ops.block_mask import create_block_mask
        from tritium.ops.mask_mods import document_mask

        doc = torch.repeat_interleave(torch.arange(4, device=dev),
                                      torch.tensor([200, 424, 77, 323], device=dev))
        bm = create_block_mask(document_mask(doc), None, None, 1024, 1024, device=dev)
        dense = bm.to_dense()
        q, k, v = rnd(2, 1024, 4, 128), rnd(2, 1024, 4, 128), rnd(2, 1024, 4, 128)
        check("document BlockMask (4 docs) causal", torch.bfloat16, q, k, v,
              lambda *a, **k_: fa(*a, causal=True, block_mask=bm, **k_),
              lambda *a, **k_: ref(*a, True, mask=dense, **k_))
    except Exception:  # noqa: BLE001 - the other checks still count
        RESULTS["errors"].append(("block mask check", traceback.format_exc()))
        log("FAIL block mask check:\n" + traceback.format_exc())


# -- 2. sweep and 3. benchmark ---------------------------------------------------------------

FWD_CANDIDATES = {
    64: [(128, 64, 4, 3), (128, 128, 8, 3), (128, 64, 8, 3)],
    128: [(128, 64, 8, 3), (128, 64, 8, 4), (128, 128, 8, 2)],
}
DKDV_CANDIDATES = {
    64: [(64, 128, 8, 2), (32, 64, 4, 3), (64, 64, 8, 2)],
    128: [(64, 128, 8, 2), (32, 128, 8, 1), (64, 64, 8, 1), (32, 64, 8, 2)],
}
DQ_CANDIDATES = {
    64: [(128, 64, 8, 2), (64, 64, 4, 3), (128, 32, 4, 3)],
    128: [(128, 64, 8, 2), (128, 32, 8, 2), (64, 64, 4, 2)],
}


def ms(fn) -> float:
    return do_bench(fn, warmup=25, rep=100, return_mode="median")


def flops(B, H, S, D, causal) -> float:
    return 4 * B * H * S * S * D / (2 if causal else 1)


def inputs(S, D, dev, layout="bshd"):
    B, H = 16384 // S, 2048 // D
    shape = (B, S, H, D) if layout == "bshd" else (B, H, S, D)
    return [torch.randn(*shape, device=dev, dtype=torch.bfloat16) for _ in range(4)]


def sweep_dim(D, dev) -> dict:
    """Fastest forward, dK/dV and dQ configs for head dim D at S = 4096, non-causal."""
    q, k, v, do = inputs(4096, D, dev)
    s = D ** -0.5
    f = flops(q.shape[0], q.shape[2], 4096, D, False)

    def pick(kernel, candidates, run, mult):
        rows = []
        for cfg in candidates:
            t = ms(lambda cfg=cfg: run(cfg))
            rows.append((t, cfg))
            RESULTS["sweep"].append(dict(kernel=kernel, D=D, config=cfg, ms=t,
                                         tflops=mult * f / t / 1e9))
            log(f"sweep {kernel:9s} D={D} {cfg}: {mult * f / t / 1e9:6.1f} TFLOP/s")
        return min(rows)[1]

    fwd = pick("fwd", FWD_CANDIDATES[D],
               lambda cfg: flash_attn_fwd(q, k, v, softmax_scale=s, config=cfg), 1.0)
    o, lse = flash_attn_fwd(q, k, v, softmax_scale=s, config=fwd)
    q_default = bwd_config(D, False)[1]
    dkdv = pick("bwd(dkdv)", DKDV_CANDIDATES[D], lambda cfg: flash_attn_bwd(
        do, q, k, v, o, lse, softmax_scale=s, config=(cfg, q_default), deterministic=True), 2.5)
    dq = pick("bwd(dq)", DQ_CANDIDATES[D], lambda cfg: flash_attn_bwd(
        do, q, k, v, o, lse, softmax_scale=s, config=(dkdv, cfg), deterministic=True), 2.5)
    return dict(fwd=fwd, bwd=(dkdv, dq))


CAUSAL_FWD_CANDIDATES = [(128, 64, 8, 4), (64, 64, 4, 3), (128, 32, 8, 3)]


def causal_sweep(dev) -> None:
    """Forward tiles for causal D = 128 at short and medium S (recorded, not applied)."""
    for S in (1024, 4096):
        q, k, v, _ = inputs(S, 128, dev)
        f = flops(q.shape[0], q.shape[2], S, 128, True)
        for cfg in CAUSAL_FWD_CANDIDATES:
            t = ms(lambda cfg=cfg, q=q, k=k, v=v: flash_attn_fwd(
                q, k, v, softmax_scale=128 ** -0.5, causal=True, config=cfg))
            RESULTS["sweep"].append(dict(kernel="fwd causal", D=128, S=S, config=cfg, ms=t,
                                         tflops=f / t / 1e9))
            log(f"sweep fwd causal D=128 S={S} {cfg}: {f / t / 1e9:6.1f} TFLOP/s")


def sweep(dev) -> dict:
    best = {D: sweep_dim(D, dev) for D in (64, 128)}
    RESULTS["best_configs"] = {str(d): c for d, c in best.items()}
    return best


def bench_peer(backend, q, k, v, do, causal):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    be = {"sdpa_flash": SDPBackend.FLASH_ATTENTION, "sdpa_cudnn": SDPBackend.CUDNN_ATTENTION}
    with sdpa_kernel(be[backend]):
        fwd = ms(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v,
                                                                          is_causal=causal))
        leaves = [t.detach().requires_grad_() for t in (q, k, v)]
        out = torch.nn.functional.scaled_dot_product_attention(*leaves, is_causal=causal)
        bwd = ms(lambda: torch.autograd.grad(out, leaves, do, retain_graph=True))
    return fwd, bwd


def bench_case(D, causal, S, best, dev) -> dict:
    q, k, v, do = inputs(S, D, dev)
    B, H = q.shape[0], q.shape[2]
    f = flops(B, H, S, D, causal)
    s = D ** -0.5
    cfg_f = best[D]["fwd"] if best else fwd_config(D, causal, False, S)
    cfg_b = best[D]["bwd"] if best else bwd_config(D, False)
    row = dict(D=D, causal=causal, S=S, B=B, H=H, fwd_config=cfg_f, bwd_config=cfg_b)
    o, lse = flash_attn_fwd(q, k, v, softmax_scale=s, causal=causal, config=cfg_f)
    row["tritium_fwd"] = f / ms(lambda: flash_attn_fwd(
        q, k, v, softmax_scale=s, causal=causal, config=cfg_f)) / 1e9
    row["tritium_bwd"] = 2.5 * f / ms(lambda: flash_attn_bwd(
        do, q, k, v, o, lse, softmax_scale=s, causal=causal, config=cfg_b,
        deterministic=True)) / 1e9
    row["tritium_bwd_atomic"] = 2.5 * f / ms(lambda: flash_attn_bwd(
        do, q, k, v, o, lse, softmax_scale=s, causal=causal)) / 1e9
    with torch.no_grad():
        row["tritium_api_fwd"] = f / ms(lambda: tritium.flash_attn_func(q, k, v,
                                                                        causal=causal)) / 1e9
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    out = tritium.flash_attn_func(*leaves, causal=causal)
    row["tritium_api_bwd"] = 2.5 * f / ms(
        lambda: torch.autograd.grad(out, leaves, do, retain_graph=True)) / 1e9
    qt, kt, vt, dot = (t.transpose(1, 2).contiguous() for t in (q, k, v, do))
    for peer in ("sdpa_flash", "sdpa_cudnn"):
        try:
            tf, tb = bench_peer(peer, qt, kt, vt, dot, causal)
            row[f"{peer}_fwd"], row[f"{peer}_bwd"] = f / tf / 1e9, 2.5 * f / tb / 1e9
        except Exception as e:  # noqa: BLE001 - a missing peer is recorded
            row[f"{peer}_error"] = repr(e)[:200]
    return row


def bench(dev, best) -> None:
    for D in (64, 128):
        for causal in (False, True):
            for S in (1024, 4096, 16384):
                row = bench_case(D, causal, S, best, dev)
                RESULTS["bench"].append(row)
                log(json.dumps({k_: (round(v_, 1) if isinstance(v_, float) else v_)
                                for k_, v_ in row.items()}))
                torch.cuda.empty_cache()


def mask_bench(dev) -> None:
    """Packed causal documents (16k tokens, D 128, H 16): the same attention as varlen and as
    one sequence with a document BlockMask; TFLOP/s over the visible pairs of the documents."""
    from tritium.ops.block_mask import create_block_mask
    from tritium.ops.mask_mods import causal_mask, document_mask

    g = torch.Generator().manual_seed(0)
    lens = (torch.rand(8, generator=g) * 3000 + 500).long()
    lens[-1] = 16384 - lens[:-1].sum()
    doc = torch.repeat_interleave(torch.arange(8), lens).to(dev)
    cu = torch.tensor([0, *lens.cumsum(0).tolist()], dtype=torch.int32, device=dev)
    bm = create_block_mask(document_mask(doc) & causal_mask, None, None, 16384, 16384,
                           device=dev)
    q, k, v, do = (torch.randn(16384, 16, 128, device=dev, dtype=torch.bfloat16)
                   for _ in range(4))
    f = sum(4 * 16 * 128 * L * L / 2 for L in lens.tolist())
    row = dict(case="documents", lengths=lens.tolist())
    runs = {"varlen": lambda *t: tritium.flash_attn_varlen_func(*t, cu, cu, int(lens.max()),
                                                                int(lens.max()), causal=True),
            "block_mask": lambda *t: tritium.flash_attn_func(*(x[None] for x in t),
                                                             block_mask=bm)[0]}
    outs = {}
    for name, fn in runs.items():
        with torch.no_grad():
            row[f"{name}_fwd"] = f / ms(lambda fn=fn: fn(q, k, v)) / 1e9
        leaves = [t.detach().requires_grad_() for t in (q, k, v)]
        out = fn(*leaves)
        outs[name] = out.detach()
        row[f"{name}_bwd"] = 2.5 * f / ms(lambda out=out, leaves=leaves: torch.autograd.grad(
            out, leaves, do, retain_graph=True)) / 1e9
    row["max_abs_diff"] = (outs["varlen"].float() - outs["block_mask"].float()).abs().max().item()
    RESULTS["mask_bench"] = row
    log(json.dumps({k_: (round(v_, 1) if isinstance(v_, float) else v_) for k_, v_ in row.items()
                    if k_ != "lengths"}))


def table() -> None:
    cols = ["tritium_fwd", "sdpa_flash_fwd", "sdpa_cudnn_fwd", "tritium_bwd",
            "tritium_bwd_atomic", "sdpa_flash_bwd",
            "sdpa_cudnn_bwd", "tritium_api_fwd", "tritium_api_bwd"]
    log("\nTFLOP/s (bf16; 16k tokens, H = 2048 / D; fwd 4BHS^2D, /2 causal; bwd 2.5x)")
    log(f"{'D':>4} {'causal':>6} {'S':>6} " + " ".join(f"{c[:15]:>15}" for c in cols))
    for r in RESULTS["bench"]:
        log(f"{r['D']:>4} {str(r['causal']):>6} {r['S']:>6} " +
            " ".join(f"{r.get(c, float('nan')):15.1f}" for c in cols))
    bad = [c for c in RESULTS["correctness"] if not c["ok"]]
    log(f"correctness: {len(RESULTS['correctness']) - len(bad)}/{len(RESULTS['correctness'])} "
        f"ok" + (f"; FAILED: {[c['name'] for c in bad]}" if bad else ""))
    if RESULTS["errors"]:  # a section that raised stopped early: its count above is partial
        log(f"ERRORS in sections {[e[0] for e in RESULTS['errors']]} (tracebacks in the JSON); "
            "their checks after the exception did not run")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="fa_quick.json")
    ap.add_argument("--no-sweep", action="store_true")
    ap.add_argument("--skip-correctness", action="store_true")
    ap.add_argument("--check-only", action="store_true",
                    help="correctness and the document-mask case only")
    ap.add_argument("--causal-sweep", action="store_true",
                    help="also time a few forward tiles for causal D=128 (recorded only)")
    args = ap.parse_args()
    dev = torch.device("cuda")
    RESULTS["meta"] = dict(device=torch.cuda.get_device_name(), torch=torch.__version__,
                           triton=triton.__version__, cuda=torch.version.cuda,
                           date=datetime.datetime.now(datetime.timezone.utc).isoformat(),
                           argv=vars(args))
    log(RESULTS["meta"])
    sections = [("correctness", lambda: None if args.skip_correctness else correctness(dev)),
                ("mask bench", lambda: mask_bench(dev))]
    if not args.check_only:
        sections += [
            ("sweep", lambda: RESULTS.__setitem__("_best", None if args.no_sweep
                                                   else sweep(dev))),
            ("causal sweep", lambda: causal_sweep(dev) if args.causal_sweep else None),
            ("bench", lambda: bench(dev, RESULTS.get("_best")))]
    for name, fn in sections:
        try:
            fn()
        except Exception:  # noqa: BLE001 - keep what the other sections measured
            RESULTS["errors"].append((name, traceback.format_exc()))
            log(f"section {name} failed:\n{traceback.format_exc()}")
        with open(args.out, "w") as fh:
            json.dump({k: v for k, v in RESULTS.items() if k != "_best"}, fh, indent=1,
                      default=str)
    table()


if __name__ == "__main__":
    main()
