//! The process-wide wasmtime engine, its interrupt ticker, per-exec deadlines, and the
//! compiled module cache.

use crate::{Result, SandboxError};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use wasmtime::{Config, Engine, Module};

/// The wasmtime release this crate is pinned to (`=48.0.8` in the workspace); part of the
/// cache key because a serialized module is native code for one exact wasmtime.
pub const WASMTIME_VERSION: &str = "48.0.8";

/// The largest memory a wasm32 module can have, reserved up front for every memory.
const WASM32_MAX_MEMORY: u64 = 1 << 32;

/// One engine per process: compiled modules are tied to the engine that compiled them, and one
/// interrupt ticker serves every store.
pub(crate) struct Shared {
    pub engine: Engine,
    /// Deadlines of the calls running now; the ticker raises the flag of each that passes and
    /// sleeps while there are none.
    armed: Mutex<Vec<Deadline>>,
    ticker: OnceLock<std::thread::Thread>,
    base: Instant,
    modules: Mutex<HashMap<String, Module>>,
}

static SHARED: OnceLock<Result<&'static Shared, String>> = OnceLock::new();

pub(crate) fn shared() -> Result<&'static Shared> {
    SHARED
        .get_or_init(|| {
            let mut c = Config::new();
            // No epoch interruption and no fuel: the modules carry their own interrupt check
            // (`interrupt.rs`), which costs a pure-Python loop ~3% where epochs cost ~24%.
            // The ticker writes the flag through a raw pointer into linear memory, which is
            // sound only while memories stay where they were mapped: a 4 GiB reservation holds
            // the largest wasm32 memory, so one never has to move to grow. (wasmtime's
            // `memory_may_move(false)` would say so too, but it lets Cranelift keep the memory
            // base in a register through CPython's evaluation loop: measured 4–6% slower.)
            c.memory_reservation(WASM32_MAX_MEMORY);
            c.max_wasm_stack(crate::limits::WASM_STACK_BYTES);
            // wasmtime-wasi turns on the `async` feature, which requires the async stack to be
            // at least the wasm stack even though this crate only calls synchronously.
            c.async_stack_size(crate::limits::WASM_STACK_BYTES + (1 << 20));
            c.wasm_exceptions(true);
            c.cranelift_opt_level(wasmtime::OptLevel::Speed);
            // CPython calls through function pointers everywhere (type slots, vectorcall); a
            // lazily initialised table adds a null test and a slow path to every indirect
            // call. Filling the table at instantiation made pure-Python snippets 2–3% faster.
            c.table_lazy_init(false);
            let engine = Engine::new(&c).map_err(|e| format!("{e:#}"))?;
            // Leaked on purpose: one engine for the life of the process, shared by every
            // session and by the ticker thread.
            let s: &'static Shared = Box::leak(Box::new(Shared {
                engine,
                armed: Mutex::default(),
                ticker: OnceLock::new(),
                base: Instant::now(),
                modules: Mutex::default(),
            }));
            Ok(s)
        })
        .clone()
        .map_err(|m| SandboxError::Wasm {
            context: "creating the engine",
            message: m,
        })
}

/// A per-store deadline and the guest's interrupt flag. A raised cancel flag counts as a
/// deadline already passed.
#[derive(Debug, Clone)]
pub(crate) struct Deadline(Arc<DeadlineState>, crate::CancelFlag);

#[derive(Debug)]
struct DeadlineState {
    /// Nanoseconds since [`Shared::base`] at which the running call must stop.
    at: AtomicU64,
    /// Address of the guest's interrupt flag word (0 until [`Deadline::bind`]).
    flag: AtomicUsize,
    /// Set when the ticker raised the flag for the current call.
    fired: AtomicBool,
}

impl Default for DeadlineState {
    fn default() -> Self {
        Self {
            at: AtomicU64::new(NO_DEADLINE),
            flag: AtomicUsize::new(0),
            fired: AtomicBool::new(false),
        }
    }
}

