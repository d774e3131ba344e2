#!/usr/bin/env bash
# Serving through existing servers, measured side by side in one run: the same books summarized
# (greedy, same caps) by rrm's own engine, through one llama.cpp server, through two, and through
# two of which one is killed mid-run. Benchmark-only; nothing here is part of the test suite.
#
#   LLAMA_SERVER=/path/to/llama-server scripts/serve_bench.sh OUT_DIR BOOK [BOOK...]
#
# LLAMA_SERVER is llama.cpp's `llama-server`, built outside the repository (e.g. from the
# llama.cpp sources vendored in llama-cpp-python's source distribution:
# `cmake -B build -DLLAMA_CURL=OFF && cmake --build build --target llama-server`).
# Settings (environment): THREADS (2: split over the servers), SLOTS (4 parallel slots per
# server), BATCH (8 requests in flight), KILL_AFTER (40 s), RRM (target/release/rrm).
# Each configuration gets its own database, so nothing is reused between them. The table goes
# to OUT_DIR/serving.md, each run's log and `endpoint summary` lines to OUT_DIR/*.log.
set -euo pipefail

out=${1:?usage: serve_bench.sh OUT_DIR BOOK [BOOK...]}
shift
[ $# -ge 1 ] || { echo "usage: serve_bench.sh OUT_DIR BOOK [BOOK...]" >&2; exit 2; }
server=${LLAMA_SERVER:?set LLAMA_SERVER to the llama-server binary of llama.cpp}
rrm=${RRM:-target/release/rrm}
threads=${THREADS:-2}
slots=${SLOTS:-4}
batch=${BATCH:-8}
kill_after=${KILL_AFTER:-40}
model=${MODEL_GGUF:-${RRM_MODELS:-$HOME/.cache/rrm/models}/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf}
[ -f "$model" ] || { echo "model file $model not found (rrm models pull smollm2-135m)" >&2; exit 2; }
mkdir -p "$out"
pids=()
cleanup() { for p in "${pids[@]:-}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

# start_server PORT THREADS: a llama.cpp server with SLOTS slots (continuous batching), ready.
start_server() {
  local port=$1 t=$2
  "$server" -m "$model" --port "$port" -np "$slots" -t "$t" -tb "$t" -c $((slots * 4096)) \
    --no-webui >"$out/server-$port.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 120); do
    curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  echo "llama-server on port $port did not become ready (see $out/server-$port.log)" >&2
  exit 1
}

stop_servers() { cleanup; wait 2>/dev/null || true; pids=(); }

# run NAME ARGS...: summarize the books into a fresh database, timing it.
run() {
  local name=$1
  shift
  rm -rf "$out/db-$name"
  local start end rc=0
  start=$(date +%s.%N)
  RRM_LOG=rrm=warn,rrm::infer::openai=info "$rrm" summarize "$@" --db "$out/db-$name" --batch-size "$batch" \
    "${books[@]}" >"$out/$name.log" 2>&1 || rc=$?
  end=$(date +%s.%N)
  echo "$name $rc $(awk -v a="$start" -v b="$end" 'BEGIN { print b - a }')" >>"$out/times.txt"
}

books=("$@")
: >"$out/times.txt"
openai=(--backend openai --model smollm2 --endpoint-slots "$slots")

run local
start_server 8301 "$threads"
run one "${openai[@]}" --endpoint http://127.0.0.1:8301
stop_servers
half=$(( threads > 1 ? threads / 2 : 1 ))
start_server 8301 "$half"
start_server 8302 "$half"
run two "${openai[@]}" --endpoint http://127.0.0.1:8301 --endpoint http://127.0.0.1:8302
stop_servers
start_server 8301 "$half"
start_server 8302 "$half"
victim=${pids[1]}
( sleep "$kill_after"; kill -9 "$victim" 2>/dev/null; echo "the server on port 8302 was killed (kill -9) ${kill_after} s into the run" >"$out/events.txt" ) &
run two-killed "${openai[@]}" --endpoint http://127.0.0.1:8301 --endpoint http://127.0.0.1:8302
stop_servers

{
  echo "| configuration | exit | seconds |"
  echo "|---|---|---|"
  while read -r name rc secs; do
    printf '| %s | %s | %.0f |\n' "$name" "$rc" "$secs"
  done <"$out/times.txt"
  echo
  cat "$out/events.txt" 2>/dev/null || true
  echo
  echo "Per endpoint (replies, failed attempts, hedged):"
  grep -h 'endpoint summary' "$out"/two*.log || true
} >"$out/serving.md"
cat "$out/serving.md"
