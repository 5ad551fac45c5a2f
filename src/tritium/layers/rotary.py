"""Rotary position embedding: owns the (max_positions, head_dim) fp32 cos/sin table."""

from __future__ import annotations

import torch
from torch import nn

from tritium.ops.rotary import apply_rope, rope_and_write_kv, rope_cos_sin_cache


class RotaryEmbedding(nn.Module):
    """Rotates q and k by their positions (NeoX / HF-Llama rotate-half layout).

    The table ``cos_sin_cache`` (max_positions, head_dim) = [cos(p*f) | sin(p*f)] stays fp32 on
    the module's device whatever dtype the model is cast to: casting it to bf16 would lose the
    phase at large positions (bf16 has 8 mantissa bits), so ``_apply`` rebuilds it after every
    ``.to()``/``.cuda()``.
    """

    def __init__(
        self, head_dim: int, max_positions: int, theta: float, scaling: dict | None = None
    ) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.max_positions = max_positions
        self.theta = theta
        self.scaling = scaling
        self.register_buffer("cos_sin_cache", self._build(None), persistent=False)

    def _build(self, device: torch.device | None) -> torch.Tensor:
        return rope_cos_sin_cache(
            self.head_dim, self.max_positions, self.theta, self.scaling, device=device
        )

    def rebuild(self, device: torch.device | str | None = None) -> None:
        """Recompute the table on ``device`` (e.g. after the model was built on 'meta')."""
        self.cos_sin_cache = self._build(torch.device(device) if device is not None else None)

    def _apply(self, fn, recurse=True):  # noqa: ANN001 - torch's signature
        super()._apply(fn, recurse)
        if self.cos_sin_cache.device.type != "meta":
            self.cos_sin_cache = self._build(self.cos_sin_cache.device)
        return self

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """q: (..., Hq, D), k: (..., Hk, D), positions: (...) int -> rotated (q, k)."""
        return apply_rope(q, k, positions, self.cos_sin_cache)

    def rope_and_write_kv(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        positions: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        slot_mapping: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Packed q (T, Hq, D), k/v (T, Hk, D): rotate q and k, write rotated k and v into the
        paged caches at ``slot_mapping`` (one fused kernel on the GPU); returns (q_rot, k_rot)."""
        return rope_and_write_kv(
            q, k, v, positions, self.cos_sin_cache, k_cache, v_cache, slot_mapping
        )

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, max_positions={self.max_positions}, theta={self.theta}"
