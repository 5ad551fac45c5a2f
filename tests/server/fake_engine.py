"""A small deterministic stand-in for LLMEngine, to test server logic quickly.

Same interface as ``tritium.engine.llm_engine.LLMEngine`` (add_request / abort_request / step /
has_unfinished_requests / stats / tokenizer / max_model_len). Tokens are UTF-8 bytes (ids 0-255)
plus EOS (256); the "model" writes lowercase letters chosen by a hash of (prompt, seed, sequence
index, position), so greedy requests are reproducible from their prompt and seeded ones from their
seed. A prompt containing ``<eos:N>`` makes every sequence emit EOS as its N-th token. KV blocks
are really counted (``block_size`` tokens each), so aborts and usage can be checked.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

EOS = 256
VOCAB_SIZE = 300
_LETTERS = "abcdefghijklmnopqrstuvwxyz "


class FakeTokenizer:
    """Byte-level tokenizer with a tiny chat template."""

    eos_token_id = EOS
    bos_token_id = None
    chat_template = "fake"
    vocab_size = VOCAB_SIZE

    def __len__(self) -> int:
        return VOCAB_SIZE

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        data = bytes(i for i in ids if i < 256)
        return data.decode("utf-8", errors="replace")

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
        return ["<eos>" if i == EOS else chr(i) if i < 256 else f"<{i}>" for i in ids]

    def apply_chat_template(self, messages: list[dict], tokenize: bool = False,
                            add_generation_prompt: bool = True, **kwargs: Any) -> str:
        text = "".join(f"<{m['role']}>{m['content']}\n" for m in messages)
        return text + ("<assistant>" if add_generation_prompt else "")


@dataclass
class TokenLogprobs:
    logprob: float
    rank: int
    top_token_ids: list[int]
    top_logprobs: list[float]


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: list[TokenLogprobs] | None
    finish_reason: str | None = None
    stop_reason: str | int | None = None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    prompt_logprobs: Any
    outputs: list[CompletionOutput]
    finished: bool
    metrics: Any = None


@dataclass
class _Seq:
    index: int
    rng: random.Random | None
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    blocks: int = 0
    finish_reason: str | None = None
    stop_reason: str | int | None = None
    logprobs: list[TokenLogprobs] | None = None


@dataclass
class _Request:
    request_id: str
    prompt: str | None
    prompt_ids: list[int]
    params: Any
    seqs: list[_Seq]
    eos_at: int | None
    key: int


class FakeEngine:
    """Deterministic fake LLMEngine. ``step_delay`` seconds of sleep per step mimics compute."""

    def __init__(self, *, max_num_seqs: int = 8, num_blocks: int = 256, block_size: int = 4,
                 max_model_len: int = 512, step_delay: float = 0.0) -> None:
        self.tokenizer = FakeTokenizer()
        self.max_model_len = max_model_len
        self.model_config = SimpleNamespace(max_position_embeddings=max_model_len,
                                            vocab_size=VOCAB_SIZE)
        self.max_num_seqs = max_num_seqs
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.step_delay = step_delay
        self.free_blocks = num_blocks
        self.waiting: list[_Request] = []
        self.running: list[_Request] = []
        self.num_steps = 0
        self.num_preemptions = 0

    # -- interface --
    def add_request(self, request_id: str, prompt: str | list[int], params: Any,
                    arrival_time: float | None = None) -> None:
        if isinstance(prompt, str):
            text, ids = prompt, self.tokenizer.encode(prompt)
        else:
            text, ids = None, list(prompt)
        if not ids:
            raise ValueError("prompt is empty")
        if len(ids) >= self.max_model_len:
            raise ValueError(f"prompt of {len(ids)} tokens does not fit max_model_len "
                             f"{self.max_model_len}")
        if self._blocks_for(len(ids) + 1) * params.n > self.num_blocks:
            raise ValueError(f"prompt of {len(ids)} tokens x n={params.n} can never fit the "
                             f"{self.num_blocks}-block KV cache")
        for tid in (params.logit_bias or {}):
            if not 0 <= tid < VOCAB_SIZE:
                raise ValueError(f"logit_bias token id {tid} outside the vocabulary")
        decoded = self.tokenizer.decode(ids)
        m = re.search(r"<eos:(\d+)>", decoded)
        key = int.from_bytes(hashlib.sha256(bytes(i % 256 for i in ids)).digest()[:8], "little")
        seqs = []
        for i in range(params.n):
            if params.temperature == 0:
                rng = None
            elif params.seed is not None:
                rng = random.Random(params.seed + i)
            else:
                rng = random.Random()
            seqs.append(_Seq(i, rng, logprobs=[] if params.logprobs is not None else None))
        self.waiting.append(_Request(request_id, text, ids, params, seqs,
                                     int(m.group(1)) if m else None, key))

    def abort_request(self, request_id: str) -> None:
        for queue in (self.waiting, self.running):
            for req in list(queue):
                if req.request_id == request_id:
                    queue.remove(req)
                    self._free(req)

    def has_unfinished_requests(self) -> bool:
        return bool(self.waiting or self.running)

    def stats(self) -> dict[str, Any]:
        return {
            "num_running": sum(len(r.seqs) for r in self.running),
            "num_waiting": sum(len(r.seqs) for r in self.waiting),
            "kv_cache_usage": 1.0 - self.free_blocks / self.num_blocks,
            "num_free_blocks": self.free_blocks,
            "prefix_cache_queries": 0,
            "prefix_cache_hits": 0,
            "num_preemptions": self.num_preemptions,
        }

    def step(self) -> list[RequestOutput]:
        if self.step_delay:
            time.sleep(self.step_delay)
        self.num_steps += 1
        self._admit()
        outputs = []
        any_progress = False
        for req in list(self.running):
            progressed = False
            for seq in req.seqs:
                if seq.finish_reason is None and self._grow(req, seq):
                    self._emit(req, seq)
                    progressed = True
            finished = all(s.finish_reason is not None for s in req.seqs)
            if finished:
                self.running.remove(req)
                self._free(req)
            if progressed or finished:
                outputs.append(self._output(req, finished))
            any_progress = any_progress or progressed
        if not any_progress and self.running:
            # Out of blocks: preempt the newest request (recompute), as a real engine does.
            victim = self.running.pop()
            self._free(victim)
            self.waiting.insert(0, victim)
            self.num_preemptions += 1
        return outputs

    # -- internals --
    def _blocks_for(self, num_tokens: int) -> int:
        return math.ceil(num_tokens / self.block_size)

    def _admit(self) -> None:
        while self.waiting:
            req = self.waiting[0]
            n_running = sum(len(r.seqs) for r in self.running)
            per_seq = [self._blocks_for(len(req.prompt_ids) + len(s.token_ids) + 1)
                       for s in req.seqs]
            if n_running + len(req.seqs) > self.max_num_seqs or sum(per_seq) > self.free_blocks:
                return
            self.waiting.pop(0)
            for seq, blocks in zip(req.seqs, per_seq):
                seq.blocks = blocks
            self.free_blocks -= sum(per_seq)
            self.running.append(req)

    def _grow(self, req: _Request, seq: _Seq) -> bool:
        """Make room for one more token; False (stall this step) when no block is free."""
        need = self._blocks_for(len(req.prompt_ids) + len(seq.token_ids) + 1)
        if need > seq.blocks:
            if self.free_blocks == 0:
                return False
            self.free_blocks -= 1
            seq.blocks += 1
        return True

    def _free(self, req: _Request) -> None:
        for seq in req.seqs:
            self.free_blocks += seq.blocks
            seq.blocks = 0

    def _next_token(self, req: _Request, seq: _Seq) -> int:
        p = req.params
        pos = len(seq.token_ids)
        if req.eos_at is not None and pos + 1 == req.eos_at and not p.ignore_eos \
                and pos + 1 > p.min_tokens:
            return EOS
        if seq.rng is None:
            h = (req.key + 7919 * pos) % (2**31)
        else:
            h = seq.rng.randrange(2**31)
        return ord(_LETTERS[h % len(_LETTERS)])

    def _emit(self, req: _Request, seq: _Seq) -> None:
        p = req.params
        tok = self._next_token(req, seq)
        seq.token_ids.append(tok)
        if seq.logprobs is not None:
            alt = ord("a") if tok != ord("a") else ord("b")
            tops = [tok, alt][: p.logprobs]
            seq.logprobs.append(TokenLogprobs(-0.25, 1, tops, [-0.25, -1.5][: len(tops)]))
        if tok == EOS:
            seq.finish_reason, seq.stop_reason = "stop", None
            return
        seq.text = self.tokenizer.decode(seq.token_ids)
        for s in p.stop:
            cut = seq.text.find(s)
            if cut >= 0:
                end = cut + len(s) if p.include_stop_str_in_output else cut
                seq.text = seq.text[:end]
                seq.finish_reason, seq.stop_reason = "stop", s
                return
        total = len(req.prompt_ids) + len(seq.token_ids)
        if (p.max_tokens is not None and len(seq.token_ids) >= p.max_tokens) \
                or total >= self.max_model_len:
            seq.finish_reason = "length"

    def _output(self, req: _Request, finished: bool) -> RequestOutput:
        outs = [
            CompletionOutput(s.index, s.text, list(s.token_ids),
                             -0.25 * len(s.token_ids) if s.logprobs is not None else None,
                             list(s.logprobs) if s.logprobs is not None else None,
                             s.finish_reason, s.stop_reason)
            for s in req.seqs
        ]
        return RequestOutput(req.request_id, req.prompt, list(req.prompt_ids), None, outs,
                             finished)
