"""FlashAttention backward kernels (Triton interpreter): dQ, dK, dV (and through lse) against
autograd of the fp32 reference, on both paths: atomic dQ (``deterministic=False`` with
``ATOMIC_DQ_DEFAULT`` set, as every test here does) and the deterministic one (a separate dQ
kernel, the library's default).

The interpreter runs a grid's programs one after another, so atomics cannot race here: these
tests check the atomic path's math (indexing, masks, GQA rows, varlen bounds, accumulation),
not its behaviour under concurrency, which only a GPU run shows (benchmarks/attn_bwd_sweep.py
compares every config's gradients with the deterministic path's).
"""

from __future__ import annotations

import pytest
import torch
from flash_attn_helpers import (
    BWD_TOL,
    FWD_TOL,
    assert_close,
    block_mask_from_dense,
    check_fwd_bwd,
    output_loss,
    rand,
    reference,
    reference_grads,
    varlen_reference,
)

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
    """The public API's default backward (atomic dQ) on odd shapes."""
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


@pytest.mark.parametrize("deterministic,config", [
    (True, ((32, 16, 4, 1), (16, 32, 4, 1))), (True, ((16, 32, 4, 1), (32, 16, 4, 1))),
    (False, (32, 16, 4, 1)), (False, (16, 32, 4, 1))], ids=str)
def test_tile_shapes(deterministic, config):
    """Kernels with BM != BN, each way round, under a sliding window, on both paths."""
    torch.manual_seed(4)
    q, k, v = (rand(1, s, h, 32, requires_grad=False) for s, h in ((77, 4), (101, 2), (101, 2)))
    kw = dict(softmax_scale=0.3, causal=True, window_left=40)
    out, lse = flash_attn_fwd(q, k, v, **kw)
    dout = torch.randn_like(out)
    dq, dk, dv = flash_attn_bwd(dout, q, k, v, out, lse, config=config,
                                deterministic=deterministic, **kw)
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


def test_bad_config_raises():
    q = rand(1, 8, 1, 32, requires_grad=False)
    out, lse = flash_attn_fwd(q, q, q, softmax_scale=0.1)
    with pytest.raises(ValueError, match="deterministic=False"):
        flash_attn_bwd(q, q, q, q, out, lse, softmax_scale=0.1, config=((32, 32, 4, 1),) * 2)
    with pytest.raises(ValueError, match="deterministic=True"):
        flash_attn_bwd(q, q, q, q, out, lse, softmax_scale=0.1, config=(32, 32, 4, 1),
                       deterministic=True)


# -- both paths, feature by feature ------------------------------------------------------------


def cu(lengths):
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)


@pytest.fixture(autouse=True)
def _atomic_when_allowed(monkeypatch):
    """deterministic=False through the API takes the atomic path in these tests (off by
    default in the library: the deterministic kernels measured faster on an H100)."""
    import tritium.kernels.flash_attn_bwd as bwd_kernels

    monkeypatch.setattr(bwd_kernels, "ATOMIC_DQ_DEFAULT", True)


def check_both_paths(fn, ref_fn, q, k, v, dtype, extra=(), dlse=False, ref_kw=None, **kw):
    """Forward + backward through ``fn`` with deterministic=False and True, each against the
    fp32 reference (computed once). dK and dV come from the same kernel with the same tiles on
    both paths, so they must be bit-identical; dQ is summed in another order (fp32 atomics vs
    registers) and may differ in its last bits."""
    got = {}
    for det in (False, True):
        leaves = [x.detach().requires_grad_() for x in (q, k, v)]
        out, lse = fn(*leaves, *extra, return_lse=True, deterministic=det, **kw)
        if det is False:
            torch.manual_seed(123)
            dout = torch.randn_like(out)
            g_lse = torch.randn_like(lse) if dlse else None
        output_loss(out, lse, dout, g_lse).backward()
        got[det] = [x.grad for x in leaves]
    ref_out, _, want = reference_grads(ref_fn, (q, k, v), dout, g_lse, **(ref_kw or kw))
    assert_close("out", out, ref_out, FWD_TOL[dtype])
    for det, grads in got.items():
        for name, g, w in zip("qkv", grads, want):
            assert_close(f"d{name} (deterministic={det})", g, w, BWD_TOL[dtype])
    assert torch.equal(got[False][1], got[True][1]) and torch.equal(got[False][2], got[True][2])


