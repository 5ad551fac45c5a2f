"""The attention API: input checks, dispatch, SDPA parity, custom ops under torch.compile.

These run on the CPU reference path (tests/conftest.py), except where the ``interpret``
fixture turns the Triton interpreter on.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import tritium
import tritium.kernels.flash_attn as fa_kernels
from tritium.ops import attention as attn
from tritium.ops.attention_reference import attention_reference, attention_reference_bwd
from tritium.ops.block_mask import BlockMask

# fp32 on the reference path: the same math in another order (matmul/softmax vs SDPA's).
TOL = dict(atol=1e-5, rtol=1e-5)


def qkv(B=2, Sq=9, Sk=13, Hq=4, Hk=2, D=16, dtype=torch.float32, grad=False):
    torch.manual_seed(0)
    return [torch.randn(B, S, H, D, dtype=dtype, requires_grad=grad)
            for S, H in ((Sq, Hq), (Sk, Hk), (Sk, Hk))]


def cu(lengths):
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)


# -- bad input ---------------------------------------------------------------------------------

def test_bad_dtypes():
    q, k, v = qkv()
    with pytest.raises(TypeError, match="dtype torch.int64"):
        tritium.flash_attn_func(q.long(), k, v)
    with pytest.raises(TypeError, match="share a dtype"):
        tritium.flash_attn_func(q.half(), k, v)
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        tritium.flash_attn_func(q.numpy(), k, v)


def test_bad_device():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="one device"):
        tritium.flash_attn_func(q, k.to("meta"), v)


@pytest.mark.parametrize("D", [12, 264])
def test_bad_head_dim(D):
    q, k, v = qkv(D=D)
    with pytest.raises(ValueError, match=f"head_dim {D}"):
        tritium.flash_attn_func(q, k, v)


def test_bad_shapes():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="must have 4 dims"):
        tritium.flash_attn_func(q[0], k, v)
    with pytest.raises(ValueError, match="multiple of the number"):
        tritium.flash_attn_func(q[:, :, :3], k, v)
    with pytest.raises(ValueError, match="same shape"):
        tritium.flash_attn_func(q, k, v[:, :5])
    with pytest.raises(ValueError, match="head_dim 16 but k/v have 8"):
        tritium.flash_attn_func(q, k[..., :8], v[..., :8])
    with pytest.raises(ValueError, match="batch"):
        tritium.flash_attn_func(q, k[:1], v[:1])


def test_unsupported_strides():
    q, k, v = qkv(D=32)
    with pytest.raises(ValueError, match="stride 1"):
        tritium.flash_attn_func(q[..., ::2], k[..., ::2], v[..., ::2])


def test_bad_flags():
    q, k, v = qkv()
    with pytest.raises(TypeError, match="causal must be a bool"):
        tritium.flash_attn_func(q, k, v, 0.0)  # flash-attn's 4th positional is dropout_p
    with pytest.raises(ValueError, match="dropout"):
        tritium.flash_attn_func(q, k, v, dropout_p=0.1)
    with pytest.raises(ValueError, match="softcap"):
        tritium.flash_attn_func(q, k, v, softcap=-1.0)
    with pytest.raises(ValueError, match="window_size left"):
        tritium.flash_attn_func(q, k, v, window_size=(-3, 0))
    with pytest.raises(TypeError, match="pair"):
        tritium.flash_attn_func(q, k, v, window_size=5)
    for bad in (0.0, -0.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="softmax_scale"):
            tritium.flash_attn_func(q, k, v, softmax_scale=bad)
    with pytest.raises(TypeError, match="deterministic must be a bool"):
        tritium.flash_attn_func(q, k, v, deterministic=1)


def test_bad_cu_seqlens():
    q, k, v = (t[0] for t in qkv(B=1, Sq=10, Sk=10))
    good = cu([4, 6])
    f = tritium.flash_attn_varlen_func
    with pytest.raises(TypeError, match="int32"):
        f(q, k, v, good.long(), good, 6, 6)
    with pytest.raises(ValueError, match="same length"):
        f(q, k, v, good, cu([4, 3, 3]), 6, 6)
    with pytest.raises(ValueError, match="start at 0 and never decrease"):
        f(q, k, v, torch.tensor([0, 7, 6, 10], dtype=torch.int32), cu([4, 2, 4]), 7, 6)
    with pytest.raises(ValueError, match="start at 0"):
        f(q, k, v, torch.tensor([1, 4, 10], dtype=torch.int32), good, 6, 6)
    with pytest.raises(ValueError, match="ends at 9 but the packed tensor has 10"):
        f(q, k, v, cu([4, 5]), good, 6, 6)
    with pytest.raises(ValueError, match="more than max_seqlen 5"):
        f(q, k, v, good, good, 5, 6)
    with pytest.raises(ValueError, match="max_seqlen_k must be an int"):
        f(q, k, v, good, good, 6, -1)
    with pytest.raises(ValueError, match="must have 3 dims"):
        f(q[None], k, v, good, good, 6, 6)


def test_cu_seqlens_values_checked_once_per_tensor(monkeypatch):
    """The values check (a device sync) runs once per cu_seqlens pair, and again for another
    tensor or after an in-place change, which it then refuses."""
    from tritium.ops import attention_checks

    q, k, v = (t[0] for t in qkv(B=1, Sq=10, Sk=10))
    cu_q, cu_k = cu([4, 6]), cu([4, 6])
    calls = []
    real = attention_checks._cu_stats
    monkeypatch.setattr(attention_checks, "_cu_stats",
                        lambda a, b: calls.append(1) or real(a, b))
    f = tritium.flash_attn_varlen_func
    f(q, k, v, cu_q, cu_k, 6, 6)
    f(q, k, v, cu_q, cu_k, 6, 6)
    assert len(calls) == 1
    f(q, k, v, cu_q.clone(), cu_k, 6, 6)  # same values, another tensor: checked
    f(q, k, v, cu_q, cu_k, 7, 6)  # another max_seqlen: checked
    assert len(calls) == 3
    f(q, k, v, cu_q, cu_k, 6, 6)  # cached again
    cu_q[1] = 7  # in place: the version counter moves, so the pair is checked and refused
    with pytest.raises(ValueError, match="more than max_seqlen 6"):
        f(q, k, v, cu_q, cu_k, 6, 6)


def full_block_mask(Sq, Sk, bs=16):
    """A BlockMask with every block full (no partial tiles)."""
    nq, nk = -(-Sq // bs), -(-Sk // bs)
    z = torch.zeros(1, 1, nq, nk, dtype=torch.int32)
    return BlockMask(
        seq_len_q=Sq, seq_len_kv=Sk, q_block_size=bs, kv_block_size=bs,
        kv_num_blocks=torch.zeros(1, 1, nq, dtype=torch.int32), kv_indices=z,
        partial_tile_ids=z.clone(), mask_tiles=torch.zeros(1, bs, bs, dtype=torch.uint8),
        full_kv_num_blocks=torch.full((1, 1, nq), nk, dtype=torch.int32),
        full_kv_indices=torch.arange(nk, dtype=torch.int32).expand(1, 1, nq, nk).contiguous())


def test_bad_block_mask():
    q, k, v = qkv(Sq=20, Sk=20)
    bm = full_block_mask(16, 20)
    with pytest.raises(ValueError, match=r"\(16, 20\) query/key tokens"):
        tritium.flash_attn_func(q, k, v, block_mask=bm)
    with pytest.raises(TypeError, match="BlockMask"):
        tritium.flash_attn_func(q, k, v, block_mask=torch.ones(20, 20, dtype=torch.bool))


def test_sdpa_bad_arguments():
    q, k, v = (t.transpose(1, 2) for t in qkv())
    with pytest.raises(ValueError, match="enable_gqa"):
        tritium.sdpa(q, k, v)
    with pytest.raises(TypeError, match="attn_mask"):
        tritium.sdpa(q, k, v, attn_mask=torch.zeros(9, 13), enable_gqa=True)
    with pytest.raises(ValueError, match="dropout"):
        tritium.sdpa(q, k, v, dropout_p=0.5, enable_gqa=True)


# -- dispatch ----------------------------------------------------------------------------------

def test_cpu_uses_reference(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("the Triton kernel ran on the reference path")

    monkeypatch.setattr(fa_kernels, "flash_attn_fwd", boom)
    q, k, v = qkv(grad=True)
    out, lse = tritium.flash_attn_func(q, k, v, causal=True, softcap=2.0, return_lse=True)
    want, want_lse = attention_reference(q, k, v, True, softcap=2.0, return_lse=True)
    torch.testing.assert_close(out, want, atol=0, rtol=0)
    torch.testing.assert_close(lse, want_lse, atol=0, rtol=0)


def test_interpreter_uses_kernel(interpret, monkeypatch):
    calls = []
    real = fa_kernels.flash_attn_fwd

    def spy(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(fa_kernels, "flash_attn_fwd", spy)
    q, k, v = qkv(dtype=torch.float16)
    out = tritium.flash_attn_func(q, k, v, causal=True)
    assert calls == [1]
    torch.testing.assert_close(out.float(), attention_reference(q.float(), k.float(), v.float(),
                                                                True), atol=2e-3, rtol=2e-3)


def test_reference_backward_matches_autograd():
    """The custom op's CPU backward (explicit formulas) equals autograd of the reference, incl.
    GQA, softcap, window and the lse gradient."""
    q, k, v = qkv(grad=True)
    kw = dict(window_size=(3, 2), softcap=1.5)
    out, lse = attention_reference(q, k, v, False, 0.3, return_lse=True, **kw)
    dout, dlse = torch.randn_like(out), torch.randn_like(lse)
    ((out * dout).sum() + (lse * dlse).sum()).backward()
    got = attention_reference_bwd(dout, q, k, v, False, 0.3, dlse=dlse, **kw)
    for g, x in zip(got, (q, k, v)):
        torch.testing.assert_close(g, x.grad, **TOL)


# -- SDPA parity -------------------------------------------------------------------------------

@pytest.mark.parametrize("Sq,Sk", [(9, 13), (13, 9), (1, 7)])
@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("gqa", [False, True])
@pytest.mark.parametrize("scale", [None, 0.7])
def test_sdpa_matches_torch(Sq, Sk, is_causal, gqa, scale):
    q, k, v = (t.transpose(1, 2).detach().requires_grad_()
               for t in qkv(Sq=Sq, Sk=Sk, Hk=2 if gqa else 4))
    out = tritium.sdpa(q, k, v, attn_mask=None, is_causal=is_causal, scale=scale,
                       enable_gqa=gqa)
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=None, is_causal=is_causal,
                                          scale=scale, enable_gqa=gqa)
    torch.testing.assert_close(out, want, **TOL)
    dout = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), dout)
    ref = torch.autograd.grad(want, (q, k, v), dout)
    for name, g, r in zip("qkv", got, ref):
        torch.testing.assert_close(g, r, **TOL, msg=f"d{name}")


def test_sdpa_with_full_block_mask_equals_unmasked():
    q, k, v = (t.transpose(1, 2) for t in qkv(Sq=20, Sk=20, Hk=4))
    out = tritium.sdpa(q, k, v, attn_mask=full_block_mask(20, 20))
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), **TOL)


def test_flash_attn_func_layout_and_varlen_lse_shapes():
    q, k, v = qkv()
    out, lse = tritium.flash_attn_func(q, k, v, return_lse=True)
    assert out.shape == q.shape and lse.shape == (2, 4, 9) and lse.dtype == torch.float32
    q1, k1, v1 = (t.reshape(-1, *t.shape[2:]) for t in (q, k, v))
    out, lse = tritium.flash_attn_varlen_func(q1, k1, v1, cu([9, 9]), cu([13, 13]), 9, 13,
                                              return_lse=True)
    assert out.shape == q1.shape and lse.shape == (4, 18)


# -- custom ops and torch.compile ---------------------------------------------------------------

def test_custom_op_opcheck():
    q, k, v = qkv(grad=True)
    args = (q, k, v, None, None, 9, 13, 0.25, True, 2, None, 0.0, True, [], 0, 0, False)
    torch.library.opcheck(attn._fwd_op, args)


class TinyAttention(torch.nn.Module):
    def forward(self, q, k, v, cq, ck):
        a = tritium.flash_attn_func(q, k, v, causal=True, softmax_scale=0.3, deterministic=True)
        b, lse = tritium.flash_attn_func(q, k, v, window_size=(3, 1), softcap=2.0,
                                         return_lse=True)
        c = tritium.sdpa(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                         is_causal=True, enable_gqa=True).transpose(1, 2)
        flat = [t.reshape(-1, *t.shape[2:]) for t in (q, k, v)]
        d = tritium.flash_attn_varlen_func(*flat, cq, ck, 9, 13, causal=True)
        return a + b + c + d.view_as(q) + lse.sum()


def test_compile_fullgraph_no_graph_breaks():
    q, k, v = qkv(grad=True)
    cq, ck = cu([9, 9]), cu([13, 13])
    model = TinyAttention()
    explain = torch._dynamo.explain(model)(q, k, v, cq, ck)
    assert explain.graph_break_count == 0, explain.break_reasons
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out = compiled(q, k, v, cq, ck)
    dout = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), dout)
    want_out = model(q, k, v, cq, ck)
    want = torch.autograd.grad(want_out, (q, k, v), dout)
    torch.testing.assert_close(out, want_out, **TOL)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **TOL)


def test_compile_runs_kernels_under_interpreter(interpret):
    """Inside a compiled graph the custom op still dispatches to the Triton kernels."""
    q, k, v = qkv(dtype=torch.float16, grad=True)
    f = torch.compile(lambda q, k, v: tritium.flash_attn_func(q, k, v, causal=True),
                      fullgraph=True, backend="aot_eager")
    out = f(q, k, v)
    out.float().sum().backward()
    want = attention_reference(q.float(), k.float(), v.float(), True)
    torch.testing.assert_close(out.float(), want, atol=2e-3, rtol=2e-3)
    assert q.grad is not None and torch.isfinite(q.grad).all()


# -- deterministic flag and the BlockMask transpose cache ------------------------------------------

@pytest.mark.parametrize("atomic_default", [False, True])
def test_deterministic_reaches_the_backward_kernel(interpret, monkeypatch, atomic_default):
    """flash_attn_func / varlen pass ``deterministic=True`` to the backward launcher as True and
    False (the default, also sdpa's) as None, "the faster path"; off the Gluon kernels' inputs
    (here: the interpreter) that is the atomic Triton kernel only when ATOMIC_DQ_DEFAULT
    allows it (it is off: the deterministic kernels measured faster)."""
    import tritium.kernels.flash_attn_bwd as bwd_kernels

    seen, ran, real, real_dkdv = [], [], bwd_kernels.flash_attn_bwd, bwd_kernels._launch_dkdv

    def spy(*a, **k):
        seen.append(k["deterministic"])
        return real(*a, **k)

    def spy_dkdv(config, deterministic, *a):
        ran.append(deterministic)
        return real_dkdv(config, deterministic, *a)

    monkeypatch.setattr(bwd_kernels, "flash_attn_bwd", spy)
    monkeypatch.setattr(bwd_kernels, "_launch_dkdv", spy_dkdv)
    monkeypatch.setattr(bwd_kernels, "ATOMIC_DQ_DEFAULT", atomic_default)
    q, k, v = qkv(Sq=5, Sk=7, dtype=torch.float16, grad=True)
    for det in (None, True, False):
        kw = {} if det is None else dict(deterministic=det)
        tritium.flash_attn_func(q, k, v, causal=True, **kw).float().sum().backward()
    flat = [t.detach().reshape(-1, *t.shape[2:]).requires_grad_() for t in (q, k, v)]
    tritium.flash_attn_varlen_func(*flat, cu([5, 5]), cu([7, 7]), 5, 7,
                                   deterministic=True).float().sum().backward()
    tritium.sdpa(*(t.transpose(1, 2) for t in (q, k, v)),
                 enable_gqa=True).float().sum().backward()
    assert seen == [None, True, None, True, None]
    assert ran == ([False, True, False, True, False] if atomic_default else [True] * 5)


def test_block_mask_transpose_built_once(monkeypatch):
    """The dK/dV pass's transposed lists are built on the first backward-bound call and
    cached on the BlockMask; forward-only calls never build them."""
    import tritium.ops.block_mask as bm_mod

    calls, real = [], bm_mod.transpose_lists
    monkeypatch.setattr(bm_mod, "transpose_lists", lambda bm: calls.append(1) or real(bm))
    q, k, v = qkv(Sq=20, Sk=20, Hk=4, grad=True)
    bm = full_block_mask(20, 20)
    with torch.no_grad():
        tritium.flash_attn_func(q, k, v, block_mask=bm)
    tritium.flash_attn_func(q.detach(), k.detach(), v.detach(), block_mask=bm)
    assert calls == []
    for _ in range(3):
        tritium.flash_attn_func(q, k, v, block_mask=bm).sum().backward()
    assert calls == [1]
    lists = bm.transposed()
    assert lists.full_kv_num_blocks.tolist() == [[[2, 2]]]  # each key block: both query blocks


def test_compile_block_mask_backward():
    """A BlockMask under torch.compile(fullgraph=True) with a backward (the lazy transpose is
    traced, no graph break)."""
    q, k, v = qkv(Sq=20, Sk=20, Hk=4, grad=True)
    bm = full_block_mask(20, 20)
    f = torch.compile(lambda q, k, v: tritium.flash_attn_func(q, k, v, block_mask=bm),
                      fullgraph=True, backend="aot_eager")
    out = f(q, k, v)
    got = torch.autograd.grad(out, (q, k, v), torch.ones_like(out))
    want = torch.autograd.grad(attention_reference(q, k, v), (q, k, v), torch.ones_like(out))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **TOL)
