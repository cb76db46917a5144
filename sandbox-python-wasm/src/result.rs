//! What one `exec` returns.

use crate::tools::{cap_chars, ExecState, FinalAnswer};
use crate::Limits;
use serde_json::Value;
use std::time::Duration;

/// Why a snippet did not complete normally.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The code does not parse; `line` and `column` say where.
    Syntax,
    /// Python raised (ImportError from the allow-list included).
    Runtime,
    /// The exec ran past its wall-clock budget and was interrupted.
    Timeout,
    /// The interpreter ran out of its memory cap in a way Python could not recover from.
    OutOfMemory,
    /// The interpreter trapped (stack exhaustion, abort, …).
    Trap,
    /// The snippet broke the sandbox's own driver or channel.
    Sandbox,
    /// The session's cancel flag was raised ([`crate::CancelFlag`]).
    Cancelled,
}

/// A Python error (or a sandbox-level stop) as the agent sees it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PyError {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// Python exception type name (`ZeroDivisionError`), or a sandbox label (`TimeoutError`).
    pub type_name: String,
    /// The message.
    pub message: String,
    /// 1-based line in the snippet, when known.
    pub line: Option<u32>,
    /// 1-based column (syntax errors).
    pub column: Option<u32>,
    /// The offending source line (syntax errors).
    pub text: Option<String>,
    /// Traceback restricted to the snippet's frames, ending with `Type: message`.
    pub traceback: String,
}

impl std::fmt::Display for PyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.kind, self.line, self.column) {
            (ErrorKind::Syntax, Some(l), Some(c)) => {
                write!(f, "SyntaxError at line {l}, column {c}: {}", self.message)
            }
            (_, Some(l), _) => write!(f, "{} at line {l}: {}", self.type_name, self.message),
            _ => write!(f, "{}: {}", self.type_name, self.message),
        }
    }
}

/// The outcome of one `exec`. The default is an empty success (nothing ran).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct ExecResult {
    /// stdout and stderr interleaved, capped at `Limits::output_chars` with a marker.
    pub output: String,
    /// Whether `output` was cut.
    pub output_truncated: bool,
    /// repr of the last expression's value, when the snippet ends with one and it is not None.
    pub value: Option<String>,
    /// The error, when the snippet did not complete.
    pub error: Option<PyError>,
    /// Set when the snippet called `final_answer`.
    #[serde(skip)]
    pub final_answer: Option<FinalAnswer>,
    /// True when the interpreter had to be replaced (after a timeout or trap): Python state
    /// (variables, imports) from earlier execs is gone.
    pub reset: bool,
    /// Host tool calls the exec made.
    pub tool_calls: usize,
    /// Wall time of the exec.
    #[serde(skip)]
    pub duration: Duration,
}

impl ExecResult {
    /// True when the snippet completed without error.
    pub fn ok(&self) -> bool {
        self.error.is_none()
    }

    /// The agent's observation text: logs, then the value or the error.
    pub fn observation(&self) -> String {
        let mut s = String::new();
        if !self.output.is_empty() {
            s.push_str("Execution logs:\n");
            s.push_str(&self.output);
            if !self.output.ends_with('\n') {
                s.push('\n');
            }
        }
        if let Some(e) = &self.error {
            s.push_str(&format!("Error: {e}\n"));
            if self.reset {
                s.push_str(
                    "(the interpreter was restarted: earlier variables and imports are gone)\n",
                );
            }
        } else if let Some(v) = &self.value {
            s.push_str(&format!("Last output from code snippet:\n{v}\n"));
        }
        s
    }
}

/// How the guest call itself ended, before the driver's report is read.
pub(crate) enum CallEnd {
    /// The turn returned normally.
    Returned,
    /// Interrupted at the deadline.
    Timeout,
    /// A trap or exit; the message.
    Trapped(String),
}

fn str_field(m: &serde_json::Map<String, Value>, k: &str) -> Option<String> {
    m.get(k).and_then(Value::as_str).map(str::to_string)
}

