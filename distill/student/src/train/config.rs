//! What a training run is asked to do: the mode (LoRA or full), the optimiser and schedule,
//! batching, checkpoints. Serialised into the run directory's `run.json`, so a resumed run
//! continues with exactly the settings it started with.

use serde::{Deserialize, Serialize};

/// LoRA rank of the 135M student. The paper used 64 for 0.5B–7B students; a 135M model's
/// projections are 576–1536 wide, and rank 16 keeps the adapter at ~4.9 M parameters
/// (≈ 9.8 MB as f16, inside the 25 MB budget of a shipped adapter). Measurements against
/// other ranks: docs/benchmarks.md, "Training".
pub const DEFAULT_LORA_RANK: usize = 16;
/// LoRA alpha: twice the rank, as the paper (r = 64, alpha = 128).
pub const DEFAULT_LORA_ALPHA: f32 = 32.0;
/// Dropout on each adapter's input, as the paper.
pub const DEFAULT_LORA_DROPOUT: f64 = 0.05;
/// Peak learning rate of LoRA training, as the paper.
pub const DEFAULT_LORA_LR: f64 = 2e-4;
/// Peak learning rate of full fine-tuning (all weights move, so a tenth of LoRA's).
pub const DEFAULT_FULL_LR: f64 = 2e-5;
/// Examples per optimiser step (gradients of this many examples are accumulated).
pub const DEFAULT_BATCH: usize = 8;
/// Passes over the training split, as the paper.
pub const DEFAULT_EPOCHS: f64 = 2.0;
/// Fraction of the steps spent on the linear warm-up.
pub const DEFAULT_WARMUP_FRACTION: f64 = 0.03;
/// Optimiser steps between checkpoints.
pub const DEFAULT_CHECKPOINT_EVERY: usize = 25;
/// Validation examples scored at each checkpoint (the first ones of the split; 0: all).
pub const DEFAULT_VAL_EXAMPLES: usize = 48;
/// Global gradient-norm clip (as Hugging Face's trainer's default).
pub const DEFAULT_MAX_GRAD_NORM: f32 = 1.0;

/// Which weights train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Low-rank adapters on the seven projections of every block; the base stays frozen.
    Lora,
    /// Every weight, the embeddings (and the head tied to them) included.
    Full,
}

/// LoRA's shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    /// Rank `r` of each adapter.
    pub rank: usize,
    /// Scale numerator: the adapter's product is multiplied by `alpha / rank`.
    pub alpha: f32,
    /// Dropout probability on the adapter's input while training.
    pub dropout: f64,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            rank: DEFAULT_LORA_RANK,
            alpha: DEFAULT_LORA_ALPHA,
            dropout: DEFAULT_LORA_DROPOUT,
        }
    }
}

impl LoraConfig {
    /// `alpha / rank`.
    pub fn scale(&self) -> f32 {
        self.alpha / self.rank as f32
    }
}

/// Everything a run is configured with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// LoRA or full fine-tuning.
    pub mode: Mode,
    /// The adapters' shape (used in LoRA mode).
    pub lora: LoraConfig,
    /// Peak learning rate.
    pub learning_rate: f64,
    /// AdamW's decoupled weight decay.
    pub weight_decay: f32,
    /// AdamW's first-moment decay.
    pub beta1: f32,
    /// AdamW's second-moment decay.
    pub beta2: f32,
    /// AdamW's epsilon.
    pub epsilon: f32,
    /// Global gradient-norm clip; `None`: no clipping.
    pub max_grad_norm: Option<f32>,
    /// Examples per optimiser step.
    pub batch: usize,
    /// Passes over the training split (fractions allowed).
    pub epochs: f64,
    /// Stop after this many optimiser steps even if the epochs are not done (the schedule is
    /// still laid out over the whole run, so a capped run is a prefix of the full one). A
    /// resumed run is not held to it (see [`super::Trainer::set_max_steps`]).
    pub max_steps: Option<usize>,
    /// Fraction of the run's steps spent warming up linearly from 0 to the peak rate; the
    /// rest decays linearly to 0.
    pub warmup_fraction: f64,
    /// Seed of the data order, the adapters' initialisation and dropout.
    pub seed: u64,
    /// Optimiser steps between checkpoints.
    pub checkpoint_every: usize,
    /// Validation examples scored at each checkpoint (0: the whole split).
    pub val_examples: usize,
}

