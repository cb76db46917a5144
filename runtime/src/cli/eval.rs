//! `small-agent eval`: runs a mode (agent, CoT, CoT-RAG) over question files, scores the
//! answers offline, and keeps a resumable run directory; `small-agent eval report DIR…`
//! puts several runs side by side.
use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::{Arc, RwLock},
    time::Instant,
};

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use small_agent::{
    agent::{agent_toolbox, Agent, AgentConfig, SearchFn},
    evaluate::{self, AgentAnswerer, Answerer, CotAnswerer, Judge, Mode},
    Model, SamplingParams,
};
use small_agent_eval::{
    dataset::{self, Dataset, Kind},
    prompts::{read_prompt_file, CotPrompts, JudgePrompt, COT_TEMPLATE, JUDGE_TEMPLATE},
    results::{self, RunDir},
    symbolic::DEFAULT_SYMBOLIC_TIMEOUT,
    SandboxSympy, SymbolicChecker,
};
use small_agent_index::{Format, Shard};
use small_agent_sandbox::Flavour;

use super::{AgentArgs, ContextArgs, ModelArgs, SandboxArgs, ShardArgs, UsageError};

/// Candidates per step in agent mode unless `--sag` says otherwise (the cheapest setting).
pub const EVAL_DEFAULT_SAG: usize = 1;

/// Exit code of a run stopped by Ctrl-C (128 + SIGINT).
pub const EXIT_INTERRUPTED: u8 = 130;

/// Arguments of `eval`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct EvalArgs {
    #[command(subcommand)]
    pub command: Option<EvalCommand>,
    #[command(flatten)]
    pub run: EvalRunArgs,
}

/// Subcommands of `eval`.
#[derive(Debug, Subcommand)]
pub enum EvalCommand {
    /// Print several runs side by side (a row per run, a column per dataset, as in the paper's table)
    Report(ReportArgs),
}

/// Arguments of `eval report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Run directories (each with a results.json)
    #[arg(required = true, value_name = "DIR")]
    pub dirs: Vec<PathBuf>,
    /// Print the runs' results as a JSON list instead of tables
    #[arg(long)]
    pub json: bool,
}

/// The answering system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// The code agent: steps of Thought/Code, Python in the sandbox, web_search over the shard
    Agent,
    /// One chain-of-thought reply, answer in <answer> tags (factual) or \boxed{} (math)
    Cot,
    /// Chain-of-thought with the top 3 passages of the shard for the question in the prompt
    CotRag,
}

impl From<ModeArg> for Mode {
    fn from(m: ModeArg) -> Mode {
        match m {
            ModeArg::Agent => Mode::Agent,
            ModeArg::Cot => Mode::Cot,
            ModeArg::CotRag => Mode::CotRag,
        }
    }
}

/// Arguments of an evaluation run.
#[derive(Debug, Args)]
pub struct EvalRunArgs {
    /// Question file or dataset name (hotpotqa, musique, 2wikimultihopqa, bamboogle, math500,
    /// gsm-hard, aime, olymmath, hotpotqa-train, math-train, math-medium-train,
    /// hotpotqa-distractor, hotpotqa-distractor-amor, hipporag-hotpotqa, hipporag-musique);
    /// repeat for several
    #[arg(long, short = 'd', required = true, value_name = "FILE|NAME")]
    pub dataset: Vec<String>,
    /// Directory of the shared data that dataset names resolve against [default: ../shared/data
    /// found from the current directory]
    #[arg(long, env = "SMALL_AGENT_DATA", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Score every question as this kind (for generic files without a `kind` field)
    #[arg(long, value_name = "factual|math")]
    pub kind: Option<String>,
    /// Build a temporary shard to search from a corpus FILE (any `index build` format), or
    /// from the questions' own paragraphs with `own` (HotpotQA distractor, HippoRAG samples)
    #[arg(long, value_name = "FILE|own", conflicts_with = "index")]
    pub corpus: Option<String>,
    /// First N questions of each dataset
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Answering system
    #[arg(long, value_enum, default_value_t = ModeArg::Agent)]
    pub mode: ModeArg,
    /// Agent mode's settings (CoT modes use --temperature and --seed)
    #[command(flatten)]
    pub agent: AgentArgs,
    /// CoT / CoT-RAG: prompts (TOML, see models/prompts/eval-cot.toml)
    #[arg(long, value_name = "FILE")]
    pub cot_prompt: Option<PathBuf>,
    /// CoT / CoT-RAG: token cap of the reply
    #[arg(long, default_value_t = evaluate::DEFAULT_COT_TOKENS, value_name = "N")]
    pub max_tokens: u32,
    /// Also ask a local judge model whether each factual answer matches the gold answer; its
    /// verdict then decides factual accuracy, and its agreement with EM is reported
    #[arg(long, value_name = "MODEL.gguf")]
    pub judge: Option<PathBuf>,
    /// Judge prompt (TOML, see models/prompts/eval-judge.toml)
    #[arg(long, value_name = "FILE")]
    pub judge_prompt: Option<PathBuf>,
    /// Skip the symbolic (sympy) check of math answers; numeric and structural checks remain
    #[arg(long)]
    pub no_symbolic: bool,
    /// Wall-clock limit of one symbolic check, in seconds
    #[arg(long, default_value_t = DEFAULT_SYMBOLIC_TIMEOUT.as_secs_f64(), value_name = "S")]
    pub symbolic_timeout: f64,
    /// Output directory [default: eval-results/<datasets>-<mode>]
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Continue the run in --out: finished questions are kept, the rest are run
    #[arg(long)]
    pub resume: bool,
    /// Print results.json on standard output at the end (instead of the table)
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub context: ContextArgs,
    #[command(flatten)]
    pub shard: ShardArgs,
    #[command(flatten)]
    pub sandbox: SandboxArgs,
}

