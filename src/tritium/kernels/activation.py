"""SwiGLU on a fused gate_up projection: out = silu(gate) * up, fp32 math.

x (R, 2I) = [gate | up] -> out (R, I). Program (row, column block); silu(g) = g * sigmoid(g).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _silu_and_mul_kernel(x_ptr, out_ptr, stride_x, stride_out, n_cols, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n_cols
    gate = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * stride_x + n_cols + cols, mask=mask, other=0.0).to(tl.float32)
    out = gate * tl.sigmoid(gate) * up
    tl.store(out_ptr + row * stride_out + cols, out.to(out_ptr.dtype.element_ty), mask=mask)


def silu_and_mul_fwd(x: torch.Tensor, block: int | None = None) -> torch.Tensor:
    """x (R, 2I) with unit last stride -> (R, I) in x.dtype."""
    R, two_i = x.shape
    n = two_i // 2
    out = torch.empty((R, n), device=x.device, dtype=x.dtype)
    if R == 0 or n == 0:
        return out
    block = block or min(1024, triton.next_power_of_2(n))
    _silu_and_mul_kernel[(R, triton.cdiv(n, block))](
        x, out, x.stride(0), out.stride(0), n, BLOCK=block, num_warps=4 if block >= 512 else 2
    )
    return out
