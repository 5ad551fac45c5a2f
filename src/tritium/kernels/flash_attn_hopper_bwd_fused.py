"""The whole attention backward for Hopper in one warp-specialised Gluon kernel: dK, dV and dQ.

kernels/flash_attn_hopper_bwd.py runs the backward as two kernels (dK/dV, then dQ), which is
bit-reproducible but recomputes S and dP in the second: 7 tile matmuls per (query tile, key
tile). This kernel does 5, as FlashAttention-2/3 do, by adding each tile pair's share of dQ
into an fp32 buffer with TMA reduce-add (``cp.reduce.async.bulk.tensor``); the order of those
additions varies from run to run, so dQ's last bits may too (the ``deterministic=False`` path).

Same program as the dK/dV kernel (same loader, read that file first): a 128-key tile of one
(sequence, KV head), two consumer warpgroups of 64 keys each, Q/dO tiles of 64 query rows
through a ring. Per (query tile, key tile) each consumer computes, as there,

    Sᵀ = K Qᵀ,  Pᵀ = exp2(Sᵀ · scale·log2e − lse2),  dPᵀ = V dOᵀ,  dSᵀ = Pᵀ ∘ (dPᵀ − Δ),
    dV += Pᵀ dO,  dK += dSᵀ Q,

then writes its dSᵀ half (64 keys × 64 queries) to shared memory. Once both halves are there
(``ds_ready``, two arrivals) consumer ``WG`` computes columns [64 WG, 64 WG + 64) of the tile's
dQ = dS K over all 128 keys (two wgmma, one per half, A = dS read transposed from shared
memory), stages it in shared memory and hands it to the TMA unit, which adds it into
``dq_acc`` while the consumer goes on. dSᵀ is double-buffered (``ds_free``, two arrivals, says
both consumers have read a buffer). dQ comes out unscaled; the caller multiplies by the softmax
scale while converting (kernels/flash_attn_bwd.py).

Scope as the dK/dV kernel's (``supported`` there). Shared memory at the default 2 ring slots:
64 KiB Q/dO (and 1 KiB of their rows' lse2 and Δ), 64 KiB K/V, 32 KiB dSᵀ, 32 KiB dQ staging.
The TMA reduce-add is ``tma.async_atomic_add`` in Triton 3.9; 3.6 has the IR operation but no
Gluon wrapper, so ``_tma_reduce_add`` builds it directly there.
"""

from __future__ import annotations

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language._core import builtin
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_wait,
)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from tritium.kernels.flash_attn_hopper import LOG2E, _desc, build_sm90
from tritium.kernels.flash_attn_hopper_bwd import (
    STATS_DESC,
    _bwd_loader,
    _first_q_tile,
    _loader_buffers,
    _stats_desc,
    _store_dkdv,
    supported,
)

# A barrier over the calling partition's warps: ``thread_barrier`` in 3.6, ``barrier`` in 3.9.
_wg_barrier = getattr(gl, "thread_barrier", None) or gl.barrier


@builtin
def _tma_reduce_add_36(tensor_desc, coord, src, _semantic=None):
    """Triton 3.6: TMA reduce-add of shared memory ``src`` into global memory at ``coord``."""
    from triton._C.libtriton import ir
    coord = _semantic._convert_to_ir_values(coord, require_i64=False)
    _semantic.builder.create_async_tma_reduce(ir.DESCRIPTOR_REDUCE_KIND.ADD, tensor_desc.handle,
                                              coord, src.handle)


_tma_reduce_add = getattr(tma, "async_atomic_add", None) or _tma_reduce_add_36


