//! `import`: real teacher data (FireAct, Q-Solv, GSM8K rationales) and paper-layout rows into
//! trajectories, run through the binary on the shared files.
use std::path::Path;
use std::sync::Arc;

use assert_cmd::Command;
use serde_json::{json, Value};
use small_agent::agent::{self, AgentRun, PromptTemplate, StepRecord};
use small_agent::engine::ChatMessage;
use small_agent_distill::trajectory::{read_jsonl, Trajectory, TrajectoryKind};

use crate::shared_file;

fn distill() -> Command {
    let mut c = Command::cargo_bin("small-agent-distill").unwrap();
    c.env("RUST_LOG", "warn");
    c
}

fn report(out: &[u8]) -> Value {
    serde_json::from_slice(out)
        .unwrap_or_else(|e| panic!("no JSON report ({e}): {}", String::from_utf8_lossy(out)))
}

/// Runs `import --json` and returns the report and the trajectories written.
fn import(format: &str, input: &Path, extra: &[&str]) -> (Value, Vec<Trajectory>) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("t.jsonl");
    let o = distill()
        .args(["import", "--from", format])
        .arg(input)
        .arg("--out")
        .arg(&out)
        .arg("--json")
        .args(extra)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "import {format} failed: {}\n{}",
        String::from_utf8_lossy(&o.stderr),
        String::from_utf8_lossy(&o.stdout)
    );
    let r = report(&o.stdout);
    let ts = read_jsonl(&out).unwrap();
    assert_eq!(r["converted"].as_u64().unwrap() as usize, ts.len(), "{r}");
    (r, ts)
}

fn rejected(r: &Value, reason: &str) -> u64 {
    r["rejected"][reason]["count"].as_u64().unwrap_or(0)
}

/// The student's opening turns as the agent renders them (with `web_search` listed).
fn student_opening(question: &str) -> Vec<ChatMessage> {
    let search: agent::SearchFn = Arc::new(|_q: &str| Ok(String::new()));
    let tools = agent::agent_toolbox(Some(search)).unwrap();
    agent::opening_messages(
        &PromptTemplate::builtin(),
        &tools,
        agent::DEFAULT_MAX_STEPS,
        question,
    )
}

/// Agent-format checks shared by the imports: the student's prompt, replies the agent's
/// parser reads back, `final_answer` as the answer source.
fn check_agent(t: &Trajectory) {
    assert_eq!(t.kind, TrajectoryKind::Agent);
    let m = &t.log_data.messages;
    assert_eq!(m[..2], student_opening(&t.question)[..], "{}", t.id);
    assert_eq!(m.last().unwrap().role, "assistant", "{}", t.id);
    let replies: Vec<_> = t.assistant_turns().collect();
    assert_eq!(replies.len(), t.log_data.steps.len(), "{}", t.id);
    for (reply, step) in replies.iter().zip(&t.log_data.steps) {
        assert!(reply.content.starts_with("Thought: "), "{}", reply.content);
        assert!(
            reply.content.ends_with("```<end_code>"),
            "{}",
            reply.content
        );
        assert_eq!(
            agent::protocol::extract_code(&reply.content).as_deref(),
            step["code"].as_str(),
            "{}",
            t.id
        );
        assert_eq!(
            agent::protocol::extract_thought(&reply.content),
            step["thought"]
        );
    }
    assert!(t.answered_by_final_answer(), "{}", t.id);
    assert!(!t.has_parse_error() && t.exec_errors() == 0, "{}", t.id);
    assert!(
        t.true_answer.is_some() && !t.generated_answer.is_empty(),
        "{}",
        t.id
    );
    assert!(t.extra["provenance"].is_string(), "{}", t.id);
}

