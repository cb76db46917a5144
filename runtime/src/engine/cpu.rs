//! Which ggml CPU code runs on this machine, and the CPU back-end functions the engine calls.
//!
//! Two builds (see `scripts/cpu-flags.sh`):
//! - **native** (default): ggml is compiled for the features the building machine's CPU had,
//!   named one by one (recorded at build time in `SMALL_AGENT_GGML_CPU_FLAGS`). Before any ggml
//!   code runs, [`init`] checks that this CPU has them all and otherwise refuses with an error
//!   that names what is missing and points at the portable build — instead of the illegal
//!   instruction that running it would be.
//! - **portable** (cargo feature `portable`): ggml's CPU back-end is built once per CPU
//!   generation as shared libraries (`libggml-cpu-<variant>.so`, ggml's `GGML_CPU_ALL_VARIANTS`)
//!   that lie next to the binary or library; [`init`] asks each for its score on this CPU (ggml's
//!   own feature test) and loads the best one, as ggml's loader does, except that the variants
//!   in [`EXCLUDED_VARIANTS`] are never loaded.
//!
//! In neither build is ggml's AMX matrix path compiled into what runs: it faults on its first
//! tile instruction on AMX CPUs (llama.cpp #20824), so the native build never passes
//! `-march=native` and the portable build skips the one variant that has it.
//!
//! The rest of the engine reaches the CPU back-end only through [`backend`] (thread pools,
//! feature queries): in the portable build those functions live in the loaded variant, not in
//! the binary.

#[cfg(feature = "portable")]
use std::path::Path;
use std::path::PathBuf;
use std::sync::OnceLock;

use llama_cpp_sys_2 as sys;
use serde::Serialize;

use super::EngineError;

/// ggml CPU variants of the portable build that are never loaded, with the reason.
/// `sapphirerapids` is the only one compiled with AMX (`AMX_TILE`, `AMX_INT8`).
pub const EXCLUDED_VARIANTS: &[(&str, &str)] = &[(
    "sapphirerapids",
    "ggml's AMX matrix path faults on its first tile instruction (llama.cpp #20824)",
)];

/// The environment variable that names the directory holding the portable build's
/// `libggml-cpu-*.so` (default: the directory of the loaded `libggml.so`).
pub const GGML_DIR_ENV: &str = "SMALL_AGENT_GGML_DIR";

/// Which build this is: `"native"` or `"portable"`.
pub const BUILD: &str = if cfg!(feature = "portable") {
    "portable"
} else {
    "native"
};

/// The ggml CPU options this build was compiled with (`GGML_AVX2`, … without the prefix), as
/// recorded by `runtime/build.rs` from the environment `scripts/cpu-flags.sh` sets. Empty for a
/// portable build and for a plain `cargo build` (ggml then gets the x86-64-v2 baseline).
pub const COMPILED_GGML_OPTIONS: &str = env!("SMALL_AGENT_GGML_CPU_FLAGS");

/// What runs on this machine, for `--version` and `models list --json`.
#[derive(Debug, Clone, Serialize)]
pub struct CpuReport {
    /// `"native"` or `"portable"`.
    pub build: &'static str,
    /// The ggml CPU variant in use: `"native"` (compiled in) or the portable variant's name
    /// (`"icelake"`, `"haswell"`, `"x64"`, …).
    pub variant: String,
    /// The loaded variant's library (portable build only).
    pub library: Option<PathBuf>,
    /// The features the running ggml CPU code was compiled with, as ggml reports them
    /// (`AVX2`, `AVX512`, `AVX512_VNNI`, …; `AMX_INT8` would mean the AMX path is in).
    pub ggml_features: Vec<String>,
    /// The ggml options recorded at build time (native build).
    pub compiled_options: Vec<String>,
    /// Instruction-set extensions this CPU and kernel have enabled (as the runtime detects them).
    pub cpu_features: Vec<&'static str>,
    /// Variants of the portable build that were found and skipped (excluded or not runnable here).
    pub skipped_variants: Vec<String>,
    /// Whether the runtime's own AVX-512 VNNI output product can run here.
    pub own_output_head: bool,
}

