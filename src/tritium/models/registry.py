"""Architecture name -> model class, and ``load_model`` (checkpoint -> ready model)."""

from __future__ import annotations

import importlib
import logging
from typing import Any

import torch

from tritium.models.errors import ModelLoadError

logger = logging.getLogger(__name__)

# Normalized architecture name (lowercase, without "ForCausalLM") -> "module:Class".
# Classes are imported only when used; a new family is one line here.
_MODELS: dict[str, str] = {
    "llama": "tritium.models.llama:LlamaForCausalLM",
    "mistral": "tritium.models.llama:LlamaForCausalLM",
    "qwen2": "tritium.models.llama:LlamaForCausalLM",
}

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}


def _normalize(architecture: str) -> str:
    return str(architecture).lower().removesuffix("forcausallm")


def supported_architectures() -> list[str]:
    return sorted(_MODELS)


def get_model_class(architecture: str) -> type[torch.nn.Module]:
    """'LlamaForCausalLM' / 'llama' / 'Qwen2ForCausalLM' / ... -> the class that implements it."""
    target = _MODELS.get(_normalize(architecture))
    if target is None:
        raise ModelLoadError(
            f"unsupported architecture {architecture!r} "
            f"(supported: {', '.join(supported_architectures())})"
        )
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """None -> 'cuda' when available, else 'cpu'. ValueError for unknown or unavailable ones."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"invalid device {device!r}") from e
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {device!r} (use 'cpu' or 'cuda')")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """None -> float32 on CPU, bfloat16 on CUDA. Accepts torch dtypes or their names."""
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in _DTYPES.values():
            raise ValueError(f"unsupported dtype {dtype} (use float32, bfloat16 or float16)")
        return dtype
    resolved = _DTYPES.get(str(dtype).lower().removeprefix("torch."))
    if resolved is None:
        raise ValueError(f"unsupported dtype {dtype!r} (use float32, bfloat16 or float16)")
    return resolved


def load_model(
    path: str | None = None,
    *,
    device: str | torch.device | None = "cpu",
    dtype: str | torch.dtype | None = None,
    tokenizer: str | None = None,
) -> tuple[torch.nn.Module, Any, Any]:
    """Load a checkpoint (GGUF file or HF folder; None = the embedded SmolLM2-135M-Instruct)
    and build its model in eval mode on ``device`` in ``dtype``.

    ``path = "random:<preset>"`` (models/presets.py, e.g. "random:llama3-8b") builds that shape
    with random weights initialised on ``device``; its tokenizer is None unless ``tokenizer``
    is given, in which case the preset's vocabulary is sized to it (presets.fit_to_tokenizer).

    ``tokenizer``: a tokenizer folder or .gguf file that replaces the checkpoint's own
    (vLLM's ``--tokenizer``; see tokenizer_cache.load_tokenizer). It may be smaller than the
    model's vocabulary (padded embeddings), not larger: ids the model cannot embed would reach it.

    Returns (model, tokenizer, config). Raises ``ModelLoadError`` for bad checkpoints or
    tokenizers and ``ValueError`` for a bad device/dtype.
    """
    from tritium.models.loader import load_checkpoint
    from tritium.models.presets import is_random_model, load_random_model
    from tritium.models.tokenizer_cache import load_tokenizer

    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    tok = None if tokenizer is None else load_tokenizer(tokenizer)
    if is_random_model(path):
        return load_random_model(path, device=dev, dtype=dt, tokenizer=tok)
    ckpt = load_checkpoint(path, tokenizer=tok is None)
    if tok is not None:
        check_tokenizer_fits(tok, ckpt.config.vocab_size, tokenizer, ckpt.path)
    model = build_model(ckpt.config, ckpt.state_dict, device=dev, dtype=dt)
    n_params = sum(p.numel() for p in model.parameters())
    logger.info("loaded %s: %.1fM parameters on %s in %s", ckpt.path, n_params / 1e6, dev, dt)
    return model, ckpt.tokenizer if tok is None else tok, ckpt.config


def check_tokenizer_fits(tokenizer: Any, vocab_size: int, tokenizer_path: str,
                         model_path: str) -> None:
    """ModelLoadError when the tokenizer has more tokens than the model has embedding rows."""
    if len(tokenizer) > vocab_size:
        raise ModelLoadError(
            f"tokenizer {tokenizer_path} has {len(tokenizer)} tokens but the model {model_path} "
            f"has a vocabulary of {vocab_size}: ids past {vocab_size - 1} could not be embedded "
            "(use the model's own tokenizer or one of the same family)"
        )


def build_model(
    config: Any,
    state_dict: dict[str, torch.Tensor],
    *,
    device: str | torch.device | None = "cpu",
    dtype: str | torch.dtype | None = None,
) -> torch.nn.Module:
    """Model of ``config``'s architecture holding ``state_dict`` (HF names), in eval mode.

    Built on 'meta' (no memory, no random init), then each checkpoint tensor becomes a
    parameter, cast to ``dtype`` on ``device`` (defaults as in ``load_model``).
    """
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    cls = get_model_class(config.architecture)
    with torch.device("meta"):
        model = cls(config)
    model.load_hf_state_dict(state_dict, dtype=dt, device=dev)
    return model.eval()
