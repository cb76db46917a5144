#!/usr/bin/env bash
# End-to-end benchmark against the peer a user would otherwise pick: smolagents' CodeAgent
# driving llama-cpp-python on the same GGUF, with the same tools, questions, step limit,
# threads and greedy decoding (BRIEF §6: target ≥ 3× faster per question).
#
#   scripts/bench-peer.sh [--setup-only] [bench_peer.py options...]
#   scripts/bench-peer.sh --limit 10 --threads 1 --out peer.json   # 10 HotpotQA + 10 MATH train
#   scripts/bench-peer.sh --questions FILE --limit 5 --peer-prompt ours
#   scripts/bench-peer.sh --report peer.json                       # the tables of an earlier run
#
# 1. Sets up the peer once in a virtualenv, $SMALL_AGENT_HOME/peer-venv, from PyPI with
#    pinned versions. llama-cpp-python is compiled from its sdist with the switches our
#    llama.cpp build uses (Release, native CPU, no OpenMP), so the two sides differ in
#    their agent stacks, not in their ggml builds. The compile takes ~15-20 min on 2 cores.
# 2. Runs scripts/bench_peer.py with the venv's Python (see `--help` there).
# Needs the release binary (scripts/setup.sh) and its default assets and shard.
set -euo pipefail
cd "$(dirname "$0")/.."
home=${SMALL_AGENT_HOME:-$HOME/.cache/small-agent}
venv="$home/peer-venv"
# The pins: the newest releases that install on Python 3.11 here. The llama-cpp-python sdist
# is the one scripts/build-llama-bench.sh takes the llama-bench driver from.
LLAMA_PIN=llama-cpp-python==0.3.36
PINS=(smolagents==1.26.0 sympy==1.14.0)
LLAMA_SDIST_SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
stamp="$venv/.small-agent-pins"

setup_only=0
if [ "${1:-}" = "--setup-only" ]; then setup_only=1; shift; fi

# The same ggml CPU options as our build (never -march=native: AMX, llama.cpp #20824); they are
# part of the stamp, so a venv built for another CPU is rebuilt.
# shellcheck source=scripts/cpu-flags.sh
source scripts/cpu-flags.sh
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$LLAMA_PIN ${PINS[*]} $SMALL_AGENT_CMAKE_CPU_OPTS" ]; then
  echo "bench-peer.sh: setting up $venv ($LLAMA_PIN ${PINS[*]})" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
  # Verify the sdist we compile before building it.
  dl=$(mktemp -d); trap 'rm -rf "$dl"' EXIT
  "$venv/bin/python" -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: \
    -d "$dl" "$LLAMA_PIN"
  echo "$LLAMA_SDIST_SHA256  $(ls "$dl"/*.tar.gz)" | sha256sum -c --quiet - || {
    echo "bench-peer.sh: llama-cpp-python sdist does not match its pinned sha256" >&2; exit 2; }
  CMAKE_ARGS="$SMALL_AGENT_CMAKE_CPU_OPTS -DGGML_OPENMP=OFF -DCMAKE_BUILD_TYPE=Release" \
  CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" FORCE_CMAKE=1 \
    nice -n 10 "$venv/bin/python" -m pip install --disable-pip-version-check --no-cache-dir \
    "$(ls "$dl"/*.tar.gz)" "${PINS[@]}"
  echo "$LLAMA_PIN ${PINS[*]} $SMALL_AGENT_CMAKE_CPU_OPTS" > "$stamp"
fi
[ "$setup_only" = 1 ] && exit 0
exec "$venv/bin/python" scripts/bench_peer.py "$@"
