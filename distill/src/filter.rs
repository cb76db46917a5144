//! Which trajectories may teach the student: correct, well-formed, and about no question of
//! any evaluation set.
//!
//! Every trajectory gets exactly one [`Reason`], the first of these that applies:
//! 1. its `id` was already seen in the input (the first line with an id wins);
//! 2. its question is an evaluation question ([`EvalQuestions`]: every question file under the
//!    shared data's `*/test/*`, `hotpotqa-distractor/` and `hipporag-samples/`, matched on
//!    [`question_key`]);
//! 3. the run recorded a `failure` (or an `error` in its log);
//! 4. a step's reply had no parseable code (agent trajectories);
//! 5. the answer did not come from `final_answer` (the out-of-steps fallback; agent only);
//! 6. there is no gold answer to score against;
//! 7. the answer is wrong: factual answers by normalised exact match with any gold answer
//!    (or token F1 at least a threshold, when one is given), math answers by
//!    [`small_agent_eval::math_equal`] (text, numeric with relative tolerance 1e-4,
//!    structure, then sympy in the sandbox when a checker is given).
//!
//! What is left is kept; runs whose code raised at some step and that still reached a
//! correct `final_answer` are kept too and counted apart ([`Reason::KeptRecovered`]).
//! Chain-of-thought trajectories are scored the same way on `generated_answer`.
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;
use small_agent_eval::dataset::{self as evalds, DatasetError, Kind};
use small_agent_eval::{score, SymbolicChecker};

use crate::trajectory::{Trajectory, TrajectoryKind};

/// Folders of the shared data whose every question file is evaluation data for the filter,
/// besides every `test` folder.
pub const EVAL_FOLDERS: [&str; 2] = ["hotpotqa-distractor", "hipporag-samples"];

/// Files in the evaluation folders that hold no questions (corpora, coverage notes); they are
/// listed, not loaded. Any other file there must load as a question file.
pub const NON_QUESTION_FILES: [&str; 4] = [
    "hotpotqa-distractor/derived_corpus_paragraphs.jsonl",
    "hotpotqa-distractor/agent_distillation_hotpotqa_test_coverage.json",
    "hipporag-samples/hotpotqa_train_corpus.json",
    "hipporag-samples/musique_train_corpus.json",
];

/// Errors of the filter.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// An evaluation question file is missing or does not load: the leak check cannot run.
    #[error("evaluation questions: {0} (the leak check needs every evaluation file; set SMALL_AGENT_DATA to the shared data directory)")]
    EvalData(#[from] DatasetError),
    /// A folder of the shared data could not be listed.
    #[error("cannot list {path}: {source}")]
    ListDir {
        /// The folder.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file in an evaluation folder is neither a known corpus nor a question file.
    #[error("{path} is in an evaluation folder but is neither a known corpus file nor a question file ({why}); add it to filter::NON_QUESTION_FILES if it holds no questions")]
    UnknownEvalFile {
        /// The file.
        path: PathBuf,
        /// Why it did not load as questions.
        why: String,
    },
    /// The data directory holds no test folder at all.
    #[error("{0} holds no `test` folder: this is not the shared data directory")]
    NoTestFolder(PathBuf),
}

/// The key two questions are compared on: [`small_agent_eval::score::normalize`] (lower
/// case, punctuation and the articles a/an/the removed, whitespace collapsed). It is looser
/// than the raw text, which is the safe side for a leak check: a training question that
/// differs from an evaluation question only in case, punctuation or spacing is still caught.
pub fn question_key(question: &str) -> String {
    score::normalize(question)
}

/// How many questions one evaluation file gave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EvalFile {
    /// Path relative to the data directory.
    pub path: String,
    /// The known dataset name, if it has one.
    pub name: Option<String>,
    /// Questions loaded (0 for the listed non-question files).
    pub questions: usize,
    /// Whether it is a listed corpus / coverage file rather than a question file.
    pub corpus_only: bool,
}

/// The questions of every evaluation file, by [`question_key`].
#[derive(Debug, Clone, Default)]
pub struct EvalQuestions {
    keys: HashSet<String>,
    /// What each file gave, in path order.
    pub files: Vec<EvalFile>,
}

