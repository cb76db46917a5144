#!/usr/bin/env bash
# The whole test suite: set-up (packages, build, assets, llama-bench) then every test of the
# workspace against the real model, interpreters and indexes. Exit status is cargo's.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --dev
cargo test --release --locked --workspace
