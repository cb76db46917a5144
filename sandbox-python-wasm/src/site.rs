//! Site-packages for the lite flavour: pure-Python wheels unpacked once and compiled to
//! bytecode once, by the guest interpreter itself, then mounted read-only.
//!
//! Importing straight from a wheel works (zipimport) but compiles every module from source at
//! every session start: `import sympy` took ~18 s that way. zipimport never reads or writes a
//! bytecode cache, so the wheel is unpacked to a folder, and a trusted run of the interpreter
//! (no user code, the only run that ever gets the folder writable) writes `__pycache__` next to
//! the sources. The folder name carries the wheel's identity and the module's hash, so a
//! different wheel or interpreter gets a fresh folder.

use crate::engine::{self, Shared};
use crate::{Result, SandboxError};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;
use wasmtime::{InstancePre, Store, StoreLimitsBuilder, TypedFunc};
use wasmtime_wasi::WasiCtxBuilder;

/// Marker written by the host after a successful precompile.
const DONE: &str = ".sandbox-precompiled";

/// Unpacks `wheel` under `cache_dir` (once) and returns the folder.
pub(crate) fn unpack(wheel: &Path, cache_dir: &Path, module_sha: &str) -> Result<PathBuf> {
    let name = wheel
        .file_stem()
        .and_then(|n| n.to_str())
        .unwrap_or("wheel");
    let tag = &engine::file_tag(wheel)?[..12];
    let dir = cache_dir.join("site-lite").join(format!(
        "{name}-{tag}-{}",
        &module_sha[..12.min(module_sha.len())]
    ));
    if dir.join(DONE).is_file() || dir.is_dir() {
        return Ok(dir);
    }
    let tmp = dir.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| SandboxError::io("creating", &tmp, e))?;
    let file = std::fs::File::open(wheel).map_err(|e| SandboxError::io("opening", wheel, e))?;
    let mut zip = zip::ZipArchive::new(file)
        .map_err(|e| SandboxError::io("reading the wheel", wheel, std::io::Error::other(e)))?;
    for i in 0..zip.len() {
        let mut entry = zip
            .by_index(i)
            .map_err(|e| SandboxError::io("reading the wheel", wheel, std::io::Error::other(e)))?;
        // `enclosed_name` refuses absolute paths and `..`: a wheel cannot write outside.
        let Some(rel) = entry.enclosed_name() else {
            continue;
        };
        let out = tmp.join(rel);
        if entry.is_dir() {
            std::fs::create_dir_all(&out).map_err(|e| SandboxError::io("unpacking", &out, e))?;
            continue;
        }
        if let Some(p) = out.parent() {
            std::fs::create_dir_all(p).map_err(|e| SandboxError::io("unpacking", p, e))?;
        }
        let mut buf = Vec::with_capacity(entry.size() as usize);
        entry
            .read_to_end(&mut buf)
            .map_err(|e| SandboxError::io("unpacking", &out, e))?;
        std::fs::write(&out, buf).map_err(|e| SandboxError::io("unpacking", &out, e))?;
    }
    std::fs::rename(&tmp, &dir).map_err(|e| SandboxError::io("renaming", &dir, e))?;
    Ok(dir)
}

pub(crate) struct PrecompileState {
    pub(crate) wasi: wasmtime_wasi::p1::WasiP1Ctx,
    limits: wasmtime::StoreLimits,
}

/// Compiles every `.py` under `dirs` to bytecode with the guest interpreter, once per folder.
pub(crate) fn precompile(
    shared: &'static Shared,
    pre: &InstancePre<PrecompileState>,
    dirs: &[PathBuf],
) -> Result<()> {
    let todo: Vec<&PathBuf> = dirs.iter().filter(|d| !d.join(DONE).is_file()).collect();
    if todo.is_empty() {
        return Ok(());
    }
    let t0 = Instant::now();
    tracing::info!(
        count = todo.len(),
        "compiling site-packages to bytecode (once)"
    );
    let mut args = vec![
        "python".to_string(),
        "-c".to_string(),
        "import compileall, sys\nok = all([compileall.compile_dir(d, quiet=1, workers=1) for d in sys.argv[1:]])\nsys.exit(0 if ok else 1)".to_string(),
    ];
    let capture = crate::capture::OutputCapture::new(64 << 10);
    let mut b = WasiCtxBuilder::new();
    b.stdout(capture.clone()).stderr(capture.clone());
    for (i, d) in todo.iter().enumerate() {
        let guest = format!("/pc/{i}");
        b.preopened_dir(d, &guest, wasmtime_wasi::FsPerms::ReadWrite)
            .map_err(|e| SandboxError::wasm("preopening site-packages", e))?;
        args.push(guest);
    }
    b.args(&args);
    let state = PrecompileState {
        wasi: b.build_p1(),
        limits: StoreLimitsBuilder::new().memory_size(1 << 30).build(),
    };
    let pre = pre.clone();
    let code = std::thread::Builder::new()
        .stack_size(crate::worker::GUEST_THREAD_STACK)
        .spawn(move || -> std::result::Result<i32, String> {
            let mut store = Store::new(&shared.engine, state);
            store.limiter(|s| &mut s.limits);
            let inst = pre.instantiate(&mut store).map_err(|e| format!("{e:#}"))?;
            let start: TypedFunc<(), ()> = inst
                .get_typed_func(&mut store, "_start")
                .map_err(|e| format!("{e:#}"))?;
            match start.call(&mut store, ()) {
                Ok(()) => Ok(0),
                Err(e) => match e.downcast_ref::<wasmtime_wasi::I32Exit>() {
                    Some(x) => Ok(x.0),
                    None => Err(format!("{e:#}")),
                },
            }
        })
        .map_err(|e| SandboxError::io("spawning the precompile thread", "-", e))?
        .join()
        .map_err(|_| SandboxError::WorkerGone)?;
    let (out, _) = capture.take();
    match code {
        Ok(0) => {
            for d in &todo {
                std::fs::write(d.join(DONE), b"")
                    .map_err(|e| SandboxError::io("writing", d.join(DONE), e))?;
            }
            tracing::info!(elapsed = ?t0.elapsed(), "site-packages compiled");
            Ok(())
        }
        other => Err(SandboxError::Boot(format!(
            "compiling site-packages failed ({other:?}): {}",
            String::from_utf8_lossy(&out)
        ))),
    }
}
