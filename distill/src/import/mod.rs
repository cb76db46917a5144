//! Imports of real teacher data into the one trajectory format ([`crate::trajectory`]).
//!
//! Five sources, one module each:
//!
//! | format | module | what becomes a trajectory |
//! |---|---|---|
//! | `paper` | [`paper`] | rows in the layout of the paper's released trajectories (and of `small-agent ask --trajectory`) |
//! | `fireact` | [`fireact`] | FireAct's GPT-4 ReAct runs: `search[q]` → `print(web_search("q"))`, `finish[x]` → `final_answer("x")` |
//! | `qsolv` | [`qsolv`] | Q-Solv's gpt-4o-mini Python solutions of GSM8K train problems, re-run in our sandbox |
//! | `cot-fireact` | [`cot`] | the chain-of-thought rows of FireAct's multi-method mix |
//! | `cot-gsm8k` | [`cot`] | GSM8K's human rationales |
//!
//! Agent-format imports are rendered with the *student's* prompt exactly as the agent renders
//! it at inference ([`StudentPrompt`]): the built-in template, the same tool list (with
//! `web_search`), the same step budget, assistant turns closed with `<end_code>` and
//! observation turns holding the text our sandbox reports for printed output. CoT imports use
//! the system prompt and task turn of `small-agent eval --mode cot`.
//!
//! Every item either converts or is rejected with a reason; the [`ImportReport`] counts both
//! (with the first input line of each reason). Input that is not what the format promises (not
//! JSON, a required field missing or of the wrong type) is an error naming the file, the line
//! and the field.
//!
//! Licences: each source's provenance line comes from the shared data's README and travels
//! with the report ([`ImportReport::provenance`]) and with every trajectory (`provenance`), as
//! that README asks of derived files. Q-Solv's solutions were written by gpt-4o-mini:
//! OpenAI's terms restrict using its outputs to train models that compete with OpenAI; the
//! report's [`ImportReport::licence_note`] and each Q-Solv trajectory say so.

pub mod cot;
pub mod fireact;
pub mod paper;
pub mod qsolv;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use serde_json::{json, Value};
use small_agent::agent;
use small_agent::engine::ChatMessage;
use small_agent_eval::dataset::Kind;

pub use crate::student::StudentPrompt;
use crate::trajectory::{for_each_line, LogData, Trajectory, TrajectoryError, TrajectoryKind};

/// The formats `import` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// The paper's released trajectory rows (and our own `ask --trajectory` lines).
    Paper,
    /// FireAct's GPT-4 ReAct trajectories (OpenAI-chat layout).
    Fireact,
    /// Q-Solv's gpt-4o-mini Python solutions of GSM8K train problems.
    Qsolv,
    /// The CoT rows of FireAct's ReAct/CoT/Reflexion mix.
    CotFireact,
    /// GSM8K train problems with their human rationales.
    CotGsm8k,
}

impl Format {
    /// Every format, in the order of the help text.
    pub const ALL: [Format; 5] = [
        Format::Paper,
        Format::Fireact,
        Format::Qsolv,
        Format::CotFireact,
        Format::CotGsm8k,
    ];

    /// The name on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Paper => "paper",
            Format::Fireact => "fireact",
            Format::Qsolv => "qsolv",
            Format::CotFireact => "cot-fireact",
            Format::CotGsm8k => "cot-gsm8k",
        }
    }
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Format::ALL
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Format::ALL.iter().map(|f| f.as_str()).collect();
                format!("unknown format {s:?}: expected one of {}", names.join(", "))
            })
    }
}

