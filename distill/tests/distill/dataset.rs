//! `filter` and `dataset` end to end: the binary on hand-made trajectories, the real shared
//! evaluation files and the real default model's tokenizer.
use std::path::Path;
use std::process::{Command, Output};

use serde_json::{json, Value};
use small_agent_distill::dataset::{Dataset, DatasetFileError};

use crate::{default_model_path, shared_file};

pub(crate) fn distill(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_small-agent-distill"))
        .args(args)
        .output()
        .expect("the binary runs");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    out
}

pub(crate) fn ok_json(args: &[&str]) -> Value {
    let out = distill(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stdout is one JSON object")
}

/// A trajectory line: one search step, then `final_answer(answer)`.
pub(crate) fn line(id: &str, question: &str, answer: &str, gold: &str) -> Value {
    let step1 = "Thought: I will search for it.\nCode:\n```py\nprint(web_search(\"Kim novel author\"))\n```<end_code>";
    let step2 =
        format!("Thought: I know it now.\nCode:\n```py\nfinal_answer({answer:?})\n```<end_code>");
    json!({
        "id": id,
        "question": question,
        "true_answer": gold,
        "true_answers": [gold],
        "generated_answer": answer,
        "kind": "agent",
        "answer_kind": "factual",
        "source": "hand",
        "source_dataset": "unit",
        "log_data": {
            "messages": [
                {"role": "system", "content": "teacher system prompt"},
                {"role": "user", "content": format!("New task:\n{question}")},
                {"role": "assistant", "content": step1},
                {"role": "user", "content": "Observation:\n[1] (score 9.1) \"Kim (novel)\"\nKim is a novel by Rudyard Kipling."},
                {"role": "assistant", "content": step2},
            ],
            "answer_source": "final_answer",
            "steps": [
                {"parse_error": false, "exec_error": false, "final_answer": null},
                {"parse_error": false, "exec_error": false, "final_answer": answer},
            ],
        },
    })
}

pub(crate) fn write_lines(path: &Path, lines: &[Value]) {
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(path, text).unwrap();
}

fn first_hotpotqa_test_question() -> String {
    let p = shared_file("agent-distillation/qa/test/hotpotqa_500_20250422.json");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    v["examples"][0]["question"].as_str().unwrap().to_owned()
}

#[test]
fn filter_keeps_correct_runs_and_says_why_it_dropped_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let q = "Who wrote the novel Kim?";
    let good = line("u/good", q, "Rudyard Kipling", "Rudyard Kipling");
    let wrong = line("u/wrong", q, "Gustav Holst", "Rudyard Kipling");
    let mut parse = line("u/parse", q, "Rudyard Kipling", "Rudyard Kipling");
    parse["log_data"]["steps"][0]["parse_error"] = json!(true);
    let mut fallback = line("u/fallback", q, "Rudyard Kipling", "Rudyard Kipling");
    fallback["log_data"]["answer_source"] = json!("fallback");
    let mut recovered = line("u/recovered", q, "Rudyard Kipling", "Rudyard Kipling");
    recovered["log_data"]["steps"][0]["exec_error"] = json!(true);
    let mut failed = line("u/failed", q, "Rudyard Kipling", "Rudyard Kipling");
    failed["failure"] = json!("context_full");
    // A real evaluation question, with its case changed: still caught.
    let leak = line(
        "u/leak",
        &first_hotpotqa_test_question().to_uppercase(),
        "x",
        "x",
    );
    let dup = good.clone();
    let input = dir.path().join("in.jsonl");
    write_lines(
        &input,
        &[good, wrong, parse, fallback, recovered, failed, leak, dup],
    );
    let out = dir.path().join("kept.jsonl");
    let r = ok_json(&[
        "filter",
        "--in",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]);
    let reasons = &r["reasons"];
    for (reason, n) in [
        ("kept", 1),
        ("kept_recovered_errors", 1),
        ("wrong_answer", 1),
        ("parse_error", 1),
        ("no_final_answer", 1),
        ("failure", 1),
        ("evaluation_question", 1),
        ("duplicate_id", 1),
    ] {
        assert_eq!(reasons[reason], json!(n), "{reason}: {r}");
    }
    assert_eq!(
        (r["input"].as_u64(), r["kept"].as_u64()),
        (Some(8), Some(2))
    );
    let kept = small_agent_distill::trajectory::read_jsonl(&out).unwrap();
    let ids: Vec<&str> = kept.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, ["u/good", "u/recovered"]);
    assert!(kept.iter().all(|t| t.correct == Some(true)));

    // Every evaluation question file was loaded, each with its questions.
    let files = r["evaluation_files"].as_array().unwrap();
    let count = |path: &str| {
        files
            .iter()
            .find(|f| f["path"] == json!(path))
            .unwrap_or_else(|| panic!("{path} not loaded: {r}"))["questions"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(
        count("agent-distillation/qa/test/hotpotqa_500_20250422.json"),
        500
    );
    assert_eq!(
        count("agent-distillation/math/test/aime_90_20250504.json"),
        90
    );
    assert_eq!(
        count("hotpotqa-distractor/amor_hotpotqa_test_500.jsonl"),
        500
    );
    assert_eq!(count("hipporag-samples/musique_train.json"), 100);
    assert_eq!(
        count("hotpotqa-distractor/derived_corpus_paragraphs.jsonl"),
        0
    );
    assert!(files
        .iter()
        .all(|f| !f["path"].as_str().unwrap().contains("/train/")));
}

#[test]
fn filter_refuses_to_run_without_the_evaluation_files() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    write_lines(&input, &[line("u/1", "q", "a", "a")]);
    let fake = dir.path().join("data");
    std::fs::create_dir_all(fake.join("agent-distillation/qa/test")).unwrap();
    let out = distill(&[
        "filter",
        "--in",
        input.to_str().unwrap(),
        "--out",
        dir.path().join("o.jsonl").to_str().unwrap(),
        "--data",
        fake.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
    assert!(!dir.path().join("o.jsonl").exists());
}

#[test]
fn dataset_builds_reads_back_and_reports_its_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let model = default_model_path();
    let mut lines: Vec<Value> = (0..6)
        .map(|i| {
            line(
                &format!("u/{i}"),
                &format!("Who wrote novel number {i}?"),
                "Rudyard Kipling",
                "Rudyard Kipling",
            )
        })
        .collect();
    // Two runs of one question: they must land in the same split.
    lines.push(line(
        "u/6",
        "Who wrote novel number 0?",
        "Kipling",
        "Rudyard Kipling",
    ));
    // A CoT line, kept as it is.
    lines.push(json!({
        "id": "u/cot", "question": "What is 2 + 3?", "true_answers": ["5"], "generated_answer": "5",
        "kind": "cot", "answer_kind": "math", "source": "hand-cot",
        "log_data": {"messages": [
            {"role": "system", "content": "Solve step by step."},
            {"role": "user", "content": "What is 2 + 3?"},
            {"role": "assistant", "content": "2 + 3 = 5, so the answer is \\boxed{5}."},
        ]},
    }));
    // A conversation without the opening turns: dropped and counted.
    let mut bad = line("u/bad", "Who wrote novel number 9?", "x", "x");
    bad["log_data"]["messages"]
        .as_array_mut()
        .unwrap()
        .remove(0);
    lines.push(bad);
    let input = dir.path().join("in.jsonl");
    write_lines(&input, &lines);
    let out = dir.path().join("ds");
    let args = |max_len: &str| {
        vec![
            "dataset".to_owned(),
            "--tokenizer".into(),
            model.display().to_string(),
            "--in".into(),
            input.display().to_string(),
            "--out".into(),
            out.display().to_string(),
            "--val-frac".into(),
            "0.4".into(),
            "--seed".into(),
            "3".into(),
            "--max-len".into(),
            max_len.into(),
            "--json".into(),
        ]
    };
    let built = ok_json(&args("4096").iter().map(String::as_str).collect::<Vec<_>>());
    let stats = ok_json(&["dataset", "stats", out.to_str().unwrap(), "--json"]);
    assert_eq!(built, stats);
    assert_eq!(stats["dropped"]["bad_conversation"], json!(1));
    let (train, val) = (&stats["splits"]["train"], &stats["splits"]["val"]);
    assert_eq!(
        train["examples"].as_u64().unwrap() + val["examples"].as_u64().unwrap(),
        8
    );
    assert_eq!(stats["sources"][0]["lines"], json!(9));
    assert_eq!(stats["by_source"]["hand"]["lines"], json!(8));
    assert_eq!(
        stats["by_source"]["hand"]["dropped"]["bad_conversation"],
        json!(1)
    );
    assert_eq!(
        stats["by_source"]["hand-cot"]["tokens"]["examples"],
        json!(1)
    );
    assert!(stats["student_prompt"]["system"]
        .as_str()
        .unwrap()
        .contains("web_search"));
    assert_eq!(stats["grammar_prefill"], json!("Thought:"));

    let ds = Dataset::open(&out).unwrap();
    let mut split_of_q0 = Vec::new();
    let mut total = 0;
    for name in ["train", "val"] {
        let s = ds.split(name).unwrap();
        for i in 0..s.len() {
            let (t, m) = s.example(i);
            assert_eq!(t.len(), m.len());
            assert!(m.contains(&1) && m.contains(&0));
            if ["u/0", "u/6"].contains(&s.id(i).id.as_str()) {
                split_of_q0.push(name);
            }
            total += 1;
        }
        // The same examples as chat messages (TRL's conversational format), in order: the
        // student's system prompt in place of the teacher's, the assistant turns as trained.
        let chat = std::fs::read_to_string(out.join(format!("{name}.messages.jsonl"))).unwrap();
        assert_eq!(chat.lines().count(), s.len());
        for line in chat.lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            let messages = v["messages"].as_array().unwrap();
            assert_eq!(messages[0]["role"], "system");
            let system = messages[0]["content"].as_str().unwrap();
            assert!(
                system.contains("web_search") || messages.len() == 3,
                "{system}"
            );
            assert_ne!(system, "teacher system prompt");
            assert!(messages.iter().any(|m| m["role"] == "assistant"));
        }
    }
    assert_eq!(total, 8);
    assert_eq!(split_of_q0.len(), 2);
    assert_eq!(
        split_of_q0[0], split_of_q0[1],
        "one question in both splits"
    );

    // A truncated file is reported as corruption.
    let tokens = out.join("train.tokens");
    let b = std::fs::read(&tokens).unwrap();
    assert!(b.len() >= 8);
    std::fs::write(&tokens, &b[..b.len() / 2]).unwrap();
    assert!(matches!(
        Dataset::open(&out).unwrap().split("train"),
        Err(DatasetFileError::Corrupt { .. })
    ));

    // A build that fails leaves the previous dataset as it was.
    let before = std::fs::read(out.join("train.tokens")).unwrap();
    let mut a = args("4096");
    a[4] = dir.path().join("missing.jsonl").display().to_string();
    let failed = distill(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(failed.status.code(), Some(2));
    assert_eq!(std::fs::read(out.join("train.tokens")).unwrap(), before);

    // --max-len drops long examples and counts them; nothing is truncated.
    let short = ok_json(&args("200").iter().map(String::as_str).collect::<Vec<_>>());
    let kept = short["splits"]["train"]["examples"].as_u64().unwrap()
        + short["splits"]["val"]["examples"].as_u64().unwrap();
    assert_eq!(kept + short["dropped"]["too_long"].as_u64().unwrap(), 8);
    assert!(
        short["dropped"]["too_long"].as_u64().unwrap() >= 7,
        "{short}"
    );
    for s in short["sources"].as_array().unwrap() {
        assert!(s["tokens"]["max"].as_u64().unwrap() <= 200);
    }

    // --out that is some other directory is refused.
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("notes.txt"), "keep me").unwrap();
    let mut a = args("4096");
    a[6] = other.display().to_string();
    let refused = distill(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(refused.status.code(), Some(2));
    assert!(other.join("notes.txt").exists());
}
