"""RMSNorm fused with the residual add before it, one program per row, fp32 math.

    s = x + residual            (rounded to x.dtype: that is the new residual stream)
    y = s / sqrt(mean(s^2) + eps) * weight

One pass over the row: x and residual are read once, y and the new residual written once,
so the fused op moves 4 row-sized tensors instead of the 6 of "add" then "norm".
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rms_norm_kernel(
    x_ptr, res_ptr, w_ptr, y_ptr, res_out_ptr,
    stride_x, stride_res, stride_y, stride_res_out, n_cols, eps,
    BLOCK: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(res_ptr + row * stride_res + cols, mask=mask, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(x_ptr.dtype.element_ty)
        tl.store(res_out_ptr + row * stride_res_out + cols, x, mask=mask)
    xf = x.to(tl.float32)
    inv_rms = tl.math.rsqrt(tl.sum(xf * xf, 0) / n_cols + eps)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * stride_y + cols, (xf * inv_rms * w).to(y_ptr.dtype.element_ty),
             mask=mask)


def rms_norm_fwd(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """x, residual: (R, D) with unit last stride; weight (D,) -> (y (R, D), new residual | None)."""
    R, D = x.shape
    y = torch.empty((R, D), device=x.device, dtype=x.dtype)
    res_out = torch.empty_like(y) if residual is not None else None
    if R == 0:
        return y, res_out
    block = triton.next_power_of_2(D)
    res, ro = (residual, res_out) if residual is not None else (x, y)
    _rms_norm_kernel[(R,)](
        x, res, weight, y, ro, x.stride(0), res.stride(0), y.stride(0), ro.stride(0), D, eps,
        BLOCK=block, HAS_RESIDUAL=residual is not None,
        num_warps=min(16, max(1, block // 256)),
    )
    return y, res_out
