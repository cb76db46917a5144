//! The C ABI (`include/small_agent.h`, generated from this file by cbindgen).
//!
//! Shape: opaque handles (`sa_runtime`, `sa_session`), parameter structs returned by value from
//! `sa_*_default_params()` with a `struct_size` field, an `sa_status` from every fallible
//! function, results through out-params that stay untouched on error, the last failure's
//! message per thread, a `*_free` for every handle and every returned string, and a panic
//! boundary on every export.
//!
//! Thread safety: an `sa_runtime` may be shared by any number of threads. An `sa_session` is
//! used by one thread at a time (a second concurrent `sa_ask` on it fails with `SA_BUSY`);
//! `sa_cancel` is the exception and may be called from any thread at any time while the
//! session exists.
#![allow(non_camel_case_types)]

use std::{
    cell::RefCell,
    ffi::{c_char, c_void, CStr, CString},
    panic::{catch_unwind, AssertUnwindSafe},
    path::PathBuf,
    ptr,
    sync::Mutex,
    time::Duration,
};

use small_agent_sandbox::{CancelFlag, Flavour, Limits};

use crate::{
    agent::{trajectory_record, AgentConfig, AgentError, AgentEvent, AgentRun, RunFailure},
    assets::AssetError,
    embed::{AgentSession, Runtime, RuntimeConfig, RuntimeError, SessionConfig, ShardChoice},
    engine::{EngineError, SamplingParams},
};

/// Outcome of a call. Everything but `SA_OK` leaves the out-params untouched and sets the
/// thread's `sa_last_error_message()`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum sa_status {
    /// Success.
    SA_OK = 0,
    /// A required pointer argument was NULL.
    SA_NULL_ARGUMENT = 1,
    /// A string argument was not valid UTF-8.
    SA_INVALID_UTF8 = 2,
    /// An argument is out of range (a params struct of an unknown size, a negative count, …).
    SA_INVALID_ARGUMENT = 3,
    /// An asset (model, shard, interpreter) is not installed; the message names the command
    /// that installs it.
    SA_ASSET_MISSING = 4,
    /// The model could not be loaded, or generation failed.
    SA_MODEL_ERROR = 5,
    /// The knowledge shard could not be opened (missing, foreign or corrupt).
    SA_INDEX_ERROR = 6,
    /// The Python sandbox could not be loaded or opened.
    SA_SANDBOX_ERROR = 7,
    /// The question (or the conversation) does not fit into the context; the message names
    /// both sizes.
    SA_CONTEXT_OVERFLOW = 8,
    /// The run was cancelled with `sa_cancel`, or by the event callback.
    SA_CANCELLED = 9,
    /// The session is already running an `sa_ask` on another thread.
    SA_BUSY = 10,
    /// A bug: Rust code panicked. The handle involved should be freed, not reused.
    SA_PANIC = 11,
}

/// Which Python interpreter runs the agent's code.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum sa_python {
    /// CPython 3.15 with numpy and sympy compiled in; supports SAG (forks).
    SA_PYTHON_FULL = 0,
    /// CPython 3.12, small, for boards; no SAG.
    SA_PYTHON_LITE = 1,
}

/// What a streaming event carries.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum sa_event_kind {
    /// Generated text of the current step (its first candidate), as it is produced.
    SA_EVENT_TOKEN = 0,
    /// A step ended: `text` is the step record as JSON (thought, code, observation, counts).
    SA_EVENT_STEP = 1,
    /// A step's observation: what the agent sees next (output of its code, or the error).
    SA_EVENT_OBSERVATION = 2,
    /// The current step is generated again: discard the `SA_EVENT_TOKEN` text received since
    /// the step began; `text` says why (its code repeated an earlier step's).
    SA_EVENT_REDO = 3,
}

/// Receives streaming events. `text` is UTF-8, `len` bytes long, followed by a NUL; it is
/// borrowed for the duration of the call only. Called on the thread that called
/// `sa_ask_stream`. It must not call back into the same session (`sa_cancel` excepted).
pub type sa_event_callback = Option<
    unsafe extern "C" fn(
        kind: sa_event_kind,
        text: *const c_char,
        len: usize,
        user_data: *mut c_void,
    ),
