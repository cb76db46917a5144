//! Weights in: a GGUF file (read by `candle-core`'s `gguf_file`, dequantised by
//! `QTensor::dequantize`) → the burn [`Student`] in f32.
//!
//! # Metadata
//!
//! `general.architecture` is `llama` or `qwen2` (`A` below); the shape comes from
//! `A.embedding_length`, `A.block_count`, `A.attention.head_count`,
//! `A.attention.head_count_kv` (default: the head count), `A.attention.key_length` (default:
//! width / heads), `A.feed_forward_length`, `A.rope.freq_base` (default
//! [`DEFAULT_ROPE_THETA`]), `A.attention.layer_norm_rms_epsilon`, `A.context_length`, and the
//! vocabulary size from `A.vocab_size` or else the length of `tokenizer.ggml.tokens`. RoPE
//! scaling, a partial rotary width (`A.rope.dimension_count` ≠ head width), experts and any
//! tensor not listed below are refused ([`StudentError::UnsupportedGguf`]) rather than
//! computed wrongly.
//!
//! # Tensors
//!
//! GGUF lists a matrix's dimensions fastest first (`ne = [in, out]`); candle reverses them,
//! so a matrix arrives as row-major `[out, in]`: one row per output, as in PyTorch. burn's
//! projections compute `x·W` with `W: [in, out]`, so every projection is transposed once
//! here.
//!
//! | GGUF tensor | shape as read `[rows, cols]` | student field |
//! |---|---|---|
//! | `token_embd.weight` | `[vocab, hidden]` | [`Student::embed`] as is (a row per token) |
//! | `blk.N.attn_norm.weight` | `[hidden]` | `blocks[N].attn_norm` |
//! | `blk.N.attn_q.weight` (`.bias`) | `[heads·hd, hidden]` | `blocks[N].attn.q`, transposed; rows re-ordered, see below |
//! | `blk.N.attn_k.weight` (`.bias`) | `[kv_heads·hd, hidden]` | `blocks[N].attn.k`, the same |
//! | `blk.N.attn_v.weight` (`.bias`) | `[kv_heads·hd, hidden]` | `blocks[N].attn.v`, transposed |
//! | `blk.N.attn_qkv.weight` (`.bias`) | q, k, v rows stacked | split into the three above |
//! | `blk.N.attn_output.weight` | `[hidden, heads·hd]` | `blocks[N].attn.o`, transposed |
//! | `blk.N.ffn_norm.weight` | `[hidden]` | `blocks[N].ffn_norm` |
//! | `blk.N.ffn_gate.weight` / `ffn_up.weight` | `[ffn, hidden]` | `blocks[N].mlp.gate` / `.up`, transposed |
//! | `blk.N.ffn_down.weight` | `[hidden, ffn]` | `blocks[N].mlp.down`, transposed |
//! | `output_norm.weight` | `[hidden]` | [`Student::norm`] |
//! | `output.weight` | `[vocab, hidden]` | [`Student::output`], transposed; absent = tied to `token_embd` |
//!
//! Biases (`.bias`) of any projection are read where present (Qwen2 has them on q, k, v).
//! Tensor types: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 and the K-quants Q2_K … Q6_K
//! ([`SUPPORTED_TYPES`]); quantised weights are dequantised exactly as ggml defines the
//! blocks, so the student trains on the very numbers llama.cpp multiplies with.
//!
//! # q/k rows and RoPE
//!
//! llama.cpp rotates, for `LLM_ARCH_LLAMA`, adjacent pairs `(2i, 2i+1)` of each head
//! (`LLAMA_ROPE_TYPE_NORM`), and for `LLM_ARCH_QWEN2` the halves `(i, i + hd/2)`
//! (`LLAMA_ROPE_TYPE_NEOX`, the same pairing as Hugging Face's `rotate_half`). Hugging Face
//! Llama checkpoints are written for `rotate_half`, so llama.cpp's converter permutes the q
//! and k rows of llama-arch models within each head: HF row `j·hd/2 + i` (`j` ∈ {0, 1})
//! becomes GGUF row `2i + j`, which turns the halves pairing into the adjacent one; Qwen2 rows
//! are stored unpermuted. Permuting q and k rows alike within a head leaves every q·k product
//! unchanged, so either form computes the same model as long as the rotation matches the
//! rows:
//!
//! - [`QkLayout::HuggingFace`] (default) undoes the converter's permutation for llama (GGUF
//!   row `2i + j` → row `j·hd/2 + i`, biases too) and rotates halves for both
//!   architectures: the student's q/k matrices then have Hugging Face's layout (what PyTorch
//!   and PEFT adapters expect);
//! - [`QkLayout::Gguf`] keeps the rows as stored and rotates as llama.cpp does for the
//!   architecture (adjacent pairs for llama: burn's `RotaryEncoding` pairing).
//!
//! Both are checked against llama.cpp by the parity tests; the mismatched combination
//! (stored llama rows with halves rotation) is checked to fail them.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::GgmlDType;

