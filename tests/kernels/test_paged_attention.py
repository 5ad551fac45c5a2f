"""Paged attention kernels (Triton interpreter) against per-sequence contiguous attention.

Every case poisons the cache slots no sequence owns with NaN (block tables are padded with
block 0, which may be one of them), so a kernel that reads past a sequence or leaks a padded
row fails loudly. Interpreter tests use fp16/fp32: tl.dot on bf16 is wrong under the
Triton 3.9 interpreter (bf16 is checked on the GPU by benchmarks/check_kernels_gpu.py).
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from tritium.kernels.paged_attention import choose_num_splits
from tritium.ops.paged_attention import (
    AttentionMetadata,
    paged_attention,
    paged_attention_reference,
    write_kv_cache,
    write_kv_cache_reference,
)

# fp16 inputs, fp32 accumulation: output rounding (2^-11 relative) plus p rounded to fp16 for
# the p @ V dot, over values of size ~1.
TOL = {torch.float16: 4e-3, torch.float32: 2e-5}


def paged_case(lens, news, page, Hq, Hk, D, dtype, cache_dtype=None, seed=0):
    """Random sequences scattered over shuffled pages; unused slots hold NaN.

    Returns q (T, Hq, D), caches, metadata and the per-sequence contiguous k/v (L, Hk, D).
    """
    g = torch.Generator().manual_seed(seed)
    nblk = [math.ceil(L / page) for L in lens]
    total = sum(nblk) + 3
    perm = torch.randperm(total, generator=g)
    bt = torch.zeros(len(lens), max(nblk), dtype=torch.int32)
    o = 0
    for i, n in enumerate(nblk):
        bt[i, :n] = perm[o:o + n]
        o += n
    cdt = cache_dtype or dtype
    kc = torch.full((total, page, Hk, D), float("nan"), dtype=dtype)
    vc = torch.full((total, page, Hk, D), float("nan"), dtype=dtype)
    ks, vs, slots = [], [], []
    for i, L in enumerate(lens):
        t = torch.arange(L)
        s = bt[i, t // page].long() * page + t % page
        ks.append(torch.randn(L, Hk, D, generator=g).to(dtype))
        vs.append(torch.randn(L, Hk, D, generator=g).to(dtype))
        slots.append(s)
    if cdt != dtype:  # fp8: unused slots keep the NaN pattern 0x7f
        kc, vc = kc.to(cdt), vc.to(cdt)
    cu = [0]
    for n in news:
        cu.append(cu[-1] + n)
    q = torch.randn(cu[-1], Hq, D, generator=g).to(dtype)
    meta = AttentionMetadata(
        slot_mapping=torch.cat([s[L - n:] for s, L, n in zip(slots, lens, news)]),
        block_tables=bt, seq_lens=torch.tensor(lens, dtype=torch.int32),
        cu_seqlens_q=torch.tensor(cu, dtype=torch.int32), max_seqlen_q=max(news),
        max_seqlen_k=max(lens), decode_only=all(n == 1 for n in news))
    # the write kernel is tested in test_rope.py; here the reference scatter is faster
    write_kv_cache_reference(torch.cat(ks), torch.cat(vs), kc, vc, torch.cat(slots))
    return q, kc, vc, meta, ks, vs


def contiguous_attention(q, ks, vs, meta, window=None, k_scale=1.0, v_scale=1.0):
    """Oracle: per sequence, fp64 softmax attention of its new rows over contiguous k/v."""
    out = torch.zeros(q.shape, dtype=torch.float64)
    cu = meta.cu_seqlens_q.tolist()
    D = q.shape[-1]
    for i, (k, v) in enumerate(zip(ks, vs)):
        qi = q[cu[i]:cu[i + 1]].double()  # (n, Hq, D)
        n, Hq, L = qi.shape[0], qi.shape[1], k.shape[0]
        if n == 0:
            continue
        G = Hq // k.shape[1]
        kk = (k.double() * k_scale).repeat_interleave(G, 1)
        vv = (v.double() * v_scale).repeat_interleave(G, 1)
        s = torch.einsum("nhd,lhd->hnl", qi, kk) / math.sqrt(D)
        pos = torch.arange(L - n, L)[:, None]
        key = torch.arange(L)[None, :]
        ok = key <= pos
        if window is not None:
            ok &= key > pos - window
        s = s.masked_fill(~ok, float("-inf"))
        out[cu[i]:cu[i + 1]] = torch.einsum("hnl,lhd->nhd", s.softmax(-1), vv)
    return out


def _check(out, ref, tol):
    assert not out.isnan().any(), "NaN in kernel output"
    err = (out.double() - ref).abs().max().item()
    assert err <= tol, f"max abs error {err:.3e} > {tol:.1e}"


HEADS = [(9, 3), (4, 1), (4, 4)]  # GQA 3:1 with an odd group, GQA 4:1, MHA


@pytest.mark.parametrize("page", [1, 16])
@pytest.mark.parametrize("heads", HEADS)
@pytest.mark.parametrize("splits", [1, 3])
def test_decode(page, heads, splits):
    Hq, Hk = heads
    # ragged lengths incl. a 1-token sequence and a full last page (32 = 2 x 16)
    lens = [1, 17, 50, 32]
    q, kc, vc, meta, ks, vs = paged_case(lens, [1] * 4, page, Hq, Hk, 32, torch.float16)
    assert meta.decode_only
    out = paged_attention(q, kc, vc, meta, num_splits=splits)
    _check(out, contiguous_attention(q, ks, vs, meta), TOL[torch.float16])


def test_decode_fp32_auto_splits_odd_head_dim():
    # head_dim 40 pads to a 64-wide tile; page 8; auto splits on the CPU's nominal 4 SMs
    lens = [113, 9, 64]
    assert choose_num_splits(3, 2, 113, 4, 16, min_split_tokens=16) > 1
    q, kc, vc, meta, ks, vs = paged_case(lens, [1] * 3, 8, 8, 2, 40, torch.float32, seed=1)
    from tritium.kernels.paged_attention import paged_decode

    out = paged_decode(q, kc, vc, meta.block_tables, meta.seq_lens, meta.max_seqlen_k,
                       1 / math.sqrt(40), num_splits=5)
    _check(out, contiguous_attention(q, ks, vs, meta), TOL[torch.float32])
    out = paged_attention(q, kc, vc, meta)
    _check(out, contiguous_attention(q, ks, vs, meta), TOL[torch.float32])


@pytest.mark.parametrize("page", [1, 16])
@pytest.mark.parametrize("heads", HEADS)
def test_prefill_with_cached_prefix(page, heads):
    Hq, Hk = heads
    # full prefill (17 of 17), chunk over a cached prefix (40 new of 113), a full last page
    # (16 new of 32), a decode row mixed in (1 of 5) and a sequence with no new rows
    lens, news = [17, 113, 32, 5, 9], [17, 40, 16, 1, 0]
    q, kc, vc, meta, ks, vs = paged_case(lens, news, page, Hq, Hk, 32, torch.float16, seed=2)
    assert not meta.decode_only
    out = paged_attention(q, kc, vc, meta)
    _check(out, contiguous_attention(q, ks, vs, meta), TOL[torch.float16])


def test_prefill_fp32_matches_reference():
    lens, news = [33, 20], [33, 7]
    q, kc, vc, meta, ks, vs = paged_case(lens, news, 4, 6, 2, 16, torch.float32, seed=3)
    out = paged_attention(q, kc, vc, meta)
    ref = paged_attention_reference(q, kc, vc, meta)
    _check(out, ref.double(), TOL[torch.float32])
    _check(out, contiguous_attention(q, ks, vs, meta), TOL[torch.float32])


@pytest.mark.parametrize("decode", [True, False])
def test_sliding_window(decode):
    lens = [70, 5, 33]
    news = [1, 1, 1] if decode else [30, 5, 1]
    q, kc, vc, meta, ks, vs = paged_case(lens, news, 16, 4, 2, 32, torch.float16, seed=4)
    out = paged_attention(q, kc, vc, meta, sliding_window=20, num_splits=2 if decode else None)
    _check(out, contiguous_attention(q, ks, vs, meta, window=20), TOL[torch.float16])


def test_fp8_cache():
    """fp8 (e4m3) caches written by the kernel, read by the decode and prefill kernels, against
    the oracle on the dequantized values (tight) and against the fp16 cache (the quantization
    cost, loose)."""
    lens = [40, 17, 32]
    scale = 0.02  # |k| <= ~5 maps to <= 250, inside e4m3's 448
    q, kc, vc, meta, ks, vs = paged_case(lens, [1, 3, 16], 16, 8, 2, 32, torch.float16, seed=5)
    kc8 = torch.full(kc.shape, float("nan")).to(torch.float8_e4m3fn)
    vc8 = kc8.clone()
    slots = torch.cat([b.repeat_interleave(16)[:L] * 16 + torch.arange(L) % 16
                       for b, L in zip(meta.block_tables.long(), lens)])
    write_kv_cache(torch.cat(ks), torch.cat(vs), kc8, vc8, slots, k_scale=scale, v_scale=scale)
    ks8 = [(k.float() / scale).to(torch.float8_e4m3fn).float() for k in ks]
    vs8 = [(v.float() / scale).to(torch.float8_e4m3fn).float() for v in vs]
    decode_meta = dataclasses.replace(
        meta, cu_seqlens_q=torch.arange(4, dtype=torch.int32), max_seqlen_q=1, decode_only=True)
    for m, qq in ((meta, q), (decode_meta, q[:3])):
        out8 = paged_attention(qq, kc8, vc8, m, k_scale=scale, v_scale=scale, num_splits=2)
        # the oracle on exactly the values the cache holds
        _check(out8, contiguous_attention(qq, ks8, vs8, m, k_scale=scale, v_scale=scale),
               TOL[torch.float16])
        ref16 = contiguous_attention(qq, ks, vs, m)
        rel = ((out8.double() - ref16).norm() / ref16.norm()).item()
        # e4m3 keeps 3 mantissa bits (relative step 2^-4): expect a few percent, not more
        assert 1e-3 < rel < 0.06, rel


# -- mixed steps and CUDA-graph-shaped decode batches -------------------------------------------
@pytest.mark.parametrize("page", [1, 16])
@pytest.mark.parametrize("heads", [(9, 3), (4, 1)])
def test_mixed_batch_decode_rows_take_the_decode_kernel(page, heads, monkeypatch):
    """One-token sequences first (decode kernel), then prefill chunks (prefill kernel)."""
    import tritium.kernels.paged_attention as kpa

    calls = []
    real_decode, real_prefill = kpa.paged_decode, kpa.paged_prefill
    monkeypatch.setattr(kpa, "paged_decode",
                        lambda q, *a, **k: calls.append(("decode", q.shape[0]))
                        or real_decode(q, *a, **k))
    monkeypatch.setattr(kpa, "paged_prefill",
                        lambda q, kc, vc, bt, *a, **k: calls.append(("prefill", bt.shape[0]))
                        or real_prefill(q, kc, vc, bt, *a, **k))
    Hq, Hk = heads
    # decodes of 1, 50 (odd, > 2 tiles) and 32 (full last page) keys; then a chunk over a cached
    # prefix, a whole prompt, and a sequence with no new rows
    lens, news = [1, 50, 32, 113, 17, 9], [1, 1, 1, 40, 17, 0]
    q, kc, vc, meta, ks, vs = paged_case(lens, news, page, Hq, Hk, 32, torch.float16, seed=6)
    meta = dataclasses.replace(meta, num_decode_tokens=3)
    out = paged_attention(q, kc, vc, meta, num_splits=3)
    assert calls == [("decode", 3), ("prefill", 3)]
    _check(out, contiguous_attention(q, ks, vs, meta), TOL[torch.float16])


def test_mixed_batch_fp32_matches_reference_and_pure_decode():
    """A mixed step equals the reference, and its decode rows equal a decode-only step's."""
    lens, news = [70, 5, 33, 20], [1, 1, 30, 2]
    q, kc, vc, meta, ks, vs = paged_case(lens, news, 4, 6, 2, 16, torch.float32, seed=7)
    mixed = dataclasses.replace(meta, num_decode_tokens=2)
    out = paged_attention(q, kc, vc, mixed, sliding_window=25)
    ref = paged_attention_reference(q, kc, vc, mixed, sliding_window=25)
    _check(out, ref.double(), TOL[torch.float32])
    _check(out, contiguous_attention(q, ks, vs, meta, window=25), TOL[torch.float32])
    dec = AttentionMetadata(
        slot_mapping=meta.slot_mapping[:2], block_tables=meta.block_tables[:2],
        seq_lens=meta.seq_lens[:2], cu_seqlens_q=meta.cu_seqlens_q[:3], max_seqlen_q=1,
        max_seqlen_k=70, decode_only=True)
    assert torch.equal(paged_attention(q[:2], kc, vc, dec, sliding_window=25), out[:2])


