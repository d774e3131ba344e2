#!/usr/bin/env bash
# The feedback-kind ablation: one reward model trained on all kinds of a data file, then one per
# kind with that kind left out (`--kinds -KIND`), each evaluated on its own test groups and on
# held-out files; prints one table (accuracy, log-loss, length-balanced accuracy) and writes
# the JSON of every run under OUT_DIR.
#
#   scripts/rm_ablation.sh TRAIN.jsonl OUT_DIR HELDOUT.jsonl... [-- EXTRA TRAIN ARGS]
#
# Environment: RRM (the binary, default `rrm`), RRM_THREADS (default 2), KINDS (the kinds to
# leave out one at a time, default "comparison demonstration likert ordinal").
# Example (MiniLM heads, data from scripts/rm_data.py):
#   scripts/rm_ablation.sh /work/data/rm/train/mix-train.jsonl /work/data/rm/ablation \
#     /work/data/rm/heldout/tiiiger.jsonl /work/data/rm/heldout/squality-human.jsonl
set -euo pipefail
[ $# -ge 3 ] || { sed -n 2,12p "$0"; exit 2; }
TRAIN=$1; OUT=$2; shift 2
HELD=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do HELD+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
EXTRA=("$@")
RRM=${RRM:-rrm}; THREADS=${RRM_THREADS:-2}
KINDS=${KINDS:-comparison demonstration likert ordinal}
mkdir -p "$OUT"
for setting in all $(for k in $KINDS; do echo "-$k"; done); do  # all, -comparison, ...
  dir="$OUT/${setting#-}"; [ "$setting" = all ] || dir="$OUT/without-${setting#-}"
  mkdir -p "$dir"
  if [ ! -s "$dir/train.json" ]; then
    echo "== $setting $(date +%T)" >&2
    "$RRM" --threads "$THREADS" --db "$OUT/db" reward train --data "$TRAIN" --kinds="all,${setting#all}" \
      --reward-dir "$dir/reward" --json "${EXTRA[@]}" > "$dir/train.json.tmp"
    mv "$dir/train.json.tmp" "$dir/train.json"
  fi
  for h in "${HELD[@]}"; do
    name=$(basename "$h" .jsonl)
    [ -s "$dir/$name.json" ] && continue
    "$RRM" --threads "$THREADS" --db "$OUT/db" reward eval --model latest \
      --reward-dir "$dir/reward" --data "$h" --json > "$dir/$name.json.tmp"
    mv "$dir/$name.json.tmp" "$dir/$name.json"
  done
done
python3 - "$OUT" "$KINDS" "${HELD[@]}" <<'EOF'
import json, os, sys
out, kinds, held = sys.argv[1], sys.argv[2].split(), [os.path.basename(h)[:-6] for h in sys.argv[3:]]
settings = [("all", "all")] + [(f"without {k}", f"without-{k}") for k in kinds]
sets = ["test groups"] + held
print("| training kinds | pairs | " + " | ".join(f"{s}: acc / log-loss / balanced acc" for s in sets) + " |")
print("|---" * (2 + len(sets)) + "|")
for label, d in settings:
    card = json.load(open(os.path.join(out, d, "train.json")))
    reports = [card.get("report")] + [json.load(open(os.path.join(out, d, h + ".json")))["report"] for h in held]
    cells = []
    for r in reports:
        if not r:
            cells.append("—")
            continue
        a, b = r["all"], r["balanced"]
        cells.append(f"{100 * a['model']['accuracy']:.1f} % / {a['model']['log_loss']:.3f} / "
                     f"{100 * b['model']['accuracy']:.1f} % (n {b['model']['decided']})")
    train_pairs = card["data"].get("train_pairs", card["data"].get("pairs"))
    print(f"| {label} | {train_pairs} | " + " | ".join(cells) + " |")
first = lambda h: json.load(open(os.path.join(out, "all", h + ".json")))["report"]["all"]
print("\nbaselines (the longer wins / word overlap): " + ", ".join(
    f"{h} {100 * first(h)['length_accuracy']:.1f} % / {100 * first(h)['overlap_accuracy']:.1f} %" for h in held))
EOF
