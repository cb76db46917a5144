//! Command-line definitions (one definition per flag, shared through `#[command(flatten)]`)
//! and the mapping of errors to exit codes: 0 ok, 1 the task failed, 2 usage or environment.
mod ask;
mod bench;
mod bench_agent;
mod bench_sag;
mod eval;
mod generate;
mod index;
mod models;
mod python;
mod serve;

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use small_agent::{
    assets::InstalledStudent,
    chat::{RemoteChat, RemoteConfig},
    engine::{self, default_threads, LoadOptions},
    EngineError, Model, SamplingParams, SessionParams,
};

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
    /// Answer a question with the code agent (web_search over a local shard, Python in a sandbox).
    Ask(ask::AskArgs),
    /// One-turn chat completion with the model, streamed to the terminal.
    Generate(generate::GenerateArgs),
    /// Run Python code in the WebAssembly sandbox (a fresh session).
    Python(python::PythonArgs),
    /// Build, search and evaluate knowledge shards.
    #[command(subcommand)]
    Index(index::IndexCommand),
    /// Fetch and list the offline assets (models, interpreters, corpora).
    #[command(subcommand)]
    Models(models::ModelsCommand),
    /// Benchmarks against named baselines measured in the same run.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Evaluate a mode (agent, CoT, CoT-RAG) on question files with offline scoring; `eval
    /// report DIR...` compares runs.
    Eval(Box<eval::EvalArgs>),
    /// The desktop assistant: a local web page and HTTP API (runs the `small-agent-serve`
    /// binary beside this one; `small-agent serve --help` lists its flags).
    Serve(serve::ServeArgs),
}

/// `--version`: the version, the build (native or portable) and the ggml CPU code in use.
pub fn long_version() -> String {
    let version = env!("CARGO_PKG_VERSION");
    match engine::cpu::report() {
        Ok(r) => format!(
            "{version}\nbuild: {} (ggml CPU variant: {})\nggml features: {}\nCPU features: {}\n\
             own output product (AVX-512 VNNI): {}",
            r.build,
            r.variant,
            r.ggml_features.join(" "),
            r.cpu_features.join(" "),
            if r.own_output_head { "yes" } else { "no" },
        ),
        Err(e) => format!("{version}\nbuild: {}\nCPU: {e}", engine::cpu::BUILD),
    }
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Ask(a) => ask::run(a),
        Command::Generate(a) => generate::run(a),
        Command::Python(a) => python::run(a),
        Command::Index(c) => index::run(c),
        Command::Models(c) => models::run(c),
        Command::Bench(c) => bench::run(c),
        Command::Eval(a) => eval::run(*a),
        Command::Serve(a) => serve::run(a),
    }
}

/// Logs go to stderr through `tracing`, filtered by `RUST_LOG` (default: warnings).
///
/// llama.cpp's own log lines arrive under the target `llama-cpp-2` (the wrapper's Rust code
/// logs under `llama_cpp_2`); both only show errors by default: llama.cpp warns about things
/// that are expected here, e.g. once per matrix that the Q4_1 offsets adapter stays in the
/// plain CPU buffer.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("warn,llama_cpp_2=error,llama-cpp-2=error")
    });
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
        if let Some(e) = cause.downcast_ref::<small_agent::agent::AgentError>() {
            // The sandbox failing to open is the environment; the rest is the task.
            return match e {
                small_agent::agent::AgentError::Sandbox(_)
                | small_agent::agent::AgentError::Remote(_) => EXIT_USAGE,
                _ => EXIT_TASK_FAILED,
            };
        }
        if cause
            .downcast_ref::<small_agent::assets::AssetError>()
            .is_some()
            || cause.downcast_ref::<small_agent_models::Error>().is_some()
            || cause.downcast_ref::<small_agent_index::Error>().is_some()
            || cause
                .downcast_ref::<small_agent::agent::PromptError>()
                .is_some()
            || cause
                .downcast_ref::<small_agent::bench::LlamaBenchError>()
                .is_some()
            || cause.downcast_ref::<UsageError>().is_some()
            || cause
                .downcast_ref::<small_agent::chat::RemoteError>()
                .is_some()
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
    /// Load the GGUF exactly as it is: no Q4_1 -> Q4_0 + offsets split (the split computes
    /// the same weights with faster batched kernels; see ARCHITECTURE.md)
    #[arg(long, env = "SMALL_AGENT_AS_IS", value_parser = clap::builder::BoolishValueParser::new())]
    pub as_is: bool,
    /// A LoRA adapter GGUF (llama.cpp's format, e.g. `small-agent-distill export --adapter`)
    /// applied on top of the model; it must have been made for this model
    #[arg(long, env = "SMALL_AGENT_ADAPTER", value_name = "FILE")]
    pub adapter: Option<PathBuf>,
}

