"""dK and dV for Hopper, warp-specialised, in Gluon: the backward's heavier half.

The structure mirrors kernels/flash_attn_hopper.py (read that first): a work item is one key
tile of 128 keys of one (sequence, KV head); two *consumer* warpgroups own 64 keys each and
keep their dK, dV accumulators in registers; a one-warp *loader* brings the item's K and V
once, then (Q, dO) tiles of 64 query rows of every query head in the GQA group through a ring
of ``STAGES`` buffers (``qdo_ready`` / ``qdo_empty`` mbarriers, two arrivals per slot). Per
(query tile, key tile), each consumer runs four asynchronous wgmma:

    Sᵀ = K Qᵀ         Pᵀ = exp2(Sᵀ · scale·log2e − lse2)     (lse2: the forward's lse in base 2)
    dV += Pᵀ dO       dPᵀ = V dOᵀ      dSᵀ = Pᵀ ∘ (dPᵀ − Δ)   (Δ = rowsum(dO ∘ O) − dlse)
    dK += dSᵀ Q       (dK is scaled by the softmax scale once, at the end)

Pᵀ and dSᵀ stay in registers as the A operand. dQ is left to the Triton dQ kernel
(kernels/flash_attn_bwd.py), so the result is deterministic. Scope as the forward's Gluon
kernel: batched dense inputs, fp16/bf16, head dim 128, GQA, causal aligned bottom-right with
Sq <= Sk, Sq a multiple of 64 and Sk of 128, rows laid out for a 2-D TMA view; sm_90 only, no
interpreter path (tests build it for sm_90 on the CPU; numbers are checked on a GPU).
"""

from __future__ import annotations

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    mbarrier,
    warpgroup_mma,
    warpgroup_mma_wait,
)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from tritium.kernels.flash_attn_hopper import (
    LOG2E,
    _desc,
    _load_kv,
    _tile,
    _tma_load,
    build_sm90,
    dense_sm90_ok,
)


