"""Reference paths of the paged-attention / fused ops, and their input validation (CPU)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from paged_helpers import paged_case

from tritium.ops.activation import silu_and_mul
from tritium.ops.norm import rms_norm, rms_norm_reference
from tritium.ops.paged_attention import (
    AttentionMetadata,
    paged_attention,
    paged_attention_reference,
    resolve_kv_cache_dtype,
    write_kv_cache,
    write_kv_cache_reference,
)
from tritium.ops.rotary import (
    apply_rope,
    apply_rope_reference,
    rope_and_write_kv,
    rope_cos_sin_cache,
)


def _case(lens, news, page, Hq, Hk, D, seed=0):
    return paged_case(lens, news, page, Hq, Hk, D, seed=seed)


def _dense(q, k, v, n, window=None):
    """One sequence: n new rows of q (n, Hq, D) at the end of k/v (L, Hk, D); fp64, dense mask."""
    L, G = k.shape[0], q.shape[1] // k.shape[1]
    k, v = k.double().repeat_interleave(G, 1), v.double().repeat_interleave(G, 1)
    s = torch.einsum("nhd,lhd->hnl", q.double(), k) / math.sqrt(q.shape[-1])
    rows = torch.arange(n)[:, None] + (L - n)
    cols = torch.arange(L)[None, :]
    keep = (cols <= rows) & ((cols > rows - window) if window else True)
    return torch.einsum("hnl,lhd->nhd", s.masked_fill(~keep, -math.inf).softmax(-1), v)


@pytest.mark.parametrize("page", [1, 16])
@pytest.mark.parametrize("window", [None, 7])
def test_paged_reference_matches_dense(page, window):
    lens, news = [1, 17, 113, 32], [1, 17, 9, 1]
    q, kc, vc, meta, ks, vs = _case(lens, news, page, 9, 3, 16)
    out = paged_attention(q, kc, vc, meta, sliding_window=window)  # CPU -> reference
    cu = meta.cu_seqlens_q.tolist()
    for i, n in enumerate(news):
        ref = _dense(q[cu[i]:cu[i + 1]], ks[i], vs[i], n, window)
        torch.testing.assert_close(out[cu[i]:cu[i + 1]].double(), ref, atol=1e-5, rtol=1e-5)


def test_write_reference_skips_negative_slots_and_quantizes_fp8():
    k = torch.tensor([[[1.0, -2.0, 1000.0, 0.3]]]).expand(3, 1, 4).contiguous()
    kc = torch.zeros(2, 2, 1, 4, dtype=torch.float8_e4m3fn)
    vc = kc.clone()
    write_kv_cache_reference(k, k, kc, vc, torch.tensor([2, -1, 0]), 0.5, 2.0)
    flat_k, flat_v = kc.view(4, 4).float(), vc.view(4, 4).float()
    expect_k = torch.tensor([2.0, -4.0, 448.0, 0.625])  # x / 0.5, saturated, 3-bit mantissa
    expect_v = torch.tensor([0.5, -1.0, 448.0, 0.15625])  # 0.15 -> nearest e4m3 0.15625
    for slot in (0, 2):
        torch.testing.assert_close(flat_k[slot], expect_k)
        torch.testing.assert_close(flat_v[slot], expect_v)
    assert flat_k[1].abs().sum() == 0 and flat_k[3].abs().sum() == 0


def test_fp8_reference_dequantizes():
    q, kc, vc, meta, ks, vs = _case([40, 5], [1, 1], 16, 4, 2, 16, seed=3)
    kc8 = (kc / 0.01).clamp(-448, 448).to(torch.float8_e4m3fn)
    vc8 = (vc / 0.02).clamp(-448, 448).to(torch.float8_e4m3fn)
    out = paged_attention_reference(q, kc8, vc8, meta, k_scale=0.01, v_scale=0.02)
    deq = paged_attention_reference(q, kc8.float() * 0.01, vc8.float() * 0.02, meta)
    torch.testing.assert_close(out, deq, atol=1e-6, rtol=1e-5)
    exact = paged_attention_reference(q, kc, vc, meta)
    rel = ((out - exact).norm() / exact.norm()).item()
    assert 1e-3 < rel < 0.06, rel  # e4m3: 3 mantissa bits -> a few percent, never zero


def test_resolve_kv_cache_dtype():
    assert resolve_kv_cache_dtype("auto", torch.bfloat16) == torch.bfloat16
    assert resolve_kv_cache_dtype("fp8", torch.bfloat16) == torch.float8_e4m3fn
    assert resolve_kv_cache_dtype("fp8_e4m3", torch.float16) == torch.float8_e4m3fn
    with pytest.raises(ValueError, match="fp8_e5m2"):
        resolve_kv_cache_dtype("fp8_e5m2", torch.bfloat16)
    with pytest.raises(ValueError, match="model dtype"):
        resolve_kv_cache_dtype("fp16", torch.bfloat16)


# -- validation ------------------------------------------------------------------------------
def test_paged_attention_validation():
    q, kc, vc, meta, _, _ = _case([5, 9], [1, 1], 4, 4, 2, 16)
    with pytest.raises(TypeError, match="q must be float16"):
        paged_attention(q.double(), kc, vc, meta)
    with pytest.raises(ValueError, match=r"q must be \(T, heads, head_dim\)"):
        paged_attention(q[None], kc, vc, meta)
    with pytest.raises(TypeError, match="k_cache dtype"):
        paged_attention(q, kc.half(), vc, meta)
    with pytest.raises(ValueError, match="multiple of KV heads"):
        paged_attention(q[:, :3], kc, vc, meta)
    with pytest.raises(ValueError, match="head_dim"):
        paged_attention(q[..., :8], kc, vc, meta)
    with pytest.raises(ValueError, match="must match"):
        paged_attention(q, kc, vc[:, :2], meta)
    with pytest.raises(ValueError, match="one query row per sequence"):
        paged_attention(q[:1], kc, vc, meta)
    bad = AttentionMetadata(**{**meta.__dict__, "block_tables": meta.block_tables.float()})
    with pytest.raises(TypeError, match="meta.block_tables must be int32 or int64"):
        paged_attention(q, kc, vc, bad)
    bad = AttentionMetadata(**{**meta.__dict__, "cu_seqlens_q": meta.cu_seqlens_q[:2]})
    with pytest.raises(ValueError, match=r"cu_seqlens_q \(N\+1,\)"):
        paged_attention(q, kc, vc, bad)
    with pytest.raises(ValueError, match="scales apply to fp8"):
        paged_attention(q, kc, vc, meta, k_scale=0.5)
    with pytest.raises(ValueError, match="k_scale must be a finite positive"):
        paged_attention(q, kc.to(torch.float8_e4m3fn), vc.to(torch.float8_e4m3fn), meta,
                        k_scale=0.0)
    with pytest.raises(ValueError, match="sliding_window"):
        paged_attention(q, kc, vc, meta, sliding_window=0)
    with pytest.raises(TypeError, match="meta must be AttentionMetadata"):
        paged_attention(q, kc, vc, meta.__dict__)


def test_write_kv_cache_validation():
    k = torch.randn(3, 2, 8)
    kc = torch.zeros(2, 4, 2, 8)
    with pytest.raises(ValueError, match="does not fit cache"):
        write_kv_cache(k, k, torch.zeros(2, 4, 3, 8), torch.zeros(2, 4, 3, 8),
                       torch.arange(3))
    with pytest.raises(ValueError, match="slot_mapping has 2 slots for 3 tokens"):
        write_kv_cache(k, k, kc, kc.clone(), torch.arange(2))
    with pytest.raises(TypeError, match="slot_mapping must be int32 or int64"):
        write_kv_cache(k, k, kc, kc.clone(), torch.arange(3.0))
    with pytest.raises(ValueError, match="same shape"):
        write_kv_cache(k, k[:, :1], kc, kc.clone(), torch.arange(3))
    with pytest.raises(ValueError, match="contiguous last dim"):
        write_kv_cache(k, k, kc.transpose(2, 3), kc.transpose(2, 3), torch.arange(3))


def test_rope_validation_and_fused_reference():
    cs = rope_cos_sin_cache(8, 16, 10000.0)
    q, k = torch.randn(3, 4, 8), torch.randn(3, 2, 8)
    pos = torch.tensor([0, 5, 15])
    with pytest.raises(TypeError, match="positions must be an int32/int64"):
        apply_rope(q, k, pos.float(), cs)
    with pytest.raises(ValueError, match="positions shape"):
        apply_rope(q, k, pos[:2], cs)
    with pytest.raises(ValueError, match="cos_sin_cache must be"):
        apply_rope(q, k, pos, cs[:, :4])
    with pytest.raises(TypeError, match="cos_sin_cache must be float32"):
        apply_rope(q, k, pos, cs.half())
    with pytest.raises(ValueError, match="same even head_dim"):
        apply_rope(q[..., :7], k[..., :7], pos, cs[:, :7])
    kc, vc = torch.zeros(2, 4, 2, 8), torch.zeros(2, 4, 2, 8)
    slots = torch.tensor([7, -1, 0])
    q_rot, k_rot = rope_and_write_kv(q, k, k * 2, pos, cs, kc, vc, slots)
    q_ref, k_ref = apply_rope_reference(q, k, pos, cs)
    torch.testing.assert_close(q_rot, q_ref)
    torch.testing.assert_close(kc.view(8, 2, 8)[[7, 0]], k_ref[[0, 2]])
    torch.testing.assert_close(vc.view(8, 2, 8)[[7, 0]], 2 * k[[0, 2]])
    assert kc.view(8, 2, 8)[1:7].abs().sum() == 0


def test_norm_and_activation_validation():
    x, w = torch.randn(3, 8), torch.ones(8)
    with pytest.raises(ValueError, match="weight must be"):
        rms_norm(x, torch.ones(7), 1e-6)
    with pytest.raises(ValueError, match="residual"):
        rms_norm(x, w, 1e-6, residual=torch.randn(3, 7))
    with pytest.raises(TypeError, match="float16, bfloat16 or float32"):
        rms_norm(x.long(), w, 1e-6)
    with pytest.raises(ValueError, match="eps"):
        rms_norm(x, w, -1.0)
    with pytest.raises(ValueError, match="last dim must be even"):
        silu_and_mul(torch.randn(3, 7))
    with pytest.raises(TypeError, match="float16, bfloat16 or float32"):
        silu_and_mul(torch.ones(3, 8, dtype=torch.int32))


def test_grad_calls_take_the_reference_path(interpret):
    """With the interpreter on, a call that needs autograd must still be differentiable."""
    x = torch.randn(4, 16, requires_grad=True)
    w = torch.randn(16, requires_grad=True)
    y = rms_norm(x, w, 1e-6)
    y.sum().backward()
    x2 = x.detach().clone().requires_grad_()
    w2 = w.detach().clone().requires_grad_()
    rms_norm_reference(x2, w2, 1e-6).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)
    torch.testing.assert_close(w.grad, w2.grad)
    g = torch.randn(4, 32, requires_grad=True)
    silu_and_mul(g).sum().backward()
    assert g.grad is not None and g.grad.abs().sum() > 0
    cs = rope_cos_sin_cache(8, 16, 10000.0)
    q = torch.randn(3, 2, 8, requires_grad=True)
    q_rot, _ = apply_rope(q, torch.randn(3, 1, 8), torch.tensor([1, 2, 3]), cs)
    q_rot.sum().backward()
    assert q.grad is not None


@pytest.mark.parametrize("trial", range(12))
def test_padded_reference_equals_per_sequence_loop(trial):
    """The batched (padded) CPU reference computes exactly what the per-sequence loop does:
    ragged lengths, sequences with no new tokens, NaN in unused cache slots, GQA, windows."""
    import random

    from tritium.ops import paged_attention as pa

    rng = random.Random(trial)
    torch.manual_seed(trial)
    bs, hk, g, d = rng.choice([1, 4, 16]), rng.choice([1, 3]), rng.choice([1, 3, 4]), 16
    lens = [rng.randint(1, 60) for _ in range(rng.randint(1, 5))]
    news = [rng.randint(0, n) for n in lens]
    news[0] = max(news[0], 1)
    per_seq = [math.ceil(n / bs) for n in lens]
    total = sum(per_seq) + 3
    kc = torch.full((total, bs, hk, d), float("nan"))
    vc = kc.clone()
    perm, tables, used = torch.randperm(total).tolist(), [], 0
    for n, nb in zip(lens, per_seq):
        table = perm[used : used + nb]
        used += nb
        tables.append(table)
        for t in range(n):
            kc[table[t // bs], t % bs] = torch.randn(hk, d)
            vc[table[t // bs], t % bs] = torch.randn(hk, d)
    width = max(per_seq)
    cu = [0]
    for n in news:
        cu.append(cu[-1] + n)
    meta = pa.AttentionMetadata(
        slot_mapping=torch.zeros(cu[-1], dtype=torch.long),
        block_tables=torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.int32),
        seq_lens=torch.tensor(lens, dtype=torch.int32),
        cu_seqlens_q=torch.tensor(cu, dtype=torch.int32),
        max_seqlen_q=max(news), max_seqlen_k=max(lens), decode_only=all(n == 1 for n in news),
    )
    q = torch.randn(cu[-1], hk * g, d)
    window = rng.choice([None, 5])
    loop = pa._paged_attention_loop(q, kc, vc, meta, None, None, None, window)
    padded = pa._paged_attention_padded(q, kc, vc, meta, None, None, None, window)
    assert not padded.isnan().any()
    torch.testing.assert_close(padded, loop, atol=1e-5, rtol=1e-5)  # fp32, summation order


def test_reference_takes_an_upper_bound_max_seqlen_k_and_mixed_metadata():
    """CUDA-graph batches pass max_model_len as max_seqlen_k and mixed steps num_decode_tokens:
    the reference result must not change (it pads further and masks)."""
    lens, news = [1, 17, 50, 40], [1, 1, 1, 9]
    q, kc, vc, meta, ks, vs = _case(lens, news, 16, 9, 3, 16, seed=4)
    exact = paged_attention(q, kc, vc, meta, sliding_window=20)
    mixed = dataclasses.replace(meta, max_seqlen_k=1000, num_decode_tokens=3)
    assert mixed.num_decodes == 3 and meta.num_decodes == 0
    torch.testing.assert_close(paged_attention(q, kc, vc, mixed, sliding_window=20), exact,
                               atol=1e-6, rtol=1e-6)  # fp32, longer padded sums
    cu = meta.cu_seqlens_q.tolist()
    for i, n in enumerate(news):
        ref = _dense(q[cu[i]:cu[i + 1]], ks[i], vs[i], n, 20)
        torch.testing.assert_close(exact[cu[i]:cu[i + 1]].double(), ref, atol=1e-5, rtol=1e-5)


def test_num_decode_tokens_validation():
    q, kc, vc, meta, _, _ = _case([5, 9, 7], [1, 1, 3], 4, 4, 2, 16)
    for bad in (4, -1, 2.0):
        with pytest.raises(ValueError, match="num_decode_tokens"):
            paged_attention(q, kc, vc, dataclasses.replace(meta, num_decode_tokens=bad))
    dq, dkc, dvc, dmeta, _, _ = _case([5, 9], [1, 1], 4, 4, 2, 16)
    assert dmeta.decode_only and dmeta.num_decodes == 2
    with pytest.raises(ValueError, match="num_decode_tokens"):
        paged_attention(dq, dkc, dvc, dataclasses.replace(dmeta, num_decode_tokens=1))
