//! One trajectory → the student's conversation → token ids and an assistant-only loss mask,
//! exactly as the runtime renders and tokenizes a conversation at inference.

use small_agent::agent::PromptTemplate;
use small_agent::engine::{ChatMessage, LlamaToken};
use small_agent::{EngineError, Model};

use crate::student::StudentPrompt;
use crate::trajectory::{Trajectory, TrajectoryKind};

/// Why a trajectory could not become an example (each is counted, none is mis-masked).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderProblem {
    /// An agent trajectory that does not open with a system and a user turn, or a
    /// conversation without an assistant turn.
    #[error("bad conversation: {0}")]
    BadConversation(String),
    /// The template's rendering of the conversation up to an assistant turn is not the start
    /// of the whole rendering, or the turn's text is not where it should be.
    #[error(
        "assistant turn {turn}: the chat template does not render conversations prefix by prefix"
    )]
    TemplateMismatch {
        /// Index of the assistant message.
        turn: usize,
    },
    /// The tokens of the text before (or up to the end of) an assistant turn are not the
    /// start of the whole conversation's tokens: the tokenizer merged across the boundary.
    #[error(
        "assistant turn {turn}: token boundary at the turn's {side} does not fall between tokens"
    )]
    TokenBoundary {
        /// Index of the assistant message.
        turn: usize,
        /// `start` or `end`.
        side: &'static str,
    },
    /// The token after an assistant turn's text is not an end-of-turn token.
    #[error("assistant turn {turn}: no end-of-turn token after it")]
    NoEndOfTurn {
        /// Index of the assistant message.
        turn: usize,
    },
    /// The inference prompt (the conversation so far, the assistant turn opened, the grammar's
    /// forced start) does not tokenize as the start of the example's tokens.
    #[error("assistant turn {turn}: the prompt with the grammar's forced start does not tokenize as a prefix of the example")]
    PrefillMismatch {
        /// Index of the assistant message.
        turn: usize,
    },
    /// The engine refused to render a message (e.g. a NUL byte in it).
    #[error("the chat template failed: {0}")]
    Render(String),
}

impl RenderProblem {
    /// The snake_case name counted in the manifest.
    pub fn reason(&self) -> &'static str {
        match self {
            RenderProblem::BadConversation(_) => "bad_conversation",
            RenderProblem::TemplateMismatch { .. } => "template_mismatch",
            RenderProblem::TokenBoundary { .. } => "token_boundary",
            RenderProblem::NoEndOfTurn { .. } => "no_end_of_turn",
            RenderProblem::PrefillMismatch { .. } => "prefill_mismatch",
            RenderProblem::Render(_) => "render_error",
        }
    }

    /// Every reason name, for reports with zeros.
    pub const REASONS: [&'static str; 6] = [
        "bad_conversation",
        "template_mismatch",
        "token_boundary",
        "no_end_of_turn",
        "prefill_mismatch",
        "render_error",
    ];
}

impl From<EngineError> for RenderProblem {
    fn from(e: EngineError) -> Self {
        RenderProblem::Render(e.to_string())
    }
}

/// A rendered, tokenized conversation.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// The conversation that was rendered (the student's opening turns in an agent one).
    pub messages: Vec<ChatMessage>,
    /// The template's text of the whole conversation.
    pub text: String,
    /// Token ids of `text`, as `Model::tokenize(text, true)` gives them.
    pub tokens: Vec<u32>,
    /// 1 on the tokens of assistant replies and the end-of-turn token closing each, else 0.
    pub mask: Vec<u8>,
    /// Per assistant turn, its token range `start..end` with the end-of-turn token included.
    pub spans: Vec<std::ops::Range<usize>>,
}

impl Example {
    /// Tokens with mask 1.
    pub fn masked(&self) -> usize {
        self.mask.iter().filter(|&&m| m == 1).count()
    }
}

/// Renders trajectories as the student sees them at inference.
pub struct Renderer<'m> {
    model: &'m Model,
    student: StudentPrompt,
    prefill: Option<String>,
}

impl std::fmt::Debug for Renderer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Renderer")
            .field("model", &self.model.path())
            .field("max_steps", &self.student.max_steps)
            .field("prefill", &self.prefill)
            .finish_non_exhaustive()
    }
}

impl<'m> Renderer<'m> {
    /// A renderer with the student's `template`, its tools (`web_search` listed) and step
    /// budget. `prefill`: the text the step grammar forces at the start of each reply
    /// (`Thought:`); when given, each agent reply starting with it is checked to tokenize
    /// after the inference prompt exactly as inside the example.
    pub fn new(
        model: &'m Model,
        template: PromptTemplate,
        max_steps: usize,
        prefill: Option<String>,
    ) -> Self {
        let student = StudentPrompt::new(template, max_steps)
            .expect("the agent's own toolbox registers without conflict");
        Self {
            model,
            student,
            prefill,
        }
    }

