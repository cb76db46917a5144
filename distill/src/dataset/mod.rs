//! Tokenized training datasets with assistant-only loss masks.
//!
//! Each trajectory is rendered exactly as the runtime renders a conversation at inference
//! ([`render`]): an agent trajectory gets the *student's* system and task turns
//! (`small_agent::agent::opening_messages` with the student template and the agent's tools,
//! `web_search` listed) in place of the teacher's, and keeps its assistant, observation and
//! error turns; a CoT trajectory keeps its messages. The model's chat template renders the
//! text, llama.cpp's tokenizer (the runtime's `Model::tokenize(text, add_bos = true)`)
//! makes the tokens, and the mask is 1 on assistant replies and the end-of-turn token that
//! closes each (see [`builder::MASK_RULE`]). Boundaries are found prefix by prefix and
//! checked; a trajectory whose boundaries do not fall between tokens, or whose inference
//! prompt (with the step grammar's forced `Thought:`) does not tokenize as a prefix of its
//! tokens, is dropped and counted, never mis-masked. Examples longer than `max_len` tokens
//! are dropped and counted, never truncated. Train and validation are split by question
//! ([`builder::SPLIT_RULE`]), so no question is in both.
//!
//! # On-disk format (version 1)
//!
//! A dataset is a directory:
//!
//! | file | content |
//! |---|---|
//! | `manifest.json` | [`Manifest`]: format name and version, sources (path, SHA-256, lines, per-source token statistics), counts per split and drops by reason, tokenizer (GGUF path, SHA-256, vocabulary size), chat template probe, student prompt (text and SHA-256), `max_len`, `val_frac`, `seed`, split and mask rules |
//! | `SPLIT.tokens` | token ids, `u32` little-endian, every example of the split one after another |
//! | `SPLIT.mask` | one byte per token: 1 where the loss counts, else 0 |
//! | `SPLIT.offsets` | `n + 1` `u64` little-endian offsets into the token array: example `i` is `offsets[i]..offsets[i+1]` |
//! | `SPLIT.ids.jsonl` | one line per example: `{"id", "source" (index into the manifest's sources), "len", "masked"}` |
//! | `SPLIT.messages.jsonl` | one line per example: `{"messages": [{"role", "content"}, ...]}`, the rendered conversation in the chat-messages form Hugging Face TRL's SFT trainer reads (assistant-only loss); written for training elsewhere, not read back |
//!
//! for `SPLIT` in `train` and `val`. The directory is written beside its final place under
//! a temporary name and renamed into place when complete: an interrupted build leaves the
//! previous dataset as it was. [`Dataset::open`] reads it back and checks it.
pub mod builder;
pub mod format;
pub mod manifest;
pub mod render;

use std::path::{Path, PathBuf};

pub use builder::{build, split_of, BuildOptions, SPLITS};
pub use format::{ExampleId, Split};
pub use manifest::Manifest;
pub use render::{Example, RenderProblem, Renderer};

use crate::trajectory::TrajectoryError;

/// Errors of reading a dataset directory.
#[derive(Debug, thiserror::Error)]
pub enum DatasetFileError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The files disagree with each other or with the manifest (a truncated or damaged file).
    #[error("{path}: corrupt dataset: {why}")]
    Corrupt {
        /// The file at fault.
        path: PathBuf,
        /// What disagrees.
        why: String,
    },
    /// The manifest is of a layout version this code does not read.
    #[error("{path}: dataset format version {found}, this code reads version {supported}: rebuild it with `small-agent-distill dataset`")]
    Version {
        /// The manifest.
        path: PathBuf,
        /// The version found.
        found: String,
        /// The version read here.
        supported: u32,
    },
    /// No such split.
    #[error("no split {name:?} (the dataset has {known:?})")]
    UnknownSplit {
        /// The name asked for.
        name: String,
        /// The splits there are.
        known: Vec<String>,
    },
}

/// Errors of building a dataset.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A trajectory file could not be read.
    #[error(transparent)]
    Trajectory(#[from] TrajectoryError),
    /// The engine failed outside a single trajectory (the probe of the chat template).
    #[error(transparent)]
    Engine(#[from] small_agent::EngineError),
    /// A file of the dataset could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// `--out` exists and is neither empty nor a dataset directory.
    #[error(
        "{0} exists and is not a dataset directory (no manifest.json): refusing to replace it"
    )]
    OutNotDataset(PathBuf),
    /// The build was stopped; the previous directory is intact.
    #[error("interrupted; the previous dataset (if any) is unchanged")]
    Interrupted,
}

/// A dataset directory, opened: its manifest, and its splits on demand.
#[derive(Debug, Clone)]
pub struct Dataset {
    dir: PathBuf,
    manifest: Manifest,
}

impl Dataset {
    /// Opens the dataset in `dir`: reads and checks `manifest.json` (format name, version).
    pub fn open(dir: &Path) -> Result<Self, DatasetFileError> {
        Ok(Self {
            dir: dir.to_path_buf(),
            manifest: format::read_manifest(dir)?,
        })
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reads split `name` (`train` or `val`) and checks it (see [`Split::read`]).
    pub fn split(&self, name: &str) -> Result<Split, DatasetFileError> {
        Split::read(&self.dir, &self.manifest, name)
    }
}
