//! Training on a tiny random llama model (the same code path as the real student): the loss
//! falls, only what should train changes, an interrupted run resumes bit for bit, and bad
//! run directories are refused with the right error.

use std::cell::Cell;
use std::path::Path;

use small_agent_student::tiny::{write_tiny_gguf, TinySpec};
use small_agent_student::train::checkpoint::read_tensors;
use small_agent_student::train::loss::example_nll;
use small_agent_student::train::{
    InMemoryData, Mode, Outcome, RunDir, RunSources, TrainConfig, Trainer,
};
use small_agent_student::StudentError;

use crate::default_model_path;

/// A tiny model file in `dir`.
fn tiny_model(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("tiny-llama.gguf");
    write_tiny_gguf(&path, &TinySpec::llama(), &default_model_path()).unwrap();
    path
}

/// Examples that repeat a short pattern: learnable in a few steps. The first half of each
/// is "prompt" (mask 0), the rest carries loss.
fn pattern_data(n: usize, len: usize) -> InMemoryData {
    let examples = (0..n)
        .map(|i| {
            let tokens: Vec<u32> = (0..len).map(|p| 100 + ((p + i) % 5) as u32 * 7).collect();
            let mask: Vec<u8> = (0..len).map(|p| u8::from(p >= len / 2)).collect();
            (tokens, mask)
        })
        .collect();
    InMemoryData { examples }
}

fn config(mode: Mode) -> TrainConfig {
    let mut c = TrainConfig::new(mode);
    c.learning_rate = match mode {
        Mode::Lora => 1e-2,
        Mode::Full => 3e-3,
    };
    c.lora.rank = 4;
    c.lora.alpha = 8.0;
    c.batch = 2;
    c.epochs = 3.0;
    c.warmup_fraction = 0.1;
    c.checkpoint_every = 4;
    c.seed = 11;
    c
}

fn start<'a>(
    base: &Path,
    out: &Path,
    data: &'a InMemoryData,
    val: &'a InMemoryData,
    config: TrainConfig,
) -> Trainer<'a> {
    let model = small_agent_student::load_cpu(base).unwrap();
    let sources = RunSources {
        base: base.to_path_buf(),
        data: None,
    };
    Trainer::start(model, &sources, data, Some(val), config, out).unwrap()
}

fn val_loss(t: &Trainer<'_>) -> f32 {
    t.validate().unwrap().unwrap().0
}

#[test]
fn lora_training_lowers_the_loss_and_moves_only_the_adapters() {
    let dir = tempfile::tempdir().unwrap();
    let base = tiny_model(dir.path());
    let (data, val) = (pattern_data(8, 24), pattern_data(3, 24));
    let out = dir.path().join("run");
    let mut trainer = start(&base, &out, &data, &val, config(Mode::Lora));
    let before = val_loss(&trainer);
    let outcome = trainer.run(&mut (), &|| true).unwrap();
    assert_eq!(outcome, Outcome::Finished);
    let after = val_loss(&trainer);
    assert!(
        after < before * 0.5,
        "validation loss {before} -> {after}: LoRA did not learn the pattern"
    );
    // The base's weights are frozen: the trained model's base matrix is the file's.
    let fresh = small_agent_student::load_cpu(&base).unwrap();
    let trained = trainer.model().blocks[0].attn.q.weight.val().inner();
    let original = fresh.blocks[0].attn.q.weight.val();
    assert_eq!(
        trained.into_data().try_to_vec::<f32>().unwrap(),
        original.into_data().try_to_vec::<f32>().unwrap()
    );
    // The adapters moved (B starts at zero).
    let run = RunDir::open(&out).unwrap();
    let latest = run.latest_dir().unwrap().unwrap();
    let (tensors, meta) = read_tensors(&latest.join("adapter.safetensors")).unwrap();
    assert_eq!(meta.get("rank").map(String::as_str), Some("4"));
    assert_eq!(
        tensors.len(),
        2 * 7 * 2,
        "A and B of 7 projections in 2 blocks"
    );
    let b = tensors
        .iter()
        .find(|t| t.name == "blk.1.ffn_down.lora_b")
        .unwrap();
    assert_eq!(b.shape, vec![4, 64]);
    assert!(b.values.iter().any(|v| *v != 0.0));
    // metrics.jsonl: one line per step, one per checkpoint's validation and the base's.
    let metrics = std::fs::read_to_string(run.metrics_path()).unwrap();
    let total = run.manifest().total_steps;
    assert_eq!(total, 12);
    assert_eq!(
        metrics.lines().filter(|l| l.contains("\"loss\"")).count(),
        total
    );
    assert_eq!(
        metrics.lines().filter(|l| l.contains("val_loss")).count(),
        4
    );
}

#[test]
fn full_fine_tuning_lowers_the_loss() {
    let dir = tempfile::tempdir().unwrap();
    let base = tiny_model(dir.path());
    let (data, val) = (pattern_data(8, 24), pattern_data(3, 24));
    let mut c = config(Mode::Full);
    c.epochs = 2.0;
    let mut trainer = start(&base, &dir.path().join("run"), &data, &val, c);
    let before = val_loss(&trainer);
    trainer.run(&mut (), &|| true).unwrap();
    let after = val_loss(&trainer);
    assert!(after < before * 0.5, "{before} -> {after}");
    let run = RunDir::open(&dir.path().join("run")).unwrap();
    let latest = run.latest_dir().unwrap().unwrap();
    let (tensors, _) = read_tensors(&latest.join("weights.safetensors")).unwrap();
    assert!(tensors.iter().any(|t| t.name == "token_embd.weight"));
}

