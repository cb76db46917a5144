//! `generate`: the teacher agent on training questions, locally and through llama-server.
use std::path::Path;
use std::process::{Command as Process, Stdio};
use std::time::{Duration, Instant};

use assert_cmd::Command;
use serde_json::Value;

use crate::default_model_path;
use crate::llama_server::LlamaServer;

fn distill() -> Command {
    let mut c = Command::cargo_bin("small-agent-distill").unwrap();
    c.env("RUST_LOG", "warn");
    c
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn report(out: &[u8]) -> Value {
    serde_json::from_slice(out)
        .unwrap_or_else(|e| panic!("no JSON report ({e}): {}", String::from_utf8_lossy(out)))
}

/// Every line is a trajectory of the shared format, with the teacher's conversation.
fn check_trajectory(t: &Value) {
    for field in [
        "id",
        "question",
        "true_answer",
        "source",
        "teacher",
        "answer_kind",
    ] {
        assert!(!t[field].is_null(), "{field} missing: {t}");
    }
    assert_eq!(t["source"], "teacher");
    assert_eq!(t["kind"], "agent");
    assert!(t["correct"].is_boolean(), "{t}");
    // The parsed form (what import / filter / dataset read) accepts it.
    let parsed: small_agent_distill::trajectory::Trajectory =
        serde_json::from_value(t.clone()).unwrap();
    if parsed.failure.is_none() {
        let msgs = &parsed.log_data.messages;
        assert_eq!(msgs[0].role, "system");
        // The long teacher prompt, not the student's.
        assert!(msgs[0].content.contains("Example 1"), "{}", msgs[0].content);
        assert_eq!(msgs[1].role, "user");
        assert!(msgs[1].content.contains(parsed.question.as_str()));
        assert!(msgs.iter().any(|m| m.role == "assistant"));
        assert!(!parsed.log_data.steps.is_empty());
    }
}

#[test]
fn a_local_teacher_writes_one_line_per_question_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("t.jsonl");
    let model = default_model_path();
    let run = |limit: &str| {
        let o = distill()
            .args([
                "generate",
                "--questions",
                "hotpotqa-train",
                "--limit",
                limit,
            ])
            .arg("--teacher")
            .arg(&model)
            .args(["--max-steps", "1", "--threads", "1", "--json", "--out"])
            .arg(&out)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        report(&o.stdout)
    };
    let r = run("2");
    assert_eq!(r["done"], 2, "{r}");
    let first = lines(&out);
    assert_eq!(first.len(), 2);
    first.iter().for_each(check_trajectory);
    assert_ne!(first[0]["id"], first[1]["id"]);
    // A torn last line (a crash mid-write) is cut off; finished questions are not redone.
    let mut text = std::fs::read_to_string(&out).unwrap();
    text.push_str("{\"id\":\"hotpotqa-train/x\",\"quest");
    std::fs::write(&out, text).unwrap();
    let r = run("3");
    assert_eq!(r["skipped_existing"], 2, "{r}");
    assert_eq!(r["done"], 1, "{r}");
    assert_eq!(r["repaired_torn_line"], true, "{r}");
    let all = lines(&out);
    assert_eq!(all.len(), 3);
    assert_eq!(all[..2], first[..], "finished lines were rewritten");
}

#[test]
fn evaluation_questions_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for set in ["hotpotqa", "gsm-hard", "hipporag-musique"] {
        distill()
            .args(["generate", "--questions", set, "--teacher"])
            .arg(default_model_path())
            .arg("--out")
            .arg(dir.path().join("t.jsonl"))
            .assert()
            .code(2)
            .stderr(predicates::str::contains("is an evaluation set"));
    }
    assert!(!dir.path().join("t.jsonl").exists());
}

#[test]
fn a_remote_teacher_with_workers_and_the_first_thought_prefix() {
    let server = LlamaServer::start(&default_model_path(), 2);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("t.jsonl");
    let o = distill()
        .args([
            "generate",
            "--questions",
            "math-train",
            "--limit",
            "2",
            "--workers",
            "2",
        ])
        .args([
            "--teacher-url",
            &server.url,
            "--prefix",
            "--max-steps",
            "1",
            "--json",
        ])
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{}\nserver log:\n{}",
        String::from_utf8_lossy(&o.stderr),
        server.log_text()
    );
    let r = report(&o.stdout);
    assert_eq!(r["done"], 2, "{r}");
    assert_eq!(r["workers"], 2, "{r}");
    let all = lines(&out);
    assert_eq!(all.len(), 2);
    for t in &all {
        check_trajectory(t);
        assert_eq!(t["prefix"], true);
        assert!(t["teacher"].as_str().unwrap().contains(&server.url), "{t}");
        // The first reply continues the forced first thought.
        let thought = t["log_data"]["first_thought"].as_str().unwrap_or_default();
        let reply = t["log_data"]["steps"][0]["reply"]
            .as_str()
            .unwrap_or_default();
        assert!(
            !thought.is_empty() && reply.starts_with(&format!("Thought: {thought}")),
            "{t}"
        );
    }
}

#[test]
fn ctrl_c_leaves_whole_lines_and_the_run_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("t.jsonl");
    let model = default_model_path();
    let mut child = Process::new(assert_cmd::cargo::cargo_bin("small-agent-distill"))
        .args(["generate", "--questions", "hotpotqa-train", "--limit", "4"])
        .arg("--teacher")
        .arg(&model)
        .args(["--max-steps", "1", "--threads", "1", "--out"])
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Interrupt once the first question is written.
    let t0 = Instant::now();
    while std::fs::read_to_string(&out).map_or(true, |s| s.lines().count() < 1) {
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "no line written in 5 minutes"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let status = child.wait().unwrap();
    let written = lines(&out);
    assert!(
        !written.is_empty() && written.len() < 4,
        "{} lines",
        written.len()
    );
    if status.code() != Some(0) {
        assert_eq!(status.code(), Some(130), "{status}");
    }
    let o = distill()
        .args(["generate", "--questions", "hotpotqa-train", "--limit", "4"])
        .arg("--teacher")
        .arg(&model)
        .args(["--max-steps", "1", "--threads", "1", "--json", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let all = lines(&out);
    assert_eq!(all.len(), 4);
    let ids: std::collections::HashSet<_> = all.iter().map(|t| t["id"].to_string()).collect();
    assert_eq!(ids.len(), 4, "a question was written twice");
}