/// Errors that stop an import (rejected items are not errors: they are counted).
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The input cannot be read, or a line is not what the format promises (file, line, field).
    #[error(transparent)]
    Input(#[from] TrajectoryError),
    /// A setting the input needs is missing (e.g. the answer kind of paper rows).
    #[error("{0}")]
    Usage(String),
    /// An asset (the Python interpreter) is missing or broken.
    #[error(transparent)]
    Asset(#[from] small_agent::assets::AssetError),
    /// The sandbox could not open or fork a session.
    #[error("python sandbox: {0}")]
    Sandbox(#[from] small_agent_sandbox::SandboxError),
    /// The agent's toolbox could not be built.
    #[error(transparent)]
    Agent(#[from] small_agent::agent::AgentError),
}

/// Settings of one import.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// Read only the first `limit` rows of the input.
    pub limit: Option<usize>,
    /// Threads that run Q-Solv snippets (each with its own interpreter); 0 = one per core.
    pub jobs: usize,
    /// GSM8K train file for Q-Solv's thoughts (default: the shared data's `gsm8k-train`).
    pub gsm8k_train: Option<PathBuf>,
    /// Answer kind of paper rows that do not carry one.
    pub answer_kind: Option<Kind>,
    /// `source_dataset` of paper rows that do not carry one (default: the input's file stem).
    pub source_dataset: Option<String>,
    /// `teacher` of paper rows that do not carry one.
    pub teacher: Option<String>,
}

/// How many items were rejected for one reason, and where the first one was.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Rejected {
    /// Items rejected for this reason.
    pub count: usize,
    /// 1-based input line of the first of them.
    pub first_line: usize,
    /// What was wrong with the first of them.
    pub example: String,
}

/// What an import did.
#[derive(Debug, Clone, Serialize)]
pub struct ImportReport {
    /// The format read.
    pub format: Format,
    /// The input file.
    pub input: PathBuf,
    /// Rows read (after `--limit`).
    pub rows: usize,
    /// Items that became trajectories.
    pub converted: usize,
    /// Items that did not, by reason.
    pub rejected: BTreeMap<String, Rejected>,
    /// The trajectories' `source`.
    pub source: String,
    /// The trajectories' `source_dataset` (the most common one, for paper rows).
    pub source_dataset: String,
    /// The trajectories' `teacher`.
    pub teacher: String,
    /// Where the data comes from and under which licence (the shared data's README line).
    pub provenance: String,
    /// A restriction on the use of the data beyond its licence, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub licence_note: Option<String>,
    /// Threads that ran snippets (Q-Solv only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workers: Option<usize>,
    /// Wall time of the import, in seconds.
    pub elapsed_s: f64,
}

impl ImportReport {
    fn new(format: Format, input: &Path) -> Self {
        Self {
            format,
            input: input.to_owned(),
            rows: 0,
            converted: 0,
            rejected: BTreeMap::new(),
            source: String::new(),
            source_dataset: String::new(),
            teacher: String::new(),
            provenance: String::new(),
            licence_note: None,
            workers: None,
            elapsed_s: 0.0,
        }
    }

    /// Items rejected for any reason.
    pub fn rejected_total(&self) -> usize {
        self.rejected.values().map(|r| r.count).sum()
    }

    fn reject(&mut self, line: usize, why: Reject) {
        let e = self.rejected.entry(why.reason).or_insert(Rejected {
            count: 0,
            first_line: line,
            example: why.detail,
        });
        e.count += 1;
    }
}

/// Why one item was not converted: a short reason (the report's key) and its detail.
#[derive(Debug, Clone, PartialEq)]
pub struct Reject {
    /// The reason, the same words for every item it applies to.
    pub reason: String,
    /// What exactly was wrong with this item.
    pub detail: String,
}

impl Reject {
    /// A rejection for `reason`, with `detail`.
    pub fn new(reason: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            detail: detail.into(),
        }
    }
}

/// Per input row (its 1-based line), the trajectory or why there is none.
pub type Converted = Vec<(usize, Result<Trajectory, Reject>)>;

/// The trajectories and the report of an import.
#[derive(Debug)]
pub struct Imported {
    /// The converted items, in input order.
    pub trajectories: Vec<Trajectory>,
    /// The counts.
    pub report: ImportReport,
}

