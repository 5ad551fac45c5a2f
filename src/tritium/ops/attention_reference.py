"""Plain-PyTorch attention: the CPU path of ``tritium.ops.attention`` and the test oracle.

Everything is computed in fp32 (fp64 inputs stay fp64) with ordinary autograd, so the same
functions give reference forwards and reference gradients. Layout is flash-attn's:
q (B, Sq, Hq, D), k/v (B, Sk, Hk, D), Hq % Hk == 0 (query head h reads kv head h // (Hq/Hk)).

Masking, in the order the kernels apply it:
  s = scale * q.k                                      (scale defaults to 1/sqrt(D))
  s = softcap * tanh(s / softcap)        if softcap > 0 (before any mask)
  query i may see key j iff  left_ok and right_ok and dense_mask[i, j], where with
  shift = Sk - Sq (bottom-right alignment, flash-attn >= 2.1) or 0 (top-left, as SDPA):
     right_ok: j <= i + shift + right   (causal means right = 0; None/-1 = unbounded)
     left_ok:  j >= i + shift - left    (None/-1 = unbounded)
A row that sees no key gives output 0 and log-sum-exp -inf.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch

from tritium.ops.block_mask import BlockMask, transpose_lists


def _window(window_size: tuple[int | None, int | None] | None) -> tuple[int | None, int | None]:
    """(left, right) with -1 or None meaning unbounded -> (left|None, right|None)."""
    if window_size is None:
        return None, None
    left, right = window_size
    left = None if left is None or left < 0 else int(left)
    right = None if right is None or right < 0 else int(right)
    return left, right


def block_mask_to_dense(bm) -> torch.Tensor:
    """The boolean (B|1, H|1, Sq, Sk) mask of a ``BlockMask`` (or of any object with its
    fields, such as the one rebuilt inside the custom op), True = attend."""
    return BlockMask.to_dense(bm)


def transpose_block_mask(bm) -> SimpleNamespace:
    """A BlockMask-like namespace whose lists are transposed for the backward's dK/dV pass
    (see ``BlockMask.transposed``; cached on a BlockMask, rebuilt for any other object with
    its fields): block sizes, lengths and mask_tiles are the mask's, so kernels read both
    alike."""
    lists = bm.transposed() if isinstance(bm, BlockMask) else transpose_lists(bm)
    return SimpleNamespace(
        seq_len_q=bm.seq_len_q, seq_len_kv=bm.seq_len_kv, q_block_size=bm.q_block_size,
        kv_block_size=bm.kv_block_size, mask_tiles=bm.mask_tiles, **lists._asdict())


def attention_mask(
    Sq: int, Sk: int, causal: bool = False,
    window_size: tuple[int | None, int | None] | None = None, bottom_right: bool = True,
    device: torch.device | str | None = None,
) -> torch.Tensor | None:
    """The (Sq, Sk) bool mask of causal + window (True = attend), or None when unmasked."""
    left, right = _window(window_size)
    if causal:
        right = 0  # as flash-attn: causal overrides the window's right edge
    if left is None and right is None:
        return None
    shift = Sk - Sq if bottom_right else 0
    i = torch.arange(Sq, device=device)[:, None]
    j = torch.arange(Sk, device=device)[None, :]
    ok = torch.ones(Sq, Sk, dtype=torch.bool, device=device)
    if right is not None:
        ok &= j <= i + shift + right
    if left is not None:
        ok &= j >= i + shift - left
    return ok


def _probs(q, k, v, causal, softmax_scale, window_size, softcap, mask, block_mask,
           bottom_right):
    """fp32 (fp64 stays fp64) pieces shared by the forward and the backward:
    qf (B, Hq, Sq, D), kf/vf (B, Hq, Sk, D) (GQA-expanded), p (B, Hq, Sq, Sk), lse (B, Hq, Sq),
    t = tanh(raw / softcap) or None, and the scale."""
    B, Sq, Hq, D = q.shape
    Sk, Hk = k.shape[1], k.shape[2]
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(D)
    ct = torch.float64 if q.dtype == torch.float64 else torch.float32
    qf, kf, vf = (x.to(ct).transpose(1, 2) for x in (q, k, v))  # (B, H, S, D)
    if Hk != Hq:
        kf = kf.repeat_interleave(Hq // Hk, dim=1)
        vf = vf.repeat_interleave(Hq // Hk, dim=1)
    s = torch.matmul(qf, kf.transpose(-1, -2)) * scale  # (B, Hq, Sq, Sk)
    t = None
    if softcap and softcap > 0:
        t = torch.tanh(s / softcap)
        s = softcap * t
    ok = attention_mask(Sq, Sk, causal, window_size, bottom_right, q.device)
    if block_mask is not None:
        dense = block_mask_to_dense(block_mask)
        ok = dense if ok is None else ok & dense
    if mask is not None:
        ok = mask if ok is None else ok & mask
    if ok is not None:
        s = s.masked_fill(~ok, float("-inf"))
    # Softmax that gives 0 (not NaN) on rows with no visible key, with clean gradients.
    if Sk > 0:
        m = s.amax(dim=-1, keepdim=True).detach()
        m = torch.where(torch.isinf(m), torch.zeros_like(m), m)
    else:
        m = s.new_zeros(B, Hq, Sq, 1)
    e = torch.exp(s - m)
    denom = e.sum(dim=-1, keepdim=True)
    p = e / torch.where(denom == 0, torch.ones_like(denom), denom)
    lse = (m + torch.log(denom)).squeeze(-1)  # log(0) = -inf on empty rows
    return qf, kf, vf, p, lse, t, scale


def attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
    softmax_scale: float | None = None, *,
    window_size: tuple[int | None, int | None] | None = None, softcap: float = 0.0,
    mask: torch.Tensor | None = None, block_mask=None, bottom_right: bool = True,
    return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Attention of q (B, Sq, Hq, D) over k/v (B, Sk, Hk, D) -> out (B, Sq, Hq, D) in q.dtype.

    ``mask``: optional bool (B|1, H|1, Sq, Sk) (True = attend), ANDed with causal/window;
    ``block_mask``: a ``BlockMask``, expanded to its dense mask. With ``return_lse`` also
    returns lse (B, Hq, Sq) (fp32; fp64 for fp64 inputs) = log(sum_j exp(s_ij)), natural-log
    units, -inf on empty rows. Differentiable in q, k, v (and through lse) by autograd.
    """
    _, _, vf, p, lse, _, _ = _probs(q, k, v, causal, softmax_scale, window_size, softcap, mask,
                                    block_mask, bottom_right)
    out = torch.matmul(p, vf).transpose(1, 2).to(q.dtype)
    return (out, lse) if return_lse else out


