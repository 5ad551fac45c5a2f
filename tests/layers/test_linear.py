"""layers.linear.linear: the CPU few-row form equals F.linear to fp32 rounding, in every shape."""

import pytest
import torch
import torch.nn.functional as F

from tritium.layers.linear import CPU_FEW_ROWS, Linear, linear


@pytest.mark.parametrize("lead", [(1,), (2,), (5,), (8,), (9,), (3, 5), (40,), (1, 1, 1), (0,),
                                  (CPU_FEW_ROWS,), (CPU_FEW_ROWS + 1,)])
@pytest.mark.parametrize("bias", [False, True])
def test_linear_matches_f_linear(lead, bias):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(37, 29, generator=g)
    b = torch.randn(37, generator=g) if bias else None
    x = torch.randn(*lead, 29, generator=g)
    y = linear(x, w, b)
    ref = F.linear(x.double(), w.double(), None if b is None else b.double())
    assert y.shape == (*lead, 37) and y.dtype == torch.float32 and y.is_contiguous()
    # fp32 sums of 29 products of N(0, 1) values, in another order than F.linear's
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-5)


def test_linear_other_inputs():
    """A non-contiguous fp32 view (few-row path) is still right; bf16 is left to F.linear."""
    w = torch.randn(16, 8)
    x = torch.randn(8, 3).t()  # (3, 8) non-contiguous view
    torch.testing.assert_close(linear(x, w), F.linear(x, w))
    xh, wh = x.bfloat16(), w.bfloat16()
    assert torch.equal(linear(xh, wh), F.linear(xh, wh))


def test_linear_grad_flows():
    lin = Linear(6, 4, bias=True)
    x = torch.randn(1, 6, requires_grad=True)
    lin(x).sum().backward()
    assert x.grad is not None and lin.weight.grad is not None and lin.bias.grad is not None
    torch.testing.assert_close(x.grad, lin.weight.detach().sum(0, keepdim=True))
    torch.testing.assert_close(lin.weight.grad, x.detach().expand(4, 6))
