"""Named model shapes for benchmarking with random weights (``--model random:<preset>``).

Weights cannot be downloaded everywhere tritium is benchmarked, but throughput depends only on the
shape (FLOPs and bytes per token), not on the values. A preset is a ``ModelConfig`` with the
published shape of a real checkpoint. ``load_model("random:<preset>")`` (models/registry.py) calls
:func:`load_random_model`, which builds the model on 'meta' and initialises the weights directly
on the target device in the target dtype: an 8B model costs 16 GB of bf16 on the GPU and nothing
on the host, and takes about a second instead of minutes of CPU init.

Shapes (from the checkpoints' config.json):

| preset        | params | vocab   | hidden | layers | heads / KV | inter. | tied |
|---------------|--------|---------|--------|--------|------------|--------|------|
| llama3-8b     | 8.03 B | 128256  | 4096   | 32     | 32 / 8     | 14336  | no   |
| llama3-1b     | 1.24 B | 128256  | 2048   | 16     | 32 / 8     | 8192   | yes  |
| smollm2-135m  | 135 M  | 49152   | 576    | 30     | 9 / 3      | 1536   | yes  |
| tiny          | 0.2 M  | 1024    | 64     | 2      | 4 / 2      | 128    | no   |

``tiny`` is not a real model: it exists so tests can run the random-weight path in seconds.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch

from tritium.models.config import ModelConfig

logger = logging.getLogger(__name__)

RANDOM_PREFIX = "random:"

# Llama 3.1's long-context rope: theta 500000, "llama3" frequency scaling of an 8k original.
_LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}

_PRESETS: dict[str, ModelConfig] = {
    # meta-llama/Llama-3.1-8B
    "llama3-8b": ModelConfig(
        architecture="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336,
        num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
        rms_norm_eps=1e-5, rope_theta=500000.0, rope_scaling=dict(_LLAMA3_ROPE),
        max_position_embeddings=131072, tie_word_embeddings=False, bos_token_id=128000,
        eos_token_ids=[128001, 128008, 128009],
    ),
    # meta-llama/Llama-3.2-1B
    "llama3-1b": ModelConfig(
        architecture="llama", vocab_size=128256, hidden_size=2048, intermediate_size=8192,
        num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, head_dim=64,
        rms_norm_eps=1e-5, rope_theta=500000.0,
        rope_scaling=dict(_LLAMA3_ROPE, factor=32.0),
        max_position_embeddings=131072, tie_word_embeddings=True, bos_token_id=128000,
        eos_token_ids=[128001, 128008, 128009],
    ),
    # HuggingFaceTB/SmolLM2-135M(-Instruct): the embedded model's shape
    "smollm2-135m": ModelConfig(
        architecture="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536,
        num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, head_dim=64,
        rms_norm_eps=1e-5, rope_theta=100000.0, max_position_embeddings=8192,
        tie_word_embeddings=True, bos_token_id=1, eos_token_ids=[2],
    ),
    # test-sized; not a real checkpoint
    "tiny": ModelConfig(
        architecture="llama", vocab_size=1024, hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        rms_norm_eps=1e-5, rope_theta=10000.0, max_position_embeddings=4096,
        tie_word_embeddings=False, bos_token_id=1, eos_token_ids=[2],
    ),
}


def preset_names() -> list[str]:
    """Names accepted after ``random:``."""
    return sorted(_PRESETS)


def get_preset(name: str) -> ModelConfig:
    """A fresh copy of preset ``name``'s ``ModelConfig``. ValueError names unknown presets."""
    if name not in _PRESETS:
        raise ValueError(f"unknown model preset {name!r} (known: {', '.join(preset_names())})")
    return dataclasses.replace(_PRESETS[name], rope_scaling=_copy(_PRESETS[name].rope_scaling),
                               eos_token_ids=list(_PRESETS[name].eos_token_ids))


def is_random_model(path: str | None) -> bool:
    """True for ``"random:<preset>"`` model paths."""
    return isinstance(path, str) and path.startswith(RANDOM_PREFIX)


def preset_from_path(path: str) -> tuple[str, ModelConfig]:
    """``"random:llama3-8b"`` -> ("llama3-8b", its config). ValueError for anything else."""
    if not is_random_model(path):
        raise ValueError(f"{path!r} is not a random-weight model path ({RANDOM_PREFIX}<preset>)")
    name = path[len(RANDOM_PREFIX):]
    return name, get_preset(name)


