"""Offline throughput benchmark (``tritium bench throughput``, ``benchmarks/throughput.py``).

The workload nano-vllm and ``vllm bench throughput`` publish: N requests whose prompts are
random token ids and whose input and output lengths are drawn uniformly from ranges, all
submitted at once, ``ignore_eos`` so every request produces exactly its drawn output length.
tritium's ``LLM.generate`` runs them, then the peers run the *same* requests in the same process:

- ``hf``: Hugging Face transformers ``generate`` on the same weights (copied from tritium's model
  into an HF ``*ForCausalLM`` of the same config), same dtype, same threads. It runs static
  batches of ``--hf-batch-size`` requests in submission order, left-padded to the batch's longest
  prompt, each batch generating ``max_new_tokens`` = the batch's largest output length (EOS
  disabled). Useful output tokens = each request's own output length; the rows' extra tokens
  past their own length are padding work, reported separately (``generated_tokens``).
- ``vllm``: ``vllm.LLM`` with dummy (random) weights of the same shape, when vLLM is importable.

Metrics: elapsed = wall time of the whole generate call(s), after a warm-up; output tok/s =
output tokens / elapsed; total tok/s = (input + output tokens) / elapsed. tritium's TTFT is from
submission (all requests arrive at t=0, so it includes queueing); TPOT = (last - first token
time) / (output tokens - 1) per request; both are means over requests. ``CPU s`` is the
process CPU time of the timed run (all threads): on a shared CPU, output tokens per CPU-second
with ``--threads 1`` is far less sensitive to other jobs than wall time. ``model TFLOP/s`` counts
2 x parameters (embedding excluded) per processed token: a floor on the work, attention excluded.

Defaults: on CUDA, ``random:llama3-8b`` in bf16 with 256 requests, input and output 100-1024
(nano-vllm's workload); on CPU, the embedded SmolLM2-135M in fp32 with 24 requests, input 32-256,
output 16-96 (the CPU anchor workload, a few minutes on 2 cores). ``--quick`` shrinks either.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from tritium.bench.throughput_args import add_throughput_arguments, resolve_args

__all__ = ["add_throughput_arguments", "main", "make_workload", "resolve_args", "run",
           "run_from_args"]

logger = logging.getLogger(__name__)

@dataclass
class Workload:
    """The requests: random token-id prompts and the output length each must produce."""

    prompts: list[list[int]]
    output_lens: list[int]

    @property
    def num_input_tokens(self) -> int:
        return sum(len(p) for p in self.prompts)

    @property
    def num_output_tokens(self) -> int:
        return sum(self.output_lens)


def make_workload(num_prompts: int, input_range: tuple[int, int], output_range: tuple[int, int],
                  vocab_size: int, seed: int) -> Workload:
    """``num_prompts`` requests: lengths ~ U[lo, hi] (inclusive), token ids ~ U[0, vocab)."""
    rng = random.Random(seed)
    prompts, outs = [], []
    for _ in range(num_prompts):
        n = rng.randint(*input_range)
        prompts.append([rng.randrange(vocab_size) for _ in range(n)])
        outs.append(rng.randint(*output_range))
    return Workload(prompts, outs)


@dataclass
class EngineResult:
    """One engine's run of the workload."""

    engine: str
    num_requests: int
    input_tokens: int
    output_tokens: int  # useful output tokens (each request's own length)
    elapsed_s: float
    mean_ttft_s: float | None = None
    mean_tpot_s: float | None = None
    cpu_time_s: float | None = None  # process CPU time (all threads) of the timed run
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ran(self) -> bool:
        return self.elapsed_s > 0

    @property
    def output_tps(self) -> float | None:
        return self.output_tokens / self.elapsed_s if self.ran else None

    @property
    def total_tps(self) -> float | None:
        return (self.input_tokens + self.output_tokens) / self.elapsed_s if self.ran else None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(output_tokens_per_s=self.output_tps, total_tokens_per_s=self.total_tps)
        return d


def loadavg_1min() -> float | None:
    """The host's 1-minute load average (Linux), to judge how noisy a CPU figure is."""
    try:
        with open("/proc/loadavg") as f:
            return float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


# -- tritium -------------------------------------------------------------------------------