    /// The model whose template and tokenizer are used.
    pub fn model(&self) -> &'m Model {
        self.model
    }

    /// The student's system message (the same for every agent trajectory).
    pub fn system_prompt(&self) -> String {
        self.student.opening("").swap_remove(0).content
    }

    /// Names of the tools listed in the system prompt (`final_answer` included).
    pub fn tool_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.student.tools.iter().map(|t| t.name.clone()).collect();
        v.push("final_answer".into());
        v
    }

    /// The conversation the student is trained on: for an agent trajectory, the student's
    /// system and task turns in place of `messages[0..2]`, then the rest as recorded; for a
    /// CoT one, its messages as they are. Trailing turns after the last assistant turn are
    /// left out (they carry no loss).
    pub fn messages(&self, t: &Trajectory) -> Result<Vec<ChatMessage>, RenderProblem> {
        let m = &t.log_data.messages;
        let mut out = match t.kind {
            TrajectoryKind::Agent => {
                if m.len() < 2 || m[0].role != "system" || m[1].role != "user" {
                    return Err(RenderProblem::BadConversation(
                        "an agent trajectory must open with a system and a user turn".into(),
                    ));
                }
                let mut v = self.student.opening(&t.question);
                v.extend(m[2..].iter().cloned());
                v
            }
            TrajectoryKind::Cot => m.clone(),
        };
        while out.last().is_some_and(|x| x.role != "assistant") {
            out.pop();
        }
        if out.is_empty() {
            return Err(RenderProblem::BadConversation("no assistant turn".into()));
        }
        if let Some(bad) = out
            .iter()
            .find(|x| !matches!(x.role.as_str(), "system" | "user" | "assistant"))
        {
            return Err(RenderProblem::BadConversation(format!(
                "unknown role {:?}",
                bad.role
            )));
        }
        Ok(out)
    }

    /// Renders and tokenizes a trajectory (see [`Renderer::messages`] and
    /// [`Renderer::tokenize_conversation`]).
    pub fn render(&self, t: &Trajectory) -> Result<Example, RenderProblem> {
        let messages = self.messages(t)?;
        self.tokenize_conversation(messages, t.kind == TrajectoryKind::Agent)
    }

    /// Token ids of `text` as inference makes them (`add_bos = true`).
    pub fn tokens(&self, text: &str) -> Vec<u32> {
        self.model
            .tokenize(text, true)
            .into_iter()
            .map(|t| t.0 as u32)
            .collect()
    }

    /// Renders `messages` with the model's chat template, tokenizes the text, and masks the
    /// assistant turns. Boundaries are found prefix by prefix: the template's text of the
    /// conversation before assistant turn k with the assistant turn opened must start the
    /// whole text, the turn's content must follow it, and the tokens of the text up to the
    /// turn's start and up to its end must each be a prefix of the whole tokenization; the
    /// token right after the turn must end a generation (`<|im_end|>` in ChatML). The mask
    /// is 1 from the turn's first token to that end-of-turn token, both included. With
    /// `check_prefill` and a prefill set, a reply starting with the prefill must also agree
    /// with the inference prompt (text before the turn + prefill) tokenized on its own.
    pub fn tokenize_conversation(
        &self,
        messages: Vec<ChatMessage>,
        check_prefill: bool,
    ) -> Result<Example, RenderProblem> {
        let text = self.model.render_chat(&messages, false)?;
        let engine_tokens = self.model.tokenize(&text, true);
        let tokens: Vec<u32> = engine_tokens.iter().map(|t| t.0 as u32).collect();
        let mut mask = vec![0u8; tokens.len()];
        let mut spans = Vec::new();
        for (k, m) in messages.iter().enumerate() {
            if m.role != "assistant" {
                continue;
            }
            let before = self.model.render_chat(&messages[..k], true)?;
            if !text.starts_with(&before) || !text[before.len()..].starts_with(&m.content) {
                return Err(RenderProblem::TemplateMismatch { turn: k });
            }
            let start = self.tokens(&before);
            if !tokens.starts_with(&start) {
                return Err(RenderProblem::TokenBoundary {
                    turn: k,
                    side: "start",
                });
            }
            if let (true, Some(p)) = (check_prefill, &self.prefill) {
                if m.content.starts_with(p.as_str()) {
                    let prompt = self.tokens(&format!("{before}{p}"));
                    if !tokens.starts_with(&prompt) {
                        return Err(RenderProblem::PrefillMismatch { turn: k });
                    }
                }
            }
            let end = self.tokens(&text[..before.len() + m.content.len()]);
            if !tokens.starts_with(&end) || end.len() < start.len() {
                return Err(RenderProblem::TokenBoundary {
                    turn: k,
                    side: "end",
                });
            }
            let eot = end.len();
            let closed = engine_tokens
                .get(eot)
                .is_some_and(|&t| self.model.is_end_of_generation(t));
            if !closed {
                return Err(RenderProblem::NoEndOfTurn { turn: k });
            }
            mask[start.len()..=eot].fill(1);
            spans.push(start.len()..eot + 1);
        }
        if spans.is_empty() {
            return Err(RenderProblem::BadConversation("no assistant turn".into()));
        }
        Ok(Example {
            messages,
            text,
            tokens,
            mask,
            spans,
        })
    }

    /// The text of token ids (special tokens written out), as the engine streams it.
    pub fn detokenize(&self, ids: &[u32]) -> String {
        detokenize(self.model, ids)
    }
}

