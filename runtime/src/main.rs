//! `small-agent`: the command line of the on-device code agent.
mod cli;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};

fn main() -> ExitCode {
    cli::init_logging();
    let mut command = cli::Cli::command();
    // `--version` also says which CPU code runs here; worked out only when asked for.
    if std::env::args_os().any(|a| a == "--version") {
        command = command.long_version(&*cli::long_version().leak());
    }
    let args = match cli::Cli::from_arg_matches(&command.get_matches()) {
        Ok(args) => args,
        Err(e) => e.exit(),
    };
    match cli::run(args) {
        Ok(code) => code,
        Err(err) => {
            let code = cli::exit_code_of(&err);
            eprintln!("error: {err:#}");
            ExitCode::from(code)
        }
    }
}