type ThreadpoolNew =
    unsafe extern "C" fn(*mut sys::ggml_threadpool_params) -> *mut sys::ggml_threadpool;
type ThreadpoolFree = unsafe extern "C" fn(*mut sys::ggml_threadpool);

/// The CPU back-end's functions, resolved once.
pub(crate) struct CpuBackend {
    threadpool_new: ThreadpoolNew,
    threadpool_free: ThreadpoolFree,
    threadpool_pause: Option<ThreadpoolFree>,
    report: CpuReport,
}

impl CpuBackend {
    /// A new ggml thread pool (null on failure).
    pub(crate) fn threadpool_new(
        &self,
        params: &mut sys::ggml_threadpool_params,
    ) -> *mut sys::ggml_threadpool {
        // SAFETY: `params` is a valid, initialised struct; the function is ggml's own.
        unsafe { (self.threadpool_new)(params) }
    }

    /// Frees a pool made by [`Self::threadpool_new`].
    ///
    /// # Safety
    /// `pool` is a live pool that nothing uses any more.
    pub(crate) unsafe fn threadpool_free(&self, pool: *mut sys::ggml_threadpool) {
        (self.threadpool_free)(pool)
    }

    /// Sends a pool's workers to sleep; a no-op where the back-end does not export it.
    ///
    /// # Safety
    /// `pool` is a live pool.
    pub(crate) unsafe fn threadpool_pause(&self, pool: *mut sys::ggml_threadpool) {
        if let Some(pause) = self.threadpool_pause {
            pause(pool)
        }
    }

    /// Whether the running ggml CPU code has `feature` (a ggml feature name such as `AVX2`).
    pub(crate) fn has(&self, feature: &str) -> bool {
        self.report.ggml_features.iter().any(|f| f == feature)
    }
}

static BACKEND: OnceLock<Result<CpuBackend, String>> = OnceLock::new();

/// Checks this CPU against the build and, in the portable build, loads the best CPU variant.
/// Called once, before llama.cpp's back-end is initialised; later calls return the first
/// result.
pub(crate) fn init() -> Result<&'static CpuBackend, EngineError> {
    super::route_llama_logs();
    BACKEND
        .get_or_init(|| load().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| EngineError::Cpu(e.clone()))
}

/// The CPU back-end, once [`init`] succeeded (it always has when a model is loaded).
pub(crate) fn backend() -> Option<&'static CpuBackend> {
    BACKEND.get().and_then(|b| b.as_ref().ok())
}

/// Reports what runs on this CPU: loads the back-end if nothing has yet (cheap: no model).
pub fn report() -> Result<CpuReport, EngineError> {
    init().map(|b| b.report.clone())
}

/// The CPU features the runtime looks for, by std's names (what `cpu_features` lists).
#[cfg(target_arch = "x86_64")]
fn detected_cpu_features() -> Vec<&'static str> {
    let mut have = Vec::new();
    macro_rules! probe {
        ($($name:tt),* $(,)?) => {$(
            if std::arch::is_x86_feature_detected!($name) {
                have.push($name);
            }
        )*};
    }
    probe!(
        "sse3",
        "ssse3",
        "sse4.1",
        "sse4.2",
        "popcnt",
        "avx",
        "f16c",
        "fma",
        "bmi2",
        "avx2",
        "avxvnni",
        "avx512f",
        "avx512cd",
        "avx512vl",
        "avx512dq",
        "avx512bw",
        "avx512vbmi",
        "avx512vnni",
        "avx512bf16",
    );
    have
}

#[cfg(not(target_arch = "x86_64"))]
fn detected_cpu_features() -> Vec<&'static str> {
    Vec::new()
}

include!("cpu_options.rs");

/// The CPU extensions a ggml build option needs (std's names), x86-64 only.
fn needs_of_option(option: &str) -> &'static [&'static str] {
    GGML_CPU_OPTIONS
        .iter()
        .find(|(o, _)| *o == option)
        .map_or(&[], |(_, needs)| needs)
}