@pytest.mark.parametrize("page", [1, 16])
def test_decode_fixed_splits_beyond_sequence_lengths(page):
    """CUDA-graph decode: the split count comes from a bound (max_model_len), not the batch.

    Splits past a sequence's end (all but one for the 1-token sequence) must exit empty and
    weigh nothing in the merge; the result must not depend on the bound once the split count
    is fixed (the kernel cuts each sequence by its own length).
    """
    from tritium.kernels.paged_attention import paged_decode

    lens = [1, 17, 50, 3]
    q, kc, vc, meta, ks, vs = paged_case(lens, [1] * 4, page, 9, 3, 32, torch.float16, seed=8)
    oracle = contiguous_attention(q, ks, vs, meta)
    scale = 1 / math.sqrt(32)
    exact = paged_decode(q, kc, vc, meta.block_tables, meta.seq_lens, 50, scale, num_splits=8)
    bound = paged_decode(q, kc, vc, meta.block_tables, meta.seq_lens, 4096, scale, num_splits=8)
    _check(bound, oracle, TOL[torch.float16])
    assert torch.equal(exact, bound)
    # the automatic choice with a bound far above every length (>= 256 keys a split): one
    # sequence on the interpreter's nominal 4 SMs gets 3 splits, 2 of them empty
    assert choose_num_splits(1, 3, 4096, 4, 16) == 3
    one = AttentionMetadata(
        slot_mapping=meta.slot_mapping[2:3], block_tables=meta.block_tables[2:3],
        seq_lens=meta.seq_lens[2:3], cu_seqlens_q=meta.cu_seqlens_q[:2], max_seqlen_q=1,
        max_seqlen_k=4096, decode_only=True)
    _check(paged_attention(q[2:3], kc, vc, one), oracle[2:3], TOL[torch.float16])
    auto = paged_attention(q, kc, vc, dataclasses.replace(meta, max_seqlen_k=4096))
    _check(auto, oracle, TOL[torch.float16])
