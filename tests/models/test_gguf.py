"""GGUF: our torch dequantizers vs gguf's numpy ones, Q/K un-permutation, HF names, and small GGUF
files written here with gguf.GGUFWriter and read back through load_checkpoint (config, every
tensor, the embedded tokenizer and its cache, and damaged or unsupported files)."""

from __future__ import annotations

import os

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from gguf.constants import GGML_QUANT_SIZES

from tritium.models import tokenizer_cache
from tritium.models.dequant import SUPPORTED_QUANT_TYPES, dequantize
from tritium.models.errors import ModelLoadError
from tritium.models.gguf import hf_name, unpermute_qk
from tritium.models.loader import load_checkpoint

BLOCK_TYPES = [Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q4_K, Q.Q5_K, Q.Q6_K]
QUANTIZABLE = {Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.BF16}  # types gguf.quants.quantize implements
# byte offsets of the fp16 scale fields inside one block, per type
F16_FIELDS = {Q.Q8_0: (0,), Q.Q4_0: (0,), Q.Q4_1: (0, 2), Q.Q4_K: (0, 2), Q.Q5_K: (0, 2),
              Q.Q6_K: (208,), Q.Q2_K: (80, 82)}


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Tokenizer cache in a temp folder, never the user's ~/.cache."""
    monkeypatch.setenv("TRITIUM_CACHE_DIR", str(tmp_path / "cache"))


