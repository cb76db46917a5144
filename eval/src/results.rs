//! Run directories and result tables.
//!
//! A run directory holds:
//! - `settings.json`: what the run measured (model, shard, prompts, sampling, seed, code
//!   version…), written once, atomically;
//! - `trajectories.jsonl`: one complete line per finished question (scores and trajectory),
//!   appended and flushed as each question ends;
//! - `results.json` and `results.md`: the summary, rewritten through a temporary file and a
//!   rename after every question.
//!
//! So whenever the process dies the directory is consistent: at worst the last JSONL line is
//! torn, and [`RunDir::open`] with `resume` drops it and carries on.
use std::{
    collections::{BTreeMap, HashSet},
    fs::{File, OpenOptions},
    io::Write,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{dataset::Kind, math::MathVerdict};

/// File names inside a run directory.
pub const SETTINGS_FILE: &str = "settings.json";
/// Per-question records.
pub const TRAJECTORIES_FILE: &str = "trajectories.jsonl";
/// Summary as JSON.
pub const RESULTS_FILE: &str = "results.json";
/// Summary as a Markdown table.
pub const RESULTS_MD_FILE: &str = "results.md";
/// Held locked (advisory `flock`) while a process writes the directory.
pub const LOCK_FILE: &str = ".lock";

/// Settings keys that may differ between an interrupted run and its resumption: the
/// question limit (a resumed run may go further), the code version (a rebuilt binary is
/// logged, not refused) and `run_info` (temporary paths, start times).
pub const RESUMABLE_KEYS: &[&str] = &["limit", "code_version", "run_info"];

/// A local judge's verdict on one answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JudgeRecord {
    /// `Some(true)` correct, `Some(false)` incorrect, `None` the reply did not parse.
    pub verdict: Option<bool>,
    /// The judge's raw reply.
    pub reply: String,
}

/// One finished question: one line of `trajectories.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuestionRecord {
    /// Dataset name.
    pub dataset: String,
    /// Item id within the dataset.
    pub id: String,
    /// The question.
    pub question: String,
    /// Accepted answers.
    pub gold: Vec<String>,
    /// Factual or math.
    pub kind: Kind,
    /// The answer given (extracted from the reply).
    pub prediction: String,
    /// Counted as correct (factual: EM, or the judge when one ran and parsed; math: the
    /// equivalence check).
    pub correct: bool,
    /// Normalised exact match.
    pub em: bool,
    /// Token F1.
    pub f1: f64,
    /// Gold contained in the prediction.
    pub contains: bool,
    /// The math equivalence verdict (math items only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub math: Option<MathVerdict>,
    /// The judge's verdict (with `--judge`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge: Option<JudgeRecord>,
    /// Model calls (agent steps; 1 for CoT).
    pub steps: usize,
    /// Of those, replies whose format could not be parsed.
    pub parse_errors: usize,
    /// Search calls made.
    pub search_calls: usize,
    /// Wall time of the question.
    pub seconds: f64,
    /// An error that ended the question early, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The full trajectory (mode-specific).
    #[serde(default)]
    pub trajectory: Value,
}

/// Summary of one dataset in one run (`results.json` → `datasets.NAME`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct DatasetSummary {
    /// Questions scored.
    pub n: usize,
    /// Fraction counted correct.
    pub accuracy: f64,
    /// Fraction with normalised exact match.
    pub em: f64,
    /// Mean token F1.
    pub f1: f64,
    /// Fraction whose prediction contains a gold answer.
    pub contains: f64,
    /// Parse errors per model call.
    pub parse_error_rate: f64,
    /// Mean model calls per question.
    pub mean_steps: f64,
    /// Mean search calls per question.
    pub mean_search_calls: f64,
    /// Mean wall time per question.
    pub seconds_per_question: f64,
    /// Questions that ended with an error.
    pub errors: usize,
    /// Judge statistics, when a judge ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge: Option<JudgeSummary>,
}

