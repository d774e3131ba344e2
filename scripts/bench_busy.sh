#!/usr/bin/env bash
# Threads on a busy machine: `rrm bench generate` quiet, then beside two busy loops (one per
# core), each time with the kernel pool's per-shape measurement on (the default), off
# (RRM_POOL_ADAPT=0: every region on every thread) and with one thread.
#
#   scripts/bench_busy.sh [RRM_BINARY]
set -uo pipefail
rrm="${1:-target/release/rrm}"
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
configs=("adaptive:" "fixed:RRM_POOL_ADAPT=0" "one-thread:CANDLE_NUM_THREADS=1")
measure() {
  for cfg in "${configs[@]}"; do
    echo "== ${cfg%%:*} (load $(cut -d' ' -f1-3 /proc/loadavg))"
    # shellcheck disable=SC2086
    env ${cfg#*:} "$rrm" -q bench generate --batch 1,8 --new-tokens 64
  done
}
echo "### quiet"
measure
echo "### two busy loops"
pids=()
for _ in 1 2; do (while :; do :; done) & pids+=($!); done
trap 'kill "${pids[@]}" 2>/dev/null' EXIT
sleep 2
measure
