#!/usr/bin/env python3
"""Attention benchmark: tritium vs PyTorch SDPA (flash, cuDNN), FlexAttention, flash-attn.

    python benchmarks/attention.py --out attention.json          # full run (GPU, ~8 min)
    python benchmarks/attention.py --quick --out attention.json  # S in {1k, 4k, 16k}
    python benchmarks/attention.py --smoke --out smoke.json      # CPU, tiny, reference paths
    python benchmarks/attention.py --dry-run                     # list the cases and exit

Forward, backward and forward+backward TFLOP/s with FlashAttention's convention (forward
4*H*D per visible (query, key) pair: 4*B*H*S^2*D, halved when causal; for document / varlen
cases the sum over documents, for sliding windows the pairs inside the window; backward 2.5x
forward), triton.testing.do_bench medians. Dense cases keep 16k tokens per batch (B = 16384 / S)
and H = 2048 / D. Special cases (head dim 128): packed documents of random lengths run as
varlen sequences and as one sequence with a document block mask (goal: the block mask at
least as fast as varlen), and a sliding window. Every tritium case is checked against SDPA
before it is timed (a wrong result is reported, not timed). Each peer runs in try/except: a
failing or missing peer is recorded in the JSON, not fatal.

tritium rows use the default backward (``deterministic=False``: on an H100 at head dim 128 the
one-kernel Gluon backward that adds dQ by TMA reduce-add, elsewhere the deterministic kernels,
since the Triton atomic-dQ path measured slower; kernels/flash_attn_bwd.py); each has a
``<name>-det`` row with ``deterministic=True``, checked and timed in backward only
(``--no-deterministic`` skips them).
Backward times replay one forward's graph (``retain_graph=True``); compiled FlexAttention then
needs AOTAutograd's donated buffers off (``torch._functorch.config.donated_buffer = False``, set
in ``main`` when FlexAttention is compiled), which changes its memory reuse, not its kernels.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import random
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field, replace

import torch
from attention_peers import PEERS, Runner, from_layout, mask_build_ms, reference, to_layout


@dataclass
class BenchConfig:
    tokens: int = 16384  # per dense batch: B = tokens / S
    hidden: int = 2048  # H * D
    seqlens: tuple = (512, 1024, 2048, 4096, 8192, 16384)
    head_dims: tuple = (64, 128)
    causal: tuple = (False, True)
    dtype: str = "bfloat16"
    device: str = "cuda"
    special_head_dim: int = 128  # varlen / document / sliding cases
    doc_len_range: tuple = (256, 4096)  # packed documents: uniform random lengths
    sliding_seqlen: int = 4096
    window: int = 1024  # keys per query in the sliding case, the query itself included
    warmup_ms: int = 25
    rep_ms: int = 100
    time_budget_s: float = 480.0  # later cases are skipped (and recorded so) past this
    seed: int = 0
    compile_flex: bool = True
    flex_static: bool = False  # torch.compile(dynamic=False): one compile per shape (slow)
    # Correctness: for out, dq, dk, dv, e = ||x - ref32|| / ||ref32|| against SDPA in fp32 must
    # stay within 2x SDPA's own error in cfg.dtype (or rel_floor): the bar flash-attn's tests use.
    rel_floor: float = 5e-3
    modes: tuple = ("fwd", "bwd", "fwd+bwd")
    deterministic: bool = False  # tritium's backward path (the -det rows set it)
    deterministic_rows: bool = True  # add a backward-only -det row per tritium row
    flex_donated_buffer: bool = False  # AOTAutograd donated buffers (off: see the docstring)


@dataclass
class Case:
    kind: str  # dense | varlen | document | sliding
    B: int
    S: int
    H: int
    D: int
    causal: bool
    window: int | None = None
    doc_lens: list[int] | None = field(default=None, repr=False)

    def visible_pairs(self) -> float:
        if self.doc_lens is not None:
            return sum(L * L for L in self.doc_lens) / (2 if self.causal else 1)
        if self.window is not None:
            w, S = min(self.window, self.S), self.S
            return self.B * (w * (w + 1) / 2 + (S - w) * w)
        return self.B * self.S * self.S / (2 if self.causal else 1)

    def flops(self, mode: str) -> float:
        fwd = 4.0 * self.H * self.D * self.visible_pairs()
        return {"fwd": fwd, "bwd": 2.5 * fwd, "fwd+bwd": 3.5 * fwd}[mode]

    def label(self) -> str:
        extra = f" w={self.window}" if self.window else ""
        extra += f" docs={len(self.doc_lens)}" if self.doc_lens else ""
        return f"{self.kind} D={self.D} {'causal' if self.causal else 'full'} " \
               f"B={self.B} S={self.S} H={self.H}{extra}"


def random_doc_lens(total: int, lo: int, hi: int, seed: int) -> list[int]:
    rng, lens = random.Random(seed), []
    while sum(lens) < total:
        lens.append(min(rng.randint(lo, hi), total - sum(lens)))
    return lens


def make_cases(cfg: BenchConfig) -> list[Case]:
    D = cfg.special_head_dim
    H = cfg.hidden // D
    docs = random_doc_lens(cfg.tokens, *cfg.doc_len_range, cfg.seed)
    B_sw = max(1, cfg.tokens // cfg.sliding_seqlen)
    cases = [Case("varlen", 1, cfg.tokens, H, D, True, doc_lens=docs),
             Case("document", 1, cfg.tokens, H, D, True, doc_lens=docs),
             Case("sliding", B_sw, cfg.sliding_seqlen, H, D, True, window=cfg.window)]
    # Headline shapes first (ANCHORS.md's S = 1k, 4k, 16k; head dim 128 before 64), so a spent
    # time budget skips the least telling ones; the table is printed in natural order.
    first = [S for S in cfg.seqlens if S in (1024, 4096, 16384)]
    for tier in (first, [S for S in cfg.seqlens if S not in first]):
        for D in sorted(cfg.head_dims, reverse=True):
            for causal in cfg.causal:
                for S in tier:
                    cases.append(Case("dense", max(1, cfg.tokens // S), S, cfg.hidden // D, D,
                                      causal))
    return cases


# -- timing -----------------------------------------------------------------------------------


def make_bench(cfg: BenchConfig):
    if cfg.device.startswith("cuda"):
        import triton.testing

        def bench(fn) -> float:
            return triton.testing.do_bench(fn, warmup=cfg.warmup_ms, rep=cfg.rep_ms,
                                           return_mode="median")
        return bench

    def cpu_bench(fn, reps: int = 3) -> float:  # smoke mode: a plain wall-clock median
        fn()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)
    return cpu_bench


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.detach().float(), want.detach().float()
    return float((got - want).norm() / want.norm().clamp_min(1e-30))


def check(runner: Runner, ref, dout: torch.Tensor) -> dict[str, float]:
    """Relative errors of out, dq, dk, dv against the reference (all in (B, S, H, D))."""
    out = runner.fn()
    grads = torch.autograd.grad(out, runner.inputs, to_layout(dout, runner.layout))
    got = [from_layout(out, runner.layout)] + [from_layout(g, runner.layout) for g in grads]
    return {n: rel_err(g, r) for n, g, r in zip(("out", "dq", "dk", "dv"), got, ref)}


def peers_for(kind: str, cfg: BenchConfig) -> list:
    """PEERS[kind], plus a deterministic-backward twin of each tritium peer."""
    peers = list(PEERS[kind])
    if cfg.deterministic_rows:
        det_cfg = replace(cfg, deterministic=True, modes=("bwd",))
        peers += [(f"{name}-det", lambda case, base, _cfg, b=build: b(case, base, det_cfg))
                  for name, build in PEERS[kind] if name.startswith("tritium")]
    return peers


def time_runner(runner: Runner, dout: torch.Tensor, cfg: BenchConfig, bench) -> dict:
    """{mode: ms or an error string}: a mode that fails does not cost the others."""
    dout_l = to_layout(dout, runner.layout)

    def bwd_fn():
        out = runner.fn()
        return lambda: torch.autograd.grad(out, runner.inputs, dout_l, retain_graph=True)

    makers = {"fwd": lambda: runner.fn,
              "bwd": bwd_fn,
              "fwd+bwd": lambda: lambda: torch.autograd.grad(runner.fn(), runner.inputs, dout_l)}
    res = {}
    with runner.context():
        for mode in cfg.modes:
            try:
                res[mode] = bench(makers[mode]())
            except Exception as e:  # noqa: BLE001 -- recorded per mode
                res[mode] = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
    return res


def run_case(case: Case, cfg: BenchConfig, bench, deadline: float, rows: list,
             builds: list) -> None:
    dtype, dev = getattr(torch, cfg.dtype), torch.device(cfg.device)
    if case.kind in ("document", "sliding") and time.monotonic() < deadline:
        builds.append({"case": case.kind, "S": case.S, **mask_build_ms(case, dev)})
        print(f"  block mask build ms: {builds[-1]}", flush=True)
    g = torch.Generator(device="cpu").manual_seed(cfg.seed)
    base = [torch.randn(case.B, case.S, case.H, case.D, generator=g).to(dev, dtype)
            for _ in range(3)]  # q, k, v in (B, S, H, D)
    dout = torch.randn(case.B, case.S, case.H, case.D, generator=g).to(dev, dtype)
    try:  # SDPA in fp32 is the reference; SDPA in cfg.dtype sets the error bar
        ref = reference(case, [x.float() for x in base], dout.float())
        sdpa_err = {n: rel_err(a, b) for n, a, b in
                    zip(("out", "dq", "dk", "dv"), reference(case, base, dout), ref)}
        bar = {n: max(2 * e, cfg.rel_floor) for n, e in sdpa_err.items()}
    except Exception as e:  # noqa: BLE001 -- record and go on
        ref = sdpa_err = bar = None
        print(f"  reference failed: {e!r}", flush=True)
    for name, build in peers_for(case.kind, cfg):
        row = dict(case=case.kind, B=case.B, S=case.S, H=case.H, D=case.D, causal=case.causal,
                   window=case.window, num_docs=len(case.doc_lens) if case.doc_lens else None,
                   peer=name, error=None, rel_err=None, sdpa_rel_err=sdpa_err, correct=None)
        rows.append(row)
        if time.monotonic() > deadline:
            row["error"] = "skipped: time budget spent"
            continue
        try:
            runner = build(case, base, cfg)
            if ref is not None:
                with runner.context():
                    row["rel_err"] = errs = check(runner, ref, dout)
                row["correct"] = all(errs[n] <= bar[n] for n in errs)
            if name.startswith("tritium") and not row["correct"]:
                row["error"] = "wrong result (or no reference): not timed"
            else:
                modes = ("bwd",) if name.endswith("-det") else cfg.modes
                for mode, t in time_runner(runner, dout, replace(cfg, modes=modes),
                                           bench).items():
                    if isinstance(t, str):
                        row["error"] = f"{row['error'] or ''}{mode}: {t}; "
                        continue
                    row[f"{mode}_ms"] = t
                    row[f"{mode}_tflops"] = case.flops(mode) / (t * 1e-3) / 1e12
        except Exception as e:  # noqa: BLE001 -- one failing peer must not end the run
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
            row["traceback"] = traceback.format_exc(limit=4)
        finally:
            runner = None
            if dev.type == "cuda":
                torch.cuda.empty_cache()
        print("  " + format_row(row), flush=True)


# -- output -----------------------------------------------------------------------------------


def format_row(row: dict) -> str:
    modes = ("fwd", "bwd", "fwd+bwd")
    vals = [row.get(f"{m}_tflops", float("nan")) for m in modes]
    tf = "  ".join(f"{x:7.1f}" if not x < 1 else f"{x:7.1e}" for x in vals)  # tiny on CPU
    err = "" if not row["rel_err"] else f"err {max(row['rel_err'].values()):.1e}"
    return f"{row['peer']:<22} {tf}  {err}  {row['error'] or ''}"


def print_table(rows: list[dict]) -> None:
    print("\nTFLOP/s (fwd / bwd / fwd+bwd); FlashAttention FLOP convention, do_bench medians")
    head = f"{'case':<9}{'D':>4} {'mask':<7}{'B':>4}{'S':>7}  {'peer':<22} " \
           f"{'fwd':>7}  {'bwd':>7}  {'f+b':>7}  notes"
    print(head)
    print("-" * len(head))
    kinds = ["varlen", "document", "sliding", "dense"]
    order = sorted(range(len(rows)), key=lambda i: (
        kinds.index(rows[i]["case"]), rows[i]["D"], rows[i]["causal"], rows[i]["S"], i))
    for r in (rows[i] for i in order):
        mask = "causal" if r["causal"] else "full"
        print(f"{r['case']:<9}{r['D']:>4} {mask:<7}{r['B']:>4}{r['S']:>7}  {format_row(r)}")


def summarize(rows: list[dict]) -> dict:
    """The performance goal: tritium's document mask vs the same documents as varlen."""
    def get(case, peer):
        return next((r for r in rows if r["case"] == case and r["peer"] == peer), {})
    doc, var = get("document", "tritium-block-mask"), get("varlen", "tritium-varlen")
    out = {}
    for mode in ("fwd", "bwd", "fwd+bwd"):
        a, b = doc.get(f"{mode}_ms"), var.get(f"{mode}_ms")
        if a and b:
            out[f"document_over_varlen_time_{mode}"] = a / b
    if "document_over_varlen_time_fwd+bwd" in out:
        out["goal_document_at_least_as_fast_as_varlen"] = \
            out["document_over_varlen_time_fwd+bwd"] <= 1.0
    return out


