//! Rows in the layout of the paper's released trajectories (Kang et al. 2025,
//! Nardien/agent-distillation): `question`, `true_answer`, `generated_answer` and `log_data`,
//! a JSON *string* (the release) or object (what `small-agent ask --trajectory` writes, see
//! `small_agent::agent::trajectory_record`) holding `messages`, each `{role, content}`, the
//! content a string or a list of `{type: "text", text}` parts.
//!
//! The conversation is rebuilt with the student's prompt: the row's system and task turns are
//! replaced by ours (the question is the row's `question`), the assistant replies are kept as
//! they were written (closed with `<end_code>` where a fence ends them), and observation turns
//! are put in our template's form:
//!
//! - ours (`Observation:\n…`, error turns included) stay as they are;
//! - smolagents' (`Call id: …\nObservation:\nExecution logs:\n…\nLast output from code
//!   snippet:\nNone`) lose the call id and the `None` value our sandbox does not report;
//! - smolagents' error turns (`Error:\n<what>\nNow let's retry: …`) become our error turn
//!   with `<what>`;
//! - `tool-call` bookkeeping turns are dropped.
//!
//! Any other user turn (the out-of-steps request) is kept as it is, and the reply after it is
//! the fallback answer. Turns after a step that called `final_answer` are dropped: the agent
//! sends nothing after a final answer. Step records the row already has (ours) are kept; other
//! rows get records built from the turns.

use std::path::Path;

use serde_json::Value;
use small_agent::agent::protocol;
use small_agent::engine::ChatMessage;
use small_agent_eval::dataset::Kind;

use super::{
    agent_log, kind_of, step_record, ImportError, ImportOptions, Meta, Reject, Row, StudentPrompt,
};
use crate::trajectory::{Trajectory, TrajectoryError, TrajectoryKind};

/// The trajectories' `source`.
pub const SOURCE_NAME: &str = "paper";

/// Provenance of paper-layout rows (the file's own source decides the licence).
pub const PROVENANCE: &str = "rows in the layout of the paper's released trajectories \
     (Kang et al. 2025, arXiv 2505.17612; Nardien/agent-distillation, repo Apache-2.0) or of \
     `small-agent ask --trajectory`; keep the provenance and licence of the input file itself";

/// Settings of a paper import that rows may not carry.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Answer kind of rows without `answer_kind`.
    pub answer_kind: Option<Kind>,
    /// `source_dataset` forced by the caller.
    pub source_dataset: Option<String>,
    /// `source_dataset` of rows without one: the input's file stem.
    pub default_dataset: String,
    /// `teacher` forced by the caller.
    pub teacher: Option<String>,
}

impl Settings {
    /// The settings for `input` from the import options.
    pub fn new(input: &Path, opts: &ImportOptions) -> Self {
        Self {
            answer_kind: opts.answer_kind,
            source_dataset: opts.source_dataset.clone(),
            default_dataset: input
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "paper".into()),
            teacher: opts.teacher.clone(),
        }
    }
}

/// A field that is a string or a number, as text.
fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.trim().to_owned()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(if *b { "yes" } else { "no" }.to_owned()),
        _ => None,
    }
}

fn gold_answers(row: &Row) -> Result<Vec<String>, TrajectoryError> {
    let v = row.value.get("true_answer").ok_or_else(|| {
        row.bad(
            "true_answer",
            "missing (rows need their gold answer; add it to lines written by `ask --trajectory`)",
        )
    })?;
    let mut gold = match v {
        Value::Array(a) => a
            .iter()
            .map(|x| {
                scalar_text(x).ok_or_else(|| row.bad("true_answer", "a list item is not a string"))
            })
            .collect::<Result<Vec<_>, _>>()?,
        other => vec![scalar_text(other).ok_or_else(|| {
            row.bad(
                "true_answer",
                format!(
                    "expected a string, a number or a list, found {}",
                    kind_of(other)
                ),
            )
        })?],
    };
    if let Some(Value::Array(more)) = row.value.get("true_answers") {
        for m in more.iter().filter_map(scalar_text) {
            if !gold.contains(&m) {
                gold.push(m);
            }
        }
    }
    gold.retain(|g| !g.is_empty());
    Ok(gold)
}

