//! `small-agent-distill`: the offline half of agent distillation.
mod cli;

use std::process::ExitCode;

use clap::Parser;
use small_agent_student::buffers::{BufferCache, DEFAULT_IDLE_LIMIT_BYTES};

/// Training allocates the same large buffers every step; reusing them keeps the kernel from
/// mapping and zeroing fresh pages for each one (see `small_agent_student::buffers`).
#[global_allocator]
pub(crate) static ALLOCATOR: BufferCache = BufferCache::new(DEFAULT_IDLE_LIMIT_BYTES);

fn main() -> ExitCode {
    cli::init_logging();
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(cli::exit_code_of(&err))
        }
    }
}
