//! CPUs other than the one that built the binary: no AMX code in any build, the native build
//! refusing a CPU it was not built for (instead of an illegal instruction), and the portable
//! build (`scripts/build-portable.sh`) giving the native build's greedy text natively and under
//! `qemu-x86_64 -cpu` for a CPU without AVX (Westmere) and one with AVX2 but no AVX-512
//! (Haswell), through the CLI and through the C ABI.
//!
//! The portable directory is `$SMALL_AGENT_PORTABLE_DIR`, else `dist/small-agent-portable`
//! (`scripts/test.sh` builds it); qemu comes from Debian's `qemu-user` (installed by
//! `scripts/test.sh`).
#![cfg(target_arch = "x86_64")]

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use serde_json::Value;

/// Emulated CPU models: no AVX at all, and AVX2 without AVX-512.
const EMULATED: &[&str] = &["Westmere", "Haswell"];
/// The instructions of ggml's AMX path (tile configuration, loads and dot products).
const AMX_MNEMONICS: &[&str] = &[
    "ldtilecfg",
    "sttilecfg",
    "tileloadd",
    "tilestored",
    "tdpb",
    "tilezero",
];
const PROMPT: &str = "What is the capital of France?";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn native_bin() -> PathBuf {
    assert_cmd::cargo::cargo_bin("small-agent")
}

fn portable_dir() -> PathBuf {
    let dir = std::env::var_os("SMALL_AGENT_PORTABLE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("dist/small-agent-portable"));
    assert!(
        dir.join("small-agent").is_file() && dir.join("libsmall_agent.so").is_file(),
        "the portable build is missing in {}: run scripts/build-portable.sh (scripts/test.sh does)",
        dir.display()
    );
    dir
}

fn qemu() -> &'static str {
    let ok = Command::new("qemu-x86_64")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "qemu-x86_64 is missing: apt-get install qemu-user (scripts/test.sh does)"
    );
    "qemu-x86_64"
}

/// `exe args…`, natively (`cpu` None) or under qemu's model of `cpu`.
fn run_on(cpu: Option<&str>, exe: &Path, args: &[&str]) -> Output {
    let mut cmd = match cpu {
        None => Command::new(exe),
        Some(model) => {
            let mut c = Command::new(qemu());
            c.args(["-cpu", model]).arg(exe);
            c
        }
    };
    // cargo test puts the native build's directories on LD_LIBRARY_PATH, which would win over
    // the portable binary's and C example's own rpath.
    cmd.args(args)
        .env("RUST_LOG", "warn")
        .env_remove("LD_LIBRARY_PATH");
    cmd.output().unwrap_or_else(|e| panic!("{exe:?}: {e}"))
}