/// How the judge did on a dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct JudgeSummary {
    /// Questions the judge was asked about.
    pub asked: usize,
    /// Replies that parsed as a verdict.
    pub parsed: usize,
    /// Fraction of parsed verdicts that say "correct".
    pub accuracy: f64,
    /// Fraction of parsed verdicts equal to exact match.
    pub agreement_with_em: f64,
}

/// Summaries per dataset, in name order.
pub fn summarize(records: &[QuestionRecord]) -> BTreeMap<String, DatasetSummary> {
    let mut by: BTreeMap<String, Vec<&QuestionRecord>> = BTreeMap::new();
    for r in records {
        by.entry(r.dataset.clone()).or_default().push(r);
    }
    by.into_iter()
        .map(|(name, rs)| {
            let n = rs.len();
            let nf = n.max(1) as f64;
            let steps: usize = rs.iter().map(|r| r.steps).sum();
            let frac = |f: &dyn Fn(&QuestionRecord) -> bool| {
                rs.iter().filter(|r| f(r)).count() as f64 / nf
            };
            let judged: Vec<(bool, bool)> = rs
                .iter()
                .filter_map(|r| r.judge.as_ref().map(|j| (j.verdict, r.em)))
                .filter_map(|(v, em)| v.map(|v| (v, em)))
                .collect();
            let asked = rs.iter().filter(|r| r.judge.is_some()).count();
            let judge = (asked > 0).then(|| JudgeSummary {
                asked,
                parsed: judged.len(),
                accuracy: judged.iter().filter(|(v, _)| *v).count() as f64
                    / judged.len().max(1) as f64,
                agreement_with_em: judged.iter().filter(|(v, em)| v == em).count() as f64
                    / judged.len().max(1) as f64,
            });
            let s = DatasetSummary {
                n,
                accuracy: frac(&|r| r.correct),
                em: frac(&|r| r.em),
                f1: rs.iter().map(|r| r.f1).sum::<f64>() / nf,
                contains: frac(&|r| r.contains),
                parse_error_rate: rs.iter().map(|r| r.parse_errors).sum::<usize>() as f64
                    / steps.max(1) as f64,
                mean_steps: steps as f64 / nf,
                mean_search_calls: rs.iter().map(|r| r.search_calls).sum::<usize>() as f64 / nf,
                seconds_per_question: rs.iter().map(|r| r.seconds).sum::<f64>() / nf,
                errors: rs.iter().filter(|r| r.error.is_some()).count(),
                judge,
            };
            (name, s)
        })
        .collect()
}

/// The content of `results.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultsFile {
    /// Per dataset.
    pub datasets: BTreeMap<String, DatasetSummary>,
    /// What was measured.
    pub settings: Value,
}

