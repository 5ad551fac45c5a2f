"""Turns one ``SchedulerOutput`` into tensors, runs the model, samples.

Per step: pack the scheduled sequences' new tokens (sequence i's rows follow sequence i-1's),
build ``AttentionMetadata`` once (slot mapping, block tables, lengths), run
``model.forward_paged`` over the paged KV cache, compute logits only for the rows that sample
(plus prompt rows of requests that asked for prompt logprobs), and sample. One host sync per
step, at the end.

The KV cache is one (k_cache, v_cache) pair per layer, each (num_blocks, block_size, Hk, D). Its
size: ``CacheConfig.num_kv_blocks`` when set; on CUDA, what ``gpu_memory_utilization`` of the
card leaves after the weights and a profiling forward of a full token budget; on CPU,
``CacheConfig.cpu_kv_cache_gb`` gigabytes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np
import torch

from tritium.engine.config import EngineConfig
from tritium.engine.logprobs import TokenLogprobs, compute_prompt_logprobs
from tritium.engine.sampler import Sampler, SamplingMetadata
from tritium.engine.scheduler import SchedulerOutput
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
class StepResult:
    """What one model step produced, on the host."""

    sampled_token_ids: list[int]  # one per SchedulerOutput.sampling entry, same order
    logprobs: list[TokenLogprobs] | None  # idem, when any sampling row asked for logprobs
    # seq_id -> (first prompt position scored, logprobs of the next prompt tokens from there)
    prompt_logprobs: dict[int, tuple[int, list[TokenLogprobs]]]


class ModelRunner:
    """Owns the model, the KV cache and the sampler on one device."""

    def __init__(self, config: EngineConfig) -> None:
        self.device = resolve_device(config.device)
        self.dtype = resolve_dtype(config.dtype, self.device)
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
        num_blocks = config.cache.num_kv_blocks or self._num_blocks_from_memory(config)
        self.num_kv_blocks = num_blocks
        self.kv_caches = self._allocate_kv_caches(num_blocks)
        logger.info(
            "KV cache: %d blocks of %d tokens (%d tokens, %.2f GiB, %s) on %s",
            num_blocks, self.block_size, num_blocks * self.block_size,
            self.kv_cache_bytes(num_blocks) / 2**30, self.kv_dtype, self.device,
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
        free, total = torch.cuda.mem_get_info(self.device)
        used_by_others = total - free - torch.cuda.memory_reserved(self.device)
        budget = total * config.cache.gpu_memory_utilization - peak - used_by_others
        num_blocks = int(budget // self.kv_cache_bytes(1))
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

    # -- one step ----------------------------------------------------------------------------

    def _prepare(
        self, out: SchedulerOutput
    ) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata]:
        bs = self.block_size
        ids: list[int] = []
        positions: list[np.ndarray] = []
        slots: list[np.ndarray] = []
        cu = [0]
        lens = []
        max_blocks = max(len(s.block_table) for s in out.scheduled)
        tables = np.zeros((len(out.scheduled), max_blocks), dtype=np.int32)
        for i, s in enumerate(out.scheduled):
            ids.extend(s.token_ids)
            pos = np.arange(s.num_computed_tokens, s.seq_len, dtype=np.int64)
            table = np.asarray(s.block_table, dtype=np.int64)
            positions.append(pos)
            slots.append(table[pos // bs] * bs + pos % bs)
            tables[i, : len(table)] = table
            cu.append(cu[-1] + s.num_new_tokens)
            lens.append(s.seq_len)
        dev = self.device
        meta = AttentionMetadata(
            slot_mapping=torch.from_numpy(np.concatenate(slots)).to(dev, non_blocking=True),
            block_tables=torch.from_numpy(tables).to(dev, non_blocking=True),
            seq_lens=torch.tensor(lens, dtype=torch.int32).to(dev, non_blocking=True),
            cu_seqlens_q=torch.tensor(cu, dtype=torch.int32).to(dev, non_blocking=True),
            max_seqlen_q=max(s.num_new_tokens for s in out.scheduled),
            max_seqlen_k=max(lens),
            decode_only=out.decode_only,
        )
        input_ids = torch.tensor(ids, dtype=torch.long).to(dev, non_blocking=True)
        pos_t = torch.from_numpy(np.concatenate(positions)).to(dev, non_blocking=True)
        return input_ids, pos_t, meta

    def _prompt_logprob_rows(self, out: SchedulerOutput):
        """Rows whose logits score the next prompt token, for requests with prompt_logprobs."""
        rows, targets, spans = [], [], []
        start = 0
        for s in out.scheduled:
            k = s.seq.sampling_params.prompt_logprobs
            last = min(s.seq_len, s.seq.num_prompt_tokens - 1)  # positions < last have a target
            if k is not None and s.num_computed_tokens < last:
                first = s.num_computed_tokens
                n = last - first
                rows.extend(range(start, start + n))
                targets.extend(s.seq.token_ids[first + 1 : last + 1])
                spans.append((s.seq.seq_id, first, n, k))
            start += s.num_new_tokens
        return rows, targets, spans

    @torch.inference_mode()
    def run(self, out: SchedulerOutput) -> StepResult:
        """Compute ``out.scheduled``, sample one token per ``out.sampling`` entry."""
        input_ids, positions, meta = self._prepare(out)
        hidden = self.model.forward_paged(input_ids, positions, self.kv_caches, meta)
        sample_rows, start = [], 0
        for s in out.scheduled:
            start += s.num_new_tokens
            if s.sample:
                sample_rows.append(start - 1)  # the chunk's last token predicts the next one
        pl_rows, pl_targets, pl_spans = self._prompt_logprob_rows(out)
        rows = torch.tensor(sample_rows + pl_rows, dtype=torch.long).to(self.device)
        logits = self.model.compute_logits(hidden.index_select(0, rows)).float()
        sampled_ids: list[int] = []
        logprobs = None
        if sample_rows:
            seqs = [s.seq for s in out.sampling]
            smeta = SamplingMetadata.build(
                [q.sampling_params for q in seqs],
                [q.prompt_token_ids for q in seqs],
                [q.output_token_ids for q in seqs],
                [q.seed for q in seqs],
                self.eos_token_ids, self.vocab_size, self.device,
            )
            sampled_ids, logprobs = self.sampler(logits[: len(sample_rows)], smeta).tolist()
        prompt_logprobs: dict[int, tuple[int, list[TokenLogprobs]]] = {}
        if pl_rows:
            k = max(span[3] for span in pl_spans)
            target = torch.tensor(pl_targets, dtype=torch.long, device=self.device)
            lps = compute_prompt_logprobs(logits[len(sample_rows):], target, k).tolist()
            i = 0
            for seq_id, first, n, k_seq in pl_spans:
                part = lps[i : i + n]
                for lp in part:  # the batch computed the largest k: cut to this request's
                    lp.top_token_ids = lp.top_token_ids[:k_seq]
                    lp.top_logprobs = lp.top_logprobs[:k_seq]
                prompt_logprobs[seq_id] = (first, part)
                i += n
        return StepResult(sampled_ids, logprobs, prompt_logprobs)


def with_resolved_lengths(config: EngineConfig, runner: ModelRunner) -> EngineConfig:
    """The config with max_model_len and num_kv_blocks filled from the model and the cache."""
    sched = replace(config.scheduler, max_model_len=runner.max_model_len)
    cache = replace(config.cache, num_kv_blocks=runner.num_kv_blocks)
    return replace(config, scheduler=sched, cache=cache)