/// Imports `input` as `format`. `progress(done, total)` is called as slow items finish (Q-Solv
/// snippets); the fast formats call it once at the end.
pub fn import(
    format: Format,
    input: &Path,
    opts: &ImportOptions,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<Imported, ImportError> {
    let t0 = Instant::now();
    let rows = read_rows(input, opts.limit)?;
    let mut report = ImportReport::new(format, input);
    report.rows = rows.len();
    let results: Converted = match format {
        Format::Fireact => {
            let prompt = StudentPrompt::builtin()?;
            report_source(&mut report, &fireact::SOURCE);
            rows.iter()
                .map(|r| Ok((r.line, fireact::convert(&prompt, r)?)))
                .collect::<Result<_, TrajectoryError>>()?
        }
        Format::CotFireact => {
            report_source(&mut report, &cot::FIREACT_SOURCE);
            rows.iter()
                .map(|r| Ok((r.line, cot::convert_fireact(r)?)))
                .collect::<Result<_, TrajectoryError>>()?
        }
        Format::CotGsm8k => {
            report_source(&mut report, &cot::GSM8K_SOURCE);
            rows.iter()
                .map(|r| Ok((r.line, cot::convert_gsm8k(r)?)))
                .collect::<Result<_, TrajectoryError>>()?
        }
        Format::Paper => {
            let prompt = StudentPrompt::builtin()?;
            let settings = paper::Settings::new(input, opts);
            report.source = paper::SOURCE_NAME.into();
            report.provenance = paper::PROVENANCE.into();
            let out = rows
                .iter()
                .map(|r| Ok((r.line, paper::convert(&prompt, &settings, r)?)))
                .collect::<Result<Vec<_>, ImportError>>()?;
            let mut seen: BTreeMap<(String, String), usize> = BTreeMap::new();
            for t in out.iter().filter_map(|(_, r)| r.as_ref().ok()) {
                *seen
                    .entry((t.source_dataset.clone(), t.teacher.clone()))
                    .or_default() += 1;
            }
            if let Some(((ds, teacher), _)) = seen.into_iter().max_by_key(|(_, n)| *n) {
                report.source_dataset = ds;
                report.teacher = teacher;
            } else {
                report.source_dataset = settings.default_dataset.clone();
            }
            out
        }
        Format::Qsolv => {
            let prompt = StudentPrompt::builtin()?;
            report_source(&mut report, &qsolv::SOURCE);
            report.licence_note = Some(qsolv::LICENCE_NOTE.into());
            let gsm8k = match &opts.gsm8k_train {
                Some(p) => p.clone(),
                None => default_gsm8k_train(),
            };
            let (out, workers) = qsolv::convert_all(&prompt, &rows, &gsm8k, opts.jobs, progress)?;
            report.workers = Some(workers);
            out
        }
    };
    let mut trajectories = Vec::with_capacity(results.len());
    for (line, r) in results {
        match r {
            Ok(t) => trajectories.push(t),
            Err(why) => report.reject(line, why),
        }
    }
    report.converted = trajectories.len();
    report.elapsed_s = t0.elapsed().as_secs_f64();
    if format != Format::Qsolv {
        progress(report.rows, report.rows);
    }
    Ok(Imported {
        trajectories,
        report,
    })
}

/// The shared data's GSM8K train file (`gsm8k-train/train.jsonl` under
/// [`small_agent_eval::dataset::data_dir`]).
pub fn default_gsm8k_train() -> PathBuf {
    small_agent_eval::dataset::data_dir()
        .join("gsm8k-train")
        .join("train.jsonl")
}

/// The fixed description of a source.
#[derive(Debug, Clone, Copy)]
pub struct SourceInfo {
    /// The trajectories' `source`.
    pub source: &'static str,
    /// Their `source_dataset` (and the first part of their ids).
    pub source_dataset: &'static str,
    /// Their `teacher`.
    pub teacher: &'static str,
    /// Where the data comes from, under which licence.
    pub provenance: &'static str,
}

fn report_source(report: &mut ImportReport, info: &SourceInfo) {
    report.source = info.source.into();
    report.source_dataset = info.source_dataset.into();
    report.teacher = info.teacher.into();
    report.provenance = info.provenance.into();
}

/// One non-blank input line.
#[derive(Debug, Clone)]
pub struct Row {
    /// The file (for error messages).
    pub path: PathBuf,
    /// 1-based line number.
    pub line: usize,
    /// 0-based index among the file's rows (blank lines not counted).
    pub index: usize,
    /// The parsed line.
    pub value: Value,
}

impl Row {
    /// An error naming this row's file, line and `field`.
    pub fn bad(&self, field: &str, why: impl std::fmt::Display) -> TrajectoryError {
        TrajectoryError::BadLine {
            path: self.path.clone(),
            line: self.line,
            why: format!("field `{field}`: {why}"),
        }
    }

    /// The string field `field` (required).
    pub fn str_field(&self, field: &str) -> Result<&str, TrajectoryError> {
        match self.value.get(field) {
            Some(Value::String(s)) => Ok(s),
            Some(other) => Err(self.bad(
                field,
                format!("expected a string, found {}", kind_of(other)),
            )),
            None => Err(self.bad(field, "missing")),
        }
    }

    /// The chat messages under `field` (`value[field]` must be an array of `{role, content}`;
    /// `content` a string or a list of `{type: "text", text}` parts, flattened).
    pub fn messages_at(
        &self,
        holder: &Value,
        field: &str,
    ) -> Result<Vec<ChatMessage>, TrajectoryError> {
        let list = match holder.get("messages") {
            Some(Value::Array(a)) => a,
            Some(other) => {
                return Err(self.bad(
                    field,
                    format!("expected an array, found {}", kind_of(other)),
                ))
            }
            None => return Err(self.bad(field, "missing")),
        };
        list.iter()
            .enumerate()
            .map(|(i, m)| {
                let role = match m.get("role") {
                    Some(Value::String(s)) => s.clone(),
                    _ => {
                        return Err(
                            self.bad(&format!("{field}[{i}].role"), "missing or not a string")
                        )
                    }
                };
                let content = match m.get("content") {
                    Some(c) => message_text(c).ok_or_else(|| {
                        self.bad(
                            &format!("{field}[{i}].content"),
                            "expected a string or a list of {type: \"text\", text} parts",
                        )
                    })?,
                    None => return Err(self.bad(&format!("{field}[{i}].content"), "missing")),
                };
                Ok(ChatMessage::new(&role, content))
            })
            .collect()
    }
}

/// A JSON value's kind, for error messages.
pub fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A message's text: a string as it is, or the `text` of its parts joined by newlines (parts
/// of other types, such as images, are left out). `None` for anything else.
pub fn message_text(content: &Value) -> Option<String> {
    match content {
        Value::String(s) => Some(s.clone()),
        Value::Array(parts) => {
            let mut texts = Vec::new();
            for p in parts {
                match p {
                    Value::String(s) => texts.push(s.as_str()),
                    Value::Object(o) => {
                        match (o.get("type").and_then(Value::as_str), o.get("text")) {
                            (Some("text") | None, Some(Value::String(t))) => texts.push(t),
                            (Some(_), _) => {}
                            (None, _) => return None,
                        }
                    }
                    _ => return None,
                }
            }
            Some(texts.join("\n"))
        }
        _ => None,
    }
}

/// The rows of a JSONL file (at most `limit`), each with its line number.
pub fn read_rows(path: &Path, limit: Option<usize>) -> Result<Vec<Row>, TrajectoryError> {
    let mut rows = Vec::new();
    let cap = limit.unwrap_or(usize::MAX);
    for_each_line(path, |line, value| {
        if rows.len() < cap {
            let index = rows.len();
            rows.push(Row {
                path: path.to_owned(),
                line,
                index,
                value,
            });
        }
        Ok(())
    })?;
    Ok(rows)
}

/// A step's reply in the student's format, before `<end_code>` is put back: `Thought: …`,
/// `Code:`, one ```` ```py ```` block.
pub fn step_reply(thought: &str, code: &str) -> String {
    format!("Thought: {thought}\nCode:\n```py\n{code}\n```")
}

/// One step record in the layout of the agent's `StepRecord` (the fields an importer knows).
pub fn step_record(
    reply: &str,
    code: Option<&str>,
    observation: &str,
    exec_error: bool,
    tool_calls: usize,
    final_answer: Option<&str>,
) -> Value {
    json!({
        "reply": reply,
        "thought": agent::protocol::extract_thought(reply),
        "code": code,
        "observation": observation,
        "parse_error": code.is_none(),
        "exec_error": exec_error,
        "tool_calls": tool_calls,
        "final_answer": final_answer,
    })
}

/// A Python string literal for `s`: double quotes, or single quotes when that avoids
/// escaping (as Python's own `repr` chooses); backslashes, the quote, and control characters
/// escaped; everything else (non-ASCII included) as it is.
pub fn py_str(s: &str) -> String {
    let quote = if s.contains('"') && !s.contains('\'') {
        '\''
    } else {
        '"'
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// The fields every imported trajectory has; the rest are filled by the importer.
#[derive(Debug, Clone)]
pub struct Meta<'a> {
    /// `SOURCE_DATASET/ID`.
    pub id: String,
    /// The task.
    pub question: &'a str,
    /// Gold answers, main one first.
    pub gold: Vec<String>,
    /// The teacher's answer.
    pub generated: String,
    /// Agent or CoT.
    pub kind: TrajectoryKind,
    /// Factual or math.
    pub answer_kind: Kind,
    /// `source`.
    pub source: &'a str,
    /// `source_dataset`.
    pub source_dataset: &'a str,
    /// `teacher`.
    pub teacher: &'a str,
    /// Where the data comes from and its licence (kept on every line, as the shared data's
    /// README asks of derived files).
    pub provenance: &'a str,
}

impl Meta<'_> {
    /// The trajectory with `log_data`.
    pub fn into_trajectory(self, log_data: LogData) -> Trajectory {
        Trajectory {
            id: self.id,
            question: self.question.to_owned(),
            true_answer: self.gold.first().cloned(),
            true_answers: self.gold,
            generated_answer: self.generated,
            kind: self.kind,
            answer_kind: self.answer_kind,
            source: self.source.to_owned(),
            source_dataset: self.source_dataset.to_owned(),
            teacher: self.teacher.to_owned(),
            correct: None,
            failure: None,
            log_data,
            extra: BTreeMap::from([("provenance".to_owned(), Value::from(self.provenance))]),
        }
    }
}

/// `log_data` of an agent-format import whose run ended with `final_answer`.
pub fn agent_log(messages: Vec<ChatMessage>, steps: Vec<Value>, answer_source: &str) -> LogData {
    let mut extra = BTreeMap::new();
    extra.insert("answer_source".to_owned(), Value::from(answer_source));
    LogData {
        messages,
        steps,
        extra,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_literals_escape_what_python_needs() {
        assert_eq!(py_str("Paris"), r#""Paris""#);
        assert_eq!(
            py_str(r#""Human Error" finale"#),
            r#"'"Human Error" finale'"#
        );
        assert_eq!(
            py_str(r#"Harvey Milk's "Reckoning""#),
            r#""Harvey Milk's \"Reckoning\"""#
        );
        assert_eq!(py_str("a\\b\nc\u{1}"), r#""a\\b\nc\x01""#);
        assert_eq!(py_str("Bohème – 1964"), "\"Bohème – 1964\"");
    }

    #[test]
    fn content_parts_are_flattened() {
        let v = json!([{"type": "text", "text": "a"}, {"type": "image", "url": "x"}, {"type": "text", "text": "b"}]);
        assert_eq!(message_text(&v).unwrap(), "a\nb");
        assert_eq!(message_text(&json!("plain")).unwrap(), "plain");
        assert_eq!(message_text(&json!(5)), None);
        assert_eq!(message_text(&json!([{"x": 1}])), None);
    }

    #[test]
    fn the_student_prompt_lists_web_search_and_observations_read_like_the_sandbox() {
        let p = StudentPrompt::builtin().unwrap();
        let open = p.opening("Who?");
        assert_eq!(open.len(), 2);
        assert!(
            open[0].content.contains("web_search(query: str) -> str"),
            "{}",
            open[0].content
        );
        assert!(open[0].content.contains("You have 5 steps"));
        assert_eq!(open[1].content, "New task:\nWho?");
        assert_eq!(
            p.printed_turn("Badr Hari is a kickboxer."),
            "Observation:\nExecution logs:\nBadr Hari is a kickboxer."
        );
        assert_eq!(
            step_reply("t", "x = 1"),
            "Thought: t\nCode:\n```py\nx = 1\n```"
        );
    }
}
