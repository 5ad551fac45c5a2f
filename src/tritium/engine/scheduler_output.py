"""What the scheduler hands the model runner each step. Pure Python (no torch).

Everything a runner needs to build the step's attention metadata in one pass: per scheduled
sequence its block table, how many tokens are already cached (the first new token's position),
how many are new, and whether it samples.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tritium.engine.sequence import Sequence


@dataclass
class ScheduledSequence:
    """One sequence's share of a step."""

    seq: Sequence  # the live sequence
    num_computed_tokens: int  # K/V already cached before this step = position of the 1st new token
    num_new_tokens: int  # tokens computed this step: token_ids[num_computed : num_computed + new]
    block_table: list[int]  # snapshot, covers num_computed_tokens + num_new_tokens tokens
    sample: bool  # the chunk ends at the last known token: sample the next one

    @property
    def seq_len(self) -> int:
        """Tokens in the KV cache after this step (attention's context length)."""
        return self.num_computed_tokens + self.num_new_tokens

    @property
    def token_ids(self) -> list[int]:
        """The tokens to compute this step."""
        return self.seq.token_ids[self.num_computed_tokens : self.seq_len]

    @property
    def is_prefill(self) -> bool:
        """Computes prompt tokens (or recomputes after preemption) rather than one decode."""
        return self.num_new_tokens > 1 or self.num_computed_tokens < self.seq.num_prompt_tokens


@dataclass
class SchedulerOutput:
    """What to compute in one step, and what changed since the previous one.

    The model runner packs ``scheduled`` in order (sequence i's new tokens follow sequence
    i - 1's), writes their K/V at positions ``num_computed_tokens + arange(num_new_tokens)`` of
    their block tables, and samples one token per entry of ``sampling`` (same order).
    """

    scheduled: list[ScheduledSequence]  # running sequences (admission order), then admitted ones
    num_batched_tokens: int  # sum of num_new_tokens, <= max_num_batched_tokens
    admitted_seq_ids: list[int]  # entered running this step (their first chunk starts after hits)
    preempted_seq_ids: list[int]  # freed this step and sent back to waiting (will recompute)
    finished_seq_ids: list[int]  # finished or aborted since the previous schedule(): blocks freed
    sampling: list[ScheduledSequence] = field(init=False)  # entries with sample=True, in order

    def __post_init__(self) -> None:
        self.sampling = [s for s in self.scheduled if s.sample]

    @property
    def is_empty(self) -> bool:
        return not self.scheduled

    @property
    def decode_only(self) -> bool:
        """Every scheduled sequence computes exactly one token."""
        return all(s.num_new_tokens == 1 for s in self.scheduled)
