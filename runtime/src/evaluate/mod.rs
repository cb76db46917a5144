//! The evaluation modes on a model: the full agent, plain chain-of-thought, and
//! chain-of-thought with retrieved passages, plus the optional local judge. Datasets,
//! scoring and result files live in the `small-agent-eval` crate; this module produces the
//! replies and turns them into [`QuestionRecord`]s.
use std::{sync::Arc, time::Instant};

use serde_json::{json, Value};
use small_agent_eval::{
    math::{extract_boxed, extract_math_answer, extract_tagged, math_equal, Found},
    prompts::{fill, parse_verdict, CotPrompts, JudgePrompt},
    results::JudgeRecord,
    score::score_factual,
    Item, Kind, QuestionRecord, SymbolicChecker,
};

use crate::{
    agent::{Agent, AgentError, SearchFn},
    engine::{
        ChatMessage, EngineError, GenerateParams, Model, SamplingParams, Session, SessionParams,
    },
};

/// Token cap of a chain-of-thought reply.
pub const DEFAULT_COT_TOKENS: u32 = 512;
/// Token cap of a judge reply (the verdict is one word).
pub const JUDGE_TOKENS: u32 = 8;
/// Passages put into a `cot-rag` prompt: the agent's `web_search` result for the question.
pub const RAG_PASSAGES: usize = small_agent_index::AGENT_TOP_K;

/// Which system answers the questions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The code agent (steps, Python, `web_search`).
    Agent,
    /// One chain-of-thought reply, the answer in `<answer>` tags or `\boxed{}`.
    Cot,
    /// Like `Cot`, with the top passages of the shard for the question in the prompt.
    CotRag,
}

impl Mode {
    /// `agent`, `cot` or `cot-rag`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Agent => "agent",
            Mode::Cot => "cot",
            Mode::CotRag => "cot-rag",
        }
    }
}

/// Errors that stop an evaluation (a question's own failure is recorded, not raised).
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// The engine failed outside a question (e.g. a session could not be made).
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The agent could not start.
    #[error(transparent)]
    Agent(#[from] AgentError),
}

/// What a mode produced for one question, before scoring.
#[derive(Debug, Clone)]
pub struct Answered {
    /// The extracted answer.
    pub prediction: String,
    /// Model calls (agent steps, 1 for CoT).
    pub steps: usize,
    /// Replies whose format did not parse.
    pub parse_errors: usize,
    /// Search calls.
    pub search_calls: usize,
    /// Why the question ended early.
    pub error: Option<String>,
    /// The mode's trajectory.
    pub trajectory: Value,
    /// The caller cancelled: the question must not be recorded.
    pub cancelled: bool,
}

/// A mode that answers questions.
pub trait Answerer {
    /// Answers one item; `keep_going` is polled during generation and returns `false` to
    /// cancel.
    fn answer(&mut self, item: &Item, keep_going: &dyn Fn() -> bool)
        -> Result<Answered, EvalError>;
}

/// The agent as an answerer.
pub struct AgentAnswerer<'m> {
    agent: Agent<'m>,
}

impl<'m> AgentAnswerer<'m> {
    /// Wraps a ready agent.
    pub fn new(agent: Agent<'m>) -> Self {
        Self { agent }
    }

    /// The agent back (its model session and cache stay warm for the next question).
    pub fn into_agent(self) -> Agent<'m> {
        self.agent
    }
}

impl Answerer for AgentAnswerer<'_> {
    fn answer(
        &mut self,
        item: &Item,
        keep_going: &dyn Fn() -> bool,
    ) -> Result<Answered, EvalError> {
        let run = self.agent.run(&item.question, &mut |_| keep_going())?;
        let cancelled = !keep_going() || run.error.as_deref() == Some("cancelled");
        let mut prediction = run.answer.trim().to_owned();
        if item.kind == Kind::Math {
            if let Some(b) = extract_boxed(&prediction) {
                prediction = b;
            }
        }
        let mut trajectory = crate::agent::trajectory_record(&run);
        if let Some(o) = trajectory.as_object_mut() {
            o.insert("answer_source".into(), json!(run.answer_source));
        }
        Ok(Answered {
            prediction,
            steps: run.steps.len(),
            parse_errors: run.steps.iter().filter(|s| s.parse_error).count(),
            search_calls: run.steps.iter().map(|s| s.tool_calls).sum(),
            error: run.error.clone(),
            trajectory,
            cancelled,
        })
    }
}

