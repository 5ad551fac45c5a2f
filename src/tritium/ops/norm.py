"""RMSNorm, optionally fused with the residual add that precedes it in every decoder layer.

CUDA tensors take ``tritium.kernels.rmsnorm`` (one pass: add, store residual, normalise);
CPU tensors ``rms_norm_reference`` (the test oracle). Calls that need autograd (grad enabled
and an input requiring grad) take the reference path: the kernel has no backward.
"""

from __future__ import annotations

import torch

from tritium.ops._dispatch import use_triton

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


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


def _check(x: torch.Tensor, weight: torch.Tensor, eps: float,
           residual: torch.Tensor | None) -> None:
    if not isinstance(x, torch.Tensor) or not isinstance(weight, torch.Tensor):
        raise TypeError("x and weight must be torch.Tensors")
    if x.dtype not in _FLOAT_DTYPES or weight.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"x ({x.dtype}) and weight ({weight.dtype}) must be float16, bfloat16 "
                        "or float32")
    if x.dim() < 1 or weight.shape != (x.shape[-1],):
        raise ValueError(f"weight must be ({x.shape[-1] if x.dim() else '?'},) for x of shape "
                         f"{tuple(x.shape)}, got {tuple(weight.shape)}")
    if weight.device != x.device:
        raise ValueError(f"weight is on {weight.device} but x is on {x.device}")
    if not (isinstance(eps, (int, float)) and eps >= 0):
        raise ValueError(f"eps must be a non-negative float, got {eps!r}")
    if residual is not None:
        if not isinstance(residual, torch.Tensor):
            raise TypeError(f"residual must be a torch.Tensor, got {type(residual).__name__}")
        if residual.shape != x.shape or residual.dtype != x.dtype:
            raise ValueError(f"residual {tuple(residual.shape)} {residual.dtype} must match x "
                             f"{tuple(x.shape)} {x.dtype}")
        if residual.device != x.device:
            raise ValueError(f"residual is on {residual.device} but x is on {x.device}")


def _rows(x: torch.Tensor) -> torch.Tensor:
    x = x.reshape(-1, x.shape[-1])
    return x if x.stride(-1) == 1 else x.contiguous()


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm over the last dim of ``x`` (..., D); see ``rms_norm_reference`` for the math.

    Returns y (..., D), or (y, x + residual) when ``residual`` is given.
    """
    _check(x, weight, eps, residual)
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, weight, residual))
    if not use_triton(x) or needs_grad or x.numel() == 0:
        return rms_norm_reference(x, weight, eps, residual)
    from tritium.kernels.rmsnorm import rms_norm_fwd

    y, new_res = rms_norm_fwd(_rows(x), weight.contiguous(), float(eps),
                              _rows(residual) if residual is not None else None)
    y = y.view(x.shape)
    return (y, new_res.view(x.shape)) if residual is not None else y
