//! The safety defaults (issue point 4), one test each.
use serde_json::json;

use crate::common::{header, post_json, raw, server_binary, shared, Server};

/// A page on another site whose name resolves to 127.0.0.1 (DNS rebinding) sends its own
/// name as Host: refused. The server's own names pass.
#[test]
fn host_header_must_name_this_server() {
    let s = shared();
    let p = s.port;
    for bad in [
        format!("evil.example:{p}"),
        format!("127.0.0.1.nip.io:{p}"),
        "127.0.0.1:1".to_owned(),
    ] {
        let (status, _, body) = raw(p, &format!("GET /v1/models HTTP/1.1\nHost: {bad}"), b"");
        assert_eq!(status, 403, "Host {bad}: {body}");
        assert!(body.contains("DNS-rebinding"), "{body}");
        // The page too: a rebinding page must not even read it.
        let (status, _, _) = raw(p, &format!("GET / HTTP/1.1\nHost: {bad}"), b"");
        assert_eq!(status, 403);
    }
    for good in [format!("localhost:{p}"), format!("127.0.0.1:{p}")] {
        let (status, _, body) = raw(p, &format!("GET /v1/models HTTP/1.1\nHost: {good}"), b"");
        assert_eq!(status, 200, "Host {good}: {body}");
    }
    // HTTP/1.0 without a Host header.
    let (status, _, _) = raw(p, "GET /health HTTP/1.0", b"");
    assert_eq!(status, 403);
}

/// A cross-origin request (a page elsewhere calling the API with the user's browser) is
/// refused unless `--cors-origin` lists its origin; the page's own origin passes.
#[test]
fn cross_origin_requests_are_refused_by_default() {
    let s = shared();
    let p = s.port;
    let body = br#"{"question": "What is 2 + 2?"}"#;
    let (status, headers, text) = raw(
        p,
        &format!(
            "POST /v1/agent/runs HTTP/1.1\nHost: 127.0.0.1:{p}\nOrigin: http://evil.example\nContent-Type: application/json"
        ),
        body,
    );
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("--cors-origin"), "{text}");
    assert!(header(&headers, "access-control-allow-origin").is_none());
    // Preflight from elsewhere: refused too.
    let (status, headers, _) = raw(
        p,
        &format!("OPTIONS /v1/chat/completions HTTP/1.1\nHost: 127.0.0.1:{p}\nOrigin: http://evil.example\nAccess-Control-Request-Method: POST"),
        b"",
    );
    assert_eq!(status, 403);
    assert!(header(&headers, "access-control-allow-origin").is_none());
    // The page's own origin (what a browser sends with the page's fetches) is not refused.
    let (status, _, text) = raw(
        p,
        &format!("GET /v1/models HTTP/1.1\nHost: 127.0.0.1:{p}\nOrigin: http://127.0.0.1:{p}"),
        b"",
    );
    assert_eq!(status, 200, "{text}");
}

