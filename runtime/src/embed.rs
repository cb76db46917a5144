//! The embedding API: a [`Runtime`] (model + knowledge shard + Python back-end, loaded once and
//! shared across threads) and [`AgentSession`]s on it (one conversation each, used by one
//! thread at a time). The C ABI (`ffi`) is a thin layer over these two types; Rust programs use
//! them directly.
//!
//! ```no_run
//! use small_agent::embed::{Runtime, RuntimeConfig, SessionConfig};
//! let runtime = Runtime::load(&RuntimeConfig::default())?;
//! let mut session = runtime.session(&SessionConfig::default())?;
//! let run = session.ask("What is 6 times 7?", &mut |_| true)?;
//! println!("{}", run.answer);
//! # Ok::<(), small_agent::embed::RuntimeError>(())
//! ```
use std::{path::PathBuf, sync::Arc};

use small_agent_sandbox::{CancelFlag, Flavour, Limits, PythonBackend};

use crate::{
    agent::{
        agent_toolbox, Agent, AgentConfig, AgentError, AgentEvent, AgentRun, Conversation, SearchFn,
    },
    assets::{self, AssetError},
    engine::{default_threads, EngineError, Model, SessionParams, DEFAULT_CTX_SIZE},
};

/// Sees each `web_search` call of a session ([`Runtime::session_observed`]): the query and
/// what the tool returned to the code (the formatted passages, or the error). Called on the
/// thread that runs the tool, while the run waits for it: keep it short.
pub type SearchObserver = Arc<dyn Fn(&str, &Result<String, String>) + Send + Sync>;

/// Which knowledge shard `web_search` reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ShardChoice {
    /// The default shard under `$SMALL_AGENT_HOME/shards/` (built by `scripts/setup.sh`).
    #[default]
    Default,
    /// A shard directory built by `small-agent index build`.
    Path(PathBuf),
    /// No shard: the agent gets no `web_search` tool.
    None,
}

/// What a [`Runtime`] loads.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// GGUF model; `None` is the fetched default model.
    pub model: Option<PathBuf>,
    /// A LoRA adapter GGUF of that model applied on top of it
    /// ([`crate::engine::LoadOptions::adapter`]).
    pub adapter: Option<PathBuf>,
    /// Knowledge shard for `web_search`.
    pub shard: ShardChoice,
    /// CPU threads of each session's generation; 0 picks the default.
    pub threads: i32,
    /// Context size (tokens) of each session, before room for SAG candidates is added.
    pub context_size: u32,
    /// Interpreter flavour.
    pub python: Flavour,
    /// Sandbox limits (timeout, memory); each session gets its own cancel flag.
    pub limits: Limits,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            model: None,
            adapter: None,
            shard: ShardChoice::Default,
            threads: 0,
            context_size: DEFAULT_CTX_SIZE,
            python: Flavour::Full,
            limits: Limits::default(),
        }
    }
}

/// How one [`AgentSession`] runs the agent.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// The agent's settings. `limits.cancel` is replaced by the session's own flag.
    pub agent: AgentConfig,
}

impl Default for SessionConfig {
    /// One greedy candidate per step with the step grammar (the fastest setting).
    fn default() -> Self {
        Self {
            agent: AgentConfig::default(),
        }
    }
}

/// Errors of loading a runtime or running a session.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A setting is out of range; the message says which.
    #[error("invalid setting: {0}")]
    InvalidConfig(String),
    /// An asset is missing or could not be located.
    #[error(transparent)]
    Asset(#[from] AssetError),
    /// The model could not be loaded, or generation failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The knowledge shard could not be opened.
    #[error(transparent)]
    Index(#[from] small_agent_index::Error),
    /// The agent could not start (e.g. the sandbox would not open).
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// The session was cancelled before its run could start.
    #[error("cancelled before the run started")]
    Cancelled,
}

struct Loaded {
    model: Model,
    search: Option<SearchFn>,
    python: Arc<dyn PythonBackend>,
    session: SessionParams,
    limits: Limits,
}

/// Model, shard and interpreter, loaded once. Cheap to clone; `Send + Sync`: any number of
/// threads may open sessions on it at once.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Loaded>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("model", &self.inner.model.path())
            .field("session", &self.inner.session)
            .finish_non_exhaustive()
    }
}

