#!/usr/bin/env bash
# One lent-GPU session for the server (issue 5): `tritium serve` on random:llama3-8b (bf16, the
# Llama-3.1-8B shape with random weights: no checkpoint fits the 64 MiB carry limit) with the
# embedded SmolLM2 tokenizer, then `tritium bench serve` against it: random 1024 in / 128 out at
# max concurrency and at Poisson rates, then the chat workload; then SIGINT, which must stop the
# server with exit status 0. Run from the repository root; results land in $OUT. Each run fits
# one 10-minute device command (the script keeps to $BUDGET seconds, default 540).
#
# The model's vocabulary is sized to the tokenizer (49152 rows instead of 128256: 7.38B
# parameters, not 8.03B; the 32 layers are the real shape, the LM head is 2.6x smaller), so that
# every sampled id decodes to text. Outputs are random words; ignore_eos keeps lengths exact.
#
# Preparation, here, once (from the repository root; .whl/ and .carry/ are git-ignored):
#   # the server's packages, missing from the GPU image (Python 3.12), as wheels:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 -d .whl fastapi==0.165.0 starlette==1.10.0 \
#     pydantic==2.13.4 pydantic-core==2.46.4 uvicorn==0.54.0 annotated-types==0.7.0 \
#     typing-inspection==0.4.2 opentelemetry-api==1.45.2 typing-extensions==4.16.0 \
#     anyio==4.16.0 annotated-doc==0.0.7
#   # the tokenizer (3.5 MB; converted from the embedded GGUF and cached if absent):
#   TOK=$(python3 -c 'from tritium.models.tokenizer_cache import embedded_tokenizer_dir as d; print(d())')
#   mkdir -p .carry && rm -rf .carry/tokenizer && cp -r "$TOK" .carry/tokenizer
# Device command (carry [".whl", ".carry"]; about 7 MB):
#   bash benchmarks/gpu_serve_session.sh
#
# Overrides (environment): MODEL, TOKENIZER_DIR, DEVICE, DTYPE, PORT, BUDGET (s), NUM_PROMPTS,
# IN_LEN, OUT_LEN, RANGE_RATIO, MAX_CONC, RATES (Poisson, space-separated), CHAT_PROMPTS,
# CHAT_WORDS, CHAT_OUT, CHAT_RATE, WARMUP_PROMPTS, SERVE_EXTRA (more `tritium serve` flags),
# HEALTH_TIMEOUT (s). A CPU check of the whole script (about a minute):
#   MODEL=random:tiny TOKENIZER_DIR=<the cache dir> DEVICE=cpu DTYPE=float32 NUM_PROMPTS=8 \
#   IN_LEN=32 OUT_LEN=8 MAX_CONC=4 RATES="8" CHAT_PROMPTS=4 CHAT_WORDS=12 CHAT_OUT=6 \
#   WARMUP_PROMPTS=2 SERVE_EXTRA="--num-kv-blocks 256 --max-model-len 512 --threads 1" \
#   OUT=/tmp/serve-cpu bash benchmarks/gpu_serve_session.sh
set -uo pipefail
T0=$(date +%s)
OUT=${OUT:-/tmp/tritium-out}
MODEL=${MODEL:-random:llama3-8b}
TOKENIZER_DIR=${TOKENIZER_DIR:-.carry/tokenizer}
DEVICE=${DEVICE:-cuda}
DTYPE=${DTYPE:-bfloat16}
PORT=${PORT:-8765}
BUDGET=${BUDGET:-540}
NUM_PROMPTS=${NUM_PROMPTS:-200}
IN_LEN=${IN_LEN:-1024}
OUT_LEN=${OUT_LEN:-128}
RANGE_RATIO=${RANGE_RATIO:-0.0}  # vLLM's default: every request exactly IN_LEN / OUT_LEN
MAX_CONC=${MAX_CONC:-64}
RATES=${RATES:-"16 4"}
CHAT_PROMPTS=${CHAT_PROMPTS:-100}
CHAT_WORDS=${CHAT_WORDS:-300}
CHAT_OUT=${CHAT_OUT:-128}
CHAT_RATE=${CHAT_RATE:-8}
WARMUP_PROMPTS=${WARMUP_PROMPTS:-32}
SERVE_EXTRA=${SERVE_EXTRA:-}
HEALTH_TIMEOUT=${HEALTH_TIMEOUT:-240}
URL=http://127.0.0.1:$PORT
mkdir -p "$OUT" "$OUT/runs"

if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD/src:${PYTHONPATH:-} PYTHONUNBUFFERED=1
left() { echo $((BUDGET - ($(date +%s) - T0))); }
say() { echo "[$(($(date +%s) - T0)) s] $*"; }

# -- environment and inputs ----------------------------------------------------------------
[ "$DEVICE" = cuda ] && nvidia-smi --query-gpu=name,memory.total,driver_version \
  --format=csv,noheader
python3 -c "import torch, triton, transformers, fastapi, uvicorn, pydantic; print('torch', \
torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__, \
'fastapi', fastapi.__version__, 'uvicorn', uvicorn.__version__)" || {
  echo "missing packages: carry .whl (see the preparation at the top)"; exit 1; }
