"""The contestants of benchmarks/attention.py, and the SDPA reference they are checked against.

Each peer builder takes (case, base, cfg) -- base = [q, k, v] in (B, S, H, D) -- and returns a
``Runner``: leaf inputs in the peer's own layout (fresh copies with requires_grad, so no peer
pays for another's layout), ``fn() -> output`` in that layout, and a context entered around
timing (e.g. an SDPA backend choice). Builders import optional packages lazily, so a missing
peer fails only its own rows.
"""

from __future__ import annotations

import contextlib
import functools
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Runner:
    fn: Callable[[], torch.Tensor]
    inputs: tuple
    layout: str  # "bshd" (B, S, H, D) | "bhsd" (B, H, S, D) | "thd" (B*S tokens, H, D), B = 1
    context: Callable = contextlib.nullcontext


def to_layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    """(B, S, H, D) -> layout, contiguous."""
    if layout == "bhsd":
        return x.transpose(1, 2).contiguous()
    if layout == "thd":
        return x.reshape(-1, *x.shape[2:]).contiguous()
    return x.contiguous()


def from_layout(y: torch.Tensor, layout: str) -> torch.Tensor:
    """layout -> (B, S, H, D) (thd comes from B = 1 cases)."""
    if layout == "bhsd":
        return y.transpose(1, 2)
    if layout == "thd":
        return y.unsqueeze(0)
    return y


def leaves(base, layout: str) -> tuple:
    return tuple(to_layout(x, layout).detach().requires_grad_() for x in base)


def cu_seqlens(case, device) -> torch.Tensor:
    lens = torch.tensor([0] + case.doc_lens, device=device)
    return torch.cumsum(lens, 0).to(torch.int32)


def sliding_dense(S: int, window: int, device) -> torch.Tensor:
    i = torch.arange(S, device=device)[:, None]
    j = torch.arange(S, device=device)[None, :]
    return (j <= i) & (i - j < window)


# -- the reference: SDPA ----------------------------------------------------------------------


def reference(case, base, dout) -> list[torch.Tensor]:
    """[out, dq, dk, dv] in (B, S, H, D) from F.scaled_dot_product_attention (default backend
    choice); documents run one SDPA call each."""
    q, k, v = leaves(base, "bhsd")
    if case.doc_lens is not None:
        outs, s = [], 0
        for L in case.doc_lens:
            sl = slice(s, s + L)
            outs.append(F.scaled_dot_product_attention(q[:, :, sl], k[:, :, sl], v[:, :, sl],
                                                       is_causal=case.causal))
            s += L
        out = torch.cat(outs, 2)
    elif case.window is not None:
        mask = sliding_dense(case.S, case.window, q.device)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    else:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=case.causal)
    grads = torch.autograd.grad(out, (q, k, v), to_layout(dout, "bhsd"))
    return [from_layout(t.detach(), "bhsd") for t in (out, *grads)]


# -- tritium ----------------------------------------------------------------------------------


def tritium_dense(case, base, cfg) -> Runner:
    from tritium.ops.attention import flash_attn_func

    q, k, v = leaves(base, "bshd")
    window = (case.window - 1, 0) if case.window else (-1, -1)
    return Runner(lambda: flash_attn_func(q, k, v, causal=case.causal, window_size=window,
                                          deterministic=cfg.deterministic), (q, k, v), "bshd")


def tritium_block_mask(case, dev):
    from tritium.ops import block_mask as tbm

    if case.doc_lens is not None:
        mod = tbm.causal_mask & tbm.document_mask(cu_seqlens=cu_seqlens(case, dev))
    elif case.window is not None:
        mod = tbm.sliding_window_mask(case.window - 1, 0)
    else:
        mod = tbm.causal_mask if case.causal else (lambda b, h, q, kv: q >= 0)
    return tbm.create_block_mask(mod, None, None, case.S, case.S, device=dev)


def tritium_masked(case, base, cfg) -> Runner:
    from tritium.ops.attention import flash_attn_func

    bm = tritium_block_mask(case, base[0].device)
    q, k, v = leaves(base, "bshd")
    return Runner(lambda: flash_attn_func(q, k, v, block_mask=bm,
                                          deterministic=cfg.deterministic), (q, k, v), "bshd")


def tritium_varlen(case, base, cfg) -> Runner:
    from tritium.ops.attention import flash_attn_varlen_func

    q, k, v = leaves(base, "thd")
    cu, L = cu_seqlens(case, q.device), max(case.doc_lens)
    return Runner(lambda: flash_attn_varlen_func(q, k, v, cu, cu, L, L, causal=case.causal,
                                                 deterministic=cfg.deterministic),
                  (q, k, v), "thd")


