//! Chain-of-thought imports (trajectories of kind `cot`): the CoT rows of FireAct's
//! multi-method mix and GSM8K's human rationales.
//!
//! Each becomes the conversation `small-agent eval --mode cot` has with a model: the CoT
//! system prompt of its answer kind and the task turn (`models/prompts/eval-cot.toml`, through
//! [`CotPrompts::builtin`], filled the way `CotAnswerer` fills them), then one assistant reply
//! that ends in the form the CoT scorer reads: `<answer>X</answer>` for factual questions,
//! `\boxed{N}` for math. Every reply is checked with the scorer's own extraction
//! (`small_agent::evaluate::cot_answer`) before it is kept.
//!
//! **Which rows of `hotpotqa_multimethod_gpt_format.jsonl` are CoT.** The file mixes FireAct's
//! ReAct, CoT and Reflexion runs, all written as `Thought:`/`Action:` turns. A CoT row is
//! recognised by two marks together: it has exactly one assistant turn, which answers at once
//! (`finish[…]`, no search), and its closing turn reads `Episode finished, reward = 1`: the CoT
//! runner logged its reward as a number, the ReAct and Reflexion runners as `True`/`False`.
//! (One ReAct row also answers at once; its reward reads `True` and it is not taken.) Rows
//! whose replies hold a "reflection" are Reflexion runs; the rest are ReAct runs. On the
//! shared file: 186 CoT rows, 500 ReAct, 47 Reflexion.

use serde_json::Value;
use small_agent::engine::ChatMessage;
use small_agent::evaluate::cot_answer;
use small_agent_eval::dataset::Kind;
use small_agent_eval::math::math_equal;
use small_agent_eval::prompts::{fill, CotPrompts};

use super::fireact::{parse_step, question_of, Action};
use super::{Meta, Reject, Row, SourceInfo};
use crate::trajectory::{LogData, Trajectory, TrajectoryError, TrajectoryKind};

/// Source, dataset, teacher and provenance of FireAct's CoT rows.
pub const FIREACT_SOURCE: SourceInfo = SourceInfo {
    source: "fireact-cot",
    source_dataset: "fireact-hotpotqa-multimethod",
    teacher: "gpt-4",
    provenance: "FireAct: 733-row ReAct+CoT+Reflexion mix of GPT-4 runs on HotpotQA train \
                 questions, anchen1011/FireAct @ 94c6189f, data/finetune/ (repo MIT; HotpotQA CC BY-SA 4.0)",
};

/// Source, dataset, teacher and provenance of GSM8K's rationales.
pub const GSM8K_SOURCE: SourceInfo = SourceInfo {
    source: "gsm8k-rationale",
    source_dataset: "gsm8k-train",
    teacher: "human",
    provenance: "GSM8K train: 7,473 grade-school math problems with human step-by-step \
                 rationales, openai/grade-school-math @ 3101c7d5, grade_school_math/data/train.jsonl (MIT)",
};

/// Which runner wrote a row of FireAct's mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MixRow {
    /// Chain of thought: one reply that answers at once, numeric reward.
    Cot,
    /// ReAct: searches (or a `True`/`False` reward).
    React,
    /// Reflexion: a reply holds a reflection on a failed attempt.
    Reflexion,
}

/// Tells the runs of FireAct's mix apart (see the module doc).
pub fn classify(messages: &[ChatMessage]) -> MixRow {
    let replies: Vec<&ChatMessage> = messages.iter().filter(|m| m.role == "assistant").collect();
    if replies
        .iter()
        .any(|m| m.content.to_lowercase().contains("reflection"))
    {
        return MixRow::Reflexion;
    }
    let numeric_reward = messages
        .last()
        .and_then(|m| m.content.split_once("reward = "))
        .is_some_and(|(_, r)| r.trim().parse::<f64>().is_ok());
    let answers_at_once =
        replies.len() == 1 && matches!(parse_step(&replies[0].content), Ok((_, Action::Finish(_))));
    if numeric_reward && answers_at_once {
        MixRow::Cot
    } else {
        MixRow::React
    }
}