pub fn run(a: EvalArgs) -> Result<ExitCode> {
    match a.command {
        Some(EvalCommand::Report(r)) => report(r),
        None => run_eval(a.run),
    }
}

fn report(a: ReportArgs) -> Result<ExitCode> {
    let mut runs = Vec::new();
    for d in &a.dirs {
        let r = results::read_results(d).map_err(|e| UsageError(e.to_string()))?;
        runs.push((results::run_label(d, &r), r, d.clone()));
    }
    if a.json {
        let v: Vec<Value> = runs
            .iter()
            .map(|(label, r, d)| json!({"dir": d, "label": label, "results": r}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        let table: Vec<(String, results::ResultsFile)> =
            runs.into_iter().map(|(l, r, _)| (l, r)).collect();
        print!("{}", results::side_by_side(&table));
    }
    Ok(ExitCode::SUCCESS)
}

// --- Ctrl-C: the first one stops after the current model call (the question in flight is
// not recorded), the second one ends the process at once. Either way the run directory is
// consistent, because every write is one appended line or a rename.
static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[cfg(unix)]
extern "C" fn on_sigint(_: libc::c_int) {
    if INTERRUPTED.swap(true, std::sync::atomic::Ordering::SeqCst) {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(EXIT_INTERRUPTED as libc::c_int) };
    }
}

fn install_interrupt_handler() {
    #[cfg(unix)]
    // SAFETY: the handler only touches an atomic and calls _exit.
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_sigint as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
    }
}

fn interrupted() -> bool {
    INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst)
}

/// Where the questions' searches go: one shard for the whole run, or one per dataset.
enum ShardPlan {
    None,
    Shared(Arc<Shard>, Value),
    PerDataset(Vec<(Arc<Shard>, Value)>),
}

fn shard_info(shard: &Shard, origin: &str, path: Option<&Path>) -> Value {
    let m = shard.meta();
    json!({
        "origin": origin,
        "path": path,
        "source": m.source,
        "format": m.format,
        "documents": m.documents,
        "passages": m.passages,
        "schema_version": m.schema_version,
        "builder_version": m.builder_version,
    })
}

fn build_temp_shard(
    tmp: &Path,
    name: &str,
    build: impl FnOnce(&Path) -> small_agent_index::Result<small_agent_index::BuildReport>,
) -> Result<Shard> {
    let out = tmp.join(name);
    let t = Instant::now();
    build(&out)?;
    let shard = Shard::open(&out)?;
    tracing::info!(
        shard = name,
        passages = shard.len(),
        ms = t.elapsed().as_millis() as u64,
        "temporary shard built"
    );
    Ok(shard)
}

impl EvalRunArgs {
    /// Candidates per step of agent mode.
    fn sag(&self) -> usize {
        self.agent.sag_or(EVAL_DEFAULT_SAG)
    }
}

fn label(a: &EvalRunArgs, mode: Mode) -> String {
    match mode {
        Mode::Cot => "CoT".into(),
        Mode::CotRag => "CoT-RAG".into(),
        Mode::Agent => format!(
            "agent ({}, {})",
            if a.agent.no_grammar {
                "no grammar"
            } else {
                "grammar"
            },
            if a.sag() > 1 {
                format!("SAG N={}", a.sag())
            } else {
                "N=1".into()
            }
        ),
    }
}

