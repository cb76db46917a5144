//! Records the ggml CPU options of this build (for the run-time CPU check in `engine/cpu.rs`)
//! and, in the portable build, lets the binary and library find the shared llama.cpp/ggml
//! libraries in their own directory.

include!("src/engine/cpu_options.rs");

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/engine/cpu_options.rs");
    let portable = std::env::var_os("CARGO_FEATURE_PORTABLE").is_some();
    let mut on = Vec::new();
    let options = GGML_CPU_OPTIONS.iter().map(|(o, _)| *o);
    for option in options.chain(GGML_REFUSED_OPTIONS.iter().copied()) {
        let var = format!("GGML_{option}");
        println!("cargo:rerun-if-env-changed={var}");
        let value = std::env::var(&var).unwrap_or_default().to_ascii_uppercase();
        if !portable && matches!(value.as_str(), "ON" | "1" | "TRUE" | "YES") {
            if GGML_REFUSED_OPTIONS.contains(&option) {
                panic!("{var}={value}: ggml's AMX path is not supported by small-agent; unset it");
            }
            on.push(option);
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
