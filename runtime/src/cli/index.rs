//! `small-agent index build|search|info|eval` and `small-agent bench index`.
use std::{path::PathBuf, process::ExitCode};

use anyhow::Result;
use clap::{Args, Subcommand};
use small_agent_index::{self as idx, Format, Retriever};
use small_agent_models::{Catalog, Store};

use super::{default_shard_dir, UsageError, DEFAULT_SHARD_ASSET};

/// `index` subcommands.
#[derive(Debug, Subcommand)]
pub enum IndexCommand {
    /// Build a knowledge shard from a corpus file (replaces OUT atomically when done)
    Build(BuildArgs),
    /// Search a shard
    Search(SearchArgs),
    /// Show a shard's metadata
    Info {
        /// Shard directory
        dir: PathBuf,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Recall@1/3/10 and MRR of gold paragraphs on the labelled sets of the shared data
    Eval(EvalArgs),
}

/// Arguments of `index build`.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Corpus file
    #[arg(long, required_unless_present = "default", value_name = "PATH")]
    pub input: Option<PathBuf>,
    /// jsonl | dpr-tsv | hotpot | hipporag | ovos | wiki-xml [default: guessed from the file]
    #[arg(long, value_parser = |s: &str| s.parse::<Format>())]
    pub format: Option<Format>,
    /// Shard directory to write
    #[arg(long, required_unless_present = "default", value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Build the default shard (10,033 Wikipedia summaries) into $SMALL_AGENT_HOME/shards
    #[arg(long, conflicts_with_all = ["input", "out", "format"])]
    pub default: bool,
    /// Fail on the first malformed record instead of skipping and reporting it
    #[arg(long)]
    pub strict: bool,
    /// Words per passage when splitting wiki XML articles
    #[arg(long, default_value_t = idx::ingest::DEFAULT_PASSAGE_WORDS, value_name = "N")]
    pub passage_words: usize,
    /// Indexing threads [default: number of cores, at most 8]
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Hide the progress bar
    #[arg(long)]
    pub quiet: bool,
}

/// Arguments of `index search`.
#[derive(Debug, Args)]
pub struct SearchArgs {
    /// Shard directory [default: the default shard]
    #[arg(long, value_name = "DIR")]
    pub index: Option<PathBuf>,
    /// Number of results
    #[arg(short, default_value_t = idx::DEFAULT_K)]
    pub k: usize,
    /// Dense rerank of the BM25 top 50 (needs a build with `--features rerank`)
    #[arg(long)]
    pub rerank: bool,
    /// Print {"results":[{"rank","score","id","title","text"}]}
    #[arg(long)]
    pub json: bool,
    /// Read the query from a file (`-` = stdin); bytes that are not UTF-8 are replaced
    #[arg(long, conflicts_with = "query", value_name = "FILE")]
    pub query_file: Option<PathBuf>,
    /// The query
    pub query: Option<String>,
}

/// Arguments of `index eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Shared data directory (holds hipporag-samples/ and hotpotqa-distractor/)
    #[arg(long, default_value = "../shared/data", value_name = "DIR")]
    pub data: PathBuf,
    /// Where the evaluation shards are built (reused when already built)
    #[arg(long, default_value = ".small-agent/index-eval", value_name = "DIR")]
    pub work: PathBuf,
    /// Also measure BM25 + dense rerank
    #[arg(long)]
    pub rerank: bool,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `bench index`.
