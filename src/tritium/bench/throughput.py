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
time) / (output tokens - 1) per request; both are means over requests. ``model TFLOP/s`` counts
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

logger = logging.getLogger(__name__)

PEERS = ("hf", "vllm")
# (num_prompts, input range, output range, hf batch size) per device kind; --quick variants.
_DEFAULTS = {
    "cuda": (256, (100, 1024), (100, 1024), 64),
    "cpu": (24, (32, 256), (16, 96), None),  # None: one batch of every request
}
_QUICK = {
    "cuda": (64, (100, 512), (100, 512), 64),
    "cpu": (6, (16, 64), (8, 24), None),
}


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


# -- arguments -----------------------------------------------------------------------------

def _range(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_throughput_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``tritium bench throughput`` (vLLM's names where the concept is the same)."""
    w = p.add_argument_group("workload")
    w.add_argument("--model", default=None, metavar="PATH",
                   help="GGUF file, HF folder, or random:<preset> (llama3-8b, llama3-1b, "
                   "smollm2-135m, tiny); default: random:llama3-8b on cuda, the embedded "
                   "SmolLM2-135M on cpu")
    w.add_argument("--num-prompts", type=_range, default=None, metavar="N",
                   help="requests (default: 256 on cuda, 24 on cpu)")
    w.add_argument("--input-len-range", type=_range, nargs=2, default=None, metavar=("LO", "HI"),
                   help="prompt lengths, uniform inclusive (default: 100 1024 cuda, 32 256 cpu)")
    w.add_argument("--output-len-range", type=_range, nargs=2, default=None,
                   metavar=("LO", "HI"),
                   help="output lengths, uniform inclusive (default: 100 1024 cuda, 16 96 cpu)")
    w.add_argument("--seed", type=int, default=0, help="workload and engine seed (default: 0)")
    w.add_argument("--temperature", type=float, default=1.0,
                   help="sampling temperature for every engine (default 1.0 as vLLM's bench; "
                   "0 = greedy)")
    w.add_argument("--quick", action="store_true",
                   help="small workload: 64 requests of 100-512/100-512 on cuda, 6 of 16-64/8-24 "
                   "on cpu (explicit flags still win)")
    w.add_argument("--warmup-prompts", type=int, default=None, metavar="N",
                   help="requests of a separate warm-up run before timing each engine (compiles "
                   "kernels; default: 16 on cuda, 2 on cpu; 0 = none)")
    e = p.add_argument_group("tritium engine")
    e.add_argument("--device", choices=["cpu", "cuda"], default=None,
                   help="default: cuda when available")
    e.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto",
                   help="auto = bfloat16 on cuda, float32 on cpu")
    e.add_argument("--max-num-seqs", type=_range, default=256)
    e.add_argument("--max-num-batched-tokens", type=_range, default=8192)
    e.add_argument("--max-model-len", type=_range, default=None,
                   help="default: longest input + longest output of the workload")
    e.add_argument("--block-size", type=_range, default=16)
    e.add_argument("--num-kv-blocks", type=_range, default=None)
    e.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    e.add_argument("--cpu-kv-cache-gb", type=float, default=1.0)
    e.add_argument("--kv-cache-dtype", default="auto")
    e.add_argument("--no-enable-prefix-caching", dest="enable_prefix_caching",
                   action="store_false", help="random prompts share no prefixes anyway")
    e.add_argument("--detokenize", action="store_true",
                   help="detokenize outputs (off by default: the peers do not decode either)")
    e.add_argument("--threads", type=_range, default=None,
                   help="torch.set_num_threads for every engine (default: torch's choice)")
    r = p.add_argument_group("peers and output")
    r.add_argument("--peers", default="hf,vllm",
                   help="comma list of hf, vllm, or none (default: hf,vllm; vllm is reported "
                   "'not available' where it cannot be imported)")
    r.add_argument("--hf-batch-size", type=_range, default=None,
                   help="requests per HF generate batch (default: 64 on cuda, all on cpu)")
    r.add_argument("--hf-attn-implementation", default="sdpa",
                   help="HF attention backend (default: sdpa)")
    r.add_argument("--out", default=None, metavar="FILE.json",
                   help="write the resolved config, environment and results here")


def resolve_args(args: argparse.Namespace) -> argparse.Namespace:
    """Fill device-dependent defaults in place; ValueError for inconsistent values."""
    from tritium.engine.model_runner import resolve_device

    dev = resolve_device(args.device)
    args.device = dev.type
    n, inp, out, hf_bs = (_QUICK if args.quick else _DEFAULTS)[dev.type]
    if args.model is None:
        args.model = "random:llama3-8b" if dev.type == "cuda" else None
    args.num_prompts = args.num_prompts or n
    args.input_len_range = list(args.input_len_range or inp)
    args.output_len_range = list(args.output_len_range or out)
    for name in ("input_len_range", "output_len_range"):
        lo, hi = getattr(args, name)
        if lo > hi:
            raise ValueError(f"--{name.replace('_', '-')} {lo} {hi}: LO must be <= HI")
    args.hf_batch_size = args.hf_batch_size or hf_bs or args.num_prompts
    if args.warmup_prompts is None:
        args.warmup_prompts = 16 if dev.type == "cuda" else 2
    if args.warmup_prompts < 0:
        raise ValueError(f"--warmup-prompts must be >= 0, got {args.warmup_prompts}")
    if args.max_model_len is None:
        args.max_model_len = args.input_len_range[1] + args.output_len_range[1]
    if args.temperature < 0:
        raise ValueError(f"--temperature must be >= 0, got {args.temperature}")
    names = [s.strip() for s in args.peers.split(",") if s.strip() and s.strip() != "none"]
    bad = [s for s in names if s not in PEERS]
    if bad:
        raise ValueError(f"unknown peer(s) {', '.join(bad)} in --peers (known: hf, vllm, none)")
    args.peers = names
    return args


# -- tritium -------------------------------------------------------------------------------

def _build_llm(args: argparse.Namespace) -> Any:
    from tritium import LLM

    return LLM(
        args.model, dtype=args.dtype, device=args.device, seed=args.seed,
        block_size=args.block_size, num_kv_blocks=args.num_kv_blocks,
        gpu_memory_utilization=args.gpu_memory_utilization,
        enable_prefix_caching=args.enable_prefix_caching, kv_cache_dtype=args.kv_cache_dtype,
        cpu_kv_cache_gb=args.cpu_kv_cache_gb, max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens, max_model_len=args.max_model_len,
        skip_tokenizer_init=not args.detokenize,
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
    t0 = time.perf_counter()
    outs = _tritium_generate(llm, wl, args.temperature, args.seed)
    _sync(args.device)
    elapsed = time.perf_counter() - t0
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
        mean_tpot_s=sum(tpots) / len(tpots) if tpots else None,
        extra={"num_kv_blocks": stats.get("num_kv_blocks"),
               "num_preemptions": sum(o.metrics.num_preemptions for o in outs)},
    )


# -- the whole run -------------------------------------------------------------------------

def run(args: argparse.Namespace) -> dict[str, Any]:
    """Resolve defaults, run tritium then each peer on the same requests; returns the report."""
    import torch

    from tritium.bench import peers

    resolve_args(args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
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
        "environment": dict(peers.environment(args.device), dtype=args.resolved_dtype),
        "workload": {"num_requests": len(wl.prompts), "input_tokens": wl.num_input_tokens,
                     "output_tokens": wl.num_output_tokens},
        "results": [r.to_dict() for r in results],
    }
    base = results[0]
    for r in results[1:]:
        if r.ran:
            report.setdefault("speedup_vs", {})[r.engine] = base.output_tps / r.output_tps
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
            f"{'out tok/s':>10} {'total tok/s':>12} {'TTFT ms':>9} {'TPOT ms':>8}")
    lines = [head, "-" * len(head)]
    for r in report["results"]:
        if r["output_tokens_per_s"] is None:
            lines.append(f"{r['engine']:<10} {r['extra'].get('status', 'not run')}")
            continue
        lines.append(
            f"{r['engine']:<10} {r['num_requests']:>5} {r['input_tokens']:>8} "
            f"{r['output_tokens']:>8} {r['elapsed_s']:>10.2f} {r['output_tokens_per_s']:>10.1f} "
            f"{r['total_tokens_per_s']:>12.1f} {_ms(r['mean_ttft_s']):>9} "
            f"{_ms(r['mean_tpot_s']):>8}")
    for name, x in report.get("speedup_vs", {}).items():
        lines.append(f"tritium / {name} output tok/s: {x:.2f}x")
    env = report["environment"]
    lines.append(f"device: {env['device_name']}, torch threads {env['torch_threads']}, "
                 f"model {report['config']['model'] or 'embedded SmolLM2-135M'}, "
                 f"dtype {env['dtype']}")
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
