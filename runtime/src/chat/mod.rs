//! The chat model the agent talks to: one trait, two back-ends.
//!
//! - [`LocalChat`]: a GGUF model run in-process by the llama.cpp engine (one KV cache, parallel
//!   candidates in one batch, the reply's cells kept for the next step).
//! - [`RemoteChat`]: any OpenAI-compatible `/v1/chat/completions` server (llama.cpp's
//!   `llama-server`, vLLM, Ollama): how a user with a GPU box runs a 7B–32B teacher.
//!
//! The agent loop, its parser, sandbox and tools are the same for both; only how a step's
//! candidates are produced differs.

mod local;
mod remote;
mod sse;

pub use local::LocalChat;
pub use remote::{RemoteChat, RemoteConfig, RemoteError};

use crate::engine::{AfterEnd, ChatMessage, Completion, EngineError, GenerateParams};

/// Errors of a chat model back-end.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// The local engine failed (e.g. the conversation outgrew the context).
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The remote server could not be reached or answered something unusable.
    #[error(transparent)]
    Remote(#[from] RemoteError),
}

/// A chat model that continues a conversation with one or more candidate replies.
///
/// `params.prefill` is the start of the reply, already decided by the caller (a forced first
/// thought, or the grammar's forced `Thought:`): the back-end continues a partial assistant
/// turn that begins with it, and the returned texts do not repeat it.
pub trait ChatModel {
    /// What the model is, for logs and trajectories (a file name or `NAME@URL`).
    fn describe(&self) -> String;

    /// Generates `n` replies to `messages` (the conversation so far, ending with a user turn).
    ///
    /// `on_text(i, text)` streams candidate `i` (only text that can no longer be part of a stop
    /// string); returning `false` cancels the call, whose candidates then end with
    /// `FinishReason::Cancelled`. `on_done(i, completion)` is called as each candidate ends and
    /// answers whether the others are still needed ([`AfterEnd`]). Candidate `i` samples with
    /// seed `seed + i`.
    fn generate(
        &mut self,
        messages: &[ChatMessage],
        n: usize,
        params: &GenerateParams,
        on_text: &mut dyn FnMut(usize, &str) -> bool,
        on_done: &mut dyn FnMut(usize, &Completion) -> AfterEnd,
    ) -> Result<Vec<Completion>, ChatError>;

    /// Candidate `i` of the last [`ChatModel::generate`] call continues the conversation (a
    /// local model keeps its cached tokens; a remote one has nothing to keep).
    fn keep(&mut self, i: usize) -> Result<(), ChatError>;

    /// One greedy-or-sampled reply, without candidates (first thought, fallback answer).
    fn reply(
        &mut self,
        messages: &[ChatMessage],
        params: &GenerateParams,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Completion, ChatError> {
        let mut all = self.generate(messages, 1, params, &mut |_, t| on_text(t), &mut |_, _| {
            AfterEnd::go_on()
        })?;
        self.keep(0)?;
        Ok(all.remove(0))
    }
}
