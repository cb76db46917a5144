//! The training loop: steps of accumulated gradients, the schedule, validation and
//! checkpoints, and exact resume.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;
use burn::tensor::{Tensor, TensorData};

use super::checkpoint::{
    Checkpoint, CheckpointState, FileRef, NamedTensor, RunDir, RunManifest, RUN_FORMAT, RUN_VERSION,
};
use super::config::{learning_rate, total_steps, Mode, TrainConfig};
use super::data::{step_examples, SplitMix64, TrainingData, STREAM_DROPOUT};
use super::loss::{example_nll, loss_positions};
use super::optim::{accumulate, export_state, import_state, replace_param, AdamWStates, Grad};
use super::params::{attach_fresh_lora, slots, trainable_count, Slot};
use crate::error::{Result, StudentError};
use crate::model::{tensor_to_vec, Student};

/// One optimiser step, as reported to a [`TrainObserver`] and written to `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StepReport {
    /// Steps done, this one included.
    pub step: usize,
    /// Steps of the whole schedule.
    pub total_steps: usize,
    /// Epoch of this step (0-based).
    pub epoch: usize,
    /// Mean negative log-likelihood per masked token over the step's examples.
    pub loss: f32,
    /// Learning rate used.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f32,
    /// Tokens run forward and backward.
    pub tokens: usize,
    /// Tokens that carried loss.
    pub masked: usize,
    /// Wall time of the step.
    pub seconds: f64,
    /// `tokens / seconds`.
    pub tokens_per_s: f64,
}

/// Progress of a run, for a progress bar and logs.
pub trait TrainObserver {
    /// One example of the current step is done (`done` of `of`).
    fn example(&mut self, _done: usize, _of: usize) {}
    /// An optimiser step is done.
    fn step(&mut self, _report: &StepReport) {}
    /// The validation loss at a checkpoint.
    fn validation(&mut self, _step: usize, _loss: f32, _tokens: usize) {}
    /// A checkpoint was written.
    fn checkpoint(&mut self, _dir: &Path, _step: usize) {}
}

/// An observer that ignores everything.
impl TrainObserver for () {}

/// How [`Trainer::run`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The schedule is done.
    Finished,
    /// `max_steps` was reached before the end of the schedule.
    StepLimit,
    /// The caller asked to stop; the last complete step is checkpointed.
    Interrupted,
}

/// Where a new run's data came from (recorded in `run.json`).
#[derive(Debug, Clone)]
pub struct RunSources {
    /// The base GGUF the student was loaded from.
    pub base: PathBuf,
    /// The dataset directory and its manifest's SHA-256, when there is one.
    pub data: Option<FileRef>,
}

/// A run in progress: the model on an autodiff device, the optimiser, the data, the run
/// directory.
pub struct Trainer<'a> {
    model: Student,
    run: RunDir,
    train: &'a dyn TrainingData,
    val: Option<&'a dyn TrainingData>,
    optim: AdamWStates,
    state: CheckpointState,
    /// Stop after this many steps (the run's `max_steps` at start; a resume sets its own).
    max_steps: Option<usize>,
}

/// Prepares a plainly loaded model for `config`: LoRA adapters attached (base frozen) or
/// every weight trainable, on the autodiff version of its device.
fn prepare(model: Student, config: &TrainConfig) -> Student {
    let model = match config.mode {
        Mode::Lora => attach_fresh_lora(model, &config.lora, config.seed),
        Mode::Full => model,
    };
    let mut model = model.train();
    model.set_training(true);
    model
}

