//! Sweeps the title boost (and, with `rerank`, the dense weight) on the TRAIN samples only:
//! `cargo run --release -p small-agent-index --example index_tune [--features rerank] --
//! DATA_DIR WORK_DIR [ONNXRUNTIME_SO MODEL_ONNX TOKENIZER_JSON]`.

use std::path::PathBuf;

use small_agent_index::eval::{ensure_shard, evaluate, load_questions, Dataset};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let data = PathBuf::from(args.first().map(String::as_str).unwrap_or("../shared/data"));
    let work = PathBuf::from(
        args.get(1)
            .map(String::as_str)
            .unwrap_or("target/index-eval"),
    );
    let train: Vec<Dataset> = Dataset::ALL.into_iter().filter(|d| d.is_train()).collect();
    let mut shards = Vec::new();
    for ds in &train {
        shards.push((
            ds,
            ensure_shard(&data, &work, *ds)?,
            load_questions(&data, *ds)?,
        ));
    }
    if args.iter().any(|a| a == "--k1b") {
        return k1_b_grid(&data, &train);
    }
    println!("title_boost | dataset | R@1 | R@3 | R@10 | MRR");
    for boost in [0.0f32, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0] {
        let mut mean = 0.0;
        for (ds, shard, qs) in shards.iter_mut() {
            shard.set_title_boost(boost);
            let m = evaluate(shard, qs)?;
            mean += (m.recall_at_10 + m.mrr) / 2.0;
            println!(
                "{boost} | {} | {:.3} | {:.3} | {:.3} | {:.3}",
                ds.name(),
                m.recall_at_1,
                m.recall_at_3,
                m.recall_at_10,
                m.mrr
            );
        }
        println!(
            "{boost} | mean(R@10,MRR) over train | {:.4}",
            mean / shards.len() as f64
        );
    }
    #[cfg(feature = "rerank")]
    if args.len() >= 5 {
        use small_agent_index::rerank::{RerankAssets, Reranked, Reranker};
        let reranker = Reranker::load(&RerankAssets {
            onnxruntime: args[2].clone().into(),
            model: args[3].clone().into(),
            tokenizer: args[4].clone().into(),
        })?;
        for (_, shard, _) in shards.iter_mut() {
            shard.set_title_boost(small_agent_index::shard::DEFAULT_TITLE_BOOST);
        }
        println!("dense_weight | dataset | R@1 | R@3 | R@10 | MRR");
        for w in [0.0f32, 0.3, 0.5, 0.7, 0.85, 1.0] {
            for (ds, shard, qs) in shards.iter() {
                let r = Reranked {
                    dense_weight: w,
                    ..Reranked::new(shard, &reranker)
                };
                let m = evaluate(&r, qs)?;
                println!(
                    "{w} | {} | {:.3} | {:.3} | {:.3} | {:.3}",
                    ds.name(),
                    m.recall_at_1,
                    m.recall_at_3,
                    m.recall_at_10,
                    m.mrr
                );
            }
        }
    }
    Ok(())
}

/// k1/b/boost grid with the exact in-memory BM25 (train samples only); prints the mean of
/// R@10 and MRR over the train sets for each setting, best last.
fn k1_b_grid(data: &std::path::Path, train: &[Dataset]) -> Result<(), Box<dyn std::error::Error>> {
    use small_agent_index::tune::{Bm25Params, ExactBm25, TANTIVY_BM25};
    use small_agent_index::{read_passages, IngestOptions};
    let mut sets = Vec::new();
    for ds in train {
        let (rel, format) = ds.corpus();
        let mut ps = Vec::new();
        read_passages(
            &data.join(rel),
            format,
            &IngestOptions::default(),
            &mut |p| {
                ps.push(p);
                Ok(())
            },
        )?;
        sets.push((ExactBm25::new(&ps), load_questions(data, *ds)?));
    }
    let score = |p: Bm25Params| {
        sets.iter()
            .map(|(idx, qs)| {
                let m = idx.evaluate(qs, p);
                (m.recall_at_10 + m.mrr) / 2.0
            })
            .sum::<f64>()
            / sets.len() as f64
    };
    let mut results = Vec::new();
    for k1 in [0.6f32, 0.9, 1.2, 1.5, 2.0] {
        for b in [0.3f32, 0.5, 0.75, 0.9] {
            for title_boost in [1.0f32, 1.5, 2.0] {
                let p = Bm25Params { k1, b, title_boost };
                results.push((score(p), p));
            }
        }
    }
    results.sort_by(|a, b| a.0.total_cmp(&b.0));
    for (s, p) in &results {
        println!("k1 {} b {} boost {} -> {:.4}", p.k1, p.b, p.title_boost, s);
    }
    println!(
        "tantivy fixed (k1 1.2, b 0.75, boost {}) -> {:.4}",
        TANTIVY_BM25.title_boost,
        score(TANTIVY_BM25)
    );
    Ok(())
}
