//! A student shipped as a LoRA adapter GGUF, run by the runtime on the default model: folded
//! into the Q4_1 split's offsets adapter (`engine::adapter`) it gives the logits llama.cpp
//! gives with the adapter on the file as it is; a misfit is refused with a clear error; and
//! `small-agent ask --adapter` runs with a fold of its own in the split cache.
use std::path::{Path, PathBuf};
use std::process::Command;

use small_agent::engine::{adapter, split, ChatMessage, LoadOptions, Model, SessionParams};
use small_agent_student::export::write_llama_adapter;
use small_agent_student::gguf::{GgufFile, QkLayout};
use small_agent_student::tiny::{write_tiny_gguf, TinySpec};
use small_agent_student::LoraAdapter;

use crate::default_model_path;

/// Whether models load split here (the CPU back-end is set up first: `pays_here` reads it).
fn split_pays() -> bool {
    small_agent::engine::cpu::report().unwrap();
    split::pays_here(false)
}

/// A random adapter of the default model (rank 8, alpha 16), written as llama.cpp's adapter
/// GGUF. Some layers lack one of q/k/v, so the fused `attn_qkv` fold meets missing blocks.
fn default_model_adapter(out: &Path, seed: u64) {
    let base = default_model_path();
    let config = GgufFile::open(&base)
        .unwrap()
        .config(QkLayout::HuggingFace)
        .unwrap();
    let mut a = LoraAdapter::random(&config, 8, 16.0, 0.05, seed);
    for name in [
        "blk.0.attn_k",
        "blk.1.attn_q",
        "blk.2.attn_v",
        "blk.3.ffn_down",
    ] {
        a.layers.remove(name).expect("an adapted projection");
    }
    write_llama_adapter(&base, &a, out).unwrap();
}

fn text_tokens(m: &Model) -> Vec<small_agent::engine::LlamaToken> {
    let text = m
        .render_chat(
            &[
                ChatMessage::new("system", "You solve problems with short Python programs."),
                ChatMessage::new("user", "How many days are there in 3 weeks and 4 days?"),
                ChatMessage::new(
                    "assistant",
                    "Thought: A week has 7 days, so I multiply and add.\nCode:\n```py\n\
                     print(3 * 7 + 4)\n```<end_code>",
                ),
            ],
            false,
        )
        .unwrap();
    m.tokenize(&text, true)
}

fn logits(m: &Model, tokens: &[small_agent::engine::LlamaToken]) -> Vec<Vec<f32>> {
    let mut s = m
        .session(&SessionParams {
            n_ctx: 512,
            n_threads: 1,
            n_threads_batch: 1,
            // llama.cpp's logits on both sides: the comparison is about the adapters.
            own_output_head: false,
            ..SessionParams::default()
        })
        .unwrap();
    s.logits_all(tokens).unwrap()
}

/// (max, mean) absolute difference over every position and vocabulary entry.
fn gap(x: &[Vec<f32>], y: &[Vec<f32>]) -> (f32, f32) {
    let (mut max, mut sum, mut n) = (0f32, 0f64, 0usize);
    for (a, b) in x.iter().zip(y) {
        for (p, q) in a.iter().zip(b) {
            let d = (p - q).abs();
            max = max.max(d);
            sum += f64::from(d);
            n += 1;
        }
    }
    (max, (sum / n as f64) as f32)
}

/// The split model with the adapter folded into its offsets computes what llama.cpp computes
/// with the adapter on the Q4_1 file as it is: the gap between the two is the split's own
/// rounding (its offsets stored as f16: up to ~1.7 on a logit, ~0.2 on average, with or
/// without the adapter), not more; and the adapter changes the logits by far more.
#[test]
fn a_folded_adapter_gives_the_logits_of_the_adapter_on_the_file() {
    if !split_pays() {
        eprintln!("no Q4_1 split on this CPU: nothing to fold");
        return;
    }
    let path = default_model_path();
    let dir = tempfile::tempdir().unwrap();
    let lora = dir.path().join("student.gguf");
    default_model_adapter(&lora, 7);
    // Written afresh, so the fold under test is this code's.
    let files = split::derive(&path, &split::default_cache_dir().unwrap())
        .unwrap()
        .expect("the default model has Q4_1 matrices");
    let fold = adapter::fold_path(&files, &lora).unwrap();
    let _ = std::fs::remove_file(&fold);

    let load = |options: LoadOptions| Model::load_with(&path, &options).unwrap();
    let as_is = load(LoadOptions::as_is());
    let as_is_lora = load(LoadOptions::as_is().with_adapter(Some(lora.clone())));
    let split_plain = load(LoadOptions::default());
    let split_lora = load(LoadOptions::default().with_adapter(Some(lora.clone())));
    assert!(split_plain.is_split() && split_lora.is_split());
    assert!(!as_is_lora.is_split());
    assert_eq!(split_lora.adapter(), Some(lora.as_path()));
    assert!(fold.is_file(), "no fold at {}", fold.display());

    let tokens = text_tokens(&as_is);
    let reference = logits(&as_is, &tokens);
    let with_lora = logits(&as_is_lora, &tokens);
    let split_only = logits(&split_plain, &tokens);
    let folded = logits(&split_lora, &tokens);
    let split_gap = gap(&split_only, &reference);
    let fold_gap = gap(&folded, &with_lora);
    let effect = gap(&with_lora, &reference);
    let folded_effect = gap(&folded, &split_only);
    eprintln!(
        "{} positions; max / mean |logit difference|: split vs file {:.4} / {:.5}, \
         split + fold vs file + adapter {:.4} / {:.5}; the adapter's effect {:.3} / {:.4} \
         (file), {:.3} / {:.4} (split)",
        tokens.len(),
        split_gap.0,
        split_gap.1,
        fold_gap.0,
        fold_gap.1,
        effect.0,
        effect.1,
        folded_effect.0,
        folded_effect.1,
    );
    // The fold adds no error of its own: its gap is the split's (offsets rounded to f16;
    // measured: 1.70 / 0.209 without the adapter, 1.86 / 0.210 with it, whose own effect
    // is 13.2 / 1.57). A wrong scale or row block would add an error of that effect's size.
    assert!(
        fold_gap.0 <= 1.5 * split_gap.0 + 0.1 && fold_gap.1 <= 1.5 * split_gap.1,
        "fold {fold_gap:?} vs split {split_gap:?}"
    );
    // The adapter is applied at all, on both sides (a fold that lost it would be caught).
    assert!(effect.1 > 3.0 * fold_gap.1, "{effect:?} vs {fold_gap:?}");
    assert!(
        folded_effect.1 > 3.0 * fold_gap.1,
        "{folded_effect:?} vs {fold_gap:?}"
    );
    assert!(
        effect.0 > 1.0,
        "the adapter barely moves the logits: {effect:?}"
    );
}

