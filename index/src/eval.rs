//! Retrieval quality on labelled multi-hop QA: recall@1/3/10 and MRR of the gold paragraphs.
//!
//! Three sets are supported, each searched over its own corpus: the HippoRAG HotpotQA and
//! MuSiQue train samples (development data: parameters are tuned on these only) and the
//! HotpotQA distractor dev file in IRCoT format over the derived corpus (evaluation only).

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::ingest::Format;
use crate::search::Retriever;

/// Depth of the ranking that recall@10 and MRR look at.
pub const EVAL_DEPTH: usize = 10;

/// A labelled set and the corpus it is searched over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Dataset {
    /// `hipporag-samples/hotpotqa_train.json` over `hotpotqa_train_corpus.json` (train).
    HippoHotpotTrain,
    /// `hipporag-samples/musique_train.json` over `musique_train_corpus.json` (train).
    HippoMusiqueTrain,
    /// `hotpotqa-distractor/ircot_format_hotpotqa_dev_subsampled_500.jsonl` over
    /// `derived_corpus_paragraphs.jsonl` (evaluation only: never tune on it).
    HotpotDistractorDev,
}

impl Dataset {
    /// All sets, train first.
    pub const ALL: [Dataset; 3] = [
        Dataset::HippoHotpotTrain,
        Dataset::HippoMusiqueTrain,
        Dataset::HotpotDistractorDev,
    ];

    /// Short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Dataset::HippoHotpotTrain => "hipporag-hotpotqa-train",
            Dataset::HippoMusiqueTrain => "hipporag-musique-train",
            Dataset::HotpotDistractorDev => "hotpotqa-distractor-dev",
        }
    }

    /// Whether parameters may be tuned on this set.
    pub fn is_train(self) -> bool {
        !matches!(self, Dataset::HotpotDistractorDev)
    }

    /// Questions file, relative to the shared data directory.
    pub fn questions_file(self) -> &'static str {
        match self {
            Dataset::HippoHotpotTrain => "hipporag-samples/hotpotqa_train.json",
            Dataset::HippoMusiqueTrain => "hipporag-samples/musique_train.json",
            Dataset::HotpotDistractorDev => {
                "hotpotqa-distractor/ircot_format_hotpotqa_dev_subsampled_500.jsonl"
            }
        }
    }

    /// Corpus file relative to the shared data directory, and its format.
    pub fn corpus(self) -> (&'static str, Format) {
        match self {
            Dataset::HippoHotpotTrain => (
                "hipporag-samples/hotpotqa_train_corpus.json",
                Format::Hipporag,
            ),
            Dataset::HippoMusiqueTrain => (
                "hipporag-samples/musique_train_corpus.json",
                Format::Hipporag,
            ),
            Dataset::HotpotDistractorDev => (
                "hotpotqa-distractor/derived_corpus_paragraphs.jsonl",
                Format::Hotpot,
            ),
        }
    }
}

/// One question and the paragraphs that answer it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Question {
    /// Question id from the file.
    pub id: String,
    /// Question text.
    pub question: String,
    /// Gold paragraphs as [`passage_key`]s.
    pub gold: Vec<String>,
}

/// Aggregated metrics over a question set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Questions evaluated.
    pub questions: usize,
    /// Mean fraction of gold paragraphs in the top 1.
    pub recall_at_1: f64,
    /// Mean fraction of gold paragraphs in the top 3.
    pub recall_at_3: f64,
    /// Mean fraction of gold paragraphs in the top 10.
    pub recall_at_10: f64,
    /// Mean reciprocal rank of the first gold paragraph within the top [`EVAL_DEPTH`].
    pub mrr: f64,
}

/// Identity of a paragraph for matching retrieved passages to gold ones: title and text with
/// whitespace collapsed, because the question files and corpora space sentences differently.
pub fn passage_key(title: &str, text: &str) -> String {
    let norm = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    format!("{}\u{1f}{}", norm(title), norm(text))
}

fn measure_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Measure(format!("{}: {e}", path.display()))
}

/// Loads the questions of `dataset` from the shared data directory.
pub fn load_questions(data_dir: &Path, dataset: Dataset) -> Result<Vec<Question>> {
    let path = data_dir.join(dataset.questions_file());
    let file = File::open(&path).map_err(|e| {
        measure_err(
            &path,
            format!("{e} (the shared data directory must hold the evaluation files)"),
        )
    })?;
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let mut out = Vec::new();
    match dataset {
        Dataset::HippoHotpotTrain => {
            let items: Vec<Value> =
                serde_json::from_reader(BufReader::new(file)).map_err(|e| measure_err(&path, e))?;
            for it in items {
                let supporting: HashSet<String> = it["supporting_facts"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|f| f[0].as_str().map(str::to_string))
                    .collect();
                let gold = it["context"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|c| c[0].as_str().is_some_and(|t| supporting.contains(t)))
                    .map(|c| {
                        let text: String = c[1]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|x| x.as_str())
                            .collect();
                        passage_key(&s(&c[0]), text.trim())
                    })
                    .collect();
                out.push(Question {
                    id: s(&it["_id"]),
                    question: s(&it["question"]),
                    gold,
                });
            }
        }
        Dataset::HippoMusiqueTrain => {
            let items: Vec<Value> =
                serde_json::from_reader(BufReader::new(file)).map_err(|e| measure_err(&path, e))?;
            for it in items {
                let gold = it["paragraphs"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|p| p["is_supporting"].as_bool() == Some(true))
                    .map(|p| passage_key(&s(&p["title"]), &s(&p["paragraph_text"])))
                    .collect();
                out.push(Question {
                    id: s(&it["id"]),
                    question: s(&it["question"]),
                    gold,
                });
            }
        }
        Dataset::HotpotDistractorDev => {
            for (n, line) in BufReader::new(file).lines().enumerate() {
                let line = line.map_err(|e| measure_err(&path, e))?;
                if line.trim().is_empty() {
                    continue;
                }
                let it: Value = serde_json::from_str(&line)
                    .map_err(|e| measure_err(&path, format!("line {}: {e}", n + 1)))?;
                let gold = it["contexts"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|p| p["is_supporting"].as_bool() == Some(true))
                    .map(|p| passage_key(&s(&p["title"]), &s(&p["paragraph_text"])))
                    .collect();
                out.push(Question {
                    id: s(&it["question_id"]),
                    question: s(&it["question_text"]),
                    gold,
                });
            }
        }
    }
    out.retain(|q| !q.gold.is_empty());
    if out.is_empty() {
        return Err(measure_err(&path, "no question with gold paragraphs"));
    }
    Ok(out)
}

