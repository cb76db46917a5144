//! Teacher runs: the agent, on a teacher model, answers training questions, and each run is
//! written as one trajectory line.
//!
//! The teacher is the same agent loop as the student's (parser, sandbox, tools), greedy, with
//! the long teacher prompt (`models/prompts/teacher-agent.toml`) and optionally the
//! first-thought prefix. Output is one flushed JSONL line per question, so an interrupted run
//! resumes where it stopped: ids already in the output are skipped, and a torn last line (a
//! crash mid-write) is cut off before anything is appended.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::{json, Value};
use small_agent::agent::{
    agent_toolbox, Agent, AgentConfig, PromptTemplate, SearchFn, DEFAULT_MAX_STEPS,
};
use small_agent::chat::{RemoteChat, RemoteConfig};
use small_agent::engine::{Model, SamplingParams, SessionParams};
use small_agent::evaluate::{evaluate_item, AgentAnswerer};
use small_agent_eval::dataset::Item;
use small_agent_sandbox::{CancelFlag, PythonBackend};

use crate::trajectory::{JsonlAppender, TrajectoryError};

/// Context of a local teacher's session: its prompt with worked examples is ~1.1k tokens, and
/// five steps of three passages each follow; 4,096 overflowed on 1 of 20 HotpotQA questions.
pub const DEFAULT_TEACHER_CTX: u32 = 8192;

/// The teacher's prompt template (the long form, with worked examples).
pub const TEACHER_TEMPLATE: &str = include_str!("../../models/prompts/teacher-agent.toml");

/// Errors of a teacher run as a whole (a single question's failure is recorded, not raised).
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// The output file could not be read, repaired or written.
    #[error(transparent)]
    Output(#[from] TrajectoryError),
    /// The teacher could not be set up (remote server unreachable, sandbox, prompt).
    #[error("teacher: {0}")]
    Teacher(String),
    /// The questions are evaluation data, which must never become training data.
    #[error(
        "{0} is an evaluation set: teacher trajectories are training data, so they come from \
         train splits only (e.g. hotpotqa-train, math-train, math-medium-train)"
    )]
    EvaluationQuestions(String),
}

/// The built-in teacher template.
pub fn teacher_template() -> PromptTemplate {
    PromptTemplate::parse("teacher-agent.toml", TEACHER_TEMPLATE)
        .expect("the built-in teacher template is valid")
}

/// Refuses evaluation questions: teacher trajectories become training data, and the test
/// sets, `hotpotqa-distractor/` and `hipporag-samples/` are what the students are evaluated
/// on (the filter drops their questions too). `known` is the file's entry in [`small_agent_eval::dataset::KNOWN`], if any.
pub fn check_training_questions(
    path: &std::path::Path,
    known: Option<&small_agent_eval::dataset::KnownDataset>,
    data_dir: &std::path::Path,
) -> Result<(), GenerateError> {
    let is_test_path = path
        .canonicalize()
        .ok()
        .and_then(|p| {
            let root = data_dir.canonicalize().ok()?;
            let rel = p.strip_prefix(&root).ok()?.to_path_buf();
            Some(
                rel.components().any(|c| c.as_os_str() == "test")
                    || rel.starts_with("hotpotqa-distractor")
                    || rel.starts_with("hipporag-samples"),
            )
        })
        .unwrap_or(false);
    if known.is_some_and(|k| k.test) || is_test_path {
        return Err(GenerateError::EvaluationQuestions(
            path.display().to_string(),
        ));
    }
    Ok(())
}

/// Which model teaches.
pub enum Teacher<'m> {
    /// A GGUF model in this process; each worker gets its own session.
    Local {
        /// The loaded model.
        model: &'m Model,
        /// Context size and threads of each session.
        session: SessionParams,
    },
    /// An OpenAI-compatible server; each worker holds its own connection.
    Remote(RemoteConfig),
}

impl Teacher<'_> {
    /// How the output records the teacher.
    pub fn describe(&self) -> String {
        match self {
            Teacher::Local { model, .. } => model
                .path()
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            Teacher::Remote(c) => format!("{}@{}", c.model.as_deref().unwrap_or("default"), c.url),
        }
    }
}