fn u32_field(m: &serde_json::Map<String, Value>, k: &str) -> Option<u32> {
    m.get(k)
        .and_then(Value::as_u64)
        .and_then(|v| u32::try_from(v).ok())
}

pub(crate) fn sandbox_error(kind: ErrorKind, type_name: &str, message: String) -> PyError {
    PyError {
        kind,
        type_name: type_name.into(),
        traceback: format!("{type_name}: {message}"),
        message,
        line: None,
        column: None,
        text: None,
    }
}

/// The result of an exec that never reached the guest's report: only an error.
pub(crate) fn error_only(error: PyError, reset: bool, duration: Duration) -> ExecResult {
    ExecResult {
        output: String::new(),
        output_truncated: false,
        value: None,
        error: Some(error),
        final_answer: None,
        reset,
        tool_calls: 0,
        duration,
    }
}

/// Builds the result from what the guest printed, what it reported, and how the call ended.
pub(crate) fn assemble(
    limits: &Limits,
    output: (Vec<u8>, usize),
    st: ExecState,
    end: CallEnd,
    duration: Duration,
) -> ExecResult {
    let (bytes, dropped_bytes) = output;
    let text = String::from_utf8_lossy(&bytes);
    let (mut out, dropped_chars) = cap_chars(&text, limits.output_chars);
    let truncated = dropped_chars > 0 || dropped_bytes > 0;
    if truncated {
        // Bytes dropped at the capture are counted as characters: exact for ASCII output,
        // an upper bound otherwise.
        let n = dropped_chars + dropped_bytes;
        out.push_str(&crate::limits::TRUNCATION_MARKER.replace("{}", &n.to_string()));
    }
    let mut reset = false;
    let mut value = None;
    let error = match end {
        CallEnd::Timeout if limits.cancel.is_raised() => {
            reset = true;
            Some(sandbox_error(
                ErrorKind::Cancelled,
                "CancelledError",
                "the run was cancelled and the snippet was stopped".into(),
            ))
        }
        CallEnd::Timeout => {
            reset = true;
            Some(sandbox_error(
                ErrorKind::Timeout,
                "TimeoutError",
                format!("execution exceeded the {:.1} s limit and was stopped", limits.timeout.as_secs_f64()),
            ))
        }
        CallEnd::Trapped(msg) => {
            reset = true;
            let oom = msg.contains("memory") && (msg.contains("grow") || msg.contains("limit") || msg.contains("out of"));
            let (kind, name) = if oom {
                (ErrorKind::OutOfMemory, "MemoryError")
            } else if msg.contains("stack") {
                (ErrorKind::Trap, "RecursionError")
            } else {
                (ErrorKind::Trap, "InterpreterCrash")
            };
            Some(sandbox_error(kind, name, format!("the interpreter stopped: {msg}")))
        }
        CallEnd::Returned => match &st.result {
            None => Some(sandbox_error(
                ErrorKind::Sandbox,
                "SandboxError",
                "the snippet ended without the sandbox driver's report (it tampered with the driver or its channel)".into(),
            )),
            Some(r) => {
                if let Some(v) = str_field(r, "value") {
                    let (mut v, cut) = cap_chars(&v, limits.value_chars);
                    if cut > 0 {
                        v.push_str("...[value truncated]");
                    }
                    value = Some(v);
                }
                match r.get("error") {
                    Some(Value::Object(e)) => {
                        let kind = if e.get("kind").and_then(Value::as_str) == Some("syntax") {
                            ErrorKind::Syntax
                        } else {
                            ErrorKind::Runtime
                        };
                        Some(PyError {
                            kind,
                            type_name: str_field(e, "type").unwrap_or_else(|| "Error".into()),
                            message: str_field(e, "message").unwrap_or_default(),
                            line: u32_field(e, "line"),
                            column: u32_field(e, "column"),
                            text: str_field(e, "text"),
                            traceback: str_field(e, "traceback").unwrap_or_default(),
                        })
                    }
                    _ => None,
                }
            }
        },
    };
    ExecResult {
        output: out,
        output_truncated: truncated,
        value,
        error,
        final_answer: st.final_answer,
        reset,
        tool_calls: st.tool_calls,
        duration,
    }
}
