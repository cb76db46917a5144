//! The agent run API: streamed events, the `ask --json` answer, sources, follow-ups,
//! cancellation by DELETE and by disconnecting.
use std::{
    io::Read,
    time::{Duration, Instant},
};

use serde_json::{json, Value};

use crate::common::{
    endless_run, forced, get_json, post_json, read_sse, run_all, shared, start_run, Server, Sse,
};

fn events_named<'a>(all: &'a [Sse], name: &str) -> Vec<&'a Sse> {
    all.iter().filter(|e| e.event == name).collect()
}

/// A question streams `run`, then per step `step_start`, tokens and `step`, then `answer`
/// and `done`, in that order; the tokens spell the step's reply; the totals add up.
#[test]
fn a_run_streams_its_steps_and_answer() {
    let s = shared();
    // The steps are forced by a grammar (the real model decodes them, the real sandbox runs
    // them): what is tested is the stream, not what the tiny base model would write.
    let all = run_all(
        s,
        &json!({
            "question": "What is 6 times 7?",
            "grammar_gbnf": forced("x = 6 * 7\nprint(x)\nfinal_answer(x)"),
        }),
    );
    let names: Vec<&str> = all.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(names.first(), Some(&"run"), "{names:?}");
    assert_eq!(names.last(), Some(&"done"), "{names:?}");
    let run = all[0].json();
    assert_eq!(run["type"], "run");
    assert_eq!(run["continued"], false);
    assert_eq!(run["settings"]["sag"], 1);
    assert!(run["run_id"].as_str().unwrap().len() >= 16);
    let steps = events_named(&all, "step");
    assert!(!steps.is_empty(), "{names:?}");
    // Per step: step_start before its tokens, tokens before the step event.
    for st in &steps {
        let n = st.json()["step"].as_u64().unwrap();
        let pos = |pred: &dyn Fn(&Sse) -> bool| all.iter().position(pred);
        let start = pos(&|e: &Sse| e.event == "step_start" && e.json()["step"] == n).unwrap();
        let first_tok = pos(&|e: &Sse| e.event == "token" && e.json()["step"] == n).unwrap();
        let end = pos(&|e: &Sse| e.event == "step" && e.json()["step"] == n).unwrap();
        assert!(start < first_tok && first_tok < end, "{names:?}");
        let text: String = all
            .iter()
            .filter(|e| e.event == "token" && e.json()["step"] == n)
            .map(|e| e.json()["text"].as_str().unwrap().to_owned())
            .collect();
        let st = st.json();
        assert!(st["gen_tokens"].as_u64().unwrap() > 0);
        if let Some(code) = st["code"].as_str() {
            let first_line = code.lines().next().unwrap_or("").trim();
            assert!(
                text.contains(first_line),
                "streamed {text:?} lacks {first_line:?}"
            );
        }
    }
    // Tokens arrived over time, not in one lump at the end.
    let toks = events_named(&all, "token");
    assert!(toks.len() > 5);
    let done_ev = all.last().unwrap().json();
    let answer = done_ev["run"]["answer"].as_str().unwrap();
    assert!(
        answer.contains("42"),
        "answer {answer:?}: {}",
        done_ev["run"]
    );
    assert_eq!(events_named(&all, "answer")[0].json()["answer"], answer);
    assert_eq!(done_ev["cancelled"], false);
    let t = &done_ev["totals"];
    let gen_sum: u64 = steps
        .iter()
        .map(|e| e.json()["gen_tokens"].as_u64().unwrap())
        .sum();
    assert!(t["gen_tokens"].as_u64().unwrap() >= gen_sum);
    assert_eq!(t["steps"].as_u64().unwrap() as usize, steps.len());
    assert!(t["total_ms"].as_f64().unwrap() > 0.0);
    // The export line is the `ask --trajectory` layout.
    assert_eq!(done_ev["trajectory"]["question"], "What is 6 times 7?");
    assert_eq!(done_ev["trajectory"]["generated_answer"], answer);
    assert!(done_ev["trajectory"]["log_data"]["messages"].is_array());
}