/// What a native build needs that this CPU lacks: the x86-64-v2 baseline every x86-64 build is
/// compiled for, plus each recorded ggml option. Empty when all is there.
pub fn missing_for_native(compiled: &[&str], have: &[&str]) -> Vec<&'static str> {
    let baseline: &[&'static str] = if cfg!(target_arch = "x86_64") {
        &["sse3", "ssse3", "sse4.1", "sse4.2", "popcnt"]
    } else {
        &[]
    };
    let mut missing: Vec<&'static str> = Vec::new();
    for need in baseline
        .iter()
        .chain(compiled.iter().flat_map(|o| needs_of_option(o)))
    {
        if !have.contains(need) && !missing.contains(need) {
            missing.push(need);
        }
    }
    missing
}

#[cfg(not(feature = "portable"))]
fn compiled_options() -> Vec<&'static str> {
    COMPILED_GGML_OPTIONS
        .split(',')
        .filter(|s| !s.is_empty())
        .collect()
}

/// The features a registered CPU back-end reports (`ggml_backend_get_features`).
///
/// # Safety
/// `reg` is the live CPU back-end registration, and its code can run on this CPU.
unsafe fn reg_features(reg: sys::ggml_backend_reg_t) -> Vec<String> {
    let f = sys::ggml_backend_reg_get_proc_address(reg, c"ggml_backend_get_features".as_ptr());
    if f.is_null() {
        return Vec::new();
    }
    type GetFeatures =
        unsafe extern "C" fn(sys::ggml_backend_reg_t) -> *mut sys::ggml_backend_feature;
    let get: GetFeatures = std::mem::transmute(f);
    let mut out = Vec::new();
    let mut p = get(reg);
    while !p.is_null() && !(*p).name.is_null() {
        let name = std::ffi::CStr::from_ptr((*p).name)
            .to_string_lossy()
            .into_owned();
        let value = if (*p).value.is_null() {
            String::new()
        } else {
            std::ffi::CStr::from_ptr((*p).value)
                .to_string_lossy()
                .into_owned()
        };
        // Flags are reported as "1"; a few entries carry a value (e.g. SVE_CNT).
        out.push(if value == "1" {
            name
        } else {
            format!("{name}={value}")
        });
        p = p.add(1);
    }
    out
}

/// Looks up a function the CPU back-end exports through its registration.
///
/// # Safety
/// `reg` is live; the caller transmutes the result to the function's true type.
#[cfg(feature = "portable")]
unsafe fn proc_address(
    reg: sys::ggml_backend_reg_t,
    name: &std::ffi::CStr,
) -> Result<*mut std::ffi::c_void, String> {
    let f = sys::ggml_backend_reg_get_proc_address(reg, name.as_ptr());
    if f.is_null() {
        Err(format!(
            "the ggml CPU back-end does not export {}: the library does not match this build",
            name.to_string_lossy()
        ))
    } else {
        Ok(f)
    }
}

#[cfg(not(feature = "portable"))]
fn load() -> Result<CpuBackend, String> {
    let have = detected_cpu_features();
    let compiled = compiled_options();
    let missing = missing_for_native(&compiled, &have);
    if !missing.is_empty() {
        return Err(format!(
            "this small-agent was built for the CPU of the machine that compiled it (ggml options \
             {}), and this CPU lacks {}; running it would stop on an illegal instruction. Build \
             it on this machine (scripts/setup.sh) or use the portable build, which picks its \
             CPU code at run time (scripts/setup.sh --portable)",
            if compiled.is_empty() {
                "none".to_owned()
            } else {
                compiled.join(",")
            },
            missing.join(", ")
        ));
    }
    // SAFETY: the CPU back-end is linked in (static build) and every feature it was compiled
    // for is present (checked above).
    unsafe {
        let reg = sys::ggml_backend_cpu_reg();
        let features = reg_features(reg);
        Ok(CpuBackend {
            threadpool_new: sys::ggml_threadpool_new,
            threadpool_free: sys::ggml_threadpool_free,
            threadpool_pause: Some(sys::ggml_threadpool_pause),
            report: CpuReport {
                build: BUILD,
                variant: "native".to_owned(),
                library: None,
                ggml_features: features,
                compiled_options: compiled.iter().map(|s| s.to_string()).collect(),
                cpu_features: have,
                skipped_variants: Vec::new(),
                own_output_head: super::head::OutputHead::supported_here(),
            },
        })
    }
}

