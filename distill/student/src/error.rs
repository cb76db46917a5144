//! Errors of the student crate.

use std::path::PathBuf;

/// Errors of building, loading and checking the student model. Messages name the file and
/// say what to do.
#[derive(Debug, thiserror::Error)]
pub enum StudentError {
    /// The file cannot be opened or read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not GGUF, or its header, metadata or tensor data is damaged (truncated,
    /// a key of the wrong type, a tensor of the wrong shape).
    #[error("{path} is not a usable GGUF file: {reason}; re-fetch or re-export it")]
    CorruptGguf {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The file is valid GGUF, but holds something this model does not implement: another
    /// architecture, a tensor type without dequantisation here, RoPE scaling, experts.
    #[error("{path}: {what} is not supported by the student model ({supported})")]
    UnsupportedGguf {
        /// The file.
        path: PathBuf,
        /// What it holds.
        what: String,
        /// What is supported instead.
        supported: &'static str,
    },
    /// llama.cpp (the runtime's engine) failed on the reference side of a comparison.
    #[error(transparent)]
    Engine(#[from] small_agent::EngineError),
    /// A caller's input is out of range (an empty prompt, batches of unequal length).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// Writing a file failed.
    #[error("cannot write {path}: {reason}")]
    Write {
        /// The file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
}

/// Result alias of the crate.
pub type Result<T, E = StudentError> = std::result::Result<T, E>;