/// A step whose code repeats an earlier step's is generated again: a `redo` event for
/// each refused attempt (the step's streamed text starts over), then the step.
#[test]
fn a_repeated_step_streams_redo_events() {
    let s = shared();
    // The grammar admits one step only, so step 2 can only repeat step 1: both retries are
    // refused and the third attempt runs.
    let all = run_all(
        s,
        &json!({
            "question": "Print seven.",
            "max_steps": 2,
            "repeat_retries": 2,
            "grammar_gbnf": forced("print(7)"),
        }),
    );
    let names: Vec<&str> = all.iter().map(|e| e.event.as_str()).collect();
    let redos = events_named(&all, "redo");
    assert_eq!(redos.len(), 2, "{names:?}");
    for r in &redos {
        assert_eq!(r.json()["step"], 2);
        assert!(r.json()["reason"].as_str().unwrap().contains("repeated"));
    }
    let steps = events_named(&all, "step");
    assert_eq!(steps.len(), 2, "{names:?}");
    assert_eq!(steps[0].json()["redone"], 0);
    assert_eq!(steps[1].json()["redone"], 2);
    assert_eq!(steps[1].json()["code"], "print(7)");
    // Both redos come after step 1 and before step 2.
    let pos = |name: &str, step: u64| {
        all.iter()
            .position(|e| e.event == name && e.json()["step"] == step)
            .unwrap()
    };
    assert!(pos("step", 1) < pos("redo", 2) && pos("redo", 2) < pos("step", 2));
}

/// Without streaming the answer is the JSON `small-agent ask --json` prints (an
/// `AgentRun`), with the run's ids in headers.
#[test]
fn without_streaming_the_answer_is_ask_json() {
    let s = shared();
    let r = ureq::post(&s.url("/v1/agent/runs"))
        .send_json(json!({
            "question": "What is 6 times 7?", "stream": false,
            "grammar_gbnf": forced("final_answer(6 * 7)"),
        }))
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("application/json"));
    assert!(r.header("x-run-id").is_some());
    assert!(r.header("x-conversation-id").is_some());
    let run: Value = r.into_json().unwrap();
    for key in [
        "question",
        "answer",
        "answer_source",
        "first_thought",
        "steps",
        "fallback",
        "messages",
        "error",
        "failure",
        "total_ms",
    ] {
        assert!(run.get(key).is_some(), "{key} missing: {run}");
    }
    assert_eq!(run["answer"], "42", "{run}");
    assert_eq!(run["answer_source"], "final_answer");
    let step = &run["steps"][0];
    for key in [
        "reply",
        "thought",
        "code",
        "observation",
        "llm",
        "exec_ms",
        "candidates",
    ] {
        assert!(step.get(key).is_some(), "{key} missing: {step}");
    }
}

/// A question the agent searches for lists the passages `web_search` returned as numbered
/// sources, and the step that searched names their numbers.
#[test]
fn searched_passages_are_listed_as_sources() {
    let s = shared();
    let all = run_all(
        s,
        &json!({
            "question": "Who wrote Pride and Prejudice?", "max_steps": 1,
            "grammar_gbnf": forced("r = web_search(\"Pride and Prejudice novel author\")\nprint(r)"),
        }),
    );
    let sources = events_named(&all, "sources");
    assert!(
        !sources.is_empty(),
        "no sources event; steps: {:?}",
        events_named(&all, "step")
            .iter()
            .map(|e| e.json()["code"].clone())
            .collect::<Vec<_>>()
    );
    let first = sources[0].json();
    assert!(!first["query"].as_str().unwrap().is_empty());
    let passages = first["passages"].as_array().unwrap();
    assert!(!passages.is_empty() && passages.len() <= 3, "{first}");
    assert_eq!(passages[0]["n"], 1);
    assert!(!passages[0]["title"].as_str().unwrap().is_empty());
    assert!(!passages[0]["text"].as_str().unwrap().is_empty());
    let step_no = first["step"].as_u64().unwrap();
    let step = events_named(&all, "step")
        .into_iter()
        .map(|e| e.json())
        .find(|e| e["step"] == step_no)
        .unwrap();
    assert!(
        step["sources"].as_array().unwrap().contains(&json!(1)),
        "{step}"
    );
    let done = all.last().unwrap().json();
    assert!(done["sources"].as_array().unwrap().len() >= passages.len());
    // What the code saw is what the page lists.
    let obs = step["observation"].as_str().unwrap();
    let title = passages[0]["title"].as_str().unwrap();
    assert!(obs.contains(title), "{step}");
    assert_eq!(step["tool_calls"], 1);
}

