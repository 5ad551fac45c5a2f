"""Paged attention in Triton: decode (split-KV, GQA-grouped) and prefill over a cached prefix.

KV cache per layer: (num_blocks, PAGE, Hk, D). Key t of sequence i lives at block
``block_tables[i, t // PAGE]``, offset ``t % PAGE``. Every key tile gathers its rows by slot
(one block-table lookup per row), so any page size works, 1 included; a page never has to hold
a whole tile.

GQA: one program serves one KV head and *all* its G = Hq / Hk query heads, so each K/V page is
read once per sequence instead of G times. Its query tile stacks the group's rows:
  decode:  row g            = query head kvh*G + g of the sequence's single new token,
           padded to >= 16 rows (tl.dot's minimum M);
  prefill: row m = r*G + g  = new token r, query head kvh*G + g.
New token r of a sequence with L tokens in cache and n new ones sits at position L - n + r and
sees keys j <= L - n + r (bottom-right causal), and, with a sliding window W, j > pos - W.

Decode splits each sequence's keys into at most num_splits chunks (grid: sequence x KV head x
split). The chunk length is computed *in the kernel* from the sequence's own length:
``split_len = max(min_split_len, round_up(cdiv(seq_len, num_splits), BLOCK_N))``, so a short
sequence uses fewer splits and the rest exit empty. The grid therefore depends only on
(batch, num_splits), never on the lengths: a CUDA graph captured once per batch size stays
valid for any context (tritium.engine.cuda_graphs picks num_splits from max_model_len).
Each program writes its normalised partial output and base-2 log-sum-exp, and
``_paged_decode_reduce_kernel`` merges them: out = sum_s 2^(lse_s - M) o_s / sum_s 2^(lse_s - M);
an empty split has lse = -inf and weighs 0. With one split the decode kernel writes the output
directly (no second launch, no fp32 round trip). The split count is a runtime argument (only
"split or not" is compiled in), so a changing split count does not recompile.

fp8 caches (e4m3): K/V are stored divided by per-tensor scales k_scale / v_scale; k_scale is
folded into the softmax scale and v_scale multiplies the output, so the inner loop only casts.
Softmax runs in base 2 (log2(e) folded into the scale), accumulation in fp32.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634  # 1 / ln(2)


@triton.jit
def _kv_tile(cache_ptr, bt_row_ptr, offs_n, offs_d, valid, stride_block, stride_slot,
             PAGE: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
             MASK_ROWS: tl.constexpr):
    """Gather key/value rows ``offs_n`` (BLOCK_N,) of one sequence and head -> (BLOCK_N, BLOCK_D).

    ``cache_ptr`` already points at the head. With MASK_ROWS, rows past the sequence (``valid``
    False) load 0, so garbage (even NaN) in unused cache slots never reaches the accumulators.
    """
    bt_ptrs = bt_row_ptr + offs_n // PAGE
    if MASK_ROWS:
        blk = tl.load(bt_ptrs, mask=valid, other=0).to(tl.int64)
    else:
        blk = tl.load(bt_ptrs).to(tl.int64)
    row_off = blk * stride_block + (offs_n % PAGE).to(tl.int64) * stride_slot  # (BLOCK_N,)
    ptrs = cache_ptr + row_off[:, None] + offs_d[None, :]
    if MASK_ROWS:
        mask = valid[:, None] & (offs_d[None, :] < HEAD_DIM)
        return tl.load(ptrs, mask=mask, other=0.0)
    elif HEAD_DIM != BLOCK_D:
        return tl.load(ptrs, mask=offs_d[None, :] < HEAD_DIM, other=0.0)
    else:
        return tl.load(ptrs)


@triton.jit
def _online_softmax_step(acc, l_i, m_i, s, v, MASKED: tl.constexpr):
    """Fold one tile of base-2 scores s (M, N) and values v (N, D) into (acc, l, m)."""
    m_new = tl.maximum(m_i, tl.max(s, 1))
    if MASKED:  # a row that has seen no key yet keeps m = -inf: subtract 0, not -inf
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
    else:
        m_ref = m_new
    p = tl.math.exp2(s - m_ref[:, None])
    alpha = tl.math.exp2(m_i - m_ref)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
    return acc, l_i, m_new


# ---------------------------------------------------------------------------------------------
# decode: one new token per sequence
# ---------------------------------------------------------------------------------------------
@triton.jit
def _paged_decode_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, seq_lens_ptr, out_ptr,
    mid_out_ptr, mid_lse_ptr,
    stride_q_t, stride_q_h, stride_kc_b, stride_kc_s, stride_kc_h,
    stride_vc_b, stride_vc_s, stride_vc_h, stride_bt, stride_o_t, stride_o_h,
    qk_scale, v_scale, window, min_split_len, num_splits,
    GROUP: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr, PAGE: tl.constexpr, SPLIT: tl.constexpr,
    HAS_WINDOW: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    seq = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + seq)
    # this sequence's chunk: whole tiles, >= min_split_len keys; splits past the end are empty
    per_split = (seq_len + num_splits - 1) // num_splits
    split_len = tl.maximum((per_split + BLOCK_N - 1) // BLOCK_N * BLOCK_N, min_split_len)
    lo = split * split_len
    hi = tl.minimum(seq_len, lo + split_len)
    if HAS_WINDOW:  # the token at seq_len - 1 sees keys > seq_len - 1 - window
        lo = tl.maximum(lo, seq_len - window)

    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    heads = kvh * GROUP + offs_g  # (BLOCK_G,) query heads of this group
    g_mask = offs_g < GROUP
    d_mask = offs_d < HEAD_DIM
    # -- the group's queries: (BLOCK_G, BLOCK_D), padded rows are 0 --
    q_ptrs = q_ptr + seq.to(tl.int64) * stride_q_t + heads[:, None] * stride_q_h + offs_d[None, :]
    q = tl.load(q_ptrs, mask=g_mask[:, None] & d_mask[None, :], other=0.0)

    k_base = k_cache_ptr + kvh * stride_kc_h
    v_base = v_cache_ptr + kvh * stride_vc_h
    bt_row = block_tables_ptr + seq.to(tl.int64) * stride_bt
    m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
    full_hi = lo + tl.maximum(hi - lo, 0) // BLOCK_N * BLOCK_N
    # -- whole tiles: no masks --
    for start in range(lo, full_hi, BLOCK_N):
        cols = start + offs_n
        k = _kv_tile(k_base, bt_row, cols, offs_d, cols >= 0, stride_kc_b, stride_kc_s,
                     PAGE, HEAD_DIM, BLOCK_D, False)
        s = tl.dot(q, tl.trans(k.to(q.dtype)), input_precision=DOT_PRECISION) * qk_scale
        v = _kv_tile(v_base, bt_row, cols, offs_d, cols >= 0, stride_vc_b, stride_vc_s,
                     PAGE, HEAD_DIM, BLOCK_D, False)
        acc, l_i, m_i = _online_softmax_step(acc, l_i, m_i, s, v.to(q.dtype), False)
    # -- the ragged last tile (runs 0 or 1 times); it holds >= 1 valid key --
    for start in range(full_hi, hi, BLOCK_N):
        cols = start + offs_n
        valid = cols < hi
        k = _kv_tile(k_base, bt_row, cols, offs_d, valid, stride_kc_b, stride_kc_s,
                     PAGE, HEAD_DIM, BLOCK_D, True)
        s = tl.dot(q, tl.trans(k.to(q.dtype)), input_precision=DOT_PRECISION) * qk_scale
        s = tl.where(valid[None, :], s, float("-inf"))
        v = _kv_tile(v_base, bt_row, cols, offs_d, valid, stride_vc_b, stride_vc_s,
                     PAGE, HEAD_DIM, BLOCK_D, True)
        acc, l_i, m_i = _online_softmax_step(acc, l_i, m_i, s, v.to(q.dtype), False)

    l_safe = tl.where(l_i == 0.0, 1.0, l_i)  # an empty split (lo >= hi) gives o = 0
    o = acc * (v_scale / l_safe)[:, None]
    if not SPLIT:
        o_ptrs = out_ptr + seq.to(tl.int64) * stride_o_t + heads[:, None] * stride_o_h \
            + offs_d[None, :]
        tl.store(o_ptrs, o.to(out_ptr.dtype.element_ty), mask=g_mask[:, None] & d_mask[None, :])
    else:
        # mid_out: (N, Hq, num_splits, HEAD_DIM) fp32, mid_lse: (N, Hq, num_splits) fp32
        row = (seq.to(tl.int64) * (tl.num_programs(1) * GROUP) + heads) * num_splits + split
        tl.store(mid_out_ptr + row[:, None] * HEAD_DIM + offs_d[None, :], o,
                 mask=g_mask[:, None] & d_mask[None, :])
        lse = tl.where(l_i == 0.0, float("-inf"), m_i + tl.math.log2(l_safe))
        tl.store(mid_lse_ptr + row, lse, mask=g_mask)


@triton.jit
def _paged_decode_reduce_kernel(
    mid_out_ptr, mid_lse_ptr, out_ptr, stride_o_t, stride_o_h, num_heads, num_splits,
    BLOCK_S: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
):
    seq = tl.program_id(0)
    h = tl.program_id(1)
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    s_mask = offs_s < num_splits
    row0 = (seq.to(tl.int64) * num_heads + h) * num_splits
    lse = tl.load(mid_lse_ptr + row0 + offs_s, mask=s_mask, other=float("-inf"))  # (BLOCK_S,)
    lse_max = tl.max(lse, 0)
    lse_max = tl.where(lse_max == float("-inf"), 0.0, lse_max)
    w = tl.math.exp2(lse - lse_max)  # empty splits weigh 0
    o = tl.load(mid_out_ptr + (row0 + offs_s)[:, None] * HEAD_DIM + offs_d[None, :],
                mask=s_mask[:, None] & (offs_d[None, :] < HEAD_DIM), other=0.0)
    w_sum = tl.sum(w, 0)
    w_sum = tl.where(w_sum == 0.0, 1.0, w_sum)
    out = tl.sum(o * w[:, None], 0) / w_sum  # (BLOCK_D,)
    tl.store(out_ptr + seq.to(tl.int64) * stride_o_t + h * stride_o_h + offs_d,
             out.to(out_ptr.dtype.element_ty), mask=offs_d < HEAD_DIM)


# ---------------------------------------------------------------------------------------------
# prefill: n new tokens per sequence (n >= 1) over its paged prefix + themselves, causal
# ---------------------------------------------------------------------------------------------
@triton.jit
def _paged_prefill_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, seq_lens_ptr, cu_seqlens_q_ptr, out_ptr,
    stride_q_t, stride_q_h, stride_kc_b, stride_kc_s, stride_kc_h,
    stride_vc_b, stride_vc_s, stride_vc_h, stride_bt, stride_o_t, stride_o_h,
    qk_scale, v_scale, window,
    GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr, PAGE: tl.constexpr, HAS_WINDOW: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    seq = tl.program_id(0)
    kvh = tl.program_id(1)
    m0 = tl.program_id(2) * BLOCK_M
    q_start = tl.load(cu_seqlens_q_ptr + seq)
    n_new = tl.load(cu_seqlens_q_ptr + seq + 1) - q_start
    if m0 >= n_new * GROUP:
        return
    seq_len = tl.load(seq_lens_ptr + seq)

    offs_m = m0 + tl.arange(0, BLOCK_M)  # stacked rows: token r = m // G, head g = m % G
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    r = offs_m // GROUP
    heads = kvh * GROUP + offs_m % GROUP
    row_mask = offs_m < n_new * GROUP
    d_mask = offs_d < HEAD_DIM
    pos = seq_len - n_new + r  # (BLOCK_M,) absolute position of each row's token
    tok = (q_start + r).to(tl.int64)
    q_ptrs = q_ptr + tok[:, None] * stride_q_t + heads[:, None] * stride_q_h + offs_d[None, :]
    q = tl.load(q_ptrs, mask=row_mask[:, None] & d_mask[None, :], other=0.0)

    # Key range of this tile: rows' positions span [pos_lo, pos_hi].
    pos_lo = seq_len - n_new + m0 // GROUP
    pos_hi = tl.minimum(seq_len - 1, seq_len - n_new + (m0 + BLOCK_M - 1) // GROUP)
    hi = pos_hi + 1
    if HAS_WINDOW:
        lo = tl.maximum(pos_lo - window + 1, 0) // BLOCK_N * BLOCK_N
        full_hi = lo  # windowed tiles all take the masked path
    else:
        lo = 0
        full_hi = (pos_lo + 1) // BLOCK_N * BLOCK_N  # keys every row of the tile sees

    k_base = k_cache_ptr + kvh * stride_kc_h
    v_base = v_cache_ptr + kvh * stride_vc_h
    bt_row = block_tables_ptr + seq.to(tl.int64) * stride_bt
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    # -- keys below every row's position: no mask --
    for start in range(lo, full_hi, BLOCK_N):
        cols = start + offs_n
        k = _kv_tile(k_base, bt_row, cols, offs_d, cols >= 0, stride_kc_b, stride_kc_s,
                     PAGE, HEAD_DIM, BLOCK_D, False)
        s = tl.dot(q, tl.trans(k.to(q.dtype)), input_precision=DOT_PRECISION) * qk_scale
        v = _kv_tile(v_base, bt_row, cols, offs_d, cols >= 0, stride_vc_b, stride_vc_s,
                     PAGE, HEAD_DIM, BLOCK_D, False)
        acc, l_i, m_i = _online_softmax_step(acc, l_i, m_i, s, v.to(q.dtype), False)
    # -- diagonal (and window) tiles: per-element causal mask --
    for start in range(full_hi, hi, BLOCK_N):
        cols = start + offs_n
        valid = cols < hi
        k = _kv_tile(k_base, bt_row, cols, offs_d, valid, stride_kc_b, stride_kc_s,
                     PAGE, HEAD_DIM, BLOCK_D, True)
        s = tl.dot(q, tl.trans(k.to(q.dtype)), input_precision=DOT_PRECISION) * qk_scale
        ok = cols[None, :] <= pos[:, None]
        if HAS_WINDOW:
            ok = ok & (cols[None, :] > pos[:, None] - window)
        s = tl.where(ok, s, float("-inf"))
        v = _kv_tile(v_base, bt_row, cols, offs_d, valid, stride_vc_b, stride_vc_s,
                     PAGE, HEAD_DIM, BLOCK_D, True)
        acc, l_i, m_i = _online_softmax_step(acc, l_i, m_i, s, v.to(q.dtype), True)

    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    o = acc * (v_scale / l_safe)[:, None]
    o_ptrs = out_ptr + tok[:, None] * stride_o_t + heads[:, None] * stride_o_h + offs_d[None, :]
    tl.store(o_ptrs, o.to(out_ptr.dtype.element_ty), mask=row_mask[:, None] & d_mask[None, :])


# ---------------------------------------------------------------------------------------------
# launchers (inputs are validated by tritium.ops.paged_attention)
# ---------------------------------------------------------------------------------------------
def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.lru_cache(maxsize=8)
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of ``device`` (4 on CPU, so interpreter runs still split)."""
    if device.type != "cuda":
        return 4
    return _num_sms(device.index if device.index is not None else torch.cuda.current_device())


