"""FlashAttention for PyTorch: flash-attn's API and layout, SDPA's API, autograd, custom ops.

- ``flash_attn_func(q, k, v, ...)``: q (B, Sq, Hq, D), k/v (B, Sk, Hk, D), Hq % Hk == 0.
- ``flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
  ...)``: packed q (Tq, Hq, D), k/v (Tk, Hk, D).
- ``sdpa(query, key, value, ...)``: ``F.scaled_dot_product_attention``'s (B, H, S, D) layout
  and arguments (causal top-left, as SDPA; flash-attn's causal is bottom-right).

Backward: ``deterministic=True`` runs separate dK/dV and dQ kernels (7 tile matmuls per tile
pair, no atomics, bit-reproducible). ``deterministic=False`` (default) lets the launcher pick
what measured faster on an H100: for dense head-dim-128 inputs on sm_90, the one Gluon kernel
that adds dQ into an fp32 buffer by TMA reduce-add (5 matmuls; dQ's last bits may vary run to
run); elsewhere the same deterministic kernels, since the Triton 5-matmul kernel with fp32
atomics measured slower (kernels/flash_attn_bwd.py, ``WS_FUSED``, ``ATOMIC_DQ_DEFAULT``).

Under ``torch.compile`` all three go through two ``torch.library`` custom ops,
``tritium::flash_attn_fwd`` and ``tritium::flash_attn_bwd``, with fake (meta) kernels and
registered autograd, so ``torch.compile(fullgraph=True)`` traces them without graph breaks;
eager calls run the same implementation through a plain ``autograd.Function`` (or directly
when nothing needs a gradient), which costs far less host time per call. Either way CUDA
tensors run the Triton kernels, CPU tensors the fp32 reference (or the kernels under
``TRITON_INTERPRET=1``): see ``ops/_dispatch.py``. The math is in ``attention_reference.py``.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch

from tritium.ops._dispatch import use_triton
from tritium.ops.attention_checks import (
    check_block_mask,
    check_cu_seqlens,
    check_cu_seqlens_values,
    check_flags,
    check_qkv,
    check_scale,
    check_window,
)
from tritium.ops.attention_reference import (
    attention_reference,
    attention_reference_bwd,
    attention_varlen_reference,
    attention_varlen_reference_bwd,
    transpose_block_mask,
)
from tritium.ops.block_mask import BlockMask, TransposedLists

__all__ = ["flash_attn_func", "flash_attn_varlen_func", "sdpa", "attention_reference"]

_MASK_FIELDS = ("kv_num_blocks", "kv_indices", "partial_tile_ids", "mask_tiles",
                "full_kv_num_blocks", "full_kv_indices")
Tensor = torch.Tensor


def _unpack_mask(mask: list[Tensor], q_block: int, kv_block: int, sq: int, sk: int):
    """The op's ``mask`` list -> a BlockMask-like namespace (None when empty). The list holds
    the six BlockMask tensors, then optionally the five transposed lists."""
    if not mask:
        return None
    return SimpleNamespace(q_block_size=q_block, kv_block_size=kv_block, seq_len_q=sq,
                           seq_len_kv=sk, **dict(zip(_MASK_FIELDS, mask[:6])))


def _unpack_mask_t(mask: list[Tensor], bm):
    """The transposed lists from the op's ``mask`` list, or built now if absent."""
    if len(mask) == 6:
        return transpose_block_mask(bm)
    return SimpleNamespace(**{**vars(bm), **TransposedLists(*mask[6:])._asdict()})


def _lse_shape(q: Tensor, varlen: bool) -> tuple[int, ...]:
    return (q.shape[1], q.shape[0]) if varlen else (q.shape[0], q.shape[2], q.shape[1])


# -- custom ops ------------------------------------------------------------------------------