/// Errors of a run directory.
#[derive(Debug, thiserror::Error)]
pub enum RunDirError {
    /// File system failure.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The directory already holds a run and `--resume` was not given.
    #[error("{0} already holds an evaluation run: pass --resume to continue it, or choose another --out")]
    Exists(PathBuf),
    /// The recorded settings differ from this run's.
    #[error("cannot resume {dir}: its recorded settings differ from this run's ({diff}); use another --out")]
    SettingsDiffer {
        /// The directory.
        dir: PathBuf,
        /// The differing keys with both values.
        diff: String,
    },
    /// A file of the directory does not parse.
    #[error("{path}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Another process is writing the directory.
    #[error("{0} is being written by another evaluation (its lock is held)")]
    Busy(PathBuf),
    /// Not a run directory (for `report`).
    #[error("{0} is not an evaluation run directory (no results.json)")]
    NotARun(PathBuf),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RunDirError + '_ {
    move |source| RunDirError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), RunDirError> {
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ));
    {
        let mut f = File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// An open run directory.
#[derive(Debug)]
pub struct RunDir {
    dir: PathBuf,
    settings: Value,
    jsonl: File,
    /// Locked for the life of the value; the OS releases it when the process dies.
    _lock: File,
}

/// The keys (of two settings objects) whose values differ, ignoring [`RESUMABLE_KEYS`].
pub fn settings_diff(old: &Value, new: &Value) -> Vec<String> {
    let empty = serde_json::Map::new();
    let (o, n) = (
        old.as_object().unwrap_or(&empty),
        new.as_object().unwrap_or(&empty),
    );
    let mut keys: Vec<&String> = o.keys().chain(n.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| !RESUMABLE_KEYS.contains(&k.as_str()))
        .filter(|k| o.get(*k) != n.get(*k))
        .map(|k| {
            let show = |v: Option<&Value>| {
                let s = v.map(|v| v.to_string()).unwrap_or_else(|| "absent".into());
                if s.chars().count() > 80 {
                    format!("{}…", s.chars().take(80).collect::<String>())
                } else {
                    s
                }
            };
            format!("{k}: recorded {} vs now {}", show(o.get(k)), show(n.get(k)))
        })
        .collect()
}

impl RunDir {
    /// Opens `dir` for a run with `settings`. A directory that already holds a run needs
    /// `resume`; then its settings must match (see [`RESUMABLE_KEYS`]) and its finished
    /// questions are returned (a torn last line is dropped from the file).
    pub fn open(
        dir: &Path,
        settings: &Value,
        resume: bool,
    ) -> Result<(RunDir, Vec<QuestionRecord>), RunDirError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(RunDirError::Busy(dir.to_path_buf()))
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(&lock_path)(e)),
        }
        let settings_path = dir.join(SETTINGS_FILE);
        let jsonl_path = dir.join(TRAJECTORIES_FILE);
        let has_run = settings_path.exists() || jsonl_path.exists();
        let mut done = Vec::new();
        if has_run {
            if !resume {
                return Err(RunDirError::Exists(dir.to_path_buf()));
            }
            let text = std::fs::read_to_string(&settings_path).map_err(io(&settings_path))?;
            let old: Value = serde_json::from_str(&text).map_err(|e| RunDirError::Corrupt {
                path: settings_path.clone(),
                reason: e.to_string(),
            })?;
            let diff = settings_diff(&old, settings);
            if !diff.is_empty() {
                return Err(RunDirError::SettingsDiffer {
                    dir: dir.to_path_buf(),
                    diff: diff.join("; "),
                });
            }
            if old.get("code_version") != settings.get("code_version") {
                tracing::warn!(
                    "resuming a run recorded with code version {} on {}",
                    old.get("code_version").cloned().unwrap_or_default(),
                    settings.get("code_version").cloned().unwrap_or_default()
                );
            }
            if jsonl_path.exists() {
                done = read_records(&jsonl_path, true)?;
            }
        }
        // Keep the first recorded settings on resume except for the resumable keys, which
        // take this run's values.
        write_atomic(
            &settings_path,
            serde_json::to_string_pretty(settings)
                .expect("settings serialize")
                .as_bytes(),
        )?;
        let jsonl = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&jsonl_path)
            .map_err(io(&jsonl_path))?;
        Ok((
            RunDir {
                dir: dir.to_path_buf(),
                settings: settings.clone(),
                jsonl,
                _lock: lock,
            },
            done,
        ))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Appends one finished question as one line, in one write, and flushes it to disk.
    pub fn append(&mut self, rec: &QuestionRecord) -> Result<(), RunDirError> {
        let path = self.dir.join(TRAJECTORIES_FILE);
        let mut line = serde_json::to_vec(rec).expect("records serialize");
        line.push(b'\n');
        self.jsonl.write_all(&line).map_err(io(&path))?;
        self.jsonl.sync_data().map_err(io(&path))
    }

    /// Rewrites `results.json` and `results.md` from all finished records.
    pub fn write_results(&self, records: &[QuestionRecord]) -> Result<ResultsFile, RunDirError> {
        let results = ResultsFile {
            datasets: summarize(records),
            settings: self.settings.clone(),
        };
        write_atomic(
            &self.dir.join(RESULTS_FILE),
            serde_json::to_string_pretty(&results)
                .expect("results serialize")
                .as_bytes(),
        )?;
        write_atomic(
            &self.dir.join(RESULTS_MD_FILE),
            markdown_table(&results).as_bytes(),
        )?;
        Ok(results)
    }
}

