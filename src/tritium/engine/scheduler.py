"""Continuous batching under one token budget per step. Pure Python (no torch).

There is no prefill phase and no decode phase: every sequence has ``num_computed_tokens``
catching up to ``num_tokens``, and each step hands out at most ``max_num_batched_tokens`` new
tokens: first to running sequences in admission order (a decode needs 1, an unfinished prompt
takes what is left, so long prompts are prefilled in chunks), then to waiting sequences, first
come first served. A sequence samples only when its chunk reaches its last known token.

When KV blocks run out, the most recently admitted running sequences are preempted by
recompute: their blocks are freed (full ones stay in the prefix cache), their progress reset,
and they go back to the *front* of the waiting queue. The oldest running sequence therefore
always progresses, and since the cache holds at least one ``max_model_len`` sequence, every
request finishes. Requests that could never run are refused in :meth:`Scheduler.add`.

Siblings of an n > 1 request share their prompt's full blocks: while one sibling is computing
those blocks the others wait (one step, usually), then take them from the hash table.

One step: ``out = schedule()`` -> the model runner computes ``out.scheduled`` and samples one
token per ``out.sampling`` entry -> ``postprocess(out, token_ids)`` -> the engine detokenizes
and calls :meth:`Scheduler.finish` for sequences that hit a stop string.

Async scheduling (the engine's ``async_scheduling``) splits postprocess in two so that step N+1
is scheduled while step N runs: ``commit(out)`` right after step N is launched records its
progress and gives each sampling sequence a placeholder token; ``postprocess(out, token_ids,
committed=True)`` later writes the real tokens in and checks stops. A sequence that finishes
at step N was already scheduled in step N+1: that row's work is dropped.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from tritium.engine.block_manager import BlockManager
from tritium.engine.config import CacheConfig, SchedulerConfig
from tritium.engine.scheduler_output import ScheduledSequence, SchedulerOutput
from tritium.engine.sequence import Sequence, SequenceStatus

logger = logging.getLogger(__name__)

__all__ = ["ScheduledSequence", "Scheduler", "SchedulerOutput"]


class Scheduler:
    """Decides, step by step, which tokens of which sequences to compute.

    Args:
        config: batch limits; ``max_model_len`` must be resolved (not None).
        cache_config: KV cache shape; ``num_kv_blocks`` must be resolved (not None).
        eos_token_ids: the model's end-of-sequence ids (stop unless ``ignore_eos``).
        clock: monotonic time source for metrics (tests pass a fake one).
    """

    def __init__(
        self,
        config: SchedulerConfig,
        cache_config: CacheConfig,
        eos_token_ids: Iterable[int] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if config.max_model_len is None:
            raise ValueError("SchedulerConfig.max_model_len must be resolved before scheduling")
        if cache_config.num_kv_blocks is None:
            raise ValueError("CacheConfig.num_kv_blocks must be resolved before scheduling")
        capacity = cache_config.num_kv_blocks * cache_config.block_size
        if capacity < config.max_model_len:
            raise ValueError(
                f"the KV cache holds {capacity} tokens ({cache_config.num_kv_blocks} blocks of "
                f"{cache_config.block_size}), fewer than max_model_len={config.max_model_len}: "
                "lower max_model_len or give the cache more memory"
            )
        self.config = config
        self.max_model_len = config.max_model_len
        self.block_size = cache_config.block_size
        self.block_manager = BlockManager(
            cache_config.num_kv_blocks, cache_config.block_size,
            cache_config.enable_prefix_caching,
        )
        self.eos_token_ids = frozenset(eos_token_ids)
        self.clock = clock
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # admission order: the last one is preempted first
        self.requests: dict[str, list[Sequence]] = {}  # unfinished requests' sequences
        self._freed_since_schedule: list[int] = []
        self.num_preemptions = 0

    # -- requests --------------------------------------------------------------------------

    def add(self, seqs: Sequence | list[Sequence]) -> None:
        """Queue a request: its n sibling sequences (or a single sequence when n == 1).

        Raises ValueError for a duplicate request id, a malformed sibling group, or a prompt
        that could never run (no room for one output token within max_model_len).
        """
        group = [seqs] if isinstance(seqs, Sequence) else list(seqs)
        if not group or not all(isinstance(s, Sequence) for s in group):
            raise TypeError(f"add() takes a Sequence or a list of them, got {seqs!r}")
        rid, n = group[0].request_id, group[0].sampling_params.n
        if rid in self.requests:
            raise ValueError(f"request id {rid!r} is already in the scheduler")
        if sorted(s.index for s in group) != list(range(n)) or any(
            s.request_id != rid or s.sampling_params is not group[0].sampling_params
            for s in group
        ):
            raise ValueError(f"request {rid!r}: add all n={n} siblings together "
                             "(indices 0..n-1, one request id, one SamplingParams)")
        for s in group:
            if s.status is not SequenceStatus.WAITING or s.num_output_tokens or s.block_table:
                raise ValueError(f"{s} is not a fresh sequence")
        prompt_len = group[0].num_prompt_tokens
        if prompt_len >= self.max_model_len:
            raise ValueError(
                f"request {rid!r}: the prompt has {prompt_len} tokens but max_model_len is "
                f"{self.max_model_len} (prompt + output), leaving no room for output"
            )
        self.requests[rid] = group
        self.waiting.extend(sorted(group, key=lambda s: s.index))

    def abort(self, request_id: str) -> list[Sequence]:
        """Finish every unfinished sequence of a request as aborted and free its blocks.

        Safe between ``schedule()`` and ``postprocess()`` (postprocess skips the sequence).
        Unknown or already finished ids are ignored. Returns the sequences aborted.
        """
        aborted = [s for s in self.requests.get(request_id, ()) if not s.is_finished]
        for seq in aborted:
            self._finish(seq, SequenceStatus.FINISHED_ABORTED, None)
        return aborted

    def finish(
        self,
        seq: Sequence,
        status: SequenceStatus = SequenceStatus.FINISHED_STOPPED,
        stop_reason: int | str | None = None,
    ) -> None:
        """Finish ``seq`` from outside (the detokenizer found a stop string) and free its blocks.

        On an already finished sequence (e.g. max_tokens reached in the step the stop string
        appeared) only the reason is updated; an aborted sequence stays aborted.
        """
        if not status.is_finished:
            raise ValueError(f"finish() needs a FINISHED_* status, got {status}")
        if seq.status is SequenceStatus.FINISHED_ABORTED:
            return
        if seq.is_finished:
            seq.status, seq.stop_reason = status, stop_reason
            return
        self._finish(seq, status, stop_reason)

    def _finish(self, seq: Sequence, status: SequenceStatus, stop_reason: int | str | None):
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        else:
            self.waiting.remove(seq)
        self.block_manager.free(seq)
        seq.status, seq.stop_reason = status, stop_reason
        seq.metrics.finished_time = self.clock()
        self._freed_since_schedule.append(seq.seq_id)
        group = self.requests[seq.request_id]
        if all(s.is_finished for s in group):
            del self.requests[seq.request_id]

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    @property
    def num_unfinished_requests(self) -> int:
        return len(self.requests)

    # -- one step --------------------------------------------------------------------------

    def schedule(self) -> SchedulerOutput:
        """Pick this step's tokens: running sequences first, then waiting ones (FCFS)."""
        budget = self.config.max_num_batched_tokens
        scheduled: list[ScheduledSequence] = []
        preempted: list[int] = []
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            if seq.has_placeholder and self._length_done(seq):
                i += 1  # finishes by length when its in-flight token arrives: nothing to run
                continue
            num_new = min(seq.num_tokens - seq.num_computed_tokens, budget)
            while not self.block_manager.can_allocate(seq, num_new):
                victim = self.running.pop()  # most recently admitted; never one scheduled above
                self._preempt(victim)
                preempted.append(victim.seq_id)
                if victim is seq:
                    break
            else:
                self.block_manager.allocate(seq, num_new)
                scheduled.append(self._scheduled(seq, num_new))
                budget -= num_new
                i += 1
        admitted: list[int] = []
        if not preempted:  # admitting now would only trade places with what was just preempted
            budget = self._admit_waiting(budget, scheduled, admitted)
        out = SchedulerOutput(
            scheduled=scheduled,
            num_batched_tokens=self.config.max_num_batched_tokens - budget,
            admitted_seq_ids=admitted,
            preempted_seq_ids=preempted,
            finished_seq_ids=self._freed_since_schedule,
        )
        self._freed_since_schedule = []
        return out

    def _admit_waiting(
        self, budget: int, scheduled: list[ScheduledSequence], admitted: list[int]
    ) -> int:
        deferred: list[Sequence] = []
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            seq = self.waiting[0]
            if self._sibling_computing_shared_prompt(seq):
                deferred.append(self.waiting.popleft())  # keeps its place, see below
                continue
            hits = self.block_manager.lookup(seq)
            num_new = min(seq.num_tokens - len(hits) * self.block_size, budget)
            if not self.block_manager.can_allocate(seq, num_new, hits):
                break  # FCFS: nobody overtakes the head for blocks
            self.waiting.popleft()
            self.block_manager.allocate(seq, num_new, hits)
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            admitted.append(seq.seq_id)
            scheduled.append(self._scheduled(seq, num_new))
            budget -= num_new
        self.waiting.extendleft(reversed(deferred))
        return budget

    def _sibling_computing_shared_prompt(self, seq: Sequence) -> bool:
        """A running sibling has not yet computed the prompt blocks ``seq`` would share."""
        if seq.sampling_params.n == 1 or seq.sampling_params.prompt_logprobs is not None:
            return False  # nothing to share (prompt logprobs take no cache hits)
        shareable = (seq.num_prompt_tokens - 1) // self.block_size * self.block_size
        return any(
            s is not seq and s.status is SequenceStatus.RUNNING
            and s.num_computed_tokens < shareable
            for s in self.requests[seq.request_id]
        )

    def _scheduled(self, seq: Sequence, num_new: int) -> ScheduledSequence:
        if seq.metrics.first_scheduled_time is None:
            seq.metrics.first_scheduled_time = self.clock()
        return ScheduledSequence(
            seq=seq,
            num_computed_tokens=seq.num_computed_tokens,
            num_new_tokens=num_new,
            block_table=list(seq.block_table),
            sample=seq.num_computed_tokens + num_new == seq.num_tokens,
        )

    def _preempt(self, seq: Sequence) -> None:
        self.block_manager.free(seq)
        seq.num_computed_tokens = 0
        seq.status = SequenceStatus.PREEMPTED
        seq.metrics.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)
        logger.debug("preempted %s (KV cache full); it will recompute", seq)

    def commit(self, out: SchedulerOutput) -> None:
        """Async scheduling: step ``out`` was launched; record its progress now (so the next
        ``schedule()`` continues after it) and give each sampling sequence a placeholder for
        the token it will sample. Sequences finished since ``schedule()`` are skipped."""
        for s in out.scheduled:
            seq = s.seq
            if seq.status is not SequenceStatus.RUNNING:
                continue
            seq.num_computed_tokens = s.seq_len
            if s.sample:
                seq.append_placeholder()

    def postprocess(
        self, out: SchedulerOutput, sampled_token_ids: list[int], logprobs: list[Any] | None = None,
        committed: bool = False,
    ) -> list[Sequence]:
        """Record a computed step: advance progress, append sampled tokens, check stops.

        Args:
            out: the step's schedule.
            sampled_token_ids: one token per ``out.sampling`` entry, in order.
            logprobs: optional, one entry (with a ``.logprob`` float) per sampled token.
            committed: ``commit(out)`` already recorded the progress (async scheduling): the
                tokens replace placeholders, also of sequences preempted since, and a
                sequence that finished or was aborted in between drops its placeholder.
        Returns:
            The sequences that got a token this step (finished ones included), in order.
        """
        if len(sampled_token_ids) != len(out.sampling):
            raise ValueError(f"got {len(sampled_token_ids)} sampled tokens for "
                             f"{len(out.sampling)} sampling sequences")
        if logprobs is not None and len(logprobs) != len(sampled_token_ids):
            raise ValueError(f"got {len(logprobs)} logprobs for {len(sampled_token_ids)} tokens")
        now = self.clock()
        updated = []
        k = 0
        for s in out.scheduled:
            seq = s.seq
            if s.sample:
                token_id = sampled_token_ids[k]
                logprob = None if logprobs is None else logprobs[k]
                k += 1
            if committed:
                if seq.status is SequenceStatus.RUNNING:
                    self.block_manager.cache_full_blocks(seq)
                if not (s.sample and seq.has_placeholder):
                    continue  # no token, or finished before commit(out)
                if seq.is_finished:  # aborted (or stopped) after commit(out)
                    seq.drop_placeholder()
                    continue
                seq.resolve_placeholder(token_id)
            else:
                if seq.status is not SequenceStatus.RUNNING:  # aborted while the step ran
                    continue
                seq.num_computed_tokens = s.seq_len
                self.block_manager.cache_full_blocks(seq)
                if not s.sample:
                    continue
                seq.append_token(token_id, logprob)
            if seq.metrics.first_token_time is None:
                seq.metrics.first_token_time = now
            seq.metrics.last_token_time = now
            stop = self._check_stop(seq, token_id)
            if stop is not None:
                self._finish(seq, *stop)
            updated.append(seq)
        return updated

    def _length_done(self, seq: Sequence) -> bool:
        """The sequence reaches max_tokens or max_model_len with its newest token."""
        p = seq.sampling_params
        return ((p.max_tokens is not None and seq.num_output_tokens >= p.max_tokens)
                or seq.num_tokens >= self.max_model_len)

    def _check_stop(
        self, seq: Sequence, token_id: int
    ) -> tuple[SequenceStatus, int | None] | None:
        """Token-level stop conditions after ``token_id`` was appended (stop strings: finish())."""
        p = seq.sampling_params
        n_out = seq.num_output_tokens
        if n_out >= p.min_tokens:
            if not p.ignore_eos and token_id in self.eos_token_ids:
                return SequenceStatus.FINISHED_STOPPED, None
            if token_id in p.stop_token_ids:
                return SequenceStatus.FINISHED_STOPPED, token_id
        if self._length_done(seq):
            return SequenceStatus.FINISHED_LENGTH, None
        return None

    # -- introspection ---------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        bm = self.block_manager
        return {
            "num_running": len(self.running),
            "num_waiting": len(self.waiting),
            "kv_cache_usage": bm.usage,
            "prefix_cache_queries": bm.prefix_cache_queries,
            "prefix_cache_hits": bm.prefix_cache_hits,
            "num_preemptions": self.num_preemptions,
        }

    def check_invariants(self) -> None:
        """Raise AssertionError when queues, statuses and blocks disagree (tests, every step)."""
        self.block_manager.check_invariants()

        def fail(msg: str) -> None:
            raise AssertionError(f"Scheduler invariant: {msg}")

        if len(self.running) > self.config.max_num_seqs:
            fail(f"{len(self.running)} running > max_num_seqs {self.config.max_num_seqs}")
        for seq in self.running:
            if seq.status is not SequenceStatus.RUNNING or not seq.block_table:
                fail(f"running {seq} is not RUNNING or holds no blocks")
            if len(seq.block_table) < -(-seq.num_computed_tokens // self.block_size):
                fail(f"{seq} has computed tokens outside its blocks")
        for seq in self.waiting:
            if seq.status not in (SequenceStatus.WAITING, SequenceStatus.PREEMPTED):
                fail(f"waiting {seq} has status {seq.status}")
            if seq.block_table or seq.num_computed_tokens:
                fail(f"waiting {seq} holds blocks or progress")
            if seq.has_placeholder:  # resolved in the same step() that preempted it
                fail(f"waiting {seq} still waits for an in-flight token")
        live = {s.seq_id for s in self.running} | {s.seq_id for s in self.waiting}
        if len(live) != len(self.running) + len(self.waiting):
            fail("a sequence is queued twice")
        if set(self.block_manager._holders) != {s.seq_id for s in self.running}:
            fail("block holders are not exactly the running sequences")
        for rid, group in self.requests.items():
            for seq in group:
                if seq.is_finished == (seq.seq_id in live):
                    fail(f"request {rid!r}: {seq} is finished yet queued, or lost")
