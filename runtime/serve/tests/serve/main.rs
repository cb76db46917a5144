//! Tests of `small-agent-serve` as a person and their tools use it: the real binary on
//! loopback with the real default model, shard and interpreter (installed by
//! `scripts/setup.sh`), spoken to over HTTP.
//!
//! Most tests share one server (2 sessions); tests that need other flags (a key, CORS, a
//! pool of 1, shutdown) start their own.
mod agent;
mod bench;
mod browser;
mod common;
mod openai;
mod pool;
mod remote;
mod security;
