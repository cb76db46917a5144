//! The code agent: Thought → Python code → Observation, with tools, over the engine.
//!
//! Each step renders the conversation with the model's chat template and generates on the
//! engine session, whose KV cache keeps everything before (only new tokens are evaluated).
//! With self-consistent action generation (`sag > 1`) the step's candidates are decoded as
//! parallel sequences sharing the prompt; each parsed candidate runs on its own fork of the
//! Python session; the largest group of identical outcomes wins and its fork becomes the
//! session's state (no re-execution, no leaked side effects).
pub mod prompt;
pub mod protocol;
pub mod quick_eval;

use std::{collections::HashSet, sync::Arc, time::Instant};

use serde::Serialize;
use small_agent_sandbox::{
    ExecResult, Limits, ParamType, PythonBackend, Session as PySession, SessionOptions, Tool,
    ToolParam, Toolbox,
};

use crate::chat::{ChatError, ChatModel, LocalChat, RemoteError};
use crate::engine::{
    AfterEnd, CallStats, ChatMessage, EngineError, GenerateParams, Model, SamplingParams,
    SessionParams,
};
pub use prompt::{PromptError, PromptTemplate};

/// Default number of steps (the reference agent's).
pub const DEFAULT_MAX_STEPS: usize = 5;
/// Default candidates per step for self-consistent action generation (the paper's N).
pub const DEFAULT_SAG: usize = 8;
/// Sampling temperature of SAG candidates (the paper's).
pub const SAG_TEMPERATURE: f32 = 0.4;
/// Nucleus threshold of SAG candidates (the paper's).
pub const SAG_TOP_P: f32 = 0.8;
/// Default cap on the tokens of one step's reply.
pub const DEFAULT_STEP_TOKENS: u32 = 384;
/// Tokens of the answer requested when the steps ran out.
pub const FALLBACK_TOKENS: u32 = 96;
/// Default of [`AgentConfig::repeat_retries`]: off. On the first 20 questions of four
/// held-out sets, two retries cut the repeated steps the distilled student ran by a third
/// and answered one question more in 80 (noise); the undistilled model generated 2.2–2.6
/// times as many replies per step and ran as many repeats (see README, *Repeat guard*).
pub const DEFAULT_REPEAT_RETRIES: usize = 0;
/// Temperature of a step generated again because its code repeated an earlier step's:
/// greedy decoding of the same conversation would only repeat it again.
pub const REPEAT_TEMPERATURE: f32 = 0.7;
/// The GBNF grammar that admits only a well-formed step.
pub const STEP_GRAMMAR: &str = include_str!("../../../models/grammars/agent-step.gbnf");

/// Errors of an agent run.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The engine failed (e.g. the conversation outgrew the context).
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The sandbox could not open or fork a session.
    #[error("python sandbox: {0}")]
    Sandbox(#[from] small_agent_sandbox::SandboxError),
    /// The remote model server failed (unreachable, HTTP error, unusable answer).
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// The run was cancelled by the caller.
    #[error("cancelled")]
    Cancelled,
}

impl From<ChatError> for AgentError {
    fn from(e: ChatError) -> Self {
        match e {
            ChatError::Engine(e) => Self::Engine(e),
            ChatError::Remote(e) => Self::Remote(e),
        }
    }
}

/// KV cells reserved per extra SAG candidate, as a fraction of a step's token cap.
///
/// Candidates share the cells of the tokens they have in common and stop once the vote is
/// decided, so a step rarely needs a full step of cells per candidate: on the first ten
/// HotpotQA and MATH train questions the first step of 8 candidates evaluated 67 to 1,998
/// tokens in all, where a full reservation would set 2,688 cells aside beyond the 4,096 of
/// the conversation (which is far from full in early steps). Half a step keeps the KV cache
/// (f16, ~23 KB per cell on the default model) 31 MB smaller;
/// a candidate that still finds no free cell ends visibly (`FinishReason::ContextFull`),
/// drops out of the vote without code, and the step goes on.
pub const SAG_CELLS_PER_EXTRA_CANDIDATE: f64 = 0.5;

/// How the agent runs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Steps before the fallback answer.
    pub max_steps: usize,
    /// Candidates per step (1 = plain sampling).
    pub sag: usize,
    /// Sampling of the step replies.
    pub sampling: SamplingParams,
    /// GBNF grammar each step's reply must follow ([`STEP_GRAMMAR`] by default; `None`
    /// leaves the model free).
    pub grammar: Option<String>,
    /// Token cap of one step's reply.
    pub step_tokens: u32,
    /// The texts the agent sends.
    pub template: PromptTemplate,
    /// Sandbox limits of the Python session.
    pub limits: Limits,
    /// Start the first reply with the first paragraph of a plain chain-of-thought answer
    /// (the paper's first-thought prefix, used for teacher trajectories).
    pub first_thought: bool,
    /// Times a step is generated again, sampling at [`REPEAT_TEMPERATURE`], when its code
    /// repeats an earlier step's code of the run (0: repeats run as they are). Code that
    /// ran once gives the same observation again, and a small model that repeats a step
    /// under greedy decoding repeats it until the steps run out.
    pub repeat_retries: usize,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            max_steps: DEFAULT_MAX_STEPS,
            sag: 1,
            sampling: SamplingParams::greedy(),
            grammar: Some(STEP_GRAMMAR.to_owned()),
            step_tokens: DEFAULT_STEP_TOKENS,
            template: PromptTemplate::builtin(),
            limits: Limits::default(),
            first_thought: false,
            repeat_retries: DEFAULT_REPEAT_RETRIES,
        }
    }
}

impl AgentConfig {
    /// The paper's self-consistent action generation with `n` candidates.
    pub fn with_sag(mut self, n: usize) -> Self {
        self.sag = n.max(1);
        if n > 1 {
            self.sampling = SamplingParams {
                temperature: SAG_TEMPERATURE,
                top_p: SAG_TOP_P,
                top_k: 0,
                min_p: 0.0,
                // The paper sampled its candidates with vLLM, which scales by the
                // temperature before cutting the nucleus.
                temperature_first: true,
                ..self.sampling
            };
        }
        self
    }

