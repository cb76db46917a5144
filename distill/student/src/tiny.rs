//! Tiny random-initialised models of the student's architectures, written as GGUF files that
//! llama.cpp loads: the stand-in for weights that cannot be had here (no Qwen2 GGUF is
//! obtainable offline) and the model of fast tests (parity, later training and export round
//! trips).
//!
//! The file carries a real tokenizer: every `tokenizer.*` key of another GGUF (the default
//! model's) is copied, so llama.cpp builds its vocabulary and the vocabulary size is that
//! file's. It is written by `candle-core`'s `gguf_file::write` (GGUF v2) to a temporary file
//! that is renamed into place.

use std::io::{BufWriter, Write};
use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};

use crate::config::Arch;
use crate::error::{Result, StudentError};
use crate::gguf::GgufFile;

/// Default seed of the random weights.
pub const DEFAULT_TINY_SEED: u64 = 0x5eed_2024;

/// What tiny model to write.
#[derive(Debug, Clone, PartialEq)]
pub struct TinySpec {
    /// Family (`general.architecture`).
    pub arch: Arch,
    /// Residual width.
    pub hidden: usize,
    /// Decoder blocks.
    pub layers: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// MLP inner width.
    pub ffn: usize,
    /// `context_length`.
    pub context_length: usize,
    /// RoPE base.
    pub rope_theta: f32,
    /// RMSNorm epsilon.
    pub rms_eps: f32,
    /// No `output.weight`: the head is the embedding.
    pub tied: bool,
    /// Random biases on q, k and v.
    pub qkv_bias: bool,
    /// Type of every matrix (embedding included); norms and biases stay F32. K-quants need a
    /// `hidden` (and `ffn`) that is a multiple of 256, the others of 32.
    pub weight_type: GgmlDType,
    /// Seed of the weights.
    pub seed: u64,
}

impl TinySpec {
    /// A Qwen2 model: 2 layers, width 64, 4 query heads sharing 2 key/value heads, biases on
    /// q/k/v, untied head, F32.
    pub fn qwen2() -> Self {
        Self {
            arch: Arch::Qwen2,
            hidden: 64,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            ffn: 128,
            context_length: 1024,
            rope_theta: 1_000_000.0,
            rms_eps: 1e-6,
            tied: false,
            qkv_bias: true,
            weight_type: GgmlDType::F32,
            seed: DEFAULT_TINY_SEED,
        }
    }

    /// A llama model like SmolLM2 in miniature: 2 layers, width 64, 4 query heads sharing 2
    /// key/value heads, tied head, no biases, F32.
    pub fn llama() -> Self {
        Self {
            arch: Arch::Llama,
            hidden: 64,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            ffn: 128,
            context_length: 1024,
            rope_theta: 10_000.0,
            rms_eps: 1e-5,
            tied: true,
            qkv_bias: false,
            weight_type: GgmlDType::F32,
            seed: DEFAULT_TINY_SEED,
        }
    }

    fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }
}

