"""Tiny random Llama-family models built with transformers, saved as safetensors folders,
loaded through tritium's loader: logits must equal Hugging Face's, on both model paths."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from tritium.models import build_model
from tritium.models.errors import ModelLoadError
from tritium.models.loader import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

# Odd sizes on purpose: vocab 97, 13-token sequences, head_dim 16 with 4 query heads.
BASE = dict(vocab_size=97, hidden_size=64, intermediate_size=88, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
            rms_norm_eps=1e-5, rope_theta=10000.0)
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}

VARIANTS = {
    # head_dim 16, theta 1e4: wavelengths 6.3 .. 19869, so with original length 64 the llama3
    # rule leaves 2 frequencies alone, blends 1 and divides 5 by the factor.
    "llama3-rope-untied": (LlamaConfig, LlamaForCausalLM, "llama",
                           dict(rope_scaling=LLAMA3_ROPE, tie_word_embeddings=False)),
    "llama-attention-bias": (LlamaConfig, LlamaForCausalLM, "llama",
                             dict(attention_bias=True, tie_word_embeddings=True)),
    "mqa-one-kv-head": (LlamaConfig, LlamaForCausalLM, "llama",
                        dict(num_key_value_heads=1, tie_word_embeddings=True)),
    # window 6 < 13 tokens: later queries must not see the first keys
    "mistral-sliding-window": (MistralConfig, MistralForCausalLM, "mistral",
                               dict(sliding_window=6, tie_word_embeddings=False)),
    "qwen2-qkv-bias": (Qwen2Config, Qwen2ForCausalLM, "qwen2",
                       dict(tie_word_embeddings=True)),
}

# fp32 on both sides; the only differences are summation order (fused qkv/gate_up matmuls,
# fused residual add) -> ~1e-6 relative on logits of magnitude ~1.
ATOL, RTOL = 1e-5, 1e-5


def _randomize(model: torch.nn.Module, seed: int) -> None:
    """HF zero-inits biases and one-inits norms: randomize everything so each tensor matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1.0 + 0.1 * noise if "norm" in name else 0.1 * noise)


@pytest.fixture(params=list(VARIANTS), scope="module")
def variant(request, tmp_path_factory):
    config_cls, model_cls, arch, extra = VARIANTS[request.param]
    hf = model_cls(config_cls(**{**BASE, **extra})).eval()
    _randomize(hf, seed=len(request.param))
    folder = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(folder)
    ckpt = load_checkpoint(folder, tokenizer=False)
    assert ckpt.config.architecture == arch
    model = build_model(ckpt.config, ckpt.state_dict, device="cpu", dtype=torch.float32)
    return request.param, hf, model


def _ids(seed: int, batch: int = 2, length: int = 13) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, BASE["vocab_size"], (batch, length), generator=g)


def test_logits_match_hf(variant):
    name, hf, model = variant
    ids = _ids(0)
    with torch.no_grad():
        ref = hf(ids, attention_mask=torch.ones_like(ids)).logits
        out = model(ids)
    assert out.shape == ref.shape == (2, 13, BASE["vocab_size"])
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=RTOL)


def test_paged_path_matches_hf(variant, paged_run):
    """Two sequences of different lengths packed per step: prefill 5, then 3, then decode."""
    name, hf, model = variant
    seqs = [_ids(1, 1, 13)[0].tolist(), _ids(2, 1, 9)[0].tolist()]
    outs = paged_run(model, seqs, chunks=[5, 3, 1])
    for seq, out in zip(seqs, outs):
        ids = torch.tensor([seq])
        with torch.no_grad():
            ref = hf(ids, attention_mask=torch.ones_like(ids)).logits[0]
        torch.testing.assert_close(out, ref, atol=ATOL, rtol=RTOL)


def test_parameters_fused_and_tied(variant):
    name, hf, model = variant
    cfg = model.config
    attn = model.model.layers[0].self_attn
    d = cfg.head_dim
    expect_rows = (cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * d
    assert attn.qkv_proj.weight.shape == (expect_rows, cfg.hidden_size)
    assert (attn.qkv_proj.bias is not None) == cfg.attention_bias
    # Qwen2 biases q/k/v only; Llama's attention_bias biases o_proj as well
    assert (attn.o_proj.bias is not None) == (cfg.attention_bias and cfg.architecture != "qwen2")
    assert (model.lm_head is None) == cfg.tie_word_embeddings


def test_load_hf_state_dict_reports_missing_and_unexpected(variant):
    name, hf, model = variant
    sd = dict(hf.state_dict())
    sd.pop("model.layers.1.mlp.up_proj.weight")
    with pytest.raises(ModelLoadError, match="missing 1 tensors.*layers.1.mlp.up_proj"):
        model.load_hf_state_dict(sd)
    sd = dict(hf.state_dict())
    sd["model.layers.0.self_attn.q_norm.weight"] = torch.ones(4)
    with pytest.raises(ModelLoadError, match="unexpected.*q_norm"):
        model.load_hf_state_dict(sd)
    sd = dict(hf.state_dict())
    sd["model.norm.weight"] = torch.ones(3)
    with pytest.raises(ModelLoadError, match=r"model.norm.weight has shape \(3,\)"):
        model.load_hf_state_dict(sd)


def test_rope_table_stays_float32_when_cast(variant):
    name, hf, model = variant
    half = build_model(model.config, hf.state_dict(), device="cpu", dtype=torch.float32)
    half.to(torch.bfloat16)
    assert half.model.embed_tokens.weight.dtype == torch.bfloat16
    table = half.model.rotary_emb.cos_sin_cache
    assert table.dtype == torch.float32
    torch.testing.assert_close(table, model.model.rotary_emb.cos_sin_cache, atol=0, rtol=0)


@pytest.mark.parametrize("use_plain", [False, True], ids=["paged", "plain"])
def test_triton_kernels_under_interpreter(variant, paged_run, interpret, use_plain):
    """The GPU path's kernels (run by Triton's interpreter on CPU) on the model's real call
    patterns: strided q/k/v views of the fused projection, GQA/MQA, windows, packed sequences."""
    name, hf, model = variant
    seqs = [_ids(3, 1, 11)[0].tolist(), _ids(4, 1, 7)[0].tolist()]
    if use_plain:
        with torch.no_grad():
            outs = [model(torch.tensor([s]))[0] for s in seqs]
    else:
        outs = paged_run(model, seqs, chunks=[4, 1])
    for seq, out in zip(seqs, outs):
        ids = torch.tensor([seq])
        with torch.no_grad():
            ref = hf(ids, attention_mask=torch.ones_like(ids)).logits[0]
        torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
