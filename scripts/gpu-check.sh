#!/usr/bin/env bash
# The GPU check: verifies and measures rrm's CUDA build on a GPU machine, from the bundle that
# scripts/gpu-bundle.sh makes. One call of the device tool, from the repository root:
#
#   command: bash target/gpu-bundle/gpu-check.sh target/gpu-bundle
#   carry:   ["target/gpu-bundle"]        timeout_s: 540
#
# Steps (each under its own time limit, all under RRM_GPU_CHECK_BUDGET seconds, default 450;
# a step that would not fit is skipped and says so):
#   1. unpack the binaries; find the CUDA 13 libraries (the image's PyTorch environment,
#      nvidia/cu13/lib) and the driver's libcuda; `ldd` must resolve everything
#   2. inflate the twin models (the real models' shapes, types and tokenizers, random weights)
#   3. the CUDA tests (tests/cuda.rs): CPU vs GPU logits and embeddings, batched = alone
#   4. `rrm bench generate --device cuda` at batch 1, 8, 32, 64, 128 with 600-token prompts,
#      and on the CPU at batch 1 and 8 for comparison
#   5. `rrm bench encoder` on the GPU and on the CPU
#   6. `rrm summarize alice --device cuda`, cold (fresh database), timed end to end
# Results in $OUT (at most 8 files come back): gpu-check.md (the table), gpu-check.log (every
# command's output), results.jsonl (every measured row), alice-summary.txt.
#
# Safe to rerun: scratch goes to a fresh temporary folder, the database is new every time, and
# $OUT's files are overwritten. RRM_GPU_CHECK_DRY=1 is the dry run on a machine without a GPU
# (scripts/gpu-bundle.sh does it): the same steps on the CPU, smaller, with the link stub for
# the driver library; it proves the plumbing, not the GPU.
set -uo pipefail

bundle="$(cd "${1:-$(dirname "$0")}" && pwd)"
dry="${RRM_GPU_CHECK_DRY:-0}"
out="${OUT:-$bundle/out}"
mkdir -p "$out"
rm -f "$out/gpu-check.md" "$out/results.jsonl" "$out/alice-summary.txt"
work="$(mktemp -d "${TMPDIR:-/tmp}/rrm-gpu-check.XXXXXX")"
budget="${RRM_GPU_CHECK_BUDGET:-450}"
start=$(date +%s)
exec > >(tee "$out/gpu-check.log") 2>&1

results="$out/results.jsonl"
elapsed() { echo $(($(date +%s) - start)); }
note() { echo "== [$(elapsed)s] $*"; }
py() { python3 - "$@"; }
# One JSON row into results.jsonl: key=value pairs (values that look like numbers stay numbers).
record() {
    py "$@" >>"$results" <<'PY'
import json, sys
row = {}
for kv in sys.argv[1:]:
    k, v = kv.split("=", 1)
    try:
        row[k] = float(v) if "." in v or "e" in v.lower() else int(v)
    except ValueError:
        row[k] = v
print(json.dumps(row))
PY
}
# step NAME LIMIT CMD...: runs CMD under min(LIMIT, what is left of the budget); records rc, time.
step() {
    local name="$1" limit="$2"
    shift 2
    local left=$((budget - $(elapsed)))
    if ((left < 15)); then
        note "$name: skipped, the budget of ${budget}s is spent"
        record kind=step step="$name" rc=skipped seconds=0
        return 99
    fi
    ((limit > left)) && limit=$left
    note "$name (limit ${limit}s): $*"
    local t0 t1 rc
    t0=$(date +%s.%N)
    timeout --kill-after=10 "$limit" "$@"
    rc=$?
    t1=$(date +%s.%N)
    local seconds
    seconds=$(awk "BEGIN{printf \"%.2f\", $t1 - $t0}")
    ((rc == 124 || rc == 137)) && note "$name: stopped at its limit of ${limit}s"
    note "$name: rc=$rc in ${seconds}s"
    record kind=step step="$name" rc="$rc" seconds="$seconds"
    return $rc
}

note "rrm GPU check, bundle $bundle, dry run: $dry"
cat "$bundle/MANIFEST" 2>/dev/null | head -5
echo "host: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs), $(nproc) cores"
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
fi

# 1. Binaries and libraries.
for name in rrm cuda-tests; do
    if command -v xz >/dev/null; then
        xz -dc "$bundle/bin/$name.xz" >"$work/$name"
    else
        py "$bundle/bin/$name.xz" "$work/$name" <<'PY'