/// The text of token ids (special tokens written out), as the engine streams it.
pub fn detokenize(model: &Model, ids: &[u32]) -> String {
    let toks: Vec<LlamaToken> = ids.iter().map(|&i| LlamaToken(i as i32)).collect();
    model.detokenize(&toks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trajectory::LogData;
    use small_agent::chat::LocalChat;
    use small_agent_eval::dataset::Kind;
    use std::path::Path;

    fn model() -> Model {
        let path = small_agent::assets::default_model_path().expect("asset catalog");
        assert!(
            path.is_file(),
            "the default model is not at {}: run scripts/setup.sh",
            path.display()
        );
        Model::load(&path).expect("the default model loads")
    }

    const STEP1: &str =
        "Thought: I will add the two numbers.\nCode:\n```py\nprint(2 + 3)\n```<end_code>";
    const STEP2: &str = "Thought: It is 5.\nCode:\n```py\nfinal_answer(5)\n```<end_code>";

    fn tiny(kind: TrajectoryKind) -> Trajectory {
        let messages = match kind {
            TrajectoryKind::Agent => vec![
                ChatMessage::new("system", "TEACHER SYSTEM PROMPT"),
                ChatMessage::new("user", "New task:\nWhat is 2 + 3?"),
                ChatMessage::new("assistant", STEP1),
                ChatMessage::new("user", "Observation:\n5"),
                ChatMessage::new("assistant", STEP2),
            ],
            TrajectoryKind::Cot => vec![
                ChatMessage::new("system", "Answer step by step."),
                ChatMessage::new("user", "What is 2 + 3?"),
                ChatMessage::new("assistant", "2 + 3 = 5. The answer is \\boxed{5}."),
            ],
        };
        Trajectory {
            id: "unit/1".into(),
            question: "What is 2 + 3?".into(),
            true_answer: Some("5".into()),
            true_answers: vec!["5".into()],
            generated_answer: "5".into(),
            kind,
            answer_kind: Kind::Math,
            source: "unit".into(),
            source_dataset: "unit".into(),
            teacher: String::new(),
            correct: None,
            failure: None,
            log_data: LogData {
                messages,
                ..Default::default()
            },
            extra: Default::default(),
        }
    }

    fn renderer<'m>(model: &'m Model, prefill: Option<&str>) -> Renderer<'m> {
        Renderer::new(
            model,
            PromptTemplate::builtin(),
            5,
            prefill.map(str::to_owned),
        )
    }

    /// Runs of mask 1, as token ranges.
    fn runs(mask: &[u8]) -> Vec<std::ops::Range<usize>> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < mask.len() {
            if mask[i] == 1 {
                let s = i;
                while i < mask.len() && mask[i] == 1 {
                    i += 1;
                }
                out.push(s..i);
            } else {
                i += 1;
            }
        }
        out
    }

    #[test]
    fn the_masked_spans_are_exactly_the_replies_and_their_end_of_turn() {
        let model = model();
        let r = renderer(&model, Some("Thought:"));
        let ex = r.render(&tiny(TrajectoryKind::Agent)).unwrap();
        // The student's own system prompt, web_search listed; the teacher's is gone.
        assert!(
            ex.text.contains("You solve tasks by thinking"),
            "{}",
            ex.text
        );
        assert!(ex.text.contains("web_search(query: str)"), "{}", ex.text);
        assert!(!ex.text.contains("TEACHER SYSTEM PROMPT"));
        let runs = runs(&ex.mask);
        assert_eq!(runs, ex.spans);
        assert_eq!(runs.len(), 2);
        for (run, want) in runs.iter().zip([STEP1, STEP2]) {
            assert_eq!(
                r.detokenize(&ex.tokens[run.clone()]),
                format!("{want}<|im_end|>")
            );
            // Just before the reply: the template's header, unmasked.
            assert!(r
                .detokenize(&ex.tokens[..run.start])
                .ends_with("<|im_start|>assistant\n"));
        }
        // Everything unmasked is the rest of the text: system, task, observation, headers.
        let unmasked: Vec<u32> = ex
            .tokens
            .iter()
            .zip(&ex.mask)
            .filter(|p| *p.1 == 0)
            .map(|p| *p.0)
            .collect();
        let rest = r.detokenize(&unmasked);
        assert!(
            rest.contains("Observation:\n5<|im_end|>") && !rest.contains("print(2 + 3)"),
            "{rest}"
        );
        assert_eq!(r.detokenize(&ex.tokens), ex.text);

        // A CoT trajectory keeps its messages; its one reply is masked the same way.
        let cot = r.render(&tiny(TrajectoryKind::Cot)).unwrap();
        assert!(cot.text.contains("Answer step by step."));
        let runs = super::tests::runs(&cot.mask);
        assert_eq!(runs.len(), 1);
        assert_eq!(
            r.detokenize(&cot.tokens[runs[0].clone()]),
            "2 + 3 = 5. The answer is \\boxed{5}.<|im_end|>"
        );
    }

    #[test]
    fn the_training_tokens_are_what_the_agent_feeds_at_inference() {
        let model = model();
        let r = renderer(&model, Some("Thought:"));
        let ex = r.render(&tiny(TrajectoryKind::Agent)).unwrap();
        let mut turns = 0;
        for (k, m) in ex.messages.iter().enumerate() {
            if m.role != "assistant" {
                continue;
            }
            let prompt =
                LocalChat::prompt_text(&model, &ex.messages[..k], Some("Thought:")).unwrap();
            let p: Vec<u32> = model
                .tokenize(&prompt, true)
                .iter()
                .map(|t| t.0 as u32)
                .collect();
            assert!(
                ex.tokens.starts_with(&p),
                "turn {k}: the inference prompt is not a prefix"
            );
            let span = &ex.spans[turns];
            let after = r.detokenize(&ex.tokens[p.len()..span.end - 1]);
            assert_eq!(after, m.content.strip_prefix("Thought:").unwrap());
            turns += 1;
        }
        assert_eq!(turns, 2);
    }

    #[test]
    fn a_prefill_that_splits_a_token_is_caught() {
        let model = model();
        // " It" is one token of the reply; a prompt ending in "Thought: I" splits it.
        let r = renderer(&model, Some("Thought: I"));
        assert_eq!(
            r.render(&tiny(TrajectoryKind::Agent)).unwrap_err(),
            RenderProblem::PrefillMismatch { turn: 4 }
        );
        // The same trajectory passes with the check off (CoT lines are never checked).
        let r = renderer(&model, None);
        assert!(r.render(&tiny(TrajectoryKind::Agent)).is_ok());
    }

    #[test]
    fn conversations_without_the_expected_turns_are_refused() {
        let model = model();
        let r = renderer(&model, Some("Thought:"));
        let mut t = tiny(TrajectoryKind::Agent);
        t.log_data.messages.remove(0);
        assert!(matches!(
            r.render(&t),
            Err(RenderProblem::BadConversation(_))
        ));
        let mut t = tiny(TrajectoryKind::Agent);
        t.log_data.messages.truncate(2);
        assert!(matches!(
            r.render(&t),
            Err(RenderProblem::BadConversation(_))
        ));
        // A trailing observation turn carries no loss and is left out.
        let mut t = tiny(TrajectoryKind::Agent);
        t.log_data
            .messages
            .push(ChatMessage::new("user", "Observation:\nTRAILING-MARKER"));
        let ex = r.render(&t).unwrap();
        assert!(!ex.text.contains("TRAILING-MARKER"));
    }

    #[test]
    fn teacher_and_student_share_their_observation_turns() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/prompts");
        let student = PromptTemplate::from_file(&dir.join("agent-default.toml")).unwrap();
        let teacher = PromptTemplate::from_file(&dir.join("teacher-agent.toml")).unwrap();
        assert_eq!(student, PromptTemplate::builtin());
        assert_eq!(teacher.observation, student.observation);
        assert_eq!(teacher.error, student.error);
        assert_eq!(teacher.no_code, student.no_code);
        assert_eq!(teacher.task, student.task);
    }
}
