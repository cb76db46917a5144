//! `export` and `import-adapter` end to end: the binary on run directories laid out as
//! `train` writes them, around a tiny random model with the default model's tokenizer.
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use sha2::Digest;
use small_agent_student::adapter::write_student_weights;
use small_agent_student::export::{self, ExportType, Trained};
use small_agent_student::gguf::GgufFile;
use small_agent_student::tiny::{write_tiny_gguf, TinySpec};
use small_agent_student::LoraAdapter;

use crate::dataset::{distill, ok_json};
use crate::default_model_path;

fn fails_with(args: &[&str], code: i32, needle: &str) {
    let out = distill(args);
    assert_eq!(out.status.code(), Some(code), "{args:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(needle), "{args:?}: {err}");
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn sha256(p: &Path) -> String {
    hex::encode(sha2::Sha256::digest(std::fs::read(p).unwrap()))
}

/// A run directory of `mode` on `base` with checkpoints `step-000001` and `step-000002`
/// (`latest`), each holding what `files` writes into it.
fn run_dir(root: &Path, base: &Path, mode: &str, mut files: impl FnMut(&Path, usize)) -> PathBuf {
    let run = root.join(format!("run-{mode}"));
    for step in 1..=2 {
        let dir = run.join("checkpoints").join(format!("step-00000{step}"));
        std::fs::create_dir_all(&dir).unwrap();
        files(&dir, step);
        std::fs::write(dir.join("state.json"), "{}").unwrap();
    }
    std::fs::write(run.join("latest"), "step-000002\n").unwrap();
    let run_json = json!({
        "format": "small-agent-train-run",
        "version": 1,
        "base": {"path": base, "sha256": sha256(base)},
        "mode": mode,
        "lora": {"rank": 4, "alpha": 8.0, "dropout": 0.05},
        "seed": 1,
    });
    std::fs::write(run.join("run.json"), run_json.to_string()).unwrap();
    run
}

fn same_bytes(a: &Path, b: &Path) -> bool {
    std::fs::read(a).unwrap() == std::fs::read(b).unwrap()
}

#[test]
fn export_writes_the_chosen_checkpoint_in_every_layout() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("tiny.gguf");
    write_tiny_gguf(&base, &TinySpec::llama(), &default_model_path()).unwrap();
    let config = small_agent_student::load_cpu(&base).unwrap().config;
    let adapters: Vec<LoraAdapter> = (1..=2)
        .map(|seed| LoraAdapter::random(&config, 4, 8.0, 0.1, seed))
        .collect();
    let run = run_dir(tmp.path(), &base, "lora", |dir, step| {
        adapters[step - 1]
            .write_safetensors(&dir.join("adapter.safetensors"))
            .unwrap()
    });
    let out = |name: &str| tmp.path().join(name);

    // The latest checkpoint, merged: the library's export of that adapter, byte for byte.
    let v = ok_json(&[
        "export",
        "--run",
        s(&run),
        "--out",
        s(&out("m.gguf")),
        "--type",
        "f32",
        "--json",
    ]);
    assert_eq!(v["kind"], "f32");
    assert_eq!(v["mode"], "lora");
    assert_eq!(v["changed"], 14);
    assert!(v["checkpoint"].as_str().unwrap().ends_with("step-000002"));
    let threads = small_agent::engine::default_threads();
    export::merge(
        &base,
        Trained::Lora(&adapters[1]),
        &out("lib2.gguf"),
        ExportType::F32,
        threads,
    )
    .unwrap();
    assert!(same_bytes(&out("m.gguf"), &out("lib2.gguf")));
    // --checkpoint picks another one.
    ok_json(&[
        "export",
        "--run",
        s(&run),
        "--out",
        s(&out("m1.gguf")),
        "--type",
        "f32",
        "--checkpoint",
        "step-000001",
        "--json",
    ]);
    export::merge(
        &base,
        Trained::Lora(&adapters[0]),
        &out("lib1.gguf"),
        ExportType::F32,
        threads,
    )
    .unwrap();
    assert!(same_bytes(&out("m1.gguf"), &out("lib1.gguf")));
    assert!(!same_bytes(&out("m1.gguf"), &out("m.gguf")));

    // Quantised by llama.cpp (the default text output names the file).
    let text = distill(&[
        "export",
        "--run",
        s(&run),
        "--out",
        s(&out("q.gguf")),
        "--type",
        "q4_1",
    ]);
    assert!(text.status.success());
    assert!(String::from_utf8_lossy(&text.stdout).contains("q.gguf (q4_1"));
    let q = GgufFile::open(&out("q.gguf")).unwrap();
    assert_eq!(
        format!("{:?}", q.tensor_type("blk.1.ffn_up.weight")),
        "Some(Q4_1)"
    );

    // --adapter: llama.cpp's adapter GGUF.
    let v = ok_json(&[
        "export",
        "--run",
        s(&run),
        "--out",
        s(&out("a.gguf")),
        "--adapter",
        "--json",
    ]);
    assert_eq!(v["kind"], "adapter");
    export::write_llama_adapter(&base, &adapters[1], &out("lib-a.gguf")).unwrap();
    assert!(same_bytes(&out("a.gguf"), &out("lib-a.gguf")));

    // --peft, then import-adapter: the same adapter GGUF again.
    let v = ok_json(&[
        "export",
        "--run",
        s(&run),
        "--out",
        s(&out("peft")),
        "--peft",
        "--json",
    ]);
    assert_eq!(v["kind"], "peft");
    let config: Value =
        serde_json::from_slice(&std::fs::read(out("peft").join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(config["lora_dropout"], 0.05);
    assert_eq!(config["base_model_name_or_path"], "tiny.gguf");
    assert_eq!(export::read_peft(&out("peft")).unwrap(), adapters[1]);
    let v = ok_json(&[
        "import-adapter",
        s(&out("peft")),
        "--base",
        s(&base),
        "--out",
        s(&out("i.gguf")),
        "--json",
    ]);
    assert_eq!(v["kind"], "adapter");
    assert!(same_bytes(&out("i.gguf"), &out("lib-a.gguf")));
}

#[test]
fn export_of_a_full_run_writes_its_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("tiny.gguf");
    write_tiny_gguf(&base, &TinySpec::qwen2(), &default_model_path()).unwrap();
    let student = small_agent_student::load_cpu(&base).unwrap();
    let run = run_dir(tmp.path(), &base, "full", |dir, _| {
        write_student_weights(&student, &dir.join("weights.safetensors")).unwrap()
    });
    let out = tmp.path().join("full.gguf");
    let v = ok_json(&[
        "export",
        "--run",
        s(&run),
        "--out",
        s(&out),
        "--type",
        "f32",
        "--json",
    ]);
    assert_eq!(v["mode"], "full");
    // Unchanged weights: the base's tensors, exactly.
    let (mut a, mut b) = (
        GgufFile::open(&out).unwrap(),
        GgufFile::open(&base).unwrap(),
    );
    let names: Vec<String> = b.tensor_names().iter().map(|n| n.to_string()).collect();
    assert_eq!(a.tensor_names().len(), names.len());
    for name in names {
        assert_eq!(
            a.read_f32(&name).unwrap(),
            b.read_f32(&name).unwrap(),
            "{name}"
        );
    }
    fails_with(
        &["export", "--run", s(&run), "--out", s(&out), "--adapter"],
        2,
        "full fine-tuning run has no adapter",
    );
}

#[test]
fn export_refuses_what_it_cannot_use_with_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("tiny.gguf");
    write_tiny_gguf(&base, &TinySpec::llama(), &default_model_path()).unwrap();
    let config = small_agent_student::load_cpu(&base).unwrap().config;
    let adapter = LoraAdapter::random(&config, 2, 4.0, 0.1, 1);
    let run = run_dir(tmp.path(), &base, "lora", |dir, _| {
        adapter
            .write_safetensors(&dir.join("adapter.safetensors"))
            .unwrap()
    });
    let out = tmp.path().join("x.gguf");
    let help = distill(&["export", "--help"]);
    assert!(help.status.success());
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("--adapter") && help.contains("q4_k_m") && help.contains("--peft"));

    fails_with(
        &["export", "--run", s(tmp.path()), "--out", s(&out)],
        2,
        "run.json",
    );
    fails_with(
        &["export", "--run", s(&run), "--out", s(&out), "--type", "q3"],
        2,
        "unknown type",
    );
    fails_with(
        &[
            "export",
            "--run",
            s(&run),
            "--out",
            s(&out),
            "--checkpoint",
            "step-9",
        ],
        2,
        "step-9 is missing",
    );
    // A damaged adapter file: the checkpoint error, and no output.
    let latest = run.join("checkpoints/step-000002/adapter.safetensors");
    let bytes = std::fs::read(&latest).unwrap();
    std::fs::write(&latest, &bytes[..bytes.len() / 2]).unwrap();
    fails_with(
        &["export", "--run", s(&run), "--out", s(&out)],
        2,
        "is not a usable checkpoint file",
    );
    assert!(!out.exists());
    // Another base than the run's.
    let other = tmp.path().join("other.gguf");
    write_tiny_gguf(
        &other,
        &TinySpec {
            seed: 99,
            ..TinySpec::llama()
        },
        &default_model_path(),
    )
    .unwrap();
    fails_with(
        &[
            "export",
            "--run",
            s(&run),
            "--out",
            s(&out),
            "--checkpoint",
            "step-000001",
            "--base",
            s(&other),
        ],
        2,
        "is not the base this run trained on",
    );
    // A PEFT directory without its config.
    fails_with(
        &[
            "import-adapter",
            s(tmp.path()),
            "--base",
            s(&base),
            "--out",
            s(&out),
        ],
        2,
        "adapter_config.json",
    );
}

