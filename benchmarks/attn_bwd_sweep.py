#!/usr/bin/env python3
"""FlashAttention backward tile sweep: the atomic-dQ path and the deterministic path.

    python benchmarks/attn_bwd_sweep.py --out attn_bwd_sweep.json      # GPU, < 4 min on an H100
    python benchmarks/attn_bwd_sweep.py --atomic 64,128,8,2 32,128,8,3 --head-dims 128
    python benchmarks/attn_bwd_sweep.py --smoke --out smoke.json       # CPU interpreter, tiny

For head dims 64 and 128, causal and not, S = 4k and 16k (16k tokens per batch: B = 16384 / S,
H = 2048 / D, bf16), it times ``flash_attn_bwd`` (the launcher: preprocess, dK/dV(+dQ) and the
dQ conversion or dQ kernel; no autograd) for a small grid of tile configs of each path
(``deterministic=False``: (BLOCK_M, BLOCK_N, warps, stages) of the one dK/dV+dQ kernel;
``deterministic=True``: that of the dK/dV kernel and of the dQ kernel), and SDPA's cuDNN
backward in the same process for reference. Every config's dq, dk, dv are compared with the
deterministic path at its default tiles (max abs error, relative L2 error); the atomic path is
also run twice to see whether dQ's bits change between runs. TFLOP/s use FlashAttention's
convention (backward 2.5 x 4*B*H*S^2*D, halved when causal); triton.testing.do_bench medians.
Prints a table per case, then the best config per (path, head dim) by geometric mean over the
cases, which is what ``_BWD_ATOMIC_CONFIGS`` / ``_BWD_CONFIGS`` in
src/tritium/kernels/flash_attn_bwd.py should hold; writes everything as JSON.

Compile time dominates a sweep (~30 kernel variants at ~5 s each): ``--precompile N`` worker
processes (default 8) first run every variant once at the smallest S, which fills Triton's
on-disk cache with the same specializations the timed runs use (strides and lengths keep their
divisibility by 16), so the main process only loads cubins. If the workers fail, the main
process compiles as it goes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback

# Candidate tiles (BLOCK_M, BLOCK_N, num_warps, num_stages). Atomic: key tiles of 128 halve the
# fp32 atomic traffic into dQ against 64; BLOCK_M 32 spills less (ptxas on sm_90a: D 128
# (32, 128, 8, 3) 136 B of stack vs 512 B for (64, 128, 8, 2)) but its dQ matmul (M = 32) is
# too small for wgmma and runs as mma.sync. The first entry of each list is the default.
ATOMIC = {
    64: [(64, 128, 8, 2), (32, 128, 8, 3), (64, 64, 4, 3), (32, 64, 4, 3)],
    128: [(64, 128, 8, 2), (32, 128, 8, 3), (64, 128, 8, 1), (32, 64, 4, 3)],
}
DETERMINISTIC = {  # ((dK/dV), (dQ)); the first is the default (H100 sweep, 2026-11-23)
    64: [((32, 64, 4, 3), (64, 64, 4, 3)), ((32, 128, 8, 3), (64, 64, 4, 3))],
    128: [((64, 128, 8, 2), (64, 64, 4, 2)), ((32, 128, 8, 3), (64, 64, 4, 2))],
}
SMOKE_ATOMIC = [(16, 16, 4, 1), (32, 32, 4, 1)]
SMOKE_DETERMINISTIC = [((32, 32, 4, 1), (32, 32, 4, 1))]


def parse_cfg(text: str) -> tuple[int, ...]:
    vals = tuple(int(x) for x in text.split(","))
    if len(vals) != 4:
        raise argparse.ArgumentTypeError(f"{text!r}: expected BM,BN,warps,stages")
    return vals


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="attn_bwd_sweep.json", help="JSON results path")
    p.add_argument("--head-dims", type=int, nargs="+", default=[64, 128])
    p.add_argument("--seqlens", type=int, nargs="+", default=[4096, 16384])
    p.add_argument("--causal", choices=["both", "yes", "no"], default="both")
    p.add_argument("--tokens", type=int, default=16384, help="tokens per batch (B = tokens/S)")
    p.add_argument("--hidden", type=int, default=2048, help="H * D")
    p.add_argument("--atomic", type=parse_cfg, nargs="+",
                   help="atomic-path configs to time instead of the built-in grid")
    p.add_argument("--deterministic-dkdv", type=parse_cfg, nargs="+",
                   help="deterministic dK/dV configs (each with the default dQ config)")
    p.add_argument("--no-peer", action="store_true", help="skip SDPA cuDNN")
    p.add_argument("--time-budget", type=float, default=210.0,
                   help="seconds; configs left when it is spent are recorded as skipped")
    p.add_argument("--precompile", type=int, default=None,
                   help="worker processes that compile every variant first (0: off; default "
                        "8 on a GPU, 0 in --smoke)")
    p.add_argument("--smoke", action="store_true",
                   help="CPU under TRITON_INTERPRET=1: tiny shapes, fp32, two configs")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.smoke:  # Triton reads this when the kernels are decorated, i.e. at import
        os.environ["TRITON_INTERPRET"] = "1"
    import torch

    from tritium.kernels.flash_attn import flash_attn_fwd
    from tritium.kernels.flash_attn_bwd import bwd_config, flash_attn_bwd

    if args.smoke:
        dev, dtype = torch.device("cpu"), torch.float32  # the interpreter's bf16 dot is broken
        head_dims, seqlens, tokens, hidden = [32], [32, 64], 64, 64
        torch.set_num_threads(1)
    else:
        if not torch.cuda.is_available():
            print("no CUDA device: use --smoke for the CPU check", file=sys.stderr)
            return 2
        dev, dtype = torch.device("cuda"), torch.bfloat16
        head_dims, seqlens, tokens, hidden = args.head_dims, args.seqlens, args.tokens, \
            args.hidden
    causals = {"both": [False, True], "yes": [True], "no": [False]}[args.causal]
    bench = make_bench(dev)
    t0 = time.monotonic()
    deadline = t0 + args.time_budget
    rows, env = [], environment(torch, dev)
    print(json.dumps(env), flush=True)

    head_dims = sorted(head_dims, reverse=True)  # D 128 (the headline) first
    workers = args.precompile if args.precompile is not None else \
        (8 if dev.type == "cuda" else 0)
    if workers > 0:
        tasks = [(D, causal, min(seqlens), tokens, hidden, path, cfg, str(dev), str(dtype))
                 for D in head_dims for causal in causals
                 for path, cfg in plan_for(args, D, bwd_config)]
        print(f"precompiling {len(tasks)} variants in {workers} processes", flush=True)
        errors = precompile(tasks, workers, timeout=0.6 * args.time_budget)
        env["precompile"] = dict(workers=workers, tasks=len(tasks),
                                 seconds=time.monotonic() - t0, errors=errors)
        print(f"  done in {time.monotonic() - t0:.0f} s; errors: {errors or 'none'}",
              flush=True)
    for D in head_dims:
        plan = plan_for(args, D, bwd_config)
        for causal in causals:
            for S in seqlens:
                case, (q, k, v, do), B, H = make_case(torch, D, causal, S, tokens, hidden, dev,
                                                      dtype)
                print(f"\nD={D} {'causal' if causal else 'full'} S={S} B={B} H={H}", flush=True)
                kw = dict(softmax_scale=D ** -0.5, causal=causal)
                out, lse = flash_attn_fwd(q, k, v, **kw)
                flops = 2.5 * 4.0 * B * H * S * S * D / (2 if causal else 1)

                def run(det, cfg, q=q, k=k, v=v, do=do, out=out, lse=lse, kw=kw):
                    return flash_attn_bwd(do, q, k, v, out, lse, deterministic=det, config=cfg,
                                          **kw)

                ref = run(True, None)  # the deterministic path at its default tiles
                for path, cfg in plan:
                    row = dict(case, path=path, config=cfg, error=None)
                    rows.append(row)
                    if time.monotonic() > deadline:
                        row["error"] = "skipped: time budget spent"
                        continue
                    try:
                        measure(row, run, path == "deterministic", cfg, ref, bench, flops,
                                torch)
                    except Exception as e:  # noqa: BLE001 -- one config must not end the run
                        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
                        row["traceback"] = traceback.format_exc(limit=3)
                    print("  " + format_row(row), flush=True)
                if not args.no_peer and dev.type == "cuda" and time.monotonic() < deadline:
                    rows.append(dict(case, path="sdpa-cudnn", config=None,
                                     **time_cudnn(q, k, v, do, causal, bench, flops, torch)))
                    print("  " + format_row(rows[-1]), flush=True)
                del q, k, v, do, out, lse, ref
                if dev.type == "cuda":
                    torch.cuda.empty_cache()

    best = summarize(rows)
    print_table(rows, best)
    wall = time.monotonic() - t0
    print(f"\nwall {wall:.0f} s")
    result = dict(benchmark="attn_bwd_sweep", date=time.strftime("%Y-%m-%d %H:%M:%S"),
                  command=" ".join([sys.executable] + sys.argv), args=vars(args),
                  dtype=str(dtype), environment=env, wall_s=wall, best=best, results=rows)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1, default=str)
    print(f"wrote {args.out}")
    return 0


def plan_for(args, D, bwd_config) -> list[tuple[str, tuple]]:
    """[(path, config)] for head dim D: the CLI's configs, else the built-in grid, else (head
    dims outside it) the kernels' defaults."""
    if args.smoke:
        atomic, det = SMOKE_ATOMIC, SMOKE_DETERMINISTIC
    else:
        atomic = [tuple(c) for c in args.atomic] if args.atomic else \
            ATOMIC.get(D, [bwd_config(D, False, deterministic=False)])
        det_default = bwd_config(D, False, deterministic=True)
        det = [(tuple(c), det_default[1]) for c in args.deterministic_dkdv] \
            if args.deterministic_dkdv else DETERMINISTIC.get(D, [det_default])
    return [("atomic", c) for c in atomic] + [("deterministic", c) for c in det]


