//! Question files: one [`Dataset`] type for every layout of the shared data.
//!
//! Layouts recognised by content (not by file name):
//! - agent-distillation sets: `{"metadata": …, "examples": [{id, question, answer, …}]}`;
//! - HotpotQA original (HippoRAG samples, AMOR): `[{_id, question, answer, context: [[title, [sentences]]]}]`,
//!   as one JSON list or as JSONL;
//! - MuSiQue (HippoRAG samples): `[{id, question, answer, answer_aliases, paragraphs: [{title, paragraph_text}]}]`;
//! - IRCoT JSONL (HotpotQA distractor): `{question_id, question_text, answers_objects: [{spans}], contexts}`;
//! - generic JSONL: `{id, question, answer}` with `answer` a string, a number or a list of
//!   accepted strings, and optional `kind` (`factual` / `math`) and `paragraphs` (`[{title, text}]`).
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What kind of answer a question expects, which decides how it is scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A short text answer (name, date, yes/no): SQuAD-style EM / F1 / containment, or a judge.
    Factual,
    /// A mathematical value: `\boxed{}` / final answer, numeric then symbolic equivalence.
    Math,
}

impl Kind {
    /// `factual` or `math`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Factual => "factual",
            Kind::Math => "math",
        }
    }
}

impl std::str::FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "factual" => Ok(Kind::Factual),
            "math" => Ok(Kind::Math),
            _ => Err(format!("unknown kind {s:?}: expected factual or math")),
        }
    }
}

/// A paragraph that comes with a question (the distractor setting).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Paragraph {
    /// Article title.
    pub title: String,
    /// Paragraph text.
    pub text: String,
}

/// One question.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    /// Identifier from the file (numbers become their decimal text; a missing id becomes the
    /// 0-based position). Unique within a dataset.
    pub id: String,
    /// The question text.
    pub question: String,
    /// Accepted gold answers (the first is the main one; the rest are aliases).
    pub answers: Vec<String>,
    /// How the answer is scored.
    pub kind: Kind,
    /// The question's own paragraphs, if the file has them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paragraphs: Vec<Paragraph>,
}

/// A loaded question file.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// Short name used in tables (`hotpotqa`, `gsm-hard`, … or the file stem).
    pub name: String,
    /// The file it was read from.
    pub path: PathBuf,
    /// Which layout the file had.
    pub layout: &'static str,
    /// Questions in file order.
    pub items: Vec<Item>,
    /// Items left out because they have no gold answer (`null`).
    pub skipped_without_answer: usize,
}

/// Errors of loading a dataset.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not valid JSON / JSONL.
    #[error("{path}: not JSON or JSONL ({reason})")]
    Json {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        reason: String,
    },
    /// The JSON is not a question file of a known layout.
    #[error("{path}: {reason}")]
    Layout {
        /// The file.
        path: PathBuf,
        /// What was expected and what was found.
        reason: String,
    },
    /// A dataset name that is neither a file nor a known name.
    #[error("unknown dataset {name:?}: not a file, and not one of the names {known} (resolved under {data_dir})")]
    UnknownName {
        /// The name given.
        name: String,
        /// The known names.
        known: String,
        /// The data directory names are resolved against.
        data_dir: String,
    },
    /// A known name whose file is missing from the data directory.
    #[error("dataset {name:?} should be at {path}, which does not exist (set SMALL_AGENT_DATA to the shared data directory)")]
    Missing {
        /// The name.
        name: String,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// Two items share an id.
    #[error("{path}: duplicate id {id:?}")]
    DuplicateId {
        /// The file.
        path: PathBuf,
        /// The repeated id.
        id: String,
    },
}

/// A dataset known by name: where it lives under the shared data directory.
#[derive(Debug, Clone, Copy)]
pub struct KnownDataset {
    /// The name (`--dataset NAME`).
    pub name: &'static str,
    /// Path relative to the data directory.
    pub path: &'static str,
    /// A corpus file holding the questions' paragraphs, if there is one.
    pub corpus: Option<&'static str>,
    /// Whether it is evaluation data (never to tune on).
    pub test: bool,
}

