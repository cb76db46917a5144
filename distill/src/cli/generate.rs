//! `small-agent-distill generate`: the teacher agent on training questions.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use small_agent::agent::{PromptTemplate, SearchFn, DEFAULT_MAX_STEPS};
use small_agent::chat::RemoteConfig;
use small_agent::engine::{default_threads, Model, SessionParams};
use small_agent::evaluate::shard_search;
use small_agent_distill::generate::{
    check_training_questions, generate, GenerateOptions, GenerateProgress, Teacher,
};
use small_agent_eval::dataset;
use small_agent_index::{Format, Passage, Shard};

use super::{install_interrupt_handler, interrupted, progress_bar, UsageError, EXIT_INTERRUPTED};

/// Arguments of `generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Training questions: a file, or a known name of the shared data (e.g. hotpotqa-train,
    /// math-train, hipporag-hotpotqa). Evaluation sets are refused
    #[arg(long, value_name = "FILE|NAME")]
    pub questions: String,
    /// Only the first N questions
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// The teacher: a local GGUF model
    #[arg(
        long,
        value_name = "MODEL.gguf",
        conflicts_with = "teacher_url",
        required_unless_present = "teacher_url"
    )]
    pub teacher: Option<PathBuf>,
    /// The teacher: an OpenAI-compatible server (llama-server, vLLM, Ollama), e.g.
    /// http://127.0.0.1:8080
    #[arg(long, value_name = "URL")]
    pub teacher_url: Option<String>,
    /// The model to ask the server for [default: the first one it lists]
    #[arg(long, value_name = "NAME", requires = "teacher_url")]
    pub teacher_name: Option<String>,
    /// Environment variable holding the server's API key (sent as a bearer token)
    #[arg(long, value_name = "VAR", requires = "teacher_url")]
    pub api_key_env: Option<String>,
    /// First-thought prefix: ask the teacher for a plain chain of thought first and force its
    /// first paragraph as the start of the agent's first step
    #[arg(long)]
    pub prefix: bool,
    /// Questions answered at once (each worker has its own model session or connection)
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub workers: usize,
    /// Knowledge shard for web_search [default: the default shard built by scripts/setup.sh]
    #[arg(long, value_name = "DIR", conflicts_with = "corpus")]
    pub index: Option<PathBuf>,
    /// Build a temporary shard for web_search from a corpus file, or from the questions' own
    /// paragraphs with `own` (HotpotQA distractor layout, HippoRAG samples)
    #[arg(long, value_name = "FILE|own")]
    pub corpus: Option<String>,
    /// The output JSONL file: appended to; questions already in it are skipped (resume)
    #[arg(long, value_name = "FILE.jsonl")]
    pub out: PathBuf,
    /// Step budget of the teacher agent
    #[arg(long, default_value_t = DEFAULT_MAX_STEPS, value_name = "N")]
    pub max_steps: usize,
    /// The teacher's prompt template [default: models/prompts/teacher-agent.toml, built in]
    #[arg(long, value_name = "FILE")]
    pub prompt: Option<PathBuf>,
    /// Interpreter: `full` (CPython 3.15 with numpy, sympy) or `lite`
    #[arg(long, default_value = "full", value_name = "FLAVOUR")]
    pub python: String,
    /// Context size of each local session, in tokens (the teacher's prompt is long, and five
    /// steps of search results follow it)
    #[arg(long, default_value_t = small_agent_distill::generate::DEFAULT_TEACHER_CTX, value_name = "N")]
    pub ctx_size: u32,
    /// CPU threads of each local session [default: the cores divided among the workers]
    #[arg(long, short = 't', value_name = "N")]
    pub threads: Option<i32>,
    /// Print the report as one JSON object on stdout
    #[arg(long)]
    pub json: bool,
}

