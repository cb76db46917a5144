//! The distillation student in burn: the llama-family decoder the students use (Llama /
//! SmolLM2 and Qwen2), built from a GGUF file's weights, and its parity check against
//! llama.cpp, the engine the runtime runs it with.
//!
//! - [`buffers`]: a global allocator for training processes that reuses freed large buffers;
//! - [`config`]: the shape, from GGUF metadata;
//! - [`device`]: the compute back-end (CPU `flex`, GPU `wgpu` behind a feature);
//! - [`model`]: the decoder as burn modules (forward pass only; each projection is a
//!   [`model::Linear`] that can carry a low-rank adapter for fine-tuning);
//! - [`attention`], [`fused_attention`]: causal attention for training (burn operations in
//!   blocks; one CPU operation with its own backward pass, the default on the CPU);
//! - [`fused_swiglu`]: the MLP's `silu(gate)·up` as one CPU operation with its own backward;
//! - [`gguf`]: weights in (candle-core's GGUF reader and dequantisation), the tensor-name
//!   mapping and how llama.cpp's q/k rows meet RoPE;
//! - [`parity`]: the same tokens through the student and through llama.cpp, logits compared;
//! - [`adapter`]: checkpoints on disk (a LoRA adapter, full weights) in the student's layout;
//! - [`export`]: merged GGUF models (F32/F16, llama.cpp-quantised), llama.cpp LoRA adapter
//!   GGUFs and PEFT's layout;
//! - [`train`]: LoRA and full fine-tuning with checkpoints and exact resume;
//! - [`tiny`]: tiny random models of both architectures written as GGUF (tests, and the
//!   Qwen2 stand-in: no Qwen2 weights are obtainable here).
//!
//! burn 0.22 chooses devices at run time: [`burn::tensor::Device::flex`] is the pure-Rust
//! CPU back-end used here; the opt-in `wgpu` feature adds burn's Vulkan back-end. burn never
//! enters the runtime crate: this crate depends on it, not the other way round.
#![warn(missing_docs)]

pub mod adapter;
pub mod attention;
pub mod buffers;
pub mod config;
pub mod device;
mod error;
pub mod export;
pub mod fused_attention;
pub mod fused_swiglu;
pub mod gguf;
pub mod model;
pub mod parity;
pub mod tiny;
pub mod train;

pub use adapter::{LoraAdapter, LoraPair, StudentWeights};
pub use burn::tensor::Device;
pub use config::{Arch, RopeStyle, StudentConfig};
pub use error::{Result, StudentError};
pub use export::{ExportReport, ExportType};
pub use gguf::{load, LoadOptions, QkLayout};
pub use model::Student;
pub use parity::{ParityOptions, ParityReport};

/// The student of `path` on burn's pure-Rust CPU device, q/k rows in Hugging Face's layout.
pub fn load_cpu(path: &std::path::Path) -> Result<Student> {
    load(path, &LoadOptions::default(), &Device::flex())
}