impl EvalQuestions {
    /// Loads every evaluation question file under `data_dir`: all files under any `test`
    /// folder and under [`EVAL_FOLDERS`], and every [`evalds::KNOWN`] file marked `test`.
    /// A known evaluation file that is missing, or a file there that is neither listed in
    /// [`NON_QUESTION_FILES`] nor loadable as questions, is an error.
    pub fn load(data_dir: &Path) -> Result<Self, FilterError> {
        let mut rels: Vec<String> = Vec::new();
        let mut test_folders = 0;
        collect_eval_files(data_dir, data_dir, false, &mut rels, &mut test_folders)?;
        if test_folders == 0 {
            return Err(FilterError::NoTestFolder(data_dir.to_path_buf()));
        }
        // Known evaluation files must be there, wherever they live.
        for k in evalds::KNOWN {
            let in_eval_folder = EVAL_FOLDERS
                .iter()
                .any(|f| k.path.starts_with(&format!("{f}/")));
            if k.test || in_eval_folder {
                let p = data_dir.join(k.path);
                if !p.is_file() {
                    return Err(DatasetError::Missing {
                        name: k.name.to_owned(),
                        path: p,
                    }
                    .into());
                }
                if !rels.iter().any(|r| r == k.path) {
                    rels.push(k.path.to_owned());
                }
            }
        }
        for f in NON_QUESTION_FILES {
            if !data_dir.join(f).is_file() {
                tracing::warn!(
                    file = f,
                    "a listed non-question file of the shared data is missing"
                );
            }
        }
        rels.sort();
        let mut out = Self::default();
        for rel in rels {
            let path = data_dir.join(&rel);
            let known = evalds::KNOWN.iter().find(|k| k.path == rel);
            if known.is_none() && NON_QUESTION_FILES.contains(&rel.as_str()) {
                out.files.push(EvalFile {
                    path: rel,
                    name: None,
                    questions: 0,
                    corpus_only: true,
                });
                continue;
            }
            let ds = match evalds::load(&path) {
                Ok(d) => d,
                Err(e) if known.is_some() => return Err(e.into()),
                Err(e) => {
                    return Err(FilterError::UnknownEvalFile {
                        path,
                        why: e.to_string(),
                    })
                }
            };
            if known.is_none() {
                tracing::warn!(file = %rel, "an evaluation folder holds a question file that is not in small_agent_eval::dataset::KNOWN; its questions are excluded too");
            }
            let mut n = 0;
            for item in &ds.items {
                out.keys.insert(question_key(&item.question));
                n += 1;
            }
            out.files.push(EvalFile {
                path: rel,
                name: known.map(|k| k.name.to_owned()),
                questions: n,
                corpus_only: false,
            });
        }
        Ok(out)
    }

    /// A set made of the given questions (for tests and callers with their own list).
    pub fn from_questions<'a>(questions: impl IntoIterator<Item = &'a str>) -> Self {
        Self {
            keys: questions.into_iter().map(question_key).collect(),
            files: Vec::new(),
        }
    }

    /// Whether `question` is an evaluation question.
    pub fn contains(&self, question: &str) -> bool {
        self.keys.contains(&question_key(question))
    }

    /// Distinct evaluation questions (by key).
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no question was loaded.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// Adds to `out` the files (relative paths, `/`-separated) under `dir` that are evaluation
/// files: those below a `test` folder or one of [`EVAL_FOLDERS`].
fn collect_eval_files(
    root: &Path,
    dir: &Path,
    inside: bool,
    out: &mut Vec<String>,
    test_folders: &mut usize,
) -> Result<(), FilterError> {
    let list = |source| FilterError::ListDir {
        path: dir.to_path_buf(),
        source,
    };
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(list)?
        .collect::<Result<_, _>>()
        .map_err(list)?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let path = e.path();
        let rel = path
            .strip_prefix(root)
            .unwrap_or(&path)
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join("/");
        if path.is_dir() {
            let is_test = name == "test";
            *test_folders += usize::from(is_test);
            let eval = inside || is_test || EVAL_FOLDERS.contains(&rel.as_str());
            collect_eval_files(root, &path, eval, out, test_folders)?;
        } else if inside && path.is_file() && !name.ends_with(".md") {
            out.push(rel);
        }
    }
    Ok(())
}

