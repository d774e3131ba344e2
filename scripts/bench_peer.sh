#!/usr/bin/env bash
# Side by side, in one run: llama.cpp (through an installed llama-cpp-python) and rrm on the
# same GGUF, the same 600-token prompts, the same thread count; rrm once with the kernels this
# CPU picks at run time and once forced to the AVX2 kernels (RRM_CPU_KERNELS=avx2).
#
#   scripts/bench_peer.sh PYTHON MODEL.gguf [RRM_BINARY]
#
# PYTHON: a Python whose environment has llama-cpp-python (a throwaway venv outside the
# repository; benchmark-only). Env: THREADS (default 2), NEW_TOKENS (default 128),
# LEVELS (default "auto avx2"). Prints the CPU, its SIMD flags, the load, then one JSON row
# per measurement.
set -euo pipefail
py="$1"
model="$2"
rrm="${3:-target/release/rrm}"
threads="${THREADS:-2}"
new_tokens="${NEW_TOKENS:-128}"
here="$(cd "$(dirname "$0")" && pwd)"

echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
echo "simd: $(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' \
  | grep -E '^(avx2|fma|f16c|avx512f|avx512bw|avx512vl|avx512_vnni|avx512_bf16|avx512_fp16|avx_vnni|amx_tile|amx_int8|amx_bf16)$' \
  | tr '\n' ' ')"
echo "load before: $(cat /proc/loadavg)"

"$py" "$here/bench_llamacpp.py" --model "$model" --threads "$threads" \
  --new-tokens "$new_tokens" --repeat 3 --json
echo "load: $(cat /proc/loadavg)"
for level in ${LEVELS:-auto avx2}; do
  echo "rrm kernels: $level"
  RRM_CPU_KERNELS="$level" CANDLE_NUM_THREADS="$threads" "$rrm" -q bench generate \
    --model "$model" --batch 1,8 --new-tokens "$new_tokens" --json
  echo "load: $(cat /proc/loadavg)"
done
