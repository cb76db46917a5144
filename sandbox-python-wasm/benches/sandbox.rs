//! `cargo bench -p small-agent-sandbox`: the sandbox benchmark (cold session, warm print(1),
//! fork, CPU-bound snippets vs native `python3`), for the flavours whose assets are installed.
//! Set `SANDBOX_BENCH_REPS` to change the sample count (default 200), and
//! `SANDBOX_BENCH_FLAVOUR=full|lite` to run one flavour only.

use small_agent_sandbox::*;

fn files(name: &str) -> Option<(PythonRuntimeFiles, std::path::PathBuf)> {
    let catalog = small_agent_models::Catalog::builtin().ok()?;
    let m = catalog.get(name)?.clone();
    let store = small_agent_models::Store::from_env().ok()?;
    if !store.is_installed(&m) {
        eprintln!("{name}: not installed, skipped (run `small-agent models fetch {name}`)");
        return None;
    }
    let cache = store.home().join("cache").join("wasm");
    let f = match name {
        "python-wasm-full" => PythonRuntimeFiles {
            flavour: Flavour::Full,
            wasm: store.file_path(&m, "python-snapshot.wasm"),
            wasm_sha256: Some(m.files[0].sha256.clone()),
            stdlib_zip: Some(store.file_path(&m, "python-stdlib.zip")),
            site_packages: vec![],
        },
        _ => PythonRuntimeFiles {
            flavour: Flavour::Lite,
            wasm: store.file_path(&m, "python-3.12.0.wasm"),
            wasm_sha256: Some(m.files[0].sha256.clone()),
            stdlib_zip: None,
            site_packages: vec![],
        },
    };
    Some((f, cache))
}

fn main() {
    // `cargo test --benches` passes `--bench`-less flags; only run when asked to bench.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let reps = std::env::var("SANDBOX_BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let native = std::path::Path::new("python3");
    let only = std::env::var("SANDBOX_BENCH_FLAVOUR").ok();
    for name in ["python-wasm-full", "python-wasm-lite"] {
        if only.as_deref().is_some_and(|o| !name.ends_with(o)) {
            continue;
        }
        let Some((f, cache)) = files(name) else {
            continue;
        };
        if std::env::var_os("SANDBOX_BENCH_COLD").is_some() {
            // First-compile cost: a fresh cache directory forces compilation and serialization.
            let tmp = tempfile::tempdir().expect("temp dir");
            let t = std::time::Instant::now();
            let b = load_backend(&f, Some(tmp.path())).expect("compiles");
            println!(
                "{name}: first compile + serialize: {:.1} s ({:?})",
                t.elapsed().as_secs_f64(),
                b.load_report().module_source
            );
            continue;
        }
        let backend = load_backend(&f, Some(&cache)).expect("back-end loads");
        match bench::run(backend.as_ref(), Some(native), reps) {
            Ok(r) => println!("{r}"),
            Err(e) => eprintln!("{name}: {e}"),
        }
    }
}
