"""FlashAttention forward kernel (Triton interpreter) against the fp32 reference."""

from __future__ import annotations

import pytest
import torch
from flash_attn_helpers import FWD_TOL, assert_close, rand, reference

import tritium
from tritium.kernels.flash_attn import flash_attn_fwd

# (B, Sq, Sk, Hq, Hk, D): odd lengths, partial tiles, Sq != Sk both ways, GQA 4:1 and 9:3.
SHAPES = [
    (1, 1, 1, 1, 1, 32),
    (2, 17, 17, 2, 2, 32),
    (1, 113, 113, 4, 1, 64),
    (1, 17, 203, 9, 3, 32),
    (1, 255, 113, 2, 1, 16),
]


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_matches_reference(shape, causal, dtype):
    torch.manual_seed(0)
    B, Sq, Sk, Hq, Hk, D = shape
    q, k, v = rand(B, Sq, Hq, D, dtype=dtype), rand(B, Sk, Hk, D, dtype=dtype), \
        rand(B, Sk, Hk, D, dtype=dtype)
    out, lse = tritium.flash_attn_func(q, k, v, causal=causal, return_lse=True)
    ref_out, ref_lse = reference(q.float(), k.float(), v.float(), causal, return_lse=True)
    assert out.dtype == dtype and lse.dtype == torch.float32
    assert lse.shape == (B, Hq, Sq)
    assert_close("out", out, ref_out, FWD_TOL[dtype])
    assert_close("lse", lse, ref_lse, FWD_TOL[torch.float32])


@pytest.mark.parametrize("D", [8, 96, 128, 256])
def test_head_dims(D):
    """96 exercises the padded head dim (tiles of 128 with masked loads); 8 the smallest."""
    torch.manual_seed(1)
    q, k, v = rand(1, 33, 2, D), rand(1, 40, 1, D), rand(1, 40, 1, D)
    out, lse = tritium.flash_attn_func(q, k, v, causal=True, return_lse=True)
    ref_out, ref_lse = reference(q.float(), k.float(), v.float(), True, return_lse=True)
    assert_close("out", out, ref_out, FWD_TOL[torch.float16])
    assert_close("lse", lse, ref_lse, FWD_TOL[torch.float32])


@pytest.mark.parametrize("window,causal", [
    ((5, 3), False), ((0, 0), False), ((7, -1), True), ((-1, 4), False), ((20, 40), False),
    ((3, -1), False),
])
@pytest.mark.parametrize("Sq,Sk", [(40, 70), (70, 40)])
def test_sliding_window(window, causal, Sq, Sk):
    torch.manual_seed(2)
    q, k, v = rand(1, Sq, 4, 32), rand(1, Sk, 2, 32), rand(1, Sk, 2, 32)
    out, lse = tritium.flash_attn_func(q, k, v, causal=causal, window_size=window,
                                       return_lse=True)
    ref_out, ref_lse = reference(q.float(), k.float(), v.float(), causal, window_size=window,
                                 return_lse=True)
    assert_close("out", out, ref_out, FWD_TOL[torch.float16])
    assert_close("lse", lse, ref_lse, FWD_TOL[torch.float32])


def test_softcap_and_scale():
    torch.manual_seed(3)
    q, k, v = rand(2, 37, 3, 48, scale=3.0), rand(2, 29, 3, 48, scale=3.0), rand(2, 29, 3, 48)
    out, lse = tritium.flash_attn_func(q, k, v, softcap=4.0, softmax_scale=0.37, causal=True,
                                       return_lse=True)
    ref_out, ref_lse = reference(q.float(), k.float(), v.float(), True, 0.37, softcap=4.0,
                                 return_lse=True)
    assert_close("out", out, ref_out, FWD_TOL[torch.float16])
    assert_close("lse", lse, ref_lse, FWD_TOL[torch.float32])
    # the cap changes the answer on these large logits (so the test can fail)
    assert (out.float() - tritium.flash_attn_func(q, k, v, softmax_scale=0.37, causal=True)
            .float()).abs().max() > 0.05


def test_empty_rows_give_zero_and_minus_inf_lse():
    """Causal with Sq > Sk (bottom-right): the first Sq - Sk rows see no key."""
    q, k, v = rand(1, 50, 2, 32), rand(1, 20, 2, 32), rand(1, 20, 2, 32)
    out, lse = tritium.flash_attn_func(q, k, v, causal=True, return_lse=True)
    assert torch.all(out[:, :30] == 0)
    assert torch.all(lse[:, :, :30] == float("-inf"))
    assert torch.isfinite(lse[:, :, 30:]).all()


@pytest.mark.parametrize("config", [(32, 16, 4, 1), (16, 32, 4, 1), (64, 16, 4, 1)], ids=str)
@pytest.mark.parametrize("causal", [False, True])
def test_tile_shapes(config, causal):
    """Other (BLOCK_M, BLOCK_N) pairs than the interpreter default, incl. BM != BN."""
    torch.manual_seed(4)
    q, k, v = rand(1, 113, 2, 32), rand(1, 77, 1, 32), rand(1, 77, 1, 32)
    out, lse = flash_attn_fwd(q.detach(), k.detach(), v.detach(), softmax_scale=0.2,
                              causal=causal, window_left=30, config=config)
    ref_out, ref_lse = reference(q.float(), k.float(), v.float(), causal, 0.2,
                                 window_size=(30, None), return_lse=True)
    assert_close("out", out, ref_out, FWD_TOL[torch.float16])
    assert_close("lse", lse, ref_lse, FWD_TOL[torch.float32])


def test_strided_inputs():
    """Non-contiguous q/k/v (heads sliced out of a fused qkv, as the model does)."""
    torch.manual_seed(5)
    qkv = rand(2, 31, 4 + 2 + 2, 32, requires_grad=False)
    q, k, v = qkv[:, :, :4], qkv[:, :, 4:6], qkv[:, :, 6:]
    assert not q.is_contiguous()
    out = tritium.flash_attn_func(q, k, v, causal=True)
    ref_out = reference(q.float(), k.float(), v.float(), True)
    assert_close("out", out, ref_out, FWD_TOL[torch.float16])
