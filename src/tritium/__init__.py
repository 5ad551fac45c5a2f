"""tritium: an LLM engine whose hot paths are its own Triton kernels.

Public names are imported lazily so that ``import tritium`` stays cheap and a missing optional
piece only fails when it is used.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "flash_attn_func": "tritium.ops.attention",
    "flash_attn_varlen_func": "tritium.ops.attention",
    "sdpa": "tritium.ops.attention",
    "BlockMask": "tritium.ops.block_mask",
    "create_block_mask": "tritium.ops.block_mask",
    "LLM": "tritium.engine.llm",
    "SamplingParams": "tritium.engine.sampling_params",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tritium' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
