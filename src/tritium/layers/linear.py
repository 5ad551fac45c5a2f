"""Linear layers. One class today (dense ``y = x W^T + b``); quantized variants will sit here
behind the same ``forward``, so model code never calls ``F.linear`` itself."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# On the CPU, fp32 products with at most this many rows take the transposed form (linear()).
CPU_FEW_ROWS = 128


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, with a faster form for few fp32 rows on the CPU.

    There (MKL, 2 threads, SmolLM2's layer shapes; docs/perf-notes.md "CPU engine: few-row
    products and malloc") ``x @ W^T`` with 1-128 rows is slower than the transposed product
    ``W @ x^T``: 1.5-2.4x at 2-8 rows (one row, a gemv, slower still), 1.05-1.8x at 9-128 rows
    once the row count is padded to a multiple of 8 (MKL's kernels block the small side by 8;
    unpadded odd counts are often slower than F.linear). So those calls compute
    ``(W @ x^T)^T`` on zero-padded rows: one row padded to two, 9-128 rows to a multiple of 8.
    The same product summed in another order: equal to F.linear to rounding, not bit for bit.
    Decode steps are made of these products.
    """
    if x.device.type != "cpu" or x.dtype != torch.float32 or weight.dtype != torch.float32:
        return F.linear(x, weight, bias)  # GPU and half precision: nothing else to look at
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    if not 0 < rows <= CPU_FEW_ROWS or weight.dim() != 2:
        return F.linear(x, weight, bias)
    x2 = x.reshape(rows, x.shape[-1])
    pad = 1 if rows == 1 else (-rows % 8 if rows > 8 else 0)
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
