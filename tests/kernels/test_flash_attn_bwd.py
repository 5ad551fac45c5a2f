"""FlashAttention backward kernels (Triton interpreter): dQ, dK, dV (and through lse) against
autograd of the fp32 reference."""

from __future__ import annotations

import pytest
import torch
from flash_attn_helpers import BWD_TOL, assert_close, check_fwd_bwd, rand, reference

import tritium
from tritium.kernels.flash_attn import flash_attn_fwd
from tritium.kernels.flash_attn_bwd import flash_attn_bwd

SHAPES = [  # (B, Sq, Sk, Hq, Hk, D)
    (1, 1, 17, 1, 1, 32),
    (2, 17, 17, 2, 2, 32),
    (1, 113, 113, 4, 1, 32),  # GQA 4:1
    (1, 45, 203, 9, 3, 16),  # GQA 9:3 (SmolLM2), Sq < Sk
    (1, 203, 45, 2, 1, 16),  # Sq > Sk: empty rows when causal
]


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_backward_matches_reference(shape, causal, dtype):
    torch.manual_seed(0)
    B, Sq, Sk, Hq, Hk, D = shape
    q, k, v = rand(B, Sq, Hq, D, dtype=dtype), rand(B, Sk, Hk, D, dtype=dtype), \
        rand(B, Sk, Hk, D, dtype=dtype)
    check_fwd_bwd(tritium.flash_attn_func, reference, q, k, v, dtype, causal=causal)


@pytest.mark.parametrize("kw", [
    dict(window_size=(6, 2)),
    dict(window_size=(9, -1), causal=True),
    dict(softcap=3.0, causal=True),
    dict(softmax_scale=0.05),
], ids=str)
def test_backward_features(kw):
    torch.manual_seed(1)
    q, k, v = rand(1, 41, 4, 32, scale=2.0), rand(1, 67, 2, 32, scale=2.0), rand(1, 67, 2, 32)
    check_fwd_bwd(tritium.flash_attn_func, reference, q, k, v, torch.float16, **kw)


@pytest.mark.parametrize("causal", [False, True])
def test_gradient_through_lse(causal):
    """lse is differentiable: d lse_i / d s_ij = P_ij folds into delta."""
    torch.manual_seed(2)
    q, k, v = rand(1, 37, 6, 32), rand(1, 29, 2, 32), rand(1, 29, 2, 32)
    check_fwd_bwd(tritium.flash_attn_func, reference, q, k, v, torch.float16, dlse=True,
                  causal=causal)


def test_head_dim_96():
    torch.manual_seed(3)
    q, k, v = rand(1, 33, 2, 96), rand(1, 21, 1, 96), rand(1, 21, 1, 96)
    check_fwd_bwd(tritium.flash_attn_func, reference, q, k, v, torch.float16, causal=True)


@pytest.mark.parametrize("config", [((32, 16, 4, 1), (16, 32, 4, 1)),
                                    ((16, 32, 4, 1), (32, 16, 4, 1))], ids=str)
def test_tile_shapes(config):
    """dK/dV and dQ kernels with BM != BN, each way round, under a sliding window."""
    torch.manual_seed(4)
    q, k, v = (rand(1, s, h, 32, requires_grad=False) for s, h in ((77, 4), (101, 2), (101, 2)))
    kw = dict(softmax_scale=0.3, causal=True, window_left=40)
    out, lse = flash_attn_fwd(q, k, v, **kw)
    dout = torch.randn_like(out)
    dq, dk, dv = flash_attn_bwd(dout, q, k, v, out, lse, config=config, **kw)
    leaves = [x.float().requires_grad_() for x in (q, k, v)]
    ref = reference(*leaves, True, 0.3, window_size=(40, None))
    ref.backward(dout.float())
    for name, got, want in zip("qkv", (dq, dk, dv), leaves):
        assert_close(f"d{name}", got, want.grad, BWD_TOL[torch.float16])


def test_deterministic():
    """No atomics: two backward passes give bitwise-equal gradients."""
    torch.manual_seed(5)
    q, k, v = rand(1, 70, 6, 32), rand(1, 70, 2, 32), rand(1, 70, 2, 32)
    grads = []
    for _ in range(2):
        for x in (q, k, v):
            x.grad = None
        tritium.flash_attn_func(q, k, v, causal=True, deterministic=True).float().sum().backward()
        grads.append([x.grad.clone() for x in (q, k, v)])
    for a, b in zip(*grads):
        assert torch.equal(a, b)
