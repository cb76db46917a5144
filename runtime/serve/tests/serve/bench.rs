//! Questions per minute through the server at 1, 2 and 4 sessions, against `small-agent ask`
//! run once per question (a process each: model, shard and interpreter loaded every time).
//! Ignored by default (minutes): `cargo test --release -p small-agent-serve --test serve --
//! --ignored bench --nocapture`.
use std::{
    sync::{Arc, Mutex},
    time::Instant,
};

use serde_json::json;

use crate::common::{forced, server_binary, Server};

/// The questions, each with the code its one step is forced to run: both sides then do
/// the same work (the same tokens decoded under the same grammar, one step, no fallback),
/// whatever the tiny base model would have written.
const QUESTIONS: [(&str, &str); 8] = [
    ("What is 6 times 7?", "final_answer(6 * 7)"),
    ("What is 12 plus 30?", "final_answer(12 + 30)"),
    ("What is 100 divided by 4?", "final_answer(100 // 4)"),
    ("What is 9 squared?", "final_answer(9 ** 2)"),
    ("What is 2 to the power 10?", "final_answer(2 ** 10)"),
    ("What is 15 minus 8?", "final_answer(15 - 8)"),
    ("What is 3 times 13?", "final_answer(3 * 13)"),
    ("What is 81 divided by 9?", "final_answer(81 // 9)"),
];

fn through_server(sessions: usize) -> f64 {
    let s = Server::start_sharing_cores(&["--sessions", &sessions.to_string(), "--queue", "16"]);
    let next = Arc::new(Mutex::new(0usize));
    let url = s.url("/v1/agent/runs");
    let t0 = Instant::now();
    let clients: Vec<_> = (0..sessions)
        .map(|_| {
            let next = next.clone();
            let url = url.clone();
            std::thread::spawn(move || loop {
                let i = {
                    let mut n = next.lock().unwrap();
                    *n += 1;
                    *n - 1
                };
                if i >= QUESTIONS.len() {
                    return;
                }
                let (q, code) = QUESTIONS[i];
                let r = ureq::post(&url)
                    .send_json(json!({
                        "question": q,
                        "stream": false,
                        "sag": 1,
                        "grammar_gbnf": forced(code),
                    }))
                    .unwrap();
                assert_eq!(r.status(), 200);
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    QUESTIONS.len() as f64 / t0.elapsed().as_secs_f64() * 60.0
}

fn through_ask() -> f64 {
    let ask = server_binary().with_file_name("small-agent");
    assert!(ask.is_file(), "{} not built", ask.display());
    let dir = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    for (i, (q, code)) in QUESTIONS.iter().enumerate() {
        let grammar = dir.path().join(format!("q{i}.gbnf"));
        std::fs::write(&grammar, forced(code)).unwrap();
        let out = std::process::Command::new(&ask)
            .args(["ask", "--greedy", "--grammar-file"])
            .arg(&grammar)
            .arg(q)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    QUESTIONS.len() as f64 / t0.elapsed().as_secs_f64() * 60.0
}

#[test]
#[ignore]
fn bench_questions_per_minute() {
    let ask = through_ask();
    eprintln!("ask, one process per question: {ask:.1} questions/min");
    for n in [1, 2, 4] {
        let q = through_server(n);
        eprintln!(
            "serve --sessions {n}: {q:.1} questions/min ({:.2}x ask)",
            q / ask
        );
    }
}
