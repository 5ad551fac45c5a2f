"""Accuracy cost of an fp8 (e4m3) KV cache on a real model, through ``forward_paged``.

Runs the embedded SmolLM2-135M (or ``--model``) on one prompt: prefill in chunks, then
``--steps`` greedy decode steps with a full-precision cache; then replays exactly the same
tokens (teacher forcing) with an fp8 cache and compares the next-token logits of every decode
step: max |dlogit|, mean KL(p_ref || p_fp8), top-1 agreement. Also reports the per-layer K/V
absolute maxima, since an fp8 cache with scale s saturates at 448 * s.

    python benchmarks/kv_fp8_accuracy.py --out fp8.json                   # CPU, fp32 model
    python benchmarks/kv_fp8_accuracy.py --device cuda --dtype bf16 --out fp8.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import math

import torch

from tritium.ops.paged_attention import AttentionMetadata

PROMPT = (
    "The history of the printing press begins in the fifteenth century, when Johannes "
    "Gutenberg combined movable metal type, oil-based ink and a wooden screw press. Before "
    "that, books were copied by hand, which made them rare and expensive. Within fifty years "
    "presses were running in more than two hundred European cities, and the price of books "
    "fell sharply. Explain, step by step, why this invention changed science, religion and "
    "politics, and compare it with the arrival of the internet in the late twentieth century."
)
BLOCK = 16


def run(model, ids: list[int], n_prompt: int, cache_dtype, chunk: int, steps: int):
    """Prefill ``ids[:n_prompt]`` in chunks, then ``steps`` decode steps: teacher-forced on
    ``ids[n_prompt:]`` where given, greedy past it. Returns (all ids, logits (steps, V) of the
    next token after the prompt and after each decoded token but the last, the caches)."""
    cfg = model.config
    dev = model.model.embed_tokens.weight.device
    ids = list(ids)
    nblk = math.ceil((n_prompt + steps) / BLOCK) + 1
    shape = (nblk, BLOCK, cfg.num_key_value_heads, cfg.head_dim)
    caches = [(torch.zeros(shape, device=dev).to(cache_dtype),
               torch.zeros(shape, device=dev).to(cache_dtype))
              for _ in range(cfg.num_hidden_layers)]
    table = torch.arange(nblk, dtype=torch.int32, device=dev)[None]
    logits = []
    bounds = list(range(0, n_prompt, chunk)) + list(range(n_prompt, n_prompt + steps))
    for i, s in enumerate(bounds):
        e = bounds[i + 1] if i + 1 < len(bounds) else n_prompt + steps
        if e > len(ids):
            ids.append(int(logits[-1].argmax()))  # greedy past the given tokens
        pos = torch.arange(s, e, device=dev)
        meta = AttentionMetadata(
            slot_mapping=pos, block_tables=table,
            seq_lens=torch.tensor([e], dtype=torch.int32, device=dev),
            cu_seqlens_q=torch.tensor([0, e - s], dtype=torch.int32, device=dev),
            max_seqlen_q=e - s, max_seqlen_k=e, decode_only=e - s == 1)
        h = model.forward_paged(torch.tensor(ids[s:e], device=dev), pos, caches, meta)
        if e >= n_prompt:
            logits.append(model.compute_logits(h[-1:]).float()[0])
    return ids, torch.stack(logits[:steps]), caches


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="checkpoint (default: embedded SmolLM2-135M)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32")
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--chunk", type=int, default=64, help="prefill chunk (tokens)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    from tritium.models.registry import load_model

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    model, tok, _ = load_model(args.model, device=args.device, dtype=dtype)
    prompt = tok.apply_chat_template([{"role": "user", "content": PROMPT}], tokenize=False,
                                     add_generation_prompt=True)
    ids = tok(prompt)["input_ids"]
    n_prompt = len(ids)
    with torch.inference_mode():
        # greedy with the full-precision cache fixes the tokens; fp8 replays them
        ids, ref, caches = run(model, ids, n_prompt, dtype, args.chunk, args.steps)
        _, fp8, _ = run(model, ids, n_prompt, torch.float8_e4m3fn, args.chunk, args.steps)
        # per layer (max |k|, max |v|) over every cached token (unused slots hold 0)
        amax = [(kc.abs().max().item(), vc.abs().max().item()) for kc, vc in caches]
    lp_ref, lp_8 = ref.log_softmax(-1), fp8.log_softmax(-1)
    kl = (lp_ref.exp() * (lp_ref - lp_8)).sum(-1)  # (steps,)
    res = {
        "benchmark": "kv_fp8_accuracy",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "prompt_tokens": n_prompt, "decode_steps": args.steps, "k_scale": 1.0, "v_scale": 1.0,
        "max_abs_dlogit": (ref - fp8).abs().max().item(),
        "mean_abs_dlogit": (ref - fp8).abs().mean().item(),
        "logit_rms": ref.pow(2).mean().sqrt().item(),
        "mean_kl": kl.mean().item(), "max_kl": kl.max().item(),
        "top1_agreement": (ref.argmax(-1) == fp8.argmax(-1)).float().mean().item(),
        "kv_amax_per_layer": amax,
        "fp8_saturates": any(max(a) > 448 for a in amax),
    }
    print(f"prompt {n_prompt} tokens, {args.steps} teacher-forced decode steps, "
          f"{args.dtype} model, fp8 scale 1.0 vs {args.dtype} cache:")
    for key in ("max_abs_dlogit", "mean_abs_dlogit", "logit_rms", "mean_kl", "max_kl",
                "top1_agreement"):
        print(f"  {key:<16} {res[key]:.4g}")
    print(f"  K/V amax over layers: {max(a for a, _ in amax):.1f} / "
          f"{max(b for _, b in amax):.1f} (fp8 saturates at 448 x scale)")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)
    return res


if __name__ == "__main__":
    main()
