"""ModelConfig: validation, HF config.json parsing (transformers 4 and 5 layouts), GGUF metadata."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import LlamaConfig, MistralConfig, Qwen2Config

from tritium.models.config import ModelConfig
from tritium.models.errors import ModelLoadError
from tritium.models.gguf_config import llama3_scaling_from_freq_factors
from tritium.ops.rotary import rope_inv_freq

LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 8192}


def _base(**kw):
    args = dict(architecture="llama", vocab_size=100, hidden_size=64, intermediate_size=96,
                num_hidden_layers=2, num_attention_heads=4)
    args.update(kw)
    return args


# -- validation ----------------------------------------------------------------------------------


def test_defaults_filled_in():
    c = ModelConfig(**_base(eos_token_ids=5))
    assert c.num_key_value_heads == 4 and c.head_dim == 16
    assert c.eos_token_ids == [5] and c.rope_scaling is None and c.sliding_window is None
    assert ModelConfig(**c.to_dict()) == c


@pytest.mark.parametrize("kw, match", [
    (dict(architecture="gpt2"), "unsupported architecture 'gpt2'.*llama, mistral, qwen2"),
    (dict(vocab_size=0), "vocab_size"),
    (dict(hidden_size=-64), "hidden_size"),
    (dict(num_hidden_layers=2.0), "num_hidden_layers"),
    (dict(num_attention_heads=True), "num_attention_heads"),
    (dict(num_key_value_heads=3), "multiple of num_key_value_heads"),
    (dict(hidden_size=66), "not divisible by num_attention_heads"),
    (dict(head_dim=15), "even"),
    (dict(rms_norm_eps=0.0), "rms_norm_eps"),
    (dict(rope_theta=-1.0), "rope_theta"),
    (dict(rope_scaling={"rope_type": "yarn", "factor": 4.0}),
     "rope scaling type 'yarn'; supported: linear, llama3"),
    (dict(rope_scaling={"rope_type": "llama3", "factor": 8.0}), "low_freq_factor"),
    (dict(rope_scaling={**LLAMA3, "high_freq_factor": 0.5}), "must exceed"),
    (dict(rope_scaling=[1, 2]), "dict or None"),
    (dict(eos_token_ids=[2, -1]), "eos_token_ids"),
    (dict(bos_token_id="1"), "bos_token_id"),
    (dict(sliding_window=0), "sliding_window"),
    (dict(max_position_embeddings=None), "max_position_embeddings"),
])
def test_invalid_values_raise_value_error(kw, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig(**_base(**kw))


def test_explicit_head_dim_and_rope_scaling_normalized():
    c = ModelConfig(**_base(hidden_size=66, head_dim=32, num_key_value_heads=2,
                            rope_scaling={"type": "linear", "factor": 2, "rope_theta": 1.0},
                            eos_token_ids=[3, 3, 1]))
    assert c.head_dim == 32 and c.num_key_value_heads == 2
    assert c.rope_scaling == {"rope_type": "linear", "factor": 2}
    assert c.eos_token_ids == [3, 1]
    assert ModelConfig(**_base(rope_scaling={"rope_type": "default"})).rope_scaling is None


# -- Hugging Face config.json --------------------------------------------------------------------


def test_from_hf_llama_transformers5_layout():
    hf = LlamaConfig(vocab_size=1000, hidden_size=96, intermediate_size=160, num_hidden_layers=3,
                     num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=16384,
                     rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=1,
                     eos_token_id=[2, 7], rope_parameters={"rope_theta": 500000.0, **LLAMA3})
    d = hf.to_dict()
    assert "rope_parameters" in d and "rope_theta" not in d  # the layout under test
    c = ModelConfig.from_hf_config(d)
    assert (c.architecture, c.vocab_size, c.hidden_size, c.intermediate_size) == (
        "llama", 1000, 96, 160)
    assert (c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads, c.head_dim) == (
        3, 6, 2, 16)
    assert c.rope_theta == 500000.0 and c.rope_scaling == LLAMA3
    assert c.max_position_embeddings == 16384 and c.rms_norm_eps == 1e-5
    assert c.tie_word_embeddings and not c.attention_bias
    assert c.bos_token_id == 1 and c.eos_token_ids == [2, 7] and c.sliding_window is None


def test_from_hf_transformers4_layout():
    d = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128256,
         "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
         "num_attention_heads": 32, "num_key_value_heads": 8, "rope_theta": 500000.0,
         "rope_scaling": {"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                          "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
         "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "bos_token_id": 128000,
         "eos_token_id": 128001, "hidden_act": "silu", "attention_bias": False}
    c = ModelConfig.from_hf_config(d)
    assert c.head_dim == 128 and c.rope_theta == 500000.0 and c.rope_scaling == LLAMA3
    assert c.eos_token_ids == [128001] and not c.tie_word_embeddings


def test_from_hf_model_type_inferred_from_architectures():
    d = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                    num_attention_heads=2).to_dict()
    d.pop("model_type", None)
    d["architectures"] = ["MistralForCausalLM"]
    assert ModelConfig.from_hf_config(d).architecture == "mistral"


def test_from_hf_qwen2_bias_and_sliding_window():
    kw = dict(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
              num_attention_heads=4, num_key_value_heads=2, rope_theta=1e6, eos_token_id=5)
    c = ModelConfig.from_hf_config(Qwen2Config(**kw).to_dict())
    assert c.architecture == "qwen2" and c.attention_bias and c.rope_theta == 1e6
    assert c.sliding_window is None  # use_sliding_window defaults to False
    c = ModelConfig.from_hf_config(Qwen2Config(**kw, use_sliding_window=True, sliding_window=32,
                                               max_window_layers=0).to_dict())
    assert c.sliding_window == 32
    mixed = Qwen2Config(**kw, use_sliding_window=True, sliding_window=32, max_window_layers=2)
    with pytest.raises(ModelLoadError, match="only some layers"):
        ModelConfig.from_hf_config(mixed.to_dict())


def test_from_hf_mistral_sliding_window():
    hf = MistralConfig(vocab_size=100, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=1, sliding_window=4096)
    c = ModelConfig.from_hf_config(hf.to_dict())
    assert c.architecture == "mistral" and c.sliding_window == 4096 and c.num_key_value_heads == 1


@pytest.mark.parametrize("d, match", [
    ({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]},
     "unsupported architecture 'gpt2'; supported: llama, mistral, qwen2"),
    ({"model_type": "bert"}, "unsupported architecture 'bert'"),
    ({"architectures": ["BertModel"]}, "unsupported architecture 'BertModel'"),
    ({"model_type": "llama", "architectures": ["LlamaForSequenceClassification"]},
     "unsupported model class 'LlamaForSequenceClassification'"),
    ({"model_type": "llama", "hidden_act": "gelu"}, "hidden_act 'gelu'"),
    ({"model_type": "llama", "mlp_bias": True}, "mlp_bias"),
    ({"model_type": "llama", "vocab_size": 10}, "lacks required field.*hidden_size"),
])
def test_from_hf_rejects(d, match):
    with pytest.raises(ModelLoadError, match=match):
        ModelConfig.from_hf_config(d, source="cfg.json")


def test_from_hf_invalid_values_become_model_load_error():
    d = {"model_type": "llama", "vocab_size": 50, "hidden_size": 30, "intermediate_size": 64,
         "num_hidden_layers": 1, "num_attention_heads": 4}
    with pytest.raises(ModelLoadError, match="my/config.json: invalid model config: hidden_size"):
        ModelConfig.from_hf_config(d, source="my/config.json")


# -- GGUF metadata -------------------------------------------------------------------------------


def _gguf_md(arch="llama", **extra):
    md = {"general.architecture": arch, f"{arch}.context_length": 8192,
          f"{arch}.embedding_length": 576, f"{arch}.block_count": 30,
          f"{arch}.feed_forward_length": 1536, f"{arch}.attention.head_count": 9,
          f"{arch}.attention.head_count_kv": 3, f"{arch}.rope.freq_base": 100000.0,
          f"{arch}.attention.layer_norm_rms_epsilon": 1e-5, f"{arch}.rope.dimension_count": 64,
          "tokenizer.ggml.tokens": ["a"] * 49152, "tokenizer.ggml.bos_token_id": 1,
          "tokenizer.ggml.eos_token_id": 2}
    md.update(extra)
    return md


def test_from_gguf_llama():
    c = ModelConfig.from_gguf_metadata(_gguf_md(), ["token_embd.weight", "blk.0.attn_q.weight"])
    assert c == ModelConfig(
        architecture="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536,
        num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, head_dim=64,
        rms_norm_eps=1e-5, rope_theta=100000.0, max_position_embeddings=8192,
        tie_word_embeddings=True, attention_bias=False, bos_token_id=1, eos_token_ids=[2])


def test_from_gguf_qwen2_untied_with_bias_and_eot():
    md = _gguf_md("qwen2", **{"tokenizer.ggml.eot_token_id": 7, "qwen2.vocab_size": 49152})
    c = ModelConfig.from_gguf_metadata(md, ["output.weight", "blk.0.attn_q.bias"])
    assert c.architecture == "qwen2" and c.attention_bias and not c.tie_word_embeddings
    assert c.eos_token_ids == [2, 7]


def test_from_gguf_key_length_sets_head_dim():
    md = _gguf_md(**{"llama.attention.key_length": 128, "llama.rope.dimension_count": 128})
    assert ModelConfig.from_gguf_metadata(md, []).head_dim == 128


@pytest.mark.parametrize("md, match", [
    (_gguf_md("gpt2"), "unsupported GGUF architecture 'gpt2'; supported: llama.*qwen2"),
    ({"general.architecture": "bert"}, "unsupported GGUF architecture 'bert'"),
    ({k: v for k, v in _gguf_md().items() if k != "llama.block_count"}, "llama.block_count"),
    (_gguf_md(**{"llama.rope.dimension_count": 32}), "rope.dimension_count = 32"),
    (_gguf_md(**{"llama.attention.head_count_kv": [3, 1]}), "varies per layer"),
    (_gguf_md(**{"llama.rope.scaling.type": "yarn"}), "unsupported rope scaling type 'yarn'"),
    (_gguf_md(**{"llama.attention.head_count_kv": 2}), "multiple of num_key_value_heads"),
    ({k: v for k, v in _gguf_md().items() if k != "tokenizer.ggml.tokens"}, "token list"),
])
def test_from_gguf_rejects(md, match):
    with pytest.raises(ModelLoadError, match=match):
        ModelConfig.from_gguf_metadata(md, [], source="x.gguf")


def test_from_gguf_linear_rope_scaling():
    md = _gguf_md(**{"llama.rope.scaling.type": "linear", "llama.rope.scaling.factor": 4.0})
    assert ModelConfig.from_gguf_metadata(md, []).rope_scaling == {"rope_type": "linear",
                                                                   "factor": 4.0}


def _llama_cpp_rope_freqs(scaling: dict, head_dim: int, theta: float) -> list[float]:
    """The rope_freqs.weight llama.cpp writes, from transformers' own llama3 frequencies."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    hf = LlamaConfig(hidden_size=head_dim * 4, num_attention_heads=4, head_dim=head_dim,
                     max_position_embeddings=131072,
                     rope_parameters={"rope_theta": theta, **scaling})
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](hf, "cpu")
    base = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    return (base / scaled.double()).float().tolist()  # stored as F32, as llama.cpp does


