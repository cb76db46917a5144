//! The `small-agent` binary: exit codes, `--help`, `--json` shapes.
use assert_cmd::Command;
use serde_json::Value;

fn cmd() -> Command {
    let mut c = Command::cargo_bin("small-agent").unwrap();
    c.env("RUST_LOG", "warn");
    c
}

fn json_of(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn every_command_has_help() {
    for args in [
        vec!["--help"],
        vec!["ask", "--help"],
        vec!["generate", "--help"],
        vec!["models", "--help"],
        vec!["models", "fetch", "--help"],
        vec!["models", "list", "--help"],
        vec!["bench", "--help"],
        vec!["bench", "llm", "--help"],
        vec!["bench", "parallel", "--help"],
        vec!["bench", "sag", "--help"],
        vec!["bench", "agent", "--help"],
        vec!["bench", "sandbox", "--help"],
        vec!["bench", "index", "--help"],
        vec!["python", "--help"],
        vec!["index", "--help"],
        vec!["index", "build", "--help"],
        vec!["index", "search", "--help"],
        vec!["index", "info", "--help"],
        vec!["index", "eval", "--help"],
    ] {
        let out = cmd().args(&args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage:"),
            "{args:?}"
        );
    }
}

#[test]
fn usage_errors_exit_with_2() {
    cmd()
        .args(["generate", "--no-such-flag", "x"])
        .assert()
        .code(2);
    cmd().arg("no-such-command").assert().code(2);
    cmd()
        .args(["generate", "--model", "/nonexistent/model.gguf", "hi"])
        .assert()
        .code(2)
        .stderr(predicates::str::contains("does not exist"));
    cmd()
        .args(["models", "fetch", "no-such-asset"])
        .assert()
        .code(2)
        .stderr(predicates::str::contains("models list"));
}

#[test]
fn generate_json_returns_text_and_timings() {
    crate::default_model_path();
    let out = cmd()
        .args([
            "generate",
            "--threads",
            "1",
            "--json",
            "--temperature",
            "0",
            "--max-tokens",
            "32",
            "Name three colours.",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = json_of(&out);
    assert!(!v["text"].as_str().unwrap().trim().is_empty(), "{v}");
    for k in ["prompt_tokens", "cached_tokens", "gen_tokens"] {
        assert!(v[k].as_u64().is_some(), "{k} missing: {v}");
    }
    for k in ["prompt_ms", "gen_ms"] {
        assert!(v[k].as_f64().unwrap() > 0.0, "{k}: {v}");
    }
    assert!(
        v["finish_reason"].is_string() && v["model"].is_string(),
        "{v}"
    );
}

#[test]
fn generate_streams_and_reads_stdin() {
    crate::default_model_path();
    let out = cmd()
        .args([
            "generate",
            "--threads",
            "1",
            "--temperature",
            "0",
            "--max-tokens",
            "16",
            "-",
        ])
        .write_stdin("Say hello.")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stdout).trim().is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("prompt tokens"));
}

#[test]
fn context_overflow_fails_the_task_with_sizes() {
    crate::default_model_path();
    let long = "lorem ipsum ".repeat(100);
    cmd()
        .args(["generate", "--ctx-size", "64", &long])
        .assert()
        .code(1)
        .stderr(predicates::str::contains("context holds 64"));
}

#[test]
fn models_list_json_shows_the_installed_default_model() {
    let path = crate::default_model_path();
    let out = cmd().args(["models", "list", "--json"]).output().unwrap();
    assert!(out.status.success());
    let v = json_of(&out);
    let m = v["assets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == small_agent_models::DEFAULT_LLM)
        .expect("default model listed")
        .clone();
    assert_eq!(m["installed"], true, "{m}");
    assert_eq!(m["files"][0]["path"], path.display().to_string());
    assert_eq!(m["files"][0]["size"], 98_362_432);
}

#[test]
fn models_fetch_is_idempotent_on_the_installed_default() {
    crate::default_model_path();
    cmd()
        .args(["models", "fetch"])
        .assert()
        .success()
        .stderr(predicates::str::contains("installed and verified"));
}

#[test]
fn bench_llm_reports_both_engines_and_their_ratio() {
    let model = crate::default_model_path();
    let out = cmd()
        .args([
            "bench",
            "llm",
            "--pp",
            "64",
            "--tg",
            "16",
            "--reps",
            "1",
            "--rounds",
            "2",
            "--threads",
            "1",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = json_of(&out);
    assert_eq!(v["model"], model.display().to_string());
    let rounds = v["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 2, "{v}");
    for round in rounds {
        for engine in ["ours", "llama_bench"] {
            for test in ["pp", "tg"] {
                assert!(
                    round[engine][test]["tokens_per_s"].as_f64().unwrap() > 0.0,
                    "{v}"
                );
            }
        }
    }
    for r in ["ratio_pp", "ratio_tg"] {
        let ratio = v[r].as_f64().unwrap();
        assert!(ratio.is_finite() && ratio > 0.0, "{r}: {v}");
        // The reported ratio is one of the rounds' (the median of an even count takes the
        // upper middle one).
        assert!(rounds.iter().any(|x| x[r] == v[r]), "{r}: {v}");
    }
}

#[test]
fn bench_llm_without_llama_bench_says_how_to_build_it() {
    crate::default_model_path();
    cmd()
        .args([
            "bench",
            "llm",
            "--pp",
            "16",
            "--tg",
            "4",
            "--reps",
            "1",
            "--llama-bench",
            "/nonexistent/llama-bench",
        ])
        .assert()
        .code(2)
        .stderr(predicates::str::contains("build-llama-bench.sh"));
}

#[test]
fn ask_runs_the_agent_and_writes_its_trajectory() {
    crate::default_model_path();
    let dir = tempfile::tempdir().unwrap();
    let traj = dir.path().join("runs.jsonl");
    let out = cmd()
        .args([
            "ask",
            "--threads",
            "1",
            "--greedy",
            "--max-steps",
            "1",
            "--json",
            "--trajectory",
        ])
        .arg(&traj)
        .arg("What is the capital of France?")
        .output()
        .unwrap();
    let v = json_of(&out);
    let answered = !v["answer"].as_str().unwrap().is_empty();
    assert_eq!(out.status.code(), Some(if answered { 0 } else { 1 }), "{v}");
    assert_eq!(v["steps"].as_array().unwrap().len(), 1, "{v}");
    let step = &v["steps"][0];
    for k in ["prompt_tokens", "cached_tokens", "gen_tokens"] {
        assert!(step["llm"][k].is_u64(), "{k}: {step}");
    }
    // The trajectory line round-trips and has the paper's layout.
    let lines = std::fs::read_to_string(&traj).unwrap();
    assert_eq!(lines.lines().count(), 1);
    let t: Value = serde_json::from_str(lines.trim()).unwrap();
    assert_eq!(t["question"], "What is the capital of France?");
    assert_eq!(t["generated_answer"], v["answer"]);
    let roles: Vec<&str> = t["log_data"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(&roles[..3], ["system", "user", "assistant"], "{roles:?}");
    assert_eq!(serde_json::to_string(&t).unwrap(), lines.trim());
}

/// The terminal display and the log lines of other threads (the sandbox's, llama.cpp's)
/// share stderr: a run that logs at debug level ends, and shows both. `ask` once held
/// stderr's lock for the whole run, and the first log line from the sandbox's thread waited
/// for it forever.
#[test]
fn ask_with_debug_logging_shows_its_steps_and_ends() {
    crate::default_model_path();
    let out = cmd()
        .env("RUST_LOG", "debug")
        .env("NO_COLOR", "1")
        .args([
            "ask",
            "--threads",
            "1",
            "--greedy",
            "--max-steps",
            "1",
            "What is the capital of France?",
        ])
        .timeout(std::time::Duration::from_secs(600))
        .output()
        .expect("ask did not end (hung?)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tail: String = stderr
        .chars()
        .skip(stderr.chars().count().saturating_sub(2000))
        .collect();
    assert!(out.status.code().is_some(), "killed (hung?):\n{tail}");
    assert!(stderr.contains("DEBUG"), "no debug lines:\n{tail}");
    assert!(stderr.contains("Thought:"), "no step shown:\n{tail}");
}

#[test]
fn ask_overflowing_mid_run_fails_and_keeps_the_partial_trajectory() {
    crate::default_model_path();
    let dir = tempfile::tempdir().unwrap();
    let traj = dir.path().join("runs.jsonl");
    cmd()
        .args([
            "ask",
            "--threads",
            "1",
            "--greedy",
            "--ctx-size",
            "560",
            // The base model's long prompt and steps: the student ends before the overflow.
            "--base",
            "--trajectory",
        ])
        .arg(&traj)
        .arg("What is the capital of France?")
        .assert()
        .code(1)
        .stderr(predicates::str::contains("ended early"))
        .stderr(predicates::str::contains("context holds 560"));
    let t: Value = serde_json::from_str(std::fs::read_to_string(&traj).unwrap().trim()).unwrap();
    assert!(
        t["log_data"]["error"].as_str().unwrap().contains("560"),
        "{t}"
    );
    assert!(
        !t["log_data"]["steps"].as_array().unwrap().is_empty(),
        "{t}"
    );
}

/// A grammar file that admits one step only: `final_answer(6 * 7)`.
fn six_times_seven_grammar(dir: &std::path::Path) -> std::path::PathBuf {
    let grammar = dir.join("forced.gbnf");
    std::fs::write(
        &grammar,
        "root ::= \"Thought: I multiply.\\nCode:\\n```py\\nfinal_answer(6 * 7)\\n```<end_code>\"\n",
    )
    .unwrap();
    grammar
}

/// `--grammar-file` replaces the step grammar: a grammar that admits one step forcing
/// `final_answer(6 * 7)` makes the real model write it and the sandbox answer 42; a missing
/// file is a usage error naming it.
#[test]
fn ask_follows_a_grammar_file() {
    crate::default_model_path();
    let dir = tempfile::tempdir().unwrap();
    let grammar = six_times_seven_grammar(dir.path());
    let out = cmd()
        .args([
            "ask",
            "--greedy",
            "--max-steps",
            "1",
            "--threads",
            "1",
            "--json",
            "--grammar-file",
        ])
        .arg(&grammar)
        .arg("What is 6 times 7?")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = json_of(&out);
    assert_eq!(run["answer"], "42", "{run}");
    assert_eq!(run["answer_source"], "final_answer", "{run}");
    assert_eq!(run["steps"][0]["code"], "final_answer(6 * 7)", "{run}");
    cmd()
        .args(["ask", "--grammar-file", "/nonexistent/forced.gbnf", "hi"])
        .assert()
        .code(2)
        .stderr(predicates::str::contains("/nonexistent/forced.gbnf"));
}

/// `ask --student NAME` runs a built-in distilled student: its adapter (installed into the
/// cache from the binary) on the default model, and its own prompt; without the flag `ask`
/// runs the student its manifest marks as the default, if any, and `--base` the bare model
/// with the default prompt; an unknown name, or a student beside `--adapter`, is a usage error.
#[test]
fn ask_student_runs_a_built_in_student_and_base_the_bare_model() {
    crate::default_model_path();
    let dir = tempfile::tempdir().unwrap();
    let grammar = six_times_seven_grammar(dir.path());
    let prompts = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/prompts");
    let opening = |file: &str| {
        let t = small_agent::agent::PromptTemplate::from_file(
            std::path::Path::new(prompts).join(file).as_ref(),
        )
        .unwrap();
        t.system.trim().split('{').next().unwrap().to_owned()
    };
    let (student, default) = (opening("student.toml"), opening("agent-default.toml"));
    assert_ne!(student, default);
    let ask = |extra: &[&str]| {
        let out = cmd()
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .args([
                "ask",
                "--greedy",
                "--max-steps",
                "1",
                "--threads",
                "1",
                "--json",
            ])
            .args(extra)
            .arg("--grammar-file")
            .arg(&grammar)
            .arg("What is 6 times 7?")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stderr}");
        let run = json_of(&out);
        assert_eq!(run["answer"], "42", "{run}");
        let system = run["messages"][0]["content"].as_str().unwrap().to_owned();
        (system, stderr)
    };
    let (system, log) = ask(&["--student", "agent-smollm2-135m"]);
    assert!(system.starts_with(&student), "{system}");
    assert!(log.contains("student=agent-smollm2-135m"), "{log}");
    let adapter = log
        .split("adapter=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no adapter in the log: {log}"));
    assert!(adapter.contains("agent-smollm2-135m"), "{log}");
    // Without a flag: the student marked as the default in its manifest, else the base.
    let marked = small_agent::assets::default_student().unwrap();
    let (system, log) = ask(&[]);
    match &marked {
        Some(s) => assert!(log.contains(&format!("student={}", s.name)), "{log}"),
        None => {
            assert!(system.starts_with(&default), "{system}");
            assert!(!log.contains("student="), "{log}");
        }
    }
    let (system, log) = ask(&["--base"]);
    assert!(system.starts_with(&default), "{system}");
    assert!(!log.contains("student="), "{log}");
    cmd()
        .args(["ask", "--base", "--adapter", "x.gguf", "hi"])
        .assert()
        .code(2);
    cmd()
        .args([
            "ask",
            "--student",
            "agent-smollm2-135m",
            "--adapter",
            "x.gguf",
            "hi",
        ])
        .assert()
        .code(2);
    cmd()
        .args(["ask", "--student", "no-such-student", "hi"])
        .assert()
        .code(2)
        .stderr(predicates::str::contains("agent-smollm2-135m"));
}

#[test]
fn ask_without_its_shard_says_how_to_build_it() {
    crate::default_model_path();
    cmd()
        .args(["ask", "--index", "/nonexistent/shard", "hi"])
        .assert()
        .code(2)
        .stderr(predicates::str::contains("/nonexistent/shard"));
}

#[test]
fn python_runs_code_in_the_sandbox() {
    let out = cmd()
        .args(["python", "--json", "-"])
        .write_stdin("import math\nprint(math.factorial(10))\n1/0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v = json_of(&out);
    assert_eq!(v["stdout"], "3628800\n");
    assert_eq!(v["error"]["type_name"], "ZeroDivisionError", "{v}");
}

/// `models fetch` of the lite interpreter and its sympy/mpmath wheels (idempotent).
fn fetch_lite_interpreter() -> std::process::Output {
    cmd()
        .args([
            "models",
            "fetch",
            "python-wasm-lite",
            "lite-sympy",
            "lite-mpmath",
        ])
        .output()
        .unwrap()
}

#[test]
fn lite_python_imports_sympy_from_the_fetched_wheels() {
    // The wheels are assets like any other: fetched by name, verified, then mounted
    // read-only by the lite interpreter.
    let fetched = fetch_lite_interpreter();
    assert!(
        fetched.status.success(),
        "{}",
        String::from_utf8_lossy(&fetched.stderr)
    );
    let out = cmd()
        .args([
            "python",
            "--python",
            "lite",
            "--json",
            "--timeout",
            "120",
            "-",
        ])
        .write_stdin("import sympy\nx = sympy.Symbol('x')\nsympy.factor(x**2 - 1)")
        .output()
        .unwrap();
    let v = json_of(&out);
    assert_eq!(v["value"], "(x - 1)*(x + 1)", "{v}");
}

#[test]
fn ask_with_several_candidates_runs_them_on_lite_interpreter_forks() {
    crate::default_model_path();
    let fetched = fetch_lite_interpreter();
    assert!(fetched.status.success());
    let out = cmd()
        .args([
            "ask",
            "--threads",
            "1",
            "--python",
            "lite",
            "--sag",
            "3",
            "--max-steps",
            "1",
            "--json",
            "What is 6 times 7?",
        ])
        .output()
        .unwrap();
    let v = json_of(&out);
    assert!(v["error"].is_null(), "{v}");
    assert_eq!(
        v["steps"][0]["candidates"].as_array().unwrap().len(),
        3,
        "{v}"
    );
    let answered = !v["answer"].as_str().unwrap().is_empty();
    assert_eq!(out.status.code(), Some(if answered { 0 } else { 1 }), "{v}");
}

#[test]
fn index_search_json_finds_passages_in_the_default_shard() {
    let out = cmd()
        .args(["index", "search", "--json", "-k", "3", "capital of France"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = json_of(&out);
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r["rank"], i + 1);
        for k in ["score", "id", "title", "text"] {
            assert!(!r[k].is_null(), "{k}: {r}");
        }
    }
}

#[test]
fn bench_parallel_reports_the_step_ratio() {
    crate::default_model_path();
    let out = cmd()
        .args([
            "bench",
            "parallel",
            "-n",
            "2",
            "--prompt",
            "32",
            "--tokens",
            "4",
            "--reps",
            "1",
            "--threads",
            "1",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = json_of(&out);
    assert_eq!(v["n"], 2);
    for k in ["single_ms", "parallel_ms", "ratio"] {
        assert!(v[k].as_f64().unwrap() > 0.0, "{k}: {v}");
    }
    // The own output product's baseline is measured where the product applies.
    let own = small_agent::engine::head::OutputHead::supported_here();
    assert_eq!(
        v["parallel_llama_logits_ms"]
            .as_f64()
            .is_some_and(|ms| ms > 0.0),
        own,
        "{v}"
    );
}

/// The switches that have an environment variable take the usual spellings of a boolean
/// there (`1`, `0`, `true`, `yes`...), and both settings generate the same greedy text.
#[test]
fn engine_switches_read_boolean_environment_values() {
    crate::default_model_path();
    let text = |env: &[(&str, &str)]| {
        let out = cmd()
            .args(["generate", "--threads", "1", "--json", "--temperature", "0"])
            .args(["--max-tokens", "12", "Name three colours."])
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{env:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        json_of(&out)["text"].as_str().unwrap().to_owned()
    };
    let own = text(&[("SMALL_AGENT_LLAMA_LOGITS", "0")]);
    assert_eq!(text(&[("SMALL_AGENT_LLAMA_LOGITS", "1")]), own);
    assert_eq!(text(&[("SMALL_AGENT_LLAMA_LOGITS", "yes")]), own);
    assert!(!text(&[("SMALL_AGENT_AS_IS", "1")]).is_empty());
}

#[test]
fn bench_sag_json_times_one_step_both_ways_per_question() {
    crate::default_model_path();
    let questions = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data/hipporag-samples/hotpotqa_train.json");
    let out = cmd()
        .args([
            "bench",
            "sag",
            "--limit",
            "1",
            "-n",
            "2",
            "--threads",
            "1",
            "--json",
        ])
        .arg("--questions")
        .arg(&questions)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = json_of(&out);
    assert_eq!(
        (v["n"].as_u64(), v["questions"].as_u64()),
        (Some(2), Some(1)),
        "{v}"
    );
    assert_eq!(v["q8_0_keys"], true, "{v}");
    let row = &v["rows"][0];
    for side in ["single", "sag"] {
        let t = &row[side];
        let parts = t["prompt_ms"].as_f64().unwrap()
            + t["gen_ms"].as_f64().unwrap()
            + t["exec_ms"].as_f64().unwrap();
        assert!(
            (t["total_ms"].as_f64().unwrap() - parts).abs() < 1e-6,
            "{side}: {v}"
        );
        assert!(t["total_ms"].as_f64().unwrap() > 0.0, "{side}: {v}");
    }
    let ratio = v["ratio"].as_f64().unwrap();
    let expect =
        row["sag"]["total_ms"].as_f64().unwrap() / row["single"]["total_ms"].as_f64().unwrap();
    assert!((ratio - expect).abs() < 1e-9, "{v}");
}

#[test]
fn index_build_info_and_a_corrupt_shard() {
    let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data/hipporag-samples/hotpotqa_train_corpus.json");
    assert!(
        corpus.is_file(),
        "shared data missing: {}",
        corpus.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("shard");
    cmd()
        .args([
            "index", "build", "--quiet", "--format", "hipporag", "--input",
        ])
        .arg(&corpus)
        .arg("--out")
        .arg(&out)
        .assert()
        .success()
        .stderr(predicates::str::contains("passages/s"));
    let info = cmd()
        .args(["index", "info", "--json"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(info.status.success());
    let v = json_of(&info);
    assert_eq!(v["passages"], 994, "{v}");
    // Damage the shard: opening it is an environment error naming the path.
    for f in std::fs::read_dir(&out).unwrap() {
        let p = f.unwrap().path();
        if p.extension().is_some_and(|e| e == "store") {
            std::fs::write(&p, b"garbage").unwrap();
        }
    }
    let e = cmd()
        .args(["index", "search", "--index"])
        .arg(&out)
        .arg("Lilu")
        .output()
        .unwrap();
    assert_eq!(
        e.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&e.stderr)
    );
    assert!(String::from_utf8_lossy(&e.stderr).contains(&out.display().to_string()));
}

/// Memory of the loaded model: the derived Q4_0 base puts the matrices llama.cpp copies out
/// (repacks) before the tensors it reads in place, so the loader unmaps the matrices' pages
/// and only the embeddings and norms stay mapped (28.8 MiB of the 86 MiB file); with the
/// own output product, the embeddings' pages are handed back too.
#[test]
fn the_split_model_keeps_only_its_in_place_tensors_mapped() {
    crate::default_model_path();
    if !small_agent::engine::split::pays_here(false) {
        return; // the file loads as it is on this CPU
    }
    let out = cmd()
        .env("RUST_LOG", "small_agent=debug,llama-cpp-2=info")
        .env("NO_COLOR", "1")
        .args(["generate", "--temperature", "0", "--max-tokens", "2", "Hi."])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let mapped_mib: f64 = stderr
        .lines()
        .find_map(|l| l.split("CPU_Mapped model buffer size =").nth(1))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no mapped buffer line:\n{stderr}"));
    assert!(mapped_mib < 40.0, "{mapped_mib} MiB stay mapped");
    let released: Option<u64> = stderr
        .lines()
        .find_map(|l| l.split("output matrix pages released bytes=").nth(1))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok());
    if small_agent::engine::head::OutputHead::supported_here() {
        // 49,152 × 576 Q8_0 is 30,081,024 bytes, less the partial pages at its ends.
        let released = released.unwrap_or_else(|| panic!("nothing released:\n{stderr}"));
        assert!(released > 29_000_000, "{released} bytes released");
    } else {
        assert_eq!(released, None);
    }
}

/// Without `RUST_LOG`, a run prints its result and no log lines: llama.cpp's expected
/// warnings (e.g. one per matrix of the Q4_1 offsets adapter) stay out of the terminal.
#[test]
fn a_default_run_prints_no_log_lines() {
    crate::default_model_path();
    let out = Command::cargo_bin("small-agent")
        .unwrap()
        .env_remove("RUST_LOG")
        .args(["generate", "--temperature", "0", "--max-tokens", "4", "Hi."])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        !stderr.contains("WARN") && !stderr.contains("INFO"),
        "log lines on a default run:\n{stderr}"
    );
}
