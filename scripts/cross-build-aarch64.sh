#!/usr/bin/env bash
# Cross-builds small-agent and libsmall_agent.so for 64-bit Raspberry Pi OS / Debian arm64
# (aarch64-unknown-linux-gnu) on a Debian x86-64 machine, then smoke-tests the binary under
# qemu-user with the default model.
#
#   scripts/cross-build-aarch64.sh [--no-smoke]
#
# Needs the Rust standard library for aarch64 (`rustup target add aarch64-unknown-linux-gnu`,
# served by the Rust distribution server, not a package registry: CI does not run this).
# The cross compilers and qemu come from Debian's packages. Output:
# $CARGO_TARGET_DIR/aarch64-unknown-linux-gnu/release/{small-agent,libsmall_agent.so}.
set -euo pipefail
cd "$(dirname "$0")/.."
target=aarch64-unknown-linux-gnu

if ! rustup target list --installed 2>/dev/null | grep -qx "$target"; then
    echo "cross-build-aarch64.sh: the $target standard library is not installed: run 'rustup target add $target'" >&2
    exit 2
fi
need=()
command -v aarch64-linux-gnu-gcc >/dev/null || need+=(gcc-aarch64-linux-gnu)
command -v aarch64-linux-gnu-g++ >/dev/null || need+=(g++-aarch64-linux-gnu)
[ "${1:-}" = --no-smoke ] || command -v qemu-aarch64 >/dev/null || need+=(qemu-user)
if [ ${#need[@]} -gt 0 ]; then
    sudo_cmd=""; [ "$(id -u)" = 0 ] || sudo_cmd=sudo
    $sudo_cmd apt-get install -y -qq "${need[@]}"
fi

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export CXX_aarch64_unknown_linux_gnu=aarch64-linux-gnu-g++
cargo build --release --locked -p small-agent --target "$target"

out="${CARGO_TARGET_DIR:-$PWD/target}/$target/release"
file "$out/small-agent" "$out/libsmall_agent.so"
if [ "${1:-}" != --no-smoke ]; then
    # llama.cpp's aarch64 kernels answer a question under emulation (slow, but real).
    qemu-aarch64 -L /usr/aarch64-linux-gnu "$out/small-agent" generate --max-tokens 12 \
        --temperature 0 --threads 1 "What is the capital of France?"
fi
