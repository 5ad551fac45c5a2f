"""ModelConfig: the shape of a Llama-family decoder, parsed from an HF config.json or GGUF metadata.

One config covers Llama 2/3, SmolLM2, Mistral and Qwen2/2.5: pre-norm RMSNorm decoder, rotary
(rotate-half) attention with grouped KV heads, SwiGLU MLP. ``architecture`` names the family
("llama", "mistral", "qwen2"); the differences that matter to the network are carried by fields
(``attention_bias`` for Qwen2's q/k/v bias, ``sliding_window`` for Mistral).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tritium.models.errors import ModelLoadError

SUPPORTED_ARCHITECTURES = ("llama", "mistral", "qwen2")
# rope_scaling["rope_type"] values the rotary op implements (ops/rotary.py)
SUPPORTED_ROPE_TYPES = ("linear", "llama3")

# HF `architectures` entries -> our family name
_HF_CLASSES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
}
_LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


@dataclass
class ModelConfig:
    """Hyper-parameters of one Llama-family checkpoint (HF names and meanings).

    ``head_dim`` defaults to ``hidden_size // num_attention_heads`` and ``num_key_value_heads``
    to ``num_attention_heads``. ``rope_scaling`` is None or an HF-style dict
    (``{"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192}`` or ``{"rope_type": "linear", "factor": 2.0}``).
    ``attention_bias``: q/k/v projections carry a bias (Qwen2; for a Llama checkpoint with
    ``attention_bias`` HF also gives o_proj a bias). ``sliding_window``: HF's value (each query sees
    at most this many most recent keys) or None for full causal attention.
    """

    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    bos_token_id: int | None = None
    eos_token_ids: list[int] = field(default_factory=list)
    sliding_window: int | None = None

    def __post_init__(self) -> None:
        if self.architecture not in SUPPORTED_ARCHITECTURES:
            raise ValueError(
                f"unsupported architecture {self.architecture!r}; "
                f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
            )
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "max_position_embeddings"):
            _check_positive_int(name, getattr(self, name))
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        _check_positive_int("num_key_value_heads", self.num_key_value_heads)
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ValueError(
                    f"hidden_size ({self.hidden_size}) is not divisible by num_attention_heads "
                    f"({self.num_attention_heads}); give head_dim explicitly"
                )
            self.head_dim = self.hidden_size // self.num_attention_heads
        _check_positive_int("head_dim", self.head_dim)
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for rotary embeddings, got {self.head_dim}")
        for name in ("rms_norm_eps", "rope_theta"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")
            setattr(self, name, float(value))
        self.rope_scaling = _check_rope_scaling(self.rope_scaling)
        if self.bos_token_id is not None:
            _check_token_id("bos_token_id", self.bos_token_id)
        eos = self.eos_token_ids
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        for token_id in eos:
            _check_token_id("eos_token_ids", token_id)
        self.eos_token_ids = list(dict.fromkeys(eos))  # de-duplicated, order kept
        if self.sliding_window is not None:
            _check_positive_int("sliding_window", self.sliding_window)
        self.tie_word_embeddings = bool(self.tie_word_embeddings)
        self.attention_bias = bool(self.attention_bias)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON view (written next to benchmark results and checkpoints)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_hf_config(cls, d: Mapping[str, Any], *, source: str = "config.json") -> ModelConfig:
        """Build from a Hugging Face ``config.json`` dict (transformers 4 or 5 layout).

        Accepts ``rope_theta``/``rope_scaling`` (transformers 4) and ``rope_parameters``
        (transformers 5). Raises ModelLoadError naming ``source`` for unsupported or bad configs.
        """
        arch = _hf_architecture(d, source)
        hidden_act = d.get("hidden_act", "silu")
        if hidden_act not in ("silu", "swish"):
            raise ModelLoadError(f"{source}: unsupported hidden_act {hidden_act!r} (only silu)")
        if d.get("mlp_bias"):
            raise ModelLoadError(f"{source}: MLP biases (mlp_bias=true) are not supported")
        missing = [k for k in ("vocab_size", "hidden_size", "intermediate_size",
                               "num_hidden_layers", "num_attention_heads") if d.get(k) is None]
        if missing:
            raise ModelLoadError(f"{source} lacks required field(s): {', '.join(missing)}")
        rope_theta, rope_scaling = _hf_rope(d)
        eos = d.get("eos_token_id")
        kwargs = dict(
            architecture=arch,
            vocab_size=d["vocab_size"],
            hidden_size=d["hidden_size"],
            intermediate_size=d["intermediate_size"],
            num_hidden_layers=d["num_hidden_layers"],
            num_attention_heads=d["num_attention_heads"],
            num_key_value_heads=d.get("num_key_value_heads"),
            head_dim=d.get("head_dim"),
            rms_norm_eps=d.get("rms_norm_eps", 1e-6),
            rope_theta=rope_theta,
            rope_scaling=rope_scaling,
            max_position_embeddings=d.get("max_position_embeddings", 2048),
            tie_word_embeddings=d.get("tie_word_embeddings", False),
            # Qwen2 always has q/k/v biases; Llama/Mistral only when the config says so
            attention_bias=True if arch == "qwen2" else d.get("attention_bias", False),
            bos_token_id=d.get("bos_token_id"),
            eos_token_ids=[] if eos is None else eos,
            sliding_window=_hf_sliding_window(d, arch, source),
        )
        return _build(kwargs, source)

    @classmethod
    def from_gguf_metadata(
        cls,
        metadata: Mapping[str, Any],
        tensor_names: Collection[str],
        *,
        rope_freqs: Sequence[float] | None = None,
        source: str = "GGUF file",
    ) -> ModelConfig:
        """Build from GGUF key/value metadata (plain Python values) and the file's tensor names.

        ``metadata`` maps llama.cpp keys (``llama.embedding_length``, ``tokenizer.ggml.tokens``,
        ...) to values; ``tensor_names`` decides tied embeddings (no ``output.weight``) and q/k/v
        biases. ``rope_freqs``: the ``rope_freqs.weight`` tensor llama.cpp writes for Llama-3.1
        style rope scaling (per-frequency divisors), turned back into an HF llama3 dict.
        """
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
        kwargs = dict(
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
        return _build(kwargs, source)


# -- validation helpers --------------------------------------------------------------------------


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _check_token_id(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must hold non-negative int token ids, got {value!r}")


def _check_rope_scaling(scaling: Any) -> dict[str, Any] | None:
    if scaling is None:
        return None
    if not isinstance(scaling, Mapping):
        raise ValueError(f"rope_scaling must be a dict or None, got {scaling!r}")
    scaling = dict(scaling)
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind in (None, "default"):
        return None
    if kind not in SUPPORTED_ROPE_TYPES:
        raise ValueError(f"unsupported rope scaling type {kind!r}; "
                         f"supported: {', '.join(SUPPORTED_ROPE_TYPES)}")
    scaling.pop("type", None)
    scaling.pop("rope_theta", None)  # lives in ModelConfig.rope_theta
    scaling["rope_type"] = kind
    needed = _LLAMA3_KEYS if kind == "llama3" else ("factor",)
    for key in needed:
        value = scaling.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"rope_scaling[{key!r}] must be a positive number for {kind} "
                             f"scaling, got {value!r}")
    if kind == "llama3" and not scaling["high_freq_factor"] > scaling["low_freq_factor"]:
        raise ValueError(f"rope_scaling high_freq_factor ({scaling['high_freq_factor']}) must "
                         f"exceed low_freq_factor ({scaling['low_freq_factor']})")
    return scaling


def _build(kwargs: dict[str, Any], source: str) -> ModelConfig:
    try:
        return ModelConfig(**kwargs)
    except (TypeError, ValueError) as e:
        raise ModelLoadError(f"{source}: invalid model config: {e}") from e


# -- Hugging Face config.json --------------------------------------------------------------------


def _hf_architecture(d: Mapping[str, Any], source: str) -> str:
    model_type = d.get("model_type")
    classes = list(d.get("architectures") or [])
    supported = f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
    if model_type is None:
        known = [_HF_CLASSES[c] for c in classes if c in _HF_CLASSES]
        if not known:
            raise ModelLoadError(f"{source}: unsupported architecture "
                                 f"{classes[0] if classes else None!r}; {supported}")
        return known[0]
    if model_type not in SUPPORTED_ARCHITECTURES:
        raise ModelLoadError(f"{source}: unsupported architecture {model_type!r}; {supported}")
    if classes and not any(c in _HF_CLASSES for c in classes):
        raise ModelLoadError(f"{source}: unsupported model class {classes[0]!r} "
                             f"(only {', '.join(_HF_CLASSES)})")
    return model_type


def _hf_rope(d: Mapping[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """(rope_theta, rope_scaling) from transformers 4 keys or transformers 5 rope_parameters."""
    theta = d.get("rope_theta")
    scaling = d.get("rope_scaling")
    params = d.get("rope_parameters")
    if isinstance(params, Mapping):
        theta = params.get("rope_theta", theta)
        if scaling is None:
            scaling = dict(params)
    return (10000.0 if theta is None else theta), scaling


def _hf_sliding_window(d: Mapping[str, Any], arch: str, source: str) -> int | None:
    window = d.get("sliding_window")
    if arch == "llama" or window is None:
        return None
    if arch == "mistral":
        return window
    # qwen2: the window applies only with use_sliding_window, and only from max_window_layers on
    if not d.get("use_sliding_window", False):
        return None
    n_layers = d.get("num_hidden_layers") or 0
    layer_types = d.get("layer_types") or [
        "sliding_attention" if i >= d.get("max_window_layers", 0) else "full_attention"
        for i in range(n_layers)
    ]
    if all(t == "sliding_attention" for t in layer_types):
        return window
    if all(t == "full_attention" for t in layer_types):
        return None
    raise ModelLoadError(f"{source}: a sliding window on only some layers is not supported")


# -- GGUF metadata -------------------------------------------------------------------------------


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
