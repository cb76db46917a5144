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
    /// A training run's directory or one of its checkpoints is damaged or inconsistent (a
    /// truncated tensor file, a missing state, a `latest` naming nothing).
    #[error("{path}: corrupt training run: {reason}; resume from an earlier checkpoint (edit `latest`) or start a new run")]
    CorruptRun {
        /// The file or directory at fault.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A run cannot be started or resumed as asked (the directory holds another run, the
    /// data or base model differ from the run's).
    #[error("{0}")]
    Run(String),
    /// A caller's input is out of range (an empty prompt, batches of unequal length).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A training checkpoint or adapter file (safetensors) is damaged, truncated or not
    /// of the expected layout (a tensor missing, of the wrong type or shape).
    #[error(
        "{path} is not a usable checkpoint file: {reason}; use another checkpoint or re-export it"
    )]
    CorruptCheckpoint {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
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
