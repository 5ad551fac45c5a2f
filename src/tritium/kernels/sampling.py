"""The seeded Gumbel-max draw in one pass over the logits.

For row i with 32-bit key k_i (a hash of its seed and step, computed by the caller) and column
j with token id t_ij (j itself, or a candidate id), the kernel computes the same counter-based
noise as ``engine.seeded_noise.random_bits`` / ``exponential_from_bits``:

    bits = mix(mix(t ^ C1) ^ k),  u = (bits + 0.5) / 2**32,  E = -log1p(-u),
    out_i = argmax_j (z_ij - log E_ij)   (lowest j among equal maxima)

One program per row walks the row in tiles and keeps a running (max, argmax): the logits are
read once, no (N, V) noise tensor is ever written (the PyTorch path makes ~19 passes over one).
``log1p(-u)`` is evaluated as ``-(u + u^2/2 + u^3/3)`` below u = 1e-3 (relative error < 3e-10)
and ``log(1 - u)`` above, which keeps E's full 32-bit resolution near zero without libdevice.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _mix32(x):
    # x: uint32 tensor; products wrap mod 2**32 as the int64-and-mask reference does.
    # The constants are engine/seeded_noise.py's _MIX_A, _MIX_B (tests compare the draws).
    x = x ^ (x >> 16)
    x = x * 0x21F0AAAD
    x = x ^ (x >> 15)
    x = x * 0x735A2D97
    x = x ^ (x >> 15)
    return x


@triton.jit
def _gumbel_argmax_kernel(
    z_ptr, stride_z, key_ptr, ids_ptr, stride_ids, out_ptr, n_cols,
    HAS_IDS: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    key = tl.load(key_ptr + row).to(tl.uint32)
    best = tl.full([], float("-inf"), tl.float32)
    best_idx = tl.full([], 0, tl.int32)
    for start in range(0, n_cols, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mask = cols < n_cols
        z = tl.load(z_ptr + row * stride_z + cols, mask=mask, other=float("-inf"))
        if HAS_IDS:
            tok = tl.load(ids_ptr + row * stride_ids + cols, mask=mask, other=0).to(tl.uint32)
        else:
            tok = cols.to(tl.uint32)
        bits = _mix32(_mix32(tok ^ 0x85A308D3) ^ key)  # 0x85A308D3: seeded_noise's _KEY_C1
        u = (bits.to(tl.float32) + 0.5) * 2.3283064365386963e-10  # 2**-32
        u = tl.minimum(u, 0.99999994039535522)  # 1 - 2**-24
        e = tl.where(u < 1e-3, u + u * u * (0.5 + u * 0.3333333333333333), -tl.log(1.0 - u))
        score = tl.where(mask, z.to(tl.float32) - tl.log(e), float("-inf"))
        tile_best = tl.max(score, 0)
        tile_idx = tl.argmax(score, 0)
        better = tile_best > best
        best_idx = tl.where(better, start + tile_idx, best_idx)
        best = tl.where(better, tile_best, best)
    tl.store(out_ptr + row, best_idx.to(tl.int64))


def gumbel_argmax(
    z: torch.Tensor, keys: torch.Tensor, token_ids: torch.Tensor | None = None,
    block: int | None = None,
) -> torch.Tensor:
    """Column of each row's seeded Gumbel-max winner.

    Args:
        z: (N, C) float32 logits (already tempered and filtered; removed tokens at -inf), unit
            last stride.
        keys: (N,) int64 row keys in [0, 2**32) (``engine.seeded_noise.row_keys``).
        token_ids: (N, C) int64 ids hashed for each column, or None for ids 0..C-1.
    Returns:
        (N,) int64 column indices.
    """
    n, c = z.shape
    out = torch.empty(n, dtype=torch.int64, device=z.device)
    if n == 0:
        return out
    block = block or min(4096, triton.next_power_of_2(max(c, 16)))
    ids = token_ids if token_ids is not None else z  # unused pointer when HAS_IDS is False
    _gumbel_argmax_kernel[(n,)](
        z, z.stride(0), keys, ids, ids.stride(0), out, c,
        HAS_IDS=token_ids is not None, BLOCK=block, num_warps=8 if block >= 2048 else 4,
    )
    return out