    /// Context size that fits the steps and, with SAG, the candidates' parallel replies:
    /// [`SAG_CELLS_PER_EXTRA_CANDIDATE`] of a step for each candidate beyond the first.
    pub fn context_size(&self, base: u32) -> u32 {
        let extra = (self.step_tokens as f64 * SAG_CELLS_PER_EXTRA_CANDIDATE).ceil() as u32;
        base + (self.sag.saturating_sub(1) as u32) * extra
    }
}

/// Time limit of a SAG candidate's code: the session's `timeout` while the step's code so far
/// (`spent`, forks included) has used less than that, and never less than `timeout / n`.
/// Why: each candidate is one execution with its own limit, so N candidates that loop would
/// hold the step for N timeouts; with this, a step's code takes less than two (a candidate
/// that loops after one has used up the step's share gets `timeout / n`), and steps whose
/// code is quick give every candidate the whole timeout as before.
pub fn candidate_timeout(
    timeout: std::time::Duration,
    n: usize,
    spent: std::time::Duration,
) -> std::time::Duration {
    let share = timeout / n.max(1) as u32;
    timeout.saturating_sub(spent).max(share)
}

/// One candidate's outcome within a step.
#[derive(Debug, Clone, Serialize)]
pub struct CandidateRecord {
    /// Whether its reply held code.
    pub parsed: bool,
    /// Whether its code ran without error.
    pub ran: bool,
    /// Size of the group of identical outcomes it belongs to (0 when it failed).
    pub votes: usize,
    /// Not run, and its decoding stopped early: the candidates that had ended already
    /// held a majority no other outcome could reach (it did not vote).
    pub abandoned: bool,
    /// Tokens it generated (up to where it ended or was abandoned).
    pub gen_tokens: usize,
}

/// One step of a run.
#[derive(Debug, Clone, Serialize)]
pub struct StepRecord {
    /// The winning reply as generated.
    pub reply: String,
    /// Its thought.
    pub thought: String,
    /// Its code, when it had any.
    pub code: Option<String>,
    /// What came back: the observation or the error turn's text.
    pub observation: String,
    /// The reply had no code block.
    pub parse_error: bool,
    /// The code raised (or timed out, or trapped).
    pub exec_error: bool,
    /// `web_search` and other tool calls the code made.
    pub tool_calls: usize,
    /// The answer, when the code called `final_answer`.
    pub final_answer: Option<String>,
    /// Index of the winning candidate.
    pub winner: usize,
    /// Every candidate's outcome.
    pub candidates: Vec<CandidateRecord>,
    /// Engine counts and times of the step (prompt evaluated once for all candidates).
    pub llm: CallStats,
    /// Milliseconds spent running the candidates' code.
    pub exec_ms: f64,
    /// Times the step was generated again because its code repeated an earlier step's
    /// ([`AgentConfig::repeat_retries`]); the engine counts above are the last attempt's.
    pub redone: usize,
}

/// A whole run.
#[derive(Debug, Clone, Serialize)]
pub struct AgentRun {
    /// The question.
    pub question: String,
    /// The answer: from `final_answer`, or from the fallback request.
    pub answer: String,
    /// `final_answer`, `fallback`, or `none` when the run ended without an answer.
    pub answer_source: &'static str,
    /// The forced first thought, when the first-thought prefix was used.
    pub first_thought: Option<String>,
    /// The steps.
    pub steps: Vec<StepRecord>,
    /// Engine counts and times of the fallback request, when there was one.
    pub fallback: Option<CallStats>,
    /// The conversation as the model saw it (system, user, assistant turns).
    pub messages: Vec<ChatMessage>,
    /// Why the run ended early, if it did (the partial trajectory is kept).
    pub error: Option<String>,
    /// What kind of failure ended it early, for callers that branch on it.
    pub failure: Option<RunFailure>,
    /// Wall time of the run.
    pub total_ms: f64,
}

/// The kind of failure that ended a run early.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunFailure {
    /// The caller cancelled (the event callback returned `false`, or the cancel flag in
    /// [`AgentConfig::limits`] was raised).
    Cancelled,
    /// The conversation outgrew the context.
    ContextOverflow,
    /// Another engine failure.
    Engine,
    /// The sandbox could not fork or open a session.
    Sandbox,
    /// The remote model server failed.
    Remote,
}

impl RunFailure {
    fn of(e: &AgentError) -> Self {
        match e {
            AgentError::Cancelled => RunFailure::Cancelled,
            AgentError::Engine(EngineError::ContextOverflow { .. }) => RunFailure::ContextOverflow,
            AgentError::Engine(_) => RunFailure::Engine,
            AgentError::Sandbox(_) => RunFailure::Sandbox,
            AgentError::Remote(_) => RunFailure::Remote,
        }
    }
}

