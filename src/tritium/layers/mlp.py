"""Gated MLP (SwiGLU) with the gate and up projections fused into one matmul."""

from __future__ import annotations

import torch
from torch import nn

from tritium.layers.linear import Linear
from tritium.ops.activation import silu_and_mul


class GatedMLP(nn.Module):
    """down(silu(x W_gate^T) * (x W_up^T)).

    ``gate_up_proj.weight`` is (2 * intermediate, hidden) = [W_gate ; W_up] stacked by rows, so
    one matmul gives ``[gate | up]`` along the last dim, the layout ``silu_and_mul`` expects.
    """

    def __init__(self, hidden_size: int, intermediate_size: int, bias: bool = False) -> None:
        super().__init__()
        self.gate_up_proj = Linear(hidden_size, 2 * intermediate_size, bias=bias)
        self.down_proj = Linear(intermediate_size, hidden_size, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (..., hidden) -> (..., 2I) -> (..., I) -> (..., hidden)
        return self.down_proj(silu_and_mul(self.gate_up_proj(x)))