#[cfg(feature = "portable")]
fn load() -> Result<CpuBackend, String> {
    let dirs = variant_dirs();
    let mut skipped = Vec::new();
    let mut best: Option<(i32, PathBuf, String)> = None;
    let mut searched = Vec::new();
    for dir in &dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        searched.push(dir.display().to_string());
        let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        files.sort();
        for path in files {
            let Some(variant) = variant_name(&path) else {
                continue;
            };
            if let Some((_, why)) = EXCLUDED_VARIANTS.iter().find(|(v, _)| *v == variant) {
                tracing::debug!(%variant, why, "ggml CPU variant excluded");
                skipped.push(format!("{variant} (excluded: {why})"));
                continue;
            }
            match variant_score(&path) {
                Ok(0) => skipped.push(format!("{variant} (not runnable on this CPU)")),
                Ok(score) => {
                    tracing::debug!(%variant, score, "ggml CPU variant");
                    if best.as_ref().is_none_or(|(s, _, _)| score > *s) {
                        best = Some((score, path.clone(), variant));
                    }
                }
                Err(e) => skipped.push(format!("{variant} ({e})")),
            }
        }
        if best.is_some() {
            break;
        }
    }
    let Some((_, path, variant)) = best else {
        return Err(format!(
            "no ggml CPU back-end for this CPU: the portable build needs its libggml-cpu-*.so \
             files next to the binary or library (searched: {}; skipped: {}). Copy the whole \
             directory scripts/setup.sh --portable made, or set {GGML_DIR_ENV}",
            if searched.is_empty() {
                "no readable directory".to_owned()
            } else {
                searched.join(", ")
            },
            if skipped.is_empty() {
                "none".to_owned()
            } else {
                skipped.join("; ")
            },
        ));
    };
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| format!("{} contains a NUL byte", path.display()))?;
    // SAFETY: the variant scored > 0, i.e. ggml's own test says its code runs on this CPU.
    unsafe {
        let reg = sys::ggml_backend_load(c_path.as_ptr());
        if reg.is_null() {
            return Err(format!(
                "ggml could not load its CPU back-end {}",
                path.display()
            ));
        }
        let threadpool_new = proc_address(reg, c"ggml_threadpool_new")?;
        let threadpool_free = proc_address(reg, c"ggml_threadpool_free")?;
        // Not offered through the registration: looked up in the library ggml just loaded.
        let handle = libc::dlopen(c_path.as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD);
        let pause = if handle.is_null() {
            std::ptr::null_mut()
        } else {
            libc::dlsym(handle, c"ggml_threadpool_pause".as_ptr())
        };
        let features = reg_features(reg);
        tracing::info!(%variant, library = %path.display(), "ggml CPU variant loaded");
        Ok(CpuBackend {
            threadpool_new: std::mem::transmute::<*mut std::ffi::c_void, ThreadpoolNew>(
                threadpool_new,
            ),
            threadpool_free: std::mem::transmute::<*mut std::ffi::c_void, ThreadpoolFree>(
                threadpool_free,
            ),
            threadpool_pause: (!pause.is_null())
                .then(|| std::mem::transmute::<*mut std::ffi::c_void, ThreadpoolFree>(pause)),
            report: CpuReport {
                build: BUILD,
                variant,
                library: Some(path),
                ggml_features: features,
                compiled_options: Vec::new(),
                cpu_features: detected_cpu_features(),
                skipped_variants: skipped,
                own_output_head: super::head::OutputHead::supported_here(),
            },
        })
    }
}

