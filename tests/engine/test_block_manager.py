"""BlockManager: lazy allocation, ref counts, prefix caching with chained hashes, LRU eviction."""

from __future__ import annotations

import pytest
from factories import make_request

from tritium.engine.block_manager import BlockManager, hash_block
from tritium.engine.sequence import Sequence


def seq_of(tokens, request_id="r", **params) -> Sequence:
    return make_request(request_id, list(tokens), **params)[0]


def compute(bm: BlockManager, seq: Sequence, num_new: int, cached=None) -> None:
    """Allocate and 'run' num_new tokens, as the scheduler + postprocess would."""
    bm.allocate(seq, num_new, cached)
    seq.num_computed_tokens += num_new
    bm.cache_full_blocks(seq)
    bm.check_invariants()


def admit(bm: BlockManager, seq: Sequence) -> list[int]:
    hits = bm.lookup(seq)
    bm.allocate(seq, seq.num_tokens - len(hits) * bm.block_size, hits)
    seq.num_computed_tokens = seq.num_tokens
    bm.cache_full_blocks(seq)
    bm.check_invariants()
    return hits


def test_lazy_allocation_covers_only_scheduled_tokens():
    bm = BlockManager(num_blocks=8, block_size=4)
    seq = seq_of(range(1, 11))  # 10 tokens
    compute(bm, seq, 6)
    assert len(seq.block_table) == 2 and seq.num_computed_tokens == 6
    compute(bm, seq, 3)  # 9 tokens -> 3 blocks
    assert len(seq.block_table) == 3
    compute(bm, seq, 1)  # 10 tokens still fit in 3 blocks
    assert len(seq.block_table) == 3
    assert bm.num_free_blocks == 8 - 3 + 0 and bm.usage == pytest.approx(3 / 8)
    bm.free(seq)
    assert seq.block_table == [] and bm.num_free_blocks == 8
    bm.check_invariants()


def test_cannot_allocate_past_capacity():
    bm = BlockManager(num_blocks=3, block_size=4)
    a = seq_of(range(1, 9), "a")
    compute(bm, a, 8)  # 2 blocks
    b = seq_of(range(100, 109), "b")  # 9 tokens = 3 blocks
    assert bm.can_allocate(b, 4) and not bm.can_allocate(b, 5)
    with pytest.raises(RuntimeError, match="not enough free KV blocks"):
        bm.allocate(b, 5)
    assert b.block_table == [] and bm.num_free_blocks == 1  # nothing taken on failure
    bm.check_invariants()
    with pytest.raises(ValueError, match="num_new_tokens"):
        bm.allocate(b, 0)


def test_prefix_hit_reuses_full_blocks_and_counts_refs():
    bm = BlockManager(num_blocks=16, block_size=4)
    a = seq_of(range(1, 14), "a")  # 13 tokens: 3 full blocks + 1
    admit(bm, a)
    b = seq_of([*range(1, 13), 77, 78], "b")  # shares 12 tokens = 3 full blocks
    hits = admit(bm, b)
    assert hits == a.block_table[:3]
    assert b.block_table[:3] == a.block_table[:3] and b.block_table[3] != a.block_table[3]
    assert b.num_cached_tokens == 12 and b.metrics.num_cached_tokens == 12
    assert [bm.blocks[i].ref_count for i in a.block_table] == [2, 2, 2, 1]
    assert bm.prefix_cache_queries == 13 + 14 and bm.prefix_cache_hits == 12
    bm.free(a)
    assert [bm.blocks[i].ref_count for i in b.block_table[:3]] == [1, 1, 1]
    bm.check_invariants()


def test_block_with_last_token_is_never_reused():
    """A prompt that is exactly 2 full blocks gets 1 block from the cache: its last token must
    be computed to produce logits."""
    bm = BlockManager(num_blocks=16, block_size=4)
    admit(bm, seq_of(range(1, 9), "a"))
    again = seq_of(range(1, 9), "b")
    assert len(bm.lookup(again)) == 1
    assert len(bm.lookup(seq_of(range(1, 10), "c"))) == 2  # one more token: both blocks


def test_prompt_logprobs_requests_take_no_hits_but_leave_blocks_cached():
    bm = BlockManager(num_blocks=16, block_size=4)
    a = seq_of(range(1, 14), "a", prompt_logprobs=2)
    admit(bm, a)
    assert bm.lookup(seq_of(range(1, 14), "b", prompt_logprobs=0)) == []
    assert bm.lookup(seq_of(range(1, 14), "c")) == a.block_table[:3]


def test_hash_is_chained_so_position_matters():
    bm = BlockManager(num_blocks=16, block_size=2)
    admit(bm, seq_of([1, 2, 3, 4, 5], "a"))
    # block [3, 4] exists, but after a different first block: no hit at all
    assert bm.lookup(seq_of([9, 9, 3, 4, 5], "b")) == []
    assert hash_block(b"", [1, 2]) != hash_block(hash_block(b"", [0, 0]), [1, 2])
    assert hash_block(b"", [1, 2]) == hash_block(b"", [1, 2])  # stable


