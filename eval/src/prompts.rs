//! The prompts of the evaluation modes, read from `models/prompts/` (embedded at build
//! time; a file given on the command line replaces them), and the strict judge verdict.
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Built-in chain-of-thought prompts.
pub const COT_TEMPLATE: &str = include_str!("../../models/prompts/eval-cot.toml");
/// Built-in judge prompt.
pub const JUDGE_TEMPLATE: &str = include_str!("../../models/prompts/eval-judge.toml");

/// Errors of reading a prompt file.
#[derive(Debug, thiserror::Error)]
pub enum PromptFileError {
    /// Cannot read it.
    #[error("cannot read prompt file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// OS error.
        source: std::io::Error,
    },
    /// Not the expected TOML.
    #[error("prompt file {name}: {reason}")]
    Parse {
        /// The file or built-in name.
        name: String,
        /// What is wrong.
        reason: String,
    },
}

/// Prompts of `--mode cot` and `--mode cot-rag`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CotPrompts {
    /// System message for factual questions.
    pub factual_system: String,
    /// System message for math questions.
    pub math_system: String,
    /// User turn of `cot` (`{question}`).
    pub task: String,
    /// User turn of `cot-rag` (`{passages}`, `{question}`).
    pub rag_task: String,
}

/// Prompt of the judge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JudgePrompt {
    /// System message.
    pub system: String,
    /// User turn (`{question}`, `{gold}`, `{prediction}`).
    pub task: String,
}

fn parse<T: serde::de::DeserializeOwned>(
    name: &str,
    text: &str,
    required: &[(&str, &[&str])],
) -> Result<T, PromptFileError> {
    let err = |reason: String| PromptFileError::Parse {
        name: name.to_owned(),
        reason,
    };
    let table: toml::Table = toml::from_str(text).map_err(|e| err(e.to_string()))?;
    for (key, placeholders) in required {
        let v = table
            .get(*key)
            .and_then(|v| v.as_str())
            .ok_or_else(|| err(format!("missing string `{key}`")))?;
        for p in *placeholders {
            if !v.contains(&format!("{{{p}}}")) {
                return Err(err(format!("`{key}` lacks the placeholder {{{p}}}")));
            }
        }
    }
    toml::from_str(text).map_err(|e| err(e.to_string()))
}

impl CotPrompts {
    /// Parses a prompt file's text (placeholders checked).
    pub fn parse(name: &str, text: &str) -> Result<Self, PromptFileError> {
        parse(
            name,
            text,
            &[
                ("factual_system", &[]),
                ("math_system", &[]),
                ("task", &["question"]),
                ("rag_task", &["passages", "question"]),
            ],
        )
    }
    /// The built-in prompts.
    pub fn builtin() -> Self {
        Self::parse("eval-cot.toml", COT_TEMPLATE).expect("the built-in CoT prompt parses")
    }
}

impl JudgePrompt {
    /// Parses a prompt file's text (placeholders checked).
    pub fn parse(name: &str, text: &str) -> Result<Self, PromptFileError> {
        parse(
            name,
            text,
            &[
                ("system", &[]),
                ("task", &["question", "gold", "prediction"]),
            ],
        )
    }
    /// The built-in prompt.
    pub fn builtin() -> Self {
        Self::parse("eval-judge.toml", JUDGE_TEMPLATE).expect("the built-in judge prompt parses")
    }
}

/// Reads a prompt file.
pub fn read_prompt_file(path: &Path) -> Result<String, PromptFileError> {
    std::fs::read_to_string(path).map_err(|source| PromptFileError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// Replaces `{name}` placeholders in one pass (values are not scanned again).
pub fn fill(template: &str, vars: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    'outer: while let Some(i) = rest.find('{') {
        out.push_str(&rest[..i]);
        let after = &rest[i..];
        for (k, v) in vars {
            let key = format!("{{{k}}}");
            if after.starts_with(&key) {
                out.push_str(v);
                rest = &after[key.len()..];
                continue 'outer;
            }
        }
        out.push('{');
        rest = &after[1..];
    }
    out.push_str(rest);
    out.trim().to_owned()
}

/// The judge's verdict, strictly: the whole reply, trimmed, must be `CORRECT` or
/// `INCORRECT` (any case, one optional final period). Anything else is `None`.
pub fn parse_verdict(reply: &str) -> Option<bool> {
    let t = reply.trim();
    let t = t.strip_suffix('.').unwrap_or(t).trim();
    match t.to_ascii_uppercase().as_str() {
        "CORRECT" => Some(true),
        "INCORRECT" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_parse() {
        let c = CotPrompts::builtin();
        assert!(c.factual_system.contains("<answer>"));
        assert!(c.math_system.contains("\\boxed{}"));
        JudgePrompt::builtin();
        assert!(CotPrompts::parse(
            "x",
            "factual_system='a'\nmath_system='b'\ntask='q'\nrag_task='{passages} {question}'"
        )
        .is_err());
    }

    #[test]
    fn fill_does_not_rescan_values() {
        assert_eq!(
            fill("Q: {question} {x}", &[("question", "{x}"), ("x", "1")]),
            "Q: {x} 1"
        );
    }

    #[test]
    fn verdicts_are_strict() {
        assert_eq!(parse_verdict("CORRECT"), Some(true));
        assert_eq!(parse_verdict(" incorrect.\n"), Some(false));
        assert_eq!(parse_verdict("Correct"), Some(true));
        assert_eq!(parse_verdict("CORRECT, because"), None);
        assert_eq!(parse_verdict("The answer is correct"), None);
        assert_eq!(parse_verdict("yes"), None);
        assert_eq!(parse_verdict(""), None);
    }
}