/// Writes a random model of `spec` to `out`, with the tokenizer of `tokenizer_source`.
pub fn write_tiny_gguf(out: &Path, spec: &TinySpec, tokenizer_source: &Path) -> Result<()> {
    let source = GgufFile::open(tokenizer_source)?;
    let vocab = match source.value("tokenizer.ggml.tokens") {
        Some(Value::Array(tokens)) if !tokens.is_empty() => tokens.len(),
        _ => {
            return Err(StudentError::CorruptGguf {
                path: tokenizer_source.into(),
                reason: "it has no tokenizer.ggml.tokens list to copy".into(),
            })
        }
    };
    if spec.heads == 0 || spec.kv_heads == 0 || !spec.hidden.is_multiple_of(spec.heads) {
        return Err(StudentError::InvalidInput(format!(
            "width {} does not split into {} heads",
            spec.hidden, spec.heads
        )));
    }
    let a = spec.arch.gguf_name();
    let u32v = |v: usize| Value::U32(v as u32);
    let mut metadata: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(a.into())),
        (
            "general.name".into(),
            Value::String(format!("tiny-random-{a}")),
        ),
        (format!("{a}.context_length"), u32v(spec.context_length)),
        (format!("{a}.embedding_length"), u32v(spec.hidden)),
        (format!("{a}.block_count"), u32v(spec.layers)),
        (format!("{a}.feed_forward_length"), u32v(spec.ffn)),
        (format!("{a}.attention.head_count"), u32v(spec.heads)),
        (format!("{a}.attention.head_count_kv"), u32v(spec.kv_heads)),
        (format!("{a}.rope.freq_base"), Value::F32(spec.rope_theta)),
        (
            format!("{a}.attention.layer_norm_rms_epsilon"),
            Value::F32(spec.rms_eps),
        ),
    ];
    let mut tokenizer: Vec<(String, Value)> = source
        .metadata()
        .iter()
        .filter(|(k, _)| k.starts_with("tokenizer."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    tokenizer.sort_by(|x, y| x.0.cmp(&y.0));
    metadata.extend(tokenizer);

    let mut rng = SplitMix64(spec.seed);
    let (h, hd) = (spec.hidden, spec.head_dim());
    let (q, kv) = (spec.heads * hd, spec.kv_heads * hd);
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    let mut add = |name: String, rows: usize, cols: usize, values: Vec<f32>, ty: GgmlDType| {
        quantize(values, rows, cols, ty).map(|t| tensors.push((name, t)))
    };
    let ty = spec.weight_type;
    // Embedding rows of unit scale spread the (tied) logits widely, so that the best token
    // of a position stands clear of the next (top-1 agreement is then a sharp test).
    add(
        "token_embd.weight".into(),
        vocab,
        h,
        rng.normal(vocab * h, 1.0),
        ty,
    )?;
    let scaled =
        |rng: &mut SplitMix64, n: usize, fan_in: usize| rng.normal(n, 1.0 / (fan_in as f32).sqrt());
    for n in 0..spec.layers {
        let name = |f: &str| format!("blk.{n}.{f}");
        add(
            name("attn_norm.weight"),
            1,
            h,
            rng.around_one(h),
            GgmlDType::F32,
        )?;
        add(name("attn_q.weight"), q, h, scaled(&mut rng, q * h, h), ty)?;
        add(
            name("attn_k.weight"),
            kv,
            h,
            scaled(&mut rng, kv * h, h),
            ty,
        )?;
        add(
            name("attn_v.weight"),
            kv,
            h,
            scaled(&mut rng, kv * h, h),
            ty,
        )?;
        if spec.qkv_bias {
            add(
                name("attn_q.bias"),
                1,
                q,
                rng.normal(q, 0.5),
                GgmlDType::F32,
            )?;
            add(
                name("attn_k.bias"),
                1,
                kv,
                rng.normal(kv, 0.5),
                GgmlDType::F32,
            )?;
            add(
                name("attn_v.bias"),
                1,
                kv,
                rng.normal(kv, 0.5),
                GgmlDType::F32,
            )?;
        }
        add(
            name("attn_output.weight"),
            h,
            q,
            scaled(&mut rng, h * q, q),
            ty,
        )?;
        add(
            name("ffn_norm.weight"),
            1,
            h,
            rng.around_one(h),
            GgmlDType::F32,
        )?;
        let f = spec.ffn;
        add(
            name("ffn_gate.weight"),
            f,
            h,
            scaled(&mut rng, f * h, h),
            ty,
        )?;
        add(name("ffn_up.weight"), f, h, scaled(&mut rng, f * h, h), ty)?;
        add(
            name("ffn_down.weight"),
            h,
            f,
            scaled(&mut rng, h * f, f),
            ty,
        )?;
    }
    add(
        "output_norm.weight".into(),
        1,
        h,
        rng.around_one(h),
        GgmlDType::F32,
    )?;
    if !spec.tied {
        add(
            "output.weight".into(),
            vocab,
            h,
            rng.normal(vocab * h, 1.0),
            ty,
        )?;
    }

    let meta_refs: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    let write_err = |reason: String| StudentError::Write {
        path: out.into(),
        reason,
    };
    let tmp = out.with_extension("gguf.part");
    let file = std::fs::File::create(&tmp).map_err(|e| write_err(e.to_string()))?;
    let mut w = BufWriter::new(file);
    gguf_file::write(&mut w, &meta_refs, &tensor_refs).map_err(|e| write_err(e.to_string()))?;
    w.flush().map_err(|e| write_err(e.to_string()))?;
    drop(w);
    std::fs::rename(&tmp, out).map_err(|e| write_err(e.to_string()))?;
    Ok(())
}

/// `values` as a `[rows, cols]` tensor of type `ty` (a vector when `rows` is 1).
fn quantize(values: Vec<f32>, rows: usize, cols: usize, ty: GgmlDType) -> Result<QTensor> {
    let cpu = candle_core::Device::Cpu;
    let t = if rows == 1 {
        candle_core::Tensor::from_vec(values, cols, &cpu)
    } else {
        candle_core::Tensor::from_vec(values, (rows, cols), &cpu)
    };
    t.and_then(|t| QTensor::quantize(&t, ty)).map_err(|e| {
        StudentError::InvalidInput(format!(
            "a [{rows}, {cols}] matrix cannot be stored as {ty:?}: {e}"
        ))
    })
}

/// A small deterministic generator (SplitMix64), so a seed fixes the model on every machine.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// `n` draws of a normal distribution with mean 0 (Box–Muller).
    fn normal(&mut self, n: usize, std: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                let u = 1.0 - self.unit();
                let v = self.unit();
                let z = (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos();
                (z * f64::from(std)) as f32
            })
            .collect()
    }

    /// Norm scales: 1 ± up to 0.25.
    fn around_one(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| 0.75 + 0.5 * self.unit() as f32).collect()
    }
}
