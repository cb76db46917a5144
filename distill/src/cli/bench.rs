//! `small-agent-distill bench train`: the trainer's speed against PyTorch on the same model,
//! the CPU's f32 product rate as the yardstick, and the two ways to compute an adapter.
//!
//! Each configuration runs in a child process of this binary (`bench train-one`), so that its
//! peak memory is its own; PyTorch runs `scripts/bench_train_torch.py` in the virtualenv
//! `scripts/setup-torch-bench.sh` makes, with the same model (converted from the same GGUF),
//! LoRA targets, rank, sequence, batch (1), threads and dtype (f32), one after the other in
//! the same run, so the ratio compares the two under the same machine load.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{bail, Context};
use serde_json::{json, Value};
use small_agent_student::attention::AttentionKernel;
use small_agent_student::train::bench::{
    flops_per_token, matmul_gflops, model_params, time_adapter_backward, time_training_steps,
    AdapterForm, Timing,
};
use small_agent_student::train::{Mode, TrainConfig};
use small_agent_student::Device;

use super::train::{peak_rss_mib, set_threads};
use super::UsageError;

/// Flags of `bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Debug, clap::Subcommand)]
enum BenchCommand {
    /// Training steps per second against PyTorch, and the CPU's f32 product rate
    Train(TrainBenchArgs),
    /// One measurement in this process (used by `bench train`; prints one JSON line)
    #[command(hide = true)]
    TrainOne(OneArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ModeArg {
    Lora,
    Full,
}

impl ModeArg {
    fn mode(self) -> Mode {
        match self {
            ModeArg::Lora => Mode::Lora,
            ModeArg::Full => Mode::Full,
        }
    }

    fn name(self) -> &'static str {
        match self {
            ModeArg::Lora => "lora",
            ModeArg::Full => "full",
        }
    }
}

/// Flags of `bench train`.
#[derive(Debug, clap::Args)]
struct TrainBenchArgs {
    /// The model (GGUF) [default: the default model]
    #[arg(long, value_name = "MODEL.gguf")]
    base: Option<PathBuf>,
    /// Sequence lengths (repeat)
    #[arg(long, value_name = "N", default_values_t = [512, 1024])]
    seq: Vec<usize>,
    /// Modes (repeat)
    #[arg(long, value_name = "MODE", default_values = ["lora", "full"])]
    mode: Vec<ModeArg>,
    /// LoRA rank (alpha is twice it)
    #[arg(long, value_name = "R", default_value_t = small_agent_student::train::config::DEFAULT_LORA_RANK)]
    rank: usize,
    /// Unmeasured steps first
    #[arg(long, value_name = "N", default_value_t = 1)]
    warmup: usize,
    /// Measured steps (the median counts)
    #[arg(long, value_name = "N", default_value_t = 4)]
    steps: usize,
    /// CPU threads of both sides [default: all cores]
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// The Python of the PyTorch virtualenv [default: $SMALL_AGENT_HOME/torch-venv/bin/python]
    #[arg(long, value_name = "PYTHON")]
    torch_python: Option<PathBuf>,
    /// The PyTorch side's script [default: this source tree's scripts/bench_train_torch.py]
    #[arg(long, value_name = "FILE")]
    torch_script: Option<PathBuf>,
    /// Skip PyTorch (only this side's numbers)
    #[arg(long)]
    no_torch: bool,
    /// Also time forward + backward with the adapter beside the frozen product (ours) and
    /// merged into the weight (burn's apply_lora), at the first --seq
    #[arg(long)]
    adapter_forms: bool,
    /// Also time each training step with attention built from burn's operations (in blocks
    /// of query rows), the baseline of the fused attention kernel the trainer uses on the CPU
    #[arg(long)]
    attention_baseline: bool,
    /// Also time each training step with the buffer cache off (every freed large buffer
    /// goes back to the system allocator, as in a plain build)
    #[arg(long)]
    buffer_cache_baseline: bool,
    /// Print the results as JSON
    #[arg(long)]
    json: bool,
}

/// Flags of `bench train-one`.
#[derive(Debug, clap::Args)]
struct OneArgs {
    #[arg(long)]
    base: PathBuf,
    #[arg(long)]
    mode: Option<ModeArg>,
    /// Time the adapter forms instead of training steps
    #[arg(long)]
    form: Option<String>,
    #[arg(long)]
    seq: usize,
    #[arg(long)]
    rank: usize,
    #[arg(long)]
    warmup: usize,
    #[arg(long)]
    steps: usize,
    #[arg(long)]
    threads: Option<usize>,
    /// Compute attention with the blocked kernel of burn operations instead of the fused one
    #[arg(long)]
    blocked_attention: bool,
    /// Turn the buffer cache off (freed large buffers go back to the system)
    #[arg(long)]
    no_buffer_cache: bool,
    /// Limit of the buffer cache's idle bytes, in MiB [default: the binary's]
    #[arg(long, value_name = "MIB")]
    buffer_cache_mib: Option<usize>,
}

/// Runs `bench`.
pub fn run(a: BenchArgs) -> anyhow::Result<ExitCode> {
    match a.command {
        BenchCommand::Train(t) => train(t),
        BenchCommand::TrainOne(o) => one(o),
    }
}

fn timing_json(t: &Timing) -> Value {
    json!({
        "tokens": t.tokens,
        "seconds": t.seconds,
        "tokens_per_s": t.tokens_per_s(),
        "peak_rss_mib": peak_rss_mib(),
        "buffer_cache": crate::ALLOCATOR.stats(),
    })
}

fn one(a: OneArgs) -> anyhow::Result<ExitCode> {
    set_threads(a.threads)?;
    if let Some(mib) = a.buffer_cache_mib {
        crate::ALLOCATOR.set_idle_limit(mib << 20);
    }
    if a.no_buffer_cache {
        crate::ALLOCATOR.set_idle_limit(0);
    }
    let timing = match (&a.form, a.mode) {
        (Some(form), _) => {
            let form = match form.as_str() {
                "side-by-side" => AdapterForm::SideBySide,
                "merged" => AdapterForm::Merged,
                other => bail!(UsageError(format!("unknown adapter form {other}"))),
            };
            time_adapter_backward(&a.base, form, a.rank, a.seq, a.warmup, a.steps)?
        }
        (None, Some(mode)) => {
            let mut config = TrainConfig::new(mode.mode());
            config.lora.rank = a.rank;
            config.lora.alpha = 2.0 * a.rank as f32;
            let kernel = if a.blocked_attention {
                AttentionKernel::Blocked
            } else {
                AttentionKernel::Fused
            };
            time_training_steps(&a.base, &config, kernel, a.seq, a.warmup, a.steps)?
        }
        (None, None) => bail!(UsageError("give --mode or --form".into())),
    };
    println!("{}", timing_json(&timing));
    Ok(ExitCode::SUCCESS)
}

/// Runs a command that prints one JSON line last on stdout; its stderr passes through.
fn json_of(mut cmd: Command, what: &str) -> anyhow::Result<Value> {
    let out = cmd
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("starting {what}"))?;
    if !out.status.success() {
        bail!("{what} failed ({})", out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .with_context(|| format!("{what} printed no JSON line"))?;
    serde_json::from_str(line).with_context(|| format!("{what} printed {line:?}"))
}

fn child(base: &Path, threads: Option<usize>) -> anyhow::Result<Command> {
    // /proc/self/exe runs this very binary even after a rebuild replaced its file mid-run
    // (current_exe() would then name a deleted path).
    let proc_exe = Path::new("/proc/self/exe");
    let exe = if proc_exe.exists() {
        proc_exe.to_path_buf()
    } else {
        std::env::current_exe().context("locating this binary")?
    };
    let mut cmd = Command::new(exe);
    cmd.args(["bench", "train-one", "--base"]).arg(base);
    if let Some(t) = threads {
        cmd.args(["--threads", &t.to_string()]);
    }
    Ok(cmd)
}

/// A variant of the trainer that `bench train` times beside it, in its own child process.
struct Baseline {
    /// The `train-one` flag that selects it.
    child_flag: &'static str,
    /// Its timing's key in each JSON row, and the key of the trainer's speed over it.
    key: &'static str,
    ratio_key: &'static str,
    /// What it is, in the report.
    label: &'static str,
}

const ATTENTION_BASELINE: Baseline = Baseline {
    child_flag: "--blocked-attention",
    key: "blocked_attention",
    ratio_key: "fused_over_blocked",
    label: "attention of burn operations in blocks",
};

const BUFFER_CACHE_BASELINE: Baseline = Baseline {
    child_flag: "--no-buffer-cache",
    key: "burn_without_buffer_cache",
    ratio_key: "cached_over_uncached",
    label: "without the buffer cache",
};

struct Torch {
    python: PathBuf,
    script: PathBuf,
}

impl Torch {
    fn command(&self, base: &Path, threads: usize) -> Command {
        let mut cmd = Command::new(&self.python);
        cmd.arg(&self.script)
            .arg("--gguf")
            .arg(base)
            .args(["--threads", &threads.to_string()]);
        cmd
    }
}

fn find_torch(a: &TrainBenchArgs) -> anyhow::Result<Option<Torch>> {
    if a.no_torch {
        return Ok(None);
    }
    let python = match &a.torch_python {
        Some(p) => p.clone(),
        None => small_agent_models::Store::from_env()?
            .home()
            .join("torch-venv/bin/python"),
    };
    let script = a.torch_script.clone().unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/bench_train_torch.py")
    });
    if !python.exists() {
        bail!(UsageError(format!(
            "no PyTorch at {}: run scripts/setup-torch-bench.sh (once; several GB), or pass --no-torch",
            python.display()
        )));
    }
    if !script.exists() {
        bail!(UsageError(format!(
            "{} is missing: pass --torch-script",
            script.display()
        )));
    }
    Ok(Some(Torch { python, script }))
}

