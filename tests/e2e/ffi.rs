//! The C ABI: the checked-in header against a fresh cbindgen run, the C, Python and Rust
//! examples against the real default model, and the hardening contract (NULLs, invalid
//! UTF-8, out-params untouched on error, cancel, many threads under AddressSanitizer).
use std::{
    ffi::{c_char, CStr, CString},
    path::{Path, PathBuf},
    process::Command,
    ptr,
    sync::OnceLock,
};

use small_agent::ffi::*;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `target/release`: the test binary lives in its `deps/`.
fn release_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

fn lib_path() -> PathBuf {
    let p = release_dir().join("libsmall_agent.so");
    assert!(
        p.exists(),
        "{} is missing: `cargo test --release` builds it with the runtime crate",
        p.display()
    );
    p
}

fn generate_header() -> String {
    let crate_dir = repo_root().join("runtime");
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).unwrap();
    let mut out = Vec::new();
    cbindgen::Builder::new()
        .with_crate(&crate_dir)
        .with_config(config)
        .generate()
        .expect("cbindgen could not generate the header")
        .write(&mut out);
    String::from_utf8(out).unwrap()
}

#[test]
fn checked_in_header_matches_a_fresh_generation() {
    let fresh = generate_header();
    let path = repo_root().join("runtime/include/small_agent.h");
    if std::env::var_os("SMALL_AGENT_UPDATE_HEADER").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &fresh).unwrap();
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == fresh,
        "{} differs from what cbindgen generates from runtime/src/ffi.rs: regenerate it with \
         `SMALL_AGENT_UPDATE_HEADER=1 cargo test --release -p small-agent --test e2e header` \
         and commit it",
        path.display()
    );
}

/// Runs a command, returning stdout; fails the test with its stderr when it fails.
fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Installs the library with `scripts/install-lib.sh` into a fresh prefix.
fn install_prefix() -> tempfile::TempDir {
    let prefix = tempfile::tempdir().unwrap();
    run_ok(
        Command::new(repo_root().join("scripts/install-lib.sh"))
            .args(["--no-build", "--prefix"])
            .arg(prefix.path())
            .env("CARGO_TARGET_DIR", release_dir().parent().unwrap()),
    );
    prefix
}

fn pkg_config(prefix: &Path, args: &[&str]) -> Vec<String> {
    let out = run_ok(
        Command::new("pkg-config")
            .args(args)
            .arg("small_agent")
            .env("PKG_CONFIG_PATH", prefix.join("lib/pkgconfig")),
    );
    out.split_whitespace().map(str::to_owned).collect()
}

const QUESTION: &str = "What is 17 multiplied by 23?";

#[test]
fn examples_in_c_python_and_rust_give_the_same_answer() {
    let _ = lib_path();
    let prefix = install_prefix();
    let root = repo_root();
    // C99, strict, through pkg-config.
    let exe = prefix.path().join("ask");
    let mut cc = Command::new("cc");
    cc.args(["-std=c99", "-Wall", "-Wextra", "-Wpedantic", "-Werror"])
        .arg(root.join("examples/c/ask.c"))
        .args(pkg_config(prefix.path(), &["--cflags", "--libs"]))
        .arg(format!(
            "-Wl,-rpath,{}",
            prefix.path().join("lib").display()
        ))
        .arg("-o")
        .arg(&exe);
    run_ok(&mut cc);
    let c_answer = run_ok(Command::new(&exe).arg(QUESTION));

    let py_answer = run_ok(
        Command::new("python3")
            .arg(root.join("examples/python/ask.py"))
            .arg(QUESTION)
            .env(
                "SMALL_AGENT_LIB",
                prefix.path().join("lib/libsmall_agent.so"),
            ),
    );
    let rust_example = release_dir().join("examples/ask");
    assert!(
        rust_example.exists(),
        "{} is missing: `cargo test --release -p small-agent` builds the examples",
        rust_example.display()
    );
    let rust_answer = run_ok(Command::new(&rust_example).arg(QUESTION));

    assert!(
        !c_answer.trim().is_empty(),
        "the C example printed no answer"
    );
    // Same library, same default (greedy) settings: the three must agree to the byte.
    assert_eq!(c_answer, py_answer, "C and Python examples disagree");
    assert_eq!(c_answer, rust_answer, "C and Rust examples disagree");
}

#[test]
fn c_example_links_statically_too() {
    let prefix = install_prefix();
    let exe = prefix.path().join("ask-static");
    let mut cc = Command::new("cc");
    cc.args(["-std=c99", "-Wall", "-Werror"])
        .arg(repo_root().join("examples/c/ask.c"))
        .args(pkg_config(prefix.path(), &["--cflags"]))
        .arg(prefix.path().join("lib/libsmall_agent.a"))
        .args(
            pkg_config(prefix.path(), &["--static", "--libs"])
                .into_iter()
                .filter(|a| a != "-lsmall_agent"),
        )
        .arg("-o")
        .arg(&exe);
    run_ok(&mut cc);
    // Without a question it must print its usage and exit 2, without loading anything.
    let out = Command::new(&exe).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage"));
}

