//! The LLM engine: a GGUF model through llama.cpp, sessions that keep their KV cache, and
//! streaming generation with stop strings, sampling and optional GBNF grammars.
//!
//! A [`Session`] owns one llama.cpp context. Sequence 0 holds the conversation; every call
//! compares its prompt with the tokens already in the cache and evaluates only the new
//! suffix. The context is created with room for several sequences, so candidates that share
//! the prompt can later be decoded side by side ([`Session::fork_sequence`]).

pub mod cpu;
pub mod head;
mod nucleus;
pub mod split;
mod stop;
mod threadpool;
mod utf8;

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
    token::{data::LlamaTokenData, data_array::LlamaTokenDataArray, LlamaToken},
};
use serde::Serialize;

use nucleus::Nucleus;
pub use stop::StopBuffer;
use utf8::Utf8Decoder;

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

/// A loaded GGUF model (weights are memory-mapped; load is cheap).
pub struct Model {
    inner: LlamaModel,
    path: PathBuf,
    /// The file llama.cpp mapped: `path`, or the derived Q4_0 base of a split model.
    mapped: PathBuf,
    template: LlamaChatTemplate,
    /// The Q4_1 offsets adapter when the model was loaded split (see [`split`]); every
    /// context of the model applies it.
    offsets: Option<std::sync::Mutex<llama_cpp_2::model::LlamaLoraAdapter>>,
    /// The output matrix for [`head::OutputHead`], built by the first session that uses it;
    /// `None` inside when this model or CPU does not qualify.
    head: OnceLock<Option<std::sync::Arc<head::OutputHead>>>,
    /// Whether the back-end offloads to a GPU (the own output product is CPU-only).
    gpu: bool,
}

/// How [`Model::load_with`] loads a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadOptions {
    /// Load Q4_1 matrices as Q4_0 plus per-block offsets where that layout has faster
    /// kernels (see [`split`]); `false` loads the file as it is.
    pub split_q4_1: bool,
    /// Where the split files are kept ([`split::default_cache_dir`] by default).
    pub split_cache: Option<PathBuf>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            split_q4_1: true,
            split_cache: split::default_cache_dir(),
        }
    }
}

impl LoadOptions {
    /// Loads the file exactly as it is.
    pub fn as_is() -> Self {
        Self {
            split_q4_1: false,
            split_cache: None,
        }
    }
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model").field("path", &self.path).finish()
    }
}

impl Model {
    /// Loads a GGUF file with the default [`LoadOptions`] (Q4_1 split where it pays).
    pub fn load(path: &Path) -> Result<Self> {
        Self::load_with(path, &LoadOptions::default())
    }

    /// Loads a GGUF file, checking first that it exists and is GGUF at all.
    pub fn load_with(path: &Path, options: &LoadOptions) -> Result<Self> {
        let meta = std::fs::metadata(path).map_err(|_| EngineError::ModelNotFound(path.into()))?;
        let mut magic = [0u8; 4];
        let read = std::fs::File::open(path)
            .and_then(|mut f| std::io::Read::read(&mut f, &mut magic))
            .map_err(|_| EngineError::ModelNotFound(path.into()))?;
        if read < 4 || &magic != GGUF_MAGIC {
            return Err(EngineError::NotGguf {
                path: path.into(),
                found: String::from_utf8_lossy(&magic[..read]).into_owned(),
            });
        }
        let backend = backend()?;
        let split_files = match &options.split_cache {
            Some(cache)
                if options.split_q4_1 && split::pays_here(backend.supports_gpu_offload()) =>
            {
                // The split is an optimisation: if it cannot be had, the file loads as it is
                // (and a broken file then fails with the loader's own message).
                match split::derive(path, cache) {
                    Ok(files) => files,
                    // Not even its header parses: the loader's own error follows.
                    Err(split::SplitError::Unreadable(_)) => None,
                    Err(e) => {
                        tracing::warn!(error = %e, "loading the model as it is");
                        None
                    }
                }
            }
            _ => None,
        };
        let load_failed = |e: &dyn std::fmt::Display| {
            tracing::debug!(error = %e, "model load failed");
            EngineError::LoadFailed {
                path: path.into(),
                size: meta.len(),
            }
        };
        let params = LlamaModelParams::default();
        let split_loaded = split_files.and_then(|files| {
            // Mapped: the derived file puts the repacked (copied) matrices before the
            // tensors read in place, so the loader unmaps their pages once copied. The
            // loader reads every page in; with our own output product the embeddings'
            // pages are handed back afterwards (`Model::output_head`).
            let loaded = LlamaModel::load_from_file(backend, &files.base, &params)
                .map_err(|e| e.to_string())
                .and_then(|mut inner| {
                    let adapter = inner
                        .lora_adapter_init(&files.offsets)
                        .map_err(|e| e.to_string())?;
                    Ok((inner, adapter))
                });
            match loaded {
                Ok((inner, adapter)) => {
                    tracing::debug!(base = %files.base.display(), "Q4_1 model loaded as Q4_0 + offsets");
                    Some((inner, Some(std::sync::Mutex::new(adapter)), files.base))
                }
                Err(e) => {
                    // A damaged cache must not stop the model: drop it (the next load
                    // derives it again) and run the file as it is.
                    let dir = files.base.parent().unwrap_or(&files.base);
                    tracing::warn!(
                        error = %e,
                        dir = %dir.display(),
                        "the derived Q4_0 + offsets files did not load; removed them, \
                         loading the model as it is"
                    );
                    let _ = std::fs::remove_dir_all(dir);
                    None
                }
            }
        });
        let (inner, offsets, mapped) = match split_loaded {
            Some(loaded) => loaded,
            None => (
                LlamaModel::load_from_file(backend, path, &params).map_err(|e| load_failed(&e))?,
                None,
                path.to_path_buf(),
            ),
        };
        let template = match inner.chat_template(None) {
            Ok(t) => t,
            Err(_) => {
                // llama.cpp's built-in ChatML is the common denominator of instruct models.
                tracing::warn!(path = %path.display(), "model has no chat template; using ChatML");
                LlamaChatTemplate::new("chatml").map_err(llama_err)?
            }
        };
        Ok(Self {
            inner,
            path: path.into(),
            mapped,
            template,
            offsets,
            head: OnceLock::new(),
            gpu: backend.supports_gpu_offload(),
        })
    }

    /// Whether sessions of this model can compute their logits with [`head::OutputHead`]
    /// (a Q8_0 output matrix, a CPU with AVX-512 VNNI, no GPU back-end).
    pub fn has_own_output_head(&self) -> bool {
        self.output_head().is_some()
    }

    /// The output matrix in [`head::OutputHead`]'s layout, read from the file on first use;
    /// `None` where the model or the CPU does not qualify (llama.cpp then computes logits).
    fn output_head(&self) -> Option<std::sync::Arc<head::OutputHead>> {
        if self.gpu {
            return None;
        }
        self.head
            .get_or_init(|| {
                let (data, n_embd, n_vocab) = split::open_q8_0_output(&self.path)?;
                if n_vocab != self.n_vocab() as usize {
                    return None;
                }
                let built = head::OutputHead::read_q8_0(data, n_embd, n_vocab)?;
                // llama.cpp maps the file with every page read in; the matrix's pages now
                // serve only embedding lookups (a few rows), so they are handed back, and
                // read again from the page cache where a lookup needs one (30 MB of peak
                // RSS for the default model).
                let released = split::release_output_pages(&self.mapped);
                tracing::debug!(bytes = released, "output matrix pages released");
                tracing::debug!(
                    n_embd,
                    n_vocab,
                    "Q8_0 output matrix repacked for own kernel"
                );
                Some(std::sync::Arc::new(built))
            })
            .clone()
    }

    /// Whether the model's Q4_1 matrices were loaded as Q4_0 plus offsets ([`split`]).
    pub fn is_split(&self) -> bool {
        self.offsets.is_some()
    }

    /// The file it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The context length the model was trained with.
    pub fn n_ctx_train(&self) -> u32 {
        self.inner.n_ctx_train()
    }

    /// Vocabulary size.
    pub fn n_vocab(&self) -> i32 {
        self.inner.n_vocab()
    }

    /// Tokenizes text; special tokens in the text (e.g. `<|im_start|>`) are parsed as such.
    pub fn tokenize(&self, text: &str, add_bos: bool) -> Vec<LlamaToken> {
        self.inner.vocab().tokenize(text.as_bytes(), add_bos, true)
    }

    /// Renders messages with the model's own chat template. `add_assistant` opens the
    /// assistant turn for the model to continue.
    pub fn render_chat(&self, messages: &[ChatMessage], add_assistant: bool) -> Result<String> {
        let msgs = messages
            .iter()
            .map(|m| LlamaChatMessage::new(m.role.clone(), m.content.clone()))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| EngineError::InvalidParameter(format!("chat message: {e}")))?;
        self.inner
            .apply_chat_template(&self.template, &msgs, add_assistant)
            .map_err(llama_err)
    }

    /// Opens a session with its own context and KV cache.
    pub fn session(&self, params: &SessionParams) -> Result<Session<'_>> {
        Session::new(self, params)
    }
}

