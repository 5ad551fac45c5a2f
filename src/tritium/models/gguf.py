"""GGUF files: reading (through ``gguf.GGUFReader``), HF tensor names, dequantized state dicts.

llama.cpp's converter permutes the rows of Q and K for llama-architecture models (so that its
rope can rotate adjacent pairs); we undo that so the weights equal the Hugging Face ones. Qwen2
files are written unpermuted. The dequantizers themselves live in ``dequant.py``.
"""

from __future__ import annotations

import logging
import re
import sys
import warnings
from typing import Any

import numpy as np
import torch
from gguf import GGUFReader, GGUFValueType

from tritium.models.config import ModelConfig
from tritium.models.dequant import SUPPORTED_QUANT_TYPES, dequantize, dequantize_flat
from tritium.models.errors import ModelLoadError
from tritium.models.tokenizer_cache import brief

__all__ = ["SUPPORTED_QUANT_TYPES", "dequantize", "gguf_metadata", "hf_name",
           "load_gguf_state_dict", "open_gguf", "read_tensor", "unpermute_qk"]

logger = logging.getLogger(__name__)

# -- reading -------------------------------------------------------------------------------------


class _Reader(GGUFReader):
    """GGUFReader whose header parsing slices a plain-ndarray view of the file's memmap.

    The parser takes one small slice per string (~250k for a 49k-token vocabulary with its
    merges); numpy's memmap subclass adds ~10 us to each, so this cuts SmolLM2's header parse
    from ~3.4 s to ~1.1 s. The arrays it returns are identical, still backed by the mapping.
    """

    def _get(self, *args: Any, **kwargs: Any) -> np.ndarray:
        mapped = self.data
        plain = self.__dict__.get("_plain")
        if plain is None or plain.base is not mapped:
            plain = self.__dict__["_plain"] = mapped.view(np.ndarray)
        self.data = plain
        try:
            return super()._get(*args, **kwargs)
        finally:
            self.data = mapped


def open_gguf(path: str) -> GGUFReader:
    """Parse a GGUF file's header, metadata and tensor table; ModelLoadError if it is not one."""
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise ModelLoadError(f"cannot read {path}: {e.strerror or e}") from e
    if magic != b"GGUF":
        raise ModelLoadError(f"{path} is not a GGUF file (it does not start with the GGUF magic)")
    try:
        reader = _Reader(path, "r")
    except Exception as e:  # the reader raises ValueError/KeyError/IndexError on damaged files
        raise ModelLoadError(f"{path} is a damaged or truncated GGUF file ({brief(e)})") from e
    if reader.byte_order != "I":
        raise ModelLoadError(f"{path} is a big-endian GGUF file, which is not supported")
    size = len(reader.data)
    for t in reader.tensors:  # the reader silently shortens slices that run past the end
        if t.data.nbytes != t.n_bytes or t.data_offset + t.n_bytes > size:
            raise ModelLoadError(f"{path} is truncated (tensor {t.name} runs past the end)")
    return reader


def gguf_metadata(reader: GGUFReader) -> dict[str, Any]:
    """All key/value metadata as plain Python values (strings, numbers, bools, lists)."""
    out: dict[str, Any] = {}
    for key, fld in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        is_array = bool(fld.types) and fld.types[0] == GGUFValueType.ARRAY
        if is_array and fld.types[-1] != GGUFValueType.STRING:
            # numeric arrays in one numpy pass (token_type / scores hold ~10^5 entries)
            values = np.concatenate([fld.parts[i] for i in fld.data]) if fld.data else []
            out[key] = np.asarray(values).tolist()
            continue
        value = fld.contents()
        out[key] = value.item() if isinstance(value, np.generic) else value
    return out


# -- names and permutation -----------------------------------------------------------------------

_GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm",
                 "output": "lm_head"}
_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_LAYER_RE = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")
_GLOBAL_RE = re.compile(r"(\w+)\.(weight|bias)")


def hf_name(gguf_name: str) -> str | None:
    """GGUF tensor name -> Hugging Face parameter name, or None if it has no HF counterpart.

    ``blk.3.attn_q.weight -> model.layers.3.self_attn.q_proj.weight``,
    ``token_embd.weight -> model.embed_tokens.weight``, ``output.weight -> lm_head.weight``.
    """
    if m := _LAYER_RE.fullmatch(gguf_name):
        layer, part, kind = m.groups()
        if part in _LAYER_NAMES:
            return f"model.layers.{layer}.{_LAYER_NAMES[part]}.{kind}"
    elif m := _GLOBAL_RE.fullmatch(gguf_name):
        part, kind = m.groups()
        if part in _GLOBAL_NAMES:
            return f"{_GLOBAL_NAMES[part]}.{kind}"
    return None


