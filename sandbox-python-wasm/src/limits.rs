//! Limits every session runs under. Each has a named default so that the CLI, the runtime's
//! config and the tests all refer to the same number.

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc,
};
use std::time::Duration;

/// Wall-clock budget of one `exec`, enforced by the interrupt flag (`interrupt.rs`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Linear-memory cap of one interpreter instance (512 MiB), enforced by store limits.
pub const DEFAULT_MEMORY_BYTES: usize = 512 << 20;
/// Printed output (stdout + stderr) kept per exec, in characters (the reference agent's cap).
pub const DEFAULT_OUTPUT_CHARS: usize = 50_000;
/// Characters of the last expression's repr kept per exec (the reference agent's cap).
pub const DEFAULT_VALUE_CHARS: usize = 20_000;
/// Tool calls one exec may make before the host refuses further calls.
pub const DEFAULT_MAX_TOOL_CALLS: usize = 1_000;
/// Largest request frame (tool call, result) the host reads from the guest.
pub const MAX_FRAME_BYTES: usize = 4 << 20;
/// wasm stack given to the interpreter; CPython's C recursion needs more than wasmtime's
/// 512 KiB default, and a deep-recursion snippet must end in `RecursionError`, not a trap.
pub const WASM_STACK_BYTES: usize = 8 << 20;
/// How often the interrupt ticker checks the running calls' deadlines; the timeout's
/// resolution.
pub const INTERRUPT_TICK: Duration = Duration::from_millis(10);
/// Marker appended to truncated output. `{}` is replaced by the number of dropped characters.
pub const TRUNCATION_MARKER: &str = "\n[output truncated: {} more characters not shown]";

/// The reference agent's import allow-list (BRIEF §3).
pub const DEFAULT_ALLOWED_IMPORTS: &[&str] = &[
    "collections",
    "datetime",
    "itertools",
    "math",
    "queue",
    "random",
    "re",
    "stat",
    "statistics",
    "time",
    "unicodedata",
    "numpy",
    "numpy.linalg",
    "sympy",
];

/// Everything a session is limited by. `Limits::default()` gives the named defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Wall-clock budget of one exec.
    pub timeout: Duration,
    /// Linear-memory cap of the interpreter.
    pub memory_bytes: usize,
    /// Printed output kept per exec, in characters.
    pub output_chars: usize,
    /// Characters of the last expression's repr kept.
    pub value_chars: usize,
    /// Tool calls per exec.
    pub max_tool_calls: usize,
    /// Importable modules (a name allows its submodules too); `None` allows every import.
    pub allowed_imports: Option<Vec<String>>,
    /// Raised by another thread to stop the running exec at the next interrupt tick. Fixed when
    /// the session opens (forks share it).
    pub cancel: CancelFlag,
}

/// A flag any thread may raise to stop a session's execs: the running one ends at the next
/// interrupt tick ([`INTERRUPT_TICK`]) with [`crate::ErrorKind::Cancelled`], and so does every exec
/// started while it stays raised. Clones share the flag; two limits are equal only when they
/// share it.
#[derive(Debug, Clone, Default)]
pub struct CancelFlag(Arc<AtomicBool>);

impl CancelFlag {
    /// A new, lowered flag.
    pub fn new() -> Self {
        Self::default()
    }
    /// Asks every exec under this flag to stop.
    pub fn raise(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    /// Lets execs run again.
    pub fn lower(&self) {
        self.0.store(false, Ordering::SeqCst);
    }
    /// Whether the flag is raised.
    pub fn is_raised(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

impl PartialEq for CancelFlag {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}
impl Eq for CancelFlag {}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: DEFAULT_TIMEOUT,
            memory_bytes: DEFAULT_MEMORY_BYTES,
            output_chars: DEFAULT_OUTPUT_CHARS,
            value_chars: DEFAULT_VALUE_CHARS,
            max_tool_calls: DEFAULT_MAX_TOOL_CALLS,
            allowed_imports: Some(
                DEFAULT_ALLOWED_IMPORTS
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
            ),
            cancel: CancelFlag::new(),
        }
    }
}

impl Limits {
    pub(crate) fn validate(&self) -> crate::Result<()> {
        let bad = |m: &str| Err(crate::SandboxError::InvalidConfig(m.to_string()));
        if self.timeout.is_zero() {
            return bad("timeout must be positive");
        }
        if self.memory_bytes < (64 << 20) {
            return bad(
                "memory cap must be at least 64 MiB (the interpreter's own image needs ~40 MiB)",
            );
        }
        if self.output_chars == 0 || self.value_chars == 0 {
            return bad("output and value caps must be positive");
        }
        Ok(())
    }
}
