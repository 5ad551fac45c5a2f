"""Keep freed memory in the process on the CPU engine (glibc's ``mallopt``).

A CPU forward allocates and frees activations of a few to tens of MB per op. glibc serves
blocks above its mmap threshold (128 KiB, rising only as such blocks are freed) with fresh
``mmap`` calls and returns freed heap tops above the trim threshold to the kernel, so each op
page-faults its output in again: in a 3,609-token prefill step of SmolLM2-135M that was ~1 s of
kernel time in 6.3 s (docs/perf-notes.md "CPU engine: few-row products and malloc"). Raising
both thresholds lets freed blocks be reused. The setting is process-wide and affects only
allocations that follow; the engine applies it once when it runs on the CPU. Elsewhere (not
glibc, e.g. musl or macOS) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

logger = logging.getLogger(__name__)

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
MMAP_THRESHOLD = 32 << 20  # glibc's largest accepted value on 64-bit
TRIM_THRESHOLD = 512 << 20
TOP_PAD = 64 << 20

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Apply the thresholds above once per process; True when glibc accepted them."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = all(mallopt(p, v) == 1 for p, v in ((_M_MMAP_THRESHOLD, MMAP_THRESHOLD),
                                              (_M_TRIM_THRESHOLD, TRIM_THRESHOLD),
                                              (_M_TOP_PAD, TOP_PAD)))
    _applied = ok
    logger.debug("mallopt thresholds %s", "applied" if ok else "not accepted")
    return ok
