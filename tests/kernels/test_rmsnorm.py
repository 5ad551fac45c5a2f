"""Fused residual-add + RMSNorm kernel against the fp32 reference."""

from __future__ import annotations

import pytest
import torch

from tritium.ops.norm import rms_norm, rms_norm_reference

# (dtype, atol, rtol): the kernel and the reference both compute in fp32 and round once, so
# only the order of the sum of squares differs (a few fp32 ulps before the final rounding).
CASES = [(torch.float32, 1e-5, 1e-5), (torch.float16, 2e-3, 2e-3), (torch.bfloat16, 2e-2, 1e-2)]


@pytest.mark.parametrize("dtype,atol,rtol", CASES)
@pytest.mark.parametrize("shape", [(3, 14, 123), (3, 576), (1, 1, 17)])
def test_rms_norm(dtype, atol, rtol, shape):
    torch.manual_seed(0)
    x = (torch.randn(shape) * 3).to(dtype)
    w = torch.randn(shape[-1]).to(dtype)
    torch.testing.assert_close(rms_norm(x, w, 1e-6), rms_norm_reference(x, w, 1e-6),
                               atol=atol, rtol=rtol)


@pytest.mark.parametrize("dtype,atol,rtol", CASES)
def test_rms_norm_fused_residual(dtype, atol, rtol):
    torch.manual_seed(1)
    base = torch.randn(5, 7, 2 * 96).to(dtype)
    x = base[..., :96]  # strided rows
    res = torch.randn(5, 7, 96).to(dtype)
    w = torch.rand(96, dtype=torch.float32) + 0.5  # fp32 weight with a 16-bit input
    y, new_res = rms_norm(x, w, 1e-5, res)
    y_ref, res_ref = rms_norm_reference(x, w, 1e-5, res)
    assert y.dtype == dtype and new_res.dtype == dtype
    # one rounding of x + res; bf16 gets one ulp: the interpreter's fp32 -> bf16 cast truncates
    ulp = 2**-7 if dtype == torch.bfloat16 else 0.0
    torch.testing.assert_close(new_res, res_ref, atol=ulp * 8, rtol=ulp)
    torch.testing.assert_close(y, y_ref, atol=atol, rtol=rtol)
    assert torch.equal(res, res.clone())  # inputs untouched