/// A follow-up in the same conversation continues it: the Python variables of the first
/// question's code are there, and the agent's memory holds the first question; another
/// conversation has neither.
#[test]
fn follow_ups_continue_the_conversation() {
    // A server of its own: on the shared one, another test's run may take the session
    // that holds this conversation between its two questions (the server then starts the
    // follow-up afresh and says so with `continued: false`, as the page shows).
    let server = Server::start(&["--sessions", "1"]);
    let s = &server;
    let conv = format!("test-{}", std::process::id());
    let first = run_all(
        s,
        &json!({"question": "Set x to 12.", "conversation_id": conv,
                "grammar_gbnf": forced("x = 12\nfinal_answer(x)")}),
    );
    assert_eq!(first[0].json()["continued"], false);
    assert_eq!(first.last().unwrap().json()["run"]["answer"], "12");
    let second = run_all(
        s,
        &json!({"question": "What is x times 2?", "conversation_id": conv,
                "grammar_gbnf": forced("final_answer(x * 2)")}),
    );
    let run_ev = second[0].json();
    assert_eq!(run_ev["conversation_id"], conv.as_str());
    assert_eq!(run_ev["continued"], true, "{run_ev}");
    let done = second.last().unwrap().json();
    assert_eq!(done["run"]["answer"], "24", "{}", done["run"]);
    let messages = done["run"]["messages"].as_array().unwrap();
    let text: Vec<&str> = messages
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert!(
        text.iter().any(|t| t.contains("Set x to 12.")),
        "the first question is not in the agent's memory: {text:?}"
    );
    // Exactly one system prompt: the follow-up is a further turn, not a new conversation.
    assert_eq!(messages.iter().filter(|m| m["role"] == "system").count(), 1);
    let fresh = run_all(
        s,
        &json!({"question": "What is x times 2?", "conversation_id": format!("{conv}-new"),
                "max_steps": 1, "grammar_gbnf": forced("final_answer(x * 2)")}),
    );
    assert_eq!(fresh[0].json()["continued"], false);
    let done = fresh.last().unwrap().json();
    let step = &done["run"]["steps"][0];
    assert_eq!(step["exec_error"], true, "{step}");
    assert!(
        step["observation"].as_str().unwrap().contains("NameError"),
        "{step}"
    );
    assert!(!done["run"]["messages"].to_string().contains("Set x to 12."));
}

/// DELETE stops a run: while decoding, and while its code runs in the sandbox; the stream
/// ends with `done` marked cancelled, and the session goes back to the pool.
#[test]
fn delete_stops_a_run_promptly() {
    // A server of its own: "the session is back" is then exact.
    let s = Server::start(&["--sessions", "1", "--timeout", "20"]);
    let before = s.metric("small_agent_agent_runs_cancelled_total");
    // While decoding: cancel at the first token.
    let reader = start_run(&s, &endless_run());
    let mut run_id = String::new();
    let mut asked_at = None;
    let mut done = None;
    let mut tokens_after = 0;
    read_sse(reader, |e| {
        match e.event.as_str() {
            "run" => run_id = e.json()["run_id"].as_str().unwrap().to_owned(),
            "token" if asked_at.is_none() => {
                let t = Instant::now();
                let r = ureq::delete(&s.url(&format!("/v1/agent/runs/{run_id}")))
                    .call()
                    .unwrap();
                assert_eq!(r.status(), 200);
                asked_at = Some(t);
            }
            "token" => tokens_after += 1,
            "done" => {
                done = Some((e.json(), e.at));
                return false;
            }
            _ => {}
        }
        true
    });
    let (ev, at) = done.expect("no done event");
    assert_eq!(ev["cancelled"], true, "{ev}");
    assert_eq!(ev["run"]["failure"], "cancelled");
    let took = at - asked_at.unwrap();
    eprintln!("DELETE while decoding: done after {took:?}, {tokens_after} tokens after it");
    // Decoding stops at the next token: at most the one already being decoded when the
    // DELETE landed (and one the stream had not yet delivered). The time is reported, not
    // asserted (it is the machine's speed; `--ignored bench` measures it); a bound of
    // seconds only catches a run that went on.
    assert!(tokens_after <= 2, "{tokens_after} tokens after DELETE");
    assert!(took < Duration::from_secs(10), "{took:?}");
    s.wait_idle(Duration::from_secs(2));

    // While the code runs: the step's text has ended (no step event: its code is running),
    // then DELETE. The server runs code for up to --timeout 20 s otherwise.
    let reader = start_run(&s, &endless_run());
    let (tx, rx) = std::sync::mpsc::channel::<Sse>();
    std::thread::spawn(move || {
        read_sse(reader, |e| tx.send(e.clone()).is_ok());
    });
    let mut run_id = String::new();
    let mut saw_token = false;
    let asked_at = loop {
        match rx.recv_timeout(Duration::from_millis(1500)) {
            Ok(e) => match e.event.as_str() {
                "run" => run_id = e.json()["run_id"].as_str().unwrap().to_owned(),
                "token" => saw_token = true,
                "step" => panic!("the endless code ended: {}", e.data),
                "done" => panic!("the run ended before its code ran: {}", e.data),
                _ => {}
            },
            Err(_) if saw_token => {
                // 1.5 s without a token after the reply: the code is running.
                let t = Instant::now();
                ureq::delete(&s.url(&format!("/v1/agent/runs/{run_id}")))
                    .call()
                    .unwrap();
                break t;
            }
            Err(_) => {}
        }
    };
    let done = loop {
        let e = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the run did not end after DELETE");
        if e.event == "done" {
            break e;
        }
    };
    let took = done.at - asked_at;
    eprintln!("DELETE while the sandbox runs: done after {took:?}");
    let ev = done.json();
    assert_eq!(ev["cancelled"], true, "{ev}");
    // The code would run for --timeout (20 s): ending well before that means the sandbox
    // was interrupted, not left to time out.
    assert!(took < Duration::from_secs(10), "{took:?}");
    s.wait_idle(Duration::from_secs(2));
    assert!(s.metric("small_agent_agent_runs_cancelled_total") >= before + 2.0);
    // A finished or unknown run: 404.
    let r = ureq::delete(&s.url(&format!("/v1/agent/runs/{run_id}"))).call();
    assert!(matches!(r, Err(ureq::Error::Status(404, _))));
}

