"""RMSNorm layer over ``tritium.ops.norm.rms_norm`` (optionally fused with the residual add)."""

from __future__ import annotations

import torch
from torch import nn

from tritium.ops.norm import rms_norm


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight over the last dim (size ``hidden_size``).

    ``forward(x, residual)`` with a residual first adds it (x + residual) and returns
    ``(y, x + residual)``: the decoder layers keep the residual stream this way so that the add
    and the norm are one fused kernel on the GPU.
    """

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size))

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        return rms_norm(x, self.weight, self.eps, residual)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"