>;

/// Settings of a runtime. Get one from `sa_runtime_default_params()` and change fields.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct sa_runtime_params {
    /// `sizeof(sa_runtime_params)` as the caller compiled it (set by the default function).
    pub struct_size: usize,
    /// GGUF model file; NULL loads the fetched default model. Borrowed during the call.
    pub model_path: *const c_char,
    /// Knowledge shard directory; NULL opens the default shard; "" gives the agent no
    /// `web_search` tool. Borrowed during the call.
    pub shard_path: *const c_char,
    /// CPU threads per session; 0 = one per core.
    pub threads: i32,
    /// Context size of each session in tokens (SAG adds room for its candidates).
    pub context_size: u32,
    /// Wall-clock limit of one code execution, in milliseconds.
    pub sandbox_timeout_ms: u32,
    /// Memory cap of the interpreter, in MiB (at least 64).
    pub sandbox_memory_mib: u32,
    /// Interpreter flavour: an `sa_python` value (an int here, so that a bad value is an
    /// error instead of undefined behaviour).
    pub python: i32,
}

/// Settings of a session. Get one from `sa_session_default_params()` and change fields.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct sa_session_params {
    /// `sizeof(sa_session_params)` as the caller compiled it (set by the default function).
    pub struct_size: usize,
    /// Steps before the agent is asked for an answer from what it has.
    pub max_steps: u32,
    /// Candidates per step (self-consistent action generation); 1 = one greedy candidate.
    pub sag: u32,
    /// Constrain replies to the Thought/Code format with the step grammar.
    pub grammar: bool,
    /// Sampling temperature; a negative value keeps the default (greedy for `sag` 1, 0.4
    /// above).
    pub temperature: f32,
    /// Seed of the sampler (candidate i uses seed + i).
    pub seed: u32,
}

/// A loaded model, knowledge shard and interpreter (opaque). Thread-safe.
pub struct sa_runtime {
    runtime: Runtime,
}

