# Sourced by the scripts that build llama.cpp's own programs (build-llama-bench.sh,
# build-llama-server.sh): the CPU switches of our build and the pinned llama.cpp sources.
#
# llama-cpp-sys-2 ships llama.cpp's libraries but not its tools/ sources; the llama-cpp-python
# sdist vendors the whole tree, and is fetched with pip from the package registry.
LLAMA_SDIST=llama-cpp-python==0.3.36
LLAMA_SDIST_SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e

# The ggml CPU options of scripts/cpu-flags.sh (never -march=native) on an x86-64-v2 baseline.
# shellcheck source=scripts/cpu-flags.sh
source scripts/cpu-flags.sh
read -r -a cpu_opts <<<"$SMALL_AGENT_CMAKE_CPU_OPTS"
base_flags=""
[ "$(uname -m)" = x86_64 ] && base_flags="-march=x86-64-v2"

# fetch_llama_sdist DIR: downloads the sdist into DIR, checks its sha256 and prints its path.
fetch_llama_sdist() {
  local dir=$1 sdist
  echo "fetching llama.cpp's sources from $LLAMA_SDIST (pip download)" >&2
  python3 -m pip download --no-deps --no-binary :all: --disable-pip-version-check -q -d "$dir" "$LLAMA_SDIST"
  sdist=$(ls "$dir"/*.tar.gz)
  echo "$LLAMA_SDIST_SHA256  $sdist" | sha256sum -c --quiet - || {
    echo "$LLAMA_SDIST does not match its pinned sha256; refusing to build from it" >&2
    return 2
  }
  printf '%s\n' "$sdist"
}
