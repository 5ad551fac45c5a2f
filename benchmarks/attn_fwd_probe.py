#!/usr/bin/env python3
"""Forward probes on one GPU: stand-alone loop variants, and the launcher's tile configs.

    PYTHONPATH=src python benchmarks/attn_fwd_probe.py --part variants --out variants.json
    PYTHONPATH=src python benchmarks/attn_fwd_probe.py --part library --out library.json

``--part library`` times ``kernels.flash_attn.flash_attn_fwd`` (the launcher: no autograd,
no API checks) over tile configs: dense D 64 / 128, causal and not, S 1k / 4k / 16k at 16k
tokens (H = 2048 / D), and at D 128 the 16k-token document mask
(``benchmarks/attn_schedule_probe.py``'s documents) and the same documents as varlen; each
config's output is first compared with the default config's (max |diff|).

``--part variants`` (the first question): the dense forward at D 128 runs at ~0.8x cuDNN
(docs/perf-notes.md): without overlap, the exp2 work on the special-function units adds to
the tensor-core time. This script times stand-alone variants of the forward's unmasked loop
(the same math as ``kernels/flash_attn.py``, stripped to Sq = Sk, lengths multiple of the
tiles, causal or not):

- ``plain``: the library's loop structure (S = Q Kᵀ, softmax, O += P V per key tile);
- ``pipe``: the scores of tile j+1 are issued before the softmax of tile j (software
  pipelining by hand, FlashAttention-3's intra-warpgroup overlap), so that an asynchronous
  wgmma can run under the exp2 work if the compiler lets it;
- ``ws``: ``plain`` with ``tl.range(..., warp_specialize=True)`` (Triton's automatic warp
  specialisation; where the installed Triton refuses it on this GPU the error is recorded);
- each with pointer loads or with TMA tensor descriptors (``--tma``, host-side
  ``TensorDescriptor``);

over a few tile shapes, next to the library's launcher and cuDNN / FlashAttention-2 SDPA in
the same process. Every variant is first checked against the library's output.

Both write JSON (device, versions, every timing and check) and print a table. ``--smoke``: a
tiny CPU run under the Triton interpreter (fp16), for tests.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time

if "--smoke" in sys.argv:  # before triton is imported: the interpreter replaces the driver
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from attention import random_doc_lens  # noqa: E402  (benchmarks/attention.py)

from tritium.kernels.flash_attn import flash_attn_fwd  # noqa: E402
from tritium.ops import block_mask as tbm  # noqa: E402

try:
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # older Triton: the TMA variants are skipped
    TensorDescriptor = None


@triton.jit
def _softmax(s, l_i, m_i, qk_scale):
    """Online-softmax step for a (BM, BN) score tile: (p, alpha, l, m)."""
    m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
    p = tl.math.exp2(s * qk_scale - m_new[:, None])
    alpha = tl.math.exp2(m_i - m_new)
    return p, alpha, l_i * alpha + tl.sum(p, 1), m_new


@triton.jit
def _update(s, acc, l_i, m_i, v, qk_scale):
    """One key tile: softmax of the scores ``s``, then O = alpha O + P V."""
    p, alpha, l_i, m_i = _softmax(s, l_i, m_i, qk_scale)
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
    return acc, l_i, m_i


@triton.jit
def _tile(ptr, desc, row, col, offs, stride, TMA: tl.constexpr):
    """The (BN, D) K or V tile starting at key ``row`` (TMA: descriptor coords [row, col])."""
    if TMA:
        return desc.load([row, col])
    return tl.load(ptr + tl.cast(row, tl.int64) * stride + offs)


@triton.jit
def _probe_kernel(Q, K, V, Out, k_desc, v_desc, seqlen, num_heads, group, qk_scale,
                  HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                  CAUSAL: tl.constexpr, MODE: tl.constexpr, TMA: tl.constexpr):
    """Contiguous (B, S, H, D) q/k/v; MODE 0 plain, 1 pipe, 2 ws (see the module doc)."""
    tile = tl.program_id(0)
    if CAUSAL:  # heaviest tiles first
        tile = tl.num_programs(0) - 1 - tile
    off_bh = tl.program_id(1)
    off_b = off_bh // num_heads
    off_h = off_bh % num_heads
    off_hk = off_h // group
    m0 = tile * BLOCK_M
    stride_q = num_heads * HEAD_DIM
    stride_k = num_heads // group * HEAD_DIM
    rows = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    q_off = (tl.cast(off_b, tl.int64) * seqlen + m0) * stride_q + off_h * HEAD_DIM
    q = tl.load(Q + q_off + rows[:, None] * stride_q + offs_d[None, :])
    kv_row0 = off_b * seqlen  # first row of this sequence in the (B*S, Hk*D) view
    col = off_hk * HEAD_DIM
    k_ptr = K + col  # rows are added per tile, as the descriptors' coordinates
    v_ptr = V + col
    offs = offs_n[:, None] * stride_k + offs_d[None, :]

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    hi = m0 if CAUSAL else seqlen  # unmasked key tiles: [0, hi)
    if MODE == 1 and hi >= 2 * BLOCK_N:
        # Iteration j: O += P(j-1) V(j-1), a synchronous wgmma whose wait also completes S(j);
        # issue S(j+1) = Q K(j+1)^T; the softmax of S(j) while S(j+1) runs; then a tiny
        # synchronous dot, whose wait completes S(j+1) before the loop's back edge copies it
        # into S(j)'s registers. Triton keeps the S(j+1) wgmma asynchronous because the
        # scores it carries are read only after a wait (its WGMMAPipeline "properly async"
        # rules), and ptxas keeps it so because no in-flight accumulator is read (without
        # the tiny dot: warning C7514, every wgmma serialised).
        z_a = tl.zeros([BLOCK_M, 16], q.dtype)
        z_b = tl.zeros([16, 16], q.dtype)
        k = _tile(k_ptr, k_desc, kv_row0, col, offs, stride_k, TMA)
        p, alpha, l_i, m_i = _softmax(tl.dot(q, tl.trans(k)), l_i, m_i, qk_scale)
        k = _tile(k_ptr, k_desc, kv_row0 + BLOCK_N, col, offs, stride_k, TMA)
        s = tl.dot(q, tl.trans(k))
        for start_n in range(2 * BLOCK_N, hi, BLOCK_N):
            k = _tile(k_ptr, k_desc, kv_row0 + start_n, col, offs, stride_k, TMA)
            v = _tile(v_ptr, v_desc, kv_row0 + start_n - 2 * BLOCK_N, col, offs, stride_k, TMA)
            acc = tl.dot(p.to(v.dtype), v, acc)
            s_next = tl.dot(q, tl.trans(k))
            p, alpha, l_i, m_i = _softmax(s, l_i, m_i, qk_scale)
            acc = acc * alpha[:, None]
            l_i += tl.max(tl.dot(z_a, z_b), 1)  # adds 0: the tiny dot's wait
            s = s_next
        v = _tile(v_ptr, v_desc, kv_row0 + hi - 2 * BLOCK_N, col, offs, stride_k, TMA)
        acc = tl.dot(p.to(v.dtype), v, acc)
        v = _tile(v_ptr, v_desc, kv_row0 + hi - BLOCK_N, col, offs, stride_k, TMA)
        acc, l_i, m_i = _update(s, acc, l_i, m_i, v, qk_scale)
    elif MODE == 2:
        for start_n in tl.range(0, hi, BLOCK_N, warp_specialize=True):
            k = _tile(k_ptr, k_desc, kv_row0 + start_n, col, offs, stride_k, TMA)
            v = _tile(v_ptr, v_desc, kv_row0 + start_n, col, offs, stride_k, TMA)
            acc, l_i, m_i = _update(tl.dot(q, tl.trans(k)), acc, l_i, m_i, v, qk_scale)
    else:  # plain, and pipe with fewer than two tiles
        for start_n in range(0, hi, BLOCK_N):
            k = _tile(k_ptr, k_desc, kv_row0 + start_n, col, offs, stride_k, TMA)
            v = _tile(v_ptr, v_desc, kv_row0 + start_n, col, offs, stride_k, TMA)
            acc, l_i, m_i = _update(tl.dot(q, tl.trans(k)), acc, l_i, m_i, v, qk_scale)
    if CAUSAL:  # the diagonal: BM / BN masked tiles
        for start_n in range(m0, m0 + BLOCK_M, BLOCK_N):
            k = _tile(k_ptr, k_desc, kv_row0 + start_n, col, offs, stride_k, TMA)
            v = _tile(v_ptr, v_desc, kv_row0 + start_n, col, offs, stride_k, TMA)
            s = tl.dot(q, tl.trans(k))
            s = tl.where((start_n + offs_n)[None, :] <= (m0 + rows)[:, None], s,
                         float("-inf"))
            acc, l_i, m_i = _update(s, acc, l_i, m_i, v, qk_scale)
    acc = acc / l_i[:, None]
    tl.store(Out + q_off + rows[:, None] * stride_q + offs_d[None, :],
             acc.to(Out.dtype.element_ty))


MODES = {"plain": 0, "pipe": 1, "ws": 2}


def probe_fwd(q, k, v, causal, mode, tma, config):
    """Launch one variant; q (B, S, Hq, D), k/v (B, S, Hk, D), contiguous."""
    B, S, Hq, D = q.shape
    Hk = k.shape[2]
    bm, bn, warps, stages = config
    if S % bm or S % bn:
        raise ValueError(f"S={S} must be a multiple of the tiles ({bm}, {bn})")
    out = torch.empty_like(q)
    if tma:
        if TensorDescriptor is None:
            raise RuntimeError("this Triton has no TensorDescriptor")
        k_desc = TensorDescriptor.from_tensor(k.view(B * S, Hk * D), [bn, D])
        v_desc = TensorDescriptor.from_tensor(v.view(B * S, Hk * D), [bn, D])
    else:
        k_desc = v_desc = k  # unused
    _probe_kernel[(S // bm, B * Hq)](
        q, k, v, out, k_desc, v_desc, S, Hq, Hq // Hk, D ** -0.5 * 1.4426950408889634,
        HEAD_DIM=D, BLOCK_M=bm, BLOCK_N=bn, CAUSAL=causal, MODE=MODES[mode], TMA=tma,
        num_warps=warps, num_stages=stages)
    return out


GPU = dict(D=128, H=16, tokens=16384, dtype=torch.bfloat16, seqs=(4096, 16384),
           configs=((128, 64, 8, 3), (128, 64, 8, 4), (128, 128, 8, 2), (128, 128, 8, 3)))
SMOKE = dict(D=32, H=4, tokens=128, dtype=torch.float16, seqs=(64,),
             configs=((32, 16, 4, 1),))


def bench(fn, smoke: bool) -> float:
    if smoke:
        fn()
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3
    return triton.testing.do_bench(fn, warmup=25, rep=100)


def sdpa_peers(q, k, v, causal):
    """cuDNN and FlashAttention-2 SDPA on (B, H, S, D) views, where available."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
    peers = {}
    for name, backend in (("cudnn", SDPBackend.CUDNN_ATTENTION),
                          ("fa2", SDPBackend.FLASH_ATTENTION)):
        def run(backend=backend):
            with sdpa_kernel(backend):
                return torch.nn.functional.scaled_dot_product_attention(
                    qt, kt, vt, is_causal=causal)
        try:
            run()
            peers[name] = run
        except RuntimeError as e:  # backend not available for this device/shape
            print(f"  {name}: unavailable ({str(e).splitlines()[0][:80]})")
    return peers


