"""Decode steps replayed from CUDA graphs, on static input buffers padded to a few batch sizes.

A decode step of a 32-layer model launches ~350 kernels; at small and medium batch their launch
and Python dispatch costs exceed the GPU work. ``DecodeGraphRunner`` captures
``model.forward_paged`` once per batch size of ``capture_sizes`` (1, 2, 4, 8, 16, 24, ... as
vLLM) and replays it:

1. a decode step of n sequences (one new token each) takes the smallest size b >= n;
2. its inputs are copied into rows 0..n-1 of static buffers (input_ids, positions,
   slot_mapping, seq_lens, block_tables with max_model_len / block_size columns), rows n..b-1
   become padding rows: token 0 at position 0, one key, K/V written to and read from a
   *scratch block* that the block manager never hands out, so they touch no sequence's cache;
3. the graph replays; rows 0..n-1 of its static output are the hidden states (padding rows'
   outputs are ignored).

Everything inside the graph is independent of per-step host values: the metadata's host
fields are fixed per size (``max_seqlen_k = max_model_len``, ``decode_only``), so the decode
kernel's split count and grid are fixed per size and each sequence cuts its own keys by its
length on the device (see kernels/paged_attention.py); no op syncs or allocates by data.

With ``use_cuda_graphs=False`` the same buffers, padding and slicing run eagerly: that is how
CPU tests check the padding logic against the unpadded path (only capture/replay itself needs
a GPU). Sizes above the largest bucket, prefill and mixed steps run eagerly in the ModelRunner.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np
import torch

from tritium.ops.paged_attention import AttentionMetadata

logger = logging.getLogger(__name__)

# forward_paged(input_ids (T,), positions (T,), kv_caches, meta) -> hidden (T, hidden)
ForwardFn = Callable[[torch.Tensor, torch.Tensor, list, AttentionMetadata], torch.Tensor]


def capture_sizes(max_size: int) -> list[int]:
    """Batch sizes to capture: 1, 2, 4, then every multiple of 8 up to ``max_size`` (included).

    A step pads to the next size: at most 7 wasted rows, i.e. < 1/3 of the batch beyond 16.
    """
    if not isinstance(max_size, int) or max_size < 1:
        raise ValueError(f"max_size must be an int >= 1, got {max_size!r}")
    sizes = [s for s in (1, 2, 4) if s <= max_size] + list(range(8, max_size + 1, 8))
    if sizes[-1] != max_size:
        sizes.append(max_size)
    return sizes


class DecodeGraphRunner:
    """Static buffers + one captured graph (or eager emulation) per decode batch size.

    Args:
        forward: ``model.forward_paged``.
        kv_caches: the engine's caches, (num_blocks, block_size, Hk, D) per layer; the graphs
            bake in their addresses, so they must live as long as this runner.
        max_batch_size: the largest size captured; larger decode steps run eagerly.
        max_model_len: longest sequence (block tables get max_model_len / block_size columns).
        block_size: tokens per KV block.
        scratch_block: a block index no sequence ever owns (padding rows write there).
        use_cuda_graphs: capture and replay (CUDA only); False runs the padded path eagerly.
    """

    def __init__(
        self, forward: ForwardFn, kv_caches: list[tuple[torch.Tensor, torch.Tensor]], *,
        max_batch_size: int, max_model_len: int, block_size: int, scratch_block: int,
        use_cuda_graphs: bool,
    ) -> None:
        device = kv_caches[0][0].device
        if use_cuda_graphs and device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, the KV cache is on {device}")
        if not 0 <= scratch_block < kv_caches[0][0].shape[0]:
            raise ValueError(f"scratch_block {scratch_block} is outside the KV cache "
                             f"({kv_caches[0][0].shape[0]} blocks)")
        self.forward, self.kv_caches = forward, kv_caches
        self.sizes = capture_sizes(max_batch_size)
        self.max_batch_size = self.sizes[-1]
        self.max_model_len, self.block_size = max_model_len, block_size
        self.scratch_block, self.use_cuda_graphs = scratch_block, use_cuda_graphs
        self.max_blocks = -(-max_model_len // block_size)
        n, dev = self.max_batch_size, device
        # -- static inputs; rows past a step's batch hold padding rows (see module doc) --
        self.input_ids = torch.zeros(n, dtype=torch.long, device=dev)  # (n,)
        self.positions = torch.zeros(n, dtype=torch.long, device=dev)  # (n,)
        self.slot_mapping = torch.full((n,), scratch_block * block_size, dtype=torch.long,
                                       device=dev)  # (n,)
        self.seq_lens = torch.ones(n, dtype=torch.int32, device=dev)  # (n,)
        self.block_tables = torch.full((n, self.max_blocks), scratch_block, dtype=torch.int32,
                                       device=dev)  # (n, max_blocks)
        self.cu_seqlens_q = torch.arange(n + 1, dtype=torch.int32, device=dev)  # (n+1,)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}  # size -> static hidden (size, hidden)
        self.capture_seconds: float | None = None  # set by capture()
        self.capture_bytes: int | None = None  # device memory the capture took (mem_get_info)

    def static_bytes(self) -> int:
        bufs = (self.input_ids, self.positions, self.slot_mapping, self.seq_lens,
                self.block_tables, self.cu_seqlens_q)
        return sum(t.numel() * t.element_size() for t in bufs)

    def size_for(self, num_seqs: int) -> int | None:
        """The smallest captured size >= num_seqs, or None (run eagerly)."""
        for s in self.sizes:
            if s >= num_seqs:
                return s
        return None

    def metadata(self, size: int) -> AttentionMetadata:
        """The fixed metadata of a size: views of the static buffers, host values constant."""
        return AttentionMetadata(
            slot_mapping=self.slot_mapping[:size], block_tables=self.block_tables[:size],
            seq_lens=self.seq_lens[:size], cu_seqlens_q=self.cu_seqlens_q[: size + 1],
            max_seqlen_q=1, max_seqlen_k=self.max_model_len, decode_only=True,
        )

    def _forward(self, size: int) -> torch.Tensor:
        return self.forward(self.input_ids[:size], self.positions[:size], self.kv_caches,
                            self.metadata(size))

    # -- capture -------------------------------------------------------------------------------

    @torch.inference_mode()
    def capture(self) -> None:
        """Warm up and capture every size, largest first (smaller ones reuse its pool)."""
        if not self.use_cuda_graphs:
            raise RuntimeError("capture() needs use_cuda_graphs=True")
        # every row is a padding row until the first run(): valid inputs for the warm-ups
        torch.cuda.synchronize()
        free_before = torch.cuda.mem_get_info()[0]
        t0 = time.perf_counter()
        pool = torch.cuda.graph_pool_handle()
        for size in reversed(self.sizes):
            self._forward(size)  # compiles the Triton kernels for this size, cuBLAS handles
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.outputs[size] = self._forward(size)
            self.graphs[size] = graph
        torch.cuda.synchronize()
        self.capture_seconds = time.perf_counter() - t0
        self.capture_bytes = free_before - torch.cuda.mem_get_info()[0]
        logger.info("captured %d decode CUDA graphs (batch sizes %d..%d) in %.1f s, %.0f MiB",
                    len(self.sizes), self.sizes[0], self.sizes[-1], self.capture_seconds,
                    self.capture_bytes / 2**20)

    # -- one step ------------------------------------------------------------------------------

    def run(self, input_ids: np.ndarray, positions: np.ndarray, slot_mapping: np.ndarray,
            seq_lens: np.ndarray, block_tables: np.ndarray, fill=None) -> torch.Tensor:
        """One decode step of n sequences (host arrays: (n,) int64 x3, (n,) int32,
        (n, w) int32 with w <= max_blocks) -> hidden (n, hidden), a view of a static output
        (valid until the next call). ``fill(ids)``, when given, edits the static input ids on
        the device before the replay (async scheduling's placeholder tokens)."""
        n, width = block_tables.shape
        size = self.size_for(n)
        if size is None or width > self.max_blocks:
            raise ValueError(f"a decode batch of {n} sequences x {width} blocks does not fit "
                             f"the captured sizes (<= {self.max_batch_size} x {self.max_blocks})")
        pad = size - n
        if pad:  # padding rows, built on the host so the copies below cover them
            input_ids = np.concatenate([input_ids, np.zeros(pad, np.int64)])
            positions = np.concatenate([positions, np.zeros(pad, np.int64)])
            slot_mapping = np.concatenate(
                [slot_mapping, np.full(pad, self.scratch_block * self.block_size, np.int64)])
            seq_lens = np.concatenate([seq_lens, np.ones(pad, np.int32)])
            tables = np.full((size, width), self.scratch_block, np.int32)
            tables[:n] = block_tables
            block_tables = tables
        # host -> device copies into the static buffers (~size x (28 + 4 width) bytes);
        # columns >= width keep stale block ids, which nothing reads (past seq_lens)
        self.input_ids[:size].copy_(torch.from_numpy(input_ids), non_blocking=True)
        self.positions[:size].copy_(torch.from_numpy(positions), non_blocking=True)
        self.slot_mapping[:size].copy_(torch.from_numpy(slot_mapping), non_blocking=True)
        self.seq_lens[:size].copy_(torch.from_numpy(seq_lens), non_blocking=True)
        self.block_tables[:size, :width].copy_(torch.from_numpy(block_tables),
                                               non_blocking=True)
        if fill is not None:
            fill(self.input_ids)
        if not self.use_cuda_graphs:
            return self._forward(size)[:n]
        self.graphs[size].replay()
        return self.outputs[size][:n]