/// One conversation on a runtime (opaque). One thread at a time.
pub struct sa_session {
    cancel: CancelFlag,
    session: Mutex<AgentSession>,
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_error(message: &str) {
    let c = CString::new(message.replace('\0', "\u{FFFD}")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

fn fail(status: sa_status, message: impl AsRef<str>) -> sa_status {
    set_error(message.as_ref());
    status
}

/// Runs an export's body behind the panic boundary.
fn guarded(body: impl FnOnce() -> sa_status) -> sa_status {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(s) => s,
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            fail(
                sa_status::SA_PANIC,
                format!("internal error (panic): {what}; please report it"),
            )
        }
    }
}

/// A required string argument: NULL and invalid UTF-8 are errors naming the argument.
unsafe fn required_str<'a>(p: *const c_char, name: &str) -> Result<&'a str, sa_status> {
    if p.is_null() {
        return Err(fail(sa_status::SA_NULL_ARGUMENT, format!("{name} is NULL")));
    }
    optional_str(p, name).map(|s| s.unwrap_or_default())
}

/// An optional string argument: NULL is `None`.
unsafe fn optional_str<'a>(p: *const c_char, name: &str) -> Result<Option<&'a str>, sa_status> {
    if p.is_null() {
        return Ok(None);
    }
    let bytes = CStr::from_ptr(p).to_bytes();
    match std::str::from_utf8(bytes) {
        Ok(s) => Ok(Some(s)),
        Err(e) => Err(fail(
            sa_status::SA_INVALID_UTF8,
            format!(
                "{name} is not valid UTF-8 (bad byte at offset {}): pass UTF-8 text",
                e.valid_up_to()
            ),
        )),
    }
}

/// Reads a versioned params struct: a caller built against an older header passes a shorter
/// struct, whose missing fields keep their defaults.
unsafe fn read_params<T: Copy>(p: *const T, defaults: T, name: &str) -> Result<T, sa_status> {
    if p.is_null() {
        return Ok(defaults);
    }
    let size = ptr::read_unaligned(p as *const usize);
    let ours = std::mem::size_of::<T>();
    if size < std::mem::size_of::<usize>() || size > ours {
        return Err(fail(
            sa_status::SA_INVALID_ARGUMENT,
            format!(
                "{name}.struct_size is {size}, this library knows sizes up to {ours}: \
                 initialise the struct with its sa_*_default_params() function"
            ),
        ));
    }
    let mut out = defaults;
    ptr::copy_nonoverlapping(p as *const u8, &mut out as *mut T as *mut u8, size);
    Ok(out)
}

fn into_c_string(s: &str) -> *mut c_char {
    // Interior NULs cannot cross a C string; they become U+FFFD rather than cutting the text.
    CString::new(s.replace('\0', "\u{FFFD}"))
        .unwrap_or_default()
        .into_raw()
}

fn status_of_runtime_error(e: &RuntimeError) -> sa_status {
    match e {
        RuntimeError::InvalidConfig(_) => sa_status::SA_INVALID_ARGUMENT,
        RuntimeError::Asset(AssetError::Sandbox(_)) => sa_status::SA_SANDBOX_ERROR,
        RuntimeError::Asset(_) => sa_status::SA_ASSET_MISSING,
        RuntimeError::Engine(e) | RuntimeError::Agent(AgentError::Engine(e)) => {
            status_of_engine_error(e)
        }
        RuntimeError::Index(_) => sa_status::SA_INDEX_ERROR,
        RuntimeError::Agent(AgentError::Sandbox(_)) => sa_status::SA_SANDBOX_ERROR,
        // The C ABI runs the local engine only; a remote failure is a model failure.
        RuntimeError::Agent(AgentError::Remote(_)) => sa_status::SA_MODEL_ERROR,
        RuntimeError::Agent(AgentError::Cancelled) | RuntimeError::Cancelled => {
            sa_status::SA_CANCELLED
        }
    }
}

fn status_of_engine_error(e: &EngineError) -> sa_status {
    match e {
        EngineError::ContextOverflow { .. } => sa_status::SA_CONTEXT_OVERFLOW,
        EngineError::ModelNotFound(_) => sa_status::SA_ASSET_MISSING,
        _ => sa_status::SA_MODEL_ERROR,
    }
}

/// The library's version, e.g. `"0.1.0"`. Static storage: never free it.
#[no_mangle]
pub extern "C" fn sa_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr() as *const c_char
}

/// A short constant name of a status (`"SA_OK"`, …; `"SA_UNKNOWN"` for a value that is not
/// an `sa_status`). Static storage: never free it.
#[no_mangle]
pub extern "C" fn sa_status_name(status: i32) -> *const c_char {
    const ALL: [sa_status; 12] = [
        sa_status::SA_OK,
        sa_status::SA_NULL_ARGUMENT,
        sa_status::SA_INVALID_UTF8,
        sa_status::SA_INVALID_ARGUMENT,
        sa_status::SA_ASSET_MISSING,
        sa_status::SA_MODEL_ERROR,
        sa_status::SA_INDEX_ERROR,
        sa_status::SA_SANDBOX_ERROR,
        sa_status::SA_CONTEXT_OVERFLOW,
        sa_status::SA_CANCELLED,
        sa_status::SA_BUSY,
        sa_status::SA_PANIC,
    ];
    let Some(status) = ALL.into_iter().find(|s| *s as i32 == status) else {
        return c"SA_UNKNOWN".as_ptr();
    };
    let s: &'static str = match status {
        sa_status::SA_OK => "SA_OK\0",
        sa_status::SA_NULL_ARGUMENT => "SA_NULL_ARGUMENT\0",
        sa_status::SA_INVALID_UTF8 => "SA_INVALID_UTF8\0",
        sa_status::SA_INVALID_ARGUMENT => "SA_INVALID_ARGUMENT\0",
        sa_status::SA_ASSET_MISSING => "SA_ASSET_MISSING\0",
        sa_status::SA_MODEL_ERROR => "SA_MODEL_ERROR\0",
        sa_status::SA_INDEX_ERROR => "SA_INDEX_ERROR\0",
        sa_status::SA_SANDBOX_ERROR => "SA_SANDBOX_ERROR\0",
        sa_status::SA_CONTEXT_OVERFLOW => "SA_CONTEXT_OVERFLOW\0",
        sa_status::SA_CANCELLED => "SA_CANCELLED\0",
        sa_status::SA_BUSY => "SA_BUSY\0",
        sa_status::SA_PANIC => "SA_PANIC\0",
    };
    s.as_ptr() as *const c_char
}