@pytest.mark.parametrize("scaling, head_dim, theta", [
    (LLAMA3, 128, 500000.0),  # Llama 3.1
    ({**LLAMA3, "factor": 32.0}, 64, 500000.0),  # Llama 3.2 1B
    ({**LLAMA3, "high_freq_factor": 2.0, "original_max_position_embeddings": 4096}, 64, 10000.0),
])
def test_llama3_scaling_recovered_from_rope_freqs(scaling, head_dim, theta):
    factors = _llama_cpp_rope_freqs(scaling, head_dim, theta)
    got = llama3_scaling_from_freq_factors(factors, head_dim, theta)
    # only (L/(high-low), low/(high-low)) are identifiable; with low = 1 they pin high and L
    assert got["factor"] == scaling["factor"] and got["low_freq_factor"] == 1.0
    assert math.isclose(got["high_freq_factor"], scaling["high_freq_factor"], rel_tol=1e-3)
    assert got["original_max_position_embeddings"] == scaling["original_max_position_embeddings"]
    # and the frequencies our rotary op derives from it are the original ones
    want = rope_inv_freq(head_dim, theta, scaling)
    torch.testing.assert_close(rope_inv_freq(head_dim, theta, got), want, rtol=1e-5, atol=0)
    md = _gguf_md(**{"llama.rope.freq_base": theta, "llama.rope.dimension_count": head_dim,
                     "llama.attention.key_length": head_dim})
    c = ModelConfig.from_gguf_metadata(md, [], rope_freqs=factors)
    assert c.rope_scaling == got


def test_rope_freqs_all_ones_means_no_scaling_and_garbage_is_rejected():
    assert llama3_scaling_from_freq_factors([1.0] * 32, 64, 10000.0) is None
    bumpy = [1.0, 3.0] * 16
    with pytest.raises(ModelLoadError, match="does not follow llama3"):
        llama3_scaling_from_freq_factors(bumpy, 64, 10000.0)
    with pytest.raises(ModelLoadError, match="has 3 entries, expected 32"):
        llama3_scaling_from_freq_factors([1.0, 2.0, 3.0], 64, 10000.0)