MIN_SPLIT_TOKENS = 256  # keys per decode split at least (unless the caller forces a count)


def choose_num_splits(num_seqs: int, num_kv_heads: int, max_seqlen_k: int, sms: int,
                      block_n: int, min_split_tokens: int = MIN_SPLIT_TOKENS) -> int:
    """KV splits per (sequence, KV head): enough programs for ~2 per SM, chunks >= 256 keys.

    ``max_seqlen_k`` may be an upper bound (CUDA graphs pass max_model_len): the kernel then
    gives each sequence only the splits its own length fills, the others exit empty.

    With B*Hk programs already >= 2*SMs (e.g. batch 64 x 8 KV heads = 512 on 132 SMs) one
    split is best: no partial outputs, no reduce launch. Small batches with long contexts
    split the keys so every SM streams its own slice.
    """
    programs = num_seqs * num_kv_heads
    want = triton.cdiv(2 * sms, max(programs, 1))
    most = max(1, triton.cdiv(max_seqlen_k, max(min_split_tokens, block_n)))
    return max(1, min(want, most, 64))


def _dot_precision(dtype: torch.dtype) -> str:
    # fp32 models must not silently drop to tf32 (10-bit mantissa) on the GPU
    return "ieee" if dtype == torch.float32 else "tf32"


