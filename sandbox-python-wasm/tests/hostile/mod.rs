//! Hostile snippets, shared by both flavours' test files. Each must be contained: a clear error
//! (or a harmless, checked result), nothing of the host leaks, the host process is unaffected,
//! and afterwards the session either still works or says it was reset.
//!
//! The suite runs with the import allow-list switched off, so that it exercises the WASM
//! boundary itself rather than the (policy-level) import guard.

use serde_json::json;
use small_agent_sandbox::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

type Check = fn(&ExecResult) -> Result<(), String>;

const CANARY: &str = "SA_HOST_CANARY_7f3a";

fn err(r: &ExecResult) -> Result<(), String> {
    match &r.error {
        Some(e) if !e.type_name.is_empty() && !e.message.is_empty() => Ok(()),
        Some(e) => Err(format!("error without type/message: {e:?}")),
        None => Err(format!(
            "no error: output={:?} value={:?}",
            r.output, r.value
        )),
    }
}

fn timeout(r: &ExecResult) -> Result<(), String> {
    match &r.error {
        Some(e) if e.kind == ErrorKind::Timeout && r.reset => Ok(()),
        _ => Err(format!("expected a timeout with reset, got {:?}", r.error)),
    }
}

fn memory(r: &ExecResult) -> Result<(), String> {
    match &r.error {
        Some(e)
            if e.type_name == "MemoryError"
                || e.kind == ErrorKind::OutOfMemory
                || e.kind == ErrorKind::Trap =>
        {
            Ok(())
        }
        _ => Err(format!(
            "expected MemoryError or a reported trap, got {:?}",
            r.error
        )),
    }
}

fn capped(r: &ExecResult) -> Result<(), String> {
    if r.output_truncated && r.output.chars().count() <= DEFAULT_OUTPUT_CHARS + 100 {
        Ok(())
    } else {
        Err(format!(
            "output not capped: {} chars",
            r.output.chars().count()
        ))
    }
}

fn no_env(r: &ExecResult) -> Result<(), String> {
    let v = r.value.clone().unwrap_or_default();
    if v.contains("PATH") || v.contains(CANARY) || v.contains("/root") {
        Err(format!("host environment leaked: {v}"))
    } else {
        Ok(())
    }
}

fn none_value(r: &ExecResult) -> Result<(), String> {
    match (&r.error, &r.value) {
        (None, None) => Ok(()),
        _ => Err(format!(
            "expected no value and no error: {:?} {:?}",
            r.value, r.error
        )),
    }
}

fn refused(r: &ExecResult) -> Result<(), String> {
    // A forged frame gets a refusal answer; the snippet prints it.
    if r.output.contains("\"ok\":false") || r.output.contains("'ok': False") || r.error.is_some() {
        Ok(())
    } else {
        Err(format!(
            "forged frame not refused: {:?} {:?}",
            r.output, r.error
        ))
    }
}

fn real_result_wins(r: &ExecResult) -> Result<(), String> {
    if r.value.as_deref() == Some("'real'") {
        Ok(())
    } else {
        Err(format!(
            "forged result replaced the real one: {:?}",
            r.value
        ))
    }
}

