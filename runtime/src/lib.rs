//! small-agent's runtime library: the LLM engine over llama.cpp and the benchmarks that
//! hold it to llama.cpp's own speed. The agent loop, its tools and the C ABI build on this.
#![warn(missing_docs)]

pub mod agent;
pub mod bench;
pub mod engine;

pub use engine::{
    CallStats, ChatMessage, Completion, EngineError, FinishReason, GenerateParams, Model,
    SamplingParams, Session, SessionParams,
};