impl<'a> Trainer<'a> {
    /// Starts a new run in `out` (which must not hold one) from `model`, loaded plainly from
    /// `sources.base`.
    pub fn start(
        model: Student,
        sources: &RunSources,
        train: &'a dyn TrainingData,
        val: Option<&'a dyn TrainingData>,
        config: TrainConfig,
        out: &Path,
    ) -> Result<Self> {
        config.validate().map_err(StudentError::InvalidInput)?;
        if train.is_empty() {
            return Err(StudentError::InvalidInput(
                "the training split has no examples".into(),
            ));
        }
        let mut model = prepare(model, &config);
        let manifest = RunManifest {
            format: RUN_FORMAT.into(),
            version: RUN_VERSION,
            base: FileRef {
                path: sources.base.clone(),
                sha256: super::checkpoint::sha256_file(&sources.base)?,
            },
            data: sources.data.clone(),
            train_examples: train.len(),
            val_examples_total: val.map_or(0, |v| v.len()),
            total_steps: total_steps(&config, train.len()),
            trainable_params: trainable_count(&mut model, config.mode),
            code_version: env!("CARGO_PKG_VERSION").into(),
            config,
        };
        let run = RunDir::create(out, manifest)?;
        let n_slots = slots(&mut model, run.manifest().config.mode).len();
        Ok(Self {
            optim: AdamWStates::new(&run.manifest().config, n_slots),
            max_steps: run.manifest().config.max_steps,
            model,
            run,
            train,
            val,
            state: CheckpointState::default(),
        })
    }

    /// Resumes the run in `dir` from its latest checkpoint (or from its start, when it has
    /// none) with `model` loaded plainly from the run's base; the base file and the data must
    /// be the ones the run started with. It runs to the end of the schedule unless
    /// [`Trainer::set_max_steps`] caps it again.
    pub fn resume(
        model: Student,
        dir: &Path,
        train: &'a dyn TrainingData,
        val: Option<&'a dyn TrainingData>,
    ) -> Result<Self> {
        let run = RunDir::open(dir)?;
        let manifest = run.manifest().clone();
        if train.len() != manifest.train_examples {
            return Err(StudentError::Run(format!(
                "the run was started on {} training examples, this data has {}: resume it with its own --data",
                manifest.train_examples,
                train.len()
            )));
        }
        let mut model = prepare(model, &manifest.config);
        let n_slots = slots(&mut model, manifest.config.mode).len();
        let mut trainer = Self {
            optim: AdamWStates::new(&manifest.config, n_slots),
            model,
            run,
            train,
            val,
            state: CheckpointState::default(),
            max_steps: None,
        };
        let restored = match trainer.run.latest_dir()? {
            Some(latest) => {
                let checkpoint = trainer.run.read_checkpoint(&latest)?;
                trainer.restore(checkpoint)?;
                Some(trainer.state.step)
            }
            None => None,
        };
        trainer.run.truncate_metrics(restored)?;
        Ok(trainer)
    }

    /// Stops [`Trainer::run`] once this many steps are done (`None`: the whole schedule).
    /// The schedule itself is not changed.
    pub fn set_max_steps(&mut self, max_steps: Option<usize>) {
        self.max_steps = max_steps;
    }

    /// The step [`Trainer::run`] stops at.
    pub fn step_limit(&self) -> usize {
        let total = self.run.manifest().total_steps;
        self.max_steps.map_or(total, |m| m.min(total))
    }

    /// The run directory.
    pub fn run_dir(&self) -> &RunDir {
        &self.run
    }

    /// Where the run is.
    pub fn state(&self) -> &CheckpointState {
        &self.state
    }

    /// The model being trained.
    pub fn model(&self) -> &Student {
        &self.model
    }

    fn config(&self) -> &TrainConfig {
        &self.run.manifest().config
    }