import lzma, shutil, sys
with lzma.open(sys.argv[1]) as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
    fi
    chmod +x "$work/$name"
done
rrm="$work/rrm"

find_cuda_libs() {
    local d
    for d in ${RRM_CUDA_LIB:-} $(python3 -c 'import os, nvidia; [print(os.path.join(p, "cu13", "lib")) for p in nvidia.__path__]' 2>/dev/null) \
        /opt/torch/.venv/lib/python3*/site-packages/nvidia/cu13/lib; do
        [[ -f "$d/libcublas.so.13" ]] && { echo "$d"; return; }
    done
    d="$(find / -xdev -name libcublas.so.13 -path '*cu13*' 2>/dev/null | head -1)"
    [[ -n "$d" ]] && dirname "$d"
}
if [[ "$dry" != 1 ]]; then
    libs="$(find_cuda_libs)"
    [[ -z "$libs" ]] && { note "no CUDA 13 libraries (libcublas.so.13) found"; exit 1; }
    export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    if ldd "$rrm" | grep -q 'libcuda.so.1 => not found'; then
        for d in /usr/local/nvidia/lib64 /usr/lib/x86_64-linux-gnu /usr/lib64; do
            [[ -e "$d/libcuda.so.1" ]] && { export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$d"; break; }
        done
    fi
fi
note "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
for name in rrm cuda-tests; do
    ldd "$work/$name" | grep -E 'cuda|cublas|curand|nvrtc|not found'
    if ldd "$work/$name" | grep -q 'not found'; then
        note "$name: unresolved libraries (above); stopping"
        record kind=step step=ldd rc=1 seconds=0
        exit 1
    fi
done
record kind=step step=ldd rc=0 seconds=0

if [[ "$dry" == 1 ]]; then
    gpu=cpu
    batches=1,2 prompt=64 new=4 cpu_batches=1 cpu_prompt=64 cpu_new=4
    sentences=64 passages=8 cpu_sentences=64 cpu_passages=8
    head -c 12000 "$bundle/books/alice.txt" >"$work/alice-excerpt.txt"
    book=("$work/alice-excerpt.txt" --max-height 0 --batch-size 8)
else
    gpu=cuda
    batches=1,8,32,64,128 prompt=600 new=64 cpu_batches=1,8 cpu_prompt=600 cpu_new=32
    sentences=4096 passages=512 cpu_sentences=512 cpu_passages=64
    book=(alice --books-dir "$bundle/books" --batch-size 128)
fi

# 2. Twins of the real models.
model="$work/smollm2-twin.gguf"
encoder="$work/minilm-twin"
step inflate-policy 60 "$rrm" twin inflate "$bundle/models/smollm2.skeleton.gguf" --out "$model" || exit 1
step inflate-encoder 60 "$rrm" twin inflate "$bundle/models/minilm.skeleton" --out "$encoder" || exit 1

# 3. Tests. In the dry run the CPU stands in for the GPU (RRM_CUDA_TESTS_ON_CPU): that checks
# the tests and the twins in the CUDA build, not the GPU.
require=1 on_cpu=0
[[ "$dry" == 1 ]] && require=0 on_cpu=1
RRM_REQUIRE_GPU=$require RRM_CUDA_TESTS_ON_CPU=$on_cpu RRM_GPU_CHECK_MODEL="$model" \
    RRM_GPU_CHECK_ENCODER="$encoder" step tests 150 "$work/cuda-tests" --test-threads 1 --nocapture

# 4-5. Throughput. Each bench prints JSON rows; they are tagged with the device and kept.
bench() {
    local name="$1" device="$2"
    shift 2
    step "$name" "$@" >"$work/$name.jsonl"
    local rc=$?
    cat "$work/$name.jsonl"
    py "$work/$name.jsonl" "$name" "$device" >>"$results" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    line = line.strip()
    if line.startswith("{"):
        row = json.loads(line)
        row.update(kind=sys.argv[2].rsplit("-", 1)[0], device=sys.argv[3])
        print(json.dumps(row))
PY
    return $rc
}
bench generate-gpu "$gpu" 200 "$rrm" -q bench generate --device "$gpu" --model "$model" \
    --batch "$batches" --prompt-len "$prompt" --new-tokens "$new" --json
bench encoder-gpu "$gpu" 60 "$rrm" -q bench encoder --device "$gpu" --encoder "$encoder" \
    --sentences "$sentences" --passages "$passages" --json

# 6. End to end, cold.
step summarize-gpu 240 "$rrm" -q --db "$work/db" summarize "${book[@]}" --trees-dir "$work/trees" \
    --model "$model" --device "$gpu" --encoder "$encoder" --encoder-device "$gpu" \
    --out "$out/alice-summary.txt"

# CPU rows for the comparison (after the GPU ones: they matter less if the budget runs out).
bench generate-cpu cpu 120 "$rrm" -q bench generate --device cpu --model "$model" \
    --batch "$cpu_batches" --prompt-len "$cpu_prompt" --new-tokens "$cpu_new" --json
bench encoder-cpu cpu 60 "$rrm" -q bench encoder --device cpu --encoder "$encoder" \
    --sentences "$cpu_sentences" --passages "$cpu_passages" --json

if [[ "$dry" == 1 ]]; then
    # Without a GPU, asking for one must fail cleanly (an error, not a crash).
    "$rrm" bench generate --device cuda --model "$model" --batch 1 --prompt-len 8 --new-tokens 2
    rc=$?
    note "--device cuda without a GPU: rc=$rc (expected 1)"
    record kind=step step=no-gpu-error rc="$rc" seconds=0
fi

# The table.
py "$results" "$dry" "$(elapsed)" >"$out/gpu-check.md" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
dry, total = sys.argv[2] == "1", sys.argv[3]
steps = {r["step"]: r for r in rows if r.get("kind") == "step"}
out = []
out.append("# rrm GPU check" + (" (DRY RUN on the CPU: no GPU figures)" if dry else ""))
out.append("")
out.append("Models are twins: the real models' shapes, weight types (Q4_1/Q8_0 policy, F32 encoder) and")
out.append("tokenizers with random weights, so the work per token is the real one; the twin policy")
out.append("never stops early (its end-token rows are zero), so every node runs to its token cap.")
out.append("")
out.append("## Generation (SmolLM2-135M twin), `rrm bench generate`")
out.append("")
out.append("| device | batch | prompt len | prompt tok/s | decode tok/s (sum) | prefill s | decode s |")
out.append("|---|---:|---:|---:|---:|---:|---:|")
for r in rows:
    if r.get("kind") == "generate":
        out.append(f"| {r['device']} | {r['batch']} | {r['prompt_len']} | {r['prompt_tps']:.0f} | "
                   f"{r['decode_tps']:.0f} | {r['prefill_s']:.3f} | {r['decode_s']:.3f} |")
out.append("")
out.append("## Encoder (all-MiniLM-L6-v2 twin), `rrm bench encoder`")
out.append("")
out.append("| device | workload | texts | tokens | seconds | texts/s | tokens/s |")
out.append("|---|---|---:|---:|---:|---:|---:|")
for r in rows:
    if r.get("kind") == "encoder":
        out.append(f"| {r['device']} | {r['workload']} | {r['texts']} | {r['tokens']} | "
                   f"{r['seconds']:.3f} | {r['texts_per_s']:.0f} | {r['tokens_per_s']:.0f} |")
out.append("")
out.append("## Steps")
out.append("")
out.append("| step | exit | seconds |")
out.append("|---|---:|---:|")
for name, r in steps.items():
    out.append(f"| {name} | {r['rc']} | {r['seconds']} |")
out.append("")
s = steps.get("summarize-gpu")
if s:
    what = "an excerpt, leaves only, on the CPU" if dry else "Alice, cold, --device cuda, --batch-size 128"
    out.append(f"End to end ({what}): {s['seconds']} s, exit {s['rc']}. "
               "On the CPU it is not run here (minutes); see FACTS.md for CPU figures.")
g = {r["batch"]: r for r in rows if r.get("kind") == "generate" and r.get("device") == "cuda"}
if 64 in g:
    out.append("")
    out.append(f"Goals (135M): decode at batch 64 {g[64]['decode_tps']:.0f} tok/s (goal 5,000); "
               f"prefill at batch 64 {g[64]['prompt_tps']:.0f} tok/s (goal 50,000); "
               f"Alice end to end {s['seconds'] if s else '-'} s (goal 15).")
out.append("")
out.append(f"Whole check: {total} s.")
print("\n".join(out))
PY
cat "$out/gpu-check.md"
note "done in $(elapsed)s; results in $out"
rm -rf "$work"