def _build_llm(args: argparse.Namespace) -> Any:
    from tritium import LLM

    return LLM(
        args.model, tokenizer=args.tokenizer, dtype=args.dtype, device=args.device, seed=args.seed,
        block_size=args.block_size, num_kv_blocks=args.num_kv_blocks,
        gpu_memory_utilization=args.gpu_memory_utilization,
        enable_prefix_caching=args.enable_prefix_caching, kv_cache_dtype=args.kv_cache_dtype,
        cpu_kv_cache_gb=args.cpu_kv_cache_gb, max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens, max_model_len=args.max_model_len,
        skip_tokenizer_init=not args.detokenize,
        enforce_eager=getattr(args, "enforce_eager", False),
        async_scheduling=getattr(args, "async_scheduling", False),
    )


def _tritium_generate(llm: Any, wl: Workload, temperature: float, seed: int) -> list[Any]:
    from tritium import SamplingParams

    params = [SamplingParams(temperature=temperature, max_tokens=n, ignore_eos=True,
                             seed=None if temperature == 0 else seed + i)
              for i, n in enumerate(wl.output_lens)]
    return llm.generate(wl.prompts, params, use_tqdm=False)


def run_tritium(llm: Any, wl: Workload, warmup: Workload | None, args: argparse.Namespace
                ) -> EngineResult:
    """Time ``llm.generate`` over the workload (after an untimed warm-up run)."""
    if warmup is not None:
        _tritium_generate(llm, warmup, args.temperature, args.seed + 1)
    _sync(args.device)
    load_before = loadavg_1min()
    t0, c0 = time.perf_counter(), time.process_time()
    outs = _tritium_generate(llm, wl, args.temperature, args.seed)
    _sync(args.device)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    produced = [len(o.outputs[0].token_ids) for o in outs]
    if produced != wl.output_lens:
        raise RuntimeError("tritium produced other output lengths than requested "
                           f"({sum(produced)} vs {wl.num_output_tokens} tokens)")
    ttfts = [o.metrics.ttft for o in outs if o.metrics.ttft is not None]
    tpots = [o.metrics.tpot for o in outs if o.metrics.tpot is not None]
    stats = llm.engine.stats()
    return EngineResult(
        "tritium", len(outs), wl.num_input_tokens, sum(produced), elapsed,
        mean_ttft_s=sum(ttfts) / len(ttfts) if ttfts else None,
        mean_tpot_s=sum(tpots) / len(tpots) if tpots else None, cpu_time_s=cpu,
        extra={"num_kv_blocks": stats.get("num_kv_blocks"),
               "num_preemptions": sum(o.metrics.num_preemptions for o in outs),
               "loadavg_1min_before_after": [load_before, loadavg_1min()]},
    )


# -- the whole run -------------------------------------------------------------------------

