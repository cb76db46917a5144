//! End-to-end tests of `small-agent-distill` on the real shared data, the real default model
//! and the real sandbox. One test binary; one module per command.
mod adapter_stack;
mod dataset;
mod export;
mod generate;
mod import;
#[path = "../../../tests/e2e/installed.rs"]
mod installed;
#[path = "../../../tests/e2e/llama_server.rs"]
mod llama_server;
mod train;

use std::path::PathBuf;

/// `../shared/data/` (or `$SMALL_AGENT_DATA`); a missing file fails with what to do.
pub fn shared_file(rel: &str) -> PathBuf {
    let p = small_agent_eval::dataset::data_dir().join(rel);
    assert!(
        p.exists(),
        "{} is missing: the tests read the project's shared data (../shared/data/ beside the \
         repository, or $SMALL_AGENT_DATA)",
        p.display()
    );
    p
}

pub use installed::default_model_path;
