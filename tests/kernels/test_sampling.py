"""The fused Gumbel-max kernel (kernels/sampling.py) against the PyTorch noise path, interpreted.

The kernel re-implements the sampler's 32-bit hash in uint32 Triton arithmetic and evaluates
-log1p(-u) differently (a series near zero), so the draws must be the same tokens as
``gumbel_noise(...).add_(z).argmax()``: a wrong constant, shift, sign or tile offset changes
almost every draw.
"""

from __future__ import annotations

import math

import pytest
import torch

from tritium.engine.seeded_noise import gumbel_argmax, gumbel_noise
from tritium.kernels.sampling import gumbel_argmax as gumbel_argmax_kernel


def _seeds(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    seeds = torch.randint(-(2**63), 2**63 - 1, (n,), generator=gen, dtype=torch.int64)
    steps = torch.randint(0, 5000, (n,), generator=gen, dtype=torch.int64)
    return seeds, steps


def _reference(z, seeds, steps, ids=None):
    noise = gumbel_noise(seeds, steps, z.shape[1] if ids is None else ids)
    return (noise + z).argmax(dim=-1)


@pytest.mark.parametrize("block", [128, 1024])
def test_full_vocab_draws_match_reference(block):
    gen = torch.Generator().manual_seed(0)
    n, v = 23, 1000  # 1000: a partial last tile at both block sizes
    z = torch.randn(n, v, generator=gen) * 3
    z[3, ::2] = -math.inf  # a filtered row
    seeds, steps = _seeds(n, gen)
    from tritium.engine.seeded_noise import row_keys

    got = gumbel_argmax_kernel(z, row_keys(seeds, steps), block=block)
    torch.testing.assert_close(got, _reference(z, seeds, steps), rtol=0, atol=0)
    assert got[3] % 2 == 1  # never a removed token


def test_flat_rows_are_decided_by_the_smallest_exponentials():
    # z = 0 everywhere: the winner is the token with the smallest E, i.e. u < 1e-3, where the
    # kernel uses its series for log1p: the draws still match the reference.
    gen = torch.Generator().manual_seed(1)
    z = torch.zeros(16, 5003)
    seeds, steps = _seeds(16, gen)
    torch.testing.assert_close(gumbel_argmax(z, seeds, steps), _reference(z, seeds, steps),
                               rtol=0, atol=0)


def test_candidate_ids_are_hashed_not_columns():
    gen = torch.Generator().manual_seed(2)
    n, k, v = 9, 37, 50_000
    ids = torch.stack([torch.randperm(v, generator=gen)[:k].sort().values for _ in range(n)])
    z = torch.randn(n, k, generator=gen)
    seeds, steps = _seeds(n, gen)
    got = gumbel_argmax(z, seeds, steps, ids)
    torch.testing.assert_close(got, _reference(z, seeds, steps, ids), rtol=0, atol=0)
    # hashing column indices instead of ids would draw differently in most rows
    assert not torch.equal(got, _reference(z, seeds, steps))


def test_one_live_token_and_empty_batch():
    z = torch.full((2, 300), -math.inf)
    z[0, 257] = 0.0
    z[1, 0] = 5.0
    seeds = torch.tensor([1, 2])
    steps = torch.tensor([0, 0])
    assert gumbel_argmax(z, seeds, steps).tolist() == [257, 0]
    empty = gumbel_argmax(torch.zeros(0, 10), seeds[:0], steps[:0])
    assert empty.shape == (0,) and empty.dtype == torch.int64


def test_draws_follow_the_softmax():
    # 500 rows with different seeds over the same 3-token distribution (the interpreter runs
    # one program per row, so this is kept small; the equality tests above carry the rest)
    n = 500
    z = torch.log(torch.tensor([0.6, 0.3, 0.1])).expand(n, 3).contiguous()
    seeds = torch.arange(n, dtype=torch.int64) * 7919
    steps = torch.zeros(n, dtype=torch.int64)
    counts = torch.bincount(gumbel_argmax(z, seeds, steps), minlength=3).double()
    expected = torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64) * n
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 13.8, (counts, chi2)  # 99.9% quantile of chi-square with 2 dof
