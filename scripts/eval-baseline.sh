#!/usr/bin/env bash
# The baseline of issue #6: CoT, agent (grammar, N=1) and agent (grammar, SAG N=8) with the
# default model on the first 30 HippoRAG HotpotQA questions (searching their own
# paragraphs) and the first 30 GSM-Hard questions, then the side-by-side report.
# Usage: scripts/eval-baseline.sh [OUT_DIR] (default: eval-results/baseline); extra
# arguments after OUT_DIR go to every run (e.g. --threads 1, which holds up far better than
# two threads when the cores are shared with other jobs). Re-running resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-eval-results/baseline}
shift || true
BIN=${SMALL_AGENT_BIN:-${CARGO_TARGET_DIR:-target}/release/small-agent}
mkdir -p "$OUT"
run() {
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s)
  "$BIN" eval --limit "$limit" --resume --out "$OUT/$name" "$@" >"$OUT/$name.table.md" 2>>"$OUT/$name.log" || {
    echo "run $name failed (see $OUT/$name.log)" >&2; return 1; }
  echo "$name $limit $(( $(date +%s) - t0 ))" >>"$OUT/wall-times.txt"
  echo "$name (first $limit) done in $(( $(date +%s) - t0 )) s"
}
HOTPOT=(--dataset hipporag-hotpotqa --corpus own)
GSM=(--dataset gsm-hard)
# Cheap runs first; the SAG runs (tens of seconds per question) go to 15 questions each,
# then to 30, so both datasets have numbers early. A run resumes where it stopped; the wall
# time of a run is the sum of its lines in wall-times.txt.
run hotpot-cot 30 "${HOTPOT[@]}" --mode cot "$@"
run gsm-cot 30 "${GSM[@]}" --mode cot "$@"
run hotpot-agent 30 "${HOTPOT[@]}" --mode agent --grammar --sag 1 "$@"
run gsm-agent 30 "${GSM[@]}" --mode agent --grammar --sag 1 "$@"
for limit in 15 30; do
  run hotpot-agent-sag8 $limit "${HOTPOT[@]}" --mode agent --grammar --sag 8 "$@"
  run gsm-agent-sag8 $limit "${GSM[@]}" --mode agent --grammar --sag 8 "$@"
done
"$BIN" eval report "$OUT"/{hotpot,gsm}-cot "$OUT"/{hotpot,gsm}-agent "$OUT"/{hotpot,gsm}-agent-sag8 >"$OUT/report.md"
cat "$OUT/report.md"