/// Reads `trajectories.jsonl`. With `repair`, a torn last line (no newline, or not JSON) is
/// cut off the file; a bad line elsewhere is an error.
pub fn read_records(path: &Path, repair: bool) -> Result<Vec<QuestionRecord>, RunDirError> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    let mut out = Vec::new();
    let mut good_len = 0usize;
    let mut pos = 0usize;
    let mut seen = HashSet::new();
    while pos < bytes.len() {
        let end = bytes[pos..]
            .iter()
            .position(|&b| b == b'\n')
            .map(|i| pos + i);
        let line = &bytes[pos..end.unwrap_or(bytes.len())];
        let parsed = serde_json::from_slice::<QuestionRecord>(line);
        match (parsed, end) {
            (Ok(r), Some(e)) => {
                if seen.insert((r.dataset.clone(), r.id.clone())) {
                    out.push(r);
                }
                pos = e + 1;
                good_len = pos;
            }
            (_, None) => break, // torn last line
            (Err(err), Some(e)) => {
                if e + 1 >= bytes.len() {
                    break; // a last line cut inside and then newline-terminated: still torn
                }
                if line.iter().all(|b| b.is_ascii_whitespace()) {
                    pos = e + 1;
                    good_len = pos;
                    continue;
                }
                return Err(RunDirError::Corrupt {
                    path: path.to_path_buf(),
                    reason: format!("line {}: {err}", out.len() + 1),
                });
            }
        }
    }
    if good_len < bytes.len() && repair {
        tracing::warn!(
            "{}: dropping a torn last line ({} bytes)",
            path.display(),
            bytes.len() - good_len
        );
        let f = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io(path))?;
        f.set_len(good_len as u64).map_err(io(path))?;
        f.sync_all().map_err(io(path))?;
    }
    Ok(out)
}

/// Reads a run directory's `results.json`.
pub fn read_results(dir: &Path) -> Result<ResultsFile, RunDirError> {
    let path = dir.join(RESULTS_FILE);
    if !path.is_file() {
        return Err(RunDirError::NotARun(dir.to_path_buf()));
    }
    let text = std::fs::read_to_string(&path).map_err(io(&path))?;
    serde_json::from_str(&text).map_err(|e| RunDirError::Corrupt {
        path,
        reason: e.to_string(),
    })
}

fn pct(x: f64) -> String {
    format!("{:.1}", 100.0 * x)
}

/// One run's table: a row per dataset.
pub fn markdown_table(r: &ResultsFile) -> String {
    let mut s = String::new();
    if let Some(label) = r.settings.get("label").and_then(|l| l.as_str()) {
        s.push_str(&format!("Run: {label}\n\n"));
    }
    let judge = r.datasets.values().any(|d| d.judge.is_some());
    s.push_str("| dataset | n | accuracy % | EM % | F1 % | contains % | parse errors % | mean steps | mean search calls | s / question |");
    if judge {
        s.push_str(" judge parsed | judge agreement with EM % |");
    }
    s.push('\n');
    s.push_str("|---|---|---|---|---|---|---|---|---|---|");
    if judge {
        s.push_str("---|---|");
    }
    s.push('\n');
    for (name, d) in &r.datasets {
        s.push_str(&format!(
            "| {name} | {} | {} | {} | {} | {} | {} | {:.2} | {:.2} | {:.1} |",
            d.n,
            pct(d.accuracy),
            pct(d.em),
            pct(d.f1),
            pct(d.contains),
            pct(d.parse_error_rate),
            d.mean_steps,
            d.mean_search_calls,
            d.seconds_per_question
        ));
        if judge {
            match &d.judge {
                Some(j) => s.push_str(&format!(
                    " {}/{} | {} |",
                    j.parsed,
                    j.asked,
                    pct(j.agreement_with_em)
                )),
                None => s.push_str(" – | – |"),
            }
        }
        s.push('\n');
    }
    s
}