def _fwd_impl(
    q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor | None, cu_seqlens_k: Tensor | None,
    max_seqlen_q: int, max_seqlen_k: int, softmax_scale: float, causal: bool,
    window_left: int | None, window_right: int | None, softcap: float, bottom_right: bool,
    mask: list[Tensor], q_block: int, kv_block: int, deterministic: bool,
) -> tuple[Tensor, Tensor]:
    """(out like q, lse (B, Hq, Sq) or (Hq, Tq) fp32). ``mask``: a BlockMask's six tensors,
    then (when a backward will follow) its five transposed lists. ``deterministic`` only
    travels to the backward (autograd reads the forward's inputs)."""
    varlen = cu_seqlens_q is not None
    if varlen:
        check_cu_seqlens_values(cu_seqlens_q, cu_seqlens_k, q.shape[0], k.shape[0],
                                max_seqlen_q, max_seqlen_k)
    sq, sk = (max_seqlen_q, max_seqlen_k) if varlen else (q.shape[1], k.shape[1])
    bm = _unpack_mask(mask, q_block, kv_block, sq, sk)
    if use_triton(q):
        from tritium.kernels.flash_attn import flash_attn_fwd

        return flash_attn_fwd(
            q, k, v, softmax_scale=softmax_scale, causal=causal, window_left=window_left,
            window_right=window_right, softcap=softcap, bottom_right=bottom_right,
            cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k, max_seqlen_q=max_seqlen_q,
            block_mask=bm)
    kw = dict(window_size=(window_left, window_right), softcap=softcap, return_lse=True)
    if varlen:
        out, lse = attention_varlen_reference(q, k, v, cu_seqlens_q, cu_seqlens_k, causal,
                                              softmax_scale, **kw)
    else:
        out, lse = attention_reference(q, k, v, causal, softmax_scale, block_mask=bm,
                                       bottom_right=bottom_right, **kw)
    return out.contiguous(), lse.float().contiguous()


_fwd_op = torch.library.custom_op("tritium::flash_attn_fwd", mutates_args=())(_fwd_impl)


@_fwd_op.register_fake
def _(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *args):
    lse = q.new_empty(_lse_shape(q, cu_seqlens_q is not None), dtype=torch.float32)
    return q.new_empty(q.shape), lse