/// Progress of a run, for streaming front ends.
#[derive(Debug)]
pub enum AgentEvent<'a> {
    /// Text of the step's first candidate as it is generated.
    Token(&'a str),
    /// A step ended.
    Step(&'a StepRecord),
    /// The step is generated again: the text streamed since it began is discarded. The
    /// text says why (its code repeated an earlier step's).
    Redo(&'a str),
}

/// A search function the agent's `web_search` tool calls: query → formatted passages.
pub type SearchFn = Arc<dyn Fn(&str) -> Result<String, String> + Send + Sync>;

/// Builds the agent's tools: `web_search(query)` (when a search function is given).
/// `final_answer` is built into the sandbox.
pub fn agent_toolbox(search: Option<SearchFn>) -> Result<Toolbox, AgentError> {
    let mut tools = Toolbox::new();
    if let Some(search) = search {
        tools.register(Tool::new(
            "web_search",
            "Searches the local Wikipedia shard and returns the top 3 passages, each headed \
             with its rank and score.",
            vec![ToolParam::required(
                "query",
                ParamType::String,
                "what to look for",
            )],
            move |args| {
                let q = args
                    .get("query")
                    .and_then(|v| v.as_str())
                    .unwrap_or_default();
                search(q).map(serde_json::Value::String)
            },
        ))?;
    }
    Ok(tools)
}

/// The first two turns of every run: the system prompt (with the tools and the step budget
/// filled in) and the task. Training data is rendered with this too (`small-agent-distill
/// dataset`), so that the student learns on the turns it will see.
pub fn opening_messages(
    template: &PromptTemplate,
    tools: &Toolbox,
    max_steps: usize,
    question: &str,
) -> Vec<ChatMessage> {
    vec![
        ChatMessage::new(
            "system",
            prompt::fill(
                &template.system,
                &[
                    ("tools", &tool_lines(tools)),
                    ("max_steps", &max_steps.to_string()),
                ],
            ),
        ),
        ChatMessage::new(
            "user",
            prompt::fill(&template.task, &[("question", question)]),
        ),
    ]
}

fn tool_lines(tools: &Toolbox) -> String {
    let mut s = String::new();
    for t in tools.iter() {
        s.push_str(&format!("- {} -> str: {}\n", t.signature(), t.description));
    }
    s.push_str("- final_answer(answer: any): gives the final answer and ends the task.");
    s
}

/// The agent: a chat model, a Python back-end, tools and a configuration.
pub struct Agent<'m> {
    chat: Box<dyn ChatModel + 'm>,
    python: Arc<dyn PythonBackend>,
    tools: Toolbox,
    config: AgentConfig,
}

impl std::fmt::Debug for Agent<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The outcome of running one candidate's code.
struct Ran {
    result: ExecResult,
    fork: Option<PySession>,
}

impl<'m> Agent<'m> {
    /// An agent on `model`; `session` gives context size and threads (the number of
    /// sequences is set from `config.sag`).
    pub fn new(
        model: &'m Model,
        session: &SessionParams,
        python: Arc<dyn PythonBackend>,
        tools: Toolbox,
        config: AgentConfig,
    ) -> Result<Self, AgentError> {
        let params = SessionParams {
            n_seq_max: config.sag.max(1) as u32,
            ..session.clone()
        };
        Ok(Self::with_model(
            Box::new(LocalChat::new(model.session(&params)?)),
            python,
            tools,
            config,
        ))
    }

    /// An agent on any chat model back-end (e.g. [`crate::chat::RemoteChat`]): the same
    /// loop, parser, sandbox and tools as on the local engine.
    pub fn with_model(
        chat: Box<dyn ChatModel + 'm>,
        python: Arc<dyn PythonBackend>,
        tools: Toolbox,
        config: AgentConfig,
    ) -> Self {
        Self {
            chat,
            python,
            tools,
            config,
        }
    }

    /// What the agent's model is (a file, or `NAME@URL` for a server).
    pub fn model_description(&self) -> String {
        self.chat.describe()
    }

    /// Answers a question. Each question gets a fresh Python session; the model's KV cache
    /// is kept across steps (and across questions, for the shared system prompt).
    ///
    /// Errors before the run starts (the sandbox cannot open) are `Err`; a failure during
    /// the run (e.g. the conversation outgrows the context, or the caller cancels) ends it
    /// with [`AgentRun::error`] set, keeping the partial trajectory.
    pub fn run(
        &mut self,
        question: &str,
        on_event: &mut dyn FnMut(AgentEvent<'_>) -> bool,
    ) -> Result<AgentRun, AgentError> {
        self.run_continuing(None, question, on_event)
            .map(|(run, _)| run)
    }

    /// [`Agent::run`], continuing `previous` when given (the reference's `run(reset=False)`):
    /// the new question is one more task turn after the earlier ones, so the model sees the
    /// earlier questions, steps and answers, and the code runs in the same Python session
    /// (its variables and imports kept). Returns the run and the conversation to continue
    /// with the next question. `previous` must come from this agent (its Python session
    /// holds this agent's limits and cancel flag).
    pub fn run_continuing(
        &mut self,
        previous: Option<Conversation>,
        question: &str,
        on_event: &mut dyn FnMut(AgentEvent<'_>) -> bool,
    ) -> Result<(AgentRun, Conversation), AgentError> {
        let t0 = Instant::now();
        let (mut py, messages) = match previous {
            Some(Conversation { mut messages, py }) => {
                messages.push(ChatMessage::new(
                    "user",
                    prompt::fill(&self.config.template.task, &[("question", question)]),
                ));
                (py, messages)
            }
            None => (
                self.python.open(SessionOptions {
                    limits: self.config.limits.clone(),
                    tools: self.tools.clone(),
                })?,
                opening_messages(
                    &self.config.template,
                    &self.tools,
                    self.config.max_steps,
                    question,
                ),
            ),
        };
        let mut state = RunState {
            messages,
            steps: Vec::new(),
            first_thought: None,
            answer: None,
            fallback: None,
        };
        let outcome = self.run_steps(question, &mut py, &mut state, on_event);
        let (answer, answer_source) = match state.answer {
            Some((a, source)) => (a, source),
            None => (String::new(), "none"),
        };
        let conversation = Conversation {
            messages: state.messages.clone(),
            py,
        };
        let run = AgentRun {
            question: question.to_owned(),
            answer,
            answer_source,
            first_thought: state.first_thought,
            steps: state.steps,
            fallback: state.fallback,
            messages: state.messages,
            failure: outcome.as_ref().err().map(RunFailure::of),
            error: outcome.err().map(|e| e.to_string()),
            total_ms: t0.elapsed().as_secs_f64() * 1e3,
        };
        Ok((run, conversation))
    }

    /// The agent's settings.
    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    /// Replaces the agent's settings for the next runs. The caller keeps what the chat model
    /// was built for: with a local model, `sag` must not exceed the sequences of its session.
    pub fn set_config(&mut self, config: AgentConfig) {
        self.config = config;
    }

    /// A plain chain-of-thought request whose first paragraph becomes the forced start of
    /// the agent's first reply (the paper's first-thought prefix). The paragraph is made to
    /// fit one thought line: no line breaks, no backticks.
    pub fn first_thought(&mut self, question: &str) -> Result<String, AgentError> {
        let tpl = &self.config.template;
        let messages = [
            ChatMessage::new("system", tpl.first_thought.trim()),
            ChatMessage::new("user", question.trim()),
        ];
        let params = GenerateParams {
            max_tokens: self.config.step_tokens,
            sampling: SamplingParams::greedy(),
            // Generation can stop once the first paragraph is complete.
            stop: vec!["\n\n".to_owned()],
            ..Default::default()
        };
        let c = self.chat.reply(&messages, &params, &mut |_| true)?;
        Ok(first_paragraph(&c.text))
    }

    /// Generates one attempt at a step: `sag` candidates whose code runs as each reply ends,
    /// while the others are still decoding; once the outcome is decided the rest are not
    /// decoded further. Code in `refuse` (by [`code_key`]) is not run. The winner is kept
    /// in the cache.
    fn attempt_step(
        &mut self,
        messages: &[ChatMessage],
        py: &mut PySession,
        gen: &GenerateParams,
        refuse: Option<&HashSet<String>>,
        on_event: &mut dyn FnMut(AgentEvent<'_>) -> bool,
    ) -> Result<Attempt, AgentError> {
        let n = self.config.sag;
        let cancel = self.config.limits.cancel.clone();
        let mut cancelled = false;
        let prefix = gen.prefill.clone().unwrap_or_default();
        let mut runner = CandidateRunner::new(n);
        let mut repeated = vec![false; n];
        let mut run_error = None;
        let mut cands = self.chat.generate(
            messages,
            n,
            gen,
            &mut |i, t| {
                if cancel.is_raised() || (i == 0 && !on_event(AgentEvent::Token(t))) {
                    cancelled = true;
                }
                !cancelled
            },
            &mut |i, c| {
                let mut code = protocol::extract_code(&format!("{prefix}{}", c.text));
                if let (Some(earlier), Some(this)) = (refuse, code.as_deref()) {
                    if earlier.contains(&code_key(this)) {
                        // Not run: it would give the observation it gave before.
                        repeated[i] = true;
                        code = None;
                    }
                }
                tracing::debug!(
                    candidate = i,
                    finish = ?c.finish_reason,
                    parsed = code.is_some(),
                    repeated = repeated[i],
                    "candidate ended"
                );
                tracing::trace!(candidate = i, text = %c.text, "candidate text");
                match runner.run(py, i, code) {
                    Ok(()) => AfterEnd {
                        stop: runner.decided(),
                        release: runner.take_needless(),
                    },
                    Err(e) => {
                        run_error = Some(e);
                        AfterEnd::stop()
                    }
                }
            },
        )?;
        if cancelled || cancel.is_raised() {
            return Err(AgentError::Cancelled);
        }
        if let Some(e) = run_error {
            return Err(e);
        }
        if let Some(p) = &gen.prefill {
            for c in &mut cands {
                c.text.insert_str(0, p);
            }
        }
        let exec_ms = runner.exec_ms();
        let codes = runner.codes.clone();
        let step = runner.finish(py);
        self.chat.keep(step.winner)?;
        Ok(Attempt {
            only_repeats: step.result.is_none() && repeated.iter().any(|r| *r),
            cands,
            codes,
            step,
            exec_ms,
        })
    }

    fn run_steps(
        &mut self,
        question: &str,
        py: &mut PySession,
        state: &mut RunState,
        on_event: &mut dyn FnMut(AgentEvent<'_>) -> bool,
    ) -> Result<(), AgentError> {
        let cfg = self.config.clone();
        let tpl = &cfg.template;
        let mut prefill = None;
        if cfg.first_thought {
            let para = self.first_thought(question)?;
            if !para.is_empty() {
                prefill = Some(format!("Thought: {para}"));
                state.first_thought = Some(para);
            }
        }
        let cancel = cfg.limits.cancel.clone();
        // What the grammar forces every reply to begin with goes into the prompt instead of
        // being decoded: it costs no positions, and its tokens are the tokenizer's own. Forced
        // one admissible token at a time, the model may spell it otherwise (`T`, `h`,
        // `ought`), and the next step's prompt, tokenized from the text as the reference does,
        // then leaves the cache where the reply starts: the whole reply is evaluated again
        // (seen on 7 of 8 MATH questions' second steps: 47-398 tokens instead of 16).
        let forced = cfg
            .grammar
            .as_deref()
            .and_then(protocol::grammar_forced_prefix);
        // The code of the run's steps so far, as compared for repeats.
        let mut earlier_codes = HashSet::new();
        for _ in 0..cfg.max_steps {
            if cancel.is_raised() {
                return Err(AgentError::Cancelled);
            }
            let gen = GenerateParams {
                max_tokens: cfg.step_tokens,
                sampling: cfg.sampling.clone(),
                stop: protocol::STOP_SEQUENCES
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
                grammar: cfg.grammar.clone(),
                ignore_eog: false,
                prefill: prefill.take().or_else(|| forced.clone()),
            };
            let mut redone = 0;
            let Attempt {
                cands,
                codes,
                mut step,
                exec_ms,
                ..
            } = loop {
                // Refuse code an earlier step ran while retries remain; the last attempt's
                // code runs whatever it is.
                let refuse = (redone < cfg.repeat_retries).then_some(&earlier_codes);
                let gen = GenerateParams {
                    sampling: redo_sampling(&cfg.sampling, redone),
                    ..gen.clone()
                };
                let attempt = self.attempt_step(&state.messages, py, &gen, refuse, on_event)?;
                if !attempt.only_repeats {
                    break attempt;
                }
                redone += 1;
                tracing::debug!(redone, "every candidate repeated an earlier step's code");
                if !on_event(AgentEvent::Redo(
                    "its code repeated an earlier step's; generating it again, sampling",
                )) {
                    return Err(AgentError::Cancelled);
                }
            };
            for (record, c) in step.candidates.iter_mut().zip(&cands) {
                record.gen_tokens = c.stats.gen_tokens;
            }
            let winner = step.winner;
            if let Some(code) = &codes[winner] {
                earlier_codes.insert(code_key(code));
            }
            let reply = &cands[winner].text;
            let chosen = step.result;
            let mut record = StepRecord {
                reply: reply.clone(),
                thought: protocol::extract_thought(reply),
                code: codes[winner].clone(),
                observation: String::new(),
                parse_error: chosen.is_none(),
                exec_error: false,
                tool_calls: 0,
                final_answer: None,
                winner,
                candidates: step.candidates,
                llm: cands[winner].stats,
                exec_ms,
                redone,
            };
            state
                .messages
                .push(ChatMessage::new("assistant", protocol::close_reply(reply)));
            let turn = match chosen {
                None => tpl.no_code.trim().to_owned(),
                Some(result) => {
                    record.tool_calls = result.tool_calls;
                    record.final_answer = result.final_answer.as_ref().map(answer_text);
                    record.exec_error = result.error.is_some();
                    observation_turn(tpl, &result)
                }
            };
            record.observation = turn.clone();
            let done = record.final_answer.clone();
            let keep_going = on_event(AgentEvent::Step(&record));
            state.steps.push(record);
            if let Some(answer) = done {
                state.answer = Some((answer, "final_answer"));
                return Ok(());
            }
            if !keep_going {
                return Err(AgentError::Cancelled);
            }
            state.messages.push(ChatMessage::new("user", turn));
        }
        // Out of steps: one more request for an answer from what the conversation holds.
        state.messages.push(ChatMessage::new(
            "user",
            prompt::fill(&tpl.final_fallback, &[("question", question)]),
        ));
        let fallback = GenerateParams {
            max_tokens: FALLBACK_TOKENS,
            sampling: SamplingParams::greedy(),
            ..Default::default()
        };
        let c = self.chat.reply(&state.messages, &fallback, &mut |t| {
            !cancel.is_raised() && on_event(AgentEvent::Token(t))
        })?;
        if c.finish_reason == crate::engine::FinishReason::Cancelled {
            return Err(AgentError::Cancelled);
        }
        state
            .messages
            .push(ChatMessage::new("assistant", c.text.trim()));
        state.fallback = Some(c.stats);
        let answer = fallback_answer(&c.text, py);
        if !answer.is_empty() {
            state.answer = Some((answer, "fallback"));
        }
        Ok(())
    }
}

/// What two steps' code must share to count as a repeat: every line without its surrounding
/// whitespace, blank lines dropped (a re-indented or re-spaced copy is the same code).
pub fn code_key(code: &str) -> String {
    code.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The sampling of attempt `redone` of a step: the configured sampling first; after a
/// refused repeat at least [`REPEAT_TEMPERATURE`] (with the nucleus of SAG) and a seed of
/// its own, so the attempt can differ from the one before.
fn redo_sampling(base: &SamplingParams, redone: usize) -> SamplingParams {
    if redone == 0 {
        return base.clone();
    }
    let seed = base.seed.wrapping_add(7919u32.wrapping_mul(redone as u32));
    if base.temperature >= REPEAT_TEMPERATURE {
        return SamplingParams {
            seed,
            ..base.clone()
        };
    }
    SamplingParams {
        temperature: REPEAT_TEMPERATURE,
        top_p: SAG_TOP_P,
        top_k: 0,
        min_p: 0.0,
        temperature_first: true,
        seed,
        ..base.clone()
    }
}

/// The answer in a reply to the out-of-steps request. A model trained on the step format
/// often replies with one more step that calls `final_answer`: its code runs in the session
/// (the variables it names are there) and the value passed is the answer; otherwise the
/// reply's text is.
pub fn fallback_answer(reply: &str, py: &mut PySession) -> String {
    protocol::extract_code(reply)
        .and_then(|code| py.exec(&code).final_answer.as_ref().map(answer_text))
        .unwrap_or_else(|| reply.trim().to_owned())
}

/// A run in the layout of the paper's released trajectories: `question`,
/// `generated_answer`, `log_data.messages` (system/user/assistant), plus our step records.
pub fn trajectory_record(run: &AgentRun) -> serde_json::Value {
    serde_json::json!({
        "question": run.question,
        "generated_answer": run.answer,
        "log_data": {
            "messages": run.messages,
            "answer_source": run.answer_source,
            "first_thought": run.first_thought,
            "steps": run.steps,
            "error": run.error,
            "total_ms": run.total_ms,
        },
    })
}

/// A conversation kept for follow-up questions ([`Agent::run_continuing`]): the messages so
/// far and the Python session with the variables the code defined.
pub struct Conversation {
    messages: Vec<ChatMessage>,
    py: PySession,
}

impl std::fmt::Debug for Conversation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conversation")
            .field("messages", &self.messages.len())
            .finish_non_exhaustive()
    }
}

impl Conversation {
    /// The messages so far (system, user, assistant turns).
    pub fn messages(&self) -> &[ChatMessage] {
        &self.messages
    }
}

/// What a run has gathered so far.
/// One attempt at a step ([`Agent::attempt_step`]).
struct Attempt {
    /// The candidates' replies (with the prefill in front).
    cands: Vec<crate::engine::Completion>,
    /// Each candidate's code that ran (`None`: none, or refused as a repeat).
    codes: Vec<Option<String>>,
    /// The vote and the winner's outcome.
    step: ExecutedStep,
    /// Milliseconds of running code.
    exec_ms: f64,
    /// Nothing ran but code refused as a repeat: the step is to be generated again.
    only_repeats: bool,
}

struct RunState {
    messages: Vec<ChatMessage>,
    steps: Vec<StepRecord>,
    first_thought: Option<String>,
    answer: Option<(String, &'static str)>,
    fallback: Option<CallStats>,
}

/// The first non-empty paragraph of a chain of thought, as one line without backticks (so
/// that it fits the step grammar's thought line).
pub fn first_paragraph(text: &str) -> String {
    let para = text
        .split("\n\n")
        .map(str::trim)
        .find(|p| !p.is_empty())
        .unwrap_or_default();
    para.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('`', "'")
}

/// What running a step's candidates decided.
#[derive(Debug)]
pub struct ExecutedStep {
    /// Index of the winning candidate.
    pub winner: usize,
    /// The winner's result (`None` when its reply had no code).
    pub result: Option<ExecResult>,
    /// Every candidate's outcome.
    pub candidates: Vec<CandidateRecord>,
}

/// Runs a step's candidates and makes the winner's effects the session's state.
///
/// One candidate runs on the session itself. Several run each on its own fork of the
/// session (a losing candidate's side effects never reach it); the vote picks the winner
/// and the session adopts the winner's fork, so nothing runs twice. `codes[i]` is `None`
/// when candidate `i` had no code. Every candidate runs (no early decision).
pub fn execute_candidates(
    py: &mut PySession,
    codes: &[Option<String>],
) -> Result<ExecutedStep, AgentError> {
    let mut runner = CandidateRunner::new(codes.len());
    for (i, code) in codes.iter().enumerate() {
        runner.run(py, i, code.clone())?;
    }
    Ok(runner.finish(py))
}

/// Runs a step's candidates one at a time, in the order their replies end, and keeps the
/// vote current so the caller can stop decoding once it is decided.
///
/// Only the forks that can still matter are kept: the earliest member of each outcome
/// group (the one the vote would pick) and candidate 0 (whose failure becomes the
/// observation when nothing survives). Others are dropped as soon as they have run, which
/// bounds memory by the number of distinct outcomes rather than by N.
pub struct CandidateRunner {
    /// Each candidate's code (`None`: no code, or not ended yet).
    pub codes: Vec<Option<String>>,
    ran: Vec<Option<Ran>>,
    ended: Vec<bool>,
    /// Ended candidates that can no longer be the one the vote picks.
    needless: Vec<bool>,
    /// Which of `needless` [`CandidateRunner::take_needless`] has handed out.
    handed_out: Vec<bool>,
    exec: std::time::Duration,
}

impl CandidateRunner {
    /// A runner for `n` candidates.
    pub fn new(n: usize) -> Self {
        Self {
            codes: vec![None; n],
            ran: (0..n).map(|_| None).collect(),
            ended: vec![false; n],
            needless: vec![false; n],
            handed_out: vec![false; n],
            exec: std::time::Duration::ZERO,
        }
    }

    /// Runs candidate `i`'s code (on the session itself when there is one candidate, else
    /// on a fork). A candidate without code only records that it ended.
    pub fn run(
        &mut self,
        py: &mut PySession,
        i: usize,
        code: Option<String>,
    ) -> Result<(), AgentError> {
        self.ended[i] = true;
        self.codes[i] = code;
        let Some(code) = &self.codes[i] else {
            self.drop_needless_forks();
            return Ok(());
        };
        let t = Instant::now();
        let ran = if self.ran.len() == 1 {
            Ran {
                result: py.exec(code),
                fork: None,
            }
        } else {
            // A package imported before forking is in every later fork's module cache:
            // candidates that each `import sympy` then pay for it once, not N times.
            let slow = small_agent_sandbox::slow_imports(code);
            if !slow.is_empty() {
                let r = py.preload(&slow)?;
                tracing::debug!(
                    candidate = i,
                    modules = ?slow,
                    ms = r.duration.as_secs_f64() * 1e3,
                    ok = r.ok(),
                    "preloaded before forking"
                );
            }
            let mut fork = py.fork()?;
            let full = py.limits().timeout;
            let limit = candidate_timeout(full, self.ran.len(), self.exec + t.elapsed());
            if limit < full {
                fork.set_limits(small_agent_sandbox::Limits {
                    timeout: limit,
                    ..fork.limits().clone()
                })?;
            }
            let result = fork.exec(code);
            Ran {
                result,
                fork: Some(fork),
            }
        };
        self.exec += t.elapsed();
        self.ran[i] = Some(ran);
        self.drop_needless_forks();
        Ok(())
    }

    /// Keeps a fork only while its candidate can still be the one the vote picks: the
    /// earliest member of a group that could still reach the largest size, or candidate 0
    /// while nothing has survived (its failure is then the observation). An ended candidate
    /// that fails this is needless for good: later ends only grow the largest group, shrink
    /// what is still running and add earlier members to groups.
    fn drop_needless_forks(&mut self) {
        if self.ran.len() == 1 {
            // The only candidate is the winner whatever it did.
            return;
        }
        let keys = outcome_keys(&self.ran);
        let (_, votes) = vote(&self.ran);
        let best = votes.iter().copied().max().unwrap_or(0);
        let remaining = self.ended.iter().filter(|e| !**e).count();
        for i in 0..self.ran.len() {
            let keep = match &keys[i] {
                None => i == 0 && best == 0,
                Some(k) => {
                    let earliest = !keys[..i].iter().any(|o| o.as_ref() == Some(k));
                    earliest && votes[i] + remaining >= best
                }
            };
            if !keep {
                if let Some(r) = &mut self.ran[i] {
                    r.fork = None;
                }
                if self.ended[i] {
                    self.needless[i] = true;
                }
            }
        }
    }

    /// The ended candidates found needless since the last call: the step will not adopt
    /// them, so their generated tokens may leave the KV cache.
    pub fn take_needless(&mut self) -> Vec<usize> {
        let fresh: Vec<usize> = (0..self.needless.len())
            .filter(|&i| self.needless[i] && !self.handed_out[i])
            .collect();
        for &i in &fresh {
            self.handed_out[i] = true;
        }
        fresh
    }

    /// Whether the candidates still decoding can no longer change the winning outcome.
    ///
    /// The worst case for the current leader is every running candidate joining one rival
    /// (an existing group or a new one). The leader still wins if that rival stays smaller,
    /// or only ties while the leader's first member comes earlier than every member the
    /// rival could have, running ones included: ties go to the earliest candidate.
    pub fn decided(&self) -> bool {
        let (winner, votes) = vote(&self.ran);
        let running: Vec<usize> = (0..self.ended.len()).filter(|&i| !self.ended[i]).collect();
        let remaining = running.len();
        let best = votes[winner];
        if best == 0 {
            return remaining == 0;
        }
        let first_running = running.first().copied().unwrap_or(usize::MAX);
        let holds = |size: usize, first: usize| {
            size + remaining < best
                || (size + remaining == best && first.min(first_running) > winner)
        };
        let keys = outcome_keys(&self.ran);
        // Checking every member of a rival with its own index checks its earliest one too.
        let rivals_hold = (0..self.ran.len())
            .filter(|&i| votes[i] > 0 && keys[i] != keys[winner])
            .all(|i| holds(votes[i], i));
        // A rival made only of running candidates.
        rivals_hold && holds(0, usize::MAX)
    }

    /// Milliseconds spent forking and running code so far.
    pub fn exec_ms(&self) -> f64 {
        self.exec.as_secs_f64() * 1e3
    }

    /// Votes and makes the winner's fork the session's state.
    pub fn finish(mut self, py: &mut PySession) -> ExecutedStep {
        let (winner, votes) = vote(&self.ran);
        let candidates = (0..self.ran.len())
            .map(|i| CandidateRecord {
                parsed: self.codes[i].is_some(),
                ran: self.ran[i].as_ref().is_some_and(|r| r.result.ok()),
                votes: votes[i],
                abandoned: !self.ended[i],
                gen_tokens: 0,
            })
            .collect();
        let result = self.ran[winner].take().map(|Ran { result, fork }| {
            // With several candidates the winner always kept its fork (see
            // `drop_needless_forks`); with one it ran on the session itself.
            debug_assert!(fork.is_some() || self.codes.len() == 1);
            if let Some(f) = fork {
                py.adopt(f);
            }
            result
        });
        ExecutedStep {
            winner,
            result,
            candidates,
        }
    }
}

/// The text of a `final_answer` value: strings as they are, anything else as its repr.
/// The user turn that follows code whose run ended as `result`: the observation turn (printed
/// output and last value), or the error turn (output so far, then the error). Importers of
/// teacher data build their turns with it too, so training turns read like inference turns.
pub fn observation_turn(tpl: &PromptTemplate, result: &ExecResult) -> String {
    match &result.error {
        Some(e) => {
            let detail = if result.output.is_empty() {
                e.to_string()
            } else {
                format!("{}\n{e}", result.observation().trim_end())
            };
            prompt::fill(&tpl.error, &[("error", &detail)])
        }
        None => prompt::fill(
            &tpl.observation,
            &[("observation", result.observation().trim_end())],
        ),
    }
}

/// A final answer as text: a string as it is, anything else as its Python repr.
pub fn answer_text(a: &small_agent_sandbox::FinalAnswer) -> String {
    match &a.value {
        serde_json::Value::String(s) => s.clone(),
        _ => a.repr.clone(),
    }
}

/// Printed output, last expression's value, final answer's repr.
type OutcomeKey = (String, Option<String>, Option<String>);

/// What a candidate's code did, for voting: its printed output, the value of its last
/// expression and its final answer (not the output alone: every `final_answer` call prints
/// nothing, yet the answers differ).
fn outcome_key(r: &ExecResult) -> OutcomeKey {
    (
        r.output.clone(),
        r.value.clone(),
        r.final_answer.as_ref().map(|a| a.repr.clone()),
    )
}

/// Each candidate's outcome key, `None` for one that had no code, failed or has not run.
fn outcome_keys(ran: &[Option<Ran>]) -> Vec<Option<OutcomeKey>> {
    ran.iter()
        .map(|r| {
            r.as_ref()
                .filter(|r| r.result.ok())
                .map(|r| outcome_key(&r.result))
        })
        .collect()
}

/// Picks the winner: the largest group of candidates that parsed and ran with identical
/// outcomes, the earliest group on ties; with no survivor, candidate 0 (its failure becomes
/// the observation). Returns the winner and each candidate's group size.
fn vote(ran: &[Option<Ran>]) -> (usize, Vec<usize>) {
    let keys = outcome_keys(ran);
    let votes: Vec<usize> = keys
        .iter()
        .map(|k| match k {
            Some(k) => keys.iter().filter(|o| o.as_ref() == Some(k)).count(),
            None => 0,
        })
        .collect();
    let best = votes.iter().copied().max().unwrap_or(0);
    let winner = if best == 0 {
        0
    } else {
        votes.iter().position(|&v| v == best).unwrap_or(0)
    };
    (winner, votes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use small_agent_sandbox::{ErrorKind, FinalAnswer, PyError};

    #[test]
    fn repeats_are_the_same_lines_and_a_redo_samples_with_a_seed_of_its_own() {
        let a = "r = web_search('x')\nprint(r)";
        assert_eq!(
            code_key(a),
            code_key("  r = web_search('x')\n\n    print(r)  \n")
        );
        assert_ne!(code_key(a), code_key("r = web_search('y')\nprint(r)"));
        let greedy = SamplingParams::greedy();
        assert_eq!(redo_sampling(&greedy, 0).temperature, greedy.temperature);
        let (first, second) = (redo_sampling(&greedy, 1), redo_sampling(&greedy, 2));
        assert_eq!(first.temperature, REPEAT_TEMPERATURE);
        assert_ne!(first.seed, second.seed);
        assert_ne!(first.seed, greedy.seed);
        // A hotter sampling keeps its temperature and only gets a new seed.
        let hot = SamplingParams {
            temperature: 1.2,
            ..greedy
        };
        assert_eq!(redo_sampling(&hot, 1).temperature, 1.2);
    }

    #[test]
    fn a_candidate_gets_the_whole_timeout_until_the_step_has_used_it_then_its_share() {
        use std::time::Duration;
        let t = Duration::from_secs(10);
        let ms = Duration::from_millis;
        assert_eq!(candidate_timeout(t, 8, ms(30)), ms(9_970));
        assert_eq!(candidate_timeout(t, 8, Duration::ZERO), t);
        assert_eq!(candidate_timeout(t, 8, ms(9_000)), ms(1_250));
        assert_eq!(candidate_timeout(t, 8, ms(25_000)), ms(1_250));
        assert_eq!(candidate_timeout(t, 1, ms(25_000)), t);
        assert_eq!(candidate_timeout(t, 0, ms(25_000)), t);
    }

    fn ok(output: &str, answer: Option<&str>) -> Option<Ran> {
        Some(Ran {
            result: ExecResult {
                output: output.to_owned(),
                output_truncated: false,
                value: None,
                error: None,
                final_answer: answer.map(|a| FinalAnswer {
                    value: serde_json::Value::String(a.to_owned()),
                    repr: format!("{a:?}"),
                }),
                reset: false,
                tool_calls: 0,
                duration: Default::default(),
            },
            fork: None,
        })
    }

    fn failed() -> Option<Ran> {
        let mut r = ok("partial", None);
        r.as_mut().unwrap().result.error = Some(PyError {
            kind: ErrorKind::Runtime,
            type_name: "ZeroDivisionError".into(),
            message: "division by zero".into(),
            line: Some(1),
            column: None,
            text: None,
            traceback: String::new(),
        });
        r
    }

    fn runner(ran: Vec<Option<Ran>>, ended: &[bool]) -> CandidateRunner {
        let mut r = CandidateRunner::new(ran.len());
        r.ran = ran;
        r.ended = ended.to_vec();
        r
    }

    #[test]
    fn the_vote_is_decided_only_when_the_candidates_still_running_cannot_change_it() {
        let a = || ok("a\n", None);
        let b = || ok("b\n", None);
        // Five of eight agree, three still decoding: even all three elsewhere lose.
        let r = runner(
            vec![a(), a(), a(), a(), a(), None, None, None],
            &[true, true, true, true, true, false, false, false],
        );
        assert!(r.decided());
        // Four agree, four running could make a tie of four elsewhere; ties go to the
        // earliest candidate, so it matters who runs.
        let r = runner(
            vec![None, None, None, None, a(), a(), a(), a()],
            &[false, false, false, false, true, true, true, true],
        );
        assert!(!r.decided());
        // The same with the four that agree first: a tie elsewhere would still lose.
        let r = runner(
            vec![a(), a(), a(), a(), None, None, None, None],
            &[true, true, true, true, false, false, false, false],
        );
        assert!(r.decided());
        // Three "a" (first at 1), two "b" (first at 3), one running after both: a tie of
        // three would go to "a".
        let r = runner(
            vec![failed(), a(), a(), b(), b(), a(), None],
            &[true, true, true, true, true, true, false],
        );
        assert!(r.decided());
        // ... but not when "b" started before "a".
        let r = runner(
            vec![b(), a(), a(), b(), failed(), a(), None],
            &[true, true, true, true, true, true, false],
        );
        assert!(!r.decided());
        // ... nor when the one running comes before "a"'s first.
        let r = runner(
            vec![None, a(), a(), b(), b(), a(), failed()],
            &[false, true, true, true, true, true, true],
        );
        assert!(!r.decided());
        // Four agree, one differs, one failed, two running: 4 > 1 + 2.
        let r = runner(
            vec![a(), b(), a(), failed(), a(), a(), None, None],
            &[true, true, true, true, true, true, false, false],
        );
        assert!(r.decided());
        // Nobody survived yet: undecided while anything runs, decided when all ended.
        let r = runner(vec![failed(), None, None], &[true, true, false]);
        assert!(!r.decided());
        let r = runner(vec![failed(), None, None], &[true, true, true]);
        assert!(r.decided());
        // Final answers count as outcomes: three "Paris" against two "Lyon" with one
        // running is not decided (a third "Lyon" would tie and the earlier group wins).
        let p = || ok("", Some("Paris"));
        let l = || ok("", Some("Lyon"));
        let r = runner(
            vec![l(), p(), p(), l(), p(), None],
            &[true, true, true, true, true, false],
        );
        assert!(!r.decided());
    }

    #[test]
    fn the_largest_group_of_identical_outcomes_wins() {
        let ran = vec![
            ok("1\n", None),
            None,
            ok("2\n", None),
            failed(),
            ok("2\n", None),
        ];
        let (winner, votes) = vote(&ran);
        assert_eq!(winner, 2);
        assert_eq!(votes, vec![1, 0, 2, 0, 2]);
    }

    #[test]
    fn final_answers_are_compared_by_value_not_by_their_empty_output() {
        let ran = vec![
            ok("", Some("Paris")),
            ok("", Some("Lyon")),
            ok("", Some("Lyon")),
        ];
        assert_eq!(vote(&ran), (1, vec![1, 2, 2]));
    }

    #[test]
    fn ties_go_to_the_first_valid_candidate_and_no_survivor_to_the_first() {
        assert_eq!(vote(&[failed(), ok("a", None), ok("b", None)]).0, 1);
        assert_eq!(vote(&[None, failed(), None]), (0, vec![0, 0, 0]));
    }

    #[test]
    fn ended_candidates_the_vote_cannot_pick_are_handed_out_once() {
        let a = || ok("a\n", None);
        let b = || ok("b\n", None);
        // 0 failed while 1 survived; 2 repeats 1's outcome (1 is its group's pick); 3 is
        // a rival that may still grow; 4 and 5 are running.
        let mut r = runner(
            vec![failed(), a(), a(), b(), None, None],
            &[true, true, true, true, false, false],
        );
        r.drop_needless_forks();
        assert_eq!(r.take_needless(), vec![0, 2]);
        assert_eq!(r.take_needless(), Vec::<usize>::new());
        // Another "a" ends: 3 alone can reach two with the one still running, not three.
        r.ran[4] = a();
        r.ended[4] = true;
        r.drop_needless_forks();
        assert_eq!(r.take_needless(), vec![3, 4]);
        let (winner, _) = vote(&r.ran);
        assert!(!r.needless[winner]);
        // Nothing survived: candidate 0's failure is the observation, so it stays.
        let mut r = runner(vec![failed(), failed(), None], &[true, true, true]);
        r.drop_needless_forks();
        assert_eq!(r.take_needless(), vec![1, 2]);
        // One candidate is the winner whatever it did.
        let mut r = runner(vec![failed()], &[true]);
        r.drop_needless_forks();
        assert!(r.take_needless().is_empty());
    }

    #[test]
    fn sag_uses_the_papers_sampling_and_grows_the_context() {
        let c = AgentConfig::default().with_sag(8);
        assert_eq!(
            (c.sag, c.sampling.temperature, c.sampling.top_p),
            (8, 0.4, 0.8)
        );
        // vLLM's order, which the paper sampled with: temperature, then the nucleus.
        assert!(c.sampling.temperature_first);
        assert_eq!((c.sampling.top_k, c.sampling.min_p), (0, 0.0));
        assert_eq!(c.context_size(4096), 4096 + 7 * DEFAULT_STEP_TOKENS / 2);
        assert_eq!(
            AgentConfig::default().with_sag(1).sampling,
            SamplingParams::greedy()
        );
    }
}
