//! The in-process back-end: a GGUF model on the llama.cpp engine.

use super::{ChatError, ChatModel};
use crate::engine::{AfterEnd, ChatMessage, Completion, GenerateParams, Model, Session};

/// A model session of the local engine as a [`ChatModel`].
///
/// The conversation is rendered with the model's own chat template and tokenized from the
/// text (as the reference agent does), so each step's prompt shares its whole past with the
/// KV cache and only the new turn is evaluated.
pub struct LocalChat<'m> {
    session: Session<'m>,
}

impl<'m> LocalChat<'m> {
    /// Wraps a session of the local engine.
    pub fn new(session: Session<'m>) -> Self {
        Self { session }
    }

    /// The model the session runs.
    pub fn model(&self) -> &'m Model {
        self.session.model()
    }

    /// The engine session (for benchmarks and tests that look at the cache).
    pub fn session(&self) -> &Session<'m> {
        &self.session
    }

    /// The prompt tokens of a conversation as this back-end evaluates them: the template's
    /// rendering with the assistant turn opened, then the prefill.
    pub fn prompt_text(
        model: &Model,
        messages: &[ChatMessage],
        prefill: Option<&str>,
    ) -> Result<String, ChatError> {
        let mut text = model.render_chat(messages, true)?;
        if let Some(p) = prefill {
            // The model continues the partial assistant turn.
            text.push_str(p);
        }
        Ok(text)
    }
}

impl std::fmt::Debug for LocalChat<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalChat")
            .field("model", &self.session.model().path())
            .finish_non_exhaustive()
    }
}

impl ChatModel for LocalChat<'_> {
    fn describe(&self) -> String {
        self.session.model().path().display().to_string()
    }

    fn generate(
        &mut self,
        messages: &[ChatMessage],
        n: usize,
        params: &GenerateParams,
        on_text: &mut dyn FnMut(usize, &str) -> bool,
        on_done: &mut dyn FnMut(usize, &Completion) -> AfterEnd,
    ) -> Result<Vec<Completion>, ChatError> {
        let model = self.session.model();
        let text = Self::prompt_text(model, messages, params.prefill.as_deref())?;
        let prompt = model.tokenize(&text, true);
        Ok(self
            .session
            .complete_parallel_until(&prompt, n, params, on_text, on_done)?)
    }

    fn keep(&mut self, i: usize) -> Result<(), ChatError> {
        Ok(self.session.keep_sequence(i)?)
    }
}