def random_blocks(qtype: Q, rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """(rows, cols/block*type_size) uint8: every bit random except finite, small fp16 scales."""
    block, size = GGML_QUANT_SIZES[qtype]
    n = rows * cols // block
    raw = rng.integers(0, 256, size=(n, size), dtype=np.uint8)
    for off in F16_FIELDS.get(qtype, ()):
        scale = (rng.standard_normal(n) * 0.05).astype(np.float16)
        raw[:, off:off + 2] = scale.view(np.uint8).reshape(n, 2)
    return raw.reshape(rows, -1)


def encode(values: np.ndarray, qtype: Q, rng: np.random.Generator) -> np.ndarray:
    """Raw GGUF bytes (rows, row_bytes) for float32 ``values`` (rows, cols) in ``qtype``."""
    if qtype == Q.F32:
        return values.astype(np.float32).view(np.uint8)
    if qtype == Q.F16:
        return values.astype(np.float16).view(np.uint8)
    if qtype in QUANTIZABLE:
        return gguf.quants.quantize(values.astype(np.float32), qtype)
    return random_blocks(qtype, values.shape[0], values.shape[1], rng)


# -- dequantizers --------------------------------------------------------------------------------


@pytest.mark.parametrize("qtype", BLOCK_TYPES, ids=lambda q: q.name)
@pytest.mark.parametrize("shape", [(3, 512), (2, 5, 256)])
def test_dequantize_random_blocks_matches_gguf(qtype, shape):
    rng = np.random.default_rng(int(qtype))
    cols = shape[-1]
    rows = int(np.prod(shape[:-1]))
    raw = random_blocks(qtype, rows, cols, rng)
    want = gguf.quants.dequantize(raw, qtype).reshape(shape)
    got = dequantize(torch.from_numpy(raw.reshape(-1)), qtype, shape)
    assert got.dtype == torch.float32 and tuple(got.shape) == shape
    assert np.isfinite(want).all()
    # same float32 operations in the same order: bit-exact
    assert torch.equal(got, torch.from_numpy(want))


@pytest.mark.parametrize("qtype", sorted(QUANTIZABLE, key=int), ids=lambda q: q.name)
def test_dequantize_quantized_data_matches_gguf(qtype):
    rng = np.random.default_rng(7)
    values = (rng.standard_normal((5, 96)) * 3).astype(np.float32)
    raw = gguf.quants.quantize(values, qtype)
    want = gguf.quants.dequantize(raw, qtype)
    got = dequantize(torch.from_numpy(raw.reshape(-1).view(np.uint8)), qtype, (5, 96))
    assert torch.equal(got, torch.from_numpy(want))
    # and the round trip is close to the input (a wrong nibble order would not be)
    tol = {Q.Q8_0: 0.05, Q.Q4_0: 0.8, Q.Q4_1: 0.8, Q.BF16: 0.05}[qtype]
    assert np.abs(got.numpy() - values).max() < tol


@pytest.mark.parametrize("qtype", [Q.F32, Q.F16], ids=lambda q: q.name)
def test_dequantize_float_types(qtype):
    values = np.random.default_rng(3).standard_normal((7, 13)).astype(np.float32)
    raw = encode(values, qtype, None)
    want = gguf.quants.dequantize(raw.reshape(-1), qtype).reshape(7, 13)
    got = dequantize(torch.from_numpy(raw.reshape(-1).copy()), qtype, (7, 13))
    assert torch.equal(got, torch.from_numpy(np.asarray(want, dtype=np.float32)))


def test_dequantize_rejects_bad_input():
    raw = torch.zeros(34 * 3, dtype=torch.uint8)
    with pytest.raises(ValueError, match="do not hold a Q8_0 tensor of shape"):
        dequantize(raw, Q.Q8_0, (2, 32))
    with pytest.raises(ValueError, match="unsupported GGUF tensor type Q2_K"):
        dequantize(raw, Q.Q2_K, (3, 32))
    with pytest.raises(ValueError, match="1-D uint8"):
        dequantize(raw.float(), Q.Q8_0, (3, 32))
    assert set(SUPPORTED_QUANT_TYPES) == {Q.F32, Q.F16, Q.BF16, *BLOCK_TYPES}


# -- permutation and names -----------------------------------------------------------------------


def llama_cpp_permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """What llama.cpp's converter does to HF q/k rows (convert_hf_to_gguf: LlamaModel.permute)."""
    return (w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def hf_from_gguf_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Index-by-index inverse: HF row (head h, half, i) is GGUF row h*D + 2*i + half."""
    d = w.shape[0] // n_heads
    idx = [h * d + 2 * i + half for h in range(n_heads) for half in range(2)
           for i in range(d // 2)]
    return w[idx]


@pytest.mark.parametrize("n_heads, head_dim", [(1, 2), (3, 64), (4, 6)])
def test_unpermute_qk_inverts_llama_cpp(n_heads, head_dim):
    w = np.arange(n_heads * head_dim * 5, dtype=np.float32).reshape(n_heads * head_dim, 5)
    permuted = llama_cpp_permute(w, n_heads)
    assert not np.array_equal(permuted, w) or head_dim == 2
    np.testing.assert_array_equal(unpermute_qk(permuted, n_heads), w)
    np.testing.assert_array_equal(hf_from_gguf_rows(permuted, n_heads), w)
    got = unpermute_qk(torch.from_numpy(permuted[:, 0].copy()), n_heads)  # a bias (1-D)
    np.testing.assert_array_equal(got.numpy(), w[:, 0])
    with pytest.raises(ValueError, match="cannot unpermute"):
        unpermute_qk(w[:-1], n_heads)


def test_hf_names():
    assert hf_name("token_embd.weight") == "model.embed_tokens.weight"
    assert hf_name("output_norm.weight") == "model.norm.weight"
    assert hf_name("output.weight") == "lm_head.weight"
    pairs = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
             "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
             "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
             "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
    for g, h in pairs.items():
        assert hf_name(f"blk.17.{g}.weight") == f"model.layers.17.{h}.weight"
    assert hf_name("blk.0.attn_q.bias") == "model.layers.0.self_attn.q_proj.bias"
    assert hf_name("rope_freqs.weight") is None and hf_name("blk.0.ffn_gate_exps.weight") is None


# -- small GGUF files ----------------------------------------------------------------------------

H, I, HEADS, KV_HEADS, LAYERS = 256, 512, 4, 2, 2  # head_dim 64; K-quants need rows of 256
HEAD_DIM = H // HEADS
CHAT = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}")
# per layer: GGUF tensor -> storage type; layer 1 stores q/k as plain floats
LAYER_TYPES = [
    {"attn_q": Q.Q4_K, "attn_k": Q.Q5_K, "attn_v": Q.Q6_K, "attn_output": Q.Q4_0,
     "ffn_gate": Q.Q4_1, "ffn_up": Q.F16, "ffn_down": Q.BF16},
    {"attn_q": Q.F32, "attn_k": Q.F16, "attn_v": Q.Q8_0, "attn_output": Q.Q6_K,
     "ffn_gate": Q.Q4_K, "ffn_up": Q.Q5_K, "ffn_down": Q.Q8_0},
]
SHAPES = {"attn_q": (H, H), "attn_k": (KV_HEADS * HEAD_DIM, H), "attn_v": (KV_HEADS * HEAD_DIM, H),
          "attn_output": (H, H), "ffn_gate": (I, H), "ffn_up": (I, H), "ffn_down": (H, I)}


def tiny_tokenizer_tokens() -> tuple[list[str], list[str], list[int]]:
    """A byte-level BPE vocabulary: 256 byte tokens, 4 merges, 3 control tokens."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    b2u = bytes_to_unicode()
    merges = ["h e", "l l", "he ll", "Ġ w"]
    tokens = [b2u[b] for b in range(256)] + [m.replace(" ", "") for m in merges]
    tokens += ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    return tokens, merges, [1] * (len(tokens) - 3) + [3, 3, 3]


def write_gguf(path, *, arch="llama", tied=False, tokenizer=True, drop=(), ffn_length=I,
               types=None, seed=0, rope_freqs=None) -> dict[str, np.ndarray]:
    """Write a 2-layer model; return the HF-named float32 tensors load_checkpoint must produce."""
    rng = np.random.default_rng(seed)
    tokens, merges, token_types = tiny_tokenizer_tokens()
    vocab = len(tokens)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_context_length(512)
    w.add_embedding_length(H)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(ffn_length)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_freq_base(50000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_dimension_count(HEAD_DIM)
    if tokenizer:
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("default")
        w.add_token_list(tokens)
        w.add_token_types(token_types)
        w.add_token_merges(merges)
        w.add_bos_token_id(vocab - 2)
        w.add_eos_token_id(vocab - 1)
        w.add_chat_template(CHAT)
    else:
        w.add_vocab_size(vocab)
    expected: dict[str, np.ndarray] = {}

    def add(name: str, values: np.ndarray, qtype: Q, heads: int | None = None) -> None:
        if name in drop:
            return
        values = values.astype(np.float32)
        stored = llama_cpp_permute(values, heads) if heads and arch == "llama" else values
        raw = encode(stored.reshape(stored.shape[0], -1), qtype, rng)
        deq = gguf.quants.dequantize(raw.reshape(-1), qtype).reshape(values.shape)
        deq = np.asarray(deq, dtype=np.float32)
        if heads and arch == "llama":
            deq = hf_from_gguf_rows(deq, heads)
        if qtype in (Q.F32,):  # plain floats: exactly the HF weight
            np.testing.assert_array_equal(deq, values)
        if qtype in (Q.F32, Q.F16):
            w.add_tensor(name, stored.astype(np.float32 if qtype == Q.F32 else np.float16))
        else:
            w.add_tensor(name, raw, raw_dtype=qtype)
        expected[hf_name(name)] = deq

    add("token_embd.weight", rng.standard_normal((vocab, H)), Q.Q8_0)
    if rope_freqs is not None:  # llama.cpp's llama3 rope scaling: per-frequency divisors
        w.add_tensor("rope_freqs.weight", np.asarray(rope_freqs, dtype=np.float32))
    add("output_norm.weight", 1 + 0.1 * rng.standard_normal(H), Q.F32)
    if not tied:
        add("output.weight", rng.standard_normal((vocab, H)), Q.Q6_K)
    for layer, layer_types in enumerate(types or LAYER_TYPES):
        for part, qtype in layer_types.items():
            heads = {"attn_q": HEADS, "attn_k": KV_HEADS}.get(part)
            add(f"blk.{layer}.{part}.weight", rng.standard_normal(SHAPES[part]) * 0.1, qtype, heads)
        add(f"blk.{layer}.attn_norm.weight", rng.standard_normal(H), Q.F32)
        add(f"blk.{layer}.ffn_norm.weight", rng.standard_normal(H), Q.F32)
        if arch == "qwen2":
            for part, rows in (("attn_q", H), ("attn_k", KV_HEADS * HEAD_DIM),
                               ("attn_v", KV_HEADS * HEAD_DIM)):
                add(f"blk.{layer}.{part}.bias", rng.standard_normal(rows), Q.F32)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return expected


def assert_state_equal(got: dict[str, torch.Tensor], want: dict[str, np.ndarray]) -> None:
    assert sorted(got) == sorted(want)
    for name, value in want.items():
        assert got[name].dtype == torch.float32, name
        assert torch.equal(got[name], torch.from_numpy(value)), name


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_gguf_roundtrip_every_tensor_and_config(tmp_path, arch):
    path = tmp_path / f"tiny-{arch}.gguf"
    want = write_gguf(path, arch=arch, tokenizer=False)
    ckpt = load_checkpoint(path, tokenizer=False, progress=False)
    c = ckpt.config
    assert (c.architecture, c.vocab_size, c.hidden_size, c.intermediate_size) == (arch, 263, H, I)
    assert (c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads, c.head_dim) == (
        LAYERS, HEADS, KV_HEADS, HEAD_DIM)
    assert c.rope_theta == 50000.0 and c.max_position_embeddings == 512
    assert c.rms_norm_eps == pytest.approx(1e-6) and not c.tie_word_embeddings
    assert c.attention_bias == (arch == "qwen2") and ckpt.tokenizer is None
    assert ckpt.path == str(path)
    assert_state_equal(ckpt.state_dict, want)


def test_gguf_known_q_weight_is_unpermuted(tmp_path):
    """Layer 1 stores q as F32 rows permuted the llama.cpp way: loading must give back exactly
    the HF weight (write_gguf checks its expected F32 tensors equal the weights it drew)."""
    path = tmp_path / "tiny.gguf"
    want = write_gguf(path, tokenizer=False)["model.layers.1.self_attn.q_proj.weight"]
    q = load_checkpoint(path, tokenizer=False, progress=False).state_dict[
        "model.layers.1.self_attn.q_proj.weight"]
    assert torch.equal(q, torch.from_numpy(want))
    stored = llama_cpp_permute(want, HEADS)  # what the file holds: really a different order
    assert not np.array_equal(stored, want)


def test_gguf_tied_embeddings_and_dtype_and_progress(tmp_path, capsys):
    path = tmp_path / "tied.gguf"
    want = write_gguf(path, tied=True, tokenizer=False)
    ckpt = load_checkpoint(path, tokenizer=False, progress=True, dtype=torch.bfloat16)
    assert ckpt.config.tie_word_embeddings and "lm_head.weight" not in ckpt.state_dict
    for name, value in want.items():
        got = ckpt.state_dict[name]
        assert got.dtype == torch.bfloat16
        assert torch.equal(got, torch.from_numpy(value).to(torch.bfloat16)), name
    assert "dequantizing" in capsys.readouterr().err


def test_gguf_tokenizer_is_converted_then_cached(tmp_path, monkeypatch):
    path = tmp_path / "tok.gguf"
    write_gguf(path, types=[LAYER_TYPES[1]] * LAYERS)
    first = load_checkpoint(path, progress=False)
    tok = first.tokenizer
    ids = tok("hello world<|im_end|>").input_ids
    assert tok.convert_ids_to_tokens(ids) == ["hell", "o", "Ġw", "o", "r", "l", "d", "<|im_end|>"]
    assert tok.decode(ids) == "hello world<|im_end|>"
    assert tok.eos_token == "<|im_end|>" and tok.bos_token == "<|im_start|>"
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert chat == "<|im_start|>user\nhi<|im_end|>\n"
    assert first.config.bos_token_id == 261 and first.config.eos_token_ids == [262]

    cache = tokenizer_cache.gguf_tokenizer_cache_path(str(path))
    assert cache.is_dir() and cache.parent == tmp_path / "cache" / "tokenizers"
    assert not [p for p in cache.parent.iterdir() if p.name.startswith(".")]  # no temp left

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again instead of using the cache")

    real = tokenizer_cache._from_pretrained
    monkeypatch.setattr(tokenizer_cache, "_from_pretrained",
                        lambda name, **kw: no_conversion() if kw else real(name))
    again = load_checkpoint(path, progress=False).tokenizer
    for text in ["hello world", "<|im_start|>user\nhé ll<|im_end|>", "  x\n\ty"]:
        assert again(text).input_ids == tok(text).input_ids
    assert again.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == chat

    # a changed file (new mtime) gets a new cache entry
    os.utime(path, ns=(1, 1))
    assert tokenizer_cache.gguf_tokenizer_cache_path(str(path)) != cache


def test_gguf_tokenizer_cache_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "tok.gguf"
    write_gguf(path, types=[LAYER_TYPES[1]] * LAYERS)
    cache = tokenizer_cache.gguf_tokenizer_cache_path(str(path))
    real_save = tokenizer_cache._save_atomic

    def crash_midway(tokenizer, target):
        def save_then_die(folder, **kwargs):
            (open(os.path.join(folder, "tokenizer.json"), "w")).write("{half")
            raise OSError(28, "No space left on device")
        monkeypatch.setattr(tokenizer, "save_pretrained", save_then_die)
        real_save(tokenizer, target)

    monkeypatch.setattr(tokenizer_cache, "_save_atomic", crash_midway)
    tok = load_checkpoint(path, progress=False).tokenizer  # still loads; just not cached
    assert tok("hello").input_ids == [258, 111]
    assert not cache.exists() and list(cache.parent.iterdir()) == []

    # a damaged entry (someone truncated a file) is rebuilt, not trusted
    monkeypatch.setattr(tokenizer_cache, "_save_atomic", real_save)
    load_checkpoint(path, progress=False)
    (cache / "tokenizer.json").write_text("{")
    assert load_checkpoint(path, progress=False).tokenizer("hello").input_ids == [258, 111]
    assert (cache / "tokenizer.json").stat().st_size > 1


# -- damaged and unsupported files ---------------------------------------------------------------


@pytest.fixture(scope="module")
def good_gguf(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("good") / "m.gguf"
    write_gguf(path, tokenizer=False)
    return path.read_bytes()


@pytest.mark.parametrize("damage, match", [
    (lambda b: b[: len(b) // 2], "truncated"),
    (lambda b: b[:-100], "truncated"),
    (lambda b: b[:200], "damaged or truncated GGUF"),
    (lambda b: b"GGML" + b[4:], "not a GGUF file"),
    (lambda b: b"", "not a GGUF file"),
    (lambda b: b[:4] + (99).to_bytes(4, "little") + b[8:], "damaged or truncated GGUF"),
    (lambda b: b[:16] + (2**40).to_bytes(8, "little") + b[24:], "damaged or truncated GGUF"),
])
def test_damaged_gguf(tmp_path, good_gguf, damage, match):
    path = tmp_path / "bad.gguf"
    path.write_bytes(damage(good_gguf))
    with pytest.raises(ModelLoadError, match=match) as info:
        load_checkpoint(path, tokenizer=False, progress=False)
    assert str(path) in str(info.value)


def test_unsupported_architecture_gguf(tmp_path):
    path = tmp_path / "gpt2.gguf"
    write_gguf(path, arch="gpt2", tokenizer=False)
    with pytest.raises(ModelLoadError, match="unsupported GGUF architecture 'gpt2'; supported: "
                                             "llama .*qwen2"):
        load_checkpoint(path, tokenizer=False)


def test_unsupported_tensor_type(tmp_path):
    path = tmp_path / "q2k.gguf"
    write_gguf(path, tokenizer=False, types=[{**LAYER_TYPES[0], "ffn_up": Q.Q2_K}] * LAYERS)
    with pytest.raises(ModelLoadError, match="blk.0.ffn_up.weight uses GGUF type Q2_K"):
        load_checkpoint(path, tokenizer=False)


def test_missing_and_misshapen_tensors(tmp_path):
    path = tmp_path / "missing.gguf"
    write_gguf(path, tokenizer=False, drop=("blk.1.ffn_up.weight",))
    with pytest.raises(ModelLoadError, match="lacks tensor.*model.layers.1.mlp.up_proj.weight"):
        load_checkpoint(path, tokenizer=False)
    path = tmp_path / "shape.gguf"
    write_gguf(path, tokenizer=False, ffn_length=1024)
    with pytest.raises(ModelLoadError, match="has shape \\(512, 256\\), but the config implies"):
        load_checkpoint(path, tokenizer=False)


def test_gguf_without_tokenizer(tmp_path):
    path = tmp_path / "notok.gguf"
    write_gguf(path, tokenizer=False)
    with pytest.raises(ModelLoadError, match="holds no tokenizer.*tokenizer=False"):
        load_checkpoint(path)


def test_fast_reader_reads_what_gguf_reader_reads(tmp_path):
    """open_gguf parses through a plain-ndarray view (faster); results must be identical."""
    from tritium.models.gguf import gguf_metadata, open_gguf

    path = tmp_path / "m.gguf"
    write_gguf(path, types=[LAYER_TYPES[1]] * LAYERS)
    ours, plain = open_gguf(str(path)), gguf.GGUFReader(str(path))
    md = gguf_metadata(ours)
    assert md == gguf_metadata(plain)
    assert md["tokenizer.ggml.tokens"][-1] == "<|im_end|>" and md["llama.block_count"] == LAYERS
    assert md["tokenizer.ggml.token_type"][-3:] == [3, 3, 3]
    assert [t.name for t in ours.tensors] == [t.name for t in plain.tensors]
    for a, b in zip(ours.tensors, plain.tensors):
        assert a.tensor_type == b.tensor_type and np.array_equal(a.data, b.data), a.name


def test_gguf_rope_freqs_tensor_becomes_llama3_scaling(tmp_path, caplog):
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    scaling = {"rope_type": "llama3", "factor": 16.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 256}
    hf = LlamaConfig(hidden_size=H, num_attention_heads=HEADS, max_position_embeddings=4096,
                     rope_parameters={"rope_theta": 50000.0, **scaling})
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](hf, "cpu")
    base = 1.0 / 50000.0 ** (torch.arange(0, HEAD_DIM, 2, dtype=torch.float64) / HEAD_DIM)
    path = tmp_path / "rope.gguf"
    want = write_gguf(path, tokenizer=False, rope_freqs=(base / scaled.double()).numpy())
    ckpt = load_checkpoint(path, tokenizer=False, progress=False)
    assert ckpt.config.rope_scaling == scaling
    assert sorted(ckpt.state_dict) == sorted(want)  # rope_freqs is config, not a parameter
    assert "ignoring" not in caplog.text
