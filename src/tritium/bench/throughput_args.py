"""Flags of ``tritium bench throughput`` and their device-dependent defaults (light to import:
the CLI builds its parser from here without importing torch)."""

from __future__ import annotations

import argparse

from tritium.argtypes import add_model_flags, positive_int

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


def add_throughput_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``tritium bench throughput`` (vLLM's names where the concept is the same)."""
    w = p.add_argument_group("workload")
    add_model_flags(w, default="random:llama3-8b on cuda, the embedded SmolLM2-135M on cpu",
                    tokenizer_note="a random:<preset> model gets the tokenizer's vocabulary "
                    "size (outputs are detokenized only with --detokenize)")
    w.add_argument("--num-prompts", type=positive_int, default=None, metavar="N",
                   help="requests (default: 256 on cuda, 24 on cpu)")
    w.add_argument("--input-len-range", type=positive_int, nargs=2, default=None,
                   metavar=("LO", "HI"),
                   help="prompt lengths, uniform inclusive (default: 100 1024 cuda, 32 256 cpu)")
    w.add_argument("--output-len-range", type=positive_int, nargs=2, default=None,
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
    e.add_argument("--max-num-seqs", type=positive_int, default=256)
    e.add_argument("--max-num-batched-tokens", type=positive_int, default=8192)
    e.add_argument("--max-model-len", type=positive_int, default=None,
                   help="default: longest input + longest output of the workload")
    e.add_argument("--block-size", type=positive_int, default=16)
    e.add_argument("--num-kv-blocks", type=positive_int, default=None)
    e.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    e.add_argument("--cpu-kv-cache-gb", type=float, default=1.0)
    e.add_argument("--kv-cache-dtype", default="auto")
    e.add_argument("--no-enable-prefix-caching", dest="enable_prefix_caching",
                   action="store_false", help="random prompts share no prefixes anyway")
    e.add_argument("--enforce-eager", action="store_true",
                   help="no CUDA graphs for decode steps (vLLM's flag; CPU is always eager)")
    e.add_argument("--async-scheduling", action="store_true",
                   help="schedule step N+1 while step N runs (vLLM's flag)")
    e.add_argument("--detokenize", action="store_true",
                   help="detokenize outputs (off by default: the peers do not decode either)")
    e.add_argument("--threads", type=positive_int, default=None,
                   help="torch.set_num_threads for every engine (default: torch's choice)")
    r = p.add_argument_group("peers and output")
    r.add_argument("--peers", default="hf,vllm",
                   help="comma list of hf, vllm, or none (default: hf,vllm; vllm is reported "
                   "'not available' where it cannot be imported)")
    r.add_argument("--hf-batch-size", type=positive_int, default=None,
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
