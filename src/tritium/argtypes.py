"""argparse flag types shared by the CLI's subcommands: one clear message per bad value.

Light to import (standard library only), so command parsers can use it before torch loads.
"""

from __future__ import annotations

import argparse
import math


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def temperature(text: str) -> float:
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def top_p(text: str) -> float:
    value = finite_float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return value


def seed(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


RANDOM_PRESETS = "llama3-8b, llama3-1b, smollm2-135m, tiny"  # models/presets.py (imports torch)


def add_model_flags(p: argparse.ArgumentParser | argparse._ArgumentGroup, *, default: str,
                    tokenizer_note: str) -> None:
    """``--model`` and ``--tokenizer``, worded once for every command that loads a model."""
    p.add_argument("--model", default=None, metavar="PATH",
                   help="GGUF file, Hugging Face folder, or random:<preset> (random weights: "
                   f"{RANDOM_PRESETS}); default: {default}")
    p.add_argument("--tokenizer", default=None, metavar="PATH",
                   help="tokenizer folder (as AutoTokenizer.from_pretrained reads) or .gguf "
                   f"file replacing the model's own; {tokenizer_note}")