/// Runs `generate`.
pub fn run(a: GenerateArgs) -> Result<ExitCode> {
    if a.workers == 0 {
        return Err(UsageError("--workers must be at least 1".into()).into());
    }
    let data_dir = dataset::data_dir();
    let (path, known) = dataset::resolve(&a.questions, &data_dir)?;
    check_training_questions(&path, known, &data_dir)?;
    let mut set = dataset::load_spec(&a.questions, &data_dir)?;
    set.items.retain(|it| !it.answers.is_empty());
    if let Some(n) = a.limit {
        set.items.truncate(n);
    }
    if set.items.is_empty() {
        return Err(UsageError(format!(
            "{}: no questions with a gold answer",
            path.display()
        ))
        .into());
    }
    let template = match &a.prompt {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("reading --prompt {}", p.display()))?;
            PromptTemplate::parse(&p.display().to_string(), &text)?
        }
        None => small_agent_distill::generate::teacher_template(),
    };
    let flavour: small_agent_sandbox::Flavour = a.python.parse()?;
    let python = small_agent::assets::python_backend(flavour)?;

    // The shard: kept alive in `_tmp` for the whole run when it is temporary.
    let _tmp = tempfile::tempdir().context("creating a temporary directory for the shard")?;
    let shard = match a.corpus.as_deref() {
        Some("own") => {
            let paragraphs = dataset::own_paragraphs(&set.items);
            if paragraphs.is_empty() {
                return Err(UsageError(format!(
                    "--corpus own: {} has no paragraphs of its own; use --index or --corpus FILE",
                    set.name
                ))
                .into());
            }
            let passages = paragraphs.into_iter().enumerate().map(|(j, p)| Passage {
                id: j.to_string(),
                title: p.title,
                text: p.text,
            });
            let out = _tmp.path().join("own");
            let source = format!("own paragraphs of {}", path.display());
            small_agent_index::build_shard_from_iter(passages, &source, &out, &Default::default())?;
            Shard::open(&out)?
        }
        Some(file) => {
            let corpus = PathBuf::from(file);
            if !corpus.is_file() {
                return Err(UsageError(format!("--corpus {file}: no such file")).into());
            }
            let out = _tmp.path().join("corpus");
            small_agent_index::build_shard(
                &corpus,
                Format::detect(&corpus)?,
                &out,
                &Default::default(),
            )?;
            Shard::open(&out)?
        }
        None => {
            let dir = match &a.index {
                Some(d) => d.clone(),
                None => small_agent::assets::built_default_shard_dir()?,
            };
            Shard::open(&dir)?
        }
    };
    let search: SearchFn = shard_search(Arc::new(shard));

    let model;
    let teacher = match &a.teacher_url {
        Some(url) => {
            let mut cfg = RemoteConfig::new(url.clone());
            cfg.model = a.teacher_name.clone();
            if let Some(var) = &a.api_key_env {
                cfg.api_key = Some(std::env::var(var).map_err(|_| {
                    UsageError(format!(
                        "--api-key-env {var}: the environment variable {var} is not set"
                    ))
                })?);
            }
            Teacher::Remote(cfg)
        }
        None => {
            let p = a
                .teacher
                .clone()
                .expect("clap requires --teacher or --teacher-url");
            model = Model::load(&p)?;
            let threads = a
                .threads
                .unwrap_or_else(|| (default_threads() / a.workers as i32).max(1));
            Teacher::Local {
                model: &model,
                session: SessionParams {
                    n_ctx: a.ctx_size,
                    n_threads: threads,
                    n_threads_batch: threads,
                    ..SessionParams::default()
                },
            }
        }
    };

    let mut opts = GenerateOptions::new(set.name.clone(), set.items, a.out.clone(), python);
    opts.workers = a.workers;
    opts.prefix = a.prefix;
    opts.max_steps = a.max_steps;
    opts.template = template;
    opts.search = Some(search);

    install_interrupt_handler();
    let cancel = opts.cancel.clone();
    let watcher_done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let done = watcher_done.clone();
        std::thread::spawn(move || {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                if interrupted() {
                    cancel.raise();
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let bar = progress_bar(opts.items.len() as u64, a.json);
    bar.set_message("starting");
    let on_progress = |p: GenerateProgress| {
        bar.set_length(p.to_run as u64);
        bar.set_position(p.done as u64);
        bar.set_message(format!(
            "correct {:.0}% ({}/{}), failed {}",
            100.0 * p.correct as f64 / p.done.max(1) as f64,
            p.correct,
            p.done,
            p.failed
        ));
    };
    let report = generate(&opts, &teacher, &on_progress);
    watcher_done.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = watcher.join();
    bar.finish_and_clear();
    let report = report?;
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        eprintln!(
            "{}: {} done ({} correct, {} failed), {} already in {}, {:.1} questions/min with {} worker(s)",
            report.teacher,
            report.done,
            report.correct,
            report.failed,
            report.skipped_existing,
            a.out.display(),
            report.questions_per_min,
            report.workers
        );
    }
    if report.cancelled {
        eprintln!("stopped: run the same command again to resume");
        return Ok(ExitCode::from(EXIT_INTERRUPTED));
    }
    Ok(ExitCode::SUCCESS)
}
