"""SwiGLU kernel silu(gate) * up against the fp32 reference."""

from __future__ import annotations

import pytest
import torch

from tritium.ops.activation import silu_and_mul, silu_and_mul_reference

# fp32 math then one rounding in both paths; exp differs by an ulp or so (interpreter numpy
# vs torch), visible only in fp32.
CASES = [(torch.float32, 1e-6, 1e-5), (torch.float16, 1e-3, 1e-3), (torch.bfloat16, 8e-3, 8e-3)]


@pytest.mark.parametrize("dtype,atol,rtol", CASES)
@pytest.mark.parametrize("shape", [(3, 14, 2 * 123), (3, 2 * 1536), (1, 2)])
def test_silu_and_mul(dtype, atol, rtol, shape):
    torch.manual_seed(0)
    x = (torch.randn(shape) * 4).to(dtype)
    out = silu_and_mul(x)
    assert out.shape == (*shape[:-1], shape[-1] // 2) and out.dtype == dtype
    torch.testing.assert_close(out, silu_and_mul_reference(x), atol=atol, rtol=rtol)


def test_silu_and_mul_strided_input():
    x = torch.randn(4, 3, 2 * 40, dtype=torch.float16).transpose(0, 1)  # non-contiguous rows
    torch.testing.assert_close(silu_and_mul(x), silu_and_mul_reference(x), atol=1e-3, rtol=1e-3)