/// The system prompt and task turn `eval --mode cot` sends for a question of `kind`.
pub fn cot_opening(prompts: &CotPrompts, kind: Kind, question: &str) -> Vec<ChatMessage> {
    let system = match kind {
        Kind::Factual => &prompts.factual_system,
        Kind::Math => &prompts.math_system,
    };
    vec![
        ChatMessage::new("system", fill(system, &[])),
        ChatMessage::new("user", fill(&prompts.task, &[("question", question)])),
    ]
}

/// Checks that the CoT scorer finds `answer` in `reply` where the prompt asks for it.
fn scorer_reads(reply: &str, kind: Kind, answer: &str) -> Result<(), Reject> {
    let (found, parsed) = cot_answer(reply, kind);
    let same = match kind {
        Kind::Factual => found == answer,
        Kind::Math => math_equal(&found, answer, None).equal,
    };
    if parsed && same {
        Ok(())
    } else {
        Err(Reject::new(
            "the CoT scorer would not read the answer",
            format!("scorer found {found:?} (parsed: {parsed}), expected {answer:?}"),
        ))
    }
}

fn cot_trajectory(meta: Meta<'_>, prompts: &CotPrompts, reply: String) -> Trajectory {
    let mut messages = cot_opening(prompts, meta.answer_kind, meta.question);
    messages.push(ChatMessage::new("assistant", reply));
    let mut log = LogData {
        messages,
        ..LogData::default()
    };
    log.extra.insert("answer_found".into(), Value::Bool(true));
    meta.into_trajectory(log)
}

/// Converts one row of FireAct's mix; ReAct and Reflexion rows are rejected as such.
pub fn convert_fireact(row: &Row) -> Result<Result<Trajectory, Reject>, TrajectoryError> {
    let messages = row.messages_at(&row.value, "messages")?;
    Ok(convert_fireact_messages(
        &CotPrompts::builtin(),
        row.index,
        &messages,
    ))
}

/// Converts a conversation of FireAct's mix.
pub fn convert_fireact_messages(
    prompts: &CotPrompts,
    index: usize,
    messages: &[ChatMessage],
) -> Result<Trajectory, Reject> {
    match classify(messages) {
        MixRow::Cot => {}
        MixRow::React => return Err(Reject::new("not a CoT row: ReAct run", "")),
        MixRow::Reflexion => return Err(Reject::new("not a CoT row: Reflexion run", "")),
    }
    let reward = messages
        .last()
        .and_then(|m| m.content.split_once("reward = "))
        .and_then(|(_, r)| r.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    if reward <= 0.0 {
        return Err(Reject::new("not rewarded", format!("reward {reward}")));
    }
    let question = messages
        .first()
        .filter(|m| m.role == "user")
        .map(|m| question_of(&m.content))
        .filter(|q| !q.is_empty())
        .ok_or_else(|| Reject::new("no question", "the first turn is not a user question"))?;
    let reply = messages
        .iter()
        .find(|m| m.role == "assistant")
        .expect("classified as CoT");
    let (thought, Action::Finish(answer)) = parse_step(&reply.content)? else {
        unreachable!("classified as CoT: its one reply finishes")
    };
    let text = format!("{thought}\n<answer>{answer}</answer>");
    scorer_reads(&text, Kind::Factual, &answer)?;
    let meta = Meta {
        id: format!("{}/{index}", FIREACT_SOURCE.source_dataset),
        question: &question,
        gold: vec![answer.clone()],
        generated: answer,
        kind: TrajectoryKind::Cot,
        answer_kind: Kind::Factual,
        source: FIREACT_SOURCE.source,
        source_dataset: FIREACT_SOURCE.source_dataset,
        teacher: FIREACT_SOURCE.teacher,
        provenance: FIREACT_SOURCE.provenance,
    };
    Ok(cot_trajectory(meta, prompts, text))
}

/// Removes GSM8K's calculator annotations `<<48/2=24>>` (an unclosed one is left alone).
pub fn strip_calculator_annotations(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("<<") {
        match rest[start..].find(">>") {
            Some(len) => {
                out.push_str(&rest[..start]);
                rest = &rest[start + len + 2..];
            }
            None => break,
        }
    }
    out.push_str(rest);
    out
}

/// A GSM8K rationale split into its reasoning (annotations removed) and its `#### N` answer
/// (thousands separators removed).
pub fn split_rationale(answer: &str) -> Option<(String, String)> {
    let (body, gold) = answer.rsplit_once("####")?;
    let gold: String = gold.trim().chars().filter(|c| *c != ',').collect();
    if gold.is_empty() || gold.contains('\n') {
        return None;
    }
    Some((strip_calculator_annotations(body).trim().to_owned(), gold))
}

/// The first sentence of a rationale: its first non-empty line up to the first `.`, `!` or
/// `?` that is followed by a space (a decimal point is not, nor the stop of `Mr.` or an
/// initial), whitespace collapsed, backticks made quotes (so that it fits one thought line of
/// the step grammar).
pub fn first_sentence(text: &str) -> String {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    let mut end = line.len();
    let mut chars = line.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let at_space = chars.peek().is_some_and(|(_, n)| n.is_whitespace());
        if matches!(c, '.' | '!' | '?')
            && at_space
            && !(c == '.' && ends_in_abbreviation(&line[..i]))
        {
            end = i + c.len_utf8();
            break;
        }
    }
    line[..end]
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('`', "'")
}