/// Chain-of-thought (optionally with retrieved passages) as an answerer.
pub struct CotAnswerer<'m> {
    session: Session<'m>,
    prompts: CotPrompts,
    search: Option<SearchFn>,
    params: GenerateParams,
}

impl<'m> CotAnswerer<'m> {
    /// A CoT answerer; with `search`, the `rag_task` prompt gets the passages it returns for
    /// the question (the `cot-rag` mode).
    pub fn new(
        model: &'m Model,
        session: &SessionParams,
        prompts: CotPrompts,
        search: Option<SearchFn>,
        sampling: SamplingParams,
        max_tokens: u32,
    ) -> Result<Self, EvalError> {
        Ok(Self {
            session: model.session(session)?,
            prompts,
            search,
            params: GenerateParams {
                max_tokens,
                sampling,
                ..GenerateParams::default()
            },
        })
    }
}

/// The answer of a CoT reply and whether it was found where the prompt asked for it
/// (`<answer>` tags or `\boxed{}`; for math also a stated "final answer is"). A reply
/// without one is a parse error; its last line (factual) or last number (math) is still
/// scored.
pub fn cot_answer(reply: &str, kind: Kind) -> (String, bool) {
    match kind {
        Kind::Factual => {
            if let Some(a) = extract_tagged(reply, "answer") {
                return (a, true);
            }
            if let Some(b) = extract_boxed(reply) {
                return (b, true);
            }
            let last = reply
                .lines()
                .rev()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .unwrap_or("");
            (last.to_owned(), false)
        }
        Kind::Math => {
            let (a, how) = extract_math_answer(reply);
            (
                a.unwrap_or_default(),
                matches!(how, Found::Boxed | Found::Tag | Found::Stated),
            )
        }
    }
}

impl Answerer for CotAnswerer<'_> {
    fn answer(
        &mut self,
        item: &Item,
        keep_going: &dyn Fn() -> bool,
    ) -> Result<Answered, EvalError> {
        let system = match item.kind {
            Kind::Factual => &self.prompts.factual_system,
            Kind::Math => &self.prompts.math_system,
        };
        let (user, passages, searches) = match &self.search {
            Some(search) => {
                let passages = match search(&item.question) {
                    Ok(p) => p,
                    Err(e) => format!("(search failed: {e})"),
                };
                (
                    fill(
                        &self.prompts.rag_task,
                        &[("passages", passages.trim()), ("question", &item.question)],
                    ),
                    Some(passages),
                    1,
                )
            }
            None => (
                fill(&self.prompts.task, &[("question", &item.question)]),
                None,
                0,
            ),
        };
        let messages = [
            ChatMessage::new("system", fill(system, &[])),
            ChatMessage::new("user", user),
        ];
        let (reply, error) = match self
            .session
            .chat(&messages, &self.params, &mut |_| keep_going())
        {
            Ok(c) => (c.text, None),
            Err(e @ EngineError::ContextOverflow { .. }) => (String::new(), Some(e.to_string())),
            Err(e) => return Err(e.into()),
        };
        let (prediction, parsed) = cot_answer(&reply, item.kind);
        let mut msgs: Vec<Value> = messages
            .iter()
            .map(|m| json!({"role": m.role, "content": m.content}))
            .collect();
        msgs.push(json!({"role": "assistant", "content": reply}));
        Ok(Answered {
            prediction,
            steps: 1,
            parse_errors: usize::from(!parsed),
            search_calls: searches,
            error,
            trajectory: json!({"messages": msgs, "passages": passages, "answer_found": parsed}),
            cancelled: !keep_going(),
        })
    }
}

/// A local model asked whether a prediction matches the gold answer.
pub struct Judge<'m> {
    session: Session<'m>,
    prompt: JudgePrompt,
}

impl<'m> Judge<'m> {
    /// A judge on `model` with `prompt` (greedy, a few tokens).
    pub fn new(
        model: &'m Model,
        session: &SessionParams,
        prompt: JudgePrompt,
    ) -> Result<Self, EvalError> {
        Ok(Self {
            session: model.session(session)?,
            prompt,
        })
    }

