#!/usr/bin/env bash
# Builds the bundle that travels to a GPU machine (no Rust, no network there, at most 64 MiB of
# files): target/gpu-bundle/, then checks it with a dry run here unless --no-dry-run.
#
#   scripts/gpu-bundle.sh [--no-dry-run]
#
# The bundle holds:
#   bin/rrm.xz          the release binary built with `--features cuda` (stripped, xz)
#   bin/cuda-tests.xz   the test binary of tests/cuda.rs: CPU vs GPU logits and embeddings,
#                       batched = alone on the GPU, the engine on the GPU
#   models/             skeletons of the default policy model and encoder (`rrm twin`): their
#                       metadata, tokenizers and shapes, inflated on the GPU machine into models
#                       of the real size with random weights (the real weights do not fit)
#   books/alice.txt     for the end-to-end run
#   gpu-check.sh        the check itself (a copy of scripts/gpu-check.sh)
#   MANIFEST            commit, build flags, sizes, sha256s
#
# Build: the CUDA 13.0 toolkit from scripts/cuda-toolkit.sh, CARGO_TARGET_DIR=target-cuda (the
# cuda feature rebuilds candle; the CPU target/ stays as it is), and RUSTFLAGS
# "-C target-cpu=x86-64-v3" instead of .cargo/config.toml's native: the GPU machine's processor
# is not this one (any x86-64 with AVX2 and FMA runs it).
#
# Then run it on the GPU machine, in one call of the device tool from the repository root:
#   command: bash target/gpu-bundle/gpu-check.sh target/gpu-bundle
#   carry:   ["target/gpu-bundle"]        timeout_s: 540
# Results come back under $OUT (gpu-check.md: the CPU vs GPU table; logs; JSON rows).
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
dry_run=1
[[ "${1:-}" == "--no-dry-run" ]] && dry_run=0

out="$root/target/gpu-bundle"
log() { echo "gpu-bundle: $*" >&2; }

eval "$(scripts/cuda-toolkit.sh)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target-cuda}"
export RUSTFLAGS="${RRM_BUNDLE_RUSTFLAGS:--C target-cpu=x86-64-v3}"

log "building rrm and the CUDA tests (release, --features cuda) in $CARGO_TARGET_DIR"
cargo build --release --features cuda --bin rrm
test_bin="$(cargo test --release --features cuda --test cuda --no-run --message-format=json |
    python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "cuda" and m.get("executable"):
        print(m["executable"])')"
[[ -x "$test_bin" ]] || { log "no test binary for tests/cuda.rs"; exit 1; }
rrm="$CARGO_TARGET_DIR/release/rrm"

rm -rf "$out"
mkdir -p "$out/bin" "$out/models" "$out/books"
for pair in "rrm:$rrm" "cuda-tests:$test_bin"; do
    name="${pair%%:*}"
    strip -o "$out/bin/$name" "${pair#*:}"
    xz -T0 -6 "$out/bin/$name"
done

# The link stub stands in for the driver library here (the CUDA build needs libcuda.so.1 to
# start even on the CPU; every stub call fails, so device `auto` falls back to the CPU).
export LD_LIBRARY_PATH="$CUDA_HOME/lib:$CUDA_HOME/lib/stubs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
"$rrm" -q twin skeleton smollm2-135m --out "$out/models/smollm2.skeleton.gguf"
"$rrm" -q twin skeleton minilm-l6 --out "$out/models/minilm.skeleton"

alice_sha=7467306ee0feed4971260f3c87421154a05be571d944e9cb021a5713700c38f0
books="${RRM_BOOKS:-$root/books}"
if [[ -f "$books/alice.txt" ]] && echo "$alice_sha  $books/alice.txt" | sha256sum -c --status; then
    cp "$books/alice.txt" "$out/books/alice.txt"
else
    "$rrm" -q books fetch alice --books-dir "$out/books"
fi
cp scripts/gpu-check.sh "$out/gpu-check.sh"

{
    echo "commit $(git rev-parse HEAD)$(git diff --quiet HEAD -- src tests Cargo.toml Cargo.lock || echo ' (with uncommitted changes)')"
    echo "built $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs)"
    echo "RUSTFLAGS=$RUSTFLAGS CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP CUDARC_CUDA_VERSION=$CUDARC_CUDA_VERSION"
    "$CUDA_HOME/bin/nvcc" --version | tail -2
    echo
    (cd "$out" && find . -type f ! -name MANIFEST -print0 | sort -z | xargs -0 sha256sum)
} >"$out/MANIFEST"

bytes=$(du -sb "$out" | cut -f1)
log "bundle: $out, $((bytes / 1024 / 1024)) MiB ($bytes bytes)"
(cd "$out" && find . -type f -exec ls -l {} + | awk '{printf "  %10d  %s\n", $5, $9}') >&2
limit=$((60 * 1024 * 1024))
if ((bytes > limit)); then
    log "over 60 MiB: with the repository itself it would not fit the GPU machine's 64 MiB"
    exit 1
fi

if ((dry_run)); then
    log "dry run of gpu-check.sh here (no GPU: everything but the GPU part)"
    OUT="$root/target/gpu-check-dry" RRM_GPU_CHECK_DRY=1 bash "$out/gpu-check.sh" "$out"
fi
