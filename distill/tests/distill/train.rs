//! `train` end to end: a dataset built by `dataset` from hand-made trajectories with the real
//! tokenizer, a tiny random model of the student's architecture with that tokenizer, the
//! binary run, stopped by Ctrl-C and resumed.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use small_agent_student::tiny::{write_tiny_gguf, TinySpec};

use crate::dataset::{distill, line, ok_json, write_lines};
use crate::default_model_path;

/// A dataset of 12 agent examples (8 train / 4 val or so) and a tiny model, in `dir`.
fn tiny_setup(dir: &Path) -> (PathBuf, PathBuf) {
    let lines: Vec<Value> = (0..12)
        .map(|i| {
            line(
                &format!("t/{i}"),
                &format!("Who wrote novel number {i}?"),
                "Rudyard Kipling",
                "Rudyard Kipling",
            )
        })
        .collect();
    let input = dir.join("in.jsonl");
    write_lines(&input, &lines);
    let data = dir.join("ds");
    let model = default_model_path();
    ok_json(&[
        "dataset",
        "--tokenizer",
        model.to_str().unwrap(),
        "--in",
        input.to_str().unwrap(),
        "--out",
        data.to_str().unwrap(),
        "--val-frac",
        "0.3",
        "--json",
    ]);
    let base = dir.join("tiny.gguf");
    write_tiny_gguf(&base, &TinySpec::llama(), &model).unwrap();
    (base, data)
}

#[test]
fn train_runs_to_a_step_limit_then_resumes_to_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let (base, data) = tiny_setup(dir.path());
    let out = dir.path().join("run");
    let (b, d, o) = (
        base.to_str().unwrap(),
        data.to_str().unwrap(),
        out.to_str().unwrap(),
    );
    let common = ["--batch", "2", "--epochs", "2", "--checkpoint-every", "2"];
    let mut args = vec![
        "train",
        "--base",
        b,
        "--data",
        d,
        "--out",
        o,
        "--max-steps",
        "3",
    ];
    args.extend(common);
    args.push("--json");
    let first = ok_json(&args);
    assert_eq!(first["outcome"], "steplimit");
    assert_eq!(first["step"], 3);
    let total = first["total_steps"].as_u64().unwrap();
    assert!(total > 3, "{first}");
    assert!(first["val_loss"].is_number(), "{first}");
    // Starting again in the same directory is refused (exit 2), naming --resume.
    let again = distill(&args);
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("--resume"));
    // A training flag cannot be changed on resume.
    let changed = distill(&["train", "--out", o, "--resume", "--rank", "4"]);
    assert_eq!(changed.status.code(), Some(2));
    // Resume: continues from the checkpoint at step 3 to the end of the schedule.
    let done = ok_json(&["train", "--out", o, "--resume", "--json"]);
    assert_eq!(done["outcome"], "finished");
    assert_eq!(done["step"].as_u64(), Some(total));
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let steps: Vec<u64> = metrics
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("loss").is_some())
        .map(|v| v["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, (1..=total).collect::<Vec<_>>(), "one line per step");
}

#[test]
fn ctrl_c_checkpoints_and_exits_130_and_the_run_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let (base, data) = tiny_setup(dir.path());
    let out = dir.path().join("run");
    let child = Command::new(env!("CARGO_BIN_EXE_small-agent-distill"))
        .args(["train", "--base", base.to_str().unwrap(), "--data"])
        .arg(&data)
        .arg("--out")
        .arg(&out)
        .args([
            "--batch",
            "1",
            "--epochs",
            "400",
            "--checkpoint-every",
            "1000",
        ])
        .args(["--json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Let it train a few steps (a metrics line per step), then press Ctrl-C.
    let metrics = out.join("metrics.jsonl");
    let started = Instant::now();
    let steps_done = || {
        std::fs::read_to_string(&metrics)
            .map_or(0, |m| m.lines().filter(|l| l.contains("\"loss\"")).count())
    };
    while steps_done() < 5 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no training progress"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: a plain kill(2) of our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(130));
    let summary: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(summary["outcome"], "interrupted");
    let stopped_at = summary["step"].as_u64().unwrap();
    assert!(stopped_at >= 5);
    let latest = std::fs::read_to_string(out.join("latest")).unwrap();
    assert_eq!(latest.trim(), format!("step-{stopped_at:06}"));
    // Resumed with a cap two steps further on.
    let cap = (stopped_at + 2).to_string();
    let resumed = ok_json(&[
        "train",
        "--out",
        out.to_str().unwrap(),
        "--resume",
        "--max-steps",
        &cap,
        "--json",
    ]);
    assert_eq!(resumed["step"].as_u64(), Some(stopped_at + 2));
}

#[test]
fn a_trained_and_exported_student_loads_and_answers_in_ask() {
    let dir = tempfile::tempdir().unwrap();
    let (_, data) = tiny_setup(dir.path());
    let model = default_model_path();
    let out = dir.path().join("run");
    let o = out.to_str().unwrap();
    // One LoRA step of the real default model on the hand-made agent examples.
    let trained = ok_json(&[
        "train",
        "--base",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        o,
        "--batch",
        "1",
        "--max-steps",
        "1",
        "--val-examples",
        "1",
        "--json",
    ]);
    assert_eq!(trained["step"], 1);
    let gguf = dir.path().join("student-q4_1.gguf");
    ok_json(&[
        "export",
        "--run",
        o,
        "--out",
        gguf.to_str().unwrap(),
        "--type",
        "q4_1",
        "--json",
    ]);
    // The runtime's binary (built beside this one) runs it as its model.
    let ask = Path::new(env!("CARGO_BIN_EXE_small-agent-distill")).with_file_name("small-agent");
    assert!(ask.exists(), "{} is not built", ask.display());
    let output = Command::new(&ask)
        .args(["ask", "--model"])
        .arg(&gguf)
        .args([
            "--max-steps",
            "2",
            "--threads",
            "1",
            "--json",
            "What is 6 times 7?",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    // 0: an answer; 1: the run ended without one (a one-step student may not know yet).
    // Never 2 (the model did not load) or a crash.
    assert!(
        matches!(output.status.code(), Some(0) | Some(1)),
        "{:?}: {stderr}",
        output.status
    );
    let run: Value = serde_json::from_slice(&output.stdout).expect("ask --json prints the run");
    assert!(
        run["steps"].as_array().is_some_and(|s| !s.is_empty()),
        "{run}"
    );
}