use crate::config::{Arch, RopeStyle, StudentConfig, DEFAULT_ROPE_THETA};
use crate::error::{Result, StudentError};
use crate::model::{Attention, Block, Linear, Mlp, RmsNorm, Student};

/// Tensor types the loader dequantises.
pub const SUPPORTED_TYPES: &[GgmlDType] = &[
    GgmlDType::F32,
    GgmlDType::F16,
    GgmlDType::BF16,
    GgmlDType::Q8_0,
    GgmlDType::Q4_0,
    GgmlDType::Q4_1,
    GgmlDType::Q5_0,
    GgmlDType::Q5_1,
    GgmlDType::Q2K,
    GgmlDType::Q3K,
    GgmlDType::Q4K,
    GgmlDType::Q5K,
    GgmlDType::Q6K,
];

const SUPPORTED_ARCHS: &str = "general.architecture llama or qwen2";
const SUPPORTED_TENSORS: &str = "token_embd, output_norm, output and per block attn_norm, \
    attn_q/k/v (or attn_qkv), attn_output, ffn_norm, ffn_gate, ffn_up, ffn_down";
const SUPPORTED_TYPE_NAMES: &str = "F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K..Q6_K";

/// Where the q/k rows of the loaded student come from (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QkLayout {
    /// Hugging Face's order (llama rows un-permuted), rotated by halves.
    #[default]
    HuggingFace,
    /// As stored in the file, rotated as llama.cpp does for the architecture.
    Gguf,
}

impl std::str::FromStr for QkLayout {
    type Err = String;

    /// `hugging-face` or `gguf`.
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "hugging-face" | "hf" => Ok(Self::HuggingFace),
            "gguf" => Ok(Self::Gguf),
            other => Err(format!(
                "unknown q/k layout {other:?}: hugging-face (rows un-permuted, halves rotated) \
                 or gguf (rows as stored, rotated as llama.cpp does)"
            )),
        }
    }
}

impl QkLayout {
    /// The RoPE pairing that matches this layout for `arch`.
    pub fn rope_style(self, arch: Arch) -> RopeStyle {
        match self {
            Self::HuggingFace => RopeStyle::Halves,
            Self::Gguf => arch.llama_cpp_rope(),
        }
    }

    /// Whether q/k rows of `arch` are re-ordered on load.
    pub fn permutes(self, arch: Arch) -> bool {
        self == Self::HuggingFace && arch == Arch::Llama
    }
}

/// How [`load`] builds the student.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Layout of the q/k rows.
    pub qk_layout: QkLayout,
    /// Use this RoPE pairing instead of the one that matches `qk_layout` (only to show that
    /// the wrong one breaks parity).
    pub rope_override: Option<RopeStyle>,
}

/// An open GGUF file: its metadata and tensor directory, tensors read on demand.
pub struct GgufFile {
    path: PathBuf,
    content: Content,
    reader: BufReader<File>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("tensors", &self.content.tensor_infos.len())
            .finish()
    }
}

