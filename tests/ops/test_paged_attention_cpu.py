"""The CPU fast path (ops/paged_attention_cpu.py) against the fp32 reference oracle."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from paged_helpers import paged_case

from tritium.ops.paged_attention import (
    paged_attention,
    paged_attention_reference,
)
from tritium.ops.paged_attention_cpu import paged_attention_cpu


def _case(lens, news, page, Hq, Hk, D, seed=0, dtype=torch.float32, num_decode_tokens=None):
    """Sequences on shuffled pages; unwritten slots and padding table entries read NaN."""
    q, kc, vc, meta, _, _ = paged_case(lens, news, page, Hq, Hk, D, seed, dtype,
                                       num_decode_tokens, pad_cols=2)
    return q, kc, vc, meta


def _check(q, kc, vc, meta, window=None, ks=1.0, vs=1.0, atol=2e-5):
    scale = q.shape[-1] ** -0.5
    got = paged_attention_cpu(q, kc, vc, meta, scale, ks, vs, window)
    ref = paged_attention_reference(q, kc, vc, meta, scale, k_scale=ks, v_scale=vs,
                                    sliding_window=window)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.float(), ref.float(), atol=atol, rtol=atol)


@pytest.mark.parametrize("page", [1, 16])
@pytest.mark.parametrize("window", [None, 5])
@pytest.mark.parametrize("heads", [(9, 3), (4, 4), (6, 1)])
def test_decode_batch(page, window, heads):
    lens = [1, 17, 113, 16, 33]  # 16: a full last page
    _check(*_case(lens, [1] * len(lens), page, *heads, 16), window)


@pytest.mark.parametrize("page", [1, 16])
@pytest.mark.parametrize("window", [None, 7])
def test_mixed_and_prefill_batches(page, window):
    # decodes first (num_decode_tokens = 2), then a fresh prompt, a chunk over a cached
    # prefix, and a zero-token sequence
    lens, news = [40, 5, 23, 113, 9], [1, 1, 23, 30, 0]
    q, kc, vc, meta = _case(lens, news, page, 9, 3, 16, num_decode_tokens=2)
    _check(q, kc, vc, meta, window)
    # the same batch with no decode split: every sequence through the per-sequence path
    _check(q, kc, vc, dataclasses.replace(meta, num_decode_tokens=None), window)


def test_fp8_cache_scales():
    q, kc, vc, meta = _case([1, 30, 64], [1, 1, 1], 16, 8, 2, 32)
    kc8 = (kc / 0.05).clamp(-448, 448).to(torch.float8_e4m3fn)
    vc8 = (vc / 0.02).clamp(-448, 448).to(torch.float8_e4m3fn)
    _check(q, kc8, vc8, meta, ks=0.05, vs=0.02)


def test_bf16_model():
    q, kc, vc, meta = _case([3, 50, 17], [1, 20, 17], 16, 9, 3, 64, dtype=torch.bfloat16,
                            num_decode_tokens=1)
    # bf16 inputs; the oracle computes in fp32 from the same bf16 values, SDPA in bf16 with
    # fp32 accumulation: outputs differ by bf16 rounding of intermediates (~2**-8 relative)
    _check(q, kc, vc, meta, atol=2e-2)


def test_engine_dispatch_uses_it_on_cpu(monkeypatch):
    calls = []
    import tritium.ops.paged_attention_cpu as cpu_mod

    real = cpu_mod.paged_attention_cpu
    monkeypatch.setattr(cpu_mod, "paged_attention_cpu",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    q, kc, vc, meta = _case([5, 9], [1, 1], 4, 4, 2, 16)
    out = paged_attention(q, kc, vc, meta)
    assert calls and torch.isfinite(out).all()


def test_step_plan_shared_across_layers():
    """Layers share one metadata (and its cached gather plan): a sliding-window layer must not
    change what a full-attention layer after it sees."""
    q, kc, vc, meta = _case([40, 5, 23, 113], [1, 1, 1, 1], 16, 9, 3, 16)
    first = paged_attention_cpu(q, kc, vc, meta, 0.25, sliding_window=7)
    again = paged_attention_cpu(q, kc, vc, meta, 0.25)  # same meta: the cached plan
    fresh = paged_attention_cpu(q, kc, vc, dataclasses.replace(meta), 0.25)
    torch.testing.assert_close(again, fresh, rtol=0, atol=0)
    assert not torch.equal(first, fresh)