def make_case(torch, D, causal, S, tokens, hidden, dev, dtype):
    """(case dict, [q, k, v, dout] (B, S, H, D), B, H): B = tokens / S, H = hidden / D."""
    B, H = max(1, tokens // S), max(1, hidden // D)
    g = torch.Generator(device="cpu").manual_seed(D * 7 + S + causal)
    tensors = [torch.randn(B, S, H, D, generator=g).to(dev, dtype) for _ in range(4)]
    return dict(D=D, causal=causal, S=S, B=B, H=H), tensors, B, H


def _compile_task(task) -> str | None:
    """Worker: run one (head dim, causal, path, config) once, so that Triton compiles it into
    its on-disk cache. Returns None, or the error in one line."""
    D, causal, S, tokens, hidden, path, cfg, device, dtype = task
    try:
        import torch

        from tritium.kernels.flash_attn import flash_attn_fwd
        from tritium.kernels.flash_attn_bwd import flash_attn_bwd

        _, (q, k, v, do), _, _ = make_case(torch, D, causal, S, tokens, hidden,
                                           torch.device(device),
                                           getattr(torch, dtype.removeprefix("torch.")))
        kw = dict(softmax_scale=D ** -0.5, causal=causal)
        out, lse = flash_attn_fwd(q, k, v, **kw)
        flash_attn_bwd(do, q, k, v, out, lse, deterministic=path == "deterministic",
                       config=cfg, **kw)
        flash_attn_bwd(do, q, k, v, out, lse, deterministic=True, **kw)  # the reference
        if q.is_cuda:
            torch.cuda.synchronize()
        return None
    except Exception as e:  # noqa: BLE001 -- the main process will compile it (or fail) itself
        return f"{task[:7]}: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"


def precompile(tasks: list, workers: int, timeout: float) -> list[str]:
    """Run ``_compile_task`` over the tasks in spawned processes (a worker that dies or hangs
    cannot stall the sweep past ``timeout`` seconds); returns the errors."""
    import multiprocessing as mp

    try:
        with mp.get_context("spawn").Pool(min(workers, len(tasks))) as pool:
            res = pool.map_async(_compile_task, tasks, chunksize=1).get(timeout)
        return [r for r in res if r]
    except Exception as e:  # noqa: BLE001 -- precompiling is an optimisation only
        return [f"precompile stopped: {type(e).__name__}: {e}"]


def measure(row, run, det, cfg, ref, bench, flops, torch) -> None:
    """Check one config against the reference gradients, then time it."""
    grads = run(det, cfg)
    names = ("dq", "dk", "dv")
    row["max_abs_err"] = {n: (g.float() - r.float()).abs().max().item()
                          for n, g, r in zip(names, grads, ref)}
    row["rel_err"] = {n: ((g.float() - r.float()).norm() / r.float().norm().clamp_min(1e-30))
                      .item() for n, g, r in zip(names, grads, ref)}
    # 2e-2: an indexing or race bug gives O(1); a different summation order in bf16 ~1e-3
    row["ok"] = all(math.isfinite(e) and e < 2e-2 for e in row["rel_err"].values())
    if not det:  # are the atomics' results repeatable on this device?
        again = run(det, cfg)
        row["dq_bitwise_repeatable"] = bool(torch.equal(again[0], grads[0]))
    row["ms"] = bench(lambda: run(det, cfg))
    row["tflops"] = flops / (row["ms"] * 1e-3) / 1e12


def time_cudnn(q, k, v, do, causal, bench, flops, torch) -> dict:
    """SDPA's cuDNN backward (autograd of one forward, replayed), for reference."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    try:
        leaves = [t.transpose(1, 2).contiguous().requires_grad_() for t in (q, k, v)]
        dot = do.transpose(1, 2).contiguous()
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            o = F.scaled_dot_product_attention(*leaves, is_causal=causal)
            ms = bench(lambda: torch.autograd.grad(o, leaves, dot, retain_graph=True))
        return dict(error=None, ms=ms, tflops=flops / (ms * 1e-3) / 1e12)
    except Exception as e:  # noqa: BLE001 -- a missing peer is recorded
        return dict(error=f"{type(e).__name__}: {str(e).splitlines()[0][:300]}")


def make_bench(dev):
    if dev.type == "cuda":
        from triton.testing import do_bench

        return lambda fn: do_bench(fn, warmup=10, rep=50, return_mode="median")

    def cpu_bench(fn, reps: int = 1) -> float:  # smoke mode: wall clock (interpreter: slow)
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
        return statistics.median(times)
    return cpu_bench


def summarize(rows: list[dict]) -> dict:
    """Best config per (path, D): highest geometric-mean TFLOP/s over the cases where it ran
    (correct configs only), with its per-case ratio to the default (first) config."""
    best = {}
    for path in ("atomic", "deterministic"):
        for D in sorted({r["D"] for r in rows}):
            mine = [r for r in rows if r["path"] == path and r["D"] == D and r.get("tflops")
                    and r.get("ok")]
            by_cfg: dict = {}
            for r in mine:
                by_cfg.setdefault(str(r["config"]), []).append(r["tflops"])
            n_cases = max((len(v) for v in by_cfg.values()), default=0)
            scores = {c: math.exp(statistics.fmean(map(math.log, v)))
                      for c, v in by_cfg.items() if len(v) == n_cases}
            if scores:
                top = max(scores, key=scores.get)
                best[f"{path} D={D}"] = dict(config=top, geomean_tflops=scores[top],
                                             all=scores)
    return best


def format_row(row: dict) -> str:
    cfg = str(row["config"]) if row["config"] is not None else "-"
    if row.get("error"):
        return f"{row['path']:<14} {cfg:<34} {row['error']}"
    errs = row.get("max_abs_err")
    err = "" if errs is None else "max|err| dq {dq:.1e} dk {dk:.1e} dv {dv:.1e}".format(**errs)
    flag = "" if row.get("ok", True) else "  WRONG"
    rep = {True: "  dq repeatable", False: "  dq bits vary"}.get(
        row.get("dq_bitwise_repeatable"), "")
    return f"{row['path']:<14} {cfg:<34} {row['ms']:8.3f} ms {row['tflops']:7.1f} TFLOP/s  " \
           f"{err}{flag}{rep}"


def print_table(rows: list[dict], best: dict) -> None:
    print("\nbackward TFLOP/s (bf16 on GPU; 2.5 x 4BHS^2D, /2 causal; launcher, no autograd)")
    head = f"{'D':>4} {'mask':<7}{'S':>6}  {'path':<14} {'config':<34} {'ms':>8}    TFLOP/s"
    print(head)
    print("-" * len(head))
    for r in rows:
        mask = "causal" if r["causal"] else "full"
        print(f"{r['D']:>4} {mask:<7}{r['S']:>6}  {format_row(r)}")
    print("\nbest config per path and head dim (geometric mean over the cases):")
    for key, b in best.items():
        print(f"  {key:<18} {b['config']:<34} {b['geomean_tflops']:7.1f} TFLOP/s")


def environment(torch, dev) -> dict:
    env = {"python": platform.python_version(), "torch": torch.__version__,
           "cuda": torch.version.cuda, "platform": platform.platform()}
    try:
        import triton

        env["triton"] = triton.__version__
    except Exception:  # noqa: BLE001
        env["triton"] = None
    env["device"] = torch.cuda.get_device_name() if dev.type == "cuda" else "cpu (interpreter)"
    return env


if __name__ == "__main__":
    sys.exit(main())
