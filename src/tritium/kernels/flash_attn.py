"""FlashAttention forward in Triton: online softmax over key tiles, fp32 accumulation.

One program computes one (query tile, query head, sequence): it streams K/V tiles of the same
sequence and kv head (GQA: kv head = h // (Hq / Hk)) and keeps the running max m, running sum
l and the output accumulator in registers. Batched (B, S, H, D) and packed variable-length
(T, H, D) inputs share the kernel: a sequence's rows start at ``b * stride_b`` (batched) or
``cu_seqlens[b] * stride_s`` (varlen).

Masking (see ops/attention_reference.py for the math): query i sees key j iff
``j - i <= shift + right`` (HAS_RIGHT; causal is right = 0), ``j - i >= shift - left``
(HAS_LEFT), ``j < Sk``, and, with a block mask, the block lists / element tiles say so;
shift = Sk - Sq (bottom-right) or 0 (top-left). Key tiles fully inside the visible band take the
unmasked path (no per-element work); only the band's edges pay for masks.

Softmax is computed in base 2: s2 = s * log2(e), with log2(e) folded into the scale, so the
inner loop uses exp2. The returned log-sum-exp is in natural-log units.
"""

from __future__ import annotations

import importlib
import os
import warnings

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634  # 1 / ln(2)


@triton.jit
def _tanh(x):
    # tanh from the sigmoid: exact at +-inf, ~1e-7 absolute error near 0 (fine after * softcap).
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0


@triton.jit
def _visible(rows, cols, seqlen_k, diag_lo, diag_hi,
             HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr):
    """Bool tile: which (query row, key column) pairs the band and Sk allow. ``rows`` and
    ``cols`` are index vectors already expanded to broadcast against each other."""
    diff = cols - rows  # full tile shape
    ok = diff < seqlen_k - rows  # cols < Sk, written so that ok has the full shape already
    if HAS_RIGHT:
        ok = ok & (diff <= diag_hi)
    if HAS_LEFT:
        ok = ok & (diff >= diag_lo)
    return ok


@triton.jit
def _fwd_tile(
    acc, l_i, m_i, q, k_base, v_base, start_n, stride_kn, stride_vn, k_offs, v_offs, d_ok,
    tile_ptrs, offs_m, offs_n, seqlen_k, diag_lo, diag_hi, qk_scale, softcap_scale,
    softcap_log2, BLOCK_N: tl.constexpr, EVEN_D: tl.constexpr, MASKED: tl.constexpr,
    HAS_TILE: tl.constexpr, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr,
    SOFTCAP: tl.constexpr,
):
    """One key tile [start_n, start_n + BN): update (acc, l_i, m_i) with the online softmax.

    ``k_offs``/``v_offs`` (BN, D_PAD) = row * stride + d and ``d_ok`` (1, D_PAD) = d < HEAD_DIM
    are hoisted by the caller; with HAS_TILE, ``tile_ptrs`` points at this tile's (BM, BN)
    window of the element mask."""
    if not MASKED:
        start_n = tl.multiple_of(start_n, BLOCK_N)
    n64 = tl.cast(start_n, tl.int64)
    k_ptrs = k_base + n64 * stride_kn + k_offs
    v_ptrs = v_base + n64 * stride_vn + v_offs
    if MASKED:
        kv_mask = (offs_n[:, None] < seqlen_k - start_n) & d_ok
        k = tl.load(k_ptrs, mask=kv_mask, other=0.0)
    elif EVEN_D:
        k = tl.load(k_ptrs)
    else:
        k = tl.load(k_ptrs, mask=d_ok, other=0.0)
    # -- scores: (BM, BN) fp32. Without a cap the scale (> 0, checked by the API) is
    # applied after the row max, so that scaling and subtracting the max is one FMA --
    s = tl.dot(q, tl.trans(k))
    if SOFTCAP:
        s = _tanh(s * softcap_scale) * softcap_log2  # base-2 logits
        row_scale = 1.0
    else:
        row_scale = qk_scale
    if MASKED:
        ok = _visible(offs_m[:, None], (start_n + offs_n)[None, :], seqlen_k, diag_lo,
                      diag_hi, HAS_LEFT, HAS_RIGHT)
        if HAS_TILE:
            ok = ok & (tl.load(tile_ptrs) != 0)
        s = tl.where(ok, s, float("-inf"))
    # -- online softmax (base 2) --
    m_new = tl.maximum(m_i, tl.max(s, 1) * row_scale)
    if MASKED:  # a row with nothing visible yet keeps m = -inf: subtract 0, not -inf
        m_new_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    else:
        m_new_safe = m_new
    p = tl.math.exp2(s * row_scale - m_new_safe[:, None])
    alpha = tl.math.exp2(m_i - m_new_safe)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    if MASKED:
        v = tl.load(v_ptrs, mask=kv_mask, other=0.0)
    elif EVEN_D:
        v = tl.load(v_ptrs)
    else:
        v = tl.load(v_ptrs, mask=d_ok, other=0.0)
    acc = tl.dot(p.to(v.dtype), v, acc)
    return acc, l_i, m_new


