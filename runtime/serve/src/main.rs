//! `small-agent-serve` (also reached as `small-agent serve`): the desktop assistant's server.
//! Exit codes as the runtime's CLI: 0 after a clean shutdown, 2 for usage and environment
//! errors (bad flags, a refused setting, a busy port, missing assets), 1 otherwise.
use std::{net::IpAddr, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context, Result};
use clap::Parser;
use small_agent::embed::{RuntimeConfig, ShardChoice};
use small_agent_serve::{config, RunDefaults, ServeConfig, ServeError, Server};

const EXIT_TASK_FAILED: u8 = 1;
const EXIT_USAGE: u8 = 2;

/// The desktop assistant: a web page that shows the agent think, run code and cite its
/// sources, an agent API with Server-Sent Events, and an OpenAI-compatible chat API. Open
/// http://127.0.0.1:8077/ once it says it is listening.
#[derive(Debug, Parser)]
#[command(name = "small-agent serve", version, long_about = None)]
struct Args {
    /// Address to listen on; anything but loopback needs --api-key-file
    #[arg(long, default_value = "127.0.0.1", value_name = "IP")]
    host: IpAddr,
    /// Port to listen on (0: any free port)
    #[arg(long, default_value_t = config::DEFAULT_PORT, value_name = "PORT")]
    port: u16,
    /// Agent sessions (requests answered at once) [default: what the cores and memory allow,
    /// said at start-up]
    #[arg(long, value_name = "N")]
    sessions: Option<usize>,
    /// Requests that may wait for a session; beyond, 503 with Retry-After
    #[arg(long, default_value_t = 8, value_name = "N")]
    queue: usize,
    /// File holding the API key (first line); every API request then needs
    /// `Authorization: Bearer KEY`
    #[arg(long, value_name = "FILE")]
    api_key_file: Option<PathBuf>,
    /// Origin allowed to call the API from another page (repeatable), e.g.
    /// http://localhost:3000
    #[arg(long = "cors-origin", value_name = "ORIGIN")]
    cors_origins: Vec<String>,
    /// Largest request body in bytes (413 beyond)
    #[arg(long, default_value_t = config::DEFAULT_MAX_BODY_BYTES, value_name = "BYTES")]
    max_body_bytes: usize,
    /// Longest question in characters (400 beyond)
    #[arg(long, default_value_t = config::DEFAULT_MAX_QUESTION_CHARS, value_name = "N")]
    max_question_chars: usize,
    /// Most choices (`n`) of a chat completion, decoded side by side
    #[arg(long, default_value_t = config::DEFAULT_MAX_CHOICES, value_name = "N")]
    max_choices: usize,
    /// SAG candidates per step when a request sets none (1 = plain greedy decoding)
    #[arg(long, default_value_t = 1, value_name = "N")]
    sag: usize,
    /// Most SAG candidates a request may ask for (each session's context holds that many)
    #[arg(long, default_value_t = 8, value_name = "N")]
    max_sag: usize,
    /// Steps before the agent is asked for an answer, when a request sets none
    #[arg(long, default_value_t = small_agent::agent::DEFAULT_MAX_STEPS, value_name = "N")]
    max_steps: usize,
    /// Let the model write freely by default (no step grammar)
    #[arg(long)]
    no_grammar: bool,
    /// The agent's prompt template (TOML, as `small-agent ask --prompt`) [default: the
    /// student's own prompt when a student runs, else the built-in
    /// models/prompts/agent-default.toml]
    #[arg(long, value_name = "FILE")]
    prompt: Option<PathBuf>,
    /// Run a built-in distilled student: its LoRA adapter on the default model, with the
    /// prompt it was trained with (as `small-agent ask --student`)
    #[arg(long, value_name = "NAME", conflicts_with_all = ["adapter", "model", "base"])]
    student: Option<String>,
    /// Run the undistilled base model with the default prompt, even where a distilled
    /// student is marked as the default
    #[arg(long, conflicts_with = "adapter")]
    base: bool,
    /// GGUF model file [default: the fetched default model]
    #[arg(long, short = 'm', env = "SMALL_AGENT_MODEL", value_name = "PATH")]
    model: Option<PathBuf>,
    /// A LoRA adapter GGUF of the model applied on top of it (as `small-agent ask --adapter`)
    #[arg(long, env = "SMALL_AGENT_ADAPTER", value_name = "FILE")]
    adapter: Option<PathBuf>,
    /// Knowledge shard directory [default: the default shard built by scripts/setup.sh]
    #[arg(
        long,
        env = "SMALL_AGENT_INDEX",
        value_name = "DIR",
        conflicts_with = "no_index"
    )]
    index: Option<PathBuf>,
    /// No shard: the agent gets no web_search tool
    #[arg(long)]
    no_index: bool,
    /// Interpreter: `full` (CPython 3.15 with numpy, sympy) or `lite` (CPython 3.12, small)
    #[arg(
        long,
        default_value = "full",
        env = "SMALL_AGENT_PYTHON",
        value_name = "FLAVOUR"
    )]
    python: String,
    /// Wall-clock limit of one code execution, in seconds
    #[arg(long, default_value_t = small_agent_sandbox::DEFAULT_TIMEOUT.as_secs_f64(), value_name = "S")]
    timeout: f64,
    /// Memory cap of the interpreter, in MiB
    #[arg(long, default_value_t = (small_agent_sandbox::DEFAULT_MEMORY_BYTES >> 20) as u64, value_name = "MB")]
    memory: u64,
    /// CPU threads of each session [default: the cores shared out over the sessions]
    #[arg(long, short = 't', value_name = "N")]
    threads: Option<i32>,
    /// Context size in tokens of each session
    #[arg(long, default_value_t = small_agent::engine::DEFAULT_CTX_SIZE, value_name = "N")]
    ctx_size: u32,
    /// Seconds open responses get to end after Ctrl-C / SIGTERM (their runs are cancelled)
    #[arg(long, default_value_t = 5.0, value_name = "S")]
    shutdown_grace: f64,
}

