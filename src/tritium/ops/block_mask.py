"""Block-sparse attention masks.

A ``BlockMask`` describes a boolean (B, H, Sq, Sk) mask (True = attend) in tiles of
``q_block_size x kv_block_size``. For each (batch, head, query block) it lists the key blocks to
visit, split into *full* blocks (every element True: the kernel applies no per-element mask) and
*partial* blocks (the kernel loads the block's element mask, a deduplicated tile from
``mask_tiles``). Key blocks in neither list are skipped: their cost is zero.

Batch and head dims may be 1 (broadcast) when the mask does not depend on them.

``create_block_mask(mask_mod, B, H, Q_LEN, KV_LEN)`` builds one from a plain-torch
``mask_mod(b, h, q_idx, kv_idx) -> bool`` (ready-made ones in ``tritium.ops.mask_mods``), with
no compile step: it evaluates the mod vectorized, tile by tile in bounded chunks, on the device.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from tritium.ops.mask_mods import (  # noqa: F401  (re-exported: one import for masks)
    MaskMod,
    and_masks,
    causal_mask,
    document_ids_from_cu_seqlens,
    document_mask,
    or_masks,
    prefix_lm_mask,
    sliding_window_mask,
    tile_hint_of,
)

logger = logging.getLogger(__name__)


class TransposedLists(NamedTuple):
    """A BlockMask's lists per key block instead of per query block (the order in which the
    backward's dK/dV kernel walks the query tiles); ``mask_tiles`` stays the mask's."""
    kv_num_blocks: torch.Tensor  # (B|1, H|1, nKB) int32: partial query blocks per key block
    kv_indices: torch.Tensor  # (B|1, H|1, nKB, nQB) int32: those query blocks, ascending
    partial_tile_ids: torch.Tensor  # (B|1, H|1, nKB, nQB) int32: their rows in mask_tiles
    full_kv_num_blocks: torch.Tensor  # (B|1, H|1, nKB) int32: full query blocks per key block
    full_kv_indices: torch.Tensor  # (B|1, H|1, nKB, nQB) int32: those query blocks, ascending


@dataclass
class BlockMask:
    seq_len_q: int
    seq_len_kv: int
    q_block_size: int  # power of two >= 16
    kv_block_size: int  # power of two >= 16
    # (B|1, H|1, nQB) int32: partial blocks per query block
    kv_num_blocks: torch.Tensor
    # (B|1, H|1, nQB, nKB) int32: partial kv blocks, ascending; the first kv_num_blocks are valid
    kv_indices: torch.Tensor
    # (B|1, H|1, nQB, nKB) int32: for the j-th partial block, its row in mask_tiles
    partial_tile_ids: torch.Tensor
    # (num_tiles, q_block_size, kv_block_size) uint8, 1 = attend; identical tiles stored once
    mask_tiles: torch.Tensor
    full_kv_num_blocks: torch.Tensor  # (B|1, H|1, nQB) int32: full blocks per query block
    full_kv_indices: torch.Tensor  # (B|1, H|1, nQB, nKB) int32: full kv blocks, ascending
    # the backward's transposed lists, built by the first transposed() call (not a field)
    _transposed: TransposedLists | None = field(default=None, init=False, repr=False,
                                                compare=False)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check sizes, shapes, dtypes and devices against the layout above (no device sync)."""
        _check_len("seq_len_q", self.seq_len_q)
        _check_len("seq_len_kv", self.seq_len_kv)
        _check_block_size("q_block_size", self.q_block_size)
        _check_block_size("kv_block_size", self.kv_block_size)
        n_qb = -(-self.seq_len_q // self.q_block_size)
        n_kb = -(-self.seq_len_kv // self.kv_block_size)
        num = self.kv_num_blocks
        if not isinstance(num, torch.Tensor) or num.dim() != 3 or num.shape[2] != n_qb:
            raise ValueError(f"kv_num_blocks must be (B|1, H|1, {n_qb}), got "
                             f"{tuple(getattr(num, 'shape', ()))}")
        bh = tuple(num.shape[:2])
        want = {"kv_num_blocks": bh + (n_qb,), "full_kv_num_blocks": bh + (n_qb,),
                "kv_indices": bh + (n_qb, n_kb), "partial_tile_ids": bh + (n_qb, n_kb),
                "full_kv_indices": bh + (n_qb, n_kb)}
        for name, shape in want.items():
            t = getattr(self, name)
            if tuple(t.shape) != shape or t.dtype != torch.int32 or t.device != num.device:
                raise ValueError(f"BlockMask.{name} must be int32 {shape} on {num.device}, got "
                                 f"{t.dtype} {tuple(t.shape)} on {t.device}")
        tiles = self.mask_tiles
        if tiles.dim() != 3 or tuple(tiles.shape[1:]) != (self.q_block_size, self.kv_block_size) \
                or tiles.dtype != torch.uint8 or tiles.device != num.device:
            raise ValueError(f"BlockMask.mask_tiles must be uint8 (T, {self.q_block_size}, "
                             f"{self.kv_block_size}) on {num.device}, got {tiles.dtype} "
                             f"{tuple(tiles.shape)} on {tiles.device}")

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(B|1, H|1, Sq, Sk): the dense mask this describes (1 = broadcast)."""
        b, h = self.kv_num_blocks.shape[:2]
        return (b, h, self.seq_len_q, self.seq_len_kv)

    def to(self, device: torch.device | str) -> BlockMask:
        """A copy with every tensor on ``device``."""
        return BlockMask(self.seq_len_q, self.seq_len_kv, self.q_block_size, self.kv_block_size,
                         *(getattr(self, n).to(device) for n in _TENSOR_FIELDS))

    def transposed(self) -> TransposedLists:
        """Per (b, h, key block) the query blocks that see it (full / partial, ascending) and
        the partial blocks' tile ids: the iteration order of the backward's dK/dV pass, under
        BlockMask's field names (kv_* now list query blocks). Built on the first call and
        cached on the mask, which is treated as immutable: a training step's layers all reuse
        one transpose."""
        if self._transposed is None:
            self._transposed = transpose_lists(self)
        return self._transposed

    def tile_states(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per tile (B|1, H|1, nQB, nKB): state int8 (0 empty, 1 partial, 2 full) and, for
        partial tiles, the row of ``mask_tiles`` (int64, 0 elsewhere)."""
        n_kb = self.kv_indices.shape[-1]
        j = torch.arange(n_kb, device=self.kv_indices.device)
        listed_p = j < self.kv_num_blocks[..., None].long()  # (B, H, nQB, nKB)
        listed_f = j < self.full_kv_num_blocks[..., None].long()
        state = torch.zeros(self.kv_indices.shape, dtype=torch.int64, device=j.device)
        # amax, not plain scatter: entries past the count may repeat indices (padding)
        state.scatter_reduce_(-1, self.kv_indices.long(), listed_p.long(), "amax")
        state.scatter_reduce_(-1, self.full_kv_indices.long(), 2 * listed_f.long(), "amax")
        tile = torch.zeros_like(state)
        tile.scatter_reduce_(-1, self.kv_indices.long(),
                             torch.where(listed_p, self.partial_tile_ids.long(), 0), "amax")
        return state.to(torch.int8), tile

    def to_dense(self) -> torch.Tensor:
        """The boolean mask (B|1, H|1, Sq, Sk), True = attend. O(B*H*Sq*Sk) memory: for tests
        and small shapes. Vectorized; duck-typed, so ``BlockMask.to_dense(ns)`` also works on
        any object with BlockMask's fields (e.g. a SimpleNamespace inside a custom op)."""
        state, tile = BlockMask.tile_states(self)
        B, H, n_qb, n_kb = state.shape
        qbs, kbs = self.q_block_size, self.kv_block_size
        tiles = self.mask_tiles.bool()
        if tiles.shape[0] == 0:
            tiles = torch.zeros(1, qbs, kbs, dtype=torch.bool, device=tiles.device)
        dense = tiles[tile]  # (B, H, nQB, nKB, qbs, kbs)
        dense = (dense & (state == 1)[..., None, None]) | (state == 2)[..., None, None]
        dense = dense.permute(0, 1, 2, 4, 3, 5).reshape(B, H, n_qb * qbs, n_kb * kbs)
        return dense[:, :, : self.seq_len_q, : self.seq_len_kv]

    def sparsity(self) -> float:
        """Fraction of (batch, head, query block, key block) tiles the kernel skips (host sync)."""
        total = self.kv_indices.numel()
        visited = int(self.kv_num_blocks.sum()) + int(self.full_kv_num_blocks.sum())
        return 1.0 - visited / total

    def __repr__(self) -> str:
        full, partial = int(self.full_kv_num_blocks.sum()), int(self.kv_num_blocks.sum())
        total = self.kv_indices.numel()
        B, H, Sq, Sk = self.shape
        return (f"BlockMask(shape=(B={B}, H={H}, Sq={Sq}, Sk={Sk}), "
                f"blocks={self.q_block_size}x{self.kv_block_size}, tiles: full={full} "
                f"partial={partial} empty={total - full - partial} "
                f"(sparsity {100.0 * (total - full - partial) / total:.1f}%), "
                f"unique partial tiles={self.mask_tiles.shape[0]}, "
                f"device={self.kv_num_blocks.device})")


_TENSOR_FIELDS = ("kv_num_blocks", "kv_indices", "partial_tile_ids", "mask_tiles",
                  "full_kv_num_blocks", "full_kv_indices")
_EMPTY, _PARTIAL, _FULL, _UNDECIDED = 0, 1, 2, 3  # tile states while building
_ONES = 0x0101010101010101  # eight True bytes read as one int64: a word of a full tile


def _check_len(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _check_block_size(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 16 or value & (value - 1):
        raise ValueError(f"{name} must be a power of two >= 16, got {value!r}")


# -- building a BlockMask from a mask_mod ---------------------------------------------------


def create_block_mask(
    mask_mod: Callable, B: int | None, H: int | None, Q_LEN: int, KV_LEN: int,
    device: torch.device | str | None = None, q_block_size: int = 128, kv_block_size: int = 128,
    chunk: int = 1 << 24,
) -> BlockMask:
    """Build the ``BlockMask`` of ``mask_mod(b, h, q_idx, kv_idx) -> bool`` (True = attend).

    The mod is called with broadcasting int64 index tensors (4-D, FlexAttention style) and must
    be vectorized plain torch. ``B``/``H`` None means the mask is shared by every batch row /
    head (the mod sees b = 0 / h = 0). A mask that turns out not to depend on b (or h) is stored
    with that dim 1 (broadcast) even when B (or H) is given: kernels read size-1 dims broadcast.

    Cost: the mod's tile hint (see ``tritium.ops.mask_mods``) settles the tiles it can; the rest
    are evaluated element-wise, ``chunk`` mask elements at a time (bounded memory at any
    length: nothing of size B*H*Q_LEN*KV_LEN is ever built), then classified empty / full /
    partial; partial tiles are stored once per distinct content. Positions past Q_LEN / KV_LEN
    (the last blocks' padding) are False, so a padded tile is never "full".

    Returns a BlockMask on ``device`` (default: CUDA when available, else CPU).
    """
    if not callable(mask_mod):
        raise TypeError(f"mask_mod must be a callable f(b, h, q_idx, kv_idx), got {mask_mod!r}")
    for name, v in (("B", B), ("H", H)):
        if v is not None:
            _check_len(name, v)
    _check_len("Q_LEN", Q_LEN)
    _check_len("KV_LEN", KV_LEN)
    _check_block_size("q_block_size", q_block_size)
    _check_block_size("kv_block_size", kv_block_size)
    _check_len("chunk", chunk)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    qbs, kbs = q_block_size, kv_block_size
    n_qb, n_kb = -(-Q_LEN // qbs), -(-KV_LEN // kbs)

    Bd, Hd = _probe_dependence(mask_mod, B or 1, H or 1, Q_LEN, KV_LEN, device)
    state = _hinted_states(mask_mod, (Bd, Hd, n_qb, n_kb), qbs, kbs, Q_LEN, KV_LEN, device)
    tile = torch.zeros(state.shape, dtype=torch.int32, device=device)
    store = _TileStore(qbs * kbs // 8, device)
    undecided = (state.view(-1) == _UNDECIDED).nonzero().squeeze(1)  # flat tile numbers
    per_chunk = max(1, chunk // (qbs * kbs))
    for start in range(0, undecided.numel(), per_chunk):
        flat = undecided[start:start + per_chunk]
        words = _eval_tiles(mask_mod, flat, (Bd, Hd, n_qb, n_kb), qbs, kbs, Q_LEN, KV_LEN)
        st, tid = store.classify(words)
        state.view(-1)[flat] = st
        tile.view(-1)[flat] = tid
    logger.debug("create_block_mask: %d of %d tiles evaluated element-wise, %d distinct",
                 undecided.numel(), state.numel(), len(store.rows))
    return _assemble(state, tile, store.tiles(qbs, kbs), Q_LEN, KV_LEN, qbs, kbs)


def block_mask_from_dense(
    mask: torch.Tensor, q_block_size: int = 128, kv_block_size: int = 128, chunk: int = 1 << 24,
) -> BlockMask:
    """The ``BlockMask`` of a dense bool mask (Sq, Sk) or (B|1, H|1, Sq, Sk), True = attend."""
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.dim() not in (2, 4):
        got = f"{getattr(mask, 'dtype', type(mask))} {tuple(getattr(mask, 'shape', ()))}"
        raise ValueError(f"mask must be a bool tensor (Sq, Sk) or (B|1, H|1, Sq, Sk), got {got}")
    m = mask[None, None] if mask.dim() == 2 else mask
    Bm, Hm, Sq, Sk = m.shape

    def mod(b, h, q_idx, kv_idx):
        return m[b, h, q_idx, kv_idx]

    return create_block_mask(mod, Bm if Bm > 1 else None, Hm if Hm > 1 else None, Sq, Sk,
                             m.device, q_block_size, kv_block_size, chunk)


def _call_mod(mask_mod: Callable, b, h, q_idx, kv_idx) -> torch.Tensor:
    out = mask_mod(b, h, q_idx, kv_idx)
    if isinstance(out, bool):
        out = torch.tensor(out, device=q_idx.device)
    if not isinstance(out, torch.Tensor) or out.dtype != torch.bool:
        raise TypeError(f"mask_mod must return a bool tensor, got "
                        f"{out.dtype if isinstance(out, torch.Tensor) else type(out).__name__}")
    return out


def _probe_dependence(mask_mod, Bc, Hc, Q_LEN, KV_LEN, device) -> tuple[int, int]:
    """Call the mod on a 2x2 corner with all batch rows and heads: a result of size 1 in the
    batch (head) dim means the mask does not depend on b (h)."""
    idx = [torch.arange(n, device=device).view(*([1] * d), n, *([1] * (3 - d)))
           for d, n in enumerate((Bc, Hc, min(Q_LEN, 2), min(KV_LEN, 2)))]
    out = _call_mod(mask_mod, *idx)
    target = (Bc, Hc, min(Q_LEN, 2), min(KV_LEN, 2))
    shape = (1,) * (4 - out.dim()) + tuple(out.shape)
    if out.dim() > 4 or any(s not in (1, t) for s, t in zip(shape, target)):
        raise ValueError(f"mask_mod returned shape {tuple(out.shape)} for index tensors that "
                         f"broadcast to {target}: it must broadcast like its arguments")
    return (Bc if shape[0] > 1 else 1), (Hc if shape[1] > 1 else 1)


def _hinted_states(mask_mod, shape, qbs, kbs, Q_LEN, KV_LEN, device) -> torch.Tensor:
    """int8 tile states (B|1, H|1, nQB, nKB): EMPTY / FULL where the mod's hint decides, else
    UNDECIDED. Hints speak about valid positions; a tile holding padding is never FULL."""
    state = torch.full(shape, _UNDECIDED, dtype=torch.int8, device=device)
    hint = tile_hint_of(mask_mod)
    if hint is None:
        return state
    Bd, Hd, n_qb, n_kb = shape
    b = torch.arange(Bd, device=device).view(-1, 1, 1, 1)
    h = torch.arange(Hd, device=device).view(1, -1, 1, 1)
    q_lo = torch.arange(n_qb, device=device).view(1, 1, -1, 1) * qbs
    q_hi = (q_lo + qbs - 1).clamp_max(Q_LEN - 1)
    kv_lo = torch.arange(n_kb, device=device).view(1, 1, 1, -1) * kbs
    kv_hi = (kv_lo + kbs - 1).clamp_max(KV_LEN - 1)
    empty, full = hint(b, h, q_lo, q_hi, kv_lo, kv_hi)
    if full is not None:
        unpadded = (q_hi - q_lo + 1 == qbs) & (kv_hi - kv_lo + 1 == kbs)
        full = torch.broadcast_to(torch.as_tensor(full, device=device) & unpadded, shape)
        state = torch.where(full, _FULL, state).to(torch.int8)
    if empty is not None:
        empty = torch.broadcast_to(torch.as_tensor(empty, device=device), shape)
        state = torch.where(empty, _EMPTY, state).to(torch.int8)
    return state.contiguous()


def _eval_tiles(mask_mod, flat, shape, qbs, kbs, Q_LEN, KV_LEN) -> torch.Tensor:
    """Evaluate the mod on the tiles numbered ``flat`` (P,) in the (B, H, nQB, nKB) grid ->
    (P, qbs*kbs/8) int64: each tile's bool bytes read eight at a time."""
    _, Hd, n_qb, n_kb = shape
    P, dev = flat.numel(), flat.device
    kb, rest = flat % n_kb, flat // n_kb
    qb, rest = rest % n_qb, rest // n_qb
    h, b = rest % Hd, rest // Hd
    q = (qb * qbs).view(-1, 1, 1, 1) + torch.arange(qbs, device=dev).view(1, 1, -1, 1)
    kv = (kb * kbs).view(-1, 1, 1, 1) + torch.arange(kbs, device=dev).view(1, 1, 1, -1)
    pad_q, pad_kv = Q_LEN % qbs != 0, KV_LEN % kbs != 0
    # Padding positions are clamped to valid ones for the call (a mod may index tensors of
    # length Q_LEN / KV_LEN), then masked out.
    ok = _call_mod(mask_mod, b.view(-1, 1, 1, 1), h.view(-1, 1, 1, 1),
                   q.clamp_max(Q_LEN - 1) if pad_q else q,
                   kv.clamp_max(KV_LEN - 1) if pad_kv else kv)
    try:
        ok = torch.broadcast_to(ok, (P, 1, qbs, kbs))
    except RuntimeError as e:
        raise ValueError(f"mask_mod returned shape {tuple(ok.shape)} for a batch of tiles "
                         f"{(P, 1, qbs, kbs)}: it must broadcast like its arguments") from e
    if pad_q:
        ok = ok & (q < Q_LEN)
    if pad_kv:
        ok = ok & (kv < KV_LEN)
    return ok.reshape(P, qbs * kbs).contiguous().view(torch.uint8).view(torch.int64)


def _hash_weights(n_words: int, device: torch.device) -> torch.Tensor:
    """(2, n_words) int64 random odd weights: two independent 64-bit hashes of a tile."""
    g = torch.Generator().manual_seed(0x7231)
    w = torch.randint(-(2**62), 2**62, (2, n_words), generator=g, dtype=torch.int64)
    return (w | 1).to(device)


class _TileStore:
    """Classifies evaluated tiles and keeps one copy of each distinct partial tile.

    Tiles are keyed by two 64-bit weighted sums of their words; every key match is then
    checked element-wise, and a chunk with a collision falls back to exact per-tile matching.
    """

    def __init__(self, n_words: int, device: torch.device):
        self.weights = _hash_weights(n_words, device)
        self.index: dict[tuple[int, int], list[int]] = {}  # key -> ids of tiles with that key
        self.rows: list[torch.Tensor] = []  # id -> (n_words,) int64 tile content
        self.n_words, self.device = n_words, device

    def classify(self, words: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """words (P, n_words) -> (state int8 (P,), tile id int32 (P,))."""
        lo, hi = torch.aminmax(words, dim=1)
        full = lo == _ONES  # a word never exceeds _ONES: its bytes are 0 or 1
        empty = hi == 0
        state = torch.full(full.shape, _PARTIAL, dtype=torch.int8, device=words.device)
        state[full] = _FULL
        state[empty] = _EMPTY
        ids = torch.zeros(full.shape, dtype=torch.int32, device=words.device)
        part = (~(full | empty)).nonzero().squeeze(1)
        if part.numel():
            ids[part] = self._ids(words[part])
        return state, ids

    def _ids(self, w: torch.Tensor) -> torch.Tensor:
        keys = torch.stack([(w * self.weights[0]).sum(1), (w * self.weights[1]).sum(1)], 1)
        uniq, inv = torch.unique(keys, dim=0, return_inverse=True)
        n = w.shape[0]
        first = torch.full((uniq.shape[0],), n, dtype=torch.int64, device=w.device)
        first.scatter_reduce_(0, inv, torch.arange(n, device=w.device), "amin")
        uniq_keys = [tuple(k) for k in uniq.tolist()]
        ids = [self.index.get(k, [None])[0] for k in uniq_keys]
        # New tiles are numbered in order of first appearance, so ids do not depend on chunking.
        first_l = first.tolist()
        new = sorted((u for u, i in enumerate(ids) if i is None), key=first_l.__getitem__)
        for j, u in enumerate(new):
            ids[u] = len(self.rows) + j
        new_rows = w[first[new]].clone() if new else w[:0]
        rows = self.rows + list(new_rows.unbind(0))
        if not torch.equal(torch.stack([rows[i] for i in ids])[inv], w):
            return self._ids_exact(w, keys)  # a hash collision: settle this chunk exactly
        for u in new:
            self.index[uniq_keys[u]] = [ids[u]]
        self.rows = rows
        return torch.tensor(ids, dtype=torch.int32, device=w.device)[inv]

    def _ids_exact(self, w: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        out = []
        for i, key in enumerate(map(tuple, keys.tolist())):
            cands = self.index.setdefault(key, [])
            match = next((c for c in cands if torch.equal(self.rows[c], w[i])), None)
            if match is None:
                match = len(self.rows)
                self.rows.append(w[i].clone())
                cands.append(match)
            out.append(match)
        return torch.tensor(out, dtype=torch.int32, device=w.device)

    def tiles(self, qbs: int, kbs: int) -> torch.Tensor:
        """(num_tiles, qbs, kbs) uint8."""
        if not self.rows:
            return torch.zeros(0, qbs, kbs, dtype=torch.uint8, device=self.device)
        return torch.stack(self.rows).view(torch.uint8).view(-1, qbs, kbs).contiguous()


def transpose_lists(bm) -> TransposedLists:
    """``BlockMask.transposed()`` without the cache; duck-typed (any object with BlockMask's
    fields, such as the namespace rebuilt inside the attention custom op)."""
    state, tile = BlockMask.tile_states(bm)
    state, tile = state.transpose(-1, -2), tile.transpose(-1, -2)  # (B, H, nKB, nQB)
    num, idx = _listed(state == _PARTIAL)
    full_num, full_idx = _listed(state == _FULL)
    tile_ids = tile.gather(-1, idx.long()).to(torch.int32)
    return TransposedLists(num.contiguous(), idx.contiguous(), tile_ids.contiguous(),
                           full_num.contiguous(), full_idx.contiguous())


def _listed(sel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """sel (..., n) bool -> (count (...) int32, indices (..., n) int32): the selected indices
    ascending first, then the others (never read by kernels)."""
    n = sel.shape[-1]
    j = torch.arange(n, device=sel.device)
    order = torch.where(sel, j, j + n).argsort(dim=-1)
    return sel.sum(-1, dtype=torch.int32), order.to(torch.int32)


def _assemble(state, tile, tiles, Q_LEN, KV_LEN, qbs, kbs) -> BlockMask:
    p_num, p_idx = _listed(state == _PARTIAL)
    f_num, f_idx = _listed(state == _FULL)
    j = torch.arange(state.shape[-1], device=state.device)
    p_tile = torch.where(j < p_num[..., None], tile.gather(-1, p_idx.long()), 0)
    return BlockMask(Q_LEN, KV_LEN, qbs, kbs, p_num.contiguous(), p_idx.contiguous(),
                     p_tile.to(torch.int32).contiguous(), tiles, f_num.contiguous(),
                     f_idx.contiguous())