@gluon.jit
def _fused_step(it, j, h, b, WG: gl.constexpr, q_smem, do_smem, k_t, v_t, k_cols0, k_cols1,
                lse_smem, dl_smem, ds_smem, dq_smem, qdo_ready, qdo_empty, ds_ready, ds_free,
                dq_desc, dk, dv, keys, shift, seqlen_q, qk_scale, BLOCK_M: gl.constexpr,
                STAGES: gl.constexpr, MASKED: gl.constexpr):
    """One (query tile j of head h, key tile) step of consumer ``WG``: -> dk, dv."""
    dtype: gl.constexpr = q_smem.dtype
    D: gl.constexpr = q_smem.shape[2]
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, BLOCK_M, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, D, 16])
    dq_layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, 64, 16])
    a_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    col_layout: gl.constexpr = gl.SliceLayout(0, s_layout)  # along the query axis of Sᵀ
    s = it % STAGES
    buf = it % 2
    m0 = j * BLOCK_M
    zero_s = gl.zeros([64, BLOCK_M], gl.float32, s_layout)
    mbarrier.wait(qdo_ready.index(s), (it // STAGES) & 1)
    q_t = q_smem.index(s)
    do_t = do_smem.index(s)
    st = warpgroup_mma(k_t, q_t.permute((1, 0)), zero_s, use_acc=False, is_async=True)
    dpt = warpgroup_mma(v_t, do_t.permute((1, 0)), zero_s, use_acc=False, is_async=True)
    st = warpgroup_mma_wait(num_outstanding=1, deps=(st,))
    lse2 = lse_smem.index(s).load(col_layout)
    pt = gl.exp2(st * qk_scale - gl.expand_dims(lse2, 0))
    if MASKED:  # a tile across the causal diagonal: key n sees query m iff n <= m + shift
        cols = m0 + gl.arange(0, BLOCK_M, layout=col_layout)
        pt = gl.where(gl.expand_dims(keys, 1) <= gl.expand_dims(cols, 0) + shift, pt, 0.0)
    dv = warpgroup_mma(gl.convert_layout(pt.to(dtype), a_layout), do_t, dv, is_async=True)
    dpt = warpgroup_mma_wait(num_outstanding=1, deps=(dpt,))
    delta = dl_smem.index(s).load(col_layout)
    dst = (pt * (dpt - gl.expand_dims(delta, 0))).to(dtype)
    dk = warpgroup_mma(gl.convert_layout(dst, a_layout), q_t, dk, is_async=True)
    # share this half of dSᵀ; then dQ[:, WG's columns] = dS[:, keys 0..63] K0 + dS[:, 64..] K1
    mbarrier.wait(ds_free.index(buf), ((it // 2) & 1) ^ 1)
    ds_smem.index(2 * buf + WG).store(dst)
    fence_async_shared()
    _wg_barrier()
    mbarrier.arrive(ds_ready.index(buf), count=1)
    mbarrier.wait(ds_ready.index(buf), (it // 2) & 1)
    zero_dq = gl.zeros([BLOCK_M, 64], gl.float32, dq_layout)
    dq = warpgroup_mma(ds_smem.index(2 * buf).permute((1, 0)), k_cols0, zero_dq, use_acc=False,
                       is_async=True)
    dq = warpgroup_mma(ds_smem.index(2 * buf + 1).permute((1, 0)), k_cols1, dq, is_async=True)
    dk, dv, dq = warpgroup_mma_wait(num_outstanding=0, deps=(dk, dv, dq))
    mbarrier.arrive(qdo_empty.index(s), count=1)
    mbarrier.arrive(ds_free.index(buf), count=1)
    tma.store_wait(0)  # the previous tile's reduce-add has read the staging buffer
    dq_smem.index(WG).store(dq)
    fence_async_shared()
    _wg_barrier()
    _tma_reduce_add(dq_desc, [b * seqlen_q + m0, h * D + WG * 64], dq_smem.index(WG))
    return dk, dv


@gluon.jit
def _fused_consumer(WG: gl.constexpr, q_smem, do_smem, k_smem, v_smem, lse_smem, dl_smem, ds_smem,
                    dq_smem, kv_bar, qdo_ready, qdo_empty, ds_ready, ds_free, dq_desc,
                    dk_ptr, dv_ptr, seqlen_q, seqlen_k, num_kv_heads, group, first_q_tile,
                    n_q_tiles, qk_scale, softmax_scale, BLOCK_M: gl.constexpr,
                    STAGES: gl.constexpr, CAUSAL: gl.constexpr):
    """Consumer ``WG``: dK, dV of keys [n0 + 64 WG, + 64); dQ columns [64 WG, + 64). Causal:
    the tiles across the diagonal run first, in their own loop, so that the main loop carries
    no mask code (ptxas: 208 B of spills this way, 180 B with one loop; the two were not timed
    against each other, and the measured figures are this form's)."""
    D: gl.constexpr = q_smem.shape[2]
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, BLOCK_M, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, D, 16])
    bhk = gl.program_id(1)
    b = bhk // num_kv_heads
    hk = bhk % num_kv_heads
    n_first = gl.program_id(0) * 128 + WG * 64  # this warpgroup's first key
    shift = seqlen_k - seqlen_q
    k_t = k_smem.index(WG)
    v_t = v_smem.index(WG)
    k_cols0 = k_smem.index(0).slice(WG * 64, 64, dim=1)  # K[keys 0..63, this WG's dQ columns]
    k_cols1 = k_smem.index(1).slice(WG * 64, 64, dim=1)
    dk = gl.zeros([64, D], gl.float32, o_layout)
    dv = gl.zeros([64, D], gl.float32, o_layout)
    keys = n_first + gl.arange(0, 64, layout=gl.SliceLayout(1, s_layout))
    j_unmasked = first_q_tile  # tiles before it cross this warpgroup's causal diagonal
    if CAUSAL:
        j_unmasked = (gl.maximum(n_first + 64 - shift, 0) + BLOCK_M - 1) // BLOCK_M
        j_unmasked = gl.minimum(gl.maximum(j_unmasked, first_q_tile), n_q_tiles)
    mbarrier.wait(kv_bar, 0)
    it = 0
    for g in range(group):
        h = hk * group + g
        if CAUSAL:
            for j in range(first_q_tile, j_unmasked):
                dk, dv = _fused_step(it, j, h, b, WG, q_smem, do_smem, k_t, v_t, k_cols0,
                                     k_cols1, lse_smem, dl_smem, ds_smem, dq_smem, qdo_ready,
                                     qdo_empty, ds_ready, ds_free, dq_desc, dk, dv, keys, shift,
                                     seqlen_q, qk_scale, BLOCK_M, STAGES, True)
                it += 1
        for j in range(j_unmasked, n_q_tiles):
            dk, dv = _fused_step(it, j, h, b, WG, q_smem, do_smem, k_t, v_t, k_cols0, k_cols1,
                                 lse_smem, dl_smem, ds_smem, dq_smem, qdo_ready, qdo_empty,
                                 ds_ready, ds_free, dq_desc, dk, dv, keys, shift, seqlen_q,
                                 qk_scale, BLOCK_M, STAGES, False)
            it += 1
    tma.store_wait(0)

    _store_dkdv(dk, dv, dk_ptr, dv_ptr, b, hk, n_first, seqlen_k, num_kv_heads, softmax_scale)


@gluon.jit
def _flash_attn_bwd_fused_ws_kernel(q_desc, k_desc, v_desc, do_desc, lse_desc, dl_desc, dq_desc,
                                    dk_ptr, dv_ptr, seqlen_q, seqlen_k, num_kv_heads,
                                    group, qk_scale, softmax_scale, BLOCK_M: gl.constexpr,
                                    HEAD_DIM: gl.constexpr, STAGES: gl.constexpr,
                                    CAUSAL: gl.constexpr):
    n_q_tiles = seqlen_q // BLOCK_M
    first_q_tile = _first_q_tile(seqlen_q, seqlen_k, BLOCK_M, CAUSAL)
    q_smem, do_smem, k_smem, v_smem, lse_smem, dl_smem, kv_bar, qdo_ready, qdo_empty = \
        _loader_buffers(q_desc, k_desc, v_desc, do_desc, lse_desc, dl_desc, BLOCK_M, HEAD_DIM,
                        STAGES)
    ds_layout: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16,
                                                   rank=2)
    ds_smem = gl.allocate_shared_memory(q_desc.dtype, [4, 64, BLOCK_M], ds_layout)  # [buf, half]
    dq_smem = gl.allocate_shared_memory(gl.float32, [2, BLOCK_M, 64], dq_desc.layout)
    ds_ready = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    ds_free = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(2):
        mbarrier.init(ds_ready.index(i), count=2)
        mbarrier.init(ds_free.index(i), count=2)
    gl.warp_specialize(
        [(_fused_consumer, (0, q_smem, do_smem, k_smem, v_smem, lse_smem, dl_smem,
                            ds_smem, dq_smem, kv_bar, qdo_ready, qdo_empty, ds_ready, ds_free,
                            dq_desc, dk_ptr, dv_ptr, seqlen_q, seqlen_k, num_kv_heads, group,
                            first_q_tile, n_q_tiles, qk_scale, softmax_scale, BLOCK_M, STAGES,
                            CAUSAL)),
         (_fused_consumer, (1, q_smem, do_smem, k_smem, v_smem, lse_smem, dl_smem,
                            ds_smem, dq_smem, kv_bar, qdo_ready, qdo_empty, ds_ready, ds_free,
                            dq_desc, dk_ptr, dv_ptr, seqlen_q, seqlen_k, num_kv_heads, group,
                            first_q_tile, n_q_tiles, qk_scale, softmax_scale, BLOCK_M, STAGES,
                            CAUSAL)),
         (_bwd_loader, (q_desc, k_desc, v_desc, do_desc, lse_desc, dl_desc, q_smem, do_smem,
                        k_smem, v_smem, lse_smem, dl_smem, kv_bar, qdo_ready, qdo_empty,
                        seqlen_q, seqlen_k, num_kv_heads, group, first_q_tile, n_q_tiles,
                        BLOCK_M, STAGES))],
        worker_num_warps=[4, 1],
        worker_num_regs=[240, 24],
    )


# Q/dO ring slots. H100, 2026-11-24 (benchmarks/attn_bwd_ws_probe.py, D 128, 16k tokens, S 1k /
# 4k / 16k, TFLOP/s): 2 slots 390 / 513 / 555 full, 266 / 439 / 514 causal; 3 slots 382 / 509 /
# 540 and 232 / 366 / 423. Three fill 226 KiB of shared memory, which leaves the SM's L1 (the
# same 256 KiB) ~25 KiB for the register spills and the dK/dV stores; a guess, not profiled.
STAGES = 2


def _dq_desc(dq_acc: torch.Tensor) -> TensorDescriptor:
    B, S, H, D = dq_acc.shape
    layout = gl.NVMMASharedLayout.get_default_for([64, 64], gl.float32)
    return TensorDescriptor(dq_acc, [B * S, H * D], [H * D, 1], [64, 64], layout)


def flash_attn_bwd_fused_ws(q, k, v, dout, lse2, delta, dq_acc, *, softmax_scale: float,
                            causal: bool = False, stages: int | None = None
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """dK, dV (k's shape, contiguous), and dQ / softmax_scale *added* into ``dq_acc`` (q's
    shape, fp32, contiguous, zeroed by the caller). Other inputs as
    flash_attn_hopper_bwd.flash_attn_dkdv_ws's; they must pass its ``supported``."""
    B, Sq, Hq, D = q.shape
    Sk, Hk = k.shape[1], k.shape[2]
    if not (dq_acc.dtype == torch.float32 and dq_acc.shape == q.shape
            and dq_acc.is_contiguous()):
        raise ValueError("dq_acc must be a contiguous fp32 tensor of q's shape")
    gl_dtype = gl.float16 if q.dtype == torch.float16 else gl.bfloat16
    dk = torch.empty((B, Sk, Hk, D), dtype=k.dtype, device=k.device)
    dv = torch.empty((B, Sk, Hk, D), dtype=v.dtype, device=v.device)
    _flash_attn_bwd_fused_ws_kernel[(Sk // 128, B * Hk)](
        _desc(q, 64, gl_dtype), _desc(k, 64, gl_dtype), _desc(v, 64, gl_dtype),
        _desc(dout, 64, gl_dtype), _stats_desc(lse2, 64), _stats_desc(delta, 64),
        _dq_desc(dq_acc), dk, dv, Sq, Sk, Hk, Hq // Hk,
        softmax_scale * LOG2E, softmax_scale, BLOCK_M=64, HEAD_DIM=D,
        STAGES=stages or STAGES, CAUSAL=causal, num_warps=4,
    )
    return dk, dv


def compile_for_sm90(dtype: str = "bf16", causal: bool = False, stages: int | None = None):
    """Build the kernel for an H100 without one (see flash_attn_hopper.compile_for_sm90)."""
    gl_dtype = {"bf16": gl.bfloat16, "fp16": gl.float16}[dtype]
    tile = gl.NVMMASharedLayout.get_default_for([64, 128], gl_dtype)
    acc = gl.NVMMASharedLayout.get_default_for([64, 64], gl.float32)
    types = {"dq_desc": f"tensordesc<fp32[64, 64],{acc!r}>", "dk_ptr": f"*{dtype}",
             "dv_ptr": f"*{dtype}", "lse_desc": STATS_DESC, "dl_desc": STATS_DESC,
             "seqlen_q": "i32", "seqlen_k": "i32", "num_kv_heads": "i32", "group": "i32",
             "qk_scale": "fp32", "softmax_scale": "fp32", "BLOCK_M": 64, "HEAD_DIM": 128,
             "STAGES": stages or STAGES, "CAUSAL": causal}
    types.update({n: f"tensordesc<{dtype}[64, 128],{tile!r}>"
                  for n in ("q_desc", "k_desc", "v_desc", "do_desc")})
    return build_sm90(_flash_attn_bwd_fused_ws_kernel, types)


__all__ = ["STAGES", "compile_for_sm90", "flash_attn_bwd_fused_ws", "supported"]
