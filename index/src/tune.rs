//! An exact, in-memory BM25 over a small corpus with free `k1`, `b` and title boost, used only
//! to choose parameters on the train samples. tantivy fixes k1 = 1.2 and b = 0.75 in its
//! scorer (and needs them fixed for block-max WAND), so this harness answers the question
//! "how much do we lose by not tuning them?" with the same analyzer and the same fields.

use std::collections::HashMap;

use crate::eval::{passage_key, Metrics, Question, EVAL_DEPTH};
use crate::ingest::Passage;
use crate::shard::{analyzer, MAX_QUERY_TERMS};

/// BM25 parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bm25Params {
    /// Term-frequency saturation.
    pub k1: f32,
    /// Length normalisation.
    pub b: f32,
    /// Weight of title matches relative to body matches.
    pub title_boost: f32,
}

/// tantivy's built-in values with our default boost.
pub const TANTIVY_BM25: Bm25Params = Bm25Params {
    k1: 1.2,
    b: 0.75,
    title_boost: crate::shard::DEFAULT_TITLE_BOOST,
};

struct FieldIndex {
    postings: HashMap<String, Vec<(u32, u32)>>,
    lengths: Vec<u32>,
    avg: f32,
}

fn tokens(text: &str) -> Vec<String> {
    let mut a = analyzer();
    let mut s = a.token_stream(text);
    let mut out = Vec::new();
    while let Some(t) = s.next() {
        out.push(t.text.clone());
    }
    out
}

impl FieldIndex {
    fn new<'a>(texts: impl Iterator<Item = &'a str>) -> FieldIndex {
        let mut postings: HashMap<String, Vec<(u32, u32)>> = HashMap::new();
        let mut lengths = Vec::new();
        for (doc, text) in texts.enumerate() {
            let toks = tokens(text);
            lengths.push(toks.len() as u32);
            let mut tf: HashMap<String, u32> = HashMap::new();
            for t in toks {
                *tf.entry(t).or_default() += 1;
            }
            for (t, f) in tf {
                postings.entry(t).or_default().push((doc as u32, f));
            }
        }
        let avg = lengths.iter().map(|&l| l as f32).sum::<f32>() / lengths.len().max(1) as f32;
        FieldIndex {
            postings,
            lengths,
            avg,
        }
    }

    fn add_scores(&self, term: &str, k1: f32, b: f32, weight: f32, scores: &mut [f32]) {
        let Some(list) = self.postings.get(term) else {
            return;
        };
        let n = self.lengths.len() as f32;
        let df = list.len() as f32;
        let idf = (1.0 + (n - df + 0.5) / (df + 0.5)).ln();
        for &(doc, tf) in list {
            let tf = tf as f32;
            let norm = k1 * (1.0 - b + b * self.lengths[doc as usize] as f32 / self.avg.max(1e-6));
            scores[doc as usize] += weight * idf * tf * (k1 + 1.0) / (tf + norm);
        }
    }
}

/// An exact BM25 index of a small corpus.
pub struct ExactBm25 {
    keys: Vec<String>,
    title: FieldIndex,
    text: FieldIndex,
}

impl ExactBm25 {
    /// Indexes `passages` (kept in memory: for corpora of a few thousand passages only).
    pub fn new(passages: &[Passage]) -> ExactBm25 {
        ExactBm25 {
            keys: passages
                .iter()
                .map(|p| passage_key(&p.title, &p.text))
                .collect(),
            title: FieldIndex::new(passages.iter().map(|p| p.title.as_str())),
            text: FieldIndex::new(passages.iter().map(|p| p.text.as_str())),
        }
    }

    /// Recall@1/3/10 and MRR@10 with the given parameters.
    pub fn evaluate(&self, questions: &[Question], p: Bm25Params) -> Metrics {
        let mut m = Metrics {
            questions: questions.len(),
            ..Metrics::default()
        };
        let mut scores = vec![0f32; self.keys.len()];
        for q in questions {
            scores.iter_mut().for_each(|s| *s = 0.0);
            let mut seen: Vec<String> = Vec::new();
            for t in tokens(&q.question) {
                if seen.contains(&t) || seen.len() == MAX_QUERY_TERMS {
                    continue;
                }
                self.title
                    .add_scores(&t, p.k1, p.b, p.title_boost, &mut scores);
                self.text.add_scores(&t, p.k1, p.b, 1.0, &mut scores);
                seen.push(t);
            }
            let mut order: Vec<usize> = (0..scores.len()).filter(|&i| scores[i] > 0.0).collect();
            order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
            order.truncate(EVAL_DEPTH);
            let found: Vec<bool> = order
                .iter()
                .map(|&i| q.gold.contains(&self.keys[i]))
                .collect();
            let g = q.gold.len().max(1) as f64;
            let recall = |k: usize| found.iter().take(k).filter(|&&f| f).count() as f64 / g;
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
        m
    }
}
