//! The one trajectory format every `small-agent-distill` command reads and writes.
//!
//! A line is what `small-agent ask --trajectory` writes (`question`, `generated_answer`,
//! `log_data.messages`, `log_data.steps`), plus the fields distillation needs: `id`,
//! `true_answer(s)`, `kind` (agent or CoT), `answer_kind` (factual or math), `source` (who
//! made it: `teacher`, `fireact`, `qsolv`, `paper`, `gsm8k-rationale`, …), `source_dataset`,
//! `teacher` and, once scored, `correct`. Unknown fields are kept as they are, so a line
//! passes through `import` → `filter` → `dataset` without losing anything.
//!
//! Files are JSONL. Writers that append (teacher runs) flush and sync one whole line at a
//! time and cut off a torn last line before resuming ([`JsonlAppender`]); writers that
//! produce a whole file (import, filter) write a temporary file and rename it over the
//! output only when it is complete ([`write_jsonl_atomic`]), so an interrupted command
//! leaves the previous output intact.

use std::collections::{BTreeMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use small_agent::engine::ChatMessage;
use small_agent_eval::dataset::Kind;

/// Errors of reading and writing trajectory files; each names the file (and line).
#[derive(Debug, thiserror::Error)]
pub enum TrajectoryError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// A line is not a trajectory (bad JSON, or a field of the wrong type).
    #[error("{path}:{line}: {why}")]
    BadLine {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong, naming the field where there is one.
        why: String,
    },
}

/// Whether a trajectory acts (Thought → code → observation) or answers in one CoT reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TrajectoryKind {
    /// The agent format: assistant steps with code, observation turns in between.
    #[default]
    Agent,
    /// One chain-of-thought answer (the CoT-distillation baseline).
    Cot,
}

/// What the run's log holds: the conversation and one record per step.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct LogData {
    /// The conversation: system, task, then assistant / observation turns.
    pub messages: Vec<ChatMessage>,
    /// One record per step (the agent's `StepRecord` layout, or the subset an importer
    /// knows: `thought`, `code`, `observation`, `parse_error`, `exec_error`, `final_answer`).
    #[serde(default)]
    pub steps: Vec<Value>,
    /// Everything else the writer put there (timings, first thought, …).
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// One trajectory line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Trajectory {
    /// Unique across sources: `SOURCE_DATASET/ID`.
    pub id: String,
    /// The task.
    pub question: String,
    /// The main gold answer, when known.
    #[serde(default)]
    pub true_answer: Option<String>,
    /// All accepted gold answers (main one first).
    #[serde(default)]
    pub true_answers: Vec<String>,
    /// The answer the run gave.
    #[serde(default)]
    pub generated_answer: String,
    /// Agent or CoT.
    #[serde(default)]
    pub kind: TrajectoryKind,
    /// How the answer is scored.
    pub answer_kind: Kind,
    /// Who made it: `teacher`, `fireact`, `qsolv`, `paper`, `gsm8k-rationale`, `fireact-cot`.
    pub source: String,
    /// The question set it answers (e.g. `hotpotqa-train`, `gsm8k-train`).
    #[serde(default)]
    pub source_dataset: String,
    /// The teacher model, when known.
    #[serde(default)]
    pub teacher: String,
    /// Whether the answer was scored correct (by `generate` or `filter`).
    #[serde(default)]
    pub correct: Option<bool>,
    /// Why the run failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// The conversation and the step records.
    pub log_data: LogData,
    /// Every other field, kept as it came.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

impl Trajectory {
    /// The assistant turns, in order.
    pub fn assistant_turns(&self) -> impl Iterator<Item = &ChatMessage> {
        self.log_data
            .messages
            .iter()
            .filter(|m| m.role == "assistant")
    }

    /// Whether any step's reply had no parseable code.
    pub fn has_parse_error(&self) -> bool {
        self.log_data
            .steps
            .iter()
            .any(|s| s["parse_error"].as_bool() == Some(true))
    }

    /// Steps whose code raised (the run may have recovered from them).
    pub fn exec_errors(&self) -> usize {
        self.log_data
            .steps
            .iter()
            .filter(|s| s["exec_error"].as_bool() == Some(true))
            .count()
    }

    /// Whether the answer came from `final_answer` in the code (not the out-of-steps fallback).
    pub fn answered_by_final_answer(&self) -> bool {
        match self
            .log_data
            .extra
            .get("answer_source")
            .and_then(Value::as_str)
        {
            Some(src) => src == "final_answer",
            None => self
                .log_data
                .steps
                .last()
                .is_some_and(|s| !s["final_answer"].is_null()),
        }
    }
}

