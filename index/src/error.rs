//! One error type for the whole crate; the runtime maps it to a message for the user.

use std::path::PathBuf;

/// Everything that can go wrong while building, opening, searching or measuring a shard.
///
/// Variants that concern a shard directory name the path and, where one exists, the
/// command that fixes it, because the user sees these messages verbatim.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The shard directory does not exist.
    #[error("no knowledge shard at {path}: build one with `small-agent index build --input FILE --out {path}`")]
    Missing {
        /// The directory that was asked for.
        path: PathBuf,
    },
    /// The directory exists but was not written by this crate (no shard metadata).
    #[error("{path} is not a small-agent knowledge shard (no {marker}); point --index at a shard directory or build one there with `small-agent index build --out {path}`")]
    Foreign {
        /// The directory that was asked for.
        path: PathBuf,
        /// The metadata file that was expected.
        marker: &'static str,
    },
    /// The directory looks like a shard but its metadata or index files are damaged or
    /// from an incompatible schema version.
    #[error("knowledge shard at {path} is corrupted ({reason}); rebuild it with `small-agent index build --out {path}`")]
    Corrupt {
        /// The shard directory.
        path: PathBuf,
        /// What was found to be wrong.
        reason: String,
    },
    /// A malformed input record while ingesting in strict mode.
    #[error("{path}:{line}: malformed record: {reason}")]
    Malformed {
        /// The input file.
        path: PathBuf,
        /// 1-based line number (record number for single-document JSON inputs).
        line: u64,
        /// Why the record was rejected.
        reason: String,
    },
    /// The input file could not be recognised or parsed as a whole.
    #[error("cannot read {path} as {format}: {reason}")]
    Input {
        /// The input file.
        path: PathBuf,
        /// The format that was tried.
        format: String,
        /// What failed.
        reason: String,
    },
    /// An I/O error, with the path it concerns.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// An error from tantivy that is not a sign of corruption.
    #[error("search engine error: {0}")]
    Tantivy(#[from] tantivy::TantivyError),
    /// The dense reranker could not be loaded or run.
    #[error("rerank: {0}")]
    Rerank(String),
    /// An evaluation or benchmark could not run (bad data file, missing tool).
    #[error("{0}")]
    Measure(String),
}

/// Shorthand used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attaches a path to an `io::Error`, since a bare "No such file or directory" helps nobody.
pub(crate) trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|source| Error::Io {
            path: path.into(),
            source,
        })
    }
}
