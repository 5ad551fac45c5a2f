"""``tritium`` command line: ``generate`` and ``chat`` (``serve``, ``bench`` plug in the same way).

Each subcommand is one ``add_<name>_command(subparsers)`` function that registers its parser
and sets ``func``; adding a command is one function plus one entry in ``COMMANDS``.
The completion goes to stdout, everything else (progress, timings, errors) to stderr. A user's
mistake prints one line ``tritium: error: ...`` and exits with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from tritium import argtypes

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A mistake in the command line or its inputs: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr (no usage block), as every other error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see --help)\n")


# -- shared flag groups --------------------------------------------------------------------

def add_model_args(p: argparse.ArgumentParser) -> None:
    """--model / --tokenizer / --device / --dtype, shared by every command that loads a model."""
    argtypes.add_model_flags(p, default="the embedded SmolLM2-135M-Instruct",
                             tokenizer_note="needed by random:<preset> models")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None,
                   help="default: cuda when available, else cpu")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                   help="default: float32 on cpu, bfloat16 on cuda")
    p.add_argument("--threads", type=argtypes.positive_int, default=None, metavar="N",
                   help="CPU threads for PyTorch (default: PyTorch's, one per core; on a busy "
                   "machine 1 is often much faster for small models)")


def add_sampling_args(p: argparse.ArgumentParser, *, temperature: float) -> None:
    p.add_argument("--max-tokens", type=argtypes.positive_int, default=256, metavar="N",
                   help="most tokens to generate (default: 256)")
    p.add_argument("--temperature", type=argtypes.temperature, default=temperature, metavar="T",
                   help=f"0 = greedy (default: {temperature})")
    p.add_argument("--top-p", type=argtypes.top_p, default=1.0, metavar="P",
                   help="nucleus sampling mass in (0, 1] (default: 1.0)")
    p.add_argument("--seed", type=argtypes.seed, default=None, metavar="S",
                   help="random seed for sampling (default: none)")


def _info(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def load_for_cli(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """Start an engine on --model/--device/--dtype, with a timing line on stderr.

    Returns (engine, tokenizer, model_config). The CLI runs on the same continuous-batching
    engine as ``tritium.LLM`` and the server, with one request at a time.
    """
    import torch

    from tritium.engine.config import CacheConfig, EngineConfig, SchedulerConfig
    from tritium.engine.llm_engine import LLMEngine
    from tritium.models.presets import is_random_model

    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was given but CUDA is not available on this machine")
    if is_random_model(args.model) and args.tokenizer is None:
        raise UserError(f"{args.model} has random weights and no tokenizer: pass --tokenizer "
                        "PATH (a tokenizer folder or .gguf file)")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    config = EngineConfig(
        model=args.model, tokenizer=args.tokenizer, device=args.device,
        dtype=args.dtype or "auto",
        # one interactive request: a small batch, and a CPU cache of one full context
        scheduler=SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=2048),
        cache=CacheConfig(cpu_kv_cache_gb=0.5),
    )
    engine = LLMEngine(config)
    runner = engine.runner
    _info(f"[tritium] loaded {args.model or 'SmolLM2-135M-Instruct (embedded)'} on "
          f"{runner.device.type} ({str(runner.dtype).removeprefix('torch.')}) in "
          f"{time.perf_counter() - t0:.1f} s")
    return engine, engine.tokenizer, engine.model_config


def generate_outputs(engine: Any, prompt_ids: list[int], args: argparse.Namespace) -> Iterator[Any]:
    """The one place the CLI calls the engine: yields the request's cumulative RequestOutput
    after every step that advanced it."""
    from tritium.engine.sampling_params import SamplingParams

    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature,
                            top_p=args.top_p, seed=args.seed)
    request_id = engine.add_request(None, prompt_ids, params)
    try:
        while engine.has_unfinished_requests():
            yield from engine.step()
    finally:
        engine.abort_request(request_id)  # Ctrl-C or a broken pipe: free the request's blocks


def stream_completion(engine: Any, tokenizer: Any, prompt_ids: list[int],
                      args: argparse.Namespace) -> str:
    """Generate, writing text to stdout as it comes; returns the full text and logs a timing."""
    t0 = time.perf_counter()
    text, num_tokens = "", 0
    for out in generate_outputs(engine, prompt_ids, args):
        new_text = out.outputs[0].text
        sys.stdout.write(new_text[len(text):])
        sys.stdout.flush()
        text, num_tokens = new_text, len(out.outputs[0].token_ids)
    sys.stdout.write("\n")
    sys.stdout.flush()
    dt = time.perf_counter() - t0
    _info(f"[tritium] {len(prompt_ids)} prompt + {num_tokens} generated tokens in {dt:.2f} s "
          f"({num_tokens / dt if dt > 0 else 0.0:.1f} tok/s)")
    return text


def encode_chat(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """Apply the tokenizer's chat template (with the assistant prompt) and tokenize."""
    if not getattr(tokenizer, "chat_template", None):
        raise UserError("this model has no chat template; use --raw for plain text")
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


# -- generate ------------------------------------------------------------------------------

def add_generate_command(subparsers: Any) -> None:
    p = subparsers.add_parser("generate", help="complete one prompt and print the answer",
                              description="Print the model's completion of PROMPT on stdout.")
    p.add_argument("prompt", metavar="PROMPT")
    add_model_args(p)
    add_sampling_args(p, temperature=0.0)
    p.add_argument("--raw", action="store_true",
                   help="feed PROMPT as plain text (no chat template)")
    p.set_defaults(func=run_generate)


