"""Offline throughput benchmark: tritium's LLM.generate vs HF transformers generate (and vLLM).

    python benchmarks/throughput.py                        # cpu: embedded SmolLM2, 24 requests
    python benchmarks/throughput.py --model random:llama3-8b --num-prompts 256 \
        --input-len-range 100 1024 --output-len-range 100 1024 --out throughput.json

Same as ``tritium bench throughput``; the implementation is ``tritium.bench.throughput`` (so the
installed CLI has it too), which documents the workload, the peers and how tokens are counted.
"""

from __future__ import annotations

import sys

from tritium.bench.throughput import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
