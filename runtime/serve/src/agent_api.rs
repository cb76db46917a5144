//! `POST /v1/agent/runs`: an agent run, as Server-Sent Events or as the JSON of
//! `small-agent ask --json`; `DELETE /v1/agent/runs/{id}`: cancel it.
//!
//! The events (SSE `event:` names; each `data:` is a JSON object with the same `type`):
//! `run` (ids and settings), `step_start`, `token` (the step's text as it is generated),
//! `redo` (the step starts over: drop its streamed text), `sources` (passages a
//! `web_search` call returned, numbered for the run), `step` (thought, code, observation,
//! errors, the step's source numbers, token counts and times), `answer`,
//! `done` (totals, every source, the whole run as `ask --json` prints it and the trajectory
//! line of `ask --trajectory`), or `error`.
use std::{sync::Arc, time::Instant};

use axum::{
    body::Bytes,
    extract::{Path, State},
    http::{header, HeaderMap, HeaderValue},
    response::{
        sse::{Event, KeepAlive, Sse},
        IntoResponse, Response,
    },
    Json,
};
use futures_util::stream::{self, StreamExt};
use serde::{Deserialize, Serialize};
use small_agent::agent::{trajectory_record, AgentConfig, AgentRun, StepRecord, STEP_GRAMMAR};
use tokio::sync::mpsc;

use crate::{
    error::{parse_json, ApiError},
    pool::{JobControl, Pool},
    server::AppState,
    sources::Passage,
    worker::{AgentJob, Job, JobKind},
};

/// The body of `POST /v1/agent/runs`. Unknown fields are refused (a misspelt setting would
/// otherwise be silently ignored).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    /// The question.
    pub question: String,
    /// Stream the events (SSE); default: as the `Accept` header asks (`text/event-stream`),
    /// else one JSON answer.
    #[serde(default)]
    pub stream: Option<bool>,
    /// The conversation this question continues (the agent's memory and Python state carry
    /// over while the server still holds it; the `run` event's `continued` says whether it
    /// did). A new id starts a new conversation under that id; none: a fresh id.
    #[serde(default)]
    pub conversation_id: Option<String>,
    /// SAG candidates per step.
    #[serde(default)]
    pub sag: Option<usize>,
    /// Steps before the fallback answer.
    #[serde(default)]
    pub max_steps: Option<usize>,
    /// The step grammar on or off.
    #[serde(default)]
    pub grammar: Option<bool>,
    /// Sampling temperature of the steps.
    #[serde(default)]
    pub temperature: Option<f32>,
    /// Sampling seed.
    #[serde(default)]
    pub seed: Option<u32>,
    /// Times a step whose code repeats an earlier step's is generated again (0: off).
    #[serde(default)]
    pub repeat_retries: Option<usize>,
    /// The interpreter; must be the one the server loaded (`full` or `lite`).
    #[serde(default)]
    pub python: Option<String>,
    /// A GBNF grammar of your own that every step's reply must follow (root rule `root`),
    /// instead of the step grammar: e.g. to make the steps run given code.
    #[serde(default)]
    pub grammar_gbnf: Option<String>,
}

/// The settings a run uses (echoed in the `run` event).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RunSettings {
    /// SAG candidates per step.
    pub sag: usize,
    /// Step budget.
    pub max_steps: usize,
    /// Step grammar on.
    pub grammar: bool,
    /// Temperature, when set.
    pub temperature: Option<f32>,
    /// Seed.
    pub seed: u32,
    /// Repeat guard's retries.
    pub repeat_retries: usize,
    /// Interpreter.
    pub python: String,
    /// The steps follow the request's own grammar (`grammar_gbnf`).
    pub custom_grammar: bool,
    /// That grammar.
    #[serde(skip)]
    pub grammar_gbnf: Option<String>,
}

impl RunSettings {
    /// The agent configuration: `base` (the session's, with the runtime's sandbox limits)
    /// with these settings.
    pub fn apply(&self, base: &AgentConfig) -> AgentConfig {
        let mut c = AgentConfig {
            max_steps: self.max_steps,
            grammar: match &self.grammar_gbnf {
                Some(g) => Some(g.clone()),
                None => self.grammar.then(|| STEP_GRAMMAR.to_owned()),
            },
            sag: 1,
            sampling: small_agent::SamplingParams::greedy(),
            repeat_retries: self.repeat_retries,
            ..base.clone()
        };
        if self.sag > 1 {
            c = c.with_sag(self.sag);
        }
        if let Some(t) = self.temperature {
            c.sampling.temperature = t;
        }
        c.sampling.seed = self.seed;
        c
    }
}

