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

/// The lite interpreter's files (no site-packages).
pub fn lite_files() -> PythonRuntimeFiles {
    let (m, store) = asset_files("python-wasm-lite");
    PythonRuntimeFiles {
        flavour: Flavour::Lite,
        wasm: store.file_path(&m, "python-3.12.0.wasm"),
        wasm_sha256: Some(m.files[0].sha256.clone()),
        stdlib_zip: None,
        site_packages: vec![],
    }
}

pub fn lite() -> Arc<dyn PythonBackend> {
    static B: OnceLock<Arc<dyn PythonBackend>> = OnceLock::new();
    B.get_or_init(|| {
        let (_, store) = asset_files("python-wasm-lite");
        load_backend(&lite_files(), Some(&cache_dir(&store))).expect("lite back-end loads")
    })
    .clone()
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
            // Whole wheels from the asset store (manifests models/lite-*.toml).
            site_packages: ["lite-sympy", "lite-mpmath"]
                .into_iter()
                .map(|name| {
                    let (w, store) = asset_files(name);
                    store.primary_path(&w)
                })
                .collect(),
        };
        load_backend(&files, Some(&cache_dir(&store))).expect("lite back-end with sympy loads")
    })
    .clone()
}
