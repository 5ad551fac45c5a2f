#!/usr/bin/env bash
# Lent-GPU session for the attention probes (issue 3). $OUT. Parts (default: check library):
#   check     flash_attn_quick.py --check-only (GPU correctness through the public API)
#   variants  attn_fwd_probe.py --part variants (stand-alone loop variants vs SDPA)
#   library   attn_fwd_probe.py --part library (launcher tiles x TMA on/off)
#   fwd_ws    attn_fwd_ws_probe.py, causal variants (Gluon forward schedules vs cuDNN)
#   host      attn_host_profile.py --host (host time per API call at 1k, cProfile)
#   gaps      attn_host_profile.py --gaps (GPU timeline of fwd+bwd at 1k: kernels, idle gaps)
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
      fwd_ws) timeout 300 python3 benchmarks/attn_fwd_ws_probe.py --variants ws_persist_intra,ws_causal_intra,ws_causal_intra_pairs,ws_causal_pairs_persist --out "$OUT/fwd_ws_probe.json" 2>&1 | tail -12 ;;
      host) timeout 200 python3 benchmarks/attn_host_profile.py --host > "$OUT/host_profile.txt" 2>&1; grep "host time" "$OUT/host_profile.txt" ;;
      gaps) timeout 200 python3 benchmarks/attn_host_profile.py --gaps 2>&1 | tail -60 ;;
      bwd) timeout 420 python3 benchmarks/attn_bwd_ws_probe.py --timeout 100 --out "$OUT/bwd_probe.json" 2>&1 | tail -30 ;;
      api) timeout 400 python3 benchmarks/attention.py --quick --time-budget 200 --out "$OUT/attention_quick.json" 2>&1 | tail -45 ;;
    esac
  done
done