/// What to run.
pub struct GenerateOptions {
    /// Name of the question set (recorded as `source_dataset`).
    pub dataset: String,
    /// The questions, in order.
    pub items: Vec<Item>,
    /// The output JSONL file (appended to).
    pub out: PathBuf,
    /// Questions answered at once.
    pub workers: usize,
    /// The first-thought prefix: a CoT pass whose first paragraph starts the first step.
    pub prefix: bool,
    /// Step budget of the agent.
    pub max_steps: usize,
    /// The teacher's prompt template.
    pub template: PromptTemplate,
    /// The search function of `web_search`, if the questions need one.
    pub search: Option<SearchFn>,
    /// The Python interpreter.
    pub python: Arc<dyn PythonBackend>,
    /// Raised to stop: runs in progress end, and are not written (they are redone on resume).
    pub cancel: CancelFlag,
}

impl GenerateOptions {
    /// Defaults for the rest: one worker, no prefix, five steps, the teacher template.
    pub fn new(
        dataset: String,
        items: Vec<Item>,
        out: PathBuf,
        python: Arc<dyn PythonBackend>,
    ) -> Self {
        Self {
            dataset,
            items,
            out,
            workers: 1,
            prefix: false,
            max_steps: DEFAULT_MAX_STEPS,
            template: teacher_template(),
            search: None,
            python,
            cancel: CancelFlag::new(),
        }
    }
}

/// Progress after each question.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct GenerateProgress {
    /// Questions to run in this invocation (after skipping finished ones).
    pub to_run: usize,
    /// Questions finished in this invocation.
    pub done: usize,
    /// Of those, with a correct final answer.
    pub correct: usize,
    /// Of those, runs that failed (recorded with their failure).
    pub failed: usize,
}

/// What a teacher run did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GenerateReport {
    /// The teacher.
    pub teacher: String,
    /// Questions given.
    pub questions: usize,
    /// Skipped because their id was already in the output.
    pub skipped_existing: usize,
    /// Finished now.
    pub done: usize,
    /// Finished now with a correct answer.
    pub correct: usize,
    /// Finished now with a failure recorded.
    pub failed: usize,
    /// Stopped by the cancel flag before all were done.
    pub cancelled: bool,
    /// Wall time.
    pub seconds: f64,
    /// Finished questions per minute.
    pub questions_per_min: f64,
    /// Workers.
    pub workers: usize,
    /// A torn last line was cut off the output before appending.
    pub repaired_torn_line: bool,
}

