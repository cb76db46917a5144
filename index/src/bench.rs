//! Speed benchmark: a reproducible synthetic corpus recombined from real Wikipedia sentences,
//! our indexing throughput and top-10 latency, and the same corpus and queries through the
//! Python `bm25s` library in the same run.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::ingest::{read_passages, Format, IngestOptions};
use crate::search::Retriever;
use crate::shard::{build_shard, BuildOptions, Shard};

/// Passages in the full benchmark corpus.
pub const DEFAULT_BENCH_PASSAGES: usize = 1_000_000;
/// Queries timed per engine.
pub const DEFAULT_BENCH_QUERIES: usize = 2_000;
/// Seed of the corpus generator; a fixed seed makes the corpus identical on every machine.
pub const DEFAULT_BENCH_SEED: u64 = 0x5a11_a6e7;
/// Untimed queries run first so both engines start with warm caches.
const WARMUP_QUERIES: usize = 200;

/// The shared corpora whose sentences are recombined. Train/development files only: the
/// evaluation-only HotpotQA distractor corpus is deliberately not used.
pub const SOURCE_CORPORA: [(&str, Format); 3] = [
    (
        "hipporag-samples/hotpotqa_train_corpus.json",
        Format::Hipporag,
    ),
    (
        "hipporag-samples/musique_train_corpus.json",
        Format::Hipporag,
    ),
    (
        "twowiki-corpus/2wikimultihopqa_corpus.json",
        Format::Hipporag,
    ),
];

/// The Python side of the comparison, written next to the corpus and run with `python`.
const BM25S_SCRIPT: &str = include_str!("bench_bm25s.py");

/// splitmix64: tiny, fast and fully specified, so the corpus does not depend on a crate's RNG.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Options of [`run`].
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Shared data directory (source of sentences).
    pub data_dir: PathBuf,
    /// Scratch directory for the corpus, queries and shard (needs ~1.5 GB for 1M passages).
    pub work_dir: PathBuf,
    /// Passages to generate.
    pub passages: usize,
    /// Queries to time.
    pub queries: usize,
    /// Generator seed.
    pub seed: u64,
    /// Indexing threads.
    pub threads: usize,
    /// Python interpreter with `bm25s` (and `PyStemmer`) installed; `None` skips the comparison.
    pub python: Option<PathBuf>,
}

/// Latency summary in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Latency {
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Mean.
    pub mean_ms: f64,
}

impl Latency {
    /// Summarises raw samples (seconds).
    pub fn from_seconds(mut samples: Vec<f64>) -> Latency {
        if samples.is_empty() {
            return Latency::default();
        }
        samples.sort_by(|a, b| a.total_cmp(b));
        let pct = |p: f64| samples[((samples.len() - 1) as f64 * p).round() as usize] * 1e3;
        Latency {
            p50_ms: pct(0.50),
            p99_ms: pct(0.99),
            mean_ms: samples.iter().sum::<f64>() / samples.len() as f64 * 1e3,
        }
    }
}

/// One engine's numbers.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EngineNumbers {
    /// Engine name.
    pub engine: String,
    /// Passages indexed per second (including reading and tokenising the corpus).
    pub index_passages_per_s: f64,
    /// Indexing wall time, seconds.
    pub index_seconds: f64,
    /// Top-10 latency including fetching the passages' text.
    pub query: Latency,
    /// Top-10 latency of the ranking alone (document ids, no stored text).
    pub query_ids_only: Option<Latency>,
    /// Mean time per query when all queries are submitted in one batch (bm25s' best case).
    #[serde(default)]
    pub batch_ms_per_query: Option<f64>,
}

/// The benchmark result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchReport {
    /// Passages in the corpus.
    pub passages: usize,
    /// Queries timed.
    pub queries: usize,
    /// Corpus size in bytes.
    pub corpus_bytes: u64,
    /// Our engine.
    pub ours: EngineNumbers,
    /// bm25s, when it ran.
    pub bm25s: Option<EngineNumbers>,
}

