"""Block-sparse masks (BlockMask) in the forward and backward kernels (Triton interpreter):
only listed key blocks are visited, full blocks without element masks, partial blocks with
their deduplicated element tile; compared with the reference on the equivalent dense mask."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from flash_attn_helpers import (
    FWD_TOL,
    assert_close,
    block_mask_from_dense,
    check_fwd_bwd,
    rand,
    reference,
)

import tritium
from tritium.kernels.flash_attn import flash_attn_fwd
from tritium.kernels.flash_attn_bwd import flash_attn_bwd
from tritium.ops.attention_reference import block_mask_to_dense, transpose_block_mask


def document_mask(lengths, Sq, Sk):
    doc = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    i, j = torch.arange(Sq)[:, None], torch.arange(Sk)[None, :]
    return (doc[i] == doc[j]) & (j <= i)


def random_block_mask(B, H, Sq, Sk, qb, kb, seed):
    """Mix of empty, full and partial blocks: block pattern x random elements."""
    g = torch.Generator().manual_seed(seed)
    nqb, nkb = -(-Sq // qb), -(-Sk // kb)
    kind = torch.randint(0, 3, (B, H, nqb, nkb), generator=g)  # 0 empty, 1 partial, 2 full
    elem = torch.rand(B, H, nqb * qb, nkb * kb, generator=g) < 0.5
    kind_e = kind.repeat_interleave(qb, 2).repeat_interleave(kb, 3)
    dense = (kind_e == 2) | ((kind_e == 1) & elem)
    return dense[:, :, :Sq, :Sk]


MASKS = [  # (name, B, H, Sq, Sk, q_block, kv_block)
    ("document", 1, 1, 113, 113, 16, 16),
    ("random", 2, 1, 77, 101, 32, 16),
    ("random", 1, 3, 45, 70, 16, 32),
    ("random", 2, 3, 40, 40, 32, 32),
    # Sk a multiple of the key block: the forward's flat listed-block loops (full and
    # partial), incl. a partial last query tile and key blocks of two kernel tiles
    ("document", 1, 1, 96, 96, 16, 16),
    ("random", 1, 3, 77, 96, 32, 32),
    ("random", 2, 1, 50, 128, 32, 64),  # key blocks of 64 = two 32-key kernel tiles
    # Sq and Sk multiples of the blocks: the backward's flat loops in both kernels, query
    # blocks of two 32-row kernel tiles (dK/dV walks R = 2 tiles per listed block)
    ("random", 1, 3, 128, 64, 64, 32),
]


@pytest.mark.parametrize("mask", MASKS, ids=str)
def test_block_mask_fwd_bwd(mask):
    name, Bm, Hm, Sq, Sk, qb, kb = mask
    torch.manual_seed(0)
    dense = document_mask([30, 50, 33], Sq, Sk)[None, None] if name == "document" else \
        random_block_mask(Bm, Hm, Sq, Sk, qb, kb, seed=Sq)
    bm = block_mask_from_dense(dense, qb, kb)
    assert torch.equal(block_mask_to_dense(bm), dense)
    q, k, v = rand(2, Sq, 3, 32), rand(2, Sk, 1, 32), rand(2, Sk, 1, 32)  # MQA 3:1
    check_fwd_bwd(tritium.flash_attn_func, reference, q, k, v, torch.float16, block_mask=bm,
                  ref_kw=dict(mask=dense))


def test_block_mask_with_causal_and_softcap():
    """A BlockMask ANDs with causal/window/softcap; tile sizes (16, 16) under mask (32, 32)."""
    torch.manual_seed(1)
    Sq = Sk = 90
    dense = document_mask([40, 50], Sq, Sk) | (torch.arange(Sk)[None, :] < 8)
    bm = block_mask_from_dense(dense[None, None], 32, 32)
    q, k, v = rand(1, Sq, 2, 32, scale=2.0), rand(1, Sk, 2, 32, scale=2.0), rand(1, Sk, 2, 32)
    kw = dict(causal=True, softcap=6.0, window_size=(50, -1))
    check_fwd_bwd(tritium.flash_attn_func, reference, q, k, v, torch.float16, block_mask=bm,
                  dlse=True, ref_kw=dict(mask=dense, **kw), **kw)
    out, lse = flash_attn_fwd(q.detach(), k.detach(), v.detach(), softmax_scale=32**-0.5,
                              causal=True, softcap=6.0, window_left=50, block_mask=bm,
                              config=(16, 16, 4, 1))
    ref_out, ref_lse = reference(q.float(), k.float(), v.float(), True, mask=dense,
                                 return_lse=True, **{k_: kw[k_] for k_ in ("softcap",
                                                                           "window_size")})
    assert_close("out (16x16 tiles)", out, ref_out, FWD_TOL[torch.float16])
    assert_close("lse (16x16 tiles)", lse, ref_lse, FWD_TOL[torch.float32])


def test_empty_mask_rows():
    """Query blocks with no listed key block give 0 and lse = -inf (and zero gradients)."""
    Sq = Sk = 64
    dense = torch.zeros(Sq, Sk, dtype=torch.bool)
    dense[32:, :20] = True
    bm = block_mask_from_dense(dense[None, None], 32, 32)
    q, k, v = rand(1, Sq, 2, 32), rand(1, Sk, 2, 32), rand(1, Sk, 2, 32)
    out, lse = tritium.flash_attn_func(q, k, v, block_mask=bm, return_lse=True)
    assert torch.all(out[:, :32] == 0) and torch.all(lse[:, :, :32] == float("-inf"))
    out.float().sum().backward()
    assert torch.all(q.grad[:, :32] == 0) and torch.all(k.grad[:, 20:] == 0)


def test_transpose_block_mask():
    dense = random_block_mask(2, 1, 70, 50, 16, 32, seed=7)
    bm = block_mask_from_dense(dense, 16, 32)
    t = transpose_block_mask(bm)
    # the transposed lists describe the transposed mask, with (kv, q) block sizes swapped
    t.q_block_size, t.kv_block_size, t.seq_len_q, t.seq_len_kv = 32, 16, 50, 70
    t.mask_tiles = bm.mask_tiles.transpose(1, 2).contiguous()
    assert torch.equal(block_mask_to_dense(t), dense.transpose(-1, -2))


def test_incompatible_tiles_raise():
    """The launcher shrinks its tiles to the mask blocks; blocks that are no multiple of the
    tile (impossible for powers of two) are refused rather than misread."""
    bm = block_mask_from_dense(torch.ones(1, 1, 48, 48, dtype=torch.bool), 16, 16)
    odd = SimpleNamespace(**{**vars(bm), "q_block_size": 48, "kv_block_size": 48})
    q, k, v = (rand(1, 48, 1, 32, requires_grad=False) for _ in range(3))
    with pytest.raises(ValueError, match="multiples of the kernel tiles"):
        flash_attn_fwd(q, k, v, softmax_scale=0.1, block_mask=odd, config=(32, 32, 4, 1))


SCHEDULE_CASES = [  # (name, B, Sq, Sk, causal, mask blocks or None)
    ("dense causal", 2, 77, 77, True, None),
    ("dense Sq<Sk", 1, 45, 100, False, None),
    ("document mask", 1, 96, 96, False, (16, 16)),
    ("random mask", 2, 128, 64, False, (64, 32)),  # blocks of two kernel tiles each way
    ("random mask + causal", 1, 77, 96, True, (32, 32)),  # band: per-block loops
]


@pytest.mark.parametrize("schedule", ["bh_first", "ordered"])
@pytest.mark.parametrize("case", SCHEDULE_CASES, ids=lambda c: c[0])
def test_schedules_give_identical_results(case, schedule):
    """Program order changes nothing a program computes: every schedule must give bitwise the
    default's outputs and gradients (a wrong slot -> tile mapping drops or repeats tiles)."""
    name, B, Sq, Sk, causal, blocks = case
    torch.manual_seed(3)
    bm = None
    if blocks is not None:
        dense = document_mask([30, 50, 16], Sq, Sk)[None, None] if name.startswith("document") \
            else random_block_mask(B, 1, Sq, Sk, *blocks, seed=Sk)
        bm = block_mask_from_dense(dense, *blocks)
    q, k, v = (rand(B, s, h, 32, requires_grad=False) for s, h in ((Sq, 3), (Sk, 1), (Sk, 1)))
    dout = torch.randn_like(q)
    results = []
    for sched in ("tiles", schedule):
        out, lse = flash_attn_fwd(q, k, v, softmax_scale=0.2, causal=causal, block_mask=bm,
                                  schedule=sched)
        grads = flash_attn_bwd(dout, q, k, v, out, lse, softmax_scale=0.2, causal=causal,
                               block_mask=bm, block_mask_t=transpose_block_mask(bm) if bm
                               else None, deterministic=True, schedule=sched)
        results.append((out, lse, *grads))
    for label, a, b in zip(("out", "lse", "dq", "dk", "dv"), *results):
        assert torch.equal(a, b), f"{label} differs under schedule {schedule!r}"
    # and the default itself is right (the comparison above is only as good as it)
    ref = reference(q.float(), k.float(), v.float(), causal, 0.2,
                    mask=None if bm is None else block_mask_to_dense(bm), return_lse=True)
    assert_close("out", results[0][0], ref[0], FWD_TOL[torch.float16])