impl Runtime {
    /// Loads the model, opens the shard and loads the interpreter.
    pub fn load(config: &RuntimeConfig) -> Result<Self, RuntimeError> {
        if config.threads < 0 {
            return Err(RuntimeError::InvalidConfig(format!(
                "threads must be 0 (default) or positive, got {}",
                config.threads
            )));
        }
        if config.context_size < 256 {
            return Err(RuntimeError::InvalidConfig(format!(
                "context size must be at least 256 tokens, got {}",
                config.context_size
            )));
        }
        let search = match &config.shard {
            ShardChoice::None => None,
            choice => {
                let dir = match choice {
                    ShardChoice::Path(p) => p.clone(),
                    _ => assets::built_default_shard_dir()?,
                };
                let shard = Arc::new(small_agent_index::Shard::open(&dir)?);
                let search: SearchFn = Arc::new(move |q: &str| {
                    small_agent_index::agent_search(&*shard, q).map_err(|e| e.to_string())
                });
                Some(search)
            }
        };
        let model_path = match &config.model {
            Some(p) => p.clone(),
            None => assets::default_model_path()?,
        };
        let model = Model::load_with(
            &model_path,
            &crate::engine::LoadOptions::default().with_adapter(config.adapter.clone()),
        )?;
        let python = assets::python_backend(config.python)?;
        let threads = if config.threads == 0 {
            default_threads()
        } else {
            config.threads
        };
        Ok(Self {
            inner: Arc::new(Loaded {
                model,
                search,
                python,
                session: SessionParams {
                    n_ctx: config.context_size,
                    n_threads: threads,
                    n_threads_batch: threads,
                    ..SessionParams::default()
                },
                limits: config.limits.clone(),
            }),
        })
    }

    /// The loaded model.
    pub fn model(&self) -> &Model {
        &self.inner.model
    }

    /// Opens a session: its own KV cache, Python sessions per question, and cancel flag.
    pub fn session(&self, config: &SessionConfig) -> Result<AgentSession, RuntimeError> {
        self.session_observed(config, None)
    }

    /// [`Runtime::session`] whose `web_search` calls are also shown to `observer` (the query
    /// and what the tool returned), e.g. to list a run's sources as they are found.
    pub fn session_observed(
        &self,
        config: &SessionConfig,
        observer: Option<SearchObserver>,
    ) -> Result<AgentSession, RuntimeError> {
        let mut agent_config = config.agent.clone();
        let cancel = CancelFlag::new();
        agent_config.limits = Limits {
            cancel: cancel.clone(),
            ..self.inner.limits.clone()
        };
        let mut params = self.inner.session.clone();
        params.n_ctx = agent_config.context_size(params.n_ctx);
        // `Agent::new` opens the context for `sag` sequences: the most a run may use later.
        let sequences = agent_config.sag.max(1) as u32;
        let search = match (self.inner.search.clone(), observer) {
            (Some(search), Some(observer)) => Some(Arc::new(move |q: &str| {
                let found = search(q);
                observer(q, &found);
                found
            }) as SearchFn),
            (search, _) => search,
        };
        let tools = agent_toolbox(search)?;
        let inner = self.inner.clone();
        // SAFETY: the agent borrows the model inside `inner`, an `Arc` this session holds and
        // never gives away; `AgentSession`'s fields drop in declaration order, the agent
        // before the `Arc`, so the borrow never outlives the model.
        let model: &'static Model = unsafe { &*std::ptr::addr_of!(inner.model) };
        let agent = Agent::new(model, &params, inner.python.clone(), tools, agent_config)?;
        Ok(AgentSession {
            agent,
            conversation: None,
            sequences,
            cancel,
            _runtime: inner,
        })
    }
}

/// One conversation on a [`Runtime`]: its own KV cache and cancel flag. `Send`, not `Sync`:
/// one thread at a time, any thread.
pub struct AgentSession {
    // Declared first: dropped before the runtime it borrows from.
    agent: Agent<'static>,
    /// The conversation kept for follow-up questions ([`AgentSession::ask_in_conversation`]).
    conversation: Option<Conversation>,
    /// Parallel sequences of the session's context: the most SAG candidates a run may use.
    sequences: u32,
    cancel: CancelFlag,
    _runtime: Arc<Loaded>,
}

// SAFETY: the agent's chat model here is always a `LocalChat` (built by `Agent::new` in
// `Runtime::session`). llama.cpp contexts and batches have no thread affinity: they may move
// between threads as long as one thread uses them at a time, which `&mut self` on every use
// guarantees. The model they point into is `Sync` and outlives them (see `Runtime::session`).
unsafe impl Send for AgentSession {}

impl std::fmt::Debug for AgentSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentSession")
            .field("agent", &self.agent)
            .finish_non_exhaustive()
    }
}