# -- PyTorch SDPA -----------------------------------------------------------------------------


def sdpa_backend(backend_name: str):
    def build(case, base, cfg) -> Runner:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        backend = getattr(SDPBackend, backend_name)
        q, k, v = leaves(base, "bhsd")
        return Runner(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=case.causal),
                      (q, k, v), "bhsd", lambda: sdpa_kernel(backend))
    return build


def sdpa_dense_mask(case, base, cfg) -> Runner:
    q, k, v = leaves(base, "bhsd")
    mask = sliding_dense(case.S, case.window, q.device)
    return Runner(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask), (q, k, v),
                  "bhsd")


# -- FlexAttention ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _flex(compiled: bool, static: bool):
    from torch.nn.attention.flex_attention import flex_attention

    if compiled and static:
        return torch.compile(flex_attention, dynamic=False)

    # torch.compile's defaults, as users call it: after the first recompile, automatic dynamic
    # shapes let one graph serve the other batch sizes and lengths (static shapes would
    # recompile fwd + bwd for each of the ~27 cases, minutes of compile time).
    return torch.compile(flex_attention) if compiled else flex_attention


def flex_block_mask(case, device):
    from torch.nn.attention.flex_attention import create_block_mask

    if case.doc_lens is not None:
        ids = torch.repeat_interleave(torch.arange(len(case.doc_lens), device=device),
                                      torch.tensor(case.doc_lens, device=device))

        def mod(b, h, q, kv):
            return (q >= kv) & (ids[q] == ids[kv])
    elif case.window is not None:
        w = case.window

        def mod(b, h, q, kv):
            return (q >= kv) & (q - kv < w)
    elif case.causal:
        def mod(b, h, q, kv):
            return q >= kv
    else:
        return None
    return create_block_mask(mod, None, None, case.S, case.S, device=device)


def flex(case, base, cfg) -> Runner:
    fa = _flex(cfg.compile_flex, cfg.flex_static)
    q, k, v = leaves(base, "bhsd")
    bm = flex_block_mask(case, q.device)
    return Runner(lambda: fa(q, k, v, block_mask=bm), (q, k, v), "bhsd")


# -- flash-attn (when installed) --------------------------------------------------------------


def flash_attn_dense(case, base, cfg) -> Runner:
    from flash_attn import flash_attn_func

    q, k, v = leaves(base, "bshd")
    window = (case.window - 1, 0) if case.window else (-1, -1)
    return Runner(lambda: flash_attn_func(q, k, v, causal=case.causal, window_size=window),
                  (q, k, v), "bshd")


def flash_attn_varlen(case, base, cfg) -> Runner:
    from flash_attn import flash_attn_varlen_func

    q, k, v = leaves(base, "thd")
    cu, L = cu_seqlens(case, q.device), max(case.doc_lens)
    return Runner(lambda: flash_attn_varlen_func(q, k, v, cu, cu, L, L, causal=case.causal),
                  (q, k, v), "thd")


def mask_build_ms(case, device, reps: int = 5) -> dict[str, float]:
    """Median wall time to build each library's block mask for this case (ms)."""
    out = {}
    for name, build in (("tritium", tritium_block_mask), ("flex", flex_block_mask)):
        try:
            times = []
            for _ in range(reps + 1):  # the first call warms caches
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                build(case, device)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times.append((time.perf_counter() - t0) * 1e3)
            out[name] = statistics.median(times[1:])
        except Exception as e:  # noqa: BLE001 -- recorded, not fatal
            out[name] = f"{type(e).__name__}: {e}"
    return out


PEERS: dict[str, list[tuple[str, Callable]]] = {
    "dense": [("tritium", tritium_dense), ("sdpa-flash", sdpa_backend("FLASH_ATTENTION")),
              ("sdpa-cudnn", sdpa_backend("CUDNN_ATTENTION")), ("flex", flex),
              ("flash-attn", flash_attn_dense)],
    # (SDPA's nested-tensor varlen path does not support is_causal, so it is not a peer here)
    "varlen": [("tritium-varlen", tritium_varlen), ("flash-attn-varlen", flash_attn_varlen)],
    "document": [("tritium-block-mask", tritium_masked), ("flex", flex)],
    "sliding": [("tritium-window", tritium_dense), ("tritium-block-mask", tritium_masked),
                ("flex", flex), ("flash-attn", flash_attn_dense),
                ("sdpa-dense-mask", sdpa_dense_mask)],
}
