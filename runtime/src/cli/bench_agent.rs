//! `small-agent bench agent`: parse-error rate and answer accuracy of the agent on a
//! question file, with and without the step grammar, in the same run.
use std::{path::PathBuf, process::ExitCode, sync::Arc, time::Instant};

use anyhow::Result;
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use small_agent::agent::{
    agent_toolbox,
    quick_eval::{answer_matches, load_questions},
    Agent, AgentConfig, SearchFn, STEP_GRAMMAR,
};
use small_agent_index::Format;
use small_agent_sandbox::Flavour;

use super::{ContextArgs, ModelArgs, ShardArgs};

/// Which grammar settings to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GrammarChoice {
    /// With the step grammar only
    On,
    /// Without it only
    Off,
    /// Both, one after the other
    Both,
}

/// Arguments of `bench agent`.
#[derive(Debug, Args)]
pub struct BenchAgentArgs {
    /// Question file: HippoRAG samples (`[{question, answer}]`) or an agent-distillation set
    #[arg(long, value_name = "FILE")]
    pub questions: PathBuf,
    /// Corpus to search (HippoRAG layout); a temporary shard is built from it
    #[arg(long, value_name = "FILE", conflicts_with = "index")]
    pub corpus: Option<PathBuf>,
    /// First N questions
    #[arg(long, default_value_t = 30, value_name = "N")]
    pub limit: usize,
    /// Grammar settings to compare
    #[arg(long, value_enum, default_value_t = GrammarChoice::Both)]
    pub grammar: GrammarChoice,
    /// Candidates per step
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub sag: usize,
    /// Steps per question
    #[arg(long, default_value_t = small_agent::agent::DEFAULT_MAX_STEPS, value_name = "N")]
    pub max_steps: usize,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub context: ContextArgs,
    #[command(flatten)]
    pub shard: ShardArgs,
}

#[derive(Debug, Serialize)]
struct Row {
    grammar: bool,
    sag: usize,
    questions: usize,
    accuracy: f64,
    steps: usize,
    parse_error_rate: f64,
    exec_error_rate: f64,
    final_answer_rate: f64,
    mean_steps: f64,
    seconds_per_question: f64,
}

pub fn run(a: BenchAgentArgs) -> Result<ExitCode> {
    let loaded = load_questions(&a.questions)?;
    if loaded.skipped_without_answer > 0 {
        eprintln!(
            "note: {} items of {} have no gold answer and are left out",
            loaded.skipped_without_answer,
            a.questions.display()
        );
    }
    let mut questions = loaded.items;
    questions.truncate(a.limit);
    let _tmp;
    let shard = match &a.corpus {
        Some(corpus) => {
            let dir = tempfile::tempdir()?;
            let out = dir.path().join("shard");
            small_agent_index::build_shard(corpus, Format::Hipporag, &out, &Default::default())?;
            _tmp = dir;
            small_agent_index::Shard::open(&out)?
        }
        None => a.shard.open()?,
    };
    let shard = Arc::new(shard);
    let search: SearchFn = Arc::new(move |q: &str| {
        small_agent_index::agent_search(&*shard, q).map_err(|e| e.to_string())
    });
    let python = super::python_backend(Flavour::Full)?;
    let model = a.model.load()?;
    let grammars: &[bool] = match a.grammar {
        GrammarChoice::On => &[true],
        GrammarChoice::Off => &[false],
        GrammarChoice::Both => &[true, false],
    };
    let mut rows = Vec::new();
    for &grammar in grammars {
        let config = AgentConfig {
            max_steps: a.max_steps.max(1),
            grammar: grammar.then(|| STEP_GRAMMAR.to_owned()),
            ..AgentConfig::default()
        }
        .with_sag(a.sag);
        let mut session = a.context.session_params();
        session.n_ctx = config.context_size(session.n_ctx);
        let tools = agent_toolbox(Some(search.clone()))?;
        let mut agent = Agent::new(&model, &session, python.clone(), tools, config)?;
        let bar = ProgressBar::new(questions.len() as u64).with_style(
            ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {elapsed}")
                .expect("valid template"),
        );
        let (mut correct, mut steps, mut parse, mut exec, mut finals) = (0, 0, 0, 0, 0);
        let t0 = Instant::now();
        for q in &questions {
            let run = agent.run(&q.question, &mut |_| true)?;
            correct += usize::from(answer_matches(&run.answer, &q.answer));
            steps += run.steps.len();
            parse += run.steps.iter().filter(|s| s.parse_error).count();
            exec += run.steps.iter().filter(|s| s.exec_error).count();
            finals += usize::from(run.answer_source == "final_answer");
            bar.set_message(format!(
                "grammar {}: accuracy {correct}/{}",
                if grammar { "on" } else { "off" },
                bar.position() + 1
            ));
            bar.inc(1);
        }
        bar.finish_and_clear();
        let n = questions.len().max(1) as f64;
        rows.push(Row {
            grammar,
            sag: a.sag,
            questions: questions.len(),
            accuracy: correct as f64 / n,
            steps,
            parse_error_rate: parse as f64 / steps.max(1) as f64,
            exec_error_rate: exec as f64 / steps.max(1) as f64,
            final_answer_rate: finals as f64 / n,
            mean_steps: steps as f64 / n,
            seconds_per_question: t0.elapsed().as_secs_f64() / n,
        });
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        println!(
            "questions: {} (first {})",
            a.questions.display(),
            questions.len()
        );
        println!("| grammar | SAG | accuracy | parse errors / step | code errors / step | final_answer used | mean steps | s / question |");
        println!("|---|---|---|---|---|---|---|---|");
        for r in &rows {
            println!(
                "| {} | {} | {:.1}% | {:.1}% | {:.1}% | {:.1}% | {:.2} | {:.1} |",
                if r.grammar { "on" } else { "off" },
                r.sag,
                100.0 * r.accuracy,
                100.0 * r.parse_error_rate,
                100.0 * r.exec_error_rate,
                100.0 * r.final_answer_rate,
                r.mean_steps,
                r.seconds_per_question
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