fn main() -> ExitCode {
    init_logging();
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(exit_code_of(&e))
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(
            "warn,small_agent_serve=info,llama_cpp_2=error,llama-cpp-2=error",
        )
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn exit_code_of(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if let Some(s) = cause.downcast_ref::<ServeError>() {
            return match s {
                ServeError::Config(_) | ServeError::Bind { .. } => EXIT_USAGE,
                ServeError::Runtime(r) => runtime_code(r),
                ServeError::Io(_) => EXIT_TASK_FAILED,
            };
        }
        if cause.downcast_ref::<UsageError>().is_some() {
            return EXIT_USAGE;
        }
    }
    EXIT_TASK_FAILED
}

fn runtime_code(e: &small_agent::embed::RuntimeError) -> u8 {
    use small_agent::embed::RuntimeError as R;
    match e {
        R::InvalidConfig(_) | R::Asset(_) | R::Index(_) => EXIT_USAGE,
        R::Engine(small_agent::EngineError::Llama(_)) => EXIT_TASK_FAILED,
        R::Engine(_) => EXIT_USAGE,
        R::Agent(small_agent::agent::AgentError::Sandbox(_)) => EXIT_USAGE,
        _ => EXIT_TASK_FAILED,
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct UsageError(String);

fn read_key(path: &std::path::Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| UsageError(format!("--api-key-file {}: {e}", path.display())))?;
    let key = text.lines().next().unwrap_or("").trim().to_owned();
    if key.is_empty() {
        return Err(UsageError(format!(
            "--api-key-file {}: the file is empty",
            path.display()
        ))
        .into());
    }
    Ok(key)
}

fn run(a: Args) -> Result<()> {
    let python = a
        .python
        .parse()
        .map_err(|e| UsageError(format!("--python {}: {e}", a.python)))?;
    if a.timeout.is_nan() || a.timeout <= 0.0 {
        return Err(UsageError("--timeout must be positive".into()).into());
    }
    let api_key = a.api_key_file.as_deref().map(read_key).transpose()?;
    // --student, else the default student unless --base, --model or --adapter chose otherwise.
    let student = small_agent::assets::chosen_student(
        a.student.as_deref(),
        a.base || a.model.is_some() || a.adapter.is_some(),
    )
    .map_err(|e| UsageError(format!("the student: {e}")))?;
    let (template, template_name) = match (&a.prompt, &student) {
        (Some(p), _) => (
            small_agent::agent::PromptTemplate::from_file(p)
                .map_err(|e| UsageError(format!("--prompt: {e}")))?,
            p.display().to_string(),
        ),
        (None, Some(s)) => (s.template.clone(), s.prompt_name.clone()),
        (None, None) => {
            let d = RunDefaults::default();
            (d.template, d.template_name)
        }
    };
    let adapter = a
        .adapter
        .or_else(|| student.as_ref().map(|s| s.adapter.clone()));
    let config = ServeConfig {
        host: a.host,
        port: a.port,
        sessions: a.sessions.unwrap_or(0),
        queue: a.queue,
        api_key,
        cors_origins: a.cors_origins,
        max_body_bytes: a.max_body_bytes,
        max_question_chars: a.max_question_chars,
        max_choices: a.max_choices,
        run: RunDefaults {
            sag: a.sag,
            max_sag: a.max_sag,
            max_steps: a.max_steps,
            grammar: !a.no_grammar,
            template,
            template_name,
            ..RunDefaults::default()
        },
        runtime: RuntimeConfig {
            model: a.model,
            adapter,
            shard: if a.no_index {
                ShardChoice::None
            } else {
                a.index.map_or(ShardChoice::Default, ShardChoice::Path)
            },
            threads: a.threads.unwrap_or(0),
            context_size: a.ctx_size,
            python,
            limits: small_agent_sandbox::Limits {
                timeout: Duration::from_secs_f64(a.timeout),
                memory_bytes: (a.memory as usize) << 20,
                ..small_agent_sandbox::Limits::default()
            },
        },
    };
    if a.sessions == Some(0) {
        return Err(UsageError("--sessions must be at least 1".into()).into());
    }
    let grace = Duration::from_secs_f64(a.shutdown_grace.max(0.0));
    let server = Server::start(config)?;
    let addr = server.addr();
    eprintln!(
        "small-agent serve: {} sessions; listening on http://{addr}/ (Ctrl-C stops)",
        server.sessions()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(server.run(shutdown_signal(), grace))?;
    eprintln!("small-agent serve: stopped");
    Ok(())
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
