"""SwiGLU: silu(gate) * up on a fused gate_up projection."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def silu_and_mul_reference(x: torch.Tensor) -> torch.Tensor:
    """x: (..., 2*I) laid out as [gate | up] -> (..., I) = silu(gate) * up (fp32 math)."""
    gate, up = x.float().chunk(2, dim=-1)
    return (F.silu(gate) * up).to(x.dtype)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    return silu_and_mul_reference(x)
