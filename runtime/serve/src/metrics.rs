//! Counters for `GET /metrics`, in Prometheus' text format.
use std::{
    fmt::Write,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
};

/// The server's counters. Gauges (queue depth, busy sessions) are read from the pool when
/// the page is rendered.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Agent runs started.
    pub agent_runs: AtomicU64,
    /// Agent runs that ended cancelled (Stop, DELETE, disconnect, shutdown).
    pub agent_runs_cancelled: AtomicU64,
    /// Chat completion requests answered.
    pub chat_completions: AtomicU64,
    /// Requests refused with 503 because the queue was full.
    pub rejected_busy: AtomicU64,
    /// Panics caught in a session (the session is rebuilt).
    pub panics: AtomicU64,
    /// Tokens generated (agent steps and chat completions).
    pub generated_tokens: AtomicU64,
    /// Prompt tokens evaluated (not counting cached ones).
    pub prompt_tokens: AtomicU64,
    /// Microseconds spent generating.
    pub generation_us: AtomicU64,
    /// Microseconds of sandbox (Python) time.
    pub sandbox_us: AtomicU64,
    /// HTTP responses by status class (index 1..=5 for 1xx..5xx).
    pub responses: [AtomicU64; 6],
}

impl Metrics {
    /// Adds one engine call's counts.
    pub fn add_llm(&self, s: &small_agent::CallStats) {
        self.generated_tokens
            .fetch_add(s.gen_tokens as u64, Relaxed);
        self.prompt_tokens.fetch_add(
            s.prompt_tokens.saturating_sub(s.cached_tokens) as u64,
            Relaxed,
        );
        self.generation_us
            .fetch_add((s.gen_ms * 1e3) as u64, Relaxed);
    }

    /// Counts one response.
    pub fn count_response(&self, status: u16) {
        let class = (status / 100).min(5) as usize;
        self.responses[class].fetch_add(1, Relaxed);
    }

    /// The text of `GET /metrics`.
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut s = String::new();
        let mut counter = |name: &str, help: &str, v: u64| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        counter(
            "small_agent_agent_runs_total",
            "Agent runs started.",
            self.agent_runs.load(Relaxed),
        );
        counter(
            "small_agent_agent_runs_cancelled_total",
            "Agent runs that ended cancelled.",
            self.agent_runs_cancelled.load(Relaxed),
        );
        counter(
            "small_agent_chat_completions_total",
            "Chat completion requests answered.",
            self.chat_completions.load(Relaxed),
        );
        counter(
            "small_agent_rejected_busy_total",
            "Requests refused with 503 (queue full).",
            self.rejected_busy.load(Relaxed),
        );
        counter(
            "small_agent_panics_total",
            "Panics caught in a session.",
            self.panics.load(Relaxed),
        );
        counter(
            "small_agent_generated_tokens_total",
            "Tokens generated.",
            self.generated_tokens.load(Relaxed),
        );
        counter(
            "small_agent_prompt_tokens_total",
            "Prompt tokens evaluated (cache hits excluded).",
            self.prompt_tokens.load(Relaxed),
        );
        let gen_s = self.generation_us.load(Relaxed) as f64 / 1e6;
        let sandbox_s = self.sandbox_us.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(
            s,
            "# HELP small_agent_generation_seconds_total Time spent generating.\n\
             # TYPE small_agent_generation_seconds_total counter\n\
             small_agent_generation_seconds_total {gen_s:.6}\n\
             # HELP small_agent_sandbox_seconds_total Time spent running Python in the sandbox.\n\
             # TYPE small_agent_sandbox_seconds_total counter\n\
             small_agent_sandbox_seconds_total {sandbox_s:.6}"
        );
        let tps = if gen_s > 0.0 {
            self.generated_tokens.load(Relaxed) as f64 / gen_s
        } else {
            0.0
        };
        let _ = writeln!(
            s,
            "# HELP small_agent_tokens_per_second Generated tokens per second of generation time, since start.\n\
             # TYPE small_agent_tokens_per_second gauge\n\
             small_agent_tokens_per_second {tps:.3}"
        );
        let _ = writeln!(
            s,
            "# HELP small_agent_http_responses_total HTTP responses by status class.\n\
             # TYPE small_agent_http_responses_total counter"
        );
        for (class, c) in self.responses.iter().enumerate().skip(1) {
            let _ = writeln!(
                s,
                "small_agent_http_responses_total{{class=\"{class}xx\"}} {}",
                c.load(Relaxed)
            );
        }
        let _ = writeln!(
            s,
            "# HELP small_agent_queue_depth Requests waiting for a session.\n\
             # TYPE small_agent_queue_depth gauge\n\
             small_agent_queue_depth {}\n\
             # HELP small_agent_sessions_busy Sessions answering a request.\n\
             # TYPE small_agent_sessions_busy gauge\n\
             small_agent_sessions_busy {}\n\
             # HELP small_agent_sessions Sessions in the pool.\n\
             # TYPE small_agent_sessions gauge\n\
             small_agent_sessions {}",
            gauges.queued, gauges.busy, gauges.sessions
        );
        s
    }
}

/// Gauges read from the pool.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Gauges {
    /// Sessions in the pool.
    pub sessions: usize,
    /// Sessions answering a request.
    pub busy: usize,
    /// Requests waiting.
    pub queued: usize,
    /// Queue capacity.
    pub queue_capacity: usize,
}