const NO_DEADLINE: u64 = u64::MAX;

impl Deadline {
    pub(crate) fn new(cancel: crate::CancelFlag) -> Self {
        Deadline(Arc::default(), cancel)
    }

    fn nanos(shared: &Shared) -> u64 {
        shared.base.elapsed().as_nanos() as u64
    }

    pub(crate) fn passed(&self, shared: &Shared) -> bool {
        self.1.is_raised() || Self::nanos(shared) >= self.0.at.load(Ordering::Relaxed)
    }

    /// Points this deadline at the interrupt flag in `memory`, the linear memory of the
    /// store's instance. The instance must have been built from a module rewritten by
    /// [`crate::interrupt::insert_loop_checks`] (its flag word is checked to be clear), and the
    /// memory must outlive every call armed with this deadline (it does: both belong to the
    /// same store, and memories do not move, see [`shared`]).
    pub(crate) fn bind(
        &self,
        memory: &wasmtime::Memory,
        store: impl wasmtime::AsContext,
    ) -> Result<()> {
        let size = memory.data_size(&store);
        let base = memory.data_ptr(&store) as usize;
        let at = crate::interrupt::FLAG_ADDR as usize;
        if size < at + 4 || memory.data(&store)[at..at + 4] != [0; 4] {
            return Err(SandboxError::Boot(format!(
                "the interpreter's memory at {at:#x} (the interrupt flag) is not clear"
            )));
        }
        self.0.flag.store(base + at, Ordering::SeqCst);
        Ok(())
    }

    /// Whether the ticker interrupted the current (or last) call.
    pub(crate) fn fired(&self) -> bool {
        self.0.fired.load(Ordering::SeqCst)
    }

    fn write_flag(&self, value: u32) {
        let addr = self.0.flag.load(Ordering::SeqCst);
        if addr != 0 {
            // SAFETY: `addr` is a 4-aligned word inside a live linear memory: set by `bind`
            // from the store's memory, which does not move. It is written by the store's own
            // thread around a call (`set`, `clear`) and by the ticker only while the deadline
            // is in the armed list, whose lock orders the ticker's write before the disarm
            // that ends the call (the store outlives its calls). The guest reads the word with
            // plain loads; a racing load sees either value, both of which are correct.
            unsafe { AtomicU32::from_ptr(addr as *mut u32) }.store(value, Ordering::SeqCst);
        }
    }

    fn set(&self, shared: &Shared, timeout: Duration) {
        let at = Self::nanos(shared).saturating_add(timeout.as_nanos() as u64);
        self.0.fired.store(false, Ordering::SeqCst);
        self.write_flag(0);
        self.0.at.store(at, Ordering::Relaxed);
    }

    fn clear(&self) {
        self.0.at.store(NO_DEADLINE, Ordering::Relaxed);
        // Code run later without a deadline (or by a fork copying this memory) must not see a
        // raised flag.
        self.write_flag(0);
    }
}

/// Arms `deadline` and keeps the ticker watching it until the guard drops.
pub(crate) struct ArmedDeadline<'a> {
    shared: &'a Shared,
    deadline: &'a Deadline,
}

