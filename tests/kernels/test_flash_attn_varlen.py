"""Variable-length packed batches (cu_seqlens) through the kernels (Triton interpreter),
forward and backward, against the per-sequence fp32 reference."""

from __future__ import annotations

import pytest
import torch
from flash_attn_helpers import FWD_TOL, assert_close, check_fwd_bwd, rand, varlen_reference

import tritium


def cu(lengths):
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)


# (q lengths, k lengths, Hq, Hk, D): empty sequences on either side, length 1, partial tiles,
# Sq != Sk per sequence, GQA 4:1 and 9:3.
CASES = [
    ([17, 0, 113, 1], [17, 5, 60, 0], 4, 1, 32),
    ([1, 33, 7], [40, 1, 7], 9, 3, 16),
    ([0], [0], 2, 2, 32),
]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_varlen_fwd_bwd(case, causal):
    torch.manual_seed(0)
    lq, lk, Hq, Hk, D = case
    q, k, v = rand(sum(lq), Hq, D), rand(sum(lk), Hk, D), rand(sum(lk), Hk, D)
    cq, ck = cu(lq), cu(lk)
    extra = (cq, ck, max(lq), max(lk))
    check_fwd_bwd(tritium.flash_attn_varlen_func, varlen_reference, q, k, v, torch.float16,
                  extra=extra, causal=causal, ref_kw=dict(cu_seqlens_q=cq, cu_seqlens_k=ck,
                                                          causal=causal))


def test_varlen_window_softcap_lse_grad():
    torch.manual_seed(1)
    lq, lk = [30, 9, 50], [41, 9, 20]
    q, k, v = rand(sum(lq), 4, 32, scale=2.0), rand(sum(lk), 2, 32, scale=2.0), \
        rand(sum(lk), 2, 32)
    cq, ck = cu(lq), cu(lk)
    kw = dict(causal=True, window_size=(11, -1), softcap=5.0, softmax_scale=0.2)
    check_fwd_bwd(tritium.flash_attn_varlen_func, varlen_reference, q, k, v, torch.float16,
                  extra=(cq, ck, 50, 41), dlse=True,
                  ref_kw=dict(cu_seqlens_q=cq, cu_seqlens_k=ck, **kw), **kw)


def test_varlen_equals_padded_batch():
    """Packing must not change a sequence's answer: compare with flash_attn_func per sequence."""
    torch.manual_seed(2)
    lengths = [23, 64, 5]
    q, k, v = (rand(sum(lengths), 2, 32, requires_grad=False) for _ in range(3))
    c = cu(lengths)
    out = tritium.flash_attn_varlen_func(q, k, v, c, c, 64, 64, causal=True)
    for i in range(len(lengths)):
        s = slice(int(c[i]), int(c[i + 1]))
        want = tritium.flash_attn_func(q[s][None], k[s][None], v[s][None], causal=True)[0]
        assert_close(f"seq{i}", out[s], want, FWD_TOL[torch.float16])


def test_max_seqlen_larger_than_needed():
    """A generous max_seqlen only launches idle programs; results are unchanged."""
    torch.manual_seed(3)
    q, k, v = (rand(20, 2, 32, requires_grad=False) for _ in range(3))
    c = cu([12, 8])
    a = tritium.flash_attn_varlen_func(q, k, v, c, c, 12, 12, causal=True)
    b = tritium.flash_attn_varlen_func(q, k, v, c, c, 100, 100, causal=True)
    assert torch.equal(a, b)