fn ok_stdout(what: &str, out: &Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// The greedy reply to [`PROMPT`] (a few tokens, one thread so every run sums alike).
fn greedy_text(cpu: Option<&str>, exe: &Path) -> String {
    let out = run_on(
        cpu,
        exe,
        &[
            "generate",
            "--temperature",
            "0",
            "--max-tokens",
            "10",
            "--threads",
            "1",
            "--json",
            PROMPT,
        ],
    );
    let json: Value =
        serde_json::from_str(&ok_stdout(&format!("generate on {cpu:?}"), &out)).unwrap();
    json["text"].as_str().unwrap().to_owned()
}

fn cpu_report(cpu: Option<&str>, exe: &Path) -> Value {
    let out = run_on(cpu, exe, &["models", "list", "--json"]);
    let json: Value =
        serde_json::from_str(&ok_stdout(&format!("models list on {cpu:?}"), &out)).unwrap();
    json["cpu"].clone()
}

fn features(report: &Value) -> Vec<String> {
    report["ggml_features"]
        .as_array()
        .unwrap_or_else(|| panic!("no ggml_features in {report}"))
        .iter()
        .map(|f| f.as_str().unwrap().to_owned())
        .collect()
}

/// Lines of `objdump -d FILE` that use an AMX instruction.
fn amx_instructions(file: &Path) -> Vec<String> {
    let out = Command::new("objdump")
        .args(["-d", "--no-show-raw-insn"])
        .arg(file)
        .output()
        .expect("objdump (binutils) is needed");
    assert!(
        out.status.success(),
        "objdump -d {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| {
            let insn = l.split('\t').nth(1).unwrap_or("");
            AMX_MNEMONICS
                .iter()
                .any(|m| insn.trim_start().starts_with(m))
        })
        .take(5)
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_native_build_has_no_amx_code_and_says_what_it_runs() {
    let bin = native_bin();
    let lib = bin.with_file_name("libsmall_agent.so");
    let mut files = vec![bin.clone(), lib];
    // The baseline of `bench llm`, built by scripts/build-llama-bench.sh with the same options.
    let store = small_agent_models::Store::from_env().unwrap();
    let llama_bench = store.home().join("tools/llama-bench");
    if llama_bench.exists() {
        files.push(std::fs::canonicalize(llama_bench).unwrap());
    }
    for file in &files {
        let found = amx_instructions(file);
        assert!(
            found.is_empty(),
            "AMX instructions in {}: {found:?}",
            file.display()
        );
    }
    let report = cpu_report(None, &bin);
    assert_eq!(report["build"], "native", "{report}");
    let f = features(&report);
    assert!(
        !f.iter().any(|x| x.starts_with("AMX")),
        "AMX in ggml's features: {f:?}"
    );
    // What the build recorded is what ggml reports it was compiled with (ggml lists no SSE4.2).
    for option in report["compiled_options"].as_array().unwrap() {
        let option = option.as_str().unwrap();
        if option == "SSE42" {
            continue;
        }
        assert!(
            f.iter().any(|x| x == option),
            "{option} recorded but not in ggml's features {f:?}"
        );
    }
    let version = ok_stdout("--version", &run_on(None, &bin, &["--version"]));
    assert!(
        version.contains("build: native") && version.contains("ggml features:"),
        "{version}"
    );
}

#[test]
fn the_native_build_refuses_a_cpu_it_was_not_built_for() {
    let bin = native_bin();
    let report = cpu_report(None, &bin);
    let compiled: Vec<&str> = report["compiled_options"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    // Westmere has SSE4.2 and nothing newer: a build for AVX or more must refuse it.
    let beyond_westmere = compiled.iter().any(|o| *o != "SSE42");
    let out = run_on(
        Some("Westmere"),
        &bin,
        &[
            "generate",
            "--temperature",
            "0",
            "--max-tokens",
            "2",
            "--threads",
            "1",
            PROMPT,
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    if beyond_westmere {
        assert_eq!(
            out.status.code(),
            Some(2),
            "expected a refusal (exit 2), got {}:\n{stderr}",
            out.status
        );
        assert!(
            stderr.contains("lacks") && stderr.contains("--portable"),
            "{stderr}"
        );
        // Listing what runs still works and says why not.
        let report = cpu_report(Some("Westmere"), &bin);
        assert!(
            report["error"].as_str().is_some_and(|e| e.contains("avx")),
            "{report}"
        );
    } else {
        assert!(out.status.success(), "{stderr}");
    }
}

#[test]
fn the_portable_build_ships_no_amx_code_and_picks_a_variant_per_cpu() {
    let dir = portable_dir();
    let mut variants = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name == "small-agent" || name.ends_with(".so") {
            let found = amx_instructions(&path);
            assert!(
                found.is_empty(),
                "AMX instructions in {}: {found:?}",
                path.display()
            );
            variants += usize::from(name.starts_with("libggml-cpu-"));
        }
    }
    assert!(
        variants >= 3,
        "only {variants} CPU variants in {}",
        dir.display()
    );
    let exe = dir.join("small-agent");
    let here = cpu_report(None, &exe);
    assert_eq!(here["build"], "portable", "{here}");
    assert_ne!(here["variant"], "sapphirerapids");
    assert!(
        !features(&here).iter().any(|x| x.starts_with("AMX")),
        "{here}"
    );
    // Each emulated CPU gets a variant it can run: none with AVX on Westmere, none with
    // AVX-512 on Haswell (qemu has no AVX-512).
    for (cpu, not_expected) in [("Westmere", "AVX"), ("Haswell", "AVX512")] {
        let r = cpu_report(Some(cpu), &exe);
        let f = features(&r);
        assert!(
            !f.iter().any(|x| x == not_expected),
            "{cpu} got {} with {f:?}",
            r["variant"]
        );
        if cpu == "Haswell" {
            assert!(
                f.iter().any(|x| x == "AVX2"),
                "Haswell should get AVX2 code: {r}"
            );
        }
    }
}

#[test]
fn the_portable_build_gives_the_native_greedy_text_on_every_cpu() {
    let native = greedy_text(None, &native_bin());
    assert!(!native.trim().is_empty());
    let exe = portable_dir().join("small-agent");
    assert_eq!(greedy_text(None, &exe), native, "portable build, this CPU");
    for cpu in EMULATED {
        assert_eq!(
            greedy_text(Some(cpu), &exe),
            native,
            "portable build under qemu -cpu {cpu}"
        );
    }
}

#[test]
fn the_portable_c_library_answers_natively_and_under_emulation() {
    let dir = portable_dir();
    let tmp = tempfile::tempdir().unwrap();
    let exe = tmp.path().join("ask");
    let out = Command::new("cc")
        .args(["-std=c99", "-Wall", "-Werror"])
        .arg(repo_root().join("examples/c/ask.c"))
        .arg(format!("-I{}", dir.display()))
        .arg(format!("-L{}", dir.display()))
        .arg("-lsmall_agent")
        .arg(format!("-Wl,-rpath,{}", dir.display()))
        .arg("-o")
        .arg(&exe)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // One step, greedy, the lite interpreter (a 26 MB module to compile, against the full
    // one's 290 MB): under emulation every instruction is slow.
    ok_stdout(
        "models fetch python-wasm-lite",
        &run_on(
            None,
            &native_bin(),
            &["models", "fetch", "python-wasm-lite"],
        ),
    );
    let args = [
        "--max-steps",
        "1",
        "--python",
        "lite",
        "What is 17 multiplied by 23?",
    ];
    let here = ok_stdout("the C example", &run_on(None, &exe, &args));
    assert!(!here.trim().is_empty(), "no answer from the C example");
    // Westmere (no AVX): qemu runs SSE code several times faster than AVX2 code. The library
    // must pick a CPU variant the emulated CPU can run and answer. The text is not compared:
    // a whole agent step (a 400-token prompt, a reply, the fallback) decoded greedily by
    // another variant's kernels (SSE against AVX2 or AVX-512 sums, in another order) meets
    // near-ties that may flip (on an AVX2-only host: "... is 341" natively, "... is 341." on
    // Westmere). Equal greedy text across variants is checked on a short generation above.
    let emulated = ok_stdout(
        "the C example under qemu -cpu Westmere",
        &run_on(Some("Westmere"), &exe, &args),
    );
    assert!(
        !emulated.trim().is_empty(),
        "no answer from the C example under emulation"
    );
}