/// One streamed event of a run.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RunEvent {
    /// The run was accepted.
    Run {
        /// Its id (for `DELETE /v1/agent/runs/{id}`).
        run_id: String,
        /// Its conversation.
        conversation_id: String,
        /// Whether the server continues that conversation (memory and Python state).
        continued: bool,
        /// The settings in use.
        settings: RunSettings,
    },
    /// A step starts generating.
    StepStart {
        /// Its number (1-based).
        step: usize,
    },
    /// Text of the step as it is generated.
    Token {
        /// The step.
        step: usize,
        /// The text.
        text: String,
    },
    /// The step is generated again: drop its text streamed so far.
    Redo {
        /// The step.
        step: usize,
        /// Why (its code repeated an earlier step's).
        reason: String,
    },
    /// A `web_search` call's passages.
    Sources {
        /// The step.
        step: usize,
        /// The query the code searched for.
        query: String,
        /// The passages, numbered for the run.
        passages: Vec<Passage>,
    },
    /// A step ended.
    Step(Box<StepEvent>),
    /// The answer.
    Answer {
        /// The answer.
        answer: String,
        /// `final_answer` or `fallback`.
        answer_source: String,
    },
    /// The run ended.
    Done(Box<Done>),
    /// The run could not run.
    Error {
        /// Why.
        message: String,
    },
}

impl RunEvent {
    fn name(&self) -> &'static str {
        match self {
            Self::Run { .. } => "run",
            Self::StepStart { .. } => "step_start",
            Self::Token { .. } => "token",
            Self::Redo { .. } => "redo",
            Self::Sources { .. } => "sources",
            Self::Step(_) => "step",
            Self::Answer { .. } => "answer",
            Self::Done(_) => "done",
            Self::Error { .. } => "error",
        }
    }
}

/// A step as streamed.
#[derive(Debug, Serialize)]
pub struct StepEvent {
    /// Its number (1-based).
    pub step: usize,
    /// The thought.
    pub thought: String,
    /// The code, when the reply had any.
    pub code: Option<String>,
    /// What came back (observation or error turn).
    pub observation: String,
    /// The reply had no code.
    pub parse_error: bool,
    /// The code raised, timed out or trapped.
    pub exec_error: bool,
    /// The answer, when the code called `final_answer`.
    pub final_answer: Option<String>,
    /// Tool calls the code made.
    pub tool_calls: usize,
    /// Numbers of the sources found in this step.
    pub sources: Vec<usize>,
    /// SAG candidates, and the winner's index.
    pub candidates: usize,
    /// The winning candidate.
    pub winner: usize,
    /// Prompt tokens of the step (cached ones included).
    pub prompt_tokens: usize,
    /// Of those, already in the KV cache.
    pub cached_tokens: usize,
    /// Tokens generated.
    pub gen_tokens: usize,
    /// Engine time (prompt + generation), ms.
    pub llm_ms: f64,
    /// Sandbox time, ms.
    pub exec_ms: f64,
    /// Times the step was generated again because its code repeated an earlier step's.
    pub redone: usize,
}

impl StepEvent {
    pub(crate) fn of(step: usize, r: &StepRecord, sources: Vec<usize>) -> Self {
        Self {
            step,
            thought: r.thought.clone(),
            code: r.code.clone(),
            observation: r.observation.clone(),
            parse_error: r.parse_error,
            exec_error: r.exec_error,
            final_answer: r.final_answer.clone(),
            tool_calls: r.tool_calls,
            sources,
            candidates: r.candidates.len(),
            winner: r.winner,
            prompt_tokens: r.llm.prompt_tokens,
            cached_tokens: r.llm.cached_tokens,
            gen_tokens: r.llm.gen_tokens,
            llm_ms: r.llm.prompt_ms + r.llm.gen_ms,
            exec_ms: r.exec_ms,
            redone: r.redone,
        }
    }
}

/// The end of a run.
#[derive(Debug, Serialize)]
pub struct Done {
    /// The conversation was continued.
    pub continued: bool,
    /// The run was cancelled (Stop, DELETE, disconnect, shutdown).
    pub cancelled: bool,
    /// Totals.
    pub totals: Totals,
    /// Every source of the run.
    pub sources: Vec<Passage>,
    /// The whole run, as `small-agent ask --json` prints it.
    pub run: AgentRun,
    /// The run as one line of `ask --trajectory` (question, generated_answer, log_data).
    pub trajectory: serde_json::Value,
}

