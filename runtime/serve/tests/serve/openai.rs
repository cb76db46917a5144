//! The OpenAI-compatible API on the bare model, with plain HTTP and with the stock `openai`
//! Python client.
use serde_json::{json, Value};

use crate::common::{get_json, post_json, read_sse, shared, Sse};

fn chat(body: Value) -> Value {
    let (status, reply) = post_json(&shared().url("/v1/chat/completions"), &body);
    assert_eq!(status, 200, "{body} -> {reply}");
    reply
}

/// `GET /v1/models` lists the loaded model; `/health` and `/metrics` answer.
#[test]
fn models_health_metrics() {
    let s = shared();
    let m = get_json(&s.url("/v1/models"));
    assert_eq!(m["object"], "list");
    let id = m["data"][0]["id"].as_str().unwrap();
    assert!(id.to_lowercase().contains("smollm2"), "{m}");
    let h = s.health();
    assert_eq!(h["status"], "ok");
    assert_eq!(h["sessions"], 2);
    let text = ureq::get(&s.url("/metrics"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    for name in [
        "small_agent_agent_runs_total",
        "small_agent_queue_depth",
        "small_agent_tokens_per_second",
        "small_agent_sandbox_seconds_total",
        "small_agent_http_responses_total{class=\"2xx\"}",
    ] {
        assert!(text.contains(name), "{name} missing:\n{text}");
    }
    let info = get_json(&s.url("/v1/info"));
    assert_eq!(info["python"], "full");
    assert!(info["model"]["size_bytes"].as_u64().unwrap() > 1_000_000);
    assert!(info["shard"]["size_bytes"].as_u64().unwrap() > 0, "{info}");
}

/// A plain completion: one choice, a finish reason, usage that adds up; `max_tokens` ends
/// it with `length`.
#[test]
fn completion_with_usage_and_length() {
    let r = chat(json!({
        "model": "anything",
        "messages": [{"role": "user", "content": "Name three colours."}],
        "max_tokens": 5,
        "temperature": 0,
    }));
    assert_eq!(r["object"], "chat.completion");
    assert_eq!(r["choices"].as_array().unwrap().len(), 1);
    assert_eq!(r["choices"][0]["message"]["role"], "assistant");
    assert_eq!(r["choices"][0]["finish_reason"], "length");
    let u = &r["usage"];
    assert_eq!(u["completion_tokens"], 5);
    assert_eq!(
        u["total_tokens"].as_u64().unwrap(),
        u["prompt_tokens"].as_u64().unwrap() + 5
    );
    assert!(u["prompt_tokens"].as_u64().unwrap() > 5);
}

/// `n` > 1: that many choices, decoded as parallel sequences with seeds `seed + i`; the same
/// seed gives the same choices again (whichever session answers, whatever its cache held).
#[test]
fn n_choices_seed_and_stop() {
    let body = |n: usize| {
        json!({
            "messages": [{"role": "user", "content": "Write one sentence about the sea."}],
            "n": n, "seed": 7, "temperature": 1.0, "max_tokens": 24,
        })
    };
    let a = chat(body(3));
    let choices = a["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 3);
    for (i, c) in choices.iter().enumerate() {
        assert_eq!(c["index"], i);
        assert!(!c["message"]["content"].as_str().unwrap().is_empty());
    }
    let texts: Vec<&str> = choices
        .iter()
        .map(|c| c["message"]["content"].as_str().unwrap())
        .collect();
    assert!(
        texts[0] != texts[1] || texts[1] != texts[2],
        "three seeds, one text: {texts:?}"
    );
    let gen: u64 = 24 * 3;
    assert!(a["usage"]["completion_tokens"].as_u64().unwrap() <= gen);
    // Something else in between, so that the caches hold another prompt.
    chat(json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}));
    for _ in 0..2 {
        let b = chat(body(3));
        assert_eq!(a["choices"], b["choices"], "same seed, other choices");
    }
    let other = chat(json!({
        "messages": [{"role": "user", "content": "Write one sentence about the sea."}],
        "n": 3, "seed": 8, "temperature": 1.0, "max_tokens": 24,
    }));
    assert_ne!(a["choices"], other["choices"], "the seed changes nothing");
    // A stop string ends the text before it, with finish_reason stop.
    let r = chat(json!({
        "messages": [
            {"role": "user", "content": "Count from 1 to 10, separated by commas."},
            {"role": "assistant", "content": "1, 2, 3,"}
        ],
        "continue_final_message": true, "add_generation_prompt": false,
        "temperature": 0, "max_tokens": 30, "stop": ["6"],
    }));
    let text = r["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(text.contains('5') && !text.contains('6'), "{text:?}");
    assert_eq!(r["choices"][0]["finish_reason"], "stop");
}

/// A trailing assistant message with `continue_final_message` is continued, not answered
/// anew: the reply starts where the message ends.
#[test]
fn continue_final_message_continues() {
    let base = json!([
        {"role": "user", "content": "Count from 1 to 10, separated by commas."},
        {"role": "assistant", "content": "1, 2, 3, 4,"}
    ]);
    let r = chat(json!({
        "messages": base,
        "continue_final_message": true, "add_generation_prompt": false,
        "temperature": 0, "max_tokens": 8,
    }));
    let text = r["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(text.trim_start().starts_with('5'), "{text:?}");
}

/// Streaming: a role chunk, content chunks, a final chunk with `finish_reason`, the usage
/// chunk when asked, then `[DONE]`; the streamed text equals the unstreamed one.
#[test]
fn streamed_chunks_and_usage() {
    let s = shared();
    let body = json!({
        "messages": [{"role": "user", "content": "Say hello in French."}],
        "temperature": 0, "max_tokens": 16, "n": 2,
        "stream": true, "stream_options": {"include_usage": true},
    });
    let r = ureq::post(&s.url("/v1/chat/completions"))
        .send_json(body.clone())
        .unwrap();
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    let mut events: Vec<Sse> = Vec::new();
    read_sse(r.into_reader(), |e| {
        events.push(e.clone());
        true
    });
    assert_eq!(events.last().unwrap().data, "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| e.json())
        .collect();
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    let id = &chunks[0]["id"];
    assert!(chunks.iter().all(|c| &c["id"] == id));
    let mut text = [String::new(), String::new()];
    let mut finish = [None, None];
    for c in &chunks {
        for ch in c["choices"].as_array().unwrap() {
            let i = ch["index"].as_u64().unwrap() as usize;
            if let Some(t) = ch["delta"]["content"].as_str() {
                text[i].push_str(t);
            }
            if let Some(f) = ch["finish_reason"].as_str() {
                finish[i] = Some(f.to_owned());
            }
        }
    }
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(finish.iter().all(|f| f.is_some()), "{chunks:?}");
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"].as_array().unwrap().len(), 0);
    assert!(usage["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    let mut plain = body;
    plain["stream"] = json!(false);
    let p = chat(plain);
    assert_eq!(p["choices"][0]["message"]["content"], text[0].as_str());
    assert_eq!(p["choices"][1]["message"]["content"], text[1].as_str());
}

/// The Python that has the `openai` package: `$SMALL_AGENT_TEST_PYTHON`, else the virtualenv
/// `scripts/test.sh` makes (`$SMALL_AGENT_HOME/test-venv`), else `python3`.
fn test_python() -> std::path::PathBuf {
    if let Ok(p) = std::env::var("SMALL_AGENT_TEST_PYTHON") {
        return p.into();
    }
    let home = std::env::var("SMALL_AGENT_HOME")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| {
            std::path::PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/small-agent")
        });
    let venv = home.join("test-venv/bin/python3");
    if venv.exists() {
        venv
    } else {
        "python3".into()
    }
}

/// The stock `openai` Python package (from PyPI) talks to the server: a completion, a
/// streamed one with usage, and the model list.
#[test]
fn the_openai_python_client_works() {
    let s = shared();
    let script = r#"
import sys, openai
c = openai.OpenAI(base_url=sys.argv[1] + "/v1", api_key="unused")
models = [m.id for m in c.models.list().data]
r = c.chat.completions.create(model=models[0], messages=[{"role": "user", "content": "Say hi."}], max_tokens=8, temperature=0, n=2, seed=1)
assert len(r.choices) == 2 and r.usage.completion_tokens > 0, r
text = ""
usage = None
for chunk in c.chat.completions.create(model=models[0], messages=[{"role": "user", "content": "Say hi."}], max_tokens=8, temperature=0, stream=True, stream_options={"include_usage": True}):
    if chunk.usage:
        usage = chunk.usage
    for ch in chunk.choices:
        text += ch.delta.content or ""
assert usage and usage.completion_tokens > 0, usage
assert text == r.choices[0].message.content, (text, r.choices[0].message.content)
print("ok", models[0], repr(text))
"#;
    let out = std::process::Command::new(test_python())
        .arg("-c")
        .arg(script)
        .arg(s.url(""))
        .output()
        .expect("running the test Python");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named 'openai'"),
        "this test needs the openai package: scripts/test.sh installs it into \
         $SMALL_AGENT_HOME/test-venv (or set SMALL_AGENT_TEST_PYTHON to a Python that has it)"
    );
    assert!(out.status.success(), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ok"));
}
