"""GPU check of the whole engine path (not a test: needs CUDA; run on a lent GPU).

``LLMEngine`` on CUDA (Triton paged prefill/decode, fused RoPE + KV write, RMSNorm, SwiGLU,
chunked prefill, mixed prefill/decode steps) generates greedily from random-weight models; each
generated token is then judged by the plain-PyTorch fp32 reference forward on the CPU over the
same weights (teacher forcing). Random weights give flat logits where bf16 rounding can flip an
argmax, so the check is that each chosen token is *near*-optimal under fp32: the gap between the
best fp32 logit and the chosen token's fp32 logit, in units of that position's logit standard
deviation. Prints a table; writes JSON to --out.

    python benchmarks/check_engine_gpu.py --out engine_check.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import sys
import time

import torch

from tritium.engine.config import CacheConfig, EngineConfig, SchedulerConfig
from tritium.engine.llm_engine import LLMEngine
from tritium.engine.sampling_params import SamplingParams

PROMPT_LENS = [1, 17, 113, 300, 1000, 64, 5, 777]
NEW_TOKENS = 16


def run_case(preset: str, dtype: str, budget: int) -> dict:
    engine = LLMEngine(EngineConfig(
        model=f"random:{preset}", device="cuda", dtype=dtype, skip_tokenizer_init=True,
        scheduler=SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=budget,
                                  max_model_len=2048),
        cache=CacheConfig(num_kv_blocks=1024, block_size=16),
    ))
    rng = random.Random(0)
    vocab = engine.model_config.vocab_size
    prompts = [[rng.randrange(vocab) for _ in range(n)] for n in PROMPT_LENS]
    params = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True)
    for i, p in enumerate(prompts):
        engine.add_request(str(i), p, params)
    final = {}
    t0 = time.perf_counter()
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                final[out.request_id] = out.outputs[0].token_ids
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    # fp32 reference on the CPU with the very same weights (reference path: no Triton)
    ref = copy.deepcopy(engine.runner.model).to(device="cpu", dtype=torch.float32).eval()
    gaps, exact = [], 0
    with torch.inference_mode():
        for i, p in enumerate(prompts):
            gen = final[str(i)]
            ids = torch.tensor([p + gen[:-1]])
            logits = ref(ids)[0, len(p) - 1 :].float()  # predicts each generated token
            best = logits.max(-1).values
            chosen = logits.gather(1, torch.tensor(gen)[:, None])[:, 0]
            gaps.append(((best - chosen) / logits.std(-1)).max().item())
            exact += int((logits.argmax(-1) == torch.tensor(gen)).sum())
    total = len(prompts) * NEW_TOKENS
    return dict(preset=preset, dtype=dtype, token_budget=budget, elapsed_s=elapsed,
                max_gap_in_std=max(gaps), exact_argmax=exact, tokens=total,
                ok=max(gaps) < 0.5)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    os.environ.pop("TRITON_INTERPRET", None)
    if not torch.cuda.is_available():
        print("check_engine_gpu: needs CUDA", file=sys.stderr)
        return 2
    rows = []
    for preset, dtype, budget in [("smollm2-135m", "bfloat16", 8192),
                                  ("smollm2-135m", "bfloat16", 97),  # chunked, mixed steps
                                  ("smollm2-135m", "float16", 256),
                                  ("llama3-1b", "bfloat16", 512)]:
        try:
            rows.append(run_case(preset, dtype, budget))
        except Exception as e:  # record and go on: one failing case must not hide the others
            rows.append(dict(preset=preset, dtype=dtype, token_budget=budget, ok=False,
                             error=f"{type(e).__name__}: {e}"))
    print(f"{'preset':14} {'dtype':9} {'budget':>6} {'exact':>9} {'max gap/std':>11}  ok")
    for r in rows:
        if "error" in r:
            print(f"{r['preset']:14} {r['dtype']:9} {r['token_budget']:>6}  ERROR {r['error']}")
            continue
        print(f"{r['preset']:14} {r['dtype']:9} {r['token_budget']:>6} "
              f"{r['exact_argmax']:>4}/{r['tokens']:<4} {r['max_gap_in_std']:>11.3f}  {r['ok']}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(device=torch.cuda.get_device_name(), torch=torch.__version__,
                           date=time.strftime("%Y-%m-%d"), rows=rows), f, indent=1)
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
