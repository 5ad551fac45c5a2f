"""Attention over a paged KV cache, and the per-step metadata that describes the batch.

KV cache layout, per layer: ``k_cache``/``v_cache`` of shape (num_blocks, block_size, Hk, D).
Token t of a sequence lives in block ``block_table[t // block_size]`` at offset
``t % block_size``; its *slot* is ``block * block_size + offset``.

Interim version: reference path only; the Triton kernels land in ``tritium.kernels``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class AttentionMetadata:
    """Everything attention needs about one engine step; built once, shared by every layer.

    The step's new tokens are packed: sequence i owns query rows
    ``cu_seqlens_q[i]:cu_seqlens_q[i+1]``, which are its *last* tokens (its cached prefix of
    ``seq_lens[i] - num_new`` tokens is already in the KV cache).
    """

    slot_mapping: torch.Tensor  # (T,) int64: cache slot to write each new token's K/V into
    block_tables: torch.Tensor  # (N, max_blocks_per_seq) int32, padded with 0 past the end
    seq_lens: torch.Tensor  # (N,) int32: tokens in the KV cache after this step (cached + new)
    cu_seqlens_q: torch.Tensor  # (N+1,) int32: prefix sums of new tokens per sequence
    max_seqlen_q: int  # max new tokens of any sequence this step
    max_seqlen_k: int  # max seq_lens
    decode_only: bool  # every sequence has exactly one new token (decode kernel path)

    @property
    def num_seqs(self) -> int:
        return self.seq_lens.shape[0]


def write_kv_cache_reference(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Scatter k/v (T, Hk, D) into the caches at ``slot_mapping`` (T,), in place."""
    nb, bs = k_cache.shape[:2]
    k_cache.view(nb * bs, *k_cache.shape[2:])[slot_mapping] = k.to(k_cache.dtype)
    v_cache.view(nb * bs, *v_cache.shape[2:])[slot_mapping] = v.to(v_cache.dtype)


def paged_attention_reference(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata,
    softmax_scale: float | None = None,
) -> torch.Tensor:
    """Causal attention of packed new queries q (T, Hq, D) over each sequence's paged K/V.

    Per sequence: gather its seq_len keys through the block table, then contiguous causal
    attention aligned bottom-right. fp32 math; returns (T, Hq, D) in q.dtype.
    """
    T, Hq, D = q.shape
    Hk = k_cache.shape[2]
    bs = k_cache.shape[1]
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(D)
    out = torch.empty_like(q)
    cu = meta.cu_seqlens_q.tolist()
    lens = meta.seq_lens.tolist()
    for i, L in enumerate(lens):
        q0, q1 = cu[i], cu[i + 1]
        if q1 == q0:
            continue
        t = torch.arange(L, device=q.device)
        blocks = meta.block_tables[i, t // bs].long()
        k = k_cache[blocks, t % bs].float()  # (L, Hk, D)
        v = v_cache[blocks, t % bs].float()
        qi = q[q0:q1].float()  # (n, Hq, D)
        k = k.repeat_interleave(Hq // Hk, dim=1)
        v = v.repeat_interleave(Hq // Hk, dim=1)
        s = torch.einsum("qhd,khd->hqk", qi, k) * scale
        n = q1 - q0
        qpos = torch.arange(L - n, L, device=q.device)[:, None]
        s = s.masked_fill(t[None, :] > qpos, float("-inf"))
        p = torch.softmax(s, dim=-1)
        out[q0:q1] = torch.einsum("hqk,khd->qhd", p, v).to(q.dtype)
    return out


def write_kv_cache(k, v, k_cache, v_cache, slot_mapping) -> None:
    write_kv_cache_reference(k, v, k_cache, v_cache, slot_mapping)


def paged_attention(q, k_cache, v_cache, meta: AttentionMetadata, softmax_scale=None):
    return paged_attention_reference(q, k_cache, v_cache, meta, softmax_scale)
