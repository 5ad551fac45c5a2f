"""RMSNorm, optionally fused with the residual add that precedes it in every decoder layer.

Reference path only for now; the Triton kernel lands in ``tritium.kernels.rmsnorm``.
"""

from __future__ import annotations

import torch


def rms_norm_reference(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """y = x / sqrt(mean(x^2) + eps) * weight, computed in fp32, returned in x.dtype.

    With ``residual``: x <- x + residual first, and returns (y, x + residual) so the caller
    keeps the new residual stream.
    """
    if residual is not None:
        x = x + residual
        new_residual = x
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    y = (y * weight.float()).to(x.dtype)
    return (y, new_residual) if residual is not None else y


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm over the last dim of ``x`` (..., D); see ``rms_norm_reference`` for the math."""
    return rms_norm_reference(x, weight, eps, residual)
