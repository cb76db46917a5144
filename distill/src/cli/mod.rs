//! The command line: one file per command, flags defined once each.

mod bench;
mod dataset;
mod export;
mod filter;
mod generate;
mod import;
mod import_adapter;
mod parity;
mod train;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit code: the work ran but did not succeed (e.g. nothing could be converted).
pub const EXIT_TASK_FAILED: u8 = 1;
/// Exit code: bad usage or environment (a missing file, a bad line, an unreachable server).
pub const EXIT_USAGE: u8 = 2;
/// Exit code of a run stopped by Ctrl-C (128 + SIGINT); its output stays resumable.
pub const EXIT_INTERRUPTED: u8 = 130;

/// Agent distillation, offline: teacher runs, imports of real teacher data, filtering and
/// training datasets for the small-agent student.
#[derive(Debug, Parser)]
#[command(name = "small-agent-distill", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a teacher agent (a local GGUF or an OpenAI-compatible server) on training questions
    Generate(generate::GenerateArgs),
    /// Convert real teacher data (FireAct, Q-Solv, the paper's release, CoT sets) into trajectories
    Import(import::ImportArgs),
    /// Keep correct, well-formed trajectories whose questions are in no evaluation set
    Filter(filter::FilterArgs),
    /// Build or inspect a tokenized training dataset with assistant-only loss masks
    Dataset(dataset::DatasetArgs),
    /// Compare the burn student's logits with llama.cpp's on prompts
    Parity(parity::ParityArgs),
    /// Export a training run's checkpoint: a merged GGUF, a llama.cpp LoRA adapter or PEFT's layout
    Export(export::ExportArgs),
    /// Convert a PEFT LoRA adapter into a llama.cpp LoRA adapter GGUF of a base model
    ImportAdapter(import_adapter::ImportAdapterArgs),
    /// Fine-tune the student (LoRA or full) on a dataset, with checkpoints and resume
    Train(train::TrainArgs),
    /// Measure training speed (against PyTorch on the same model)
    Bench(bench::BenchArgs),
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Generate(a) => generate::run(a),
        Command::Import(a) => import::run(a),
        Command::Filter(a) => filter::run(a),
        Command::Dataset(a) => dataset::run(a),
        Command::Parity(a) => parity::run(a),
        Command::Export(a) => export::run(a),
        Command::ImportAdapter(a) => import_adapter::run(a),
        Command::Train(a) => train::run(a),
        Command::Bench(a) => bench::run(a),
    }
}

/// Logs go to stderr through `tracing`, filtered by `RUST_LOG` (default: warnings, and only
/// errors from llama.cpp, whose load-time warnings are routine).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("warn,llama_cpp_2=error,llama-cpp-2=error")
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// A usage error raised by the CLI itself (exit 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// 2 for usage and environment errors (bad or missing input, unreachable server), else 1.
pub fn exit_code_of(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if cause.downcast_ref::<UsageError>().is_some()
            || cause
                .downcast_ref::<small_agent_distill::trajectory::TrajectoryError>()
                .is_some()
            || cause
                .downcast_ref::<small_agent_eval::dataset::DatasetError>()
                .is_some()
            || cause
                .downcast_ref::<small_agent::chat::RemoteError>()
                .is_some()
            || cause.downcast_ref::<small_agent::EngineError>().is_some()
            || cause
                .downcast_ref::<small_agent_student::StudentError>()
                .is_some()
            || cause
                .downcast_ref::<small_agent_distill::generate::GenerateError>()
                .is_some()
            || cause.downcast_ref::<std::io::Error>().is_some()
        {
            return EXIT_USAGE;
        }
    }
    EXIT_TASK_FAILED
}

/// A progress bar on stderr (hidden when stderr is not a terminal or `--json` is asked for).
pub fn progress_bar(len: u64, hidden: bool) -> indicatif::ProgressBar {
    if hidden || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} {msg} (eta {eta})",
        )
        .expect("the progress template is valid")
        .progress_chars("=> "),
    );
    bar
}

// --- Ctrl-C: the first one asks the command to stop at the next safe point (every output
// line already written stays; the item in flight is redone on resume), the second one ends
// the process at once, which the outputs survive too (whole lines, or a rename).
static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    if INTERRUPTED.swap(true, std::sync::atomic::Ordering::SeqCst) {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(EXIT_INTERRUPTED as libc::c_int) };
    }
}

/// Installs the Ctrl-C handler described above.
pub fn install_interrupt_handler() {
    // SAFETY: the handler only touches an atomic and calls _exit.
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_sigint as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
    }
}

/// Whether Ctrl-C was pressed.
pub fn interrupted() -> bool {
    INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst)
}