def paged_decode(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
    seq_lens: torch.Tensor, max_seqlen_k: int, softmax_scale: float, k_scale: float = 1.0,
    v_scale: float = 1.0, window: int | None = None, num_splits: int | None = None,
    block_n: int | None = None, num_warps: int | None = None, num_stages: int | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """q (N, Hq, D), one token per sequence -> out (N, Hq, D) in q.dtype.

    Sequence i attends to its seq_lens[i] cached keys (its new token's K/V already written).
    ``max_seqlen_k`` is >= every seq_lens[i] (an upper bound is fine); it only bounds the split
    count. ``num_splits`` None picks it from batch x heads vs SM count (``choose_num_splits``)
    with chunks of >= 256 keys; a forced count splits every sequence into that many chunks of
    whole tiles. Nothing here reads the device lengths on the host (CUDA-graph safe).
    ``out`` (N, Hq, D), e.g. a row slice of a mixed batch's output, is written in place.
    """
    N, Hq, D = q.shape
    _, page, Hk, _ = k_cache.shape
    group = Hq // Hk
    interp = _interpreting()
    block_n = block_n or (16 if interp else 64)
    if num_splits is None:
        num_splits = choose_num_splits(N, Hk, max_seqlen_k, num_sms(q.device), block_n)
        min_split_len = triton.cdiv(MIN_SPLIT_TOKENS, block_n) * block_n
    else:
        min_split_len = block_n
    # more splits than max_seqlen_k fills would only launch empty programs
    num_splits = max(1, min(num_splits, triton.cdiv(max(max_seqlen_k, 1), min_split_len)))
    if out is None:
        out = torch.empty(q.shape, device=q.device, dtype=q.dtype)
    if num_splits > 1:
        mid_out = torch.empty((N, Hq, num_splits, D), device=q.device, dtype=torch.float32)
        mid_lse = torch.empty((N, Hq, num_splits), device=q.device, dtype=torch.float32)
    else:
        mid_out = mid_lse = out  # unused
    block_d = max(16, triton.next_power_of_2(D))
    _paged_decode_kernel[(N, Hk, num_splits)](
        q, k_cache, v_cache, block_tables, seq_lens, out, mid_out, mid_lse,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), block_tables.stride(0),
        out.stride(0), out.stride(1),
        softmax_scale * k_scale * LOG2E, v_scale, window or 0, min_split_len, num_splits,
        GROUP=group, BLOCK_G=max(16, triton.next_power_of_2(group)), BLOCK_N=block_n,
        HEAD_DIM=D, BLOCK_D=block_d, PAGE=page, SPLIT=num_splits > 1,
        HAS_WINDOW=window is not None, DOT_PRECISION=_dot_precision(q.dtype),
        # 64-key tiles, 4 warps, 2 stages: 96% of copy bandwidth at batch 64 x 4k on an H100
        # (3 stages: 82%, 64 KB vs 96 KB of shared memory per program; see docs/perf-notes.md)
        num_warps=num_warps or 4, num_stages=num_stages or (1 if interp else 2),
    )
    if num_splits > 1:
        _paged_decode_reduce_kernel[(N, Hq)](
            mid_out, mid_lse, out, out.stride(0), out.stride(1), Hq, num_splits,
            BLOCK_S=triton.next_power_of_2(num_splits), HEAD_DIM=D,
            BLOCK_D=block_d, num_warps=4 if block_d >= 128 else 2,
        )
    return out


