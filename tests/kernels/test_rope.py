"""Fused RoPE (+ paged K/V cache write, + fp8 quantization) kernel against the references."""

from __future__ import annotations

import pytest
import torch

from tritium.ops.paged_attention import write_kv_cache, write_kv_cache_reference
from tritium.ops.rotary import (
    apply_rope,
    apply_rope_reference,
    rope_and_write_kv,
    rope_and_write_kv_reference,
    rope_cos_sin_cache,
)

# rope is elementwise in fp32 then rounded once: the kernel and the reference round the same
# fp32 value, so outputs match to the last bit, except bf16 under the interpreter, whose
# fp32 -> bf16 cast truncates instead of rounding to nearest (Triton 3.9): one bf16 ulp.
DTYPES = [torch.float16, torch.bfloat16, torch.float32]
EXACT = {torch.float16: 0.0, torch.float32: 0.0, torch.bfloat16: 2**-7}


def _poison(shape, dtype):
    return torch.full(shape, float("nan")).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_apply_rope_batched_strided(dtype):
    torch.manual_seed(0)
    B, S, Hq, Hk, D = 2, 5, 6, 2, 48
    cs = rope_cos_sin_cache(D, 64, 10000.0, {"rope_type": "llama3", "factor": 8.0,
                                             "original_max_position_embeddings": 32})
    qkv = torch.randn(B, S, (Hq + 2 * Hk) * D).to(dtype)
    q = qkv[..., :Hq * D].reshape(B, S, Hq, D)  # non-contiguous views, as the model makes
    k = qkv[..., Hq * D:(Hq + Hk) * D].reshape(B, S, Hk, D)
    pos = torch.randint(0, 64, (B, S))
    q_rot, k_rot = apply_rope(q, k, pos, cs)
    q_ref, k_ref = apply_rope_reference(q, k, pos, cs)
    rtol = EXACT[dtype]
    torch.testing.assert_close(q_rot, q_ref, rtol=rtol, atol=rtol)
    torch.testing.assert_close(k_rot, k_ref, rtol=rtol, atol=rtol)


@pytest.mark.parametrize("page", [1, 16])
@pytest.mark.parametrize("cache_dtype", [torch.float16, torch.float8_e4m3fn])
def test_rope_and_write_kv(page, cache_dtype):
    torch.manual_seed(1)
    T, Hq, Hk, D = 9, 8, 2, 32
    nb = 12 if page == 1 else 4
    cs = rope_cos_sin_cache(D, 100, 500000.0)
    q, k, v = (torch.randn(T, h, D, dtype=torch.float16) for h in (Hq, Hk, Hk))
    pos = torch.randint(0, 100, (T,))
    slots = torch.randperm(nb * page)[:T]
    slots[3] = -1  # padding row: must not be written
    scale = 0.05 if cache_dtype == torch.float8_e4m3fn else None
    kc, vc = _poison((nb, page, Hk, D), cache_dtype), _poison((nb, page, Hk, D), cache_dtype)
    kc_ref, vc_ref = kc.clone(), vc.clone()
    q_rot, k_rot = rope_and_write_kv(q, k, v, pos, cs, kc, vc, slots, scale, scale)
    q_ref, k_ref = rope_and_write_kv_reference(q, k, v, pos, cs, kc_ref, vc_ref, slots, scale,
                                               scale)
    torch.testing.assert_close(q_rot, q_ref, rtol=0, atol=0)
    torch.testing.assert_close(k_rot, k_ref, rtol=0, atol=0)
    # bit-identical caches, NaN (untouched) slots included
    assert torch.equal(kc.view(torch.uint8), kc_ref.view(torch.uint8))
    assert torch.equal(vc.view(torch.uint8), vc_ref.view(torch.uint8))
    written = ~kc.float().isnan().flatten(2).all(-1).flatten()  # (slots,)
    assert written.sum().item() == T - 1  # every row but the padding one
    assert written[slots[slots >= 0]].all()


def test_write_kv_cache_fp8_saturates_and_rounds_to_even():
    # values beyond +-448 * scale saturate; exact fp8 midpoints round to even, as torch does
    vals = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
    vals = vals[vals.isfinite()].sort().values
    mids = (vals[1:] + vals[:-1]) / 2
    x = torch.cat([vals, mids, torch.tensor([1e4, -1e4, 500.0, -0.0])])
    x = torch.cat([x, torch.zeros(-x.numel() % 64)]).view(-1, 2, 32)
    T = x.shape[0]
    kc = torch.zeros(T, 1, 2, 32, dtype=torch.float8_e4m3fn)
    vc, kc_ref, vc_ref = kc.clone(), kc.clone(), kc.clone()
    slots = torch.arange(T)
    write_kv_cache(x, -x, kc, vc, slots, k_scale=1.0, v_scale=1.0)
    write_kv_cache_reference(x, -x, kc_ref, vc_ref, slots, 1.0, 1.0)
    assert torch.equal(kc.view(torch.uint8), kc_ref.view(torch.uint8))
    assert torch.equal(vc.view(torch.uint8), vc_ref.view(torch.uint8))
    assert kc.float().abs().max().item() == 448.0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_write_kv_cache_plain(dtype):
    torch.manual_seed(2)
    T, Hk, D, page = 7, 3, 24, 4
    k, v = torch.randn(T, Hk, D).to(dtype), torch.randn(T, Hk, D).to(dtype)
    slots = torch.tensor([5, 0, -1, 11, 3, 9, 2])
    kc, vc = _poison((3, page, Hk, D), dtype), _poison((3, page, Hk, D), dtype)
    kc_ref, vc_ref = kc.clone(), vc.clone()
    write_kv_cache(k, v, kc, vc, slots)
    write_kv_cache_reference(k, v, kc_ref, vc_ref, slots)
    torch.testing.assert_close(kc, kc_ref, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(vc, vc_ref, rtol=0, atol=0, equal_nan=True)