fn last_error() -> String {
    unsafe { CStr::from_ptr(sa_last_error_message()) }
        .to_string_lossy()
        .into_owned()
}

/// One runtime for the hardening tests (the default model and shard, one thread), kept for
/// the life of the test process.
fn shared_runtime() -> *const sa_runtime {
    static RUNTIME: OnceLock<usize> = OnceLock::new();
    *RUNTIME.get_or_init(|| {
        let mut p = sa_runtime_default_params();
        p.threads = 1;
        let mut rt = ptr::null_mut();
        let st = unsafe { sa_runtime_new(&p, &mut rt) };
        assert_eq!(st, sa_status::SA_OK, "{}", last_error());
        rt as usize
    }) as *const sa_runtime
}

fn new_session(rt: *const sa_runtime) -> *mut sa_session {
    let mut s = ptr::null_mut();
    let st = unsafe { sa_session_new(rt, ptr::null(), &mut s) };
    assert_eq!(st, sa_status::SA_OK, "{}", last_error());
    s
}

/// A pointer value no call may write over when it fails.
fn sentinel<T>() -> *mut T {
    0x5A5A_5A50usize as *mut T
}

#[test]
fn every_function_refuses_null_arguments() {
    unsafe {
        // Version and names need no arguments and are static.
        assert!(!CStr::from_ptr(sa_version()).to_bytes().is_empty());
        assert_eq!(
            CStr::from_ptr(sa_status_name(sa_status::SA_CANCELLED as i32)).to_str(),
            Ok("SA_CANCELLED")
        );
        assert_eq!(
            CStr::from_ptr(sa_status_name(-7)).to_str(),
            Ok("SA_UNKNOWN")
        );
        assert_eq!(
            sa_runtime_new(ptr::null(), ptr::null_mut()),
            sa_status::SA_NULL_ARGUMENT
        );
        assert!(last_error().contains("out is NULL"), "{}", last_error());

        let mut s: *mut sa_session = sentinel();
        assert_eq!(
            sa_session_new(ptr::null(), ptr::null(), &mut s),
            sa_status::SA_NULL_ARGUMENT
        );
        assert_eq!(s, sentinel(), "out-param written on error");
        let rt = shared_runtime();
        assert_eq!(
            sa_session_new(rt, ptr::null(), ptr::null_mut()),
            sa_status::SA_NULL_ARGUMENT
        );
        assert_eq!(sa_cancel(ptr::null()), sa_status::SA_NULL_ARGUMENT);

        let session = new_session(rt);
        let q = CString::new("What is 2 + 2?").unwrap();
        let mut answer: *mut c_char = sentinel();
        let mut traj: *mut c_char = sentinel();
        assert_eq!(
            sa_ask(ptr::null(), q.as_ptr(), &mut answer, &mut traj),
            sa_status::SA_NULL_ARGUMENT
        );
        assert_eq!(
            sa_ask(session, ptr::null(), &mut answer, &mut traj),
            sa_status::SA_NULL_ARGUMENT
        );
        assert!(
            last_error().contains("question is NULL"),
            "{}",
            last_error()
        );
        assert_eq!(
            sa_ask(session, q.as_ptr(), ptr::null_mut(), &mut traj),
            sa_status::SA_NULL_ARGUMENT
        );
        assert_eq!(
            sa_ask_stream(
                session,
                ptr::null(),
                None,
                ptr::null_mut(),
                &mut answer,
                ptr::null_mut()
            ),
            sa_status::SA_NULL_ARGUMENT
        );
        assert_eq!((answer, traj), (sentinel(), sentinel()));
        // Frees accept NULL.
        sa_string_free(ptr::null_mut());
        sa_session_free(ptr::null_mut());
        sa_runtime_free(ptr::null_mut());
        sa_session_free(session);
    }
}