/// Whether `text` (what precedes a full stop) ends in a title or abbreviation that takes one
/// (`Mr.`, `Dr.`, `e.g.`) or in a single capital (an initial), so the stop ends no sentence.
fn ends_in_abbreviation(text: &str) -> bool {
    const ABBREVIATIONS: [&str; 13] = [
        "mr", "mrs", "ms", "dr", "st", "jr", "sr", "prof", "vs", "etc", "e.g", "i.e", "approx",
    ];
    let word = text
        .rsplit(|c: char| c.is_whitespace() || c == '(')
        .next()
        .unwrap_or("");
    let lower = word.to_lowercase();
    ABBREVIATIONS.contains(&lower.as_str())
        || (word.chars().count() == 1 && word.chars().all(|c| c.is_uppercase()))
}

/// Converts one GSM8K train row (`question`, `answer` with `#### N`).
pub fn convert_gsm8k(row: &Row) -> Result<Result<Trajectory, Reject>, TrajectoryError> {
    let question = row.str_field("question")?.trim();
    let answer = row.str_field("answer")?;
    Ok(convert_rationale(
        &CotPrompts::builtin(),
        row.index,
        question,
        answer,
    ))
}

/// Converts a GSM8K question and rationale.
pub fn convert_rationale(
    prompts: &CotPrompts,
    index: usize,
    question: &str,
    rationale: &str,
) -> Result<Trajectory, Reject> {
    let (body, gold) = split_rationale(rationale)
        .ok_or_else(|| Reject::new("no `#### answer` line", rationale.to_owned()))?;
    let text = if body.is_empty() {
        format!("\\boxed{{{gold}}}")
    } else {
        format!("{body}\n\\boxed{{{gold}}}")
    };
    scorer_reads(&text, Kind::Math, &gold)?;
    let meta = Meta {
        id: format!("{}/{index}", GSM8K_SOURCE.source_dataset),
        question,
        gold: vec![gold.clone()],
        generated: gold,
        kind: TrajectoryKind::Cot,
        answer_kind: Kind::Math,
        source: GSM8K_SOURCE.source,
        source_dataset: GSM8K_SOURCE.source_dataset,
        teacher: GSM8K_SOURCE.teacher,
        provenance: GSM8K_SOURCE.provenance,
    };
    Ok(cot_trajectory(meta, prompts, text))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs(turns: &[(&str, &str)]) -> Vec<ChatMessage> {
        turns.iter().map(|(r, c)| ChatMessage::new(r, *c)).collect()
    }

    #[test]
    fn annotations_are_stripped_and_the_answer_line_boxed() {
        let p = CotPrompts::builtin();
        let r = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips altogether.\n#### 1,072";
        let t = convert_rationale(&p, 3, "How many clips?", r).unwrap();
        assert_eq!(t.id, "gsm8k-train/3");
        assert_eq!(t.kind, TrajectoryKind::Cot);
        assert_eq!(t.answer_kind, Kind::Math);
        assert_eq!(t.true_answer.as_deref(), Some("1072"));
        let m = &t.log_data.messages;
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].content, fill(&p.math_system, &[]));
        assert_eq!(m[1].content, "How many clips?");
        assert_eq!(
            m[2].content,
            "Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips altogether.\n\\boxed{1072}"
        );
        assert!(convert_rationale(&p, 0, "q", "no answer here").is_err());
    }

    #[test]
    fn an_unclosed_annotation_is_left_alone() {
        assert_eq!(
            strip_calculator_annotations("a <<1+1=2>>2 b <<3"),
            "a 2 b <<3"
        );
    }

    #[test]
    fn the_first_sentence_stops_at_a_full_stop_not_a_decimal_point() {
        assert_eq!(
            first_sentence(
                "Weng earns 12/60 = $0.2 per minute. Working 50 minutes, she earned $10.\nMore."
            ),
            "Weng earns 12/60 = $0.2 per minute."
        );
        assert_eq!(
            first_sentence("\n  No stop at all\nsecond"),
            "No stop at all"
        );
        assert_eq!(
            first_sentence("She has `x`  apples!  Yes."),
            "She has 'x' apples!"
        );
        assert_eq!(
            first_sentence("Mr. Sam J. Lee pays 2 x 3 = $6. Then more."),
            "Mr. Sam J. Lee pays 2 x 3 = $6."
        );
    }

    #[test]
    fn cot_rows_are_told_from_react_and_reflexion_rows() {
        let p = CotPrompts::builtin();
        let cot = msgs(&[
            ("user", "Are A and B both American?"),
            (
                "assistant",
                "Thought: A is American. B is American. So both are.\nAction: finish[Yes]",
            ),
            ("user", "Observation: Episode finished, reward = 1"),
        ]);
        assert_eq!(classify(&cot), MixRow::Cot);
        let t = convert_fireact_messages(&p, 4, &cot).unwrap();
        assert_eq!(t.id, "fireact-hotpotqa-multimethod/4");
        assert_eq!(t.source, "fireact-cot");
        assert_eq!(t.log_data.messages[0].content, fill(&p.factual_system, &[]));
        assert_eq!(t.log_data.messages[1].content, "Are A and B both American?");
        assert_eq!(
            t.log_data.messages[2].content,
            "A is American. B is American. So both are.\n<answer>Yes</answer>"
        );
        assert_eq!(
            cot_answer(&t.log_data.messages[2].content, Kind::Factual),
            ("Yes".into(), true)
        );

        let react_at_once = msgs(&[
            ("user", "Q?"),
            ("assistant", "Thought: known.\nAction: finish[X]"),
            ("user", "Observation: Episode finished, reward = True"),
        ]);
        assert_eq!(classify(&react_at_once), MixRow::React);
        let react = msgs(&[
            ("user", "Q?"),
            ("assistant", "Thought: s.\nAction: search[x]"),
            ("user", "Observation: y"),
            ("assistant", "Thought: y.\nAction: finish[y]"),
            ("user", "Observation: Episode finished, reward = True"),
        ]);
        assert_eq!(classify(&react), MixRow::React);
        let reflexion = msgs(&[
            ("user", "Q?"),
            ("assistant", "Thought: s.\nAction: search[x]"),
            ("user", "Observation: y"),
            (
                "assistant",
                "Thought: let me do a reflection. Thought: try harder.\nAction: finish[z]",
            ),
            ("user", "Observation: Episode finished, reward = False"),
        ]);
        assert_eq!(classify(&reflexion), MixRow::Reflexion);
        assert_eq!(
            convert_fireact_messages(&p, 0, &reflexion)
                .unwrap_err()
                .reason,
            "not a CoT row: Reflexion run"
        );
    }
}