def paged_prefill(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
    seq_lens: torch.Tensor, cu_seqlens_q: torch.Tensor, max_seqlen_q: int, softmax_scale: float,
    k_scale: float = 1.0, v_scale: float = 1.0, window: int | None = None,
    block_m: int | None = None, block_n: int | None = None, num_warps: int | None = None,
    num_stages: int | None = None, out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Packed new queries q (T, Hq, D) of N sequences -> out (T, Hq, D), causal bottom-right.

    Sequence i owns rows ``cu_seqlens_q[i]:cu_seqlens_q[i+1]`` of q and out: absolute row
    offsets, so a mixed batch passes the row slices (block_tables[d:], seq_lens[d:],
    cu_seqlens_q[d:]) of its prefill sequences with the whole q and ``out``; rows of no
    sequence here are left untouched.
    """
    T, Hq, D = q.shape
    N = seq_lens.shape[0]
    _, page, Hk, _ = k_cache.shape
    group = Hq // Hk
    interp = _interpreting()
    # the interpreter's cost is per tile op, so bigger tiles run faster there
    block_m = block_m or (32 if interp else 64)
    block_n = block_n or (32 if interp else 64)
    if out is None:
        out = torch.empty(q.shape, device=q.device, dtype=q.dtype)
    grid = (N, Hk, triton.cdiv(max(max_seqlen_q, 1) * group, block_m))
    _paged_prefill_kernel[grid](
        q, k_cache, v_cache, block_tables, seq_lens, cu_seqlens_q, out,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), block_tables.stride(0),
        out.stride(0), out.stride(1),
        softmax_scale * k_scale * LOG2E, v_scale, window or 0,
        GROUP=group, BLOCK_M=block_m, BLOCK_N=block_n, HEAD_DIM=D,
        BLOCK_D=max(16, triton.next_power_of_2(D)), PAGE=page, HAS_WINDOW=window is not None,
        DOT_PRECISION=_dot_precision(q.dtype),
        num_warps=num_warps or 4, num_stages=num_stages or (1 if interp else 2),
    )
    return out
