//! small-agent's desktop assistant: the agent and the bare model over HTTP.
//!
//! One process loads the runtime once (model, knowledge shard, interpreter) and keeps a pool
//! of agent sessions, each on a thread of its own ([`pool`]); requests take a free session
//! or wait in a bounded queue, and past the queue get `503` with `Retry-After`. The routes:
//!
//! - `/` and its two assets: the page, embedded in the binary ([`page`]);
//! - `POST /v1/agent/runs`: an agent run, streamed as Server-Sent Events or answered with the
//!   JSON of `small-agent ask --json`; `DELETE /v1/agent/runs/{id}` cancels ([`agent_api`]);
//! - `POST /v1/chat/completions`, `GET /v1/models`: OpenAI-compatible, on the bare model
//!   ([`openai`]);
//! - `GET /health`, `GET /metrics` (Prometheus text, [`metrics`]).
//!
//! Every request first passes the safety checks of [`security`]: the Host header (DNS
//! rebinding), the Origin (CORS), the API key. The agent loop knows nothing of HTTP: this
//! crate uses the runtime's embedding API ([`small_agent::embed`]).
#![warn(missing_docs)]

pub mod agent_api;
pub mod config;
pub mod error;
pub mod metrics;
pub mod openai;
pub mod page;
pub mod pool;
pub mod security;
pub mod server;
pub mod sources;
mod worker;

pub use config::{RunDefaults, ServeConfig};
pub use error::{ApiError, ServeError};
pub use server::Server;
