//! `small-agent python`: run code in a fresh sandbox session; `small-agent bench sandbox`.
use std::{path::PathBuf, process::ExitCode};

use anyhow::Result;
use clap::Args;
use small_agent_sandbox::SessionOptions;

use super::{python_backend, read_file_arg, SandboxArgs, UsageError};

/// Arguments of `python`.
#[derive(Debug, Args)]
pub struct PythonArgs {
    /// Source file (`-` or nothing: standard input)
    pub file: Option<PathBuf>,
    /// Print {stdout, value, error, duration_ms} as JSON
    #[arg(long)]
    pub json: bool,
    /// Allow every import (not only the agent's allow-list)
    #[arg(long)]
    pub allow_all_imports: bool,
    #[command(flatten)]
    pub sandbox: SandboxArgs,
}

/// Arguments of `bench sandbox`.
#[derive(Debug, Args)]
pub struct BenchSandboxArgs {
    /// Repetitions of the fast measures (CPU-bound snippets use a twentieth, at least 3)
    #[arg(long, default_value_t = 200, value_name = "N")]
    pub reps: usize,
    /// Native CPython used as the yardstick [default: python3 on PATH]
    #[arg(long, value_name = "PATH")]
    pub native: Option<PathBuf>,
    #[command(flatten)]
    pub sandbox: SandboxArgs,
}

pub fn run(a: PythonArgs) -> Result<ExitCode> {
    let code = match a.file.as_deref() {
        None => read_stdin()?,
        Some(p) if p.as_os_str() == "-" => read_stdin()?,
        Some(p) => read_file_arg(p, "Python file")?,
    };
    let backend = python_backend(a.sandbox.flavour()?)?;
    let mut limits = a.sandbox.limits();
    if a.allow_all_imports {
        limits.allowed_imports = None;
    }
    let mut session = backend.open(SessionOptions {
        limits,
        ..Default::default()
    })?;
    let r = session.exec(&code);
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "stdout": r.output,
                "value": r.value,
                "error": r.error,
                "duration_ms": r.duration.as_secs_f64() * 1e3,
            })
        );
    } else {
        print!("{}", r.output);
        if let Some(v) = &r.value {
            println!("{v}");
        }
        if let Some(e) = &r.error {
            if e.traceback.is_empty() {
                eprintln!("{e}");
            } else {
                eprint!("{}", e.traceback);
            }
        }
    }
    Ok(if r.error.is_some() {
        ExitCode::from(super::EXIT_TASK_FAILED)
    } else {
        ExitCode::SUCCESS
    })
}

fn read_stdin() -> Result<String> {
    std::io::read_to_string(std::io::stdin())
        .map_err(|e| UsageError(format!("cannot read standard input as UTF-8: {e}")).into())
}

/// `small-agent bench sandbox`.
pub fn bench(a: BenchSandboxArgs) -> Result<ExitCode> {
    let backend = python_backend(a.sandbox.flavour()?)?;
    let native = a.native.or_else(|| find_on_path("python3"));
    let report = small_agent_sandbox::bench::run(backend.as_ref(), native.as_deref(), a.reps)?;
    print!("{report}");
    Ok(ExitCode::SUCCESS)
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}