    /// The verdict on one answer: the reply parsed strictly (see
    /// [`small_agent_eval::prompts::parse_verdict`]).
    pub fn judge(&mut self, item: &Item, prediction: &str) -> Result<JudgeRecord, EvalError> {
        let messages = [
            ChatMessage::new("system", fill(&self.prompt.system, &[])),
            ChatMessage::new(
                "user",
                fill(
                    &self.prompt.task,
                    &[
                        ("question", &item.question),
                        ("gold", &item.answers.join(" / ")),
                        ("prediction", prediction),
                    ],
                ),
            ),
        ];
        let params = GenerateParams {
            max_tokens: JUDGE_TOKENS,
            sampling: SamplingParams::greedy(),
            ..GenerateParams::default()
        };
        let reply = self.session.chat(&messages, &params, &mut |_| true)?.text;
        Ok(JudgeRecord {
            verdict: parse_verdict(&reply),
            reply,
        })
    }
}

/// Scores an answered item into its record. Factual: EM/F1/containment, and the judge's
/// parsed verdict (when there is one) decides `correct`, else EM. Math: the equivalence
/// check (numeric, structural, then `symbolic`) decides `correct`; EM/F1 are computed on the
/// extracted answer as for factual items.
pub fn score(
    dataset: &str,
    item: &Item,
    a: Answered,
    symbolic: Option<&dyn SymbolicChecker>,
    judge: Option<JudgeRecord>,
    seconds: f64,
) -> QuestionRecord {
    let f = score_factual(&a.prediction, &item.answers);
    let (correct, math) = match item.kind {
        Kind::Factual => (judge.as_ref().and_then(|j| j.verdict).unwrap_or(f.em), None),
        Kind::Math => {
            let mut best = None;
            for g in &item.answers {
                let v = math_equal(&a.prediction, g, symbolic);
                let eq = v.equal;
                best = Some(v);
                if eq {
                    break;
                }
            }
            let v = best.expect("items have at least one answer");
            (v.equal, Some(v))
        }
    };
    QuestionRecord {
        dataset: dataset.to_owned(),
        id: item.id.clone(),
        question: item.question.clone(),
        gold: item.answers.clone(),
        kind: item.kind,
        prediction: a.prediction,
        correct,
        em: f.em,
        f1: f.f1,
        contains: f.contains,
        math,
        judge,
        steps: a.steps,
        parse_errors: a.parse_errors,
        search_calls: a.search_calls,
        seconds,
        error: a.error,
        trajectory: a.trajectory,
    }
}

/// Answers, judges and scores one item; `None` when the caller cancelled.
#[allow(clippy::too_many_arguments)]
pub fn evaluate_item(
    dataset: &str,
    item: &Item,
    answerer: &mut dyn Answerer,
    judge: Option<&mut Judge<'_>>,
    symbolic: Option<&dyn SymbolicChecker>,
    keep_going: &dyn Fn() -> bool,
) -> Result<Option<QuestionRecord>, EvalError> {
    let t = Instant::now();
    let a = answerer.answer(item, keep_going)?;
    if a.cancelled || !keep_going() {
        return Ok(None);
    }
    let verdict = match judge {
        Some(j) => Some(j.judge(item, &a.prediction)?),
        None => None,
    };
    let seconds = t.elapsed().as_secs_f64();
    Ok(Some(score(dataset, item, a, symbolic, verdict, seconds)))
}

/// A search function over a shard, as the agent and `cot-rag` use it.
pub fn shard_search(shard: Arc<small_agent_index::Shard>) -> SearchFn {
    Arc::new(move |q: &str| small_agent_index::agent_search(&*shard, q).map_err(|e| e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cot_answers_are_found_or_flagged() {
        assert_eq!(
            cot_answer("Think.\n<answer>Paris</answer>", Kind::Factual),
            ("Paris".into(), true)
        );
        assert_eq!(
            cot_answer("It is Paris.\nParis", Kind::Factual),
            ("Paris".into(), false)
        );
        assert_eq!(
            cot_answer("so \\boxed{\\frac{1}{2}}", Kind::Math),
            ("\\frac{1}{2}".into(), true)
        );
        assert_eq!(cot_answer("it is 7 or 8", Kind::Math), ("8".into(), false));
    }
}