/// The message of the last failed call on the calling thread ("" when none failed yet).
/// Owned by the library: valid until the next failing call on this thread; do not free it.
#[no_mangle]
pub extern "C" fn sa_last_error_message() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// Frees a string returned by this library. NULL is ignored. Passing any other pointer, or
/// freeing twice, is undefined behaviour.
///
/// # Safety
/// `s` is NULL or a string this library returned and that was not freed yet.
#[no_mangle]
pub unsafe extern "C" fn sa_string_free(s: *mut c_char) {
    if !s.is_null() {
        let _ = catch_unwind(|| drop(CString::from_raw(s)));
    }
}

/// Default runtime settings: the fetched default model, the default shard, one thread per
/// core, a 4096-token context, the full interpreter with a 10 s / 512 MiB limit.
#[no_mangle]
pub extern "C" fn sa_runtime_default_params() -> sa_runtime_params {
    let limits = Limits::default();
    sa_runtime_params {
        struct_size: std::mem::size_of::<sa_runtime_params>(),
        model_path: ptr::null(),
        shard_path: ptr::null(),
        threads: 0,
        context_size: crate::engine::DEFAULT_CTX_SIZE,
        sandbox_timeout_ms: limits.timeout.as_millis() as u32,
        sandbox_memory_mib: (limits.memory_bytes >> 20) as u32,
        python: sa_python::SA_PYTHON_FULL as i32,
    }
}

/// Loads a runtime. `params` may be NULL for the defaults; its strings are borrowed during
/// the call only. On `SA_OK`, `*out` receives a new runtime owned by the caller, to be
/// released with `sa_runtime_free`; on error `*out` is untouched.
///
/// # Safety
/// `params` is NULL or points to an initialised `sa_runtime_params`; `out` is NULL or
/// writable.
#[no_mangle]
pub unsafe extern "C" fn sa_runtime_new(
    params: *const sa_runtime_params,
    out: *mut *mut sa_runtime,
) -> sa_status {
    guarded(|| {
        if out.is_null() {
            return fail(sa_status::SA_NULL_ARGUMENT, "out is NULL");
        }
        let p = match read_params(params, sa_runtime_default_params(), "params") {
            Ok(p) => p,
            Err(s) => return s,
        };
        let model = match optional_str(p.model_path, "params.model_path") {
            Ok(m) => m.map(PathBuf::from),
            Err(s) => return s,
        };
        let shard = match optional_str(p.shard_path, "params.shard_path") {
            Ok(None) => ShardChoice::Default,
            Ok(Some("")) => ShardChoice::None,
            Ok(Some(d)) => ShardChoice::Path(d.into()),
            Err(s) => return s,
        };
        if p.sandbox_timeout_ms == 0 {
            return fail(
                sa_status::SA_INVALID_ARGUMENT,
                "params.sandbox_timeout_ms must be positive",
            );
        }
        let python = match p.python {
            x if x == sa_python::SA_PYTHON_FULL as i32 => Flavour::Full,
            x if x == sa_python::SA_PYTHON_LITE as i32 => Flavour::Lite,
            other => {
                return fail(
                    sa_status::SA_INVALID_ARGUMENT,
                    format!("params.python is {other}: use SA_PYTHON_FULL or SA_PYTHON_LITE"),
                )
            }
        };
        let config = RuntimeConfig {
            model,
            adapter: None,
            shard,
            threads: p.threads,
            context_size: p.context_size,
            python,
            limits: Limits {
                timeout: Duration::from_millis(p.sandbox_timeout_ms as u64),
                memory_bytes: (p.sandbox_memory_mib as usize) << 20,
                ..Limits::default()
            },
        };
        match Runtime::load(&config) {
            Ok(runtime) => {
                *out = Box::into_raw(Box::new(sa_runtime { runtime }));
                sa_status::SA_OK
            }
            Err(e) => fail(status_of_runtime_error(&e), e.to_string()),
        }
    })
}

