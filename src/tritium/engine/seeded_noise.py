"""Counter-based random numbers for seeded sampling: a pure function of (seed, step, token).

The sampler (engine/sampler.py) draws each random row's token by an exponential race
(Gumbel-max) whose noise for token t is a 32-bit hash of (seed, step, t), computed with
vectorized integer ops on the device: a request's draw depends on its seed, step and logits
only, not on its row, the batch size or other requests. On CUDA the draw is one fused Triton
pass (kernels/sampling.py, same hash bit for bit); elsewhere the noise tensor below.
"""

from __future__ import annotations

import torch

from tritium.ops._dispatch import use_triton

__all__ = ["exponential_from_bits", "gumbel_argmax", "gumbel_noise", "random_bits", "row_keys"]

_M32 = 0xFFFFFFFF
# An xorshift-multiply 32-bit hash (lowbias32's shape; constants from Wellons' hash-prospector,
# bias ~0.11). Both multipliers are below 2**31, so products of 32-bit values stay below 2**63:
# int64 tensor arithmetic is exact, with the same result on every device.
_MIX_A = 0x21F0AAAD
_MIX_B = 0x735A2D97
_KEY_C0 = 0x243F6A88  # digits of pi: keep the (seed, step) chain apart from the token hash
_KEY_C1 = 0x85A308D3


def _mix32_(x: torch.Tensor) -> torch.Tensor:
    """Hash int64 values in [0, 2**32) in place (one scratch buffer)."""
    tmp = torch.empty_like(x)
    for shift, mult in ((16, _MIX_A), (15, _MIX_B), (15, None)):
        torch.bitwise_right_shift(x, shift, out=tmp)
        x.bitwise_xor_(tmp)
        if mult is not None:
            x.mul_(mult).bitwise_and_(_M32)
    return x


def random_bits(
    seeds: torch.Tensor, steps: torch.Tensor, token_ids: torch.Tensor | int
) -> torch.Tensor:
    """32 random bits per (row, token): a pure function of (seed, step, token id).

    A 32-bit row key is hashed out of (seed's low word, high word, step); each token id is
    hashed on its own; the bits are ``mix(mix(t ^ C1) ^ key)``. Two (seed, step) pairs share a
    stream only when their keys collide (2**-32): the draws stay valid, just not independent.

    Args:
        seeds: (N,) int64, any 64-bit pattern. steps: (N,) int64 >= 0.
        token_ids: (K,) ids shared by all rows, (N, K) ids per row, or an int V for arange(V).
    Returns:
        (N, K) int64 in [0, 2**32).
    """
    if isinstance(token_ids, int):
        token_ids = torch.arange(token_ids, device=seeds.device)
    key = row_keys(seeds, steps)
    tok = _mix32_((token_ids.long() & _M32) ^ _KEY_C1)  # (K,) or (N, K)
    tok = tok[None, :] if tok.dim() == 1 else tok
    return _mix32_(tok ^ key[:, None])  # (N, K)


def row_keys(seeds: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """(N,) int64 seeds and steps -> (N,) int64 32-bit row keys of :func:`random_bits`."""
    key = _mix32_((steps & _M32) ^ _KEY_C0)
    key = _mix32_(key.bitwise_xor_(seeds & _M32))
    return _mix32_(key.bitwise_xor_((seeds >> 32) & _M32))  # >> is arithmetic: mask it


def gumbel_argmax(
    z: torch.Tensor, seeds: torch.Tensor, steps: torch.Tensor,
    token_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Column of ``argmax(z + gumbel_noise(seeds, steps, ids))`` per row. (N, C) -> (N,) int64.

    ``token_ids`` (N, C): the ids hashed for each column (default: the column index). On CUDA
    (or under the interpreter) one fused Triton pass (kernels/sampling.py); otherwise the
    PyTorch noise tensor. Both give the same draws up to float rounding of the noise.
    """
    if use_triton(z):
        from tritium.kernels.sampling import gumbel_argmax as kernel

        ids = None if token_ids is None else token_ids.long().contiguous()
        return kernel(z.float().contiguous(), row_keys(seeds, steps), ids)
    ids = z.shape[1] if token_ids is None else token_ids
    return gumbel_noise(seeds, steps, ids).add_(z).argmax(dim=-1)


def exponential_from_bits(bits: torch.Tensor) -> torch.Tensor:
    """32 random bits -> ``E ~ Exp(1)`` in float32, same shape.

    ``u = (bits + 0.5) / 2**32`` in (0, 1) (capped below 1 in float32), ``E = -log1p(-u)``:
    small E, the ones that let unlikely tokens win, keep the full 32-bit resolution (the
    smallest is 2**-33); the largest is ~16.6, cutting off a tail of mass 2**-24.
    """
    u = bits.float().add_(0.5).mul_(2.0**-32)
    u.clamp_(max=1.0 - 2.0**-24)  # float32 rounding of bits near 2**32 would give 1.0
    return u.neg_().log1p_().neg_()


def gumbel_noise(
    seeds: torch.Tensor, steps: torch.Tensor, token_ids: torch.Tensor | int
) -> torch.Tensor:
    """``-log E``, ``E ~ Exp(1)`` (Gumbel noise) per (row, token); see :func:`random_bits`."""
    return exponential_from_bits(random_bits(seeds, steps, token_ids)).log_().neg_()
