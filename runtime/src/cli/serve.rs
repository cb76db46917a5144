//! `small-agent serve`: the desktop assistant. The server is its own binary,
//! `small-agent-serve` (crate `runtime/serve`, where axum and tokio live, so that this
//! binary and `libsmall_agent` carry no HTTP stack); this command runs it from beside the
//! current executable with the same arguments.
use std::{ffi::OsString, path::PathBuf, process::ExitCode};

use anyhow::Result;
use clap::Args;

use super::UsageError;

/// Arguments of `serve`: passed through to `small-agent-serve` (see `small-agent serve --help`).
#[derive(Debug, Args)]
#[command(disable_help_flag = true, disable_version_flag = true)]
pub struct ServeArgs {
    /// The server's arguments (`--help` lists them)
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "ARGS"
    )]
    pub args: Vec<OsString>,
}

/// The server binary's name.
pub const SERVER_BINARY: &str = "small-agent-serve";

/// Where the server binary should be: beside this executable.
fn server_path() -> Result<PathBuf> {
    let exe = std::env::current_exe()
        .map_err(|e| UsageError(format!("cannot locate this executable: {e}")))?;
    // `bin/small-agent` is a symbolic link into the build directory: look beside its target.
    let exe = std::fs::canonicalize(&exe).unwrap_or(exe);
    let dir = exe
        .parent()
        .ok_or_else(|| UsageError("this executable has no directory".into()))?;
    Ok(dir.join(SERVER_BINARY))
}

pub fn run(args: ServeArgs) -> Result<ExitCode> {
    let path = server_path()?;
    if !path.is_file() {
        return Err(UsageError(format!(
            "{} not found: the desktop assistant is a separate binary; build it with \
             `cargo build --release -p small-agent-serve` (after `source scripts/cpu-flags.sh`), \
             which puts it beside small-agent",
            path.display()
        ))
        .into());
    }
    use std::os::unix::process::CommandExt;
    // `exec` only returns on failure; on success the server replaces this process (signals
    // such as Ctrl-C then reach it directly).
    let err = std::process::Command::new(&path).args(&args.args).exec();
    Err(UsageError(format!("cannot run {}: {err}", path.display())).into())
}
