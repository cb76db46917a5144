//! `small-agent-distill train`: fine-tunes the student (LoRA or full) on a dataset directory,
//! with checkpoints, validation, `metrics.jsonl` and exact resume (see
//! [`small_agent_student::train`]).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use small_agent_distill::dataset::{Dataset, Split};
use small_agent_student::train::{
    self, FileRef, Mode, Outcome, RunDir, RunSources, StepReport, TrainConfig, TrainObserver,
    Trainer,
};

use super::{install_interrupt_handler, interrupted, progress_bar, UsageError, EXIT_INTERRUPTED};

/// Flags of `train`.
#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// The base model (GGUF) [default: the default model; on --resume: the run's]
    #[arg(long, value_name = "MODEL.gguf")]
    base: Option<PathBuf>,
    /// The dataset directory (`small-agent-distill dataset`) [on --resume: the run's]
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// The run directory (created; with --resume: the run to continue)
    #[arg(long, value_name = "RUN_DIR")]
    out: PathBuf,
    /// Continue the run in --out from its latest checkpoint, with the settings it started with
    /// (the training flags below cannot be changed on resume)
    #[arg(long)]
    resume: bool,
    /// Train every weight instead of LoRA adapters
    #[arg(long, conflicts_with = "resume")]
    full: bool,
    /// LoRA rank
    #[arg(long, value_name = "R", default_value_t = train::config::DEFAULT_LORA_RANK, conflicts_with = "resume")]
    rank: usize,
    /// LoRA alpha (the adapter's product is scaled by alpha / rank)
    #[arg(long, value_name = "A", default_value_t = train::config::DEFAULT_LORA_ALPHA, conflicts_with = "resume")]
    alpha: f32,
    /// Dropout on each adapter's input while training
    #[arg(long, value_name = "P", default_value_t = train::config::DEFAULT_LORA_DROPOUT, conflicts_with = "resume")]
    dropout: f64,
    /// Peak learning rate [default: 2e-4 with LoRA, 2e-5 with --full]
    #[arg(long, value_name = "LR", conflicts_with = "resume")]
    lr: Option<f64>,
    /// AdamW weight decay
    #[arg(
        long,
        value_name = "W",
        default_value_t = 0.0,
        conflicts_with = "resume"
    )]
    weight_decay: f32,
    /// Clip the global gradient norm to this (0: no clipping)
    #[arg(long, value_name = "N", default_value_t = train::config::DEFAULT_MAX_GRAD_NORM, conflicts_with = "resume")]
    max_grad_norm: f32,
    /// Examples per optimiser step (gradients accumulated over them)
    #[arg(long, value_name = "N", default_value_t = train::config::DEFAULT_BATCH, conflicts_with = "resume")]
    batch: usize,
    /// Passes over the training split (fractions allowed)
    #[arg(long, value_name = "E", default_value_t = train::config::DEFAULT_EPOCHS, conflicts_with = "resume")]
    epochs: f64,
    /// Stop after N optimiser steps in all (the schedule still spans every epoch; a --resume
    /// without it runs to the end)
    #[arg(long, value_name = "N")]
    max_steps: Option<usize>,
    /// Fraction of the steps spent on the linear warm-up
    #[arg(long, value_name = "F", default_value_t = train::config::DEFAULT_WARMUP_FRACTION, conflicts_with = "resume")]
    warmup: f64,
    /// Seed of the data order, adapter initialisation and dropout
    #[arg(long, value_name = "S", default_value_t = 0, conflicts_with = "resume")]
    seed: u64,
    /// Optimiser steps between checkpoints (each with a validation loss)
    #[arg(long, value_name = "N", default_value_t = train::config::DEFAULT_CHECKPOINT_EVERY, conflicts_with = "resume")]
    checkpoint_every: usize,
    /// Validation examples scored at each checkpoint (0: the whole split)
    #[arg(long, value_name = "N", default_value_t = train::config::DEFAULT_VAL_EXAMPLES, conflicts_with = "resume")]
    val_examples: usize,
    /// CPU threads [default: all cores]
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Compute back-end: cpu, or wgpu (a build with the `wgpu` feature; untested)
    #[arg(long, value_name = "DEVICE", default_value = "cpu")]
    device: small_agent_student::device::Backend,
    /// Print a JSON summary on stdout at the end (no progress bar)
    #[arg(long)]
    json: bool,
}

