//! A small measuring harness for the agent: question files of the shared data, a lenient
//! answer check, and per-configuration rates (parse errors, accuracy, steps, time). It backs
//! `small-agent bench agent`; the full evaluation (judges, symbolic math) is a separate job.
use std::path::Path;

use serde::Serialize;

/// One question with its gold answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Question {
    /// The question.
    pub question: String,
    /// The gold answer.
    pub answer: String,
}

/// Errors of reading a question file.
#[derive(Debug, thiserror::Error)]
pub enum QuestionsError {
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not one of the known layouts.
    #[error(
        "{path} is not a question file: expected a JSON list of {{question, answer}} objects \
         (HippoRAG samples) or {{examples: [{{question, answer}}]}} (agent-distillation sets)"
    )]
    Layout {
        /// The file.
        path: String,
    },
}

/// Questions of a file, and how many items had no gold answer (`null`) and were left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Questions {
    /// The questions with a gold answer, in file order.
    pub items: Vec<Question>,
    /// Items skipped because their answer is `null`.
    pub skipped_without_answer: usize,
}

/// Reads `[{question, answer, …}]` or `{examples: [{question, answer, …}]}`.
pub fn load_questions(path: &Path) -> Result<Questions, QuestionsError> {
    let text = std::fs::read_to_string(path).map_err(|source| QuestionsError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let layout = || QuestionsError::Layout {
        path: path.display().to_string(),
    };
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|_| layout())?;
    let items = match &v {
        serde_json::Value::Array(a) => a,
        serde_json::Value::Object(o) => o
            .get("examples")
            .and_then(|e| e.as_array())
            .ok_or_else(layout)?,
        _ => return Err(layout()),
    };
    let mut out = Questions {
        items: Vec::new(),
        skipped_without_answer: 0,
    };
    for q in items {
        let field = |k: &str| match q.get(k) {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        let question = field("question").ok_or_else(layout)?;
        match (field("answer"), q.get("answer")) {
            (Some(answer), _) => out.items.push(Question { question, answer }),
            (None, Some(serde_json::Value::Null)) => out.skipped_without_answer += 1,
            _ => return Err(layout()),
        }
    }
    Ok(out)
}

/// Lower case, punctuation and articles removed, whitespace collapsed (SQuAD-style).
pub fn normalize(s: &str) -> String {
    let lowered: String = s
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c.is_whitespace() || c == '.' {
                c
            } else {
                ' '
            }
        })
        .collect();
    lowered
        .split_whitespace()
        .map(|w| w.trim_end_matches('.'))
        .filter(|w| !w.is_empty() && !["a", "an", "the"].contains(w))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The content of the last `\boxed{…}` (nested braces), if any.
pub fn boxed(s: &str) -> Option<&str> {
    let start = s.rfind("\\boxed{")? + "\\boxed{".len();
    let mut depth = 1;
    for (i, c) in s[start..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(&s[start..start + i]);
                }
            }
            _ => {}
        }
    }
    None
}

fn as_number(s: &str) -> Option<f64> {
    let t: String = s
        .trim()
        .trim_start_matches('$')
        .trim_end_matches('$')
        .chars()
        .filter(|c| *c != ',' && !c.is_whitespace())
        .collect();
    if let Some((n, d)) = t.split_once('/') {
        return Some(n.parse::<f64>().ok()? / d.parse::<f64>().ok()?);
    }
    t.parse().ok()
}

/// A lenient check: numbers equal within a relative 1e-4, else the normalized gold answer
/// equals or is contained in the normalized prediction.
pub fn answer_matches(prediction: &str, gold: &str) -> bool {
    let pred = boxed(prediction).unwrap_or(prediction);
    let gold = boxed(gold).unwrap_or(gold);
    if let (Some(p), Some(g)) = (as_number(pred), as_number(gold)) {
        return (p - g).abs() <= 1e-4 * g.abs().max(1.0);
    }
    let (p, g) = (normalize(pred), normalize(gold));
    !g.is_empty() && (p == g || format!(" {p} ").contains(&format!(" {g} ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_match_leniently_but_not_loosely() {
        assert!(answer_matches("The answer is Paris.", "Paris"));
        assert!(answer_matches("\\boxed{-6}", "-6"));
        assert!(answer_matches("0.5", "1/2"));
        assert!(answer_matches("1,000", "1000"));
        assert!(!answer_matches("Parisian", "Paris"));
        assert!(!answer_matches("7", "-6"));
        assert!(!answer_matches("", "a spirit"));
        assert_eq!(boxed("x \\boxed{\\frac{1}{2}} y"), Some("\\frac{1}{2}"));
    }

    #[test]
    fn both_shared_layouts_load() {
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data");
        let hotpot = data.join("hipporag-samples/hotpotqa_train.json");
        let math = data.join("agent-distillation/math/train/math_medium_1000_20250430.json");
        for (p, n) in [(&hotpot, 100), (&math, 1000)] {
            let q = load_questions(p)
                .unwrap_or_else(|e| panic!("{e} (the shared data must be at ../shared/data)"));
            assert_eq!(
                q.items.len() + q.skipped_without_answer,
                n,
                "{}",
                p.display()
            );
            assert!(
                q.items.len() > n * 9 / 10,
                "{}: {}",
                p.display(),
                q.items.len()
            );
            assert!(q
                .items
                .iter()
                .all(|q| !q.question.is_empty() && !q.answer.is_empty()));
        }
    }
}
