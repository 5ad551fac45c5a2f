"""The paged KV cache's bookkeeping: which block holds which tokens. Pure Python (no torch).

Every block is in exactly one of three states:

- *free*: ref count 0, no hash; in ``_free`` (FIFO).
- *cached*: ref count 0, content hash kept; in ``_evictable`` (least recently freed first). A
  later sequence with the same prefix takes it back; otherwise it is evicted when no free block
  is left.
- *used*: ref count = number of sequences whose block table holds it.

Prefix caching. A block's hash is ``blake2b(prev_hash || its token ids)``, so it names the block
*and everything before it*; equal hashes mean equal K/V (same tokens at the same positions).
Only blocks that are full and computed are hashed, and a hashed block is never written again, so
sharing one between sequences needs no copy. On admission a sequence takes every cached block of
its prefix except the one holding its last known token: that token must be computed to give the
logits of the next one.

Hashes are registered after the step that computed a block (``cache_full_blocks``), never at
allocation, so no sequence can ever read a block whose K/V has not been written yet.

n > 1 without prefix caching: siblings still share their prompt's full blocks through the hash
table, but with hashes salted by the request id (no other request can match them), only for
prompt blocks, and the hash is dropped as soon as no sibling holds the block.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict, deque

from tritium.engine.sequence import Sequence


def hash_block(prev_hash: bytes, token_ids: list[int]) -> bytes:
    """Chained content hash of one full block: 16-byte blake2b of prev_hash and the token ids.

    Stable across processes (unlike ``hash()``) and collision-safe: a collision would silently
    give one sequence another's K/V.
    """
    h = hashlib.blake2b(prev_hash, digest_size=16)
    h.update(array("q", token_ids).tobytes())
    return h.digest()


class Block:
    __slots__ = ("block_id", "ref_count", "hash")

    def __init__(self, block_id: int) -> None:
        self.block_id = block_id
        self.ref_count = 0
        self.hash: bytes | None = None


class BlockManager:
    """Allocates KV blocks to sequences, lazily, chunk by chunk; shares cached full blocks.

    Args:
        num_blocks: blocks in the KV cache.
        block_size: tokens per block.
        enable_prefix_caching: reuse full blocks across requests (see module docstring).
    """

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        for name, v in (("num_blocks", num_blocks), ("block_size", block_size)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        self._free: deque[int] = deque(range(num_blocks))
        self._evictable: OrderedDict[int, None] = OrderedDict()  # LRU first
        self._hash_to_block: dict[bytes, int] = {}
        self._holders: dict[int, Sequence] = {}  # seq_id -> sequence holding blocks
        self._num_registered: dict[int, int] = {}  # seq_id -> leading blocks already hashed
        self.prefix_cache_queries = 0  # tokens of admitted sequences looked up
        self.prefix_cache_hits = 0  # of those, tokens served from the cache
        self.num_evictions = 0

    # -- stats -----------------------------------------------------------------------------

    @property
    def num_free_blocks(self) -> int:
        """Blocks an allocation can take: free ones plus cached, unreferenced ones."""
        return len(self._free) + len(self._evictable)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - self.num_free_blocks

    @property
    def num_cached_blocks(self) -> int:
        """Unreferenced blocks kept for their content."""
        return len(self._evictable)

    @property
    def usage(self) -> float:
        """Fraction of blocks held by sequences, in [0, 1]."""
        return self.num_used_blocks / self.num_blocks

    @property
    def prefix_cache_hit_rate(self) -> float | None:
        if self.prefix_cache_queries == 0:
            return None
        return self.prefix_cache_hits / self.prefix_cache_queries

    # -- hashing ---------------------------------------------------------------------------

    def _uses_hashing(self, seq: Sequence) -> bool:
        return self.enable_prefix_caching or seq.sampling_params.n > 1

    def _num_hashable(self, seq: Sequence, num_tokens: int) -> int:
        """Leading full blocks of the first ``num_tokens`` tokens that may be shared."""
        n = num_tokens // self.block_size
        if not self.enable_prefix_caching:
            n = min(n, seq.num_prompt_tokens // self.block_size)  # siblings: prompt only
        return n

    def _block_hash(self, seq: Sequence, i: int) -> bytes:
        """Hash of ``seq``'s full block i (computed once, kept in ``seq.block_hashes``)."""
        hashes, bs = seq.block_hashes, self.block_size
        while len(hashes) <= i:
            j = len(hashes)
            if j:
                prev = hashes[j - 1]
            elif self.enable_prefix_caching:
                prev = b""
            else:  # sibling-only sharing: nothing outside this request can match
                prev = b"request:" + seq.request_id.encode()
            hashes.append(hash_block(prev, seq.token_ids[j * bs : (j + 1) * bs]))
        return hashes[i]

    def lookup(self, seq: Sequence) -> list[int]:
        """Cached blocks holding the leading tokens of ``seq``, which must hold no blocks yet.

        Never includes the block holding the last known token (see module docstring). A
        request asking for prompt logprobs gets no hits: every prompt position's logits must be
        computed (as in vLLM). Its blocks are still cached for others.
        """
        if seq.block_table or not self._uses_hashing(seq):
            return []
        if seq.sampling_params.prompt_logprobs is not None:
            return []
        hits = []
        for i in range(self._num_hashable(seq, seq.num_tokens - 1)):
            block_id = self._hash_to_block.get(self._block_hash(seq, i))
            if block_id is None:
                break
            hits.append(block_id)
        return hits

    # -- allocation ------------------------------------------------------------------------

    def _blocks_needed(self, seq: Sequence, num_new_tokens: int, cached_blocks: list[int]) -> int:
        if cached_blocks:  # admission: the new tokens follow the cached ones
            start, have = len(cached_blocks) * self.block_size, len(cached_blocks)
        else:  # a sequence holding no blocks has num_computed_tokens == 0
            start, have = seq.num_computed_tokens, len(seq.block_table)
        return -(-(start + num_new_tokens) // self.block_size) - have

    def can_allocate(
        self, seq: Sequence, num_new_tokens: int, cached_blocks: list[int] | None = None
    ) -> bool:
        """Whether blocks for ``seq``'s next ``num_new_tokens`` tokens can be had now.

        ``cached_blocks`` (from :meth:`lookup`, for a sequence holding no blocks) are taken
        first; the new tokens follow them.
        """
        needed = self._blocks_needed(seq, num_new_tokens, cached_blocks)
        if needed <= 0:
            return True  # the common decode step: room left in the last block
        available = len(self._free) + len(self._evictable)
        if cached_blocks:  # hits sitting in the evictable pool stop being available once taken
            available -= sum(1 for b in cached_blocks if b in self._evictable)
        return needed <= available

    def allocate(
        self, seq: Sequence, num_new_tokens: int, cached_blocks: list[int] | None = None
    ) -> None:
        """Give ``seq`` blocks for its next ``num_new_tokens`` tokens.

        On a sequence's first allocation the ``cached_blocks`` become the head of its block
        table and count as computed: ``num_computed_tokens = num_cached_tokens =
        len(cached_blocks) * block_size``; the ``num_new_tokens`` come after them.
        Raises RuntimeError when :meth:`can_allocate` would have said no (a caller bug).
        """
        if not isinstance(num_new_tokens, int) or num_new_tokens < 1:
            raise ValueError(f"num_new_tokens must be an int >= 1, got {num_new_tokens!r}")
        if cached_blocks and (seq.block_table or seq.num_computed_tokens):
            raise RuntimeError(f"{seq} already holds blocks; cached blocks are for admission")
        if not self.can_allocate(seq, num_new_tokens, cached_blocks):
            raise RuntimeError(f"not enough free KV blocks for {num_new_tokens} tokens of {seq}")
        if not seq.block_table:
            self._admit(seq, cached_blocks or [])
        target = -(-(seq.num_computed_tokens + num_new_tokens) // self.block_size)
        while len(seq.block_table) < target:
            seq.block_table.append(self._take_free_block())

    def _admit(self, seq: Sequence, cached_blocks: list[int]) -> None:
        if self.enable_prefix_caching:
            self.prefix_cache_queries += seq.num_tokens
            self.prefix_cache_hits += len(cached_blocks) * self.block_size
        for block_id in cached_blocks:
            block = self.blocks[block_id]
            if block.ref_count == 0:
                del self._evictable[block_id]
            block.ref_count += 1
        seq.block_table = list(cached_blocks)
        seq.num_computed_tokens = seq.num_cached_tokens = len(cached_blocks) * self.block_size
        seq.metrics.num_cached_tokens = seq.num_cached_tokens
        self._holders[seq.seq_id] = seq
        self._num_registered[seq.seq_id] = len(cached_blocks)

    def _take_free_block(self) -> int:
        if self._free:
            block_id = self._free.popleft()
        else:  # evict the least recently freed cached block
            block_id, _ = self._evictable.popitem(last=False)
            block = self.blocks[block_id]
            del self._hash_to_block[block.hash]
            block.hash = None
            self.num_evictions += 1
        self.blocks[block_id].ref_count = 1
        return block_id

    def cache_full_blocks(self, seq: Sequence) -> None:
        """Register ``seq``'s newly computed full blocks in the hash table (after each step)."""
        start = self._num_registered.get(seq.seq_id)
        if start is None or seq.num_computed_tokens < (start + 1) * self.block_size:
            return  # not a holder, or no block completed since the last call
        if not self._uses_hashing(seq):
            return
        end = self._num_hashable(seq, seq.num_computed_tokens)
        for i in range(start, end):
            block = self.blocks[seq.block_table[i]]
            h = self._block_hash(seq, i)
            # A block computed twice (two sequences with one prefix in one step) stays unhashed.
            if block.hash is None and h not in self._hash_to_block:
                block.hash = h
                self._hash_to_block[h] = block.block_id
        self._num_registered[seq.seq_id] = max(start, end)

    def free(self, seq: Sequence) -> None:
        """Return all of ``seq``'s blocks; tail blocks first, so they are evicted first."""
        for block_id in reversed(seq.block_table):
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count > 0:
                continue
            if block.hash is not None and self.enable_prefix_caching:
                self._evictable[block_id] = None
            else:
                if block.hash is not None:  # sibling-only sharing ends with the last holder
                    del self._hash_to_block[block.hash]
                    block.hash = None
                self._free.append(block_id)
        seq.block_table = []  # a new list: a snapshot taken by a step in flight stays intact
        self._holders.pop(seq.seq_id, None)
        self._num_registered.pop(seq.seq_id, None)

    def reset_prefix_cache(self) -> int:
        """Forget every cached, unreferenced block; returns how many were dropped."""
        n = len(self._evictable)
        for block_id in self._evictable:
            block = self.blocks[block_id]
            del self._hash_to_block[block.hash]
            block.hash = None
            self._free.append(block_id)
        self._evictable.clear()
        return n

    # -- invariants (tests call this after every step) -------------------------------------

    def check_invariants(self) -> None:
        """Raise AssertionError when the bookkeeping is inconsistent."""

        def fail(msg: str) -> None:
            raise AssertionError(f"BlockManager invariant: {msg}")

        refs = [0] * self.num_blocks
        for seq in self._holders.values():
            if len(set(seq.block_table)) != len(seq.block_table):
                fail(f"{seq} holds a block twice")
            if not seq.block_table:
                fail(f"{seq} is registered as a holder but holds no blocks")
            if len(seq.block_table) > -(-seq.num_tokens // self.block_size):
                fail(f"{seq} holds more blocks than its tokens need")
            for i, block_id in enumerate(seq.block_table):
                refs[block_id] += 1
                h = self.blocks[block_id].hash
                if h is None:
                    continue
                # Hashed = full, computed, and holding exactly this sequence's tokens.
                if i >= seq.num_computed_tokens // self.block_size:
                    fail(f"{seq} block {i} is hashed but not fully computed")
                if i >= len(seq.block_hashes) or seq.block_hashes[i] != h:
                    fail(f"{seq} block {i} (id {block_id}) holds other tokens than its own")
        for block in self.blocks:
            if block.ref_count != refs[block.block_id]:
                fail(f"block {block.block_id} ref count {block.ref_count} != "
                     f"{refs[block.block_id]} holders")
            if block.ref_count > 1 and block.hash is None:
                fail(f"block {block.block_id} is shared but not hashed (could be written)")
        free, cached = set(self._free), set(self._evictable)
        if len(free) != len(self._free):
            fail("a block is on the free list twice")
        used = {b.block_id for b in self.blocks if b.ref_count > 0}
        if free & cached or free & used or cached & used:
            fail("a block is in two of free / cached / used")
        if len(free) + len(cached) + len(used) != self.num_blocks:
            fail(f"free {len(free)} + cached {len(cached)} + used {len(used)} != "
                 f"{self.num_blocks} blocks")
        if any(self.blocks[b].hash is not None for b in free):
            fail("a free block still has a hash")
        if any(self.blocks[b].hash is None for b in cached):
            fail("a cached block has no hash")
        if cached and not self.enable_prefix_caching:
            fail("unreferenced blocks kept cached with prefix caching off")
        for h, block_id in self._hash_to_block.items():
            if self.blocks[block_id].hash != h:
                fail(f"hash table entry for block {block_id} does not match the block")
        if sum(b.hash is not None for b in self.blocks) != len(self._hash_to_block):
            fail("a hashed block is missing from the hash table")
