#!/usr/bin/env bash
# The whole test suite: set-up (packages, build, assets, llama-bench) then every test of the
# workspace against the real model, interpreters and indexes, and the dense-rerank tests
# (an optional feature) on the real ONNX model.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --dev
cargo test --release --locked --workspace --no-fail-fast
cargo test --release --locked -p small-agent-index --features rerank