#[derive(Debug, Args)]
pub struct BenchIndexArgs {
    /// Shared data directory (the corpus is recombined from its sentences)
    #[arg(long, default_value = "../shared/data", value_name = "DIR")]
    pub data: PathBuf,
    /// Scratch space (~1.5 GB for 1M passages)
    #[arg(long, default_value = ".small-agent/index-bench", value_name = "DIR")]
    pub work: PathBuf,
    /// Passages of the generated corpus
    #[arg(long, default_value_t = idx::bench::DEFAULT_BENCH_PASSAGES, value_name = "N")]
    pub passages: usize,
    /// Queries timed
    #[arg(long, default_value_t = idx::bench::DEFAULT_BENCH_QUERIES, value_name = "N")]
    pub queries: usize,
    /// Indexing threads
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub threads: usize,
    /// A Python with `bm25s` and `PyStemmer` installed, for the baseline (omit to skip it)
    #[arg(long, value_name = "PATH")]
    pub python: Option<PathBuf>,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

pub fn run(cmd: IndexCommand) -> Result<ExitCode> {
    match cmd {
        IndexCommand::Build(a) => build(a),
        IndexCommand::Search(a) => search(a),
        IndexCommand::Info { dir, json } => info(dir, json),
        IndexCommand::Eval(a) => eval(a),
    }
}

fn build(a: BuildArgs) -> Result<ExitCode> {
    let (input, format, out) = if a.default {
        let catalog = Catalog::builtin()?;
        let store = Store::from_env()?;
        let m = catalog.require(DEFAULT_SHARD_ASSET)?;
        store.fetch(m, &mut |_| {})?;
        (
            store.file_path(m, "summaries_en-us.json"),
            Format::Ovos,
            default_shard_dir()?,
        )
    } else {
        let input = a.input.clone().expect("clap requires --input");
        let format = match a.format {
            Some(f) => f,
            None => Format::detect(&input)?,
        };
        (input, format, a.out.clone().expect("clap requires --out"))
    };
    let opts = idx::BuildOptions {
        ingest: idx::IngestOptions {
            strict: a.strict,
            passage_words: a.passage_words,
            progress: !a.quiet,
        },
        threads: a.threads.unwrap_or(idx::BuildOptions::default().threads),
        ..idx::BuildOptions::default()
    };
    let report = idx::build_shard(&input, format, &out, &opts)?;
    eprintln!("{}", report.stats.summary());
    for m in &report.stats.malformed {
        eprintln!("  {}:{}: {}", input.display(), m.line, m.reason);
    }
    let listed = report.stats.malformed.len() as u64;
    if report.stats.malformed_count > listed {
        eprintln!("  ... and {} more", report.stats.malformed_count - listed);
    }
    println!("shard written to {}", out.display());
    Ok(ExitCode::SUCCESS)
}

fn search(a: SearchArgs) -> Result<ExitCode> {
    let query = match (&a.query_file, &a.query) {
        (Some(p), _) if p.as_os_str() == "-" => {
            let mut b = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut b)?;
            idx::search::query_from_bytes(&b)
        }
        (Some(p), _) => idx::search::query_from_bytes(
            &std::fs::read(p)
                .map_err(|e| UsageError(format!("cannot read {}: {e}", p.display())))?,
        ),
        (None, Some(q)) => q.clone(),
        (None, None) => return Err(UsageError("give a QUERY or --query-file".into()).into()),
    };
    let dir = match a.index {
        Some(d) => d,
        None => default_shard_dir()?,
    };
    let shard = idx::Shard::open(&dir)?;
    let hits = if a.rerank {
        rerank_search(&shard, &query, a.k)?
    } else {
        shard.search(&query, a.k)?
    };
    if a.json {
        println!("{}", serde_json::json!({ "results": hits }));
    } else {
        for h in &hits {
            println!(
                "{:>3}. [{:.3}] {} ({})\n     {}",
                h.rank, h.score, h.title, h.id, h.text
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(feature = "rerank")]
fn rerank_search(shard: &idx::Shard, query: &str, k: usize) -> Result<Vec<idx::Hit>> {
    let reranker = load_reranker()?;
    Ok(idx::rerank::Reranked::new(shard, &reranker).search(query, k)?)
}

#[cfg(not(feature = "rerank"))]
fn rerank_search(_: &idx::Shard, _: &str, _: usize) -> Result<Vec<idx::Hit>> {
    Err(UsageError(
        "this build has no dense rerank: rebuild with `cargo build --release --features rerank`"
            .into(),
    )
    .into())
}

fn info(dir: PathBuf, json: bool) -> Result<ExitCode> {
    let shard = idx::Shard::open(&dir)?;
    let m = shard.meta();
    if json {
        println!("{}", serde_json::to_string_pretty(m)?);
    } else {
        println!(
            "{}\n  source: {} ({})\n  documents: {}\n  passages: {}\n  schema: v{}\n  analyzer: {}\n  built: {} by {}",
            dir.display(),
            m.source,
            m.format,
            m.documents,
            m.passages,
            m.schema_version,
            m.build.analyzer,
            m.built_at_unix,
            m.builder_version
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn eval(a: EvalArgs) -> Result<ExitCode> {
    #[cfg(feature = "rerank")]
    let rows = {
        let reranker = if a.rerank {
            Some(load_reranker()?)
        } else {
            None
        };
        idx::eval::run_standard(
            &a.data,
            &a.work,
            reranker.as_ref().map(|r| r as &dyn idx::eval::SecondStage),
        )?
    };
    #[cfg(not(feature = "rerank"))]
    let rows = {
        if a.rerank {
            return Err(UsageError(
                "this build has no dense rerank: rebuild with `--features rerank`".into(),
            )
            .into());
        }
        idx::eval::run_standard(&a.data, &a.work, None)?
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print!("{}", idx::eval::markdown_table(&rows));
    }
    Ok(ExitCode::SUCCESS)
}

/// `small-agent bench index`.
pub fn bench(a: BenchIndexArgs) -> Result<ExitCode> {
    let report = idx::bench::run(&idx::bench::BenchOptions {
        data_dir: a.data,
        work_dir: a.work,
        passages: a.passages,
        queries: a.queries,
        seed: idx::bench::DEFAULT_BENCH_SEED,
        threads: a.threads,
        python: a.python,
    })?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{}", report.summary());
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(feature = "rerank")]
fn load_reranker() -> Result<idx::rerank::Reranker> {
    let catalog = Catalog::builtin()?;
    let store = Store::from_env()?;
    let path = |name: &str, file: &str| -> Result<PathBuf> {
        let m = catalog.require(name)?;
        store.fetch(m, &mut |_| {})?;
        Ok(store.file_path(m, file))
    };
    Ok(idx::rerank::Reranker::load(&idx::rerank::RerankAssets {
        onnxruntime: path("onnxruntime", "libonnxruntime.so.1.32.0")?,
        model: path("minilm-l6-int8", "model.onnx")?,
        tokenizer: path("minilm-l6-tokenizer", "tokenizer.json")?,
    })?)
}
