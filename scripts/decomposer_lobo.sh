#!/bin/bash
# Leave-one-book-out for the boundary model: for each training book, train on the others and
# evaluate on it with the layout hidden (`--hide layout`), once per configuration. Chooses a
# configuration without looking at the held-out books.
#
#   scripts/decomposer_lobo.sh "BOOK,BOOK,..." "NAME:TRAIN FLAGS[|EVAL FLAGS]" [...]
#   e.g. scripts/decomposer_lobo.sh "alice,botchan,moby.txt" \
#          "emb:--prose-features --prose-view-only" \
#          "noemb:--prose-features --prose-view-only --no-sentence-embeddings" \
#          "noemb-b1:--prose-features --prose-view-only --no-sentence-embeddings|--parent-bias 1"
#
# Books are catalog ids or paths (RRM_BOOKS, RRM_DB as for rrm). EXTRA (optional, comma-separated
# books or folders) joins every fold's training set and is never left out or evaluated on.
# Models go to ./lobo-NAME-I.
# Prints each fold's fixed-chunking and learned Pk, then the mean per configuration.
set -euo pipefail
RRM=${RRM:-rrm}
IFS=, read -r -a BOOKS <<< "$1"
shift
declare -A SUM
for cfg in "$@"; do
  name=${cfg%%:*}
  rest=${cfg#*:}
  flags=${rest%%|*}
  eval_flags=""
  [[ $rest == *"|"* ]] && eval_flags=${rest#*|}
  fixed=0 learned=0
  for i in "${!BOOKS[@]}"; do
    held=${BOOKS[$i]}
    train=$(printf "%s\n" "${BOOKS[@]}" | grep -v -x -F -- "$held" | paste -sd,)
    [[ -n ${EXTRA:-} ]] && train="$train,$EXTRA"
    # shellcheck disable=SC2086
    $RRM -q decomposer train --books "$train" $flags --out "lobo-$name-$i.safetensors" > /dev/null
    # shellcheck disable=SC2086
    line=$($RRM -q decomposer eval --books "$held" --model "lobo-$name-$i.safetensors" \
      --hide layout $eval_flags)
    f=$(awk '$1 == "MEAN" && $2 == "fixed" {print $6}' <<< "$line")
    l=$(awk '$1 == "MEAN" && $2 == "learned" {print $6}' <<< "$line")
    echo "$name fold $i ($held): fixed $f learned $l"
    fixed=$(awk -v a="$fixed" -v b="$f" 'BEGIN {print a + b}')
    learned=$(awk -v a="$learned" -v b="$l" 'BEGIN {print a + b}')
  done
  SUM[$name]=$(awk -v f="$fixed" -v l="$learned" -v n="${#BOOKS[@]}" \
    'BEGIN {printf "fixed %.3f learned %.3f (%.2fx)", f / n, l / n, l / f}')
done
for cfg in "$@"; do
  name=${cfg%%:*}
  echo "MEAN $name: ${SUM[$name]}"
done
