"""Input checks for the attention API: bad input raises a clear ValueError/TypeError naming the
offending value, before any kernel can compute a wrong answer.

Everything here reads shapes, dtypes and strides only (no device sync, nothing that breaks a
``torch.compile`` graph), except ``check_cu_seqlens_values``, which runs inside the custom op.
"""

from __future__ import annotations

import numbers
import weakref

import torch

from tritium.ops.block_mask import BlockMask

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256


def check_flags(*, causal, dropout_p, softcap, return_lse, deterministic,
                causal_name: str = "causal") -> None:
    if not isinstance(causal, bool):
        raise TypeError(
            f"{causal_name} must be a bool, got {causal!r}; note that tritium's 4th positional "
            "argument is causal (flash-attn's is dropout_p): pass arguments by keyword")
    if not isinstance(dropout_p, numbers.Real) or dropout_p != 0:
        raise ValueError(f"dropout_p={dropout_p!r}: attention dropout is not supported (use 0)")
    if not isinstance(softcap, numbers.Real) or isinstance(softcap, bool) or softcap < 0 \
            or softcap != softcap:
        raise ValueError(f"softcap must be a number >= 0 (0 = off), got {softcap!r}")
    for name, val in (("return_lse", return_lse), ("deterministic", deterministic)):
        if not isinstance(val, bool):
            raise TypeError(f"{name} must be a bool, got {val!r}")


def check_scale(scale) -> float:
    """The softmax scale: a finite number > 0 (the kernels fold it in after the row max)."""
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not \
            (0 < scale < float("inf")):
        raise ValueError(f"softmax_scale must be a finite number > 0, got {scale!r}")
    return float(scale)


def check_qkv(q, k, v, *, rank: int, layout: str, head_dim: int | None = None) -> None:
    """dtype, device, rank, head dim, heads and strides of q, k, v. ``head_dim`` is the index
    of the heads dim (default: rank - 2)."""
    hd = rank - 2 if head_dim is None else head_dim
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in _DTYPES:
            raise TypeError(f"{name} has dtype {t.dtype}; supported: float16, bfloat16, float32")
        if t.dim() != rank:
            raise ValueError(f"{name} must have {rank} dims {layout}, got shape "
                             f"{tuple(t.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, "
                         f"{v.device}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got {tuple(k.shape)} and "
                         f"{tuple(v.shape)}")
    D = q.shape[-1]
    if k.shape[-1] != D:
        raise ValueError(f"q has head_dim {D} but k/v have {k.shape[-1]}")
    if D == 0 or D > MAX_HEAD_DIM or D % 8:
        raise ValueError(f"head_dim {D} is not supported: it must be a multiple of 8 and at "
                         f"most {MAX_HEAD_DIM}")
    hq, hk = q.shape[hd], k.shape[hd]
    if hk == 0 or hq % hk:
        raise ValueError(f"the number of query heads ({hq}) must be a multiple of the number "
                         f"of key/value heads ({hk})")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.stride(-1) != 1 and t.numel() > 0:
            raise ValueError(
                f"{name} has strides {tuple(t.stride())}: the last dim (head_dim) must be "
                "contiguous (stride 1); call .contiguous() first")


def check_window(window_size) -> tuple[int | None, int | None]:
    """(left, right) with -1/None = unbounded -> (left or None, right or None)."""
    try:
        left, right = window_size
    except (TypeError, ValueError):
        raise TypeError(f"window_size must be a pair (left, right), got {window_size!r}") \
            from None
    res = []
    for name, w in (("left", left), ("right", right)):
        if w is None or (isinstance(w, numbers.Integral) and w == -1):
            res.append(None)
        elif isinstance(w, numbers.Integral) and not isinstance(w, bool) and w >= 0:
            res.append(int(w))
        else:
            raise ValueError(f"window_size {name} must be an int >= 0, or -1/None for "
                             f"unbounded, got {w!r}")
    return res[0], res[1]


