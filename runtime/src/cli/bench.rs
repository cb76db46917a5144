//! `small-agent bench llm`: our engine against llama.cpp's own `llama-bench`, same run.
use std::{path::PathBuf, process::ExitCode};

use anyhow::Result;
use clap::Subcommand;
use serde::Serialize;
use small_agent::bench::{self, LlmBenchParams, LlmBenchResult};
use small_agent_models::Store;

use super::{ModelArgs, ThreadArgs};

/// `bench` subcommands.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Prompt processing (pp) and generation (tg) tokens/s: ours vs llama-bench
    Llm {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        threads: ThreadArgs,
        /// Prompt tokens of the pp test
        #[arg(long, default_value_t = bench::DEFAULT_PP_TOKENS, value_name = "N")]
        pp: u32,
        /// Generated tokens of the tg test
        #[arg(long, default_value_t = bench::DEFAULT_TG_TOKENS, value_name = "N")]
        tg: u32,
        /// Repetitions after one warm-up
        #[arg(long, default_value_t = bench::DEFAULT_REPETITIONS, value_name = "N")]
        reps: u32,
        /// llama-bench binary [default: $SMALL_AGENT_HOME/tools/llama-bench]
        #[arg(long, value_name = "PATH", env = "SMALL_AGENT_LLAMA_BENCH")]
        llama_bench: Option<PathBuf>,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// The agent on a question file: accuracy and parse-error rate with and without the grammar
    Agent(super::bench_agent::BenchAgentArgs),
    /// One agent step with N candidates (SAG) vs one candidate, on real questions
    Sag(super::bench_sag::BenchSagArgs),
    /// Sandbox: cold session, warm print(1), fork, CPU-bound snippets vs native CPython
    Sandbox(super::python::BenchSandboxArgs),
    /// Knowledge shard: indexing passages/s and query latency over a 1M-passage corpus, vs bm25s
    Index(super::index::BenchIndexArgs),
    /// One step of N parallel candidates (one batch, shared prompt) vs one sequence
    Parallel {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        threads: ThreadArgs,
        /// Candidates decoded side by side
        #[arg(long, short = 'n', default_value_t = bench::DEFAULT_PARALLEL, value_name = "N")]
        n: u32,
        /// Tokens of the (cached) prompt
        #[arg(long, default_value_t = 1024, value_name = "N")]
        prompt: u32,
        /// Tokens generated per candidate
        #[arg(long, default_value_t = 96, value_name = "N")]
        tokens: u32,
        /// Repetitions after one warm-up
        #[arg(long, default_value_t = 3, value_name = "N")]
        reps: u32,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
}

#[derive(Serialize)]
struct Report {
    model: String,
    params: LlmBenchParams,
    ours: LlmBenchResult,
    llama_bench: LlmBenchResult,
    ratio_pp: f64,
    ratio_tg: f64,
}

pub fn run(cmd: BenchCommand) -> Result<ExitCode> {
    match cmd {
        BenchCommand::Agent(a) => super::bench_agent::run(a),
        BenchCommand::Sandbox(a) => super::python::bench(a),
        BenchCommand::Sag(a) => super::bench_sag::run(a),
        BenchCommand::Index(a) => super::index::bench(a),
        BenchCommand::Llm {
            model,
            threads,
            pp,
            tg,
            reps,
            llama_bench,
            json,
        } => run_llm(model, threads, pp, tg, reps, llama_bench, json),
        BenchCommand::Parallel {
            model,
            threads,
            n,
            prompt,
            tokens,
            reps,
            json,
        } => {
            let params = LlmBenchParams {
                pp_tokens: prompt,
                tg_tokens: tokens,
                repetitions: reps.max(1),
                threads: threads.get(),
            };
            let loaded = model.load()?;
            let r = bench::bench_parallel(&loaded, &params, n.max(1))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!(
                    "one step, {tokens} tokens per candidate after a cached {prompt}-token prompt:"
                );
                println!("  1 sequence:   {:8.1} ms", r.single_ms);
                println!("  {n} sequences: {:8.1} ms", r.parallel_ms);
                println!("  ratio:        {:8.2}x", r.ratio);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn run_llm(
    model: ModelArgs,
    threads: ThreadArgs,
    pp: u32,
    tg: u32,
    reps: u32,
    llama_bench: Option<PathBuf>,
    json: bool,
) -> Result<ExitCode> {
    let params = LlmBenchParams {
        pp_tokens: pp,
        tg_tokens: tg,
        repetitions: reps.max(1),
        threads: threads.get(),
    };
    let theirs_path = match llama_bench {
        Some(p) => p,
        None => Store::from_env()?.home().join("tools").join("llama-bench"),
    };
    let path = model.path()?;
    let loaded = model.load()?;
    eprintln!(
        "measuring small-agent: pp{pp} and tg{tg}, {} reps, {} threads ...",
        params.repetitions, params.threads
    );
    let ours = bench::bench_engine(&loaded, &params)?;
    drop(loaded);
    eprintln!("measuring llama-bench ({}) ...", theirs_path.display());
    let theirs = match bench::bench_llama_cpp(&theirs_path, &path, &params) {
        Ok(t) => t,
        Err(e) => {
            print_row("small-agent", &ours);
            return Err(e.into());
        }
    };
    let report = Report {
        model: path.display().to_string(),
        ratio_pp: ours.pp.tokens_per_s / theirs.pp.tokens_per_s,
        ratio_tg: ours.tg.tokens_per_s / theirs.tg.tokens_per_s,
        params,
        ours,
        llama_bench: theirs,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "model: {}  threads: {}",
            report.model, report.params.threads
        );
        println!(
            "{:<14} {:>18} {:>18}",
            "engine",
            format!("pp{pp} tok/s"),
            format!("tg{tg} tok/s")
        );
        print_row("small-agent", &report.ours);
        print_row("llama-bench", &report.llama_bench);
        println!(
            "{:<14} {:>18.3} {:>18.3}",
            "ratio", report.ratio_pp, report.ratio_tg
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn print_row(name: &str, r: &LlmBenchResult) {
    println!(
        "{:<14} {:>18} {:>18}",
        name,
        format!("{:.1} ± {:.1}", r.pp.tokens_per_s, r.pp.stddev),
        format!("{:.1} ± {:.1}", r.tg.tokens_per_s, r.tg.stddev)
    );
}
