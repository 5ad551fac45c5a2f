"""SwiGLU: silu(gate) * up on a fused gate_up projection.

CUDA tensors take ``tritium.kernels.activation``; CPU tensors ``silu_and_mul_reference`` (the
test oracle). Calls that need autograd take the reference path: the kernel has no backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tritium.ops._dispatch import use_triton


def silu_and_mul_reference(x: torch.Tensor) -> torch.Tensor:
    """x: (..., 2*I) laid out as [gate | up] -> (..., I) = silu(gate) * up (fp32 math)."""
    gate, up = x.float().chunk(2, dim=-1)
    return (F.silu(gate) * up).to(x.dtype)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """x (..., 2*I) = [gate | up] -> (..., I) = silu(gate) * up, in x.dtype."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"x must be float16, bfloat16 or float32, got {x.dtype}")
    if x.dim() < 1 or x.shape[-1] % 2 != 0:
        raise ValueError(f"x's last dim must be even ([gate | up]), got shape {tuple(x.shape)}")
    if not use_triton(x) or (torch.is_grad_enabled() and x.requires_grad) or x.numel() == 0:
        return silu_and_mul_reference(x)
    from tritium.kernels.activation import silu_and_mul_fwd

    x2 = x.reshape(-1, x.shape[-1])
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    return silu_and_mul_fwd(x2).view(*x.shape[:-1], x.shape[-1] // 2)
