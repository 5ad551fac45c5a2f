"""Request/sequence/scheduler factories and a fake model that reads a simulated paged KV cache.

The fake model stores each computed token (and its position) in the slot its block table names,
and computes the next token from the context it *reads back* through the block table. So a
block shared wrongly, reused while still in use, or left stale after preemption changes the
generated tokens, and the tests compare them with a plain per-request reference loop.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Sequence as SequenceABC

from tritium.engine.config import CacheConfig, SchedulerConfig
from tritium.engine.sampling_params import SamplingParams
from tritium.engine.scheduler import Scheduler, SchedulerOutput
from tritium.engine.sequence import Sequence, create_sequences

VOCAB_SIZE = 50
EOS = 0


def make_params(**kw) -> SamplingParams:
    kw.setdefault("max_tokens", 8)
    kw.setdefault("seed", 1234)
    return SamplingParams(**kw)


def make_request(
    request_id: str, prompt: SequenceABC[int] | int, arrival_time: float = 0.0, **params
) -> list[Sequence]:
    """The n sibling sequences of a request; ``prompt`` as token ids or a length (tokens 1..)."""
    tokens = list(range(1, prompt + 1)) if isinstance(prompt, int) else list(prompt)
    return create_sequences(request_id, tokens, make_params(**params), arrival_time=arrival_time)


def make_scheduler(
    num_blocks: int = 64,
    block_size: int = 4,
    max_num_seqs: int = 8,
    max_num_batched_tokens: int = 32,
    max_model_len: int = 64,
    enable_prefix_caching: bool = True,
    eos_token_ids: SequenceABC[int] = (EOS,),
    clock=None,
) -> Scheduler:
    config = SchedulerConfig(max_num_seqs=max_num_seqs,
                             max_num_batched_tokens=max_num_batched_tokens,
                             max_model_len=max_model_len)
    cache = CacheConfig(block_size=block_size, num_kv_blocks=num_blocks,
                        enable_prefix_caching=enable_prefix_caching)
    kw = {} if clock is None else {"clock": clock}
    return Scheduler(config, cache, eos_token_ids=eos_token_ids, **kw)


def next_token(context: SequenceABC[int], seed: int, step: int) -> int:
    """A deterministic 'model + seeded sampler': depends on every context token."""
    h = hashlib.blake2b(array("q", [seed, step, *context]).tobytes(), digest_size=8)
    return int.from_bytes(h.digest(), "little") % VOCAB_SIZE


class FakeModel:
    """Writes each scheduled token into its KV slot, then samples from the context read back."""

    def __init__(self, num_blocks: int, block_size: int) -> None:
        self.block_size = block_size
        self.kv: list[tuple[int, int] | None] = [None] * (num_blocks * block_size)

    def _slot(self, block_table: list[int], pos: int) -> int:
        return block_table[pos // self.block_size] * self.block_size + pos % self.block_size

    def step(self, out: SchedulerOutput) -> list[int]:
        # Like every attention layer: write all new K/V first, then attend.
        for s in out.scheduled:
            for j, tok in enumerate(s.token_ids):
                pos = s.num_computed_tokens + j
                self.kv[self._slot(s.block_table, pos)] = (tok, pos)
        for s in out.scheduled:
            context = [self.kv[self._slot(s.block_table, p)] for p in range(s.seq_len)]
            expected = [(t, p) for p, t in enumerate(s.seq.token_ids[: s.seq_len])]
            if context != expected:
                bad = next(p for p in range(s.seq_len) if context[p] != expected[p])
                raise AssertionError(f"{s.seq}: KV slot of position {bad} holds {context[bad]}, "
                                     f"expected {expected[bad]}")
        return [next_token(s.seq.token_ids[: s.seq_len], s.seq.seed, s.seq.num_output_tokens)
                for s in out.sampling]


def reference_generate(
    prompt: SequenceABC[int], params: SamplingParams, seed: int, max_model_len: int,
    eos_token_ids: SequenceABC[int] = (EOS,),
) -> tuple[list[int], str, int | None]:
    """What one request alone must produce: (output tokens, finish_reason, stop_reason)."""
    tokens, out = list(prompt), []
    while True:
        t = next_token(tokens, seed, len(out))
        tokens.append(t)
        out.append(t)
        can_stop = len(out) >= params.min_tokens
        if can_stop and not params.ignore_eos and t in eos_token_ids:
            return out, "stop", None
        if can_stop and t in params.stop_token_ids:
            return out, "stop", t
        if params.max_tokens is not None and len(out) >= params.max_tokens:
            return out, "length", None
        if len(tokens) >= max_model_len:
            return out, "length", None


def run_to_completion(sched: Scheduler, model: FakeModel, max_steps: int = 10_000) -> int:
    """Step until nothing is left, checking invariants after every step; returns steps taken."""
    for step in range(max_steps):
        if not sched.has_unfinished_requests():
            return step
        out = sched.schedule()
        check_step(sched, out)
        sched.postprocess(out, model.step(out))
        sched.check_invariants()
    raise AssertionError(f"not finished after {max_steps} steps")


def check_step(sched: Scheduler, out: SchedulerOutput) -> None:
    """Per-step contract of a SchedulerOutput."""
    cfg = sched.config
    total = sum(s.num_new_tokens for s in out.scheduled)
    assert total == out.num_batched_tokens <= cfg.max_num_batched_tokens
    assert len(out.scheduled) <= cfg.max_num_seqs
    assert len({s.seq.seq_id for s in out.scheduled}) == len(out.scheduled)
    for s in out.scheduled:
        assert s.num_new_tokens >= 1
        assert s.seq_len <= s.seq.num_tokens
        assert s.sample == (s.seq_len == s.seq.num_tokens)
        assert len(s.block_table) * sched.block_size >= s.seq_len
    # Progress: something runs whenever anything is unfinished.
    if sched.has_unfinished_requests() and (sched.running or sched.waiting):
        assert out.scheduled, "a step scheduled nothing while requests wait"
