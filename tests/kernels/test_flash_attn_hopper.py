"""The Hopper warp-specialised kernels (kernels/flash_attn_hopper.py: forward;
kernels/flash_attn_hopper_bwd.py: dK/dV and dQ; kernels/flash_attn_hopper_bwd_fused.py: the
one-kernel backward) on a machine without a GPU.

Gluon has no interpreter, so their numbers are checked on a lent H100 (benchmarks/
flash_attn_quick.py --check-only: forward and gradients against the fp32 reference;
benchmarks/attn_fwd_ws_probe.py and attn_bwd_ws_probe.py: outputs and gradients against the
Triton kernels). Here: the kernels build for sm_90 with the installed Triton (PTX with wgmma,
TMA, mbarriers and per-partition register counts, i.e. really warp-specialised), and the
dispatch only sends them the inputs they handle, and falls back when they cannot be built.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import pytest
import torch

from tritium.kernels import flash_attn as fa

pytest.importorskip("triton.experimental.gluon", reason="this Triton has no Gluon")
hopper = pytest.importorskip("tritium.kernels.flash_attn_hopper")


_BUILD = """
import json, re, sys
from tritium.kernels.flash_attn_hopper import compile_for_sm90
out = {}
for dtype, causal, pairs in (("bf16", False, False), ("bf16", True, True), ("fp16", True, False)):
    k = compile_for_sm90(dtype, causal, pairs=pairs)
    ptx = k.asm["ptx"]
    out[f"{dtype}-{causal}-{pairs}"] = dict(
        wgmma="wgmma.mma_async.sync.aligned.m64n128k16" in ptx,
        wait1="wgmma.wait_group.sync.aligned 1;" in ptx,
        regs=sorted(set(re.findall(r"setmaxnreg[.](?:inc|dec)[.]sync[.]aligned[.]u32[ \\t]+(\\d+);",
                                   ptx))),
        tma="cp.async.bulk.tensor.2d" in ptx, mbarrier_wait="mbarrier.try_wait.parity" in ptx,
        num_warps=k.metadata.num_warps, shared=k.metadata.shared)
from tritium.kernels.flash_attn_hopper_bwd import compile_for_sm90 as compile_bwd
for kernel, causal in (("dkdv", False), ("dkdv", True), ("dq", True)):
    k = compile_bwd("bf16", causal, kernel=kernel)
    ptx = k.asm["ptx"]
    out[f"{kernel}-{causal}"] = dict(
        # dK/dV: S^T and dP^T 64 keys x 64 queries, dV and dK 64 keys x 128 dims; dQ: S and dP
        # 64 queries x 128 keys, dQ 64 x 128
        wgmma="wgmma.mma_async.sync.aligned.m64n128k16" in ptx
        and (kernel == "dq" or "wgmma.mma_async.sync.aligned.m64n64k16" in ptx),
        regs=sorted(set(re.findall(r"setmaxnreg[.](?:inc|dec)[.]sync[.]aligned[.]u32[ \\t]+(\\d+);",
                                   ptx))),
        tma="cp.async.bulk.tensor.2d" in ptx, mbarrier_wait="mbarrier.try_wait.parity" in ptx,
        num_warps=k.metadata.num_warps, shared=k.metadata.shared)
from tritium.kernels.flash_attn_hopper_bwd_fused import compile_for_sm90 as compile_fused
for causal in (False, True):
    k = compile_fused("bf16", causal)
    ptx = k.asm["ptx"]
    out[f"fused-{causal}"] = dict(
        # S^T, dP^T 64 x 64; dV, dK 64 x 128; dQ 64 queries x 64 of its columns
        wgmma="wgmma.mma_async.sync.aligned.m64n128k16" in ptx
        and "wgmma.mma_async.sync.aligned.m64n64k16" in ptx,
        reduce_add="cp.reduce.async.bulk.tensor.2d.global.shared::cta.add" in ptx,
        regs=sorted(set(re.findall(r"setmaxnreg[.](?:inc|dec)[.]sync[.]aligned[.]u32[ \\t]+(\\d+);",
                                   ptx))),
        tma="cp.async.bulk.tensor.2d" in ptx, mbarrier_wait="mbarrier.try_wait.parity" in ptx,
        num_warps=k.metadata.num_warps, shared=k.metadata.shared)