impl GgufFile {
    /// Reads the header, metadata and tensor directory.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|source| StudentError::Io {
            path: path.into(),
            source,
        })?;
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let content = Content::read(&mut reader).map_err(|e| candle_error(path, &e))?;
        Ok(Self {
            path: path.into(),
            content,
            reader,
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// All metadata, by key.
    pub fn metadata(&self) -> &HashMap<String, Value> {
        &self.content.metadata
    }

    /// Names of all tensors, sorted.
    pub fn tensor_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .content
            .tensor_infos
            .keys()
            .map(String::as_str)
            .collect();
        names.sort_unstable();
        names
    }

    /// Whether the file holds a tensor of that name.
    pub fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// The stored type of a tensor.
    pub fn tensor_type(&self, name: &str) -> Option<GgmlDType> {
        self.content.tensor_infos.get(name).map(|t| t.ggml_dtype)
    }

    /// A tensor's shape, slowest dimension first (a matrix as `[rows, cols]`).
    pub fn tensor_shape(&self, name: &str) -> Option<Vec<usize>> {
        self.content
            .tensor_infos
            .get(name)
            .map(|t| t.shape.dims().to_vec())
    }

    /// A tensor dequantised to f32, row-major, with its shape (slowest dimension first).
    pub fn read_f32(&mut self, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let Some(info) = self.content.tensor_infos.get(name) else {
            return Err(self.corrupt(format!("tensor {name} is missing")));
        };
        if !SUPPORTED_TYPES.contains(&info.ggml_dtype) {
            return Err(StudentError::UnsupportedGguf {
                path: self.path.clone(),
                what: format!("tensor {name} of type {:?}", info.ggml_dtype),
                supported: SUPPORTED_TYPE_NAMES,
            });
        }
        let cpu = candle_core::Device::Cpu;
        let values = self
            .content
            .tensor(&mut self.reader, name, &cpu)
            .and_then(|q| q.dequantize(&cpu))
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|e| StudentError::CorruptGguf {
                path: self.path.clone(),
                reason: format!("tensor {name}: {e}"),
            })?;
        let shape = info.shape.dims().to_vec();
        Ok((values, shape))
    }

    /// A metadata value.
    pub fn value(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    /// An integer metadata value of any integer type; `None` when absent.
    pub fn usize_value(&self, key: &str) -> Result<Option<usize>> {
        match self.value(key) {
            None => Ok(None),
            Some(v) => integer(v)
                .map(Some)
                .ok_or_else(|| self.corrupt(format!("key {key} is {v:?}, not an integer"))),
        }
    }

    /// A float metadata value (f32 or f64); `None` when absent.
    pub fn f32_value(&self, key: &str) -> Result<Option<f32>> {
        match self.value(key) {
            None => Ok(None),
            Some(Value::F32(v)) => Ok(Some(*v)),
            Some(Value::F64(v)) => Ok(Some(*v as f32)),
            Some(v) => Err(self.corrupt(format!("key {key} is {v:?}, not a float"))),
        }
    }

    /// A string metadata value; `None` when absent.
    pub fn str_value(&self, key: &str) -> Result<Option<&str>> {
        match self.value(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.corrupt(format!("key {key} is {v:?}, not a string"))),
        }
    }

    fn required_usize(&self, key: &str) -> Result<usize> {
        self.usize_value(key)?
            .ok_or_else(|| self.corrupt(format!("metadata key {key} is missing")))
    }

    fn corrupt(&self, reason: String) -> StudentError {
        StudentError::CorruptGguf {
            path: self.path.clone(),
            reason,
        }
    }

    fn unsupported(&self, what: String, supported: &'static str) -> StudentError {
        StudentError::UnsupportedGguf {
            path: self.path.clone(),
            what,
            supported,
        }
    }

    /// The architecture, if it is one the student implements.
    pub fn arch(&self) -> Result<Arch> {
        let name = self
            .str_value("general.architecture")?
            .ok_or_else(|| self.corrupt("general.architecture is missing".into()))?;
        Arch::from_gguf(name)
            .ok_or_else(|| self.unsupported(format!("architecture {name:?}"), SUPPORTED_ARCHS))
    }

    /// The student's configuration from the metadata (and, for the head and biases, the
    /// tensor directory), for q/k rows in `layout`.
    pub fn config(&self, layout: QkLayout) -> Result<StudentConfig> {
        let arch = self.arch()?;
        let key = |k: &str| format!("{}.{k}", arch.gguf_name());
        let hidden_size = self.required_usize(&key("embedding_length"))?;
        let n_layers = self.required_usize(&key("block_count"))?;
        let n_heads = self.required_usize(&key("attention.head_count"))?;
        let n_kv_heads = self
            .usize_value(&key("attention.head_count_kv"))?
            .unwrap_or(n_heads);
        if n_heads == 0 {
            return Err(self.corrupt("attention.head_count is 0".into()));
        }
        let head_dim = self
            .usize_value(&key("attention.key_length"))?
            .unwrap_or(hidden_size / n_heads);
        if let Some(v) = self.usize_value(&key("attention.value_length"))? {
            if v != head_dim {
                return Err(self.unsupported(
                    format!("value heads of width {v} beside key heads of {head_dim}"),
                    "equal key and value head widths",
                ));
            }
        }
        if let Some(rot) = self.usize_value(&key("rope.dimension_count"))? {
            if rot != head_dim {
                return Err(self.unsupported(
                    format!("RoPE over {rot} of {head_dim} head dimensions"),
                    "RoPE over whole heads",
                ));
            }
        }
        if let Some(kind) = self.str_value(&key("rope.scaling.type"))? {
            if kind != "none" {
                return Err(self.unsupported(format!("RoPE scaling {kind:?}"), "no RoPE scaling"));
            }
        }
        for factor_key in ["rope.scale_linear", "rope.scaling.factor"] {
            if let Some(f) = self.f32_value(&key(factor_key))? {
                if f != 0.0 && f != 1.0 {
                    return Err(self.unsupported(format!("{factor_key} = {f}"), "no RoPE scaling"));
                }
            }
        }
        if self.usize_value(&key("expert_count"))?.unwrap_or(0) > 0 {
            return Err(self.unsupported("mixture of experts".into(), "dense MLPs"));
        }
        let vocab_size = match self.usize_value(&key("vocab_size"))? {
            Some(v) => v,
            None => match self.value("tokenizer.ggml.tokens") {
                Some(Value::Array(tokens)) => tokens.len(),
                _ => {
                    return Err(self.corrupt(
                        "neither a vocab_size key nor a tokenizer.ggml.tokens list".into(),
                    ))
                }
            },
        };
        let rms_eps = self
            .f32_value(&key("attention.layer_norm_rms_epsilon"))?
            .ok_or_else(|| {
                self.corrupt(format!(
                    "{} is missing",
                    key("attention.layer_norm_rms_epsilon")
                ))
            })?;
        let config = StudentConfig {
            arch,
            vocab_size,
            hidden_size,
            n_layers,
            n_heads,
            n_kv_heads,
            head_dim,
            ffn_size: self.required_usize(&key("feed_forward_length"))?,
            rope_theta: self
                .f32_value(&key("rope.freq_base"))?
                .unwrap_or(DEFAULT_ROPE_THETA),
            rms_eps,
            context_length: self.required_usize(&key("context_length"))?,
            tied_embeddings: !self.has_tensor("output.weight"),
            qkv_bias: self.has_tensor("blk.0.attn_q.bias")
                || self.has_tensor("blk.0.attn_qkv.bias"),
            rope: layout.rope_style(arch),
        };
        config.check().map_err(|e| self.corrupt(e))?;
        Ok(config)
    }

    /// Refuses tensors the student would ignore (they would change llama.cpp's result).
    fn check_tensor_names(&self, n_layers: usize) -> Result<()> {
        const BLOCK: &[&str] = &[
            "attn_norm.weight",
            "attn_q.weight",
            "attn_q.bias",
            "attn_k.weight",
            "attn_k.bias",
            "attn_v.weight",
            "attn_v.bias",
            "attn_qkv.weight",
            "attn_qkv.bias",
            "attn_output.weight",
            "attn_output.bias",
            "ffn_norm.weight",
            "ffn_gate.weight",
            "ffn_gate.bias",
            "ffn_up.weight",
            "ffn_up.bias",
            "ffn_down.weight",
            "ffn_down.bias",
        ];
        for name in self.content.tensor_infos.keys() {
            let known = match name.as_str() {
                "token_embd.weight" | "output_norm.weight" | "output.weight" => true,
                other => other
                    .strip_prefix("blk.")
                    .and_then(|rest| rest.split_once('.'))
                    .is_some_and(|(n, field)| {
                        n.parse::<usize>().is_ok_and(|n| n < n_layers) && BLOCK.contains(&field)
                    }),
            };
            if !known {
                return Err(self.unsupported(format!("tensor {name}"), SUPPORTED_TENSORS));
            }
        }
        Ok(())
    }

    /// A tensor that must have `shape`, dequantised.
    fn read_shaped(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let (values, found) = self.read_f32(name)?;
        if found != shape {
            return Err(self.corrupt(format!(
                "tensor {name} has shape {found:?}, the metadata implies {shape:?}"
            )));
        }
        Ok(values)
    }

    fn read_optional(&mut self, name: &str, shape: &[usize]) -> Result<Option<Vec<f32>>> {
        if self.has_tensor(name) {
            self.read_shaped(name, shape).map(Some)
        } else {
            Ok(None)
        }
    }
}

