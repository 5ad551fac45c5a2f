"""Ready-made ``mask_mod`` functions for ``create_block_mask``, and how to combine them.

A mask_mod is ``f(b, h, q_idx, kv_idx) -> bool tensor`` (True = attend), written in plain torch.
Its four arguments are integer index tensors that broadcast against each other (4-D, as in
FlexAttention), so one call evaluates a whole tile or grid of (query, key) pairs at once.

Each ready-made mod is a ``MaskMod``: a callable that also carries a *tile hint*,
``hint(b, h, q_lo, q_hi, kv_lo, kv_hi) -> (surely_empty, surely_full)``, which decides from
the index ranges of a tile alone (``*_lo``/``*_hi`` inclusive, broadcasting) whether every
element is False or every element is True; either entry may be None ("no idea").
``create_block_mask`` evaluates the mask element-wise only on tiles the hint leaves undecided,
so a causal or document mask at 16k costs O(tiles + boundary tiles x tile size), not O(S^2).
Plain functions work too (they are evaluated on every tile). Hints must be exact in what they
claim: the tests compare every hinted mask with its element-wise evaluation.

Index conventions: ``q_idx`` and ``kv_idx`` are absolute positions, top-left aligned (as
FlexAttention): ``causal_mask`` lets query i see keys j <= i. For flash-attn's bottom-right
alignment with Sq != Sk use ``sliding_window_mask(None, Sk - Sq)``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Hint = Callable[..., tuple[torch.Tensor | None, torch.Tensor | None]]


class MaskMod:
    """A mask_mod with an optional tile hint; ``a & b`` and ``a | b`` combine two mods."""

    def __init__(self, fn: Callable, hint: Hint | None = None, name: str = "mask_mod"):
        self.fn = fn
        self.tile_hint = hint
        self.name = name

    def __call__(self, b, h, q_idx, kv_idx) -> torch.Tensor:
        return self.fn(b, h, q_idx, kv_idx)

    def __and__(self, other: Callable) -> MaskMod:
        return and_masks(self, other)

    def __or__(self, other: Callable) -> MaskMod:
        return or_masks(self, other)

    def __repr__(self) -> str:
        return self.name


def tile_hint_of(mod: Callable) -> Hint | None:
    """The tile hint a mask_mod carries, or None for a plain function."""
    return getattr(mod, "tile_hint", None)


def _check_int(name: str, value, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative int{' or None' if allow_none else ''},"
                         f" got {value!r}")
    return value


# -- causal and sliding window --------------------------------------------------------------


def _causal(b, h, q_idx, kv_idx):
    return q_idx >= kv_idx


def _causal_hint(b, h, q_lo, q_hi, kv_lo, kv_hi):
    return q_hi < kv_lo, q_lo >= kv_hi


causal_mask = MaskMod(_causal, _causal_hint, "causal_mask")
causal_mask.__doc__ = "Query i sees keys j <= i (top-left aligned)."


def sliding_window_mask(left: int | None, right: int | None = 0) -> MaskMod:
    """Query i sees keys j with i - left <= j <= i + right; None = unbounded on that side.

    ``sliding_window_mask(w, 0)`` is causal attention over the last w + 1 keys (flash-attn's
    ``window_size=(w, 0)``); ``sliding_window_mask(None, 0)`` equals ``causal_mask``.
    """
    left = _check_int("left", left, allow_none=True)
    right = _check_int("right", right, allow_none=True)

    def fn(b, h, q_idx, kv_idx):
        ok = torch.ones((), dtype=torch.bool, device=q_idx.device)
        if left is not None:
            ok = ok & (kv_idx >= q_idx - left)
        if right is not None:
            ok = ok & (kv_idx <= q_idx + right)
        return ok

    def hint(b, h, q_lo, q_hi, kv_lo, kv_hi):
        empty, full = torch.zeros((), dtype=torch.bool), torch.ones((), dtype=torch.bool)
        if left is not None:
            empty = empty | (kv_hi < q_lo - left)
            full = full & (kv_lo >= q_hi - left)
        if right is not None:
            empty = empty | (kv_lo > q_hi + right)
            full = full & (kv_hi <= q_lo + right)
        return empty, full

    return MaskMod(fn, hint, f"sliding_window_mask({left}, {right})")


# -- documents (packed sequences) -----------------------------------------------------------


def document_ids_from_cu_seqlens(cu_seqlens: torch.Tensor) -> torch.Tensor:
    """cu_seqlens (N+1,) [0, l0, l0+l1, ...] -> document ids (total_len,) [0]*l0 + [1]*l1 + ..."""
    if not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.dim() != 1 \
            or cu_seqlens.is_floating_point() or cu_seqlens.numel() < 2:
        raise ValueError(f"cu_seqlens must be a 1-D integer tensor of N+1 >= 2 offsets, got "
                         f"{getattr(cu_seqlens, 'shape', cu_seqlens)!r}")
    lens = cu_seqlens[1:] - cu_seqlens[:-1]
    if int(cu_seqlens[0]) != 0 or bool((lens < 0).any()):
        raise ValueError(f"cu_seqlens must start at 0 and not decrease, got {cu_seqlens.tolist()}")
    ids = torch.arange(lens.numel(), device=cu_seqlens.device)
    return torch.repeat_interleave(ids, lens.long())


def document_mask(document_ids: torch.Tensor | None = None, *,
                  cu_seqlens: torch.Tensor | None = None) -> MaskMod:
    """Tokens attend only within their own document: ``doc[q] == doc[kv]``.

    ``document_ids``: (L,) shared by the batch, or (B, L) per batch row; or give
    ``cu_seqlens`` (N+1,) of a packed batch instead. Combine with ``causal_mask`` for packed
    causal LM training. When ids never decrease along L (packed documents), the mask carries a
    tile hint: only tiles that straddle a document boundary are evaluated element-wise.
    """
    if (document_ids is None) == (cu_seqlens is None):
        raise ValueError("document_mask needs exactly one of document_ids or cu_seqlens")
    ids = document_ids_from_cu_seqlens(cu_seqlens) if cu_seqlens is not None else document_ids
    if not isinstance(ids, torch.Tensor) or ids.dim() not in (1, 2) or ids.is_floating_point():
        raise ValueError(f"document_ids must be an integer tensor of shape (L,) or (B, L), got "
                         f"{getattr(ids, 'dtype', type(ids))} {tuple(getattr(ids, 'shape', ()))}")
    batched = ids.dim() == 2

    def fn(b, h, q_idx, kv_idx):
        if batched:
            return ids[b, q_idx] == ids[b, kv_idx]
        return ids[q_idx] == ids[kv_idx]

    sorted_ids = ids.shape[-1] < 2 or bool((ids[..., 1:] >= ids[..., :-1]).all())  # host sync
    hint = None
    if sorted_ids:
        def hint(b, h, q_lo, q_hi, kv_lo, kv_hi):
            # ids never decrease, so a range's min / max are its end points.
            take = (lambda i: ids[b, i]) if batched else (lambda i: ids[i])
            ql, qh, kl, kh = take(q_lo), take(q_hi), take(kv_lo), take(kv_hi)
            return (qh < kl) | (ql > kh), (ql == qh) & (kl == kh) & (ql == kl)

    return MaskMod(fn, hint, f"document_mask({tuple(ids.shape)})")


# -- prefix LM ------------------------------------------------------------------------------


def prefix_lm_mask(prefix_len: int | torch.Tensor) -> MaskMod:
    """Bidirectional over the first ``prefix_len`` tokens, causal after: ``kv < p or kv <= q``.

    ``prefix_len``: an int, or a (B,) integer tensor (one prefix per batch row).
    """
    if isinstance(prefix_len, torch.Tensor):
        if prefix_len.dim() != 1 or prefix_len.is_floating_point():
            raise ValueError(f"prefix_len tensor must be 1-D integer (B,), got "
                             f"{prefix_len.dtype} {tuple(prefix_len.shape)}")
        if bool((prefix_len < 0).any()):
            raise ValueError(f"prefix_len must be >= 0, got {prefix_len.tolist()}")

        def plen(b):
            return prefix_len[b]
    else:
        _check_int("prefix_len", prefix_len)

        def plen(b):
            return prefix_len

    def fn(b, h, q_idx, kv_idx):
        return (kv_idx < plen(b)) | (q_idx >= kv_idx)

    def hint(b, h, q_lo, q_hi, kv_lo, kv_hi):
        p = plen(b)
        return (kv_lo >= p) & (q_hi < kv_lo), (kv_hi < p) | (q_lo >= kv_hi)

    shown = tuple(prefix_len.shape) if isinstance(prefix_len, torch.Tensor) else prefix_len
    return MaskMod(fn, hint, f"prefix_lm_mask({shown})")


# -- combinations ---------------------------------------------------------------------------


def _check_mods(mods: tuple) -> None:
    if not mods:
        raise ValueError("and_masks / or_masks need at least one mask_mod")
    for m in mods:
        if not callable(m):
            raise TypeError(f"mask_mods must be callables f(b, h, q_idx, kv_idx), got {m!r}")


def _hints(mods, args):
    out = []
    for m in mods:
        hint = tile_hint_of(m)
        out.append(hint(*args) if hint is not None else (None, None))
    return out


def _reduce(values, op):
    acc = None
    for v in values:
        acc = v if acc is None else op(acc, v)
    return acc


def and_masks(*mods: Callable) -> MaskMod:
    """Intersection: attend where every mod attends. A tile is surely empty if any mod says
    so, surely full if all of them do."""
    _check_mods(mods)

    def fn(b, h, q_idx, kv_idx):
        return _reduce((m(b, h, q_idx, kv_idx) for m in mods), torch.logical_and)

    def hint(*args):
        hs = _hints(mods, args)
        empty = _reduce([e for e, _ in hs if e is not None], torch.logical_or)
        fulls = [f for _, f in hs]
        full = None if any(f is None for f in fulls) else _reduce(fulls, torch.logical_and)
        return empty, full

    any_hint = any(tile_hint_of(m) is not None for m in mods)
    return MaskMod(fn, hint if any_hint else None, f"and_masks({', '.join(map(repr, mods))})")


def or_masks(*mods: Callable) -> MaskMod:
    """Union: attend where any mod attends. A tile is surely full if any mod says so, surely
    empty if all of them do."""
    _check_mods(mods)

    def fn(b, h, q_idx, kv_idx):
        return _reduce((m(b, h, q_idx, kv_idx) for m in mods), torch.logical_or)

    def hint(*args):
        hs = _hints(mods, args)
        full = _reduce([f for _, f in hs if f is not None], torch.logical_or)
        empties = [e for e, _ in hs]
        empty = None if any(e is None for e in empties) else _reduce(empties, torch.logical_and)
        return empty, full

    any_hint = any(tile_hint_of(m) is not None for m in mods)
    return MaskMod(fn, hint if any_hint else None, f"or_masks({', '.join(map(repr, mods))})")