impl Shared {
    pub(crate) fn arm<'a>(
        &'static self,
        deadline: &'a Deadline,
        timeout: Duration,
    ) -> ArmedDeadline<'a> {
        deadline.set(self, timeout);
        let first = {
            let mut armed = lock(&self.armed);
            armed.push(deadline.clone());
            armed.len() == 1
        };
        if first {
            self.ticker_thread().unpark();
        }
        ArmedDeadline {
            shared: self,
            deadline,
        }
    }

    fn ticker_thread(&'static self) -> &'static std::thread::Thread {
        self.ticker.get_or_init(|| {
            let shared = self;
            std::thread::Builder::new()
                .name("sandbox-interrupt".into())
                .spawn(move || loop {
                    if lock(&shared.armed).is_empty() {
                        std::thread::park_timeout(Duration::from_millis(500));
                        continue;
                    }
                    std::thread::sleep(crate::limits::INTERRUPT_TICK);
                    for d in lock(&shared.armed).iter() {
                        // Raised again at every tick: a guest that cleared the word (a stray
                        // null-pointer store) is stopped at the next one.
                        if d.passed(shared) {
                            d.0.fired.store(true, Ordering::SeqCst);
                            d.write_flag(1);
                        }
                    }
                })
                .expect("spawning the interrupt ticker")
                .thread()
                .clone()
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Drop for ArmedDeadline<'_> {
    fn drop(&mut self) {
        let mut armed = lock(&self.shared.armed);
        if let Some(i) = armed
            .iter()
            .position(|d| Arc::ptr_eq(&d.0, &self.deadline.0))
        {
            armed.swap_remove(i);
        }
        self.deadline.clear();
    }
}

/// The cache key of a compiled module. Every field must match before a cached file is
/// deserialized: deserializing is loading native code, so a stale or foreign file must never
/// reach `Module::deserialize_file`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct CacheKey {
    module_sha256: String,
    /// The load-time rewrite applied to the module before compiling (empty: none). Left out
    /// of the file when empty, so keys of plain modules read and hash as they always did.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    patch: String,
    wasmtime: String,
    target: String,
    cpu_features: String,
    engine_hash: String,
    /// sha256 of the .cwasm file itself, checked before it is loaded.
    cwasm_sha256: String,
    cwasm_size: u64,
}

fn cpu_features() -> String {
    #[cfg(target_arch = "x86_64")]
    {
        let mut f = Vec::new();
        macro_rules! probe {
            ($($name:tt),*) => {$( if std::arch::is_x86_feature_detected!($name) { f.push($name); } )*};
        }
        probe!(
            "sse3", "ssse3", "sse4.1", "sse4.2", "popcnt", "avx", "avx2", "bmi1", "bmi2", "fma",
            "lzcnt", "avx512f", "avx512vl", "avx512bw", "avx512dq"
        );
        f.join(",")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        // Cranelift's other back-ends compile for the baseline of the architecture unless told
        // otherwise; the target triple in the key covers them.
        String::from("baseline")
    }
}

fn engine_hash(engine: &Engine) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    format!("{:016x}", h.finish())
}

pub(crate) fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| SandboxError::io("reading", path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| SandboxError::io("reading", path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// A cheap identity of a file (size and modification time), for names of derived files that
/// must change when the file does, where hashing the whole file each start would cost too much.
pub(crate) fn file_tag(path: &Path) -> Result<String> {
    let m = std::fs::metadata(path).map_err(|e| SandboxError::io("reading", path, e))?;
    let mtime = m
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut h = Sha256::new();
    h.update(format!("{}:{}", m.len(), mtime));
    Ok(hex::encode(h.finalize()))
}

/// How a module was obtained, for reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModuleSource {
    /// Already loaded in this process.
    Memory,
    /// Deserialized from the on-disk cache.
    Cache,
    /// Compiled from the .wasm (and written to the cache when one is configured).
    Compiled,
}

/// A rewrite applied to a module's bytes before it is compiled. `tag` names the rewrite and
/// its version: it is part of every cache key, so a compile of the plain module (or of another
/// rewrite) is never taken for this one. `apply` only runs when no compile is cached.
pub(crate) struct Rewrite {
    pub tag: &'static str,
    pub apply: fn(&[u8], &Path) -> Result<Vec<u8>>,
}

/// Loads `wasm`, through the in-process map, then the on-disk cache, then compilation; with
/// `rewrite`, the module compiled (and cached) is the rewritten one.
pub(crate) fn load_module(
    shared: &Shared,
    wasm: &Path,
    sha256: Option<&str>,
    cache_dir: Option<&Path>,
    rewrite: Option<&Rewrite>,
) -> Result<(Module, ModuleSource, Duration)> {
    let t0 = Instant::now();
    if !wasm.is_file() {
        return Err(SandboxError::MissingFile {
            path: wasm.to_path_buf(),
            what: "interpreter module",
        });
    }
    let module_sha = match sha256 {
        Some(s) => s.to_ascii_lowercase(),
        None => sha256_file(wasm)?,
    };
    let patch = rewrite.map(|r| r.tag.to_string()).unwrap_or_default();
    // The in-process map is keyed by content hash (and rewrite) only: the engine is fixed for
    // the process.
    let map_key = format!("{module_sha}+{patch}");
    let mut modules = shared.modules.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(m) = modules.get(&map_key) {
        return Ok((m.clone(), ModuleSource::Memory, t0.elapsed()));
    }
    let mut key = CacheKey {
        module_sha256: module_sha.clone(),
        patch,
        wasmtime: WASMTIME_VERSION.into(),
        target: format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS),
        cpu_features: cpu_features(),
        engine_hash: engine_hash(&shared.engine),
        cwasm_sha256: String::new(),
        cwasm_size: 0,
    };
    let paths = cache_dir.map(|dir| {
        let mut h = Sha256::new();
        h.update(serde_json::to_vec(&key).unwrap_or_default());
        let tag = &hex::encode(h.finalize())[..16];
        let stem = format!("{}-{tag}", &module_sha[..16.min(module_sha.len())]);
        (
            dir.join(format!("{stem}.cwasm")),
            dir.join(format!("{stem}.key.json")),
            dir.to_path_buf(),
        )
    });
    if let Some((cwasm, keyfile, dir)) = &paths {
        match try_cached(shared, &key, cwasm, keyfile) {
            Ok(Some(m)) => {
                tracing::debug!(path = %cwasm.display(), "compiled module loaded from cache");
                modules.insert(map_key, m.clone());
                let elapsed = t0.elapsed();
                if let Some(stem) = stem_of(keyfile) {
                    prune_superseded(dir, stem, &module_sha);
                }
                return Ok((m, ModuleSource::Cache, elapsed));
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "ignoring unusable module cache entry"),
        }
    }
    tracing::info!(wasm = %wasm.display(), "compiling the interpreter module (once; cached afterwards)");
    let module = match rewrite {
        None => Module::from_file(&shared.engine, wasm),
        Some(r) => {
            let bytes = std::fs::read(wasm).map_err(|e| SandboxError::io("reading", wasm, e))?;
            Module::new(&shared.engine, (r.apply)(&bytes, wasm)?)
        }
    }
    .map_err(|e| SandboxError::wasm("compiling", e))?;
    if let Some((cwasm, keyfile, dir)) = &paths {
        if let Err(e) = write_cache(&module, &mut key, cwasm, keyfile, dir) {
            tracing::warn!(error = %e, "could not write the module cache");
        }
    }
    modules.insert(map_key, module.clone());
    Ok((module, ModuleSource::Compiled, t0.elapsed()))
}

fn try_cached(
    shared: &Shared,
    want: &CacheKey,
    cwasm: &Path,
    keyfile: &Path,
) -> Result<Option<Module>> {
    let Ok(text) = std::fs::read(keyfile) else {
        return Ok(None);
    };
    let Ok(have) = serde_json::from_slice::<CacheKey>(&text) else {
        return Ok(None);
    };
    let same = have.module_sha256 == want.module_sha256
        && have.patch == want.patch
        && have.wasmtime == want.wasmtime
        && have.target == want.target
        && have.cpu_features == want.cpu_features
        && have.engine_hash == want.engine_hash;
    if !same {
        return Ok(None);
    }
    let meta = match std::fs::metadata(cwasm) {
        Ok(m) => m,
        Err(_) => return Ok(None),
    };
    let stamp = stamp_path(cwasm);
    let vouched = FileStamp::of(&meta).is_some_and(|now| {
        std::fs::read(&stamp)
            .ok()
            .and_then(|t| serde_json::from_slice::<FileStamp>(&t).ok())
            .is_some_and(|then| then.same_file(&now) && then.cwasm_sha256 == have.cwasm_sha256)
    });
    if !vouched {
        if meta.len() != have.cwasm_size || sha256_file(cwasm)? != have.cwasm_sha256 {
            tracing::warn!(path = %cwasm.display(), "cached module does not match its key; recompiling");
            return Ok(None);
        }
        write_stamp(cwasm, &have.cwasm_sha256);
    }
    // SAFETY: the file is the exact bytes this crate serialized for this engine configuration,
    // wasmtime version and CPU (checked above by key, and by content hash now or, unchanged
    // since, at an earlier load: `FileStamp`); wasmtime additionally checks its own header.
    let m = unsafe { Module::deserialize_file(&shared.engine, cwasm) }
        .map_err(|e| SandboxError::wasm("deserializing the cached module", e))?;
    Ok(Some(m))
}

/// What the file system says about a `.cwasm` whose content hash was checked: while none of it
/// changes, the file is the one that was hashed, and the next load skips hashing it again
/// (~140 ms for the full interpreter's 263 MB). Any write, truncation, replacement or rename
/// changes the inode's ctime (which user space cannot set) or the inode itself. The content
/// hash never guarded against someone who can write the cache dir: they could rewrite the key
/// too; the cache dir must be the user's own, like the binary.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct FileStamp {
    cwasm_sha256: String,
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl FileStamp {
    #[cfg(unix)]
    fn of(meta: &std::fs::Metadata) -> Option<FileStamp> {
        use std::os::unix::fs::MetadataExt;
        Some(FileStamp {
            cwasm_sha256: String::new(),
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            ctime_ns: i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
        })
    }

    /// Elsewhere there is no ctime: always hash.
    #[cfg(not(unix))]
    fn of(_meta: &std::fs::Metadata) -> Option<FileStamp> {
        None
    }
}

impl FileStamp {
    /// Compares the file-system fields only; the hash is compared with the key separately.
    fn same_file(&self, other: &FileStamp) -> bool {
        (self.dev, self.ino, self.size, self.mtime_ns, self.ctime_ns)
            == (
                other.dev,
                other.ino,
                other.size,
                other.mtime_ns,
                other.ctime_ns,
            )
    }
}

fn stem_of(keyfile: &Path) -> Option<&str> {
    keyfile
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(".key.json"))
}

