"""FlashAttention forward for Hopper, warp-specialised, in Gluon (Triton's lower-level dialect).

Classic Triton runs every warp of a program through the same instruction stream, so on an H100
the exp2 work of the softmax cannot run while the tensor cores compute the next matmul (see
docs/perf-notes.md, "Overlap and TMA probes"). Gluon (``triton.experimental.gluon``) exposes the
pieces FlashAttention-3 is built from, and this kernel uses them:

- a work item = 128 query rows of one (sequence, head), split between two *consumer*
  warpgroups of 64 rows each, plus a one-warp *loader* partition (``gl.warp_specialize``);
- the loader streams Q, then K and V tiles into a ring of ``STAGES`` shared-memory buffers with
  TMA; ``k_ready`` / ``v_ready`` mbarriers say a buffer is full, ``kv_empty`` (two arrivals,
  one per consumer) that both consumers are done with it, ``q_empty`` the same for Q;
- each consumer runs the online softmax in base 2 on its 64 rows with asynchronous wgmma
  (S = Q Kᵀ from shared memory, O += P V with P in registers);
- ping-pong: the consumers take turns on the tensor cores. A consumer's "GEMM block" issues
  S(j) = Q K(j)ᵀ and O += P(j-1) V(j-1) once it has the turn (an mbarrier the other consumer
  arrives on), so one consumer's softmax runs under the other's matmuls (FlashAttention-3's
  inter-warpgroup overlap; measured +5-7%);
- ``INTRA`` (default): the turn is handed over as soon as both are issued, and the softmax of
  S(j) runs while this consumer's own P V is still in flight (the intra-warpgroup overlap;
  +0-5%);
- non-causal launches are persistent (one program per SM walks the work items, so the next
  item's loads overlap this one's epilogue); causal ones give each program a pair of a long and
  a short query tile of one head (equal work per program; +0-7%).

Scope (everything else goes to the Triton kernel in kernels/flash_attn.py): batched
(B, S, H, D) inputs, fp16/bf16, head dim 128 (at 64 it measured slower than the Triton
kernel), GQA, causal aligned bottom-right with Sq <= Sk, Sq a multiple of 128 and Sk of
``BLOCK_N`` (tiles never cross a sequence boundary), rows laid out for a 2-D TMA view. Needs
an sm_90 GPU and a Triton with Gluon's Hopper API (3.6 and 3.9 are known to work); there is no
interpreter path, so the tests build it for sm_90 on the CPU and the numbers are checked on a
GPU (benchmarks/flash_attn_quick.py --check-only, benchmarks/attn_fwd_ws_probe.py).
"""

from __future__ import annotations

import functools

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_wait,
)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from tritium.kernels.paged_attention import num_sms

LOG2E = 1.4426950408889634
# The TMA load was renamed between Triton 3.6 (async_copy_global_to_shared) and 3.9 (async_load,
# the old name now raises); same arguments (descriptor, coordinates, mbarrier, destination).
_tma_load = getattr(tma, "async_load", None) or tma.async_copy_global_to_shared


