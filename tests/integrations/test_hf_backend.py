"""attn_implementation="tritium" vs HF's own eager / sdpa backends on tiny random models."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

import tritium.integrations.hf as tr_hf  # noqa: E402
import tritium.kernels.flash_attn  # noqa: E402, F401  (decorate kernels now, while
import tritium.kernels.flash_attn_bwd  # noqa: E402, F401  conftest's TRITON_INTERPRET=1 holds)
import tritium.ops.attention as tr_attn  # noqa: E402
from tritium.ops.block_mask import BlockMask  # noqa: E402

VOCAB = 97


@pytest.fixture(autouse=True)
def _registered():
    tr_hf.register()
    tr_hf.register()  # idempotent


@pytest.fixture
def calls(monkeypatch):
    """Counts tritium attention calls, to prove the backend actually ran (not a fallback)."""
    seen = []
    real = tr_attn.flash_attn_func

    def counting(*args, **kwargs):
        seen.append(kwargs.get("block_mask"))
        return real(*args, **kwargs)

    monkeypatch.setattr(tr_attn, "flash_attn_func", counting)
    return seen


def _model(arch: str, **extra):
    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    if arch == "llama":
        cfg = transformers.LlamaConfig(**common, **extra)
    else:
        cfg = transformers.Qwen2Config(**common, **extra)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="tritium",
                                                          dtype=torch.float32)
    assert model.config._attn_implementation == "tritium"
    return model.eval()


def _batch(B=3, S=21, pads=(0, 5, 11), seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (B, S), generator=g)
    am = torch.ones(B, S, dtype=torch.long)
    for i, p in enumerate(pads):
        am[i, :p] = 0  # left padding
    return ids, am


def _logits(model, impl, ids, am):
    model.set_attn_implementation(impl)
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=am).logits


QWEN_SLIDING = dict(use_sliding_window=True, sliding_window=6, max_window_layers=1,
                    layer_types=["full_attention", "sliding_attention"])


@pytest.mark.parametrize("arch,extra", [("llama", {}), ("qwen2", {}), ("qwen2", QWEN_SLIDING)],
                         ids=["llama", "qwen2", "qwen2_sliding"])
def test_logits_match_eager_and_sdpa(arch, extra, calls):
    model = _model(arch, **extra)
    for pads in [(0, 0, 0), (0, 5, 11)]:  # no padding: the mask-free causal path
        ids, am = _batch(pads=pads)
        calls.clear()
        ours = _logits(model, "tritium", ids, am)
        assert len(calls) == 2  # both layers ran through tritium
        assert all(c is None for c in calls) == (pads == (0, 0, 0) and not extra)
        real = am.bool()
        for impl in ("eager", "sdpa"):
            ref = _logits(model, impl, ids, am)
            # fp32 on both sides: only summation order differs
            torch.testing.assert_close(ours[real], ref[real], atol=2e-5, rtol=1e-5)


def test_training_step_gradients_match_eager(calls):
    model = _model("llama").train()
    ids, am = _batch(pads=(0, 3, 8))
    # Pad query rows see no key: eager averages over masked keys, tritium outputs 0 (as
    # flash-attn); so no loss term may read them -- nor the first real token, predicted from one.
    prev_pad = torch.cat([torch.ones_like(am[:, :1]), am[:, :-1]], 1) == 0
    labels = ids.masked_fill((am == 0) | prev_pad, -100)
    grads = {}
    for impl in ("tritium", "eager"):
        model.set_attn_implementation(impl)
        model.zero_grad()
        loss = model(input_ids=ids, attention_mask=am, labels=labels).loss
        loss.backward()
        grads[impl] = (loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    assert calls, "tritium attention never ran"
    torch.testing.assert_close(grads["tritium"][0], grads["eager"][0], atol=1e-6, rtol=1e-6)
    for name, g in grads["eager"][1].items():
        torch.testing.assert_close(grads["tritium"][1][name], g, atol=1e-5, rtol=1e-4,
                                   msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("arch,extra", [("llama", {}), ("qwen2", QWEN_SLIDING)],
                         ids=["llama", "qwen2_sliding"])
def test_generate_greedy_matches(arch, extra, calls):
    model = _model(arch, **extra)
    ids, am = _batch(pads=(0, 4, 9))
    out = {}
    for impl in ("tritium", "eager", "sdpa"):
        model.set_attn_implementation(impl)
        out[impl] = model.generate(input_ids=ids, attention_mask=am, max_new_tokens=8,
                                   do_sample=False, pad_token_id=0)
    assert any(isinstance(c, BlockMask) and c.seq_len_q == 1 for c in calls)  # decode steps
    assert torch.equal(out["tritium"], out["eager"])
    assert torch.equal(out["tritium"], out["sdpa"])


def test_user_4d_masks():
    model = _model("llama")
    ids, _ = _batch(B=2, S=12, pads=(0, 0))
    allowed = torch.ones(12, 12, dtype=torch.bool).tril()
    allowed[:, 2] = False  # nobody sees token 2 (but token 2 itself: row stays non-empty)
    allowed[2, 2] = True
    bool_mask = allowed[None, None].expand(2, 1, 12, 12)
    additive = torch.zeros(2, 1, 12, 12).masked_fill(~bool_mask, torch.finfo(torch.float32).min)
    ref = _logits(model, "eager", ids, additive)
    torch.testing.assert_close(_logits(model, "tritium", ids, bool_mask), ref,
                               atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(_logits(model, "tritium", ids, additive), ref,
                               atol=2e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="additive"):
        _logits(model, "tritium", ids, additive + 0.5)


def test_unsupported_inputs_raise():
    model = _model("llama")
    attn = model.model.layers[0].self_attn
    q = torch.randn(1, 4, 5, 16)
    kv = torch.randn(1, 2, 5, 16)
    with pytest.raises(ValueError, match="dropout"):
        tr_hf.tritium_attention_forward(attn, q, kv, kv, None, dropout=0.1)
    with pytest.raises(ValueError, match="position_bias"):
        tr_hf.tritium_attention_forward(attn, q, kv, kv, None, position_bias=torch.zeros(1))
    out, weights = tr_hf.tritium_attention_forward(attn, q, kv, kv, None, scaling=0.25)
    assert out.shape == (1, 5, 4, 16) and weights is None


def test_interpreted_kernels_match_eager(interpret, calls):
    """The same plumbing through the Triton kernels (interpreter, fp32) on a padded batch."""
    model = _model("llama")
    ids, am = _batch(B=2, S=19, pads=(0, 6))
    ours = _logits(model, "tritium", ids, am)
    assert any(isinstance(c, BlockMask) for c in calls)
    ref = _logits(model, "eager", ids, am)
    real = am.bool()
    torch.testing.assert_close(ours[real], ref[real], atol=1e-4, rtol=1e-4)  # tf32-free fp32
