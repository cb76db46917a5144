#!/usr/bin/env bash
# Installs the C ABI: libsmall_agent.so and .a, include/small_agent.h and a pkg-config file.
#
#   scripts/install-lib.sh [--prefix DIR] [--no-build]
#
# DIR defaults to $HOME/.local. The library is built (release) unless --no-build is given, in
# which case it is taken as already built in $CARGO_TARGET_DIR (default ./target)/release.
# Afterwards: PKG_CONFIG_PATH=DIR/lib/pkgconfig pkg-config --cflags --libs small_agent
set -euo pipefail
cd "$(dirname "$0")/.."

prefix="$HOME/.local"
build=1
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) prefix="$2"; shift 2 ;;
        --prefix=*) prefix="${1#--prefix=}"; shift ;;
        --no-build) build=0; shift ;;
        -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "install-lib.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done

target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
if [ "$build" = 1 ]; then
    cargo build --release --locked -p small-agent --lib
fi
lib="$target_dir/release"
for f in libsmall_agent.so libsmall_agent.a; do
    if [ ! -f "$lib/$f" ]; then
        echo "install-lib.sh: $lib/$f is missing: build it with 'cargo build --release -p small-agent --lib'" >&2
        exit 2
    fi
done

version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)"
mkdir -p "$prefix/lib/pkgconfig" "$prefix/include"
install -m 0755 "$lib/libsmall_agent.so" "$prefix/lib/libsmall_agent.so"
install -m 0644 "$lib/libsmall_agent.a" "$prefix/lib/libsmall_agent.a"
install -m 0644 runtime/include/small_agent.h "$prefix/include/small_agent.h"
sed -e "s|@PREFIX@|$prefix|" -e "s|@VERSION@|$version|" runtime/small_agent.pc.in \
    > "$prefix/lib/pkgconfig/small_agent.pc"
echo "installed libsmall_agent $version into $prefix"
