"""Tokenizers for checkpoints: from an HF folder, or converted from GGUF metadata and cached.

transformers builds a fast tokenizer from a GGUF file's token list and merges
(``AutoTokenizer.from_pretrained(dir, gguf_file=name)``), which takes seconds (about 4-5 s for
SmolLM2's 49k-token vocabulary on this machine). We save the result with ``save_pretrained``
under ``<cache>/tokenizers/<stem>-<key>``, where ``key`` hashes the GGUF file's real path, size and
mtime (plus the transformers version, whose on-disk format may change), so reloading takes a
fraction of a second. ``<cache>`` is ``$TRITIUM_CACHE_DIR`` or ``~/.cache/tritium``. A cache entry
is written to a temporary folder and renamed into place, so a crash never leaves a partial entry.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from tritium.models.errors import ModelLoadError

logger = logging.getLogger(__name__)

_FORMAT_VERSION = "1"  # bump when what we store changes
_STALE_TMP_SECONDS = 3600.0


def cache_root() -> Path:
    """tritium's cache folder: ``$TRITIUM_CACHE_DIR`` if set, else ``~/.cache/tritium``."""
    env = os.environ.get("TRITIUM_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "tritium"


def gguf_tokenizer_cache_path(gguf_path: str) -> Path:
    """Where the converted tokenizer of ``gguf_path`` is (or will be) cached."""
    import transformers

    real = os.path.realpath(gguf_path)
    st = os.stat(real)
    ident = "\0".join([real, str(st.st_size), str(st.st_mtime_ns), transformers.__version__,
                       _FORMAT_VERSION])
    key = hashlib.sha256(ident.encode()).hexdigest()[:16]
    return cache_root() / "tokenizers" / f"{Path(real).stem}-{key}"


def load_gguf_tokenizer(gguf_path: str, *, use_cache: bool = True) -> Any:
    """The tokenizer (with chat template) embedded in a GGUF file, from the cache when possible."""
    target = gguf_tokenizer_cache_path(gguf_path) if use_cache else None
    if target is not None and target.is_dir():
        try:
            return _from_pretrained(str(target))
        except Exception as e:  # a damaged entry (edited by hand, disk full...): rebuild it
            logger.warning("ignoring unreadable tokenizer cache %s (%s)", target, e)
            shutil.rmtree(target, ignore_errors=True)
    start = time.perf_counter()
    logger.info("converting the tokenizer of %s (once; later loads use the cache)", gguf_path)
    path = Path(gguf_path)
    try:
        tokenizer = _from_pretrained(str(path.parent), gguf_file=path.name)
    except Exception as e:
        raise ModelLoadError(f"cannot build the tokenizer stored in {gguf_path} ({brief(e)})"
                             ) from e
    logger.info("converted the GGUF tokenizer of %s in %.1f s", gguf_path,
                time.perf_counter() - start)
    if target is not None:
        _save_atomic(tokenizer, target)
    return tokenizer


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


def load_folder_tokenizer(folder: str) -> Any:
    """``AutoTokenizer.from_pretrained(folder)``, with ModelLoadError when it cannot."""
    if not any((Path(folder) / name).is_file() for name in _TOKENIZER_FILES):
        raise ModelLoadError(f"{folder} has no tokenizer files ({', '.join(_TOKENIZER_FILES)}); "
                             "load it with tokenizer=False to read the weights only")
    try:
        return _from_pretrained(folder)
    except Exception as e:
        raise ModelLoadError(f"cannot load a tokenizer from {folder} ({brief(e)})") from e


def load_tokenizer(path: str) -> Any:
    """A tokenizer chosen apart from the model (``--tokenizer PATH``, vLLM's option).

    ``path`` is a folder that ``AutoTokenizer.from_pretrained`` reads (an HF model folder, or an
    entry of this cache), or a .gguf file whose embedded tokenizer is converted (and cached).
    Raises ModelLoadError naming ``path`` when it is missing or holds no usable tokenizer.
    """
    if not isinstance(path, str) or not path:
        raise ModelLoadError(f"tokenizer must be a non-empty path, got {path!r}")
    p = Path(path).expanduser()
    if p.is_dir():
        return load_folder_tokenizer(str(p))
    if p.is_file() and p.suffix == ".gguf":
        return load_gguf_tokenizer(str(p))
    if p.exists():
        raise ModelLoadError(f"tokenizer path {path} is neither a folder nor a .gguf file")
    raise ModelLoadError(f"tokenizer path {path} does not exist")


def embedded_tokenizer_dir() -> Path:
    """The cache folder holding the embedded SmolLM2 GGUF's tokenizer, converted first if absent.

    A plain HF tokenizer folder (tokenizer.json, tokenizer_config.json, chat_template.jinja;
    ~3.5 MB): copy it to where a model without a tokenizer (``random:<preset>``) is served and
    pass it as ``--tokenizer``.
    """
    from tritium.models.loader import default_model_path

    gguf = default_model_path()
    target = gguf_tokenizer_cache_path(gguf)
    if not target.is_dir():
        load_gguf_tokenizer(gguf)
    if not target.is_dir():
        raise ModelLoadError(f"could not write the tokenizer cache at {target}")
    return target


def brief(e: BaseException, limit: int = 200) -> str:
    """An exception's message on one line, shortened: for the one-line ModelLoadError."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _from_pretrained(name: str, **kwargs: Any) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name, **kwargs)


def _save_atomic(tokenizer: Any, target: Path) -> None:
    """save_pretrained into a temp folder beside ``target``, then rename it into place."""
    tmp = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_tmp(target.parent)
        tmp = tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent)
        tokenizer.save_pretrained(tmp)
        os.rename(tmp, target)  # atomic; fails if another process got there first
        tmp = None
    except OSError as e:
        if target.is_dir():
            logger.debug("tokenizer cache %s was written concurrently", target)
        else:
            logger.warning("could not cache the tokenizer at %s (%s)", target, e)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _remove_stale_tmp(folder: Path) -> None:
    """Temp folders left by crashed runs (older than an hour) are deleted."""
    now = time.time()
    for entry in folder.glob(".*.tmp-*"):
        try:
            if now - entry.stat().st_mtime > _STALE_TMP_SECONDS:
                shutil.rmtree(entry, ignore_errors=True)
        except OSError:
            pass
