#!/usr/bin/env bash
# Builds the portable small-agent: one binary and one libsmall_agent.so for every x86-64 CPU
# from x86-64-v2 up. ggml's CPU back-end is built once per CPU generation (ggml's
# GGML_CPU_ALL_VARIANTS) as libggml-cpu-<variant>.so; at start-up the runtime loads the best
# one this CPU can run (runtime/src/engine/cpu.rs). The AMX variant (sapphirerapids) is not
# shipped and never loaded: ggml's AMX path crashes (llama.cpp #20824).
#
#   scripts/build-portable.sh [--out DIR]     (default DIR: dist/small-agent-portable)
#
# DIR then holds everything that travels together: small-agent, libsmall_agent.so, the header,
# libllama.so, libggml*.so and the CPU variants (found through the binary's $ORIGIN rpath).
# Copy the whole directory to the other machine. Builds in $CARGO_TARGET_DIR/portable
# (default target/portable) so that it never disturbs the native build.
set -euo pipefail
cd "$(dirname "$0")/.."
out=dist/small-agent-portable
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=$2; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "build-portable.sh: unknown option $1 (try --help)" >&2; exit 2 ;;
  esac
done
[ "$(uname -m)" = x86_64 ] || { echo "build-portable.sh: the portable build is for x86-64 (other targets: README 'Builds for boards')" >&2; exit 2; }

export SMALL_AGENT_BUILD=portable
# shellcheck source=scripts/cpu-flags.sh
source scripts/cpu-flags.sh
base=${CARGO_TARGET_DIR:-$PWD/target}
export CARGO_TARGET_DIR=$base/portable

echo "==> building the portable small-agent (a cold build compiles ggml's CPU back-end once per CPU generation)" >&2
msgs=$(mktemp)
trap 'rm -f "$msgs"' EXIT
cargo build --release --locked -p small-agent --features portable --message-format=json-render-diagnostics >"$msgs"
# Where llama-cpp-sys-2's build script put the CPU variants (its OUT_DIR/backends).
backends=$(python3 - "$msgs" <<'PY'
import json, sys
out = None
for line in open(sys.argv[1]):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "build-script-executed" and "/llama-cpp-sys-2-" in m.get("package_id", "") + m.get("out_dir", ""):
        out = m["out_dir"]
print(out or "")
PY
)
[ -n "$backends" ] && [ -d "$backends/backends" ] || { echo "build-portable.sh: the ggml CPU variants were not found in the build output" >&2; exit 1; }
rel=$CARGO_TARGET_DIR/release

tmp="$out.tmp"
rm -rf "$tmp" && mkdir -p "$tmp"
cp "$rel/small-agent" "$rel/libsmall_agent.so" "$tmp/"
cp runtime/include/small_agent.h "$tmp/"
for lib in "$backends"/lib/lib*.so*; do
  cp -P "$lib" "$tmp/"
done
n=0
for lib in "$backends"/backends/libggml-cpu-*.so; do
  case "$(basename "$lib")" in
    libggml-cpu-sapphirerapids.so) continue ;;  # AMX: see the header of this script
  esac
  cp "$lib" "$tmp/"
  n=$((n + 1))
done
rm -rf "$out" && mv "$tmp" "$out"
echo "==> $out: small-agent, libsmall_agent.so and $n ggml CPU variants" >&2
