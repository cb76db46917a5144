//! `small-agent-distill dataset`: builds a tokenized training dataset from trajectory files
//! (see [`small_agent_distill::dataset`] for the rules and the on-disk format), or prints
//! the numbers of one (`dataset stats DIR`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use small_agent::agent::prompt::DEFAULT_TEMPLATE;
use small_agent::agent::{protocol, PromptTemplate, DEFAULT_MAX_STEPS, STEP_GRAMMAR};
use small_agent::engine::LoadOptions;
use small_agent::Model;
use small_agent_distill::dataset::{self, builder, BuildError, BuildOptions, Dataset, Manifest};

use super::{install_interrupt_handler, interrupted, progress_bar, UsageError, EXIT_INTERRUPTED};

/// Flags of `dataset`.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct DatasetArgs {
    #[command(subcommand)]
    command: Option<DatasetCommand>,
    #[command(flatten)]
    build: BuildArgs,
}

#[derive(Debug, clap::Subcommand)]
enum DatasetCommand {
    /// Print the numbers of a dataset directory (its manifest)
    Stats(StatsArgs),
}

/// Flags of `dataset stats`.
#[derive(Debug, clap::Args)]
struct StatsArgs {
    /// The dataset directory
    dir: PathBuf,
    /// Print manifest.json as it is
    #[arg(long)]
    json: bool,
}

/// Flags of building a dataset.
#[derive(Debug, clap::Args)]
struct BuildArgs {
    /// The student model whose chat template and tokenizer are used
    /// [default: the default model]
    #[arg(long, value_name = "MODEL.gguf")]
    tokenizer: Option<PathBuf>,
    /// Trajectory file (JSONL; repeat for several), usually the output of `filter`
    #[arg(long = "in", value_name = "FILE", required = true)]
    inputs: Vec<PathBuf>,
    /// The dataset directory (replaced whole when the build is complete)
    #[arg(long, value_name = "DIR", required = true)]
    out: Option<PathBuf>,
    /// Examples longer than N tokens are dropped and counted, never truncated
    #[arg(long, value_name = "N", default_value_t = builder::DEFAULT_MAX_LEN)]
    max_len: usize,
    /// Fraction of questions held out for validation (split by question hash)
    #[arg(long, value_name = "F", default_value_t = builder::DEFAULT_VAL_FRAC)]
    val_frac: f64,
    /// Seed of the split hash
    #[arg(long, value_name = "S", default_value_t = 0)]
    seed: u64,
    /// The student's prompt template [default: the built-in agent-default.toml]
    #[arg(long, value_name = "FILE")]
    prompt: Option<PathBuf>,
    /// The step budget written into the student's system prompt
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_STEPS)]
    max_steps: usize,
    /// Check that every reply starting with the step grammar's forced `Thought:` tokenizes
    /// after the inference prompt as inside the example (the default)
    #[arg(long, overrides_with = "no_grammar_prefill")]
    grammar_prefill: bool,
    /// Do not check the grammar's forced start (for students run without the step grammar)
    #[arg(long, overrides_with = "grammar_prefill")]
    no_grammar_prefill: bool,
    /// Print the manifest as JSON on stdout instead of a table
    #[arg(long)]
    json: bool,
}

/// Runs `dataset` or `dataset stats`.
pub fn run(a: DatasetArgs) -> anyhow::Result<ExitCode> {
    match a.command {
        Some(DatasetCommand::Stats(s)) => stats(s),
        None => build(a.build),
    }
}

fn stats(a: StatsArgs) -> anyhow::Result<ExitCode> {
    let ds = Dataset::open(&a.dir)?;
    if a.json {
        let text = std::fs::read_to_string(a.dir.join("manifest.json"))
            .with_context(|| format!("reading {}", a.dir.join("manifest.json").display()))?;
        print!("{text}");
        if !text.ends_with('\n') {
            println!();
        }
    } else {
        print_manifest(ds.manifest());
    }
    Ok(ExitCode::SUCCESS)
}

