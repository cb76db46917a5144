//! The library's error type: what can go wrong *outside* Python. Errors raised by the
//! snippet itself are not errors of the library; they come back inside [`crate::ExecResult`].

use std::path::PathBuf;

/// Failures of the sandbox machinery (files, compilation, instantiation, the worker thread).
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// An interpreter asset (module, stdlib zip, site-packages entry) is missing.
    #[error("python runtime file {path} is missing ({what}); fetch the asset first (`small-agent models fetch`)")]
    MissingFile {
        /// The path that was expected.
        path: PathBuf,
        /// What the file is for.
        what: &'static str,
    },
    /// A filesystem operation failed.
    #[error("{context}: {path}: {source}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// wasmtime refused to compile, deserialize, link or instantiate the module.
    #[error("wasmtime: {context}: {message}")]
    Wasm {
        /// What was being done.
        context: &'static str,
        /// wasmtime's message (with its cause chain).
        message: String,
    },
    /// The module does not have the exports or imports its flavour needs.
    #[error("{path} is not a {flavour} interpreter: {reason}")]
    WrongModule {
        /// The module's path.
        path: PathBuf,
        /// The flavour that was asked for.
        flavour: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// The interpreter started but did not come up (the driver failed to boot).
    #[error("the interpreter failed to start: {0}")]
    Boot(String),
    /// A tool definition is invalid (bad name, duplicate, reserved).
    #[error("invalid tool definition: {0}")]
    InvalidTool(String),
    /// A configuration value is out of range.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// The operation is not supported by this flavour.
    #[error("{0}")]
    Unsupported(String),
    /// The session's worker thread is gone (it panicked or was shut down).
    #[error("the session's worker thread is gone")]
    WorkerGone,
}

impl SandboxError {
    pub(crate) fn wasm(context: &'static str, err: impl std::fmt::Display) -> Self {
        // `{:#}` on anyhow-style errors prints the cause chain on one line.
        SandboxError::Wasm {
            context,
            message: format!("{err:#}"),
        }
    }

    pub(crate) fn io(
        context: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        SandboxError::Io {
            context,
            path: path.into(),
            source,
        }
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = SandboxError> = std::result::Result<T, E>;
