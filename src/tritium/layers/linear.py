"""Linear layers. One class today (dense ``y = x W^T + b``); quantized variants will sit here
behind the same ``forward``, so model code never calls ``F.linear`` itself."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Linear(nn.Module):
    """y (..., out_features) = x (..., in_features) @ weight.T (+ bias).

    Weight layout (out_features, in_features), as ``nn.Linear`` and Hugging Face checkpoints.
    Fused projections (qkv, gate_up) are plain ``Linear`` layers whose rows are the
    concatenation of the separate projections' rows; see ``models.llama`` for the row order.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = False) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Small normal init (HF's initializer_range 0.02): only random test models use it.
        if self.weight.device.type == "meta":
            return
        nn.init.normal_(self.weight, std=0.02)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, bias={self.bias is not None}"