#[test]
fn invalid_utf8_and_bad_params_are_refused_with_the_fix() {
    unsafe {
        let rt = shared_runtime();
        let session = new_session(rt);
        let bad = CString::new(vec![b'W', b'h', 0xff, b'?']).unwrap();
        let mut answer: *mut c_char = sentinel();
        assert_eq!(
            sa_ask(session, bad.as_ptr(), &mut answer, ptr::null_mut()),
            sa_status::SA_INVALID_UTF8
        );
        assert!(last_error().contains("offset 2"), "{}", last_error());
        assert_eq!(answer, sentinel());

        let mut p = sa_runtime_default_params();
        p.model_path = bad.as_ptr();
        let mut out: *mut sa_runtime = sentinel();
        assert_eq!(sa_runtime_new(&p, &mut out), sa_status::SA_INVALID_UTF8);
        assert!(last_error().contains("model_path"), "{}", last_error());

        let missing = CString::new("/nonexistent/model.gguf").unwrap();
        p.model_path = missing.as_ptr();
        assert_eq!(sa_runtime_new(&p, &mut out), sa_status::SA_ASSET_MISSING);
        assert!(last_error().contains("does not exist"), "{}", last_error());

        let mut p = sa_runtime_default_params();
        p.python = 7;
        assert_eq!(sa_runtime_new(&p, &mut out), sa_status::SA_INVALID_ARGUMENT);
        assert!(last_error().contains("SA_PYTHON_FULL"), "{}", last_error());

        let mut p = sa_runtime_default_params();
        p.struct_size = 4096;
        assert_eq!(sa_runtime_new(&p, &mut out), sa_status::SA_INVALID_ARGUMENT);
        assert!(last_error().contains("struct_size"), "{}", last_error());
        assert_eq!(out, sentinel());

        let mut sp = sa_session_default_params();
        sp.sag = 0;
        let mut s: *mut sa_session = sentinel();
        assert_eq!(
            sa_session_new(rt, &sp, &mut s),
            sa_status::SA_INVALID_ARGUMENT
        );
        assert_eq!(s, sentinel());
        sa_session_free(session);
    }
}

#[test]
fn a_question_longer_than_the_context_is_an_overflow_naming_the_sizes() {
    unsafe {
        let session = new_session(shared_runtime());
        let long = CString::new("why ".repeat(6000)).unwrap();
        let mut answer: *mut c_char = sentinel();
        let st = sa_ask(session, long.as_ptr(), &mut answer, ptr::null_mut());
        assert_eq!(st, sa_status::SA_CONTEXT_OVERFLOW, "{}", last_error());
        assert!(last_error().contains("4096"), "{}", last_error());
        assert_eq!(answer, sentinel());
        sa_session_free(session);
    }
}

#[test]
fn cancel_before_during_and_after_a_run() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    unsafe {
        let session = new_session(shared_runtime());
        let q = CString::new("Who wrote the novel Dracula?").unwrap();
        // A cancel with no run going stops the next one, and only that one.
        assert_eq!(sa_cancel(session), sa_status::SA_OK);
        let mut answer: *mut c_char = sentinel();
        assert_eq!(
            sa_ask(session, q.as_ptr(), &mut answer, ptr::null_mut()),
            sa_status::SA_CANCELLED
        );
        assert_eq!(answer, sentinel());

        // During a run, from another thread, once the first tokens arrived.
        static TOKENS: AtomicUsize = AtomicUsize::new(0);
        unsafe extern "C" fn count(
            kind: sa_event_kind,
            _text: *const c_char,
            _len: usize,
            _user: *mut std::ffi::c_void,
        ) {
            if kind == sa_event_kind::SA_EVENT_TOKEN {
                TOKENS.fetch_add(1, Ordering::SeqCst);
            }
        }
        let addr = session as usize;
        let canceller = std::thread::spawn(move || {
            let t = std::time::Instant::now();
            while TOKENS.load(Ordering::SeqCst) < 3 && t.elapsed().as_secs() < 120 {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            sa_cancel(addr as *const sa_session)
        });
        let st = sa_ask_stream(
            session,
            q.as_ptr(),
            Some(count),
            ptr::null_mut(),
            &mut answer,
            ptr::null_mut(),
        );
        assert_eq!(canceller.join().unwrap(), sa_status::SA_OK);
        assert_eq!(st, sa_status::SA_CANCELLED, "{}", last_error());
        assert_eq!(answer, sentinel());
        let tokens_at_cancel = TOKENS.load(Ordering::SeqCst);
        assert!(
            tokens_at_cancel < 40,
            "generation went on long after the cancel: {tokens_at_cancel} tokens"
        );

        // After a cancel the session works again, with an answer and a trajectory.
        let mut traj: *mut c_char = ptr::null_mut();
        let st = sa_ask(session, q.as_ptr(), &mut answer, &mut traj);
        assert_eq!(st, sa_status::SA_OK, "{}", last_error());
        let t: serde_json::Value =
            serde_json::from_str(CStr::from_ptr(traj).to_str().unwrap()).unwrap();
        assert_eq!(t["question"], "Who wrote the novel Dracula?");
        assert_eq!(
            t["generated_answer"].as_str().unwrap(),
            CStr::from_ptr(answer).to_str().unwrap()
        );
        sa_string_free(answer);
        sa_string_free(traj);
        sa_session_free(session);
    }
}