impl TrainArgs {
    fn config(&self) -> TrainConfig {
        let mode = if self.full { Mode::Full } else { Mode::Lora };
        let mut c = TrainConfig::new(mode);
        c.lora.rank = self.rank;
        c.lora.alpha = self.alpha;
        c.lora.dropout = self.dropout;
        if let Some(lr) = self.lr {
            c.learning_rate = lr;
        }
        c.weight_decay = self.weight_decay;
        c.max_grad_norm = (self.max_grad_norm > 0.0).then_some(self.max_grad_norm);
        c.batch = self.batch;
        c.epochs = self.epochs;
        c.max_steps = self.max_steps;
        c.warmup_fraction = self.warmup;
        c.seed = self.seed;
        c.checkpoint_every = self.checkpoint_every;
        c.val_examples = self.val_examples;
        c
    }
}

/// Sets the size of the thread pool burn's CPU back-end computes on.
pub fn set_threads(threads: Option<usize>) -> anyhow::Result<()> {
    if let Some(n) = threads {
        if n == 0 {
            return Err(UsageError("--threads must be at least 1".into()).into());
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .context("setting up the CPU thread pool")?;
    }
    Ok(())
}

/// Peak resident memory of this process so far, in MiB (Linux; `None` elsewhere).
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

struct Progress {
    bar: indicatif::ProgressBar,
    quiet: bool,
}

impl TrainObserver for Progress {
    fn example(&mut self, done: usize, of: usize) {
        if done < of {
            self.bar.tick();
        }
    }

    fn step(&mut self, r: &StepReport) {
        self.bar.set_position(r.step as u64);
        self.bar.set_message(format!(
            "loss {:.4} lr {:.2e} {:.0} tok/s",
            r.loss, r.lr, r.tokens_per_s
        ));
        tracing::info!(
            step = r.step,
            loss = r.loss,
            lr = r.lr,
            grad_norm = r.grad_norm,
            tokens_per_s = r.tokens_per_s,
            "step"
        );
    }

    fn validation(&mut self, step: usize, loss: f32, tokens: usize) {
        let line = format!("step {step}: validation loss {loss:.4} ({tokens} tokens)");
        if self.quiet {
            tracing::info!("{line}");
        } else {
            self.bar.println(line);
        }
    }

    fn checkpoint(&mut self, dir: &Path, step: usize) {
        tracing::info!(step, dir = %dir.display(), "checkpoint");
    }
}

fn open_split(dir: &Path, name: &str) -> anyhow::Result<Split> {
    let ds = Dataset::open(dir)?;
    Ok(ds.split(name)?)
}

fn data_ref(dir: &Path) -> anyhow::Result<FileRef> {
    Ok(FileRef {
        path: dir.to_path_buf(),
        sha256: train::checkpoint::sha256_file(&dir.join("manifest.json"))?,
    })
}

/// Runs `train`.
pub fn run(a: TrainArgs) -> anyhow::Result<ExitCode> {
    set_threads(a.threads)?;
    let (base, data_dir) = if a.resume {
        let run = RunDir::open(&a.out)?;
        let m = run.manifest();
        let base = a.base.clone().unwrap_or_else(|| m.base.path.clone());
        let data = match (&a.data, &m.data) {
            (Some(d), _) => d.clone(),
            (None, Some(d)) => d.path.clone(),
            (None, None) => {
                return Err(UsageError("the run records no dataset: give --data".into()).into())
            }
        };
        let sha = train::checkpoint::sha256_file(&base)?;
        if sha != m.base.sha256 {
            return Err(UsageError(format!(
                "{} is not the base this run started from (SHA-256 {}, the run's {}): give the run's --base",
                base.display(),
                sha,
                m.base.sha256
            ))
            .into());
        }
        if let Some(recorded) = &m.data {
            let now = data_ref(&data)?;
            if now.sha256 != recorded.sha256 {
                return Err(UsageError(format!(
                    "{} is not the dataset this run started on (its manifest changed): give the run's --data",
                    data.display()
                ))
                .into());
            }
        }
        (base, data)
    } else {
        let base = match &a.base {
            Some(p) => p.clone(),
            None => small_agent::assets::default_model_path()
                .context("no --base given and the default model's location is unknown")?,
        };
        let data = a
            .data
            .clone()
            .ok_or_else(|| UsageError("--data DIR is required (a `dataset` directory)".into()))?;
        (base, data)
    };
    let config = a.config();
    if !a.resume {
        config.validate().map_err(UsageError)?;
    }
    let train_split = open_split(&data_dir, "train")?;
    let val_split = open_split(&data_dir, "val")?;
    let model = small_agent_student::load(
        &base,
        &small_agent_student::LoadOptions::default(),
        &a.device.device()?,
    )?;
    let n_vocab = Dataset::open(&data_dir)?.manifest().tokenizer.n_vocab as usize;
    if n_vocab != model.config.vocab_size {
        return Err(UsageError(format!(
            "the dataset was tokenized with a vocabulary of {n_vocab}, {} has {}: rebuild the dataset with --tokenizer {}",
            base.display(),
            model.config.vocab_size,
            base.display()
        ))
        .into());
    }
    let val = (!val_split.is_empty()).then_some(&val_split as &dyn train::TrainingData);
    let mut trainer = if a.resume {
        let mut t = Trainer::resume(model, &a.out, &train_split, val)?;
        t.set_max_steps(a.max_steps);
        t
    } else {
        let sources = RunSources {
            base: base.clone(),
            data: Some(data_ref(&data_dir)?),
        };
        Trainer::start(model, &sources, &train_split, val, config, &a.out)?
    };
    let manifest = trainer.run_dir().manifest().clone();
    let limit = trainer.step_limit();
    eprintln!(
        "training {} ({} mode, {} trainable values) on {} examples: steps {}..{} of {}",
        base.display(),
        match manifest.config.mode {
            Mode::Lora => "LoRA",
            Mode::Full => "full",
        },
        manifest.trainable_params,
        manifest.train_examples,
        trainer.state().step,
        limit,
        manifest.total_steps
    );
    install_interrupt_handler();
    let bar = progress_bar(limit as u64, a.json);
    bar.set_position(trainer.state().step as u64);
    bar.reset_eta();
    let mut progress = Progress { bar, quiet: a.json };
    let outcome = trainer.run(&mut progress, &|| !interrupted())?;
    progress.bar.finish_and_clear();
    let state = trainer.state().clone();
    let summary = serde_json::json!({
        "run": a.out,
        "outcome": format!("{outcome:?}").to_lowercase(),
        "step": state.step,
        "total_steps": manifest.total_steps,
        "last_loss": state.last_loss,
        "val_loss": state.val_loss,
        "tokens": state.tokens,
        "masked_tokens": state.masked_tokens,
        "train_seconds": state.train_seconds,
        "tokens_per_s": state.tokens as f64 / state.train_seconds.max(1e-9),
        "peak_rss_mib": peak_rss_mib(),
    });
    if a.json {
        println!("{summary}");
    } else {
        eprintln!(
            "{}: step {}/{}, last loss {}, validation loss {}, {:.0} tokens/s, peak memory {}",
            match outcome {
                Outcome::Finished => "finished",
                Outcome::StepLimit => "stopped at --max-steps",
                Outcome::Interrupted => "interrupted (resume with --resume)",
            },
            state.step,
            manifest.total_steps,
            state.last_loss.map_or("-".into(), |l| format!("{l:.4}")),
            state.val_loss.map_or("-".into(), |l| format!("{l:.4}")),
            state.tokens as f64 / state.train_seconds.max(1e-9),
            peak_rss_mib().map_or("?".into(), |m| format!("{m:.0} MiB")),
        );
    }
    Ok(match outcome {
        Outcome::Interrupted => ExitCode::from(EXIT_INTERRUPTED),
        _ => ExitCode::SUCCESS,
    })
}