/// Every question file of the shared data, by name.
pub const KNOWN: &[KnownDataset] = &[
    KnownDataset {
        name: "hotpotqa",
        path: "agent-distillation/qa/test/hotpotqa_500_20250422.json",
        corpus: None,
        test: true,
    },
    KnownDataset {
        name: "musique",
        path: "agent-distillation/qa/test/musique_500_20250504.json",
        corpus: None,
        test: true,
    },
    KnownDataset {
        name: "2wikimultihopqa",
        path: "agent-distillation/qa/test/2wikimultihopqa_500_20250511.json",
        corpus: None,
        test: true,
    },
    KnownDataset {
        name: "bamboogle",
        path: "agent-distillation/qa/test/bamboogle_125_20250507.json",
        corpus: None,
        test: true,
    },
    KnownDataset {
        name: "math500",
        path: "agent-distillation/math/test/math_500_20250414.json",
        corpus: None,
        test: true,
    },
    KnownDataset {
        name: "gsm-hard",
        path: "agent-distillation/math/test/gsm_hard_500_20250507.json",
        corpus: None,
        test: true,
    },
    KnownDataset {
        name: "aime",
        path: "agent-distillation/math/test/aime_90_20250504.json",
        corpus: None,
        test: true,
    },
    KnownDataset {
        name: "olymmath",
        path: "agent-distillation/math/test/olymath_200_20250511.json",
        corpus: None,
        test: true,
    },
    KnownDataset {
        name: "hotpotqa-train",
        path: "agent-distillation/qa/train/hotpotqa_1000_20250402.json",
        corpus: None,
        test: false,
    },
    KnownDataset {
        name: "math-train",
        path: "agent-distillation/math/train/math_1000_20250414.json",
        corpus: None,
        test: false,
    },
    KnownDataset {
        name: "math-medium-train",
        path: "agent-distillation/math/train/math_medium_1000_20250430.json",
        corpus: None,
        test: false,
    },
    KnownDataset {
        name: "hotpotqa-distractor",
        path: "hotpotqa-distractor/ircot_format_hotpotqa_dev_subsampled_500.jsonl",
        corpus: Some("hotpotqa-distractor/derived_corpus_paragraphs.jsonl"),
        test: true,
    },
    KnownDataset {
        name: "hotpotqa-distractor-amor",
        path: "hotpotqa-distractor/amor_hotpotqa_test_500.jsonl",
        corpus: Some("hotpotqa-distractor/derived_corpus_paragraphs.jsonl"),
        test: true,
    },
    KnownDataset {
        name: "hipporag-hotpotqa",
        path: "hipporag-samples/hotpotqa_train.json",
        corpus: Some("hipporag-samples/hotpotqa_train_corpus.json"),
        test: false,
    },
    KnownDataset {
        name: "hipporag-musique",
        path: "hipporag-samples/musique_train.json",
        corpus: Some("hipporag-samples/musique_train_corpus.json"),
        test: false,
    },
];

/// The shared data directory: `$SMALL_AGENT_DATA`, else the first `shared/data` found in the
/// current directory or above it (the repository sits beside `shared/`).
pub fn data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("SMALL_AGENT_DATA") {
        return PathBuf::from(d);
    }
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    for dir in cwd.ancestors() {
        for cand in [dir.join("shared/data"), dir.join("../shared/data")] {
            if cand.is_dir() {
                return cand.canonicalize().unwrap_or(cand);
            }
        }
    }
    PathBuf::from("../shared/data")
}

/// Resolves `--dataset FILE|NAME`: an existing file is taken as is, else a known name under
/// `data_dir`. Returns the path and, for a known name, its entry.
pub fn resolve(
    spec: &str,
    data_dir: &Path,
) -> Result<(PathBuf, Option<&'static KnownDataset>), DatasetError> {
    let p = Path::new(spec);
    if p.is_file() {
        let known = KNOWN
            .iter()
            .find(|k| p.canonicalize().ok() == data_dir.join(k.path).canonicalize().ok());
        return Ok((p.to_path_buf(), known));
    }
    match KNOWN.iter().find(|k| k.name == spec) {
        Some(k) => {
            let path = data_dir.join(k.path);
            if !path.is_file() {
                return Err(DatasetError::Missing {
                    name: spec.to_owned(),
                    path,
                });
            }
            Ok((path, Some(k)))
        }
        None => Err(DatasetError::UnknownName {
            name: spec.to_owned(),
            known: KNOWN.iter().map(|k| k.name).collect::<Vec<_>>().join(", "),
            data_dir: data_dir.display().to_string(),
        }),
    }
}

/// Loads `FILE|NAME` (see [`resolve`]); a known name gives the dataset its name, a file its stem.
pub fn load_spec(spec: &str, data_dir: &Path) -> Result<Dataset, DatasetError> {
    let (path, known) = resolve(spec, data_dir)?;
    let mut d = load(&path)?;
    if let Some(k) = known {
        d.name = k.name.to_owned();
    }
    Ok(d)
}