@gluon.jit
def _num_items(n_items, PAIRS: gl.constexpr):
    """How many work items this program runs (see ``_item``)."""
    P = gl.num_programs(0)
    if PAIRS:
        return 2 * gl.cdiv(n_items // 2 - gl.program_id(0), P)
    return gl.cdiv(n_items - gl.program_id(0), P)


@gluon.jit
def _item(u, PAIRS: gl.constexpr):
    """This program's ``u``-th work item, P programs: p, p + P, p + 2P, ... (one each when P =
    items, else persistent); with PAIRS, pairs of items (2p, 2p + 1), (2p + 2P, 2p + 2P + 1),
    ... (the item count is even)."""
    p = gl.program_id(0)
    P = gl.num_programs(0)
    if PAIRS:
        return 2 * (p + (u // 2) * P) + u % 2
    return p + u * P


@gluon.jit
def _tile(t, n_m, n_bh, seqlen_q, seqlen_k, BLOCK_N: gl.constexpr, CAUSAL: gl.constexpr,
          PAIRS: gl.constexpr):
    """Work item ``t`` -> (first query row m0, (batch * heads) index, key tiles, unmasked
    key tiles). The query tiles of one head are consecutive, so programs running together
    share that head's K/V in L2 (measured: ordering by query tile across heads instead cost
    6-23% causal). Causal walks each head's tiles longest first; with PAIRS, items 2i and
    2i + 1 of a head are its tiles n_m - 1 - i and i, so that every program (two items) has
    the same causal work."""
    bh = t // n_m
    pid_m = t % n_m
    if PAIRS:
        pid_m = gl.where(pid_m % 2 == 0, n_m - 1 - pid_m // 2, pid_m // 2)
    elif CAUSAL:
        pid_m = n_m - 1 - pid_m
    m0 = pid_m * 128
    n_tiles = seqlen_k // BLOCK_N
    n_full = n_tiles
    if CAUSAL:  # aligned bottom-right: query row r sees key c iff c <= r + Sk - Sq
        n_tiles = gl.minimum(gl.cdiv(m0 + 128 + seqlen_k - seqlen_q, BLOCK_N), n_tiles)
        n_full = (m0 + seqlen_k - seqlen_q) // BLOCK_N
    return m0, bh, n_tiles, n_full


@gluon.jit
def _load_kv(k_desc, v_desc, k_smem, v_smem, k_ready, v_ready, kv_empty, it, row, col,
             STAGES: gl.constexpr):
    """K and V rows [row, row + tile) into ring slot it % STAGES, once both consumers have
    released it (a slot's first use waits on parity 1, which a fresh mbarrier reports done)."""
    s = it % STAGES
    mbarrier.wait(kv_empty.index(s), ((it // STAGES) & 1) ^ 1)
    mbarrier.expect(k_ready.index(s), k_desc.block_type.nbytes)
    _tma_load(k_desc, [row, col], k_ready.index(s), k_smem.index(s))
    mbarrier.expect(v_ready.index(s), v_desc.block_type.nbytes)
    _tma_load(v_desc, [row, col], v_ready.index(s), v_smem.index(s))


@gluon.jit
def _loader(q_desc, k_desc, v_desc, q_smem, k_smem, v_smem, q_bar, q_empty, k_ready, v_ready,
            kv_empty, seqlen_q, seqlen_k, num_heads, group, n_m, n_bh,
            BLOCK_N: gl.constexpr, STAGES: gl.constexpr, CAUSAL: gl.constexpr,
            PAIRS: gl.constexpr):
    """Loader partition: per work item, both Q tiles, then its K/V tiles through the ring.
    ``it`` counts K/V tiles over all of this program's items: slot it % STAGES, and its
    parity (it // STAGES) & 1."""
    D: gl.constexpr = q_smem.shape[2]
    it = 0
    i = 0
    for u in range(_num_items(n_m * n_bh, PAIRS)):
        t = _item(u, PAIRS)
        m0, bh, n_tiles, n_full = _tile(t, n_m, n_bh, seqlen_q, seqlen_k, BLOCK_N, CAUSAL,
                                        PAIRS)
        b = bh // num_heads
        h = bh % num_heads
        mbarrier.wait(q_empty, (i & 1) ^ 1)  # both consumers are done with the last Q
        mbarrier.expect(q_bar, 2 * q_desc.block_type.nbytes)
        _tma_load(q_desc, [b * seqlen_q + m0, h * D], q_bar, q_smem.index(0))
        _tma_load(q_desc, [b * seqlen_q + m0 + 64, h * D], q_bar, q_smem.index(1))
        kv_row = b * seqlen_k
        kv_col = (h // group) * D
        for j in range(n_tiles):
            _load_kv(k_desc, v_desc, k_smem, v_smem, k_ready, v_ready, kv_empty, it,
                     kv_row + j * BLOCK_N, kv_col, STAGES)
            it += 1
        i += 1


@gluon.jit
def _softmax_scores(sc, m_i, l_i, qk_scale, j, n_full, row0, shift, s_layout: gl.constexpr,
                    CAUSAL: gl.constexpr):
    """Online-softmax step for key tile ``j``: returns (p, m, l, alpha), O still to be scaled by
    alpha. Causal: tiles from ``n_full`` on cross the diagonal; query row r sees key c iff
    c <= r + shift."""
    if CAUSAL:
        if j >= n_full:
            rows = row0 + gl.arange(0, 64, layout=gl.SliceLayout(1, s_layout))
            cols = j * sc.shape[1] + gl.arange(0, sc.shape[1], layout=gl.SliceLayout(0, s_layout))
            ok = gl.expand_dims(cols, 0) <= gl.expand_dims(rows, 1) + shift
            sc = gl.where(ok, sc, float("-inf"))
    m_new = gl.maximum(m_i, gl.max(sc, axis=1) * qk_scale)
    p = gl.exp2(sc * qk_scale - gl.expand_dims(m_new, 1))
    alpha = gl.exp2(m_i - m_new)
    l_i = l_i * alpha + gl.sum(p, axis=1)
    return p, m_new, l_i, alpha


@gluon.jit
def _rescale(acc, alpha, o_layout: gl.constexpr):
    return acc * gl.expand_dims(gl.convert_layout(alpha, gl.SliceLayout(1, o_layout)), 1)


@gluon.jit
def _store_out(acc, l_i, m_i, bh, row0, o_ptr, lse_ptr, seqlen_q, num_heads,
               o_layout: gl.constexpr, row_layout: gl.constexpr):
    """A consumer's 64 finished rows: O / l to out, and the natural-log lse."""
    D: gl.constexpr = acc.shape[1]
    l_o = gl.convert_layout(l_i, gl.SliceLayout(1, o_layout))
    out = (acc / gl.expand_dims(l_o, 1)).to(o_ptr.dtype.element_ty)
    b = bh // num_heads
    h = bh % num_heads
    rows = gl.arange(0, 64, layout=gl.SliceLayout(1, o_layout))
    cols = gl.arange(0, D, layout=gl.SliceLayout(0, o_layout))
    o_rows = (b * seqlen_q + row0 + rows).to(gl.int64) * (num_heads * D)
    gl.store(o_ptr + gl.expand_dims(o_rows, 1) + h * D + gl.expand_dims(cols, 0), out)
    lse_rows = gl.arange(0, 64, layout=row_layout)
    gl.store(lse_ptr + bh.to(gl.int64) * seqlen_q + row0 + lse_rows,
             (m_i + gl.log2(l_i)) * 0.6931471805599453)


@gluon.jit
def _consumer(WG: gl.constexpr, q_smem, k_smem, v_smem, q_bar, q_empty, k_ready, v_ready,
              kv_empty, turn, o_ptr, lse_ptr, seqlen_q, seqlen_k, num_heads, n_m, n_bh,
              qk_scale, BLOCK_N: gl.constexpr, STAGES: gl.constexpr, CAUSAL: gl.constexpr,
              INTRA: gl.constexpr, PAIRS: gl.constexpr):
    """Consumer warpgroup ``WG`` (0 or 1): rows [m0 + 64 WG, + 64) of each work item.

    GEMM block k (k = 0 .. n_tiles) of an item runs O += P(k-1) V(k-1) (k >= 1) and
    S(k) = Q K(k)ᵀ (k < n_tiles). Blocks are numbered over all of this program's items
    (``blk``); a consumer waits on turn[WG] at parity (blk + 1 + WG) & 1 before its block (so
    WG 0 goes first) and arrives on turn[1 - WG] once its matmuls are issued (INTRA) or done:
    the two consumers' blocks alternate, and each one's softmax runs under the other's
    matmuls."""
    dtype: gl.constexpr = q_smem.dtype
    D: gl.constexpr = q_smem.shape[2]
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, BLOCK_N, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, D, 16])
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    row_layout: gl.constexpr = gl.SliceLayout(1, s_layout)
    q = q_smem.index(WG)
    zero_s = gl.zeros([64, BLOCK_N], gl.float32, s_layout)
    shift = seqlen_k - seqlen_q
    it = 0
    blk = 0
    i = 0
    for u in range(_num_items(n_m * n_bh, PAIRS)):
        t = _item(u, PAIRS)
        m0, bh, n_tiles, n_full = _tile(t, n_m, n_bh, seqlen_q, seqlen_k, BLOCK_N, CAUSAL,
                                        PAIRS)
        row0 = m0 + WG * 64  # this warpgroup's first query position in the sequence
        m_i = gl.full([64], float("-inf"), gl.float32, row_layout)
        l_i = gl.zeros([64], gl.float32, row_layout)
        mbarrier.wait(q_bar, i & 1)

        mbarrier.wait(turn.index(WG), (blk + 1 + WG) & 1)
        mbarrier.wait(k_ready.index(it % STAGES), (it // STAGES) & 1)
        sc = warpgroup_mma(q, k_smem.index(it % STAGES).permute((1, 0)), zero_s, use_acc=False,
                           is_async=True)
        sc = warpgroup_mma_wait(num_outstanding=0, deps=(sc,))
        mbarrier.arrive(turn.index(1 - WG), count=1)
        p, m_i, l_i, alpha = _softmax_scores(sc, m_i, l_i, qk_scale, 0, n_full, row0, shift,
                                             s_layout, CAUSAL)
        acc = gl.zeros([64, D], gl.float32, o_layout)
        for j in range(1, n_tiles):
            prev = (it + j - 1) % STAGES
            cur = (it + j) % STAGES
            mbarrier.wait(turn.index(WG), (blk + j + 1 + WG) & 1)
            if INTRA:
                # S(j) first, then O += P(j-1) V(j-1); hand the turn over once both are issued
                # and run the softmax of S(j) while this warpgroup's PV is still in flight.
                mbarrier.wait(k_ready.index(cur), ((it + j) // STAGES) & 1)
                sc = warpgroup_mma(q, k_smem.index(cur).permute((1, 0)), zero_s, use_acc=False,
                                   is_async=True)
                mbarrier.wait(v_ready.index(prev), ((it + j - 1) // STAGES) & 1)
                acc = warpgroup_mma(gl.convert_layout(p.to(dtype), p_layout),
                                    v_smem.index(prev), acc, is_async=True)
                mbarrier.arrive(turn.index(1 - WG), count=1)
                sc = warpgroup_mma_wait(num_outstanding=1, deps=(sc,))
                p, m_i, l_i, alpha = _softmax_scores(sc, m_i, l_i, qk_scale, j, n_full, row0,
                                                     shift, s_layout, CAUSAL)
                acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
                mbarrier.arrive(kv_empty.index(prev), count=1)
            else:
                mbarrier.wait(v_ready.index(prev), ((it + j - 1) // STAGES) & 1)
                acc = warpgroup_mma(gl.convert_layout(p.to(dtype), p_layout),
                                    v_smem.index(prev), acc, is_async=True)
                mbarrier.wait(k_ready.index(cur), ((it + j) // STAGES) & 1)
                sc = warpgroup_mma(q, k_smem.index(cur).permute((1, 0)), zero_s, use_acc=False,
                                   is_async=True)
                sc, acc = warpgroup_mma_wait(num_outstanding=0, deps=(sc, acc))
                mbarrier.arrive(kv_empty.index(prev), count=1)
                mbarrier.arrive(turn.index(1 - WG), count=1)
                p, m_i, l_i, alpha = _softmax_scores(sc, m_i, l_i, qk_scale, j, n_full, row0,
                                                     shift, s_layout, CAUSAL)
            acc = _rescale(acc, alpha, o_layout)
        # Every S of this item is done: the loader may bring the next item's Q while the last
        # P V and the epilogue run (short items, 1k, pay that load otherwise).
        mbarrier.arrive(q_empty, count=1)
        last = (it + n_tiles - 1) % STAGES
        mbarrier.wait(turn.index(WG), (blk + n_tiles + 1 + WG) & 1)
        mbarrier.wait(v_ready.index(last), ((it + n_tiles - 1) // STAGES) & 1)
        acc = warpgroup_mma(gl.convert_layout(p.to(dtype), p_layout), v_smem.index(last), acc,
                            is_async=True)
        acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
        mbarrier.arrive(kv_empty.index(last), count=1)
        mbarrier.arrive(turn.index(1 - WG), count=1)
        # Epilogue, under the other consumer's matmuls. (Storing it later, under the next
        # item's first S, measured 1-7% slower: docs/perf-notes.md.)
        _store_out(acc, l_i, m_i, bh, row0, o_ptr, lse_ptr, seqlen_q, num_heads, o_layout,
                   row_layout)
        it += n_tiles
        blk += n_tiles + 1
        i += 1


@gluon.jit
def _flash_attn_fwd_ws_kernel(q_desc, k_desc, v_desc, o_ptr, lse_ptr, seqlen_q, seqlen_k,
                              num_heads, group, n_bh, qk_scale,
                              BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr,
                              STAGES: gl.constexpr, CAUSAL: gl.constexpr,
                              INTRA: gl.constexpr, PAIRS: gl.constexpr):
    """Program p handles work items p, p + P, p + 2P, ... (P programs; items = query tiles of
    128 rows x (batch * heads)): one item per program, or persistent with P = #SMs."""
    n_m = seqlen_q // 128
    q_smem = gl.allocate_shared_memory(q_desc.dtype, [2, 64, HEAD_DIM], q_desc.layout)
    k_smem = gl.allocate_shared_memory(k_desc.dtype, [STAGES, BLOCK_N, HEAD_DIM], k_desc.layout)
    v_smem = gl.allocate_shared_memory(v_desc.dtype, [STAGES, BLOCK_N, HEAD_DIM], v_desc.layout)
    q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    q_empty = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    k_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    kv_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    turn = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    mbarrier.init(q_bar, count=1)
    mbarrier.init(q_empty, count=2)
    for i in gl.static_range(STAGES):
        mbarrier.init(k_ready.index(i), count=1)
        mbarrier.init(v_ready.index(i), count=1)
        mbarrier.init(kv_empty.index(i), count=2)
    mbarrier.init(turn.index(0), count=1)
    mbarrier.init(turn.index(1), count=1)
    gl.warp_specialize(
        [(_consumer, (0, q_smem, k_smem, v_smem, q_bar, q_empty, k_ready, v_ready, kv_empty,
                      turn, o_ptr, lse_ptr, seqlen_q, seqlen_k, num_heads, n_m, n_bh, qk_scale,
                      BLOCK_N, STAGES, CAUSAL, INTRA, PAIRS)),
         (_consumer, (1, q_smem, k_smem, v_smem, q_bar, q_empty, k_ready, v_ready, kv_empty,
                      turn, o_ptr, lse_ptr, seqlen_q, seqlen_k, num_heads, n_m, n_bh, qk_scale,
                      BLOCK_N, STAGES, CAUSAL, INTRA, PAIRS)),
         (_loader, (q_desc, k_desc, v_desc, q_smem, k_smem, v_smem, q_bar, q_empty, k_ready,
                    v_ready, kv_empty, seqlen_q, seqlen_k, num_heads, group, n_m, n_bh,
                    BLOCK_N, STAGES, CAUSAL, PAIRS))],
        worker_num_warps=[4, 1],
        worker_num_regs=[240, 24],
    )


def _rows_view_ok(t: torch.Tensor) -> bool:
    """(B, S, H, D) whose rows (b, s) are evenly spaced with (H, D) packed: a 2-D TMA view."""
    B, S, H, D = t.shape
    return (t.stride(3) == 1 and t.stride(2) == D and (B == 1 or t.stride(0) == S * t.stride(1))
            and (t.stride(1) * t.element_size()) % 16 == 0 and t.data_ptr() % 16 == 0)


def dense_sm90_ok(q: torch.Tensor, k: torch.Tensor, *others: torch.Tensor, causal: bool,
                  q_tile: int, k_tile: int) -> bool:
    """What every Gluon attention kernel here needs: batched (B, S, H, D) fp16/bf16 tensors on
    an sm_90 device, head dim 128, Sq a multiple of ``q_tile`` and Sk of ``k_tile`` (both > 0),
    causal only with Sq <= Sk, and rows laid out for a 2-D TMA view (``_rows_view_ok``)."""
    if q.device.type != "cuda" or q.dim() != 4 or q.dtype not in (torch.float16, torch.bfloat16):
        return False
    if torch.cuda.get_device_capability(q.device) != (9, 0):
        return False
    Sq, Sk, D = q.shape[1], k.shape[1], q.shape[3]
    if D != 128 or Sq % q_tile or Sk % k_tile or Sq == 0 or Sk == 0 or (causal and Sq > Sk):
        return False
    return all(_rows_view_ok(t) for t in (q, k, *others))


def supported(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool,
              block_n: int = 128) -> bool:
    """Whether ``flash_attn_fwd_ws`` takes these inputs (``dense_sm90_ok``, 128-row tiles)."""
    return dense_sm90_ok(q, k, v, causal=causal, q_tile=128, k_tile=block_n)


@functools.cache
def _smem_layout(rows: int, D: int, gl_dtype):
    # ~11 us to build (measured on the dev CPU), on every call otherwise: 3 per forward.
    return gl.NVMMASharedLayout.get_default_for([rows, D], gl_dtype)


def _desc(t: torch.Tensor, rows: int, gl_dtype) -> TensorDescriptor:
    B, S, H, D = t.shape
    return TensorDescriptor(t, [B * S, H * D], [t.stride(1), 1], [rows, D],
                            _smem_layout(rows, D, gl_dtype))


def flash_attn_fwd_ws(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                      softmax_scale: float, causal: bool = False, block_n: int = 128,
                      stages: int = 3, persistent: bool | None = None, intra: bool = True,
                      pairs: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """q (B, Sq, Hq, D), k/v (B, Sk, Hk, D) -> out (B, Sq, Hq, D), lse (B, Hq, Sq) fp32.

    Inputs must pass ``supported``; the caller has validated shapes, dtypes and heads.
    Work items are (128-row query tile, batch x head). ``pairs`` (default: causal) gives each
    program a long and a short causal item of one head (query tiles n - 1 - i and i), so that
    programs have equal work and the second item's loads overlap the first's epilogue; it
    needs an even item count and is dropped otherwise. ``persistent`` (default: unless causal
    without pairs) launches one program per SM, which walks the items (or pairs) with a fixed
    stride; otherwise one program per item (or pair). Measured on the H100
    (docs/perf-notes.md): persistent +1-6% non-causal, +1-5% causal with pairs, but -30%
    causal at 16k without pairs (a static stride spreads the long items unevenly).
    ``intra``: each consumer runs its softmax while its own P V matmul is in flight
    (FlashAttention-3's intra-warpgroup overlap, +1-4%).
    """
    B, Sq, Hq, D = q.shape
    Sk, Hk = k.shape[1], k.shape[2]
    gl_dtype = gl.float16 if q.dtype == torch.float16 else gl.bfloat16
    out = torch.empty((B, Sq, Hq, D), dtype=q.dtype, device=q.device)
    lse = torch.empty((B, Hq, Sq), dtype=torch.float32, device=q.device)
    items = (Sq // 128) * B * Hq
    pairs = (causal if pairs is None else pairs) and items % 2 == 0
    if persistent is None:
        persistent = pairs or not causal
    programs = items // 2 if pairs else items
    if persistent:
        programs = min(programs, num_sms(q.device))
    _flash_attn_fwd_ws_kernel[(programs,)](
        _desc(q, 64, gl_dtype), _desc(k, block_n, gl_dtype), _desc(v, block_n, gl_dtype),
        out, lse, Sq, Sk, Hq, Hq // Hk, B * Hq, softmax_scale * LOG2E,
        BLOCK_N=block_n, HEAD_DIM=D, STAGES=stages, CAUSAL=causal, INTRA=intra,
        PAIRS=pairs, num_warps=4,
    )
    return out, lse


def compile_for_sm90(dtype: str = "bf16", causal: bool = False, stages: int = 3,
                     intra: bool = True, pairs: bool = False):
    """Build the kernel for an H100 without one (dtype "bf16" or "fp16", head dim 128): the
    ``triton.compile`` result, whose ``asm["ptx"]`` / ``asm["cubin"]`` can be read here. Used by
    the tests and for looking at the code the compiler makes; needs TRITON_INTERPRET unset."""
    gl_dtype = {"bf16": gl.bfloat16, "fp16": gl.float16}[dtype]
    q_layout = gl.NVMMASharedLayout.get_default_for([64, 128], gl_dtype)
    kv_layout = gl.NVMMASharedLayout.get_default_for([128, 128], gl_dtype)
    return build_sm90(_flash_attn_fwd_ws_kernel, {
        "q_desc": f"tensordesc<{dtype}[64, 128],{q_layout!r}>",
        "k_desc": f"tensordesc<{dtype}[128, 128],{kv_layout!r}>",
        "v_desc": f"tensordesc<{dtype}[128, 128],{kv_layout!r}>",
        "o_ptr": f"*{dtype}", "lse_ptr": "*fp32", "seqlen_q": "i32", "seqlen_k": "i32",
        "num_heads": "i32", "group": "i32", "n_bh": "i32", "qk_scale": "fp32",
        "BLOCK_N": 128, "HEAD_DIM": 128, "STAGES": stages, "CAUSAL": causal, "INTRA": intra,
        "PAIRS": pairs})


def build_sm90(fn, types: dict):
    """``triton.compile`` of Gluon kernel ``fn`` for sm_90 without a GPU. ``types`` maps each
    parameter name to its type string ("*bf16", "i32", "tensordesc<...>") or, for a constexpr,
    its value; pointers are declared 16-byte aligned, as at launch."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource

    names = fn.arg_names  # the kernel's parameter order
    sig = {n: types[n] if isinstance(types[n], str) else "constexpr" for n in names}
    constexprs = {(i,): types[n] for i, n in enumerate(names) if not isinstance(types[n], str)}
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names) if n.endswith("_ptr")}
    src = GluonASTSource(fn, sig, constexprs, attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})


__all__ = ["compile_for_sm90", "flash_attn_fwd_ws", "supported"]