print("RESULT " + json.dumps(out))
"""


def test_builds_warp_specialised_for_sm90():
    # A child process: the test session decorates kernels for the interpreter, and Gluon has
    # none; the build needs TRITON_INTERPRET unset. ~10 s for the three builds.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    p = subprocess.run([sys.executable, "-c", _BUILD], capture_output=True, text=True, env=env,
                       timeout=300)
    line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
    assert line, p.stderr[-3000:]
    builds = json.loads(line[0][len("RESULT "):])
    assert set(builds) == {"bf16-False-False", "bf16-True-True", "fp16-True-False",
                           "dkdv-False", "dkdv-True", "dq-True", "fused-False", "fused-True"}
    for name, b in builds.items():
        # 64 rows x 128 keys x 128 dims per warpgroup: S = Q K^T and O += P V, both wgmma.
        assert b["wgmma"], name
        if "wait1" in b:  # the forward's intra-warpgroup overlap: S(j) waited for alone
            assert b["wait1"], name
        if "reduce_add" in b:  # the fused backward adds dQ into global memory by TMA
            assert b["reduce_add"], name
        # Partitions with their own register budgets: 240 for the second consumer and 24 for
        # the loader (worker_num_regs=[240, 24]); TMA copies and mbarrier waits.
        assert {"240", "24"} <= set(b["regs"]), (name, b["regs"])
        assert b["tma"] and b["mbarrier_wait"], name
        assert b["num_warps"] == 12, name  # consumers 4 + 4, the 1-warp loader padded to 4
        assert b["shared"] <= 232448, name  # an H100's shared memory per block


def _fake_module(calls, *, fails=False):
    class Fake:
        @staticmethod
        def supported(q, k, v, *, causal):
            return q.shape[1] % 128 == 0

        @staticmethod
        def flash_attn_fwd_ws(q, k, v, *, softmax_scale, causal):
            calls.append((tuple(q.shape), causal))
            if fails:
                raise AttributeError("module 'tma' has no attribute 'async_load'")
            return "ws-out", "ws-lse"
    return Fake


class _RecordingLaunch:
    """Stands in for a kernel (``kernel[grid](...)``): records each launch's grid and
    keyword arguments."""

    def __init__(self):
        self.calls = []

    @property
    def launches(self):
        return len(self.calls)

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.calls.append((grid, kwargs))
        return launch


def test_dispatch_sends_only_plain_dense_calls(monkeypatch):
    calls: list = []
    triton_kernel = _RecordingLaunch()
    monkeypatch.setattr(fa, "_GLUON", {"flash_attn_hopper": _fake_module(calls)})
    monkeypatch.setattr(fa, "_flash_attn_fwd_kernel", triton_kernel)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setenv("TRITIUM_HOPPER_WS", "1")
    q = torch.zeros(1, 256, 4, 128)
    k = v = torch.zeros(1, 256, 2, 128)
    assert fa._try_hopper_ws(q, k, v, 0.1, True) == ("ws-out", "ws-lse")
    assert calls == [((1, 256, 4, 128), True)]
    assert fa._try_hopper_ws(q[:, :200], k, v, 0.1, False) is None  # unsupported shape
    assert len(calls) == 1
    # flash_attn_fwd itself: a plain causal call goes to it; a window, softcap, top-left
    # causal alignment, a forced tile config or a shape it does not take go to the Triton
    # kernel.
    assert fa.flash_attn_fwd(q, k, v, softmax_scale=0.1, causal=True) == ("ws-out", "ws-lse")
    assert len(calls) == 2 and triton_kernel.launches == 0
    for i, kw in enumerate((dict(window_left=64), dict(softcap=30.0), dict(bottom_right=False),
                            dict(config=(128, 64, 8, 3)))):
        fa.flash_attn_fwd(q, k, v, softmax_scale=0.1, causal=True, **kw)
        assert len(calls) == 2 and triton_kernel.launches == i + 1, kw
    fa.flash_attn_fwd(q[:, :200], k, v, softmax_scale=0.1, causal=False)
    assert len(calls) == 2 and triton_kernel.launches == 5


def test_dispatch_switches_off(monkeypatch):
    calls: list = []
    monkeypatch.setattr(fa, "_GLUON", {"flash_attn_hopper": _fake_module(calls)})
    q = k = v = torch.zeros(1, 128, 2, 128)
    monkeypatch.setenv("TRITIUM_HOPPER_WS", "0")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert fa._try_hopper_ws(q, k, v, 0.1, False) is None
    monkeypatch.setenv("TRITIUM_HOPPER_WS", "1")
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # interpreter runs must test the Triton kernel
    assert fa._try_hopper_ws(q, k, v, 0.1, False) is None
    assert calls == []


def test_build_failure_falls_back_once(monkeypatch):
    calls: list = []
    monkeypatch.setattr(fa, "_GLUON", {"flash_attn_hopper": _fake_module(calls, fails=True)})
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setenv("TRITIUM_HOPPER_WS", "1")
    q = k = v = torch.zeros(1, 128, 2, 128)
    with pytest.warns(RuntimeWarning, match="failed to build"):
        assert fa._try_hopper_ws(q, k, v, 0.1, False) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning, no second attempt
        assert fa._try_hopper_ws(q, k, v, 0.1, False) is None
    assert len(calls) == 1


@pytest.mark.parametrize("B,S,H,causal,grid,pairs", [
    (16, 1024, 16, True, (132,), True),      # 2048 items -> 1024 pairs, one program per SM
    (1, 256, 2, True, (2,), True),           # 4 items -> 2 pairs (fewer than the SMs)
    (1, 384, 9, True, (27,), False),         # 27 items: no pairs, one program per item
    (16, 1024, 16, False, (132,), False),    # non-causal: persistent over the 2048 items
    (1, 384, 3, False, (9,), False),
])
def test_forward_schedule(monkeypatch, B, S, H, causal, grid, pairs):
    # The work split flash_attn_fwd_ws picks: causal pairs (a long and a short query tile per
    # program, so programs have equal work) whenever the item count is even, and then a
    # persistent grid (one program per SM) as for non-causal; an odd causal count runs one
    # program per item (a fixed stride over unequal items measured up to 30% slower).
    kernel = _RecordingLaunch()
    monkeypatch.setattr(hopper, "_flash_attn_fwd_ws_kernel", kernel)
    monkeypatch.setattr(hopper, "_desc", lambda t, rows, dtype: None)
    monkeypatch.setattr(hopper, "num_sms", lambda device: 132)
    q = torch.zeros(B, S, H, 128, dtype=torch.bfloat16)
    hopper.flash_attn_fwd_ws(q, q, q, softmax_scale=0.1, causal=causal)
    assert [(g, kw["PAIRS"]) for g, kw in kernel.calls] == [(grid, pairs)]


def test_supported_rejects_what_the_kernel_cannot_take():
    q = torch.zeros(1, 256, 4, 128)
    k = torch.zeros(1, 256, 2, 128)
    assert not hopper.supported(q, k, k, causal=False)  # CPU tensors
    assert not hopper._rows_view_ok(q.transpose(1, 2).contiguous().transpose(1, 2))
    assert hopper._rows_view_ok(q)
    qkv = torch.zeros(1, 256, 3, 4, 128)  # q, k, v slices of a packed projection
    assert hopper._rows_view_ok(qkv[:, :, 0])


def test_backward_dispatch(monkeypatch):
    """flash_attn_bwd's Gluon path: dK/dV (and dQ when Sq % 128 == 0) only where the switches
    allow and the module says it takes the inputs; a dK/dV build failure falls back to the
    Triton kernels for good, a dQ build failure to the Triton dQ kernel."""
    from tritium.kernels import flash_attn_bwd as fb

    calls: list = []

    class Fake:
        fails = set()

        @staticmethod
        def supported(q, k, v, dout, *, causal):
            return q.shape[1] % 64 == 0

        @classmethod
        def flash_attn_dkdv_ws(cls, q, k, v, dout, lse2, delta, *, softmax_scale, causal):
            calls.append("dkdv")
            if "dkdv" in cls.fails:
                raise TypeError("warp_specialize() got an unexpected keyword argument")
            return "dk", "dv"

        @classmethod
        def flash_attn_dq_ws(cls, q, k, v, dout, lse2, delta, *, softmax_scale, causal):
            calls.append("dq")
            if "dq" in cls.fails:
                raise AttributeError("module 'tma' has no attribute 'async_load'")
            return "dq"

    monkeypatch.setattr(fa, "_GLUON", {"flash_attn_hopper_bwd": Fake})
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setenv("TRITIUM_HOPPER_WS", "1")
    q = torch.zeros(1, 256, 4, 128)
    k = torch.zeros(1, 256, 2, 128)
    lse = torch.zeros(1, 4, 256)
    bwd = fb._try_hopper_ws_bwd
    assert bwd(q, k, k, q, lse, lse, 0.1, True) == ("dq", "dk", "dv")
    assert calls == ["dkdv", "dq"]
    # Sq a multiple of 64, not of 128: Gluon dK/dV, Triton dQ (dq None)
    assert bwd(q[:, :192], k, k, q[:, :192], lse, lse, 0.1, True) == (None, "dk", "dv")
    assert bwd(q[:, :100], k, k, q[:, :100], lse, lse, 0.1, True) is None  # unsupported
    monkeypatch.setenv("TRITIUM_HOPPER_WS", "0")
    assert bwd(q, k, k, q, lse, lse, 0.1, True) is None
    assert calls == ["dkdv", "dq", "dkdv"]
    monkeypatch.setenv("TRITIUM_HOPPER_WS", "1")
    Fake.fails = {"dq"}
    with pytest.warns(RuntimeWarning, match="failed to build"):
        # this call keeps its Gluon dK/dV and runs the Triton dQ; the module is off from here
        assert bwd(q, k, k, q, lse, lse, 0.1, True) == (None, "dk", "dv")
    assert calls[-2:] == ["dkdv", "dq"]
    assert bwd(q, k, k, q, lse, lse, 0.1, True) is None
    assert len(calls) == 5  # switched off after the failure: no further attempt


def test_fused_backward_dispatch(monkeypatch):
    """flash_attn_bwd with deterministic None (the API's False) or False sends inputs the
    fused Gluon module takes to it, with a zeroed fp32 dQ buffer it adds dQ / scale into, and
    converts that; deterministic=True never goes there; a build failure falls back to the
    Triton atomic kernel. The fake module computes the true gradients with the reference, and
    the Triton kernels run under the interpreter, so every path is checked for numbers."""
    from tritium.kernels import flash_attn_bwd as fb
    from tritium.ops.attention_reference import attention_reference_bwd

    calls: list = []

    class Fused:
        fails = False

        @staticmethod
        def supported(q, k, v, dout, *, causal):
            return q.shape[1] % 8 == 0

        @classmethod
        def flash_attn_bwd_fused_ws(cls, q, k, v, dout, lse2, delta, dq_acc, *, softmax_scale,
                                    causal):
            calls.append(float(dq_acc.abs().max()))  # must arrive zeroed
            if cls.fails:
                raise AttributeError("module 'tma' has no attribute 'async_atomic_add'")
            dq, dk, dv = attention_reference_bwd(dout, q, k, v, causal, softmax_scale)
            dq_acc += dq.float() / softmax_scale
            return dk, dv

    modules = {"flash_attn_hopper_bwd_fused": Fused, "flash_attn_hopper_bwd": None}
    monkeypatch.setattr(fb, "gluon_module", lambda name: modules.get(name))
    torch.manual_seed(0)
    q, k, v, dout = (torch.randn(1, 16, h, 32, dtype=torch.float16) for h in (4, 2, 2, 4))
    out, lse = fa.flash_attn_fwd(q, k, v, softmax_scale=0.3, causal=True)
    want = attention_reference_bwd(dout, q, k, v, True, 0.3)

    def run(**kw):
        got = fb.flash_attn_bwd(dout, q, k, v, out, lse, softmax_scale=0.3, causal=True, **kw)
        for g, w in zip(got, want):
            # fp16 gradients: the kernels' BWD_TOL (tests/kernels/flash_attn_helpers.py)
            torch.testing.assert_close(g.float(), w.float(), atol=1e-2, rtol=1e-2)

    run(deterministic=None)
    run(deterministic=False)
    assert calls == [0.0, 0.0]
    run(deterministic=True)  # the deterministic kernels
    run(deterministic=None, window_left=64)  # not a plain call: the Triton kernels
    assert len(calls) == 2
    monkeypatch.setattr(fb, "WS_FUSED", False)
    run(deterministic=None)
    assert len(calls) == 2
    monkeypatch.setattr(fb, "WS_FUSED", True)
    Fused.fails = True
    monkeypatch.setattr(fa, "_GLUON", {})
    with pytest.warns(RuntimeWarning, match="failed to build"):
        run(deterministic=False)  # falls back to the Triton atomic kernel, same numbers
    assert len(calls) == 3
