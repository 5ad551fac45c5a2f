"""Shared pieces of the FlashAttention kernel tests: inputs, the fp32 oracle, comparisons, and
a test-local BlockMask builder from a dense bool mask (independent of ops/block_mask.py's
``create_block_mask``, so a bug there cannot hide one here)."""

from __future__ import annotations

import torch

from tritium.ops.attention_reference import attention_reference, attention_varlen_reference
from tritium.ops.block_mask import BlockMask

# (atol, rtol) per input dtype, forward and gradients.
# fp32: the interpreter's dot is exact fp32: only summation order differs from the reference.
# fp16, loose: P (forward) and dS (backward) are rounded to fp16 (11-bit mantissa) before their
# matmuls, as in flash-attn; the reference keeps them in fp32.
FWD_TOL = {torch.float32: (2e-5, 2e-5), torch.float16: (2e-3, 2e-3)}
BWD_TOL = {torch.float32: (5e-5, 5e-5), torch.float16: (1e-2, 1e-2)}


def rand(*shape, dtype=torch.float16, scale: float = 1.0, requires_grad: bool = True):
    t = (torch.randn(*shape) * scale).to(dtype)
    return t.requires_grad_(requires_grad)


def assert_close(name: str, got: torch.Tensor, want: torch.Tensor, tol) -> None:
    """allclose with a message that says where and by how much."""
    atol, rtol = tol
    got, want = got.detach().float(), want.detach().float()
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    assert not torch.isnan(got).any(), f"{name}: NaN in result"
    bad = ~torch.isclose(got, want, atol=atol, rtol=rtol, equal_nan=False)
    # lse: -inf on empty rows must match exactly
    bad &= ~(torch.isinf(got) & torch.isinf(want) & (got.sign() == want.sign()))
    if bad.any():
        idx = bad.nonzero()[0].tolist()
        err = (got - want).abs().nan_to_num(posinf=float("inf"))[bad].max().item()
        raise AssertionError(f"{name}: {int(bad.sum())}/{bad.numel()} elements differ, max err "
                             f"{err:.3g} (atol {atol}, rtol {rtol}); first at {idx}: "
                             f"{got[tuple(idx)].item()} vs {want[tuple(idx)].item()}")


def output_loss(out, lse, dout, dlse=None):
    """sum(out * dout) (+ sum(lse * dlse) over rows with a finite lse): its gradients are the
    backward with upstream gradients dout (and dlse)."""
    loss = (out.float() * dout.float()).sum()
    if dlse is not None:
        loss = loss + (torch.where(torch.isinf(lse), 0.0, lse) * dlse).sum()
    return loss


def reference_grads(fn, inputs, dout, dlse=None, **kw):
    """fp32 forward + autograd gradients of ``fn`` (attention_reference or the varlen one)."""
    leaves = [x.detach().float().requires_grad_() for x in inputs]
    out, lse = fn(*leaves, return_lse=True, **kw)
    output_loss(out, lse, dout, dlse).backward()
    return out, lse, [x.grad for x in leaves]


def check_fwd_bwd(fn, ref_fn, q, k, v, dtype, extra=(), dlse=False, ref_kw=None, **kw):
    """Run ``fn`` (the API) forward + backward against ``ref_fn`` (the fp32 oracle)."""
    out, lse = fn(q, k, v, *extra, return_lse=True, **kw)
    dout = torch.randn_like(out)
    g_lse = torch.randn_like(lse) if dlse else None
    output_loss(out, lse, dout, g_lse).backward()
    ref_out, ref_lse, grads = reference_grads(ref_fn, (q, k, v), dout, g_lse, **(ref_kw or kw))
    assert_close("out", out, ref_out, FWD_TOL[dtype])
    assert_close("lse", lse, ref_lse, FWD_TOL[torch.float32])
    for name, x, g in zip("qkv", (q, k, v), grads):
        assert_close(f"d{name}", x.grad, g, BWD_TOL[dtype])


def reference(*args, **kw):
    return attention_reference(*args, **kw)


def varlen_reference(*args, **kw):
    return attention_varlen_reference(*args, **kw)


def block_mask_from_dense(dense: torch.Tensor, q_block: int, kv_block: int) -> BlockMask:
    """BlockMask for a bool (B|1, H|1, Sq, Sk) mask: a block is full when every in-range
    element is True, partial when some are, skipped otherwise; partial tiles deduplicated."""
    B, H, Sq, Sk = dense.shape
    nqb, nkb = -(-Sq // q_block), -(-Sk // kv_block)
    pad = torch.zeros(B, H, nqb * q_block, nkb * kv_block, dtype=torch.bool)
    pad[:, :, :Sq, :Sk] = dense
    inside = torch.zeros_like(pad)
    inside[:, :, :Sq, :Sk] = True

    def blocks(x):  # (B, H, nqb, nkb, qb, kb)
        return x.view(B, H, nqb, q_block, nkb, kv_block).permute(0, 1, 2, 4, 3, 5)

    tiles_all = blocks(pad)
    any_ = tiles_all.any(-1).any(-1)
    full = (tiles_all | ~blocks(inside)).all(-1).all(-1) & any_
    partial = any_ & ~full
    uniq, inv = torch.unique(tiles_all[partial].reshape(-1, q_block * kv_block).to(torch.uint8),
                             dim=0, return_inverse=True)
    tile_of = torch.zeros(B, H, nqb, nkb, dtype=torch.int64)
    tile_of[partial] = inv
    order = torch.arange(nkb)

    def listed(sel):
        idx = torch.where(sel, order, order + nkb).argsort(-1)
        return sel.sum(-1).int(), idx

    num, idx = listed(partial)
    fnum, fidx = listed(full)
    if uniq.shape[0] == 0:
        uniq = torch.zeros(1, q_block * kv_block, dtype=torch.uint8)
    return BlockMask(
        seq_len_q=Sq, seq_len_kv=Sk, q_block_size=q_block, kv_block_size=kv_block,
        kv_num_blocks=num, kv_indices=idx.int(), partial_tile_ids=tile_of.gather(-1, idx).int(),
        mask_tiles=uniq.view(-1, q_block, kv_block).contiguous(),
        full_kv_num_blocks=fnum, full_kv_indices=fidx.int())
