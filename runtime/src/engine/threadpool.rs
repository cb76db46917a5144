//! A persistent ggml CPU thread pool attached to a session's context.
//!
//! Without one, ggml starts and joins a throw-away pool for every graph it computes, that
//! is for every generated token; at small models and two threads that start-up is several
//! percent of a token's time. llama-bench attaches a persistent pool, and so do we.
//!
//! `llama-cpp-2` keeps the context pointer crate-private; its `Debug` output is the one
//! public place that shows it. We read it from there and check it against the context's
//! own size before use; if either step fails the session runs without a pool (correct,
//! a little slower) and says so in the log.

use llama_cpp_2::context::LlamaContext;
use llama_cpp_sys_2 as sys;

/// A ggml thread pool, freed on drop. It must outlive every use by the context it is
/// attached to: [`super::Session`] declares it after the context so it drops later.
pub(crate) struct CpuThreadPool {
    raw: *mut sys::ggml_threadpool,
    cpu: &'static super::cpu::CpuBackend,
}

// SAFETY: the pool is only handed to llama.cpp and freed; ggml synchronises its workers.
unsafe impl Send for CpuThreadPool {}

impl CpuThreadPool {
    /// Creates a pool of `n_threads` workers and attaches it to `ctx` for both single-token
    /// and batch decoding. `None` when it could not be done (logged).
    pub(crate) fn attach(ctx: &LlamaContext<'_>, n_threads: i32) -> Option<Self> {
        let Some(raw_ctx) = context_pointer(ctx) else {
            tracing::warn!(
                "llama context pointer not found; decoding without a persistent thread pool"
            );
            return None;
        };
        let Some(cpu) = super::cpu::backend() else {
            tracing::warn!("no CPU back-end; decoding without a persistent thread pool");
            return None;
        };
        // SAFETY: ggml_threadpool_params_default (ggml-base) only fills a struct.
        let mut tpp = unsafe { sys::ggml_threadpool_params_default(n_threads) };
        let raw = cpu.threadpool_new(&mut tpp);
        if raw.is_null() {
            tracing::warn!("ggml_threadpool_new failed; decoding without a persistent thread pool");
            return None;
        }
        // SAFETY: raw_ctx was checked to be this live context; raw is a live pool.
        unsafe { sys::llama_attach_threadpool(raw_ctx, raw, raw) };
        tracing::debug!(n_threads, "persistent ggml thread pool attached");
        Some(Self { raw, cpu })
    }

    /// Sends the workers to sleep now instead of letting them poll for the next graph (they
    /// poll for a long while by default, holding a core). The next graph wakes them.
    pub(crate) fn pause(&self) {
        // SAFETY: a live pool; pausing only sets a flag under the pool's mutex.
        unsafe { self.cpu.threadpool_pause(self.raw) };
    }
}

impl Drop for CpuThreadPool {
    fn drop(&mut self) {
        // SAFETY: the context that used the pool has been dropped before (field order).
        unsafe { self.cpu.threadpool_free(self.raw) };
    }
}

/// The `llama_context*` inside `ctx`, read from its `Debug` output
/// (`LlamaContext { context: 0x… }`) and confirmed by asking that pointer for the
/// context size, which must equal what the safe wrapper reports.
fn context_pointer(ctx: &LlamaContext<'_>) -> Option<*mut sys::llama_context> {
    let shown = format!("{ctx:?}");
    let hex = shown.split("context: 0x").nth(1)?;
    let hex: String = hex.chars().take_while(char::is_ascii_hexdigit).collect();
    let addr = usize::from_str_radix(&hex, 16).ok()?;
    if addr == 0 {
        return None;
    }
    let raw = addr as *mut sys::llama_context;
    // SAFETY: `addr` is the address `Debug` printed for this live context.
    let n_ctx = unsafe { sys::llama_n_ctx(raw) };
    (n_ctx == ctx.n_ctx()).then_some(raw)
}
