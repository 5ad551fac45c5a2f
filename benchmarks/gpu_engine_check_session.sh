#!/usr/bin/env bash
# Lent-GPU correctness + step-profile session for the engine (issue 4): kernel checks (paged
# attention, fused ops, the fused sampler), the engine check (paged Triton path vs fp32
# reference; CUDA graphs vs eager), the decode-attention headline, and one decode step of
# random:llama3-8b at batch 256 profiled with CUDA graphs and without. Results in $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/tritium-out}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl >/dev/null 2>&1 && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD/src:${PYTHONPATH:-} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
echo "== kernel checks =="
timeout 150 python3 benchmarks/check_kernels_gpu.py --out "$OUT/kernel_check.json" 2>&1 | tail -45
echo "== engine check =="
timeout 200 python3 benchmarks/check_engine_gpu.py --out "$OUT/engine_check.json" 2>&1 | tail -12
echo "== decode attention, batch 64 x 4k =="
timeout 60 python3 benchmarks/decode_attention.py --out "$OUT/decode_64x4k.json" 2>&1 | tail -8
for mode in graphs eager; do
  echo "== profile: random:llama3-8b, 256 seqs x 512 prompt, $mode =="
  extra=""; [ "$mode" = eager ] && extra="--enforce-eager"
  timeout 150 python3 benchmarks/profile_engine_gpu.py --model random:llama3-8b \
    --num-seqs 256 --prompt-len 512 --steps 20 $extra --out "$OUT/profile_$mode.json" 2>&1 \
    | grep -v USDT | head -16
done
