"""Turns one ``SchedulerOutput`` into tensors, runs the model, samples.

Per step: pack the scheduled sequences' new tokens on the host (one-token sequences first, so
attention runs them on the split-KV decode kernel and the rest on the prefill kernel; sequence
i's rows follow sequence i-1's), build ``AttentionMetadata`` once (slot mapping, block tables,
lengths), run ``model.forward_paged`` over the paged KV cache, compute logits only for the rows
that sample (plus prompt rows of requests that asked for prompt logprobs), and sample. One host
sync per step, at the end. On CUDA, decode-only steps of up to ``max_cudagraph_capture_size``
sequences replay a CUDA graph instead (engine/cuda_graphs.py) unless ``enforce_eager``.

``run(out)`` is ``launch(out).result()``. Async scheduling launches step N+1 before reading
step N's tokens: a decode row whose input is still a placeholder (engine/sequence.py) takes its
token from step N's sampled ids on the device (``launch(out, prev=step N)``), and
``result()`` waits only for its own step's sampled ids (an event, not a stream sync).

The KV cache is one (k_cache, v_cache) pair per layer, each (num_blocks, block_size, Hk, D). Its
size: ``CacheConfig.num_kv_blocks`` when set; on CUDA, what ``gpu_memory_utilization`` of the
card leaves after the weights and a profiling forward of a full token budget; on CPU,
``CacheConfig.cpu_kv_cache_gb`` gigabytes; with CUDA graphs, minus what the graphs will hold.
One block more than that is allocated: the scratch block of the graphs' padding rows, never
handed to the scheduler.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from tritium.engine.config import EngineConfig
from tritium.engine.cpu_malloc import keep_freed_memory
from tritium.engine.cuda_graphs import DecodeGraphRunner
from tritium.engine.logprobs import TokenLogprobs, compute_prompt_logprobs
from tritium.engine.sampler import Sampler, SamplingMetadata
from tritium.engine.scheduler import SchedulerOutput
from tritium.engine.sequence import PLACEHOLDER
from tritium.models import load_model
from tritium.ops.paged_attention import AttentionMetadata, resolve_kv_cache_dtype

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(device: str | None) -> torch.device:
    """None -> CUDA when available, else CPU. Raises ValueError for an unusable device."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but CUDA is not available here")
    return dev


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """"auto" -> float32 on CPU, bfloat16 on CUDA."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return _DTYPES[dtype]


@dataclass
class StepInputs:
    """One step packed on the host: one-token sequences first (rows 0..num_decodes-1)."""

    input_ids: np.ndarray  # (T,) int64
    positions: np.ndarray  # (T,) int64
    slot_mapping: np.ndarray  # (T,) int64
    seq_lens: np.ndarray  # (N,) int32, packed order
    block_tables: np.ndarray  # (N, most blocks of any sequence) int32, 0-padded
    cu_seqlens_q: np.ndarray  # (N+1,) int32
    num_decodes: int  # sequences with one new token, packed first
    row_ends: list[int]  # per out.scheduled entry (scheduler order): its last row + 1
    # decode rows whose input token is a placeholder: (row, seq_id); their input_ids hold 0
    placeholders: list[tuple[int, int]] = field(default_factory=list)

    @property
    def decode_only(self) -> bool:
        return self.num_decodes == len(self.seq_lens)

    def metadata(self, device: torch.device) -> AttentionMetadata:
        q_lens = np.diff(self.cu_seqlens_q)
        return AttentionMetadata(
            slot_mapping=torch.from_numpy(self.slot_mapping).to(device, non_blocking=True),
            block_tables=torch.from_numpy(self.block_tables).to(device, non_blocking=True),
            seq_lens=torch.from_numpy(self.seq_lens).to(device, non_blocking=True),
            cu_seqlens_q=torch.from_numpy(self.cu_seqlens_q).to(device, non_blocking=True),
            max_seqlen_q=int(q_lens.max()), max_seqlen_k=int(self.seq_lens.max()),
            decode_only=self.decode_only, num_decode_tokens=self.num_decodes,
        )


def pack_step(out: SchedulerOutput, block_size: int) -> StepInputs:
    """Pack ``out.scheduled`` for the model: one-token sequences first, each group in order."""
    sched = out.scheduled
    bs = block_size
    order = sorted(range(len(sched)), key=lambda i: sched[i].num_new_tokens != 1)  # stable
    n = len(sched)
    tables = np.zeros((n, max(len(s.block_table) for s in sched)), dtype=np.int32)
    lens = np.empty(n, dtype=np.int32)
    cu = np.empty(n + 1, dtype=np.int32)
    cu[0] = 0
    ids: list[int] = []
    dec_pos: list[int] = []
    dec_slots: list[int] = []
    pos_parts: list[np.ndarray] = []
    slot_parts: list[np.ndarray] = []
    row_ends = [0] * n
    num_decodes = 0
    placeholders: list[tuple[int, int]] = []
    for r, i in enumerate(order):
        s = sched[i]
        table = s.block_table
        tables[r, : len(table)] = table
        lens[r] = s.seq_len
        cu[r + 1] = cu[r] + s.num_new_tokens
        row_ends[i] = int(cu[r + 1])
        if s.num_new_tokens == 1:  # plain ints: most steps are all decodes
            p = s.num_computed_tokens
            tok = s.seq.token_ids[p]
            if tok == PLACEHOLDER:  # sampled by the step in flight: filled in on the device
                placeholders.append((len(ids), s.seq.seq_id))
                tok = 0
            ids.append(tok)
            dec_pos.append(p)
            dec_slots.append(table[p // bs] * bs + p % bs)
            num_decodes += 1
        else:
            ids.extend(s.token_ids)
            p = np.arange(s.num_computed_tokens, s.seq_len, dtype=np.int64)
            pos_parts.append(p)
            slot_parts.append(np.asarray(table, dtype=np.int64)[p // bs] * bs + p % bs)
    return StepInputs(
        input_ids=np.asarray(ids, dtype=np.int64),
        positions=np.concatenate([np.asarray(dec_pos, dtype=np.int64), *pos_parts]),
        slot_mapping=np.concatenate([np.asarray(dec_slots, dtype=np.int64), *slot_parts]),
        seq_lens=lens, block_tables=tables, cu_seqlens_q=cu, num_decodes=num_decodes,
        row_ends=row_ends, placeholders=placeholders,
    )


@dataclass
class StepResult:
    """What one model step produced, on the host."""

    sampled_token_ids: list[int]  # one per SchedulerOutput.sampling entry, same order
    logprobs: list[TokenLogprobs] | None  # idem, when any sampling row asked for logprobs
    # seq_id -> (first prompt position scored, logprobs of the next prompt tokens from there)
    prompt_logprobs: dict[int, tuple[int, list[TokenLogprobs]]]


class PendingStep:
    """A launched step: its sampled ids stay on the device until :meth:`result`.

    ``row_of(seq_id)`` is a sampling row's index in ``sampled_ids``: the next step's placeholder
    inputs are gathered from there. On CUDA, without logprobs, the ids are copied
    into pinned host memory behind an event, so ``result()`` waits for this step only, not for
    a step launched after it."""

    def __init__(self, out: SchedulerOutput, sampled, prompt_logprobs=None) -> None:
        self._sampling = out.sampling
        self._index: dict[int, int] | None = None  # seq_id -> row, built on first use
        self.sampled = sampled  # SamplerOutput or None
        self._prompt_logprobs = prompt_logprobs  # (lps tensor, spans) or None
        self._host = self._event = None
        ids = None if sampled is None else sampled.sampled_token_ids
        if ids is not None and ids.is_cuda and sampled.logprobs is None:
            self._host = torch.empty(ids.shape, dtype=ids.dtype, pin_memory=True)
            self._host.copy_(ids, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()
        self._result: StepResult | None = None

    def row_of(self, seq_id: int) -> int:
        if self._index is None:  # only async steps with placeholders ask
            self._index = {s.seq.seq_id: k for k, s in enumerate(self._sampling)}
        return self._index[seq_id]

    @property
    def sampled_ids(self) -> torch.Tensor | None:
        return None if self.sampled is None else self.sampled.sampled_token_ids

    def result(self) -> StepResult:
        """The step's tokens on the host (waits for the step; cached)."""
        if self._result is not None:
            return self._result
        sampled_ids: list[int] = []
        logprobs = None
        if self._event is not None:
            self._event.synchronize()
            sampled_ids = self._host.tolist()
        elif self.sampled is not None:
            sampled_ids, logprobs = self.sampled.tolist()
        prompt_logprobs: dict[int, tuple[int, list[TokenLogprobs]]] = {}
        if self._prompt_logprobs is not None:
            lps_t, spans = self._prompt_logprobs
            lps = lps_t.tolist()
            i = 0
            for seq_id, first, n, k_seq in spans:
                part = lps[i : i + n]
                for lp in part:  # the batch computed the largest k: cut to this request's
                    lp.top_token_ids = lp.top_token_ids[:k_seq]
                    lp.top_logprobs = lp.top_logprobs[:k_seq]
                prompt_logprobs[seq_id] = (first, part)
                i += n
        self._result = StepResult(sampled_ids, logprobs, prompt_logprobs)
        self.sampled = self._prompt_logprobs = None
        return self._result