#[test]
fn fireact_converts_every_row_but_the_one_with_several_actions() {
    let input = shared_file("fireact-trajectories/hotpotqa_gpt4_react_gpt_format.jsonl");
    let (r, ts) = import("fireact", &input, &[]);
    assert_eq!(r["rows"], 500, "{r}");
    // Row 407 writes five search[] actions on one line, answered by one observation.
    assert_eq!(r["converted"], 499, "{r}");
    assert_eq!(rejected(&r, "several actions in one reply"), 1, "{r}");
    assert_eq!(
        r["rejected"]["several actions in one reply"]["first_line"],
        407
    );
    assert_eq!(
        (r["source"].as_str(), r["teacher"].as_str()),
        (Some("fireact"), Some("gpt-4"))
    );
    assert!(
        r["provenance"]
            .as_str()
            .unwrap()
            .contains("anchen1011/FireAct"),
        "{r}"
    );
    for t in &ts {
        check_agent(t);
        assert_eq!(t.generated_answer, t.true_answer.clone().unwrap());
    }
    let t = &ts[0];
    assert_eq!(t.id, "fireact-hotpotqa-train/0");
    assert!(t
        .question
        .starts_with("Who was once considered the best kick boxer"));
    assert_eq!(t.generated_answer, "Badr Hari");
    let m = &t.log_data.messages;
    assert_eq!(m.len(), 5);
    assert_eq!(
        m[2].content,
        "Thought: I need to search for the best kick boxer in the world who has been involved in \
         unsportsmanlike conducts and crimes of violence outside of the ring.\nCode:\n```py\n\
         print(web_search(\"best kick boxer in the world unsportsmanlike conducts crimes of violence\"))\n\
         ```<end_code>"
    );
    assert!(
        m[3].content
            .starts_with("Observation:\nExecution logs:\nBadr Hari (born 8 December 1984)"),
        "{}",
        m[3].content
    );
    assert_eq!(
        m[4].content,
        "Thought: Badr Hari is the person who fits the description.\nCode:\n```py\nfinal_answer(\"Badr Hari\")\n```<end_code>"
    );
    // Quotes in a query become a Python literal that needs no escaping.
    let quoted = ts
        .iter()
        .find(|t| t.id == "fireact-hotpotqa-train/16")
        .unwrap();
    assert!(
        quoted.log_data.messages[2]
            .content
            .contains("print(web_search('\"Human Error\" season finale of which TV show?'))"),
        "{}",
        quoted.log_data.messages[2].content
    );
}

#[test]
fn qsolv_runs_the_teachers_code_in_the_real_sandbox_and_matches_gold() {
    let input = shared_file("qsolv-gsm8k-code/gsm8k_python.jsonl");
    shared_file("gsm8k-train/train.jsonl");
    let (r, ts) = import("qsolv", &input, &["--limit", "30", "--jobs", "2"]);
    assert_eq!(r["rows"], 30, "{r}");
    assert_eq!(r["converted"], 30, "{r}");
    assert!(
        r["licence_note"].as_str().unwrap().contains("OpenAI"),
        "{r}"
    );
    assert_eq!(r["teacher"], "gpt-4o-mini");
    for t in &ts {
        check_agent(t);
        assert_eq!(t.log_data.steps.len(), 1);
        let gold: f64 = t.true_answer.as_deref().unwrap().parse().unwrap();
        let got: f64 = t.generated_answer.parse().unwrap();
        assert!((gold - got).abs() < 1e-6, "{}: {got} vs {gold}", t.id);
        assert_eq!(
            t.log_data.steps[0]["final_answer"],
            t.generated_answer.as_str()
        );
        assert!(t.extra["licence_note"].is_string());
    }
    let t = &ts[0];
    assert_eq!(t.id, "qsolv-gsm8k-train/0");
    assert_eq!(t.extra["gsm8k_index"], 0);
    assert_eq!(t.generated_answer, "72.0");
    assert_eq!(
        t.log_data.messages[2].content,
        "Thought: Natalia sold 48/2 = 24 clips in May.\nCode:\n```py\nclips_april = 48\n\
         clips_may = clips_april / 2\ntotal_clips = clips_april + clips_may\n\
         final_result = total_clips\nfinal_answer(final_result)\n```<end_code>"
    );
}

