"""FlashAttention-style attention: flash-attn's (batch, seqlen, heads, head_dim) layout.

Interim version: reference path only (the Triton kernels and the full API land with the
FlashAttention work). The signature below is the contract the model layers rely on.
"""

from __future__ import annotations

import math

import torch


def attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
    softmax_scale: float | None = None,
) -> torch.Tensor:
    """q: (B, Sq, Hq, D), k/v: (B, Sk, Hk, D), Hq % Hk == 0 -> (B, Sq, Hq, D). fp32 math.

    Causal masks align bottom-right (query i sees keys j <= i + Sk - Sq), as flash-attn >= 2.1.
    """
    B, Sq, Hq, D = q.shape
    Sk, Hk = k.shape[1], k.shape[2]
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(D)
    qf, kf, vf = (t.float().transpose(1, 2) for t in (q, k, v))  # (B, H, S, D)
    if Hk != Hq:
        kf = kf.repeat_interleave(Hq // Hk, dim=1)
        vf = vf.repeat_interleave(Hq // Hk, dim=1)
    s = torch.matmul(qf, kf.transpose(-1, -2)) * scale
    if causal:
        i = torch.arange(Sq, device=q.device)[:, None]
        j = torch.arange(Sk, device=q.device)[None, :]
        s = s.masked_fill(j > i + (Sk - Sq), float("-inf"))
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)  # fully masked rows give 0, as flash-attn
    return torch.matmul(p, vf).transpose(1, 2).to(q.dtype)


def flash_attn_func(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
    softmax_scale: float | None = None,
) -> torch.Tensor:
    return attention_reference(q, k, v, causal=causal, softmax_scale=softmax_scale)
