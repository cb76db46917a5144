//! The agent on a remote model: `ask --model-url` against llama.cpp's own `llama-server`
//! (built by scripts/build-llama-server.sh), started on loopback with the default model.
use assert_cmd::Command;
use serde_json::Value;

use crate::llama_server::{free_port, LlamaServer};

fn ask(server: &LlamaServer, extra: &[&str], question: &str) -> Value {
    let out = Command::cargo_bin("small-agent")
        .unwrap()
        .env("RUST_LOG", "warn")
        .args(["ask", "--json", "--model-url", &server.url])
        .args(extra)
        .arg(question)
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "ask printed no JSON ({e}); stderr: {}\nserver log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            server.log_text()
        )
    });
    assert!(
        v["error"].is_null(),
        "the run failed: {}\nserver log:\n{}",
        v["error"],
        server.log_text()
    );
    v
}

#[test]
fn ask_answers_through_llama_server_with_the_agent_loop() {
    let server = LlamaServer::start(&crate::default_model_path(), 1);
    let v = ask(
        &server,
        &["--greedy", "--max-steps", "2"],
        "What is 17 times 23?",
    );
    let steps = v["steps"].as_array().unwrap();
    assert!(!steps.is_empty(), "{v}");
    let first = &steps[0];
    // The reply continues the forced `Thought:` start; the server counted the prompt.
    assert!(
        first["reply"].as_str().unwrap().starts_with("Thought:"),
        "{v}"
    );
    assert!(first["llm"]["prompt_tokens"].as_u64().unwrap() > 100, "{v}");
    assert!(first["llm"]["gen_tokens"].as_u64().unwrap() > 0, "{v}");
    // The conversation holds the system prompt, the task and the model's reply.
    let messages = v["messages"].as_array().unwrap();
    assert_eq!(messages[0]["role"], "system");
    assert_eq!(messages[2]["role"], "assistant");
}

#[test]
fn a_greedy_remote_step_equals_the_local_engine_step() {
    let server = LlamaServer::start(&crate::default_model_path(), 1);
    let flags = ["--greedy", "--no-grammar", "--max-steps", "1"];
    let question = "Which city is the capital of France?";
    let remote = ask(&server, &flags, question);
    let out = Command::cargo_bin("small-agent")
        .unwrap()
        .env("RUST_LOG", "warn")
        .args([
            "ask",
            "--json",
            "--as-is",
            "--llama-logits",
            "--threads",
            "1",
            // The server runs the bare base model.
            "--base",
        ])
        .args(flags)
        .arg(question)
        .output()
        .unwrap();
    let local: Value = serde_json::from_slice(&out.stdout).unwrap();
    // Two builds of llama.cpp on the same weights: the first words of the reply agree
    // (argmax over near-identical logits; later tokens may part where two are close).
    let words = |v: &Value| -> Vec<String> {
        v["steps"][0]["reply"]
            .as_str()
            .unwrap_or_default()
            .split_whitespace()
            .take(6)
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(
        words(&remote),
        words(&local),
        "remote {remote}\nlocal {local}"
    );
}

#[test]
fn sag_over_http_gets_every_candidate_as_choices_or_as_requests() {
    let server = LlamaServer::start(&crate::default_model_path(), 4);
    for extra in [None, Some("--request-per-candidate")] {
        let mut flags = vec!["--sag", "4", "--max-steps", "1"];
        flags.extend(extra);
        let v = ask(&server, &flags, "What is 2 to the power of 10?");
        check_candidates(&v);
    }
}

fn check_candidates(v: &Value) {
    let step = &v["steps"][0];
    let cands = step["candidates"].as_array().unwrap();
    assert_eq!(cands.len(), 4, "{v}");
    // Each candidate was generated or dropped by the vote (a server that ignored `n` and
    // went unnoticed would have left some empty).
    assert!(
        cands
            .iter()
            .all(|c| c["gen_tokens"].as_u64().unwrap() > 0 || c["abandoned"] == true),
        "{v}"
    );
}

#[test]
fn the_first_thought_prefix_is_continued_by_the_server() {
    let server = LlamaServer::start(&crate::default_model_path(), 1);
    let v = ask(
        &server,
        &["--greedy", "--first-thought", "--max-steps", "1"],
        "Tom has 3 apples and buys 4 more. How many apples does he have?",
    );
    let thought = v["first_thought"].as_str().unwrap();
    assert!(!thought.is_empty(), "{v}");
    let reply = v["steps"][0]["reply"].as_str().unwrap();
    assert!(
        reply.starts_with(&format!("Thought: {thought}")),
        "the reply does not continue the forced thought: {reply:?}\n{v}"
    );
}

#[test]
fn an_unreachable_model_url_exits_2_and_names_it() {
    let url = format!("http://127.0.0.1:{}", free_port());
    Command::cargo_bin("small-agent")
        .unwrap()
        .args(["ask", "--model-url", &url, "hello"])
        .assert()
        .code(2)
        .stderr(predicates::str::contains(format!(
            "cannot reach the model server at {url}/v1/models"
        )));
    // A URL that is not http is refused before any connection.
    Command::cargo_bin("small-agent")
        .unwrap()
        .args(["ask", "--model-url", "localhost:8080", "hello"])
        .assert()
        .code(2)
        .stderr(predicates::str::contains("expected http://HOST:PORT"));
    // A local student cannot ride on a remote model: said, not ignored.
    Command::cargo_bin("small-agent")
        .unwrap()
        .args([
            "ask",
            "--model-url",
            &url,
            "--student",
            "agent-smollm2-135m",
            "hello",
        ])
        .assert()
        .code(2)
        .stderr(predicates::str::contains(
            "--student agent-smollm2-135m runs on the local model",
        ));
}