/// Totals of a run.
#[derive(Debug, Serialize)]
pub struct Totals {
    /// Steps.
    pub steps: usize,
    /// Prompt tokens over all steps (cached included).
    pub prompt_tokens: usize,
    /// Of those, cached.
    pub cached_tokens: usize,
    /// Tokens generated.
    pub gen_tokens: usize,
    /// Engine time, ms.
    pub llm_ms: f64,
    /// Sandbox time, ms.
    pub exec_ms: f64,
    /// Wall time, ms.
    pub total_ms: f64,
}

impl Done {
    pub(crate) fn of(
        run: AgentRun,
        continued: bool,
        cancelled: bool,
        sources: Vec<Passage>,
    ) -> Self {
        let calls = run.steps.iter().map(|s| s.llm).chain(run.fallback);
        let mut t = Totals {
            steps: run.steps.len(),
            prompt_tokens: 0,
            cached_tokens: 0,
            gen_tokens: 0,
            llm_ms: 0.0,
            exec_ms: run.steps.iter().map(|s| s.exec_ms).sum(),
            total_ms: run.total_ms,
        };
        for c in calls {
            t.prompt_tokens += c.prompt_tokens;
            t.cached_tokens += c.cached_tokens;
            t.gen_tokens += c.gen_tokens;
            t.llm_ms += c.prompt_ms + c.gen_ms;
        }
        Self {
            continued,
            cancelled,
            totals: t,
            sources,
            trajectory: trajectory_record(&run),
            run,
        }
    }
}

/// Checks a request against the server's caps and resolves its settings.
pub fn settings_of(state: &AppState, req: &RunRequest) -> Result<RunSettings, ApiError> {
    let cfg = &state.config;
    let q = req.question.trim();
    if q.is_empty() {
        return Err(ApiError::field("question", "`question` is empty"));
    }
    let chars = req.question.chars().count();
    if chars > cfg.max_question_chars {
        return Err(ApiError::field(
            "question",
            format!(
                "`question` has {chars} characters; this server takes at most {}",
                cfg.max_question_chars
            ),
        ));
    }
    if let Some(id) = &req.conversation_id {
        if id.is_empty()
            || id.len() > 128
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(ApiError::field(
                "conversation_id",
                "`conversation_id` must be 1 to 128 characters of A-Z, a-z, 0-9, '-' and '_'",
            ));
        }
    }
    let sag = req.sag.unwrap_or(cfg.run.sag);
    if sag == 0 || sag > cfg.run.max_sag {
        return Err(ApiError::field(
            "sag",
            format!(
                "`sag` must be between 1 and {} (--max-sag), got {sag}",
                cfg.run.max_sag
            ),
        ));
    }
    let max_steps = req.max_steps.unwrap_or(cfg.run.max_steps);
    if max_steps == 0 || max_steps > cfg.run.max_steps_cap {
        return Err(ApiError::field(
            "max_steps",
            format!(
                "`max_steps` must be between 1 and {}, got {max_steps}",
                cfg.run.max_steps_cap
            ),
        ));
    }
    if let Some(t) = req.temperature {
        if !(0.0..=2.0).contains(&t) {
            return Err(ApiError::field(
                "temperature",
                format!("`temperature` must be between 0 and 2, got {t}"),
            ));
        }
    }
    let repeat_retries = req
        .repeat_retries
        .unwrap_or(small_agent::agent::DEFAULT_REPEAT_RETRIES);
    if repeat_retries > MAX_REPEAT_RETRIES {
        return Err(ApiError::field(
            "repeat_retries",
            format!("`repeat_retries` must be at most {MAX_REPEAT_RETRIES}, got {repeat_retries}"),
        ));
    }
    let loaded = cfg.runtime.python.as_str().to_owned();
    if let Some(p) = &req.python {
        if *p != loaded {
            return Err(ApiError::field(
                "python",
                format!(
                    "`python` is {p:?}, but this server runs the {loaded:?} interpreter \
                     (start it with --python {p} to use that one)"
                ),
            ));
        }
    }
    if let Some(g) = &req.grammar_gbnf {
        if !g.contains("root") {
            return Err(ApiError::field(
                "grammar_gbnf",
                "`grammar_gbnf` must define the rule `root`",
            ));
        }
    }
    Ok(RunSettings {
        custom_grammar: req.grammar_gbnf.is_some(),
        grammar_gbnf: req.grammar_gbnf.clone(),
        sag,
        max_steps,
        grammar: req.grammar.unwrap_or(cfg.run.grammar),
        temperature: req.temperature,
        seed: req.seed.unwrap_or(small_agent::engine::DEFAULT_SEED),
        repeat_retries,
        python: loaded,
    })
}