def _bwd_impl(
    dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
    dlse: Tensor | None, cu_seqlens_q: Tensor | None, cu_seqlens_k: Tensor | None,
    max_seqlen_q: int, max_seqlen_k: int, softmax_scale: float, causal: bool,
    window_left: int | None, window_right: int | None, softcap: float, bottom_right: bool,
    mask: list[Tensor], q_block: int, kv_block: int, deterministic: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """(dq, dk, dv) shaped and strided like (q, k, v). ``deterministic``: the kernels' dQ
    without atomics (the CPU reference is deterministic either way)."""
    varlen = cu_seqlens_q is not None
    sq, sk = (max_seqlen_q, max_seqlen_k) if varlen else (q.shape[1], k.shape[1])
    bm = _unpack_mask(mask, q_block, kv_block, sq, sk)
    if use_triton(q):
        from tritium.kernels import flash_attn_bwd as bwd_kernels

        return bwd_kernels.flash_attn_bwd(
            dout, q, k, v, out, lse, dlse=dlse, softmax_scale=softmax_scale, causal=causal,
            window_left=window_left, window_right=window_right, softcap=softcap,
            bottom_right=bottom_right, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k,
            max_seqlen_q=max_seqlen_q, max_seqlen_k=max_seqlen_k, block_mask=bm,
            block_mask_t=_unpack_mask_t(mask, bm) if bm is not None else None,
            deterministic=True if deterministic else None)
    kw = dict(window_size=(window_left, window_right), softcap=softcap, dlse=dlse)
    if varlen:
        grads = attention_varlen_reference_bwd(dout, q, k, v, cu_seqlens_q, cu_seqlens_k,
                                               causal, softmax_scale, **kw)
    else:
        grads = attention_reference_bwd(dout, q, k, v, causal, softmax_scale, block_mask=bm,
                                        bottom_right=bottom_right, **kw)
    res = []
    for t, g in zip((q, k, v), grads):
        r = torch.empty_like(t)  # same strides as the fake kernel promises
        r.copy_(g)
        res.append(r)
    return tuple(res)


_bwd_op = torch.library.custom_op("tritium::flash_attn_bwd", mutates_args=())(_bwd_impl)


@_bwd_op.register_fake
def _(dout, q, k, v, *args):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, cu_q, cu_k = inputs[:5]
    ctx.params = inputs[5:13]  # max_seqlen_q ... bottom_right
    ctx.num_mask = len(inputs[13])
    ctx.blocks = inputs[14:17]  # q_block, kv_block, deterministic
    ctx.save_for_backward(q, k, v, output[0], output[1], cu_q, cu_k, *inputs[13])
    ctx.set_materialize_grads(False)


def _grads(ctx, dout, dlse, bwd):
    q, k, v, out, lse, cu_q, cu_k, *mask = ctx.saved_tensors
    if dout is None:
        dout = torch.zeros_like(out)
    elif dout.stride(-1) != 1:
        dout = dout.contiguous()
    if dlse is not None and dlse.stride() != lse.stride():  # e.g. expanded by lse.sum()
        dlse = dlse.contiguous()
    return bwd(dout, q, k, v, out, lse, dlse, cu_q, cu_k, *ctx.params, mask, *ctx.blocks)


def _backward(ctx, dout, dlse):
    dq, dk, dv = _grads(ctx, dout, dlse, _bwd_op)
    return dq, dk, dv, *([None] * 10), [None] * ctx.num_mask, None, None, None


_fwd_op.register_autograd(_backward, setup_context=_setup_context)


class _EagerFlashAttn(torch.autograd.Function):
    """The same forward/backward as the custom ops, without the ``torch.library`` dispatch.

    A custom op call costs ~100-300 us of host time (dispatcher, autograd wrapper, schema
    checks), more than the kernel itself for short sequences; eager calls that need autograd
    come here, ``torch.compile`` traces the custom ops (``_run`` picks)."""

    @staticmethod
    def forward(ctx, *inputs):
        out, lse = _fwd_impl(*inputs)
        _setup_context(ctx, inputs, (out, lse))
        return out, lse

    @staticmethod
    def backward(ctx, dout, dlse):
        dq, dk, dv = _grads(ctx, dout, dlse, _bwd_impl)
        return dq, dk, dv, *([None] * 14)


# -- public API ------------------------------------------------------------------------------

def _run(q, k, v, cu_q, cu_k, max_q, max_k, scale, causal, window, softcap, bottom_right,
         block_mask, return_lse, deterministic):
    left, right = window
    mask, blocks = [], (0, 0)
    if block_mask is not None:
        mask = [getattr(block_mask, f) for f in _MASK_FIELDS]
        blocks = (block_mask.q_block_size, block_mask.kv_block_size)
        if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
            mask += list(block_mask.transposed())  # built once per BlockMask, then cached
    args = (q, k, v, cu_q, cu_k, max_q, max_k, check_scale(scale), causal, left, right,
            float(softcap), bottom_right, mask, *blocks, deterministic)
    if torch.compiler.is_compiling():
        out, lse = _fwd_op(*args)
    elif torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        out, lse = _EagerFlashAttn.apply(*args)
    else:  # nothing to differentiate: the implementation itself
        out, lse = _fwd_impl(*args)
    return (out, lse) if return_lse else out


def flash_attn_func(
    q: Tensor, k: Tensor, v: Tensor, causal: bool = False,
    window_size: tuple[int | None, int | None] = (-1, -1), softcap: float = 0.0,
    softmax_scale: float | None = None, return_lse: bool = False,
    block_mask: BlockMask | None = None, *, dropout_p: float = 0.0, deterministic: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """softmax(scale * q k^T [masked]) v per head. q (B, Sq, Hq, D), k/v (B, Sk, Hk, D) with
    Hq % Hk == 0 (GQA/MQA) -> out (B, Sq, Hq, D); with ``return_lse`` also lse (B, Hq, Sq) fp32
    (natural log; -inf for rows that see no key, whose output is 0).

    causal: query i sees keys j <= i + Sk - Sq (bottom-right, flash-attn >= 2.1).
    window_size (left, right): i sees j in [i + Sk - Sq - left, i + Sk - Sq + right]; -1 or
    None = unbounded. softcap > 0: scores become softcap * tanh(scores / softcap) before
    masking. softmax_scale (> 0): default 1/sqrt(D). block_mask: a ``BlockMask``, ANDed with
    the rest.
    dropout_p must be 0 (no dropout). Differentiable in q, k, v and through lse.
    deterministic: True guarantees bit-reproducible gradients (flash-attn's flag). False allows
    a backward whose dQ is summed by atomics, taken where it measured faster (on an H100 at
    head dim 128; see the module docstring); elsewhere the backward is deterministic anyway.
    """
    check_flags(causal=causal, dropout_p=dropout_p, softcap=softcap, return_lse=return_lse,
                deterministic=deterministic)
    check_qkv(q, k, v, rank=4, layout="(batch, seqlen, heads, head_dim)")
    if k.shape[0] != q.shape[0]:
        raise ValueError(f"q has batch {q.shape[0]} but k/v have batch {k.shape[0]}")
    window = check_window(window_size)
    if block_mask is not None:
        check_block_mask(block_mask, q.shape[0], q.shape[2], q.shape[1], k.shape[1], q.device)
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    return _run(q, k, v, None, None, q.shape[1], k.shape[1], scale, causal, window, softcap,
                True, block_mask, return_lse, deterministic)


def flash_attn_varlen_func(
    q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor, cu_seqlens_k: Tensor,
    max_seqlen_q: int, max_seqlen_k: int, causal: bool = False,
    window_size: tuple[int | None, int | None] = (-1, -1), softcap: float = 0.0,
    softmax_scale: float | None = None, return_lse: bool = False, *, dropout_p: float = 0.0,
    deterministic: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """``flash_attn_func`` over packed sequences: q (Tq, Hq, D), k/v (Tk, Hk, D); sequence i
    owns rows cu_seqlens_q[i]:cu_seqlens_q[i+1] of q and cu_seqlens_k[i]:cu_seqlens_k[i+1] of
    k/v (int32 (N+1,), starting at 0, non-decreasing, ending at Tq/Tk; lengths may be 0).
    Returns out (Tq, Hq, D) and, with ``return_lse``, lse (Hq, Tq) fp32. The cu_seqlens values
    are checked against the shapes and max_seqlen_* (one device-to-host copy per call).
    ``deterministic`` as in ``flash_attn_func``.
    """
    check_flags(causal=causal, dropout_p=dropout_p, softcap=softcap, return_lse=return_lse,
                deterministic=deterministic)
    check_qkv(q, k, v, rank=3, layout="(total_tokens, heads, head_dim)")
    check_cu_seqlens(cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, q.device)
    window = check_window(window_size)
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    return _run(q, k, v, cu_seqlens_q, cu_seqlens_k, int(max_seqlen_q), int(max_seqlen_k),
                scale, causal, window, softcap, True, None, return_lse, deterministic)


def sdpa(
    query: Tensor, key: Tensor, value: Tensor, attn_mask: BlockMask | None = None,
    dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None,
    enable_gqa: bool = False,
) -> Tensor:
    """Drop-in for ``F.scaled_dot_product_attention`` on (B, H, S, D) tensors.

    is_causal is top-left aligned (query i sees keys j <= i), as in SDPA. ``attn_mask`` may be
    None or a tritium ``BlockMask`` (dense/additive masks are not supported: build a BlockMask).
    With ``enable_gqa`` key/value may have fewer heads (H % Hk == 0), as in SDPA. The backward
    is ``flash_attn_func``'s default (``deterministic=False``).
    """
    check_flags(causal=is_causal, dropout_p=dropout_p, softcap=0.0, return_lse=False,
                deterministic=False, causal_name="is_causal")
    check_qkv(query, key, value, rank=4, layout="(batch, heads, seqlen, head_dim)", head_dim=1)
    if query.shape[1] != key.shape[1] and not enable_gqa:
        raise ValueError(f"query has {query.shape[1]} heads, key/value {key.shape[1]}: pass "
                         "enable_gqa=True for grouped-query attention")
    if key.shape[0] != query.shape[0]:
        raise ValueError(f"query has batch {query.shape[0]} but key/value {key.shape[0]}")
    if attn_mask is not None and not isinstance(attn_mask, BlockMask):
        raise TypeError("sdpa: attn_mask must be None or a tritium BlockMask (dense and "
                        f"additive masks are not supported), got {type(attn_mask).__name__}")
    if attn_mask is not None and is_causal:
        raise ValueError("sdpa: pass either attn_mask or is_causal=True, not both (as SDPA)")
    q, k, v = (t.transpose(1, 2) for t in (query, key, value))  # (B, S, H, D) views
    if attn_mask is not None:
        check_block_mask(attn_mask, q.shape[0], q.shape[2], q.shape[1], k.shape[1], q.device)
    s = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    out = _run(q, k, v, None, None, q.shape[1], k.shape[1], s, is_causal, (None, None), 0.0,
               False, attn_mask, False, False)
    return out.transpose(1, 2)
