"""Rotary position embeddings (rotate-half / NeoX layout, as in HF Llama), incl. llama3 scaling.

``apply_rope`` rotates q and k; ``rope_and_write_kv`` also writes the rotated k and v into the
paged KV cache in the same pass (one kernel instead of rope + scatter). CUDA tensors take
``tritium.kernels.rope``; CPU tensors the ``*_reference`` functions (the test oracle). Calls
that need autograd (grad enabled and q or k requiring grad) take the reference path: the
kernel has no backward.
"""

from __future__ import annotations

import math

import torch

from tritium.ops._dispatch import use_triton
from tritium.ops.paged_attention import (
    _scales,
    check_kv_write,
    write_kv_cache_reference,
)


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


def _needs_grad(*ts: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in ts)


def _check_rope(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor,
                cos_sin_cache: torch.Tensor) -> None:
    for name, x in (("q", q), ("k", k)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
            raise TypeError(f"{name} must be float16, bfloat16 or float32, got {x.dtype}")
        if x.dim() < 2:
            raise ValueError(f"{name} must be (..., heads, head_dim), got shape {tuple(x.shape)}")
        if x.device != q.device:
            raise ValueError(f"{name} is on {x.device} but q is on {q.device}")
    D = q.shape[-1]
    if k.shape[-1] != D or D % 2 != 0:
        raise ValueError(f"q and k need the same even head_dim, got {D} and {k.shape[-1]}")
    if q.shape[:-2] != k.shape[:-2]:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} disagree on leading dims")
    if not isinstance(positions, torch.Tensor) or positions.dtype not in (torch.int32,
                                                                           torch.int64):
        raise TypeError(f"positions must be an int32/int64 tensor, got {positions!r:.60}")
    if tuple(positions.shape) != tuple(q.shape[:-2]):
        raise ValueError(f"positions shape {tuple(positions.shape)} must equal q's leading dims "
                         f"{tuple(q.shape[:-2])}")
    if cos_sin_cache.dim() != 2 or cos_sin_cache.shape[1] != D:
        raise ValueError(f"cos_sin_cache must be (max_positions, {D}), got "
                         f"{tuple(cos_sin_cache.shape)}")
    if cos_sin_cache.dtype != torch.float32:
        raise TypeError(f"cos_sin_cache must be float32, got {cos_sin_cache.dtype}")
    if positions.device != q.device or cos_sin_cache.device != q.device:
        raise ValueError(f"positions ({positions.device}) and cos_sin_cache "
                         f"({cos_sin_cache.device}) must be on q's device {q.device}")


def _rows(x: torch.Tensor) -> torch.Tensor:
    """(..., H, D) -> (T, H, D) with a unit-stride last dim (a view when strides allow)."""
    x = x.reshape(-1, *x.shape[-2:])
    return x if x.stride(-1) == 1 else x.contiguous()


def apply_rope(
    q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos_sin_cache: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q (..., Hq, D) and k (..., Hk, D) by ``positions`` (...); returns new tensors
    (inputs untouched). cos_sin_cache: (max_positions, D) fp32 = [cos | sin]."""
    _check_rope(q, k, positions, cos_sin_cache)
    if not use_triton(q) or _needs_grad(q, k):
        return apply_rope_reference(q, k, positions, cos_sin_cache)
    from tritium.kernels.rope import rope_write_kv

    q3, k3 = _rows(q), _rows(k)
    q_rot, k_rot = rope_write_kv(q3, k3, None, positions.reshape(-1),
                                 cos_sin_cache.contiguous(), None, None, None)
    return q_rot.view(q.shape), k_rot.view(k.shape)


def rope_and_write_kv_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
    cos_sin_cache: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
    slot_mapping: torch.Tensor, k_scale: float | None = None, v_scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """apply_rope_reference, then write_kv_cache_reference of (k_rot, v)."""
    q_rot, k_rot = apply_rope_reference(q, k, positions, cos_sin_cache)
    write_kv_cache_reference(k_rot, v, k_cache, v_cache, slot_mapping, k_scale, v_scale)
    return q_rot, k_rot


def rope_and_write_kv(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
    cos_sin_cache: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
    slot_mapping: torch.Tensor, k_scale: float | None = None, v_scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused RoPE + paged K/V write for packed tokens: q (T, Hq, D), k/v (T, Hk, D),
    positions/slot_mapping (T,). Writes rotated k and v into the caches (num_blocks,
    block_size, Hk, D) at ``slot_mapping`` (negative slots skipped; fp8 caches store
    saturate(x / scale)) and returns (q_rot, k_rot)."""
    _check_rope(q, k, positions, cos_sin_cache)
    if q.dim() != 3 or v.shape != k.shape:
        raise ValueError(f"rope_and_write_kv takes packed q (T, Hq, D), k = v (T, Hk, D); got "
                         f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    check_kv_write(k, v, k_cache, v_cache, slot_mapping)
    ks, vs = _scales(k_cache, k_scale, v_scale)
    if not use_triton(q) or _needs_grad(q, k, v):
        return rope_and_write_kv_reference(q, k, v, positions, cos_sin_cache, k_cache, v_cache,
                                           slot_mapping, ks, vs)
    from tritium.kernels.rope import rope_write_kv

    return rope_write_kv(_rows(q), _rows(k), _rows(v), positions, cos_sin_cache.contiguous(),
                         k_cache, v_cache, slot_mapping, ks, vs)