LIB_GPU = dict(tokens=16384, dtype=torch.bfloat16, seqs=(1024, 4096, 16384), docs=(256, 4096),
               configs={64: ((128, 64, 8, 3), (128, 128, 8, 3), (128, 128, 8, 2),
                             (128, 32, 8, 3)),
                        128: ((128, 64, 8, 4), (128, 64, 8, 3), (128, 128, 8, 3),
                              (128, 128, 8, 2), (128, 32, 8, 3))},
               mask_configs=((64, 64, 4, 3), (128, 64, 8, 4), (128, 128, 8, 3), (64, 128, 4, 3)))
LIB_SMOKE = dict(tokens=128, dtype=torch.float16, seqs=(64,), docs=(16, 48),
                 configs={32: ((16, 16, 4, 1),)}, mask_configs=((16, 16, 4, 1),))


def library_sweep(smoke: bool, extra=(), head_dims=None, peers=False) -> dict:
    """Launcher TFLOP/s per (case, config), after comparing each config's output with the
    default config's. ``extra`` configs are tried for every head dim; ``head_dims`` limits
    the dense cases; ``peers`` also times cuDNN SDPA on each dense case."""
    cfg = LIB_SMOKE if smoke else LIB_GPU
    cfg = dict(cfg, configs={D: (*c, *extra) for D, c in cfg["configs"].items()
                             if head_dims is None or D in head_dims or D == max(cfg["configs"])})
    dev, dt, T = ("cpu" if smoke else "cuda"), cfg["dtype"], cfg["tokens"]
    res = dict(rows=[], checks=[])

    def run(name, flops, call, configs, peer=None):
        row = dict(case=name, tflops={})
        ref = call(None)[0].float()
        if peer is not None:
            row["tflops"]["cudnn"] = round(flops / bench(peer, smoke) / 1e9, 1)
        for conf in (None, *configs):
            try:
                err = (call(conf)[0].float() - ref).abs().max().item()
            except Exception as e:  # noqa: BLE001 - a refused config is a result
                row["tflops"][str(conf)] = f"{type(e).__name__}: {str(e)[:200]}"
                continue
            res["checks"].append(dict(case=name, config=conf, max_abs_diff_vs_default=err))
            ms = bench(lambda c=conf: call(c), smoke)
            row["tflops"][str(conf or "default")] = round(flops / ms / 1e9, 1)
        res["rows"].append(row)
        best = sorted(((k, v) for k, v in row["tflops"].items() if isinstance(v, float)),
                      key=lambda kv: -kv[1])
        print(f"{name:28s} " + "  ".join(f"{k}={v}" for k, v in best[:6]), flush=True)

    for D, configs in cfg["configs"].items():
        H = 4 if smoke else 2048 // D
        for S in cfg["seqs"]:
            B = T // S
            q, k, v = (torch.randn(B, S, H, D, device=dev, dtype=dt) for _ in range(3))
            for causal in (False, True):
                peer = sdpa_peers(q, k, v, causal).get("cudnn") if peers else None
                run(f"D{D} S{S} {'causal' if causal else 'full'}",
                    4 * B * H * S * S * D / (2 if causal else 1),
                    lambda c, q=q, k=k, v=v, D=D, causal=causal: flash_attn_fwd(
                        q, k, v, softmax_scale=D ** -0.5, causal=causal, config=c), configs,
                    peer)
    D = max(cfg["configs"])
    H = 4 if smoke else 2048 // D
    lens = random_doc_lens(T, *cfg["docs"], seed=0)  # attention.py's documents
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32,
                      device=dev)
    flops = 4 * H * D * sum(L * L for L in lens) / 2
    q, k, v = (torch.randn(1, T, H, D, device=dev, dtype=dt) for _ in range(3))
    bm = tbm.create_block_mask(tbm.causal_mask & tbm.document_mask(cu_seqlens=cu), None, None,
                               T, T, device=dev, q_block_size=16 if smoke else 128,
                               kv_block_size=16 if smoke else 128)
    run(f"D{D} document mask", flops,
        lambda c: flash_attn_fwd(q, k, v, softmax_scale=D ** -0.5, block_mask=bm, config=c),
        cfg["mask_configs"])
    run(f"D{D} documents as varlen", flops,
        lambda c: flash_attn_fwd(q[0], k[0], v[0], softmax_scale=D ** -0.5, causal=True,
                                 cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=max(lens),
                                 config=c), cfg["configs"][D][:3])
    bad = [c for c in res["checks"] if not c["max_abs_diff_vs_default"] <= 2e-2]
    print("configs vs default: " + (f"DIFFER (> 2e-2) in {bad}" if bad else
                                     f"all {len(res['checks'])} within 2e-2"))
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="JSON file for the results")
    ap.add_argument("--smoke", action="store_true", help="tiny CPU run (Triton interpreter)")
    ap.add_argument("--part", choices=("variants", "library"), default="variants")
    ap.add_argument("--modes", default="plain,pipe,ws")
    ap.add_argument("--no-tma", action="store_true", help="pointer loads only")
    ap.add_argument("--extra-configs", default="",
                    help="library part: more tiles for every head dim, e.g. '64,64,4,3 64,32,4,3'")
    ap.add_argument("--head-dims", default="", help="library part: dense head dims, e.g. 128")
    ap.add_argument("--peers", action="store_true", help="library part: time cuDNN SDPA too")
    args = ap.parse_args()
    if args.part == "library":
        result = dict(date=datetime.date.today().isoformat(), torch=torch.__version__,
                      triton=triton.__version__,
                      device="cpu (interpreter)" if args.smoke else torch.cuda.get_device_name(),
                      **library_sweep(
                          args.smoke,
                          [tuple(int(x) for x in c.split(",")) for c in args.extra_configs.split()],
                          [int(d) for d in args.head_dims.split(",")] if args.head_dims else None,
                          args.peers and not args.smoke))
        if args.out:
            with open(args.out, "w") as f:
                json.dump(result, f, indent=1)
            print("wrote", args.out)
        return
    cfg = SMOKE if args.smoke else GPU
    dev = "cpu" if args.smoke else "cuda"
    D, H, dtype = cfg["D"], cfg["H"], cfg["dtype"]
    modes = args.modes.split(",")
    loads = [False] if args.no_tma or TensorDescriptor is None else [False, True]
    result = dict(date=datetime.date.today().isoformat(), torch=torch.__version__,
                  triton=triton.__version__,
                  device=torch.cuda.get_device_name() if dev == "cuda" else "cpu (interpreter)",
                  D=D, H=H, tokens=cfg["tokens"], dtype=str(dtype), rows=[])
    print(result["device"], result["torch"], "triton", result["triton"])
    for S in cfg["seqs"]:
        B = cfg["tokens"] // S
        g = torch.Generator(device=dev).manual_seed(S)
        q, k, v = (torch.randn(B, S, H, D, device=dev, dtype=dtype, generator=g)
                   for _ in range(3))
        for causal in (False, True):
            flops = 4 * B * H * S * S * D / (2 if causal else 1)
            ref, _ = flash_attn_fwd(q, k, v, softmax_scale=D ** -0.5, causal=causal)
            row = dict(S=S, B=B, causal=causal, tflops={}, err={}, failed={})

            def record(name, fn, row=row, flops=flops):
                ms = bench(fn, args.smoke)
                row["tflops"][name] = round(flops / ms / 1e9, 1)

            def call(mode=None, tma=None, conf=None, q=q, k=k, v=v, causal=causal):
                if mode is None:
                    return flash_attn_fwd(q, k, v, softmax_scale=D ** -0.5, causal=causal)
                return probe_fwd(q, k, v, causal, mode, tma, conf)

            record("library", call)
            if dev == "cuda":
                for name, fn in sdpa_peers(q, k, v, causal).items():
                    record(name, fn)
            for mode in modes:
                for tma in loads:
                    for conf in cfg["configs"]:
                        name = f"{mode}{'+tma' if tma else ''} {conf}"
                        try:
                            out = probe_fwd(q, k, v, causal, mode, tma, conf)
                        except Exception as e:  # noqa: BLE001 - a refused variant is a result
                            row["failed"][name] = f"{type(e).__name__}: {str(e)[:300]}"
                            print(f"  S={S} causal={causal} {name}: {row['failed'][name][:120]}")
                            continue
                        row["err"][name] = (out.float() - ref.float()).abs().max().item()
                        record(name, lambda m=mode, t=tma, c=conf: call(m, t, c))
            result["rows"].append(row)
            best = sorted(row["tflops"].items(), key=lambda kv: -kv[1])
            print(f"S={S:6d} B={B:2d} causal={causal!s:5}  " + "  ".join(
                f"{n}={t}" for n, t in best[:8]))
            bad = {n: e for n, e in row["err"].items() if not e <= 2e-2}  # NaN is bad too
            if bad:
                print("  ERROR above 2e-2 vs the library:", bad)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
        print("wrote", args.out)


if __name__ == "__main__":
    main()
