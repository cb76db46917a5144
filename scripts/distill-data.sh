#!/usr/bin/env bash
# The distillation data, end to end, from the real teacher data in ../shared/data/:
#   scripts/distill-data.sh [OUT]        (default OUT: distill-data/)
# 1. import: FireAct (GPT-4 ReAct on HotpotQA train) and Q-Solv (gpt-4o-mini Python on GSM8K
#    train, executed again in our sandbox) into agent trajectories; the CoT-distillation
#    baseline's sets (FireAct's CoT rows, GSM8K's human rationales) into CoT trajectories.
# 2. filter: correct answers only, no parse errors, no evaluation question.
# 3. dataset: the student's prompt (models/prompts/student.toml), llama.cpp's tokens, assistant-only masks (agent and CoT).
# Takes about a minute on 2 cores once the interpreter is compiled. Q-Solv's solutions are
# gpt-4o-mini outputs: OpenAI's terms restrict using them to train competing models.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-distill-data}
data=${SMALL_AGENT_DATA:-../shared/data}
bin=bin/small-agent-distill
[ -x "$bin" ] || { echo "distill-data.sh: $bin is missing: run scripts/setup.sh first" >&2; exit 2; }
mkdir -p "$out"
say() { printf '\n==> %s\n' "$*" >&2; }

say "import"
$bin import --from fireact "$data/fireact-trajectories/hotpotqa_gpt4_react_gpt_format.jsonl" --out "$out/fireact.jsonl"
$bin import --from qsolv "$data/qsolv-gsm8k-code/gsm8k_python.jsonl" --out "$out/qsolv.jsonl"
$bin import --from cot-fireact "$data/fireact-trajectories/hotpotqa_multimethod_gpt_format.jsonl" --out "$out/cot-fireact.jsonl"
$bin import --from cot-gsm8k "$data/gsm8k-train/train.jsonl" --out "$out/cot-gsm8k.jsonl"

say "filter"
$bin filter --in "$out/fireact.jsonl" --in "$out/qsolv.jsonl" --out "$out/agent.jsonl"
$bin filter --in "$out/cot-fireact.jsonl" --in "$out/cot-gsm8k.jsonl" --out "$out/cot.jsonl"

say "dataset"
# The student's short prompt (models/prompts/student.toml): the system prompt is in every
# example and costs training time without a loss.
$bin dataset --in "$out/agent.jsonl" --out "$out/agent-dataset" --prompt models/prompts/student.toml
$bin dataset --in "$out/cot.jsonl" --out "$out/cot-dataset"
$bin dataset stats "$out/agent-dataset"
$bin dataset stats "$out/cot-dataset"
say "ready: $out/agent-dataset (agent distillation), $out/cot-dataset (CoT distillation)"
