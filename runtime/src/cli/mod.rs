//! Command-line definitions (one definition per flag, shared through `#[command(flatten)]`)
//! and the mapping of errors to exit codes: 0 ok, 1 the task failed, 2 usage or environment.
mod ask;
mod bench;
mod generate;
mod models;

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use small_agent::{
    engine::{self, default_threads},
    EngineError, Model, SamplingParams, SessionParams,
};
use small_agent_models::{Catalog, Store, DEFAULT_LLM};

/// Exit code of a failed task (the model could not do what was asked).
pub const EXIT_TASK_FAILED: u8 = 1;
/// Exit code of a usage or environment error (bad flags, missing assets, no pip...).
pub const EXIT_USAGE: u8 = 2;

/// small-agent: a small language model as a tool-using code agent, fully offline.
#[derive(Debug, Parser)]
#[command(name = "small-agent", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Answer a question (the agent loop with tools is being built; see --help).
    Ask(ask::AskArgs),
    /// One-turn chat completion with the model, streamed to the terminal.
    Generate(generate::GenerateArgs),
    /// Fetch and list the offline assets (models, interpreters, corpora).
    #[command(subcommand)]
    Models(models::ModelsCommand),
    /// Benchmarks against named baselines measured in the same run.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Ask(a) => ask::run(a),
        Command::Generate(a) => generate::run(a),
        Command::Models(c) => models::run(c),
        Command::Bench(c) => bench::run(c),
    }
}

/// Logs go to stderr through `tracing`, filtered by `RUST_LOG` (default: warnings).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,llama_cpp_2=error"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Environment and usage errors exit with 2, everything else with 1.
pub fn exit_code_of(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<EngineError>() {
            return match e {
                EngineError::ContextOverflow { .. } | EngineError::Llama(_) => EXIT_TASK_FAILED,
                _ => EXIT_USAGE,
            };
        }
        if cause.downcast_ref::<small_agent_models::Error>().is_some()
            || cause
                .downcast_ref::<small_agent::bench::LlamaBenchError>()
                .is_some()
            || cause.downcast_ref::<UsageError>().is_some()
        {
            return EXIT_USAGE;
        }
    }
    EXIT_TASK_FAILED
}

/// A usage error found after parsing (e.g. an unreadable prompt file).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Which model to load.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// GGUF model file [default: the fetched default model]
    #[arg(long, short = 'm', env = "SMALL_AGENT_MODEL", value_name = "PATH")]
    pub model: Option<PathBuf>,
}

impl ModelArgs {
    /// The model path: `--model`, else the default asset (which must be fetched).
    pub fn path(&self) -> Result<PathBuf> {
        if let Some(p) = &self.model {
            return Ok(p.clone());
        }
        let catalog = Catalog::builtin()?;
        let store = Store::from_env()?;
        Ok(store.primary_path(catalog.require(DEFAULT_LLM)?))
    }

    /// Loads the model.
    pub fn load(&self) -> Result<Model> {
        let path = self.path()?;
        let t = std::time::Instant::now();
        let model = Model::load(&path)?;
        tracing::info!(path = %path.display(), ms = t.elapsed().as_millis() as u64, "model loaded");
        Ok(model)
    }
}

/// Context and threads.
#[derive(Debug, Clone, Args)]
pub struct ContextArgs {
    /// Context size in tokens
    #[arg(long, default_value_t = engine::DEFAULT_CTX_SIZE, value_name = "N")]
    pub ctx_size: u32,
    /// CPU threads [default: one per available core]
    #[arg(long, short = 't', value_name = "N")]
    pub threads: Option<i32>,
}

impl ContextArgs {
    /// Session parameters from the flags.
    pub fn session_params(&self) -> SessionParams {
        let t = self.threads.unwrap_or_else(default_threads);
        SessionParams {
            n_ctx: self.ctx_size,
            n_threads: t,
            n_threads_batch: t,
            ..SessionParams::default()
        }
    }
}

/// Sampling flags.
#[derive(Debug, Clone, Args)]
pub struct SamplingArgs {
    /// Maximum tokens to generate
    #[arg(long, default_value_t = engine::DEFAULT_MAX_TOKENS, value_name = "N")]
    pub max_tokens: u32,
    /// Sampling temperature (0 = greedy)
    #[arg(long, default_value_t = engine::DEFAULT_TEMPERATURE, value_name = "T")]
    pub temperature: f32,
    /// Nucleus sampling threshold (1 = off)
    #[arg(long, default_value_t = engine::DEFAULT_TOP_P, value_name = "P")]
    pub top_p: f32,
    /// Top-k sampling (0 = off)
    #[arg(long, default_value_t = engine::DEFAULT_TOP_K, value_name = "K")]
    pub top_k: i32,
    /// Min-p sampling (0 = off)
    #[arg(long, default_value_t = engine::DEFAULT_MIN_P, value_name = "P")]
    pub min_p: f32,
    /// Repeat penalty (1 = off)
    #[arg(long, default_value_t = engine::DEFAULT_REPEAT_PENALTY, value_name = "X")]
    pub repeat_penalty: f32,
    /// Random seed; the same seed gives the same output
    #[arg(long, default_value_t = engine::DEFAULT_SEED, value_name = "S")]
    pub seed: u32,
}

impl SamplingArgs {
    /// Sampling parameters from the flags.
    pub fn sampling(&self) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            seed: self.seed,
            ..SamplingParams::default()
        }
    }
}

/// Reads a text argument; `-` means standard input.
pub fn read_text_arg(arg: &str) -> Result<String> {
    if arg != "-" {
        return Ok(arg.to_owned());
    }
    let mut s = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
        .map_err(|e| UsageError(format!("cannot read standard input as UTF-8 text: {e}")))?;
    Ok(s)
}

/// Reads a file given on the command line.
pub fn read_file_arg(path: &std::path::Path, what: &str) -> Result<String> {
    std::fs::read_to_string(path)
        .map_err(|e| UsageError(format!("cannot read {what} {}: {e}", path.display())))
        .context(format!("reading {what}"))
}
