//! What the server is started with.
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use small_agent::embed::RuntimeConfig;

/// Default port of `small-agent serve`.
pub const DEFAULT_PORT: u16 = 8077;
/// Default cap on a request body.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1 << 20;
/// Default cap on a question, in characters.
pub const DEFAULT_MAX_QUESTION_CHARS: usize = 4_000;
/// Default most parallel sequences of a chat completion (`n`).
pub const DEFAULT_MAX_CHOICES: usize = 4;

/// Agent settings a run gets when its request does not set them, and their caps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDefaults {
    /// SAG candidates per step.
    pub sag: usize,
    /// The most SAG candidates a request may ask for (each session's context holds this
    /// many sequences).
    pub max_sag: usize,
    /// Steps before the fallback answer.
    pub max_steps: usize,
    /// The most steps a request may ask for.
    pub max_steps_cap: usize,
    /// The step grammar on.
    pub grammar: bool,
    /// The agent's prompt template (`--prompt`; a distilled student has its own).
    pub template: small_agent::agent::PromptTemplate,
    /// Where the template came from, for the about panel and `/v1/info`.
    pub template_name: String,
}

impl Default for RunDefaults {
    fn default() -> Self {
        Self {
            sag: 1,
            max_sag: 8,
            max_steps: small_agent::agent::DEFAULT_MAX_STEPS,
            max_steps_cap: 20,
            grammar: true,
            template: small_agent::agent::PromptTemplate::builtin(),
            template_name: "models/prompts/agent-default.toml (built in)".into(),
        }
    }
}

/// Everything the server needs to start.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Address to bind.
    pub host: IpAddr,
    /// Port to bind (0: any free port, see [`crate::ServerHandle::addr`]).
    pub port: u16,
    /// Agent sessions in the pool (0: what the cores and memory allow).
    pub sessions: usize,
    /// Requests that may wait for a session; past that, `503`.
    pub queue: usize,
    /// Bearer token every API request must carry; required for a non-loopback `host`.
    pub api_key: Option<String>,
    /// Origins (`scheme://host[:port]`) whose cross-origin requests are allowed.
    pub cors_origins: Vec<String>,
    /// Cap on a request body.
    pub max_body_bytes: usize,
    /// Cap on a question (agent runs) in characters.
    pub max_question_chars: usize,
    /// Most `n` of a chat completion.
    pub max_choices: usize,
    /// Agent defaults and caps.
    pub run: RunDefaults,
    /// Model, shard, interpreter and limits. `threads == 0`: the cores shared out over the
    /// sessions.
    pub runtime: RuntimeConfig,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: DEFAULT_PORT,
            sessions: 0,
            queue: 8,
            api_key: None,
            cors_origins: Vec::new(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_question_chars: DEFAULT_MAX_QUESTION_CHARS,
            max_choices: DEFAULT_MAX_CHOICES,
            run: RunDefaults::default(),
            runtime: RuntimeConfig::default(),
        }
    }
}

/// Memory one session needs beyond the shared model, roughly: its KV cache (~23 KB per
/// cell on the default model, for the context plus the SAG candidates' room), the bare-model
/// context of chat completions, and a Python interpreter (the full flavour's linear memory
/// and compiled code).
const SESSION_BYTES_ESTIMATE: u64 = 700 << 20;

impl ServeConfig {
    /// The socket address to bind.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.port)
    }

    /// Refuses unsafe or impossible settings: a non-loopback host without an API key, an
    /// empty key, CORS origins that are not origins, caps of zero.
    pub fn validate(&self) -> Result<(), crate::ServeError> {
        let bad = |m: String| Err(crate::ServeError::Config(m));
        if let Some(k) = &self.api_key {
            if k.trim().is_empty() {
                return bad("the API key is empty".into());
            }
        }
        if !self.host.is_loopback() && self.api_key.is_none() {
            return bad(format!(
                "--host {}: refusing to listen beyond this machine without an API key \
                 (give --api-key-file FILE, or keep the default 127.0.0.1)",
                self.host
            ));
        }
        for o in &self.cors_origins {
            let rest = o
                .strip_prefix("http://")
                .or_else(|| o.strip_prefix("https://"))
                .unwrap_or("");
            if rest.is_empty() || rest.contains(['/', '*', ' ']) {
                return bad(format!(
                    "--cors-origin {o}: expected an origin such as http://localhost:3000 \
                     (scheme://host[:port], no path, no wildcard)"
                ));
            }
        }
        if self.max_body_bytes < 1024 {
            return bad("the body cap must be at least 1024 bytes".into());
        }
        if self.max_question_chars == 0 || self.max_choices == 0 {
            return bad("the question and choice caps must be positive".into());
        }
        if self.run.sag == 0 || self.run.sag > self.run.max_sag {
            return bad(format!(
                "--sag {}: must be between 1 and --max-sag ({})",
                self.run.sag, self.run.max_sag
            ));
        }
        if self.run.max_steps == 0 || self.run.max_steps > self.run.max_steps_cap {
            return bad(format!(
                "--max-steps {}: must be between 1 and {}",
                self.run.max_steps, self.run.max_steps_cap
            ));
        }
        Ok(())
    }

    /// Sessions to open: the setting, else one per two cores (a session's decoding uses
    /// every thread it gets; two sessions on two cores halve each other's speed) within
    /// what the available memory holds, at least 1 and at most 8. Returns the count and
    /// why.
    pub fn session_count(&self) -> (usize, String) {
        if self.sessions > 0 {
            return (self.sessions, "--sessions".into());
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let by_cores = (cores / 2).max(1);
        let by_memory = available_memory_bytes()
            .map(|m| (m / SESSION_BYTES_ESTIMATE).max(1) as usize)
            .unwrap_or(by_cores);
        let n = by_cores.min(by_memory).clamp(1, 8);
        (
            n,
            format!(
                "{cores} cores -> {by_cores}, memory -> {by_memory} (~{} MiB each)",
                SESSION_BYTES_ESTIMATE >> 20
            ),
        )
    }

    /// Threads of each session's decoding: the setting, else the cores shared out.
    pub fn threads_per_session(&self, sessions: usize) -> i32 {
        if self.runtime.threads > 0 {
            return self.runtime.threads;
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        (cores / sessions.max(1)).max(1) as i32
    }
}

/// `MemAvailable` of `/proc/meminfo`, where there is one.
fn available_memory_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_loopback_needs_a_key() {
        let mut c = ServeConfig {
            host: "0.0.0.0".parse().unwrap(),
            ..ServeConfig::default()
        };
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("API key"), "{e}");
        c.api_key = Some("k".into());
        c.validate().unwrap();
        assert!(ServeConfig::default().validate().is_ok());
    }

    #[test]
    fn cors_origins_must_be_origins() {
        for bad in ["*", "localhost:3000", "http://x/path", "http://"] {
            let c = ServeConfig {
                cors_origins: vec![bad.into()],
                ..ServeConfig::default()
            };
            assert!(c.validate().is_err(), "{bad} accepted");
        }
        let c = ServeConfig {
            cors_origins: vec!["http://localhost:3000".into()],
            ..ServeConfig::default()
        };
        c.validate().unwrap();
    }
}