    fn restore(&mut self, checkpoint: Checkpoint) -> Result<()> {
        let mode = self.config().mode;
        let device = self.model.device();
        let corrupt = |reason: String| StudentError::CorruptRun {
            path: checkpoint.dir.clone(),
            reason,
        };
        let mut params: std::collections::HashMap<String, NamedTensor> = checkpoint
            .params
            .into_iter()
            .map(|t| (t.name.clone(), t))
            .collect();
        let mut moments: std::collections::HashMap<String, NamedTensor> = checkpoint
            .moments
            .into_iter()
            .map(|t| (t.name.clone(), t))
            .collect();
        let mut slots = slots(&mut self.model, mode);
        for ((name, slot), state) in slots.iter_mut().zip(self.optim.states.iter_mut()) {
            let shape = slot.shape();
            let saved = params
                .remove(name.as_str())
                .ok_or_else(|| corrupt(format!("no tensor {name}")))?;
            if saved.shape != shape {
                return Err(corrupt(format!(
                    "{name} has shape {:?}, the model's is {shape:?}",
                    saved.shape
                )));
            }
            match slot {
                Slot::Vector(p) => replace_param(
                    p,
                    Tensor::<1>::from_data(TensorData::new(saved.values, [shape[0]]), &device),
                ),
                Slot::Matrix(p) => replace_param(
                    p,
                    Tensor::<2>::from_data(
                        TensorData::new(saved.values, [shape[0], shape[1]]),
                        &device,
                    ),
                ),
            }
            if checkpoint.optimizer_time > 0 {
                let m = moments.remove(&format!("{name}.m"));
                let v = moments.remove(&format!("{name}.v"));
                if let (Some(m), Some(v)) = (m, v) {
                    *state = import_state(
                        &shape,
                        checkpoint.optimizer_time,
                        m.values,
                        v.values,
                        &device.clone().inner(),
                    )?;
                }
            }
        }
        if let Some(extra) = params.keys().next() {
            return Err(corrupt(format!(
                "tensor {extra} is not a parameter of this run"
            )));
        }
        self.state = checkpoint.state;
        Ok(())
    }

    /// Writes a checkpoint of the current state.
    pub fn checkpoint(&mut self) -> Result<PathBuf> {
        let mode = self.config().mode;
        let mut params = Vec::new();
        let mut moments = Vec::new();
        let mut time = 0;
        let slots = slots(&mut self.model, mode);
        for ((name, slot), state) in slots.iter().zip(&self.optim.states) {
            let shape = slot.shape();
            let values = match slot {
                Slot::Vector(p) => tensor_to_vec(p.val().inner())?,
                Slot::Matrix(p) => tensor_to_vec(p.val().inner())?,
            };
            params.push(NamedTensor {
                name: name.clone(),
                shape: shape.clone(),
                values,
            });
            if let Some((t, m, v)) = export_state(state)? {
                time = t;
                for (suffix, values) in [("m", m), ("v", v)] {
                    moments.push(NamedTensor {
                        name: format!("{name}.{suffix}"),
                        shape: shape.clone(),
                        values,
                    });
                }
            }
        }
        self.run
            .write_checkpoint(&self.state, &params, &moments, time)
    }

    /// Mean loss per masked token over the first `val_examples` validation examples, with
    /// adapters' dropout off; `None` without validation data.
    pub fn validate(&self) -> Result<Option<(f32, usize)>> {
        let Some(val) = self.val else { return Ok(None) };
        let limit = match self.config().val_examples {
            0 => val.len(),
            n => n.min(val.len()),
        };
        let mut model = self.model.valid();
        model.set_training(false);
        let (mut sum, mut count) = (0.0f64, 0usize);
        for i in 0..limit {
            let (tokens, mask) = val.example(i);
            if let Some((nll, n)) = example_nll(&model, tokens, mask)? {
                sum += f64::from(nll.into_scalar::<f32>());
                count += n;
            }
        }
        Ok((count > 0).then(|| ((sum / count as f64) as f32, count)))
    }