/// Loads the student from a GGUF file onto `device`.
pub fn load(path: &Path, options: &LoadOptions, device: &Device) -> Result<Student> {
    let mut file = GgufFile::open(path)?;
    let mut config = file.config(options.qk_layout)?;
    if let Some(style) = options.rope_override {
        config.rope = style;
    }
    file.check_tensor_names(config.n_layers)?;
    let permute = options.qk_layout.permutes(config.arch);
    let hidden = config.hidden_size;
    let (q_size, kv_size) = (config.q_size(), config.kv_size());

    let embed = file.read_shaped("token_embd.weight", &[config.vocab_size, hidden])?;
    let embed = matrix(embed, [config.vocab_size, hidden], device);

    let mut blocks = Vec::with_capacity(config.n_layers);
    for n in 0..config.n_layers {
        let name = |field: &str| format!("blk.{n}.{field}");
        let attn_norm = file.read_shaped(&name("attn_norm.weight"), &[hidden])?;
        let ((q, q_bias), (k, k_bias), (v, v_bias)) = if file.has_tensor(&name("attn_qkv.weight")) {
            read_fused_qkv(&mut file, n, hidden, q_size, kv_size)?
        } else {
            (
                read_projection(&mut file, &name("attn_q"), q_size, hidden)?,
                read_projection(&mut file, &name("attn_k"), kv_size, hidden)?,
                read_projection(&mut file, &name("attn_v"), kv_size, hidden)?,
            )
        };
        let (q, q_bias, k, k_bias) = if permute {
            (
                halves_from_adjacent(&q, config.n_heads, config.head_dim, hidden),
                q_bias.map(|b| halves_from_adjacent(&b, config.n_heads, config.head_dim, 1)),
                halves_from_adjacent(&k, config.n_kv_heads, config.head_dim, hidden),
                k_bias.map(|b| halves_from_adjacent(&b, config.n_kv_heads, config.head_dim, 1)),
            )
        } else {
            (q, q_bias, k, k_bias)
        };
        let o = read_projection(&mut file, &name("attn_output"), hidden, q_size)?;
        let ffn_norm = file.read_shaped(&name("ffn_norm.weight"), &[hidden])?;
        let gate = read_projection(&mut file, &name("ffn_gate"), config.ffn_size, hidden)?;
        let up = read_projection(&mut file, &name("ffn_up"), config.ffn_size, hidden)?;
        let down = read_projection(&mut file, &name("ffn_down"), hidden, config.ffn_size)?;
        blocks.push(Block {
            attn_norm: RmsNorm::new(vector(attn_norm, device), config.rms_eps),
            attn: Attention {
                q: projection((q, q_bias), q_size, hidden, device),
                k: projection((k, k_bias), kv_size, hidden, device),
                v: projection((v, v_bias), kv_size, hidden, device),
                o: projection(o, hidden, q_size, device),
                n_heads: config.n_heads,
                n_kv_heads: config.n_kv_heads,
                head_dim: config.head_dim,
            },
            ffn_norm: RmsNorm::new(vector(ffn_norm, device), config.rms_eps),
            mlp: Mlp {
                gate: projection(gate, config.ffn_size, hidden, device),
                up: projection(up, config.ffn_size, hidden, device),
                down: projection(down, hidden, config.ffn_size, device),
            },
        });
    }
    let norm = file.read_shaped("output_norm.weight", &[hidden])?;
    let output = if config.tied_embeddings {
        None
    } else {
        let w = file.read_shaped("output.weight", &[config.vocab_size, hidden])?;
        Some(projection((w, None), config.vocab_size, hidden, device))
    };
    Ok(Student {
        embed: burn::module::Param::from_tensor(embed),
        blocks,
        norm: RmsNorm::new(vector(norm, device), config.rms_eps),
        output,
        config,
        attention: Default::default(),
    })
}