/// The most retries a run may ask of the repeat guard (each is one more generation of a
/// step).
pub const MAX_REPEAT_RETRIES: usize = 4;

/// A random id (128 bits from the standard library's randomly keyed hasher).
pub fn random_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut s = String::new();
    for _ in 0..2 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        s.push_str(&format!("{:016x}", h.finish()));
    }
    s
}

/// Cancels its run when dropped (the client left, or the stream ended) and forgets it.
struct RunGuard {
    pool: Arc<Pool>,
    control: Arc<JobControl>,
    run_id: String,
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        self.control.cancel();
        self.pool.unregister(&self.run_id);
    }
}

/// `POST /v1/agent/runs`.
pub async fn create_run(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match create_run_inner(state, headers, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn create_run_inner(
    state: AppState,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: RunRequest = parse_json(&body)?;
    let settings = settings_of(&state, &req)?;
    let stream = req.stream.unwrap_or_else(|| {
        headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("text/event-stream"))
    });
    let conversation_id = req.conversation_id.clone().unwrap_or_else(random_id);
    let (lease, held) = state.pool.acquire(Some(&conversation_id)).await?;
    let run_id = random_id();
    let control = Arc::new(JobControl::default());
    state.pool.register(&run_id, control.clone());
    let guard = RunGuard {
        pool: state.pool.clone(),
        control: control.clone(),
        run_id: run_id.clone(),
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let config = settings.apply(&state.base_agent);
    state.pool.submit(Job {
        lease,
        control,
        kind: JobKind::Agent(Box::new(AgentJob {
            question: req.question.clone(),
            config,
            continue_conversation: held,
            conversation_id: conversation_id.clone(),
            events: tx,
        })),
    })?;
    tracing::info!(run = %run_id, conversation = %conversation_id, continued = held, stream, "agent run accepted");
    let first = RunEvent::Run {
        run_id: run_id.clone(),
        conversation_id: conversation_id.clone(),
        continued: held,
        settings,
    };
    let mut extra = HeaderMap::new();
    extra.insert("x-run-id", HeaderValue::from_str(&run_id).expect("hex"));
    extra.insert(
        "x-conversation-id",
        HeaderValue::from_str(&conversation_id).expect("checked characters"),
    );
    if stream {
        let events = stream::once(async move { first })
            .chain(stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|e| (e, rx))
            }))
            .map(move |e| {
                // The guard lives as long as the stream: dropped when the client leaves.
                let _ = &guard;
                Ok::<_, std::convert::Infallible>(sse_event(&e))
            });
        let sse = Sse::new(events).keep_alive(
            KeepAlive::new()
                .interval(std::time::Duration::from_millis(500))
                .text("keep-alive"),
        );
        let mut r = sse.into_response();
        r.headers_mut().extend(extra);
        r.headers_mut()
            .insert("x-accel-buffering", HeaderValue::from_static("no"));
        return Ok(r);
    }
    let t0 = Instant::now();
    let mut last_error = None;
    while let Some(e) = rx.recv().await {
        match e {
            RunEvent::Done(done) => {
                drop(guard);
                tracing::debug!(ms = t0.elapsed().as_millis() as u64, "run answered");
                let mut r = Json(done.run).into_response();
                r.headers_mut().extend(extra);
                r.headers_mut().insert(
                    "x-conversation-continued",
                    HeaderValue::from_static(if held { "true" } else { "false" }),
                );
                return Ok(r);
            }
            RunEvent::Error { message } => last_error = Some(message),
            _ => {}
        }
    }
    drop(guard);
    Err(ApiError::Internal(last_error.unwrap_or_else(|| {
        "the run ended without an answer".into()
    })))
}

fn sse_event(e: &RunEvent) -> Event {
    Event::default()
        .event(e.name())
        .json_data(e)
        .unwrap_or_else(|_| Event::default().event("error").data("{}"))
}

/// `DELETE /v1/agent/runs/{id}`: cancels the run (decoding stops at the next token, running
/// code at the sandbox's next interrupt tick).
pub async fn cancel_run(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    if state.pool.cancel_run(&id) {
        tracing::info!(run = %id, "run cancelled by DELETE");
        Json(serde_json::json!({"run_id": id, "cancelled": true})).into_response()
    } else {
        ApiError::NotFound(format!("no running run with id {id:?}")).into_response()
    }
}
