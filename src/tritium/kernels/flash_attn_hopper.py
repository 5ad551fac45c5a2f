"""FlashAttention forward for Hopper, warp-specialised, in Gluon (Triton's lower-level dialect).

Classic Triton runs every warp of a program through the same instruction stream, so on an H100
the exp2 work of the softmax cannot run while the tensor cores compute the next matmul (see
docs/perf-notes.md, "Overlap and TMA probes"). Gluon (``triton.experimental.gluon``) exposes the
pieces FlashAttention-3 is built from, and this kernel uses them:

- one program = 128 query rows of one (sequence, head), split between two *consumer* warpgroups
  of 64 rows each, plus a one-warp *loader* partition (``gl.warp_specialize``);
- the loader streams K and V tiles into a ring of ``STAGES`` shared-memory buffers with TMA;
  ``k_ready`` / ``v_ready`` mbarriers say a buffer is full, ``kv_empty`` (two arrivals, one per
  consumer) that both consumers are done with it;
- each consumer runs the online softmax in base 2 on its 64 rows with asynchronous wgmma
  (S = Q Kᵀ from shared memory, O += P V with P in registers);
- ``PINGPONG``: the consumers take turns on the tensor cores. A consumer's "GEMM block" is
  O += P(j-1) V(j-1) then S(j) = Q K(j)ᵀ; it waits for its turn (an mbarrier the other consumer
  arrives on when its own block is done), so one consumer's softmax runs under the other's
  matmuls (FlashAttention-3's inter-warpgroup ping-pong).

Scope (the dense fast path; everything else goes to kernels/flash_attn.py): batched
(B, S, H, D) inputs, fp16/bf16, head dim 64 or 128, GQA, no mask (causal is next), Sq a
multiple of 128 and Sk a multiple of ``BLOCK_N`` (tiles never cross a sequence boundary).
Needs an sm_90 GPU and a Triton with Gluon's Hopper API (3.6 and 3.9 are known to work); there
is no interpreter path, so its tests compile it for sm_90 on the CPU and check it on a GPU.
"""

from __future__ import annotations

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

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453
# The TMA load was renamed between Triton 3.6 (async_copy_global_to_shared) and 3.9 (async_load,
# the old name now raises); same arguments (descriptor, coordinates, mbarrier, destination).
_tma_load = getattr(tma, "async_load", None) or tma.async_copy_global_to_shared


