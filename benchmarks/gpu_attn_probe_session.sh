#!/usr/bin/env bash
# Lent-GPU session for the attention schedule / block-mask probe (issue 3): the GPU
# correctness checks of flash_attn_quick.py, then benchmarks/attn_schedule_probe.py. $OUT.
set -uo pipefail
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch, triton; print(torch.__version__, triton.__version__)"
echo "== flash_attn_quick --check-only =="
timeout 240 python3 benchmarks/flash_attn_quick.py --check-only --out "$OUT/fa_check.json" 2>&1 | tail -25
echo "== probe =="
timeout 300 python3 benchmarks/attn_schedule_probe.py --out "$OUT/probe.json" 2>&1 | tail -40
