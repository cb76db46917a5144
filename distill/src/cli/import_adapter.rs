//! `small-agent-distill import-adapter`: a LoRA adapter in PEFT's layout (trained with
//! TRL/PEFT elsewhere, or written by `export --peft`) → a llama.cpp LoRA adapter GGUF of a
//! base model, which llama.cpp applies at load.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use small_agent_student::export;

/// Flags of `import-adapter`.
#[derive(Debug, Args)]
pub struct ImportAdapterArgs {
    /// The PEFT directory (adapter_model.safetensors + adapter_config.json)
    #[arg(value_name = "PEFT_DIR")]
    peft: PathBuf,
    /// The base GGUF the adapter was trained on (llama or qwen2 architecture)
    #[arg(long, value_name = "MODEL.gguf")]
    base: PathBuf,
    /// The adapter GGUF to write
    #[arg(long, value_name = "ADAPTER.gguf")]
    out: PathBuf,
    /// Print the result as one JSON object
    #[arg(long)]
    json: bool,
}

/// Runs `import-adapter`.
pub fn run(a: ImportAdapterArgs) -> anyhow::Result<ExitCode> {
    let report = export::import_peft(&a.peft, &a.base, &a.out)?;
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        super::export::print_report(&report, Some(&a.peft));
    }
    Ok(ExitCode::SUCCESS)
}
