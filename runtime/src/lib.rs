//! small-agent's runtime library: the LLM engine over llama.cpp, the code agent on top of it
//! (Python in the WASM sandbox, `web_search` over a local shard), asset locations, and the
//! benchmarks that hold the engine to llama.cpp's own speed. [`embed`] is the API for
//! applications (a shared runtime, sessions, cancellation); [`ffi`] exposes it as a C ABI.
#![warn(missing_docs)]

pub mod agent;
pub mod assets;
pub mod bench;
pub mod chat;
pub mod embed;
pub mod engine;
pub mod evaluate;
pub mod ffi;

pub use engine::{
    CallStats, ChatMessage, Completion, EngineError, FinishReason, GenerateParams, Model,
    SamplingParams, Session, SessionParams,
};