/// Writes a copy of a GGUF file with every tensor dequantised to F32 (metadata as it was),
/// to a temporary file renamed into place: the same weights as the file, which llama.cpp then
/// multiplies in f32 without rounding the activations to 8 bits (a reference for the
/// student's arithmetic, see [`crate::parity`]).
pub fn write_f32_copy(src: &Path, dst: &Path) -> Result<()> {
    let file = GgufFile::open(src)?;
    let mut reader = BufReader::new(File::open(src).map_err(|source| StudentError::Io {
        path: src.into(),
        source,
    })?);
    let cpu = candle_core::Device::Cpu;
    let mut tensors = Vec::new();
    for name in file.tensor_names() {
        let q = file
            .content
            .tensor(&mut reader, name, &cpu)
            .and_then(|q| q.dequantize(&cpu))
            .and_then(|t| candle_core::quantized::QTensor::quantize(&t, GgmlDType::F32))
            .map_err(|e| file.corrupt(format!("tensor {name}: {e}")))?;
        tensors.push((name.to_owned(), q));
    }
    let mut metadata: Vec<(&str, &Value)> = file
        .metadata()
        .iter()
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    metadata.sort_by_key(|(k, _)| *k);
    // The file type names the old quantisation; 0 is "all F32".
    let all_f32 = Value::U32(0);
    for entry in metadata.iter_mut() {
        if entry.0 == "general.file_type" {
            entry.1 = &all_f32;
        }
    }
    let refs: Vec<(&str, &candle_core::quantized::QTensor)> =
        tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    let write_err = |reason: String| StudentError::Write {
        path: dst.into(),
        reason,
    };
    let tmp = dst.with_extension("gguf.part");
    let written = File::create(&tmp)
        .map_err(|e| write_err(e.to_string()))
        .and_then(|out| {
            let mut w = std::io::BufWriter::new(out);
            candle_core::quantized::gguf_file::write(&mut w, &metadata, &refs)
                .map_err(|e| write_err(e.to_string()))?;
            std::io::Write::flush(&mut w).map_err(|e| write_err(e.to_string()))
        })
        .and_then(|()| std::fs::rename(&tmp, dst).map_err(|e| write_err(e.to_string())));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// A projection's `[out, in]` rows and optional bias.
type Rows = (Vec<f32>, Option<Vec<f32>>);

fn read_projection(file: &mut GgufFile, base: &str, out: usize, inp: usize) -> Result<Rows> {
    let w = file.read_shaped(&format!("{base}.weight"), &[out, inp])?;
    let b = file.read_optional(&format!("{base}.bias"), &[out])?;
    Ok((w, b))
}

/// Splits a fused `attn_qkv` (q rows, then k rows, then v rows) into the three projections.
fn read_fused_qkv(
    file: &mut GgufFile,
    n: usize,
    hidden: usize,
    q_size: usize,
    kv_size: usize,
) -> Result<(Rows, Rows, Rows)> {
    let total = q_size + 2 * kv_size;
    let (w, b) = read_projection(file, &format!("blk.{n}.attn_qkv"), total, hidden)?;
    let split = |v: &[f32], width: usize| {
        let (q, rest) = v.split_at(q_size * width);
        let (k, v) = rest.split_at(kv_size * width);
        (q.to_vec(), k.to_vec(), v.to_vec())
    };
    let (qw, kw, vw) = split(&w, hidden);
    let (qb, kb, vb) = match b {
        Some(b) => {
            let (q, k, v) = split(&b, 1);
            (Some(q), Some(k), Some(v))
        }
        // Separate biases may sit beside a fused matrix.
        None => (
            file.read_optional(&format!("blk.{n}.attn_q.bias"), &[q_size])?,
            file.read_optional(&format!("blk.{n}.attn_k.bias"), &[kv_size])?,
            file.read_optional(&format!("blk.{n}.attn_v.bias"), &[kv_size])?,
        ),
    };
    Ok(((qw, qb), (kw, kb), (vw, vb)))
}

/// Undoes llama.cpp's q/k permutation within each of `n_heads` heads of `head_dim` rows of
/// `cols` values: GGUF row `2i + j` becomes row `j·head_dim/2 + i`.
pub fn halves_from_adjacent(
    rows: &[f32],
    n_heads: usize,
    head_dim: usize,
    cols: usize,
) -> Vec<f32> {
    move_qk_rows(rows, n_heads, head_dim, cols, true)
}

/// llama.cpp's q/k permutation (the inverse of [`halves_from_adjacent`]): row
/// `j·head_dim/2 + i` becomes row `2i + j`. For writing Hugging Face-ordered rows to GGUF.
pub fn adjacent_from_halves(
    rows: &[f32],
    n_heads: usize,
    head_dim: usize,
    cols: usize,
) -> Vec<f32> {
    move_qk_rows(rows, n_heads, head_dim, cols, false)
}

/// Moves rows between the adjacent-pair order (`2i + j`) and the halves order
/// (`j·head_dim/2 + i`) within each head; `to_halves` picks the direction.
fn move_qk_rows(
    rows: &[f32],
    n_heads: usize,
    head_dim: usize,
    cols: usize,
    to_halves: bool,
) -> Vec<f32> {
    let half = head_dim / 2;
    let mut out = vec![0.0; rows.len()];
    for h in 0..n_heads {
        for i in 0..half {
            for j in 0..2 {
                let adjacent = (h * head_dim + 2 * i + j) * cols;
                let halves = (h * head_dim + j * half + i) * cols;
                let (src, dst) = if to_halves {
                    (adjacent, halves)
                } else {
                    (halves, adjacent)
                };
                out[dst..dst + cols].copy_from_slice(&rows[src..src + cols]);
            }
        }
    }
    out
}

/// `[rows, cols]` row-major → `[cols, rows]` row-major.
fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    const TILE: usize = 32;
    let mut out = vec![0.0; values.len()];
    for r0 in (0..rows).step_by(TILE) {
        for c0 in (0..cols).step_by(TILE) {
            for r in r0..(r0 + TILE).min(rows) {
                for c in c0..(c0 + TILE).min(cols) {
                    out[c * rows + r] = values[r * cols + c];
                }
            }
        }
    }
    out
}