/// The paper's benchmark order: factual sets, then math sets; other datasets follow by name.
pub const PAPER_ORDER: &[&str] = &[
    "hotpotqa",
    "2wikimultihopqa",
    "bamboogle",
    "musique",
    "math500",
    "gsm-hard",
    "aime",
    "olymmath",
];

/// A label for a run: its recorded `label`, else the directory name.
pub fn run_label(dir: &Path, r: &ResultsFile) -> String {
    r.settings
        .get("label")
        .and_then(|l| l.as_str())
        .map(str::to_owned)
        .unwrap_or_else(|| {
            dir.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| dir.display().to_string())
        })
}

/// Several runs side by side in the layout of the paper's table: a row per run, a column of
/// accuracy (%) per dataset, and the average over the datasets the run has; then a detail
/// table (EM, F1, parse errors, steps, search calls, seconds) per run and dataset.
pub fn side_by_side(runs: &[(String, ResultsFile)]) -> String {
    // Runs with the same label and different datasets (e.g. CoT on HotpotQA and CoT on
    // GSM-Hard, run separately) share one row.
    let mut merged: Vec<(String, ResultsFile)> = Vec::new();
    for (label, r) in runs {
        match merged
            .iter_mut()
            .find(|(l, m)| l == label && r.datasets.keys().all(|k| !m.datasets.contains_key(k)))
        {
            Some((_, m)) => m
                .datasets
                .extend(r.datasets.iter().map(|(k, v)| (k.clone(), v.clone()))),
            None => merged.push((label.clone(), r.clone())),
        }
    }
    let runs = &merged[..];
    let mut names: Vec<String> = Vec::new();
    for n in PAPER_ORDER {
        if runs.iter().any(|(_, r)| r.datasets.contains_key(*n)) {
            names.push((*n).to_owned());
        }
    }
    let mut others: Vec<String> = runs
        .iter()
        .flat_map(|(_, r)| r.datasets.keys().cloned())
        .filter(|n| !PAPER_ORDER.contains(&n.as_str()))
        .collect();
    others.sort();
    others.dedup();
    names.extend(others);

    let mut s = String::from("Accuracy (%)\n\n| run |");
    for n in &names {
        s.push_str(&format!(" {n} |"));
    }
    s.push_str(" avg |\n|---|");
    for _ in &names {
        s.push_str("---|");
    }
    s.push_str("---|\n");
    for (label, r) in runs {
        s.push_str(&format!("| {label} |"));
        let mut sum = 0.0;
        let mut k = 0;
        for n in &names {
            match r.datasets.get(n) {
                Some(d) => {
                    s.push_str(&format!(" {} |", pct(d.accuracy)));
                    sum += d.accuracy;
                    k += 1;
                }
                None => s.push_str(" – |"),
            }
        }
        if k > 0 {
            s.push_str(&format!(" {} |\n", pct(sum / k as f64)));
        } else {
            s.push_str(" – |\n");
        }
    }
    s.push_str("\nDetails\n\n| run | dataset | n | accuracy % | EM % | F1 % | parse errors % | mean steps | mean search calls | s / question | total question time s |\n|---|---|---|---|---|---|---|---|---|---|---|\n");
    for (label, r) in runs {
        for n in &names {
            if let Some(d) = r.datasets.get(n) {
                s.push_str(&format!(
                    "| {label} | {n} | {} | {} | {} | {} | {} | {:.2} | {:.2} | {:.1} | {:.0} |\n",
                    d.n,
                    pct(d.accuracy),
                    pct(d.em),
                    pct(d.f1),
                    pct(d.parse_error_rate),
                    d.mean_steps,
                    d.mean_search_calls,
                    d.seconds_per_question,
                    d.seconds_per_question * d.n as f64
                ));
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(dataset: &str, id: &str, correct: bool) -> QuestionRecord {
        QuestionRecord {
            dataset: dataset.into(),
            id: id.into(),
            question: "q".into(),
            gold: vec!["a".into()],
            kind: Kind::Factual,
            prediction: if correct { "a" } else { "b" }.into(),
            correct,
            em: correct,
            f1: if correct { 1.0 } else { 0.0 },
            contains: correct,
            math: None,
            judge: Some(JudgeRecord {
                verdict: Some(true),
                reply: "correct".into(),
            }),
            steps: 2,
            parse_errors: 1,
            search_calls: 1,
            seconds: 1.5,
            error: None,
            trajectory: Value::Null,
        }
    }

    #[test]
    fn summary_counts() {
        let s = summarize(&[rec("d", "1", true), rec("d", "2", false)]);
        let d = &s["d"];
        assert_eq!(d.n, 2);
        assert_eq!(d.accuracy, 0.5);
        assert_eq!(d.parse_error_rate, 0.5);
        assert_eq!(d.mean_steps, 2.0);
        let j = d.judge.as_ref().unwrap();
        assert_eq!((j.asked, j.parsed), (2, 2));
        assert_eq!(j.agreement_with_em, 0.5);
    }

    #[test]
    fn resume_drops_a_torn_line_and_refuses_other_settings() {
        let dir = tempfile::tempdir().unwrap();
        let settings = serde_json::json!({"mode": "cot", "limit": 2});
        let (mut run, done) = RunDir::open(dir.path(), &settings, false).unwrap();
        assert!(done.is_empty());
        run.append(&rec("d", "1", true)).unwrap();
        run.write_results(&[rec("d", "1", true)]).unwrap();
        drop(run);
        // A torn second line, as if the process died mid-write.
        let p = dir.path().join(TRAJECTORIES_FILE);
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"{\"dataset\":\"d\",\"id\":\"2\",\"quest")
            .unwrap();
        drop(f);
        assert!(matches!(
            RunDir::open(dir.path(), &settings, false),
            Err(RunDirError::Exists(_))
        ));
        let other = serde_json::json!({"mode": "agent", "limit": 2});
        assert!(matches!(
            RunDir::open(dir.path(), &other, true),
            Err(RunDirError::SettingsDiffer { .. })
        ));
        let more = serde_json::json!({"mode": "cot", "limit": 5});
        let (mut run, done) = RunDir::open(dir.path(), &more, true).unwrap();
        // A second writer is refused while the first holds the directory.
        assert!(matches!(
            RunDir::open(dir.path(), &more, true),
            Err(RunDirError::Busy(_))
        ));
        assert_eq!(done.len(), 1);
        run.append(&rec("d", "2", false)).unwrap();
        let all = read_records(&p, false).unwrap();
        assert_eq!(
            all.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            ["1", "2"]
        );
    }

    #[test]
    fn tables_render() {
        let r = ResultsFile {
            datasets: summarize(&[rec("gsm-hard", "1", true), rec("hotpotqa", "1", false)]),
            settings: serde_json::json!({"label": "cot"}),
        };
        let t = markdown_table(&r);
        assert!(t.contains("| gsm-hard | 1 | 100.0 |"), "{t}");
        let s = side_by_side(&[("cot".into(), r.clone()), ("agent".into(), r.clone())]);
        assert!(s.contains("| run | hotpotqa | gsm-hard | avg |"), "{s}");
        assert!(s.contains("| cot | 0.0 | 100.0 | 50.0 |"), "{s}");
        // Same label, different datasets: one row.
        let one = |name: &str, ok: bool| ResultsFile {
            datasets: summarize(&[rec(name, "1", ok)]),
            settings: serde_json::json!({"label": "cot"}),
        };
        let s = side_by_side(&[
            ("cot".into(), one("hotpotqa", false)),
            ("cot".into(), one("gsm-hard", true)),
        ]);
        assert!(s.contains("| cot | 0.0 | 100.0 | 50.0 |"), "{s}");
        assert!(!s.contains("| cot | – |"), "{s}");
    }
}
