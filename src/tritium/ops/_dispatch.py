"""Which path an op takes: Triton kernel or plain-PyTorch reference.

CUDA tensors go to the Triton kernels. CPU tensors go to the reference path, except when
``TRITON_INTERPRET=1`` is set, in which case the Triton kernels run under Triton's interpreter
(that is how the test suite exercises the kernels without a GPU).

Triton decides whether a kernel is interpreted when the kernel is *decorated*, so the variable
must be set before ``tritium.kernels`` is imported; this module reads it again at *call* time so
that a process can run some CPU calls through the reference path and others through the
interpreter (the test suite does exactly that).
"""

from __future__ import annotations

import functools
import os

import torch


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    """True when ``import triton`` works (Linux wheels only)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def interpreting() -> bool:
    """True when ``TRITON_INTERPRET=1`` is set right now."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def use_triton(t: torch.Tensor) -> bool:
    """Route a call on tensor ``t``: True for the Triton kernel, False for the reference."""
    if t.is_cuda:
        return triton_available()
    return t.device.type == "cpu" and interpreting() and triton_available()
