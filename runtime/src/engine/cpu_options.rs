// Shared by `runtime/build.rs` (which records the options a native build was compiled with) and
// `engine/cpu.rs` (which checks them against the CPU at run time): one table, `include!`d by both.

/// ggml's x86 instruction-set build options (`GGML_<NAME>`, as `scripts/cpu-flags.sh` sets them)
/// and the CPU extensions each needs, by the names `is_x86_feature_detected!` uses.
pub const GGML_CPU_OPTIONS: &[(&str, &[&str])] = &[
    ("SSE42", &["sse4.2"]),
    ("AVX", &["avx"]),
    ("F16C", &["f16c"]),
    ("FMA", &["fma"]),
    ("BMI2", &["bmi2"]),
    ("AVX2", &["avx2"]),
    ("AVX_VNNI", &["avxvnni"]),
    ("AVX512", &["avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"]),
    ("AVX512_VBMI", &["avx512vbmi"]),
    ("AVX512_VNNI", &["avx512vnni"]),
    ("AVX512_BF16", &["avx512bf16"]),
];

/// Options a build refuses: ggml's AMX path faults on its first tile instruction
/// (llama.cpp #20824).
pub const GGML_REFUSED_OPTIONS: &[&str] = &["AMX_TILE", "AMX_INT8", "AMX_BF16"];