def attention_reference_bwd(
    dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    causal: bool = False, softmax_scale: float | None = None, *,
    window_size: tuple[int | None, int | None] | None = None, softcap: float = 0.0,
    mask: torch.Tensor | None = None, block_mask=None, bottom_right: bool = True,
    dlse: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Explicit gradients (dq, dk, dv) of ``attention_reference`` for upstream dout
    (B, Sq, Hq, D) and optionally dlse (B, Hq, Sq), in fp32 math (for code that cannot use
    autograd, such as a custom op's implementation):
    dV = P^T dO, dS = P * (dO V^T - delta), delta = rowsum(dO * O) - dlse,
    dQ = scale * dS' K, dK = scale * dS'^T Q, with dS' = dS * (1 - tanh^2) under a softcap.
    """
    qf, kf, vf, p, _, t, scale = _probs(q, k, v, causal, softmax_scale, window_size, softcap,
                                        mask, block_mask, bottom_right)
    dof = dout.to(qf.dtype).transpose(1, 2)  # (B, Hq, Sq, D)
    dp = torch.matmul(dof, vf.transpose(-1, -2))
    delta = (p * dp).sum(-1, keepdim=True)  # = rowsum(dO * O)
    if dlse is not None:
        delta = delta - dlse.to(qf.dtype).unsqueeze(-1)
    ds = p * (dp - delta)
    if t is not None:
        ds = ds * (1 - t * t)
    dq = torch.matmul(ds, kf) * scale
    dk = torch.matmul(ds.transpose(-1, -2), qf) * scale  # (B, Hq, Sk, D)
    dv = torch.matmul(p.transpose(-1, -2), dof)
    B, Hq, Sk, D = dk.shape
    Hk = k.shape[2]
    if Hk != Hq:  # sum the query heads of each GQA group
        dk = dk.view(B, Hk, Hq // Hk, Sk, D).sum(2)
        dv = dv.view(B, Hk, Hq // Hk, Sk, D).sum(2)
    return (dq.transpose(1, 2).to(q.dtype), dk.transpose(1, 2).to(k.dtype),
            dv.transpose(1, 2).to(v.dtype))


def attention_varlen_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor, causal: bool = False, softmax_scale: float | None = None, *,
    window_size: tuple[int | None, int | None] | None = None, softcap: float = 0.0,
    return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Packed sequences: q (Tq, Hq, D), k/v (Tk, Hk, D); sequence i owns rows
    cu_seqlens_q[i]:cu_seqlens_q[i+1] of q and cu_seqlens_k[i]:cu_seqlens_k[i+1] of k/v.

    Returns out (Tq, Hq, D) (and lse (Hq, Tq) fp32 with ``return_lse``), each sequence
    attended on its own exactly as ``attention_reference`` with B = 1.
    """
    Tq, Hq, D = q.shape
    cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    outs, lses = [], []
    for i in range(len(cq) - 1):
        qi = q[cq[i]:cq[i + 1]].unsqueeze(0)
        ki, vi = k[ck[i]:ck[i + 1]].unsqueeze(0), v[ck[i]:ck[i + 1]].unsqueeze(0)
        o, lse = attention_reference(
            qi, ki, vi, causal, softmax_scale, window_size=window_size, softcap=softcap,
            return_lse=True,
        )
        outs.append(o[0])
        lses.append(lse[0])
    out = torch.cat(outs, 0) if outs else q.new_zeros(0, Hq, D)
    if not return_lse:
        return out
    lse = torch.cat(lses, 1) if lses else q.new_zeros(Hq, 0, dtype=torch.float32)
    return out, lse


def attention_varlen_reference_bwd(
    dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    cu_seqlens_q: torch.Tensor, cu_seqlens_k: torch.Tensor, causal: bool = False,
    softmax_scale: float | None = None, *,
    window_size: tuple[int | None, int | None] | None = None, softcap: float = 0.0,
    dlse: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Explicit gradients (dq, dk, dv) of ``attention_varlen_reference``, sequence by sequence
    (dlse, if given, is (Hq, Tq))."""
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    for i in range(len(cq) - 1):
        rq, rk = slice(cq[i], cq[i + 1]), slice(ck[i], ck[i + 1])
        g = attention_reference_bwd(
            dout[rq].unsqueeze(0), q[rq].unsqueeze(0), k[rk].unsqueeze(0), v[rk].unsqueeze(0),
            causal, softmax_scale, window_size=window_size, softcap=softcap,
            dlse=dlse[:, rq].unsqueeze(0) if dlse is not None else None)
        dq[rq], dk[rk], dv[rk] = g[0][0], g[1][0], g[2][0]
    return dq, dk, dv