def environment(cfg: BenchConfig) -> dict:
    env = {"python": platform.python_version(), "torch": torch.__version__,
           "cuda": torch.version.cuda, "platform": platform.platform()}
    for mod in ("triton", "flash_attn", "tritium", "transformers"):
        try:
            env[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            env[mod] = None
    if cfg.device.startswith("cuda") and torch.cuda.is_available():
        env["device"] = torch.cuda.get_device_name()
        env["cudnn"] = torch.backends.cudnn.version()
    else:
        env["device"] = f"cpu ({platform.processor() or platform.machine()})"
    with contextlib.suppress(Exception):
        env["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True,
                                           text=True, timeout=10).stdout.strip() or None
    return env


def parse_args(argv=None) -> tuple[BenchConfig, argparse.Namespace]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="attention_bench.json", help="JSON results path")
    p.add_argument("--quick", action="store_true", help="S in {1k, 4k, 16k} only")
    p.add_argument("--smoke", action="store_true", help="CPU, tiny shapes, reference paths")
    p.add_argument("--dry-run", action="store_true", help="print the cases and exit")
    p.add_argument("--seqlens", type=int, nargs="+", help="override the dense seqlens")
    p.add_argument("--head-dims", type=int, nargs="+", help="override the head dims")
    p.add_argument("--time-budget", type=float, help="seconds before later cases are skipped")
    p.add_argument("--no-compile-flex", action="store_true", help="FlexAttention uncompiled")
    p.add_argument("--flex-static", action="store_true",
                   help="compile FlexAttention with dynamic=False (recompiles per shape)")
    p.add_argument("--no-deterministic", action="store_true",
                   help="skip the tritium deterministic-backward (-det) rows")
    a = p.parse_args(argv)
    cfg = BenchConfig()
    if a.quick:
        cfg = replace(cfg, seqlens=(1024, 4096, 16384))
    if a.smoke:
        cfg = replace(cfg, tokens=256, hidden=64, seqlens=(64, 128), head_dims=(32,),
                      dtype="float32", device="cpu", special_head_dim=32, doc_len_range=(16, 96),
                      sliding_seqlen=128, window=32, time_budget_s=120.0, compile_flex=False,
                      rel_floor=1e-4)  # fp32 reference paths on both sides
    if a.seqlens:
        cfg = replace(cfg, seqlens=tuple(a.seqlens))
    if a.head_dims:
        cfg = replace(cfg, head_dims=tuple(a.head_dims))
    if a.time_budget is not None:
        cfg = replace(cfg, time_budget_s=a.time_budget)
    if a.no_compile_flex:
        cfg = replace(cfg, compile_flex=False)
    if a.flex_static:
        cfg = replace(cfg, flex_static=True)
    if a.no_deterministic:
        cfg = replace(cfg, deterministic_rows=False)
    return cfg, a