#[test]
fn cot_gsm8k_converts_every_rationale() {
    let input = shared_file("gsm8k-train/train.jsonl");
    let (r, ts) = import("cot-gsm8k", &input, &[]);
    assert_eq!(r["rows"], 7473, "{r}");
    assert_eq!(r["converted"], 7473, "{r}");
    assert_eq!(r["teacher"], "human");
    let cot = small_agent_eval::prompts::CotPrompts::builtin();
    for t in &ts {
        assert_eq!(t.kind, TrajectoryKind::Cot);
        assert!(t.extra["provenance"]
            .as_str()
            .unwrap()
            .contains("grade-school-math"));
        let reply = &t.log_data.messages[2].content;
        assert!(!reply.contains("<<") && !reply.contains("####"), "{reply}");
        assert_eq!(
            small_agent::evaluate::cot_answer(reply, small_agent_eval::dataset::Kind::Math),
            (t.true_answer.clone().unwrap(), true)
        );
    }
    let t = &ts[0];
    assert_eq!(t.id, "gsm8k-train/0");
    assert_eq!(
        t.log_data.messages[0].content,
        small_agent_eval::prompts::fill(&cot.math_system, &[])
    );
    assert_eq!(
        t.log_data.messages[2].content,
        "Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips altogether in April and May.\n\\boxed{72}"
    );
}

#[test]
fn cot_fireact_takes_only_the_cot_rows_of_the_mix() {
    let input = shared_file("fireact-trajectories/hotpotqa_multimethod_gpt_format.jsonl");
    let (r, ts) = import("cot-fireact", &input, &[]);
    assert_eq!(r["rows"], 733, "{r}");
    assert_eq!(r["converted"], 186, "{r}");
    assert_eq!(rejected(&r, "not a CoT row: ReAct run"), 500, "{r}");
    assert_eq!(rejected(&r, "not a CoT row: Reflexion run"), 47, "{r}");
    for t in &ts {
        assert_eq!(t.kind, TrajectoryKind::Cot);
        let reply = &t.log_data.messages[2].content;
        assert!(
            reply.ends_with(&format!("<answer>{}</answer>", t.generated_answer)),
            "{reply}"
        );
        assert!(
            !reply.contains("Action:") && !reply.starts_with("Thought:"),
            "{reply}"
        );
    }
}

/// A run in our `ask` shape (what `agent::trajectory_record` writes).
fn our_run() -> AgentRun {
    let question = "Which city hosted the 1992 Summer Olympics?";
    let step = |reply: &str, obs: &str, fa: Option<&str>| StepRecord {
        reply: reply.to_owned(),
        thought: agent::protocol::extract_thought(reply),
        code: agent::protocol::extract_code(reply),
        observation: obs.to_owned(),
        parse_error: false,
        exec_error: false,
        tool_calls: 1,
        final_answer: fa.map(str::to_owned),
        winner: 0,
        candidates: vec![],
        llm: Default::default(),
        exec_ms: 1.0,
        redone: 0,
    };
    let r1 = "Thought: I will search.\nCode:\n```py\nprint(web_search(\"1992 Summer Olympics host\"))\n```";
    let o1 = "Observation:\nExecution logs:\n1. (score 9.1) \"1992 Summer Olympics\"\nHeld in Barcelona, Spain.";
    let r2 = "Thought: It is Barcelona.\nCode:\n```py\nfinal_answer(\"Barcelona\")\n```";
    let mut messages = student_opening(question);
    messages.push(ChatMessage::new(
        "assistant",
        agent::protocol::close_reply(r1),
    ));
    messages.push(ChatMessage::new("user", o1));
    messages.push(ChatMessage::new(
        "assistant",
        agent::protocol::close_reply(r2),
    ));
    AgentRun {
        question: question.to_owned(),
        answer: "Barcelona".into(),
        answer_source: "final_answer",
        first_thought: None,
        steps: vec![
            step(r1, o1, None),
            step(r2, "Observation:\n", Some("Barcelona")),
        ],
        fallback: None,
        messages,
        error: None,
        failure: None,
        total_ms: 12.0,
    }
}

