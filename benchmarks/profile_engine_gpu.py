"""Where does a GPU engine step go? (not a test: needs CUDA; run on a lent GPU)

Builds ``LLMEngine`` on a random-weight model, submits N requests with prompts of
``--prompt-len`` tokens, steps until every request has decoded a few tokens, then for
``--steps`` decode-only steps measures, per step:

- wall time of each phase (``schedule``, ``runner.run``, ``postprocess``) with the GPU
  synchronised around ``runner.run`` so host and device time can be told apart;
- the GPU time of one decode step's forward alone (CUDA events around ``model.forward_paged``
  with inputs prepared beforehand) and of the sampler alone at this batch;

and writes a ``torch.profiler`` table (top ops by CUDA time and by CPU time) for two steps.

    python benchmarks/profile_engine_gpu.py --model random:llama3-8b --num-seqs 256 \
        --out profile.json
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time

import torch

from tritium.engine.config import CacheConfig, EngineConfig, SchedulerConfig
from tritium.engine.llm_engine import LLMEngine
from tritium.engine.model_runner import pack_step
from tritium.engine.sampling_params import SamplingParams


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class _WallEvent:
    """CPU stand-in for torch.cuda.Event (lets the script be smoke-tested without a GPU)."""

    def record(self) -> None:
        self.t = time.perf_counter()

    def elapsed_time(self, other: _WallEvent) -> float:
        return 1e3 * (other.t - self.t)


def _event():
    if torch.cuda.is_available():
        return torch.cuda.Event(enable_timing=True)
    return _WallEvent()


def phase_times(engine: LLMEngine, steps: int) -> dict[str, float]:
    """Median ms per phase over ``steps`` decode steps (GPU synchronised around the model)."""
    sched, run, post, total = [], [], [], []
    for _ in range(steps):
        _sync()
        t0 = time.perf_counter()
        out = engine.scheduler.schedule()
        t1 = time.perf_counter()
        result = engine.runner.run(out)  # ends with the host sync of .tolist()
        _sync()
        t2 = time.perf_counter()
        engine.scheduler.postprocess(out, result.sampled_token_ids, result.logprobs)
        t3 = time.perf_counter()
        sched.append(t1 - t0)
        run.append(t2 - t1)
        post.append(t3 - t2)
        total.append(t3 - t0)
    med = lambda xs: 1e3 * statistics.median(xs)  # noqa: E731
    return {"schedule_ms": med(sched), "run_ms": med(run), "postprocess_ms": med(post),
            "step_ms": med(total)}


def forward_gpu_time(engine: LLMEngine, reps: int = 5) -> dict[str, float]:
    """GPU ms of the forward alone, and of the sampler alone, for the next decode batch."""
    runner = engine.runner
    out = engine.scheduler.schedule()
    ids, pos, meta = runner.device_inputs(pack_step(out, runner.block_size))
    start, end = _event(), _event()
    res = {}
    with torch.inference_mode():
        hidden = runner.model.forward_paged(ids, pos, runner.kv_caches, meta)  # warm
        _sync()
        t0 = time.perf_counter()
        start.record()
        for _ in range(reps):
            hidden = runner.model.forward_paged(ids, pos, runner.kv_caches, meta)
        end.record()
        _sync()
        res["forward_gpu_ms"] = start.elapsed_time(end) / reps
        res["forward_wall_ms"] = 1e3 * (time.perf_counter() - t0) / reps
        logits = runner.model.compute_logits(hidden).float()
        start.record()
        for _ in range(reps):
            runner.model.compute_logits(hidden).float()
        end.record()
        _sync()
        res["lm_head_gpu_ms"] = start.elapsed_time(end) / reps
    # put the scheduled step back through the normal path so the engine stays consistent
    result = runner.run(out)
    engine.scheduler.postprocess(out, result.sampled_token_ids, result.logprobs)
    from tritium.engine.sampler import SamplingMetadata

    seqs = [s.seq for s in out.sampling]
    t0 = time.perf_counter()
    for _ in range(reps):
        smeta = SamplingMetadata.build(
            [q.sampling_params for q in seqs], [q.prompt_token_ids for q in seqs],
            [q.output_token_ids for q in seqs], [q.seed for q in seqs],
            runner.eos_token_ids, runner.vocab_size, runner.device)
        runner.sampler(logits[: len(seqs)], smeta).tolist()
    _sync()
    res["sampler_wall_ms"] = 1e3 * (time.perf_counter() - t0) / reps
    return res


def profile_table(engine: LLMEngine, steps: int = 2) -> tuple[str, str]:
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=acts) as prof:
        for _ in range(steps):
            engine.step(final_only=True)
        _sync()
    ka = prof.key_averages()
    by_dev = "cuda_time_total" if torch.cuda.is_available() else "cpu_time_total"
    return (ka.table(sort_by=by_dev, row_limit=25),
            ka.table(sort_by="cpu_time_total", row_limit=25))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="random:llama3-8b")
    p.add_argument("--num-seqs", type=int, default=256)
    p.add_argument("--prompt-len", type=int, default=512)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--enforce-eager", action="store_true",
                   help="passed to EngineConfig when it has the field (CUDA graphs off)")
    p.add_argument("--device", default="cuda", help="cpu only to smoke-test the script")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--max-num-batched-tokens", type=int, default=8192)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("needs CUDA (or --device cpu for a smoke test)", file=sys.stderr)
        return 2
    extra = {}
    if args.enforce_eager and "enforce_eager" in EngineConfig.__dataclass_fields__:
        extra["enforce_eager"] = True
    t0 = time.perf_counter()
    engine = LLMEngine(EngineConfig(
        model=args.model, device=args.device, dtype=args.dtype, skip_tokenizer_init=True,
        scheduler=SchedulerConfig(max_num_seqs=args.num_seqs,
                                  max_num_batched_tokens=args.max_num_batched_tokens,
                                  max_model_len=4096),
        cache=CacheConfig(block_size=16), **extra,
    ))
    print(f"engine ready in {time.perf_counter() - t0:.1f} s", flush=True)
    rng = random.Random(0)
    vocab = engine.model_config.vocab_size
    params = SamplingParams(temperature=args.temperature, max_tokens=10_000, ignore_eos=True,
                            seed=None)
    for i in range(args.num_seqs):
        engine.add_request(str(i), [rng.randrange(vocab) for _ in range(args.prompt_len)],
                           params)
    # prefill everything and a few decode steps
    while engine.scheduler.waiting or any(
            s.num_output_tokens < 3 for s in engine.scheduler.running):
        engine.step(final_only=True)
    report: dict = {"model": args.model, "num_seqs": args.num_seqs,
                    "prompt_len": args.prompt_len, "temperature": args.temperature,
                    "torch": torch.__version__,
                    "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu"}
    report.update(phase_times(engine, args.steps))
    report.update(forward_gpu_time(engine))
    by_cuda, by_cpu = profile_table(engine)
    report["profile_by_cuda"] = by_cuda
    report["profile_by_cpu"] = by_cpu
    for k, v in report.items():
        if not k.startswith("profile"):
            print(f"{k:>18}: {v:.2f}" if isinstance(v, float) else f"{k:>18}: {v}")
    print(by_cuda)
    print(by_cpu)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