/// Parameters of a session's context.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SessionParams {
    /// Context size in tokens (shared by all sequences).
    pub n_ctx: u32,
    /// Threads for generation.
    pub n_threads: i32,
    /// Threads for prompt processing.
    pub n_threads_batch: i32,
    /// Logical batch size.
    pub n_batch: u32,
    /// Parallel sequences the context can hold.
    pub n_seq_max: u32,
    /// Compute the logits with [`head::OutputHead`] where it applies (a Q8_0 output matrix,
    /// a CPU with AVX-512 VNNI); `false` leaves the whole graph to llama.cpp.
    pub own_output_head: bool,
    /// Store the keys of a context for several sequences as Q8_0 on the CPU (the contexts
    /// that decode SAG candidates with plain attention, see [`Session`]); `false` keeps f16.
    /// Single-sequence contexts keep f16 either way: their flash-attention tiles need it.
    pub q8_0_keys: bool,
    /// After [`Session::keep_sequence`] in a context for several sequences, move the kept
    /// sequence's cells to the front of the cache (see [`Session::keep_sequence`]); `false`
    /// leaves them where they were decoded.
    pub compact_kept: bool,
}

/// Threads to use by default: one per available core.
pub fn default_threads() -> i32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as i32)
}

impl Default for SessionParams {
    fn default() -> Self {
        let t = default_threads();
        Self {
            n_ctx: DEFAULT_CTX_SIZE,
            n_threads: t,
            n_threads_batch: t,
            n_batch: DEFAULT_BATCH,
            n_seq_max: DEFAULT_SEQUENCES,
            own_output_head: true,
            q8_0_keys: true,
            compact_kept: true,
        }
    }
}

/// How the next token is chosen.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SamplingParams {
    /// Temperature; `<= 0` means greedy (argmax).
    pub temperature: f32,
    /// Nucleus sampling threshold (1.0 disables).
    pub top_p: f32,
    /// Top-k (0 disables).
    pub top_k: i32,
    /// Min-p (0 disables).
    pub min_p: f32,
    /// Repeat penalty (1.0 disables).
    pub repeat_penalty: f32,
    /// Window of the repeat penalty.
    pub repeat_last_n: i32,
    /// Seed of the random sampler; equal seeds give equal outputs.
    pub seed: u32,
    /// Scale the logits by the temperature before top-k, top-p and min-p, as vLLM and
    /// Hugging Face do (and so the paper's SAG sampling at 0.4 / 0.8), instead of last, as
    /// llama.cpp does. At temperature < 1 the nucleus is then smaller.
    pub temperature_first: bool,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: DEFAULT_TEMPERATURE,
            top_p: DEFAULT_TOP_P,
            top_k: DEFAULT_TOP_K,
            min_p: DEFAULT_MIN_P,
            repeat_penalty: DEFAULT_REPEAT_PENALTY,
            repeat_last_n: DEFAULT_REPEAT_LAST_N,
            seed: DEFAULT_SEED,
            temperature_first: false,
        }
    }
}

impl SamplingParams {
    /// Argmax decoding.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            ..Self::default()
        }
    }

    fn build(&self, model: &Model, grammar: Option<&str>) -> Result<TokenSampler> {
        let grammar = grammar
            .map(|g| {
                LlamaSampler::grammar(&model.inner, g, "root")
                    .map_err(|e| EngineError::Grammar(e.to_string()))
            })
            .transpose()?;
        Ok(self.sampler(model.n_vocab(), grammar))
    }

    /// The chain as a [`TokenSampler`], with `grammar` beside it.
    fn sampler(&self, n_vocab: i32, grammar: Option<LlamaSampler>) -> TokenSampler {
        let (chain, draw) = self.chains(n_vocab);
        let filter = match self.nucleus() {
            Some(n) => Filter::Nucleus(n),
            None => Filter::Chain(chain),
        };
        TokenSampler {
            grammar,
            filter,
            draw,
            scratch: LlamaTokenDataArray::new(Vec::new(), false),
            redraws: 0,
            argmax_only: self.temperature <= 0.0 && self.repeat_penalty == 1.0,
        }
    }

    /// The filter part as a [`Nucleus`] where it is one: temperature first and no repeat
    /// penalty (which needs the history). SAG's sampling is.
    fn nucleus(&self) -> Option<Nucleus> {
        let native = self.temperature > 0.0 && self.temperature_first && self.repeat_penalty == 1.0;
        native.then_some(Nucleus {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
        })
    }

    /// The sampling chain in two parts: everything before the choice (repeat penalty, top-k,
    /// top-p, min-p, temperature), then the choice itself (a seeded random draw, or argmax).
    fn chains(&self, n_vocab: i32) -> (LlamaSampler, LlamaSampler) {
        let mut filter = Vec::new();
        if self.repeat_penalty != 1.0 {
            filter.push(LlamaSampler::penalties(
                n_vocab,
                self.repeat_last_n,
                self.repeat_penalty,
                0.0,
                0.0,
            ));
        }
        let draw = if self.temperature <= 0.0 {
            LlamaSampler::greedy()
        } else {
            if self.temperature_first {
                filter.push(LlamaSampler::temp(self.temperature));
            }
            if self.top_k > 0 {
                filter.push(LlamaSampler::top_k(self.top_k));
            }
            if self.top_p < 1.0 {
                filter.push(LlamaSampler::top_p(self.top_p, 1));
            }
            if self.min_p > 0.0 {
                filter.push(LlamaSampler::min_p(self.min_p, 1));
            }
            if !self.temperature_first {
                filter.push(LlamaSampler::temp(self.temperature));
            }
            LlamaSampler::dist(self.seed)
        };
        (LlamaSampler::chain_simple(filter), draw)
    }
}

/// One sequence's sampler: the sampling chain, split before its final choice, and apart
/// from it the optional grammar.
///
/// Checking a grammar against every token of the vocabulary costs more than decoding a
/// token of a small model, and it is paid per candidate per position. So the token is
/// first drawn without the grammar and only checked against it; only when the grammar
/// rejects it are the logits masked by the grammar and the token drawn again. The result
/// follows the grammar-masked distribution (a rejected first draw is discarded); it is
/// what llama.cpp's own common sampler does.
///
/// Parallel candidates with the same history so far have the same logits, and every part of
/// the chain before the choice is a function of the logits and that history. So that part
/// runs once per group of such candidates ([`TokenSampler::filter`]) and each member makes
/// only its own seeded choice from a copy of the few tokens left ([`TokenSampler::choose`]):
/// the same tokens as running each member's whole chain, without sorting the vocabulary once
/// per member.
struct TokenSampler {
    grammar: Option<LlamaSampler>,
    filter: Filter,
    draw: LlamaSampler,
    scratch: LlamaTokenDataArray,
    /// Draws the grammar rejected.
    redraws: usize,
    /// The choice is argmax with nothing before it: after a rejected draw the best admitted
    /// token is all that is needed.
    argmax_only: bool,
}

/// The part of a sampling chain before the choice.
enum Filter {
    /// llama.cpp's samplers over the whole vocabulary.
    Chain(LlamaSampler),
    /// Temperature first, computed from the raw logits (see [`nucleus`]).
    Nucleus(Nucleus),
}

impl TokenSampler {
    /// Runs the chain's filter part over one position's `logits` (indexed by token id),
    /// into `buf`. Any candidate whose history equals this sampler's may
    /// [`choose`](Self::choose) from the result.
    fn filter(&mut self, logits: &[f32], mut buf: LlamaTokenDataArray) -> LlamaTokenDataArray {
        match &mut self.filter {
            Filter::Chain(chain) => {
                fill_logits(&mut buf, logits);
                buf.apply_sampler(chain);
            }
            Filter::Nucleus(n) => n.apply(logits, &mut buf),
        }
        buf
    }

