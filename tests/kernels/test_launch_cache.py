"""kernels.launch_cache: the first call per specialisation goes through ``kernel[grid]``, later
ones straight to the compiled kernel it returned, with every argument in parameter order."""

import pytest
import torch

from tritium.kernels import launch_cache


class _Compiled:
    packed_metadata = object()

    def __init__(self, log):
        self.log = log

    def __getitem__(self, grid):
        return lambda *args: self.log.append(("direct", grid, args))


class _Kernel:
    arg_names = ["x_ptr", "n", "scale", "BLOCK", "FLAG"]

    def __init__(self, returns=True):
        self.log, self.compiles, self.returns = [], 0, returns

    def __getitem__(self, grid):
        def run(*args, **kwargs):
            self.compiles += 1
            self.log.append(("jit", grid, args, kwargs))
            return _Compiled(self.log) if self.returns else None
        return run


@pytest.fixture(autouse=True)
def _empty_cache(monkeypatch):
    monkeypatch.setattr(launch_cache, "_COMPILED", {})


def test_second_call_launches_directly_in_parameter_order():
    k, x = _Kernel(), torch.zeros(8)
    launch_cache.launch(k, (3,), (x, 32, 0.5), dict(FLAG=True, BLOCK=64), num_warps=4)
    launch_cache.launch(k, (5, 2), (x, 48, 0.25), dict(FLAG=True, BLOCK=64), num_warps=4)
    assert k.compiles == 1
    assert k.log[0] == ("jit", (3,), (x, 32, 0.5), dict(FLAG=True, BLOCK=64, num_warps=4))
    assert k.log[1] == ("direct", (5, 2), (x, 48, 0.25, 64, True))


@pytest.mark.parametrize("change", [
    dict(n=33),  # no longer a multiple of 16
    dict(n=1),  # Triton makes 1 a constant
    dict(n=2**31),  # i64 instead of i32
    dict(x=torch.zeros(8, dtype=torch.float16)),
    dict(x=torch.zeros(9)[1:]),  # 4-byte aligned only
    dict(BLOCK=128),
    dict(num_warps=8),
])
def test_a_different_specialisation_goes_back_through_the_jit(change):
    k = _Kernel()
    base = dict(x=torch.zeros(8), n=32, BLOCK=64, num_warps=4)
    for kw in (base, {**base, **change}):
        launch_cache.launch(k, (1,), (kw["x"], kw["n"], 1.0), dict(BLOCK=kw["BLOCK"], FLAG=0),
                            num_warps=kw["num_warps"])
    assert k.compiles == 2


def test_nothing_cached_without_a_compiled_kernel_or_with_defaulted_parameters():
    stand_in = _Kernel(returns=False)  # the interpreter, or a test's recording stand-in
    for _ in range(2):
        launch_cache.launch(stand_in, (1,), (torch.zeros(2), 16, 1.0), dict(BLOCK=16, FLAG=0))
    assert stand_in.compiles == 2
    k = _Kernel()
    for _ in range(2):  # FLAG left to its default: a direct launch could not pass it
        launch_cache.launch(k, (1,), (torch.zeros(2), 16, 1.0), dict(BLOCK=16))
    assert k.compiles == 2


def test_unknown_argument_types_are_refused():
    with pytest.raises(TypeError, match="no specialisation key"):
        launch_cache.launch(_Kernel(), (1,), (object(), 16, 1.0), dict(BLOCK=16, FLAG=0))