/// Runs the teacher on every question not yet in the output. `on_progress` is called after
/// each question (from the worker that finished it).
pub fn generate(
    opts: &GenerateOptions,
    teacher: &Teacher<'_>,
    on_progress: &(dyn Fn(GenerateProgress) + Sync),
) -> Result<GenerateReport, GenerateError> {
    let t0 = Instant::now();
    let (file, done_ids, repaired) = JsonlAppender::open(&opts.out)?;
    let todo: VecDeque<Item> = opts
        .items
        .iter()
        .filter(|it| !done_ids.contains(&item_id(&opts.dataset, it)))
        .cloned()
        .collect();
    let skipped = opts.items.len() - todo.len();
    let to_run = todo.len();
    let queue = Mutex::new(todo);
    let (done, correct, failed) = (
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicUsize::new(0),
    );
    let first_error: Mutex<Option<GenerateError>> = Mutex::new(None);
    let teacher_name = teacher.describe();
    let workers = opts.workers.max(1).min(to_run.max(1));
    std::thread::scope(|scope| {
        for w in 0..workers {
            let (queue, file, done, correct, failed, first_error) =
                (&queue, &file, &done, &correct, &failed, &first_error);
            let teacher_name = &teacher_name;
            scope.spawn(move || {
                let result = (|| -> Result<(), GenerateError> {
                    let mut agent = build_agent(opts, teacher)?;
                    loop {
                        if opts.cancel.is_raised() || first_error.lock().unwrap().is_some() {
                            return Ok(());
                        }
                        let Some(item) = queue.lock().unwrap().pop_front() else {
                            return Ok(());
                        };
                        let keep_going = || !opts.cancel.is_raised();
                        let mut answerer = AgentAnswerer::new(agent);
                        let record = evaluate_item(
                            &opts.dataset,
                            &item,
                            &mut answerer,
                            None,
                            None,
                            &keep_going,
                        );
                        agent = answerer.into_agent();
                        let record = match record {
                            Ok(Some(r)) => r,
                            // Cancelled: not written, redone on resume.
                            Ok(None) => return Ok(()),
                            Err(e) => {
                                tracing::warn!(worker = w, id = %item.id, error = %e, "teacher run failed");
                                let line = failure_line(opts, teacher_name, &item, &e.to_string());
                                file.append(&line)?;
                                failed.fetch_add(1, Ordering::Relaxed);
                                done.fetch_add(1, Ordering::Relaxed);
                                on_progress(GenerateProgress {
                                    to_run,
                                    done: done.load(Ordering::Relaxed),
                                    correct: correct.load(Ordering::Relaxed),
                                    failed: failed.load(Ordering::Relaxed),
                                });
                                continue;
                            }
                        };
                        let mut line = record.trajectory.clone();
                        let o = line.as_object_mut().expect("trajectory records are objects");
                        o.insert("id".into(), json!(item_id(&opts.dataset, &item)));
                        o.insert("true_answer".into(), json!(item.answers.first()));
                        o.insert("true_answers".into(), json!(item.answers));
                        o.insert("kind".into(), json!("agent"));
                        o.insert("answer_kind".into(), json!(item.kind));
                        o.insert("source".into(), json!("teacher"));
                        o.insert("source_dataset".into(), json!(opts.dataset));
                        o.insert("teacher".into(), json!(teacher_name));
                        o.insert("correct".into(), json!(record.correct));
                        o.insert("prefix".into(), json!(opts.prefix));
                        if let Some(e) = &record.error {
                            o.insert("failure".into(), json!(e));
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                        file.append(&line)?;
                        if record.correct {
                            correct.fetch_add(1, Ordering::Relaxed);
                        }
                        done.fetch_add(1, Ordering::Relaxed);
                        on_progress(GenerateProgress {
                            to_run,
                            done: done.load(Ordering::Relaxed),
                            correct: correct.load(Ordering::Relaxed),
                            failed: failed.load(Ordering::Relaxed),
                        });
                    }
                })();
                if let Err(e) = result {
                    opts.cancel.raise();
                    first_error.lock().unwrap().get_or_insert(e);
                }
            });
        }
    });
    if let Some(e) = first_error.into_inner().unwrap() {
        return Err(e);
    }
    let seconds = t0.elapsed().as_secs_f64();
    let done = done.into_inner();
    Ok(GenerateReport {
        teacher: teacher_name,
        questions: opts.items.len(),
        skipped_existing: skipped,
        done,
        correct: correct.into_inner(),
        failed: failed.into_inner(),
        cancelled: done < to_run,
        seconds,
        questions_per_min: if seconds > 0.0 {
            done as f64 * 60.0 / seconds
        } else {
            0.0
        },
        workers,
        repaired_torn_line: repaired,
    })
}

/// The id of a question in the output: unique across question sets.
pub fn item_id(dataset: &str, item: &Item) -> String {
    format!("{dataset}/{}", item.id)
}

fn failure_line(opts: &GenerateOptions, teacher: &str, item: &Item, why: &str) -> Value {
    json!({
        "id": item_id(&opts.dataset, item),
        "question": item.question,
        "true_answer": item.answers.first(),
        "true_answers": item.answers,
        "generated_answer": "",
        "kind": "agent",
        "answer_kind": item.kind,
        "source": "teacher",
        "source_dataset": opts.dataset,
        "teacher": teacher,
        "correct": false,
        "failure": why,
        "log_data": {"messages": [], "steps": []},
    })
}

fn build_agent<'m>(
    opts: &GenerateOptions,
    teacher: &Teacher<'m>,
) -> Result<Agent<'m>, GenerateError> {
    let tools =
        agent_toolbox(opts.search.clone()).map_err(|e| GenerateError::Teacher(e.to_string()))?;
    let mut config = AgentConfig {
        max_steps: opts.max_steps.max(1),
        template: opts.template.clone(),
        first_thought: opts.prefix,
        sampling: SamplingParams::greedy(),
        ..AgentConfig::default()
    };
    config.limits.cancel = opts.cancel.clone();
    match teacher {
        Teacher::Local { model, session } => {
            let mut session = session.clone();
            session.n_ctx = config.context_size(session.n_ctx);
            Agent::new(model, &session, opts.python.clone(), tools, config)
                .map_err(|e| GenerateError::Teacher(e.to_string()))
        }
        Teacher::Remote(cfg) => {
            let chat = RemoteChat::connect(cfg.clone())
                .map_err(|e| GenerateError::Teacher(e.to_string()))?;
            Ok(Agent::with_model(
                Box::new(chat),
                opts.python.clone(),
                tools,
                config,
            ))
        }
    }
}