fn stamp_path(cwasm: &Path) -> std::path::PathBuf {
    cwasm.with_extension("verified.json")
}

/// Records that `cwasm` (as it is now) hashed to `sha256`. Failing to is harmless: the next
/// load hashes again.
fn write_stamp(cwasm: &Path, sha256: &str) {
    let Some(mut stamp) = std::fs::metadata(cwasm)
        .ok()
        .as_ref()
        .and_then(FileStamp::of)
    else {
        return;
    };
    stamp.cwasm_sha256 = sha256.to_string();
    let path = stamp_path(cwasm);
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let written = std::fs::write(&tmp, serde_json::to_vec(&stamp).unwrap_or_default())
        .and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        tracing::debug!(error = %e, "could not record the verified module stamp");
    }
}

/// Removes the cache's other compiles of the same module (older rewrites, engine settings or
/// wasmtime versions): each is hundreds of MB for the full interpreter, and only the entry
/// just written can be used by this build.
fn prune_superseded(dir: &Path, keep_stem: &str, module_sha256: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        let name = e.file_name().to_string_lossy().to_string();
        let Some(stem) = name.strip_suffix(".key.json") else {
            continue;
        };
        if stem == keep_stem {
            continue;
        }
        let same_module = std::fs::read(&path)
            .ok()
            .and_then(|t| serde_json::from_slice::<CacheKey>(&t).ok())
            .is_some_and(|k| k.module_sha256 == module_sha256);
        if same_module {
            // The key first: a .cwasm without its key is never loaded.
            let _ = std::fs::remove_file(&path);
            let cwasm = dir.join(format!("{stem}.cwasm"));
            let _ = std::fs::remove_file(stamp_path(&cwasm));
            let _ = std::fs::remove_file(&cwasm);
            tracing::info!(path = %cwasm.display(), "removed a superseded compiled module");
        }
    }
}

