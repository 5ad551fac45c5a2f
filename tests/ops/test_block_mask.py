"""create_block_mask vs the dense mask it describes, for every ready-made mask_mod."""

from __future__ import annotations

import pytest
import torch

import tritium.kernels.flash_attn  # noqa: F401  (decorated now, under conftest's
import tritium.kernels.flash_attn_bwd  # noqa: F401  TRITON_INTERPRET=1: see tests/conftest.py)
import tritium.ops.block_mask as bmod
from tritium.ops.block_mask import (
    BlockMask,
    and_masks,
    block_mask_from_dense,
    causal_mask,
    create_block_mask,
    document_ids_from_cu_seqlens,
    document_mask,
    or_masks,
    prefix_lm_mask,
    sliding_window_mask,
)
from tritium.ops.mask_mods import MaskMod, tile_hint_of

SQ, SK = 113, 203  # odd lengths: both last blocks padded


@pytest.fixture(autouse=True)
def _one_thread():
    """Many small ops: on the shared, loaded 2-core machine two intra-op threads mostly wait
    for each other, so these tests run single-threaded."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def dense_of(mod, B, H, Sq, Sk) -> torch.Tensor:
    """Element-wise evaluation over the whole grid: the oracle (B|1, H|1, Sq, Sk)."""
    b = torch.arange(B or 1).view(-1, 1, 1, 1)
    h = torch.arange(H or 1).view(1, -1, 1, 1)
    q = torch.arange(Sq).view(1, 1, -1, 1)
    kv = torch.arange(Sk).view(1, 1, 1, -1)
    return torch.broadcast_to(mod(b, h, q, kv), (B or 1, H or 1, Sq, Sk))


def same_mask(bm: BlockMask, ref: torch.Tensor) -> None:
    d = bm.to_dense()
    assert d.shape[2:] == ref.shape[2:]
    d = torch.broadcast_to(d, ref.shape)
    bad = (d != ref).nonzero()
    assert bad.numel() == 0, f"{bad.shape[0]} elements differ, first at {bad[:5].tolist()}"


def unhinted(mod):
    return lambda b, h, q, kv: mod(b, h, q, kv)


def _doc_ids(L, lens, batched=False):
    ids = torch.repeat_interleave(torch.arange(len(lens)), torch.tensor(lens))[:L]
    return torch.stack([ids, ids.roll(17).sort().values]) if batched else ids


DOCS = _doc_ids(SK, [40, 3, 90, 1, 69])  # a 1-token doc and a 3-token doc
MODS = {
    "causal": causal_mask,
    "window_causal": sliding_window_mask(20, 0),
    "window_two_sided": sliding_window_mask(13, 40),
    "bottom_right_causal": sliding_window_mask(None, SK - SQ),
    "document": document_mask(DOCS),
    "document_unsorted": document_mask(DOCS.flip(0)),  # no hint: evaluated everywhere
    "document_batched": document_mask(_doc_ids(SK, [40, 3, 90, 1, 69], batched=True)),
    "document_cu": document_mask(cu_seqlens=torch.tensor([0, 50, 51, 160, 203])),
    "prefix_int": prefix_lm_mask(37),
    "prefix_per_batch": prefix_lm_mask(torch.tensor([0, 70])),
    "causal_and_document": and_masks(causal_mask, document_mask(DOCS)),
    "window_and_document": sliding_window_mask(25, 0) & document_mask(DOCS),
    "prefix_or_window": or_masks(prefix_lm_mask(10), sliding_window_mask(5, 5)),
    "causal_or_document": causal_mask | document_mask(DOCS),
    "and_with_plain_fn": and_masks(causal_mask, lambda b, h, q, kv: (q + kv) % 3 != 0),
    "or_with_plain_fn": or_masks(document_mask(DOCS), lambda b, h, q, kv: kv == 0),
}


@pytest.mark.parametrize("blocks", [(16, 32), (32, 16), (16, 16)])
@pytest.mark.parametrize("name", list(MODS))
def test_matches_dense_and_unhinted(name, blocks):
    mod = MODS[name]
    B = 2 if "batch" in name else None
    bm = create_block_mask(mod, B, None, SQ, SK, "cpu", *blocks)
    same_mask(bm, dense_of(mod, B, None, SQ, SK))
    # The hint only skips work: the same tiles must come out as element-wise evaluation gives.
    plain = create_block_mask(unhinted(mod), B, None, SQ, SK, "cpu", *blocks)
    for f in ("kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices"):
        assert torch.equal(getattr(bm, f), getattr(plain, f)), f


@pytest.mark.parametrize("name", ["causal", "document", "window_two_sided"])
def test_q_longer_than_kv(name):
    mod = MODS[name]
    bm = create_block_mask(mod, None, None, 203, 77, "cpu", 32, 16)
    same_mask(bm, dense_of(mod, None, None, 203, 77))


def test_full_tiles_hold_no_padding_and_tiles_are_unique():
    bm = create_block_mask(causal_mask, None, None, SQ, SK, "cpu", 16, 32)
    state, _ = bm.tile_states()
    assert not (state[..., -1, :] == 2).any() and not (state[..., :, -1] == 2).any()
    t = bm.mask_tiles.flatten(1)
    assert torch.unique(t, dim=0).shape[0] == t.shape[0]
    assert bm.mask_tiles.dtype == torch.uint8 and bm.kv_indices.dtype == torch.int32
    # Square causal at a block-aligned length: every diagonal tile is the same one tile.
    sq = create_block_mask(causal_mask, None, None, 256, 256, "cpu", 32, 32)
    assert sq.mask_tiles.shape[0] == 1 and int(sq.kv_num_blocks.sum()) == 8


def test_broadcast_dims_follow_dependence():
    def per_head(b, h, q, kv):  # window widens with the head
        return (kv <= q) & (kv >= q - 7 * (h + 1))

    def per_batch_head(b, h, q, kv):
        return (kv <= q + b) & (kv >= q - 5 * (h + 1))

    cases = [(causal_mask, 3, 2, (1, 1)), (prefix_lm_mask(torch.tensor([1, 60, 9])), 3, 2, (3, 1)),
             (per_head, 3, 4, (1, 4)), (per_batch_head, 3, 4, (3, 4)), (per_head, None, 4, (1, 4)),
             (per_batch_head, None, None, (1, 1))]
    for mod, B, H, bh in cases:
        bm = create_block_mask(mod, B, H, SQ, SK, "cpu", 16, 16)
        assert tuple(bm.kv_num_blocks.shape[:2]) == bh, (mod, bh)
        same_mask(bm, dense_of(mod, B, H, SQ, SK))


def test_empty_rows_and_empty_mask():
    holes = and_masks(causal_mask, lambda b, h, q, kv: (q < 40) | (q >= 72))  # rows 40..71 empty
    bm = create_block_mask(holes, None, None, SQ, SK, "cpu", 16, 16)
    same_mask(bm, dense_of(holes, None, None, SQ, SK))
    assert int(bm.kv_num_blocks[0, 0, 3]) + int(bm.full_kv_num_blocks[0, 0, 3]) == 0  # rows 48..63
    nothing = create_block_mask(lambda b, h, q, kv: q < 0, 2, 3, SQ, SK, "cpu", 16, 16)
    assert nothing.sparsity() == 1.0 and not nothing.to_dense().any()
    assert nothing.mask_tiles.shape[0] == 0
    everything = create_block_mask(lambda b, h, q, kv: q >= 0, None, None, 128, 64, "cpu", 32, 32)
    assert everything.sparsity() == 0.0 and int(everything.kv_num_blocks.sum()) == 0


def test_chunking_and_hash_collisions_do_not_change_the_result(monkeypatch):
    mod = unhinted(MODS["or_with_plain_fn"])
    ref = create_block_mask(mod, None, None, SQ, SK, "cpu", 16, 16)
    small = create_block_mask(mod, None, None, SQ, SK, "cpu", 16, 16, chunk=3 * 256)
    for f in bmod._TENSOR_FIELDS:
        assert torch.equal(getattr(ref, f), getattr(small, f)), f
    # Zero hash weights make every partial tile collide: the exact fallback must dedup alone.
    monkeypatch.setattr(bmod, "_hash_weights", lambda n, d: torch.zeros(2, n, dtype=torch.long))
    coll = create_block_mask(mod, None, None, SQ, SK, "cpu", 16, 16, chunk=5 * 256)
    same_mask(coll, dense_of(mod, None, None, SQ, SK))
    assert coll.mask_tiles.shape[0] == ref.mask_tiles.shape[0]


def test_hinted_work_is_proportional_to_boundary_tiles():
    seen = []

    def counting(b, h, q, kv):
        seen.append(torch.broadcast_shapes(q.shape, kv.shape).numel())
        return q >= kv

    S, blk = 4096, 128
    mod = MaskMod(counting, tile_hint_of(causal_mask))
    bm = create_block_mask(mod, None, None, S, S, "cpu", blk, blk)
    # a 2x2 probe, then only the 32 diagonal tiles (of 1024)
    assert sum(seen) == 4 + (S // blk) * blk * blk
    assert bm.mask_tiles.shape[0] == 1 and abs(bm.sparsity() - (1 - 528 / 1024)) < 1e-12


def test_from_dense_round_trip():
    g = torch.Generator().manual_seed(0)
    for shape in [(SQ, SK), (2, 1, SQ, SK), (1, 3, 40, 17), (2, 2, 33, 65)]:
        dense = torch.rand(shape, generator=g) < 0.5
        dense[..., :20, :] = True  # some full tiles too
        bm = block_mask_from_dense(dense, 16, 16)
        d4 = dense if dense.dim() == 4 else dense[None, None]
        same_mask(bm, d4)


def test_document_ids_from_cu_seqlens():
    ids = document_ids_from_cu_seqlens(torch.tensor([0, 2, 2, 5]))
    assert ids.tolist() == [0, 0, 2, 2, 2]
    with pytest.raises(ValueError, match="cu_seqlens"):
        document_ids_from_cu_seqlens(torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="cu_seqlens"):
        document_ids_from_cu_seqlens(torch.tensor([0, 3, 2]))


def test_repr_and_sparsity():
    bm = create_block_mask(causal_mask, None, None, 64, 64, "cpu", 16, 16)
    assert abs(bm.sparsity() - 6 / 16) < 1e-12
    r = repr(bm)
    assert "full=6" in r and "partial=4" in r and "empty=6" in r and "Sq=64" in r


def test_bad_input():
    ok = dict(B=None, H=None, Q_LEN=32, KV_LEN=32, device="cpu")
    with pytest.raises(ValueError, match="q_block_size"):
        create_block_mask(causal_mask, **ok, q_block_size=24)
    with pytest.raises(ValueError, match="KV_LEN"):
        create_block_mask(causal_mask, None, None, 32, 0, "cpu")
    with pytest.raises(ValueError, match="B must"):
        create_block_mask(causal_mask, -1, None, 32, 32, "cpu")
    with pytest.raises(TypeError, match="bool tensor"):
        create_block_mask(lambda b, h, q, kv: q - kv, **ok)
    with pytest.raises(ValueError, match="broadcast"):
        create_block_mask(lambda b, h, q, kv: torch.ones(5, 5, 5, 5, 5, dtype=torch.bool), **ok)
    with pytest.raises(TypeError, match="callable"):
        create_block_mask("causal", **ok)
    with pytest.raises(ValueError, match="exactly one"):
        document_mask()
    with pytest.raises(ValueError, match="document_ids"):
        document_mask(torch.zeros(2, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="prefix_len"):
        prefix_lm_mask(-3)
    with pytest.raises(ValueError, match="prefix_len"):
        prefix_lm_mask(torch.tensor([1.5]))
    with pytest.raises(ValueError, match="left"):
        sliding_window_mask(-1, 0)
    with pytest.raises(ValueError, match="at least one"):
        and_masks()
    with pytest.raises(TypeError, match="callables"):
        or_masks(causal_mask, 3)
    with pytest.raises(ValueError, match="bool tensor"):
        block_mask_from_dense(torch.ones(4, 4))
    bm = create_block_mask(causal_mask, None, None, 64, 64, "cpu", 16, 16)
    with pytest.raises(ValueError, match="kv_indices"):
        BlockMask(64, 64, 16, 16, bm.kv_num_blocks, bm.kv_indices[..., :2], bm.partial_tile_ids,
                  bm.mask_tiles, bm.full_kv_num_blocks, bm.full_kv_indices)
    with pytest.raises(ValueError, match="mask_tiles"):
        BlockMask(64, 64, 16, 16, bm.kv_num_blocks, bm.kv_indices, bm.partial_tile_ids,
                  bm.mask_tiles.bool(), bm.full_kv_num_blocks, bm.full_kv_indices)


# -- end to end: the FlashAttention kernels (interpreter) consume these masks -----------------

# (fwd atol/rtol, grad atol/rtol). fp32: interpreter dots are exact fp32, only summation order
# differs. fp16, loose: P and dS are rounded to fp16 before their matmuls (as flash-attn).
E2E_TOL = {torch.float32: (3e-5, 1e-4), torch.float16: (3e-3, 2e-2)}


def _per_head_window(b, h, q, kv):
    return (kv <= q + 40 - 23) & (kv >= q - 9 * (h + 1))  # bottom-right causal, width by head


E2E = {  # B, Sq, Sk, q block, kv block, mask_mod (None: random dense), dtype
    "causal_document_per_batch": (2, 64, 64, 16, 32, causal_mask & MODS["document_batched"],
                                  torch.float16),
    "prefix_per_batch": (2, 48, 48, 32, 16, prefix_lm_mask(torch.tensor([0, 37])), torch.float32),
    "per_head_window_short_q": (1, 23, 40, 16, 16, _per_head_window, torch.float32),
    "random_with_empty_rows": (1, 37, 50, 16, 16, None, torch.float16),
}


@pytest.mark.parametrize("case", list(E2E))
def test_flash_attn_func_with_block_mask(case, interpret):
    import tritium.ops.attention as attn
    from tritium.ops.attention_reference import attention_reference

    B, Sq, Sk, qbs, kbs, mod, dtype = E2E[case]
    Hq, Hk, D = 2, 1, 16
    torch.manual_seed(0)
    if mod is None:
        dense = torch.rand(B, 1, Sq, Sk) < 0.6
        dense[:, :, 5:9] = False  # empty rows: output 0, lse -inf
        bm = block_mask_from_dense(dense, qbs, kbs)
    else:
        bm = create_block_mask(mod, B, Hq, Sq, Sk, "cpu", qbs, kbs)
        dense = dense_of(mod, B, Hq, Sq, Sk)
    q = torch.randn(B, Sq, Hq, D).to(dtype).requires_grad_()
    k = torch.randn(B, Sk, Hk, D).to(dtype).requires_grad_()
    v = torch.randn(B, Sk, Hk, D).to(dtype).requires_grad_()
    out, lse = attn.flash_attn_func(q, k, v, block_mask=bm, return_lse=True)
    dout = torch.randn_like(out)
    dq, dk, dv = torch.autograd.grad((out.float() * dout.float()).sum(), (q, k, v))
    leaves = [t.detach().float().requires_grad_() for t in (q, k, v)]
    ref, ref_lse = attention_reference(*leaves, mask=dense, return_lse=True)
    refs = torch.autograd.grad((ref * dout.float()).sum(), leaves)
    fwd_tol, grad_tol = E2E_TOL[dtype], (E2E_TOL[dtype][1],) * 2
    torch.testing.assert_close(out.float(), ref, atol=fwd_tol[0], rtol=fwd_tol[0])
    assert torch.equal(torch.isinf(lse), torch.isinf(ref_lse))
    fin = ~torch.isinf(ref_lse)
    torch.testing.assert_close(lse[fin], ref_lse[fin], atol=fwd_tol[0], rtol=fwd_tol[0])
    for name, got, want in zip(("dq", "dk", "dv"), (dq, dk, dv), refs):
        torch.testing.assert_close(got.float(), want, atol=grad_tol[0], rtol=grad_tol[1],
                                   msg=lambda m, n=name: f"{n}: {m}")