def test_unreferenced_blocks_stay_cached_then_evicted_lru():
    bm = BlockManager(num_blocks=6, block_size=2)
    a = seq_of([1, 2, 3, 4, 5], "a")  # blocks: [1,2] [3,4] [5]
    admit(bm, a)
    a_blocks = list(a.block_table)
    bm.free(a)
    assert bm.num_cached_blocks == 2 and bm.num_free_blocks == 6
    # Still cached: a new sequence with the prefix takes them back.
    b = seq_of([1, 2, 3, 4, 9], "b")
    assert admit(bm, b) == a_blocks[:2]
    bm.free(b)
    # Fill the cache with other tokens: the free list goes first, then the LRU cached block,
    # which is the *tail* block [3,4] (blocks are freed tail first).
    c = seq_of(range(100, 107), "c")  # 7 tokens = 4 blocks; free list holds 4
    admit(bm, c)
    assert bm.num_evictions == 0 and bm.num_cached_blocks == 2
    d = seq_of([200, 201], "d")
    bm.allocate(d, 1)
    assert d.block_table == [a_blocks[1]] and bm.num_evictions == 1
    bm.check_invariants()
    # [1,2] survives, [3,4] is gone: the chain stops after one block.
    assert bm.lookup(seq_of([1, 2, 3, 4, 5], "e")) == [a_blocks[0]]


def test_can_allocate_counts_cached_hits_taken_from_the_evictable_pool():
    bm = BlockManager(num_blocks=3, block_size=2)
    a = seq_of([1, 2, 3, 4, 5], "a")
    admit(bm, a)  # 3 blocks, 2 hashed
    bm.free(a)  # free list: 1 block; cached: 2
    b = seq_of([1, 2, 3, 4, 6, 7, 8], "b")  # hits 2 blocks, then needs 2 more: only 1 left
    hits = bm.lookup(b)
    assert len(hits) == 2
    assert bm.can_allocate(b, 1, hits) and not bm.can_allocate(b, 3, hits)
    assert not bm.can_allocate(seq_of(range(50, 57), "x"), 7)  # 4 blocks > 3


def test_duplicate_content_computed_twice_stays_unhashed():
    bm = BlockManager(num_blocks=8, block_size=2)
    a, b = seq_of([1, 2, 3], "a"), seq_of([1, 2, 3], "b")
    bm.allocate(a, 3)
    bm.allocate(b, 3)  # same step: no hits yet
    for s in (a, b):
        s.num_computed_tokens = 3
        bm.cache_full_blocks(s)
    assert bm.blocks[a.block_table[0]].hash is not None
    assert bm.blocks[b.block_table[0]].hash is None
    bm.check_invariants()
    bm.free(a)
    bm.free(b)
    assert bm.num_cached_blocks == 1 and bm.num_free_blocks == 8
    bm.check_invariants()


def test_prefix_caching_off_shares_only_between_siblings():
    bm = BlockManager(num_blocks=16, block_size=2, enable_prefix_caching=False)
    a = seq_of([1, 2, 3, 4, 5], "a")
    admit(bm, a)
    assert bm.lookup(seq_of([1, 2, 3, 4, 5], "b")) == []
    s0, s1 = make_request("r", [1, 2, 3, 4, 5], n=2)
    admit(bm, s0)
    hits = admit(bm, s1)
    assert hits == s0.block_table[:2]
    # Another request with the same prompt and n=2 does not match (hashes salted by request).
    other = make_request("q", [1, 2, 3, 4, 5], n=2)[0]
    assert bm.lookup(other) == []
    assert bm.prefix_cache_queries == 0
    bm.free(s0)
    bm.free(s1)
    bm.free(a)
    assert bm.num_cached_blocks == 0 and bm.num_free_blocks == 16 and not bm._hash_to_block
    bm.check_invariants()


def test_prefix_caching_off_siblings_share_prompt_blocks_only():
    bm = BlockManager(num_blocks=16, block_size=2, enable_prefix_caching=False)
    s0, s1 = make_request("r", [1, 2, 3], n=2)
    admit(bm, s0)
    for t in (7, 8, 9):  # decode: output blocks are not hashed
        s0.token_ids.append(t)
        compute(bm, s0, 1)
    assert [bm.blocks[b].hash is not None for b in s0.block_table] == [True, False, False]
    assert admit(bm, s1) == s0.block_table[:1]


def test_reset_prefix_cache():
    bm = BlockManager(num_blocks=8, block_size=2)
    a = seq_of([1, 2, 3, 4, 5], "a")
    admit(bm, a)
    bm.free(a)
    assert bm.reset_prefix_cache() == 2
    assert bm.num_cached_blocks == 0 and bm.lookup(seq_of([1, 2, 3, 4, 5], "b")) == []
    bm.check_invariants()


def test_invariant_checker_catches_corruption():
    bm = BlockManager(num_blocks=8, block_size=2)
    a = seq_of([1, 2, 3, 4, 5], "a")
    admit(bm, a)
    bm.blocks[a.block_table[2]].ref_count += 1
    with pytest.raises(AssertionError, match="ref count"):
        bm.check_invariants()
    bm.blocks[a.block_table[2]].ref_count -= 1
    a.block_hashes[0] = b"x" * 16  # a's first block claims other content
    with pytest.raises(AssertionError, match="other tokens"):
        bm.check_invariants()


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_blocks"):
        BlockManager(0, 16)
    with pytest.raises(ValueError, match="block_size"):
        BlockManager(4, -1)