def run_generate(args: argparse.Namespace) -> int:
    engine, tokenizer, _ = load_for_cli(args)
    if args.raw:
        prompt_ids = tokenizer(args.prompt)["input_ids"]
    else:
        prompt_ids = encode_chat(tokenizer, [{"role": "user", "content": args.prompt}])
    stream_completion(engine, tokenizer, prompt_ids, args)
    return 0


# -- chat ----------------------------------------------------------------------------------

def add_chat_command(subparsers: Any) -> None:
    p = subparsers.add_parser("chat", help="interactive chat that streams its answers",
                              description="Chat with the model; /exit or Ctrl-D quits.")
    add_model_args(p)
    add_sampling_args(p, temperature=0.7)
    p.add_argument("--system", default=None, metavar="TEXT", help="system prompt")
    p.set_defaults(func=run_chat)


def _read_line() -> str | None:
    """One user line, or None at EOF. The prompt marker goes to stderr (stdout = answers)."""
    if sys.stdin.isatty():
        sys.stderr.write(">>> ")
        sys.stderr.flush()
    line = sys.stdin.readline()
    return None if line == "" else line.rstrip("\n")


def _fit_history(tokenizer: Any, messages: list[dict[str, str]], context: int) -> list[int]:
    """Encode, dropping the oldest exchanges until the prompt leaves room in the context."""
    system = [m for m in messages[:1] if m["role"] == "system"]
    turns = messages[len(system):]
    while True:
        ids = encode_chat(tokenizer, system + turns)
        if len(ids) < context or len(turns) <= 1:
            if len(ids) < context and len(turns) < len(messages) - len(system):
                _info("[tritium] dropped the oldest turns to fit the context")
            messages[len(system):] = turns
            return ids
        turns = turns[2:]  # one user + one assistant message


def run_chat(args: argparse.Namespace) -> int:
    engine, tokenizer, _ = load_for_cli(args)
    messages: list[dict[str, str]] = []
    if args.system:
        messages.append({"role": "system", "content": args.system})
    if sys.stdin.isatty():
        _info("[tritium] chat: type a message; /exit or Ctrl-D quits")
    while True:
        line = _read_line()
        if line is None or line.strip() == "/exit":
            return 0
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line})
        ids = _fit_history(tokenizer, messages, engine.max_model_len)
        try:
            reply = stream_completion(engine, tokenizer, ids, args)
        except ValueError as e:  # e.g. one message longer than the context: skip this turn
            messages.pop()
            _info(f"tritium: error: {e}")
            continue
        messages.append({"role": "assistant", "content": reply})


# -- serve / bench -------------------------------------------------------------------------

def add_serve_command(subparsers: Any) -> None:
    from tritium.server.args import add_serve_arguments, run_serve

    p = subparsers.add_parser("serve", help="OpenAI-compatible HTTP server",
                              description="Serve the model over an OpenAI-compatible HTTP API: "
                              "/v1/completions, /v1/chat/completions, /v1/models, /health, "
                              "/metrics, and a chat playground at /.")
    add_serve_arguments(p)
    p.set_defaults(func=run_serve)


def add_bench_serve(bench_subparsers: Any) -> None:
    from tritium.server.args import add_bench_serve_arguments, run_bench_serve

    p = bench_subparsers.add_parser("serve", help="online serving benchmark (any OpenAI server)",
                                    description="Poisson arrivals against an OpenAI-compatible "
                                    "server; TTFT/TPOT/ITL/E2EL and goodput as vLLM defines them.")
    add_bench_serve_arguments(p)
    p.set_defaults(func=run_bench_serve)


def add_bench_throughput(bench_subparsers: Any) -> None:
    from tritium.bench.throughput import add_throughput_arguments, run_from_args

    p = bench_subparsers.add_parser("throughput", help="offline throughput vs HF generate (and "
                                    "vLLM)", description="N random-token requests through "
                                    "LLM.generate, then the same requests through the peers; "
                                    "output and total tokens/s.")
    add_throughput_arguments(p)
    p.set_defaults(func=run_from_args)


# each adds `tritium bench NAME`
BENCH_COMMANDS: list[Callable[[Any], None]] = [add_bench_serve, add_bench_throughput]


def add_bench_command(subparsers: Any) -> None:
    p = subparsers.add_parser("bench", help="benchmarks", description="Run a benchmark.")
    bench = p.add_subparsers(dest="bench_command", metavar="BENCHMARK", parser_class=_Parser)
    bench.required = True
    for add in BENCH_COMMANDS:
        add(bench)


# -- entry point ---------------------------------------------------------------------------

COMMANDS: list[Callable[[Any], None]] = [add_generate_command, add_chat_command,
                                         add_serve_command, add_bench_command]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tritium", description="tritium: an LLM engine on Triton kernels.")
    from tritium import __version__

    parser.add_argument("--version", action="version", version=f"tritium {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    subparsers.required = True
    for add in COMMANDS:
        add(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse, run the command; user mistakes -> one stderr line and exit status 2."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="[tritium] %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    from tritium.models.errors import ModelLoadError

    try:
        return args.func(args)
    except (UserError, ModelLoadError, ValueError, NotImplementedError) as e:
        sys.stdout.flush()
        print(f"tritium: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `tritium generate ... | head -1`
        return 0


if __name__ == "__main__":
    sys.exit(main())