/// `--cors-origin` lists an origin: its preflight is answered and its requests get the CORS
/// headers naming exactly it; other origins are still refused. Also: an API key makes every
/// API request need `Authorization: Bearer`, while the page's files and /health stay open.
#[test]
fn listed_origin_and_api_key() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, "s3cret-key\n").unwrap();
    let s = Server::start(&[
        "--sessions",
        "1",
        "--cors-origin",
        "http://localhost:3000",
        "--api-key-file",
        key_file.to_str().unwrap(),
    ]);
    let p = s.port;
    let (status, headers, _) = raw(
        p,
        &format!("OPTIONS /v1/chat/completions HTTP/1.1\nHost: localhost:{p}\nOrigin: http://localhost:3000\nAccess-Control-Request-Method: POST\nAccess-Control-Request-Headers: authorization, content-type"),
        b"",
    );
    assert_eq!(status, 204);
    assert_eq!(
        header(&headers, "access-control-allow-origin"),
        Some("http://localhost:3000")
    );
    assert!(header(&headers, "access-control-allow-headers")
        .unwrap()
        .contains("authorization"));
    let (status, headers, _) = raw(
        p,
        &format!("GET /v1/models HTTP/1.1\nHost: localhost:{p}\nOrigin: http://localhost:3000\nAuthorization: Bearer s3cret-key"),
        b"",
    );
    assert_eq!(status, 200);
    assert_eq!(
        header(&headers, "access-control-allow-origin"),
        Some("http://localhost:3000")
    );
    let (status, _, _) = raw(
        p,
        &format!("GET /v1/models HTTP/1.1\nHost: localhost:{p}\nOrigin: http://localhost:3001\nAuthorization: Bearer s3cret-key"),
        b"",
    );
    assert_eq!(status, 403);

    // The key.
    for path in ["/v1/models", "/v1/info", "/metrics"] {
        let r = ureq::get(&s.url(path)).call();
        match r {
            Err(ureq::Error::Status(401, r)) => {
                assert_eq!(r.header("www-authenticate"), Some("Bearer"));
            }
            other => panic!("{path} without a key: {other:?}"),
        }
        let r = ureq::get(&s.url(path))
            .set("Authorization", "Bearer wrong-key")
            .call();
        assert!(matches!(r, Err(ureq::Error::Status(401, _))), "{path}");
        let r = ureq::get(&s.url(path))
            .set("Authorization", "Bearer s3cret-key")
            .call()
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    let r = ureq::post(&s.url("/v1/agent/runs")).send_json(json!({"question": "hi"}));
    assert!(matches!(r, Err(ureq::Error::Status(401, _))));
    let r = ureq::delete(&s.url("/v1/agent/runs/abc")).call();
    assert!(matches!(r, Err(ureq::Error::Status(401, _))));
    assert_eq!(ureq::get(&s.url("/")).call().unwrap().status(), 200);
    assert_eq!(ureq::get(&s.url("/health")).call().unwrap().status(), 200);
    let info: serde_json::Value = ureq::get(&s.url("/v1/info"))
        .set("Authorization", "Bearer s3cret-key")
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(info["auth"], true);
}

