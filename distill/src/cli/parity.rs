//! `parity`: the burn student against llama.cpp, the same tokens through both, logits compared.
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use small_agent_student::parity::{self, ParityOptions, Reference};
use small_agent_student::{LoadOptions, QkLayout};

/// Arguments of `parity`.
#[derive(Debug, Args)]
pub struct ParityArgs {
    /// The GGUF model (llama or qwen2 architecture)
    #[arg(long)]
    model: PathBuf,
    /// Prompts (text; special tokens such as <|im_start|> are parsed)
    #[arg(required = true)]
    prompts: Vec<String>,
    /// What llama.cpp runs: as-is (the file), f32 (a dequantised copy: the same weights
    /// without 8-bit activation rounding) or runtime (small-agent's default loading)
    #[arg(long, default_value = "as-is")]
    reference: Reference,
    /// The student's q/k rows: hugging-face (un-permuted, halves rotated) or gguf (as stored)
    #[arg(long, default_value = "hugging-face")]
    qk_layout: QkLayout,
    /// llama.cpp threads
    #[arg(long, default_value_t = small_agent::engine::default_threads())]
    threads: i32,
    /// Print the report as JSON (per-position numbers included)
    #[arg(long)]
    json: bool,
}

/// Runs `parity`: prints the report; exit 0 whatever the numbers (they are the result).
pub fn run(a: ParityArgs) -> anyhow::Result<ExitCode> {
    let options = ParityOptions {
        threads: a.threads,
        reference: a.reference,
        student: LoadOptions {
            qk_layout: a.qk_layout,
            ..LoadOptions::default()
        },
    };
    let report = parity::run_report(&a.model, &a.prompts, &options)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render_text());
    }
    Ok(ExitCode::SUCCESS)
}