    /// Chooses the next token from `kept` (what [`filter`](Self::filter) left) with this
    /// sampler's own draw, and accepts it. `logits` gives the position's logits again, for
    /// a draw the grammar rejects: the choice is then made again over what the grammar
    /// admits, filtered. That set depends only on the logits and the grammar's state, so
    /// candidates with equal histories share it through `admitted` (`None` until the first
    /// of them needs it); each still makes its own draw from it.
    fn choose(
        &mut self,
        kept: &LlamaTokenDataArray,
        logits: &[f32],
        admitted: &mut Option<LlamaTokenDataArray>,
    ) -> LlamaToken {
        // A copy, because the draw may reorder what it draws from, and the other members of
        // the group draw from the same tokens. Into a kept buffer: after argmax (which the
        // filter leaves the whole vocabulary to) this is a vocabulary-sized copy per token.
        let drawn = draw_from_copy(&mut self.scratch, kept, &mut self.draw);
        let token = match &mut self.grammar {
            None => drawn.unwrap_or(LlamaToken(0)),
            Some(grammar) => match drawn.filter(|&t| admits(grammar, t)) {
                Some(t) => t,
                None => {
                    self.redraws += 1;
                    let shared = admitted.get_or_insert_with(|| {
                        let mut cur = LlamaTokenDataArray::new(Vec::new(), false);
                        let mut reject = |a: &mut LlamaTokenDataArray| a.apply_sampler(grammar);
                        match &mut self.filter {
                            Filter::Nucleus(n) => {
                                // Only admitted tokens near the best admitted one can matter.
                                let near = admitted_near_best(&mut reject, logits, n.window());
                                let mut masked = vec![f32::NEG_INFINITY; logits.len()];
                                for d in &near {
                                    masked[d.id().0 as usize] = d.logit();
                                }
                                n.apply(&masked, &mut cur);
                            }
                            Filter::Chain(_) if self.argmax_only => {
                                cur.data = admitted_near_best(&mut reject, logits, 0.0);
                            }
                            Filter::Chain(chain) => {
                                // The chain may need every token (e.g. a repeat penalty).
                                fill_logits(&mut cur, logits);
                                reject(&mut cur);
                                cur.apply_sampler(chain);
                            }
                        }
                        cur
                    });
                    // The grammar always leaves at least one token (llama.cpp aborts otherwise).
                    draw_from_copy(&mut self.scratch, shared, &mut self.draw)
                        .unwrap_or(LlamaToken(0))
                }
            },
        };
        if let Some(g) = &mut self.grammar {
            g.accept(token);
        }
        if let Filter::Chain(chain) = &mut self.filter {
            chain.accept(token);
        }
        self.draw.accept(token);
        token
    }

    /// Takes `tokens` as already generated (grammar state, repeat-penalty history).
    fn accept_many(&mut self, tokens: &[LlamaToken]) {
        if let Some(g) = &mut self.grammar {
            g.accept_many(tokens);
        }
        if let Filter::Chain(chain) = &mut self.filter {
            chain.accept_many(tokens);
        }
        self.draw.accept_many(tokens);
    }
}

/// Copies `from` into `scratch` (keeping its allocation) and draws from the copy: the draw
/// may reorder what it draws from, and other candidates draw from the same `from`.
fn draw_from_copy(
    scratch: &mut LlamaTokenDataArray,
    from: &LlamaTokenDataArray,
    draw: &mut LlamaSampler,
) -> Option<LlamaToken> {
    scratch.data.clear();
    scratch.data.extend_from_slice(&from.data);
    scratch.selected = from.selected;
    scratch.sorted = from.sorted;
    scratch.apply_sampler(draw);
    scratch.selected_token()
}

/// Sets `buf` to one position's logits, unsorted and with nothing selected, keeping its
/// allocation.
fn fill_logits(buf: &mut LlamaTokenDataArray, logits: &[f32]) {
    buf.data.clear();
    buf.data.extend(
        logits
            .iter()
            .enumerate()
            .map(|(i, &l)| LlamaTokenData::new(LlamaToken(i as i32), l, 0.0)),
    );
    buf.selected = None;
    buf.sorted = false;
}

/// Whether the grammar in its current state allows `token` next.
fn admits(grammar: &mut LlamaSampler, token: LlamaToken) -> bool {
    let mut one = LlamaTokenDataArray::new(vec![LlamaTokenData::new(token, 1.0, 0.0)], false);
    one.apply_sampler(grammar);
    one.data
        .first()
        .is_some_and(|d| d.logit() != f32::NEG_INFINITY)
}

/// The tokens a grammar admits among those within `width` (in logits) of the best token it
/// admits, sorted by nothing in particular.
///
/// After the grammar rejects a draw, the choice is made again over the grammar-masked
/// logits. Tokens further than the filter's cut-off below the best admitted one cannot
/// change it, so instead of passing the whole vocabulary through the grammar (~4 ms for
/// 49,152 tokens, paid several times per candidate per step at the grammar's fixed
/// strings), the vocabulary is checked from the top down in widening windows: the first
/// window holds the tokens within `width` of the best logit, and it widens only while
/// nothing in it is admitted. `reject` masks the tokens the grammar rejects (logit -inf).
fn admitted_near_best(
    reject: &mut dyn FnMut(&mut LlamaTokenDataArray),
    logits: &[f32],
    width: f32,
) -> Vec<LlamaTokenData> {
    let max = nucleus::max_of(logits);
    let mut admitted: Vec<LlamaTokenData> = Vec::new();
    let mut window = LlamaTokenDataArray::new(Vec::new(), false);
    let (mut hi, mut step) = (f32::INFINITY, width.max(1.0));
    let mut lo = max - step;
    loop {
        window.data.clear();
        window.selected = None;
        window.sorted = false;
        window.data.extend(
            logits
                .iter()
                .enumerate()
                .filter(|&(_, &l)| l >= lo && l < hi)
                .map(|(i, &l)| LlamaTokenData::new(LlamaToken(i as i32), l, 0.0)),
        );
        if !window.data.is_empty() {
            reject(&mut window);
            admitted.extend(
                window
                    .data
                    .iter()
                    .filter(|d| d.logit() != f32::NEG_INFINITY)
                    .copied(),
            );
        }
        if lo == f32::NEG_INFINITY {
            break;
        }
        let best = admitted
            .iter()
            .map(|d| d.logit())
            .fold(f32::NEG_INFINITY, f32::max);
        if best > f32::NEG_INFINITY {
            let need = best - width;
            if need >= lo {
                break;
            }
            // One more window reaches down to what the best admitted token needs.
            (hi, lo) = (lo, need);
        } else {
            step *= 4.0;
            (hi, lo) = (
                lo,
                if step > 1e4 {
                    f32::NEG_INFINITY
                } else {
                    max - step
                },
            );
        }
    }
    let best = admitted
        .iter()
        .map(|d| d.logit())
        .fold(f32::NEG_INFINITY, f32::max);
    admitted.retain(|d| d.logit() >= best - width);
    admitted
}

/// One generation request.
#[derive(Debug, Clone, Default)]
pub struct GenerateParams {
    /// Cap on generated tokens.
    pub max_tokens: u32,
    /// Sampling settings.
    pub sampling: SamplingParams,
    /// Generation ends before the first occurrence of any of these; it is not emitted.
    pub stop: Vec<String>,
    /// Optional GBNF grammar (root rule `root`).
    pub grammar: Option<String>,
    /// Keep generating past end-of-generation tokens (benchmarks only).
    pub ignore_eog: bool,
    /// The start of the reply, already written at the end of the prompt by the caller (e.g.
    /// a forced first thought): the grammar and the repeat penalty take it as generated.
    pub prefill: Option<String>,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// A stop string was produced.
    Stop,
    /// The model produced an end-of-generation token.
    EndOfText,
    /// `max_tokens` was reached.
    Length,
    /// The context is full; the reply may be incomplete.
    ContextFull,
    /// The caller's callback asked to stop.
    Cancelled,
    /// Parallel decoding: the caller stopped this candidate because the step's outcome was
    /// already decided by the candidates that had finished.
    Abandoned,
}

/// Token counts and times of one call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct CallStats {
    /// Tokens of the prompt.
    pub prompt_tokens: usize,
    /// Of those, tokens already in the KV cache (not evaluated again).
    pub cached_tokens: usize,
    /// Time to evaluate the new prompt tokens.
    pub prompt_ms: f64,
    /// Tokens generated.
    pub gen_tokens: usize,
    /// Time spent generating.
    pub gen_ms: f64,
    /// Tokens evaluated while generating. For parallel candidates this counts all of them
    /// together, and a token that identical candidates share is evaluated (and counted)
    /// once.
    pub decoded_tokens: usize,
}

/// The result of one call.
#[derive(Debug, Clone, Serialize)]
pub struct Completion {
    /// Generated text, without the stop string.
    pub text: String,
    /// Why it ended.
    pub finish_reason: FinishReason,
    /// The stop string that ended it, if any.
    pub stop: Option<String>,
    /// Counts and times.
    #[serde(flatten)]
    pub stats: CallStats,
}

/// What the caller of [`Session::complete_parallel_until`] wants once a candidate has ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AfterEnd {
    /// Stop decoding: the candidates still running end as [`FinishReason::Abandoned`].
    pub stop: bool,
    /// Ended candidates the caller will not adopt. Their generated tokens leave the KV
    /// cache at once and the candidates still running reuse those cells: a step of many
    /// long candidates fills the context later (a candidate that finds it full ends
    /// there), and the range of cells every row's attention covers (every occupied cell
    /// up to the highest one, other candidates' included) grows more slowly.
    pub release: Vec<usize>,
}