/// Where the portable build looks for its CPU variants, in order: `$SMALL_AGENT_GGML_DIR`,
/// the directory of the `libggml` this process loaded (the shipped layout: everything in one
/// directory), and the directory the build wrote them to (tests run from the build tree).
#[cfg(feature = "portable")]
fn variant_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os(GGML_DIR_ENV) {
        dirs.push(PathBuf::from(d));
        return dirs;
    }
    // SAFETY: dladdr only reads the loader's tables for an address of a loaded function.
    unsafe {
        let mut info: libc::Dl_info = std::mem::zeroed();
        let addr = sys::ggml_backend_load as *const std::ffi::c_void;
        if libc::dladdr(addr, &mut info) != 0 && !info.dli_fname.is_null() {
            let lib = std::ffi::CStr::from_ptr(info.dli_fname)
                .to_string_lossy()
                .into_owned();
            let lib = std::fs::canonicalize(&lib).unwrap_or_else(|_| PathBuf::from(lib));
            if let Some(dir) = lib.parent() {
                dirs.push(dir.to_path_buf());
            }
        }
    }
    if let Some(dir) = sys::BACKENDS_DIR {
        dirs.push(PathBuf::from(dir));
    }
    dirs
}

/// `icelake` of `libggml-cpu-icelake.so`.
#[cfg(feature = "portable")]
fn variant_name(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    let variant = name.strip_prefix("libggml-cpu-")?.strip_suffix(".so")?;
    (!variant.is_empty()).then(|| variant.to_owned())
}

/// ggml's own score of a CPU variant on this CPU (0: it cannot run here). Its feature test is
/// compiled without the variant's instruction flags, which is what makes calling it safe.
#[cfg(feature = "portable")]
fn variant_score(path: &Path) -> Result<i32, String> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| "NUL in path".to_owned())?;
    // SAFETY: loading a ggml back-end library and calling its score function is what ggml's
    // loader does for every candidate; the handle is closed again.
    unsafe {
        let handle = libc::dlopen(c_path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL);
        if handle.is_null() {
            let err = libc::dlerror();
            let why = if err.is_null() {
                "dlopen failed".to_owned()
            } else {
                std::ffi::CStr::from_ptr(err).to_string_lossy().into_owned()
            };
            return Err(why);
        }
        let f = libc::dlsym(handle, c"ggml_backend_score".as_ptr());
        let score = if f.is_null() {
            Err("no ggml_backend_score".to_owned())
        } else {
            let score: unsafe extern "C" fn() -> i32 = std::mem::transmute(f);
            Ok(score())
        };
        libc::dlclose(handle);
        score
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_needs_the_baseline_and_every_recorded_option() {
        let haswell = [
            "sse3", "ssse3", "sse4.1", "sse4.2", "popcnt", "avx", "f16c", "fma", "bmi2", "avx2",
        ];
        assert!(
            missing_for_native(&["SSE42", "AVX", "AVX2", "FMA", "F16C", "BMI2"], &haswell)
                .is_empty()
        );
        let missing = missing_for_native(&["AVX2", "AVX512", "AVX512_VNNI"], &haswell);
        if cfg!(target_arch = "x86_64") {
            assert_eq!(
                missing,
                [
                    "avx512f",
                    "avx512cd",
                    "avx512vl",
                    "avx512dq",
                    "avx512bw",
                    "avx512vnni"
                ]
            );
            let westmere = ["sse3", "ssse3", "sse4.1", "sse4.2", "popcnt"];
            assert_eq!(
                missing_for_native(&["AVX", "AVX2"], &westmere),
                ["avx", "avx2"]
            );
            assert_eq!(
                missing_for_native(&[], &["sse3"]),
                ["ssse3", "sse4.1", "sse4.2", "popcnt"]
            );
        }
    }

    #[test]
    fn the_amx_variant_is_excluded() {
        assert!(EXCLUDED_VARIANTS
            .iter()
            .any(|(v, _)| *v == "sapphirerapids"));
    }
}