impl AgentSession {
    /// A handle that cancels this session's current (or next) `ask` from any thread: the run
    /// stops at the next generated token or sandbox interrupt tick and ends with
    /// [`crate::agent::RunFailure::Cancelled`].
    pub fn canceller(&self) -> CancelFlag {
        self.cancel.clone()
    }

    /// Answers a question. `on_event` sees tokens and steps; returning `false` cancels. A
    /// cancel request is consumed by the run it stops (the flag is lowered on return).
    pub fn ask(
        &mut self,
        question: &str,
        on_event: &mut dyn FnMut(AgentEvent<'_>) -> bool,
    ) -> Result<AgentRun, RuntimeError> {
        self.guarded(|agent| agent.run(question, on_event))
    }

    /// Answers a question within a conversation kept by the session: with
    /// `continue_previous` (and a kept conversation) the agent continues it, seeing the
    /// earlier questions, steps and answers, with the Python variables of the earlier code
    /// (the reference's `run(reset=False)`); otherwise a new conversation starts. Either way
    /// the conversation is kept for the next follow-up (until [`AgentSession::end_conversation`]
    /// or the next [`AgentSession::ask_in_conversation`] without `continue_previous`). The
    /// returned flag says whether an earlier conversation was continued. Cancellation as in
    /// [`AgentSession::ask`]; a run cancelled mid-way still keeps what it did.
    pub fn ask_in_conversation(
        &mut self,
        question: &str,
        continue_previous: bool,
        on_event: &mut dyn FnMut(AgentEvent<'_>) -> bool,
    ) -> Result<(AgentRun, bool), RuntimeError> {
        let previous = if continue_previous {
            self.conversation.take()
        } else {
            self.conversation = None;
            None
        };
        let continued = previous.is_some();
        let mut kept = None;
        let run = self.guarded(|agent| {
            let (run, conversation) = agent.run_continuing(previous, question, on_event)?;
            kept = Some(conversation);
            Ok(run)
        })?;
        self.conversation = kept;
        Ok((run, continued))
    }

    /// Whether a conversation is kept for a follow-up question.
    pub fn has_conversation(&self) -> bool {
        self.conversation.is_some()
    }

    /// Drops the kept conversation (its Python session is closed).
    pub fn end_conversation(&mut self) {
        self.conversation = None;
    }

    /// The agent's settings for the next runs.
    pub fn agent_config(&self) -> &AgentConfig {
        self.agent.config()
    }

    /// Changes the agent's settings for the next runs (e.g. per request in a server). The
    /// session's cancel flag stays in `limits.cancel`; `sag` may not exceed the candidates the
    /// session was opened for ([`SessionConfig`]'s `agent.sag`), since they share its context.
    pub fn set_agent_config(&mut self, mut config: AgentConfig) -> Result<(), RuntimeError> {
        if config.sag == 0 || config.sag > self.sequences as usize {
            return Err(RuntimeError::InvalidConfig(format!(
                "sag must be between 1 and {} (the session's parallel sequences), got {}",
                self.sequences, config.sag
            )));
        }
        config.limits.cancel = self.cancel.clone();
        self.agent.set_config(config);
        Ok(())
    }

    /// The most SAG candidates a run on this session may use.
    pub fn max_sag(&self) -> usize {
        self.sequences as usize
    }

    /// Runs `f` with the cancel flag's protocol: a request raised before the start refuses
    /// the run; the flag is lowered on return.
    fn guarded(
        &mut self,
        f: impl FnOnce(&mut Agent<'static>) -> Result<AgentRun, AgentError>,
    ) -> Result<AgentRun, RuntimeError> {
        if self.cancel.is_raised() {
            self.cancel.lower();
            return Err(RuntimeError::Cancelled);
        }
        let run = f(&mut self.agent);
        // A cancel that lands while the sandbox opens surfaces as a failed start.
        let cancelled = self.cancel.is_raised();
        self.cancel.lower();
        match run {
            Err(_) if cancelled => Err(RuntimeError::Cancelled),
            r => Ok(r?),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_and_session_cross_threads() {
        fn send_sync<T: Send + Sync>() {}
        fn send<T: Send>() {}
        send_sync::<Runtime>();
        send::<AgentSession>();
    }

    #[test]
    fn bad_settings_are_refused_before_loading() {
        let e = Runtime::load(&RuntimeConfig {
            threads: -1,
            ..RuntimeConfig::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("threads"), "{e}");
        let e = Runtime::load(&RuntimeConfig {
            context_size: 8,
            ..RuntimeConfig::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("context size"), "{e}");
    }
}
