//! Tiny random Qwen2 and llama models written by the crate, loaded by llama.cpp and by the
//! student, compared.

use std::path::Path;

use small_agent_student::parity::{self, ParityInput, ParityOptions, ParityReport};
use small_agent_student::tiny::{write_tiny_gguf, TinySpec};
use small_agent_student::{Arch, LoadOptions, QkLayout, RopeStyle};

use crate::default_model_path;

/// Relative logit difference allowed for the F32 tiny models (max |Δ| / max |logit| of a
/// position; llama.cpp keeps K/V in f16). Measured on these inputs: Qwen2 4.6e-4, llama
/// 3.4e-4 in both layouts (top-1 agrees at every position); the wrong RoPE pairing gives
/// 0.5-0.6.
const TINY_MAX_REL_DIFF: f32 = 1e-3;

fn inputs() -> Vec<ParityInput> {
    vec![
        ParityInput::Text("The quick brown fox jumps over the lazy dog.".into()),
        ParityInput::Text(
            "<|im_start|>user\nWhat is 17 * 23? Think step by step, then answer.<|im_end|>\n\
             <|im_start|>assistant\nThought: 17 * 23 = 17 * 20 + 17 * 3 = 340 + 51 = 391."
                .into(),
        ),
        // Long enough for RoPE's slow frequencies to matter.
        ParityInput::Tokens((0..300u32).map(|i| (i * 7919 + 13) % 49_000).collect()),
    ]
}

fn run(path: &Path, student: LoadOptions) -> ParityReport {
    let options = ParityOptions {
        student,
        ..ParityOptions::default()
    };
    let report = parity::compare(path, &inputs(), &options).unwrap();
    println!("{}", report.render_text());
    report
}

fn assert_matches(report: &ParityReport, bound: f32) {
    assert!(report.all_top1_agree, "{}", report.render_text());
    assert!(
        report.max_rel_diff < bound,
        "relative difference {} over {bound}",
        report.max_rel_diff
    );
}

#[test]
fn a_tiny_qwen2_matches_llama_cpp_and_the_wrong_pairing_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny-qwen2.gguf");
    let spec = TinySpec::qwen2();
    write_tiny_gguf(&path, &spec, &default_model_path()).unwrap();
    let student = small_agent_student::load_cpu(&path).unwrap();
    assert_eq!(student.config.arch, Arch::Qwen2);
    assert!(student.config.qkv_bias && !student.config.tied_embeddings);
    assert_eq!((student.config.n_heads, student.config.n_kv_heads), (4, 2));
    drop(student);

    let report = run(&path, LoadOptions::default());
    assert_eq!(report.arch, Arch::Qwen2);
    assert_matches(&report, TINY_MAX_REL_DIFF);
    // llama.cpp rotates halves for Qwen2; adjacent pairs must show.
    let wrong = run(
        &path,
        LoadOptions {
            qk_layout: QkLayout::HuggingFace,
            rope_override: Some(RopeStyle::Interleaved),
        },
    );
    assert!(
        wrong.max_rel_diff > 100.0 * TINY_MAX_REL_DIFF,
        "{}",
        wrong.render_text()
    );
    assert!(!wrong.all_top1_agree);
}

#[test]
fn a_tiny_llama_matches_llama_cpp_in_both_layouts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny-llama.gguf");
    write_tiny_gguf(&path, &TinySpec::llama(), &default_model_path()).unwrap();
    assert_matches(&run(&path, LoadOptions::default()), TINY_MAX_REL_DIFF);
    let stored = LoadOptions {
        qk_layout: QkLayout::Gguf,
        ..Default::default()
    };
    assert_matches(&run(&path, stored), TINY_MAX_REL_DIFF);
    let wrong = run(
        &path,
        LoadOptions {
            qk_layout: QkLayout::HuggingFace,
            rope_override: Some(RopeStyle::Interleaved),
        },
    );
    assert!(
        wrong.max_rel_diff > 100.0 * TINY_MAX_REL_DIFF,
        "{}",
        wrong.render_text()
    );
}
