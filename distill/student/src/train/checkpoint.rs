//! The run directory: what a run is (`run.json`), its checkpoints and its metrics.
//!
//! ```text
//! RUN_DIR/
//!   run.json                  RunManifest: base model (path, SHA-256), data, TrainConfig, steps
//!   metrics.jsonl             one line per optimiser step, one per validation
//!   latest                    the newest complete checkpoint's directory name
//!   checkpoints/step-000025/
//!     adapter.safetensors     LoRA mode: NAME.lora_a [d_in, r], NAME.lora_b [r, d_out]
//!     weights.safetensors     full mode: every weight under its GGUF name
//!     optimizer.safetensors   NAME.m, NAME.v (AdamW's moments); metadata: time
//!     state.json              CheckpointState: step, position, totals
//! ```
//!
//! Tensors are f32 in the student's layout ([`crate::gguf`]: `[d_in, d_out]` matrices, q/k
//! rows in Hugging Face order). A checkpoint is written into a temporary directory and
//! renamed into place before `latest` (itself replaced by rename) names it, so an
//! interruption at any moment leaves the previous checkpoint intact and named.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use super::config::{Mode, TrainConfig};
use crate::error::{Result, StudentError};

/// `run.json`'s format name.
pub const RUN_FORMAT: &str = "small-agent-train-run";
/// `run.json`'s layout version.
pub const RUN_VERSION: u32 = 1;
/// Checkpoints kept in a run directory (older ones are removed once a newer is complete).
pub const KEEP_CHECKPOINTS: usize = 3;

/// A file a run depends on, by path and content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileRef {
    /// Where it was when the run started.
    pub path: PathBuf,
    /// SHA-256 of its content, hex.
    pub sha256: String,
}

/// `run.json`: what the run trains, on what, how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunManifest {
    /// [`RUN_FORMAT`].
    pub format: String,
    /// [`RUN_VERSION`].
    pub version: u32,
    /// The base model (GGUF).
    pub base: FileRef,
    /// The dataset (its directory and the SHA-256 of its manifest), when it came from one.
    pub data: Option<FileRef>,
    /// The settings.
    #[serde(flatten)]
    pub config: TrainConfig,
    /// Training examples.
    pub train_examples: usize,
    /// Validation examples in the split (those scored: `config.val_examples`).
    pub val_examples_total: usize,
    /// Optimiser steps of the whole schedule.
    pub total_steps: usize,
    /// Trainable values.
    pub trainable_params: usize,
    /// The version of this code that started the run.
    pub code_version: String,
}

/// `state.json` of a checkpoint: where the run is.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CheckpointState {
    /// Optimiser steps done (the data position: see [`super::data::step_examples`]).
    pub step: usize,
    /// Epoch of the next step.
    pub epoch: usize,
    /// Tokens run forward and backward so far.
    pub tokens: u64,
    /// Tokens that carried loss so far.
    pub masked_tokens: u64,
    /// Seconds spent training (checkpoints and validation excluded).
    pub train_seconds: f64,
    /// Mean loss of the last step.
    pub last_loss: Option<f32>,
    /// Validation loss at this checkpoint.
    pub val_loss: Option<f32>,
}

/// A named f32 tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedTensor {
    /// Its name.
    pub name: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub values: Vec<f32>,
}

/// Writes f32 tensors and string metadata as safetensors, through a temporary file renamed
/// into place.
pub fn write_tensors(
    path: &Path,
    tensors: &[NamedTensor],
    metadata: HashMap<String, String>,
) -> Result<()> {
    let write_err = |reason: String| StudentError::Write {
        path: path.to_path_buf(),
        reason,
    };
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|t| t.values.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|(t, b)| {
            safetensors::tensor::TensorView::new(Dtype::F32, t.shape.clone(), b)
                .map(|v| (t.name.clone(), v))
                .map_err(|e| write_err(format!("tensor {}: {e}", t.name)))
        })
        .collect::<Result<Vec<_>>>()?;
    let tmp = path.with_extension("safetensors.tmp");
    safetensors::tensor::serialize_to_file(views, Some(metadata), &tmp)
        .map_err(|e| write_err(e.to_string()))?;
    fs::rename(&tmp, path).map_err(|e| write_err(e.to_string()))
}

