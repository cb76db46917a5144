# shellcheck shell=bash
# Sourced by the build scripts: chooses the CPU features llama.cpp's ggml is compiled for.
#
#   native (default)  the features this machine's CPU has, named one by one as GGML_* options
#                     (never -march=native), so the build runs fast here and the choice is
#                     written down;
#   portable          SMALL_AGENT_BUILD=portable: ggml's CPU variants as shared back-ends that
#                     the runtime picks from at start-up (see scripts/setup.sh --portable).
#
# ggml's AMX matrix path is kept out of both: on AMX CPUs (Sapphire Rapids and later) it faults
# on its first tile instruction (llama.cpp #20824). Without -march=native the compiler does not
# define __AMX_INT8__, which is what compiles that path in; GGML_AMX_*=OFF says so explicitly.
# Rust code is built for x86-64-v2 (.cargo/config.toml) either way, so the runtime's own CPU check
# runs before any ggml code on a CPU that lacks what ggml was built for.

small_agent_cpu_flags() {
    local flags
    for v in SSE42 AVX F16C FMA BMI2 AVX2 AVX_VNNI AVX512 AVX512_VBMI AVX512_VNNI AVX512_BF16 \
        AMX_TILE AMX_INT8 AMX_BF16; do
        unset "GGML_$v"
    done
    export GGML_AMX_TILE=OFF GGML_AMX_INT8=OFF GGML_AMX_BF16=OFF
    [ "$(uname -m)" = x86_64 ] || return 0
    [ "${SMALL_AGENT_BUILD:-native}" = native ] || return 0
    flags=" $(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2) "
    has() { case "$flags" in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
    has sse4_2 && export GGML_SSE42=ON
    has avx && export GGML_AVX=ON
    has f16c && export GGML_F16C=ON
    has fma && export GGML_FMA=ON
    has bmi2 && export GGML_BMI2=ON
    has avx2 && export GGML_AVX2=ON
    has avx_vnni && export GGML_AVX_VNNI=ON
    if has avx512f && has avx512cd && has avx512vl && has avx512dq && has avx512bw; then
        export GGML_AVX512=ON
        has avx512vbmi && export GGML_AVX512_VBMI=ON
        has avx512_vnni && export GGML_AVX512_VNNI=ON
        has avx512_bf16 && export GGML_AVX512_BF16=ON
    fi
    unset -f has
}
small_agent_cpu_flags
unset -f small_agent_cpu_flags
# The same choice as CMake options, for llama.cpp builds outside cargo (llama-bench, the peer).
SMALL_AGENT_CMAKE_CPU_OPTS="-DGGML_NATIVE=OFF $(env | grep -E '^GGML_(SSE42|AVX|F16C|FMA|BMI2|AMX)' | sort | sed 's/^/-D/' | tr '\n' ' ')"