/// Why a trajectory was kept or dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Correct, well-formed, no execution error.
    Kept,
    /// Correct and well-formed, after recovering from an execution error at some step.
    KeptRecovered,
    /// The answer does not match the gold answers.
    WrongAnswer,
    /// A step's reply had no parseable code.
    ParseError,
    /// The answer came from the out-of-steps fallback, not `final_answer`.
    NoFinalAnswer,
    /// The run recorded a failure.
    Failure,
    /// The question is in an evaluation set.
    EvaluationQuestion,
    /// Another line with the same id came first.
    DuplicateId,
    /// No gold answer to score against.
    NoGoldAnswer,
}

impl Reason {
    /// Every reason, in report order.
    pub const ALL: [Reason; 9] = [
        Reason::Kept,
        Reason::KeptRecovered,
        Reason::WrongAnswer,
        Reason::ParseError,
        Reason::NoFinalAnswer,
        Reason::Failure,
        Reason::EvaluationQuestion,
        Reason::DuplicateId,
        Reason::NoGoldAnswer,
    ];

    /// Whether the trajectory is kept.
    pub fn kept(self) -> bool {
        matches!(self, Reason::Kept | Reason::KeptRecovered)
    }

    /// The snake_case name used in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Kept => "kept",
            Reason::KeptRecovered => "kept_recovered_errors",
            Reason::WrongAnswer => "wrong_answer",
            Reason::ParseError => "parse_error",
            Reason::NoFinalAnswer => "no_final_answer",
            Reason::Failure => "failure",
            Reason::EvaluationQuestion => "evaluation_question",
            Reason::DuplicateId => "duplicate_id",
            Reason::NoGoldAnswer => "no_gold_answer",
        }
    }
}

/// Settings of the answer check.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct FilterOptions {
    /// Factual answers: also accept a token F1 of at least this against some gold answer.
    pub f1_threshold: Option<f64>,
}

/// The gold answers of a trajectory: `true_answers`, else `true_answer`.
fn golds(t: &Trajectory) -> Vec<&str> {
    let mut g: Vec<&str> = t.true_answers.iter().map(String::as_str).collect();
    if g.is_empty() {
        g.extend(t.true_answer.as_deref());
    }
    g.retain(|s| !s.trim().is_empty());
    g
}

/// Whether the run failed: a `failure` field, or an `error` in its log.
fn failed(t: &Trajectory) -> bool {
    t.failure.is_some()
        || t.log_data
            .extra
            .get("error")
            .is_some_and(|e| !e.is_null() && e.as_str() != Some(""))
}

/// Whether `answer` is correct against `golds`, by the rules in the module doc.
pub fn answer_correct(
    kind: Kind,
    answer: &str,
    golds: &[&str],
    opts: &FilterOptions,
    symbolic: Option<&dyn SymbolicChecker>,
) -> bool {
    if answer.trim().is_empty() {
        return false;
    }
    match kind {
        Kind::Factual => golds.iter().any(|g| {
            score::exact_match(answer, g)
                || opts.f1_threshold.is_some_and(|x| score::f1(answer, g) >= x)
        }),
        Kind::Math => golds
            .iter()
            .any(|g| small_agent_eval::math_equal(answer, g, symbolic).equal),
    }
}

/// Classifies one trajectory, not counting duplicates (see [`Filter`] for those).
pub fn classify(
    t: &Trajectory,
    eval: &EvalQuestions,
    opts: &FilterOptions,
    symbolic: Option<&dyn SymbolicChecker>,
) -> Reason {
    if eval.contains(&t.question) {
        return Reason::EvaluationQuestion;
    }
    if failed(t) {
        return Reason::Failure;
    }
    let agent = t.kind == TrajectoryKind::Agent;
    if t.has_parse_error() || t.extra.get("parse_error").and_then(Value::as_bool) == Some(true) {
        return Reason::ParseError;
    }
    if agent && !t.answered_by_final_answer() {
        return Reason::NoFinalAnswer;
    }
    let g = golds(t);
    if g.is_empty() {
        return Reason::NoGoldAnswer;
    }
    if !answer_correct(t.answer_kind, &t.generated_answer, &g, opts, symbolic) {
        return Reason::WrongAnswer;
    }
    if t.exec_errors() > 0 {
        Reason::KeptRecovered
    } else {
        Reason::Kept
    }
}

