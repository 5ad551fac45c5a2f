#!/usr/bin/env python3
"""CPU fp32 products with few rows: ``F.linear`` against tritium's ``layers.linear.linear``.

For each row count, one pass over ``--layers`` copies of SmolLM2-135M's four layer products
(qkv 960x576, o 576x576, gate_up 3072x576, down 576x1536; distinct weights, so the pass
streams them from memory as a decode step does) and, separately, its tied LM head (49152 x
576). The two forms alternate, each timed ``--repeats`` times; medians in ms per pass.

    python benchmarks/cpu_linear_rows.py --threads 2 --out cpu_linear_rows.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from tritium.layers.linear import linear

LAYER_SHAPES = [(960, 576), (576, 576), (3072, 576), (576, 1536)]  # (out, in), SmolLM2-135M
LM_HEAD = (49152, 576)


def _pass(fn, weights, inputs) -> float:
    t = time.perf_counter()
    for w in weights:
        fn(inputs[w.shape[1]], w)
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rows", type=int, nargs="+",
                   default=[1, 2, 3, 4, 8, 9, 12, 16, 23, 24, 32, 48, 64, 96, 128, 160, 256])
    p.add_argument("--layers", type=int, default=30)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--out", default=None, help="write the table as JSON here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    layers = [torch.randn(*s, generator=g) for _ in range(args.layers) for s in LAYER_SHAPES]
    head = [torch.randn(*LM_HEAD, generator=g)]
    forms = {"F.linear": F.linear, "tritium": linear}
    rows_out = []
    print(f"ms per pass ({args.layers} layers x 4 products | LM head), median of "
          f"{args.repeats}, {args.threads} threads")
    print(f"{'rows':>5} {'layers F.linear':>16} {'tritium':>8} {'ratio':>6} "
          f"{'head F.linear':>14} {'tritium':>8} {'ratio':>6}")
    for m in args.rows:
        inputs = {k: torch.randn(m, k, generator=g) for k in (576, 1536)}
        res = {}
        for part, ws in (("layers", layers), ("head", head)):
            times = {name: [] for name in forms}
            for fn in forms.values():  # warm-up
                _pass(fn, ws, inputs)
            for _ in range(args.repeats):
                for name, fn in forms.items():
                    times[name].append(_pass(fn, ws, inputs))
            res[part] = {name: 1e3 * statistics.median(v) for name, v in times.items()}
        rows_out.append(dict(rows=m, **{f"{part}_{name}_ms": v for part, d in res.items()
                                        for name, v in d.items()}))
        lay, hd = res["layers"], res["head"]
        print(f"{m:>5} {lay['F.linear']:>16.1f} {lay['tritium']:>8.1f} "
              f"{lay['F.linear'] / lay['tritium']:>6.2f} {hd['F.linear']:>14.2f} "
              f"{hd['tritium']:>8.2f} {hd['F.linear'] / hd['tritium']:>6.2f}", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(benchmark="cpu_linear_rows", date=time.strftime("%Y-%m-%d %H:%M:%S"),
                           config=vars(args), torch=torch.__version__,
                           cpu=platform.processor() or platform.machine(), results=rows_out),
                      f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
