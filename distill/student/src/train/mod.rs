//! Fine-tuning the student: LoRA on the seven projections of every block (the base frozen)
//! or every weight, with the loss only where a dataset's mask is 1.
//!
//! - [`config`]: the settings and their defaults, the learning-rate schedule;
//! - [`data`]: the [`TrainingData`] seam (a dataset split implements it in the distill crate)
//!   and the seeded order of examples;
//! - `params`: the trainable parameters by name, fresh adapters;
//! - [`loss`]: the masked loss of one example (the head only at masked positions);
//! - [`fused_nll`]: its negative log-likelihood as one CPU operation with its own backward;
//! - `optim`: AdamW (burn's) with its per-parameter states kept for checkpoints;
//! - [`checkpoint`]: the run directory, checkpoints, metrics;
//! - [`trainer`]: the loop;
//! - [`bench`]: speed of steps, of the two adapter forms, of the CPU's matrix product.
//!
//! An adapter is computed as `x·W + s·(x·A)·B` ([`crate::model::LowRank`]), never as a merged
//! `x·(W + s·A·B)`: burn's own `apply_lora` forms the merged matrix, whose backward then
//! needs the full `d_in × d_out` weight gradient at every step (measured in
//! docs/benchmarks.md, "Training").

pub mod bench;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod fused_nll;
pub mod loss;
mod optim;
mod params;
pub mod trainer;

pub use checkpoint::{CheckpointState, FileRef, NamedTensor, RunDir, RunManifest};
pub use config::{LoraConfig, Mode, TrainConfig};
pub use data::{InMemoryData, TrainingData};
pub use params::{attach_fresh_lora, trainable_count};
pub use trainer::{Outcome, RunSources, StepReport, TrainObserver, Trainer};