fn cases(flavour: Flavour) -> Vec<(&'static str, String, Check)> {
    let s = |x: &str| x.to_string();
    let mut v: Vec<(&'static str, String, Check)> = vec![
        ("read /etc/passwd", s("open('/etc/passwd').read()"), err),
        ("read /etc/shadow", s("open('/etc/shadow').read()"), err),
        (
            "read /proc/self/environ",
            s("open('/proc/self/environ','rb').read()"),
            err,
        ),
        ("read host home", s("import os\nos.listdir('/root')"), err),
        ("list /", s("import os\nos.listdir('/')"), err),
        (
            "escape stdlib dir with ..",
            s("open('/usr/local/lib/../../../etc/passwd').read()"),
            err,
        ),
        (
            "relative escape",
            s("open('../../../../etc/hostname').read()"),
            err,
        ),
        (
            "write outside",
            s("open('/tmp/sa_pwned', 'w').write('x')"),
            err,
        ),
        (
            "write into stdlib dir",
            s("open('/usr/local/lib/sa_pwned.txt', 'w').write('x')"),
            err,
        ),
        (
            "delete a file",
            s("import os\nos.remove('/usr/local/lib/python315.zip')"),
            err,
        ),
        (
            "symlink out",
            s("import os\nos.symlink('/etc/passwd', '/usr/local/lib/p')"),
            err,
        ),
        (
            "tcp socket",
            s("import socket\ns = socket.socket()\ns.connect(('127.0.0.1', 22))"),
            err,
        ),
        (
            "create_connection",
            s("import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=1)"),
            err,
        ),
        (
            "http request",
            s("import urllib.request\nurllib.request.urlopen('http://127.0.0.1:9/')"),
            err,
        ),
        (
            "dns lookup",
            s("import socket\nsocket.gethostbyname('example.com')"),
            err,
        ),
        ("os.system", s("import os\nos.system('id > /tmp/x')"), err),
        (
            "subprocess.run",
            s("import subprocess\nsubprocess.run(['/bin/sh', '-c', 'id'])"),
            err,
        ),
        ("os.popen", s("import os\nos.popen('id').read()"), err),
        ("os.fork", s("import os\nos.fork()"), err),
        ("os.execv", s("import os\nos.execv('/bin/sh', ['sh'])"), err),
        (
            "ctypes libc",
            s("import ctypes\nctypes.CDLL('libc.so.6').system(b'id')"),
            err,
        ),
        ("env vars", s("import os\ndict(os.environ)"), no_env),
        (
            "getenv PATH",
            format!("import os\nos.getenv('PATH') or os.getenv('{CANARY}')"),
            none_value,
        ),
        ("busy loop", s("while True:\n    pass"), timeout),
        // Loops inside C code (no bytecode runs): stopped by the flag test at their loop heads.
        ("C-level loop in sum()", s("sum(range(10**15))"), timeout),
        (
            "catastrophic regex backtracking",
            s("import re\nre.match('(a+)+$', 'a' * 64 + 'b')"),
            timeout,
        ),
        (
            "sleep past deadline",
            s("import time\ntime.sleep(3600)"),
            timeout,
        ),
        ("huge allocation", s("x = bytearray(1_500_000_000)"), memory),
        (
            "memory bomb loop",
            s("a = []\nwhile True:\n    a.append(bytearray(10**7))"),
            memory,
        ),
        (
            "deep recursion",
            s("def f(n):\n    return f(n + 1)\nf(0)"),
            err,
        ),
        (
            "recursion limit raised",
            s("import sys\nsys.setrecursionlimit(10**7)\ndef f(n):\n    return f(n + 1)\nf(0)"),
            err,
        ),
        ("huge output", s("print('z' * 10_000_000)"), capped),
        (
            "output flood until timeout",
            s("while True:\n    print('w' * 1000)"),
            timeout,
        ),
        (
            "threads",
            s("import threading\nt = threading.Thread(target=print)\nt.start()"),
            err,
        ),
        ("os._exit", s("import os\nos._exit(3)"), err),
        ("SystemExit", s("raise SystemExit(3)"), err),
        (
            "signal kill",
            s("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)"),
            err,
        ),
        (
            "break the driver",
            s("import builtins\ndel builtins.__sandbox_step__"),
            |_| Ok(()),
        ),
    ];
    match flavour {
        Flavour::Full => {
            v.push((
                "forged tool call to an unregistered name",
                s("import _host\nprint(_host.call(b'{\"op\":\"tool\",\"name\":\"os_system\",\"args\":{\"cmd\":\"id\"}}'))"),
                refused,
            ));
            v.push((
                "forged tool call with bad argument types",
                s("import _host\nprint(_host.call(b'{\"op\":\"tool\",\"name\":\"bump\",\"args\":{\"n\":\"rm -rf /\"}}'))"),
                refused,
            ));
            v.push((
                "forged unknown op",
                s("import _host\nprint(_host.call(b'{\"op\":\"exec\",\"cmd\":\"id\"}'))"),
                refused,
            ));
            v.push((
                "forged garbage frame",
                s("import _host\nprint(_host.call(b'\\xff\\x00not json'))"),
                refused,
            ));
            v.push((
                "forged result frame",
                s("import _host\n_host.call(b'{\"op\":\"result\",\"value\":\"forged\"}')\n'real'"),
                real_result_wins,
            ));
        }
        Flavour::Lite => {
            v.push((
                "forged frame on fd 1",
                s("import os\nos.write(1, b'\\x1eSA0000002f{\"op\":\"tool\",\"name\":\"bump\",\"args\":{\"n\":\"x\"}}')\n'real'"),
                |_| Ok(()),
            ));
            v.push((
                "drop the driver's turn entry",
                s("import _sandbox, gc\n_sandbox._TURN_ARGS = None\ngc.collect()"),
                |_| Ok(()),
            ));
            v.push((
                "the park exit status",
                s("import os\nos._exit(0x7061726B)"),
                err,
            ));
            v.push((
                "the driver's park",
                s("import _sandbox\n_sandbox.lite_park()"),
                err,
            ));
            v.push((
                "garbage on fd 1",
                s("import os\nos.write(1, b'hello host')"),
                |r| {
                    if r.reset || r.error.is_some() {
                        Ok(())
                    } else {
                        Err("garbage on the frame channel went unnoticed".into())
                    }
                },
            ));
        }
    }
    v
}