/// A client that leaves mid-run cancels it: the session comes back to the pool at once (no
/// session leaks), and the next question is answered normally.
#[test]
fn a_client_that_disconnects_cancels_its_run() {
    let s = Server::start(&["--sessions", "1", "--timeout", "20"]);
    let before = s.metric("small_agent_agent_runs_cancelled_total");
    let mut reader = start_run(&s, &endless_run());
    // Read until some tokens have arrived, then hang up.
    let mut buf = [0u8; 4096];
    let mut seen = String::new();
    while !seen.contains("event: token") {
        let n = reader.read(&mut buf).unwrap();
        assert!(n > 0, "stream ended: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let left = Instant::now();
    drop(reader);
    s.wait_idle(Duration::from_secs(5));
    eprintln!("disconnect: sessions idle after {:?}", left.elapsed());
    let t0 = Instant::now();
    while s.metric("small_agent_agent_runs_cancelled_total") < before + 1.0 {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "the run was not cancelled"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    six_times_seven(&s);
}

/// A forced one-step run that answers 42; the whole run as JSON.
fn six_times_seven(s: &Server) -> Value {
    let (status, run) = post_json(
        &s.url("/v1/agent/runs"),
        &json!({"question": "What is 6 times 7?", "stream": false,
                "grammar_gbnf": forced("final_answer(6 * 7)")}),
    );
    assert_eq!(status, 200);
    assert_eq!(run["answer"], "42", "{run}");
    run
}

/// `--prompt` gives the agent another prompt template: the run's system message is that
/// file's (here the base model's default prompt, where the default student has its own),
/// `/v1/info` names it, and a file that is not a template is refused at start-up with exit
/// 2 and the flag named.
#[test]
fn a_prompt_file_replaces_the_agents_prompt() {
    let file = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../models/prompts/agent-default.toml"
    );
    let template = small_agent::agent::PromptTemplate::from_file(file.as_ref()).unwrap();
    let student = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../models/prompts/student.toml"
    );
    let student = small_agent::agent::PromptTemplate::from_file(student.as_ref()).unwrap();
    // Each template's opening words, up to its first placeholder.
    let opening = |t: &str| t.trim().split('{').next().unwrap().to_owned();
    assert_ne!(opening(&template.system), opening(&student.system));
    let system_of = |s: &Server| {
        six_times_seven(s)["messages"][0]["content"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    // The default: the prompt of the student the manifests mark as the default, else the
    // built-in one.
    let marked = small_agent::assets::default_student().unwrap();
    let system = system_of(shared());
    let expected = if marked.is_some() {
        &student
    } else {
        &template
    };
    assert!(system.starts_with(&opening(&expected.system)), "{system}");
    // --student: its adapter and its own prompt; --prompt replaces the prompt.
    let s = Server::start(&["--sessions", "1", "--student", "agent-smollm2-135m"]);
    let info = get_json(&s.url("/v1/info"));
    let adapter = info["model"]["adapter"].as_str().unwrap_or_default();
    assert!(adapter.contains("agent-smollm2-135m"), "{info}");
    assert_eq!(info["prompt"], "models/prompts/student.toml", "{info}");
    let system = system_of(&s);
    assert!(system.starts_with(&opening(&student.system)), "{system}");
    drop(s);
    let s = Server::start(&[
        "--sessions",
        "1",
        "--student",
        "agent-smollm2-135m",
        "--prompt",
        file,
    ]);
    let info = get_json(&s.url("/v1/info"));
    assert_eq!(info["prompt"], file, "{info}");
    let system = system_of(&s);
    assert!(system.starts_with(&opening(&template.system)), "{system}");
    assert!(!system.contains(&opening(&student.system)), "{system}");

    let bad = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(bad.path(), "system = \"no placeholders\"\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_small-agent-serve"))
        .args(["--port", "0", "--prompt"])
        .arg(bad.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--prompt"), "{err}");
}