fn build(a: BuildArgs) -> anyhow::Result<ExitCode> {
    let out = a.out.clone().expect("clap requires --out");
    if a.max_len == 0 {
        return Err(UsageError("--max-len must be at least 1".into()).into());
    }
    if !(0.0..1.0).contains(&a.val_frac) {
        return Err(UsageError(format!("--val-frac must be in [0, 1), not {}", a.val_frac)).into());
    }
    let tokenizer = match &a.tokenizer {
        Some(p) => p.clone(),
        None => small_agent::assets::default_model_path()
            .context("no --tokenizer given and the default model's location is unknown")?,
    };
    let (template, template_source, template_text) = match &a.prompt {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("reading the prompt template {}", p.display()))?;
            let t = PromptTemplate::parse(&p.display().to_string(), &text)
                .map_err(|e| UsageError(e.to_string()))?;
            (t, p.display().to_string(), text)
        }
        None => (
            PromptTemplate::builtin(),
            "built-in models/prompts/agent-default.toml".to_owned(),
            DEFAULT_TEMPLATE.to_owned(),
        ),
    };
    // The last of --grammar-prefill / --no-grammar-prefill wins; on by default.
    let prefill = if a.no_grammar_prefill && !a.grammar_prefill {
        None
    } else {
        Some(
            protocol::grammar_forced_prefix(STEP_GRAMMAR)
                .context("the step grammar forces no start text")?,
        )
    };
    let opts = BuildOptions {
        max_len: a.max_len,
        val_frac: a.val_frac,
        seed: a.seed,
        template,
        template_source,
        template_text,
        max_steps: a.max_steps,
        prefill,
    };
    let t0 = Instant::now();
    // Only the vocabulary and the chat template are used: no faster layout to derive.
    let model = Model::load_with(&tokenizer, &LoadOptions::as_is())?;
    install_interrupt_handler();
    let bar = progress_bar(0, a.json);
    let mut progress = |done: usize, total: usize| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    };
    let result = dataset::build(&model, &a.inputs, &out, &opts, &mut progress, &|| {
        !interrupted()
    });
    bar.finish_and_clear();
    let manifest = match result {
        Ok(m) => m,
        Err(BuildError::Interrupted) => {
            eprintln!("interrupted: {} is unchanged", out.display());
            return Ok(ExitCode::from(EXIT_INTERRUPTED));
        }
        Err(BuildError::OutNotDataset(p)) => {
            return Err(UsageError(BuildError::OutNotDataset(p).to_string()).into())
        }
        // Unwrapped, so that the exit code sees them (a bad input line is exit 2).
        Err(BuildError::Trajectory(e)) => return Err(e.into()),
        Err(BuildError::Engine(e)) => return Err(e.into()),
        Err(e) => return Err(e.into()),
    };
    let secs = t0.elapsed().as_secs_f64();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&manifest)?);
    } else {
        print_manifest(&manifest);
        eprintln!("wrote {} in {secs:.1} s", out.display());
    }
    let written: usize = manifest.splits.values().map(|s| s.examples).sum();
    if written == 0 {
        eprintln!("error: no example was written");
        return Ok(ExitCode::from(super::EXIT_TASK_FAILED));
    }
    Ok(ExitCode::SUCCESS)
}

fn print_manifest(m: &Manifest) {
    println!(
        "tokenizer {} (sha256 {}…), max_len {}, val_frac {}, seed {}, grammar prefill {}",
        m.tokenizer.path,
        &m.tokenizer.sha256[..m.tokenizer.sha256.len().min(12)],
        m.max_len,
        m.val_frac,
        m.seed,
        m.grammar_prefill.as_deref().unwrap_or("not checked")
    );
    println!();
    println!(
        "{:<6} {:>9} {:>10} {:>12} {:>12} {:>8}",
        "split", "examples", "questions", "tokens", "masked", "masked%"
    );
    for (name, s) in &m.splits {
        println!(
            "{:<6} {:>9} {:>10} {:>12} {:>12} {:>7.1}%",
            name,
            s.examples,
            s.questions,
            s.tokens,
            s.masked_tokens,
            100.0 * s.masked_tokens as f64 / s.tokens.max(1) as f64
        );
    }
    println!();
    print_sources("file", m.sources.iter().map(|s| (s.path.as_str(), s)));
    println!();
    print_sources("source", m.by_source.iter().map(|(n, s)| (n.as_str(), s)));
    let dropped: Vec<String> = m
        .dropped
        .iter()
        .filter(|(_, &n)| n > 0)
        .map(|(r, n)| format!("{r} {n}"))
        .collect();
    println!();
    println!(
        "dropped: {}",
        if dropped.is_empty() {
            "none".to_owned()
        } else {
            dropped.join(", ")
        }
    );
}

fn print_sources<'a>(
    what: &str,
    rows: impl Iterator<
        Item = (
            &'a str,
            &'a small_agent_distill::dataset::manifest::SourceStats,
        ),
    >,
) {
    println!(
        "{:<40} {:>6} {:>7} {:>7} {:>6} {:>6} {:>6} {:>8}",
        what, "read", "written", "mean", "p50", "p90", "max", "masked%"
    );
    for (name, s) in rows {
        let written: usize = s.examples.values().sum();
        let chars: Vec<char> = name.chars().collect();
        let name = if chars.len() > 40 {
            format!("…{}", chars[chars.len() - 39..].iter().collect::<String>())
        } else {
            name.to_owned()
        };
        println!(
            "{:<40} {:>6} {:>7} {:>7.0} {:>6} {:>6} {:>6} {:>7.1}%",
            name,
            s.lines,
            written,
            s.tokens.mean,
            s.tokens.p50,
            s.tokens.p90,
            s.tokens.max,
            100.0 * s.tokens.masked_fraction
        );
    }
}