/// A model behind an OpenAI-compatible server, instead of a local GGUF.
#[derive(Debug, Args)]
pub struct RemoteArgs {
    /// Use the model of an OpenAI-compatible server (llama.cpp's llama-server, vLLM, Ollama) at
    /// URL, e.g. http://127.0.0.1:8080, instead of a local GGUF
    #[arg(long, value_name = "URL", conflicts_with = "model")]
    pub model_url: Option<String>,
    /// The model to ask the server for [default: the first one it lists]
    #[arg(long, value_name = "NAME", requires = "model_url")]
    pub model_name: Option<String>,
    /// Environment variable that holds the server's API key (sent as a bearer token)
    #[arg(long, value_name = "VAR", requires = "model_url")]
    pub api_key_env: Option<String>,
    /// Ask the server for each candidate with a request of its own, not as n choices of one
    /// request (the fallback anyway when a server refuses n)
    #[arg(long, requires = "model_url")]
    pub request_per_candidate: bool,
}

impl RemoteArgs {
    /// Connects to the server when `--model-url` is given.
    pub fn connect(&self) -> Result<Option<RemoteChat>> {
        let Some(url) = &self.model_url else {
            return Ok(None);
        };
        let mut config = RemoteConfig::new(url.clone());
        config.model = self.model_name.clone();
        config.request_per_candidate = self.request_per_candidate;
        if let Some(var) = &self.api_key_env {
            let key = std::env::var(var).map_err(|_| {
                UsageError(format!(
                    "--api-key-env {var}: the environment variable {var} is not set"
                ))
            })?;
            config.api_key = Some(key);
        }
        let chat = RemoteChat::connect(config)?;
        tracing::info!(model = chat.model_name(), endpoint = %chat.endpoint(), "remote model");
        Ok(Some(chat))
    }
}

impl ModelArgs {
    /// The model path: `--model`, else the default asset (which must be fetched).
    pub fn path(&self) -> Result<PathBuf> {
        if let Some(p) = &self.model {
            return Ok(p.clone());
        }
        Ok(small_agent::assets::default_model_path()?)
    }

    /// The distilled student an agent command runs: `--student NAME`, else the built-in
    /// default student (if this build marks one) unless `base` (`--base`), `--model` or
    /// `--adapter` chose otherwise.
    pub fn student(&self, agent: &AgentArgs) -> Result<Option<InstalledStudent>> {
        let student = small_agent::assets::chosen_student(
            agent.student.as_deref(),
            agent.base || self.model.is_some() || self.adapter.is_some(),
        )?;
        if let Some(s) = &student {
            tracing::info!(student = %s.name, adapter = %s.adapter.display(), "student");
        }
        Ok(student)
    }

    /// The adapter to apply: `--adapter`, else the student's.
    pub fn adapter_for(&self, student: Option<&InstalledStudent>) -> Option<PathBuf> {
        self.adapter
            .clone()
            .or_else(|| student.map(|s| s.adapter.clone()))
    }

    /// Loads the model (with `--adapter`, if given).
    pub fn load(&self) -> Result<Model> {
        self.load_for(None)
    }

    /// Loads the model with `--adapter`, else the student's adapter.
    pub fn load_for(&self, student: Option<&InstalledStudent>) -> Result<Model> {
        let path = self.path()?;
        let t = std::time::Instant::now();
        let options = if self.as_is {
            LoadOptions::as_is()
        } else {
            LoadOptions::default()
        }
        .with_adapter(self.adapter_for(student));
        let model = Model::load_with(&path, &options)?;
        tracing::info!(
            path = %path.display(),
            split = model.is_split(),
            adapter = model.adapter().map(|a| a.display().to_string()),
            ms = t.elapsed().as_millis() as u64,
            "model loaded"
        );
        Ok(model)
    }
}