@triton.jit
def _fwd_loop(
    acc, l_i, m_i, q, k_base, v_base, lo, hi, stride_kn, stride_vn, k_offs, v_offs, d_ok,
    tile_ptrs, offs_m, offs_n, seqlen_k, diag_lo, diag_hi, qk_scale, softcap_scale,
    softcap_log2, BLOCK_N: tl.constexpr, EVEN_D: tl.constexpr, MASKED: tl.constexpr,
    HAS_TILE: tl.constexpr, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr,
    SOFTCAP: tl.constexpr,
):
    """Key tiles [lo, hi) step BN (``_fwd_tile`` each); with HAS_TILE, ``tile_ptrs`` points at
    the element tile's (BM, BN) window for key ``lo`` (it advances by BN per step)."""
    for start_n in range(lo, hi, BLOCK_N):
        acc, l_i, m_i = _fwd_tile(
            acc, l_i, m_i, q, k_base, v_base, start_n, stride_kn, stride_vn, k_offs, v_offs,
            d_ok, tile_ptrs + (start_n - lo), offs_m, offs_n, seqlen_k, diag_lo, diag_hi,
            qk_scale, softcap_scale, softcap_log2, BLOCK_N, EVEN_D, MASKED, HAS_TILE,
            HAS_LEFT, HAS_RIGHT, SOFTCAP)
    return acc, l_i, m_i


@triton.jit
def _listed_tile(t, idx_ptr, tile_id_ptr, tiles_ptr, tile_offs, TILE: tl.constexpr,
                 BLOCK: tl.constexpr, TILE_ELEMS: tl.constexpr, ELEM_STEP: tl.constexpr,
                 HAS_TILE: tl.constexpr):
    """Tile t of a flat walk over listed mask blocks (BLOCK / TILE kernel tiles per block):
    its first index along the walked axis, and (HAS_TILE) the pointers of its window in the
    block's element tile, which advances ELEM_STEP elements per index along that axis."""
    R: tl.constexpr = BLOCK // TILE
    j = t // R
    within = (t % R) * TILE
    start = tl.load(idx_ptr + j) * BLOCK + within
    if HAS_TILE:
        tile = tl.load(tile_id_ptr + j).to(tl.int64) * TILE_ELEMS + within * ELEM_STEP
        t_ptrs = tiles_ptr + tile + tile_offs
    else:
        t_ptrs = tiles_ptr
    return start, t_ptrs