/// Reads every line of a trajectory file. Blank lines are skipped; anything else that is not
/// a trajectory is an error naming the line and what is wrong.
pub fn read_jsonl(path: &Path) -> Result<Vec<Trajectory>, TrajectoryError> {
    let mut out = Vec::new();
    for_each_line(path, |line_no, v| {
        let t: Trajectory = match serde_json::from_value(v.clone()) {
            Ok(t) => t,
            Err(e) => {
                return Err(TrajectoryError::BadLine {
                    path: path.to_owned(),
                    line: line_no,
                    why: name_the_field(&v).unwrap_or_else(|| e.to_string()),
                })
            }
        };
        out.push(t);
        Ok(())
    })?;
    Ok(out)
}

/// Which field of a line that does not parse as a [`Trajectory`] is wrong (serde's own
/// message does not name fields inside a struct with flattened extras).
fn name_the_field(v: &Value) -> Option<String> {
    let Some(o) = v.as_object() else {
        return Some("not a JSON object".into());
    };
    macro_rules! check {
        ($name:literal, $ty:ty, $required:expr) => {
            match o.get($name) {
                None if $required => return Some(format!("field `{}`: missing", $name)),
                None => {}
                Some(x) => {
                    if let Err(e) = serde_json::from_value::<$ty>(x.clone()) {
                        return Some(format!("field `{}`: {e}", $name));
                    }
                }
            }
        };
    }
    check!("id", String, true);
    check!("question", String, true);
    check!("true_answer", Option<String>, false);
    check!("true_answers", Vec<String>, false);
    check!("generated_answer", String, false);
    check!("kind", TrajectoryKind, false);
    check!("answer_kind", Kind, true);
    check!("source", String, true);
    check!("source_dataset", String, false);
    check!("teacher", String, false);
    check!("correct", Option<bool>, false);
    check!("failure", Option<String>, false);
    check!("log_data", Value, true);
    let log = &o["log_data"];
    let Some(log) = log.as_object() else {
        return Some("field `log_data`: not an object".into());
    };
    match log.get("messages") {
        None => return Some("field `log_data.messages`: missing".into()),
        Some(m) => {
            if let Err(e) = serde_json::from_value::<Vec<ChatMessage>>(m.clone()) {
                return Some(format!("field `log_data.messages`: {e}"));
            }
        }
    }
    if let Some(steps) = log.get("steps") {
        if let Err(e) = serde_json::from_value::<Vec<Value>>(steps.clone()) {
            return Some(format!("field `log_data.steps`: {e}"));
        }
    }
    None
}

/// Calls `f(line_number, value)` for each non-blank line of a JSONL file.
pub fn for_each_line(
    path: &Path,
    mut f: impl FnMut(usize, Value) -> Result<(), TrajectoryError>,
) -> Result<(), TrajectoryError> {
    let io = |source| TrajectoryError::Io {
        path: path.to_owned(),
        source,
    };
    let reader = BufReader::new(File::open(path).map_err(io)?);
    for (i, line) in reader.lines().enumerate() {
        let line = line.map_err(io)?;
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(&line).map_err(|e| TrajectoryError::BadLine {
            path: path.to_owned(),
            line: i + 1,
            why: format!("not JSON: {e}"),
        })?;
        f(i + 1, v)?;
    }
    Ok(())
}

