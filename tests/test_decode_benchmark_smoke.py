"""benchmarks/decode_attention.py --smoke: the script runs end to end on CPU (interpreter)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_decode_benchmark_smoke(tmp_path):
    out = tmp_path / "decode.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "decode_attention.py"), "--smoke",
         "--out", str(out)],
        capture_output=True, text=True, timeout=300, env=env, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "GB/s" in proc.stdout
    res = json.loads(out.read_text())
    assert res["benchmark"] == "decode_attention" and res["config"]["smoke"]
    assert len(res["rows"]) >= 3
    for row in res["rows"]:
        assert row["tritium_ms"] > 0 and row["bytes"] > 0
        assert row["rel_err_vs_fp32"] < 2e-3, row  # fp16 kernel vs fp32 gather + SDPA
        assert row["torch_gather_sdpa_ms"] > 0
