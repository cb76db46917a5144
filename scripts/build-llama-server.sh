#!/usr/bin/env bash
# Builds llama.cpp's `llama-server`, the OpenAI-compatible server that `small-agent ask
# --model-url` and `small-agent-distill generate --teacher-url` are tested against (the e2e
# tests start it on loopback with the default model). Installs $SMALL_AGENT_HOME/tools/llama-server.
#
# llama-cpp-sys-2 ships no server sources, so the whole llama.cpp tree vendored in the
# llama-cpp-python sdist (the one scripts/build-llama-bench.sh takes its driver from) is
# built: it is a server we talk to over HTTP, not a library we link, so its llama.cpp
# version need not be ours. Same switches as our build: Release, the ggml CPU options of
# scripts/cpu-flags.sh on an x86-64-v2 baseline, no OpenMP; no curl, no OpenSSL, and no web
# UI (its assets would be built with npm or downloaded; the API is what we need).
set -euo pipefail
cd "$(dirname "$0")/.."
home=${SMALL_AGENT_HOME:-$HOME/.cache/small-agent}
# shellcheck source=scripts/llama-tools.sh
source scripts/llama-tools.sh
# The sdist, the CPU options and this script's switches make the cache key.
key=$(printf '%s ' "$LLAMA_SDIST" "${cpu_opts[@]}" "$base_flags" server-v1 | sha256sum | cut -c1-12)
out="$home/tools/llama-server-$key"
if [ -x "$out/bin/llama-server" ] && [ "$(readlink "$home/tools/llama-server")" = "$out/bin/llama-server" ]; then
  echo "llama-server is already built: $home/tools/llama-server" >&2
  exit 0
fi
work="$home/tools/build-llama-server-$key"
rm -rf "$work" && mkdir -p "$work"
trap 'rm -rf "$work"' EXIT

sdist=$(fetch_llama_sdist "$work/dl")
tar -xzf "$sdist" -C "$work" --strip-components=3 --wildcards '*/vendor/llama.cpp/*'
src="$work"
echo "building llama-server (a cold build takes ~10 min on 2 cores)" >&2
cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release "${cpu_opts[@]}" -DGGML_OPENMP=OFF \
  -DCMAKE_C_FLAGS="$base_flags" -DCMAKE_CXX_FLAGS="$base_flags" \
  -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
  -DBUILD_SHARED_LIBS=OFF >/dev/null
cmake --build "$work/build" --target llama-server -j "$(nproc)"
mkdir -p "$out/bin"
cp "$work/build/bin/llama-server" "$out/bin/llama-server.tmp"
mv "$out/bin/llama-server.tmp" "$out/bin/llama-server"
ln -sfn "$out/bin/llama-server" "$home/tools/llama-server"
echo "installed $home/tools/llama-server" >&2