/// Writes `lines` as JSONL to `path` through a temporary file in the same directory, renamed
/// over `path` only once complete and synced: an interrupted write leaves the old file.
pub fn write_jsonl_atomic<T: Serialize>(path: &Path, lines: &[T]) -> Result<(), TrajectoryError> {
    let io = |source| TrajectoryError::Io {
        path: path.to_owned(),
        source,
    };
    let tmp = tmp_path(path);
    let result = (|| -> std::io::Result<()> {
        let mut w = std::io::BufWriter::new(File::create(&tmp)?);
        for l in lines {
            serde_json::to_writer(&mut w, l)?;
            w.write_all(b"\n")?;
        }
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io)
}

/// `DIR/.NAME.tmp-PID`: beside the target, so the rename stays on one file system.
pub fn tmp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// An output file that grows one durable line at a time and can be resumed.
#[derive(Debug)]
pub struct JsonlAppender {
    path: PathBuf,
    file: Mutex<File>,
}

impl JsonlAppender {
    /// Opens `path` for appending (creating it). Returns the `id`s of the lines already in it
    /// and whether a torn last line (a crash mid-write) was cut off first. A bad line that is
    /// not the last one is an error: resuming must not hide a damaged file.
    pub fn open(path: &Path) -> Result<(Self, HashSet<String>, bool), TrajectoryError> {
        let (ids, torn) = existing_ids(path)?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| TrajectoryError::Io {
                path: path.to_owned(),
                source,
            })?;
        Ok((
            Self {
                path: path.to_owned(),
                file: Mutex::new(file),
            },
            ids,
            torn,
        ))
    }

    /// Appends one line and syncs it before returning.
    pub fn append<T: Serialize>(&self, value: &T) -> Result<(), TrajectoryError> {
        let mut line = serde_json::to_string(value).expect("trajectory records serialise");
        line.push('\n');
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        f.seek(SeekFrom::End(0))
            .and_then(|_| f.write_all(line.as_bytes()))
            .and_then(|_| f.sync_data())
            .map_err(|source| TrajectoryError::Io {
                path: self.path.clone(),
                source,
            })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The ids already in `path`, cutting off a torn last line; a missing file has none.
fn existing_ids(path: &Path) -> Result<(HashSet<String>, bool), TrajectoryError> {
    let io = |source| TrajectoryError::Io {
        path: path.to_owned(),
        source,
    };
    let mut ids = HashSet::new();
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((ids, false)),
        Err(e) => return Err(io(e)),
    };
    let mut reader = BufReader::new(file);
    let (mut good_end, mut pos, mut line_no) = (0u64, 0u64, 0usize);
    let mut line = String::new();
    let mut torn = false;
    loop {
        line.clear();
        let n = reader.read_line(&mut line).map_err(io)?;
        if n == 0 {
            break;
        }
        pos += n as u64;
        line_no += 1;
        let complete = line.ends_with('\n');
        match serde_json::from_str::<Value>(line.trim_end()) {
            Ok(v) if complete => {
                if let Some(id) = v["id"].as_str() {
                    ids.insert(id.to_owned());
                }
                good_end = pos;
            }
            _ if line.trim().is_empty() && complete => good_end = pos,
            _ => {
                torn = true;
                break;
            }
        }
    }
    if torn {
        let more = reader.fill_buf().map(|b| !b.is_empty()).map_err(io)?;
        if more {
            return Err(TrajectoryError::BadLine {
                path: path.to_owned(),
                line: line_no,
                why: "not a JSON line, and not the last one (a torn last line would be cut off \
                      and redone); fix or remove it, then run again"
                    .into(),
            });
        }
        tracing::warn!(path = %path.display(), line = line_no, "cutting off a torn last line before resuming");
        let f = OpenOptions::new().write(true).open(path).map_err(io)?;
        f.set_len(good_end).map_err(io)?;
    }
    Ok((ids, torn))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(id: &str) -> Trajectory {
        Trajectory {
            id: id.into(),
            question: "q".into(),
            true_answer: Some("a".into()),
            true_answers: vec!["a".into()],
            generated_answer: "a".into(),
            kind: TrajectoryKind::Agent,
            answer_kind: Kind::Factual,
            source: "test".into(),
            source_dataset: "unit".into(),
            teacher: String::new(),
            correct: None,
            failure: None,
            log_data: LogData::default(),
            extra: BTreeMap::new(),
        }
    }

    #[test]
    fn unknown_fields_survive_a_round_trip() {
        let line = r#"{"id":"x/1","question":"q","answer_kind":"math","source":"paper","log_data":{"messages":[{"role":"user","content":"hi"}],"steps":[],"total_ms":3.5},"weird":[1,2]}"#;
        let t: Trajectory = serde_json::from_str(line).unwrap();
        assert_eq!(t.extra["weird"], serde_json::json!([1, 2]));
        assert_eq!(t.log_data.extra["total_ms"], serde_json::json!(3.5));
        let back = serde_json::to_value(&t).unwrap();
        assert_eq!(back["weird"], serde_json::json!([1, 2]));
        assert_eq!(back["log_data"]["total_ms"], serde_json::json!(3.5));
    }

    #[test]
    fn a_torn_last_line_is_cut_and_a_torn_middle_line_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.jsonl");
        let good = serde_json::to_string(&sample("a/1")).unwrap();
        std::fs::write(&p, format!("{good}\n{{\"id\":\"a/2\",\"que")).unwrap();
        let (app, ids, torn) = JsonlAppender::open(&p).unwrap();
        assert!(torn && ids.contains("a/1") && ids.len() == 1);
        app.append(&sample("a/2")).unwrap();
        assert_eq!(read_jsonl(&p).unwrap().len(), 2);
        std::fs::write(&p, format!("{good}\nnot json\n{good}\n")).unwrap();
        let e = JsonlAppender::open(&p).unwrap_err().to_string();
        assert!(e.contains(":2:"), "{e}");
    }

    #[test]
    fn a_bad_field_is_named_with_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.jsonl");
        let good = serde_json::to_string(&sample("a/1")).unwrap();
        std::fs::write(&p, format!("{good}\n{{\"id\":\"a/2\",\"question\":5}}\n")).unwrap();
        let e = read_jsonl(&p).unwrap_err().to_string();
        assert!(e.contains("t.jsonl:2:") && e.contains("question"), "{e}");
    }

    #[test]
    fn an_atomic_write_replaces_the_file_whole() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.jsonl");
        write_jsonl_atomic(&p, &[sample("a/1"), sample("a/2")]).unwrap();
        assert_eq!(read_jsonl(&p).unwrap().len(), 2);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
