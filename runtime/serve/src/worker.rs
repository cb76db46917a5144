//! The sessions' threads: each owns one [`AgentSession`] (and, once a chat completion needs
//! one, a context of the bare model) and runs the jobs the pool hands it, one at a time.
//! A panic in a job is caught here: the client gets an error, the session is rebuilt, the
//! server goes on.
use std::{
    panic::AssertUnwindSafe,
    sync::{atomic::Ordering::Relaxed, mpsc, Arc, Mutex},
    thread::JoinHandle,
    time::Instant,
};

use small_agent::{
    agent::{AgentConfig, AgentEvent},
    embed::{AgentSession, Runtime, RuntimeError, SearchObserver, SessionConfig},
    Completion, EngineError, GenerateParams, Model, Session, SessionParams,
};
use tokio::sync::mpsc::UnboundedSender;

use crate::{
    agent_api::{Done, RunEvent, StepEvent},
    error::{ApiError, ServeError},
    metrics::Metrics,
    pool::{JobControl, Lease},
    sources::SourceList,
};

/// A job for a session's thread.
pub(crate) struct Job {
    /// The session; dropped (given back) when the job has ended.
    pub lease: Lease,
    /// Its cancellation.
    pub control: Arc<JobControl>,
    /// What to do.
    pub kind: JobKind,
}

/// What a job does.
pub(crate) enum JobKind {
    /// An agent run.
    Agent(Box<AgentJob>),
    /// A chat completion on the bare model.
    Chat(ChatJob),
}

/// An agent run.
pub(crate) struct AgentJob {
    pub question: String,
    pub config: AgentConfig,
    /// Continue the conversation the session holds.
    pub continue_conversation: bool,
    pub conversation_id: String,
    pub events: UnboundedSender<RunEvent>,
}

/// A chat completion: the rendered prompt, `n` parallel sequences.
pub(crate) struct ChatJob {
    pub prompt: String,
    /// Evaluate the prompt from scratch (a request with a seed): a prompt partly taken
    /// from the KV cache gets logits that differ in the last bits (other kernels for other
    /// batch sizes), and sampled texts would then differ for the same seed.
    pub fresh: bool,
    pub n: usize,
    pub params: GenerateParams,
    pub events: UnboundedSender<ChatEvent>,
}

/// What a chat completion sends back.
#[derive(Debug)]
pub(crate) enum ChatEvent {
    /// Text of choice `index`.
    Delta { index: usize, text: String },
    /// The end: every choice, and the prompt's token count.
    Done {
        completions: Vec<Completion>,
        prompt_tokens: usize,
    },
    /// It failed.
    Error(ApiError),
}

/// Where a job's client hears of a panic.
enum PanicReply {
    Agent(UnboundedSender<RunEvent>),
    Chat(UnboundedSender<ChatEvent>),
}

/// Where a session's `web_search` observer sends the sources of the current run.
#[derive(Default)]
struct RunSink {
    events: Option<UnboundedSender<RunEvent>>,
    sources: SourceList,
    step: usize,
}

type Sink = Arc<Mutex<RunSink>>;

/// The sessions' job channels and threads.
pub(crate) type Spawned = (Vec<mpsc::Sender<Job>>, Vec<JoinHandle<()>>);

/// Opens `count` sessions (on this thread, so that a failure stops the start) and starts a
/// thread for each.
pub(crate) fn spawn(
    runtime: &Runtime,
    count: usize,
    session: &SessionConfig,
    chat: &SessionParams,
    metrics: &Arc<Metrics>,
) -> Result<Spawned, ServeError> {
    let mut senders = Vec::new();
    let mut threads = Vec::new();
    for i in 0..count {
        let sink = Sink::default();
        let agent = open_session(runtime, session, &sink)?;
        let (tx, rx) = mpsc::channel::<Job>();
        let ctx = WorkerCtx {
            runtime: runtime.clone(),
            session_config: session.clone(),
            chat_params: chat.clone(),
            metrics: metrics.clone(),
            sink,
            panic_on: std::env::var(PANIC_ON_ENV).ok().filter(|m| !m.is_empty()),
        };
        let t = std::thread::Builder::new()
            .name(format!("session-{i}"))
            .spawn(move || worker_main(ctx, agent, rx))?;
        senders.push(tx);
        threads.push(t);
    }
    Ok((senders, threads))
}

fn open_session(
    runtime: &Runtime,
    config: &SessionConfig,
    sink: &Sink,
) -> Result<AgentSession, RuntimeError> {
    let sink = sink.clone();
    let observer: SearchObserver = Arc::new(move |query, found| {
        let mut s = sink.lock().unwrap();
        let (Some(events), Ok(text)) = (s.events.clone(), found) else {
            return;
        };
        let passages = s.sources.add(text);
        let _ = events.send(RunEvent::Sources {
            step: s.step,
            query: query.to_owned(),
            passages,
        });
    });
    runtime.session_observed(config, Some(observer))
}

