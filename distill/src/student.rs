//! The student's side of every conversation, as the agent renders it at inference: its short
//! system prompt (the built-in `models/prompts/agent-default.toml` or another template), the
//! tools it lists (`web_search` included), the step budget, and the observation and error
//! turns. Importers build trajectories with it and the dataset renders them with it, so what
//! the student is trained on is what it will see.

use std::sync::Arc;

use small_agent::agent::{self, AgentError, PromptTemplate, SearchFn};
use small_agent::engine::ChatMessage;
use small_agent_sandbox::{ExecResult, Toolbox};

/// A `web_search` that exists only to be listed in the system prompt: importing and rendering
/// never run the student's code, and a call says so.
pub fn listed_only_search() -> SearchFn {
    Arc::new(|_q: &str| {
        Err(
            "web_search is only listed while preparing training data; it does not search"
                .to_owned(),
        )
    })
}

/// The student's prompt: template, listed tools, step budget.
#[derive(Debug, Clone)]
pub struct StudentPrompt {
    /// The template (by default `models/prompts/agent-default.toml`).
    pub template: PromptTemplate,
    /// The tools listed in the system prompt (the agent's toolbox, `web_search` included).
    pub tools: Toolbox,
    /// The step budget written into the system prompt.
    pub max_steps: usize,
}

impl StudentPrompt {
    /// The student prompt with `template` and `max_steps`.
    pub fn new(template: PromptTemplate, max_steps: usize) -> Result<Self, AgentError> {
        Ok(Self {
            template,
            tools: agent::agent_toolbox(Some(listed_only_search()))?,
            max_steps,
        })
    }

    /// The built-in student prompt with the agent's default step budget.
    pub fn builtin() -> Result<Self, AgentError> {
        Self::new(PromptTemplate::builtin(), agent::DEFAULT_MAX_STEPS)
    }

    /// System prompt and task turn for `question`.
    pub fn opening(&self, question: &str) -> Vec<ChatMessage> {
        agent::opening_messages(&self.template, &self.tools, self.max_steps, question)
    }

    /// The turn the agent sends back after code whose run ended as `result` (the observation
    /// turn, or the error turn), exactly as `Agent::run` builds it.
    pub fn turn_after(&self, result: &ExecResult) -> String {
        agent::observation_turn(&self.template, result)
    }

    /// The observation turn after code that printed `printed` (plus a newline, as `print`
    /// does) and nothing else.
    pub fn printed_turn(&self, printed: &str) -> String {
        self.turn_after(&ExecResult {
            output: format!("{printed}\n"),
            ..ExecResult::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listed_search_refuses_to_search() {
        let e = listed_only_search()("anything").unwrap_err();
        assert!(e.contains("only listed"), "{e}");
    }

    #[test]
    fn observation_and_error_turns_read_like_the_agents() {
        let p = StudentPrompt::builtin().unwrap();
        let failed = ExecResult {
            output: "partial\n".into(),
            error: Some(small_agent_sandbox::PyError {
                kind: small_agent_sandbox::ErrorKind::Runtime,
                type_name: "ZeroDivisionError".into(),
                message: "division by zero".into(),
                line: None,
                column: None,
                text: None,
                traceback: String::new(),
            }),
            ..ExecResult::default()
        };
        let turn = p.turn_after(&failed);
        assert!(
            turn.starts_with("Observation:\nError: Execution logs:\npartial"),
            "{turn}"
        );
        assert!(
            turn.contains("ZeroDivisionError") && turn.contains("different approach"),
            "{turn}"
        );
    }
}
