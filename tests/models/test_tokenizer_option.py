"""The tokenizer option (vLLM's ``tokenizer``): a random:<preset> model served with a real
tokenizer (its vocabulary sized to it), a checkpoint's tokenizer replaced, and bad paths."""

from __future__ import annotations

import json

import pytest
import torch

from tritium import LLM, SamplingParams
from tritium.engine.config import EngineConfig
from tritium.models import load_model
from tritium.models.errors import ModelLoadError
from tritium.models.presets import get_preset
from tritium.models.tokenizer_cache import embedded_tokenizer_dir, load_tokenizer


@pytest.fixture(scope="module")
def smollm_tokenizer_dir() -> str:
    """The embedded SmolLM2's tokenizer as a plain folder (converted and cached if absent)."""
    return str(embedded_tokenizer_dir())


@pytest.fixture(scope="module")
def tiny_llm(smollm_tokenizer_dir) -> LLM:
    return LLM("random:tiny", tokenizer=smollm_tokenizer_dir, device="cpu", num_kv_blocks=64,
               max_model_len=256, max_num_seqs=4, max_num_batched_tokens=256)


def _word_level_tokenizer(folder) -> str:
    """A 5-token tokenizer saved as a folder (no chat template)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "<s>": 1, "</s>": 2, "hello": 3, "world": 4}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", bos_token="<s>",
                                  eos_token="</s>")
    tok.save_pretrained(folder)
    return str(folder)


def test_embedded_tokenizer_dir_is_a_plain_folder(smollm_tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm_tokenizer_dir)
    assert len(tok) == 49152 and tok.chat_template  # SmolLM2-Instruct: vocab and ChatML template


def test_random_preset_takes_the_tokenizers_vocab_and_special_tokens(tiny_llm):
    tok = tiny_llm.tokenizer
    mc = tiny_llm.engine.model_config
    preset = get_preset("tiny")
    assert preset.vocab_size == 1024 and mc.vocab_size == len(tok) == 49152
    assert mc.eos_token_ids == [tok.eos_token_id] and mc.bos_token_id == tok.bos_token_id
    runner = tiny_llm.engine.runner
    emb = runner.model.model.embed_tokens.weight
    assert emb.shape == (49152, preset.hidden_size)
    logits = runner.model.compute_logits(torch.zeros(1, preset.hidden_size))
    assert logits.shape == (1, 49152)
    # the rest of the shape is the preset's
    assert (mc.hidden_size, mc.num_hidden_layers, mc.num_attention_heads) == (
        preset.hidden_size, preset.num_hidden_layers, preset.num_attention_heads)


def test_random_preset_generates_text_and_chats(tiny_llm):
    tok = tiny_llm.tokenizer
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    (out,) = tiny_llm.generate(["The cache holds"], params)
    assert out.prompt_token_ids == tok.encode("The cache holds")
    ids = out.outputs[0].token_ids
    assert len(ids) == 12 and all(0 <= t < len(tok) for t in ids)
    assert out.outputs[0].text == tok.decode(ids) and out.outputs[0].text
    (again,) = tiny_llm.generate(["The cache holds"], params)
    assert again.outputs[0].token_ids == ids  # greedy, same weights: same tokens
    msgs = [{"role": "user", "content": "Hi"}]
    (chat,) = tiny_llm.chat(msgs, SamplingParams(temperature=0.0, max_tokens=4))
    # the tokenizer's ChatML template: <|im_start|>user ... <|im_start|>assistant
    rendered = tok.decode(chat.prompt_token_ids)
    assert rendered.rstrip().endswith("<|im_start|>assistant") and "Hi" in rendered


def test_small_tokenizer_fits_random_preset(tmp_path):
    folder = _word_level_tokenizer(tmp_path / "tok")
    model, tok, config = load_model("random:tiny", device="cpu", tokenizer=folder)
    assert config.vocab_size == 5 and config.eos_token_ids == [2] and config.bos_token_id == 1
    assert model.model.embed_tokens.weight.shape[0] == 5 and tok.convert_ids_to_tokens(3) == "hello"


def _hf_llama_folder(folder, vocab_size: int, with_tokenizer: bool) -> str:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=48,
                      num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                      max_position_embeddings=64, bos_token_id=1, eos_token_id=2)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    if with_tokenizer:
        _word_level_tokenizer(folder)
    return str(folder)


def test_checkpoint_tokenizer_replaced(tmp_path):
    # a folder with weights only loads with a tokenizer from elsewhere (smaller than its vocab)
    ckpt = _hf_llama_folder(tmp_path / "ckpt", vocab_size=97, with_tokenizer=False)
    with pytest.raises(ModelLoadError, match="has no tokenizer files"):
        load_model(ckpt, device="cpu")
    folder = _word_level_tokenizer(tmp_path / "tok")
    _, tok, config = load_model(ckpt, device="cpu", tokenizer=folder)
    assert len(tok) == 5 and config.vocab_size == 97  # a real checkpoint keeps its vocab
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["vocab_size"] == 97


def test_tokenizer_larger_than_checkpoint_vocab_is_refused(tmp_path, smollm_tokenizer_dir):
    ckpt = _hf_llama_folder(tmp_path / "ckpt", vocab_size=97, with_tokenizer=True)
    with pytest.raises(ModelLoadError, match=r"has 49152 tokens but the model .* vocabulary of 97"):
        load_model(ckpt, device="cpu", tokenizer=smollm_tokenizer_dir)


def test_bad_tokenizer_paths(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_tokenizer(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="has no tokenizer files"):
        load_tokenizer(str(tmp_path / "empty"))
    (tmp_path / "notes.txt").write_text("not a tokenizer")
    with pytest.raises(ModelLoadError, match="neither a folder nor a .gguf file"):
        load_tokenizer(str(tmp_path / "notes.txt"))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "tokenizer.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="cannot load a tokenizer from"):
        load_tokenizer(str(tmp_path / "broken"))
    # the engine's config refuses what is not a path; a missing path fails before the model loads
    for bad in ("", 3):
        with pytest.raises(TypeError, match="tokenizer must be a non-empty path"):
            EngineConfig(tokenizer=bad)
    with pytest.raises(ModelLoadError, match="does not exist"):
        LLM("random:tiny", tokenizer=str(tmp_path / "missing"), device="cpu")