#[test]
fn paper_rows_round_trip_our_ask_shape_and_read_the_release_shape() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("rows.jsonl");
    let run = our_run();
    let mut ours = agent::trajectory_record(&run);
    ours["true_answer"] = json!("Barcelona");
    // The release's shape: log_data as a JSON string, contents as lists of text parts,
    // smolagents' own system prompt and observation turns.
    let release_log = json!({"messages": [
        {"role": "system", "content": [{"type": "text", "text": "You are an expert assistant who can solve any task using code blobs."}]},
        {"role": "user", "content": [{"type": "text", "text": "New task:\nWhat is 6 times 7?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Thought: multiply.\nCode:\n```py\nx = 6 * 7\nprint(x)\n```<end_code>"}]},
        {"role": "tool-call", "content": [{"type": "text", "text": "Calling tools:\n[{'id': 'call_1'}]"}]},
        {"role": "tool-response", "content": [{"type": "text", "text": "Call id: call_1\nObservation:\nExecution logs:\n42\nLast output from code snippet:\nNone"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Thought: done.\nCode:\n```py\nfinal_answer(x)\n```<end_code>"}]}
    ]});
    let release = json!({
        "question": "What is 6 times 7?",
        "true_answer": "42",
        "generated_answer": "42",
        "log_data": release_log.to_string(),
        "answer_kind": "math",
        "source_dataset": "paper-math-train",
        "id": 17,
    });
    std::fs::write(&input, format!("{ours}\n\n{release}\n")).unwrap();
    let (r, ts) = import(
        "paper",
        &input,
        &["--answer-kind", "factual", "--teacher", "smollm2-135m"],
    );
    assert_eq!(r["rows"], 2, "{r}");
    assert_eq!(r["converted"], 2, "{r}");
    let a = &ts[0];
    assert_eq!(a.id, "rows/0");
    assert_eq!(a.source, "paper");
    assert_eq!(a.teacher, "smollm2-135m");
    assert_eq!(a.log_data.messages, run.messages);
    assert_eq!(
        a.log_data.steps,
        ours["log_data"]["steps"].as_array().unwrap().clone()
    );
    assert_eq!(
        (a.generated_answer.as_str(), a.true_answer.as_deref()),
        ("Barcelona", Some("Barcelona"))
    );
    assert_eq!(a.log_data.extra["total_ms"], 12.0);
    check_agent(a);
    let b = &ts[1];
    // --answer-kind overrides, the row's own dataset and id are kept.
    assert_eq!(b.id, "paper-math-train/17");
    assert_eq!(b.answer_kind, small_agent_eval::dataset::Kind::Factual);
    check_agent(b);
    let m = &b.log_data.messages;
    assert_eq!(m.len(), 5);
    assert_eq!(m[3].content, "Observation:\nExecution logs:\n42");
    assert_eq!(b.log_data.steps[1]["final_answer"], "42");
}

#[test]
fn bad_input_is_named_and_leaves_the_previous_output() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("t.jsonl");
    std::fs::write(&out, "previous\n").unwrap();
    let missing = distill()
        .args([
            "import",
            "--from",
            "fireact",
            "/nonexistent/fireact.jsonl",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
    let e = String::from_utf8_lossy(&missing.stderr);
    assert!(
        e.contains("/nonexistent/fireact.jsonl") && e.contains("shared"),
        "{e}"
    );

    let input = dir.path().join("bad.jsonl");
    std::fs::write(
        &input,
        "{\"messages\": [{\"role\": \"user\", \"content\": \"Q?\"}]}\n{\"messages\": [{\"role\": \"user\"}]}\n",
    )
    .unwrap();
    let bad = distill()
        .args(["import", "--from", "fireact"])
        .arg(&input)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    let e = String::from_utf8_lossy(&bad.stderr);
    assert!(
        e.contains("bad.jsonl:2:") && e.contains("messages[0].content"),
        "{e}"
    );

    let kindless = dir.path().join("kindless.jsonl");
    let mut row = agent::trajectory_record(&our_run());
    row["true_answer"] = json!("Barcelona");
    std::fs::write(&kindless, format!("{row}\n")).unwrap();
    let no_kind = distill()
        .args(["import", "--from", "paper"])
        .arg(&kindless)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(no_kind.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&no_kind.stderr).contains("--answer-kind"));

    // Rows that all get rejected: exit 1, output untouched.
    let lookup = dir.path().join("lookup.jsonl");
    std::fs::write(
        &lookup,
        "{\"messages\": [{\"role\": \"user\", \"content\": \"Q?\"}, {\"role\": \"assistant\", \"content\": \"Thought: t\\nAction: lookup[x]\"}]}\n",
    )
    .unwrap();
    let none = distill()
        .args(["import", "--from", "fireact"])
        .arg(&lookup)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(none.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&none.stdout).contains("action lookup[]"));
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "previous\n");
}
