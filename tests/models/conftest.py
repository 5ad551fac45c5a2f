"""Shared fixtures for model tests: the embedded GGUF loaded once per session (ours and Hugging
Face's), and a runner that drives ``forward_paged`` the way the engine will."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import pytest
import torch

from tritium.ops.paged_attention import AttentionMetadata


@pytest.fixture(scope="session")
def one_thread():
    """The CPU is shared by several test runs at once: one thread per process avoids OpenMP
    spin-waiting, which made decode steps ~10x slower here with 2 threads under load."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def embedded_checkpoint():
    from tritium.models.loader import load_checkpoint

    return load_checkpoint()


@pytest.fixture(scope="session")
def smollm(embedded_checkpoint, one_thread):
    """(model, tokenizer, config): our model on the embedded GGUF, CPU float32."""
    from tritium.models import build_model

    ckpt = embedded_checkpoint
    model = build_model(ckpt.config, ckpt.state_dict, device="cpu", dtype=torch.float32)
    return model, ckpt.tokenizer, ckpt.config


@pytest.fixture(scope="session")
def hf_smollm(embedded_checkpoint):
    """Hugging Face transformers' own model on the same GGUF file, CPU float32."""
    from transformers import AutoModelForCausalLM

    path = embedded_checkpoint.path
    model = AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32
    )
    return model.eval()


def _paged_run(
    model: torch.nn.Module,
    seqs: Sequence[Sequence[int]],
    chunks: Sequence[int],
    block_size: int = 4,
) -> list[torch.Tensor]:
    """Feed every sequence through ``model.forward_paged``, all sequences packed in each step.

    Step s gives each unfinished sequence its next ``chunks[s]`` tokens (the last entry repeats:
    [5, 3, 1] = prefill 5, then 3, then decode one at a time). Blocks are interleaved across
    sequences (seq i owns blocks i, i+N, i+2N, ...) so a wrong block-table lookup shows up.
    Returns per sequence the logits (len, V) of every token, in order.
    """
    cfg = model.config
    N = len(seqs)
    max_len = max(len(s) for s in seqs)
    blocks_per_seq = -(-max_len // block_size)
    w = model.model.embed_tokens.weight
    shape = (N * blocks_per_seq, block_size, cfg.num_key_value_heads, cfg.head_dim)
    kv = [(torch.zeros(shape, dtype=w.dtype), torch.zeros(shape, dtype=w.dtype))
          for _ in range(cfg.num_hidden_layers)]
    tables = torch.tensor([[i + N * j for j in range(blocks_per_seq)] for i in range(N)],
                          dtype=torch.int32)  # (N, blocks_per_seq)
    done = [0] * N
    out: list[list[torch.Tensor]] = [[] for _ in range(N)]
    step = 0
    with torch.inference_mode():
        while any(d < len(s) for d, s in zip(done, seqs)):
            n = chunks[min(step, len(chunks) - 1)]
            active = [i for i in range(N) if done[i] < len(seqs[i])]
            ids, pos, slots, cu, lens = [], [], [], [0], []
            for i in active:
                new = list(range(done[i], min(done[i] + n, len(seqs[i]))))
                ids += [seqs[i][p] for p in new]
                pos += new
                slots += [int(tables[i, p // block_size]) * block_size + p % block_size
                          for p in new]
                cu.append(cu[-1] + len(new))
                lens.append(new[-1] + 1)
            meta = AttentionMetadata(
                slot_mapping=torch.tensor(slots),
                block_tables=tables[active],
                seq_lens=torch.tensor(lens, dtype=torch.int32),
                cu_seqlens_q=torch.tensor(cu, dtype=torch.int32),
                max_seqlen_q=max(b - a for a, b in zip(cu, cu[1:])),
                max_seqlen_k=max(lens),
                decode_only=all(b - a == 1 for a, b in zip(cu, cu[1:])),
            )
            hidden = model.forward_paged(torch.tensor(ids), torch.tensor(pos), kv, meta)
            logits = model.compute_logits(hidden)  # (T, V)
            for k, i in enumerate(active):
                out[i].append(logits[cu[k]:cu[k + 1]])
                done[i] = lens[k]
            step += 1
    return [torch.cat(o) for o in out]


@pytest.fixture
def paged_run() -> Callable[..., list[torch.Tensor]]:
    return _paged_run