/// The engine's thread count (one definition, shared by every command that runs the model).
#[derive(Debug, Clone, Args)]
pub struct ThreadArgs {
    /// CPU threads [default: one per available core]
    #[arg(long, short = 't', value_name = "N")]
    pub threads: Option<i32>,
}

impl ThreadArgs {
    /// The thread count: the flag, else one per available core.
    pub fn get(&self) -> i32 {
        self.threads.unwrap_or_else(default_threads)
    }
}

/// Context and threads.
#[derive(Debug, Clone, Args)]
pub struct ContextArgs {
    /// Context size in tokens
    #[arg(long, default_value_t = engine::DEFAULT_CTX_SIZE, value_name = "N")]
    pub ctx_size: u32,
    #[command(flatten)]
    pub threads: ThreadArgs,
    /// Leave the logits to llama.cpp's own output product. By default a Q8_0 output matrix
    /// is multiplied by small-agent's AVX-512 VNNI kernel where the CPU has one (same
    /// numbers, faster; see ARCHITECTURE.md)
    #[arg(long, env = "SMALL_AGENT_LLAMA_LOGITS", value_parser = clap::builder::BoolishValueParser::new())]
    pub llama_logits: bool,
    /// Keep the key cache in f16 when several candidates decode at once (SAG). By default it
    /// is Q8_0 there, which makes their attention faster on CPUs (see ARCHITECTURE.md)
    #[arg(long, env = "SMALL_AGENT_F16_KEYS", value_parser = clap::builder::BoolishValueParser::new())]
    pub f16_keys: bool,
    /// Leave a SAG step's kept reply where it was decoded in the KV cache instead of moving
    /// it to the front (for measuring what the move saves)
    #[arg(long, env = "SMALL_AGENT_NO_COMPACT", value_parser = clap::builder::BoolishValueParser::new())]
    pub no_compact: bool,
}