/// Reads a safetensors file of f32 tensors back, with its metadata; a damaged file is a
/// [`StudentError::CorruptRun`].
pub fn read_tensors(path: &Path) -> Result<(Vec<NamedTensor>, HashMap<String, String>)> {
    let bytes = fs::read(path).map_err(|source| StudentError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let corrupt = |reason: String| StudentError::CorruptRun {
        path: path.to_path_buf(),
        reason,
    };
    let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| corrupt(e.to_string()))?;
    let file = SafeTensors::deserialize(&bytes).map_err(|e| corrupt(e.to_string()))?;
    let mut out = Vec::new();
    for (name, view) in file.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(corrupt(format!(
                "tensor {name} is {:?}, not F32",
                view.dtype()
            )));
        }
        let values = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        out.push(NamedTensor {
            name,
            shape: view.shape().to_vec(),
            values,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok((out, meta.metadata().clone().unwrap_or_default()))
}

/// SHA-256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    use sha2::Digest;
    let mut file = fs::File::open(path).map_err(|source| StudentError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(|source| StudentError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(hex::encode(hasher.finalize()))
}

/// A checkpoint as read back.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// Its directory.
    pub dir: PathBuf,
    /// Where the run was.
    pub state: CheckpointState,
    /// The trained values (adapters or weights), by name.
    pub params: Vec<NamedTensor>,
    /// AdamW's moments by `NAME.m` / `NAME.v`, and its step count.
    pub moments: Vec<NamedTensor>,
    /// AdamW's step count (0: no update yet).
    pub optimizer_time: usize,
}

/// A run directory.
#[derive(Debug, Clone)]
pub struct RunDir {
    dir: PathBuf,
    manifest: RunManifest,
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> StudentError + '_ {
    move |source| StudentError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `bytes` to `path` through a temporary file, synced, renamed into place.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(bytes).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))
}