/// Releases the caller's reference to a runtime. Sessions opened on it stay usable; the
/// model is unloaded when the last of them is freed too. NULL is ignored.
///
/// # Safety
/// `runtime` is NULL or a runtime from `sa_runtime_new` not freed yet; no other thread uses
/// this handle during or after the call (sessions are separate handles).
#[no_mangle]
pub unsafe extern "C" fn sa_runtime_free(runtime: *mut sa_runtime) {
    if !runtime.is_null() {
        let _ = catch_unwind(AssertUnwindSafe(|| drop(Box::from_raw(runtime))));
    }
}

/// Default session settings: 5 steps, one greedy candidate per step, the step grammar.
#[no_mangle]
pub extern "C" fn sa_session_default_params() -> sa_session_params {
    let a = AgentConfig::default();
    sa_session_params {
        struct_size: std::mem::size_of::<sa_session_params>(),
        max_steps: a.max_steps as u32,
        sag: 1,
        grammar: true,
        temperature: -1.0,
        seed: crate::engine::DEFAULT_SEED,
    }
}

/// Opens a session on `runtime`. `params` may be NULL for the defaults. On `SA_OK`, `*out`
/// receives a new session owned by the caller, to be released with `sa_session_free`; on
/// error `*out` is untouched. The session keeps the runtime alive.
///
/// # Safety
/// `runtime` is a live runtime; `params` is NULL or initialised; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn sa_session_new(
    runtime: *const sa_runtime,
    params: *const sa_session_params,
    out: *mut *mut sa_session,
) -> sa_status {
    guarded(|| {
        if runtime.is_null() {
            return fail(sa_status::SA_NULL_ARGUMENT, "runtime is NULL");
        }
        if out.is_null() {
            return fail(sa_status::SA_NULL_ARGUMENT, "out is NULL");
        }
        let p = match read_params(params, sa_session_default_params(), "params") {
            Ok(p) => p,
            Err(s) => return s,
        };
        if p.max_steps == 0 || p.sag == 0 {
            return fail(
                sa_status::SA_INVALID_ARGUMENT,
                "params.max_steps and params.sag must be at least 1",
            );
        }
        let mut agent = AgentConfig {
            max_steps: p.max_steps as usize,
            grammar: p.grammar.then(|| crate::agent::STEP_GRAMMAR.to_owned()),
            ..AgentConfig::default()
        }
        .with_sag(p.sag as usize);
        if p.sag == 1 {
            agent.sampling = SamplingParams::greedy();
        }
        if p.temperature >= 0.0 {
            agent.sampling.temperature = p.temperature;
        }
        agent.sampling.seed = p.seed;
        match (*runtime).runtime.session(&SessionConfig { agent }) {
            Ok(session) => {
                *out = Box::into_raw(Box::new(sa_session {
                    cancel: session.canceller(),
                    session: Mutex::new(session),
                }));
                sa_status::SA_OK
            }
            Err(e) => fail(status_of_runtime_error(&e), e.to_string()),
        }
    })
}

/// Frees a session. NULL is ignored.
///
/// # Safety
/// `session` is NULL or a session from `sa_session_new` not freed yet, and no call on it (an
/// `sa_cancel` included) runs during or after this one.
#[no_mangle]
pub unsafe extern "C" fn sa_session_free(session: *mut sa_session) {
    if !session.is_null() {
        let _ = catch_unwind(AssertUnwindSafe(|| drop(Box::from_raw(session))));
    }
}

/// Asks the session's running `sa_ask` to stop: it returns `SA_CANCELLED` after the next
/// generated token or sandbox interrupt tick (10 ms). Called while no ask runs, it cancels the
/// next one. Callable from any thread.
///
/// # Safety
/// `session` is NULL or a live session.
#[no_mangle]
pub unsafe extern "C" fn sa_cancel(session: *const sa_session) -> sa_status {
    guarded(|| {
        if session.is_null() {
            return fail(sa_status::SA_NULL_ARGUMENT, "session is NULL");
        }
        (*session).cancel.raise();
        sa_status::SA_OK
    })
}