impl TrainConfig {
    /// The defaults for `mode`.
    pub fn new(mode: Mode) -> Self {
        Self {
            mode,
            lora: LoraConfig::default(),
            learning_rate: match mode {
                Mode::Lora => DEFAULT_LORA_LR,
                Mode::Full => DEFAULT_FULL_LR,
            },
            weight_decay: 0.0,
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-8,
            max_grad_norm: Some(DEFAULT_MAX_GRAD_NORM),
            batch: DEFAULT_BATCH,
            epochs: DEFAULT_EPOCHS,
            max_steps: None,
            warmup_fraction: DEFAULT_WARMUP_FRACTION,
            seed: 0,
            checkpoint_every: DEFAULT_CHECKPOINT_EVERY,
            val_examples: DEFAULT_VAL_EXAMPLES,
        }
    }

    /// Checks the values that would otherwise fail late or silently.
    pub fn validate(&self) -> Result<(), String> {
        let positive = |v: f64| v.is_finite() && v > 0.0;
        if self.mode == Mode::Lora {
            if self.lora.rank == 0 {
                return Err("--rank must be at least 1".into());
            }
            if !(0.0..1.0).contains(&self.lora.dropout) {
                return Err("--dropout must be in [0, 1)".into());
            }
            if !positive(f64::from(self.lora.alpha)) {
                return Err("--alpha must be positive".into());
            }
        }
        if !positive(self.learning_rate) {
            return Err("--lr must be positive".into());
        }
        if self.batch == 0 {
            return Err("--batch must be at least 1".into());
        }
        if !positive(self.epochs) {
            return Err("--epochs must be positive".into());
        }
        if !(0.0..1.0).contains(&self.warmup_fraction) {
            return Err("--warmup must be in [0, 1)".into());
        }
        if self.checkpoint_every == 0 {
            return Err("--checkpoint-every must be at least 1".into());
        }
        if self.max_steps == Some(0) {
            return Err("--max-steps must be at least 1".into());
        }
        Ok(())
    }
}

/// Optimiser steps of a run over `n_examples`: `ceil(epochs · n / batch)`.
pub fn total_steps(config: &TrainConfig, n_examples: usize) -> usize {
    ((config.epochs * n_examples as f64) / config.batch as f64).ceil() as usize
}

/// Learning rate at optimiser step `step` (0-based) of `total`: linear warm-up over the first
/// `warmup_fraction · total` steps (at least one), then linear decay to 0 at `total`.
pub fn learning_rate(config: &TrainConfig, step: usize, total: usize) -> f64 {
    let warmup = ((config.warmup_fraction * total as f64).ceil() as usize).max(1);
    let peak = config.learning_rate;
    if step < warmup {
        peak * (step + 1) as f64 / warmup as f64
    } else {
        let rest = total.saturating_sub(warmup).max(1);
        peak * (total.saturating_sub(step)) as f64 / rest as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_warms_up_then_decays_to_zero() {
        let mut c = TrainConfig::new(Mode::Lora);
        c.warmup_fraction = 0.1;
        let total = 100;
        let lr = |s| learning_rate(&c, s, total);
        assert!((lr(0) - 2e-5).abs() < 1e-12);
        assert!((lr(9) - 2e-4).abs() < 1e-12);
        assert!((lr(10) - 2e-4).abs() < 1e-12);
        assert!(lr(50) < lr(10) && lr(50) > lr(99));
        assert!(lr(99) > 0.0 && lr(99) < 1e-5);
        assert_eq!(total_steps(&c, 2139), 535);
    }

    #[test]
    fn invalid_settings_are_refused_with_the_flag_named() {
        let mut c = TrainConfig::new(Mode::Lora);
        c.lora.rank = 0;
        assert!(c.validate().unwrap_err().contains("--rank"));
        let mut c = TrainConfig::new(Mode::Full);
        c.lora.rank = 0; // irrelevant in full mode
        assert!(c.validate().is_ok());
        c.batch = 0;
        assert!(c.validate().unwrap_err().contains("--batch"));
    }
}
