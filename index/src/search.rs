//! The retrieval seam: a [`Retriever`] returns ranked [`Hit`]s for free text. The local tantivy
//! shard implements it today; a remote engine (Quickwit, OpenSearch) can implement it later
//! without the agent noticing.

use serde::{Deserialize, Serialize};

use crate::error::Result;

/// How many passages the agent's `web_search` tool shows (the reference agent showed 3).
pub const AGENT_TOP_K: usize = 3;
/// Default `k` for the CLI's `index search`.
pub const DEFAULT_K: usize = 10;

/// One search result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hit {
    /// 1-based rank.
    pub rank: usize,
    /// Relevance score; higher is better. BM25 for lexical search, the fused score after rerank.
    pub score: f32,
    /// Passage id from the source corpus.
    pub id: String,
    /// Article title.
    pub title: String,
    /// Passage text.
    pub text: String,
}

/// Anything that answers free-text queries with ranked passages.
pub trait Retriever {
    /// Returns at most `k` hits, best first, ranks starting at 1. Any user text is a valid
    /// query: there is no query syntax that can fail to parse.
    fn search(&self, query: &str, k: usize) -> Result<Vec<Hit>>;
}

/// Renders hits the way the reference agent's `web_search` tool did (BRIEF §3): each passage
/// headed by its rank and score, its body `"Title"\ntext`, passages separated by a blank line.
pub fn format_for_agent(hits: &[Hit]) -> String {
    if hits.is_empty() {
        return "No passages matched the query. Try other keywords.".to_string();
    }
    let mut out = String::new();
    for (i, hit) in hits.iter().take(AGENT_TOP_K).enumerate() {
        if i > 0 {
            out.push_str("\n\n");
        }
        out.push_str(&format!(
            "Result {} (score {:.3}):\n\"{}\"\n{}",
            hit.rank,
            hit.score,
            hit.title,
            hit.text.trim()
        ));
    }
    out
}

/// Runs `query` through `retriever` and formats its top [`AGENT_TOP_K`] for the agent.
pub fn agent_search(retriever: &dyn Retriever, query: &str) -> Result<String> {
    Ok(format_for_agent(&retriever.search(query, AGENT_TOP_K)?))
}

/// Turns raw bytes (a query read from a file or a pipe) into query text: invalid UTF-8
/// becomes U+FFFD, which the analyzer drops, instead of an error.
pub fn query_from_bytes(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_format_shows_three_with_rank_score_and_quoted_title() {
        let hits: Vec<Hit> = (1..=5)
            .map(|r| Hit {
                rank: r,
                score: 10.0 / r as f32,
                id: r.to_string(),
                title: format!("T{r}"),
                text: format!("body {r} "),
            })
            .collect();
        let s = format_for_agent(&hits);
        assert_eq!(
            s,
            "Result 1 (score 10.000):\n\"T1\"\nbody 1\n\n\
             Result 2 (score 5.000):\n\"T2\"\nbody 2\n\n\
             Result 3 (score 3.333):\n\"T3\"\nbody 3"
        );
        assert!(format_for_agent(&[]).starts_with("No passages"));
    }
}
