//! The LLM engine: a GGUF model through llama.cpp, sessions that keep their KV cache, and
//! streaming generation with stop strings, sampling and optional GBNF grammars.
//!
//! A [`Session`] owns one llama.cpp context. Sequence 0 holds the conversation; every call
//! compares its prompt with the tokens already in the cache and evaluates only the new
//! suffix. The context is created with room for several sequences, so candidates that share
//! the prompt can later be decoded side by side ([`Session::fork_sequence`]).

pub mod adapter;
mod capture;
pub mod cpu;
pub mod head;
mod logits;
mod model;
mod nucleus;
mod parallel;
mod sampling;
mod session;
pub mod split;
mod stop;
mod threadpool;
mod utf8;
mod vocab;

use std::{
    num::NonZeroU32,
    path::{Path, PathBuf},
    sync::OnceLock,
    time::Instant,
};

use llama_cpp_2::{
    context::{params::LlamaContextParams, LlamaContext},
    llama_backend::LlamaBackend,
    llama_batch::LlamaBatch,
    model::{params::LlamaModelParams, LlamaChatMessage, LlamaChatTemplate, LlamaModel},
    sampling::LlamaSampler,
    token::{data::LlamaTokenData, data_array::LlamaTokenDataArray},
};
use serde::Serialize;

/// Token ids as the engine takes and gives them (llama.cpp's).
pub use llama_cpp_2::token::LlamaToken;
use nucleus::Nucleus;
pub use stop::StopBuffer;
use utf8::Utf8Decoder;

use capture::*;
pub use model::{LoadOptions, Model};
pub use sampling::SamplingParams;
use session::*;
pub use session::{
    default_threads, AfterEnd, CallStats, Completion, FinishReason, GenerateParams, Session,
    SessionParams,
};

/// Default context size in tokens (the agent's prompts plus five steps fit comfortably).
pub const DEFAULT_CTX_SIZE: u32 = 4096;
/// Default logical batch: how many prompt tokens one `llama_decode` call takes.
pub const DEFAULT_BATCH: u32 = 512;
/// Micro-batch of a context without flash attention (see `Session::new`).
const PLAIN_ATTENTION_UBATCH: u32 = 128;
/// Default number of parallel sequences a session's context can hold.
pub const DEFAULT_SEQUENCES: u32 = 1;
/// Default cap on generated tokens per call.
pub const DEFAULT_MAX_TOKENS: u32 = 512;
/// Default sampling temperature (0 means greedy).
pub const DEFAULT_TEMPERATURE: f32 = 0.7;
/// Default nucleus threshold.
pub const DEFAULT_TOP_P: f32 = 0.95;
/// Default top-k (0 disables it).
pub const DEFAULT_TOP_K: i32 = 40;
/// Default min-p.
pub const DEFAULT_MIN_P: f32 = 0.05;
/// Default repeat penalty (1.0 disables it).
pub const DEFAULT_REPEAT_PENALTY: f32 = 1.0;
/// How many recent tokens the repeat penalty looks at.
pub const DEFAULT_REPEAT_LAST_N: i32 = 64;
/// Default sampling seed.
pub const DEFAULT_SEED: u32 = 42;
/// Magic bytes every GGUF file starts with.
const GGUF_MAGIC: &[u8; 4] = b"GGUF";

/// Errors of the engine. Messages name sizes and paths and say what to do.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The model file does not exist.
    #[error(
        "model file {0} does not exist: run `small-agent models fetch` for the default model, \
         or pass --model PATH to a GGUF file"
    )]
    ModelNotFound(PathBuf),
    /// The file exists but is not GGUF.
    #[error(
        "{path} is not a GGUF model (it starts with {found:?}, expected \"GGUF\"): pass a .gguf file"
    )]
    NotGguf {
        /// The file.
        path: PathBuf,
        /// Its first bytes.
        found: String,
    },
    /// llama.cpp refused the file.
    #[error(
        "llama.cpp could not load {path} ({size} B): the file is truncated, corrupt or of an \
         unsupported architecture; re-fetch it (`small-agent models fetch`) or check its \
         sha256. Details: RUST_LOG=llama-cpp-2=debug"
    )]
    LoadFailed {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// The LoRA adapter file does not exist.
    #[error(
        "LoRA adapter {0} does not exist: pass --adapter PATH to an adapter GGUF (written by \
         `small-agent-distill export --adapter`), or leave --adapter out"
    )]
    AdapterNotFound(PathBuf),
    /// The file is no LoRA adapter GGUF, or not one of this model.
    #[error(
        "the LoRA adapter {adapter} does not fit the model {model}: {reason}; pass an adapter \
         exported for this model (`small-agent-distill export --adapter` of a run trained on it)"
    )]
    AdapterMismatch {
        /// The adapter.
        adapter: PathBuf,
        /// The model.
        model: PathBuf,
        /// What does not fit.
        reason: String,
    },
    /// The prompt does not fit into the context.
    #[error(
        "the prompt is {prompt_tokens} tokens but the context holds {n_ctx}; shorten the input \
         or raise the context size (--ctx-size, the model was trained with {n_ctx_train})"
    )]
    ContextOverflow {
        /// Tokens of the prompt.
        prompt_tokens: usize,
        /// Context size.
        n_ctx: u32,
        /// The model's training context.
        n_ctx_train: u32,
    },
    /// The grammar does not parse.
    #[error("the GBNF grammar is invalid ({0}); llama.cpp logs the parse error under RUST_LOG=llama-cpp-2=warn")]
    Grammar(String),
    /// A parameter is out of range.
    #[error("invalid parameter: {0}")]
    InvalidParameter(String),
    /// This CPU cannot run this build's ggml code, or the portable build's CPU variants are
    /// missing (the message says which and what to do).
    #[error("{0}")]
    Cpu(String),
    /// Anything else llama.cpp reported.
    #[error("llama.cpp: {0}")]
    Llama(String),
}

/// Result alias of the engine.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;

fn llama_err(e: impl std::fmt::Display) -> EngineError {
    EngineError::Llama(e.to_string())
}

/// llama.cpp's backend is process-wide and may be initialised once. Before it, and before
/// any other ggml code, [`cpu::init`] refuses a CPU this build cannot run on, or loads the CPU
/// variant that fits it (portable build).
fn backend() -> Result<&'static LlamaBackend> {
    cpu::init()?;
    static BACKEND: OnceLock<std::result::Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| LlamaBackend::init().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| EngineError::Llama(e.clone()))
}

/// Sends llama.cpp's and ggml's log lines to `tracing` (once per process), before either
/// logs anything.
fn route_llama_logs() {
    static LOGS: std::sync::Once = std::sync::Once::new();
    LOGS.call_once(|| llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default()));
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

impl ChatMessage {
    /// A message with the given role.
    pub fn new(role: &str, content: impl Into<String>) -> Self {
        Self {
            role: role.to_owned(),
            content: content.into(),
        }
    }
}
