#!/usr/bin/env bash
# Lent-GPU session for the attention probes (issue 3). $OUT. Parts (default: check library):
#   check     flash_attn_quick.py --check-only (GPU correctness through the public API)
#   variants  attn_fwd_probe.py --part variants (stand-alone loop variants vs SDPA)
#   library   attn_fwd_probe.py --part library (launcher tiles x TMA on/off)
#   bwd       attn_bwd_ws_probe.py (Gluon backward variants vs Triton and cuDNN)
#   api       attention.py --quick (public API vs SDPA / FlexAttention, 200 s budget)
set -uo pipefail
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch, triton; print(torch.__version__, triton.__version__)"
for part in "${@:-check library}"; do
  for p in $part; do
    echo "== $p =="
    case $p in
      check) timeout 200 python3 benchmarks/flash_attn_quick.py --check-only --out "$OUT/fa_check.json" 2>&1 | tail -20 ;;
      variants) timeout 400 python3 benchmarks/attn_fwd_probe.py --part variants --out "$OUT/fwd_variants.json" 2>&1 | tail -40 ;;
      library) timeout 400 python3 benchmarks/attn_fwd_probe.py --part library --out "$OUT/fwd_library.json" 2>&1 | tail -40 ;;
      bwd) timeout 420 python3 benchmarks/attn_bwd_ws_probe.py --timeout 100 --out "$OUT/bwd_probe.json" 2>&1 | tail -30 ;;
      api) timeout 400 python3 benchmarks/attention.py --quick --time-budget 200 --out "$OUT/attention_quick.json" 2>&1 | tail -45 ;;
    esac
  done
done