DENSE_FEATURES = [  # (B, Sq, Sk, Hq, Hk, D, dtype, kwargs)
    (1, 1, 17, 4, 1, 32, torch.float32, dict(causal=True)),  # one query row, GQA 4:1
    (2, 17, 113, 9, 3, 16, torch.float16, dict(causal=True)),  # GQA 9:3, Sq < Sk
    (1, 113, 17, 2, 1, 32, torch.float32, dict(causal=True)),  # Sq > Sk: empty rows
    (1, 45, 70, 4, 2, 32, torch.float16, dict(window_size=(7, 3))),
    (1, 70, 45, 2, 2, 32, torch.float32, dict(window_size=(20, -1), causal=True)),
    (1, 33, 41, 3, 1, 32, torch.float16, dict(softcap=4.0, softmax_scale=0.4)),
    (1, 29, 37, 6, 2, 48, torch.float32, dict(causal=True, dlse=True)),  # D 48: padded to 64
]


@pytest.mark.parametrize("case", DENSE_FEATURES, ids=lambda c: f"{c[:6]}-{c[7]}")
def test_both_paths_dense(case):
    B, Sq, Sk, Hq, Hk, D, dtype, kw = case
    kw = dict(kw)
    dlse = kw.pop("dlse", False)
    torch.manual_seed(Sq * 131 + Sk)
    scale = 2.0 if "softcap" in kw else 1.0  # large scores so the cap bends them
    q, k, v = rand(B, Sq, Hq, D, dtype=dtype, scale=scale), \
        rand(B, Sk, Hk, D, dtype=dtype, scale=scale), rand(B, Sk, Hk, D, dtype=dtype)
    check_both_paths(tritium.flash_attn_func, reference, q, k, v, dtype, dlse=dlse, **kw)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_both_paths_varlen(dtype):
    """Packed sequences incl. an empty one and a length-1 one, partial tiles at every
    sequence end (dQ rows are found through cu_seqlens_q), window, softcap and lse."""
    torch.manual_seed(6)
    lq, lk = [17, 0, 45, 1], [30, 9, 17, 5]
    q, k, v = rand(sum(lq), 6, 32, dtype=dtype), rand(sum(lk), 2, 32, dtype=dtype), \
        rand(sum(lk), 2, 32, dtype=dtype)
    cq, ck = cu(lq), cu(lk)
    kw = dict(causal=True, window_size=(13, -1), softcap=5.0)
    check_both_paths(tritium.flash_attn_varlen_func, varlen_reference, q, k, v, dtype,
                     extra=(cq, ck, max(lq), max(lk)), dlse=True,
                     ref_kw=dict(cu_seqlens_q=cq, cu_seqlens_k=ck, **kw), **kw)


def test_both_paths_block_mask():
    """A BlockMask with empty, full and partial blocks (the dK/dV pass walks its transposed
    lists), per-head masks with GQA 2:1, ANDed with causal."""
    torch.manual_seed(7)
    B, H, Sq, Sk = 1, 4, 77, 101
    g = torch.Generator().manual_seed(7)
    kind = torch.randint(0, 3, (B, H, 3, 4), generator=g)  # 0 empty, 1 partial, 2 full
    kind = kind.repeat_interleave(32, 2).repeat_interleave(32, 3)[:, :, :Sq, :Sk]
    dense = (kind == 2) | ((kind == 1) & (torch.rand(B, H, Sq, Sk, generator=g) < 0.5))
    bm = block_mask_from_dense(dense, 32, 32)
    q, k, v = rand(B, Sq, H, 32), rand(B, Sk, 2, 32), rand(B, Sk, 2, 32)
    check_both_paths(tritium.flash_attn_func, reference, q, k, v, torch.float16,
                     block_mask=bm, causal=True, ref_kw=dict(mask=dense, causal=True))
