"""FlashAttention backward in Triton: a deterministic 7-matmul path without atomics (the
default: measured faster on an H100) and a 5-matmul path with atomic dQ.

With P = softmax(S) recomputed from the saved log-sum-exp, the gradients are
    dV = P^T dO,   dP = dO V^T,   dS = P * (dP - delta),   delta_i = rowsum(dO * O)_i - dlse_i,
    dQ = scale * dS K,   dK = scale * dS^T Q
(with a softcap, dS is further multiplied by 1 - tanh^2, the derivative of the cap).

1. ``_bwd_preprocess_kernel``: delta and lse in base 2 (same layout as lse), fp32; on the
   atomic path it also zeroes the fp32 dQ accumulator.
2. ``_bwd_dkdv_kernel``: one program per (key tile, kv head, sequence) walks the query tiles of
   every query head of its GQA group and accumulates dK, dV in registers: each element of dK/dV
   is written once, so dK/dV are deterministic on both paths and GQA needs no reduction pass.
   Atomic path (``deterministic=False``, ATOMIC_DQ): per (query tile, key tile) it also forms
   dS K, a 5th tile matmul, and ``tl.atomic_add``s it into the fp32 accumulator rows of that
   query head; ``_dq_convert_kernel`` then scales and casts it to q's dtype. fp32 additions in
   an order set by the scheduler: dQ may differ in the last bits between runs.
3. Deterministic path: ``_bwd_dq_kernel``, one program per (query tile, query head, sequence),
   walks the key tiles as the forward does and accumulates dQ in registers. It recomputes
   Q K^T and dO V^T: 7 tile matmuls per (query, key) tile pair instead of 5, in exchange for no
   atomics, no fp32 dQ buffer and bit-identical results run to run.

Masks are those of the forward (kernels/flash_attn.py). For block masks the dK/dV pass needs the
lists transposed (per key block, the query blocks that see it): ``BlockMask.transposed()``
(ops/block_mask.py) builds them once per mask, and the launcher takes both.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from tritium.kernels.flash_attn import (
    _band_ranges,
    _clip,
    _interpreting,
    _listed_tile,
    _lse_strides,
    _schedule,
    _seq_bounds,
    _tanh,
    _visible,
    as_batched,
    block_mask_args,
    flat_mask,
    gluon_call,
    gluon_module,
    head_dim_padded,
    launch_schedule,
)


@triton.jit
def _bwd_preprocess_kernel(
    Out, dO, Lse, dLse, Delta, Lse2, DQacc, cu_seqlens_q,
    stride_ob, stride_os, stride_oh, stride_db, stride_ds, stride_dh, stride_lb, stride_lh,
    stride_ab, stride_as, stride_ah, seqlen_q, num_heads,
    HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, BLOCK_M: tl.constexpr,
    IS_VARLEN: tl.constexpr, HAS_DLSE: tl.constexpr, ZERO_DQ: tl.constexpr,
):
    """Delta = rowsum(dO * O) - dlse, and the lse in base 2 with +inf on empty rows (so that
    exp2(s - lse2) is exactly 0 there): both (B, H, Sq) / (H, Tq) fp32 like lse. With ZERO_DQ,
    zero the same rows of the fp32 dQ accumulator (laid out like q), saving a memset launch."""
    start_m = tl.program_id(0)
    off_b = tl.program_id(1) // num_heads
    off_h = tl.program_id(1) % num_heads
    q_start, _, seqlen_q, _ = _seq_bounds(cu_seqlens_q, cu_seqlens_q, off_b, seqlen_q, 0,
                                          IS_VARLEN)
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D_PAD)
    b64 = tl.cast(off_b, tl.int64)
    rows = tl.cast(q_start + offs_m, tl.int64)
    mask = (offs_m[:, None] < seqlen_q) & (offs_d[None, :] < HEAD_DIM)
    o = tl.load(Out + b64 * stride_ob + rows[:, None] * stride_os + off_h * stride_oh
                + offs_d[None, :], mask=mask, other=0.0)
    do = tl.load(dO + b64 * stride_db + rows[:, None] * stride_ds + off_h * stride_dh
                 + offs_d[None, :], mask=mask, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)  # (BM,)
    if ZERO_DQ:
        tl.store(DQacc + b64 * stride_ab + rows[:, None] * stride_as + off_h * stride_ah
                 + offs_d[None, :], tl.zeros([BLOCK_M, D_PAD], tl.float32), mask=mask)
    l_off = b64 * stride_lb + off_h * stride_lh + q_start + offs_m
    row_ok = offs_m < seqlen_q
    if HAS_DLSE:  # d lse_i / d s_ij = P_ij: folds into delta
        delta -= tl.load(dLse + l_off, mask=row_ok, other=0.0)
    tl.store(Delta + l_off, delta, mask=row_ok)
    lse = tl.load(Lse + l_off, mask=row_ok, other=0.0)
    lse2 = tl.where(lse == float("-inf"), float("inf"), lse * 1.4426950408889634)
    tl.store(Lse2 + l_off, lse2, mask=row_ok)


@triton.jit
def _probs(qk, lse2, qk_scale, softcap_scale, softcap_log2, SOFTCAP: tl.constexpr):
    """Recomputed probabilities P = exp2(s - lse2) from raw scores ``qk`` (``lse2`` already
    broadcast to qk's layout), and the cap's tanh (``qk`` itself without SOFTCAP), which the
    gradient of the cap needs."""
    t = qk  # defined on both paths (Triton scoping)
    if SOFTCAP:
        t = _tanh(qk * softcap_scale)
        s = t * softcap_log2
    else:
        s = qk * qk_scale
    return tl.math.exp2(s - lse2), t


@triton.jit
def _dkdv_tile(
    dk, dv, k, v, q_base, do_base, lse_base, delta_base, dq_base, start_m, stride_qs,
    stride_dos, stride_dqs, q_offs, do_offs, dq_offs, d_ok, tile_ptrs, offs_m, offs_n, seqlen_q,
    seqlen_k, diag_lo, diag_hi, qk_scale, softcap_scale, softcap_log2, BLOCK_M: tl.constexpr,
    EVEN_D: tl.constexpr, MASKED: tl.constexpr, HAS_TILE: tl.constexpr,
    HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, SOFTCAP: tl.constexpr,
    ATOMIC_DQ: tl.constexpr,
):
    """Query tile [start_m, start_m + BM) against the program's key tile: dK, dV += ...; with
    ATOMIC_DQ also dQ[rows] += dS K (unscaled) by fp32 atomics.
    ``q_offs``/``do_offs``/``dq_offs`` (BM, D_PAD) and ``d_ok`` are hoisted; with HAS_TILE,
    ``tile_ptrs`` (BN, BM) points at this tile's window of the element mask."""
    if not MASKED:
        start_m = tl.multiple_of(start_m, BLOCK_M)
    m64 = tl.cast(start_m, tl.int64)
    rows = start_m + offs_m
    if MASKED:  # rows past Sq: q = dO = 0 and lse2 = +inf, so P = 0
        row_ok = offs_m[:, None] < seqlen_q - start_m
        q = tl.load(q_base + m64 * stride_qs + q_offs, mask=row_ok & d_ok, other=0.0)
        do = tl.load(do_base + m64 * stride_dos + do_offs, mask=row_ok & d_ok, other=0.0)
        lse2 = tl.load(lse_base + rows, mask=rows < seqlen_q, other=float("inf"))
        delta = tl.load(delta_base + rows, mask=rows < seqlen_q, other=0.0)
    else:
        if EVEN_D:
            q = tl.load(q_base + m64 * stride_qs + q_offs)
            do = tl.load(do_base + m64 * stride_dos + do_offs)
        else:
            q = tl.load(q_base + m64 * stride_qs + q_offs, mask=d_ok, other=0.0)
            do = tl.load(do_base + m64 * stride_dos + do_offs, mask=d_ok, other=0.0)
        lse2 = tl.load(lse_base + rows)
        delta = tl.load(delta_base + rows)
    # -- P^T: (BN, BM) --
    pT, tT = _probs(tl.dot(k, tl.trans(q)), lse2[None, :], qk_scale, softcap_scale,
                    softcap_log2, SOFTCAP)
    if MASKED:
        okT = _visible(rows[None, :], offs_n[:, None], seqlen_k, diag_lo, diag_hi,
                       HAS_LEFT, HAS_RIGHT)
        if HAS_TILE:
            okT = okT & (tl.load(tile_ptrs) != 0)
        pT = tl.where(okT, pT, 0.0)
    dv = tl.dot(pT.to(do.dtype), do, dv)
    # -- dS^T = P^T * (dP^T - delta) --
    dpT = tl.dot(v, tl.trans(do))
    dsT = pT * (dpT - delta[None, :])
    if SOFTCAP:
        dsT = dsT * (1.0 - tT * tT)
    dsT = dsT.to(q.dtype)
    dk = tl.dot(dsT, q, dk)
    if ATOMIC_DQ:  # -- the 5th matmul: dQ tile (BM, D_PAD) = dS K, added in fp32 --
        dq = tl.dot(tl.trans(dsT), k)
        dq_ptrs = dq_base + m64 * stride_dqs + dq_offs
        if MASKED:  # rows past Sq belong to the next sequence (varlen) or to nobody
            tl.atomic_add(dq_ptrs, dq, mask=(offs_m[:, None] < seqlen_q - start_m) & d_ok,
                          sem="relaxed")
        elif EVEN_D:
            tl.atomic_add(dq_ptrs, dq, sem="relaxed")
        else:
            tl.atomic_add(dq_ptrs, dq, mask=d_ok, sem="relaxed")
    return dk, dv


@triton.jit
def _dkdv_loop(
    dk, dv, k, v, q_base, do_base, lse_base, delta_base, dq_base, lo, hi, stride_qs,
    stride_dos, stride_dqs, q_offs, do_offs, dq_offs, d_ok, tile_ptrs, offs_m, offs_n, seqlen_q,
    seqlen_k, diag_lo, diag_hi, qk_scale, softcap_scale, softcap_log2, BLOCK_M: tl.constexpr,
    KV_BLOCK: tl.constexpr, EVEN_D: tl.constexpr, MASKED: tl.constexpr, HAS_TILE: tl.constexpr,
    HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, SOFTCAP: tl.constexpr,
    ATOMIC_DQ: tl.constexpr,
):
    """Query tiles [lo, hi) step BM (``_dkdv_tile`` each); with HAS_TILE, ``tile_ptrs`` points
    at the element tile's (BN, BM) window for query ``lo`` (it advances BM rows per step)."""
    for start_m in range(lo, hi, BLOCK_M):
        dk, dv = _dkdv_tile(
            dk, dv, k, v, q_base, do_base, lse_base, delta_base, dq_base, start_m, stride_qs,
            stride_dos, stride_dqs, q_offs, do_offs, dq_offs, d_ok,
            tile_ptrs + (start_m - lo) * KV_BLOCK, offs_m, offs_n, seqlen_q, seqlen_k, diag_lo,
            diag_hi, qk_scale, softcap_scale, softcap_log2, BLOCK_M, EVEN_D, MASKED, HAS_TILE,
            HAS_LEFT, HAS_RIGHT, SOFTCAP, ATOMIC_DQ)
    return dk, dv


@triton.jit
def _dkdv_listed_loop(
    dk, dv, k, v, q_base, do_base, lse_base, delta_base, dq_base, idx_ptr, tile_id_ptr,
    tiles_ptr, tile_offs, n_blocks, stride_qs, stride_dos, stride_dqs, q_offs, do_offs, dq_offs,
    d_ok, offs_m, offs_n, seqlen_q, seqlen_k, diag_lo, diag_hi, qk_scale, softcap_scale,
    softcap_log2, BLOCK_M: tl.constexpr, Q_BLOCK: tl.constexpr, KV_BLOCK: tl.constexpr,
    EVEN_D: tl.constexpr, MASKED: tl.constexpr, HAS_TILE: tl.constexpr,
    HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, SOFTCAP: tl.constexpr,
    ATOMIC_DQ: tl.constexpr,
):
    """The query tiles of ``n_blocks`` listed (transposed) mask blocks as one flat loop, as
    the forward's ``_fwd_listed_loop``: R = Q_BLOCK / BM tiles per block; with HAS_TILE,
    block j's element tile is ``tiles_ptr + tile_id[j] * Q_BLOCK * KV_BLOCK`` (+
    ``tile_offs``, the program's key columns)."""
    for t in range(0, n_blocks * (Q_BLOCK // BLOCK_M)):
        start_m, t_ptrs = _listed_tile(t, idx_ptr, tile_id_ptr, tiles_ptr, tile_offs, BLOCK_M,
                                       Q_BLOCK, Q_BLOCK * KV_BLOCK, KV_BLOCK, HAS_TILE)
        dk, dv = _dkdv_tile(
            dk, dv, k, v, q_base, do_base, lse_base, delta_base, dq_base, start_m, stride_qs,
            stride_dos, stride_dqs, q_offs, do_offs, dq_offs, d_ok, t_ptrs, offs_m, offs_n,
            seqlen_q, seqlen_k, diag_lo, diag_hi, qk_scale, softcap_scale, softcap_log2,
            BLOCK_M, EVEN_D, MASKED, HAS_TILE, HAS_LEFT, HAS_RIGHT, SOFTCAP, ATOMIC_DQ)
    return dk, dv


@triton.jit
def _query_ranges(n0, seqlen_q, seqlen_k, diag_lo, diag_hi, BLOCK_M: tl.constexpr,
                  BLOCK_N: tl.constexpr, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr):
    """Query-tile ranges that see key rows [n0, n0 + BN): masked [lo, full_lo), unmasked
    [full_lo, full_hi), masked [full_hi, hi). Row i sees key j iff diag_lo <= j - i <= diag_hi."""
    lo = 0
    hi = seqlen_q
    full_lo = 0
    full_hi = seqlen_q // BLOCK_M * BLOCK_M
    if HAS_RIGHT:  # i >= j - diag_hi
        lo = tl.maximum(n0 - diag_hi, 0) // BLOCK_M * BLOCK_M
        full_lo = tl.cdiv(tl.maximum(n0 + BLOCK_N - 1 - diag_hi, 0), BLOCK_M) * BLOCK_M
    if HAS_LEFT:  # i <= j - diag_lo
        hi = tl.minimum(hi, tl.maximum(n0 + BLOCK_N - diag_lo, 0))
        full_hi = tl.minimum(full_hi, tl.maximum(n0 - diag_lo + 1, 0) // BLOCK_M * BLOCK_M)
    if n0 + BLOCK_N > seqlen_k:  # the key tile sticks out past Sk: mask every query tile
        full_hi = 0
    hi_r = tl.cdiv(hi, BLOCK_M) * BLOCK_M
    full_lo = tl.maximum(tl.minimum(tl.maximum(full_lo, lo), hi_r), lo)
    full_hi = tl.maximum(tl.minimum(full_hi, hi_r), full_lo)
    return lo, full_lo, full_hi, hi


@triton.jit
def _bwd_dkdv_kernel(
    Q, K, V, dO, Lse2, Delta, dK, dV, DQacc, cu_seqlens_q, cu_seqlens_k, KOrder,
    BM_num, BM_idx, BM_tile_id, BM_tiles, BM_full_num, BM_full_idx,
    stride_qb, stride_qs, stride_qh, stride_kb, stride_ks, stride_kh,
    stride_vb, stride_vs, stride_vh, stride_dob, stride_dos, stride_doh,
    stride_dkb, stride_dks, stride_dkh, stride_dvb, stride_dvs, stride_dvh,
    stride_ab, stride_as, stride_ah,
    stride_lb, stride_lh, stride_mb, stride_mh, stride_mm, stride_ib, stride_ih, stride_im,
    seqlen_q, seqlen_k, num_heads_k, group, softmax_scale, softcap, window_left, window_right,
    HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    IS_VARLEN: tl.constexpr, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr,
    BOTTOM_RIGHT: tl.constexpr, SOFTCAP: tl.constexpr, HAS_BLOCK_MASK: tl.constexpr,
    Q_BLOCK: tl.constexpr, KV_BLOCK: tl.constexpr, ATOMIC_DQ: tl.constexpr,
    REVERSE_M: tl.constexpr, BH_FIRST: tl.constexpr, HAS_Q_ORDER: tl.constexpr,
    FLAT_MASK: tl.constexpr,
):
    # (REVERSE_M here: the first key tiles are the heaviest, as causal query rows see them all)
    start_n, off_bhk = _schedule(KOrder, BLOCK_N, KV_BLOCK, REVERSE_M, BH_FIRST, HAS_Q_ORDER)
    off_b = off_bhk // num_heads_k
    off_hk = off_bhk % num_heads_k
    q_start, k_start, seqlen_q, seqlen_k = _seq_bounds(
        cu_seqlens_q, cu_seqlens_k, off_b, seqlen_q, seqlen_k, IS_VARLEN)
    n0 = start_n * BLOCK_N
    if n0 >= seqlen_k:
        return
    shift = seqlen_k - seqlen_q if BOTTOM_RIGHT else 0
    diag_hi = shift + window_right
    diag_lo = shift - window_left
    qk_scale = softmax_scale * 1.4426950408889634
    softcap_scale = softmax_scale / softcap
    softcap_log2 = softcap * 1.4426950408889634

    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D_PAD)
    d_ok = offs_d[None, :] < HEAD_DIM
    EVEN_D: tl.constexpr = HEAD_DIM == D_PAD
    b64 = tl.cast(off_b, tl.int64)
    k64 = tl.cast(k_start, tl.int64)
    kv_mask = (offs_n[:, None] < seqlen_k) & d_ok
    k = tl.load(K + b64 * stride_kb + k64 * stride_ks + off_hk * stride_kh
                + offs_n[:, None] * stride_ks + offs_d[None, :], mask=kv_mask, other=0.0)
    v = tl.load(V + b64 * stride_vb + k64 * stride_vs + off_hk * stride_vh
                + offs_n[:, None] * stride_vs + offs_d[None, :], mask=kv_mask, other=0.0)
    dk = tl.zeros([BLOCK_N, D_PAD], tl.float32)
    dv = tl.zeros([BLOCK_N, D_PAD], tl.float32)
    q_offs = offs_m[:, None] * stride_qs + offs_d[None, :]
    do_offs = offs_m[:, None] * stride_dos + offs_d[None, :]
    dq_offs = offs_m[:, None] * stride_as + offs_d[None, :]
    args = (stride_qs, stride_dos, stride_as, q_offs, do_offs, dq_offs, d_ok)
    rest = (offs_m, offs_n, seqlen_q, seqlen_k, diag_lo, diag_hi, qk_scale, softcap_scale,
            softcap_log2)  # (constexprs cannot travel in tuples: they are passed one by one)

    lo, full_lo, full_hi, hi = _query_ranges(
        n0, seqlen_q, seqlen_k, diag_lo, diag_hi, BLOCK_M, BLOCK_N, HAS_LEFT, HAS_RIGHT)
    for g in range(0, group):  # every query head that reads this kv head
        off_h = off_hk * group + g
        q64 = tl.cast(q_start, tl.int64)
        q_base = Q + b64 * stride_qb + q64 * stride_qs + off_h * stride_qh
        do_base = dO + b64 * stride_dob + q64 * stride_dos + off_h * stride_doh
        lse_base = Lse2 + b64 * stride_lb + off_h * stride_lh + q_start
        delta_base = Delta + b64 * stride_lb + off_h * stride_lh + q_start
        dq_base = DQacc + b64 * stride_ab + q64 * stride_as + off_h * stride_ah
        bases = (q_base, do_base, lse_base, delta_base, dq_base)
        if HAS_BLOCK_MASK:
            # Transposed lists: per (b, h, key block), the query blocks that see it; full
            # blocks take the unmasked path inside the band, as in the forward.
            kb = n0 // KV_BLOCK
            bm_off = off_b * stride_mb + off_h * stride_mh + kb * stride_mm
            idx_off = off_b * stride_ib + off_h * stride_ih + kb * stride_im
            # (BN, BM) window of a (Q_BLOCK, KV_BLOCK) element tile
            tile_offs = offs_m[None, :] * KV_BLOCK \
                + (n0 % KV_BLOCK + tl.arange(0, BLOCK_N))[:, None]
            if FLAT_MASK:  # as in the forward: one flat loop over full, one over partial
                dk, dv = _dkdv_listed_loop(
                    dk, dv, k, v, *bases, BM_full_idx + idx_off, BM_tile_id, BM_tiles,
                    tile_offs, tl.load(BM_full_num + bm_off), *args, *rest, BLOCK_M, Q_BLOCK,
                    KV_BLOCK, EVEN_D, False, False, HAS_LEFT, HAS_RIGHT, SOFTCAP, ATOMIC_DQ)
                dk, dv = _dkdv_listed_loop(
                    dk, dv, k, v, *bases, BM_idx + idx_off, BM_tile_id + idx_off, BM_tiles,
                    tile_offs, tl.load(BM_num + bm_off), *args, *rest, BLOCK_M, Q_BLOCK,
                    KV_BLOCK, EVEN_D, True, True, HAS_LEFT, HAS_RIGHT, SOFTCAP, ATOMIC_DQ)
            else:
                for j in range(0, tl.load(BM_full_num + bm_off)):
                    blo = tl.load(BM_full_idx + idx_off + j) * Q_BLOCK
                    s0, u0, u1, e0 = _clip(blo, blo + Q_BLOCK, lo, full_lo, full_hi, hi)
                    dk, dv = _dkdv_loop(dk, dv, k, v, *bases, s0, u0, *args, Q, *rest, BLOCK_M,
                                        KV_BLOCK, EVEN_D, True, False, HAS_LEFT, HAS_RIGHT, SOFTCAP,
                                        ATOMIC_DQ)
                    dk, dv = _dkdv_loop(dk, dv, k, v, *bases, u0, u1, *args, Q, *rest, BLOCK_M,
                                        KV_BLOCK, EVEN_D, False, False, HAS_LEFT, HAS_RIGHT,
                                        SOFTCAP, ATOMIC_DQ)
                    dk, dv = _dkdv_loop(dk, dv, k, v, *bases, u1, e0, *args, Q, *rest, BLOCK_M,
                                        KV_BLOCK, EVEN_D, True, False, HAS_LEFT, HAS_RIGHT, SOFTCAP,
                                        ATOMIC_DQ)
                for j in range(0, tl.load(BM_num + bm_off)):
                    blo = tl.load(BM_idx + idx_off + j) * Q_BLOCK
                    s0, _, _, e0 = _clip(blo, blo + Q_BLOCK, lo, full_lo, full_hi, hi)
                    tile = tl.load(BM_tile_id + idx_off + j).to(tl.int64) * (Q_BLOCK * KV_BLOCK) \
                        + (s0 - blo) * KV_BLOCK
                    dk, dv = _dkdv_loop(
                        dk, dv, k, v, *bases, s0, e0, *args, BM_tiles + tile + tile_offs, *rest,
                        BLOCK_M, KV_BLOCK, EVEN_D, True, True, HAS_LEFT, HAS_RIGHT, SOFTCAP,
                        ATOMIC_DQ)
        else:
            dk, dv = _dkdv_loop(dk, dv, k, v, *bases, lo, full_lo, *args, Q, *rest, BLOCK_M,
                                KV_BLOCK, EVEN_D, True, False, HAS_LEFT, HAS_RIGHT, SOFTCAP,
                                ATOMIC_DQ)
            dk, dv = _dkdv_loop(dk, dv, k, v, *bases, full_lo, full_hi, *args, Q, *rest,
                                BLOCK_M, KV_BLOCK, EVEN_D, False, False, HAS_LEFT, HAS_RIGHT,
                                SOFTCAP, ATOMIC_DQ)
            dk, dv = _dkdv_loop(dk, dv, k, v, *bases, full_hi, hi, *args, Q, *rest, BLOCK_M,
                                KV_BLOCK, EVEN_D, True, False, HAS_LEFT, HAS_RIGHT, SOFTCAP,
                                ATOMIC_DQ)

    dk *= softmax_scale
    dk_ptrs = dK + b64 * stride_dkb + k64 * stride_dks + off_hk * stride_dkh \
        + offs_n[:, None] * stride_dks + offs_d[None, :]
    dv_ptrs = dV + b64 * stride_dvb + k64 * stride_dvs + off_hk * stride_dvh \
        + offs_n[:, None] * stride_dvs + offs_d[None, :]
    tl.store(dk_ptrs, dk.to(dK.dtype.element_ty), mask=kv_mask)
    tl.store(dv_ptrs, dv.to(dV.dtype.element_ty), mask=kv_mask)


@triton.jit
def _dq_tile(
    dq, q, do, lse2, delta, k_base, v_base, start_n, stride_ks, stride_vs, k_offs, v_offs, d_ok,
    tile_ptrs, offs_m, offs_n, seqlen_k, diag_lo, diag_hi, qk_scale, softcap_scale,
    softcap_log2, BLOCK_N: tl.constexpr, EVEN_D: tl.constexpr, MASKED: tl.constexpr,
    HAS_TILE: tl.constexpr, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr,
    SOFTCAP: tl.constexpr,
):
    """Key tile [start_n, start_n + BN) against the program's query tile: dQ += dS K
    (unscaled); with HAS_TILE, ``tile_ptrs`` points at this tile's (BM, BN) mask window."""
    if not MASKED:
        start_n = tl.multiple_of(start_n, BLOCK_N)
    n64 = tl.cast(start_n, tl.int64)
    if MASKED:
        kv_mask = (offs_n[:, None] < seqlen_k - start_n) & d_ok
        k = tl.load(k_base + n64 * stride_ks + k_offs, mask=kv_mask, other=0.0)
        v = tl.load(v_base + n64 * stride_vs + v_offs, mask=kv_mask, other=0.0)
    elif EVEN_D:
        k = tl.load(k_base + n64 * stride_ks + k_offs)
        v = tl.load(v_base + n64 * stride_vs + v_offs)
    else:
        k = tl.load(k_base + n64 * stride_ks + k_offs, mask=d_ok, other=0.0)
        v = tl.load(v_base + n64 * stride_vs + v_offs, mask=d_ok, other=0.0)
    p, t = _probs(tl.dot(q, tl.trans(k)), lse2[:, None], qk_scale, softcap_scale,
                  softcap_log2, SOFTCAP)  # (BM, BN)
    if MASKED:
        ok = _visible(offs_m[:, None], (start_n + offs_n)[None, :], seqlen_k, diag_lo,
                      diag_hi, HAS_LEFT, HAS_RIGHT)
        if HAS_TILE:
            ok = ok & (tl.load(tile_ptrs) != 0)
        p = tl.where(ok, p, 0.0)
    dp = tl.dot(do, tl.trans(v))
    ds = p * (dp - delta[:, None])
    if SOFTCAP:
        ds = ds * (1.0 - t * t)
    return tl.dot(ds.to(k.dtype), k, dq)


@triton.jit
def _dq_loop(
    dq, q, do, lse2, delta, k_base, v_base, lo, hi, stride_ks, stride_vs, k_offs, v_offs, d_ok,
    tile_ptrs, offs_m, offs_n, seqlen_k, diag_lo, diag_hi, qk_scale, softcap_scale,
    softcap_log2, BLOCK_N: tl.constexpr, EVEN_D: tl.constexpr, MASKED: tl.constexpr,
    HAS_TILE: tl.constexpr, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr,
    SOFTCAP: tl.constexpr,
):
    """Key tiles [lo, hi) step BN (``_dq_tile`` each); ``tile_ptrs`` is the mask window for
    key ``lo`` (it advances by BN per step)."""
    for start_n in range(lo, hi, BLOCK_N):
        dq = _dq_tile(dq, q, do, lse2, delta, k_base, v_base, start_n, stride_ks, stride_vs,
                      k_offs, v_offs, d_ok, tile_ptrs + (start_n - lo), offs_m, offs_n,
                      seqlen_k, diag_lo, diag_hi, qk_scale, softcap_scale, softcap_log2,
                      BLOCK_N, EVEN_D, MASKED, HAS_TILE, HAS_LEFT, HAS_RIGHT, SOFTCAP)
    return dq


@triton.jit
def _dq_listed_loop(
    dq, q, do, lse2, delta, k_base, v_base, idx_ptr, tile_id_ptr, tiles_ptr, tile_offs,
    n_blocks, stride_ks, stride_vs, k_offs, v_offs, d_ok, offs_m, offs_n, seqlen_k, diag_lo,
    diag_hi, qk_scale, softcap_scale, softcap_log2, BLOCK_N: tl.constexpr,
    KV_BLOCK: tl.constexpr, TILE_ELEMS: tl.constexpr, EVEN_D: tl.constexpr,
    MASKED: tl.constexpr, HAS_TILE: tl.constexpr, HAS_LEFT: tl.constexpr,
    HAS_RIGHT: tl.constexpr, SOFTCAP: tl.constexpr,
):
    """The key tiles of ``n_blocks`` listed mask blocks as one flat loop (as the forward's
    ``_fwd_listed_loop``)."""
    for t in range(0, n_blocks * (KV_BLOCK // BLOCK_N)):
        start_n, t_ptrs = _listed_tile(t, idx_ptr, tile_id_ptr, tiles_ptr, tile_offs, BLOCK_N,
                                       KV_BLOCK, TILE_ELEMS, 1, HAS_TILE)
        dq = _dq_tile(dq, q, do, lse2, delta, k_base, v_base, start_n, stride_ks, stride_vs,
                      k_offs, v_offs, d_ok, t_ptrs, offs_m, offs_n, seqlen_k, diag_lo, diag_hi,
                      qk_scale, softcap_scale, softcap_log2, BLOCK_N, EVEN_D, MASKED, HAS_TILE,
                      HAS_LEFT, HAS_RIGHT, SOFTCAP)
    return dq


@triton.jit
def _bwd_dq_kernel(
    Q, K, V, dO, Lse2, Delta, dQ, cu_seqlens_q, cu_seqlens_k, QOrder,
    BM_num, BM_idx, BM_tile_id, BM_tiles, BM_full_num, BM_full_idx,
    stride_qb, stride_qs, stride_qh, stride_kb, stride_ks, stride_kh,
    stride_vb, stride_vs, stride_vh, stride_dob, stride_dos, stride_doh,
    stride_dqb, stride_dqs, stride_dqh,
    stride_lb, stride_lh, stride_mb, stride_mh, stride_mm, stride_ib, stride_ih, stride_im,
    seqlen_q, seqlen_k, num_heads, group, softmax_scale, softcap, window_left, window_right,
    HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    IS_VARLEN: tl.constexpr, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr,
    BOTTOM_RIGHT: tl.constexpr, SOFTCAP: tl.constexpr, HAS_BLOCK_MASK: tl.constexpr,
    Q_BLOCK: tl.constexpr, KV_BLOCK: tl.constexpr, REVERSE_M: tl.constexpr,
    BH_FIRST: tl.constexpr, HAS_Q_ORDER: tl.constexpr, FLAT_MASK: tl.constexpr,
):
    start_m, off_bh = _schedule(QOrder, BLOCK_M, Q_BLOCK, REVERSE_M, BH_FIRST, HAS_Q_ORDER)
    off_b = off_bh // num_heads
    off_h = off_bh % num_heads
    off_hk = off_h // group
    q_start, k_start, seqlen_q, seqlen_k = _seq_bounds(
        cu_seqlens_q, cu_seqlens_k, off_b, seqlen_q, seqlen_k, IS_VARLEN)
    m0 = start_m * BLOCK_M
    if m0 >= seqlen_q:
        return
    shift = seqlen_k - seqlen_q if BOTTOM_RIGHT else 0
    diag_hi = shift + window_right
    diag_lo = shift - window_left
    qk_scale = softmax_scale * 1.4426950408889634
    softcap_scale = softmax_scale / softcap
    softcap_log2 = softcap * 1.4426950408889634

    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D_PAD)
    rows = tl.arange(0, BLOCK_M)
    d_ok = offs_d[None, :] < HEAD_DIM
    EVEN_D: tl.constexpr = HEAD_DIM == D_PAD
    b64 = tl.cast(off_b, tl.int64)
    row0 = tl.cast(q_start + m0, tl.int64)
    q_mask = (offs_m[:, None] < seqlen_q) & d_ok
    q = tl.load(Q + b64 * stride_qb + row0 * stride_qs + off_h * stride_qh
                + rows[:, None] * stride_qs + offs_d[None, :], mask=q_mask, other=0.0)
    do = tl.load(dO + b64 * stride_dob + row0 * stride_dos + off_h * stride_doh
                 + rows[:, None] * stride_dos + offs_d[None, :], mask=q_mask, other=0.0)
    l_off = b64 * stride_lb + off_h * stride_lh + q_start + offs_m
    lse2 = tl.load(Lse2 + l_off, mask=offs_m < seqlen_q, other=float("inf"))
    delta = tl.load(Delta + l_off, mask=offs_m < seqlen_q, other=0.0)
    k64 = tl.cast(k_start, tl.int64)
    k_base = K + b64 * stride_kb + k64 * stride_ks + off_hk * stride_kh
    v_base = V + b64 * stride_vb + k64 * stride_vs + off_hk * stride_vh
    k_offs = offs_n[:, None] * stride_ks + offs_d[None, :]
    v_offs = offs_n[:, None] * stride_vs + offs_d[None, :]
    dq = tl.zeros([BLOCK_M, D_PAD], tl.float32)
    head = (q, do, lse2, delta, k_base, v_base)
    args = (stride_ks, stride_vs, k_offs, v_offs, d_ok)
    rest = (offs_m, offs_n, seqlen_k, diag_lo, diag_hi, qk_scale, softcap_scale, softcap_log2)

    lo, full_lo, full_hi, hi = _band_ranges(
        m0, seqlen_k, diag_lo, diag_hi, BLOCK_M, BLOCK_N, HAS_LEFT, HAS_RIGHT)
    if HAS_BLOCK_MASK:
        qb = m0 // Q_BLOCK
        bm_off = off_b * stride_mb + off_h * stride_mh + qb * stride_mm
        idx_off = off_b * stride_ib + off_h * stride_ih + qb * stride_im
        tile_offs = (m0 % Q_BLOCK + rows)[:, None] * KV_BLOCK + offs_n[None, :]
        if FLAT_MASK:  # as in the forward: one flat loop over full, one over partial blocks
            dq = _dq_listed_loop(
                dq, *head, BM_full_idx + idx_off, BM_tile_id, BM_tiles, tile_offs,
                tl.load(BM_full_num + bm_off), *args, *rest, BLOCK_N, KV_BLOCK,
                Q_BLOCK * KV_BLOCK, EVEN_D, False, False, HAS_LEFT, HAS_RIGHT, SOFTCAP)
            dq = _dq_listed_loop(
                dq, *head, BM_idx + idx_off, BM_tile_id + idx_off, BM_tiles, tile_offs,
                tl.load(BM_num + bm_off), *args, *rest, BLOCK_N, KV_BLOCK,
                Q_BLOCK * KV_BLOCK, EVEN_D, True, True, HAS_LEFT, HAS_RIGHT, SOFTCAP)
        else:
            for j in range(0, tl.load(BM_full_num + bm_off)):
                blo = tl.load(BM_full_idx + idx_off + j) * KV_BLOCK
                s0, u0, u1, e0 = _clip(blo, blo + KV_BLOCK, lo, full_lo, full_hi, hi)
                dq = _dq_loop(dq, *head, s0, u0, *args, Q, *rest, BLOCK_N, EVEN_D, True, False,
                              HAS_LEFT, HAS_RIGHT, SOFTCAP)
                dq = _dq_loop(dq, *head, u0, u1, *args, Q, *rest, BLOCK_N, EVEN_D, False,
                              False, HAS_LEFT, HAS_RIGHT, SOFTCAP)
                dq = _dq_loop(dq, *head, u1, e0, *args, Q, *rest, BLOCK_N, EVEN_D, True, False,
                              HAS_LEFT, HAS_RIGHT, SOFTCAP)
            for j in range(0, tl.load(BM_num + bm_off)):
                blo = tl.load(BM_idx + idx_off + j) * KV_BLOCK
                s0, _, _, e0 = _clip(blo, blo + KV_BLOCK, lo, full_lo, full_hi, hi)
                tile = tl.load(BM_tile_id + idx_off + j).to(tl.int64) * (Q_BLOCK * KV_BLOCK) \
                    + (s0 - blo)
                dq = _dq_loop(dq, *head, s0, e0, *args, BM_tiles + tile + tile_offs, *rest,
                              BLOCK_N, EVEN_D, True, True, HAS_LEFT, HAS_RIGHT, SOFTCAP)
    else:
        dq = _dq_loop(dq, *head, lo, full_lo, *args, Q, *rest, BLOCK_N, EVEN_D, True, False,
                      HAS_LEFT, HAS_RIGHT, SOFTCAP)
        dq = _dq_loop(dq, *head, full_lo, full_hi, *args, Q, *rest, BLOCK_N, EVEN_D, False,
                      False, HAS_LEFT, HAS_RIGHT, SOFTCAP)
        dq = _dq_loop(dq, *head, full_hi, hi, *args, Q, *rest, BLOCK_N, EVEN_D, True, False,
                      HAS_LEFT, HAS_RIGHT, SOFTCAP)

    dq *= softmax_scale
    dq_ptrs = dQ + b64 * stride_dqb + row0 * stride_dqs + off_h * stride_dqh \
        + rows[:, None] * stride_dqs + offs_d[None, :]
    tl.store(dq_ptrs, dq.to(dQ.dtype.element_ty), mask=q_mask)


@triton.jit
def _dq_convert_kernel(DQacc, dQ, numel, softmax_scale, BLOCK: tl.constexpr):
    """dQ = scale * DQacc cast to dQ's dtype; both dense with the same strides (flat view)."""
    offs = tl.cast(tl.program_id(0), tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < numel
    acc = tl.load(DQacc + offs, mask=ok, other=0.0)
    tl.store(dQ + offs, (acc * softmax_scale).to(dQ.dtype.element_ty), mask=ok)


# -- launchers -------------------------------------------------------------------------------

# Deterministic path: ((dK/dV: BLOCK_M, BLOCK_N, warps, stages), (dQ: same)) per D_PAD.
# D 64/128 the fastest of a sweep on an H100 at S = 4096 (docs/perf-notes.md, 2026-11-23);
# D 32 takes D 64's; D 256 is chosen for few register spills (ptxas), not timed.
_BWD_CONFIGS = {
    32: ((32, 64, 4, 3), (64, 64, 4, 3)),
    64: ((32, 64, 4, 3), (64, 64, 4, 3)),
    128: ((64, 128, 8, 2), (64, 64, 4, 2)),
    256: ((32, 64, 8, 2), (64, 32, 8, 2)),
}
# Atomic path: the dK/dV(+dQ) kernel's (BLOCK_M, BLOCK_N, warps, stages) per D_PAD. Not yet
# timed (a guess to be replaced by benchmarks/attn_bwd_sweep.py's H100 results): key tiles of
# 128 as FlashAttention-2/3's backward, because the fp32 atomic traffic into dQ is
# Sq * D * 4 B per key tile, i.e. 4 / (10 * BLOCK_N) bytes per FLOP (1.6 TB/s at 500 TFLOP/s
# with BN = 128); 8 warps to hold the two (BN, D) fp32 accumulators; BLOCK_M 64 so that all
# five matmuls are wgmma (the dQ one has M = BLOCK_M). ptxas (Triton 3.9, sm_90a, bf16):
# D 128 255 registers + 512 B spilled (the deterministic kernel at this tile: 304 B), D 64
# 88 B, D 32 none; D 256 (32, 64): 656 B, and its dQ matmul runs as mma.sync.
_BWD_ATOMIC_CONFIGS = {  # D 64 / 128: the sweep's best (H100, 2026-11-23)
    32: (64, 64, 4, 3),
    64: (64, 64, 4, 3),
    128: (32, 128, 8, 3),
    256: (32, 64, 8, 2),
}
# Which path ``deterministic=False`` takes through the public API (ops/attention.py). Measured
# on an H100 (2026-11-23, benchmarks/attn_bwd_sweep.py, each path at its best tiles, geometric
# mean over causal/full x S 4k/16k): atomic 292 TFLOP/s at D 128 and 298 at D 64, the
# deterministic kernels 342 and 329. The atomic path is slower, so the default stays on the
# deterministic kernels; the atomic one remains for sweeps and tuning (``deterministic=False``
# here in the launcher, or this flag set to True).
ATOMIC_DQ_DEFAULT = False
_INTERPRET_CONFIG = ((32, 32, 4, 1), (32, 32, 4, 1))
_INTERPRET_ATOMIC_CONFIG = (32, 32, 4, 1)
_CONVERT_BLOCK = 1024


def bwd_config(head_dim: int, interpret: bool, deterministic: bool = True) -> tuple:
    """Default kernel config(s) as (BLOCK_M, BLOCK_N, num_warps, num_stages): deterministic ->
    ((dK/dV kernel), (dQ kernel)); atomic -> the dK/dV(+dQ) kernel's one tuple."""
    if deterministic:
        return _INTERPRET_CONFIG if interpret else _BWD_CONFIGS[head_dim_padded(head_dim)]
    return _INTERPRET_ATOMIC_CONFIG if interpret \
        else _BWD_ATOMIC_CONFIGS[head_dim_padded(head_dim)]


def _check_config(config, deterministic: bool) -> None:
    def one(c):
        return isinstance(c, tuple | list) and len(c) == 4 and all(
            isinstance(x, int) and x > 0 for x in c)

    ok = (isinstance(config, tuple | list) and len(config) == 2 and all(map(one, config))) \
        if deterministic else one(config)
    if not ok:
        want = "((BM, BN, warps, stages), (BM, BN, warps, stages))" if deterministic \
            else "(BM, BN, warps, stages)"
        raise ValueError(f"config {config!r}: expected {want} for deterministic={deterministic}")


def _shrink(cfg: tuple, block_mask) -> tuple:
    """Tiles no larger than the mask blocks (both powers of two, so they nest)."""
    if block_mask is None:
        return tuple(cfg)
    return (min(cfg[0], block_mask.q_block_size), min(cfg[1], block_mask.kv_block_size),
            *cfg[2:])


def flash_attn_bwd(
    dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
    lse: torch.Tensor, *, softmax_scale: float, dlse: torch.Tensor | None = None,
    causal: bool = False, window_left: int | None = None, window_right: int | None = None,
    softcap: float = 0.0, bottom_right: bool = True,
    cu_seqlens_q: torch.Tensor | None = None, cu_seqlens_k: torch.Tensor | None = None,
    max_seqlen_q: int | None = None, max_seqlen_k: int | None = None, block_mask=None,
    block_mask_t=None, deterministic: bool | None = False, config: tuple | None = None,
    schedule: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (dq, dk, dv) of ``flash_attn_fwd``: shapes and layouts as q, k, v.

    dout/out share q's shape; lse (and dlse, the gradient of the returned lse, if any) are the
    forward's (B, Hq, Sq) or (Hq, Tq) fp32. Every tensor needs stride 1 in its last dim.
    With ``block_mask``, ``block_mask_t`` is its transpose (``transpose_block_mask`` in
    ops/attention_reference.py, cached on a BlockMask).
    ``deterministic=False`` (default): one dK/dV kernel that also adds dQ into an fp32 buffer
    (B, Sq, Hq, D) by atomics (5 tile matmuls per tile pair; dQ's last bits may vary run to
    run); True: separate dK/dV and dQ kernels, bit-reproducible (7 matmuls); None (the public
    API's ``deterministic=False``): whichever measured faster, i.e. the Gluon kernel that adds
    dQ by TMA reduce-add where it takes the inputs (``WS_FUSED``), else per
    ``ATOMIC_DQ_DEFAULT``. Dense head-dim-128 inputs on an sm_90 GPU run the warp-specialised
    Gluon kernels (kernels/flash_attn_hopper_bwd*.py) on either path. ``config``
    overrides the tiles (see ``bwd_config`` for its form per path; used by the sweeps);
    ``schedule`` the program order (``launch_schedule`` in kernels/flash_attn.py).
    """
    varlen = cu_seqlens_q is not None
    q4, k4, v4, do4, o4 = (as_batched(t, varlen) for t in (q, k, v, dout, out))
    if varlen:
        batch, seqlen_q, seqlen_k = cu_seqlens_q.shape[0] - 1, max_seqlen_q, max_seqlen_k
    else:
        batch, seqlen_q, seqlen_k = q.shape[0], q.shape[1], k.shape[1]
    Hq, D, Hk = q4.shape[2], q4.shape[3], k4.shape[2]
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    if batch == 0 or q.numel() == 0 or k.numel() == 0:
        return dq.zero_(), dk.zero_(), dv.zero_()
    if dlse is not None and dlse.stride() != lse.stride():
        raise ValueError("dlse must have the layout (strides) of lse")
    explicit_config = config is not None
    plain = (not varlen and block_mask is None and window_left is None and window_right is None
             and softcap == 0 and (bottom_right or not causal) and not explicit_config
             and schedule is None)  # what the Gluon kernels take, shapes and layouts aside
    fused = None
    if deterministic is not True and plain and WS_FUSED:
        fused = _hopper_ws_bwd_module("flash_attn_hopper_bwd_fused", q, k, v, dout, causal)
    if deterministic is None:
        deterministic = fused is None and not ATOMIC_DQ_DEFAULT
    if config is not None:
        _check_config(config, deterministic)
    config = config or bwd_config(D, _interpreting(), deterministic)
    dq4, dk4, dv4 = (as_batched(t, varlen) for t in (dq, dk, dv))
    lse_strides = _lse_strides(varlen, lse)
    # placeholder for pointers the constexpr flags leave unread (cu_seqlens, tile orders): empty,
    # so that no fill kernel is launched per call
    dummy = torch.empty(1, dtype=torch.int32, device=q.device)
    cu_q = cu_seqlens_q if varlen else dummy
    cu_k = cu_seqlens_k if varlen else dummy
    flags = dict(HEAD_DIM=D, D_PAD=head_dim_padded(D), IS_VARLEN=varlen)

    # fp32 dQ accumulator with dq's strides (empty_like of a dense tensor keeps them), so the
    # conversion is one flat pass; zeroed by the preprocess kernel.
    dq_acc = None if deterministic else torch.empty_like(dq, dtype=torch.float32)
    acc4 = as_batched(dq_acc, varlen) if dq_acc is not None else None
    acc_args = [acc4, acc4.stride(0), acc4.stride(1), acc4.stride(2)] if acc4 is not None \
        else [lse, 0, 0, 0]
    delta, lse2 = torch.empty_like(lse), torch.empty_like(lse)
    pre_bm = 64 if not _interpreting() else 16
    _bwd_preprocess_kernel[(triton.cdiv(seqlen_q, pre_bm), batch * Hq)](
        o4, do4, lse, dlse if dlse is not None else lse, delta, lse2, acc_args[0], cu_q,
        o4.stride(0), o4.stride(1), o4.stride(2), do4.stride(0), do4.stride(1), do4.stride(2),
        *lse_strides, *acc_args[1:], seqlen_q, Hq, BLOCK_M=pre_bm, HAS_DLSE=dlse is not None,
        ZERO_DQ=not deterministic, **flags)

    band = dict(softmax_scale=softmax_scale, softcap=softcap if softcap > 0 else 1.0,
                window_left=window_left or 0, window_right=0 if causal else (window_right or 0))
    flags.update(HAS_LEFT=window_left is not None, HAS_RIGHT=causal or window_right is not None,
                 BOTTOM_RIGHT=bottom_right, SOFTCAP=softcap > 0)
    common = [q4, k4, v4, do4, lse2, delta]
    strides = [q4.stride(0), q4.stride(1), q4.stride(2), k4.stride(0), k4.stride(1),
               k4.stride(2), v4.stride(0), v4.stride(1), v4.stride(2), do4.stride(0),
               do4.stride(1), do4.stride(2)]

    band_any = flags["HAS_LEFT"] or flags["HAS_RIGHT"]
    ws = None
    if fused is not None and dq_acc.is_contiguous():
        ws = gluon_call("flash_attn_hopper_bwd_fused", fused.flash_attn_bwd_fused_ws, q, k, v,
                        dout, lse2, delta, dq_acc, softmax_scale=softmax_scale, causal=causal)
        ws = (None, *ws) if ws is not None else None  # dQ is in dq_acc, converted below
    elif deterministic and plain:
        ws = _try_hopper_ws_bwd(q, k, v, dout, lse2, delta, softmax_scale, causal)
    if ws is not None:
        ws_dq, dk, dv = ws
        if ws_dq is not None:
            return ws_dq, dk, dv
    else:  # (the Triton kernel; when not deterministic it adds dQ into dq_acc)
        _launch_dkdv(config, deterministic, block_mask, block_mask_t, common, dk4, dv4,
                     acc_args, cu_q, cu_k, dummy, strides, lse_strides, seqlen_q, seqlen_k,
                     Hk, Hq, batch, band, flags, band_any, varlen, schedule, q.device)

    if not deterministic:
        if dq_acc.stride() != dq.stride():  # never for empty_like outputs; kept as a guard
            dq.copy_(dq_acc.mul_(softmax_scale))
        else:
            n = dq.numel()
            _dq_convert_kernel[(triton.cdiv(n, _CONVERT_BLOCK),)](
                dq_acc, dq, n, softmax_scale, BLOCK=_CONVERT_BLOCK)
        return dq, dk, dv

    bm2, bn2, w2, s2 = _shrink(config[1], block_mask)
    mask_ptrs, mask_strides, mask_meta = block_mask_args(block_mask, bm2, bn2, q.device)
    grid, order, sched = launch_schedule(
        triton.cdiv(seqlen_q, bm2), batch * Hq, bm2, block_mask, reverse=flags["HAS_RIGHT"],
        varlen=varlen, mode=schedule)
    _bwd_dq_kernel[grid](
        *common, dq4, cu_q, cu_k, order if order is not None else dummy, *mask_ptrs, *strides,
        dq4.stride(0), dq4.stride(1), dq4.stride(2),
        *lse_strides, *mask_strides, seqlen_q, seqlen_k, Hq, Hq // Hk, **band,
        BLOCK_M=bm2, BLOCK_N=bn2, **flags, **mask_meta, **sched,
        FLAT_MASK=flat_mask(block_mask, band_any, seqlen_k), num_warps=w2, num_stages=s2)
    return dq, dk, dv


def _launch_dkdv(config, deterministic, block_mask, block_mask_t, common, dk4, dv4, acc_args,
                 cu_q, cu_k, dummy, strides, lse_strides, seqlen_q, seqlen_k, Hk, Hq, batch,
                 band, flags, band_any, varlen, schedule, device) -> None:
    """The Triton dK/dV kernel (which also adds dQ by atomics when not ``deterministic``)."""
    bm1, bn1, w1, s1 = _shrink(config if not deterministic else config[0], block_mask)
    mask_ptrs, mask_strides, mask_meta = block_mask_args(block_mask_t, bm1, bn1, device)
    # key tiles: the first ones are the heaviest under a causal band, so never reversed
    grid, order, sched = launch_schedule(
        triton.cdiv(seqlen_k, bn1), batch * Hk, bn1, block_mask_t, reverse=False,
        varlen=varlen, mode=schedule, transposed=True)
    _bwd_dkdv_kernel[grid](
        *common, dk4, dv4, acc_args[0], cu_q, cu_k, order if order is not None else dummy,
        *mask_ptrs, *strides,
        dk4.stride(0), dk4.stride(1), dk4.stride(2), dv4.stride(0), dv4.stride(1), dv4.stride(2),
        *acc_args[1:], *lse_strides, *mask_strides, seqlen_q, seqlen_k, Hk, Hq // Hk, **band,
        BLOCK_M=bm1, BLOCK_N=bn1, **flags, **mask_meta, ATOMIC_DQ=not deterministic, **sched,
        FLAT_MASK=flat_mask(block_mask_t, band_any, seqlen_k, seqlen_q),
        num_warps=w1, num_stages=s1)


WS_DQ = True  # with the Gluon dK/dV kernel, also its dQ kernel (Sq a multiple of 128); probes
WS_FUSED = True  # deterministic=False/None: the one-kernel Gluon backward (dQ by TMA reduce-add)


def _hopper_ws_bwd_module(name: str, q, k, v, dout, causal: bool):
    """Gluon module ``name`` (a warp-specialised sm_90 backward) if on and it takes these
    dense inputs (its ``supported``), else None."""
    ws = gluon_module(name)
    return ws if ws is not None and ws.supported(q, k, v, dout, causal=causal) else None


def _try_hopper_ws_bwd(q, k, v, dout, lse2, delta, softmax_scale: float, causal: bool):
    """(dq or None, dk, dv) from kernels/flash_attn_hopper_bwd.py (warp-specialised Gluon,
    sm_90) when it takes these dense inputs, else None. dq is None where the Triton dQ kernel
    must run: Sq not a multiple of 128, ``WS_DQ`` off, or the Gluon dQ kernel failed to build."""
    name = "flash_attn_hopper_bwd"
    ws = _hopper_ws_bwd_module(name, q, k, v, dout, causal)
    if ws is None:
        return None
    kw = dict(softmax_scale=softmax_scale, causal=causal)
    dkdv = gluon_call(name, ws.flash_attn_dkdv_ws, q, k, v, dout, lse2, delta, **kw)
    if dkdv is None:
        return None
    dq = None
    if WS_DQ and q.shape[1] % 128 == 0:
        dq = gluon_call(name, ws.flash_attn_dq_ws, q, k, v, dout, lse2, delta, **kw)
    return (dq, *dkdv)
