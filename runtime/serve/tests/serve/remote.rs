//! The server as the model behind the runtime's remote back-end: `small-agent ask
//! --model-url` and `small-agent-distill generate --teacher-url` talk to it as they talk to
//! llama.cpp's llama-server (SAG's `n` choices, the forced-start continuation).
use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

use crate::common::{server_binary, shared};

/// A binary built beside the server (the workspace build puts them together).
fn sibling(name: &str) -> PathBuf {
    let p = server_binary().with_file_name(name);
    assert!(
        p.is_file(),
        "{} is not built: cargo build --release --workspace",
        p.display()
    );
    p
}

#[test]
fn ask_runs_on_the_server_as_its_model() {
    let s = shared();
    let out = Command::new(sibling("small-agent"))
        .args([
            "ask",
            "--model-url",
            &s.url(""),
            "--max-steps",
            "1",
            "--sag",
            "2",
        ])
        .args(["--json", "What is 6 times 7?"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // 0 answered, 1 no answer from the tiny model; 2 would be a usage or connection error.
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "{:?}\n{stderr}",
        out.status
    );
    let run: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\n{stderr}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    let step = &run["steps"][0];
    assert!(
        step["llm"]["gen_tokens"].as_u64().unwrap_or(0) > 0,
        "no tokens from the server: {run}"
    );
    assert_eq!(
        step["candidates"].as_array().map(Vec::len),
        Some(2),
        "{step}"
    );
}

#[test]
fn a_distillation_teacher_url_can_name_the_server() {
    let s = shared();
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("t.jsonl");
    let out = Command::new(sibling("small-agent-distill"))
        .args(["generate", "--questions", "math-train", "--limit", "1"])
        .args([
            "--teacher-url",
            &s.url(""),
            "--prefix",
            "--max-steps",
            "1",
            "--json",
        ])
        .arg("--out")
        .arg(&out_file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}\n{stderr}", out.status);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["done"], 1, "{report}");
    let line: Value =
        serde_json::from_str(std::fs::read_to_string(&out_file).unwrap().trim()).unwrap();
    assert!(
        line["teacher"].as_str().unwrap().contains(&s.url("")),
        "{line}"
    );
    // The first reply continues the forced first thought (`continue_final_message`).
    let thought = line["log_data"]["first_thought"]
        .as_str()
        .unwrap_or_default();
    let reply = line["log_data"]["steps"][0]["reply"]
        .as_str()
        .unwrap_or_default();
    assert!(
        !thought.is_empty() && reply.starts_with(&format!("Thought: {thought}")),
        "{line}"
    );
}