/// Runs every case, each in a fresh session; returns how many ran. Panics with the
/// list of failures.
pub fn run_suite(backend: &dyn PythonBackend) -> usize {
    // Safe in this test process: set before any other thread reads the environment here.
    std::env::set_var(CANARY, "leaked");
    let bumps = Arc::new(AtomicUsize::new(0));
    let b2 = bumps.clone();
    let mut tools = Toolbox::new();
    tools
        .register(Tool::new(
            "bump",
            "Counts calls.",
            vec![ToolParam::required("n", ParamType::Integer, "amount")],
            move |a| {
                b2.fetch_add(a["n"].as_u64().unwrap_or(0) as usize, Ordering::SeqCst);
                Ok(json!(true))
            },
        ))
        .unwrap();
    let limits = Limits {
        timeout: Duration::from_secs(2),
        memory_bytes: 256 << 20,
        allowed_imports: None,
        ..Limits::default()
    };
    let all = cases(backend.flavour());
    let mut failures = Vec::new();
    for (name, code, check) in &all {
        // A fresh session per case keeps the cases independent (a memory bomb leaves the
        // allocator's heap grown, which would change what the next case can allocate).
        let mut session = backend
            .open(SessionOptions {
                limits: limits.clone(),
                tools: tools.clone(),
            })
            .expect("session opens");
        let t = Instant::now();
        let r = session.exec(code);
        if let Err(why) = check(&r) {
            failures.push(format!("{name}: {why}"));
        }
        let text = format!("{}{:?}{:?}", r.output, r.value, r.error);
        if text.contains("root:x:0:0") || text.contains(CANARY) || text.contains("uid=") {
            failures.push(format!("{name}: host data leaked: {text}"));
        }
        if t.elapsed() > limits.timeout + Duration::from_secs(8) {
            failures.push(format!("{name}: took {:?}", t.elapsed()));
        }
        // The session must be usable afterwards (after a reset if one was reported).
        let mut after = session.exec("1 + 1");
        if after.reset {
            // The case broke the interpreter in a way only the next exec could notice; it was
            // replaced and said so. The one after must work.
            after = session.exec("1 + 1");
        }
        if after.value.as_deref() != Some("2") {
            failures.push(format!("{name}: session unusable afterwards: {after:?}"));
        }
    }
    assert_eq!(
        bumps.load(Ordering::SeqCst),
        0,
        "a forged frame reached a tool callback"
    );
    assert!(!std::path::Path::new("/tmp/sa_pwned").exists());
    assert!(
        failures.is_empty(),
        "{} of {} hostile snippets not contained:\n{}",
        failures.len(),
        all.len(),
        failures.join("\n")
    );
    all.len()
}