def check_cu_seqlens(cu_q, cu_k, max_q, max_k, device) -> None:
    for name, t in (("cu_seqlens_q", cu_q), ("cu_seqlens_k", cu_k)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype != torch.int32:
            raise TypeError(f"{name} must be int32, got {t.dtype}")
        if t.dim() != 1 or t.shape[0] < 1:
            raise ValueError(f"{name} must be 1-D with batch + 1 entries, got shape "
                             f"{tuple(t.shape)}")
        if t.device != device:
            raise ValueError(f"{name} is on {t.device} but q is on {device}")
    if cu_q.shape != cu_k.shape:
        raise ValueError(f"cu_seqlens_q and cu_seqlens_k must have the same length, got "
                         f"{cu_q.shape[0]} and {cu_k.shape[0]}")
    for name, m in (("max_seqlen_q", max_q), ("max_seqlen_k", max_k)):
        if isinstance(m, bool) or not isinstance(m, numbers.Integral) or m < 0:
            raise ValueError(f"{name} must be an int >= 0, got {m!r}")


# cu_seqlens pairs already validated. The check copies eight numbers to the host, a device
# sync that cost more than the kernel in the H100 benchmark (varlen forward through the API
# 248 TFLOP/s vs 367 at the launcher, 2026-11-23), and packed training passes the same tensors
# to every layer. A pair is trusted again only if it is the same two tensor objects, not
# modified in place since (``Tensor._version``), with the same totals and max_seqlen; entries
# hold weak references, so a tensor freed and replaced at a recycled id is never mistaken for
# the validated one. Not seen: writes that bypass autograd's version counter (``.data``,
# another library writing through the raw pointer).
_VALIDATED: dict[tuple[int, int], tuple] = {}
_MAX_VALIDATED = 64


def _cu_stats(cu_q, cu_k) -> list[list[int]]:
    """[first, last, min length, max length] of each, in one device-to-host copy."""
    def stats(cu):
        d = cu[1:] - cu[:-1] if cu.shape[0] > 1 else cu.new_zeros(1)
        return torch.stack([cu[0], cu[-1], d.min(), d.max()])

    return torch.stack([stats(cu_q), stats(cu_k)]).tolist()


def check_cu_seqlens_values(cu_q, cu_k, total_q: int, total_k: int, max_q: int,
                            max_k: int) -> None:
    """Values of cu_seqlens (one device-to-host copy, skipped for a pair validated before):
    start at 0, never decrease, end at the token counts, and no sequence longer than
    max_seqlen_*."""
    key = (id(cu_q), id(cu_k))
    sig = (cu_q._version, cu_k._version, total_q, total_k, max_q, max_k)
    hit = _VALIDATED.get(key)
    if hit is not None and hit[0]() is cu_q and hit[1]() is cu_k and hit[2] == sig:
        return
    (q0, q1, qmin, qmax), (k0, k1, kmin, kmax) = _cu_stats(cu_q, cu_k)
    for name, first, last, dmin, dmax, total, mx in (
            ("cu_seqlens_q", q0, q1, qmin, qmax, total_q, max_q),
            ("cu_seqlens_k", k0, k1, kmin, kmax, total_k, max_k)):
        if first != 0 or dmin < 0:
            raise ValueError(f"{name} must start at 0 and never decrease")
        if last != total:
            raise ValueError(f"{name} ends at {last} but the packed tensor has {total} tokens")
        if dmax > mx:
            raise ValueError(f"{name} has a sequence of {dmax} tokens, more than max_seqlen "
                             f"{mx}")
    if len(_VALIDATED) >= _MAX_VALIDATED:
        _VALIDATED.clear()
    _VALIDATED[key] = (weakref.ref(cu_q), weakref.ref(cu_k), sig)


def check_block_mask(bm, batch: int, heads: int, seqlen_q: int, seqlen_k: int, device) -> None:
    if not isinstance(bm, BlockMask):
        raise TypeError(f"block_mask must be a tritium BlockMask, got {type(bm).__name__}")
    if (bm.seq_len_q, bm.seq_len_kv) != (seqlen_q, seqlen_k):
        raise ValueError(f"block_mask is for ({bm.seq_len_q}, {bm.seq_len_kv}) query/key "
                         f"tokens but the inputs have ({seqlen_q}, {seqlen_k})")
    for name, size in (("q_block_size", bm.q_block_size), ("kv_block_size", bm.kv_block_size)):
        if size < 16 or size & (size - 1):
            raise ValueError(f"block_mask.{name}={size} must be a power of two >= 16")
    B, H, nqb = bm.kv_num_blocks.shape
    if B not in (1, batch) or H not in (1, heads):
        raise ValueError(f"block_mask has batch/heads ({B}, {H}); expected (1 or {batch}, "
                         f"1 or {heads})")
    if nqb != -(-seqlen_q // bm.q_block_size):
        raise ValueError(f"block_mask has {nqb} query blocks, expected "
                         f"ceil({seqlen_q} / {bm.q_block_size})")
    for name in ("kv_num_blocks", "kv_indices", "partial_tile_ids", "full_kv_num_blocks",
                 "full_kv_indices", "mask_tiles"):
        t = getattr(bm, name)
        if t.device != device:
            raise ValueError(f"block_mask.{name} is on {t.device} but q is on {device}")
        want = (torch.uint8,) if name == "mask_tiles" else (torch.int32,)
        if t.dtype not in want:
            raise TypeError(f"block_mask.{name} has dtype {t.dtype}, expected {want[0]}")