/// Loads a question file of any known layout.
pub fn load(path: &Path) -> Result<Dataset, DatasetError> {
    let text = std::fs::read_to_string(path).map_err(|source| DatasetError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let layout_err = |reason: String| DatasetError::Layout {
        path: path.to_path_buf(),
        reason,
    };
    // A whole-file JSON document first, else JSONL (one object per non-empty line).
    let records: Vec<Value> = match serde_json::from_str::<Value>(&text) {
        Ok(Value::Array(a)) => a,
        Ok(Value::Object(o)) => match o.get("examples") {
            Some(Value::Array(a)) => a.clone(),
            // A JSONL file with a single record parses as one object.
            _ if detect_layout(&Value::Object(o.clone())).is_some() => vec![Value::Object(o)],
            _ => {
                return Err(layout_err(
                    "a JSON object without an `examples` list: this is not a question file \
                     (a corpus or a coverage file?)"
                        .into(),
                ))
            }
        },
        Ok(_) => return Err(layout_err("expected a JSON list or object".into())),
        Err(whole) => {
            let mut v = Vec::new();
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                v.push(serde_json::from_str(line).map_err(|e| DatasetError::Json {
                    path: path.to_path_buf(),
                    reason: if i == 0 {
                        format!("{whole}")
                    } else {
                        format!("line {}: {e}", i + 1)
                    },
                })?);
            }
            v
        }
    };
    let Some(first) = records.first() else {
        return Err(layout_err("no records".into()));
    };
    let layout = detect_layout(first).ok_or_else(|| {
        layout_err(format!(
            "records have none of the known layouts (agent-distillation, HotpotQA, MuSiQue, \
             IRCoT, generic {{id, question, answer}}); the first has keys {:?}",
            first
                .as_object()
                .map(|o| o.keys().cloned().collect::<Vec<_>>())
                .unwrap_or_default()
        ))
    })?;
    let mut items = Vec::with_capacity(records.len());
    let mut skipped = 0;
    let mut seen = std::collections::HashSet::new();
    for (i, r) in records.iter().enumerate() {
        match parse_record(layout, r, i, default_kind(r, path))
            .map_err(|e| layout_err(format!("record {i}: {e}")))?
        {
            Some(item) => {
                if !seen.insert(item.id.clone()) {
                    return Err(DatasetError::DuplicateId {
                        path: path.to_path_buf(),
                        id: item.id,
                    });
                }
                items.push(item)
            }
            None => skipped += 1,
        }
    }
    Ok(Dataset {
        name: path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "dataset".into()),
        path: path.to_path_buf(),
        layout,
        items,
        skipped_without_answer: skipped,
    })
}

fn detect_layout(r: &Value) -> Option<&'static str> {
    let has = |k: &str| r.get(k).is_some();
    if has("question_text") && has("answers_objects") {
        Some("ircot")
    } else if has("paragraphs") && has("answer_aliases") {
        Some("musique")
    } else if has("context") && has("supporting_facts") {
        Some("hotpotqa")
    } else if has("dataset_name") && has("question") && has("answer") {
        Some("agent-distillation")
    } else if has("question") && has("answer") {
        Some("generic")
    } else {
        None
    }
}

/// The kind of a record without a `kind` field: math when its `dataset_name` names a math
/// set (MATH, GSM-Hard, AIME, OlymMATH) or the file sits under a `math/` folder, else factual.
fn default_kind(r: &Value, path: &Path) -> Kind {
    let name = r
        .get("dataset_name")
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .to_lowercase();
    let in_math_dir = path
        .components()
        .any(|c| c.as_os_str().to_string_lossy() == "math");
    if ["math", "gsm", "aime"].iter().any(|m| name.contains(m)) || in_math_dir {
        Kind::Math
    } else {
        Kind::Factual
    }
}

fn answer_strings(v: &Value) -> Result<Option<Vec<String>>, String> {
    Ok(Some(match v {
        Value::Null => return Ok(None),
        Value::String(s) if s.trim().is_empty() => return Ok(None),
        Value::String(s) => vec![s.trim().to_owned()],
        Value::Number(n) => vec![number_text(n)],
        Value::Bool(b) => vec![if *b { "yes" } else { "no" }.to_owned()],
        Value::Array(a) => {
            let mut out = Vec::new();
            for x in a {
                if let Some(v) = answer_strings(x)? {
                    out.extend(v);
                }
            }
            if out.is_empty() {
                return Ok(None);
            }
            out
        }
        Value::Object(_) => return Err("answer is an object".into()),
    }))
}

