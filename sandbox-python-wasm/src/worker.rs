//! A thread that owns one interpreter instance and runs jobs against it.
//!
//! Guest code runs on a thread with a large native stack: wasmtime runs wasm on the calling
//! thread's stack, the interpreter is given an 8 MiB wasm stack (deep recursion must end in
//! RecursionError, not a crash), and test or application threads often have only 2 MiB.

use crate::{Result, SandboxError};
use std::sync::mpsc;
use std::thread::JoinHandle;

/// Native stack of a guest thread: the wasm stack plus room for host frames.
pub(crate) const GUEST_THREAD_STACK: usize = crate::limits::WASM_STACK_BYTES * 4;

/// Extra wait past an exec's timeout before the host gives up on a worker whose guest neither
/// answered nor trapped (e.g. stuck inside a slow host tool), in both back-ends.
pub(crate) const HOST_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

type Job<I> = Box<dyn FnOnce(&mut I) + Send>;

pub(crate) struct Worker<I: Send + 'static> {
    tx: Option<mpsc::Sender<Job<I>>>,
    handle: Option<JoinHandle<()>>,
}

impl<I: Send + 'static> Worker<I> {
    /// Starts the thread and builds the instance on it (building may run guest code).
    pub(crate) fn spawn(init: impl FnOnce() -> Result<I> + Send + 'static) -> Result<Self> {
        let (tx, rx) = mpsc::channel::<Job<I>>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
        let handle = std::thread::Builder::new()
            .name("sandbox-python".into())
            .stack_size(GUEST_THREAD_STACK)
            .spawn(move || {
                let mut inst = match init() {
                    Ok(i) => {
                        let _ = ready_tx.send(Ok(()));
                        i
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                while let Ok(job) = rx.recv() {
                    job(&mut inst);
                }
            })
            .map_err(|e| SandboxError::io("spawning the interpreter thread", "-", e))?;
        ready_rx.recv().map_err(|_| SandboxError::WorkerGone)??;
        Ok(Worker {
            tx: Some(tx),
            handle: Some(handle),
        })
    }

    /// Runs `f` on the worker and waits for its result.
    pub(crate) fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut I) -> R + Send + 'static,
    ) -> Result<R> {
        self.call_timeout(f, None)
    }

    /// Like `call`, but gives up after `limit`: the host must never hang on a guest (or a host
    /// tool) that neither finishes nor traps. A worker that timed out must be `abandon`ed.
    pub(crate) fn call_timeout<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut I) -> R + Send + 'static,
        limit: Option<std::time::Duration>,
    ) -> Result<R> {
        let (rtx, rrx) = mpsc::sync_channel(1);
        let job: Job<I> = Box::new(move |i| {
            let _ = rtx.send(f(i));
        });
        self.tx
            .as_ref()
            .ok_or(SandboxError::WorkerGone)?
            .send(job)
            .map_err(|_| SandboxError::WorkerGone)?;
        match limit {
            None => rrx.recv().map_err(|_| SandboxError::WorkerGone),
            Some(d) => rrx.recv_timeout(d).map_err(|_| SandboxError::WorkerGone),
        }
    }

    /// For an exec whose worker did not answer in time (stuck outside wasm, e.g. in a host
    /// tool that never returns): leaves that thread behind, puts a new worker from `spawn`
    /// in its place and reports the exec as failed with `err`.
    pub(crate) fn replace_stuck(
        &mut self,
        spawn: impl FnOnce() -> Result<Self>,
        err: crate::SandboxError,
        started: std::time::Instant,
    ) -> crate::ExecResult {
        let fresh = match spawn() {
            Ok(w) => w,
            Err(e2) => return crate::session::failed_exec(e2, started),
        };
        std::mem::replace(self, fresh).abandon();
        crate::session::failed_exec(err, started)
    }

    /// Lets the thread finish on its own, without waiting for it.
    pub(crate) fn abandon(mut self) {
        self.tx.take();
        self.handle.take();
    }
}

impl<I: Send + 'static> Drop for Worker<I> {
    fn drop(&mut self) {
        // Closing the channel ends the thread's loop; the instance is dropped on its own thread.
        self.tx.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