/// Fault injection for the tests: a question that contains this variable's text panics
/// inside its job after its first step, the way a bug would, so that the tests can show a
/// panic stays inside one request. Unset (the normal case) it costs one comparison per step.
pub const PANIC_ON_ENV: &str = "SMALL_AGENT_SERVE_PANIC_ON";

struct WorkerCtx {
    /// [`PANIC_ON_ENV`], read once at start-up.
    panic_on: Option<String>,
    runtime: Runtime,
    session_config: SessionConfig,
    chat_params: SessionParams,
    metrics: Arc<Metrics>,
    sink: Sink,
}

fn worker_main(ctx: WorkerCtx, mut agent: AgentSession, rx: mpsc::Receiver<Job>) {
    let model: &Model = ctx.runtime.model();
    let mut chat: Option<Session<'_>> = None;
    while let Ok(job) = rx.recv() {
        let Job {
            lease,
            control,
            kind,
        } = job;
        let worker = lease.worker;
        // Kept apart from the job, so that a panic's client still hears why its request ended.
        let on_panic = match &kind {
            JobKind::Agent(j) => PanicReply::Agent(j.events.clone()),
            JobKind::Chat(j) => PanicReply::Chat(j.events.clone()),
        };
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| match kind {
            JobKind::Agent(j) => {
                run_agent(&ctx, &mut agent, &control, *j, |conv| {
                    lease.pool().set_conversation(worker, conv)
                });
            }
            JobKind::Chat(j) => run_chat(&ctx, model, &mut chat, &control, j),
        }));
        control.finish();
        if outcome.is_err() {
            ctx.metrics.panics.fetch_add(1, Relaxed);
            const MESSAGE: &str =
                "internal error: this request failed inside the server (see its log); \
                 the session was reset, so a new request can go ahead";
            match on_panic {
                PanicReply::Agent(tx) => {
                    let _ = tx.send(RunEvent::Error {
                        message: MESSAGE.into(),
                    });
                }
                PanicReply::Chat(tx) => {
                    let _ = tx.send(ChatEvent::Error(ApiError::Internal(MESSAGE.into())));
                }
            }
            tracing::error!(
                session = worker,
                "a request panicked; rebuilding the session"
            );
            *ctx.sink.lock().unwrap() = RunSink::default();
            chat = None;
            lease.pool().set_conversation(worker, None);
            match open_session(&ctx.runtime, &ctx.session_config, &ctx.sink) {
                Ok(s) => agent = s,
                Err(e) => {
                    tracing::error!(session = worker, "cannot rebuild the session: {e}");
                    // The lease is dropped with the thread's end; the pool's permit for
                    // this session is gone with it, and requests see the others.
                    return;
                }
            }
        }
        drop(lease);
    }
}