/// An adapter of another model, a GGUF that is no adapter and a missing file are refused
/// with errors that say so, whether the model loads split or as it is, and by the CLI
/// (exit 2).
#[test]
fn an_adapter_of_another_model_is_refused_clearly() {
    let path = default_model_path();
    let dir = tempfile::tempdir().unwrap();
    let tiny = dir.path().join("tiny.gguf");
    write_tiny_gguf(&tiny, &TinySpec::llama(), &path).unwrap();
    let config = GgufFile::open(&tiny)
        .unwrap()
        .config(QkLayout::HuggingFace)
        .unwrap();
    let tiny_lora = dir.path().join("tiny-lora.gguf");
    write_llama_adapter(
        &tiny,
        &LoraAdapter::random(&config, 4, 8.0, 0.1, 1),
        &tiny_lora,
    )
    .unwrap();
    let missing = dir.path().join("no-such-adapter.gguf");
    let error = |lora: &Path, options: LoadOptions| {
        Model::load_with(&path, &options.with_adapter(Some(lora.into())))
            .map(|_| ())
            .unwrap_err()
            .to_string()
    };
    for options in [LoadOptions::default(), LoadOptions::as_is()] {
        let e = error(&tiny_lora, options.clone());
        assert!(
            e.contains("does not fit the model") && e.contains("tiny-lora.gguf"),
            "{e}"
        );
        assert!(e.contains("blk.0."), "the error names the tensor: {e}");
        let e = error(&tiny, options.clone());
        assert!(
            e.contains("does not fit the model") && e.contains("not a LoRA adapter"),
            "{e}"
        );
        let e = error(&missing, options);
        assert!(
            e.contains("does not exist") && e.contains("no-such-adapter.gguf"),
            "{e}"
        );
    }
    let out = Command::new(small_agent_bin())
        .env("RUST_LOG", "warn")
        .args(["ask", "--adapter"])
        .arg(&tiny_lora)
        .args(["--max-steps", "1", "What is 2 plus 3?"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("does not fit the model"), "{stderr}");
}

/// The runtime's binary, built beside this test's (`cargo build --release --workspace`).
fn small_agent_bin() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_small-agent-distill")).with_file_name("small-agent");
    assert!(bin.exists(), "{} is not built", bin.display());
    bin
}

/// `small-agent ask --adapter` runs the agent on the default model with the adapter, and the
/// split cache holds the fold of that adapter beside (not instead of) the plain offsets.
#[test]
fn ask_runs_with_an_adapter_and_caches_its_fold_apart() {
    let path = default_model_path();
    let dir = tempfile::tempdir().unwrap();
    let lora = dir.path().join("student.gguf");
    // A seed of its own: the fold must be new to the cache.
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    default_model_adapter(&lora, seed);
    let files = split_pays().then(|| {
        split::derive(&path, &split::default_cache_dir().unwrap())
            .unwrap()
            .expect("the default model has Q4_1 matrices")
    });
    let fold = files
        .as_ref()
        .map(|f| adapter::fold_path(f, &lora).unwrap());
    if let Some(fold) = &fold {
        assert!(!fold.exists(), "{} already cached", fold.display());
    }
    let out = Command::new(small_agent_bin())
        .env("RUST_LOG", "info")
        .args(["ask", "--adapter"])
        .arg(&lora)
        .args([
            "--threads",
            "1",
            "--greedy",
            "--max-steps",
            "1",
            "--json",
            "What is 2 plus 3?",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // 0: an answer; 1: none after one step (a random adapter may well spoil it). Never 2.
    assert!(
        matches!(out.status.code(), Some(0) | Some(1)),
        "{:?}: {stderr}",
        out.status
    );
    let run: serde_json::Value = serde_json::from_slice(&out.stdout).expect("the run as JSON");
    assert!(
        run["steps"].as_array().is_some_and(|s| !s.is_empty()),
        "{run}"
    );
    assert!(
        stderr.contains("model loaded") && stderr.contains("student.gguf"),
        "the load line names the adapter: {stderr}"
    );
    if let (Some(files), Some(fold)) = (files, fold) {
        assert!(fold.is_file(), "no fold at {}: {stderr}", fold.display());
        assert_ne!(fold, files.offsets);
        assert!(files.offsets.is_file() && files.base.is_file());
        let _ = std::fs::remove_file(&fold);
        let _ = std::fs::remove_file(fold.with_extension("adapter"));
    }
}
