//! Measurements of training speed (`small-agent-distill bench train`): whole optimiser steps
//! of the trainer on random tokens, forward + backward of the two ways to compute an
//! adapter, and the CPU's f32 matrix-product rate (the peak a step's rate is read against).

use std::path::Path;
use std::time::Instant;

use burn::module::{Module, ParamGroup};
use burn::tensor::{Device, Distribution, Tensor};

use super::config::{Mode, TrainConfig};
use super::data::{InMemoryData, SplitMix64};
use super::loss::example_nll;
use super::params::attach_fresh_lora;
use super::trainer::{RunSources, Trainer};
use crate::attention::AttentionKernel;
use crate::error::{Result, StudentError};
use crate::model::Student;

/// Seconds of each measured repetition, and what they measured.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Timing {
    /// Tokens per repetition.
    pub tokens: usize,
    /// Seconds of each measured repetition (warm-up excluded).
    pub seconds: Vec<f64>,
}

impl Timing {
    /// Median seconds.
    pub fn median(&self) -> f64 {
        let mut s = self.seconds.clone();
        s.sort_by(f64::total_cmp);
        match s.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => s[n / 2],
            n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
        }
    }

    /// `tokens / median seconds`.
    pub fn tokens_per_s(&self) -> f64 {
        self.tokens as f64 / self.median()
    }
}

/// Random token ids below `vocab` (seeded), loss on every position.
pub fn random_example(vocab: usize, seq: usize, seed: u64) -> (Vec<u32>, Vec<u8>) {
    let mut rng = SplitMix64::new(seed, 0xbe_4c);
    // One more token than `seq`: a step predicts `seq` tokens from `seq` inputs.
    let tokens = (0..=seq).map(|_| rng.below(vocab) as u32).collect();
    (tokens, vec![1; seq + 1])
}

/// Whole optimiser steps (forward, backward, AdamW) of the trainer with one example of
/// `seq` tokens per step: `warmup` unmeasured steps, then `steps` measured ones.
pub fn time_training_steps(
    base: &Path,
    config: &TrainConfig,
    kernel: AttentionKernel,
    seq: usize,
    warmup: usize,
    steps: usize,
) -> Result<Timing> {
    let mut model = crate::load_cpu(base)?;
    model.attention = kernel;
    let vocab = model.config.vocab_size;
    let data = InMemoryData {
        examples: (0..warmup + steps)
            .map(|i| random_example(vocab, seq, i as u64))
            .collect(),
    };
    let mut config = config.clone();
    config.batch = 1;
    config.epochs = 1.0;
    config.checkpoint_every = usize::MAX;
    config.max_steps = Some(warmup + steps);
    config.val_examples = 0;
    let dir = tempfile::tempdir().map_err(|source| StudentError::Io {
        path: std::env::temp_dir(),
        source,
    })?;
    let sources = RunSources {
        base: base.to_path_buf(),
        data: None,
    };
    let mut trainer = Trainer::start(
        model,
        &sources,
        &data,
        None,
        config,
        &dir.path().join("run"),
    )?;
    let mut seconds = Vec::new();
    for i in 0..warmup + steps {
        let report = trainer.one_step()?;
        if i >= warmup {
            seconds.push(report.seconds);
        }
    }
    Ok(Timing {
        tokens: seq,
        seconds,
    })
}

/// How an adapter is computed, for [`time_adapter_backward`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AdapterForm {
    /// `x·W + s·(x·A)·B`: the frozen product and the low-rank one side by side (ours).
    SideBySide,
    /// burn's `apply_lora`: the weight re-parameterised as `W + s·A·B`, formed every pass.
    Merged,
}

/// Forward and backward passes (no optimiser) of one `seq`-token example with LoRA adapters
/// of `rank` on every projection, computed as `form`.
pub fn time_adapter_backward(
    base: &Path,
    form: AdapterForm,
    rank: usize,
    seq: usize,
    warmup: usize,
    reps: usize,
) -> Result<Timing> {
    let model = crate::load_cpu(base)?;
    let vocab = model.config.vocab_size;
    let model: Student = match form {
        AdapterForm::SideBySide => {
            let lora = super::config::LoraConfig {
                rank,
                alpha: 2.0 * rank as f32,
                dropout: 0.0,
            };
            attach_fresh_lora(model, &lora, 0).train()
        }
        AdapterForm::Merged => {
            // Every matrix of attention and MLP (the paths `blocks.N.attn.q.weight` ...);
            // norms (`attn_norm`) and the embedding stay plain.
            let group = ParamGroup::from_any_predicates(vec!["attn.", "mlp."]);
            let lora = burn::module::Lora::new(rank, 2.0 * rank as f64).set_param_group(group);
            model.no_grad().apply_lora(lora).train()
        }
    };
    let (tokens, mask) = random_example(vocab, seq, 1);
    let mut seconds = Vec::new();
    for i in 0..warmup + reps {
        let started = Instant::now();
        let (nll, _) = example_nll(&model, &tokens, &mask)?.expect("every position has loss");
        let grads = nll.backward();
        drop(grads);
        if i >= warmup {
            seconds.push(started.elapsed().as_secs_f64());
        }
    }
    Ok(Timing {
        tokens: seq,
        seconds,
    })
}

/// burn's f32 matrix-product rate on `device`: GFLOP/s of an `n × n × n` product, median of
/// `reps` after one warm-up.
pub fn matmul_gflops(device: &Device, n: usize, reps: usize) -> f64 {
    let a = Tensor::<2>::random([n, n], Distribution::Default, device);
    let b = Tensor::<2>::random([n, n], Distribution::Default, device);
    let mut seconds = Vec::new();
    for i in 0..=reps {
        let started = Instant::now();
        let c = a.clone().matmul(b.clone());
        // Reading one value waits for the product (asynchronous back-ends).
        let _ = c.slice([0..1, 0..1]).into_scalar::<f32>();
        if i > 0 {
            seconds.push(started.elapsed().as_secs_f64());
        }
    }
    let t = Timing { tokens: 0, seconds };
    2.0 * (n as f64).powi(3) / t.median() / 1e9
}

/// Parameters of the model counted for the FLOP estimate: every matrix once (a tied head is
/// the embedding, used as a product once per token).
pub fn model_params(model: &Student) -> usize {
    let c = &model.config;
    let per_block: usize = model.blocks[0]
        .projections()
        .iter()
        .map(|(_, l)| l.d_input() * l.d_output())
        .sum();
    c.n_layers * per_block + c.vocab_size * c.hidden_size
}

/// FLOPs per trained token by the usual estimate: forward `2N`, the backward pass's input
/// gradients `2N`, and with every weight training its weight gradients another `2N`.
pub fn flops_per_token(model_params: usize, mode: Mode) -> f64 {
    model_params as f64
        * match mode {
            Mode::Lora => 4.0,
            Mode::Full => 6.0,
        }
}