/// Answers `question` with the agent. On `SA_OK`, `*answer_out` receives the answer and, when
/// `trajectory_out` is not NULL, `*trajectory_out` the whole run as JSON (question, answer,
/// messages, steps with token counts and times); both are owned by the caller and released
/// with `sa_string_free`. On error neither is touched.
///
/// # Safety
/// `session` is a live session; `question` is NULL or NUL-terminated; `answer_out` is NULL
/// or writable; `trajectory_out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn sa_ask(
    session: *const sa_session,
    question: *const c_char,
    answer_out: *mut *mut c_char,
    trajectory_out: *mut *mut c_char,
) -> sa_status {
    sa_ask_stream(
        session,
        question,
        None,
        ptr::null_mut(),
        answer_out,
        trajectory_out,
    )
}

/// `sa_ask` with streaming: `callback` (may be NULL) receives tokens, steps and
/// observations as they happen, with `user_data` passed through untouched.
///
/// # Safety
/// As `sa_ask`; `callback`, when not NULL, is safe to call with `user_data` from this thread.
#[no_mangle]
pub unsafe extern "C" fn sa_ask_stream(
    session: *const sa_session,
    question: *const c_char,
    callback: sa_event_callback,
    user_data: *mut c_void,
    answer_out: *mut *mut c_char,
    trajectory_out: *mut *mut c_char,
) -> sa_status {
    guarded(|| {
        if session.is_null() {
            return fail(sa_status::SA_NULL_ARGUMENT, "session is NULL");
        }
        if answer_out.is_null() {
            return fail(sa_status::SA_NULL_ARGUMENT, "answer_out is NULL");
        }
        let question = match required_str(question, "question") {
            Ok(q) => q,
            Err(s) => return s,
        };
        let mut agent = match (*session).session.try_lock() {
            Ok(agent) => agent,
            Err(std::sync::TryLockError::WouldBlock) => {
                return fail(
                    sa_status::SA_BUSY,
                    "the session is running an ask on another thread: use one session per \
                     thread",
                )
            }
            Err(std::sync::TryLockError::Poisoned(_)) => {
                return fail(
                    sa_status::SA_PANIC,
                    "an earlier call panicked inside this session: free it and open a new one",
                )
            }
        };
        let emit = |kind: sa_event_kind, text: &str| {
            if let Some(cb) = callback {
                let mut bytes = Vec::with_capacity(text.len() + 1);
                bytes.extend_from_slice(text.as_bytes());
                bytes.push(0);
                cb(kind, bytes.as_ptr() as *const c_char, text.len(), user_data);
            }
        };
        let run = agent.ask(question, &mut |event| {
            match event {
                AgentEvent::Token(t) => emit(sa_event_kind::SA_EVENT_TOKEN, t),
                AgentEvent::Step(step) => {
                    let json = serde_json::to_string(step).unwrap_or_default();
                    emit(sa_event_kind::SA_EVENT_STEP, &json);
                    emit(sa_event_kind::SA_EVENT_OBSERVATION, &step.observation);
                }
                AgentEvent::Redo(why) => emit(sa_event_kind::SA_EVENT_REDO, why),
            }
            true
        });
        match run {
            Ok(run) => finish_run(&run, answer_out, trajectory_out),
            Err(e) => fail(status_of_runtime_error(&e), e.to_string()),
        }
    })
}

unsafe fn finish_run(
    run: &AgentRun,
    answer_out: *mut *mut c_char,
    trajectory_out: *mut *mut c_char,
) -> sa_status {
    if let Some(failure) = run.failure {
        let status = match failure {
            RunFailure::Cancelled => sa_status::SA_CANCELLED,
            RunFailure::ContextOverflow => sa_status::SA_CONTEXT_OVERFLOW,
            RunFailure::Engine | RunFailure::Remote => sa_status::SA_MODEL_ERROR,
            RunFailure::Sandbox => sa_status::SA_SANDBOX_ERROR,
        };
        let why = run.error.as_deref().unwrap_or("the run failed");
        return fail(status, why);
    }
    if !trajectory_out.is_null() {
        let json = serde_json::to_string(&trajectory_record(run)).unwrap_or_default();
        *trajectory_out = into_c_string(&json);
    }
    *answer_out = into_c_string(&run.answer);
    sa_status::SA_OK
}
