#!/usr/bin/env bash
# The student's evaluation (issue #22's table): the agent with the step grammar, greedy N=1,
# on the held-out sets, each question searching its own paragraphs where it has them.
#   scripts/eval-student.sh OUT_DIR LIMIT [eval flags...]
# e.g. the built-in student:   scripts/eval-student.sh runs/student 20 --student agent-smollm2-135m
#      the undistilled base:                 scripts/eval-student.sh runs/base 20 --base
#      another adapter (a new checkpoint):   scripts/eval-student.sh runs/s100 20 \
#                      --adapter ADAPTER.gguf --prompt models/prompts/student.toml
#      a CoT-distilled adapter:            MODES=cot scripts/eval-student.sh runs/cot 20 \
#                      --adapter COT_ADAPTER.gguf
# SETS (default "hotpotqa-distractor gsm-hard hipporag-musique math500") picks the sets, by
# name or as JSONL files (e.g. the dev sets of scripts/dev-sets.py: choose hyper-parameters
# on those, never on the held-out sets);
# MODES (default "grammar") may add "sag8" and "nogrammar" agent rows, or "cot" (one
# chain-of-thought reply, models/prompts/eval-cot.toml). Re-running resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: scripts/eval-student.sh OUT_DIR LIMIT [eval flags...]}
LIMIT=${2:?usage: scripts/eval-student.sh OUT_DIR LIMIT [eval flags...]}
shift 2
BIN=${SMALL_AGENT_BIN:-bin/small-agent}
SETS=${SETS:-hotpotqa-distractor gsm-hard hipporag-musique math500}
MODES=${MODES:-grammar}
mkdir -p "$OUT"
for mode in $MODES; do
  case $mode in
    grammar) flags=(--mode agent --grammar --sag 1) ;;
    nogrammar) flags=(--mode agent --no-grammar --sag 1) ;;
    sag8) flags=(--mode agent --grammar --sag 8) ;;
    cot) flags=(--mode cot) ;;
    *) echo "eval-student.sh: unknown mode $mode (grammar, nogrammar, sag8, cot)" >&2; exit 2 ;;
  esac
  for set in $SETS; do
    name=$(basename "$set" .jsonl)
    corpus=()
    case $mode:$set in cot:*) ;; *:hotpotqa-distractor|*:hipporag-*) corpus=(--corpus own) ;; esac
    t0=$(date +%s)
    "$BIN" eval --dataset "$set" "${corpus[@]}" "${flags[@]}" --limit "$LIMIT" \
      --resume --out "$OUT/$name-$mode" "$@" >"$OUT/$name-$mode.table.md" 2>>"$OUT/$name-$mode.log" || {
      echo "run $name-$mode failed (see $OUT/$name-$mode.log)" >&2; exit 1; }
    echo "$name-$mode $LIMIT $(( $(date +%s) - t0 ))" >>"$OUT/wall-times.txt"
    echo "$name-$mode (first $LIMIT) done in $(( $(date +%s) - t0 )) s" >&2
  done
done
"$BIN" eval report "$OUT"/*/ >"$OUT/report.md"
cat "$OUT/report.md"
