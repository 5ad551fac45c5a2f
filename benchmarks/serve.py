"""Serving benchmark: Poisson arrivals against an OpenAI-compatible server (vLLM's metrics).

    tritium serve &                                     # or any server: vLLM, SGLang, ...
    python benchmarks/serve.py --workload random --num-prompts 64 --request-rate 1 4 inf \
        --random-input-len 128 --random-output-len 64 --goodput ttft:2000 tpot:200 \
        --result-json serve.json
    python benchmarks/serve.py --summarize serve.json more.json    # one Markdown table

Same as ``tritium bench serve``; the implementation is ``tritium.server.bench`` (so the
installed CLI has it too). Prints one table per request rate and writes JSON (vLLM's
``--save-result`` layout, a list of runs) with the config. ``--summarize`` reads such files
and prints one Markdown row per run. benchmarks/gpu_serve_session.sh runs it on a GPU.
"""

from __future__ import annotations

import argparse
import json
import sys

from tritium.server.args import add_bench_serve_arguments
from tritium.server.bench import main
from tritium.server.bench_report import markdown_table


def summarize_files(paths: list[str]) -> str:
    records = []
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        records.extend(data if isinstance(data, list) else [data])
    return markdown_table(records)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--summarize":
        print(summarize_files(sys.argv[2:]))
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_bench_serve_arguments(parser)
    main(parser.parse_args())
