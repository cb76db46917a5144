//! `small-agent eval` on the real default model: every mode over every question-file
//! layout, the temporary shard from a corpus, the judge, the report, and an interrupted
//! run (SIGINT) that resumes without redoing a question. Only train files and HippoRAG
//! samples are used (plus small files written here); the test sets are for evaluation.
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

fn data_dir() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data");
    assert!(
        d.join("README.md").is_file(),
        "the shared data directory {} is missing: these tests need ../shared/data beside the \
         repository",
        d.display()
    );
    d.canonicalize().unwrap()
}

fn bin() -> PathBuf {
    assert_cmd::cargo::cargo_bin("small-agent")
}

/// `small-agent eval` with the data dir and the default model set, quiet logs.
fn eval_cmd() -> Command {
    let mut c = Command::new(bin());
    c.arg("eval")
        .env("SMALL_AGENT_DATA", data_dir())
        .env("SMALL_AGENT_MODEL", crate::default_model_path())
        .env("RUST_LOG", "warn")
        // One thread: two threads collapse when the cores are shared with other jobs.
        .args(["--threads", "1"]);
    c
}

fn run_ok(c: &mut Command) -> std::process::Output {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{c:?} failed ({:?}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn json_file(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn lines(p: &Path) -> Vec<Value> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Small files in the two HotpotQA-distractor layouts (IRCoT JSONL, AMOR JSONL) and the
/// generic JSONL, with our own questions and paragraphs (the real distractor files are
/// evaluation data).
fn write_layouts(dir: &Path) -> Vec<PathBuf> {
    let ircot = dir.join("ircot.jsonl");
    std::fs::write(
        &ircot,
        r#"{"question_id": "q1", "question_text": "Which river flows through the city of Lyon?", "answers_objects": [{"number": "", "date": {"day": "", "month": "", "year": ""}, "spans": ["Rhône"]}], "contexts": [{"id": "0", "title": "Lyon", "paragraph_text": "Lyon is a city in France at the confluence of the Rhône and the Saône.", "is_supporting": true}, {"id": "1", "title": "Loire", "paragraph_text": "The Loire is the longest river in France.", "is_supporting": false}]}
"#,
    )
    .unwrap();
    let amor = dir.join("amor.jsonl");
    std::fs::write(
        &amor,
        r#"{"_id": "a1", "answer": "yes", "question": "Are Lyon and Paris both in France?", "supporting_facts": [["Lyon", 0], ["Paris", 0]], "context": [["Lyon", ["Lyon is a city in France."]], ["Paris", ["Paris is the capital of France."]]], "type": "comparison", "level": "easy"}
"#,
    )
    .unwrap();
    let generic = dir.join("generic.jsonl");
    std::fs::write(
        &generic,
        r#"{"id": "g1", "question": "What is 6 times 7?", "answer": 42, "kind": "math", "paragraphs": [{"title": "Multiplication", "text": "Six times seven is forty-two."}]}
"#,
    )
    .unwrap();
    vec![ircot, amor, generic]
}

#[test]
fn every_mode_runs_on_every_layout() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = data_dir().join("hipporag-samples/hotpotqa_train_corpus.json");
    // (dataset, corpus for the modes that search)
    let mut sets: Vec<(String, String)> = vec![
        ("math-train".into(), corpus.display().to_string()),
        ("hotpotqa-train".into(), corpus.display().to_string()),
        ("hipporag-hotpotqa".into(), "own".into()),
        ("hipporag-musique".into(), "own".into()),
    ];
    for f in write_layouts(tmp.path()) {
        sets.push((f.display().to_string(), "own".into()));
    }
    for (set, corpus) in &sets {
        for mode in ["cot", "cot-rag", "agent"] {
            let out = tmp.path().join(format!(
                "{}-{mode}",
                Path::new(set).file_stem().unwrap().to_string_lossy()
            ));
            let mut c = eval_cmd();
            c.args(["--dataset", set, "--mode", mode, "--limit", "1", "--json"])
                .args(["--max-tokens", "48", "--max-steps", "1"])
                .arg("--out")
                .arg(&out);
            if mode != "cot" {
                c.args(["--corpus", corpus]);
            }
            let o = run_ok(&mut c);
            let results: Value = serde_json::from_slice(&o.stdout).unwrap();
            let ds = results["datasets"].as_object().unwrap();
            assert_eq!(ds.len(), 1, "{set} {mode}: {results}");
            let d = ds.values().next().unwrap();
            assert_eq!(d["n"], 1, "{set} {mode}");
            for k in [
                "accuracy",
                "em",
                "f1",
                "parse_error_rate",
                "mean_steps",
                "seconds_per_question",
            ] {
                assert!(d[k].is_number(), "{set} {mode}: {k} in {d}");
            }
            assert_eq!(results["settings"]["mode"], mode);
            let recs = lines(&out.join("trajectories.jsonl"));
            assert_eq!(recs.len(), 1);
            if mode == "cot-rag" {
                assert_eq!(recs[0]["search_calls"], 1, "{set}");
                let passages = recs[0]["trajectory"]["passages"].as_str().unwrap();
                assert!(!passages.trim().is_empty(), "{set}: no passages");
            }
            assert!(out.join("results.md").is_file());
        }
    }
}

#[test]
fn settings_record_model_shard_prompt_sampling_and_code() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    run_ok(
        eval_cmd()
            .args(["--dataset", "hipporag-hotpotqa", "--corpus", "own"])
            .args(["--mode", "agent", "--grammar", "--sag", "2", "--limit", "1"])
            .args(["--max-steps", "1", "--seed", "7"])
            .arg("--out")
            .arg(&out),
    );
    let s = json_file(&out.join("settings.json"));
    assert_eq!(
        s["model"]["sha256"],
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    );
    assert_eq!(s["shard"]["hipporag-hotpotqa"]["passages"], 994, "{s}");
    assert!(s["prompt"]["text"].as_str().unwrap().contains("{tools}"));
    assert_eq!(s["sag"], 2);
    assert_eq!(s["seed"], 7);
    assert_eq!(s["grammar"], true);
    assert!((s["sampling"]["temperature"].as_f64().unwrap() - 0.4).abs() < 1e-6);
    assert_eq!(s["label"], "agent (grammar, SAG N=2)");
    assert!(s["code_version"]["git_commit"].as_str().unwrap().len() >= 7);
    let r = json_file(&out.join("results.json"));
    assert_eq!(r["settings"], s);
}

#[test]
fn judge_verdicts_are_parsed_strictly_and_compared_with_em() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("judged");
    let o = run_ok(
        eval_cmd()
            .args([
                "--dataset",
                "hotpotqa-train",
                "--mode",
                "cot",
                "--limit",
                "2",
            ])
            .args(["--max-tokens", "64", "--json"])
            .arg("--judge")
            .arg(crate::default_model_path())
            .arg("--out")
            .arg(&out),
    );
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    let j = &r["datasets"]["hotpotqa-train"]["judge"];
    assert_eq!(j["asked"], 2, "{r}");
    assert!(j["parsed"].as_u64().unwrap() <= 2);
    assert!(j["agreement_with_em"].is_number());
    for rec in lines(&out.join("trajectories.jsonl")) {
        let judge = &rec["judge"];
        let reply = judge["reply"].as_str().unwrap();
        let want = match reply
            .trim()
            .trim_end_matches('.')
            .to_ascii_uppercase()
            .as_str()
        {
            "CORRECT" => Value::Bool(true),
            "INCORRECT" => Value::Bool(false),
            _ => Value::Null,
        };
        assert_eq!(judge["verdict"], want, "reply {reply:?}");
        // A parsed verdict decides factual accuracy; otherwise EM does.
        let expect = if want.is_null() {
            rec["em"].clone()
        } else {
            want
        };
        assert_eq!(rec["correct"], expect);
    }
    assert!(r["settings"]["judge"]["prompt"]["text"]
        .as_str()
        .unwrap()
        .contains("{prediction}"));
}