/// Counts of one filter run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FilterReport {
    /// Trajectories read.
    pub input: usize,
    /// Trajectories kept (both kept reasons).
    pub kept: usize,
    /// Count per reason (every reason present, zeros included).
    pub reasons: BTreeMap<&'static str, usize>,
    /// Count per (source, reason).
    pub by_source: BTreeMap<String, BTreeMap<&'static str, usize>>,
    /// Evaluation questions loaded from each file.
    pub evaluation_files: Vec<EvalFile>,
    /// Distinct evaluation questions.
    pub evaluation_questions: usize,
}

/// The filter over a stream of trajectories: remembers ids and counts reasons.
#[derive(Debug)]
pub struct Filter<'a> {
    eval: &'a EvalQuestions,
    opts: FilterOptions,
    seen: HashSet<String>,
    report: FilterReport,
}

impl<'a> Filter<'a> {
    /// A filter against `eval`.
    pub fn new(eval: &'a EvalQuestions, opts: FilterOptions) -> Self {
        let mut report = FilterReport {
            evaluation_files: eval.files.clone(),
            evaluation_questions: eval.len(),
            ..Default::default()
        };
        for r in Reason::ALL {
            report.reasons.insert(r.as_str(), 0);
        }
        Self {
            eval,
            opts,
            seen: HashSet::new(),
            report,
        }
    }

    /// Classifies the next trajectory and counts it. A kept one gets `correct: true`.
    pub fn push(&mut self, t: &mut Trajectory, symbolic: Option<&dyn SymbolicChecker>) -> Reason {
        let reason = if !self.seen.insert(t.id.clone()) {
            Reason::DuplicateId
        } else {
            classify(t, self.eval, &self.opts, symbolic)
        };
        if reason.kept() {
            t.correct = Some(true);
            self.report.kept += 1;
        } else if reason == Reason::WrongAnswer {
            t.correct = Some(false);
        }
        self.report.input += 1;
        *self.report.reasons.entry(reason.as_str()).or_default() += 1;
        *self
            .report
            .by_source
            .entry(t.source.clone())
            .or_default()
            .entry(reason.as_str())
            .or_default() += 1;
        reason
    }

    /// The counts so far.
    pub fn report(&self) -> &FilterReport {
        &self.report
    }

