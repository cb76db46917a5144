//! Knowledge shards for the small-agent `web_search` tool.
//!
//! * [`ingest`] streams corpora (JSONL, DPR TSV, HippoRAG/2Wiki JSON, ovos summaries,
//!   MediaWiki XML dumps) into [`Passage`]s in constant memory.
//! * [`shard`] builds a tantivy BM25 index from them into a temporary directory and swaps it
//!   into place atomically; [`Shard`] opens and searches it.
//! * [`search`] holds the [`Retriever`] seam and the agent's result formatting.
//! * `rerank` (feature `rerank`) re-scores BM25 candidates with a MiniLM ONNX embedder.
//! * [`eval`] measures recall@k and MRR on labelled data; [`bench`](mod@bench) measures speed;
//!   [`tune`] is the train-only parameter harness.
#![warn(missing_docs)]

pub mod bench;
pub mod error;
pub mod eval;
pub mod ingest;
#[cfg(feature = "rerank")]
pub mod rerank;
pub mod search;
pub mod shard;
pub mod tune;

pub use error::{Error, Result};
pub use ingest::{read_passages, Format, IngestOptions, IngestStats, Malformed, Passage};
pub use search::{agent_search, format_for_agent, Hit, Retriever, AGENT_TOP_K, DEFAULT_K};
pub use shard::{build_shard, build_shard_from_iter, BuildOptions, BuildReport, Shard, ShardMeta};

#[cfg(test)]
mod thread_safety {
    /// The runtime shares one open shard (and one reranker) between threads.
    #[test]
    fn shard_and_reranker_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<crate::Shard>();
        #[cfg(feature = "rerank")]
        check::<crate::rerank::Reranker>();
    }
}