def unpermute_qk(w: Any, n_heads: int) -> Any:
    """Undo llama.cpp's Q/K row permutation; ``w``: (n_heads * head_dim, ...) tensor or array.

    Per head, llama.cpp stores rows in the order (i, half) for i < head_dim/2 (pairs interleaved)
    where HF stores (half, i) (rotate-half layout); so view rows as (n_heads, head_dim/2, 2) and
    swap the last two of those axes. Works on torch tensors and numpy arrays alike.
    """
    rows = w.shape[0]
    if rows % (2 * n_heads):
        raise ValueError(f"cannot unpermute {rows} rows over {n_heads} heads")
    rest = tuple(w.shape[1:])
    return w.reshape(n_heads, rows // n_heads // 2, 2, *rest).swapaxes(1, 2).reshape(w.shape)


def _raw_bytes(data: np.ndarray) -> torch.Tensor:
    """A reader tensor's bytes as a 1-D uint8 torch view (no copy; never written to)."""
    flat = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    with warnings.catch_warnings():  # the memmap is read-only; we only read from it
        warnings.filterwarnings("ignore", message=".*not writ.*")
        return torch.from_numpy(flat)


def _check_type(t: Any, path: str) -> None:
    if t.tensor_type not in SUPPORTED_QUANT_TYPES:
        names = ", ".join(q.name for q in SUPPORTED_QUANT_TYPES)
        raise ModelLoadError(f"{path}: tensor {t.name} uses GGUF type {t.tensor_type.name}, "
                             f"which is not supported (supported: {names})")


def _torch_shape(t: Any) -> tuple[int, ...]:
    return tuple(int(x) for x in reversed(t.shape.tolist()))


def read_tensor(t: Any, *, path: str) -> torch.Tensor:
    """One ``GGUFReader`` tensor as float32 in torch order; ModelLoadError if it cannot be."""
    _check_type(t, path)
    try:
        return dequantize(_raw_bytes(t.data), t.tensor_type, _torch_shape(t))
    except ValueError as e:
        raise ModelLoadError(f"{path}: tensor {t.name} is damaged ({brief(e)})") from e


# Tensors of one type are dequantized together, up to this many elements per batch: a few big
# torch ops instead of ~6 per tensor. Each op is one OpenMP parallel region, and on a busy machine
# every region waits for a descheduled thread: per-tensor ops made SmolLM2 take ~20 s to
# dequantize on this shared 2-core box, batches ~1 s. The cap bounds the batch temporaries.
_BATCH_ELEMENTS = 1 << 26


def _raw_rows(t: Any, shape: tuple[int, ...], config: ModelConfig, permuted: bool, path: str
              ) -> np.ndarray:
    """The tensor's bytes as (rows, row_bytes) uint8, with llama.cpp's Q/K permutation undone.

    A permutation of rows is a permutation of whole quantization blocks (a row is whole blocks),
    so it is undone on the raw bytes, before dequantization.
    """
    rows = int(np.prod(shape[:-1])) if len(shape) > 1 else shape[0]
    raw = np.ascontiguousarray(t.data).reshape(-1).view(np.uint8)
    raw = raw.reshape(rows, -1)
    if permuted and (".attn_q." in t.name or ".attn_k." in t.name):
        heads = config.num_attention_heads if ".attn_q." in t.name else config.num_key_value_heads
        if rows != heads * config.head_dim:
            raise ModelLoadError(f"{path}: tensor {t.name} has {rows} rows, but the config "
                                 f"implies {heads} heads x {config.head_dim}")
        raw = unpermute_qk(raw, heads)
    return raw


def load_gguf_state_dict(
    reader: GGUFReader,
    config: ModelConfig,
    *,
    path: str,
    progress: bool | None = None,
    dtype: torch.dtype | None = None,
) -> dict[str, torch.Tensor]:
    """Dequantize every tensor with an HF counterpart into ``{hf_name: tensor}``.

    Tensors come out float32 (or ``dtype``), with Q/K un-permuted for llama-architecture files.
    Tensors of one batch are views of one shared buffer. ``progress``: tqdm bar on stderr
    (None: when stderr is a terminal).
    """
    from tqdm.auto import tqdm

    permuted = reader.fields["general.architecture"].contents() == "llama"
    show = sys.stderr.isatty() if progress is None else progress
    by_type: dict[Any, list[Any]] = {}
    for t in reader.tensors:
        if hf_name(t.name) is None:
            if t.name != "rope_freqs.weight":  # rope_freqs is read into the config
                logger.warning("%s: ignoring tensor %s (no Hugging Face counterpart)", path, t.name)
            continue
        _check_type(t, path)
        by_type.setdefault(t.tensor_type, []).append(t)
    batches: list[list[Any]] = []
    for tensors in by_type.values():
        batch, size = [], 0
        for t in tensors:
            if batch and size + int(t.n_elements) > _BATCH_ELEMENTS:
                batches.append(batch)
                batch, size = [], 0
            batch.append(t)
            size += int(t.n_elements)
        batches.append(batch)
    state: dict[str, torch.Tensor] = {}
    with tqdm(total=sum(map(len, batches)), desc="dequantizing", unit="tensor", disable=not show,
              file=sys.stderr, leave=False) as bar:
        for batch in batches:
            shapes = [_torch_shape(t) for t in batch]
            raw = np.concatenate([_raw_rows(t, shape, config, permuted, path).reshape(-1)
                                  for t, shape in zip(batch, shapes)])
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*not writ.*")
                flat = dequantize_flat(torch.from_numpy(raw), batch[0].tensor_type)
            if dtype is not None:
                flat = flat.to(dtype)
            offset = 0
            for t, shape in zip(batch, shapes):
                n = int(t.n_elements)
                state[hf_name(t.name)] = flat[offset:offset + n].view(shape)
                offset += n
            bar.update(len(batch))
    return state