@gluon.jit
def _bwd_loader(q_desc, k_desc, v_desc, do_desc, lse_desc, dl_desc, q_smem, do_smem, k_smem,
                v_smem, lse_smem, dl_smem, kv_bar, qdo_ready, qdo_empty, seqlen_q, seqlen_k,
                num_kv_heads, group, first_q_tile, n_q_tiles, BLOCK_M: gl.constexpr,
                STAGES: gl.constexpr):
    """This program's K, V (two 64-key halves) once, then Q, dO tile j of every query head,
    with that tile's lse2 and Δ (read by the consumers from shared memory just before use:
    held in registers across the iteration they cost 32 of them per thread, and spills)."""
    D: gl.constexpr = q_smem.shape[2]
    bhk = gl.program_id(1)
    b = bhk // num_kv_heads
    hk = bhk % num_kv_heads
    n0 = gl.program_id(0) * 128
    kv_row = b * seqlen_k + n0
    mbarrier.expect(kv_bar, 2 * k_desc.block_type.nbytes + 2 * v_desc.block_type.nbytes)
    _tma_load(k_desc, [kv_row, hk * D], kv_bar, k_smem.index(0))
    _tma_load(k_desc, [kv_row + 64, hk * D], kv_bar, k_smem.index(1))
    _tma_load(v_desc, [kv_row, hk * D], kv_bar, v_smem.index(0))
    _tma_load(v_desc, [kv_row + 64, hk * D], kv_bar, v_smem.index(1))
    it = 0
    for g in range(group):
        col = (hk * group + g) * D
        for j in range(first_q_tile, n_q_tiles):
            s = it % STAGES
            mbarrier.wait(qdo_empty.index(s), ((it // STAGES) & 1) ^ 1)
            mbarrier.expect(qdo_ready.index(s),
                            q_desc.block_type.nbytes + do_desc.block_type.nbytes
                            + lse_desc.block_type.nbytes + dl_desc.block_type.nbytes)
            row = b * seqlen_q + j * BLOCK_M
            _tma_load(q_desc, [row, col], qdo_ready.index(s), q_smem.index(s))
            _tma_load(do_desc, [row, col], qdo_ready.index(s), do_smem.index(s))
            stat = ((b * num_kv_heads + hk) * group + g) * seqlen_q + j * BLOCK_M
            _tma_load(lse_desc, [stat], qdo_ready.index(s), lse_smem.index(s))
            _tma_load(dl_desc, [stat], qdo_ready.index(s), dl_smem.index(s))
            it += 1


@gluon.jit
def _first_q_tile(seqlen_q, seqlen_k, BLOCK_M: gl.constexpr, CAUSAL: gl.constexpr):
    """The first query tile this program's 128 keys see: causal, query row m sees key n iff
    n <= m + Sk - Sq, so the tiles before it are skipped."""
    first = 0
    if CAUSAL:
        first = gl.maximum(gl.program_id(0) * 128 - (seqlen_k - seqlen_q), 0) // BLOCK_M
    return first


@gluon.jit
def _loader_buffers(q_desc, k_desc, v_desc, do_desc, lse_desc, dl_desc, BLOCK_M: gl.constexpr,
                    HEAD_DIM: gl.constexpr, STAGES: gl.constexpr):
    """The shared memory ``_bwd_loader`` fills (a ring of ``STAGES`` Q, dO, lse2, Δ tiles; K and
    V as two 64-key halves) and its mbarriers, initialised."""
    q_smem = gl.allocate_shared_memory(q_desc.dtype, [STAGES, BLOCK_M, HEAD_DIM], q_desc.layout)
    do_smem = gl.allocate_shared_memory(do_desc.dtype, [STAGES, BLOCK_M, HEAD_DIM],
                                        do_desc.layout)
    k_smem = gl.allocate_shared_memory(k_desc.dtype, [2, 64, HEAD_DIM], k_desc.layout)
    v_smem = gl.allocate_shared_memory(v_desc.dtype, [2, 64, HEAD_DIM], v_desc.layout)
    lse_smem = gl.allocate_shared_memory(gl.float32, [STAGES, BLOCK_M], lse_desc.layout)
    dl_smem = gl.allocate_shared_memory(gl.float32, [STAGES, BLOCK_M], dl_desc.layout)
    kv_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    qdo_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    qdo_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    mbarrier.init(kv_bar, count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(qdo_ready.index(i), count=1)
        mbarrier.init(qdo_empty.index(i), count=2)  # one arrival per consumer
    return q_smem, do_smem, k_smem, v_smem, lse_smem, dl_smem, kv_bar, qdo_ready, qdo_empty


@gluon.jit
def _store_dkdv(dk, dv, dk_ptr, dv_ptr, b, hk, n_first, seqlen_k, num_kv_heads, softmax_scale):
    """A consumer's 64 rows of dK (scaled by the softmax scale) and dV, in dk_ptr's dtype."""
    o_layout: gl.constexpr = dk.type.layout
    D: gl.constexpr = dk.shape[1]
    rows = gl.arange(0, 64, layout=gl.SliceLayout(1, o_layout))
    dcols = gl.arange(0, D, layout=gl.SliceLayout(0, o_layout))
    offs = (gl.expand_dims((b * seqlen_k + n_first + rows).to(gl.int64) * (num_kv_heads * D), 1)
            + hk * D + gl.expand_dims(dcols, 0))
    gl.store(dk_ptr + offs, (dk * softmax_scale).to(dk_ptr.dtype.element_ty))
    gl.store(dv_ptr + offs, dv.to(dv_ptr.dtype.element_ty))


@gluon.jit
def _bwd_consumer(WG: gl.constexpr, q_smem, do_smem, k_smem, v_smem, lse_smem, dl_smem, kv_bar,
                  qdo_ready, qdo_empty, dk_ptr, dv_ptr, seqlen_q, seqlen_k,
                  num_kv_heads, group, first_q_tile, n_q_tiles, qk_scale, softmax_scale,
                  BLOCK_M: gl.constexpr, STAGES: gl.constexpr, CAUSAL: gl.constexpr):
    """Consumer warpgroup ``WG``: keys [n0 + 64 WG, + 64) of this program's key tile."""
    dtype: gl.constexpr = q_smem.dtype
    D: gl.constexpr = q_smem.shape[2]
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, BLOCK_M, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, D, 16])
    a_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    col_layout: gl.constexpr = gl.SliceLayout(0, s_layout)  # along the query axis of Sᵀ
    bhk = gl.program_id(1)
    b = bhk // num_kv_heads
    hk = bhk % num_kv_heads
    n_first = gl.program_id(0) * 128 + WG * 64  # this warpgroup's first key
    shift = seqlen_k - seqlen_q
    k_t = k_smem.index(WG)
    v_t = v_smem.index(WG)
    zero_s = gl.zeros([64, BLOCK_M], gl.float32, s_layout)
    dk = gl.zeros([64, D], gl.float32, o_layout)
    dv = gl.zeros([64, D], gl.float32, o_layout)
    keys = n_first + gl.arange(0, 64, layout=gl.SliceLayout(1, s_layout))
    mbarrier.wait(kv_bar, 0)
    it = 0
    for _g in range(group):  # every query head of the GQA group, in the loader's order
        for j in range(first_q_tile, n_q_tiles):
            s = it % STAGES
            m0 = j * BLOCK_M
            mbarrier.wait(qdo_ready.index(s), (it // STAGES) & 1)
            q_t = q_smem.index(s)
            do_t = do_smem.index(s)
            st = warpgroup_mma(k_t, q_t.permute((1, 0)), zero_s, use_acc=False, is_async=True)
            st = warpgroup_mma_wait(num_outstanding=0, deps=(st,))
            lse2 = lse_smem.index(s).load(col_layout)
            pt = gl.exp2(st * qk_scale - gl.expand_dims(lse2, 0))
            if CAUSAL:
                if m0 + shift < n_first + 64:  # this tile crosses the diagonal
                    cols = m0 + gl.arange(0, BLOCK_M, layout=col_layout)
                    ok = gl.expand_dims(keys, 1) <= gl.expand_dims(cols, 0) + shift
                    pt = gl.where(ok, pt, 0.0)
            dv = warpgroup_mma(gl.convert_layout(pt.to(dtype), a_layout), do_t, dv,
                               is_async=True)
            dpt = warpgroup_mma(v_t, do_t.permute((1, 0)), zero_s, use_acc=False,
                                is_async=True)
            dpt = warpgroup_mma_wait(num_outstanding=0, deps=(dpt,))
            delta = dl_smem.index(s).load(col_layout)
            dst = pt * (dpt - gl.expand_dims(delta, 0))
            dk = warpgroup_mma(gl.convert_layout(dst.to(dtype), a_layout), q_t, dk,
                               is_async=True)
            dk, dv = warpgroup_mma_wait(num_outstanding=0, deps=(dk, dv))
            mbarrier.arrive(qdo_empty.index(s), count=1)
            it += 1

    _store_dkdv(dk, dv, dk_ptr, dv_ptr, b, hk, n_first, seqlen_k, num_kv_heads, softmax_scale)


@gluon.jit
def _flash_attn_dkdv_ws_kernel(q_desc, k_desc, v_desc, do_desc, lse_desc, dl_desc, dk_ptr,
                               dv_ptr, seqlen_q, seqlen_k, num_kv_heads, group, qk_scale,
                               softmax_scale, BLOCK_M: gl.constexpr, HEAD_DIM: gl.constexpr,
                               STAGES: gl.constexpr, CAUSAL: gl.constexpr):
    n_q_tiles = seqlen_q // BLOCK_M
    first_q_tile = _first_q_tile(seqlen_q, seqlen_k, BLOCK_M, CAUSAL)
    q_smem, do_smem, k_smem, v_smem, lse_smem, dl_smem, kv_bar, qdo_ready, qdo_empty = \
        _loader_buffers(q_desc, k_desc, v_desc, do_desc, lse_desc, dl_desc, BLOCK_M, HEAD_DIM,
                        STAGES)
    gl.warp_specialize(
        [(_bwd_consumer, (0, q_smem, do_smem, k_smem, v_smem, lse_smem, dl_smem, kv_bar,
                          qdo_ready, qdo_empty, dk_ptr, dv_ptr, seqlen_q, seqlen_k,
                          num_kv_heads, group, first_q_tile, n_q_tiles, qk_scale, softmax_scale,
                          BLOCK_M, STAGES, CAUSAL)),
         (_bwd_consumer, (1, q_smem, do_smem, k_smem, v_smem, lse_smem, dl_smem, kv_bar,
                          qdo_ready, qdo_empty, dk_ptr, dv_ptr, seqlen_q, seqlen_k,
                          num_kv_heads, group, first_q_tile, n_q_tiles, qk_scale, softmax_scale,
                          BLOCK_M, STAGES, CAUSAL)),
         (_bwd_loader, (q_desc, k_desc, v_desc, do_desc, lse_desc, dl_desc, q_smem, do_smem,
                        k_smem, v_smem, lse_smem, dl_smem, kv_bar, qdo_ready, qdo_empty,
                        seqlen_q, seqlen_k, num_kv_heads, group, first_q_tile, n_q_tiles,
                        BLOCK_M, STAGES))],
        worker_num_warps=[4, 1],
        worker_num_regs=[240, 24],
    )


@gluon.jit
def _dq_loader(q_desc, do_desc, k_desc, v_desc, q_smem, do_smem, k_smem, v_smem, q_bar,
               k_ready, v_ready, kv_empty, m0, bh, n_tiles, seqlen_q, seqlen_k, num_heads, group,
               BLOCK_N: gl.constexpr, STAGES: gl.constexpr):
    """Q and dO of both 64-row halves once, then K/V tile j into ring slot j % STAGES."""
    D: gl.constexpr = q_smem.shape[2]
    b = bh // num_heads
    h = bh % num_heads
    row = b * seqlen_q + m0
    mbarrier.expect(q_bar, 2 * q_desc.block_type.nbytes + 2 * do_desc.block_type.nbytes)
    _tma_load(q_desc, [row, h * D], q_bar, q_smem.index(0))
    _tma_load(q_desc, [row + 64, h * D], q_bar, q_smem.index(1))
    _tma_load(do_desc, [row, h * D], q_bar, do_smem.index(0))
    _tma_load(do_desc, [row + 64, h * D], q_bar, do_smem.index(1))
    kv_row = b * seqlen_k
    kv_col = (h // group) * D
    for j in range(n_tiles):
        _load_kv(k_desc, v_desc, k_smem, v_smem, k_ready, v_ready, kv_empty, j,
                 kv_row + j * BLOCK_N, kv_col, STAGES)


@gluon.jit
def _dq_consumer(WG: gl.constexpr, q_smem, do_smem, k_smem, v_smem, q_bar, k_ready, v_ready,
                 kv_empty, lse2_ptr, delta_ptr, dq_ptr, m0, bh, n_tiles, n_full, seqlen_q,
                 seqlen_k, num_heads, qk_scale, softmax_scale, BLOCK_N: gl.constexpr,
                 STAGES: gl.constexpr, CAUSAL: gl.constexpr):
    """Consumer ``WG``: dQ of query rows [m0 + 64 WG, + 64) over the item's key tiles:
    S = Q Kᵀ, P = exp2(S · scale·log2e − lse2), dP = dO Vᵀ, dS = P ∘ (dP − Δ), dQ += dS K."""
    dtype: gl.constexpr = q_smem.dtype
    D: gl.constexpr = q_smem.shape[2]
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, BLOCK_N, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, D, 16])
    a_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    row_layout: gl.constexpr = gl.SliceLayout(1, s_layout)
    row0 = m0 + WG * 64
    rows = row0 + gl.arange(0, 64, layout=row_layout)
    lse2 = gl.load(lse2_ptr + bh.to(gl.int64) * seqlen_q + rows)
    delta = gl.load(delta_ptr + bh.to(gl.int64) * seqlen_q + rows)
    shift = seqlen_k - seqlen_q
    zero_s = gl.zeros([64, BLOCK_N], gl.float32, s_layout)
    dq = gl.zeros([64, D], gl.float32, o_layout)
    q_t = q_smem.index(WG)
    do_t = do_smem.index(WG)
    mbarrier.wait(q_bar, 0)
    for j in range(n_tiles):
        s = j % STAGES
        ph = (j // STAGES) & 1
        mbarrier.wait(k_ready.index(s), ph)
        sc = warpgroup_mma(q_t, k_smem.index(s).permute((1, 0)), zero_s, use_acc=False,
                           is_async=True)
        mbarrier.wait(v_ready.index(s), ph)
        dp = warpgroup_mma(do_t, v_smem.index(s).permute((1, 0)), zero_s, use_acc=False,
                           is_async=True)
        sc = warpgroup_mma_wait(num_outstanding=1, deps=(sc,))
        p = gl.exp2(sc * qk_scale - gl.expand_dims(lse2, 1))
        if CAUSAL:
            if j >= n_full:
                cols = j * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_layout))
                p = gl.where(gl.expand_dims(cols, 0) <= gl.expand_dims(rows, 1) + shift, p, 0.0)
        dp = warpgroup_mma_wait(num_outstanding=0, deps=(dp,))
        ds = p * (dp - gl.expand_dims(delta, 1))
        dq = warpgroup_mma(gl.convert_layout(ds.to(dtype), a_layout), k_smem.index(s), dq,
                           is_async=True)
        dq = warpgroup_mma_wait(num_outstanding=0, deps=(dq,))
        mbarrier.arrive(kv_empty.index(s), count=1)
    b = bh // num_heads
    h = bh % num_heads
    orow = gl.arange(0, 64, layout=gl.SliceLayout(1, o_layout))
    ocol = gl.arange(0, D, layout=gl.SliceLayout(0, o_layout))
    offs = (gl.expand_dims((b * seqlen_q + row0 + orow).to(gl.int64) * (num_heads * D), 1)
            + h * D + gl.expand_dims(ocol, 0))
    gl.store(dq_ptr + offs, (dq * softmax_scale).to(dtype))


@gluon.jit
def _flash_attn_dq_ws_kernel(q_desc, do_desc, k_desc, v_desc, lse2_ptr, delta_ptr, dq_ptr,
                             seqlen_q, seqlen_k, num_heads, group, qk_scale, softmax_scale,
                             BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr,
                             STAGES: gl.constexpr, CAUSAL: gl.constexpr):
    """One program per 128 query rows of one (sequence, head); causal: longest first."""
    m0, bh, n_tiles, n_full = _tile(gl.program_id(0), seqlen_q // 128, gl.num_programs(0),
                                    seqlen_q, seqlen_k, BLOCK_N, CAUSAL, False)
    q_smem = gl.allocate_shared_memory(q_desc.dtype, [2, 64, HEAD_DIM], q_desc.layout)
    do_smem = gl.allocate_shared_memory(do_desc.dtype, [2, 64, HEAD_DIM], do_desc.layout)
    k_smem = gl.allocate_shared_memory(k_desc.dtype, [STAGES, BLOCK_N, HEAD_DIM], k_desc.layout)
    v_smem = gl.allocate_shared_memory(v_desc.dtype, [STAGES, BLOCK_N, HEAD_DIM], v_desc.layout)
    q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    k_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    kv_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    mbarrier.init(q_bar, count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(k_ready.index(i), count=1)
        mbarrier.init(v_ready.index(i), count=1)
        mbarrier.init(kv_empty.index(i), count=2)
    gl.warp_specialize(
        [(_dq_consumer, (0, q_smem, do_smem, k_smem, v_smem, q_bar, k_ready, v_ready, kv_empty,
                         lse2_ptr, delta_ptr, dq_ptr, m0, bh, n_tiles, n_full, seqlen_q,
                         seqlen_k, num_heads, qk_scale, softmax_scale, BLOCK_N, STAGES,
                         CAUSAL)),
         (_dq_consumer, (1, q_smem, do_smem, k_smem, v_smem, q_bar, k_ready, v_ready, kv_empty,
                         lse2_ptr, delta_ptr, dq_ptr, m0, bh, n_tiles, n_full, seqlen_q,
                         seqlen_k, num_heads, qk_scale, softmax_scale, BLOCK_N, STAGES,
                         CAUSAL)),
         (_dq_loader, (q_desc, do_desc, k_desc, v_desc, q_smem, do_smem, k_smem, v_smem, q_bar,
                       k_ready, v_ready, kv_empty, m0, bh, n_tiles, seqlen_q, seqlen_k,
                       num_heads, group, BLOCK_N, STAGES))],
        worker_num_warps=[4, 1],
        worker_num_regs=[240, 24],
    )


def supported(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dout: torch.Tensor, *,
              causal: bool) -> bool:
    """Whether ``flash_attn_dkdv_ws`` takes these inputs (``dense_sm90_ok``: 64-row query
    tiles, 128-key tiles); ``flash_attn_dq_ws`` also needs Sq a multiple of 128."""
    return dense_sm90_ok(q, k, v, dout, causal=causal, q_tile=64, k_tile=128)


_STATS_LAYOUT = gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=32, rank=1)


def _stats_desc(t: torch.Tensor, rows: int) -> TensorDescriptor:
    """1-D TMA view of a per-row fp32 statistic (lse2 or Δ, (B, Hq, Sq)), ``rows`` per copy."""
    t = t.contiguous()
    return TensorDescriptor(t, [t.numel()], [1], [rows], _STATS_LAYOUT)


# dK/dV query tile (rows of Q and dO per step) and ring depth. 64 rows: 204-288 B of register
# spills per consumer (ptxas, sm_90a, Triton 3.6); 32 rows: none, at half the wgmma N for Sᵀ
# and dPᵀ. The probe (benchmarks/attn_bwd_ws_probe.py) times both.
DKDV_TILE = (64, 4)


def flash_attn_dkdv_ws(q, k, v, dout, lse2, delta, *, softmax_scale: float,
                       causal: bool = False, tile: tuple[int, int] | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """dK, dV (k's shape, contiguous) from q, k, v, dout (B, S, H, D) and the backward
    preprocess's ``lse2`` (lse · log2 e, +inf on empty rows) and ``delta`` (B, Hq, Sq) fp32.
    Inputs must pass ``supported``."""
    B, Sq, Hq, D = q.shape
    Sk, Hk = k.shape[1], k.shape[2]
    gl_dtype = gl.float16 if q.dtype == torch.float16 else gl.bfloat16
    dk = torch.empty((B, Sk, Hk, D), dtype=k.dtype, device=k.device)
    dv = torch.empty((B, Sk, Hk, D), dtype=v.dtype, device=v.device)
    block_m, stages = tile or DKDV_TILE
    _flash_attn_dkdv_ws_kernel[(Sk // 128, B * Hk)](
        _desc(q, block_m, gl_dtype), _desc(k, 64, gl_dtype), _desc(v, 64, gl_dtype),
        _desc(dout, block_m, gl_dtype), _stats_desc(lse2, block_m), _stats_desc(delta, block_m),
        dk, dv, Sq, Sk, Hk, Hq // Hk,
        softmax_scale * LOG2E, softmax_scale, BLOCK_M=block_m, HEAD_DIM=D, STAGES=stages,
        CAUSAL=causal, num_warps=4,
    )
    return dk, dv


def flash_attn_dq_ws(q, k, v, dout, lse2, delta, *, softmax_scale: float, causal: bool = False,
                     block_n: int = 128, stages: int = 2) -> torch.Tensor:
    """dQ (q's shape, contiguous), deterministic; inputs as ``flash_attn_dkdv_ws``'s, and Sq a
    multiple of 128 and Sk of ``block_n``."""
    B, Sq, Hq, D = q.shape
    Sk, Hk = k.shape[1], k.shape[2]
    gl_dtype = gl.float16 if q.dtype == torch.float16 else gl.bfloat16
    dq = torch.empty((B, Sq, Hq, D), dtype=q.dtype, device=q.device)
    _flash_attn_dq_ws_kernel[((Sq // 128) * B * Hq,)](
        _desc(q, 64, gl_dtype), _desc(dout, 64, gl_dtype), _desc(k, block_n, gl_dtype),
        _desc(v, block_n, gl_dtype), lse2, delta, dq, Sq, Sk, Hq, Hq // Hk,
        softmax_scale * LOG2E, softmax_scale, BLOCK_N=block_n, HEAD_DIM=D, STAGES=stages,
        CAUSAL=causal, num_warps=4,
    )
    return dq


STATS_DESC = f"tensordesc<fp32[64],{_STATS_LAYOUT!r}>"  # _stats_desc's type, for builds


def compile_for_sm90(dtype: str = "bf16", causal: bool = False, kernel: str = "dkdv"):
    """Build ``kernel`` ("dkdv" or "dq", default tiles) for an H100 without one (see
    flash_attn_hopper.compile_for_sm90)."""
    gl_dtype = {"bf16": gl.bfloat16, "fp16": gl.float16}[dtype]

    def desc(rows):
        layout = gl.NVMMASharedLayout.get_default_for([rows, 128], gl_dtype)
        return f"tensordesc<{dtype}[{rows}, 128],{layout!r}>"
    if kernel == "dkdv":
        fn = _flash_attn_dkdv_ws_kernel
        types = {"q_desc": desc(64), "k_desc": desc(64), "v_desc": desc(64),
                 "do_desc": desc(64), "lse_desc": STATS_DESC, "dl_desc": STATS_DESC,
                 "dk_ptr": f"*{dtype}", "dv_ptr": f"*{dtype}", "num_kv_heads": "i32",
                 "BLOCK_M": 64, "STAGES": 4}
    else:
        fn = _flash_attn_dq_ws_kernel
        types = {"q_desc": desc(64), "do_desc": desc(64), "k_desc": desc(128),
                 "v_desc": desc(128), "dq_ptr": f"*{dtype}", "num_heads": "i32",
                 "BLOCK_N": 128, "STAGES": 2}
    types.update({"lse2_ptr": "*fp32", "delta_ptr": "*fp32", "seqlen_q": "i32",
                  "seqlen_k": "i32", "group": "i32", "qk_scale": "fp32",
                  "softmax_scale": "fp32", "HEAD_DIM": 128, "CAUSAL": causal})
    return build_sm90(fn, types)


__all__ = ["compile_for_sm90", "flash_attn_dkdv_ws", "flash_attn_dq_ws", "supported"]