impl BenchReport {
    /// Human summary with ratios (> 1 means we are faster).
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} passages ({} bytes), {} top-10 queries\n\
             small-agent-index: {:.0} passages/s ({:.1} s); query p50 {:.3} ms, p99 {:.3} ms",
            self.passages,
            self.corpus_bytes,
            self.queries,
            self.ours.index_passages_per_s,
            self.ours.index_seconds,
            self.ours.query.p50_ms,
            self.ours.query.p99_ms,
        );
        if let Some(ids) = self.ours.query_ids_only {
            s.push_str(&format!(
                " (ranking only: p50 {:.3} ms, p99 {:.3} ms)",
                ids.p50_ms, ids.p99_ms
            ));
        }
        if let Some(b) = &self.bm25s {
            s.push_str(&format!(
                "\nbm25s: {:.0} passages/s ({:.1} s); query p50 {:.3} ms, p99 {:.3} ms\n\
                 ratios (ours vs bm25s, >1 = ours better): indexing {:.2}x, p50 {:.2}x, p99 {:.2}x",
                b.index_passages_per_s,
                b.index_seconds,
                b.query.p50_ms,
                b.query.p99_ms,
                self.ours.index_passages_per_s / b.index_passages_per_s.max(1e-9),
                b.query.p50_ms / self.ours.query.p50_ms.max(1e-9),
                b.query.p99_ms / self.ours.query.p99_ms.max(1e-9),
            ));
            if let Some(batch) = b.batch_ms_per_query {
                s.push_str(&format!(
                    "\nbm25s batched (all queries in one call): {batch:.3} ms per query; \
                     ours single-query mean {:.3} ms",
                    self.ours.query.mean_ms
                ));
            }
        }
        s
    }
}

fn split_sentences(text: &str, out: &mut Vec<String>) {
    let mut start = 0;
    let b = text.as_bytes();
    for i in 0..b.len() {
        let end_of_sentence = (b[i] == b'.' || b[i] == b'?' || b[i] == b'!')
            && (i + 1 == b.len() || b[i + 1] == b' ');
        if end_of_sentence {
            let s = text[start..=i].trim();
            if s.split_whitespace().count() >= 4 {
                out.push(s.to_string());
            }
            start = i + 1;
        }
    }
}

/// Writes the synthetic corpus as JSONL (`{id, title, text}`) and `queries` query lines;
/// returns the corpus size in bytes. Each passage takes a real title and 3–6 real sentences
/// drawn from the source corpora; each query takes 3–6 words of one real sentence plus,
/// half the time, a title, so queries hit the corpus the way agent queries do.
pub fn generate(
    data_dir: &Path,
    passages: usize,
    queries: usize,
    seed: u64,
    corpus_out: &Path,
    queries_out: &Path,
) -> Result<u64> {
    let mut titles = Vec::new();
    let mut sentences = Vec::new();
    for (rel, format) in SOURCE_CORPORA {
        let path = data_dir.join(rel);
        if !path.is_file() {
            return Err(Error::Measure(format!(
                "{}: missing (the benchmark recombines the shared corpora)",
                path.display()
            )));
        }
        read_passages(&path, format, &IngestOptions::default(), &mut |p| {
            titles.push(p.title);
            split_sentences(&p.text, &mut sentences);
            Ok(())
        })?;
    }
    let mut rng = Rng(seed);
    let mut w = BufWriter::new(File::create(corpus_out).at(corpus_out)?);
    let mut bytes = 0u64;
    for i in 0..passages {
        let title = &titles[rng.below(titles.len())];
        let n = 3 + rng.below(4);
        let mut text = String::new();
        for j in 0..n {
            if j > 0 {
                text.push(' ');
            }
            text.push_str(&sentences[rng.below(sentences.len())]);
        }
        let line = serde_json::json!({"id": format!("syn{i}"), "title": title, "text": text});
        let line = line.to_string();
        bytes += line.len() as u64 + 1;
        writeln!(w, "{line}").at(corpus_out)?;
    }
    w.flush().at(corpus_out)?;
    let mut q = BufWriter::new(File::create(queries_out).at(queries_out)?);
    for _ in 0..queries {
        let s = &sentences[rng.below(sentences.len())];
        let words: Vec<&str> = s.split_whitespace().collect();
        let n = (3 + rng.below(4)).min(words.len());
        let start = rng.below(words.len() - n + 1);
        let mut query = words[start..start + n].join(" ");
        if rng.below(2) == 0 {
            query = format!("{} {query}", titles[rng.below(titles.len())]);
        }
        // One query per line: newlines inside are impossible after split_whitespace.
        writeln!(q, "{query}").at(queries_out)?;
    }
    q.flush().at(queries_out)?;
    Ok(bytes)
}