@triton.jit
def _fwd_listed_loop(
    acc, l_i, m_i, q, k_base, v_base, idx_ptr, tile_id_ptr, tiles_ptr, tile_offs, n_blocks,
    stride_kn, stride_vn, k_offs, v_offs, d_ok, offs_m, offs_n, seqlen_k, diag_lo, diag_hi,
    qk_scale, softcap_scale, softcap_log2, BLOCK_N: tl.constexpr, KV_BLOCK: tl.constexpr,
    TILE_ELEMS: tl.constexpr, EVEN_D: tl.constexpr, MASKED: tl.constexpr,
    HAS_TILE: tl.constexpr, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr,
    SOFTCAP: tl.constexpr,
):
    """The key tiles of ``n_blocks`` listed mask blocks as one flat loop (R = KV_BLOCK / BN
    tiles per block), so the compiler can pipeline loads across blocks; a loop per block has
    only R iterations to pipeline. With HAS_TILE, block j's element tile is
    ``tiles_ptr + tile_id[j] * TILE_ELEMS`` (+ ``tile_offs``, the program's rows)."""
    for t in range(0, n_blocks * (KV_BLOCK // BLOCK_N)):
        start_n, t_ptrs = _listed_tile(t, idx_ptr, tile_id_ptr, tiles_ptr, tile_offs, BLOCK_N,
                                       KV_BLOCK, TILE_ELEMS, 1, HAS_TILE)
        acc, l_i, m_i = _fwd_tile(
            acc, l_i, m_i, q, k_base, v_base, start_n, stride_kn, stride_vn, k_offs, v_offs,
            d_ok, t_ptrs, offs_m, offs_n, seqlen_k, diag_lo, diag_hi, qk_scale, softcap_scale,
            softcap_log2, BLOCK_N, EVEN_D, MASKED, HAS_TILE, HAS_LEFT, HAS_RIGHT, SOFTCAP)
    return acc, l_i, m_i


@triton.jit
def _band_ranges(m0, seqlen_k, diag_lo, diag_hi, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr):
    """Key-tile ranges for query rows [m0, m0 + BM): masked [lo, full_lo), unmasked
    [full_lo, full_hi), masked [full_hi, hi). All bounds are multiples of BN except hi."""
    lo = 0
    hi = seqlen_k
    full_lo = 0
    full_hi = seqlen_k // BLOCK_N * BLOCK_N
    if HAS_RIGHT:
        hi = tl.minimum(hi, tl.maximum(m0 + BLOCK_M + diag_hi, 0))
        full_hi = tl.minimum(full_hi, tl.maximum(m0 + diag_hi + 1, 0) // BLOCK_N * BLOCK_N)
    if HAS_LEFT:
        lo = tl.maximum(m0 + diag_lo, 0) // BLOCK_N * BLOCK_N
        full_lo = tl.cdiv(tl.maximum(m0 + BLOCK_M - 1 + diag_lo, 0), BLOCK_N) * BLOCK_N
    hi_r = tl.cdiv(hi, BLOCK_N) * BLOCK_N
    full_lo = tl.maximum(tl.minimum(tl.maximum(full_lo, lo), hi_r), lo)
    full_hi = tl.maximum(tl.minimum(full_hi, hi_r), full_lo)
    return lo, full_lo, full_hi, hi


@triton.jit
def _clip(blo, bhi, lo, full_lo, full_hi, hi):
    """A listed mask block [blo, bhi) cut by the band's ranges (see _band_ranges): masked
    [s0, u0), unmasked [u0, u1), masked [u1, e0); tiles outside [lo, hi) are skipped."""
    s0 = tl.maximum(blo, lo)
    e0 = tl.minimum(bhi, hi)
    u0 = tl.minimum(tl.maximum(s0, full_lo), e0)
    u1 = tl.maximum(tl.minimum(e0, full_hi), u0)
    return s0, u0, u1, e0


@triton.jit
def _schedule(order_ptr, TILE: tl.constexpr, Q_BLOCK: tl.constexpr, REVERSE: tl.constexpr,
              BH_FIRST: tl.constexpr, HAS_ORDER: tl.constexpr):
    """(tile index along the sequence, batch x head index) of this program.

    The grid is (tiles, B*H), or (B*H, tiles) with BH_FIRST, in which case programs are issued
    tile slot by tile slot across all heads, so that the order below holds for the whole
    launch and not only within each head. Slot -> tile: the identity; reversed (REVERSE:
    causal, heaviest tiles first so that light ones fill the tail); or read from
    ``order_ptr`` (HAS_ORDER: a permutation of the mask's Q_BLOCK-row blocks, heaviest
    first, each block's Q_BLOCK / TILE tiles in a row)."""
    if BH_FIRST:
        slot = tl.program_id(1)
        n_slots = tl.num_programs(1)
        off_bh = tl.program_id(0)
    else:
        slot = tl.program_id(0)
        n_slots = tl.num_programs(0)
        off_bh = tl.program_id(1)
    if HAS_ORDER:
        R: tl.constexpr = Q_BLOCK // TILE
        tile = tl.load(order_ptr + slot // R) * R + slot % R
    elif REVERSE:
        tile = n_slots - 1 - slot
    else:
        tile = slot
    return tile, off_bh


@triton.jit
def _seq_bounds(cu_seqlens_q, cu_seqlens_k, off_b, seqlen_q, seqlen_k, IS_VARLEN: tl.constexpr):
    """(first row of q, first row of k, Sq, Sk) of sequence ``off_b``."""
    if IS_VARLEN:
        q_start = tl.load(cu_seqlens_q + off_b)
        k_start = tl.load(cu_seqlens_k + off_b)
        seqlen_q = tl.load(cu_seqlens_q + off_b + 1) - q_start
        seqlen_k = tl.load(cu_seqlens_k + off_b + 1) - k_start
    else:
        q_start = 0
        k_start = 0
    return q_start, k_start, seqlen_q, seqlen_k


@triton.jit
def _flash_attn_fwd_kernel(
    Q, K, V, Out, Lse, cu_seqlens_q, cu_seqlens_k, QOrder,
    BM_num, BM_idx, BM_tile_id, BM_tiles, BM_full_num, BM_full_idx,
    stride_qb, stride_qs, stride_qh, stride_kb, stride_ks, stride_kh,
    stride_vb, stride_vs, stride_vh, stride_ob, stride_os, stride_oh,
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

    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D_PAD)
    b64 = tl.cast(off_b, tl.int64)
    q_base = Q + b64 * stride_qb + tl.cast(q_start + m0, tl.int64) * stride_qs + off_h * stride_qh
    k_base = K + b64 * stride_kb + tl.cast(k_start, tl.int64) * stride_ks + off_hk * stride_kh
    v_base = V + b64 * stride_vb + tl.cast(k_start, tl.int64) * stride_vs + off_hk * stride_vh
    rows = tl.arange(0, BLOCK_M)
    d_ok = offs_d[None, :] < HEAD_DIM
    EVEN_D: tl.constexpr = HEAD_DIM == D_PAD
    q_mask = (offs_m[:, None] < seqlen_q) & d_ok
    k_offs = offs_n[:, None] * stride_ks + offs_d[None, :]
    v_offs = offs_n[:, None] * stride_vs + offs_d[None, :]
    q = tl.load(q_base + rows[:, None] * stride_qs + offs_d[None, :], mask=q_mask, other=0.0)

    qk_scale = softmax_scale * 1.4426950408889634  # fold log2(e): exp2 in the loop
    softcap_scale = softmax_scale / softcap
    softcap_log2 = softcap * 1.4426950408889634
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D_PAD], tl.float32)
    args = (stride_ks, stride_vs, k_offs, v_offs, d_ok)
    rest = (offs_m, offs_n, seqlen_k, diag_lo, diag_hi, qk_scale, softcap_scale, softcap_log2)

    lo, full_lo, full_hi, hi = _band_ranges(
        m0, seqlen_k, diag_lo, diag_hi, BLOCK_M, BLOCK_N, HAS_LEFT, HAS_RIGHT)
    if HAS_BLOCK_MASK:
        # Visit only the key blocks the mask lists. Full blocks take the unmasked path where
        # they are inside the band too; partial blocks always load their element tile.
        qb = m0 // Q_BLOCK
        bm_off = off_b * stride_mb + off_h * stride_mh + qb * stride_mm
        idx_off = off_b * stride_ib + off_h * stride_ih + qb * stride_im
        tile_offs = (m0 % Q_BLOCK + rows)[:, None] * KV_BLOCK + offs_n[None, :]
        n_full = tl.load(BM_full_num + bm_off)
        n_part = tl.load(BM_num + bm_off)
        if FLAT_MASK:
            # No band to clip against and every listed block lies inside Sk: full blocks need
            # no mask at all, partial ones only their element tile; one flat loop each.
            acc, l_i, m_i = _fwd_listed_loop(
                acc, l_i, m_i, q, k_base, v_base, BM_full_idx + idx_off, BM_tile_id, BM_tiles,
                tile_offs, n_full, *args, *rest, BLOCK_N, KV_BLOCK, Q_BLOCK * KV_BLOCK, EVEN_D,
                False, False, HAS_LEFT, HAS_RIGHT, SOFTCAP)
            acc, l_i, m_i = _fwd_listed_loop(
                acc, l_i, m_i, q, k_base, v_base, BM_idx + idx_off, BM_tile_id + idx_off,
                BM_tiles, tile_offs, n_part, *args, *rest, BLOCK_N, KV_BLOCK,
                Q_BLOCK * KV_BLOCK, EVEN_D, True, True, HAS_LEFT, HAS_RIGHT, SOFTCAP)
        else:
            for j in range(0, n_full):
                blo = tl.load(BM_full_idx + idx_off + j) * KV_BLOCK
                s0, u0, u1, e0 = _clip(blo, blo + KV_BLOCK, lo, full_lo, full_hi, hi)
                acc, l_i, m_i = _fwd_loop(
                    acc, l_i, m_i, q, k_base, v_base, s0, u0, *args, Q, *rest, BLOCK_N, EVEN_D,
                    True, False, HAS_LEFT, HAS_RIGHT, SOFTCAP)
                acc, l_i, m_i = _fwd_loop(
                    acc, l_i, m_i, q, k_base, v_base, u0, u1, *args, Q, *rest, BLOCK_N, EVEN_D,
                    False, False, HAS_LEFT, HAS_RIGHT, SOFTCAP)
                acc, l_i, m_i = _fwd_loop(
                    acc, l_i, m_i, q, k_base, v_base, u1, e0, *args, Q, *rest, BLOCK_N, EVEN_D,
                    True, False, HAS_LEFT, HAS_RIGHT, SOFTCAP)
            for j in range(0, n_part):
                blo = tl.load(BM_idx + idx_off + j) * KV_BLOCK
                s0, _, _, e0 = _clip(blo, blo + KV_BLOCK, lo, full_lo, full_hi, hi)
                tile = tl.load(BM_tile_id + idx_off + j).to(tl.int64) * (Q_BLOCK * KV_BLOCK) \
                    + (s0 - blo)
                acc, l_i, m_i = _fwd_loop(
                    acc, l_i, m_i, q, k_base, v_base, s0, e0, *args, BM_tiles + tile + tile_offs,
                    *rest, BLOCK_N, EVEN_D, True, True, HAS_LEFT, HAS_RIGHT, SOFTCAP)
    else:
        # left edge of a sliding window, inside the band (no masks), diagonal and the Sk edge
        acc, l_i, m_i = _fwd_loop(acc, l_i, m_i, q, k_base, v_base, lo, full_lo, *args, Q, *rest,
                                  BLOCK_N, EVEN_D, True, False, HAS_LEFT, HAS_RIGHT, SOFTCAP)
        acc, l_i, m_i = _fwd_loop(acc, l_i, m_i, q, k_base, v_base, full_lo, full_hi, *args, Q,
                                  *rest, BLOCK_N, EVEN_D, False, False, HAS_LEFT, HAS_RIGHT,
                                  SOFTCAP)
        acc, l_i, m_i = _fwd_loop(acc, l_i, m_i, q, k_base, v_base, full_hi, hi, *args, Q, *rest,
                                  BLOCK_N, EVEN_D, True, False, HAS_LEFT, HAS_RIGHT, SOFTCAP)

    # -- epilogue: normalize; empty rows give 0 and lse = -inf --
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    acc = acc / l_safe[:, None]
    o_base = Out + b64 * stride_ob + tl.cast(q_start + m0, tl.int64) * stride_os \
        + off_h * stride_oh
    tl.store(o_base + rows[:, None] * stride_os + offs_d[None, :], acc.to(Out.dtype.element_ty),
             mask=q_mask)
    lse = (m_i + tl.math.log2(l_safe)) * 0.6931471805599453  # base 2 -> natural log
    lse = tl.where(l_i == 0.0, float("-inf"), lse)
    l_ptrs = Lse + b64 * stride_lb + off_h * stride_lh + q_start + offs_m
    tl.store(l_ptrs, lse, mask=offs_m < seqlen_q)


# -- launcher --------------------------------------------------------------------------------

# (BLOCK_M, BLOCK_N, num_warps, num_stages) per (padded head dim, causal). D 64: the fastest
# of a sweep on an H100 at S = 4096 (docs/perf-notes.md, 2026-11-23); D 128: key tiles of 128
# (launcher sweeps, benchmarks/attn_fwd_probe.py --part library; causal 412 vs 393 TFLOP/s at
# 4k, 511 vs 455 at 16k; full 483 vs 461 and 504 vs 495 in the third sweep, ahead in all
# three); D 32 takes D 64's; D 256 is chosen for no register spills (ptxas), not timed.
_FWD_CONFIGS = {
    (32, False): (128, 64, 8, 3), (32, True): (128, 64, 8, 3),
    (64, False): (128, 64, 8, 3), (64, True): (128, 64, 8, 3),
    (128, False): (128, 128, 8, 3), (128, True): (128, 128, 8, 3),
    (256, False): (128, 32, 8, 2), (256, True): (128, 32, 8, 2),
}
_INTERPRET_CONFIG = (32, 32, 4, 1)  # the interpreter: few, small tiles (tests pass others)


def head_dim_padded(head_dim: int) -> int:
    """Power of two >= head_dim (and >= 16): the kernels' tile width along D."""
    return max(16, triton.next_power_of_2(head_dim))


# Causal with short queries (S <= 1024) at D 128: narrower key tiles waste less of the
# diagonal: 292 vs 258 TFLOP/s at S = 1024; at S = 4096 the default wins, 408 vs 386 (H100
# sweep, 2026-11-23).
_FWD_SHORT_CAUSAL = {128: (128, 32, 8, 3)}


# BlockMask launches at D 128 (the flat listed-block loops): smaller query tiles, 4 warps. H100
# sweep on the 16k document mask (benchmarks/attn_schedule_probe.py --sweep, 2026-11-23):
# 310 TFLOP/s vs 286 for (128, 64, 8, 4), then the dense default; (128, 64, 8, 2) 294, key tiles of
# 128 271-277, of 32 215.
_FWD_MASK = {128: (64, 64, 4, 3)}


def fwd_config(head_dim: int, causal: bool, interpret: bool,
               seqlen_q: int | None = None,
               block_mask: bool = False) -> tuple[int, int, int, int]:
    """Default (BLOCK_M, BLOCK_N, num_warps, num_stages) for the forward kernel."""
    if interpret:
        return _INTERPRET_CONFIG
    d_pad = head_dim_padded(head_dim)
    if block_mask and d_pad in _FWD_MASK:
        return _FWD_MASK[d_pad]
    if causal and seqlen_q is not None and seqlen_q <= 1024 and d_pad in _FWD_SHORT_CAUSAL:
        return _FWD_SHORT_CAUSAL[d_pad]
    return _FWD_CONFIGS[(d_pad, causal)]


def as_batched(t: torch.Tensor, varlen: bool) -> torch.Tensor:
    """Packed (T, H, D) -> a (1, T, H, D) view whose batch stride is 0: in varlen mode the
    kernels index rows through cu_seqlens, and batch index b must not move the pointer."""
    return t.as_strided((1, *t.shape), (0, *t.stride())) if varlen else t


def _lse_strides(varlen: bool, lse) -> tuple[int, int]:
    # lse is (B, H, Sq) batched or (H, Tq) varlen: (stride over batch, stride over heads).
    return (0, lse.stride(0)) if varlen else (lse.stride(0), lse.stride(1))


def block_mask_args(block_mask, q_tile: int, kv_tile: int, device) -> tuple[list, list, dict]:
    """Pointer args, strides and constexprs for a ``BlockMask`` (or the empty placeholders).

    Checks that the kernel tiles nest in the mask blocks: q_tile | q_block_size and
    kv_tile | kv_block_size (both powers of two)."""
    if block_mask is None:
        dummy = torch.zeros(1, dtype=torch.int32, device=device)
        return [dummy] * 6, [0] * 6, dict(HAS_BLOCK_MASK=False, Q_BLOCK=1, KV_BLOCK=1)
    bm = block_mask
    if bm.q_block_size % q_tile or bm.kv_block_size % kv_tile:
        raise ValueError(
            f"block_mask blocks ({bm.q_block_size}, {bm.kv_block_size}) must be multiples of "
            f"the kernel tiles ({q_tile}, {kv_tile}); rebuild the mask with larger blocks")

    def bstrides(t):  # broadcast (size-1) batch/head dims read stride 0
        return [t.stride(i) if t.shape[i] > 1 else 0 for i in range(3)]

    ptrs = [bm.kv_num_blocks, bm.kv_indices, bm.partial_tile_ids, bm.mask_tiles,
            bm.full_kv_num_blocks, bm.full_kv_indices]
    for name, t in zip(("kv_num_blocks", "kv_indices", "partial_tile_ids"), ptrs[:3]):
        if t.dtype != torch.int32 or t.device != device:
            raise ValueError(f"block_mask.{name} must be int32 on {device}, got {t.dtype} "
                             f"on {t.device}")
    if bm.kv_indices.stride(-1) != 1 or bm.full_kv_indices.stride(-1) != 1:
        raise ValueError("block_mask index tensors must be contiguous in their last dim")
    if bm.kv_indices.stride() != bm.partial_tile_ids.stride() or \
            bm.kv_num_blocks.stride() != bm.full_kv_num_blocks.stride() or \
            bm.kv_indices.stride() != bm.full_kv_indices.stride():
        raise ValueError("block_mask tensors of the same shape must share strides")
    if not bm.mask_tiles.is_contiguous():
        raise ValueError("block_mask.mask_tiles must be contiguous")
    strides = bstrides(bm.kv_num_blocks) + bstrides(bm.kv_indices)
    return ptrs, strides, dict(HAS_BLOCK_MASK=True, Q_BLOCK=bm.q_block_size,
                               KV_BLOCK=bm.kv_block_size)


# Program order: "tiles" = grid (tiles, B*H), tiles reversed when causal (the heaviest first
# within each head); "bh_first" = grid (B*H, tiles), the same order across all heads;
# "ordered" = "bh_first" with a BlockMask's blocks sorted by their listed work, heaviest first
# (without a mask it falls back to "bh_first"). Defaults from an H100 probe (2026-11-23,
# benchmarks/attn_schedule_probe.py, D 128, bf16, 16k tokens, TFLOP/s fwd / bwd): dense and
# varlen run best as "tiles" (causal 16k 469 / 335 vs 418 / 325 "bh_first"; varlen documents
# 364 / 227 vs 346 / 209); the document BlockMask as "bh_first" (286 / 256 vs 243 / 238
# "tiles" and 222 / 223 "ordered").
SCHEDULES = ("tiles", "bh_first", "ordered")
DEFAULT_SCHEDULE = "tiles"
DEFAULT_MASK_SCHEDULE = "bh_first"


def block_order(block_mask, transposed: bool = False) -> torch.Tensor:
    """A permutation of the mask's query blocks (key blocks when ``transposed``: the lists of
    ``BlockMask.transposed()``), heaviest first: work = full + 2 x partial listed blocks,
    summed over batch and heads (a partial block also loads and applies its element tile)."""
    work = 2 * block_mask.kv_num_blocks + block_mask.full_kv_num_blocks
    work = work.sum(dim=(0, 1))
    return torch.argsort(work, descending=True, stable=True).to(torch.int32)


def flat_mask(block_mask, band: bool, seqlen_k: int, seqlen_q: int | None = None) -> bool:
    """Whether the kernels may walk a BlockMask's listed blocks as flat tile loops: no band to
    clip the blocks against, and every listed block inside Sk (and Sq, when given: the dK/dV
    kernel walks query blocks)."""
    if block_mask is None or band or seqlen_k % block_mask.kv_block_size:
        return False
    return seqlen_q is None or seqlen_q % block_mask.q_block_size == 0


def launch_schedule(n_tiles: int, n_bh: int, tile: int, block_mask, *, reverse: bool,
                    varlen: bool, mode: str | None = None, transposed: bool = False):
    """(grid, order tensor or None, scheduling constexprs) for the attention kernels.
    ``reverse``: later tiles are heavier (causal rows); "tiles" does not reverse varlen
    launches (its measured default), the others do."""
    mode = mode or (DEFAULT_MASK_SCHEDULE if block_mask is not None else DEFAULT_SCHEDULE)
    if mode not in SCHEDULES:
        raise ValueError(f"schedule {mode!r}: expected one of {SCHEDULES}")
    if mode == "ordered" and block_mask is not None:
        q_block = block_mask.kv_block_size if transposed else block_mask.q_block_size
        order = block_order(block_mask, transposed)
        slots = order.numel() * (q_block // tile)
        return (n_bh, slots), order, dict(REVERSE_M=False, BH_FIRST=True, HAS_Q_ORDER=True)
    if mode == "tiles":
        return (n_tiles, n_bh), None, dict(REVERSE_M=reverse and not varlen, BH_FIRST=False,
                                           HAS_Q_ORDER=False)
    return (n_bh, n_tiles), None, dict(REVERSE_M=reverse, BH_FIRST=True, HAS_Q_ORDER=False)


def flash_attn_fwd(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, softmax_scale: float,
    causal: bool = False, window_left: int | None = None, window_right: int | None = None,
    softcap: float = 0.0, bottom_right: bool = True,
    cu_seqlens_q: torch.Tensor | None = None, cu_seqlens_k: torch.Tensor | None = None,
    max_seqlen_q: int | None = None, block_mask=None,
    config: tuple[int, int, int, int] | None = None, schedule: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the forward kernel on validated inputs.

    Batched: q (B, Sq, Hq, D), k/v (B, Sk, Hk, D) -> out (B, Sq, Hq, D), lse (B, Hq, Sq) fp32.
    Varlen (cu_seqlens_q/k given, int32 (N+1,)): q (Tq, Hq, D), k/v (Tk, Hk, D)
    -> out (Tq, Hq, D), lse (Hq, Tq). Every tensor needs stride 1 in its last dim.
    ``schedule`` overrides the program order (see ``launch_schedule``; for sweeps).
    """
    varlen = cu_seqlens_q is not None
    if (not varlen and block_mask is None and window_left is None and window_right is None
            and softcap == 0 and (bottom_right or not causal) and config is None
            and schedule is None):
        res = _try_hopper_ws(q, k, v, softmax_scale, causal)
        if res is not None:
            return res
    q4, k4, v4 = (as_batched(t, varlen) for t in (q, k, v))
    if varlen:
        batch = cu_seqlens_q.shape[0] - 1
        seqlen_q, seqlen_k = max_seqlen_q, 0
    else:
        batch, seqlen_q, seqlen_k = q.shape[0], q.shape[1], k.shape[1]
    Hq, D = q4.shape[2], q4.shape[3]
    Hk = k4.shape[2]
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    o4 = as_batched(out, varlen)
    lse_shape = (Hq, q.shape[0]) if varlen else (batch, Hq, seqlen_q)
    lse = torch.empty(lse_shape, dtype=torch.float32, device=q.device)
    if out.numel() == 0 or batch == 0:
        lse.fill_(float("-inf"))
        return out, lse
    bm_, bn, warps, stages = config or fwd_config(D, causal, _interpreting(), seqlen_q,
                                                  block_mask is not None)
    if block_mask is not None:
        bm_, bn = min(bm_, block_mask.q_block_size), min(bn, block_mask.kv_block_size)
    mask_ptrs, mask_strides, mask_meta = block_mask_args(block_mask, bm_, bn, q.device)
    if varlen:
        cu_q, cu_k = cu_seqlens_q, cu_seqlens_k
    else:
        cu_q = cu_k = mask_ptrs[0]  # unused placeholders
    has_right = causal or window_right is not None
    grid, order, sched = launch_schedule(
        triton.cdiv(seqlen_q, bm_), batch * Hq, bm_, block_mask, reverse=has_right,
        varlen=varlen, mode=schedule)
    _flash_attn_fwd_kernel[grid](
        q4, k4, v4, o4, lse, cu_q, cu_k, order if order is not None else cu_q, *mask_ptrs,
        q4.stride(0), q4.stride(1), q4.stride(2), k4.stride(0), k4.stride(1), k4.stride(2),
        v4.stride(0), v4.stride(1), v4.stride(2), o4.stride(0), o4.stride(1), o4.stride(2),
        *_lse_strides(varlen, lse), *mask_strides,
        seqlen_q, seqlen_k, Hq, Hq // Hk, softmax_scale, softcap if softcap > 0 else 1.0,
        window_left or 0, 0 if causal else (window_right or 0),
        HEAD_DIM=D, D_PAD=head_dim_padded(D), BLOCK_M=bm_, BLOCK_N=bn, IS_VARLEN=varlen,
        HAS_LEFT=window_left is not None, HAS_RIGHT=has_right, BOTTOM_RIGHT=bottom_right,
        SOFTCAP=softcap > 0, **sched, **mask_meta,
        FLAT_MASK=flat_mask(block_mask, has_right or window_left is not None, seqlen_k),
        num_warps=warps, num_stages=stages,
    )
    return out, lse


_GLUON: dict = {}  # kernels module name -> the module, or None (no Gluon, or its build failed)


def gluon_module(name: str):
    """``tritium.kernels.<name>``, one of the warp-specialised Gluon kernels for sm_90, or None:
    ``TRITIUM_HOPPER_WS=0``, the interpreter, a Triton without Gluon's Hopper API, or an earlier
    build failure (``gluon_call``) turn them off."""
    if os.environ.get("TRITIUM_HOPPER_WS", "1") == "0" or _interpreting():
        return None
    if name not in _GLUON:
        try:
            _GLUON[name] = importlib.import_module(f"tritium.kernels.{name}")
        except ImportError:
            _GLUON[name] = None
    return _GLUON[name]


def gluon_call(name: str, fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` from module ``name``, or None when it fails to build (a Triton
    whose Gluon API moved on): that warns once and turns the module off for good."""
    try:
        return fn(*args, **kwargs)
    except (triton.CompilationError, AttributeError, TypeError) as e:
        warnings.warn(f"tritium: the Gluon kernels.{name} failed to build ({e!r:.200}); using "
                      "the Triton kernel from now on", RuntimeWarning, stacklevel=3)
        _GLUON[name] = None
        return None


def _try_hopper_ws(q, k, v, softmax_scale: float, causal: bool):
    """(out, lse) from the Hopper Gluon forward when it takes these dense inputs, else None."""
    ws = gluon_module("flash_attn_hopper")
    if ws is None or not ws.supported(q, k, v, causal=causal):
        return None
    return gluon_call("flash_attn_hopper", ws.flash_attn_fwd_ws, q, k, v,
                      softmax_scale=softmax_scale, causal=causal)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"