def main(argv=None) -> int:
    cfg, args = parse_args(argv)
    cases = make_cases(cfg)
    if args.dry_run:
        for c in cases:
            print(f"{c.label():<60} fwd {c.flops('fwd') / 1e9:9.1f} GFLOP  peers: "
                  + ", ".join(n for n, _ in peers_for(c.kind, cfg)))
        return 0
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device: use --smoke for the CPU check", file=sys.stderr)
        return 2
    if cfg.device == "cpu":  # smoke mode: on a shared CPU, extra intra-op threads only wait
        torch.set_num_threads(1)
    if cfg.compile_flex:  # one compiled flex_attention serves every shape: allow many graphs
        import torch._dynamo as dynamo

        dynamo.config.cache_size_limit = 256
        dynamo.config.accumulated_cache_size_limit = 4096
        # The bwd mode replays one forward's backward (retain_graph=True), which compiled
        # graphs with donated buffers refuse; turning them off changes buffer reuse only.
        import torch._functorch.config as functorch_config

        functorch_config.donated_buffer = cfg.flex_donated_buffer
    bench, rows, builds, t0 = make_bench(cfg), [], [], time.monotonic()
    deadline = t0 + cfg.time_budget_s
    for case in cases:
        print(case.label(), flush=True)
        run_case(case, cfg, bench, deadline, rows, builds)
    print_table(rows)
    summary = summarize(rows)
    summary["block_mask_build_ms"] = builds
    summary["wall_s"] = time.monotonic() - t0
    print("\nsummary:", json.dumps(summary, indent=1))
    result = {"benchmark": "attention", "date": time.strftime("%Y-%m-%d %H:%M:%S"),
              "command": " ".join([sys.executable] + sys.argv), "config": asdict(cfg),
              "flop_convention": "fwd = 4*H*D*visible pairs (dense: B*S^2, /2 causal; docs: "
                                 "sum L^2/2; sliding: pairs inside the window); bwd = 2.5x fwd",
              "environment": environment(cfg), "summary": summary, "results": rows}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1, default=str)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
