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
        /// Rounds of both engines, alternating which goes first; the ratio is their median
        #[arg(long, default_value_t = 3, value_name = "N")]
        rounds: u32,
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
    /// Whether our engine ran the model's Q4_1 matrices as Q4_0 + offsets (`engine::split`);
    /// llama-bench always runs the file as it is.
    split: bool,
    params: LlmBenchParams,
    /// Median over rounds of ours / llama-bench.
    ratio_pp: f64,
    ratio_tg: f64,
    rounds: Vec<Round>,
}

/// One round: both engines measured back to back.
#[derive(Serialize)]
struct Round {
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
            rounds,
            llama_bench,
            json,
        } => run_llm(model, threads, (pp, tg), reps, rounds, llama_bench, json),
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
                if let Some(ms) = r.parallel_llama_logits_ms {
                    println!(
                        "  {n} sequences, llama.cpp's output product: {ms:.1} ms (own kernel \
                         {:.2}x faster)",
                        ms / r.parallel_ms
                    );
                }
                println!(
                    "  tokens evaluated by the {n}-candidate step: {:.0} of {} (identical \
                     candidates share them)",
                    r.parallel_decoded,
                    n * tokens
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn run_llm(
    model: ModelArgs,
    threads: ThreadArgs,
    sizes: (u32, u32),
    reps: u32,
    rounds: u32,
    llama_bench: Option<PathBuf>,
    json: bool,
) -> Result<ExitCode> {
    let (pp, tg) = sizes;
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
    // Rounds alternate which engine goes first, and the ratio is the median of the rounds'
    // ratios: on a shared or virtual machine the speed drifts between minutes, and a single
    // ours-then-theirs pair would fold that drift into the ratio.
    let mut runs = Vec::new();
    for round in 0..rounds.max(1) {
        eprintln!(
            "round {}/{}: pp{pp} and tg{tg}, {} reps, {} threads, small-agent and llama-bench ({}) ...",
            round + 1,
            rounds.max(1),
            params.repetitions,
            params.threads,
            theirs_path.display()
        );
        let theirs_first = round % 2 == 1;
        let mut theirs = None;
        if theirs_first {
            theirs = Some(bench::bench_llama_cpp(&theirs_path, &path, &params)?);
        }
        let ours = bench::bench_engine(&loaded, &params)?;
        let theirs = match theirs {
            Some(t) => t,
            None => bench::bench_llama_cpp(&theirs_path, &path, &params)?,
        };
        runs.push(Round {
            ratio_pp: ours.pp.tokens_per_s / theirs.pp.tokens_per_s,
            ratio_tg: ours.tg.tokens_per_s / theirs.tg.tokens_per_s,
            ours,
            llama_bench: theirs,
        });
    }
    let median = |f: &dyn Fn(&Round) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let report = Report {
        model: path.display().to_string(),
        split: loaded.is_split(),
        ratio_pp: median(&|r| r.ratio_pp),
        ratio_tg: median(&|r| r.ratio_tg),
        params,
        rounds: runs,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "model: {}  threads: {}  ours: {}",
            report.model,
            report.params.threads,
            if report.split {
                "Q4_1 split into Q4_0 + offsets (--as-is to run the file as it is)"
            } else {
                "the file as it is"
            }
        );
        println!(
            "{:<18} {:>18} {:>18}",
            "engine",
            format!("pp{pp} tok/s"),
            format!("tg{tg} tok/s")
        );
        for (i, r) in report.rounds.iter().enumerate() {
            print_row(&format!("small-agent #{}", i + 1), &r.ours);
            print_row(&format!("llama-bench #{}", i + 1), &r.llama_bench);
            println!(
                "{:<18} {:>18.3} {:>18.3}",
                format!("ratio #{}", i + 1),
                r.ratio_pp,
                r.ratio_tg
            );
        }
        println!(
            "{:<18} {:>18.3} {:>18.3}",
            "median ratio", report.ratio_pp, report.ratio_tg
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn print_row(name: &str, r: &LlmBenchResult) {
    println!(
        "{:<18} {:>18} {:>18}",
        name,
        format!("{:.1} ± {:.1}", r.pp.tokens_per_s, r.pp.stddev),
        format!("{:.1} ± {:.1}", r.tg.tokens_per_s, r.tg.stddev)
    );
}
