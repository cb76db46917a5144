//! What `scripts/setup.sh` installs, as the tests find it. Shared by the runtime's and the
//! distiller's test binaries (`#[path]` module).
use std::path::PathBuf;

/// Path of the fetched default model; fails with the fix when it is not installed.
pub fn default_model_path() -> PathBuf {
    let catalog = small_agent_models::Catalog::builtin().unwrap();
    let store = small_agent_models::Store::from_env().unwrap();
    let m = catalog.require(small_agent_models::DEFAULT_LLM).unwrap();
    assert!(
        store.is_installed(m),
        "the default model is not installed in {}: run scripts/setup.sh (or `small-agent models fetch`)",
        store.home().display()
    );
    store.primary_path(m)
}
