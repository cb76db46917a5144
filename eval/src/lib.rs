//! Offline evaluation for small-agent.
//!
//! * [`dataset`]: one [`Item`](dataset::Item) type for every question file of the shared data
//!   (agent-distillation sets, HotpotQA distractor files, HippoRAG samples) and generic JSONL;
//! * [`score`]: SQuAD-style normalised exact match, token F1 and containment;
//! * [`math`]: `\boxed{}` / final-answer extraction and numeric, structural and symbolic
//!   equivalence; [`symbolic`] is the seam, with sympy run in the WASM sandbox;
//! * [`prompts`]: the CoT, CoT-RAG and judge prompts (from `models/prompts/`) and the strict
//!   judge verdict;
//! * [`results`]: resumable run directories, `results.json`, Markdown tables and the
//!   side-by-side report of several runs.
//!
//! The crate runs no model: the runtime's `evaluate` module drives the modes and hands the
//! replies here.
#![warn(missing_docs)]

pub mod dataset;
pub mod math;
pub mod prompts;
pub mod results;
pub mod score;
pub mod symbolic;

pub use dataset::{Dataset, Item, Kind, Paragraph};
pub use math::{math_equal, MathMethod, MathVerdict};
pub use results::{QuestionRecord, ResultsFile, RunDir};
pub use score::{score_factual, FactualScore};
pub use symbolic::{SandboxSympy, SymbolicChecker, SymbolicVerdict};

/// The code version recorded with every run: crate version and the git commit it was built
/// from (`dirty` when tracked files differed from the commit at build time).
pub fn code_version() -> serde_json::Value {
    serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "git_commit": env!("SMALL_AGENT_GIT_COMMIT"),
        "dirty_at_build": env!("SMALL_AGENT_GIT_DIRTY") == "true",
    })
}

/// SHA-256 of a file, hex (the model's identity in the recorded settings).
pub fn sha256_file(path: &std::path::Path) -> std::io::Result<String> {
    use sha2::Digest;
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}