impl RunDir {
    /// Starts a run directory: creates it (it must not exist, or be empty) and writes
    /// `run.json`.
    pub fn create(dir: &Path, manifest: RunManifest) -> Result<Self> {
        if dir.join("run.json").exists() {
            return Err(StudentError::Run(format!(
                "{} already holds a training run: add --resume to continue it, or choose another --out",
                dir.display()
            )));
        }
        if dir.exists() && fs::read_dir(dir).map_err(io_err(dir))?.next().is_some() {
            return Err(StudentError::Run(format!(
                "{} exists and is not empty: choose another --out",
                dir.display()
            )));
        }
        fs::create_dir_all(dir.join("checkpoints")).map_err(io_err(dir))?;
        let json = serde_json::to_vec_pretty(&manifest).expect("a manifest serialises");
        write_atomic(&dir.join("run.json"), &json)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            manifest,
        })
    }

    /// Opens an existing run directory.
    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join("run.json");
        let bytes = fs::read(&path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                StudentError::Run(format!(
                    "{} is not a training run (no run.json): start one with `small-agent-distill train`",
                    dir.display()
                ))
            } else {
                StudentError::Io {
                    path: path.clone(),
                    source,
                }
            }
        })?;
        let manifest: RunManifest =
            serde_json::from_slice(&bytes).map_err(|e| StudentError::CorruptRun {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        if manifest.format != RUN_FORMAT || manifest.version != RUN_VERSION {
            return Err(StudentError::CorruptRun {
                path,
                reason: format!(
                    "format {:?} version {}, this code reads {RUN_FORMAT:?} version {RUN_VERSION}",
                    manifest.format, manifest.version
                ),
            });
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            manifest,
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `run.json`.
    pub fn manifest(&self) -> &RunManifest {
        &self.manifest
    }

    /// `metrics.jsonl`.
    pub fn metrics_path(&self) -> PathBuf {
        self.dir.join("metrics.jsonl")
    }

    /// The file of a checkpoint's trained values for this run's mode.
    pub fn params_file(&self, checkpoint_dir: &Path) -> PathBuf {
        checkpoint_dir.join(match self.manifest.config.mode {
            Mode::Lora => "adapter.safetensors",
            Mode::Full => "weights.safetensors",
        })
    }

    /// The directory `latest` names, if any.
    pub fn latest_dir(&self) -> Result<Option<PathBuf>> {
        let latest = self.dir.join("latest");
        match fs::read_to_string(&latest) {
            Ok(name) => {
                let dir = self.dir.join("checkpoints").join(name.trim());
                if !dir.join("state.json").exists() {
                    return Err(StudentError::CorruptRun {
                        path: latest,
                        reason: format!("it names {}, which holds no checkpoint", dir.display()),
                    });
                }
                Ok(Some(dir))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StudentError::Io {
                path: latest,
                source,
            }),
        }
    }

    /// Reads the checkpoint in `dir`.
    pub fn read_checkpoint(&self, dir: &Path) -> Result<Checkpoint> {
        let state_path = dir.join("state.json");
        let bytes = fs::read(&state_path).map_err(io_err(&state_path))?;
        let state: CheckpointState =
            serde_json::from_slice(&bytes).map_err(|e| StudentError::CorruptRun {
                path: state_path.clone(),
                reason: e.to_string(),
            })?;
        let (params, _) = read_tensors(&self.params_file(dir))?;
        let opt_path = dir.join("optimizer.safetensors");
        let (moments, meta) = read_tensors(&opt_path)?;
        let optimizer_time = meta
            .get("time")
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| StudentError::CorruptRun {
                path: opt_path.clone(),
                reason: "no optimiser time in the metadata".into(),
            })?;
        Ok(Checkpoint {
            dir: dir.to_path_buf(),
            state,
            params,
            moments,
            optimizer_time,
        })
    }

    /// Writes a checkpoint and makes it `latest`; removes checkpoints beyond the newest
    /// [`KEEP_CHECKPOINTS`].
    pub fn write_checkpoint(
        &self,
        state: &CheckpointState,
        params: &[NamedTensor],
        moments: &[NamedTensor],
        optimizer_time: usize,
    ) -> Result<PathBuf> {
        let root = self.dir.join("checkpoints");
        let name = format!("step-{:06}", state.step);
        let tmp = root.join(format!(".{name}.tmp"));
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
        }
        fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
        let mut meta = HashMap::from([("step".to_owned(), state.step.to_string())]);
        if self.manifest.config.mode == Mode::Lora {
            let lora = &self.manifest.config.lora;
            meta.insert("rank".into(), lora.rank.to_string());
            meta.insert("alpha".into(), lora.alpha.to_string());
        }
        write_tensors(&self.params_file(&tmp), params, meta)?;
        write_tensors(
            &tmp.join("optimizer.safetensors"),
            moments,
            HashMap::from([("time".to_owned(), optimizer_time.to_string())]),
        )?;
        let json = serde_json::to_vec_pretty(state).expect("a state serialises");
        write_atomic(&tmp.join("state.json"), &json)?;
        let done = root.join(&name);
        if done.exists() {
            fs::remove_dir_all(&done).map_err(io_err(&done))?;
        }
        fs::rename(&tmp, &done).map_err(io_err(&done))?;
        write_atomic(&self.dir.join("latest"), name.as_bytes())?;
        self.prune(&root)?;
        Ok(done)
    }

    fn prune(&self, root: &Path) -> Result<()> {
        let mut names: Vec<String> = fs::read_dir(root)
            .map_err(io_err(root))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("step-"))
            .collect();
        names.sort();
        let excess = names.len().saturating_sub(KEEP_CHECKPOINTS);
        for name in &names[..excess] {
            let path = root.join(name);
            fs::remove_dir_all(&path).map_err(io_err(&path))?;
        }
        Ok(())
    }

    /// Appends one JSON line to `metrics.jsonl` (synced).
    pub fn append_metric(&self, line: &serde_json::Value) -> Result<()> {
        let path = self.metrics_path();
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        let mut text = line.to_string();
        text.push('\n');
        f.write_all(text.as_bytes()).map_err(io_err(&path))?;
        f.sync_data().map_err(io_err(&path))
    }

    /// Drops the metric lines written after optimiser step `step` (a resumed run writes them
    /// again), and a torn last line; `None`: every line (a run restarted from nothing).
    pub fn truncate_metrics(&self, step: Option<usize>) -> Result<()> {
        let path = self.metrics_path();
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(source) => return Err(StudentError::Io { path, source }),
        };
        let kept: String = text
            .lines()
            .filter(|line| {
                serde_json::from_str::<serde_json::Value>(line)
                    .ok()
                    .and_then(|v| v.get("step").and_then(serde_json::Value::as_u64))
                    .zip(step)
                    .is_some_and(|(s, keep)| s as usize <= keep)
            })
            .map(|l| format!("{l}\n"))
            .collect();
        write_atomic(&path, kept.as_bytes())
    }
}