/// `log_data` as an object, parsing it when it is a JSON string.
fn log_data(row: &Row) -> Result<Value, TrajectoryError> {
    match row.value.get("log_data") {
        Some(Value::String(s)) => {
            let v: Value = serde_json::from_str(s)
                .map_err(|e| row.bad("log_data", format!("a string that is not JSON: {e}")))?;
            if v.is_object() {
                Ok(v)
            } else {
                Err(row.bad(
                    "log_data",
                    format!("a JSON string holding {}, not an object", kind_of(&v)),
                ))
            }
        }
        Some(v @ Value::Object(_)) => Ok(v.clone()),
        Some(other) => Err(row.bad(
            "log_data",
            format!(
                "expected an object or a JSON string, found {}",
                kind_of(other)
            ),
        )),
        None => Err(row.bad("log_data", "missing")),
    }
}

/// Converts one row. Errors: the row is not in the layout, or its answer kind is unknown.
pub fn convert(
    prompt: &StudentPrompt,
    settings: &Settings,
    row: &Row,
) -> Result<Result<Trajectory, Reject>, ImportError> {
    let question = row.str_field("question")?.trim().to_owned();
    let gold = gold_answers(row)?;
    let generated = match row.value.get("generated_answer") {
        Some(v) => scalar_text(v).ok_or_else(|| {
            row.bad(
                "generated_answer",
                format!("expected a string, found {}", kind_of(v)),
            )
        })?,
        None => return Err(row.bad("generated_answer", "missing").into()),
    };
    let log = log_data(row)?;
    let messages = row.messages_at(&log, "log_data.messages")?;
    let answer_kind = match (
        settings.answer_kind,
        row.value.get("answer_kind").and_then(Value::as_str),
    ) {
        (Some(k), _) => k,
        (None, Some(s)) => s.parse::<Kind>().map_err(|e| row.bad("answer_kind", e))?,
        (None, None) => {
            return Err(ImportError::Usage(format!(
                "{}:{}: the row has no `answer_kind`: pass --answer-kind factual|math",
                row.path.display(),
                row.line
            )))
        }
    };
    let id_part = match row.value.get("id") {
        Some(Value::String(s)) => s.trim().to_owned(),
        Some(Value::Number(n)) => n.to_string(),
        _ => row.index.to_string(),
    };
    let source_dataset = settings
        .source_dataset
        .clone()
        .or_else(|| {
            row.value
                .get("source_dataset")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_else(|| settings.default_dataset.clone());
    let teacher = settings
        .teacher
        .clone()
        .or_else(|| {
            row.value
                .get("teacher")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "unknown".into());
    let provenance = row
        .value
        .get("provenance")
        .and_then(Value::as_str)
        .unwrap_or(PROVENANCE)
        .to_owned();
    if question.is_empty() {
        return Ok(Err(Reject::new("empty question", "")));
    }
    if gold.is_empty() {
        return Ok(Err(Reject::new("empty true_answer", "")));
    }
    let conversation = match rebuild(prompt, &question, &messages, &generated) {
        Ok(c) => c,
        Err(r) => return Ok(Err(r)),
    };
    let answer_source = log
        .get("answer_source")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| conversation.answer_source.to_owned());
    let steps = match log.get("steps") {
        Some(Value::Array(ours)) if !ours.is_empty() && ours.len() == conversation.steps.len() => {
            ours.clone()
        }
        _ => conversation.steps,
    };
    let meta = Meta {
        id: format!("{source_dataset}/{id_part}"),
        question: &question,
        gold,
        generated,
        kind: TrajectoryKind::Agent,
        answer_kind,
        source: SOURCE_NAME,
        source_dataset: &source_dataset,
        teacher: &teacher,
        provenance: &provenance,
    };
    let mut t = meta.into_trajectory(agent_log(conversation.messages, steps, &answer_source));
    for key in ["first_thought", "error", "total_ms"] {
        if let Some(v) = log.get(key).filter(|v| !v.is_null()) {
            t.log_data.extra.insert(key.to_owned(), v.clone());
        }
    }
    Ok(Ok(t))
}

/// A conversation rebuilt in the student's format.
#[derive(Debug, Clone)]
pub struct Rebuilt {
    /// The turns.
    pub messages: Vec<ChatMessage>,
    /// One record per step.
    pub steps: Vec<Value>,
    /// `final_answer`, `fallback` or `none`.
    pub answer_source: &'static str,
}

/// An observation turn in our template's form, and whether it reports an error; `None` when
/// the turn is not an observation.
pub fn normalize_observation(prompt: &StudentPrompt, text: &str) -> Option<(String, bool)> {
    let mut t = text.trim();
    if t.starts_with("Call id:") {
        t = t.split_once('\n').map_or("", |(_, rest)| rest).trim_start();
    }
    let fill = small_agent::agent::prompt::fill;
    if let Some(body) = t.strip_prefix("Observation:") {
        let body = body.trim();
        let body = body
            .strip_suffix("Last output from code snippet:\nNone")
            .map_or(body, str::trim_end);
        let turn = fill(&prompt.template.observation, &[("observation", body)]);
        return Some((turn, body.starts_with("Error:")));
    }
    if let Some(body) = t.strip_prefix("Error:") {
        let detail = match body.find("\nNow let's retry") {
            Some(i) => &body[..i],
            None => body,
        };
        return Some((
            fill(&prompt.template.error, &[("error", detail.trim())]),
            true,
        ));
    }
    None
}

/// Rebuilds `messages` (system, task, steps) with the student's prompt.
pub fn rebuild(
    prompt: &StudentPrompt,
    question: &str,
    messages: &[ChatMessage],
    generated: &str,
) -> Result<Rebuilt, Reject> {
    let task = messages
        .iter()
        .position(|m| m.role == "user")
        .ok_or_else(|| Reject::new("no task turn", "no user turn in log_data.messages"))?;
    if let Some(m) = messages[..task].iter().find(|m| m.role != "system") {
        return Err(Reject::new(
            "turns out of order",
            format!("a `{}` turn before the task", m.role),
        ));
    }
    let mut conv = prompt.opening(question);
    let mut steps: Vec<Value> = Vec::new();
    // Whether the last step still waits for its observation.
    let mut open_step = false;
    let mut fallback_asked = false;
    let mut fallback_answer = None;
    for m in &messages[task + 1..] {
        match m.role.as_str() {
            "assistant" if fallback_asked => {
                let a = m.content.trim();
                conv.push(ChatMessage::new("assistant", a));
                fallback_answer = Some(a.to_owned());
            }
            "assistant" => {
                if fallback_answer.is_some() {
                    return Err(Reject::new(
                        "turns out of order",
                        "a reply after the fallback answer",
                    ));
                }
                let reply = m.content.trim_end();
                let code = protocol::extract_code(reply);
                steps.push(step_record(reply, code.as_deref(), "", false, 0, None));
                conv.push(ChatMessage::new("assistant", protocol::close_reply(reply)));
                open_step = true;
            }
            "tool-call" | "tool_call" => {}
            "user" | "tool-response" | "tool_response" | "tool" => {
                match normalize_observation(prompt, &m.content) {
                    Some((turn, error)) if open_step && !fallback_asked => {
                        let step = steps.last_mut().expect("an open step exists");
                        step["exec_error"] = Value::Bool(error && !step["code"].is_null());
                        step["observation"] = Value::String(turn.clone());
                        conv.push(ChatMessage::new("user", turn));
                        open_step = false;
                    }
                    Some(_) => {
                        return Err(Reject::new(
                            "turns out of order",
                            "an observation that follows no reply",
                        ))
                    }
                    None => {
                        conv.push(ChatMessage::new("user", m.content.trim()));
                        fallback_asked = true;
                    }
                }
            }
            other => {
                return Err(Reject::new(
                    "unknown turn role",
                    format!("a `{other}` turn after the task"),
                ))
            }
        }
    }
    if steps.is_empty() {
        return Err(Reject::new("no steps", "no assistant reply after the task"));
    }
    // Where the last step called final_answer, the run ended there.
    let last = steps.last().expect("steps exist");
    let ended = fallback_answer.is_none()
        && last["code"]
            .as_str()
            .is_some_and(|c| c.contains("final_answer("));
    let answer_source = if ended {
        while conv.last().is_some_and(|m| m.role != "assistant") {
            conv.pop();
        }
        let step = steps.last_mut().expect("steps exist");
        step["final_answer"] = Value::String(generated.to_owned());
        "final_answer"
    } else if fallback_answer.is_some() {
        "fallback"
    } else {
        "none"
    };
    Ok(Rebuilt {
        messages: conv,
        steps,
        answer_source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs(turns: &[(&str, &str)]) -> Vec<ChatMessage> {
        turns.iter().map(|(r, c)| ChatMessage::new(r, *c)).collect()
    }

    #[test]
    fn a_smolagents_conversation_is_rebuilt_in_our_format() {
        let p = StudentPrompt::builtin().unwrap();
        let m = msgs(&[
            ("system", "You are an expert assistant ... (their prompt)"),
            ("user", "New task:\nWhat is 6*7?"),
            ("assistant", "Thought: compute.\nCode:\n```py\nx = 6*7\nprint(x)\n```<end_code>"),
            ("tool-call", "Calling tools:\n[{'id': 'call_1'}]"),
            ("tool-response", "Call id: call_1\nObservation:\nExecution logs:\n42\nLast output from code snippet:\nNone"),
            ("assistant", "Thought: oops.\nCode:\n```py\ny = 1/0\n```<end_code>"),
            ("tool-response", "Call id: call_2\nError:\nCode execution failed at line 'y = 1/0' due to: ZeroDivisionError: division by zero\nNow let's retry: take care not to repeat previous errors!"),
            ("assistant", "Thought: done.\nCode:\n```py\nfinal_answer(x)\n```"),
            ("tool-response", "Call id: call_3\nObservation:\nExecution logs:\nLast output from code snippet:\n42"),
        ]);
        let r = rebuild(&p, "What is 6*7?", &m, "42").unwrap();
        assert_eq!(r.answer_source, "final_answer");
        let c = &r.messages;
        assert_eq!(c[..2], p.opening("What is 6*7?")[..]);
        assert_eq!(c.len(), 7);
        assert_eq!(c[3].content, "Observation:\nExecution logs:\n42");
        assert_eq!(
            c[5].content,
            "Observation:\nError: Code execution failed at line 'y = 1/0' due to: ZeroDivisionError: division by zero\nThat did not work. Think about why, then try a different approach."
        );
        assert_eq!(
            c[6].content,
            "Thought: done.\nCode:\n```py\nfinal_answer(x)\n```<end_code>"
        );
        assert_eq!(r.steps.len(), 3);
        assert_eq!(r.steps[1]["exec_error"], true);
        assert_eq!(r.steps[0]["exec_error"], false);
        assert_eq!(r.steps[2]["final_answer"], "42");
        assert_eq!(r.steps[2]["code"], "final_answer(x)");
    }

    #[test]
    fn our_own_turns_pass_through_unchanged() {
        let p = StudentPrompt::builtin().unwrap();
        let mut ours = p.opening("Q?");
        let tail = msgs(&[
            ("assistant", "Thought: a.\nCode:\n```py\nprint(1)\n```<end_code>"),
            ("user", "Observation:\nExecution logs:\n1"),
            ("assistant", "Thought: no code"),
            ("user", p.template.no_code.trim()),
            ("assistant", "Thought: b.\nCode:\n```py\nz = 1/0\n```<end_code>"),
            ("user", "Observation:\nError: ZeroDivisionError at line 1: division by zero\nThat did not work. Think about why, then try a different approach."),
            ("user", "You are out of steps. Based on everything above, give your best final answer to the task\nnow, in a few words, with no explanation. Task: Q?"),
            ("assistant", "1"),
        ]);
        ours.extend(tail);
        let r = rebuild(&p, "Q?", &ours, "1").unwrap();
        assert_eq!(r.messages, ours);
        assert_eq!(r.answer_source, "fallback");
        assert_eq!(r.steps.len(), 3);
        assert_eq!(r.steps[1]["parse_error"], true);
        assert_eq!(r.steps[1]["exec_error"], false);
        assert_eq!(r.steps[2]["exec_error"], true);
    }

    #[test]
    fn a_row_without_replies_is_rejected() {
        let p = StudentPrompt::builtin().unwrap();
        let r = rebuild(&p, "Q?", &msgs(&[("system", "s"), ("user", "Q?")]), "x").unwrap_err();
        assert_eq!(r.reason, "no steps");
    }
}