impl AfterEnd {
    /// Keep decoding, release nothing.
    pub fn go_on() -> Self {
        Self::default()
    }

    /// Stop decoding the candidates still running.
    pub fn stop() -> Self {
        Self {
            stop: true,
            release: Vec::new(),
        }
    }
}

/// Generation state of one sequence.
struct Candidate<'s> {
    text: String,
    decoder: Utf8Decoder,
    stops: StopBuffer<'s>,
    gen_tokens: usize,
    finish: Option<FinishReason>,
    stop: Option<String>,
}

impl<'s> Candidate<'s> {
    /// Once it has ended: the text held back (an incomplete character, a possible start of
    /// a stop string) is part of the reply after all, unless a stop string did end it.
    fn flush(&mut self, on_text: &mut dyn FnMut(&str) -> bool) {
        if self.stop.is_none() {
            let rest = self.stops.finish(&self.decoder.finish());
            if !rest.is_empty() {
                self.text.push_str(&rest);
                on_text(&rest);
            }
        }
    }

    fn new(stop: &'s [String]) -> Self {
        Self {
            text: String::new(),
            decoder: Utf8Decoder::default(),
            stops: StopBuffer::new(stop),
            gen_tokens: 0,
            finish: None,
            stop: None,
        }
    }
}

/// A context with its KV cache and the tokens each sequence holds.
pub struct Session<'m> {
    model: &'m Model,
    ctx: LlamaContext<'m>,
    /// Declared after `ctx`: the context uses the pool until it is dropped.
    _pool: Option<threadpool::CpuThreadPool>,
    params: SessionParams,
    /// `cached[s]` = the tokens in the KV cache of sequence `s`, in position order.
    cached: Vec<Vec<LlamaToken>>,
    /// Candidates of the current parallel call whose generated tokens were released
    /// ([`AfterEnd::release`]): they can no longer be kept.
    released: Vec<bool>,
    batch: LlamaBatch<'static>,
    /// Own output product ([`head`]), where it applies: the context stops its graph at the
    /// final hidden state, which `capture` receives (declared after `ctx`, which points to it).
    head: Option<std::sync::Arc<head::OutputHead>>,
    capture: Option<CaptureCell>,
    /// Batch index -> row of the logits of the last decode (-1: none asked).
    out_rows: Vec<i32>,
    /// Tokens of the batch that ask for logits.
    n_outputs: i32,
    /// Logits of the last decode computed by `head`, row-major; empty when llama.cpp's apply.
    own_logits: Vec<f32>,
}

/// Receives the final hidden state from the graph evaluation callback.
struct HiddenCapture {
    n_embd: usize,
    /// Rows of `n_embd`, appended per micro-batch of the current decode.
    hidden: Vec<f32>,
    /// The tensor did not look as expected; llama.cpp computed the logits itself.
    declined: bool,
}

/// The [`HiddenCapture`] the context's callback writes to, owned through a raw pointer: the
/// C side holds the same pointer, so no Rust reference to it may live across a decode.
struct CaptureCell(std::ptr::NonNull<HiddenCapture>);

impl CaptureCell {
    fn new(n_embd: usize) -> Self {
        let boxed = Box::new(HiddenCapture {
            n_embd,
            hidden: Vec::new(),
            declined: false,
        });
        Self(std::ptr::NonNull::from(Box::leak(boxed)))
    }

    fn as_ptr(&self) -> *mut HiddenCapture {
        self.0.as_ptr()
    }

    /// The capture, between decodes.
    fn get(&mut self) -> &mut HiddenCapture {
        // SAFETY: a live allocation of ours; the callback only runs inside `decode`, which
        // holds no reference to it while llama.cpp runs.
        unsafe { self.0.as_mut() }
    }
}

impl Drop for CaptureCell {
    fn drop(&mut self) {
        // SAFETY: leaked from a Box in `new`, freed once; the session drops its context
        // (the only other holder of the pointer) before this field.
        drop(unsafe { Box::from_raw(self.0.as_ptr()) });
    }
}

/// Name llama.cpp gives the normalised final hidden state (of the rows that want logits).
const HIDDEN_TENSOR: &[u8] = b"result_norm";

/// ggml's graph evaluation callback: asks for the final hidden state, copies it into the
/// [`HiddenCapture`] behind `user` and stops the graph there (the output product is ours).
unsafe extern "C" fn capture_hidden(
    t: *mut llama_cpp_sys_2::ggml_tensor,
    ask: bool,
    user: *mut std::ffi::c_void,
) -> bool {
    // SAFETY: ggml passes a live tensor.
    let t = unsafe { &*t };
    // Called for every node of every graph: compare the name's first bytes and its end in
    // place (no length scan).
    let name = &t.name[..=HIDDEN_TENSOR.len()];
    let is_hidden = name[HIDDEN_TENSOR.len()] == 0
        && name.iter().zip(HIDDEN_TENSOR).all(|(&c, &h)| c as u8 == h);
    if !is_hidden {
        // Not asked for; and when told about it, carry on.
        return !ask;
    }
    if ask {
        return true;
    }
    // SAFETY: `user` is the session's `CaptureCell` pointer, alive as long as the context.
    let cap = unsafe { &mut *(user as *mut HiddenCapture) };
    let row = cap.n_embd * std::mem::size_of::<f32>();
    if t.type_ != llama_cpp_sys_2::GGML_TYPE_F32
        || t.ne[0] as usize != cap.n_embd
        || t.nb[1] != row
        || t.ne[2] != 1
        || t.ne[3] != 1
        || t.data.is_null()
    {
        cap.declined = true;
        return true;
    }
    let n = t.ne[1] as usize * cap.n_embd;
    // SAFETY: a contiguous F32 host tensor of `ne[1]` rows of `n_embd` (checked above).
    cap.hidden
        .extend_from_slice(unsafe { std::slice::from_raw_parts(t.data as *const f32, n) });
    false
}

/// Sets the graph evaluation callback, which llama-cpp-2 0.1.160 has no setter for.
fn with_eval_callback(
    mut params: LlamaContextParams,
    user: *mut std::ffi::c_void,
) -> LlamaContextParams {
    // `LlamaContextParams` is a struct of one field, the C struct; equal sizes leave that
    // field no offset but 0, so the wrapper can be written through as the C struct.
    const _: () = assert!(
        std::mem::size_of::<LlamaContextParams>()
            == std::mem::size_of::<llama_cpp_sys_2::llama_context_params>()
    );
    // SAFETY: see above; the pointer is to a live, exclusively borrowed value.
    let raw = unsafe {
        &mut *(&mut params as *mut LlamaContextParams as *mut llama_cpp_sys_2::llama_context_params)
    };
    raw.cb_eval = Some(capture_hidden);
    raw.cb_eval_user_data = user;
    params
}

