//! `small-agent-distill export`: a training run's checkpoint → a merged GGUF model (F16, F32,
//! or quantised by llama.cpp), a llama.cpp LoRA adapter GGUF (`--adapter`) or PEFT's layout
//! (`--peft`). The formats are `small_agent_student::export`'s; this file finds the
//! checkpoint and the base in the run directory.
//!
//! Run directory (written by `train`): `run.json` (`format` = `small-agent-train-run`,
//! `version` 1, `base.path`, `base.sha256`, `mode` = `lora` | `full`, `lora.dropout`),
//! `checkpoints/NAME/adapter.safetensors` (LoRA) or `weights.safetensors` (full), and
//! `latest`, the name of the newest checkpoint.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use serde::{Deserialize, Serialize};
use sha2::Digest;
use small_agent_student::adapter::read_student_weights;
use small_agent_student::export::{self, ExportReport, Trained};
use small_agent_student::{ExportType, LoraAdapter};

use super::UsageError;

/// `format` of `run.json`.
const RUN_FORMAT: &str = "small-agent-train-run";
/// The `run.json` version read here.
const RUN_VERSION: u32 = 1;

/// Flags of `export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The training run directory (run.json, checkpoints/, latest)
    #[arg(long, value_name = "RUN_DIR")]
    run: PathBuf,
    /// Output: a GGUF file, or a directory with --peft
    #[arg(long, value_name = "PATH")]
    out: PathBuf,
    /// Tensor type of the merged model: f16, f32, q8_0, q4_0, q4_1 (the runtime's default
    /// model type) or q4_k_m; quantised types go through llama.cpp's own quantiser
    #[arg(long = "type", value_name = "TYPE", default_value = "f16")]
    ty: ExportType,
    /// Write a llama.cpp LoRA adapter GGUF of the base instead of a merged model
    #[arg(long, conflicts_with_all = ["peft", "ty"])]
    adapter: bool,
    /// Write the adapter in PEFT's layout (adapter_model.safetensors + adapter_config.json)
    /// into the directory --out
    #[arg(long, conflicts_with = "ty")]
    peft: bool,
    /// The checkpoint (a directory name under RUN_DIR/checkpoints) [default: RUN_DIR/latest]
    #[arg(long, value_name = "NAME")]
    checkpoint: Option<String>,
    /// The base GGUF [default: run.json's base.path]; its sha256 must match the run's
    #[arg(long, value_name = "MODEL.gguf")]
    base: Option<PathBuf>,
    /// llama.cpp's quantiser threads
    #[arg(long, default_value_t = small_agent::engine::default_threads())]
    threads: i32,
    /// Print the result as one JSON object
    #[arg(long)]
    json: bool,
}

/// The fields of `run.json` read here (the trainer writes more).
#[derive(Debug, Deserialize)]
struct RunFile {
    format: String,
    version: u32,
    base: RunBase,
    mode: String,
    #[serde(default)]
    lora: Option<RunLora>,
}

