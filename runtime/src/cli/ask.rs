//! `small-agent ask`: the code agent answers a question with `web_search` over a local
//! shard and Python in the WASM sandbox.
use std::{io::Write, path::PathBuf, process::ExitCode, sync::Arc};

use anyhow::Result;
use clap::Args;
use small_agent::agent::{
    agent_toolbox, trajectory_record, Agent, AgentConfig, AgentEvent, AgentRun, SearchFn,
    StepRecord, DEFAULT_SAG,
};

use super::{
    read_text_arg, AgentArgs, ContextArgs, ModelArgs, RemoteArgs, SandboxArgs, ShardArgs,
    UsageError,
};

/// Arguments of `ask`.
#[derive(Debug, Args)]
pub struct AskArgs {
    /// The question (`-` reads it from standard input)
    pub question: String,
    #[command(flatten)]
    pub agent: AgentArgs,
    /// Every reply must follow this GBNF grammar instead of the built-in step grammar (e.g.
    /// one that forces given code, as the server's `grammar_gbnf` does)
    #[arg(long, value_name = "FILE.gbnf", conflicts_with = "no_grammar")]
    pub grammar_file: Option<PathBuf>,
    /// Argmax decoding, one candidate per step (overrides --sag)
    #[arg(long)]
    pub greedy: bool,
    /// Start the first reply with the first paragraph of a plain chain-of-thought answer
    #[arg(long)]
    pub first_thought: bool,
    /// Append the run to FILE as one JSONL line (question, generated_answer,
    /// log_data.messages), the layout of the paper's released trajectories
    #[arg(long, value_name = "FILE")]
    pub trajectory: Option<PathBuf>,
    /// Print the whole run (answer, steps, per-step token counts and times) as JSON
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub remote: RemoteArgs,
    #[command(flatten)]
    pub context: ContextArgs,
    #[command(flatten)]
    pub shard: ShardArgs,
    #[command(flatten)]
    pub sandbox: SandboxArgs,
}

pub fn run(args: AskArgs) -> Result<ExitCode> {
    let question = read_text_arg(&args.question)?;
    let grammar = match &args.grammar_file {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .map_err(|e| UsageError(format!("--grammar-file {}: {e}", p.display())))?,
        ),
        None => args.agent.step_grammar(),
    };
    // A remote model is what the server runs: no local student.
    let student = if args.remote.model_url.is_some() {
        if let Some(name) = &args.agent.student {
            return Err(UsageError(format!(
                "--student {name} runs on the local model; with --model-url the server's                  model answers (start the server with --student {name} instead)"
            ))
            .into());
        }
        None
    } else {
        args.model.student(&args.agent)?
    };
    let (template, _, _) = args.agent.template(student.as_ref())?;
    let mut config = AgentConfig {
        max_steps: args.agent.max_steps.max(1),
        grammar,
        limits: args.sandbox.limits(),
        template,
        repeat_retries: args.agent.repeat_retries,
        ..AgentConfig::default()
    };
    if !args.greedy {
        config = config.with_sag(args.agent.sag_or(DEFAULT_SAG));
    }
    if let Some(t) = args.agent.temperature {
        config.sampling.temperature = t;
    }
    config.sampling.seed = args.agent.seed;
    config.first_thought = args.first_thought;
    let flavour = args.sandbox.flavour()?;
    let shard = Arc::new(args.shard.open()?);
    let search: SearchFn = Arc::new(move |q: &str| {
        small_agent_index::agent_search(&*shard, q).map_err(|e| e.to_string())
    });
    let tools = agent_toolbox(Some(search))?;
    let python = super::python_backend(flavour)?;
    // The model lives as long as the agent that borrows it; a remote one is owned by the agent.
    let local;
    let mut agent = match args.remote.connect()? {
        Some(remote) => Agent::with_model(Box::new(remote), python, tools, config),
        None => {
            local = args.model.load_for(student.as_ref())?;
            let mut session = args.context.session_params();
            session.n_ctx = config.context_size(session.n_ctx);
            Agent::new(&local, &session, python, tools, config)?
        }
    };

    let json = args.json;
    let color = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let run = agent.run(&question, &mut |e| {
        if let (false, AgentEvent::Step(s)) = (json, e) {
            // Locked per step, not for the whole run: log lines from the sandbox's and
            // llama.cpp's threads also take this lock, and would wait forever.
            let _ = show_step(&mut std::io::stderr().lock(), s, color);
        }
        true
    })?;
    if let Some(path) = &args.trajectory {
        append_trajectory(path, &run)?;
    }
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer(&mut out, &run)?;
        writeln!(out)?;
    } else if !run.answer.is_empty() {
        writeln!(out, "{}", run.answer)?;
    }
    if let Some(e) = &run.error {
        eprintln!("error: the run ended early: {e}");
        return Ok(ExitCode::from(super::EXIT_TASK_FAILED));
    }
    if run.answer.trim().is_empty() {
        eprintln!("error: the agent produced no answer");
        return Ok(ExitCode::from(super::EXIT_TASK_FAILED));
    }
    Ok(ExitCode::SUCCESS)
}

/// Characters of an observation shown on the terminal (the model sees all of it).
const SHOWN_OBSERVATION_CHARS: usize = 600;

/// Prints a step as it ends: thought, code, and the observation dimmed and shortened.
fn show_step(w: &mut impl Write, s: &StepRecord, color: bool) -> std::io::Result<()> {
    let (dim, reset) = if color {
        ("\x1b[2m", "\x1b[0m")
    } else {
        ("", "")
    };
    writeln!(w, "Thought: {}", s.thought)?;
    match &s.code {
        Some(code) => writeln!(w, "Code:\n{code}")?,
        None => writeln!(w, "(no code in the reply)")?,
    }
    let obs = s.observation.trim();
    let shown: String = obs.chars().take(SHOWN_OBSERVATION_CHARS).collect();
    let more = obs.chars().count().saturating_sub(SHOWN_OBSERVATION_CHARS);
    write!(w, "{dim}{shown}")?;
    if more > 0 {
        write!(w, " [... {more} more characters]")?;
    }
    writeln!(
        w,
        "\n[{} prompt tokens, {} cached, {} generated in {:.0} ms, {} candidates, code {:.0} ms]{reset}\n",
        s.llm.prompt_tokens,
        s.llm.cached_tokens,
        s.llm.gen_tokens,
        s.llm.prompt_ms + s.llm.gen_ms,
        s.candidates.len(),
        s.exec_ms
    )
}

/// Appends one JSONL line in the layout of the paper's released trajectories.
fn append_trajectory(path: &std::path::Path, run: &AgentRun) -> Result<()> {
    let line = serde_json::to_string(&trajectory_record(run))?;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| super::UsageError(format!("cannot write {}: {e}", path.display())))?;
    writeln!(f, "{line}")?;
    Ok(())
}
