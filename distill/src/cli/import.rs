//! `small-agent-distill import --from FORMAT INPUT --out FILE.jsonl`: real teacher data into
//! trajectories (the conversions live in `small_agent_distill::import`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use small_agent_distill::import::{self, Format, ImportError, ImportOptions, ImportReport};
use small_agent_distill::trajectory::write_jsonl_atomic;
use small_agent_eval::dataset::Kind;

use super::{progress_bar, UsageError, EXIT_TASK_FAILED};

/// Formats `import` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FromArg {
    /// The paper's released trajectory rows, or lines of `small-agent ask --trajectory` with a
    /// `true_answer` added
    Paper,
    /// FireAct's GPT-4 ReAct trajectories (fireact-trajectories/hotpotqa_gpt4_react_gpt_format.jsonl)
    Fireact,
    /// Q-Solv's gpt-4o-mini Python solutions of GSM8K train (qsolv-gsm8k-code/gsm8k_python.jsonl),
    /// re-run in the sandbox
    Qsolv,
    /// The CoT rows of FireAct's mix (fireact-trajectories/hotpotqa_multimethod_gpt_format.jsonl)
    CotFireact,
    /// GSM8K train's human rationales (gsm8k-train/train.jsonl)
    CotGsm8k,
}

impl From<FromArg> for Format {
    fn from(a: FromArg) -> Self {
        match a {
            FromArg::Paper => Format::Paper,
            FromArg::Fireact => Format::Fireact,
            FromArg::Qsolv => Format::Qsolv,
            FromArg::CotFireact => Format::CotFireact,
            FromArg::CotGsm8k => Format::CotGsm8k,
        }
    }
}

/// Answer kinds of paper rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KindArg {
    /// Short text answers (HotpotQA and the like)
    Factual,
    /// Math answers
    Math,
}

/// Arguments of `import`.
#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// Format of INPUT
    #[arg(long = "from", value_enum, value_name = "FORMAT")]
    pub from: FromArg,
    /// The input file (JSONL)
    #[arg(value_name = "INPUT")]
    pub input: PathBuf,
    /// Output trajectory file (JSONL), replaced whole once the import is complete
    #[arg(long, value_name = "FILE.jsonl")]
    pub out: PathBuf,
    /// Print the report as one JSON object instead of a table
    #[arg(long)]
    pub json: bool,
    /// Read only the first N rows of INPUT
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Threads that run Q-Solv's code, each with its own interpreter (default: one per core)
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub jobs: usize,
    /// GSM8K train file with the rationales Q-Solv's thoughts come from (default: the shared
    /// data's gsm8k-train/train.jsonl)
    #[arg(long, value_name = "FILE")]
    pub gsm8k_train: Option<PathBuf>,
    /// Answer kind of paper rows that carry no `answer_kind`
    #[arg(long, value_enum)]
    pub answer_kind: Option<KindArg>,
    /// `source_dataset` of paper rows (default: the row's own, else INPUT's file stem)
    #[arg(long, value_name = "NAME")]
    pub source_dataset: Option<String>,
    /// `teacher` of paper rows (default: the row's own, else "unknown")
    #[arg(long, value_name = "NAME")]
    pub teacher: Option<String>,
}

fn missing_input(what: &str, path: &Path, fix: &str) -> anyhow::Error {
    UsageError(format!("{what} {} does not exist: {fix}", path.display())).into()
}

/// Runs `import`.
pub fn run(args: ImportArgs) -> anyhow::Result<ExitCode> {
    let format = Format::from(args.from);
    if !args.input.exists() {
        return Err(missing_input(
            "the input",
            &args.input,
            "pass the path of a JSONL file; the shared teacher data lives in ../shared/data/ \
             beside the repository (or $SMALL_AGENT_DATA), see its README",
        ));
    }
    let gsm8k_train = (format == Format::Qsolv).then(|| {
        args.gsm8k_train
            .clone()
            .unwrap_or_else(import::default_gsm8k_train)
    });
    if let Some(p) = &gsm8k_train {
        if !p.exists() {
            return Err(missing_input(
                "the GSM8K train file (Q-Solv's thoughts come from its rationales)",
                p,
                "pass --gsm8k-train FILE, or put the shared data in ../shared/data/ (or set $SMALL_AGENT_DATA)",
            ));
        }
    }
    if let Some(parent) = args.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.is_dir() {
            return Err(missing_input(
                "the output's directory",
                parent,
                "create it first, or pass --out in an existing directory",
            ));
        }
    }
    let opts = ImportOptions {
        limit: args.limit,
        jobs: args.jobs,
        gsm8k_train,
        answer_kind: args.answer_kind.map(|k| match k {
            KindArg::Factual => Kind::Factual,
            KindArg::Math => Kind::Math,
        }),
        source_dataset: args.source_dataset.clone(),
        teacher: args.teacher.clone(),
    };
    let bar = progress_bar(0, args.json || format != Format::Qsolv);
    let progress = |done: usize, total: usize| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    };
    let imported = import::import(format, &args.input, &opts, &progress).map_err(|e| match e {
        ImportError::Input(t) => anyhow::Error::new(t),
        other => anyhow::Error::new(UsageError(other.to_string())),
    })?;
    bar.finish_and_clear();
    let report = &imported.report;
    let written = !imported.trajectories.is_empty();
    if written {
        write_jsonl_atomic(&args.out, &imported.trajectories)
            .with_context(|| format!("writing {}", args.out.display()))?;
    }
    if args.json {
        let mut v = serde_json::to_value(report)?;
        v["output"] = serde_json::json!(args.out);
        v["written"] = serde_json::json!(written);
        println!("{}", serde_json::to_string(&v)?);
    } else {
        print!("{}", table(report, &args.out, written));
    }
    if !written {
        eprintln!(
            "error: nothing could be converted from {} (see the reasons above); {} was left as it was",
            args.input.display(),
            args.out.display()
        );
        return Ok(ExitCode::from(EXIT_TASK_FAILED));
    }
    Ok(ExitCode::SUCCESS)
}

/// The report as a short human table.
fn table(r: &ImportReport, out: &Path, written: bool) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "import {} {} -> {}{}\n",
        r.format.as_str(),
        r.input.display(),
        out.display(),
        if written { "" } else { " (not written)" }
    ));
    s.push_str(&format!("  rows read   {:>7}\n", r.rows));
    s.push_str(&format!("  converted   {:>7}\n", r.converted));
    s.push_str(&format!("  rejected    {:>7}\n", r.rejected_total()));
    let width = r
        .rejected
        .keys()
        .map(|k| k.chars().count())
        .max()
        .unwrap_or(0);
    for (reason, n) in &r.rejected {
        s.push_str(&format!(
            "    {reason:<width$}  {:>6}  (first at line {})\n",
            n.count, n.first_line
        ));
    }
    s.push_str(&format!(
        "  source {} / {} / teacher {}\n",
        r.source, r.source_dataset, r.teacher
    ));
    if let Some(w) = r.workers {
        s.push_str(&format!("  sandbox threads {w}\n"));
    }
    s.push_str(&format!("  time {:.1} s\n", r.elapsed_s));
    s.push_str(&format!("  provenance: {}\n", r.provenance));
    if let Some(n) = &r.licence_note {
        s.push_str(&format!("  licence note: {n}\n"));
    }
    s
}
