//! Locating (and if needed fetching) the interpreter assets for the tests, and one back-end per
//! test process (the module is compiled or deserialized once).
#![allow(dead_code)]

use small_agent_sandbox::*;
use std::sync::{Arc, OnceLock};

fn asset_files(name: &str) -> (small_agent_models::Manifest, small_agent_models::Store) {
    let catalog = small_agent_models::Catalog::builtin().expect("built-in manifests parse");
    let manifest = catalog
        .get(name)
        .unwrap_or_else(|| panic!("manifest {name} missing from models/"))
        .clone();
    let store = small_agent_models::Store::from_env().expect("SMALL_AGENT_HOME / HOME resolves");
    store.fetch(&manifest, &mut |_| {}).unwrap_or_else(|e| {
        panic!("asset {name} is not installed and could not be fetched ({e}); run `small-agent models fetch {name}`")
    });
    (manifest, store)
}

fn cache_dir(store: &small_agent_models::Store) -> std::path::PathBuf {
    store.home().join("cache").join("wasm")
}

pub fn full() -> Arc<dyn PythonBackend> {
    static B: OnceLock<Arc<dyn PythonBackend>> = OnceLock::new();
    B.get_or_init(|| {
        let (m, store) = asset_files("python-wasm-full");
        let sha = m
            .files
            .iter()
            .find(|f| f.path.ends_with("python-snapshot.wasm"))
            .map(|f| f.sha256.clone());
        let files = PythonRuntimeFiles {
            flavour: Flavour::Full,
            wasm: store.file_path(&m, "python-snapshot.wasm"),
            wasm_sha256: sha,
            stdlib_zip: Some(store.file_path(&m, "python-stdlib.zip")),
            site_packages: vec![],
        };
        load_backend(&files, Some(&cache_dir(&store))).expect("full back-end loads")
    })
    .clone()
}

pub fn lite() -> Arc<dyn PythonBackend> {
    static B: OnceLock<Arc<dyn PythonBackend>> = OnceLock::new();
    B.get_or_init(|| {
        let (m, store) = asset_files("python-wasm-lite");
        let files = PythonRuntimeFiles {
            flavour: Flavour::Lite,
            wasm: store.file_path(&m, "python-3.12.0.wasm"),
            wasm_sha256: Some(m.files[0].sha256.clone()),
            stdlib_zip: None,
            site_packages: vec![],
        };
        load_backend(&files, Some(&cache_dir(&store))).expect("lite back-end loads")
    })
    .clone()
}

/// A pure-Python wheel for the lite flavour's site-packages, pinned by sha256. The asset store
/// extracts single files from wheels; a whole wheel (what zipimport mounts) is fetched here
/// with pip into `$SMALL_AGENT_HOME/cache/wheels` until the manifests can name whole wheels.
pub fn wheel(spec: &str, file: &str, sha256: &str) -> std::path::PathBuf {
    use sha2::Digest;
    let store = small_agent_models::Store::from_env().expect("SMALL_AGENT_HOME / HOME resolves");
    let dir = store.home().join("cache").join("wheels");
    let path = dir.join(file);
    let ok = |p: &std::path::Path| {
        std::fs::read(p)
            .map(|b| hex::encode(sha2::Sha256::digest(&b)) == sha256)
            .unwrap_or(false)
    };
    if !ok(&path) {
        std::fs::create_dir_all(&dir).unwrap();
        let status = std::process::Command::new("python3")
            .args([
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "-d",
            ])
            .arg(&dir)
            .arg(spec)
            .status();
        assert!(
            matches!(status, Ok(s) if s.success()) && ok(&path),
            "could not fetch {spec} ({file}, sha256 {sha256}) with pip into {}",
            dir.display()
        );
    }
    path
}

pub fn lite_with_sympy() -> Arc<dyn PythonBackend> {
    static B: OnceLock<Arc<dyn PythonBackend>> = OnceLock::new();
    B.get_or_init(|| {
        let (m, store) = asset_files("python-wasm-lite");
        let files = PythonRuntimeFiles {
            flavour: Flavour::Lite,
            wasm: store.file_path(&m, "python-3.12.0.wasm"),
            wasm_sha256: Some(m.files[0].sha256.clone()),
            stdlib_zip: None,
            site_packages: vec![
                wheel(
                    "sympy==1.14.0",
                    "sympy-1.14.0-py3-none-any.whl",
                    "e091cc3e99d2141a0ba2847328f5479b05d94a6635cb96148ccb3f34671bd8f5",
                ),
                wheel(
                    "mpmath==1.3.0",
                    "mpmath-1.3.0-py3-none-any.whl",
                    "a0b2b9fe80bbcd81a6647ff13108738cfb482d481d826cc0e02f5b35e5c88d2c",
                ),
            ],
        };
        load_backend(&files, Some(&cache_dir(&store))).expect("lite back-end with sympy loads")
    })
    .clone()
}