fn matrix(values: Vec<f32>, shape: [usize; 2], device: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(values, shape), device)
}

fn vector(values: Vec<f32>, device: &Device) -> Tensor<1> {
    let n = values.len();
    Tensor::from_data(TensorData::new(values, [n]), device)
}

/// `[out, in]` rows (+ bias) → a [`Linear`] with `W: [in, out]`.
fn projection(rows: Rows, out: usize, inp: usize, device: &Device) -> Linear {
    let (w, b) = rows;
    let w = matrix(transpose(&w, out, inp), [inp, out], device);
    Linear::new(w, b.map(|b| vector(b, device)))
}

fn integer(v: &Value) -> Option<usize> {
    let n: i128 = match v {
        Value::U8(x) => (*x).into(),
        Value::I8(x) => (*x).into(),
        Value::U16(x) => (*x).into(),
        Value::I16(x) => (*x).into(),
        Value::U32(x) => (*x).into(),
        Value::I32(x) => (*x).into(),
        Value::U64(x) => (*x).into(),
        Value::I64(x) => (*x).into(),
        _ => return None,
    };
    usize::try_from(n).ok()
}

/// candle's reader reports an unknown tensor type (IQ-quants, ggml's newer types) as an
/// error like a damaged file; it is told apart here by its message.
fn candle_error(path: &Path, e: &candle_core::Error) -> StudentError {
    let reason = e.to_string();
    if reason.contains("unknown dtype") {
        StudentError::UnsupportedGguf {
            path: path.into(),
            what: format!("a tensor type ({reason})"),
            supported: SUPPORTED_TYPE_NAMES,
        }
    } else {
        StudentError::CorruptGguf {
            path: path.into(),
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_permutations_are_inverse_and_pair_as_documented() {
        // One head of width 8, two columns: row r holds (r, 100 + r).
        let rows: Vec<f32> = (0..8).flat_map(|r| [r as f32, 100.0 + r as f32]).collect();
        let hf = halves_from_adjacent(&rows, 1, 8, 2);
        // GGUF rows 0, 2, 4, 6 (first members of the adjacent pairs) lead, then 1, 3, 5, 7.
        let order: Vec<f32> = hf.chunks(2).map(|c| c[0]).collect();
        assert_eq!(order, [0.0, 2.0, 4.0, 6.0, 1.0, 3.0, 5.0, 7.0]);
        assert_eq!(adjacent_from_halves(&hf, 1, 8, 2), rows);
    }

    #[test]
    fn transpose_moves_every_value() {
        let v: Vec<f32> = (0..(37 * 70)).map(|x| x as f32).collect();
        let t = transpose(&v, 37, 70);
        for r in 0..37 {
            for c in 0..70 {
                assert_eq!(t[c * 37 + r], v[r * 70 + c]);
            }
        }
    }
}
