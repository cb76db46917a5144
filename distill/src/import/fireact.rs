//! FireAct's GPT-4 ReAct trajectories (`hotpotqa_gpt4_react_gpt_format.jsonl`) as student
//! agent trajectories.
//!
//! A row is an OpenAI-chat conversation: the question as the first user turn, then assistant
//! turns `Thought: …\nAction: search[q]` or `…finish[x]`, each answered by a user turn
//! `Observation: …` (the last one `Episode finished, reward = True`). Each assistant turn
//! becomes one step of ours:
//!
//! - `search[q]` → `Thought: <the teacher's words>\nCode:\n```py\nprint(web_search("q"))\n```<end_code>`,
//!   and the following observation becomes our observation turn with the text our sandbox
//!   reports for that printed output (`Execution logs:\n<snippet>`);
//! - `finish[x]` → `final_answer("x")`, which ends the run (no turn follows, as in the agent).
//!
//! Anything else (`lookup[…]`, several actions on one line, a reply that is not
//! `Thought:`/`Action:`) rejects the row. The rows carry no gold answer; FireAct kept only
//! runs rewarded True (exact match with HotpotQA's answer), so the finish answer is both the
//! generated and the true answer. A finish answer wrapped in double quotes loses them (the
//! reward's normalisation ignored them too).

use small_agent::agent::protocol;
use small_agent::engine::ChatMessage;
use small_agent_eval::dataset::Kind;

use super::{
    agent_log, py_str, step_record, step_reply, Meta, Reject, Row, SourceInfo, StudentPrompt,
};
use crate::trajectory::{Trajectory, TrajectoryError, TrajectoryKind};

/// Source, dataset, teacher and provenance of FireAct's ReAct trajectories.
pub const SOURCE: SourceInfo = SourceInfo {
    source: "fireact",
    source_dataset: "fireact-hotpotqa-train",
    teacher: "gpt-4",
    provenance: "FireAct: 500 GPT-4 ReAct trajectories on HotpotQA train questions, \
                 anchen1011/FireAct @ 94c6189f, data/finetune/ (repo MIT; HotpotQA CC BY-SA 4.0)",
};

/// One parsed ReAct action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `search[query]`.
    Search(String),
    /// `finish[answer]`.
    Finish(String),
}

/// Splits a ReAct reply into the thought (the teacher's words, trimmed) and its action.
pub fn parse_step(reply: &str) -> Result<(String, Action), Reject> {
    let malformed = |what: &str| Reject::new("malformed ReAct reply", format!("{what}: {reply:?}"));
    let body = reply
        .trim()
        .strip_prefix("Thought:")
        .ok_or_else(|| malformed("no `Thought:` at the start"))?;
    let (thought, action) = body
        .split_once("\nAction:")
        .ok_or_else(|| malformed("no `Action:` line"))?;
    let thought = thought.trim();
    if thought.is_empty() {
        return Err(malformed("empty thought"));
    }
    if thought.contains('`') {
        return Err(malformed(
            "a backtick in the thought (it would open a code fence)",
        ));
    }
    let action = action.trim();
    let open = action
        .find('[')
        .ok_or_else(|| malformed("the action is not `name[argument]`"))?;
    let name = &action[..open];
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(malformed("the action is not `name[argument]`"));
    }
    let arg = action[open + 1..]
        .strip_suffix(']')
        .ok_or_else(|| malformed("the action does not end with `]`"))?;
    if holds_another_action(arg) {
        return Err(Reject::new(
            "several actions in one reply",
            format!("one observation cannot be split between them: {action:?}"),
        ));
    }
    let arg = arg.trim();
    match name {
        "search" if !arg.is_empty() => Ok((thought.to_owned(), Action::Search(arg.to_owned()))),
        "finish" => {
            let answer = strip_wrapping_quotes(arg).trim();
            if answer.is_empty() {
                return Err(malformed("empty finish[] answer"));
            }
            Ok((thought.to_owned(), Action::Finish(answer.to_owned())))
        }
        "search" => Err(malformed("empty search[] query")),
        other => Err(Reject::new(
            format!("action {other}[] (only search[] and finish[] map to our tools)"),
            action.to_owned(),
        )),
    }
}

/// Whether an argument's text runs on into another action (`a], search[b`).
fn holds_another_action(arg: &str) -> bool {
    arg.match_indices(']').any(|(i, _)| {
        let rest = arg[i + 1..].trim_start_matches([',', ';', ' ']);
        let name_len = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        name_len > 0 && rest[name_len..].starts_with('[')
    })
}

fn strip_wrapping_quotes(s: &str) -> &str {
    let t = s.trim();
    t.strip_prefix('"')
        .and_then(|x| x.strip_suffix('"'))
        .filter(|x| !x.contains('"'))
        .unwrap_or(t)
}

