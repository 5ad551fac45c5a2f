"""Benchmark scripts start and produce their JSON: CPU smoke modes, run as subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_attention_benchmark_smoke(tmp_path):
    out = tmp_path / "attention.json"
    env = {**os.environ, "TRITON_INTERPRET": "0"}  # tritium's CPU reference path
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "attention.py"), "--smoke",
                           "--out", str(out)], capture_output=True, text=True, timeout=300,
                          env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "TFLOP/s" in proc.stdout
    res = json.loads(out.read_text())
    assert res["config"]["device"] == "cpu" and res["environment"]["torch"]
    rows = res["results"]
    cases = {r["case"] for r in rows}
    assert cases == {"dense", "varlen", "document", "sliding"}
    tritium = [r for r in rows if r["peer"].startswith("tritium")]
    det = [r for r in tritium if r["peer"].endswith("-det")]
    assert len(tritium) == 2 * (4 + 1 + 1 + 2)  # dense (2 S x 2 masks), varlen, document,
    assert len(det) == 4 + 1 + 1 + 2  # sliding x2; each with its deterministic twin
    for r in tritium:  # each checked against SDPA, then timed in every mode (-det: bwd only)
        assert r["correct"] is True and r["error"] is None, r
        assert max(r["rel_err"].values()) < 1e-4
        for mode in ("bwd",) if r in det else ("fwd", "bwd", "fwd+bwd"):
            assert r[f"{mode}_ms"] > 0 and r[f"{mode}_tflops"] > 0
        if r in det:
            assert "fwd_ms" not in r
    # a missing or failing peer is recorded, not fatal
    assert all(r.get("fwd_ms") or r.get("bwd_ms") or r["error"] for r in rows)
    assert "document_over_varlen_time_fwd+bwd" in res["summary"]


def test_attn_bwd_sweep_smoke(tmp_path):
    """The backward sweep under the Triton interpreter: the precompile workers run, every
    config is checked against the deterministic path, timed, summarized."""
    out = tmp_path / "sweep.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "attn_bwd_sweep.py"),
                           "--smoke", "--precompile", "2", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "best config per path" in proc.stdout
    res = json.loads(out.read_text())
    rows = res["results"]
    assert {r["path"] for r in rows} == {"atomic", "deterministic"}
    assert len(rows) == 4 * 3  # (2 S x 2 masks) x (2 atomic + 1 deterministic config)
    for r in rows:
        assert r["error"] is None and r["ok"] is True and r["ms"] > 0, r
        assert max(r["max_abs_err"].values()) < 1e-5  # fp32 under the interpreter
    assert set(res["best"]) == {"atomic D=32", "deterministic D=32"}
    assert res["environment"]["precompile"]["errors"] == []


def test_attention_host_overhead_script(tmp_path):
    out = tmp_path / "overhead.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "attention_host_overhead.py"),
                           "--calls", "5", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(out.read_text())["us_per_call"]
    assert set(res) == {"dense", "varlen"} and all(v > 0 for v in res.values())


def test_cpu_decode_steps_script():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "cpu_decode_steps.py"),
                           "--model", "random:tiny", "--batches", "1", "3", "--prompt-len", "8",
                           "--new-tokens", "4", "--threads", "1"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [line.split(":")[0].split()[-1] for line in proc.stdout.splitlines()
            if line.startswith("batch")] == ["1", "3"]


def test_attn_schedule_probe_smoke(tmp_path):
    """The GPU probe's CPU mode (interpreter): every schedule bitwise equal to the default, the
    document mask equal to varlen, and a timing row per case."""
    out = tmp_path / "probe.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "attn_schedule_probe.py"),
                           "--smoke", "--out", str(out)], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert len(res["checks"]) == 6 and all(c["ok"] for c in res["checks"]), res["checks"]
    cases = [r["case"] for r in res["timings"]]
    assert len(cases) == 3 + 3 + 2 + 2  # mask x3 schedules, probe x3, varlen x2, dense x2
    assert all(r["fwd_ms"] > 0 and r["bwd_ms"] > 0 for r in res["timings"])


def test_attn_fwd_probe_variants_smoke(tmp_path):
    """The forward probe's stand-alone loop variants under the interpreter: the hand-pipelined
    loop (scores of tile j+1 issued before the softmax of tile j, a tiny synchronising dot) and
    the TMA-descriptor loads give the library's output, causal and not."""
    out = tmp_path / "variants.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "attn_fwd_probe.py"),
                           "--smoke", "--modes", "plain,pipe", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["causal"] for r in rows] == [False, True]
    for r in rows:
        assert not r["failed"], r["failed"]
        names = {n.split(" ")[0] for n in r["err"]}
        assert {"plain", "pipe"} <= names, names
        # fp16 outputs of the same math, different summation order: within fp16 rounding
        assert all(e <= 2e-3 for e in r["err"].values()), r["err"]


def test_cpu_linear_rows_script(tmp_path):
    out = tmp_path / "rows.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "cpu_linear_rows.py"),
                           "--rows", "1", "9", "--layers", "1", "--repeats", "1",
                           "--threads", "1", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())["results"]
    assert [r["rows"] for r in rows] == [1, 9]
    assert all(r[f"{p}_{n}_ms"] > 0 for r in rows for p in ("layers", "head")
               for n in ("F.linear", "tritium"))