/// A JSON number as text: integral floats lose their `.0` (GSM-Hard stores `13138980.0`).
fn number_text(n: &serde_json::Number) -> String {
    if let Some(f) = n.as_f64().filter(|_| n.is_f64()) {
        if f.fract() == 0.0 && f.abs() < 1e15 {
            return format!("{}", f as i64);
        }
    }
    n.to_string()
}

fn id_of(v: Option<&Value>, pos: usize) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => pos.to_string(),
    }
}

fn str_field(r: &Value, k: &str) -> Result<String, String> {
    r.get(k)
        .and_then(|v| v.as_str())
        .map(str::to_owned)
        .ok_or_else(|| format!("no string field `{k}`"))
}

fn parse_record(
    layout: &str,
    r: &Value,
    pos: usize,
    default_kind: Kind,
) -> Result<Option<Item>, String> {
    let mut paragraphs = Vec::new();
    let (id, question, answers) = match layout {
        "ircot" => {
            let mut answers = Vec::new();
            for o in r
                .get("answers_objects")
                .and_then(|a| a.as_array())
                .into_iter()
                .flatten()
            {
                for s in o
                    .get("spans")
                    .and_then(|s| s.as_array())
                    .into_iter()
                    .flatten()
                {
                    if let Some(s) = s.as_str() {
                        answers.push(s.to_owned());
                    }
                }
            }
            for c in r
                .get("contexts")
                .and_then(|a| a.as_array())
                .into_iter()
                .flatten()
            {
                paragraphs.push(Paragraph {
                    title: str_field(c, "title")?,
                    text: str_field(c, "paragraph_text")?,
                });
            }
            (
                id_of(r.get("question_id"), pos),
                str_field(r, "question_text")?,
                (!answers.is_empty()).then_some(answers),
            )
        }
        "musique" => {
            let mut answers = answer_strings(r.get("answer").unwrap_or(&Value::Null))?;
            if let (Some(a), Some(al)) = (answers.as_mut(), r.get("answer_aliases")) {
                a.extend(answer_strings(al)?.unwrap_or_default());
            }
            for p in r
                .get("paragraphs")
                .and_then(|a| a.as_array())
                .into_iter()
                .flatten()
            {
                paragraphs.push(Paragraph {
                    title: str_field(p, "title")?,
                    text: str_field(p, "paragraph_text")?,
                });
            }
            (id_of(r.get("id"), pos), str_field(r, "question")?, answers)
        }
        "hotpotqa" => {
            for c in r
                .get("context")
                .and_then(|a| a.as_array())
                .into_iter()
                .flatten()
            {
                let title = c
                    .get(0)
                    .and_then(|t| t.as_str())
                    .ok_or("context entry without a title")?;
                let sentences: Vec<&str> = c
                    .get(1)
                    .and_then(|s| s.as_array())
                    .ok_or("context entry without sentences")?
                    .iter()
                    .filter_map(|s| s.as_str())
                    .collect();
                paragraphs.push(Paragraph {
                    title: title.to_owned(),
                    text: sentences.concat().trim().to_owned(),
                });
            }
            (
                id_of(r.get("_id").or_else(|| r.get("id")), pos),
                str_field(r, "question")?,
                answer_strings(r.get("answer").unwrap_or(&Value::Null))?,
            )
        }
        _ => {
            for p in r
                .get("paragraphs")
                .and_then(|a| a.as_array())
                .into_iter()
                .flatten()
            {
                paragraphs.push(Paragraph {
                    title: str_field(p, "title")?,
                    text: str_field(p, "text")?,
                });
            }
            let mut answers = answer_strings(r.get("answer").unwrap_or(&Value::Null))?;
            if let (Some(a), Some(al)) = (answers.as_mut(), r.get("answer_aliases")) {
                a.extend(answer_strings(al)?.unwrap_or_default());
            }
            (
                id_of(r.get("id"), pos).trim().to_owned(),
                str_field(r, "question")?,
                answers,
            )
        }
    };
    let kind = match r.get("kind").and_then(|k| k.as_str()) {
        Some(k) => k.parse()?,
        None => default_kind,
    };
    Ok(answers.map(|answers| Item {
        id,
        question,
        answers,
        kind,
        paragraphs,
    }))
}

/// The union of the items' own paragraphs, deduplicated on (title, text), in first-seen order.
pub fn own_paragraphs(items: &[Item]) -> Vec<Paragraph> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for it in items {
        for p in &it.paragraphs {
            if seen.insert((p.title.clone(), p.text.clone())) {
                out.push(p.clone());
            }
        }
    }
    out
}
