"""Interim single-request generation: a streaming loop over the model's paged (engine) path.

The continuous-batching engine (``tritium.LLM``) replaces this in the CLI later; until then it
serves ``tritium generate`` / ``tritium chat``. It allocates a small paged KV cache for one
sequence (blocks of ``BLOCK_SIZE`` tokens, block table = 0, 1, 2, ...), prefills the prompt in
chunks, then decodes one token per step, each step through ``model.forward_paged``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from tritium.ops.paged_attention import AttentionMetadata

logger = logging.getLogger(__name__)

BLOCK_SIZE = 16
PREFILL_CHUNK = 512  # tokens per prefill step: bounds the (H, chunk, context) score matrix


def check_sampling_args(max_tokens: int, temperature: float, top_p: float) -> None:
    """Raise ValueError naming the first bad value."""
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError(f"max_tokens must be an integer >= 1, got {max_tokens!r}")
    if not temperature >= 0 or math.isinf(temperature):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")


def sample_token(
    logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None
) -> int:
    """logits (V,) -> one token id. temperature 0: argmax; else softmax(logits / T) restricted
    to the smallest set of top tokens whose probability reaches ``top_p`` (nucleus)."""
    if temperature == 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True)
        # Drop a token when the tokens above it already reach top_p (the top one always stays).
        drop = (torch.cumsum(sorted_p, dim=-1) - sorted_p) >= top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_p)
    return int(torch.multinomial(probs, 1, generator=generator))


def _allocate_kv_caches(
    model: torch.nn.Module, num_blocks: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    cfg = model.config
    w = model.model.embed_tokens.weight
    shape = (num_blocks, BLOCK_SIZE, cfg.num_key_value_heads, cfg.head_dim)
    return [
        (torch.zeros(shape, dtype=w.dtype, device=w.device),
         torch.zeros(shape, dtype=w.dtype, device=w.device))
        for _ in range(cfg.num_hidden_layers)
    ]


def _step(
    model: torch.nn.Module,
    token_ids: list[int],
    start: int,
    kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
    block_table: torch.Tensor,
) -> torch.Tensor:
    """Run ``token_ids`` at positions start.. through the paged path; logits (V,) of the last."""
    device = block_table.device
    T = len(token_ids)
    positions = torch.arange(start, start + T, device=device)  # (T,)
    # Block table is the identity (block b holds positions b*BS .. b*BS+BS-1), so slot == position.
    meta = AttentionMetadata(
        slot_mapping=positions,
        block_tables=block_table,
        seq_lens=torch.tensor([start + T], dtype=torch.int32, device=device),
        cu_seqlens_q=torch.tensor([0, T], dtype=torch.int32, device=device),
        max_seqlen_q=T,
        max_seqlen_k=start + T,
        decode_only=T == 1,
    )
    ids = torch.tensor(token_ids, dtype=torch.long, device=device)
    hidden = model.forward_paged(ids, positions, kv_caches, meta)  # (T, hidden)
    return model.compute_logits(hidden[-1:])[0]  # (V,) fp32


def generate_stream(
    model: torch.nn.Module,
    tokenizer: Any,
    prompt_ids: list[int],
    max_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
    stop_token_ids: Iterable[int] | None = None,
) -> Iterator[int]:
    """Yield generated token ids one by one until a stop token (not yielded), ``max_tokens``,
    or the model's context length (prompt + output <= max_position_embeddings).

    ``stop_token_ids`` None: the config's EOS ids plus the tokenizer's. Raises ValueError for
    bad sampling values, an empty prompt, or a prompt that leaves no room in the context.
    """
    check_sampling_args(max_tokens, temperature, top_p)
    prompt_ids = [int(t) for t in prompt_ids]
    n = len(prompt_ids)
    context = model.config.max_position_embeddings
    if n == 0:
        raise ValueError("the prompt is empty (0 tokens)")
    if n >= context:
        raise ValueError(f"the prompt has {n} tokens, the model's context is {context} tokens")
    if stop_token_ids is None:
        stop_token_ids = set(model.config.eos_token_ids or [])
        if getattr(tokenizer, "eos_token_id", None) is not None:
            stop_token_ids.add(tokenizer.eos_token_id)
    stops = set(stop_token_ids)
    max_new = min(max_tokens, context - n)
    if max_new < max_tokens:
        logger.info("max_tokens %d clipped to %d by the context length", max_tokens, max_new)

    device = model.model.embed_tokens.weight.device
    # The last generated token is never fed back, so n + max_new - 1 slots suffice.
    num_blocks = math.ceil((n + max_new - 1) / BLOCK_SIZE)
    kv_caches = _allocate_kv_caches(model, num_blocks)
    block_table = torch.arange(num_blocks, dtype=torch.int32, device=device)[None]  # (1, nb)
    generator = None
    if seed is not None and temperature > 0:
        generator = torch.Generator(device=device).manual_seed(seed)

    with torch.inference_mode():
        for start in range(0, n, PREFILL_CHUNK):
            logits = _step(model, prompt_ids[start:start + PREFILL_CHUNK], start, kv_caches,
                           block_table)
        pos = n
        for i in range(max_new):
            token = sample_token(logits, temperature, top_p, generator)
            if token in stops:
                return
            yield token
            if i + 1 < max_new:
                logits = _step(model, [token], pos, kv_caches, block_table)
                pos += 1


class TextStreamer:
    """Turns a growing list of token ids into text pieces, holding back an incomplete UTF-8
    character (decoded as U+FFFD) until its last byte arrives.

    Decodes the whole output each time (O(n^2) in tokens; fine for one interactive request,
    the engine's detokenizer replaces it).
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.emitted = 0  # characters already returned

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return ""
        piece = text[self.emitted:]
        self.emitted = len(text)
        return piece

    def flush(self) -> str:
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        piece = text[self.emitted:]
        self.emitted = len(text)
        return piece

    @property
    def text(self) -> str:
        return self.tokenizer.decode(self.ids, skip_special_tokens=True)