/// Listening beyond loopback without a key is refused before anything loads (exit 2); a
/// malformed origin too.
#[test]
fn non_loopback_without_key_is_refused() {
    let out = std::process::Command::new(server_binary())
        .args(["--host", "0.0.0.0", "--port", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("API key"), "{err}");
    let out = std::process::Command::new(server_binary())
        .args(["--cors-origin", "*", "--port", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--cors-origin"));
    // A flag that does not exist: clap's usage error, also 2.
    let out = std::process::Command::new(server_binary())
        .arg("--no-such-flag")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// Bodies over the cap get 413, questions over the cap 400 naming `question`.
#[test]
fn oversized_bodies_and_questions() {
    let s = shared();
    let p = s.port;
    let big = vec![b' '; 1_100_000];
    let (status, _, text) = raw(
        p,
        &format!("POST /v1/chat/completions HTTP/1.1\nHost: 127.0.0.1:{p}\nContent-Type: application/json"),
        &big,
    );
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("larger than this server takes"), "{text}");
    let (status, body) = post_json(
        &s.url("/v1/agent/runs"),
        &json!({"question": "why? ".repeat(1000)}),
    );
    assert_eq!(status, 400);
    assert_eq!(body["error"]["param"], "question", "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("at most 4000"));
}

/// Malformed JSON and wrong types get 400 naming the field.
#[test]
fn malformed_json_and_wrong_types_name_the_field() {
    let s = shared();
    let runs = s.url("/v1/agent/runs");
    let chat = s.url("/v1/chat/completions");
    let p = s.port;
    let (status, _, text) = raw(
        p,
        &format!(
            "POST /v1/agent/runs HTTP/1.1\nHost: 127.0.0.1:{p}\nContent-Type: application/json"
        ),
        b"{\"question\": ",
    );
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("malformed JSON"), "{text}");
    let cases = [
        (&runs, json!({"question": 5}), "question"),
        (&runs, json!({}), "question"),
        (&runs, json!({"question": "  "}), "question"),
        (&runs, json!({"question": "hi", "sag": "many"}), "sag"),
        (&runs, json!({"question": "hi", "sag": 99}), "sag"),
        (
            &runs,
            json!({"question": "hi", "max_steps": 0}),
            "max_steps",
        ),
        (
            &runs,
            json!({"question": "hi", "repeat_retries": 9}),
            "repeat_retries",
        ),
        (
            &runs,
            json!({"question": "hi", "grammar": "yes"}),
            "grammar",
        ),
        (
            &runs,
            json!({"question": "hi", "temprature": 0.5}),
            "temprature",
        ),
        (&runs, json!({"question": "hi", "python": "ruby"}), "python"),
        (
            &runs,
            json!({"question": "hi", "conversation_id": "../x"}),
            "conversation_id",
        ),
        (&chat, json!({}), "messages"),
        (&chat, json!({"messages": "hello"}), "messages"),
        (&chat, json!({"messages": []}), "messages"),
        (
            &chat,
            json!({"messages": [{"role": "user", "content": 3}]}),
            "messages[0].content",
        ),
        (
            &chat,
            json!({"messages": [{"role": "tool", "content": "x"}]}),
            "messages[0].role",
        ),
        (
            &chat,
            json!({"messages": [{"role": "user", "content": "x"}], "n": "two"}),
            "n",
        ),
        (
            &chat,
            json!({"messages": [{"role": "user", "content": "x"}], "n": 0}),
            "n",
        ),
        (
            &chat,
            json!({"messages": [{"role": "user", "content": "x"}], "temperature": 9}),
            "temperature",
        ),
        (
            &chat,
            json!({"messages": [{"role": "user", "content": "x"}], "stop": 7}),
            "stop",
        ),
        (
            &chat,
            json!({"messages": [{"role": "user", "content": "x"}], "continue_final_message": true}),
            "continue_final_message",
        ),
    ];
    for (url, body, field) in cases {
        let (status, reply) = post_json(url, &body);
        assert_eq!(status, 400, "{body} -> {reply}");
        assert_eq!(reply["error"]["param"], field, "{body} -> {reply}");
        assert!(
            reply["error"]["message"].as_str().unwrap().contains(field),
            "{body} -> {reply}"
        );
    }
}

/// Only the embedded files are served; the page loads nothing from elsewhere.
#[test]
fn only_embedded_files_are_served() {
    let s = shared();
    let p = s.port;
    for path in [
        "/index.html/../Cargo.toml",
        "/../../Cargo.toml",
        "/%2e%2e/%2e%2e/Cargo.toml",
        "/static/index.html",
        "/etc/passwd",
        "/src/main.rs",
    ] {
        let (status, _, body) = raw(p, &format!("GET {path} HTTP/1.1\nHost: 127.0.0.1:{p}"), b"");
        assert!(status == 404 || status == 400, "{path}: {status} {body}");
        assert!(!body.contains("[package]"), "{path} leaked a file");
    }
    for (path, ctype) in [
        ("/", "text/html"),
        ("/app.js", "text/javascript"),
        ("/style.css", "text/css"),
    ] {
        let r = ureq::get(&s.url(path)).call().unwrap();
        assert!(r.header("content-type").unwrap().starts_with(ctype));
        let csp = r.header("content-security-policy").unwrap().to_owned();
        assert!(csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"));
        let body = r.into_string().unwrap();
        for outside in [
            "src=\"http",
            "href=\"http",
            "url(http",
            "import(",
            "@import",
        ] {
            assert!(!body.contains(outside), "{path} refers outside: {outside}");
        }
    }
    let r = ureq::get(&s.url("/v1/nothing")).call();
    assert!(matches!(r, Err(ureq::Error::Status(404, _))));
    let r = ureq::get(&s.url("/v1/chat/completions")).call();
    assert!(matches!(r, Err(ureq::Error::Status(405, _))));
}
