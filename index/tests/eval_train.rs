//! Retrieval quality on the train samples (development data). The thresholds sit a little
//! below the measured values, so a regression in the analyzer, the query or the scoring fails.

mod common;

use small_agent_index::eval::{ensure_shard, evaluate, load_questions, Dataset};

#[test]
fn bm25_quality_on_hipporag_train_samples() {
    let data = common::data_dir();
    let work = tempfile::tempdir().unwrap();
    for (ds, min_r10, min_mrr) in [
        (Dataset::HippoHotpotTrain, MIN_HOTPOT.0, MIN_HOTPOT.1),
        (Dataset::HippoMusiqueTrain, MIN_MUSIQUE.0, MIN_MUSIQUE.1),
    ] {
        let qs = load_questions(&data, ds).unwrap();
        assert_eq!(qs.len(), 100);
        assert!(qs.iter().all(|q| q.gold.len() >= 2));
        let shard = ensure_shard(&data, work.path(), ds).unwrap();
        let m = evaluate(&shard, &qs).unwrap();
        assert!(m.recall_at_1 <= m.recall_at_3 && m.recall_at_3 <= m.recall_at_10);
        assert!(
            m.recall_at_10 >= min_r10,
            "{}: R@10 {:.3} < {min_r10}",
            ds.name(),
            m.recall_at_10
        );
        assert!(
            m.mrr >= min_mrr,
            "{}: MRR {:.3} < {min_mrr}",
            ds.name(),
            m.mrr
        );
    }
}

const MIN_HOTPOT: (f64, f64) = (0.85, 0.88);
const MIN_MUSIQUE: (f64, f64) = (0.58, 0.80);
