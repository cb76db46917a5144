//! Records the ggml CPU options of this build (for the run-time CPU check in `engine/cpu.rs`)
//! and, in the portable build, lets the binary and library find the shared llama.cpp/ggml
//! libraries in their own directory.

/// The ggml options `scripts/cpu-flags.sh` may set (the x86 instruction-set ones).
const GGML_CPU_OPTIONS: &[&str] = &[
    "SSE42",
    "AVX",
    "F16C",
    "FMA",
    "BMI2",
    "AVX2",
    "AVX_VNNI",
    "AVX512",
    "AVX512_VBMI",
    "AVX512_VNNI",
    "AVX512_BF16",
    "AMX_TILE",
    "AMX_INT8",
    "AMX_BF16",
];

fn main() {
    let portable = std::env::var_os("CARGO_FEATURE_PORTABLE").is_some();
    let mut on = Vec::new();
    for option in GGML_CPU_OPTIONS {
        let var = format!("GGML_{option}");
        println!("cargo:rerun-if-env-changed={var}");
        let value = std::env::var(&var).unwrap_or_default().to_ascii_uppercase();
        if !portable && matches!(value.as_str(), "ON" | "1" | "TRUE" | "YES") {
            if option.starts_with("AMX") {
                // The AMX path crashes (llama.cpp #20824); refuse to build it in.
                panic!("{var}={value}: ggml's AMX path is not supported by small-agent; unset it");
            }
            on.push(*option);
        }
    }
    println!(
        "cargo:rustc-env=SMALL_AGENT_GGML_CPU_FLAGS={}",
        on.join(",")
    );
    let target_os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if portable && target_os == "linux" {
        // libllama.so, libggml*.so and the CPU variants ship in the binary's directory.
        println!("cargo:rustc-link-arg=-Wl,-rpath,$ORIGIN");
    }
}
