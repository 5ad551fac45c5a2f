"""ModelConfig: the shape of a Llama-family decoder, parsed from an HF config.json or GGUF metadata.

One config covers Llama 2/3, SmolLM2, Mistral and Qwen2/2.5: pre-norm RMSNorm decoder, rotary
(rotate-half) attention with grouped KV heads, SwiGLU MLP. ``architecture`` names the family
("llama", "mistral", "qwen2"); the differences that matter to the network are carried by fields
(``attention_bias`` for Qwen2's q/k/v bias, ``sliding_window`` for Mistral).
"""

from __future__ import annotations

import dataclasses
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
        from tritium.models.gguf_config import config_kwargs_from_gguf

        return _build(config_kwargs_from_gguf(metadata, tensor_names, rope_freqs, source), source)


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
