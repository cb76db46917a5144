//! The session pool: N agent sessions, each owned by a thread of its own, a bounded queue of
//! requests waiting for one, and the cancellation of runs.
//!
//! A request first takes a permit (a [`tokio::sync::Semaphore`] with one permit per session,
//! fair: first come, first served); while every permit is out it waits, unless `queue`
//! requests wait already: then it is refused with 503. With a permit it takes a free
//! session ([`Lease`]): the one that holds its conversation when that one is free (the
//! agent's memory and Python state carry over), else one without a conversation, else the
//! one used longest ago. The lease travels with the job to the session's thread and is
//! dropped there when the job has ended: a session goes back to the pool only once its
//! run has really stopped, however the client left.
use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc, Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use small_agent_sandbox::CancelFlag;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::{
    error::ApiError,
    metrics::{Gauges, Metrics},
    worker::Job,
};

/// The pool.
pub struct Pool {
    /// The sessions' job channels; emptied by [`Pool::close`], which ends the threads.
    workers: Mutex<Vec<mpsc::Sender<Job>>>,
    sessions: usize,
    permits: Arc<Semaphore>,
    state: Mutex<PoolState>,
    queue_cap: usize,
    /// The server's counters.
    pub metrics: Arc<Metrics>,
    runs: Mutex<HashMap<String, Arc<JobControl>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// Mean wall time of recent jobs, in milliseconds (for `Retry-After`).
    mean_job_ms: AtomicU64,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("sessions", &self.sessions)
            .field("queue_cap", &self.queue_cap)
            .finish_non_exhaustive()
    }
}

struct PoolState {
    free: Vec<usize>,
    waiting: usize,
    /// The conversation each session holds, and when it was last used.
    holds: Vec<(Option<String>, Instant)>,
    closed: bool,
}

impl Pool {
    /// A pool over the sessions' job channels (see `worker::spawn`).
    pub(crate) fn new(
        workers: Vec<mpsc::Sender<Job>>,
        threads: Vec<JoinHandle<()>>,
        queue_cap: usize,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let n = workers.len();
        Arc::new(Self {
            permits: Arc::new(Semaphore::new(n)),
            state: Mutex::new(PoolState {
                free: (0..n).rev().collect(),
                waiting: 0,
                holds: vec![(None, Instant::now()); n],
                closed: false,
            }),
            workers: Mutex::new(workers),
            sessions: n,
            queue_cap,
            metrics,
            runs: Mutex::new(HashMap::new()),
            threads: Mutex::new(threads),
            mean_job_ms: AtomicU64::new(10_000),
        })
    }

    /// Sessions in the pool.
    pub fn sessions(&self) -> usize {
        self.sessions
    }

    /// Sessions busy, requests waiting.
    pub fn gauges(&self) -> Gauges {
        let st = self.state.lock().unwrap();
        Gauges {
            sessions: self.sessions,
            busy: self.sessions - st.free.len(),
            queued: st.waiting,
            queue_capacity: self.queue_cap,
        }
    }