/// Runs every question through `retriever` and aggregates the metrics.
pub fn evaluate(retriever: &dyn Retriever, questions: &[Question]) -> Result<Metrics> {
    let mut m = Metrics {
        questions: questions.len(),
        ..Metrics::default()
    };
    for q in questions {
        let hits = retriever.search(&q.question, EVAL_DEPTH)?;
        let gold: HashSet<&str> = q.gold.iter().map(String::as_str).collect();
        let found: Vec<bool> = hits
            .iter()
            .map(|h| gold.contains(passage_key(&h.title, &h.text).as_str()))
            .collect();
        let recall =
            |k: usize| found.iter().take(k).filter(|&&f| f).count() as f64 / gold.len() as f64;
        m.recall_at_1 += recall(1);
        m.recall_at_3 += recall(3);
        m.recall_at_10 += recall(10);
        if let Some(pos) = found.iter().position(|&f| f) {
            m.mrr += 1.0 / (pos + 1) as f64;
        }
    }
    let n = questions.len().max(1) as f64;
    m.recall_at_1 /= n;
    m.recall_at_3 /= n;
    m.recall_at_10 /= n;
    m.mrr /= n;
    Ok(m)
}

/// One line of an evaluation table.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalRow {
    /// Dataset name.
    pub dataset: String,
    /// `bm25` or `bm25+rerank`.
    pub method: String,
    /// The numbers.
    pub metrics: Metrics,
}

/// Renders rows as a Markdown table.
pub fn markdown_table(rows: &[EvalRow]) -> String {
    let mut s = String::from(
        "| dataset | method | questions | R@1 | R@3 | R@10 | MRR@10 |\n|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let m = &r.metrics;
        s.push_str(&format!(
            "| {} | {} | {} | {:.3} | {:.3} | {:.3} | {:.3} |\n",
            r.dataset, r.method, m.questions, m.recall_at_1, m.recall_at_3, m.recall_at_10, m.mrr
        ));
    }
    s
}

/// Where the evaluation shards for `dataset` live under `work_dir`.
pub fn shard_dir(work_dir: &Path, dataset: Dataset) -> PathBuf {
    work_dir.join(format!("eval-{}", dataset.name()))
}

/// Builds (or reuses, when already built from the same corpus) the shard of `dataset`.
pub fn ensure_shard(data_dir: &Path, work_dir: &Path, dataset: Dataset) -> Result<crate::Shard> {
    let (rel, format) = dataset.corpus();
    let corpus = data_dir.join(rel);
    if !corpus.is_file() {
        return Err(measure_err(
            &corpus,
            "missing (the shared data directory must hold the evaluation corpora)",
        ));
    }
    let dir = shard_dir(work_dir, dataset);
    if let Ok(shard) = crate::Shard::open(&dir) {
        if shard.meta().source == corpus.display().to_string() {
            return Ok(shard);
        }
    }
    crate::build_shard(&corpus, format, &dir, &crate::BuildOptions::default())?;
    crate::Shard::open(&dir)
}

/// A second stage (dense rerank) that turns a shard into a better retriever; lets the
/// evaluation compare with and without it without depending on the `rerank` feature.
pub trait SecondStage {
    /// A retriever that searches `shard` and re-scores its results.
    fn over<'a>(&'a self, shard: &'a crate::Shard) -> Box<dyn Retriever + 'a>;
}

/// Evaluates plain BM25 on every dataset; `rerank`, when given, is applied to each shard to
/// produce a second row per dataset.
pub fn run_standard(
    data_dir: &Path,
    work_dir: &Path,
    rerank: Option<&dyn SecondStage>,
) -> Result<Vec<EvalRow>> {
    let mut rows = Vec::new();
    for ds in Dataset::ALL {
        let questions = load_questions(data_dir, ds)?;
        let shard = ensure_shard(data_dir, work_dir, ds)?;
        rows.push(EvalRow {
            dataset: ds.name().into(),
            method: "bm25".into(),
            metrics: evaluate(&shard, &questions)?,
        });
        if let Some(stage) = rerank {
            let r = stage.over(&shard);
            rows.push(EvalRow {
                dataset: ds.name().into(),
                method: "bm25+rerank".into(),
                metrics: evaluate(r.as_ref(), &questions)?,
            });
        }
        tracing::info!(dataset = ds.name(), "evaluated");
    }
    Ok(rows)
}