def num_parameters(config: ModelConfig) -> int:
    """Parameter count of a Llama-family model of this shape (norms and biases included)."""
    h, i, v = config.hidden_size, config.intermediate_size, config.vocab_size
    q = config.num_attention_heads * config.head_dim
    kv = config.num_key_value_heads * config.head_dim
    attn = h * (q + 2 * kv) + q * h
    if config.attention_bias:
        attn += q + 2 * kv + h
    per_layer = attn + 3 * h * i + 2 * h
    head = 0 if config.tie_word_embeddings else v * h
    return v * h + config.num_hidden_layers * per_layer + h + head


def load_random_model(
    path: str, *, device: torch.device, dtype: torch.dtype, seed: int = 0, std: float = 0.02,
    tokenizer: Any = None,
) -> tuple[torch.nn.Module, Any, ModelConfig]:
    """``"random:<preset>"`` -> (model, tokenizer, config); see :func:`build_random_model`.

    Without ``tokenizer`` there is none: prompts must be token ids (the engine then skips
    detokenization). With one (``--tokenizer``), the preset is first fitted to it
    (:func:`fit_to_tokenizer`), so that text prompts, chat templates and detokenization work.
    """
    name, config = preset_from_path(path)
    if tokenizer is not None:
        config = fit_to_tokenizer(config, tokenizer, name)
    model = build_random_model(config, device=device, dtype=dtype, seed=seed, std=std)
    logger.info("random %s: %s parameters on %s in %s (seed %d)",
                name, _count(num_parameters(config)), device, dtype, seed)
    return model, tokenizer, config


def fit_to_tokenizer(config: ModelConfig, tokenizer: Any, name: str = "preset") -> ModelConfig:
    """The preset's shape with the tokenizer's vocabulary and special tokens.

    vocab_size becomes ``len(tokenizer)`` (added tokens included), so every id the random model
    can sample decodes to text; BOS/EOS become the tokenizer's (a preset's own ids may lie
    outside the new vocabulary). Only the embedding and LM-head rows change: for llama3-8b with
    SmolLM2's 49152-token tokenizer, 8.03B -> 7.38B parameters (-8%, all in those two matrices;
    the 32 layers, hence attention and MLP FLOPs per token, are unchanged).
    """
    vocab = len(tokenizer)
    eos = getattr(tokenizer, "eos_token_id", None)
    fitted = dataclasses.replace(
        config, vocab_size=vocab, bos_token_id=getattr(tokenizer, "bos_token_id", None),
        eos_token_ids=[] if eos is None else [eos],
        rope_scaling=_copy(config.rope_scaling),
    )
    if vocab != config.vocab_size:
        logger.info("random %s: vocab_size %d -> %d to match the tokenizer (%s -> %s "
                    "parameters)", name, config.vocab_size, vocab,
                    _count(num_parameters(config)), _count(num_parameters(fitted)))
    return fitted


def build_random_model(
    config: ModelConfig, *, device: torch.device | str, dtype: torch.dtype, seed: int = 0,
    std: float = 0.02,
) -> torch.nn.Module:
    """The model of ``config`` with random weights, built on ``device`` in ``dtype``, eval mode.

    Weights: norm scales 1, biases 0, every other tensor ~ N(0, std^2) drawn on ``device`` from
    a generator seeded with ``seed`` (same values on every run on the same device type). With
    std 0.02 (GPT-2's init) activations stay finite in bf16 through 32 layers: RMSNorm rescales
    each block's input, and logits have std ~ 0.02 * sqrt(hidden) (1.3 for hidden 4096).
    """
    from tritium.models.registry import get_model_class

    device = torch.device(device)
    cls = get_model_class(config.architecture)
    with torch.device("meta"):
        model = cls(config)
    # Cast on 'meta' (free), then allocate on the device; RotaryEmbedding rebuilds its fp32
    # table there in its _apply hook.
    model = model.to(dtype=dtype).to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith("norm.weight"):
                p.fill_(1.0)
            elif pname.endswith(".bias"):
                p.zero_()
            else:
                p.normal_(0.0, std, generator=gen)
    return model.eval()


def _copy(d: dict | None) -> dict | None:
    return None if d is None else dict(d)


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"
