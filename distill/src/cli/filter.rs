//! `small-agent-distill filter`: keeps the trajectories that may teach the student (see
//! [`small_agent_distill::filter`] for the rules) and reports why the others were dropped.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use small_agent_distill::filter::{EvalQuestions, Filter, FilterOptions, FilterReport, Reason};
use small_agent_distill::trajectory::{read_jsonl, write_jsonl_atomic, Trajectory};
use small_agent_eval::dataset::Kind;
use small_agent_eval::symbolic::DEFAULT_SYMBOLIC_TIMEOUT;
use small_agent_eval::{SandboxSympy, SymbolicChecker, SymbolicVerdict};
use small_agent_sandbox::Flavour;

use super::{progress_bar, UsageError};

/// Flags of `filter`.
#[derive(Debug, clap::Args)]
pub struct FilterArgs {
    /// Trajectory file to read (JSONL; repeat for several)
    #[arg(long = "in", value_name = "FILE", required = true)]
    pub inputs: Vec<PathBuf>,
    /// Where to write the kept trajectories (JSONL, replaced whole when complete)
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Factual answers: also accept a token F1 of at least X against some gold answer
    /// (default: normalised exact match only)
    #[arg(long, value_name = "X")]
    pub f1_threshold: Option<f64>,
    /// Skip the symbolic (sympy in the sandbox) check of math answers; the text, numeric
    /// and structural checks remain. The check runs only for answers those did not match,
    /// but the first one imports sympy (seconds) and each may take up to --symbolic-timeout
    #[arg(long)]
    pub no_symbolic: bool,
    /// Wall-clock limit of one symbolic check, in seconds
    #[arg(long, default_value_t = DEFAULT_SYMBOLIC_TIMEOUT.as_secs_f64(), value_name = "S")]
    pub symbolic_timeout: f64,
    /// The shared data directory whose evaluation questions are excluded
    /// [default: $SMALL_AGENT_DATA, else the shared/data beside the repository]
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Print the report as one JSON object on stdout
    #[arg(long)]
    pub json: bool,
}

/// Runs `filter`.
pub fn run(a: FilterArgs) -> anyhow::Result<ExitCode> {
    if let Some(x) = a.f1_threshold {
        if !(0.0..=1.0).contains(&x) {
            return Err(UsageError(format!("--f1-threshold must be in [0, 1], not {x}")).into());
        }
    }
    if a.inputs.iter().any(|p| p == &a.out) {
        return Err(UsageError(format!(
            "--out {} is also an input: write to another file",
            a.out.display()
        ))
        .into());
    }
    let data_dir = a
        .data
        .clone()
        .unwrap_or_else(small_agent_eval::dataset::data_dir);
    let eval = EvalQuestions::load(&data_dir).with_context(|| {
        format!(
            "loading the evaluation questions under {}",
            data_dir.display()
        )
    })?;
    if !a.json {
        eprintln!(
            "evaluation questions excluded: {} distinct, from {}:",
            eval.len(),
            data_dir.display()
        );
        for f in &eval.files {
            if f.corpus_only {
                eprintln!("  {:>5}  {} (corpus, no questions)", "-", f.path);
            } else {
                eprintln!("  {:>5}  {}", f.questions, f.path);
            }
        }
    }

    let mut all: Vec<Trajectory> = Vec::new();
    for p in &a.inputs {
        all.extend(read_jsonl(p)?);
    }
    let any_math = all.iter().any(|t| t.answer_kind == Kind::Math);
    let symbolic = (any_math && !a.no_symbolic).then(|| LazySympy {
        timeout: std::time::Duration::from_secs_f64(a.symbolic_timeout.max(0.1)),
        inner: std::sync::OnceLock::new(),
    });

    let mut filter = Filter::new(
        &eval,
        FilterOptions {
            f1_threshold: a.f1_threshold,
        },
    );
    let bar = progress_bar(all.len() as u64, a.json);
    let mut kept = Vec::new();
    for mut t in all {
        let r = filter.push(&mut t, symbolic.as_ref().map(|s| s as &dyn SymbolicChecker));
        if r.kept() {
            kept.push(t);
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    if let Some(Err(e)) = symbolic.as_ref().and_then(|s| s.inner.get()) {
        anyhow::bail!(
            "the symbolic math check needs the full Python interpreter, which did not load: {e} \
             (install it with `small-agent models fetch python-wasm-full`, or pass --no-symbolic)"
        );
    }
    write_jsonl_atomic(&a.out, &kept)?;
    let report = filter.into_report();
    if a.json {
        let mut v = serde_json::to_value(&report)?;
        v["out"] = serde_json::json!(a.out);
        v["symbolic"] = serde_json::json!({
            "enabled": symbolic.is_some(),
            "used": symbolic.as_ref().is_some_and(|s| s.inner.get().is_some()),
        });
        println!("{v}");
    } else {
        print_table(&report);
        eprintln!("wrote {} trajectories to {}", report.kept, a.out.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// sympy in the sandbox, loaded on the first answer that the text, numeric and structural
/// checks could not match (loading the interpreter costs seconds, its first compile minutes).
struct LazySympy {
    timeout: std::time::Duration,
    inner: std::sync::OnceLock<Result<SandboxSympy, String>>,
}

impl SymbolicChecker for LazySympy {
    fn equivalent(&self, a: &str, b: &str) -> SymbolicVerdict {
        let checker = self.inner.get_or_init(|| {
            small_agent::assets::python_backend(Flavour::Full)
                .map(|backend| SandboxSympy::new(backend, self.timeout))
                .map_err(|e| e.to_string())
        });
        match checker {
            Ok(c) => c.equivalent(a, b),
            Err(e) => SymbolicVerdict::Undecided(e.clone()),
        }
    }
}

fn print_table(r: &FilterReport) {
    println!("{:<28} {:>7}", "reason", "count");
    for reason in Reason::ALL {
        println!("{:<28} {:>7}", reason.as_str(), r.reasons[reason.as_str()]);
    }
    println!("{:<28} {:>7}", "= kept (total)", r.kept);
    println!("{:<28} {:>7}", "= input", r.input);
    if r.by_source.len() > 1 {
        println!();
        for (source, counts) in &r.by_source {
            let total: usize = counts.values().sum();
            let kept = counts.get("kept").copied().unwrap_or(0)
                + counts.get("kept_recovered_errors").copied().unwrap_or(0);
            println!("{source:<28} {kept:>7} kept of {total}");
        }
    }
}