class ModelRunner:
    """Owns the model, the KV cache and the sampler on one device."""

    def __init__(self, config: EngineConfig) -> None:
        self.device = resolve_device(config.device)
        self.dtype = resolve_dtype(config.dtype, self.device)
        if self.device.type == "cpu":
            keep_freed_memory()  # process-wide; see engine/cpu_malloc.py
        self.model, self.tokenizer, self.model_config = load_model(
            config.model, device=self.device, dtype=self.dtype, tokenizer=config.tokenizer
        )
        self.model.eval()
        self.sampler = Sampler()
        mc = self.model_config
        self.vocab_size = mc.vocab_size
        self.eos_token_ids = list(mc.eos_token_ids)
        self.block_size = config.cache.block_size
        self.kv_dtype = resolve_kv_cache_dtype(config.cache.kv_cache_dtype, self.dtype)
        self.max_model_len = config.scheduler.max_model_len or mc.max_position_embeddings
        self.max_num_batched_tokens = config.scheduler.max_num_batched_tokens
        self.max_num_seqs = config.scheduler.max_num_seqs
        # CUDA graphs for decode steps of up to this many sequences; None = always eager
        self.cudagraph_capture_size = None
        if self.device.type == "cuda" and not config.enforce_eager:
            cap = config.max_cudagraph_capture_size or 512
            self.cudagraph_capture_size = min(cap, self.max_num_seqs)
        num_blocks = config.cache.num_kv_blocks or self._num_blocks_from_memory(config)
        self.num_kv_blocks = num_blocks
        self.scratch_block = num_blocks  # the extra block: padding rows of graph batches
        self.kv_caches = self._allocate_kv_caches(num_blocks + 1)
        logger.info(
            "KV cache: %d blocks of %d tokens (%d tokens, %.2f GiB, %s) on %s",
            num_blocks, self.block_size, num_blocks * self.block_size,
            self.kv_cache_bytes(num_blocks) / 2**30, self.kv_dtype, self.device,
        )
        self.decode_graphs: DecodeGraphRunner | None = None
        if self.cudagraph_capture_size is not None:
            self.decode_graphs = self.make_decode_graphs(self.cudagraph_capture_size, True)
            self.decode_graphs.capture()

    def make_decode_graphs(self, max_batch_size: int, use_cuda_graphs: bool,
                           kv_caches: list | None = None, scratch_block: int | None = None
                           ) -> DecodeGraphRunner:
        """A decode graph runner over this model and cache (``use_cuda_graphs=False``: the
        padded static-buffer path run eagerly, which CPU tests install as ``decode_graphs``)."""
        return DecodeGraphRunner(
            self.model.forward_paged, kv_caches or self.kv_caches,
            max_batch_size=max_batch_size, max_model_len=self.max_model_len,
            block_size=self.block_size,
            scratch_block=self.scratch_block if scratch_block is None else scratch_block,
            use_cuda_graphs=use_cuda_graphs,
        )

    # -- KV cache ----------------------------------------------------------------------------

    def kv_cache_bytes(self, num_blocks: int) -> int:
        mc = self.model_config
        per_block = 2 * self.block_size * mc.num_key_value_heads * mc.head_dim
        elem = torch.empty((), dtype=self.kv_dtype).element_size()
        return num_blocks * per_block * elem * mc.num_hidden_layers

    def _allocate_kv_caches(self, num_blocks: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        mc = self.model_config
        shape = (num_blocks, self.block_size, mc.num_key_value_heads, mc.head_dim)
        return [
            (torch.zeros(shape, dtype=self.kv_dtype, device=self.device),
             torch.zeros(shape, dtype=self.kv_dtype, device=self.device))
            for _ in range(mc.num_hidden_layers)
        ]

    def _num_blocks_from_memory(self, config: EngineConfig) -> int:
        if self.device.type != "cuda":
            return max(1, int(config.cache.cpu_kv_cache_gb * 2**30 // self.kv_cache_bytes(1)))
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)
        self._profile_forward()
        peak = torch.cuda.max_memory_allocated(self.device)
        graphs = self._graph_memory_reserve() if self.cudagraph_capture_size else 0
        free, total = torch.cuda.mem_get_info(self.device)
        used_by_others = total - free - torch.cuda.memory_reserved(self.device)
        budget = total * config.cache.gpu_memory_utilization - peak - used_by_others - graphs
        num_blocks = int(budget // self.kv_cache_bytes(1)) - 1  # - 1: the scratch block
        if num_blocks < 1:
            raise ValueError(
                f"no GPU memory left for the KV cache (budget {budget / 2**30:.2f} GiB after "
                f"weights and activations): raise gpu_memory_utilization or lower "
                f"max_num_batched_tokens"
            )
        return num_blocks

    @torch.inference_mode()
    def _profile_forward(self) -> None:
        """A forward of a full token budget, so activation memory shows up in the peak."""
        tokens = min(self.max_num_batched_tokens, self.max_model_len)
        nblocks = -(-tokens // self.block_size)
        caches = self._allocate_kv_caches(nblocks)
        ids = torch.zeros(tokens, dtype=torch.long, device=self.device)
        pos = torch.arange(tokens, device=self.device)
        meta = AttentionMetadata(
            slot_mapping=pos.clone(),
            block_tables=torch.arange(nblocks, dtype=torch.int32, device=self.device)[None],
            seq_lens=torch.tensor([tokens], dtype=torch.int32, device=self.device),
            cu_seqlens_q=torch.tensor([0, tokens], dtype=torch.int32, device=self.device),
            max_seqlen_q=tokens, max_seqlen_k=tokens, decode_only=tokens == 1,
        )
        hidden = self.model.forward_paged(ids, pos, caches, meta)
        self.model.compute_logits(hidden[-min(tokens, 256):])
        del caches, hidden
        torch.cuda.synchronize(self.device)

    @torch.inference_mode()
    def _graph_memory_reserve(self) -> int:
        """Bytes the decode graphs will hold outside the caching allocator's shared pool: the
        largest size's activations (its private pool, reused by the smaller sizes), the static
        buffers and every size's output, plus a margin for pool rounding and graph objects."""
        caches = self._allocate_kv_caches(1)
        runner = self.make_decode_graphs(self.cudagraph_capture_size, False, caches, 0)
        torch.cuda.synchronize(self.device)
        base = torch.cuda.memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        hidden = runner._forward(runner.max_batch_size)
        activations = torch.cuda.max_memory_allocated(self.device) - base
        outputs = sum(runner.sizes) * hidden.shape[-1] * hidden.element_size()
        reserve = int(1.25 * activations) + runner.static_bytes() + outputs + 64 * 2**20
        logger.info("reserving %.0f MiB for decode CUDA graphs up to batch %d",
                    reserve / 2**20, runner.max_batch_size)
        del caches, runner, hidden
        return reserve

    # -- one step ----------------------------------------------------------------------------

    def _forward(self, inp: StepInputs, fill=None) -> torch.Tensor:
        """hidden (T, hidden) of the packed rows: a graph replay for decode-only steps that
        fit one, else the eager forward. ``fill`` (see ``_placeholder_fill``) writes the
        placeholder rows' input ids on the device."""
        graphs = self.decode_graphs
        n = len(inp.seq_lens)
        if (graphs is not None and inp.decode_only and graphs.size_for(n) is not None
                and inp.block_tables.shape[1] <= graphs.max_blocks):
            return graphs.run(inp.input_ids, inp.positions, inp.slot_mapping, inp.seq_lens,
                              inp.block_tables, fill=fill)
        input_ids, positions, meta = self.device_inputs(inp)
        if fill is not None:
            fill(input_ids)
        return self.model.forward_paged(input_ids, positions, self.kv_caches, meta)

    def _placeholder_fill(self, inp: StepInputs, prev: PendingStep | None):
        """None, or a function writing the placeholder rows' tokens (from ``prev``'s sampled
        ids, on the device) into an input_ids tensor."""
        if not inp.placeholders:
            return None
        if prev is None or prev.sampled_ids is None:
            raise RuntimeError("a placeholder token without the step that samples it")
        rows = torch.tensor([r for r, _ in inp.placeholders], dtype=torch.long)
        src = torch.tensor([prev.row_of(sid) for _, sid in inp.placeholders], dtype=torch.long)
        rows, src = rows.to(self.device, non_blocking=True), src.to(self.device, non_blocking=True)
        sampled = prev.sampled_ids

        def fill(input_ids: torch.Tensor) -> None:
            input_ids.index_copy_(0, rows, sampled.index_select(0, src))

        return fill

    def device_inputs(self, inp: StepInputs
                      ) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata]:
        """A packed step (``pack_step``) on the device: (input_ids, positions, metadata)."""
        dev = self.device
        input_ids = torch.from_numpy(inp.input_ids).to(dev, non_blocking=True)
        positions = torch.from_numpy(inp.positions).to(dev, non_blocking=True)
        return input_ids, positions, inp.metadata(dev)

    def _prompt_logprob_rows(self, out: SchedulerOutput, row_ends: list[int]):
        """Rows whose logits score the next prompt token, for requests with prompt_logprobs."""
        rows, targets, spans = [], [], []
        for s, end in zip(out.scheduled, row_ends):
            k = s.seq.sampling_params.prompt_logprobs
            last = min(s.seq_len, s.seq.num_prompt_tokens - 1)  # positions < last have a target
            if k is not None and s.num_computed_tokens < last:
                first = s.num_computed_tokens
                n = last - first
                start = end - s.num_new_tokens
                rows.extend(range(start, start + n))
                targets.extend(s.seq.token_ids[first + 1 : last + 1])
                spans.append((s.seq.seq_id, first, n, k))
        return rows, targets, spans

    def run(self, out: SchedulerOutput) -> StepResult:
        """Compute ``out.scheduled``, sample one token per ``out.sampling`` entry."""
        return self.launch(out).result()

    @torch.inference_mode()
    def launch(self, out: SchedulerOutput, prev: PendingStep | None = None) -> PendingStep:
        """Queue ``out``'s step on the device without waiting for it. ``prev``: the step in
        flight whose sampled tokens are this step's placeholder inputs."""
        inp = pack_step(out, self.block_size)
        hidden = self._forward(inp, self._placeholder_fill(inp, prev))
        # the chunk's last token predicts the next one; out.sampling order
        sample_rows = [end - 1 for s, end in zip(out.scheduled, inp.row_ends) if s.sample]
        pl_rows, pl_targets, pl_spans = self._prompt_logprob_rows(out, inp.row_ends)
        if not pl_rows and len(sample_rows) == hidden.shape[0] == inp.num_decodes:
            logits = self.model.compute_logits(hidden)  # every row samples, in order
        else:
            rows = torch.tensor(sample_rows + pl_rows, dtype=torch.long).to(self.device)
            logits = self.model.compute_logits(hidden.index_select(0, rows))
        logits = logits.float()
        sampled = None
        if sample_rows:
            seqs = [s.seq for s in out.sampling]
            smeta = SamplingMetadata.build(
                [q.sampling_params for q in seqs],
                [q.prompt_token_ids for q in seqs],
                [q.output_token_ids for q in seqs],
                [q.seed for q in seqs],
                self.eos_token_ids, self.vocab_size, self.device,
            )
            sampled = self.sampler(logits[: len(sample_rows)], smeta)
        prompt_logprobs = None
        if pl_rows:
            k = max(span[3] for span in pl_spans)
            target = torch.tensor(pl_targets, dtype=torch.long, device=self.device)
            lps = compute_prompt_logprobs(logits[len(sample_rows):], target, k)
            prompt_logprobs = (lps, pl_spans)
        return PendingStep(out, sampled, prompt_logprobs)


def with_resolved_lengths(config: EngineConfig, runner: ModelRunner) -> EngineConfig:
    """The config with max_model_len and num_kv_blocks filled from the model and the cache."""
    sched = replace(config.scheduler, max_model_len=runner.max_model_len)
    cache = replace(config.cache, num_kv_blocks=runner.num_kv_blocks)
    return replace(config, scheduler=sched, cache=cache)
