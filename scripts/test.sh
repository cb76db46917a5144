#!/usr/bin/env bash
# The whole test suite: set-up (packages, build, assets, llama-bench), the portable build and
# qemu-user (to run it on emulated older CPUs), then every test of the workspace against the
# real model, interpreters and indexes, and the dense-rerank tests (an optional feature) on the
# real ONNX model.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --dev
if ! command -v qemu-x86_64 >/dev/null; then
  sudo_cmd=""; [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq qemu-user
fi
scripts/build-portable.sh
# The desktop assistant's tests drive the page in headless Chromium (Debian's chromium, with
# playwright-core from npm) and talk to the API with the stock openai Python client.
scripts/setup-serve-test-tools.sh
# The same ggml options as the set-up's build, so that cargo reuses it.
# shellcheck source=scripts/cpu-flags.sh
source scripts/cpu-flags.sh
cargo test --release --locked --workspace --no-fail-fast
cargo test --release --locked -p small-agent-index --features rerank