/// `train`'s own run directories (a tiny model, two optimiser steps) export in every layout:
/// the two halves agree on the run layout and the checkpoint files.
#[test]
fn export_reads_what_train_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let lines: Vec<Value> = (0..6)
        .map(|i| {
            crate::dataset::line(
                &format!("e/{i}"),
                &format!("Who wrote novel number {i}?"),
                "Rudyard Kipling",
                "Rudyard Kipling",
            )
        })
        .collect();
    let input = tmp.path().join("in.jsonl");
    crate::dataset::write_lines(&input, &lines);
    let data = tmp.path().join("ds");
    let model = default_model_path();
    ok_json(&[
        "dataset",
        "--tokenizer",
        s(&model),
        "--in",
        s(&input),
        "--out",
        s(&data),
        "--val-frac",
        "0.3",
        "--json",
    ]);
    let base = tmp.path().join("tiny.gguf");
    write_tiny_gguf(&base, &TinySpec::llama(), &model).unwrap();
    let out = |name: &str| tmp.path().join(name);
    for mode in ["lora", "full"] {
        let run = out(&format!("run-{mode}"));
        let mut args = vec![
            "train",
            "--base",
            s(&base),
            "--data",
            s(&data),
            "--out",
            s(&run),
            "--batch",
            "2",
            "--max-steps",
            "2",
            "--checkpoint-every",
            "1",
            "--val-examples",
            "1",
            "--lr",
            "1e-2",
            "--json",
        ];
        if mode == "full" {
            args.push("--full");
        }
        ok_json(&args);
        let merged = out(&format!("{mode}.gguf"));
        let v = ok_json(&[
            "export",
            "--run",
            s(&run),
            "--out",
            s(&merged),
            "--type",
            "f32",
            "--json",
        ]);
        assert!(
            v["checkpoint"].as_str().unwrap().ends_with("step-000002"),
            "{v}"
        );
        // Trained: the q projection of the last block moved.
        let q = "blk.1.attn_q.weight";
        let (trained, _) = GgufFile::open(&merged).unwrap().read_f32(q).unwrap();
        let (original, _) = GgufFile::open(&base).unwrap().read_f32(q).unwrap();
        assert_ne!(trained, original, "{mode}");
        if mode == "lora" {
            let checkpoint = run.join("checkpoints/step-000002/adapter.safetensors");
            let adapter = LoraAdapter::read_safetensors(&checkpoint).unwrap();
            assert_eq!(adapter.rank, 16);
            ok_json(&[
                "export",
                "--run",
                s(&run),
                "--out",
                s(&out("t.gguf")),
                "--adapter",
                "--json",
            ]);
            assert_eq!(
                export::read_llama_adapter(&base, &out("t.gguf")).unwrap(),
                adapter
            );
        }
    }
}
