//! `small-agent generate`: one chat turn, streamed.
use std::{io::Write, path::PathBuf, process::ExitCode};

use anyhow::Result;
use clap::Args;
use serde::Serialize;
use small_agent::{ChatMessage, Completion, FinishReason, GenerateParams};

use super::{read_file_arg, read_text_arg, ContextArgs, ModelArgs, SamplingArgs};

/// Arguments of `generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// The user message (`-` reads it from standard input)
    pub prompt: String,
    /// Optional system message
    #[arg(long, value_name = "TEXT")]
    pub system: Option<String>,
    /// Stop generation before this string (repeatable); it is not printed
    #[arg(long, value_name = "TEXT")]
    pub stop: Vec<String>,
    /// Constrain the output with a GBNF grammar file (root rule `root`)
    #[arg(long, value_name = "FILE")]
    pub grammar: Option<PathBuf>,
    /// Print one JSON object (text, finish_reason and timings) instead of streaming
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub context: ContextArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

#[derive(Serialize)]
struct JsonOut<'a> {
    model: String,
    #[serde(flatten)]
    completion: &'a Completion,
}

pub fn run(args: GenerateArgs) -> Result<ExitCode> {
    let prompt = read_text_arg(&args.prompt)?;
    let grammar = args
        .grammar
        .as_deref()
        .map(|p| read_file_arg(p, "grammar"))
        .transpose()?;
    let model = args.model.load()?;
    let mut session = model.session(&args.context.session_params())?;
    let mut messages = Vec::new();
    if let Some(s) = args.system {
        messages.push(ChatMessage::new("system", s));
    }
    messages.push(ChatMessage::new("user", prompt));
    let params = GenerateParams {
        max_tokens: args.sampling.max_tokens,
        sampling: args.sampling.sampling(),
        stop: args.stop,
        grammar,
        ..Default::default()
    };
    let mut stdout = std::io::stdout().lock();
    let completion = if args.json {
        session.chat(&messages, &params, &mut |_| true)?
    } else {
        let c = session.chat(&messages, &params, &mut |t| {
            // A closed pipe (e.g. `| head`) ends generation instead of failing.
            stdout.write_all(t.as_bytes()).is_ok() && stdout.flush().is_ok()
        })?;
        let _ = writeln!(stdout);
        c
    };
    if args.json {
        let out = JsonOut {
            model: model.path().display().to_string(),
            completion: &completion,
        };
        serde_json::to_writer(&mut stdout, &out)?;
        writeln!(stdout)?;
    } else {
        let s = &completion.stats;
        eprintln!(
            "[{} prompt tokens ({} cached) in {:.0} ms, {} generated in {:.0} ms ({:.1} tok/s), {:?}]",
            s.prompt_tokens,
            s.cached_tokens,
            s.prompt_ms,
            s.gen_tokens,
            s.gen_ms,
            s.gen_tokens as f64 / (s.gen_ms / 1e3).max(1e-9),
            completion.finish_reason
        );
    }
    if completion.finish_reason == FinishReason::ContextFull {
        eprintln!("warning: the context filled up; the reply is incomplete (raise --ctx-size)");
    }
    Ok(ExitCode::SUCCESS)
}
