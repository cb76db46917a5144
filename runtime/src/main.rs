//! `small-agent`: the command line of the on-device code agent.
mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    cli::init_logging();
    match cli::run(args) {
        Ok(code) => code,
        Err(err) => {
            let code = cli::exit_code_of(&err);
            eprintln!("error: {err:#}");
            ExitCode::from(code)
        }
    }
}