fn run_eval(a: EvalRunArgs) -> Result<ExitCode> {
    let mode: Mode = a.mode.into();
    let data_dir = a.data_dir.clone().unwrap_or_else(dataset::data_dir);
    let kind_override: Option<Kind> = match &a.kind {
        Some(k) => Some(k.parse().map_err(UsageError)?),
        None => None,
    };
    let mut datasets: Vec<Dataset> = Vec::new();
    for spec in &a.dataset {
        let mut d = dataset::load_spec(spec, &data_dir).map_err(|e| UsageError(e.to_string()))?;
        if d.skipped_without_answer > 0 {
            tracing::warn!(
                dataset = %d.name,
                skipped = d.skipped_without_answer,
                "items without a gold answer are left out"
            );
        }
        if let Some(k) = kind_override {
            for it in &mut d.items {
                it.kind = k;
            }
        }
        if datasets.iter().any(|x| x.name == d.name) {
            return Err(UsageError(format!("dataset {} given twice", d.name)).into());
        }
        datasets.push(d);
    }
    if a.sag() == 0 {
        return Err(UsageError("--sag must be at least 1".into()).into());
    }
    let flavour = a.sandbox.flavour()?;

    // Shards.
    let tmp = tempfile::tempdir().context("creating a temporary directory for the shard")?;
    let plan = if mode == Mode::Cot {
        ShardPlan::None
    } else {
        match a.corpus.as_deref() {
            Some("own") => {
                let mut v = Vec::new();
                for (i, d) in datasets.iter().enumerate() {
                    let paragraphs = dataset::own_paragraphs(&d.items);
                    if paragraphs.is_empty() {
                        return Err(UsageError(format!(
                            "--corpus own: dataset {} has no paragraphs of its own",
                            d.name
                        ))
                        .into());
                    }
                    let passages = paragraphs.into_iter().enumerate().map(|(j, p)| {
                        small_agent_index::Passage {
                            id: format!("{j}"),
                            title: p.title,
                            text: p.text,
                        }
                    });
                    let source = format!("own paragraphs of {}", d.path.display());
                    let shard = build_temp_shard(tmp.path(), &format!("own-{i}"), |out| {
                        small_agent_index::build_shard_from_iter(
                            passages,
                            &source,
                            out,
                            &Default::default(),
                        )
                    })?;
                    let info = shard_info(&shard, "own paragraphs", None);
                    v.push((Arc::new(shard), info));
                }
                ShardPlan::PerDataset(v)
            }
            Some(file) => {
                let path = PathBuf::from(file);
                if !path.is_file() {
                    return Err(UsageError(format!("--corpus {file}: no such file")).into());
                }
                let format = Format::detect(&path)?;
                let shard = build_temp_shard(tmp.path(), "corpus", |out| {
                    small_agent_index::build_shard(&path, format, out, &Default::default())
                })?;
                let info = shard_info(&shard, "corpus file", Some(&path));
                ShardPlan::Shared(Arc::new(shard), info)
            }
            None => {
                let dir = a.shard.dir()?;
                let shard = Shard::open(&dir)?;
                let info = shard_info(&shard, "index", Some(&dir));
                ShardPlan::Shared(Arc::new(shard), info)
            }
        }
    };
    let shard_record = match &plan {
        ShardPlan::None => Value::Null,
        ShardPlan::Shared(_, info) => info.clone(),
        ShardPlan::PerDataset(v) => Value::Object(
            datasets
                .iter()
                .zip(v)
                .map(|(d, (_, info))| (d.name.clone(), info.clone()))
                .collect(),
        ),
    };
    let current: Arc<RwLock<Option<Arc<Shard>>>> = Arc::new(RwLock::new(match &plan {
        ShardPlan::Shared(s, _) => Some(s.clone()),
        _ => None,
    }));
    let search: SearchFn = {
        let current = current.clone();
        Arc::new(move |q: &str| {
            let shard = current
                .read()
                .map_err(|_| "shard lock poisoned".to_string())?
                .clone()
                .ok_or_else(|| "no shard".to_string())?;
            small_agent_index::agent_search(&*shard, q).map_err(|e| e.to_string())
        })
    };

    // Prompts and sampling.
    let student = a.model.student(&a.agent)?;
    let (agent_template, agent_template_text, agent_template_name) =
        a.agent.template(student.as_ref())?;
    let (cot_prompts, cot_text, cot_name) = match &a.cot_prompt {
        Some(p) => {
            let t = read_prompt_file(p).map_err(|e| UsageError(e.to_string()))?;
            (
                CotPrompts::parse(&p.display().to_string(), &t)
                    .map_err(|e| UsageError(e.to_string()))?,
                t,
                p.display().to_string(),
            )
        }
        None => (
            CotPrompts::builtin(),
            COT_TEMPLATE.to_owned(),
            "models/prompts/eval-cot.toml".to_owned(),
        ),
    };
    let (judge_prompt, judge_text, judge_name) = match &a.judge_prompt {
        Some(p) => {
            let t = read_prompt_file(p).map_err(|e| UsageError(e.to_string()))?;
            (
                JudgePrompt::parse(&p.display().to_string(), &t)
                    .map_err(|e| UsageError(e.to_string()))?,
                t,
                p.display().to_string(),
            )
        }
        None => (
            JudgePrompt::builtin(),
            JUDGE_TEMPLATE.to_owned(),
            "models/prompts/eval-judge.toml".to_owned(),
        ),
    };
    let mut agent_config = AgentConfig {
        max_steps: a.agent.max_steps.max(1),
        grammar: (!a.agent.no_grammar).then(|| small_agent::agent::STEP_GRAMMAR.to_owned()),
        limits: a.sandbox.limits(),
        template: agent_template,
        repeat_retries: a.agent.repeat_retries,
        ..AgentConfig::default()
    }
    .with_sag(a.sag());
    let mut sampling = match mode {
        Mode::Agent => agent_config.sampling.clone(),
        _ => SamplingParams::greedy(),
    };
    if let Some(t) = a.agent.temperature {
        sampling.temperature = t;
    }
    sampling.seed = a.agent.seed;
    agent_config.sampling = sampling.clone();

    let model_path = a.model.path()?;
    let model_sha = small_agent_eval::sha256_file(&model_path)
        .map_err(|e| UsageError(format!("cannot read model {}: {e}", model_path.display())))?;
    // The adapter is part of the model: a resumed run must use the same one.
    let adapter_record = match a.model.adapter_for(student.as_ref()) {
        Some(p) => json!({
            "path": p,
            "sha256": small_agent_eval::sha256_file(&p)
                .map_err(|e| UsageError(format!("cannot read adapter {}: {e}", p.display())))?,
            "student": student.as_ref().map(|s| s.name.clone()),
        }),
        None => Value::Null,
    };
    let judge_record = match &a.judge {
        Some(p) => json!({
            "path": p,
            "sha256": small_agent_eval::sha256_file(p)
                .map_err(|e| UsageError(format!("cannot read judge model {}: {e}", p.display())))?,
            "prompt": {"name": judge_name, "text": judge_text},
        }),
        None => Value::Null,
    };
    let any_math = datasets
        .iter()
        .any(|d| d.items.iter().any(|i| i.kind == Kind::Math));
    let session_params = a.context.session_params();
    let settings = json!({
        "label": label(&a, mode),
        "mode": mode.as_str(),
        "datasets": datasets.iter().map(|d| json!({
            "name": d.name,
            "path": d.path,
            "layout": d.layout,
            "items": d.items.len(),
        })).collect::<Vec<_>>(),
        "kind_override": a.kind,
        "limit": a.limit,
        "model": {"path": model_path, "sha256": model_sha, "adapter": adapter_record},
        "judge": judge_record,
        "shard": shard_record,
        "prompt": match mode {
            Mode::Agent => json!({"name": agent_template_name, "text": agent_template_text}),
            _ => json!({"name": cot_name, "text": cot_text}),
        },
        "sampling": sampling,
        "seed": a.agent.seed,
        "sag": if mode == Mode::Agent { a.sag() } else { 1 },
        "grammar": mode == Mode::Agent && !a.agent.no_grammar,
        "max_steps": if mode == Mode::Agent { a.agent.max_steps } else { 1 },
        "repeat_retries": if mode == Mode::Agent { a.agent.repeat_retries } else { 0 },
        "max_tokens": if mode == Mode::Agent { agent_config.step_tokens } else { a.max_tokens },
        "ctx_size": a.context.ctx_size,
        "python": if mode == Mode::Agent { Some(flavour.as_str()) } else { None },
        "symbolic": {
            "enabled": any_math && !a.no_symbolic,
            "timeout_s": a.symbolic_timeout,
        },
        "accuracy": "factual: exact match (the judge's verdict when --judge parses); math: numeric (rel. tol. 1e-4), structural, then symbolic (sympy in the sandbox) equivalence",
        "code_version": small_agent_eval::code_version(),
        "run_info": {
            "threads": session_params.n_threads,
            "started_at_unix": std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        },
    });
    let out = a.out.clone().unwrap_or_else(|| {
        let names: Vec<&str> = datasets.iter().map(|d| d.name.as_str()).collect();
        let mut tag = mode.as_str().to_owned();
        if mode == Mode::Agent {
            if a.sag() > 1 {
                tag.push_str(&format!("-sag{}", a.sag()));
            }
            if a.agent.no_grammar {
                tag.push_str("-nogrammar");
            }
        }
        PathBuf::from("eval-results").join(format!("{}-{tag}", names.join("+")))
    });
    let (mut run_dir, mut records) = RunDir::open(&out, &settings, a.resume).map_err(|e| {
        // Resuming into a different run, or over one without --resume, is a usage error.
        UsageError(e.to_string())
    })?;
    let done: HashSet<(String, String)> = records
        .iter()
        .map(|r| (r.dataset.clone(), r.id.clone()))
        .collect();
    if !records.is_empty() {
        eprintln!(
            "resuming {}: {} questions already done",
            out.display(),
            records.len()
        );
    }

    // Models, sandbox, answerer.
    let model = a.model.load_for(student.as_ref())?;
    let judge_model = match &a.judge {
        Some(p) => Some(Model::load(p)?),
        None => None,
    };
    let symbolic: Option<SandboxSympy> = if any_math && !a.no_symbolic {
        Some(SandboxSympy::new(
            super::python_backend(Flavour::Full)?,
            std::time::Duration::from_secs_f64(a.symbolic_timeout.max(0.1)),
        ))
    } else {
        None
    };
    let mut answerer: Box<dyn Answerer + '_> = match mode {
        Mode::Agent => {
            let tools = agent_toolbox(Some(search.clone()))?;
            let python = super::python_backend(flavour)?;
            let mut sp = session_params.clone();
            sp.n_ctx = agent_config.context_size(sp.n_ctx);
            Box::new(AgentAnswerer::new(Agent::new(
                &model,
                &sp,
                python,
                tools,
                agent_config,
            )?))
        }
        Mode::Cot | Mode::CotRag => Box::new(CotAnswerer::new(
            &model,
            &session_params,
            cot_prompts,
            (mode == Mode::CotRag).then(|| search.clone()),
            sampling,
            a.max_tokens,
        )?),
    };
    let mut judge = match &judge_model {
        Some(m) => Some(Judge::new(m, &session_params, judge_prompt)?),
        None => None,
    };

    // The loop.
    install_interrupt_handler();
    let todo: usize = datasets
        .iter()
        .map(|d| {
            d.items
                .iter()
                .take(a.limit.unwrap_or(usize::MAX))
                .filter(|i| !done.contains(&(d.name.clone(), i.id.clone())))
                .count()
        })
        .sum();
    let bar = ProgressBar::new(todo as u64).with_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {elapsed}<{eta}")
            .expect("valid template"),
    );
    let keep_going = || !interrupted();
    let t0 = Instant::now();
    let mut stopped = false;
    run_dir.write_results(&records)?;
    'datasets: for (di, d) in datasets.iter().enumerate() {
        if let ShardPlan::PerDataset(v) = &plan {
            *current.write().expect("shard lock") = Some(v[di].0.clone());
        }
        for item in d.items.iter().take(a.limit.unwrap_or(usize::MAX)) {
            if done.contains(&(d.name.clone(), item.id.clone())) {
                continue;
            }
            if interrupted() {
                stopped = true;
                break 'datasets;
            }
            let rec = evaluate::evaluate_item(
                &d.name,
                item,
                answerer.as_mut(),
                judge.as_mut(),
                symbolic.as_ref().map(|s| s as &dyn SymbolicChecker),
                &keep_going,
            )?;
            let Some(rec) = rec else {
                stopped = true;
                break 'datasets;
            };
            run_dir.append(&rec)?;
            tracing::info!(
                dataset = %d.name,
                id = %rec.id,
                correct = rec.correct,
                prediction = %rec.prediction,
                seconds = rec.seconds,
                "question done"
            );
            records.push(rec);
            run_dir.write_results(&records)?;
            let correct = records.iter().filter(|r| r.correct).count();
            bar.set_message(format!(
                "{}: accuracy {correct}/{} ({:.1}%)",
                d.name,
                records.len(),
                100.0 * correct as f64 / records.len() as f64
            ));
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    let results = run_dir.write_results(&records)?;
    if stopped {
        eprintln!(
            "interrupted after {:.0} s: {} questions recorded in {}; continue with the same \
             command and --resume",
            t0.elapsed().as_secs_f64(),
            records.len(),
            out.display()
        );
        return Ok(ExitCode::from(EXIT_INTERRUPTED));
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        print!("{}", results::markdown_table(&results));
        eprintln!(
            "{} questions in {:.0} s; results in {}",
            todo,
            t0.elapsed().as_secs_f64(),
            out.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}
