//! The symbolic equivalence seam: a [`SymbolicChecker`] decides whether two expressions (in
//! sympy's input syntax) are equal. [`SandboxSympy`] runs sympy inside the WASM sandbox
//! (the full interpreter, which has sympy compiled in) under a wall-clock limit: model
//! output is never parsed by a host Python.
use std::{sync::Mutex, time::Duration};

use small_agent_sandbox::{Limits, PythonBackend, Session, SessionOptions};

/// Wall-clock limit of importing sympy into a new session.
pub const WARMUP_TIMEOUT: Duration = Duration::from_secs(120);
/// Default wall-clock limit of one symbolic check.
pub const DEFAULT_SYMBOLIC_TIMEOUT: Duration = Duration::from_secs(10);

/// The answer of a symbolic check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SymbolicVerdict {
    /// The difference simplifies to zero.
    Equal,
    /// It does not.
    Different,
    /// No decision: the text did not parse, the check timed out, or the sandbox failed.
    Undecided(String),
}

/// Decides symbolic equality of two expressions written in sympy syntax.
pub trait SymbolicChecker: Send + Sync {
    /// Whether `a` and `b` are the same expression.
    fn equivalent(&self, a: &str, b: &str) -> SymbolicVerdict;
}

/// sympy in a sandbox session that is kept between checks (sympy is imported once); a
/// timeout replaces the interpreter, and the next check imports it again.
pub struct SandboxSympy {
    backend: std::sync::Arc<dyn PythonBackend>,
    timeout: Duration,
    session: Mutex<Option<Session>>,
}

impl std::fmt::Debug for SandboxSympy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxSympy")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// The check run in the sandbox: parse both sides with implicit multiplication, then
/// `simplify(a - b) == 0`, then `equals` (numeric sampling) as a second opinion.
const CHECK_PY: &str = r#"
import sympy as _sp
from sympy.parsing.sympy_parser import parse_expr as _pe, standard_transformations as _st, implicit_multiplication_application as _ima, convert_xor as _cx
def _sa_equiv(a, b):
    t = _st + (_ima, _cx)
    x = _pe(a, transformations=t)
    y = _pe(b, transformations=t)
    if _sp.simplify(x - y) == 0:
        return "EQUAL"
    e = x.equals(y)
    return "EQUAL" if e is True else "DIFFERENT"
"#;

impl SandboxSympy {
    /// A checker on `backend` (the full flavour: the lite one has no sympy unless mounted),
    /// each check limited to `timeout`.
    pub fn new(backend: std::sync::Arc<dyn PythonBackend>, timeout: Duration) -> Self {
        Self {
            backend,
            timeout,
            session: Mutex::new(None),
        }
    }

    /// A session with sympy imported and the check defined. The import runs under
    /// [`WARMUP_TIMEOUT`] (it takes seconds on a busy machine), the checks under `timeout`.
    fn open(&self) -> Result<Session, String> {
        let limits = Limits {
            timeout: WARMUP_TIMEOUT.max(self.timeout),
            ..Limits::default()
        };
        let mut session = self
            .backend
            .open(SessionOptions {
                limits: limits.clone(),
                ..Default::default()
            })
            .map_err(|e| format!("sandbox: {e}"))?;
        let r = session.exec(CHECK_PY);
        if let Some(e) = r.error {
            return Err(format!("loading sympy: {}: {}", e.type_name, e.message));
        }
        session
            .set_limits(Limits {
                timeout: self.timeout,
                ..limits
            })
            .map_err(|e| format!("sandbox: {e}"))?;
        Ok(session)
    }
}

impl SymbolicChecker for SandboxSympy {
    fn equivalent(&self, a: &str, b: &str) -> SymbolicVerdict {
        let mut guard = match self.session.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if guard.is_none() {
            match self.open() {
                Ok(s) => *guard = Some(s),
                Err(e) => return SymbolicVerdict::Undecided(e),
            }
        }
        let session = guard.as_mut().expect("opened above");
        // The inputs go in as JSON string literals, which are valid Python literals.
        let code = format!(
            "_sa_equiv({}, {})",
            serde_json::to_string(a).unwrap_or_default(),
            serde_json::to_string(b).unwrap_or_default()
        );
        let r = session.exec(&code);
        if let Some(e) = &r.error {
            if r.reset {
                // A timeout or trap replaced the interpreter: sympy is gone with it, so the
                // next check opens (and warms up) a new session.
                tracing::debug!("symbolic check reset the interpreter: {}", e.message);
                *guard = None;
            }
            return SymbolicVerdict::Undecided(format!("{}: {}", e.type_name, e.message));
        }
        match r.value.as_deref().map(|v| v.trim_matches(['\'', '"'])) {
            Some("EQUAL") => SymbolicVerdict::Equal,
            Some("DIFFERENT") => SymbolicVerdict::Different,
            other => SymbolicVerdict::Undecided(format!("unexpected result {other:?}")),
        }
    }
}
