//! Factual scoring, SQuAD style: normalised exact match, token F1 and "answer contained",
//! each the best over the accepted gold answers.
use serde::{Deserialize, Serialize};

/// SQuAD normalisation: lower case, punctuation removed, the articles a/an/the removed,
/// whitespace collapsed.
pub fn normalize(s: &str) -> String {
    let lowered = s.to_lowercase();
    let no_punct: String = lowered
        .chars()
        .map(|c| if is_punctuation(c) { ' ' } else { c })
        .collect();
    no_punct
        .split_whitespace()
        .filter(|w| !matches!(*w, "a" | "an" | "the"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// ASCII punctuation plus the common typographic marks (SQuAD removes `string.punctuation`;
/// curly quotes and dashes are common in Wikipedia answers).
fn is_punctuation(c: char) -> bool {
    c.is_ascii_punctuation()
        || matches!(
            c,
            '‘' | '’' | '“' | '”' | '–' | '—' | '…' | '«' | '»' | '·' | '′' | '″'
        )
}

/// Normalised exact match.
pub fn exact_match(prediction: &str, gold: &str) -> bool {
    normalize(prediction) == normalize(gold)
}

/// Token F1 of the normalised strings. As in the HotpotQA scorer, a yes/no/noanswer answer
/// on either side scores 0 unless both are the same.
pub fn f1(prediction: &str, gold: &str) -> f64 {
    let p = normalize(prediction);
    let g = normalize(gold);
    let special = |s: &str| matches!(s, "yes" | "no" | "noanswer");
    if (special(&p) || special(&g)) && p != g {
        return 0.0;
    }
    let pt: Vec<&str> = p.split_whitespace().collect();
    let gt: Vec<&str> = g.split_whitespace().collect();
    if pt.is_empty() || gt.is_empty() {
        return f64::from(u8::from(pt == gt));
    }
    let mut counts = std::collections::HashMap::<&str, i64>::new();
    for t in &gt {
        *counts.entry(t).or_default() += 1;
    }
    let mut common = 0i64;
    for t in &pt {
        if let Some(c) = counts.get_mut(t) {
            if *c > 0 {
                *c -= 1;
                common += 1;
            }
        }
    }
    if common == 0 {
        return 0.0;
    }
    let precision = common as f64 / pt.len() as f64;
    let recall = common as f64 / gt.len() as f64;
    2.0 * precision * recall / (precision + recall)
}

/// Whether the normalised gold answer occurs in the normalised prediction on word
/// boundaries (a looser signal than EM for verbose answers).
pub fn contains(prediction: &str, gold: &str) -> bool {
    let p = normalize(prediction);
    let g = normalize(gold);
    !g.is_empty() && format!(" {p} ").contains(&format!(" {g} "))
}

/// EM, F1 and containment of one prediction, best over the gold answers.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct FactualScore {
    /// Normalised exact match with some gold answer.
    pub em: bool,
    /// Best token F1.
    pub f1: f64,
    /// Some gold answer is contained in the prediction.
    pub contains: bool,
}

/// Scores a prediction against every accepted answer and keeps the best of each measure.
pub fn score_factual(prediction: &str, golds: &[String]) -> FactualScore {
    let mut s = FactualScore::default();
    for g in golds {
        s.em |= exact_match(prediction, g);
        s.f1 = s.f1.max(f1(prediction, g));
        s.contains |= contains(prediction, g);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn squad_normalisation() {
        assert_eq!(normalize("The  Beatles!"), "beatles");
        assert_eq!(normalize("an Apple, a day"), "apple day");
        assert_eq!(normalize("“Kansas Song”"), "kansas song");
        assert_eq!(normalize("Yes."), "yes");
    }

    #[test]
    fn f1_counts_shared_tokens() {
        assert!((f1("President Richard Nixon", "Richard Nixon") - 0.8).abs() < 1e-9);
        assert_eq!(f1("yes", "no"), 0.0);
        assert_eq!(f1("no", "No."), 1.0);
        assert_eq!(f1("", ""), 1.0);
        assert_eq!(f1("a", "the"), 1.0);
    }

    #[test]
    fn containment_is_on_word_boundaries() {
        assert!(contains("It was Richard Nixon.", "Richard Nixon"));
        assert!(!contains("Nixonland", "Nixon"));
        assert!(!contains("anything", "the"));
    }
}