    /// The counts.
    pub fn into_report(self) -> FilterReport {
        self.report
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trajectory::LogData;
    use serde_json::json;
    use small_agent::engine::ChatMessage;

    fn traj(id: &str, question: &str, answer: &str, gold: &str, kind: Kind) -> Trajectory {
        Trajectory {
            id: id.into(),
            question: question.into(),
            true_answer: Some(gold.into()),
            true_answers: vec![gold.into()],
            generated_answer: answer.into(),
            kind: TrajectoryKind::Agent,
            answer_kind: kind,
            source: "unit".into(),
            source_dataset: "unit".into(),
            teacher: String::new(),
            correct: None,
            failure: None,
            log_data: LogData {
                messages: vec![
                    ChatMessage::new("system", "s"),
                    ChatMessage::new("user", question),
                    ChatMessage::new(
                        "assistant",
                        "Thought: x\nCode:\n```py\nfinal_answer(1)\n```<end_code>",
                    ),
                ],
                steps: vec![
                    json!({"parse_error": false, "exec_error": false, "final_answer": answer}),
                ],
                extra: [("answer_source".to_owned(), json!("final_answer"))].into(),
            },
            extra: BTreeMap::new(),
        }
    }

    fn run(t: &Trajectory) -> Reason {
        let eval = EvalQuestions::from_questions(["Which city is the capital of Atlantis?"]);
        classify(t, &eval, &FilterOptions::default(), None)
    }

    #[test]
    fn each_reason_is_told_apart() {
        let ok = traj(
            "u/1",
            "Who wrote Kim?",
            "Rudyard Kipling",
            "Rudyard Kipling",
            Kind::Factual,
        );
        assert_eq!(run(&ok), Reason::Kept);

        let wrong = traj(
            "u/2",
            "Who wrote Kim?",
            "Gustav Holst",
            "Rudyard Kipling",
            Kind::Factual,
        );
        assert_eq!(run(&wrong), Reason::WrongAnswer);

        let mut parse = ok.clone();
        parse.log_data.steps.insert(0, json!({"parse_error": true}));
        assert_eq!(run(&parse), Reason::ParseError);

        let mut fallback = ok.clone();
        fallback
            .log_data
            .extra
            .insert("answer_source".into(), json!("fallback"));
        assert_eq!(run(&fallback), Reason::NoFinalAnswer);

        let mut recovered = ok.clone();
        recovered
            .log_data
            .steps
            .insert(0, json!({"parse_error": false, "exec_error": true}));
        assert_eq!(run(&recovered), Reason::KeptRecovered);

        let mut failure = ok.clone();
        failure.failure = Some("context".into());
        assert_eq!(run(&failure), Reason::Failure);

        // Case, punctuation and articles do not hide an evaluation question.
        let leak = traj(
            "u/3",
            "which city is THE capital of Atlantis",
            "x",
            "x",
            Kind::Factual,
        );
        assert_eq!(run(&leak), Reason::EvaluationQuestion);

        let mut nogold = ok.clone();
        nogold.true_answers.clear();
        nogold.true_answer = None;
        assert_eq!(run(&nogold), Reason::NoGoldAnswer);
    }

    #[test]
    fn math_and_f1_and_cot_are_scored() {
        let m = traj("u/1", "1/2 + 1/4?", "0.75", "\\frac{3}{4}", Kind::Math);
        assert_eq!(run(&m), Reason::Kept);
        let m = traj("u/1", "1/2 + 1/4?", "0.7", "\\frac{3}{4}", Kind::Math);
        assert_eq!(run(&m), Reason::WrongAnswer);

        let partial = traj(
            "u/2",
            "Who wrote Kim?",
            "Kipling",
            "Rudyard Kipling",
            Kind::Factual,
        );
        assert_eq!(run(&partial), Reason::WrongAnswer);
        let eval = EvalQuestions::default();
        let opts = FilterOptions {
            f1_threshold: Some(0.6),
        };
        assert_eq!(classify(&partial, &eval, &opts, None), Reason::Kept);

        // A CoT line has no step records and no final_answer: scored on generated_answer.
        let mut cot = traj("u/3", "2+2?", "4", "4", Kind::Math);
        cot.kind = TrajectoryKind::Cot;
        cot.log_data.steps.clear();
        cot.log_data.extra.clear();
        assert_eq!(run(&cot), Reason::Kept);
        cot.generated_answer = "5".into();
        assert_eq!(run(&cot), Reason::WrongAnswer);
    }

    /// A checker that calls everything equal and counts its calls.
    struct AllEqual(std::sync::atomic::AtomicUsize);
    impl SymbolicChecker for AllEqual {
        fn equivalent(&self, _: &str, _: &str) -> small_agent_eval::SymbolicVerdict {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            small_agent_eval::SymbolicVerdict::Equal
        }
    }

    #[test]
    fn the_symbolic_checker_decides_what_text_and_numbers_cannot() {
        let eval = EvalQuestions::default();
        let opts = FilterOptions::default();
        let sym = AllEqual(Default::default());
        let t = traj("u/1", "Simplify x/2.", "x/2", "\\frac{x}{2}", Kind::Math);
        assert_eq!(classify(&t, &eval, &opts, None), Reason::WrongAnswer);
        assert_eq!(classify(&t, &eval, &opts, Some(&sym)), Reason::Kept);
        assert_eq!(sym.0.load(std::sync::atomic::Ordering::SeqCst), 1);
        // Plain numbers never reach it.
        let n = traj("u/2", "2+2?", "5", "4", Kind::Math);
        assert_eq!(classify(&n, &eval, &opts, Some(&sym)), Reason::WrongAnswer);
        assert_eq!(sym.0.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn a_repeated_id_is_dropped_and_kept_lines_are_marked_correct() {
        let eval = EvalQuestions::default();
        let mut f = Filter::new(&eval, FilterOptions::default());
        let mut a = traj(
            "u/1",
            "Who wrote Kim?",
            "Rudyard Kipling",
            "Rudyard Kipling",
            Kind::Factual,
        );
        let mut b = a.clone();
        assert_eq!(f.push(&mut a, None), Reason::Kept);
        assert_eq!(a.correct, Some(true));
        assert_eq!(f.push(&mut b, None), Reason::DuplicateId);
        let r = f.into_report();
        assert_eq!((r.input, r.kept, r.reasons["duplicate_id"]), (2, 1, 1));
    }
}