/// The question of the first user turn, without an instruction label around it.
pub fn question_of(first_user: &str) -> String {
    let t = first_user.trim();
    let t = match t.rfind("Question:") {
        Some(i) => &t[i + "Question:".len()..],
        None => t,
    };
    t.trim().to_owned()
}

/// The text of an `Observation: …` turn.
fn observation_text(turn: &str) -> Option<&str> {
    turn.strip_prefix("Observation:")
        .map(|t| t.strip_prefix(' ').unwrap_or(t).trim_end())
}

/// Converts one row; `Err` only for input that is not a FireAct chat row at all.
pub fn convert(
    prompt: &StudentPrompt,
    row: &Row,
) -> Result<Result<Trajectory, Reject>, TrajectoryError> {
    let messages = row.messages_at(&row.value, "messages")?;
    Ok(convert_messages(prompt, row.index, &messages))
}

/// Converts a row's conversation.
pub fn convert_messages(
    prompt: &StudentPrompt,
    index: usize,
    messages: &[ChatMessage],
) -> Result<Trajectory, Reject> {
    let first = messages
        .first()
        .filter(|m| m.role == "user")
        .ok_or_else(|| Reject::new("no question", "the first turn is not a user turn"))?;
    let question = question_of(&first.content);
    if question.is_empty() {
        return Err(Reject::new("no question", "the first user turn is empty"));
    }
    let mut conv = prompt.opening(&question);
    let mut steps = Vec::new();
    let mut answer = None;
    let mut i = 1;
    while i < messages.len() {
        let m = &messages[i];
        if m.role != "assistant" {
            return Err(Reject::new(
                "turns out of order",
                format!("turn {i} is `{}` where a ReAct reply was expected", m.role),
            ));
        }
        let (thought, action) = parse_step(&m.content)?;
        let next = messages.get(i + 1);
        match action {
            Action::Search(q) => {
                let text = next
                    .filter(|n| n.role == "user")
                    .and_then(|n| observation_text(&n.content))
                    .ok_or_else(|| {
                        Reject::new(
                            "search[] without an observation",
                            format!("turn {i}: no `Observation:` turn follows"),
                        )
                    })?;
                let code = format!("print(web_search({}))", py_str(&q));
                let reply = step_reply(&thought, &code);
                let turn = prompt.printed_turn(text);
                steps.push(step_record(&reply, Some(&code), &turn, false, 1, None));
                conv.push(ChatMessage::new("assistant", protocol::close_reply(&reply)));
                conv.push(ChatMessage::new("user", turn));
                i += 2;
            }
            Action::Finish(x) => {
                let rest = &messages[i + 1..];
                let ended = match rest {
                    [] => true,
                    [last] => last.role == "user" && last.content.contains("Episode finished"),
                    _ => false,
                };
                if !ended {
                    return Err(Reject::new(
                        "turns after finish[]",
                        format!("turn {i}: the run goes on after finish[]"),
                    ));
                }
                if let Some(r) = rest.first().map(|l| l.content.as_str()) {
                    if !r.contains("reward = True") && !r.contains("reward = 1") {
                        return Err(Reject::new("not rewarded", r.to_owned()));
                    }
                }
                let code = format!("final_answer({})", py_str(&x));
                let reply = step_reply(&thought, &code);
                // The agent builds this turn too (it is the step record's observation) but
                // sends nothing after a final answer.
                let turn = prompt.turn_after(&Default::default());
                steps.push(step_record(&reply, Some(&code), &turn, false, 0, Some(&x)));
                conv.push(ChatMessage::new("assistant", protocol::close_reply(&reply)));
                answer = Some(x);
                break;
            }
        }
    }
    let answer =
        answer.ok_or_else(|| Reject::new("no finish[] action", "the run never answers"))?;
    let meta = Meta {
        id: format!("{}/{index}", SOURCE.source_dataset),
        question: &question,
        gold: vec![answer.clone()],
        generated: answer,
        kind: TrajectoryKind::Agent,
        answer_kind: Kind::Factual,
        source: SOURCE.source,
        source_dataset: SOURCE.source_dataset,
        teacher: SOURCE.teacher,
        provenance: SOURCE.provenance,
    };
    Ok(meta.into_trajectory(agent_log(conv, steps, "final_answer")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn msgs(turns: &[(&str, &str)]) -> Vec<ChatMessage> {
        turns.iter().map(|(r, c)| ChatMessage::new(r, *c)).collect()
    }

    #[test]
    fn a_search_then_finish_row_becomes_two_student_steps() {
        let p = StudentPrompt::builtin().unwrap();
        let m = msgs(&[
            ("user", "Which TV show ended its third season with \"Human Error\"? "),
            ("assistant", "Thought: I need to find the show. \nAction: search[\"Human Error\" season finale of which TV show?]"),
            ("user", "Observation: \"Human Error\" is the season finale of House's third season."),
            ("assistant", "Thought: It is House.\nAction: finish[\"House\"]"),
            ("user", "Observation: Episode finished, reward = True"),
        ]);
        let t = convert_messages(&p, 7, &m).unwrap();
        assert_eq!(t.id, "fireact-hotpotqa-train/7");
        assert_eq!(
            t.question,
            "Which TV show ended its third season with \"Human Error\"?"
        );
        assert_eq!(t.generated_answer, "House");
        assert_eq!(t.true_answer.as_deref(), Some("House"));
        assert_eq!(
            (t.source.as_str(), t.teacher.as_str()),
            ("fireact", "gpt-4")
        );
        let turns = &t.log_data.messages;
        assert_eq!(turns.len(), 5);
        assert_eq!(turns[..2], p.opening(&t.question)[..]);
        assert_eq!(
            turns[2].content,
            "Thought: I need to find the show.\nCode:\n```py\nprint(web_search('\"Human Error\" season finale of which TV show?'))\n```<end_code>"
        );
        assert_eq!(turns[3].role, "user");
        assert_eq!(
            turns[3].content,
            "Observation:\nExecution logs:\n\"Human Error\" is the season finale of House's third season."
        );
        assert_eq!(
            turns[4].content,
            "Thought: It is House.\nCode:\n```py\nfinal_answer(\"House\")\n```<end_code>"
        );
        let steps = &t.log_data.steps;
        assert_eq!(steps.len(), 2);
        assert_eq!(steps[0]["thought"], "I need to find the show.");
        assert_eq!(steps[0]["observation"], turns[3].content.as_str());
        assert_eq!(steps[0]["final_answer"], Value::Null);
        assert_eq!(steps[1]["final_answer"], "House");
        assert_eq!(steps[1]["parse_error"], false);
        assert!(t.answered_by_final_answer());
        // The code the agent would extract is exactly the code recorded.
        assert_eq!(
            protocol::extract_code(&turns[2].content).as_deref(),
            steps[0]["code"].as_str()
        );
    }

    #[test]
    fn quotes_of_both_kinds_are_escaped() {
        let (_, a) = parse_step("Thought: x\nAction: search[Harvey Milk's \"Reckoning\"]").unwrap();
        let Action::Search(q) = a else { panic!() };
        assert_eq!(
            format!("print(web_search({}))", py_str(&q)),
            r#"print(web_search("Harvey Milk's \"Reckoning\""))"#
        );
    }

    #[test]
    fn lookup_and_malformed_rows_are_rejected_with_a_reason() {
        let p = StudentPrompt::builtin().unwrap();
        let lookup = msgs(&[
            ("user", "Q?"),
            ("assistant", "Thought: look it up.\nAction: lookup[born]"),
            ("user", "Observation: (Result 1 / 1) born 1901"),
        ]);
        let r = convert_messages(&p, 0, &lookup).unwrap_err();
        assert_eq!(
            r.reason,
            "action lookup[] (only search[] and finish[] map to our tools)"
        );
        let bad = msgs(&[("user", "Q?"), ("assistant", "I think it is Paris.")]);
        assert_eq!(
            convert_messages(&p, 0, &bad).unwrap_err().reason,
            "malformed ReAct reply"
        );
        let several = msgs(&[
            ("user", "Q?"),
            (
                "assistant",
                "Thought: both.\nAction: search[A Tetro], search[B Tetro]",
            ),
            ("user", "Observation: x"),
        ]);
        assert_eq!(
            convert_messages(&p, 0, &several).unwrap_err().reason,
            "several actions in one reply"
        );
        let unfinished = msgs(&[
            ("user", "Q?"),
            ("assistant", "Thought: s.\nAction: search[x]"),
            ("user", "Observation: y"),
        ]);
        assert_eq!(
            convert_messages(&p, 0, &unfinished).unwrap_err().reason,
            "no finish[] action"
        );
    }

    #[test]
    fn brackets_inside_a_query_are_not_another_action() {
        let (_, a) = parse_step("Thought: x\nAction: search[film [1951] cast]").unwrap();
        assert_eq!(a, Action::Search("film [1951] cast".into()));
    }

    #[test]
    fn an_instruction_around_the_question_is_stripped() {
        assert_eq!(
            question_of("Solve this task.\nQuestion: Who won?"),
            "Who won?"
        );
        assert_eq!(question_of(" Who won? "), "Who won?");
    }
}