def run(args: argparse.Namespace) -> dict[str, Any]:
    """Resolve defaults, run tritium then each peer on the same requests; returns the report."""
    import torch

    from tritium.bench import peers

    resolve_args(args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    env = peers.environment(args.device)  # date and load average at the start
    t0 = time.perf_counter()
    llm = _build_llm(args)
    load_s = time.perf_counter() - t0
    runner = llm.engine.runner
    mc = llm.engine.model_config
    wl = make_workload(args.num_prompts, tuple(args.input_len_range),
                       tuple(args.output_len_range), mc.vocab_size, args.seed)
    warmup = None
    if args.warmup_prompts:
        warmup = make_workload(args.warmup_prompts, tuple(args.input_len_range),
                               (1, min(16, args.output_len_range[1])), mc.vocab_size,
                               args.seed + 1)
    results = [run_tritium(llm, wl, warmup, args)]
    results[0].extra["load_s"] = load_s
    model, dtype = runner.model, runner.dtype
    args.resolved_dtype = str(dtype).removeprefix("torch.")
    del llm, runner  # frees the KV cache; the weights stay for the HF peer
    _free(args.device)
    hf = None
    if "hf" in args.peers:
        hf = peers.build_hf_model(model, mc, dtype, args.device, args.hf_attn_implementation)
    del model  # HF holds its own copy (an 8B model would otherwise take 16 GB twice)
    _free(args.device)
    if hf is not None:
        results.append(peers.run_hf(hf, wl, warmup, args))
        del hf  # vLLM needs the memory
        _free(args.device)
    if "vllm" in args.peers:
        results.append(peers.run_vllm(mc, wl, warmup, args))
        _free(args.device)
    flops = peers.model_flops_per_token(mc)
    for r in results:
        if r.ran:
            tokens = r.input_tokens + r.output_tokens
            r.extra["model_tflops"] = flops * tokens / r.elapsed_s / 1e12
    report = {
        "benchmark": "throughput",
        "config": {k: v for k, v in vars(args).items() if k != "func"},
        "model_config": mc.to_dict(),
        "environment": dict(env, dtype=args.resolved_dtype),
        "workload": {"num_requests": len(wl.prompts), "input_tokens": wl.num_input_tokens,
                     "output_tokens": wl.num_output_tokens},
        "results": [r.to_dict() for r in results],
    }
    base = results[0]
    for r in results[1:]:
        if r.ran:
            report.setdefault("speedup_vs", {})[r.engine] = base.output_tps / r.output_tps
        if r.ran and r.cpu_time_s and base.cpu_time_s:  # output tokens per CPU-second
            report.setdefault("speedup_per_cpu_second_vs", {})[r.engine] = (
                (base.output_tokens / base.cpu_time_s) / (r.output_tokens / r.cpu_time_s))
    return report


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def _free(device: str) -> None:
    gc.collect()
    if device == "cuda":
        import torch

        torch.cuda.empty_cache()


# -- report --------------------------------------------------------------------------------

def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1000:.1f}"


def format_table(report: dict[str, Any]) -> str:
    """The results as a fixed-width table plus the speed-up lines."""
    head = (f"{'engine':<10} {'reqs':>5} {'in tok':>8} {'out tok':>8} {'elapsed s':>10} "
            f"{'out tok/s':>10} {'total tok/s':>12} {'TTFT ms':>9} {'TPOT ms':>8} {'CPU s':>8}")
    lines = [head, "-" * len(head)]
    for r in report["results"]:
        if r["output_tokens_per_s"] is None:
            lines.append(f"{r['engine']:<10} {r['extra'].get('status', 'not run')}")
            continue
        lines.append(
            f"{r['engine']:<10} {r['num_requests']:>5} {r['input_tokens']:>8} "
            f"{r['output_tokens']:>8} {r['elapsed_s']:>10.2f} {r['output_tokens_per_s']:>10.1f} "
            f"{r['total_tokens_per_s']:>12.1f} {_ms(r['mean_ttft_s']):>9} "
            f"{_ms(r['mean_tpot_s']):>8} {r['cpu_time_s'] or 0:>8.1f}")
    for name, x in report.get("speedup_vs", {}).items():
        lines.append(f"tritium / {name} output tok/s: {x:.2f}x")
    for name, x in report.get("speedup_per_cpu_second_vs", {}).items():
        lines.append(f"tritium / {name} output tokens per CPU-second: {x:.2f}x")
    tf = [f"{r['engine']} {r['extra']['model_tflops']:.3g}" for r in report["results"]
          if "model_tflops" in r["extra"]]
    lines.append("model TFLOP/s (2 x non-embedding params per token, attention excluded): "
                 + ", ".join(tf))
    env = report["environment"]
    lines.append(f"device: {env['device_name']}, torch threads {env['torch_threads']}, "
                 f"model {report['config']['model'] or 'embedded SmolLM2-135M'}, "
                 f"dtype {env['dtype']}"
                 + (", enforce_eager" if report["config"].get("enforce_eager") else "")
                 + (", async_scheduling" if report["config"].get("async_scheduling") else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (None = sys.argv), run, print the table, write ``--out``."""
    parser = argparse.ArgumentParser(prog="tritium bench throughput",
                                     description=__doc__.splitlines()[0])
    add_throughput_arguments(parser)
    return run_from_args(parser.parse_args(argv))


def run_from_args(args: argparse.Namespace) -> int:
    """Entry point of ``tritium bench throughput`` (args from add_throughput_arguments)."""
    report = run(args)
    print(format_table(report), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2, default=_json_default)
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


def _json_default(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return str(x)