fn train(a: TrainBenchArgs) -> anyhow::Result<ExitCode> {
    if a.steps == 0 || a.seq.iter().any(|&s| s < 2) {
        bail!(UsageError("--steps must be ≥ 1 and every --seq ≥ 2".into()));
    }
    let base = match &a.base {
        Some(p) => p.clone(),
        None => small_agent::assets::default_model_path()
            .context("no --base given and the default model's location is unknown")?,
    };
    let torch = find_torch(&a)?;
    let threads = a
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    set_threads(Some(threads))?;
    let student = small_agent_student::load_cpu(&base)?;
    let params = model_params(&student);
    drop(student);

    let burn_peak = matmul_gflops(&Device::flex(), 2048, 5);
    let torch_peak = match &torch {
        Some(t) => {
            let mut cmd = t.command(&base, threads);
            cmd.arg("--matmul-peak");
            Some(json_of(cmd, "PyTorch's matmul measurement")?["matmul_gflops"].clone())
        }
        None => None,
    };
    let baselines: Vec<&Baseline> = [
        (a.attention_baseline, &ATTENTION_BASELINE),
        (a.buffer_cache_baseline, &BUFFER_CACHE_BASELINE),
    ]
    .into_iter()
    .filter_map(|(wanted, b)| wanted.then_some(b))
    .collect();
    let mut rows = Vec::new();
    for &mode in &a.mode {
        for &seq in &a.seq {
            let mut cmd = child(&base, Some(threads))?;
            cmd.args(["--mode", mode.name()]).args(common(&a, seq));
            let ours = json_of(cmd, "the burn measurement")?;
            let mut variants = Vec::new();
            for baseline in &baselines {
                let mut cmd = child(&base, Some(threads))?;
                cmd.args(["--mode", mode.name(), baseline.child_flag])
                    .args(common(&a, seq));
                variants.push((baseline, json_of(cmd, baseline.label)?));
            }
            let theirs = match &torch {
                Some(t) => {
                    let mut cmd = t.command(&base, threads);
                    cmd.args(["--mode", mode.name(), "--seq", &seq.to_string()])
                        .args(["--batch", "1", "--dtype", "f32"])
                        .args(["--rank", &a.rank.to_string()])
                        .args(["--alpha", &(2 * a.rank).to_string()])
                        .args(["--dropout", "0.05"])
                        .args(["--warmup-steps", &a.warmup.to_string()])
                        .args(["--steps", &a.steps.to_string()]);
                    Some(json_of(cmd, "the PyTorch measurement")?)
                }
                None => None,
            };
            let ours_tps = ours["tokens_per_s"].as_f64().unwrap_or(f64::NAN);
            let gflops = ours_tps * flops_per_token(params, mode.mode()) / 1e9;
            let theirs_tps = theirs.as_ref().and_then(|t| t["tokens_per_s"].as_f64());
            let mut row = json!({
                "mode": mode.name(),
                "seq": seq,
                "burn": ours,
                "pytorch": theirs,
                "ratio": theirs_tps.map(|t| ours_tps / t),
                "burn_gflops": gflops,
                "burn_fraction_of_peak": gflops / burn_peak,
            });
            for (baseline, timing) in variants {
                let speedup = timing["tokens_per_s"].as_f64().map(|t| ours_tps / t);
                row[baseline.key] = timing;
                row[baseline.ratio_key] = json!(speedup);
            }
            rows.push(row);
        }
    }
    let mut forms = Vec::new();
    if a.adapter_forms {
        let seq = a.seq[0];
        for form in ["side-by-side", "merged"] {
            let mut cmd = child(&base, Some(threads))?;
            cmd.args(["--form", form]).args(common(&a, seq));
            let t = json_of(cmd, "the adapter-form measurement")?;
            forms.push(json!({"form": form, "seq": seq, "timing": t}));
        }
    }
    let report = json!({
        "model": base,
        "model_params": params,
        "threads": threads,
        "rank": a.rank,
        "burn_matmul_gflops": burn_peak,
        "pytorch_matmul_gflops": torch_peak,
        "runs": rows,
        "adapter_forms": forms,
    });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(ExitCode::SUCCESS)
}