#[derive(Debug, Deserialize)]
struct RunBase {
    path: PathBuf,
    #[serde(default)]
    sha256: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RunLora {
    #[serde(default)]
    dropout: f32,
}

/// What `--json` prints.
#[derive(Debug, Serialize)]
struct ExportOutput {
    run: PathBuf,
    checkpoint: PathBuf,
    mode: String,
    #[serde(flatten)]
    report: ExportReport,
}

/// Runs `export`.
pub fn run(a: ExportArgs) -> anyhow::Result<ExitCode> {
    let run_json = a.run.join("run.json");
    let text = std::fs::read_to_string(&run_json).with_context(|| {
        format!(
            "cannot read {} (is --run a training run?)",
            run_json.display()
        )
    })?;
    let run: RunFile = serde_json::from_str(&text)
        .map_err(|e| UsageError(format!("{}: {e}", run_json.display())))?;
    if run.format != RUN_FORMAT || run.version != RUN_VERSION {
        return Err(UsageError(format!(
            "{} is format {:?} version {}, this build reads {RUN_FORMAT:?} version {RUN_VERSION}",
            run_json.display(),
            run.format,
            run.version
        ))
        .into());
    }
    let checkpoint = checkpoint_dir(&a.run, a.checkpoint.as_deref())?;
    let base = match &a.base {
        Some(b) => b.clone(),
        None => resolve(&a.run, &run.base.path),
    };
    if !base.exists() {
        return Err(UsageError(format!(
            "the base model {} is missing (pass --base)",
            base.display()
        ))
        .into());
    }
    if let Some(expected) = &run.base.sha256 {
        let found = sha256_of(&base)?;
        if !found.eq_ignore_ascii_case(expected) {
            return Err(UsageError(format!(
                "{} (sha256 {found}) is not the base this run trained on (sha256 {expected})",
                base.display()
            ))
            .into());
        }
    }
    let report = match run.mode.as_str() {
        "lora" => {
            let adapter = LoraAdapter::read_safetensors(&checkpoint.join("adapter.safetensors"))?;
            if a.peft {
                let name = base.file_name().map(|n| n.to_string_lossy().into_owned());
                let dropout = run.lora.as_ref().map_or(0.0, |l| l.dropout);
                export::write_peft(&adapter, &a.out, name.as_deref(), dropout)?
            } else if a.adapter {
                export::write_llama_adapter(&base, &adapter, &a.out)?
            } else {
                export::merge(&base, Trained::Lora(&adapter), &a.out, a.ty, a.threads)?
            }
        }
        "full" => {
            if a.adapter || a.peft {
                return Err(UsageError(
                    "a full fine-tuning run has no adapter: export it as a merged model \
                     (without --adapter / --peft)"
                        .into(),
                )
                .into());
            }
            let weights = read_student_weights(&checkpoint.join("weights.safetensors"))?;
            export::merge(&base, Trained::Full(&weights), &a.out, a.ty, a.threads)?
        }
        other => {
            return Err(UsageError(format!(
                "{}: mode {other:?}, lora or full expected",
                run_json.display()
            ))
            .into())
        }
    };
    let output = ExportOutput {
        run: a.run.clone(),
        checkpoint,
        mode: run.mode,
        report,
    };
    if a.json {
        println!("{}", serde_json::to_string(&output)?);
    } else {
        print_report(&output.report, Some(&output.checkpoint));
    }
    Ok(ExitCode::SUCCESS)
}

/// One line for people.
pub fn print_report(r: &ExportReport, from: Option<&Path>) {
    println!(
        "wrote {} ({}, {} tensors, {} changed, {:.1} MB){}",
        r.out.display(),
        r.kind,
        r.tensors,
        r.changed,
        r.bytes as f64 / 1e6,
        from.map(|p| format!(" from {}", p.display()))
            .unwrap_or_default()
    );
}

/// The checkpoint directory: `--checkpoint NAME`, else the one `latest` names.
fn checkpoint_dir(run: &Path, name: Option<&str>) -> anyhow::Result<PathBuf> {
    let name = match name {
        Some(n) => n.to_owned(),
        None => {
            let latest = run.join("latest");
            std::fs::read_to_string(&latest)
                .map_err(|e| {
                    UsageError(format!(
                        "cannot read {} ({e}): the run has no checkpoint yet, or pass --checkpoint",
                        latest.display()
                    ))
                })?
                .trim()
                .to_owned()
        }
    };
    // A name, not a path: `latest` and --checkpoint stay inside the run.
    if name.is_empty() || name.contains('/') || name == ".." {
        return Err(UsageError(format!("{name:?} is not a checkpoint name")).into());
    }
    let dir = run.join("checkpoints").join(&name);
    if !dir.is_dir() {
        return Err(UsageError(format!("checkpoint {} is missing", dir.display())).into());
    }
    Ok(dir)
}

/// A base path from `run.json`: as written if it exists, else relative to the run directory.
fn resolve(run: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() || p.exists() {
        p.to_path_buf()
    } else {
        run.join(p)
    }
}

fn sha256_of(path: &Path) -> anyhow::Result<String> {
    let mut f =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}