[ -d "$TOKENIZER_DIR" ] || { echo "no tokenizer at $TOKENIZER_DIR: carry .carry (see the top)"
  exit 1; }
echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"

# -- server ----------------------------------------------------------------------------------
SERVE=(python3 -m tritium serve --model "$MODEL" --tokenizer "$TOKENIZER_DIR" --device "$DEVICE"
       --dtype "$DTYPE" --port "$PORT" --disable-uvicorn-access-log $SERVE_EXTRA)
say "server: ${SERVE[*]}"
"${SERVE[@]}" >"$OUT/server.log" 2>&1 &
SERVER=$!
python3 - "$URL" "$HEALTH_TIMEOUT" "$SERVER" <<'EOF' || { tail -30 "$OUT/server.log"; kill -9 "$SERVER" 2>/dev/null; exit 1; }
import os, sys, time, urllib.request
url, timeout, pid = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
t0 = time.time()
while time.time() - t0 < timeout:
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit(f"the server exited during start-up after {time.time() - t0:.0f} s")
    try:
        if urllib.request.urlopen(url + "/health", timeout=2).status == 200:
            print(f"server healthy after {time.time() - t0:.1f} s"); sys.exit(0)
    except OSError:
        pass
    time.sleep(1)
sys.exit(f"no /health within {timeout:.0f} s")
EOF
grep -E "KV cache|random|vocab" "$OUT/server.log" | head -5
[ "$DEVICE" = cuda ] && nvidia-smi --query-gpu=memory.used --format=csv,noheader

# -- benchmarks (one JSON per run, so a run cut short keeps the earlier ones) ------------------
BENCH=(python3 -m tritium bench serve --base-url "$URL" --percentiles 50,90,99)
RANDOM_WL=(--workload random --random-input-len "$IN_LEN" --random-output-len "$OUT_LEN"
           --random-range-ratio "$RANGE_RATIO")
bench() {  # name, then bench flags; skipped when under 60 s of the budget is left
  local name=$1; shift
  local t=$(( $(left) - 40 ))
  if [ "$t" -lt 60 ]; then say "skip $name: $(left) s of the budget left"; return; fi
  say "== $name (at most $t s)"
  timeout "$t" "${BENCH[@]}" "$@" --label "$name" --result-json "$OUT/runs/$name.json" \
    | grep -E "Successful|Failed|duration|throughput|Mean (TTFT|TPOT|ITL)|P99 (TTFT|TPOT)"
}
# untimed: compiles the kernels for batched prefill and decode before the measured runs
bench warmup "${RANDOM_WL[@]}" --num-prompts "$WARMUP_PROMPTS" --max-concurrency "$MAX_CONC"
rm -f "$OUT/runs/warmup.json"
bench "random_inf_c$MAX_CONC" "${RANDOM_WL[@]}" --num-prompts "$NUM_PROMPTS" \
  --max-concurrency "$MAX_CONC" --request-rate inf
for rate in $RATES; do
  bench "random_r${rate}_c$MAX_CONC" "${RANDOM_WL[@]}" --num-prompts "$NUM_PROMPTS" \
    --max-concurrency "$MAX_CONC" --request-rate "$rate"
done
bench "chat_r${CHAT_RATE}_c$MAX_CONC" --workload chat --num-prompts "$CHAT_PROMPTS" \
  --chat-input-words "$CHAT_WORDS" --chat-output-len "$CHAT_OUT" --ignore-eos \
  --request-rate "$CHAT_RATE" --max-concurrency "$MAX_CONC"

# -- shutdown: SIGINT must end the server cleanly (exit 0) -----------------------------------
say "SIGINT to the server"
kill -INT "$SERVER"
for _ in $(seq 60); do kill -0 "$SERVER" 2>/dev/null || break; sleep 0.5; done
if kill -0 "$SERVER" 2>/dev/null; then
  say "FAIL: the server still runs 30 s after SIGINT"; kill -9 "$SERVER"; SERVER_RC=killed
else
  wait "$SERVER"; SERVER_RC=$?
fi
say "server exit status: $SERVER_RC (clean = 0); last log lines:"
tail -4 "$OUT/server.log"

# -- results: one JSON list and a Markdown table -------------------------------------------
if ls "$OUT"/runs/*.json >/dev/null 2>&1; then
  python3 - "$OUT" "$SERVER_RC" "${SERVE[*]}" <<'EOF'
import glob, json, os, sys
out, rc, cmd = sys.argv[1:4]
runs = []
for path in sorted(glob.glob(os.path.join(out, "runs", "*.json")), key=os.path.getmtime):
    runs.extend(json.load(open(path)))
for r in runs:
    r["server_command"], r["server_exit_status"] = cmd, rc
json.dump(runs, open(os.path.join(out, "serve_results.json"), "w"), indent=1)
EOF
  python3 benchmarks/serve.py --summarize "$OUT/serve_results.json" | tee "$OUT/summary.md"
  rm -rf "$OUT/runs"
fi
say "done"
[ "$SERVER_RC" = 0 ]
