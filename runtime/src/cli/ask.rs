//! `small-agent ask`: the code agent answers a question with `web_search` over a local
//! shard and Python in the WASM sandbox.
use std::{io::Write, path::PathBuf, process::ExitCode, sync::Arc};

use anyhow::Result;
use clap::Args;
use small_agent::agent::{
    agent_toolbox, Agent, AgentConfig, AgentEvent, PromptTemplate, SearchFn, DEFAULT_MAX_STEPS,
    DEFAULT_SAG,
};
use small_agent_sandbox::Flavour;

use super::{read_text_arg, ContextArgs, ModelArgs, SandboxArgs, ShardArgs};

/// Arguments of `ask`.
#[derive(Debug, Args)]
pub struct AskArgs {
    /// The question (`-` reads it from standard input)
    pub question: String,
    /// Steps before the agent is asked for an answer from what it has
    #[arg(long, default_value_t = DEFAULT_MAX_STEPS, value_name = "N")]
    pub max_steps: usize,
    /// Candidates per step (self-consistent action generation; 1 = plain sampling)
    #[arg(long, default_value_t = DEFAULT_SAG, value_name = "N")]
    pub sag: usize,
    /// Argmax decoding, one candidate per step (overrides --sag)
    #[arg(long)]
    pub greedy: bool,
    /// Do not constrain replies to the Thought/Code format with the step grammar
    #[arg(long)]
    pub no_grammar: bool,
    /// Prompt template (TOML, see models/prompts/agent-default.toml)
    #[arg(long, value_name = "FILE")]
    pub prompt: Option<PathBuf>,
    /// Print the whole run (answer, steps, per-step token counts and times) as JSON
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub context: ContextArgs,
    #[command(flatten)]
    pub shard: ShardArgs,
    #[command(flatten)]
    pub sandbox: SandboxArgs,
}

pub fn run(args: AskArgs) -> Result<ExitCode> {
    let question = read_text_arg(&args.question)?;
    let mut config = AgentConfig {
        max_steps: args.max_steps.max(1),
        grammar: (!args.no_grammar).then(|| small_agent::agent::STEP_GRAMMAR.to_owned()),
        limits: args.sandbox.limits(),
        ..AgentConfig::default()
    };
    if let Some(p) = &args.prompt {
        config.template = PromptTemplate::from_file(p)?;
    }
    if !args.greedy {
        config = config.with_sag(args.sag);
    }
    let flavour = args.sandbox.flavour()?;
    if config.sag > 1 && flavour == Flavour::Lite {
        return Err(super::UsageError(
            "--sag above 1 runs each candidate on a fork of the Python state, which the lite \
             interpreter cannot make: use --python full, or --sag 1"
                .into(),
        )
        .into());
    }
    let shard = Arc::new(args.shard.open()?);
    let search: SearchFn = Arc::new(move |q: &str| {
        small_agent_index::agent_search(&*shard, q).map_err(|e| e.to_string())
    });
    let tools = agent_toolbox(Some(search))?;
    let python = super::python_backend(flavour)?;
    let model = args.model.load()?;
    let mut session = args.context.session_params();
    session.n_ctx = config.context_size(session.n_ctx);
    let mut agent = Agent::new(&model, &session, python, tools, config)?;

    let json = args.json;
    let mut err = std::io::stderr().lock();
    let run = agent.run(&question, &mut |e| {
        if !json {
            match e {
                AgentEvent::Token(t) => {
                    let _ = err.write_all(t.as_bytes());
                }
                AgentEvent::Step(s) => {
                    let _ = writeln!(
                        err,
                        "\n[step: {} prompt tokens, {} cached, {} generated, {} candidates]\n{}",
                        s.llm.prompt_tokens,
                        s.llm.cached_tokens,
                        s.llm.gen_tokens,
                        s.candidates.len(),
                        s.observation
                    );
                }
            }
        }
        true
    })?;
    drop(err);
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer(&mut out, &run)?;
        writeln!(out)?;
    } else {
        writeln!(out, "{}", run.answer)?;
    }
    if run.answer.trim().is_empty() {
        eprintln!("error: the agent produced no answer");
        return Ok(ExitCode::from(super::EXIT_TASK_FAILED));
    }
    Ok(ExitCode::SUCCESS)
}

impl SandboxArgs {
    /// The interpreter flavour.
    pub fn flavour(&self) -> Result<Flavour> {
        Ok(self.python.parse()?)
    }
}