impl std::fmt::Debug for Session<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("params", &self.params)
            .field(
                "cached",
                &self.cached.iter().map(Vec::len).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// The token with the highest logit (the first one on ties, as llama.cpp's greedy sampler).
fn argmax(logits: &[f32]) -> LlamaToken {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    LlamaToken(best as i32)
}

/// Length of the common prefix of two token lists.
fn common_prefix(a: &[LlamaToken], b: &[LlamaToken]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl<'m> Session<'m> {
    fn new(model: &'m Model, params: &SessionParams) -> Result<Self> {
        let n_ctx = NonZeroU32::new(params.n_ctx)
            .ok_or_else(|| EngineError::InvalidParameter("context size must be > 0".into()))?;
        if params.n_threads < 1 || params.n_threads_batch < 1 {
            return Err(EngineError::InvalidParameter("threads must be >= 1".into()));
        }
        if params.n_seq_max < 1 || params.n_batch < 1 {
            return Err(EngineError::InvalidParameter(
                "sequences and batch size must be >= 1".into(),
            ));
        }
        let cparams = LlamaContextParams::default()
            .with_n_ctx(Some(n_ctx))
            .with_n_batch(params.n_batch)
            .with_n_ubatch(params.n_batch.min(DEFAULT_BATCH))
            .with_n_seq_max(params.n_seq_max)
            // One cell pool for all sequences: a shared prompt is stored once, and any
            // sequence may use the whole context. One stream per sequence would keep each
            // candidate's attention to its own cells, but makes it matrix-vector products
            // and forbids shared batch entries: measured slower (`bench parallel`, 8 x 200
            // after 400: 4.2 vs 3.3 s), at n_seq_max times the cache memory.
            .with_kv_unified(params.n_seq_max > 1)
            .with_n_threads(params.n_threads)
            .with_n_threads_batch(params.n_threads_batch);
        let backend = backend()?;
        let cparams = if params.n_seq_max > 1 && !backend.supports_gpu_offload() {
            // On the CPU, flash attention walks the cache once per query with a scalar exp per
            // cell, while the plain path computes a batch of candidates' attention as matrix
            // products. Measured on 2 cores (`bench parallel`, 8 candidates x 96 tokens after a
            // 1024-token prompt): 3.9 s with it, 3.2 s without. One sequence decodes faster
            // with it (191 vs 170 tokens/s), so single-sequence sessions keep llama.cpp's choice.
            // Without it each micro-batch materialises its attention scores (cells x tokens x
            // heads, f32): 128-token micro-batches bound that to a quarter of 512's (26 instead
            // of 104 MB at 5,632 cells) at the same prompt speed (340 tokens/s on 2,048).
            let cparams = cparams
                .with_flash_attention_policy(llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_DISABLED)
                .with_n_ubatch(params.n_batch.min(PLAIN_ATTENTION_UBATCH));
            // Attention is the largest part of a SAG position (~47% of it, perf on MATH
            // questions), and its key products run faster on 8-bit keys than on f16 ones:
            // `bench sag` on 30 MATH questions, 13.2-13.5 vs 14.8-16.9 ms per position in
            // the same runs. The values stay f16 (llama.cpp quantises them only for flash
            // attention).
            if params.q8_0_keys {
                cparams.with_type_k(llama_cpp_2::context::params::KvCacheType::Q8_0)
            } else {
                cparams
            }
        } else {
            cparams
        };
        let head = if params.own_output_head {
            model.output_head()
        } else {
            None
        };
        let capture = head.as_ref().map(|h| CaptureCell::new(h.n_embd()));
        let cparams = match &capture {
            Some(c) => with_eval_callback(cparams, c.as_ptr().cast()),
            None => cparams,
        };
        let mut ctx = model
            .inner
            .new_context(backend, cparams)
            .map_err(llama_err)?;
        if let Some(offsets) = &model.offsets {
            // Without its offsets the split model computes wrong numbers: every context
            // applies them, at scale 1 (exact; see `split`).
            let mut adapter = offsets.lock().unwrap_or_else(|p| p.into_inner());
            ctx.lora_adapter_set(&mut adapter, 1.0).map_err(llama_err)?;
        }
        let pool =
            threadpool::CpuThreadPool::attach(&ctx, params.n_threads.max(params.n_threads_batch));
        let batch_cap = params.n_batch.max(params.n_seq_max) as usize;
        Ok(Self {
            model,
            ctx,
            _pool: pool,
            params: params.clone(),
            cached: vec![Vec::new(); params.n_seq_max as usize],
            released: vec![false; params.n_seq_max as usize],
            batch: LlamaBatch::new(batch_cap, params.n_seq_max as i32),
            head,
            capture,
            out_rows: Vec::with_capacity(batch_cap),
            n_outputs: 0,
            own_logits: Vec::new(),
        })
    }

    /// The model of this session.
    pub fn model(&self) -> &'m Model {
        self.model
    }

    /// Context size: the one requested (llama.cpp rounds its allocation up to a multiple
    /// of 256; the session still keeps to what was asked for).
    pub fn n_ctx(&self) -> u32 {
        self.params.n_ctx.min(self.ctx.n_ctx())
    }

    /// Tokens held in the KV cache of sequence `seq`.
    pub fn cached_tokens(&self, seq: usize) -> &[LlamaToken] {
        &self.cached[seq]
    }

    /// How many positions llama.cpp's KV cache holds for sequence `seq` (its highest
    /// position + 1; 0 when empty): what [`Session::cached_tokens`] mirrors, read from the
    /// cache itself.
    pub fn cache_extent(&self, seq: usize) -> usize {
        (self.ctx.kv_cache_seq_pos_max(seq as i32) + 1).max(0) as usize
    }

    /// Drops everything from the KV cache.
    pub fn clear(&mut self) {
        self.ctx.clear_kv_cache();
        self.cached.iter_mut().for_each(Vec::clear);
        self.released.fill(false);
    }

    /// Makes sequence `dst` a copy of sequence `src` (sharing the KV cells, no re-evaluation).
    pub fn fork_sequence(&mut self, src: usize, dst: usize) -> Result<()> {
        let n = self.cached.len();
        if src >= n || dst >= n || src == dst {
            return Err(EngineError::InvalidParameter(format!(
                "fork {src} -> {dst} with {n} sequences"
            )));
        }
        self.ctx
            .clear_kv_cache_seq(Some(dst as u32), None, None)
            .map_err(llama_err)?;
        self.ctx
            .copy_kv_cache_seq(src as i32, dst as i32, None, None)
            .map_err(llama_err)?;
        self.cached[dst] = self.cached[src].clone();
        self.released[dst] = self.released[src];
        Ok(())
    }

    /// A one-or-more-turn chat: renders the messages with the model's template, opens the
    /// assistant turn and generates.
    pub fn chat(
        &mut self,
        messages: &[ChatMessage],
        params: &GenerateParams,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Completion> {
        let prompt = self.model.render_chat(messages, true)?;
        self.complete(&prompt, params, on_text)
    }

    /// Generates a continuation of raw `prompt` text (special tokens parsed) on sequence 0.
    pub fn complete(
        &mut self,
        prompt: &str,
        params: &GenerateParams,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Completion> {
        let tokens = self.model.tokenize(prompt, true);
        self.complete_tokens(&tokens, params, on_text)
    }

    /// Generates a continuation of `prompt` tokens on sequence 0, evaluating only the part
    /// of the prompt not already in the KV cache. `on_text` receives the text as it is
    /// produced (never a part of a stop string) and returns `false` to cancel.
    pub fn complete_tokens(
        &mut self,
        prompt: &[LlamaToken],
        params: &GenerateParams,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Completion> {
        let mut all = self.complete_parallel(prompt, 1, params, &mut |_, t| on_text(t))?;
        Ok(all.remove(0))
    }

    /// Generates `n` continuations of the same prompt side by side: the prompt is evaluated
    /// once on sequence 0 (reusing the cache), copied into sequences `1..n` without
    /// re-evaluation, and each decoding step evaluates one token of every unfinished
    /// sequence in a single batch. Candidate `i` samples with seed `seed + i`. Afterwards
    /// sequence `i` holds candidate `i`; [`Session::keep_sequence`] adopts one of them.
    /// `on_text(i, text)` streams candidate `i`; returning `false` cancels the call.
    pub fn complete_parallel(
        &mut self,
        prompt: &[LlamaToken],
        n: usize,
        params: &GenerateParams,
        on_text: &mut dyn FnMut(usize, &str) -> bool,
    ) -> Result<Vec<Completion>> {
        self.complete_parallel_until(prompt, n, params, on_text, &mut |_, _| AfterEnd::go_on())
    }

    /// [`Session::complete_parallel`], telling the caller about each candidate as soon as it
    /// ends: `on_done(i, completion)` gets candidate `i`'s final text (its stats are filled
    /// in only in the returned list) and answers with an [`AfterEnd`]: whether the
    /// candidates still running are needed any more (if not, they end with
    /// [`FinishReason::Abandoned`]) and which ended candidates it will never adopt (their
    /// cells are freed; [`Session::keep_sequence`] refuses them afterwards).
    pub fn complete_parallel_until(
        &mut self,
        prompt: &[LlamaToken],
        n: usize,
        params: &GenerateParams,
        on_text: &mut dyn FnMut(usize, &str) -> bool,
        on_done: &mut dyn FnMut(usize, &Completion) -> AfterEnd,
    ) -> Result<Vec<Completion>> {
        let n_ctx = self.n_ctx() as usize;
        if prompt.is_empty() {
            return Err(EngineError::InvalidParameter("empty prompt".into()));
        }
        if n == 0 || n > self.cached.len() {
            return Err(EngineError::InvalidParameter(format!(
                "{n} parallel sequences requested, the session holds {}",
                self.cached.len()
            )));
        }
        if prompt.len() > n_ctx {
            return Err(EngineError::ContextOverflow {
                prompt_tokens: prompt.len(),
                n_ctx: n_ctx as u32,
                n_ctx_train: self.model.n_ctx_train(),
            });
        }
        // Build the samplers before touching the cache, so a bad grammar changes nothing.
        let mut samplers = (0..n)
            .map(|i| {
                let mut sp = params.sampling.clone();
                sp.seed = sp.seed.wrapping_add(i as u32);
                sp.build(self.model, params.grammar.as_deref())
            })
            .collect::<Result<Vec<_>>>()?;
        // Plain argmax needs no sampler: scanning the logits directly skips building the
        // vocabulary-sized candidate array on every token (measurable on small models).
        let plain_argmax = params.sampling.temperature <= 0.0
            && params.sampling.repeat_penalty == 1.0
            && params.grammar.is_none();
        if let Some(prefill) = &params.prefill {
            let tokens = self.model.tokenize(prefill, false);
            // The caller guarantees the prefill fits the grammar (llama.cpp aborts otherwise).
            for s in &mut samplers {
                s.accept_many(&tokens);
            }
        }

        let t0 = Instant::now();
        // Sequence 0 is the conversation; candidates of an earlier call that were not
        // adopted are dropped so their cells are free again.
        self.released.fill(false);
        for s in 1..self.cached.len() {
            if !self.cached[s].is_empty() {
                self.ctx
                    .clear_kv_cache_seq(Some(s as u32), None, None)
                    .map_err(llama_err)?;
                self.cached[s].clear();
            }
        }
        let mut reuse = common_prefix(&self.cached[0], prompt);
        if reuse == prompt.len() {
            // Logits come only from evaluated tokens: evaluate at least the last one.
            reuse -= 1;
        }
        if reuse < self.cached[0].len() {
            self.ctx
                .clear_kv_cache_seq(Some(0), Some(reuse as u32), None)
                .map_err(llama_err)?;
            self.cached[0].truncate(reuse);
        }
        self.eval(0, &prompt[reuse..])?;
        for i in 1..n {
            self.fork_sequence(0, i)?;
        }
        let prompt_ms = t0.elapsed().as_secs_f64() * 1e3;

        let t1 = Instant::now();
        let model: &'m Model = self.model;
        let vocab = model.inner.vocab();
        let mut cands: Vec<Candidate> = (0..n).map(|_| Candidate::new(&params.stop)).collect();
        // Every candidate samples its first token from the prompt's last logits.
        let mut logits_idx = vec![self.batch.n_tokens() - 1; n];
        // KV cells in use: the shared prompt once, plus each evaluated token once.
        let mut cells = prompt.len();
        // Candidates whose generated tokens are identical so far form a group and share one
        // evaluation per position: the token goes into the batch once, tagged with every
        // member's sequence, so each member's sequence still holds its whole history and
        // samples from the same logits it would have got alone. At the paper's temperature
        // candidates often draw the same tokens (8 candidates on the agent's HotpotQA and MATH
        // questions averaged 1.6 to 6.8 distinct sequences per position), and no candidate's
        // text changes. Group ids are renumbered per step.
        let mut group = vec![0usize; n];
        let (mut positions, mut evaluated) = (0usize, 0usize);
        let mut cancelled = false;
        let mut abandon = false;
        // Candidates whose end has been passed to `on_done`.
        let mut reported = vec![false; n];
        // Ended candidates `on_done` gave up on, released once the callbacks are done.
        let mut to_release = Vec::new();
        // Time spent in `on_done` (e.g. running a candidate's code) is not decoding time.
        let mut in_callbacks = std::time::Duration::ZERO;
        // Time inside `llama_decode`; the rest of `gen_ms` is sampling and bookkeeping.
        let mut in_decode = std::time::Duration::ZERO;
        // Logits index -> the chain's filter part over those logits, for this position; the
        // vocabulary-sized buffers are reused from position to position (allocating one per
        // draw cost more than the draw).
        let mut filtered: Vec<(i32, LlamaTokenDataArray)> = Vec::new();
        let mut spare: Vec<LlamaTokenDataArray> = Vec::new();
        // Logits index -> what the grammar admits there, filtered, once a member of that
        // group had a draw rejected (see `TokenSampler::choose`).
        let mut redrawn: Vec<(i32, Option<LlamaTokenDataArray>)> = Vec::new();
        let n_vocab = model.n_vocab() as usize;
        loop {
            // (group, token) -> members, in first-member order.
            let mut next: Vec<(usize, LlamaToken, Vec<usize>)> = Vec::new();
            spare.extend(filtered.drain(..).map(|(_, buf)| buf));
            redrawn.clear();
            for (i, c) in cands.iter_mut().enumerate() {
                if c.finish.is_some() {
                    continue;
                }
                if abandon {
                    c.finish = Some(FinishReason::Abandoned);
                    continue;
                }
                if cancelled {
                    c.finish = Some(FinishReason::Cancelled);
                    continue;
                }
                if c.gen_tokens == params.max_tokens as usize {
                    c.finish = Some(FinishReason::Length);
                    continue;
                }
                let token = if plain_argmax {
                    argmax(self.logits_ith(logits_idx[i]))
                } else {
                    // Equal logits index = equal history (see `TokenSampler`): the first
                    // member of each group filters, every member chooses.
                    let at = logits_idx[i];
                    let p = match filtered.iter().position(|(idx, _)| *idx == at) {
                        Some(p) => p,
                        None => {
                            let buf = spare.pop().unwrap_or_else(|| {
                                LlamaTokenDataArray::new(Vec::with_capacity(n_vocab), false)
                            });
                            let f = samplers[i].filter(self.logits_ith(at), buf);
                            filtered.push((at, f));
                            filtered.len() - 1
                        }
                    };
                    let q = match redrawn.iter().position(|(idx, _)| *idx == at) {
                        Some(q) => q,
                        None => {
                            redrawn.push((at, None));
                            redrawn.len() - 1
                        }
                    };
                    samplers[i].choose(&filtered[p].1, self.logits_ith(at), &mut redrawn[q].1)
                };
                c.gen_tokens += 1;
                if !params.ignore_eog && vocab.is_eog(token) {
                    c.finish = Some(FinishReason::EndOfText);
                    continue;
                }
                let piece = c.decoder.push(&vocab.token_to_piece(token, false, None));
                let (emit, hit) = c.stops.push(&piece);
                c.text.push_str(&emit);
                if !emit.is_empty() && !on_text(i, &emit) {
                    cancelled = true;
                }
                if let Some(s) = hit {
                    c.finish = Some(FinishReason::Stop);
                    c.stop = Some(s.to_owned());
                } else if c.gen_tokens == params.max_tokens as usize {
                    // Not evaluated: nothing will be sampled after it.
                    c.finish = Some(FinishReason::Length);
                } else if let Some(g) = next
                    .iter_mut()
                    .find(|(g, t, _)| *g == group[i] && *t == token)
                {
                    g.2.push(i);
                } else if cells >= n_ctx {
                    // No cell left to evaluate it in: the reply ends here, visibly.
                    c.finish = Some(FinishReason::ContextFull);
                } else {
                    next.push((group[i], token, vec![i]));
                    cells += 1;
                }
            }
            for (i, c) in cands.iter_mut().enumerate() {
                if reported[i] || c.finish.is_none() || c.finish == Some(FinishReason::Abandoned) {
                    continue;
                }
                reported[i] = true;
                c.flush(&mut |t| on_text(i, t));
                if abandon || cancelled {
                    continue;
                }
                let done = Completion {
                    text: c.text.clone(),
                    finish_reason: c.finish.unwrap_or(FinishReason::Length),
                    stop: c.stop.clone(),
                    stats: CallStats::default(),
                };
                let t = Instant::now();
                let after = on_done(i, &done);
                in_callbacks += t.elapsed();
                abandon |= after.stop;
                to_release.extend(after.release);
            }
            if !to_release.is_empty() {
                let ended: Vec<bool> = cands.iter().map(|c| c.finish.is_some()).collect();
                for r in to_release.drain(..) {
                    let freed = self.release_candidate(r, &ended, prompt.len())?;
                    cells = cells.saturating_sub(freed);
                }
            }
            if abandon {
                for c in cands.iter_mut().filter(|c| c.finish.is_none()) {
                    c.finish = Some(FinishReason::Abandoned);
                }
                next.clear();
            }
            if next.is_empty() {
                break;
            }
            self.batch_clear();
            for (j, (_, token, members)) in next.iter().enumerate() {
                // Members of a group have equal histories, hence equal positions.
                let pos = self.cached[members[0]].len() as i32;
                let seqs: Vec<i32> = members.iter().map(|&m| m as i32).collect();
                self.batch_add(*token, pos, &seqs, true)?;
                for &m in members {
                    logits_idx[m] = j as i32;
                    group[m] = j;
                }
            }
            let t_decode = Instant::now();
            self.decode()?;
            in_decode += t_decode.elapsed();
            positions += 1;
            evaluated += next.len();
            for (_, token, members) in next {
                for m in members {
                    self.cached[m].push(token);
                }
            }
        }
        self.rest();
        let gen_ms = t1.elapsed().saturating_sub(in_callbacks).as_secs_f64() * 1e3;
        tracing::debug!(
            n,
            positions,
            evaluated,
            mean_width = evaluated as f64 / positions.max(1) as f64,
            grammar_redraws = samplers.iter().map(|s| s.redraws).sum::<usize>(),
            gen_ms,
            decode_ms = in_decode.as_secs_f64() * 1e3,
            "parallel decoding"
        );
        Ok(cands
            .into_iter()
            .enumerate()
            .map(|(i, mut c)| {
                if !reported[i] {
                    c.flush(&mut |t| on_text(i, t));
                }
                Completion {
                    text: c.text,
                    finish_reason: c.finish.unwrap_or(FinishReason::Length),
                    stop: c.stop,
                    stats: CallStats {
                        prompt_tokens: prompt.len(),
                        cached_tokens: reuse,
                        prompt_ms,
                        gen_tokens: c.gen_tokens,
                        gen_ms,
                        decoded_tokens: evaluated,
                    },
                }
            })
            .collect())
    }

    /// Log-probability of each token of `tokens` after the ones before it (teacher forcing),
    /// from the second token on: what the model thinks of a given text, e.g. to compare two
    /// loadings of a model or to compute a perplexity. Sequence 0 then holds `tokens`.
    pub fn score(&mut self, tokens: &[LlamaToken]) -> Result<Vec<f32>> {
        if tokens.len() > self.n_ctx() as usize {
            return Err(EngineError::ContextOverflow {
                prompt_tokens: tokens.len(),
                n_ctx: self.n_ctx(),
                n_ctx_train: self.model.n_ctx_train(),
            });
        }
        self.clear();
        // The context's batch is at most what was asked for, and the batch buffer holds that.
        let step = (self.ctx.n_batch() as usize).max(1);
        let mut out = Vec::with_capacity(tokens.len().saturating_sub(1));
        for (c, chunk) in tokens.chunks(step).enumerate() {
            self.batch_clear();
            for (j, t) in chunk.iter().enumerate() {
                self.batch_add(*t, (c * step + j) as i32, &[0], true)?;
            }
            self.decode()?;
            for j in 0..chunk.len() {
                let Some(next) = tokens.get(c * step + j + 1) else {
                    break;
                };
                let logits = self.logits_ith(j as i32);
                let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let log_z = max
                    + logits
                        .iter()
                        .map(|l| ((l - max) as f64).exp())
                        .sum::<f64>()
                        .ln() as f32;
                out.push(logits[next.0 as usize] - log_z);
            }
            self.cached[0].extend_from_slice(chunk);
        }
        self.rest();
        Ok(out)
    }

    /// Frees the cells of ended candidate `i`'s generated tokens (the prompt stays) and
    /// returns how many cells became free: those no other candidate still holds (equal
    /// histories share their cells, see `complete_parallel_until`).
    fn release_candidate(&mut self, i: usize, ended: &[bool], prompt_len: usize) -> Result<usize> {
        let n = ended.len();
        if i >= n || !ended[i] {
            return Err(EngineError::InvalidParameter(format!(
                "candidate {i} of {n} cannot be released: only ended candidates can"
            )));
        }
        if self.released[i] {
            return Ok(0);
        }
        let held = self.cached[i].len();
        let shared = (0..n)
            .filter(|&j| j != i && !self.released[j])
            .map(|j| common_prefix(&self.cached[i], &self.cached[j]))
            .max()
            .unwrap_or(0)
            .max(prompt_len);
        self.ctx
            .clear_kv_cache_seq(Some(i as u32), Some(prompt_len as u32), None)
            .map_err(llama_err)?;
        self.cached[i].truncate(prompt_len);
        self.released[i] = true;
        Ok(held.saturating_sub(shared))
    }

    /// Makes sequence `winner` the session's conversation (sequence 0) and frees the others.
    ///
    /// With [`SessionParams::compact_kept`], when other sequences held cells, the kept cells
    /// are then moved to the front of the cache (llama.cpp's sequence state out and back in:
    /// a copy, no evaluation). Why: a step's candidates decode side by side, so the winner's
    /// cells lie spread over the step's whole range, and llama.cpp's plain attention covers
    /// every cell up to the highest in use: a MATH second step whose cache held 863 cells
    /// spread to cell 2,365 attended over all 2,365 at every position. Should the state not
    /// go back in, the sequence is dropped (the next call evaluates it again: slower, not
    /// wrong).
    pub fn keep_sequence(&mut self, winner: usize) -> Result<()> {
        if self.released.get(winner).copied().unwrap_or(false) {
            return Err(EngineError::InvalidParameter(format!(
                "candidate {winner} was released during its step; its reply is no longer cached"
            )));
        }
        let spread = self.cached[1..].iter().any(|c| !c.is_empty());
        if winner != 0 {
            self.fork_sequence(winner, 0)?;
        }
        for s in 1..self.cached.len() {
            self.ctx
                .clear_kv_cache_seq(Some(s as u32), None, None)
                .map_err(llama_err)?;
            self.cached[s].clear();
        }
        if spread && self.params.compact_kept && !self.cached[0].is_empty() {
            self.compact();
        }
        Ok(())
    }

    /// Moves sequence 0 (the only one holding cells) to cells `0..n` of the cache. Never
    /// fails: a state that cannot be read out stays in place, one that does not go back in is
    /// dropped from the cache and its mirror.
    fn compact(&mut self) {
        let t = Instant::now();
        let flags = llama_cpp_2::LlamaStateSeqFlags::empty();
        let state = match self.ctx.state_seq_get(0, flags) {
            Ok(state) => state,
            Err(e) => {
                // Nothing was moved: the cells stay where they are, only slower to attend.
                tracing::warn!(error = %e, "the kept sequence could not be read out; left in place");
                return;
            }
        };
        self.ctx.clear_kv_cache();
        if let Err(e) = self.ctx.state_seq_set(&state, 0) {
            tracing::warn!(error = %e, "the kept sequence did not go back into the cache; it will be evaluated again");
            self.ctx.clear_kv_cache();
            self.cached[0].clear();
            return;
        }
        tracing::debug!(
            cells = self.cached[0].len(),
            ms = t.elapsed().as_secs_f64() * 1e3,
            "kept sequence moved to the front of the cache"
        );
    }

    /// Sends the decoding threads to sleep: by default they poll for the next graph for a
    /// long while (~0.1 s), holding a core that the sandbox, the tokenizer or another
    /// session's decoding then lacks. The next decode wakes them (microseconds).
    fn rest(&self) {
        if let Some(pool) = &self._pool {
            pool.pause();
        }
    }

    fn batch_clear(&mut self) {
        self.batch.clear();
        self.out_rows.clear();
        self.n_outputs = 0;
    }

    /// Adds a token to the batch, noting which row of logits it will get.
    fn batch_add(&mut self, token: LlamaToken, pos: i32, seqs: &[i32], logits: bool) -> Result<()> {
        self.batch
            .add(token, pos, seqs, logits)
            .map_err(llama_err)?;
        if logits {
            self.out_rows.push(self.n_outputs);
            self.n_outputs += 1;
        } else {
            self.out_rows.push(-1);
        }
        Ok(())
    }

    /// Evaluates the batch; where the session has its own output product, computes the
    /// logits from the captured hidden state.
    fn decode(&mut self) -> Result<()> {
        self.own_logits.clear();
        if let Some(c) = self.capture.as_mut() {
            let c = c.get();
            c.hidden.clear();
            c.declined = false;
        }
        self.ctx.decode(&mut self.batch).map_err(llama_err)?;
        let (Some(cap), Some(head)) = (self.capture.as_mut(), self.head.as_ref()) else {
            return Ok(());
        };
        let cap = cap.get();
        let rows = cap.hidden.len() / head.n_embd();
        let wanted = self.n_outputs as usize;
        if cap.declined || rows == 0 {
            // The graph ran to its end: llama.cpp's logits are there.
            return Ok(());
        }
        if rows != wanted {
            return Err(EngineError::Llama(format!(
                "captured {rows} hidden rows for {wanted} tokens that want logits"
            )));
        }
        // The output product runs on our threads: the graph's must not hold the cores.
        if let Some(pool) = &self._pool {
            pool.pause();
        }
        head.logits(
            &cap.hidden,
            &mut self.own_logits,
            self.params.n_threads.max(1) as usize,
        );
        Ok(())
    }

    /// Logits of batch entry `i` of the last decode.
    fn logits_ith(&self, i: i32) -> &[f32] {
        match &self.head {
            Some(head) if !self.own_logits.is_empty() => {
                let row = self.out_rows[i as usize] as usize;
                &self.own_logits[row * head.n_vocab()..][..head.n_vocab()]
            }
            _ => self.ctx.get_logits_ith(i),
        }
    }

    /// Evaluates `tokens` at the end of sequence `seq`, in batches; logits of the last one
    /// are kept for sampling.
    fn eval(&mut self, seq: usize, tokens: &[LlamaToken]) -> Result<()> {
        // llama.cpp may lower the batch it was asked for (never above the context size).
        let n_batch = self.ctx.n_batch() as usize;
        for (i, chunk) in tokens.chunks(n_batch).enumerate() {
            let last_chunk = (i + 1) * n_batch >= tokens.len();
            self.batch_clear();
            for (j, t) in chunk.iter().enumerate() {
                let pos = self.cached[seq].len() + j;
                let logits = last_chunk && j + 1 == chunk.len();
                self.batch_add(*t, pos as i32, &[seq as i32], logits)?;
            }
            self.decode()?;
            self.cached[seq].extend_from_slice(chunk);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VOCAB: usize = 500;

    /// Logits that depend on the history (as a model's do), peaked enough that candidates
    /// often draw alike and form groups, and spread enough that they also part.
    fn logits_after(history: &[LlamaToken]) -> Vec<f32> {
        let h = history
            .iter()
            .fold(17u64, |h, t| h.wrapping_mul(31).wrapping_add(t.0 as u64));
        (0..VOCAB)
            .map(|i| {
                let x = (i as u64).wrapping_mul(2_654_435_761).wrapping_add(h) % 1000;
                x as f32 / 250.0
            })
            .collect()
    }

    fn array_after(history: &[LlamaToken]) -> LlamaTokenDataArray {
        let mut a = LlamaTokenDataArray::new(Vec::new(), false);
        fill_logits(&mut a, &logits_after(history));
        a
    }

    /// SAG's sampling: temperature first, then the nucleus (`Filter::Nucleus`).
    fn sag_sampling() -> SamplingParams {
        SamplingParams {
            temperature: 0.4,
            top_p: 0.8,
            top_k: 0,
            min_p: 0.0,
            temperature_first: true,
            seed: 5,
            ..SamplingParams::default()
        }
    }

    /// A filter only llama.cpp's chain computes (a repeat penalty needs the history).
    fn chain_sampling() -> SamplingParams {
        SamplingParams {
            temperature: 0.4,
            top_p: 0.8,
            repeat_penalty: 1.3,
            seed: 11,
            ..SamplingParams::default()
        }
    }

    #[test]
    fn filtering_once_per_group_chooses_what_each_whole_chain_would() {
        // llama.cpp's filter (a repeat penalty needs the history).
        filtering_once_per_group_matches_whole_chains(chain_sampling());
    }

    #[test]
    fn the_native_nucleus_filter_chooses_what_llama_cpp_s_whole_chain_would() {
        // SAG's sampling: the filter is `Nucleus`, the reference llama.cpp's chain.
        let params = sag_sampling();
        assert!(params.nucleus().is_some());
        filtering_once_per_group_matches_whole_chains(params);
    }

    #[test]
    fn candidates_with_equal_histories_share_what_the_grammar_admits_after_a_rejection() {
        // SAG's sampling (`Nucleus` filter) and llama.cpp's chain (repeat penalty).
        for params in [sag_sampling(), chain_sampling()] {
            let (own, own_sets, redraws) = choices_under_a_grammar(&params, false);
            let (shared, shared_sets, _) = choices_under_a_grammar(&params, true);
            assert_eq!(own, shared, "{params:?}");
            // Meaningful only if draws were rejected and members of a group shared a set.
            assert_eq!(own_sets, redraws);
            assert!(
                shared_sets < redraws,
                "{shared_sets} of {redraws}: nothing shared"
            );
            assert!(
                own.iter().any(|c| *c != own[0]),
                "the candidates never parted"
            );
        }
    }

    /// 8 candidates' tokens over 40 positions, filtering once per group of equal histories,
    /// under a stand-in grammar (a logit bias of -inf rejects two tokens in three, as a
    /// grammar would); with `share`, a group's members share the admitted set after a
    /// rejection. Also returns how many admitted sets were computed and how many draws the
    /// grammar rejected.
    fn choices_under_a_grammar(
        params: &SamplingParams,
        share: bool,
    ) -> (Vec<Vec<LlamaToken>>, usize, usize) {
        use llama_cpp_2::token::logit_bias::LlamaLogitBias;
        let banned: Vec<LlamaLogitBias> = (0..VOCAB)
            .filter(|i| i % 3 != 0)
            .map(|i| LlamaLogitBias::new(LlamaToken(i as i32), f32::NEG_INFINITY))
            .collect();
        let n = 8;
        let mut samplers: Vec<TokenSampler> = (0..n)
            .map(|i| {
                let grammar = LlamaSampler::logit_bias(VOCAB as i32, &banned);
                SamplingParams {
                    seed: params.seed + i,
                    ..params.clone()
                }
                .sampler(VOCAB as i32, Some(grammar))
            })
            .collect();
        let mut got = vec![Vec::new(); n as usize];
        let mut sets = 0;
        for _ in 0..40 {
            let mut groups: Vec<(Vec<LlamaToken>, LlamaTokenDataArray)> = Vec::new();
            let mut admitted: Vec<Option<LlamaTokenDataArray>> = Vec::new();
            for i in 0..n as usize {
                let logits = logits_after(&got[i]);
                let p = match groups.iter().position(|(h, _)| *h == got[i]) {
                    Some(p) => p,
                    None => {
                        let buf = LlamaTokenDataArray::new(Vec::new(), false);
                        let f = samplers[i].filter(&logits, buf);
                        groups.push((got[i].clone(), f));
                        admitted.push(None);
                        groups.len() - 1
                    }
                };
                let mut own = None;
                let set = if share { &mut admitted[p] } else { &mut own };
                let had = set.is_some();
                let t = samplers[i].choose(&groups[p].1, &logits, set);
                sets += usize::from(!had && set.is_some());
                assert!(
                    (t.0 as usize).is_multiple_of(3),
                    "the grammar's rejection was ignored"
                );
                got[i].push(t);
            }
        }
        let redraws = samplers.iter().map(|s| s.redraws).sum();
        (got, sets, redraws)
    }

    fn filtering_once_per_group_matches_whole_chains(params: SamplingParams) {
        let n = 8;
        let member = |i: u32| SamplingParams {
            seed: params.seed + i,
            ..params.clone()
        };
        // Each candidate's whole chain on its own logits, as one sequence samples.
        let mut whole: Vec<LlamaSampler> = (0..n)
            .map(|i| {
                let (filter, draw) = member(i).chains(VOCAB as i32);
                LlamaSampler::chain_simple([filter, draw])
            })
            .collect();
        let mut expected = vec![Vec::new(); n as usize];
        for _ in 0..40 {
            for (i, chain) in whole.iter_mut().enumerate() {
                let mut cur = array_after(&expected[i]);
                cur.apply_sampler(chain);
                let t = cur.selected_token().unwrap();
                chain.accept(t);
                expected[i].push(t);
            }
        }
        // The engine's way: per position, the first candidate of each group of equal
        // histories filters once; every candidate chooses from that.
        let mut split: Vec<TokenSampler> = (0..n)
            .map(|i| member(i).sampler(VOCAB as i32, None))
            .collect();
        let mut got = vec![Vec::new(); n as usize];
        let (mut filtered_positions, mut chosen) = (0, 0);
        for _ in 0..40 {
            let mut groups: Vec<(Vec<LlamaToken>, LlamaTokenDataArray)> = Vec::new();
            for i in 0..n as usize {
                let p = match groups.iter().position(|(h, _)| *h == got[i]) {
                    Some(p) => p,
                    None => {
                        let buf = LlamaTokenDataArray::new(Vec::new(), false);
                        let f = split[i].filter(&logits_after(&got[i]), buf);
                        groups.push((got[i].clone(), f));
                        filtered_positions += 1;
                        groups.len() - 1
                    }
                };
                let t = split[i].choose(&groups[p].1, &logits_after(&got[i]), &mut None);
                chosen += 1;
                got[i].push(t);
            }
        }
        assert_eq!(got, expected);
        // The test means something only if candidates both shared and parted.
        assert!(filtered_positions < chosen, "no group ever shared");
        assert!(
            expected.iter().any(|e| *e != expected[0]),
            "the candidates never parted"
        );
    }

    #[test]
    fn after_a_rejected_draw_only_the_admitted_tokens_near_the_best_admitted_one_are_found() {
        // A "grammar" that admits every 97th token, or only tokens far down the order.
        let logits: Vec<f32> = (0..5000)
            .map(|i| ((i as u64 * 2_654_435_761) % 100_000) as f32 / 1000.0)
            .collect();
        for (admit_every, width) in [(97usize, 12.8f32), (97, 0.0), (4999, 12.8), (1, 3.0)] {
            let admit = |id: usize| id.is_multiple_of(admit_every);
            let mut reject = |a: &mut LlamaTokenDataArray| {
                for d in &mut a.data {
                    if !admit(d.id().0 as usize) {
                        d.set_logit(f32::NEG_INFINITY);
                    }
                }
            };
            let mut got: Vec<i32> = admitted_near_best(&mut reject, &logits, width)
                .iter()
                .map(|d| d.id().0)
                .collect();
            got.sort_unstable();
            // By brute force: every admitted token, then those near the best of them.
            let best = (0..logits.len())
                .filter(|&i| admit(i))
                .map(|i| logits[i])
                .fold(f32::NEG_INFINITY, f32::max);
            let want: Vec<i32> = (0..logits.len())
                .filter(|&i| admit(i) && logits[i] >= best - width)
                .map(|i| i as i32)
                .collect();
            assert!(!want.is_empty());
            assert_eq!(got, want, "admit every {admit_every}, width {width}");
        }
    }
}