/// Generates the corpus, builds and times our shard, then (if a Python is given) runs bm25s on
/// the same files.
pub fn run(opts: &BenchOptions) -> Result<BenchReport> {
    std::fs::create_dir_all(&opts.work_dir).at(&opts.work_dir)?;
    let corpus = opts.work_dir.join(format!("bench-{}.jsonl", opts.passages));
    let queries_path = opts.work_dir.join("bench-queries.txt");
    let corpus_bytes = generate(
        &opts.data_dir,
        opts.passages,
        opts.queries + WARMUP_QUERIES,
        opts.seed,
        &corpus,
        &queries_path,
    )?;
    let queries: Vec<String> = std::fs::read_to_string(&queries_path)
        .at(&queries_path)?
        .lines()
        .map(str::to_string)
        .collect();

    let shard_dir = opts.work_dir.join("bench-shard");
    let build = BuildOptions {
        threads: opts.threads,
        ..BuildOptions::default()
    };
    let report = build_shard(&corpus, Format::Jsonl, &shard_dir, &build)?;
    let shard = Shard::open(&shard_dir)?;
    let time = |f: &dyn Fn(&str) -> Result<()>| -> Result<Latency> {
        for q in &queries[..WARMUP_QUERIES.min(queries.len())] {
            f(q)?;
        }
        let mut samples = Vec::with_capacity(queries.len());
        for q in &queries[WARMUP_QUERIES.min(queries.len())..] {
            let t = Instant::now();
            f(q)?;
            samples.push(t.elapsed().as_secs_f64());
        }
        Ok(Latency::from_seconds(samples))
    };
    let query = time(&|q| shard.search(q, 10).map(|_| ()))?;
    let ids = time(&|q| shard.bm25_ids_only(q, 10).map(|_| ()))?;
    let ours = EngineNumbers {
        engine: "small-agent-index (tantivy)".into(),
        index_passages_per_s: report.meta.passages as f64 / report.total_seconds,
        index_seconds: report.total_seconds,
        query,
        query_ids_only: Some(ids),
        batch_ms_per_query: None,
    };
    drop(shard);

    let bm25s = match &opts.python {
        Some(python) => Some(run_bm25s(python, &opts.work_dir, &corpus, &queries_path)?),
        None => None,
    };
    Ok(BenchReport {
        passages: opts.passages,
        queries: opts.queries,
        corpus_bytes,
        ours,
        bm25s,
    })
}

fn run_bm25s(python: &Path, work: &Path, corpus: &Path, queries: &Path) -> Result<EngineNumbers> {
    let script = work.join("bench_bm25s.py");
    std::fs::write(&script, BM25S_SCRIPT).at(&script)?;
    let out = Command::new(python)
        .arg(&script)
        .arg(corpus)
        .arg(queries)
        .arg(WARMUP_QUERIES.to_string())
        .output()
        .map_err(|e| Error::Measure(format!("cannot run {}: {e}", python.display())))?;
    if !out.status.success() {
        return Err(Error::Measure(format!(
            "bm25s run failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last)
        .map_err(|e| Error::Measure(format!("bm25s output unreadable ({e}): {last}")))
}
