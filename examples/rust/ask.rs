//! Embedding small-agent from Rust through its library API: load a runtime once, open a
//! session, stream the agent's tokens to stderr and print the answer.
//!
//! ```sh
//! cargo run --release --example ask -- "What is 17 * 23?"
//! ```
use std::io::Write;

use small_agent::agent::AgentEvent;
use small_agent::embed::{Runtime, RuntimeConfig, SessionConfig};

fn main() -> std::process::ExitCode {
    let question: Vec<String> = std::env::args().skip(1).collect();
    if question.is_empty() {
        eprintln!("usage: ask QUESTION");
        return std::process::ExitCode::from(2);
    }
    let question = question.join(" ");
    let runtime = match Runtime::load(&RuntimeConfig::default()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let mut session = match runtime.session(&SessionConfig::default()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let mut stderr = std::io::stderr();
    let run = session.ask(&question, &mut |event| {
        if let AgentEvent::Token(t) = event {
            let _ = stderr.write_all(t.as_bytes());
        }
        true
    });
    match run {
        Ok(run) if run.error.is_none() => {
            println!("{}", run.answer);
            std::process::ExitCode::SUCCESS
        }
        Ok(run) => {
            eprintln!("\nerror: {}", run.error.unwrap_or_default());
            std::process::ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("\nerror: {e}");
            std::process::ExitCode::from(1)
        }
    }
}