def test_unknown_schedule_raises():
    q = rand(1, 16, 1, 32, requires_grad=False)
    with pytest.raises(ValueError, match="schedule"):
        flash_attn_fwd(q, q, q, softmax_scale=0.1, schedule="fastest")


def test_schedules_varlen_identical():
    """Varlen launches: "bh_first" reverses the tiles of causal sequences ("tiles" does not)."""
    torch.manual_seed(4)
    lens = [17, 0, 70, 33]
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
    T = int(cu[-1])
    q, k, v = (rand(T, h, 32, requires_grad=False) for h in (4, 2, 2))
    dout = torch.randn_like(q)
    kw = dict(softmax_scale=0.2, causal=True, cu_seqlens_q=cu, cu_seqlens_k=cu)
    results = []
    for sched in ("tiles", "bh_first"):
        out, lse = flash_attn_fwd(q, k, v, max_seqlen_q=max(lens), schedule=sched, **kw)
        grads = flash_attn_bwd(dout, q, k, v, out, lse, max_seqlen_q=max(lens),
                               max_seqlen_k=max(lens), deterministic=True, schedule=sched, **kw)
        results.append((out, lse, *grads))
    for label, a, b in zip(("out", "lse", "dq", "dk", "dv"), *results):
        assert torch.equal(a, b), f"{label} differs under schedule 'bh_first'"
