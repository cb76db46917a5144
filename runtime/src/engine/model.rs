//! Loading a GGUF model: the Q4_1 split, a LoRA adapter, the own output head, chat templates,
//! tokenizing.

use super::*;

/// A loaded GGUF model (weights are memory-mapped; load is cheap).
pub struct Model {
    pub(super) inner: LlamaModel,
    pub(super) path: PathBuf,
    /// The file llama.cpp mapped: `path`, or the derived Q4_0 base of a split model.
    pub(super) mapped: PathBuf,
    pub(super) template: LlamaChatTemplate,
    /// The adapter every context of the model applies: the Q4_1 offsets when the model was
    /// loaded split (see [`split`]), with the LoRA adapter of [`LoadOptions::adapter`] folded
    /// in ([`adapter`]); else that LoRA adapter alone.
    pub(super) adapter: Option<std::sync::Mutex<llama_cpp_2::model::LlamaLoraAdapter>>,
    /// Whether the model was loaded split.
    pub(super) split: bool,
    /// The LoRA adapter file applied, if any.
    pub(super) lora: Option<PathBuf>,
    /// The LoRA adapter changes the output matrix (or the embeddings it may be tied to), which
    /// only llama.cpp's graph applies: no own output product then.
    pub(super) lora_touches_output: bool,
    /// The output matrix for [`head::OutputHead`], built by the first session that uses it;
    /// `None` inside when this model or CPU does not qualify.
    pub(super) head: OnceLock<Option<std::sync::Arc<head::OutputHead>>>,
    /// Whether the back-end offloads to a GPU (the own output product is CPU-only).
    pub(super) gpu: bool,
}

/// How [`Model::load_with`] loads a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadOptions {
    /// Load Q4_1 matrices as Q4_0 plus per-block offsets where that layout has faster
    /// kernels (see [`split`]); `false` loads the file as it is.
    pub split_q4_1: bool,
    /// Where the split files are kept ([`split::default_cache_dir`] by default).
    pub split_cache: Option<PathBuf>,
    /// A LoRA adapter GGUF (llama.cpp's format) applied to every context; checked against
    /// the model (a misfit is [`EngineError::AdapterMismatch`]).
    pub adapter: Option<PathBuf>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            split_q4_1: true,
            split_cache: split::default_cache_dir(),
            adapter: None,
        }
    }
}

impl LoadOptions {
    /// Loads the file exactly as it is.
    pub fn as_is() -> Self {
        Self {
            split_q4_1: false,
            split_cache: None,
            adapter: None,
        }
    }

    /// The same options with the LoRA adapter `adapter`.
    pub fn with_adapter(self, adapter: Option<PathBuf>) -> Self {
        Self { adapter, ..self }
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
        let lora = match &options.adapter {
            Some(a) => Some(adapter::check(a, path)?),
            None => None,
        };
        let misfit = |reason: String| EngineError::AdapterMismatch {
            adapter: options.adapter.clone().unwrap_or_default(),
            model: path.into(),
            reason,
        };
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
            // The LoRA adapter rides in the offsets adapter (one adapter per context).
            let offsets = match &options.adapter {
                None => files.offsets.clone(),
                Some(a) => match adapter::fold(&files, path, a) {
                    Ok(folded) => folded,
                    Err(e) => {
                        tracing::warn!(error = %e, "could not fold the LoRA adapter into the \
                            split's offsets; loading the model as it is");
                        return None;
                    }
                },
            };
            // Mapped: the derived file puts the repacked (copied) matrices before the
            // tensors read in place, so the loader unmaps their pages once copied. The
            // loader reads every page in; with our own output product the embeddings'
            // pages are handed back afterwards (`Model::output_head`).
            let loaded = LlamaModel::load_from_file(backend, &files.base, &params)
                .map_err(|e| Some(e.to_string()))
                .and_then(|mut inner| {
                    let adapter = inner.lora_adapter_init(&offsets).map_err(|e| {
                        if offsets != files.offsets {
                            // Only the fold is suspect: the model then loads as it is, and
                            // the adapter alone says whether it fits.
                            let _ = std::fs::remove_file(&offsets);
                            return None;
                        }
                        Some(e.to_string())
                    })?;
                    Ok((inner, adapter))
                });
            match loaded {
                Ok((inner, adapter)) => {
                    tracing::debug!(base = %files.base.display(), "Q4_1 model loaded as Q4_0 + offsets");
                    Some((inner, Some(std::sync::Mutex::new(adapter)), files.base, true))
                }
                Err(None) => {
                    tracing::warn!(
                        fold = %offsets.display(),
                        "the split's offsets with the LoRA adapter folded in did not load; \
                         removed them, loading the model as it is"
                    );
                    None
                }
                Err(Some(e)) => {
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
        let (inner, adapter, mapped, split) = match split_loaded {
            Some(loaded) => loaded,
            None => {
                let mut inner = LlamaModel::load_from_file(backend, path, &params)
                    .map_err(|e| load_failed(&e))?;
                // llama.cpp applies the adapter's alpha / rank itself.
                let adapter = match &options.adapter {
                    Some(a) => Some(std::sync::Mutex::new(inner.lora_adapter_init(a).map_err(
                        |e| {
                            misfit(format!(
                                "llama.cpp refused it ({e}; details: RUST_LOG=llama-cpp-2=debug)"
                            ))
                        },
                    )?)),
                    None => None,
                };
                (inner, adapter, path.to_path_buf(), false)
            }
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
            adapter,
            split,
            lora: options.adapter.clone(),
            lora_touches_output: lora.is_some_and(|c| c.touches_output),
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
    pub(super) fn output_head(&self) -> Option<std::sync::Arc<head::OutputHead>> {
        if self.gpu || self.lora_touches_output {
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
        self.split
    }

    /// The LoRA adapter file every context applies ([`LoadOptions::adapter`]).
    pub fn adapter(&self) -> Option<&Path> {
        self.lora.as_deref()
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
