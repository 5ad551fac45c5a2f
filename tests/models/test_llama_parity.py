"""Greedy parity with Hugging Face transformers on the embedded SmolLM2-135M-Instruct GGUF (CPU,
float32): same generated tokens, same logits; and the model's plain and paged paths agree."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_thread")

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Write a haiku about GPUs."}],
    [{"role": "user", "content": "Explain recursion in one sentence."}],
    [{"role": "system", "content": "You answer in French."},
     {"role": "user", "content": "How are you today?"}],
    [{"role": "user", "content": "My name is Ada."},
     {"role": "assistant", "content": "Nice to meet you, Ada!"},
     {"role": "user", "content": "What is my name, and what is 12 + 30?"}],
]
NUM_TOKENS = 32

# Both sides compute in fp32 from the same dequantized weights; they differ only in summation
# order (fused qkv / gate_up matmuls, fused residual add), which over 30 layers moves logits of
# magnitude ~20-40 by ~1e-4 at most (measured 7e-5).
LOGIT_ATOL, LOGIT_RTOL = 5e-4, 1e-5


def _prompt_ids(tokenizer, messages) -> list[int]:
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@pytest.fixture(scope="module")
def prompts(smollm):
    _, tokenizer, _ = smollm
    return [_prompt_ids(tokenizer, m) for m in CONVERSATIONS]


@pytest.fixture(scope="module")
def hf_greedy(hf_smollm, prompts):
    """HF generate, greedy, 32 new tokens each, past EOS (so all 32 positions are compared).

    The attention mask is explicit: the prompts contain <|im_end|> (id 2), which is also the
    pad id, and HF would otherwise mask those tokens out.
    """
    out = []
    with torch.no_grad():
        for ids in prompts:
            x = torch.tensor([ids])
            gen = hf_smollm.generate(
                x, attention_mask=torch.ones_like(x), do_sample=False,
                max_new_tokens=NUM_TOKENS, eos_token_id=None, pad_token_id=0,
            )
            out.append(gen[0, len(ids):].tolist())
    return out


@pytest.mark.parametrize("i", range(len(CONVERSATIONS)))
def test_greedy_tokens_match_hf(smollm, prompts, hf_greedy, i, paged_run):
    """Our greedy pick equals HF's at every one of its 32 steps, given the same prefix: by
    induction the two greedy generations are identical. Runs through the engine path: the
    prompt prefilled in one step, then one decode step per token."""
    model, tokenizer, _ = smollm
    ref = hf_greedy[i]
    assert len(ref) == NUM_TOKENS
    n = len(prompts[i])
    (logits,) = paged_run(model, [prompts[i] + ref[:-1]], chunks=[n, 1])
    ours = logits[n - 1 :].argmax(-1).tolist()  # the pick after each prefix
    assert ours == ref, (tokenizer.decode(ours), tokenizer.decode(ref))


def test_last_position_logits_match_hf(smollm, hf_smollm, prompts, paged_run):
    model, _, _ = smollm
    for ids in prompts:
        x = torch.tensor([ids])
        with torch.no_grad():
            ref = hf_smollm(x, attention_mask=torch.ones_like(x)).logits[0, -1]
            plain = model(x)[0, -1]
        paged = paged_run(model, [ids], chunks=[len(ids)], block_size=16)[0][-1]
        assert ref.abs().max() > 10  # real logits, not a degenerate model
        torch.testing.assert_close(plain, ref, atol=LOGIT_ATOL, rtol=LOGIT_RTOL)
        torch.testing.assert_close(paged, ref, atol=LOGIT_ATOL, rtol=LOGIT_RTOL)


@pytest.mark.parametrize("chunks", [[1000], [13, 8, 1]], ids=["one-go", "chunks-then-decode"])
def test_plain_and_paged_paths_agree(smollm, prompts, hf_greedy, paged_run, chunks):
    """Every position's logits, two sequences of different lengths packed per step (whole
    prefill; or prefill in chunks of 13 and 8, then one token per step), against one plain
    causal forward each. (Pure token-by-token decoding is what the greedy test runs.)"""
    model, _, _ = smollm
    seqs = [prompts[0] + hf_greedy[0][:8], prompts[1]]
    assert len(seqs[0]) > 13 + 8 + 10 and len(seqs[1]) > 13 + 8 + 5  # decode steps happen
    outs = paged_run(model, seqs, chunks=chunks, block_size=16)
    for seq, out in zip(seqs, outs):
        with torch.no_grad():
            plain = model(torch.tensor([seq]))[0]
        # same weights on both sides, only the attention op differs (paged vs contiguous):
        # the same summation-order argument and tolerance as against HF
        torch.testing.assert_close(out, plain, atol=LOGIT_ATOL, rtol=LOGIT_RTOL)


# bf16 keeps 8 mantissa bits, fp16 11: over 30 layers the logits drift by ~3% (bf16) and ~0.3%
# (fp16) of their norm (measured); the bounds are 2x that. A dtype bug (e.g. the fp32 rope table
# cast to half, or an fp16 overflow) gives errors of order 100%.
@pytest.mark.parametrize("dtype, rel_tol", [(torch.bfloat16, 0.07), (torch.float16, 0.007)])
def test_half_precision_close_to_float32(smollm, embedded_checkpoint, prompts, dtype, rel_tol):
    from tritium.models import build_model

    model32 = smollm[0]
    ckpt = embedded_checkpoint
    model = build_model(ckpt.config, ckpt.state_dict, device="cpu", dtype=dtype)
    assert model.model.embed_tokens.weight.dtype == dtype
    assert model.model.rotary_emb.cos_sin_cache.dtype == torch.float32
    ids = torch.tensor([prompts[1]])
    pos = torch.arange(ids.shape[1])[None]
    with torch.no_grad():
        ref = model32.compute_logits(model32.model(ids, pos))[0]
        out = model.compute_logits(model.model(ids, pos))[0]
    assert out.dtype == torch.float32  # logits for sampling are fp32 whatever the model dtype
    assert (out - ref).norm() / ref.norm() < rel_tol
    assert (out.argmax(-1) == ref.argmax(-1)).float().mean() > 0.9
