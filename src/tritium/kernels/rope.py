"""Rotary embedding (rotate-half / NeoX layout) fused with the paged K/V cache write.

One program per token. With d < D/2 paired with d + D/2 and (cos, sin) = table[pos, d mod D/2]:
    out[d] = x[d] * cos - x[d + D/2] * sin           (first half)
    out[d] = x[d] * cos + x[d - D/2] * sin           (second half)
computed in fp32 as ``x * cos + sign * x[partner] * sin`` over whole rows (the partner load
hits the same cache lines), then rounded to the input dtype. The same kernel serves three ops
through constexpr flags:
    ROTATE and not WRITE_KV: apply_rope                -> q_rot, k_rot
    ROTATE and WRITE_KV:     rope_and_write_kv         -> q_rot, k_rot, and k_rot / v cached
    WRITE_KV only:           write_kv_cache            -> k / v cached
A cache write goes to slot s = block * PAGE + offset given by ``slot_mapping`` (negative: skip).
fp8 caches store saturate(x / scale) with x first rounded to the model dtype, exactly as the
reference does, so both paths store the same bytes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

FP8_E4M3_MAX = tl.constexpr(448.0)  # largest finite float8_e4m3fn (a constexpr: jit reads it)


@triton.jit
def _round_to_e4m3(x):
    """fp32 x -> the nearest float8_e4m3fn value (ties to even, saturating at +-448), as fp32.

    Done in fp32 arithmetic so the final ``.to(fp8)`` only converts exact values: Triton's
    interpreter rounds fp32 -> fp8 wrongly (half-up, with bad carries; seen on Triton 3.9), and
    this keeps one code path, bit-identical to torch's cast, on CPU and GPU.
    """
    a = tl.minimum(tl.abs(x), FP8_E4M3_MAX)
    e = (a.to(tl.int32, bitcast=True) >> 23) - 127  # unbiased exponent (a >= 0)
    e = tl.maximum(e, -6)  # subnormals share the 2^-9 quantum of the lowest binade
    inv_quantum = ((3 - e + 127) << 23).to(tl.float32, bitcast=True)  # 2^(3-e)
    quantum = ((e - 3 + 127) << 23).to(tl.float32, bitcast=True)  # 2^(e-3)
    y = a * inv_quantum  # exact: scaling by a power of two; y < 16
    r = (y + 8388608.0) - 8388608.0  # round half to even at integer precision (2^23 trick)
    q = (r * quantum).to(tl.int32, bitcast=True)
    sign = x.to(tl.int32, bitcast=True) & -2147483648  # the sign bit (keeps -0.0 negative)
    return (q | sign).to(tl.float32, bitcast=True)


@triton.jit
def _rotate_heads(x_ptr, out_ptr, stride_x_t, stride_x_h, stride_o_t, stride_o_h, tok, cos, sin,
                  offs_d, partner, sign, cache_ptr, stride_c_h, slot,
                  inv_scale, NUM_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
                  BLOCK_H: tl.constexpr, ROTATE: tl.constexpr, WRITE_OUT: tl.constexpr,
                  WRITE_KV: tl.constexpr, FP8: tl.constexpr):
    """Rotate (optionally) heads of token ``tok`` in chunks of BLOCK_H; store to out and/or
    the cache row ``cache_ptr`` (already at the token's slot; skipped when slot < 0)."""
    d_mask = offs_d < HEAD_DIM
    for h0 in range(0, NUM_HEADS, BLOCK_H):
        offs_h = h0 + tl.arange(0, BLOCK_H)
        mask = (offs_h[:, None] < NUM_HEADS) & d_mask[None, :]
        row = x_ptr + tok * stride_x_t + offs_h[:, None] * stride_x_h  # (BLOCK_H, 1)
        x = tl.load(row + offs_d[None, :], mask=mask, other=0.0)
        if ROTATE:
            xp = tl.load(row + partner[None, :], mask=mask, other=0.0).to(tl.float32)
            y = x.to(tl.float32) * cos[None, :] + sign[None, :] * xp * sin[None, :]
            y = y.to(x_ptr.dtype.element_ty)  # round to the model dtype, as the reference
        else:
            y = x
        if WRITE_OUT:
            o_ptrs = out_ptr + tok * stride_o_t + offs_h[:, None] * stride_o_h + offs_d[None, :]
            tl.store(o_ptrs, y, mask=mask)
        if WRITE_KV:
            if slot >= 0:
                if FP8:
                    yc = _round_to_e4m3(y.to(tl.float32) * inv_scale)
                else:
                    yc = y
                c_ptrs = cache_ptr + offs_h[:, None] * stride_c_h + offs_d[None, :]
                tl.store(c_ptrs, yc.to(cache_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rope_write_kv_kernel(
    q_ptr, k_ptr, v_ptr, positions_ptr, cos_sin_ptr, q_out_ptr, k_out_ptr,
    k_cache_ptr, v_cache_ptr, slot_mapping_ptr,
    stride_q_t, stride_q_h, stride_k_t, stride_k_h, stride_v_t, stride_v_h,
    stride_qo_t, stride_qo_h, stride_ko_t, stride_ko_h, stride_cs,
    stride_kc_b, stride_kc_s, stride_kc_h, stride_vc_b, stride_vc_s, stride_vc_h,
    inv_k_scale, inv_v_scale,
    HQ: tl.constexpr, HK: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_HQ: tl.constexpr, BLOCK_HK: tl.constexpr, PAGE: tl.constexpr,
    HAS_Q: tl.constexpr, ROTATE: tl.constexpr, WRITE_KV: tl.constexpr, FP8: tl.constexpr,
):
    tok = tl.program_id(0).to(tl.int64)
    HALF = HEAD_DIM // 2
    offs_d = tl.arange(0, BLOCK_D)
    first = offs_d < HALF
    partner = tl.where(first, offs_d + HALF, offs_d - HALF)
    partner = tl.where(offs_d < HEAD_DIM, partner, 0)
    sign = tl.where(first, -1.0, 1.0)
    if ROTATE:
        pos = tl.load(positions_ptr + tok).to(tl.int64)
        f = tl.where(first, offs_d, offs_d - HALF)
        f = tl.where(offs_d < HEAD_DIM, f, 0)
        cos = tl.load(cos_sin_ptr + pos * stride_cs + f)
        sin = tl.load(cos_sin_ptr + pos * stride_cs + HALF + f)
    else:
        cos = tl.zeros([BLOCK_D], tl.float32)
        sin = cos
    if WRITE_KV:
        slot = tl.load(slot_mapping_ptr + tok).to(tl.int64)
        k_row = k_cache_ptr + (slot // PAGE) * stride_kc_b + (slot % PAGE) * stride_kc_s
        v_row = v_cache_ptr + (slot // PAGE) * stride_vc_b + (slot % PAGE) * stride_vc_s
    else:
        slot = tok
        k_row = k_cache_ptr
        v_row = v_cache_ptr
    if HAS_Q:
        _rotate_heads(q_ptr, q_out_ptr, stride_q_t, stride_q_h, stride_qo_t, stride_qo_h, tok,
                      cos, sin, offs_d, partner, sign, k_row, 0, slot, 1.0,
                      HQ, HEAD_DIM, BLOCK_HQ, ROTATE, True, False, FP8)
    _rotate_heads(k_ptr, k_out_ptr, stride_k_t, stride_k_h, stride_ko_t, stride_ko_h, tok,
                  cos, sin, offs_d, partner, sign, k_row, stride_kc_h, slot, inv_k_scale,
                  HK, HEAD_DIM, BLOCK_HK, ROTATE, ROTATE, WRITE_KV, FP8)
    if WRITE_KV:
        _rotate_heads(v_ptr, v_ptr, stride_v_t, stride_v_h, 0, 0, tok, cos, sin, offs_d,
                      partner, sign, v_row, stride_vc_h, slot, inv_v_scale,
                      HK, HEAD_DIM, BLOCK_HK, False, False, True, FP8)


def _block_heads(num_heads: int, block_d: int) -> int:
    # about 4k elements per chunk: two fp32 (BLOCK_H, BLOCK_D) tiles stay in registers
    return max(1, min(triton.next_power_of_2(num_heads), 4096 // block_d))


def rope_write_kv(
    q: torch.Tensor | None, k: torch.Tensor, v: torch.Tensor | None,
    positions: torch.Tensor | None, cos_sin_cache: torch.Tensor | None,
    k_cache: torch.Tensor | None, v_cache: torch.Tensor | None,
    slot_mapping: torch.Tensor | None, k_scale: float = 1.0, v_scale: float = 1.0,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """q (T, Hq, D) | None, k/v (T, Hk, D); rotate when ``positions`` is given, write the
    caches (num_blocks, PAGE, Hk, D) when ``k_cache`` is given. Returns (q_rot, k_rot), each
    None when not rotated. Inputs are validated by the ops layer; last dims are contiguous."""
    T, Hk, D = k.shape
    rotate = positions is not None
    write = k_cache is not None
    q_out = torch.empty(q.shape, device=q.device, dtype=q.dtype) if rotate and q is not None \
        else None
    k_out = torch.empty(k.shape, device=k.device, dtype=k.dtype) if rotate else None
    if T == 0:
        return q_out, k_out
    block_d = triton.next_power_of_2(D)
    Hq = q.shape[1] if q is not None else 1
    dummy = k
    qq, qo = (q, q_out) if q is not None and rotate else (dummy, dummy)
    ko = k_out if rotate else dummy
    vv = v if v is not None else dummy
    kc, vc = (k_cache, v_cache) if write else (dummy[:1].unsqueeze(0),) * 2  # (1, 1, Hk, D)
    cs = cos_sin_cache if rotate else dummy
    fp8 = write and k_cache.dtype == torch.float8_e4m3fn
    _rope_write_kv_kernel[(T,)](
        qq, k, vv, positions if rotate else slot_mapping, cs, qo, ko, kc, vc,
        slot_mapping if write else positions,
        qq.stride(0), qq.stride(1), k.stride(0), k.stride(1), vv.stride(0), vv.stride(1),
        qo.stride(0), qo.stride(1), ko.stride(0), ko.stride(1), cs.stride(0),
        kc.stride(0), kc.stride(1), kc.stride(2), vc.stride(0), vc.stride(1), vc.stride(2),
        1.0 / k_scale, 1.0 / v_scale,
        HQ=Hq, HK=Hk, HEAD_DIM=D, BLOCK_D=block_d, BLOCK_HQ=_block_heads(Hq, block_d),
        BLOCK_HK=_block_heads(Hk, block_d), PAGE=kc.shape[1],
        HAS_Q=q is not None and rotate, ROTATE=rotate, WRITE_KV=write, FP8=fp8,
        num_warps=4 if block_d >= 128 else 2,
    )
    return q_out, k_out
