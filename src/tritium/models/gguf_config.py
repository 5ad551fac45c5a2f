"""ModelConfig fields from GGUF metadata (llama.cpp key names), incl. llama3 rope scaling
recovered from the ``rope_freqs.weight`` divisors llama.cpp writes instead of the HF dict."""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from tritium.models.config import SUPPORTED_ROPE_TYPES
from tritium.models.errors import ModelLoadError


def config_kwargs_from_gguf(
    metadata: Mapping[str, Any],
    tensor_names: Collection[str],
    rope_freqs: Sequence[float] | None,
    source: str,
) -> dict[str, Any]:
    """ModelConfig keyword arguments for a llama / qwen2 GGUF (ModelConfig.from_gguf_metadata)."""
    arch = metadata.get("general.architecture")
    if arch not in ("llama", "qwen2"):
        raise ModelLoadError(
            f"{source}: unsupported GGUF architecture {arch!r}; supported: llama "
            "(also Mistral/SmolLM2 converted as llama), qwen2"
        )

    def get(key: str, default: Any = None) -> Any:
        return metadata.get(f"{arch}.{key}", default)

    missing = [k for k in ("embedding_length", "feed_forward_length", "block_count",
                           "attention.head_count") if get(k) is None]
    if missing:
        raise ModelLoadError(f"{source} lacks metadata key(s): "
                             + ", ".join(f"{arch}.{k}" for k in missing))
    heads = _gguf_int(get("attention.head_count"), f"{arch}.attention.head_count", source)
    hidden = get("embedding_length")
    head_dim = get("attention.key_length")
    if head_dim is None and isinstance(hidden, int) and heads and hidden % heads == 0:
        head_dim = hidden // heads
    value_dim = get("attention.value_length")
    rot_dim = get("rope.dimension_count")
    for name, dim in (("attention.value_length", value_dim), ("rope.dimension_count", rot_dim)):
        if dim is not None and head_dim is not None and dim != head_dim:
            raise ModelLoadError(f"{source}: {arch}.{name} = {dim} differs from the head "
                                 f"dimension {head_dim}, which is not supported")
    tokens = metadata.get("tokenizer.ggml.tokens")
    vocab = get("vocab_size", len(tokens) if tokens is not None else None)
    if vocab is None:
        raise ModelLoadError(f"{source} has neither {arch}.vocab_size nor a token list")
    theta = float(get("rope.freq_base", 10000.0))
    eos = [metadata.get(f"tokenizer.ggml.{k}_token_id") for k in ("eos", "eot", "eom")]
    return dict(
        architecture=arch,
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=_gguf_int(get("feed_forward_length"),
                                    f"{arch}.feed_forward_length", source),
        num_hidden_layers=get("block_count"),
        num_attention_heads=heads,
        num_key_value_heads=_gguf_int(get("attention.head_count_kv", heads),
                                      f"{arch}.attention.head_count_kv", source),
        head_dim=head_dim,
        rms_norm_eps=get("attention.layer_norm_rms_epsilon", 1e-5),
        rope_theta=theta,
        rope_scaling=_gguf_rope_scaling(get, rope_freqs, head_dim, theta, source),
        max_position_embeddings=get("context_length", 2048),
        tie_word_embeddings="output.weight" not in tensor_names,
        attention_bias="blk.0.attn_q.bias" in tensor_names,
        bos_token_id=metadata.get("tokenizer.ggml.bos_token_id"),
        eos_token_ids=[e for e in eos if e is not None],
        sliding_window=get("attention.sliding_window"),
    )


def _gguf_int(value: Any, key: str, source: str) -> Any:
    """GGUF allows per-layer arrays for some counts; we support one value for all layers."""
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise ModelLoadError(f"{source}: {key} varies per layer, which is not supported")
        return value[0]
    return value


