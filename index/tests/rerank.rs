//! Dense rerank with the real int8 MiniLM through ONNX Runtime (feature `rerank`).
#![cfg(feature = "rerank")]

mod common;

use small_agent_index::rerank::{RerankAssets, Reranked, Reranker};
use small_agent_index::{build_shard, BuildOptions, Format, Retriever, Shard};

fn assets() -> RerankAssets {
    RerankAssets {
        onnxruntime: common::asset("onnxruntime", "libonnxruntime.so.1.32.0"),
        model: common::asset("minilm-l6-int8", "model.onnx"),
        tokenizer: common::asset("minilm-l6-tokenizer", "tokenizer.json"),
    }
}

#[test]
fn embeddings_are_normalised_and_semantic() {
    let r = Reranker::load(&assets()).unwrap();
    let v = r
        .embed(&[
            "A cat sits on the mat.",
            "A kitten is resting on a rug.",
            "Stock markets fell sharply on Monday.",
        ])
        .unwrap();
    assert_eq!(v.len(), 3);
    assert!(v.iter().all(|e| e.len() == 384));
    let norm: f32 = v[0].iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-3);
    let cos = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    assert!(cos(&v[0], &v[1]) > cos(&v[0], &v[2]) + 0.2);
}

#[test]
fn rerank_changes_the_order_of_a_known_query() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = common::data_file("hipporag-samples/musique_train_corpus.json");
    let out = dir.path().join("s");
    build_shard(&corpus, Format::Hipporag, &out, &BuildOptions::default()).unwrap();
    let shard = Shard::open(&out).unwrap();
    let reranker = Reranker::load(&assets()).unwrap();
    let reranked = Reranked::new(&shard, &reranker);

    let query = rerank_query();
    let plain = shard.search(query.0, 10).unwrap();
    let dense = reranked.search(query.0, 10).unwrap();
    let rank = |hits: &[small_agent_index::Hit]| hits.iter().position(|h| h.title == query.1);
    let (p, d) = (rank(&plain), rank(&dense));
    assert!(d.is_some(), "gold passage missing after rerank");
    assert!(
        p.is_none_or(|p| d.unwrap() < p),
        "rerank should promote {:?}: bm25 rank {p:?}, rerank rank {d:?}",
        query.1
    );
    // Reranked hits come from the BM25 candidates, ranked 1.. with descending fused scores.
    let candidates: Vec<String> = shard
        .search(query.0, 50)
        .unwrap()
        .into_iter()
        .map(|h| h.id)
        .collect();
    assert!(dense.iter().all(|h| candidates.contains(&h.id)));
    assert!(dense.windows(2).all(|w| w[0].score >= w[1].score));
    assert_eq!(dense[0].rank, 1);
    // The same session serves repeated queries with identical results.
    assert_eq!(reranked.search(query.0, 10).unwrap(), dense);
}

/// A paraphrased question whose answer passage shares few words with it.
fn rerank_query() -> (&'static str, &'static str) {
    // A MuSiQue train question: BM25 ranks the play below passages that merely share
    // "author" / "citizen"; the embedder sees that "Brand" is the work in question.
    (
        "What country was the author of Brand a citizen of?",
        "Brand (play)",
    )
}
