#!/usr/bin/env bash
# Builds llama.cpp's own `llama-bench`, the baseline of `small-agent bench llm`, against the
# exact llama.cpp that small-agent links: the source vendored by the llama-cpp-sys-2 version
# in Cargo.lock, with the switches our build uses (Release, the ggml CPU options of
# scripts/cpu-flags.sh on an x86-64-v2 baseline, no OpenMP).
#
# That crate ships llama.cpp's libraries but not the tools/ sources, so the llama-bench
# driver (tools/llama-bench/*.cpp, ~2.5k lines that only time llama_decode calls) is taken
# from the llama.cpp vendored in the llama-cpp-python sdist, fetched with pip from the
# package registry. Installs $SMALL_AGENT_HOME/tools/llama-bench.
set -euo pipefail
cd "$(dirname "$0")/.."
# The sdist of scripts/llama-tools.sh provides the llama-bench driver (its llama.cpp has ggml
# 0.25.3; ours is 0.26.0 and the llama.h API the driver uses is unchanged between them).
home=${SMALL_AGENT_HOME:-$HOME/.cache/small-agent}
src=$(cargo metadata --format-version 1 --locked | python3 -c '
import json, sys, os
m = json.load(sys.stdin)
p = [p for p in m["packages"] if p["name"] == "llama-cpp-sys-2"][0]
print(os.path.join(os.path.dirname(p["manifest_path"]), "llama.cpp"))')
version=$(basename "$(dirname "$src")")
# The CPU options are part of the cache key: a llama-bench built for another CPU (or with
# -march=native, as before) is not reused.
# shellcheck source=scripts/llama-tools.sh
source scripts/llama-tools.sh
cpu_key=$(printf '%s ' "${cpu_opts[@]}" "$base_flags" | sha256sum | cut -c1-12)
out="$home/tools/$version-$cpu_key"
if [ -x "$out/bin/llama-bench" ] && [ "$(readlink "$home/tools/llama-bench")" = "$out/bin/llama-bench" ]; then
  echo "llama-bench for $version is already built: $home/tools/llama-bench" >&2
  exit 0
fi
work="$home/tools/build-$version-$cpu_key"
rm -rf "$work" && mkdir -p "$work"
trap 'rm -rf "$work"' EXIT

sdist=$(fetch_llama_sdist "$work/dl")
tar -xzf "$sdist" -C "$work" --wildcards --strip-components=5 '*/vendor/llama.cpp/tools/llama-bench/*.cpp'
mkdir -p "$work/driver" && mv "$work"/*.cpp "$work/driver/"

# A small CMake project: llama.cpp's libraries from the crate's source, the driver on top.
cat > "$work/CMakeLists.txt" <<CMAKE
cmake_minimum_required(VERSION 3.14)
project(small_agent_llama_bench C CXX)
set(CMAKE_CXX_STANDARD 17)
add_subdirectory("$src" llama.cpp)
add_executable(llama-bench driver/llama-bench.cpp driver/main.cpp)
target_link_libraries(llama-bench PRIVATE llama-common llama \${CMAKE_THREAD_LIBS_INIT})
CMAKE
echo "building llama-bench against $src (a cold build takes ~5 min on 2 cores)" >&2
cmake -S "$work" -B "$work/build" -DCMAKE_BUILD_TYPE=Release "${cpu_opts[@]}" -DGGML_OPENMP=OFF \
  -DCMAKE_C_FLAGS="$base_flags" -DCMAKE_CXX_FLAGS="$base_flags" \
  -DLLAMA_BUILD_COMMON=ON -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_TESTS=OFF \
  -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
  -DBUILD_SHARED_LIBS=OFF >/dev/null
cmake --build "$work/build" --target llama-bench -j "$(nproc)"
mkdir -p "$out/bin"
cp "$work/build/llama-bench" "$out/bin/llama-bench.tmp"
mv "$out/bin/llama-bench.tmp" "$out/bin/llama-bench"
ln -sfn "$out/bin/llama-bench" "$home/tools/llama-bench"
echo "installed $home/tools/llama-bench" >&2