fn run_agent(
    ctx: &WorkerCtx,
    agent: &mut AgentSession,
    control: &JobControl,
    job: AgentJob,
    set_conversation: impl FnOnce(Option<String>),
) {
    let events = job.events;
    if !control.start(&agent.canceller()) {
        ctx.metrics.agent_runs_cancelled.fetch_add(1, Relaxed);
        let _ = events.send(RunEvent::Error {
            message: "cancelled before the run started".into(),
        });
        return;
    }
    if let Err(e) = agent.set_agent_config(job.config) {
        let _ = events.send(RunEvent::Error {
            message: e.to_string(),
        });
        return;
    }
    ctx.metrics.agent_runs.fetch_add(1, Relaxed);
    {
        let mut s = ctx.sink.lock().unwrap();
        *s = RunSink {
            events: Some(events.clone()),
            sources: SourceList::default(),
            step: 1,
        };
    }
    let mut step = 1usize;
    let mut in_step = false;
    let t0 = Instant::now();
    let result = agent.ask_in_conversation(&job.question, job.continue_conversation, &mut |ev| {
        match ev {
            AgentEvent::Token(t) => {
                if !in_step {
                    in_step = true;
                    ctx.sink.lock().unwrap().step = step;
                    let _ = events.send(RunEvent::StepStart { step });
                }
                let _ = events.send(RunEvent::Token {
                    step,
                    text: t.to_owned(),
                });
            }
            AgentEvent::Redo(why) => {
                let _ = events.send(RunEvent::Redo {
                    step,
                    reason: why.to_owned(),
                });
            }
            AgentEvent::Step(rec) => {
                if let Some(marker) = &ctx.panic_on {
                    if job.question.contains(marker.as_str()) {
                        panic!("{PANIC_ON_ENV}: the question contains {marker:?}");
                    }
                }
                let sources = ctx.sink.lock().unwrap().sources.take_step();
                ctx.metrics.add_llm(&rec.llm);
                ctx.metrics
                    .sandbox_us
                    .fetch_add((rec.exec_ms * 1e3) as u64, Relaxed);
                let _ = events.send(RunEvent::Step(Box::new(StepEvent::of(step, rec, sources))));
                in_step = false;
                step += 1;
            }
        }
        !control.is_cancelled() && !events.is_closed()
    });
    let sources = std::mem::take(&mut *ctx.sink.lock().unwrap()).sources;
    match result {
        Ok((run, continued)) => {
            set_conversation(Some(job.conversation_id.clone()));
            if let Some(f) = &run.fallback {
                ctx.metrics.add_llm(f);
            }
            let cancelled = run.failure == Some(small_agent::agent::RunFailure::Cancelled);
            if cancelled {
                ctx.metrics.agent_runs_cancelled.fetch_add(1, Relaxed);
            }
            tracing::info!(
                conversation = %job.conversation_id,
                continued,
                steps = run.steps.len(),
                gen_tokens = run.steps.iter().map(|s| s.llm.gen_tokens).sum::<usize>(),
                ms = t0.elapsed().as_millis() as u64,
                cancelled,
                "agent run ended"
            );
            if !run.answer.is_empty() {
                let _ = events.send(RunEvent::Answer {
                    answer: run.answer.clone(),
                    answer_source: run.answer_source.to_owned(),
                });
            }
            let _ = events.send(RunEvent::Done(Box::new(Done::of(
                run,
                continued,
                cancelled,
                sources.all().to_vec(),
            ))));
        }
        Err(RuntimeError::Cancelled) => {
            ctx.metrics.agent_runs_cancelled.fetch_add(1, Relaxed);
            let _ = events.send(RunEvent::Error {
                message: "cancelled before the run started".into(),
            });
        }
        Err(e) => {
            // The conversation (if any) was dropped with the failed start.
            set_conversation(None);
            tracing::warn!("agent run failed: {e}");
            let _ = events.send(RunEvent::Error {
                message: e.to_string(),
            });
        }
    }
}

fn run_chat<'m>(
    ctx: &WorkerCtx,
    model: &'m Model,
    chat: &mut Option<Session<'m>>,
    control: &JobControl,
    job: ChatJob,
) {
    let events = job.events;
    if control.is_cancelled() {
        return;
    }
    if chat.is_none() {
        match model.session(&ctx.chat_params) {
            Ok(s) => *chat = Some(s),
            Err(e) => {
                let _ = events.send(ChatEvent::Error(ApiError::Internal(e.to_string())));
                return;
            }
        }
    }
    let session = chat.as_mut().expect("opened above");
    if job.fresh {
        session.clear();
    }
    let tokens = model.tokenize(&job.prompt, true);
    let t0 = Instant::now();
    let result = session.complete_parallel(&tokens, job.n, &job.params, &mut |i, t| {
        let _ = events.send(ChatEvent::Delta {
            index: i,
            text: t.to_owned(),
        });
        !control.is_cancelled() && !events.is_closed()
    });
    match result {
        Ok(completions) => {
            ctx.metrics.chat_completions.fetch_add(1, Relaxed);
            if let Some(c) = completions.first() {
                let mut s = c.stats;
                s.gen_tokens = completions.iter().map(|c| c.stats.gen_tokens).sum();
                ctx.metrics.add_llm(&s);
            }
            tracing::info!(
                n = job.n,
                prompt_tokens = tokens.len(),
                gen_tokens = completions
                    .iter()
                    .map(|c| c.stats.gen_tokens)
                    .sum::<usize>(),
                ms = t0.elapsed().as_millis() as u64,
                "chat completion"
            );
            let _ = events.send(ChatEvent::Done {
                completions,
                prompt_tokens: tokens.len(),
            });
        }
        Err(e @ EngineError::ContextOverflow { .. }) => {
            let _ = events.send(ChatEvent::Error(ApiError::field(
                "messages",
                format!("the conversation does not fit the context: {e}"),
            )));
        }
        Err(e @ EngineError::Grammar(_)) | Err(e @ EngineError::InvalidParameter(_)) => {
            let _ = events.send(ChatEvent::Error(ApiError::BadRequest {
                message: e.to_string(),
                param: None,
            }));
        }
        Err(e) => {
            // The context may be in any state: open a fresh one next time.
            *chat = None;
            let _ = events.send(ChatEvent::Error(ApiError::Internal(e.to_string())));
        }
    }
}