#[test]
fn cancel_stops_code_that_loops_forever_at_the_next_tick() {
    // The sandbox side of sa_cancel: a snippet that never ends is stopped by the flag well
    // before its 10 s timeout.
    let backend = small_agent::assets::python_backend(small_agent_sandbox::Flavour::Full).unwrap();
    let limits = small_agent_sandbox::Limits::default();
    let cancel = limits.cancel.clone();
    let mut py = backend
        .open(small_agent_sandbox::SessionOptions {
            limits,
            tools: Default::default(),
        })
        .unwrap();
    assert_eq!(py.exec("x = 41").error, None);
    let t = std::time::Instant::now();
    let raiser = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        cancel.raise();
        cancel
    });
    let r = py.exec("while True:\n    pass");
    let cancel = raiser.join().unwrap();
    let e = r.error.expect("the loop was not stopped");
    assert_eq!(e.kind, small_agent_sandbox::ErrorKind::Cancelled, "{e}");
    assert!(
        t.elapsed() < small_agent_sandbox::DEFAULT_TIMEOUT,
        "stopped by the timeout, not the cancel"
    );
    // Lowered, the session runs again on a fresh interpreter.
    cancel.lower();
    let r = py.exec("1 + 1");
    assert_eq!(r.error, None);
    assert_eq!(r.value.as_deref(), Some("2"));
}

/// The C hardening program under AddressSanitizer (+ LeakSanitizer, UBSan on the C side):
/// 8 threads, each with its own session on one shared runtime, several asks each, cancels
/// from other threads, NULLs and invalid UTF-8.
#[test]
fn c_stress_under_address_sanitizer() {
    let prefix = install_prefix();
    let exe = prefix.path().join("stress");
    let mut cc = Command::new("cc");
    cc.args([
        "-std=c11",
        "-g",
        "-O1",
        "-Wall",
        "-Werror",
        "-fsanitize=address,undefined",
        "-fno-omit-frame-pointer",
    ])
    .arg(repo_root().join("tests/c/stress.c"))
    .args(pkg_config(prefix.path(), &["--cflags", "--libs"]))
    .arg("-lpthread")
    .arg(format!(
        "-Wl,-rpath,{}",
        prefix.path().join("lib").display()
    ))
    .arg("-o")
    .arg(&exe);
    run_ok(&mut cc);
    let out = Command::new(&exe)
        .env(
            "ASAN_OPTIONS",
            "detect_leaks=1:halt_on_error=1:handle_segv=0:allow_user_segv_handler=1:\
             detect_stack_use_after_return=0",
        )
        .env("UBSAN_OPTIONS", "halt_on_error=1:print_stacktrace=1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && !stderr.contains("Sanitizer") && !stderr.contains("runtime error:"),
        "stress program failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    assert!(stdout.contains("stress: ok"), "{stdout}");
}

#[test]
fn a_second_concurrent_ask_on_one_session_is_busy() {
    use std::sync::atomic::{AtomicBool, Ordering};
    static GENERATING: AtomicBool = AtomicBool::new(false);
    unsafe extern "C" fn mark(
        _kind: sa_event_kind,
        _text: *const c_char,
        _len: usize,
        _user: *mut std::ffi::c_void,
    ) {
        GENERATING.store(true, Ordering::SeqCst);
    }
    unsafe {
        let session = new_session(shared_runtime());
        let addr = session as usize;
        let intruder = std::thread::spawn(move || {
            let t = std::time::Instant::now();
            while !GENERATING.load(Ordering::SeqCst) && t.elapsed().as_secs() < 120 {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            let q = CString::new("Another question?").unwrap();
            let mut answer: *mut c_char = sentinel();
            let st = sa_ask(
                addr as *const sa_session,
                q.as_ptr(),
                &mut answer,
                ptr::null_mut(),
            );
            let message = last_error();
            sa_cancel(addr as *const sa_session);
            (st, answer as usize, message)
        });
        let q = CString::new("Who discovered penicillin?").unwrap();
        let mut answer: *mut c_char = sentinel();
        let st = sa_ask_stream(
            session,
            q.as_ptr(),
            Some(mark),
            ptr::null_mut(),
            &mut answer,
            ptr::null_mut(),
        );
        let (busy, untouched, message) = intruder.join().unwrap();
        assert_eq!(busy, sa_status::SA_BUSY, "{message}");
        assert!(message.contains("one session per thread"), "{message}");
        assert_eq!(untouched, sentinel::<c_char>() as usize);
        // The intruder cancelled the first ask after being turned away.
        assert_eq!(st, sa_status::SA_CANCELLED, "{}", last_error());
        sa_session_free(session);
    }
}