#[test]
fn the_loss_counts_only_masked_tokens_and_matches_the_logits() {
    let dir = tempfile::tempdir().unwrap();
    let base = tiny_model(dir.path());
    let model = small_agent_student::load_cpu(&base).unwrap();
    let tokens: Vec<u32> = vec![1, 500, 42, 9000, 17, 333, 4096];
    // Loss on the 4th and 6th tokens only.
    let mask = vec![0, 0, 0, 1, 0, 1, 0];
    let (nll, count) = example_nll(&model, &tokens, &mask).unwrap().unwrap();
    assert_eq!(count, 2);
    let logits = model.logits(&tokens).unwrap();
    let nll_at = |p: usize, target: u32| {
        let row = &logits[p];
        let max = row.iter().cloned().fold(f32::MIN, f32::max);
        let log_z = max + row.iter().map(|l| (l - max).exp()).sum::<f32>().ln();
        f64::from(log_z - row[target as usize])
    };
    let expected = nll_at(2, 9000) + nll_at(4, 333);
    let got = f64::from(nll.into_scalar::<f32>());
    assert!(
        (got - expected).abs() < 1e-3 * expected.abs(),
        "{got} vs {expected}"
    );
    // No masked token: no loss.
    assert!(example_nll(&model, &tokens, &[0; 7]).unwrap().is_none());
}

#[test]
fn an_interrupted_run_resumes_to_the_same_weights_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let base = tiny_model(dir.path());
    let (data, val) = (pattern_data(10, 20), pattern_data(2, 20));
    let mut c = config(Mode::Lora);
    c.lora.dropout = 0.1; // dropout masks must be reproduced too
    c.checkpoint_every = 3;

    let straight = dir.path().join("straight");
    start(&base, &straight, &data, &val, c.clone())
        .run(&mut (), &|| true)
        .unwrap();

    // Stopped in the middle of step 5 (after 9 examples): the checkpoint is step 4's.
    let resumed = dir.path().join("resumed");
    let calls = Cell::new(0);
    let outcome = start(&base, &resumed, &data, &val, c)
        .run(&mut (), &|| {
            calls.set(calls.get() + 1);
            calls.get() <= 9
        })
        .unwrap();
    assert_eq!(outcome, Outcome::Interrupted);
    let run = RunDir::open(&resumed).unwrap();
    assert!(run.latest_dir().unwrap().unwrap().ends_with("step-000004"));
    let model = small_agent_student::load_cpu(&base).unwrap();
    let mut trainer = Trainer::resume(model, &resumed, &data, Some(&val)).unwrap();
    assert_eq!(trainer.state().step, 4);
    assert_eq!(trainer.run(&mut (), &|| true).unwrap(), Outcome::Finished);

    let last = |dir: &Path| {
        let run = RunDir::open(dir).unwrap();
        let latest = run.latest_dir().unwrap().unwrap();
        (
            read_tensors(&latest.join("adapter.safetensors")).unwrap().0,
            read_tensors(&latest.join("optimizer.safetensors"))
                .unwrap()
                .0,
            std::fs::read_to_string(run.metrics_path()).unwrap(),
        )
    };
    let (a, b) = (last(&straight), last(&resumed));
    assert!(a.0 == b.0, "the adapters differ after resume");
    assert!(a.1 == b.1, "the optimiser moments differ after resume");
    // The same losses step by step (timings differ).
    let losses = |m: &str| -> Vec<String> {
        m.lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                format!("{} {} {}", v["step"], v["loss"], v["val_loss"])
            })
            .collect()
    };
    assert_eq!(losses(&a.2), losses(&b.2));
}

#[test]
fn run_directories_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let base = tiny_model(dir.path());
    let (data, val) = (pattern_data(4, 16), pattern_data(1, 16));
    let out = dir.path().join("run");
    let mut c = config(Mode::Lora);
    c.max_steps = Some(2);
    c.checkpoint_every = 2;
    start(&base, &out, &data, &val, c.clone())
        .run(&mut (), &|| true)
        .unwrap();
    // A second start in the same directory is refused, naming --resume.
    let model = small_agent_student::load_cpu(&base).unwrap();
    let sources = RunSources {
        base: base.clone(),
        data: None,
    };
    match Trainer::start(model, &sources, &data, Some(&val), c, &out) {
        Err(StudentError::Run(m)) => assert!(m.contains("--resume"), "{m}"),
        other => panic!("expected a Run error, got {:?}", other.err()),
    }
    // Other data than the run's is refused.
    let model = small_agent_student::load_cpu(&base).unwrap();
    let other = pattern_data(5, 16);
    assert!(matches!(
        Trainer::resume(model, &out, &other, None),
        Err(StudentError::Run(_))
    ));
    // A damaged checkpoint is a corruption error, not a panic or a silent restart.
    let run = RunDir::open(&out).unwrap();
    let latest = run.latest_dir().unwrap().unwrap();
    let file = latest.join("adapter.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    let model = small_agent_student::load_cpu(&base).unwrap();
    assert!(matches!(
        Trainer::resume(model, &out, &data, None),
        Err(StudentError::CorruptRun { .. })
    ));
}
