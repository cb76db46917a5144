//! `manifest.json`: what a dataset directory holds and how it was made.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The `format` field of every manifest.
pub const FORMAT_NAME: &str = "small-agent-distill-dataset";
/// The layout version this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// The whole manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    /// Always [`FORMAT_NAME`].
    pub format: String,
    /// The layout version ([`FORMAT_VERSION`]).
    pub version: u32,
    /// The code that wrote it (crate version, git commit).
    pub created_by: Value,
    /// The trajectory files read, in the order given.
    pub sources: Vec<SourceStats>,
    /// The same numbers by the trajectories' `source` field (`fireact`, `qsolv`, `teacher`,
    /// …), whichever file they came in; `path`, `sha256` are empty there and `lines` counts
    /// the trajectories read.
    pub by_source: BTreeMap<String, SourceStats>,
    /// `train` and `val`.
    pub splits: BTreeMap<String, SplitStats>,
    /// Trajectories left out, by reason (every reason present, zeros included).
    pub dropped: BTreeMap<String, usize>,
    /// The tokenizer.
    pub tokenizer: TokenizerInfo,
    /// The chat template, shown by what it makes of a fixed conversation.
    pub chat_template: ChatTemplateInfo,
    /// The student prompt that replaced the teacher's system and task turns.
    pub student_prompt: StudentPromptInfo,
    /// Examples longer than this many tokens were dropped (never truncated).
    pub max_len: usize,
    /// Target fraction of questions in `val`.
    pub val_frac: f64,
    /// Seed of the split hash.
    pub seed: u64,
    /// How an example's split is decided.
    pub split_rule: String,
    /// Which tokens have mask 1.
    pub mask_rule: String,
    /// The text the step grammar forces at the start of every reply, whose tokenization was
    /// checked against the examples' (`None`: not checked).
    pub grammar_prefill: Option<String>,
}

/// One source file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SourceStats {
    /// The path as given.
    pub path: String,
    /// SHA-256 of the file.
    pub sha256: String,
    /// Trajectory lines read.
    pub lines: usize,
    /// Examples written, per split.
    pub examples: BTreeMap<String, usize>,
    /// Trajectories left out, by reason (only reasons that occurred).
    pub dropped: BTreeMap<String, usize>,
    /// Lengths of its written examples (both splits).
    pub tokens: LengthStats,
}

/// Length statistics of a set of examples.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LengthStats {
    /// Examples.
    pub examples: usize,
    /// Tokens, all examples together.
    pub total: u64,
    /// Tokens with mask 1.
    pub masked: u64,
    /// `masked / total` (0 when empty).
    pub masked_fraction: f64,
    /// Mean example length.
    pub mean: f64,
    /// Median example length (nearest rank).
    pub p50: usize,
    /// 90th percentile example length (nearest rank).
    pub p90: usize,
    /// Longest example.
    pub max: usize,
}

impl LengthStats {
    /// Statistics of examples given as `(length, masked tokens)`.
    pub fn of(examples: &[(usize, usize)]) -> Self {
        if examples.is_empty() {
            return Self::default();
        }
        let mut lens: Vec<usize> = examples.iter().map(|e| e.0).collect();
        lens.sort_unstable();
        let total: u64 = lens.iter().map(|&l| l as u64).sum();
        let masked: u64 = examples.iter().map(|e| e.1 as u64).sum();
        // Nearest rank: the smallest length with at least q of the examples at or below it.
        let rank =
            |q: f64| lens[((q * lens.len() as f64).ceil() as usize).clamp(1, lens.len()) - 1];
        Self {
            examples: lens.len(),
            total,
            masked,
            masked_fraction: masked as f64 / total.max(1) as f64,
            mean: total as f64 / lens.len() as f64,
            p50: rank(0.5),
            p90: rank(0.9),
            max: *lens.last().expect("not empty"),
        }
    }
}

/// One split.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SplitStats {
    /// Examples.
    pub examples: usize,
    /// Distinct questions (by normalised text).
    pub questions: usize,
    /// Tokens.
    pub tokens: u64,
    /// Tokens with mask 1.
    pub masked_tokens: u64,
}

/// The tokenizer used.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TokenizerInfo {
    /// The GGUF file.
    pub path: String,
    /// Its SHA-256.
    pub sha256: String,
    /// Vocabulary size (every token id is below it).
    pub n_vocab: u32,
    /// Tokens come from `Model::tokenize(text, add_bos = true)`, as at inference.
    pub add_bos: bool,
}

/// The chat template, identified by its output.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChatTemplateInfo {
    /// What the template makes of the conversation system `{system}`, user `{user}`,
    /// assistant `{assistant}`.
    pub probe: String,
    /// The same with the assistant turn opened after the user turn (`add_assistant`).
    pub probe_open: String,
    /// SHA-256 of `probe` followed by `probe_open`.
    pub sha256: String,
}

/// The student's prompt.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StudentPromptInfo {
    /// Where the template came from (`built-in agent-default.toml` or a file).
    pub template: String,
    /// SHA-256 of the template file's text.
    pub template_sha256: String,
    /// The system message as rendered (tools and step budget filled in).
    pub system: String,
    /// SHA-256 of `system`.
    pub system_sha256: String,
    /// The step budget written into it.
    pub max_steps: usize,
    /// The tools it lists.
    pub tools: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_statistics_use_nearest_ranks() {
        let s = LengthStats::of(&[(10, 1), (20, 2), (30, 3), (40, 4), (100, 10)]);
        assert_eq!(
            (s.p50, s.p90, s.max, s.total, s.masked),
            (30, 100, 100, 200, 20)
        );
        assert!((s.mean - 40.0).abs() < 1e-9 && (s.masked_fraction - 0.1).abs() < 1e-9);
        assert_eq!(LengthStats::of(&[]), LengthStats::default());
    }
}
