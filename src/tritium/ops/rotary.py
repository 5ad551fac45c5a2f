"""Rotary position embeddings (rotate-half / NeoX layout, as in HF Llama), incl. llama3 scaling."""

from __future__ import annotations

import math

import torch


def rope_inv_freq(head_dim: int, theta: float, scaling: dict | None = None) -> torch.Tensor:
    """Inverse frequencies (head_dim // 2,), fp32, with optional "llama3" / "linear" scaling."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    kind = (scaling or {}).get("rope_type", (scaling or {}).get("type"))
    if kind in (None, "default"):
        pass
    elif kind == "linear":
        inv_freq = inv_freq / float(scaling["factor"])
    elif kind == "llama3":
        factor = float(scaling["factor"])
        low = float(scaling.get("low_freq_factor", 1.0))
        high = float(scaling.get("high_freq_factor", 4.0))
        old_len = float(scaling["original_max_position_embeddings"])
        low_wavelen, high_wavelen = old_len / low, old_len / high
        wavelen = 2 * math.pi / inv_freq
        smooth = (old_len / wavelen - low) / (high - low)
        scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        mid = (wavelen <= low_wavelen) & (wavelen >= high_wavelen)
        scaled = torch.where(mid, (1 - smooth) * inv_freq / factor + smooth * inv_freq, scaled)
        inv_freq = scaled
    else:
        raise ValueError(f"unsupported rope scaling type {kind!r}")
    return inv_freq.float()


def rope_cos_sin_cache(
    head_dim: int, max_positions: int, theta: float, scaling: dict | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """(max_positions, head_dim) fp32 table: [cos(pos*f) | sin(pos*f)] for the head_dim/2 freqs."""
    inv_freq = rope_inv_freq(head_dim, theta, scaling).to(device)
    pos = torch.arange(max_positions, dtype=torch.float32, device=device)
    freqs = torch.outer(pos, inv_freq)
    return torch.cat([freqs.cos(), freqs.sin()], dim=-1)


def apply_rope_reference(
    q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos_sin_cache: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """q: (..., Hq, D), k: (..., Hk, D), positions: (...) int -> rotated (q, k), fp32 math."""
    half = q.shape[-1] // 2
    cs = cos_sin_cache[positions.long()]  # (..., D)
    cos = cs[..., :half].unsqueeze(-2)
    sin = cs[..., half:].unsqueeze(-2)

    def rot(x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        x1, x2 = xf[..., :half], xf[..., half:]
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)

    return rot(q), rot(k)


def apply_rope(
    q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos_sin_cache: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q and k by their positions; returns new tensors (inputs untouched)."""
    return apply_rope_reference(q, k, positions, cos_sin_cache)