    /// Takes a session, waiting in the queue when all are busy. `conversation`: the
    /// conversation the request continues, if any. Returns the lease and whether the
    /// session holds that conversation (its state carries over).
    pub(crate) async fn acquire(
        self: &Arc<Self>,
        conversation: Option<&str>,
    ) -> Result<(Lease, bool), ApiError> {
        {
            let mut st = self.state.lock().unwrap();
            if st.closed {
                return Err(ApiError::ShuttingDown);
            }
            if self.permits.available_permits() == 0 && st.waiting >= self.queue_cap {
                drop(st);
                self.metrics
                    .rejected_busy
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Err(ApiError::Busy {
                    retry_after_s: self.retry_after_s(),
                });
            }
            st.waiting += 1;
        }
        // Decrements `waiting` however the wait ends (a client that leaves drops this future).
        struct Waiting<'a>(&'a Pool);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.state.lock().unwrap().waiting -= 1;
            }
        }
        let waiting = Waiting(self);
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ApiError::ShuttingDown)?;
        drop(waiting);
        let mut st = self.state.lock().unwrap();
        if st.closed {
            return Err(ApiError::ShuttingDown);
        }
        let held = conversation.and_then(|c| {
            st.free
                .iter()
                .position(|&w| st.holds[w].0.as_deref() == Some(c))
        });
        let pos = held.unwrap_or_else(|| {
            // A session without a conversation, else the one used longest ago.
            (0..st.free.len())
                .min_by_key(|&p| {
                    let w = st.free[p];
                    (st.holds[w].0.is_some(), st.holds[w].1)
                })
                .expect("a permit guarantees a free session")
        });
        let worker = st.free.swap_remove(pos);
        st.holds[worker].1 = Instant::now();
        Ok((
            Lease {
                pool: self.clone(),
                worker,
                started: Instant::now(),
                _permit: Some(permit),
            },
            held.is_some(),
        ))
    }

    /// Records that session `worker` now holds `conversation` (after an agent run there).
    pub(crate) fn set_conversation(&self, worker: usize, conversation: Option<String>) {
        self.state.lock().unwrap().holds[worker].0 = conversation;
    }

    /// Hands a job to its session's thread.
    pub(crate) fn submit(&self, job: Job) -> Result<(), ApiError> {
        let w = job.lease.worker;
        let workers = self.workers.lock().unwrap();
        let Some(tx) = workers.get(w) else {
            return Err(ApiError::ShuttingDown);
        };
        tx.send(job)
            .map_err(|_| ApiError::Internal("the session's thread has ended".into()))
    }

    /// Registers a run so that `DELETE /v1/agent/runs/{id}` finds it.
    pub(crate) fn register(&self, id: &str, control: Arc<JobControl>) {
        self.runs.lock().unwrap().insert(id.to_owned(), control);
    }

    /// Forgets a run.
    pub(crate) fn unregister(&self, id: &str) {
        self.runs.lock().unwrap().remove(id);
    }

    /// Cancels a registered run; `false` when there is none of that id.
    pub fn cancel_run(&self, id: &str) -> bool {
        let control = self.runs.lock().unwrap().get(id).cloned();
        match control {
            Some(c) => {
                c.cancel();
                true
            }
            None => false,
        }
    }

    /// Refuses new requests, cancels every registered run and wakes the waiters (they get
    /// 503). The sessions finish their current job (cancelled, so promptly).
    pub fn close(&self) {
        self.state.lock().unwrap().closed = true;
        self.permits.close();
        for c in self.runs.lock().unwrap().values() {
            c.cancel();
        }
        // Each thread ends once its current job has.
        self.workers.lock().unwrap().clear();
    }

    /// Waits until the sessions' threads have ended (after [`Pool::close`] and once the
    /// senders are gone) or `timeout` passed; `true` when all ended.
    pub fn join(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let threads = std::mem::take(&mut *self.threads.lock().unwrap());
        let mut all = true;
        for t in threads {
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if t.is_finished() {
                let _ = t.join();
            } else {
                all = false;
            }
        }
        all
    }

    fn retry_after_s(&self) -> u64 {
        let mean = self.mean_job_ms.load(Ordering::Relaxed);
        (mean / 1000).clamp(1, 60)
    }

    fn job_ended(&self, worker: usize, took: Duration) {
        let ms = took.as_millis() as u64;
        let old = self.mean_job_ms.load(Ordering::Relaxed);
        self.mean_job_ms
            .store((old * 3 + ms) / 4, Ordering::Relaxed);
        self.state.lock().unwrap().free.push(worker);
    }
}

/// A session taken from the pool; dropping it (on the session's thread, once the job has
/// ended) gives the session back and releases the permit, in that order.
pub struct Lease {
    pool: Arc<Pool>,
    pub(crate) worker: usize,
    started: Instant,
    _permit: Option<OwnedSemaphorePermit>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("worker", &self.worker)
            .finish()
    }
}

impl Lease {
    /// The pool.
    pub(crate) fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.pool.job_ended(self.worker, self.started.elapsed());
        // `_permit` is dropped after this: the next waiter finds the session free.
    }
}

/// Cancellation of one job, from any thread: the HTTP side (DELETE, a client that left,
/// shutdown) calls [`JobControl::cancel`]; the session's thread brackets the run with
/// [`JobControl::start`] and [`JobControl::finish`]. The session's cancel flag is raised
/// only while this job runs on it, so a late cancel never stops the session's next job.
#[derive(Debug, Default)]
pub struct JobControl {
    cancelled: AtomicBool,
    running: Mutex<Option<CancelFlag>>,
}

impl JobControl {
    /// Asks the job to stop (now, or before it starts).
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        if let Some(flag) = &*self.running.lock().unwrap() {
            flag.raise();
        }
    }

    /// Whether cancellation was asked for.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    /// The job starts on a session with this cancel flag; `false` when it was cancelled
    /// already (then it must not run).
    pub fn start(&self, flag: &CancelFlag) -> bool {
        let mut running = self.running.lock().unwrap();
        if self.is_cancelled() {
            return false;
        }
        *running = Some(flag.clone());
        true
    }

    /// The job has ended: the flag is lowered (a cancel that landed after the run returned
    /// must not refuse the session's next run) and no later cancel touches it.
    pub fn finish(&self) {
        if let Some(flag) = self.running.lock().unwrap().take() {
            flag.lower();
        }
    }
}
