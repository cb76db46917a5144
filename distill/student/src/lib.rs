//! The distillation student in burn: the llama-family decoder the students use (Llama /
//! SmolLM2 and Qwen2), built from a GGUF file's weights, and its parity check against
//! llama.cpp, the engine the runtime runs it with.
//!
//! - [`config`]: the shape, from GGUF metadata;
//! - [`model`]: the decoder as burn modules (forward pass only; each projection is a
//!   [`model::Linear`] that can carry a low-rank adapter for fine-tuning);
//! - [`gguf`]: weights in (candle-core's GGUF reader and dequantisation), the tensor-name
//!   mapping and how llama.cpp's q/k rows meet RoPE;
//! - [`parity`]: the same tokens through the student and through llama.cpp, logits compared;
//! - [`tiny`]: tiny random models of both architectures written as GGUF (tests, and the
//!   Qwen2 stand-in: no Qwen2 weights are obtainable here).
//!
//! burn 0.22 chooses devices at run time: [`burn::tensor::Device::flex`] is the pure-Rust
//! CPU back-end used here; the opt-in `wgpu` feature adds burn's Vulkan back-end. burn never
//! enters the runtime crate: this crate depends on it, not the other way round.
#![warn(missing_docs)]

pub mod config;
mod error;
pub mod gguf;
pub mod model;
pub mod parity;
pub mod tiny;

pub use burn::tensor::Device;
pub use config::{Arch, RopeStyle, StudentConfig};
pub use error::{Result, StudentError};
pub use gguf::{load, LoadOptions, QkLayout};
pub use model::Student;
pub use parity::{ParityOptions, ParityReport};

/// The student of `path` on burn's pure-Rust CPU device, q/k rows in Hugging Face's layout.
pub fn load_cpu(path: &std::path::Path) -> Result<Student> {
    load(path, &LoadOptions::default(), &Device::flex())
}