fn common(a: &TrainBenchArgs, seq: usize) -> Vec<String> {
    vec![
        "--seq".into(),
        seq.to_string(),
        "--rank".into(),
        a.rank.to_string(),
        "--warmup".into(),
        a.warmup.to_string(),
        "--steps".into(),
        a.steps.to_string(),
    ]
}

fn print_report(r: &Value) {
    println!(
        "model {} ({} parameters counted), {} threads; f32 matmul 2048³: burn {:.1} GFLOP/s, PyTorch {}",
        r["model"].as_str().unwrap_or("?"),
        r["model_params"],
        r["threads"],
        r["burn_matmul_gflops"].as_f64().unwrap_or(f64::NAN),
        r["pytorch_matmul_gflops"]
            .as_f64()
            .map_or("-".into(), |g| format!("{g:.1} GFLOP/s")),
    );
    println!("| mode | seq | burn tok/s | PyTorch tok/s | burn / PyTorch | burn GFLOP/s (of peak) | burn peak RSS MiB | PyTorch peak RSS MiB |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let f = |v: &Value, d: usize| v.as_f64().map_or("-".into(), |x| format!("{x:.d$}"));
    for row in r["runs"].as_array().into_iter().flatten() {
        println!(
            "| {} | {} | {} | {} | {} | {} ({}%) | {} | {} |",
            row["mode"].as_str().unwrap_or("?"),
            row["seq"],
            f(&row["burn"]["tokens_per_s"], 1),
            f(&row["pytorch"]["tokens_per_s"], 1),
            f(&row["ratio"], 2),
            f(&row["burn_gflops"], 1),
            f(
                &(row["burn_fraction_of_peak"]
                    .as_f64()
                    .map(|x| x * 100.0)
                    .into()),
                0
            ),
            f(&row["burn"]["peak_rss_mib"], 0),
            f(&row["pytorch"]["peak_rss_mb"], 0),
        );
    }
    for baseline in [&ATTENTION_BASELINE, &BUFFER_CACHE_BASELINE] {
        for row in r["runs"].as_array().into_iter().flatten() {
            if row[baseline.key].is_null() {
                continue;
            }
            println!(
                "{} seq {}: {} {} tok/s, peak RSS {} MiB (the trainer: {}× its speed)",
                row["mode"].as_str().unwrap_or("?"),
                row["seq"],
                baseline.label,
                f(&row[baseline.key]["tokens_per_s"], 1),
                f(&row[baseline.key]["peak_rss_mib"], 0),
                f(&row[baseline.ratio_key], 2),
            );
        }
    }
    for form in r["adapter_forms"].as_array().into_iter().flatten() {
        println!(
            "adapter {} at seq {}: forward + backward {} tok/s",
            form["form"].as_str().unwrap_or("?"),
            form["seq"],
            f(&form["timing"]["tokens_per_s"], 1)
        );
    }
}
