"""Launch a Triton or Gluon kernel without Triton's per-call argument binding, after its first
call for a given specialisation.

``kernel[grid](*args, **constexprs)`` binds every argument, specialises each one (a tensor's
dtype and 16-byte alignment, an integer's divisibility by 16 and whether it is 1, a tensor
descriptor's type), hashes that to find the compiled kernel and only then launches it. At short
sequence lengths that host time is a sizeable part of an attention call (docs/perf-notes.md,
"Host time"). The compiled kernel the first call returns can be launched directly
(``compiled[grid](*all_args)``, the same in Triton 3.6 and 3.9); ``launch`` keeps it under a
key built from everything the specialisation reads (``spec_key``, which may over-split but
never merges two specialisations) and launches through it afterwards.

Under the interpreter, or with a stand-in kernel, the first call returns no compiled kernel and
every call takes the ordinary path.
"""

from __future__ import annotations

from typing import Any

import torch

_COMPILED: dict[tuple, Any] = {}


def _int_spec(v: int) -> tuple[bool, bool, bool]:
    return v == 1, v % 16 == 0, -(2**31) <= v < 2**31


def _arg_spec(v: Any) -> Any:
    if v is None or isinstance(v, bool):
        return v
    if isinstance(v, int):
        return _int_spec(v)
    if isinstance(v, float):
        return float
    if isinstance(v, torch.Tensor):
        return v.dtype, v.device, v.data_ptr() % 16 == 0
    base = getattr(v, "base", None)
    if isinstance(base, torch.Tensor):  # a host-side tensor descriptor
        return (type(v), base.dtype, base.device, base.data_ptr() % 16 == 0,
                tuple(v.block_shape), repr(getattr(v, "layout", None)),
                getattr(v, "padding", None),
                tuple(_int_spec(int(s)) for s in v.shape),
                tuple(_int_spec(int(s)) for s in v.strides))
    raise TypeError(f"launch_cache: no specialisation key for {type(v).__name__}")


def spec_key(args: tuple, constexprs: dict[str, Any], options: dict[str, Any]) -> tuple:
    """Everything Triton's specialisation of this call can depend on (conservatively)."""
    return (tuple(_arg_spec(a) for a in args), tuple(constexprs.items()),
            tuple(sorted(options.items())))


def launch(kernel: Any, grid: tuple, args: tuple, constexprs: dict[str, Any],
           **options: Any) -> None:
    """``kernel[grid](*args, **constexprs, **options)``; ``args`` are the kernel's leading
    runtime parameters in order, ``constexprs`` all the rest by name, ``options`` launch options
    (num_warps, num_stages)."""
    key = (kernel, spec_key(args, constexprs, options))
    compiled = _COMPILED.get(key)
    if compiled is not None:
        names = kernel.arg_names[len(args):]
        compiled[grid](*args, *(constexprs[n] for n in names))
        return
    compiled = kernel[grid](*args, **constexprs, **options)
    # Cached only when every parameter after ``args`` was given by name: a defaulted one would
    # be missing from the direct launch.
    if (compiled is not None and hasattr(compiled, "packed_metadata")
            and set(kernel.arg_names[len(args):]) == set(constexprs)):
        _COMPILED[key] = compiled


__all__ = ["launch", "spec_key"]
