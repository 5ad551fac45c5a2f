"""Serving benchmark: Poisson arrivals against an OpenAI-compatible server (vLLM's metrics).

    tritium serve &                                     # or any server: vLLM, SGLang, ...
    python benchmarks/serve.py --workload random --num-prompts 64 --request-rate 1 4 inf \
        --random-input-len 128 --random-output-len 64 --goodput ttft:2000 tpot:200 \
        --result-json serve.json

Same as ``tritium bench serve``; the implementation is ``tritium.server.bench`` (so the
installed CLI has it too). Prints one table per request rate and writes JSON with the config.
"""

from __future__ import annotations

import argparse

from tritium.server.args import add_bench_serve_arguments
from tritium.server.bench import main

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_bench_serve_arguments(parser)
    main(parser.parse_args())
