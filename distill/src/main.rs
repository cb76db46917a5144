//! `small-agent-distill`: the offline half of agent distillation.
mod cli;

use std::process::ExitCode;

use clap::Parser;

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
