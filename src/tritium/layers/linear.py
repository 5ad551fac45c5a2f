"""Linear layers. One class today (dense ``y = x W^T + b``); quantized variants will sit here
behind the same ``forward``, so model code never calls ``F.linear`` itself."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# On the CPU, fp32 products with at most this many rows take the transposed form (linear()).
CPU_FEW_ROWS = 32


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, with a faster form for few fp32 rows on the CPU.

    There (MKL, 2 threads, SmolLM2's shapes; ``benchmarks/cpu_linear_rows.py``, figures in
    docs/benchmarks.md) ``x @ W^T`` with a few rows is slower than the transposed product
    ``W @ x^T``: 1.3-3.5x over the layer products at 1-4 rows (one row, a gemv, padded to two),
    1.05-1.2x at 8, and 1.0-6.7x for the 49k-row LM head up to 24 rows. From 9 rows the layer
    products are even to within the run-to-run spread (padded to a multiple of 8: MKL blocks
    the small side by 8, and odd counts lose), and from 64 rows the LM head is 5-11% slower,
    hence the threshold. Equal to F.linear to rounding (another summation order), not bit for
    bit.
    """
    if x.device.type != "cpu" or x.dtype != torch.float32 or weight.dtype != torch.float32:
        return F.linear(x, weight, bias)  # GPU and half precision: nothing else to look at
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    if not 0 < rows <= CPU_FEW_ROWS or weight.dim() != 2:
        return F.linear(x, weight, bias)
    x2 = x.reshape(rows, x.shape[-1])
    pad = 1 if rows == 1 else (-rows % 8 if rows > 8 else 0)  # 9-32 rows: a multiple of 8
    if pad:
        x2 = F.pad(x2, (0, 0, 0, pad))
    y = torch.mm(weight, x2.t()).t()[:rows].contiguous()
    if bias is not None:
        y = y + bias
    return y.reshape(*x.shape[:-1], weight.shape[0])


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
        return linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, bias={self.bias is not None}"
