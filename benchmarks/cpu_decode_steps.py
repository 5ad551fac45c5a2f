"""CPU engine decode-step time by batch size (embedded model, fp32, no GPU).

For each batch size, submits that many requests of ``--prompt-len`` random tokens, prefills
them, then times every decode step until they finish; prints the median and minimum.

    python benchmarks/cpu_decode_steps.py --threads 2 --batches 1 8 24
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch

from tritium.engine.config import EngineConfig
from tritium.engine.llm_engine import LLMEngine
from tritium.engine.sampling_params import SamplingParams


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 24])
    p.add_argument("--prompt-len", type=int, default=200)
    p.add_argument("--new-tokens", type=int, default=12)
    p.add_argument("--model", default=None, help="default: the embedded SmolLM2-135M")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    eng = LLMEngine(EngineConfig(model=args.model, device="cpu", dtype="float32",
                                 skip_tokenizer_init=True))
    vocab = eng.model_config.vocab_size
    rng = random.Random(0)
    for n in args.batches:
        params = SamplingParams(temperature=1.0, max_tokens=args.new_tokens, ignore_eos=True)
        for i in range(n):
            eng.add_request(f"{n}-{i}", [rng.randrange(vocab) for _ in range(args.prompt_len)],
                            params)
        eng.step(final_only=True)  # prefill
        eng.step(final_only=True)
        times = []
        while eng.has_unfinished_requests():
            t0 = time.perf_counter()
            eng.step(final_only=True)
            times.append(time.perf_counter() - t0)
        print(f"batch {n:>3}: decode step median {1e3 * statistics.median(times):.0f} ms "
              f"(min {1e3 * min(times):.0f})", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
