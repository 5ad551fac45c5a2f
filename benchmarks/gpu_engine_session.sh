#!/usr/bin/env bash
# One lent-GPU session for the engine (issue 4): check the engine path against the fp32
# reference, then the offline throughput benchmark. Run from the repository root on the GPU
# machine; wheels the image lacks (gguf) are carried in .whl/. Results land in $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/tritium-out}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD/src:${PYTHONPATH:-} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
echo "== engine check (paged Triton path vs fp32 reference) =="
timeout 200 python3 benchmarks/check_engine_gpu.py --out "$OUT/engine_check.json" 2>&1 | tail -15
echo "== throughput: tritium, random:llama3-8b, 256 requests, in/out 100-1024 =="
timeout 200 python3 benchmarks/throughput.py --model random:llama3-8b --num-prompts 256 \
  --peers none --out "$OUT/throughput_8b_256.json" 2>&1 | tail -20
echo "== throughput: tritium vs HF generate, 64 requests =="
timeout 200 python3 benchmarks/throughput.py --model random:llama3-8b --num-prompts 64 \
  --peers hf --out "$OUT/throughput_8b_64_hf.json" 2>&1 | tail -20
