#!/usr/bin/env bash
# Candidate summaries of SQuALITY stories by the policy model, for reward-model pairs
# (scripts/rm_data.py squality-pairs): each story is summarized recursively (best-of-1, as
# `rrm summarize` does by default), then K more candidates of its root node are drawn with
# `rrm node sample`, and the root node (input, candidates, samples) is saved as JSON.
#
#   scripts/rm_squality_candidates.sh STORIES_DIR OUT_DIR [K]
#
# Environment: RRM (the binary, default `rrm`), RRM_THREADS, RUN (a prefix such as
# /work/plan/heavy). Stories are taken train and dev interleaved, so a partial run is usable;
# a story whose JSON exists is skipped (the run resumes).
set -euo pipefail
STORIES=$1; OUT=$2; K=${3:-3}
RRM=${RRM:-rrm}; RUN=${RUN:-}
mkdir -p "$OUT/nodes"
DB="$OUT/db"; TREES="$OUT/trees"
mapfile -t train < <(ls "$STORIES"/squality_train_*.txt | sort)
mapfile -t dev < <(ls "$STORIES"/squality_dev_*.txt | sort)
order=()
for i in $(seq 0 $(( ${#train[@]} > ${#dev[@]} ? ${#train[@]} - 1 : ${#dev[@]} - 1 ))); do
  [ $i -lt ${#train[@]} ] && order+=("${train[$i]}")
  [ $i -lt ${#dev[@]} ] && order+=("${dev[$i]}")
done
for f in "${order[@]}"; do
  name=$(basename "$f" .txt)
  [ -s "$OUT/nodes/$name.json" ] && continue
  echo "== $name $(date +%T)"
  $RUN "$RRM" --db "$DB" summarize "$f" --trees-dir "$TREES" --batch-size 16 -q > /dev/null
  root=$("$RRM" --db "$DB" tree show "$f" --trees-dir "$TREES" --json |
    python3 -c "import json,sys; print(json.load(sys.stdin)[\"root\"])")
  $RUN "$RRM" --db "$DB" node sample "$root" --book "$f" --trees-dir "$TREES" -n "$K" -q > /dev/null
  "$RRM" --db "$DB" node show "$root" --book "$f" --trees-dir "$TREES" --json > "$OUT/nodes/$name.json.tmp"
  mv "$OUT/nodes/$name.json.tmp" "$OUT/nodes/$name.json"
done
echo "done $(date +%T)"
