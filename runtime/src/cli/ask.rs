//! `small-agent ask`: the entry of the main job.
//!
//! Until the agent loop (Thought → Python code → Observation, with `web_search` and
//! `final_answer` tools) lands, `ask` answers with the model alone and says so on stderr.
use std::{io::Write, process::ExitCode};

use anyhow::Result;
use clap::Args;
use serde::Serialize;
use small_agent::{CallStats, ChatMessage, FinishReason, GenerateParams, SamplingParams};

use super::{read_text_arg, ContextArgs, ModelArgs};

/// The system prompt of the model-only answer (prompts are data: see models/prompts/).
const DIRECT_ANSWER_PROMPT: &str = include_str!("../../../models/prompts/direct-answer.txt");

/// Arguments of `ask`.
#[derive(Debug, Args)]
pub struct AskArgs {
    /// The question (`-` reads it from standard input)
    pub question: String,
    /// Maximum tokens of the answer
    #[arg(long, default_value_t = 256, value_name = "N")]
    pub max_tokens: u32,
    /// Print one JSON object (answer, mode, timings)
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub context: ContextArgs,
}

#[derive(Serialize)]
struct AskOut<'a> {
    question: &'a str,
    answer: &'a str,
    /// `model-only` until the tool-using agent loop exists.
    mode: &'static str,
    finish_reason: FinishReason,
    #[serde(flatten)]
    stats: CallStats,
}

pub fn run(args: AskArgs) -> Result<ExitCode> {
    let question = read_text_arg(&args.question)?;
    let model = args.model.load()?;
    let mut session = model.session(&args.context.session_params())?;
    let messages = [
        ChatMessage::new("system", DIRECT_ANSWER_PROMPT.trim()),
        ChatMessage::new("user", question.trim()),
    ];
    let params = GenerateParams {
        max_tokens: args.max_tokens,
        sampling: SamplingParams::greedy(),
        ..Default::default()
    };
    if !args.json {
        eprintln!(
            "note: the tool-using agent loop is not built yet; this answer comes from the model \
             alone, without search or code"
        );
    }
    let mut stdout = std::io::stdout().lock();
    let c = session.chat(&messages, &params, &mut |t| {
        args.json || (stdout.write_all(t.as_bytes()).is_ok() && stdout.flush().is_ok())
    })?;
    if args.json {
        let out = AskOut {
            question: &question,
            answer: c.text.trim(),
            mode: "model-only",
            finish_reason: c.finish_reason,
            stats: c.stats,
        };
        serde_json::to_writer(&mut stdout, &out)?;
    }
    writeln!(stdout)?;
    if c.text.trim().is_empty() {
        eprintln!("error: the model produced no answer");
        return Ok(ExitCode::from(super::EXIT_TASK_FAILED));
    }
    Ok(ExitCode::SUCCESS)
}
