"""Block-sparse attention masks.

A ``BlockMask`` describes a boolean (B, H, Sq, Sk) mask (True = attend) in tiles of
``q_block_size x kv_block_size``. For each (batch, head, query block) it lists the key blocks to
visit, split into *full* blocks (every element True: the kernel applies no per-element mask) and
*partial* blocks (the kernel loads the block's element mask, a deduplicated tile from
``mask_tiles``). Key blocks in neither list are skipped: their cost is zero.

Batch and head dims may be 1 (broadcast) when the mask does not depend on them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


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