#[test]
fn an_interrupted_run_resumes_without_redoing_questions() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let args = |c: &mut Command| {
        c.args([
            "--dataset",
            "hipporag-hotpotqa",
            "--corpus",
            "own",
            "--mode",
            "agent",
        ])
        .args(["--limit", "4", "--max-steps", "2"])
        .arg("--out")
        .arg(&out);
    };
    let mut c = eval_cmd();
    args(&mut c);
    let mut child = c
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let jsonl = out.join("trajectories.jsonl");
    let t = Instant::now();
    loop {
        let n = std::fs::read_to_string(&jsonl)
            .map(|s| s.matches('\n').count())
            .unwrap_or(0);
        if n >= 1 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "no question finished in 5 minutes"
        );
        if let Some(st) = child.try_wait().unwrap() {
            panic!("eval ended before the interrupt: {st:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: sending a signal to our own child.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGINT);
    }
    let o = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(130), "stderr: {stderr}");
    assert!(stderr.contains("--resume"), "{stderr}");
    let before = std::fs::read_to_string(&jsonl).unwrap();
    let n_before = before.lines().count();
    assert!(
        (1..4).contains(&n_before),
        "{n_before} questions before resuming"
    );
    // The directory is consistent: the summary counts exactly the recorded questions.
    let r = json_file(&out.join("results.json"));
    assert_eq!(r["datasets"]["hipporag-hotpotqa"]["n"], n_before);

    // Without --resume, and with other settings, the directory is refused (exit 2).
    let mut c = eval_cmd();
    args(&mut c);
    let o = c.output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--resume"));
    let mut c = eval_cmd();
    args(&mut c);
    let o = c.args(["--resume", "--sag", "2"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("settings differ"));

    let mut c = eval_cmd();
    args(&mut c);
    let o = run_ok(c.arg("--resume"));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(&format!("{n_before} questions already done"))
    );
    let after = std::fs::read_to_string(&jsonl).unwrap();
    assert!(
        after.starts_with(&before),
        "finished questions were rewritten"
    );
    let recs = lines(&jsonl);
    let ids: Vec<&str> = recs.iter().map(|r| r["id"].as_str().unwrap()).collect();
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(ids.len(), 4, "{ids:?}");
    assert_eq!(unique.len(), 4, "a question was redone: {ids:?}");
    let r = json_file(&out.join("results.json"));
    let d = &r["datasets"]["hipporag-hotpotqa"];
    assert_eq!(d["n"], 4);
    let correct = recs.iter().filter(|r| r["correct"] == true).count() as f64;
    assert!((d["accuracy"].as_f64().unwrap() - correct / 4.0).abs() < 1e-9);

    // The report puts this run beside another.
    let out2 = tmp.path().join("cot");
    run_ok(
        eval_cmd()
            .args([
                "--dataset",
                "hipporag-hotpotqa",
                "--mode",
                "cot",
                "--limit",
                "1",
            ])
            .args(["--max-tokens", "32"])
            .arg("--out")
            .arg(&out2),
    );
    let o = run_ok(
        Command::new(bin())
            .args(["eval", "report"])
            .arg(&out2)
            .arg(&out),
    );
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(
        table.contains("| run | hipporag-hotpotqa | avg |"),
        "{table}"
    );
    assert!(
        table.contains("| CoT |") && table.contains("| agent (grammar, N=1) |"),
        "{table}"
    );
    let o = Command::new(bin())
        .args(["eval", "report"])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "a directory without results.json");
}

#[test]
fn eval_help_and_usage_errors() {
    for args in [vec!["eval", "--help"], vec!["eval", "report", "--help"]] {
        let o = Command::new(bin()).args(&args).output().unwrap();
        assert!(o.status.success());
        assert!(String::from_utf8_lossy(&o.stdout).contains("Usage:"));
    }
    let o = eval_cmd()
        .args(["--dataset", "no-such-set"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown dataset"));
    let o = eval_cmd().output().unwrap();
    assert_eq!(o.status.code(), Some(2), "--dataset is required");
}
