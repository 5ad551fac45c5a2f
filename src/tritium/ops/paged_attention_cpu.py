"""Paged attention on the CPU through PyTorch's own SDPA kernels (the CPU engine's fast path).

Same contract as ``ops.paged_attention.paged_attention_reference`` (the fp32 oracle, which pads
every sequence to the longest and runs a few large fp32 batched matmuls): packed new queries
q (T, Hq, D) attend causally (aligned bottom-right, optional sliding window) over each
sequence's paged K/V. What makes it faster:

- K/V are gathered by whole blocks (``index_select`` on the block axis: one memcpy of
  block_size x Hk x D values per block) instead of token by token;
- decode rows (one new token per sequence, at the front of the batch) are one SDPA call for the
  whole batch, each KV head's G query heads posed as G queries of that head, so K/V are never
  repeated for GQA; a boolean (N, 1, 1, S) mask hides the padding past each sequence;
- each prefilling sequence is one SDPA call over its own gathered prefix (``is_causal`` when it
  has no cached prefix, else an explicit bottom-right mask; ``enable_gqa``, so K/V are not
  repeated), with no padding to the batch's longest sequence.

In the model dtype (fp32 on the CPU engine by default; SDPA accumulates in fp32 for bf16/fp16
too). fp8 caches are dequantized (times k_scale / v_scale) while gathering.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tritium.ops.paged_attention import AttentionMetadata


def _gather(cache: torch.Tensor, tables: torch.Tensor, scale: float, dtype: torch.dtype,
            zero_blocks: torch.Tensor | None = None, zero_slots: torch.Tensor | None = None
            ) -> torch.Tensor:
    """cache (nb, bs, Hk, D), tables (N, nblk) -> (N, nblk * bs, Hk, D) in ``dtype``.

    ``zero_blocks`` (flat indices into N * nblk) and ``zero_slots`` (flat indices into
    N * nblk * bs) are set to zero after the gather.
    """
    n, nblk = tables.shape
    bs = cache.shape[1]
    out = cache.index_select(0, tables.reshape(-1).long())  # (N * nblk, bs, Hk, D)
    if out.dtype != dtype:
        out = out.to(dtype)
    if scale != 1.0:
        out = out * scale
    if zero_blocks is not None and zero_blocks.numel():
        out.index_fill_(0, zero_blocks, 0.0)
    out = out.view(n, nblk * bs, *cache.shape[2:])
    if zero_slots is not None and zero_slots.numel():
        out.view(n * nblk * bs, -1).index_fill_(0, zero_slots, 0.0)
    return out


def _step_plan(meta: AttentionMetadata, bs: int
               ) -> tuple[list[int], list[int], tuple | None]:
    """Host lengths and row offsets, and the decode rows' gather plan (block tables, key
    positions, lengths, visible mask, padding blocks to zero, unwritten tail slots to zero).
    Computed once per step and kept on ``meta``, which every layer of the step shares; a step's
    metadata is never modified in place (the engine builds a new one per step)."""
    cached = meta.__dict__.get("_cpu_plan")
    if cached is not None and cached[0] == bs:
        return cached[1:]
    lens = meta.seq_lens.tolist()
    cu = meta.cu_seqlens_q.tolist()
    nd = meta.num_decodes
    plan = None
    if nd > 0:
        nblk = -(-max(lens[:nd]) // bs)
        t = torch.arange(nblk * bs)
        lens_t = meta.seq_lens[:nd].long()[:, None]
        visible = t[None, :] < lens_t  # (nd, S')
        # Slots past a sequence's end may hold anything (stale, NaN), and a masked score
        # still multiplies its value row, so they are zeroed after the gather: whole padding
        # blocks, then the unwritten tail of each last block (< bs slots per sequence). Cheaper
        # than a masked pass over everything.
        own = (lens_t + bs - 1) // bs  # (nd, 1) blocks in use
        pad = (torch.arange(nblk)[None, :] >= own).reshape(-1).nonzero()[:, 0]
        tail = (~visible & (t[None, :] < own * bs)).reshape(-1).nonzero()[:, 0]
        plan = (meta.block_tables[:nd, :nblk], t, lens_t, visible, pad, tail)
    meta.__dict__["_cpu_plan"] = (bs, lens, cu, plan)
    return lens, cu, plan


def paged_attention_cpu(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata,
    softmax_scale: float, k_scale: float = 1.0, v_scale: float = 1.0,
    sliding_window: int | None = None,
) -> torch.Tensor:
    """q (T, Hq, D) -> (T, Hq, D) in q.dtype. Inputs are validated by the caller
    (``ops.paged_attention.paged_attention``)."""
    T, Hq, D = q.shape
    N, Hk, bs = meta.num_seqs, k_cache.shape[2], k_cache.shape[1]
    G = Hq // Hk
    out = torch.empty_like(q)
    if N == 0:
        return out
    lens, cu, plan = _step_plan(meta, bs)
    nd = meta.num_decodes
    if nd > 0:
        tables, t, lens_t, visible, pad, tail = plan
        k = _gather(k_cache, tables, k_scale, q.dtype, pad, tail).transpose(1, 2)
        v = _gather(v_cache, tables, v_scale, q.dtype, pad, tail).transpose(1, 2)
        if sliding_window is not None:  # the new token sits at L - 1 (not in place: cached)
            visible = visible & (t[None, :] > lens_t - 1 - sliding_window)
        qd = q[:nd].view(nd, Hk, G, D)  # each KV head's query heads as G queries
        o = F.scaled_dot_product_attention(qd, k, v, attn_mask=visible[:, None, None, :],
                                           scale=softmax_scale)
        out[:nd] = o.reshape(nd, Hq, D)
    for i in range(nd, N):
        q0, q1, L = cu[i], cu[i + 1], lens[i]
        n = q1 - q0
        if n == 0:
            continue
        nblk = -(-L // bs)
        tables = meta.block_tables[i : i + 1, :nblk]
        # 4-D (1, H, S, D) operands: PyTorch's fused CPU kernels reject 3-D ones and fall back
        # to the math path (2x slower); enable_gqa lets Hq query heads share Hk K/V heads
        k = _gather(k_cache, tables, k_scale, q.dtype)[:, :L].transpose(1, 2)  # (1, Hk, L, D)
        v = _gather(v_cache, tables, v_scale, q.dtype)[:, :L].transpose(1, 2)
        qi = q[q0:q1].transpose(0, 1)[None]  # (1, Hq, n, D)
        if n == L and sliding_window is None:
            o = F.scaled_dot_product_attention(qi, k, v, is_causal=True, scale=softmax_scale,
                                               enable_gqa=G > 1)
        else:
            qpos = torch.arange(L - n, L)[:, None]
            t = torch.arange(L)[None, :]
            visible = t <= qpos
            if sliding_window is not None:
                visible &= t > qpos - sliding_window
            o = F.scaled_dot_product_attention(qi, k, v, attn_mask=visible,
                                               scale=softmax_scale, enable_gqa=G > 1)
        out[q0:q1] = o[0].transpose(0, 1)
    return out