    /// One optimiser step over the step's examples; `None` when `keep_going` said stop
    /// before it was complete (nothing is changed then).
    fn step(
        &mut self,
        observer: &mut dyn TrainObserver,
        keep_going: &dyn Fn() -> bool,
    ) -> Result<Option<StepReport>> {
        let config = self.config().clone();
        let total = self.run.manifest().total_steps;
        let step = self.state.step;
        let (epoch, ids) = step_examples(config.seed, step, config.batch, self.train.len());
        let started = Instant::now();
        let denominator: usize = ids
            .iter()
            .map(|&i| {
                let (t, m) = self.train.example(i);
                loss_positions(t, m).0.len()
            })
            .sum();
        let n_slots = self.optim.states.len();
        let mut acc: Vec<Option<Grad>> = vec![None; n_slots];
        let (mut loss_sum, mut tokens) = (0.0f64, 0usize);
        let device = self.model.device();
        for (j, &i) in ids.iter().enumerate() {
            if !keep_going() {
                return Ok(None);
            }
            // Dropout masks depend only on (seed, step, example slot): resumable exactly.
            let mut rng = SplitMix64::new(config.seed, STREAM_DROPOUT);
            rng.0 ^= ((step as u64) << 16) ^ j as u64;
            device.seed(rng.next_u64());
            let (t, m) = self.train.example(i);
            tokens += t.len().saturating_sub(1);
            if let Some((nll, _)) = example_nll(&self.model, t, m)? {
                let loss = nll.div_scalar(denominator as f32);
                loss_sum += f64::from(loss.clone().inner().into_scalar::<f32>());
                let mut grads = loss.backward();
                let slots = slots(&mut self.model, config.mode);
                accumulate(&slots, &mut grads, &mut acc);
            }
            observer.example(j + 1, ids.len());
        }
        let lr = learning_rate(&config, step, total);
        let grad_norm = {
            let mut slots = slots(&mut self.model, config.mode);
            self.optim.step(&mut slots, acc, lr)
        };
        let seconds = started.elapsed().as_secs_f64();
        self.state.step = step + 1;
        self.state.epoch = step_examples(config.seed, step + 1, config.batch, self.train.len()).0;
        self.state.tokens += tokens as u64;
        self.state.masked_tokens += denominator as u64;
        self.state.train_seconds += seconds;
        self.state.last_loss = Some(loss_sum as f32);
        Ok(Some(StepReport {
            step: step + 1,
            total_steps: total,
            epoch,
            loss: loss_sum as f32,
            lr,
            grad_norm,
            tokens,
            masked: denominator,
            seconds,
            tokens_per_s: tokens as f64 / seconds.max(1e-9),
        }))
    }

    /// One optimiser step, appended to `metrics.jsonl` (no validation or checkpoint).
    pub fn one_step(&mut self) -> Result<StepReport> {
        let report = self
            .step(&mut (), &|| true)?
            .expect("a step that is never stopped completes");
        self.run
            .append_metric(&serde_json::to_value(&report).expect("a report serialises"))?;
        Ok(report)
    }

    /// Trains until the schedule ends, `max_steps` is reached or `keep_going` returns false;
    /// validates and checkpoints every `checkpoint_every` steps and at the end.
    pub fn run(
        &mut self,
        observer: &mut dyn TrainObserver,
        keep_going: &dyn Fn() -> bool,
    ) -> Result<Outcome> {
        let config = self.config().clone();
        let total = self.run.manifest().total_steps;
        let limit = self.step_limit();
        if self.state.step == 0 && self.state.val_loss.is_none() {
            // The base's own validation loss: what the first checkpoints are measured against.
            self.log_validation(observer)?;
        }
        let mut since_checkpoint = 0;
        while self.state.step < limit {
            let Some(report) = self.step(observer, keep_going)? else {
                if since_checkpoint > 0 {
                    let dir = self.checkpoint()?;
                    observer.checkpoint(&dir, self.state.step);
                }
                return Ok(Outcome::Interrupted);
            };
            self.run
                .append_metric(&serde_json::to_value(&report).expect("a report serialises"))?;
            observer.step(&report);
            since_checkpoint += 1;
            if self.state.step.is_multiple_of(config.checkpoint_every) || self.state.step == limit {
                self.validate_and_checkpoint(observer)?;
                since_checkpoint = 0;
            }
        }
        Ok(if limit < total {
            Outcome::StepLimit
        } else {
            Outcome::Finished
        })
    }

    fn log_validation(&mut self, observer: &mut dyn TrainObserver) -> Result<()> {
        if let Some((loss, tokens)) = self.validate()? {
            self.state.val_loss = Some(loss);
            self.run.append_metric(&serde_json::json!({
                "step": self.state.step,
                "val_loss": loss,
                "val_tokens": tokens,
            }))?;
            observer.validation(self.state.step, loss, tokens);
        }
        Ok(())
    }

    fn validate_and_checkpoint(&mut self, observer: &mut dyn TrainObserver) -> Result<()> {
        self.log_validation(observer)?;
        let dir = self.checkpoint()?;
        observer.checkpoint(&dir, self.state.step);
        Ok(())
    }
}