@gluon.jit
def _loader(q_desc, k_desc, v_desc, q_smem, k_smem, v_smem, q_bar, k_ready, v_ready, kv_empty,
            q_row, kv_row, q_col, kv_col, n_tiles,
            BLOCK_N: gl.constexpr, STAGES: gl.constexpr):
    """Loader partition: both Q tiles once, then K/V tile j into ring slot j % STAGES."""
    mbarrier.expect(q_bar, 2 * q_desc.block_type.nbytes)
    _tma_load(q_desc, [q_row, q_col], q_bar, q_smem.index(0))
    _tma_load(q_desc, [q_row + 64, q_col], q_bar, q_smem.index(1))
    for j in range(n_tiles):
        s = j % STAGES
        # A slot's first use waits on parity 1, which a fresh mbarrier reports as complete.
        mbarrier.wait(kv_empty.index(s), ((j // STAGES) & 1) ^ 1)
        row = kv_row + j * BLOCK_N
        mbarrier.expect(k_ready.index(s), k_desc.block_type.nbytes)
        _tma_load(k_desc, [row, kv_col], k_ready.index(s), k_smem.index(s))
        mbarrier.expect(v_ready.index(s), v_desc.block_type.nbytes)
        _tma_load(v_desc, [row, kv_col], v_ready.index(s), v_smem.index(s))


@gluon.jit
def _softmax_update(sc, m_i, l_i, acc, qk_scale, o_layout: gl.constexpr):
    """Online-softmax step for one scores tile: returns (p, m, l, acc rescaled)."""
    m_new = gl.maximum(m_i, gl.max(sc, axis=1) * qk_scale)
    p = gl.exp2(sc * qk_scale - gl.expand_dims(m_new, 1))
    alpha = gl.exp2(m_i - m_new)
    l_i = l_i * alpha + gl.sum(p, axis=1)
    alpha_o = gl.convert_layout(alpha, gl.SliceLayout(1, o_layout))
    acc = acc * gl.expand_dims(alpha_o, 1)
    return p, m_new, l_i, acc


@gluon.jit
def _consumer(WG: gl.constexpr, q_smem, k_smem, v_smem, q_bar, k_ready, v_ready, kv_empty, turn,
              o_ptr, lse_ptr, o_row, o_col, stride_o_row, lse_row, n_tiles, qk_scale,
              BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr, STAGES: gl.constexpr,
              PINGPONG: gl.constexpr):
    """Consumer warpgroup ``WG`` (0 or 1): 64 query rows, the whole key range."""
    dtype: gl.constexpr = q_smem.dtype
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, BLOCK_N, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, HEAD_DIM, 16])
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    row_layout: gl.constexpr = gl.SliceLayout(1, s_layout)

    q = q_smem.index(WG)
    m_i = gl.full([64], float("-inf"), gl.float32, row_layout)
    l_i = gl.zeros([64], gl.float32, row_layout)
    acc = gl.zeros([64, HEAD_DIM], gl.float32, o_layout)
    zero_s = gl.zeros([64, BLOCK_N], gl.float32, s_layout)
    mbarrier.wait(q_bar, 0)

    if PINGPONG:
        # GEMM block k (k = 0 .. n_tiles) runs O += P(k-1) V(k-1) (k >= 1) and S(k) (k < n);
        # consumer WG waits on turn[WG] at parity (k + 1 + WG) & 1 (WG 0 goes first: parity 1
        # on a fresh mbarrier passes) and hands the turn over by arriving on turn[1 - WG].
        mbarrier.wait(turn.index(WG), (1 + WG) & 1)
        mbarrier.wait(k_ready.index(0), 0)
        sc = warpgroup_mma(q, k_smem.index(0).permute((1, 0)), zero_s, use_acc=False,
                           is_async=True)
        sc = warpgroup_mma_wait(num_outstanding=0, deps=(sc,))
        mbarrier.arrive(turn.index(1 - WG), count=1)
        p, m_i, l_i, acc = _softmax_update(sc, m_i, l_i, acc, qk_scale, o_layout)
        for j in range(1, n_tiles):
            prev = (j - 1) % STAGES
            s = j % STAGES
            mbarrier.wait(turn.index(WG), (j + 1 + WG) & 1)
            mbarrier.wait(v_ready.index(prev), ((j - 1) // STAGES) & 1)
            acc = warpgroup_mma(gl.convert_layout(p.to(dtype), p_layout), v_smem.index(prev),
                                acc, is_async=True)
            mbarrier.wait(k_ready.index(s), (j // STAGES) & 1)
            sc = warpgroup_mma(q, k_smem.index(s).permute((1, 0)), zero_s, use_acc=False,
                               is_async=True)
            sc, acc = warpgroup_mma_wait(num_outstanding=0, deps=(sc, acc))
            mbarrier.arrive(kv_empty.index(prev), count=1)
            mbarrier.arrive(turn.index(1 - WG), count=1)
            p, m_i, l_i, acc = _softmax_update(sc, m_i, l_i, acc, qk_scale, o_layout)
        last = (n_tiles - 1) % STAGES
        mbarrier.wait(turn.index(WG), (n_tiles + 1 + WG) & 1)
        mbarrier.wait(v_ready.index(last), ((n_tiles - 1) // STAGES) & 1)
        acc = warpgroup_mma(gl.convert_layout(p.to(dtype), p_layout), v_smem.index(last), acc,
                            is_async=True)
        acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
        mbarrier.arrive(kv_empty.index(last), count=1)
        mbarrier.arrive(turn.index(1 - WG), count=1)
    else:
        for j in range(n_tiles):
            s = j % STAGES
            ph = (j // STAGES) & 1
            mbarrier.wait(k_ready.index(s), ph)
            sc = warpgroup_mma(q, k_smem.index(s).permute((1, 0)), zero_s, use_acc=False,
                               is_async=True)
            sc = warpgroup_mma_wait(num_outstanding=0, deps=(sc,))
            p, m_i, l_i, acc = _softmax_update(sc, m_i, l_i, acc, qk_scale, o_layout)
            mbarrier.wait(v_ready.index(s), ph)
            acc = warpgroup_mma(gl.convert_layout(p.to(dtype), p_layout), v_smem.index(s), acc,
                                is_async=True)
            acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
            mbarrier.arrive(kv_empty.index(s), count=1)

    # Epilogue: O / l and the log-sum-exp (natural log) of this warpgroup's 64 rows.
    l_o = gl.convert_layout(l_i, gl.SliceLayout(1, o_layout))
    out = (acc / gl.expand_dims(l_o, 1)).to(dtype)
    rows = gl.arange(0, 64, layout=gl.SliceLayout(1, o_layout))
    cols = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, o_layout))
    row0 = o_row + WG * 64
    ptrs = (o_ptr + gl.expand_dims((row0 + rows).to(gl.int64) * stride_o_row, 1)
            + o_col + gl.expand_dims(cols, 0))
    gl.store(ptrs, out)
    lse_rows = gl.arange(0, 64, layout=row_layout)
    gl.store(lse_ptr + lse_row + WG * 64 + lse_rows, (m_i + gl.log2(l_i)) * 0.6931471805599453)


@gluon.jit
def _flash_attn_fwd_ws_kernel(q_desc, k_desc, v_desc, o_ptr, lse_ptr, seqlen_q, seqlen_k,
                              num_heads, group, stride_o_row, qk_scale,
                              BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr,
                              STAGES: gl.constexpr, PINGPONG: gl.constexpr):
    pid_m = gl.program_id(0)
    pid_bh = gl.program_id(1)
    b = pid_bh // num_heads
    h = pid_bh % num_heads
    q_row = b * seqlen_q + pid_m * 128
    kv_row = b * seqlen_k
    n_tiles = seqlen_k // BLOCK_N

    q_smem = gl.allocate_shared_memory(q_desc.dtype, [2, 64, HEAD_DIM], q_desc.layout)
    k_smem = gl.allocate_shared_memory(k_desc.dtype, [STAGES, BLOCK_N, HEAD_DIM], k_desc.layout)
    v_smem = gl.allocate_shared_memory(v_desc.dtype, [STAGES, BLOCK_N, HEAD_DIM], v_desc.layout)
    q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    k_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    kv_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    turn = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    mbarrier.init(q_bar, count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(k_ready.index(i), count=1)
        mbarrier.init(v_ready.index(i), count=1)
        mbarrier.init(kv_empty.index(i), count=2)
    mbarrier.init(turn.index(0), count=1)
    mbarrier.init(turn.index(1), count=1)

    q_col = h * HEAD_DIM
    kv_col = (h // group) * HEAD_DIM
    lse_row = pid_bh.to(gl.int64) * seqlen_q + pid_m * 128
    gl.warp_specialize(
        [(_consumer, (0, q_smem, k_smem, v_smem, q_bar, k_ready, v_ready, kv_empty, turn, o_ptr,
                      lse_ptr, q_row, q_col, stride_o_row, lse_row, n_tiles, qk_scale,
                      BLOCK_N, HEAD_DIM, STAGES, PINGPONG)),
         (_consumer, (1, q_smem, k_smem, v_smem, q_bar, k_ready, v_ready, kv_empty, turn, o_ptr,
                      lse_ptr, q_row, q_col, stride_o_row, lse_row, n_tiles, qk_scale,
                      BLOCK_N, HEAD_DIM, STAGES, PINGPONG)),
         (_loader, (q_desc, k_desc, v_desc, q_smem, k_smem, v_smem, q_bar, k_ready, v_ready,
                    kv_empty, q_row, kv_row, q_col, kv_col, n_tiles, BLOCK_N, STAGES))],
        worker_num_warps=[4, 1],
        worker_num_regs=[240, 24],
    )


def supported(q: torch.Tensor, k: torch.Tensor, *, causal: bool, block_n: int = 128) -> bool:
    """Whether ``flash_attn_fwd_ws`` handles these batched inputs (see the module docstring)."""
    if q.device.type != "cuda" or torch.cuda.get_device_capability(q.device)[0] != 9:
        return False
    if q.dtype not in (torch.float16, torch.bfloat16) or q.dim() != 4 or causal:
        return False
    D = q.shape[-1]
    return (D in (64, 128) and q.shape[1] % 128 == 0 and k.shape[1] % block_n == 0
            and k.shape[1] > 0)


def flash_attn_fwd_ws(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                      softmax_scale: float, block_n: int = 128, stages: int = 2,
                      pingpong: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """q (B, Sq, Hq, D), k/v (B, Sk, Hk, D) -> out (B, Sq, Hq, D), lse (B, Hq, Sq) fp32.

    Inputs must be contiguous and pass ``supported``; the caller validates them.
    """
    B, Sq, Hq, D = q.shape
    Sk, Hk = k.shape[1], k.shape[2]
    gl_dtype = gl.float16 if q.dtype == torch.float16 else gl.bfloat16
    out = torch.empty_like(q)
    lse = torch.empty((B, Hq, Sq), dtype=torch.float32, device=q.device)
    q2, o2 = q.view(B * Sq, Hq * D), out.view(B * Sq, Hq * D)
    k2, v2 = k.view(B * Sk, Hk * D), v.view(B * Sk, Hk * D)
    q_layout = gl.NVMMASharedLayout.get_default_for([64, D], gl_dtype)
    kv_layout = gl.NVMMASharedLayout.get_default_for([block_n, D], gl_dtype)
    q_desc = TensorDescriptor.from_tensor(q2, [64, D], q_layout)
    k_desc = TensorDescriptor.from_tensor(k2, [block_n, D], kv_layout)
    v_desc = TensorDescriptor.from_tensor(v2, [block_n, D], kv_layout)
    grid = (Sq // 128, B * Hq)
    _flash_attn_fwd_ws_kernel[grid](
        q_desc, k_desc, v_desc, o2, lse, Sq, Sk, Hq, Hq // Hk, o2.stride(0),
        softmax_scale * LOG2E, BLOCK_N=block_n, HEAD_DIM=D, STAGES=stages, PINGPONG=pingpong,
        num_warps=4,
    )
    return out, lse


__all__ = ["flash_attn_fwd_ws", "supported"]
