//! The student's shape: architecture, sizes and the constants of its layers, as a GGUF file's
//! metadata gives them (see [`crate::gguf`] for the keys read).

use serde::{Deserialize, Serialize};

/// RoPE base used when a file has no `{arch}.rope.freq_base` (llama.cpp's default too).
pub const DEFAULT_ROPE_THETA: f32 = 10_000.0;

/// The decoder families the student implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// Llama and its small relatives (SmolLM2): RMSNorm, RoPE, SwiGLU, grouped-query
    /// attention, no biases. llama.cpp rotates adjacent pairs for it (see [`RopeStyle`]).
    Llama,
    /// Qwen2 / Qwen2.5: the same plus biases on the q, k and v projections; llama.cpp rotates
    /// halves for it.
    Qwen2,
}

impl Arch {
    /// The architecture named by `general.architecture`, if it is one of ours.
    pub fn from_gguf(name: &str) -> Option<Self> {
        match name {
            "llama" => Some(Self::Llama),
            "qwen2" => Some(Self::Qwen2),
            _ => None,
        }
    }

    /// Its name in GGUF (`general.architecture` and the prefix of its keys).
    pub fn gguf_name(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Qwen2 => "qwen2",
        }
    }

    /// The pairing llama.cpp's RoPE uses for this architecture on the q/k rows *as stored in
    /// GGUF* (`llama_model_rope_type`: `LLM_ARCH_LLAMA` → `LLAMA_ROPE_TYPE_NORM`,
    /// `LLM_ARCH_QWEN2` → `LLAMA_ROPE_TYPE_NEOX`).
    pub fn llama_cpp_rope(self) -> RopeStyle {
        match self {
            Self::Llama => RopeStyle::Interleaved,
            Self::Qwen2 => RopeStyle::Halves,
        }
    }
}

/// Which dimensions of a head RoPE rotates together. Frequency `i` (of `head_dim / 2`) turns
/// the pair by `position * theta^(-2i / head_dim)` radians either way; the styles differ only
/// in where the pair's two members sit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RopeStyle {
    /// Pair `i` is dimensions `(2i, 2i + 1)`: llama.cpp's "normal" mode, burn's
    /// `RotaryEncoding`.
    Interleaved,
    /// Pair `i` is dimensions `(i, i + head_dim / 2)`: llama.cpp's NEOX mode, Hugging Face's
    /// `rotate_half`.
    Halves,
}

/// Everything the student's shape depends on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StudentConfig {
    /// Family.
    pub arch: Arch,
    /// Tokens in the vocabulary (rows of the embedding).
    pub vocab_size: usize,
    /// Width of the residual stream (`embedding_length`).
    pub hidden_size: usize,
    /// Decoder blocks (`block_count`).
    pub n_layers: usize,
    /// Query heads (`attention.head_count`).
    pub n_heads: usize,
    /// Key/value heads (`attention.head_count_kv`; equal to `n_heads` without GQA).
    pub n_kv_heads: usize,
    /// Width of one head (`attention.key_length`, else `hidden_size / n_heads`).
    pub head_dim: usize,
    /// Inner width of the SwiGLU MLP (`feed_forward_length`).
    pub ffn_size: usize,
    /// RoPE base (`rope.freq_base`).
    pub rope_theta: f32,
    /// RMSNorm epsilon (`attention.layer_norm_rms_epsilon`).
    pub rms_eps: f32,
    /// Positions the model was trained for (`context_length`).
    pub context_length: usize,
    /// The output head is the embedding matrix (no `output.weight` tensor).
    pub tied_embeddings: bool,
    /// The q, k and v projections have biases (Qwen2).
    pub qkv_bias: bool,
    /// How RoPE pairs the dimensions of the q/k rows as this model holds them.
    pub rope: RopeStyle,
}

impl StudentConfig {
    /// Width of all query heads together.
    pub fn q_size(&self) -> usize {
        self.n_heads * self.head_dim
    }

    /// Width of all key (or value) heads together.
    pub fn kv_size(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// Parameters of the model (the tied head counted once).
    pub fn n_params(&self) -> usize {
        let h = self.hidden_size;
        let attn = h * self.q_size() * 2 + h * self.kv_size() * 2;
        let bias = if self.qkv_bias {
            self.q_size() + 2 * self.kv_size()
        } else {
            0
        };
        let mlp = 3 * h * self.ffn_size;
        let block = attn + bias + mlp + 2 * h;
        let head = if self.tied_embeddings {
            0
        } else {
            self.vocab_size * h
        };
        self.vocab_size * h + self.n_layers * block + h + head
    }

    /// Checks that the sizes fit together (heads divide, RoPE pairs exist).
    pub fn check(&self) -> std::result::Result<(), String> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("n_layers", self.n_layers),
            ("n_heads", self.n_heads),
            ("n_kv_heads", self.n_kv_heads),
            ("head_dim", self.head_dim),
            ("ffn_size", self.ffn_size),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{name} is 0"));
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return Err(format!(
                "{} query heads cannot share {} key/value heads evenly",
                self.n_heads, self.n_kv_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(format!(
                "head width {} is odd (RoPE rotates pairs)",
                self.head_dim
            ));
        }
        let theta_ok = self.rope_theta.is_finite() && self.rope_theta > 0.0;
        let eps_ok = self.rms_eps.is_finite() && self.rms_eps >= 0.0;
        if !theta_ok || !eps_ok {
            return Err(format!(
                "rope base {} / rms epsilon {} out of range",
                self.rope_theta, self.rms_eps
            ));
        }
        Ok(())
    }
}