fn write_cache(
    module: &Module,
    key: &mut CacheKey,
    cwasm: &Path,
    keyfile: &Path,
    dir: &Path,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| SandboxError::io("creating the cache dir", dir, e))?;
    let bytes = module
        .serialize()
        .map_err(|e| SandboxError::wasm("serializing", e))?;
    let mut h = Sha256::new();
    h.update(&bytes);
    key.cwasm_sha256 = hex::encode(h.finalize());
    key.cwasm_size = bytes.len() as u64;
    // Write-then-rename so a concurrent reader never sees half a file; the key goes last, so a
    // .cwasm without its key is simply ignored.
    let tmp = cwasm.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, &bytes).map_err(|e| SandboxError::io("writing", &tmp, e))?;
    std::fs::rename(&tmp, cwasm).map_err(|e| SandboxError::io("renaming", cwasm, e))?;
    let ktmp = keyfile.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&ktmp, serde_json::to_vec_pretty(key).unwrap_or_default())
        .map_err(|e| SandboxError::io("writing", &ktmp, e))?;
    std::fs::rename(&ktmp, keyfile).map_err(|e| SandboxError::io("renaming", keyfile, e))?;
    write_stamp(cwasm, &key.cwasm_sha256);
    if let Some(stem) = stem_of(keyfile) {
        prune_superseded(dir, stem, &key.module_sha256);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(module: &str) -> CacheKey {
        CacheKey {
            module_sha256: module.into(),
            patch: String::new(),
            wasmtime: WASMTIME_VERSION.into(),
            target: "t".into(),
            cpu_features: "f".into(),
            engine_hash: "e".into(),
            cwasm_sha256: "c".into(),
            cwasm_size: 1,
        }
    }

    fn entry(dir: &Path, stem: &str, module: &str) {
        std::fs::write(dir.join(format!("{stem}.cwasm")), b"x").unwrap();
        std::fs::write(
            dir.join(format!("{stem}.key.json")),
            serde_json::to_vec(&key(module)).unwrap(),
        )
        .unwrap();
    }

    #[test]
    fn superseded_compiles_of_the_same_module_are_removed_and_others_kept() {
        let dir = tempfile::tempdir().unwrap();
        entry(dir.path(), "aaaa-old", "aaaa");
        entry(dir.path(), "aaaa-new", "aaaa");
        entry(dir.path(), "bbbb-other", "bbbb");
        write_stamp(&dir.path().join("aaaa-old.cwasm"), "c");
        prune_superseded(dir.path(), "aaaa-new", "aaaa");
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "aaaa-new.cwasm",
                "aaaa-new.key.json",
                "bbbb-other.cwasm",
                "bbbb-other.key.json"
            ]
        );
    }

    #[cfg(unix)]
    #[test]
    fn the_verified_stamp_no_longer_vouches_once_the_file_is_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let cwasm = dir.path().join("m.cwasm");
        std::fs::write(&cwasm, b"compiled").unwrap();
        write_stamp(&cwasm, "abc");
        let stamp: FileStamp =
            serde_json::from_slice(&std::fs::read(stamp_path(&cwasm)).unwrap()).unwrap();
        let now = || FileStamp::of(&std::fs::metadata(&cwasm).unwrap()).unwrap();
        assert!(stamp.same_file(&now()) && stamp.cwasm_sha256 == "abc");
        // Same size, same content even: a write changes ctime (and usually mtime).
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&cwasm, b"compiled").unwrap();
        assert!(!stamp.same_file(&now()));
    }
}