impl ContextArgs {
    /// Session parameters from the flags.
    pub fn session_params(&self) -> SessionParams {
        let t = self.threads.get();
        SessionParams {
            n_ctx: self.ctx_size,
            n_threads: t,
            n_threads_batch: t,
            own_output_head: !self.llama_logits,
            q8_0_keys: !self.f16_keys,
            compact_kept: !self.no_compact,
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

/// Which knowledge shard to search.
/// How the agent runs its steps; shared by `ask` and `eval` (one definition of each flag).
#[derive(Debug, Clone, Args)]
pub struct AgentArgs {
    /// Steps before the agent is asked for an answer from what it has
    #[arg(long, default_value_t = small_agent::agent::DEFAULT_MAX_STEPS, value_name = "N")]
    pub max_steps: usize,
    /// Candidates per step (self-consistent action generation; 1 = plain decoding)
    /// [default: 8 for `ask`, 1 for `eval`]
    #[arg(long, value_name = "N")]
    pub sag: Option<usize>,
    /// Constrain replies to the Thought/Code format with the step grammar (the default)
    #[arg(long, overrides_with = "no_grammar")]
    pub grammar: bool,
    /// Let the model write freely (no step grammar)
    #[arg(long, overrides_with = "grammar")]
    pub no_grammar: bool,
    /// Sampling temperature of the replies [default: greedy; 0.4 with --sag above 1]
    #[arg(long, value_name = "T")]
    pub temperature: Option<f32>,
    /// Random seed of the sampling (candidate i uses seed + i)
    #[arg(long, default_value_t = engine::DEFAULT_SEED, value_name = "S")]
    pub seed: u32,
    /// Times a step whose code repeats an earlier step's is generated again, sampling at
    /// temperature 0.7, before the repeat runs (0: repeats run as they are)
    #[arg(long, default_value_t = small_agent::agent::DEFAULT_REPEAT_RETRIES, value_name = "N")]
    pub repeat_retries: usize,
    /// Agent prompt template (TOML, see models/prompts/agent-default.toml) [default: the
    /// student's own prompt (models/prompts/student.toml) when a distilled student runs,
    /// else agent-default.toml]
    #[arg(long, value_name = "FILE")]
    pub prompt: Option<PathBuf>,
    /// Run a built-in distilled student: its LoRA adapter on the default model, with the
    /// prompt it was trained with (models/students/NAME.toml; e.g. agent-smollm2-135m)
    #[arg(long, value_name = "NAME", conflicts_with_all = ["adapter", "model", "base"])]
    pub student: Option<String>,
    /// Run the undistilled base model with the default prompt, even where a distilled
    /// student is marked as the default
    #[arg(long, conflicts_with = "adapter")]
    pub base: bool,
}

impl AgentArgs {
    /// The prompt template: `--prompt FILE`, else the student's, else the built-in one;
    /// with its text and where it came from (for records).
    pub fn template(
        &self,
        student: Option<&InstalledStudent>,
    ) -> Result<(small_agent::agent::PromptTemplate, String, String)> {
        Ok(match (&self.prompt, student) {
            (Some(p), _) => (
                small_agent::agent::PromptTemplate::from_file(p)?,
                read_file_arg(p, "prompt template")?,
                p.display().to_string(),
            ),
            (None, Some(s)) => (
                s.template.clone(),
                s.prompt_text.clone(),
                s.prompt_name.clone(),
            ),
            (None, None) => (
                small_agent::agent::PromptTemplate::builtin(),
                small_agent::agent::prompt::DEFAULT_TEMPLATE.to_owned(),
                "models/prompts/agent-default.toml".to_owned(),
            ),
        })
    }

    /// Candidates per step, with the command's own default.
    pub fn sag_or(&self, default: usize) -> usize {
        self.sag.unwrap_or(default)
    }

    /// The step grammar, unless `--no-grammar`.
    pub fn step_grammar(&self) -> Option<String> {
        (!self.no_grammar).then(|| small_agent::agent::STEP_GRAMMAR.to_owned())
    }
}

#[derive(Debug, Clone, Args)]
pub struct ShardArgs {
    /// Knowledge shard directory [default: the default shard built by scripts/setup.sh]
    #[arg(long, env = "SMALL_AGENT_INDEX", value_name = "DIR")]
    pub index: Option<PathBuf>,
}

pub use small_agent::assets::DEFAULT_SHARD_ASSET;

/// Where the default shard lives.
pub fn default_shard_dir() -> Result<PathBuf> {
    Ok(small_agent::assets::default_shard_dir()?)
}

/// Loads an interpreter back-end from the verified assets.
pub fn python_backend(
    flavour: small_agent_sandbox::Flavour,
) -> Result<std::sync::Arc<dyn small_agent_sandbox::PythonBackend>> {
    Ok(small_agent::assets::python_backend(flavour)?)
}

impl ShardArgs {
    /// The shard's directory: `--index`, else the built default shard.
    pub fn dir(&self) -> Result<PathBuf> {
        Ok(match &self.index {
            Some(d) => d.clone(),
            None => small_agent::assets::built_default_shard_dir()?,
        })
    }

    /// Opens the shard (errors name the path and the fix).
    pub fn open(&self) -> Result<small_agent_index::Shard> {
        Ok(small_agent_index::Shard::open(&self.dir()?)?)
    }
}

impl SandboxArgs {
    /// The interpreter flavour.
    pub fn flavour(&self) -> Result<small_agent_sandbox::Flavour> {
        Ok(self.python.parse()?)
    }
}

/// Python sandbox settings.
#[derive(Debug, Clone, Args)]
pub struct SandboxArgs {
    /// Interpreter: `full` (CPython 3.15 with numpy, sympy) or `lite` (CPython 3.12, small)
    #[arg(
        long,
        default_value = "full",
        env = "SMALL_AGENT_PYTHON",
        value_name = "FLAVOUR"
    )]
    pub python: String,
    /// Wall-clock limit of one code execution, in seconds (with SAG, once a step's code has
    /// used it up, each further candidate gets the limit divided by the candidates)
    #[arg(long, default_value_t = small_agent_sandbox::DEFAULT_TIMEOUT.as_secs_f64(), value_name = "S")]
    pub timeout: f64,
    /// Memory cap of the interpreter, in MiB
    #[arg(long, default_value_t = (small_agent_sandbox::DEFAULT_MEMORY_BYTES >> 20) as u64, value_name = "MB")]
    pub memory: u64,
}

impl SandboxArgs {
    /// Limits from the flags.
    pub fn limits(&self) -> small_agent_sandbox::Limits {
        small_agent_sandbox::Limits {
            timeout: std::time::Duration::from_secs_f64(self.timeout.max(0.001)),
            memory_bytes: (self.memory as usize) << 20,
            ..small_agent_sandbox::Limits::default()
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