def _gguf_rope_scaling(get, rope_freqs, head_dim, theta, source) -> dict[str, Any] | None:
    kind = get("rope.scaling.type")
    if kind in (None, "none") and rope_freqs is None:
        return None
    if kind == "linear":
        return {"rope_type": "linear", "factor": float(get("rope.scaling.factor", 1.0))}
    if rope_freqs is not None and kind in (None, "none", "llama3"):
        return llama3_scaling_from_freq_factors(rope_freqs, head_dim, theta, source=source)
    raise ModelLoadError(f"{source}: unsupported rope scaling type {kind!r}; "
                         f"supported: {', '.join(SUPPORTED_ROPE_TYPES)}")


def llama3_scaling_from_freq_factors(
    factors: Sequence[float], head_dim: int, theta: float, *, source: str = "GGUF file"
) -> dict[str, Any] | None:
    """Recover HF's llama3 rope_scaling dict from llama.cpp's ``rope_freqs`` divisors.

    llama.cpp divides frequency i (wavelength w_i = 2*pi*theta^(2i/D)) by f_i, where f_i = 1 for
    w_i < L/high, f_i = factor for w_i > L/low, and in between 1/f_i = (1-s)/factor + s with
    s = (L/w_i - low)/(high - low). s is linear in 1/w_i: s = a/w_i - b, a = L/(high-low),
    b = low/(high-low); only a and b are identifiable, so we report low = 1 (Llama 3's value),
    high = 1 + 1/b, L = a/b, and check the result reproduces every f_i.
    """
    f = [float(x) for x in factors]
    if len(f) != head_dim // 2:
        raise ModelLoadError(f"{source}: rope_freqs has {len(f)} entries, expected {head_dim // 2}")
    factor = float(f"{max(f):.6g}")  # stored as F32: 8.000001 means 8
    if math.isclose(factor, 1.0, rel_tol=1e-6) and min(f) > 1 - 1e-6:
        return None
    wavelen = [2 * math.pi * theta ** (2 * i / head_dim) for i in range(head_dim // 2)]
    tol = 1e-4 * factor
    mid = [(1 / w, (1 / fi - 1 / factor) / (1 - 1 / factor)) for w, fi in zip(wavelen, f)
           if 1 + tol < fi < factor - tol]
    if len(mid) >= 2:  # least-squares line s = a*x - b
        n = len(mid)
        mx = sum(x for x, _ in mid) / n
        ms = sum(s for _, s in mid) / n
        var = sum((x - mx) ** 2 for x, _ in mid)
        a = sum((x - mx) * (s - ms) for x, s in mid) / var if var > 0 else 0.0
        b = a * mx - ms
        low, high, orig = 1.0, 1.0 + 1.0 / b if b > 0 else 0.0, a / b if b > 0 else 0.0
    else:  # too few points to fit: take Llama 3's low=1, high=4 and place L between the regions
        low, high = 1.0, 4.0
        if mid:
            x, s = mid[0]
            orig = (s * (high - low) + low) / x
        else:
            short = max((w for w, fi in zip(wavelen, f) if fi <= 1 + tol), default=0.0)
            long = min((w for w, fi in zip(wavelen, f) if fi >= factor - tol), default=math.inf)
            orig = math.sqrt(max(short * high, 1.0) * min(long * low, 1e12))
    scaling = {"rope_type": "llama3", "factor": factor, "low_freq_factor": low,
               "high_freq_factor": round(high, 4), "original_max_position_embeddings": round(orig)}
    if not orig > 0 or not high > low or not _llama3_matches(scaling, wavelen, f):
        raise ModelLoadError(f"{source}: rope_freqs.weight does not follow llama3 rope scaling, "
                             "which is the only per-frequency scaling supported")
    return scaling


def _llama3_matches(scaling: dict[str, Any], wavelen: list[float], f: list[float]) -> bool:
    factor, low = scaling["factor"], scaling["low_freq_factor"]
    high, orig = scaling["high_freq_factor"], scaling["original_max_position_embeddings"]
    for w, fi in zip(wavelen, f):
        if w < orig / high:
            expect = 1.0
        elif w > orig / low:
            expect = factor
        else:
            s = (orig / w - low) / (high - low)
            expect = 1 / ((1 - s) / factor + s)
        if not math.isclose(expect, fi, rel_tol=2e-3):
            return False
    return True
