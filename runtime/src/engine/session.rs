//! A session: one llama.cpp context (one KV cache), the tokens each sequence holds, prompt
//! reuse, decoding and the adoption of a candidate as the conversation.

use super::*;

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

/// A context with its KV cache and the tokens each sequence holds.
pub struct Session<'m> {
    pub(super) model: &'m Model,
    pub(super) ctx: LlamaContext<'m>,
    /// Declared after `ctx`: the context uses the pool until it is dropped.
    pub(super) _pool: Option<threadpool::CpuThreadPool>,
    pub(super) params: SessionParams,
    /// `cached[s]` = the tokens in the KV cache of sequence `s`, in position order.
    pub(super) cached: Vec<Vec<LlamaToken>>,
    /// Candidates of the current parallel call whose generated tokens were released
    /// ([`AfterEnd::release`]): they can no longer be kept.
    pub(super) released: Vec<bool>,
    pub(super) batch: LlamaBatch<'static>,
    /// Own output product ([`head`]), where it applies: the context stops its graph at the
    /// final hidden state, which `capture` receives (declared after `ctx`, which points to it).
    pub(super) head: Option<std::sync::Arc<head::OutputHead>>,
    pub(super) capture: Option<CaptureCell>,
    /// Batch index -> row of the logits of the last decode (-1: none asked).
    pub(super) out_rows: Vec<i32>,
    /// Tokens of the batch that ask for logits.
    pub(super) n_outputs: i32,
    /// Logits of the last decode computed by `head`, row-major; empty when llama.cpp's apply.
    pub(super) own_logits: Vec<f32>,
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
pub(super) fn argmax(logits: &[f32]) -> LlamaToken {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    LlamaToken(best as i32)
}

/// Length of the common prefix of two token lists.
pub(super) fn common_prefix(a: &[LlamaToken], b: &[LlamaToken]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl<'m> Session<'m> {
    pub(super) fn new(model: &'m Model, params: &SessionParams) -> Result<Self> {
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
        if let Some(adapter) = &model.adapter {
            // Without its offsets the split model computes wrong numbers: every context
            // applies them (with any LoRA adapter folded in), at scale 1 (alpha 0: exact; see
            // `split`). A LoRA adapter alone gets its alpha / rank from llama.cpp.
            let mut adapter = adapter.lock().unwrap_or_else(|p| p.into_inner());
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
    pub(super) fn compact(&mut self) {
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
    pub(super) fn rest(&self) {
        if let Some(pool) = &self._pool {
            pool.pause();
        }
    }

    pub(super) fn batch_clear(&mut self) {
        self.batch.clear();
        self.out_rows.clear();
        self.n_outputs = 0;
    }

    /// Adds a token to the batch, noting which row of logits it will get.
    pub(super) fn batch_add(
        &mut self,
        token: LlamaToken,
        pos: i32,
        seqs: &[i32],
        logits: bool,
    ) -> Result<()> {
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
    pub(super) fn decode(&mut self) -> Result<()> {
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
    pub(super) fn logits_ith(&self, i: i32) -> &[f32] {
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
    pub(super) fn eval(&mut self, seq: usize, tokens: &[LlamaToken]) -> Result<()> {
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
