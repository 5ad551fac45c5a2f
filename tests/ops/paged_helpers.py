"""Shared builder of paged-attention test cases (tests/ops)."""

from __future__ import annotations

import math

import torch

from tritium.ops.paged_attention import AttentionMetadata, write_kv_cache_reference


def paged_case(lens, news, page, Hq, Hk, D, seed=0, dtype=torch.float32,
               num_decode_tokens=None, pad_cols=0):
    """Sequences on shuffled pages -> (q, k_cache, v_cache, meta, per-sequence k, v).

    Unwritten slots hold NaN. Block-table entries past a sequence's blocks (and ``pad_cols``
    extra columns) point at a spare NaN-filled block, so any read of padding shows.
    """
    g = torch.Generator().manual_seed(seed)
    nblk = [math.ceil(L / page) for L in lens]
    perm = torch.randperm(sum(nblk) + 2, generator=g)
    spare = int(perm[-1])  # never handed to a sequence: stays NaN
    bt = torch.full((len(lens), max(nblk) + pad_cols), spare, dtype=torch.int32)
    kc = torch.full((perm.numel(), page, Hk, D), float("nan"), dtype=dtype)
    vc = kc.clone()
    ks, vs, slots, o = [], [], [], 0
    for i, (L, n) in enumerate(zip(lens, nblk)):
        bt[i, :n] = perm[o:o + n]
        o += n
        t = torch.arange(L)
        slots.append(bt[i, t // page].long() * page + t % page)
        ks.append(torch.randn(L, Hk, D, generator=g))
        vs.append(torch.randn(L, Hk, D, generator=g))
    write_kv_cache_reference(torch.cat(ks), torch.cat(vs), kc, vc, torch.cat(slots))
    cu = torch.tensor([0, *news]).cumsum(0).to(torch.int32)
    meta = AttentionMetadata(
        slot_mapping=torch.cat([s[L - n:] for s, L, n in zip(slots, lens, news)]),
        block_tables=bt, seq_lens=torch.tensor(lens, dtype=torch.int32), cu_seqlens_q=cu,
        max_seqlen_q=max(news), max_seqlen_k=max(lens), decode_only=all(n == 1 for n in news),
        num_decode_tokens=num_decode_tokens)
    q = torch.randn(int(cu[-1]), Hq, D, generator=g).to(dtype)
    return q, kc, vc, meta, ks, vs
