//! Times the student's forward pass (logits at every position) on burn's flex CPU device and
//! reports the peak RSS: `cargo run --release -p small-agent-student --example forward_time
//! [-- MODEL.gguf [TOKENS [BATCH]]]` (default: the installed default model, 512 tokens, 1).

use std::time::Instant;

use small_agent_student::model::tensor_to_vec;

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args.next().map(Into::into).unwrap_or_else(|| {
        small_agent::assets::default_model_path().expect("the asset store is readable")
    });
    let tokens: usize = args
        .next()
        .map_or(512, |a| a.parse().expect("TOKENS is a number"));
    let batch: usize = args
        .next()
        .map_or(1, |a| a.parse().expect("BATCH is a number"));
    let t = Instant::now();
    let student = small_agent_student::load_cpu(&path).expect("the model loads");
    println!(
        "loaded {} ({} parameters) in {:.2} s, peak RSS {:.0} MB",
        path.display(),
        student.config.n_params(),
        t.elapsed().as_secs_f64(),
        peak_rss_mb()
    );
    let vocab = student.config.vocab_size as u32;
    let seqs: Vec<Vec<u32>> = (0..batch)
        .map(|b| {
            (0..tokens as u32)
                .map(|i| (i * 7919 + 31 * b as u32 + 1) % vocab)
                .collect()
        })
        .collect();
    let refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
    for run in 0..3 {
        let ids = student.token_tensor(&refs).expect("valid tokens");
        let t = Instant::now();
        let logits = tensor_to_vec(student.forward(ids)).expect("logits");
        let s = t.elapsed().as_secs_f64();
        println!(
            "run {run}: {batch} x {tokens} tokens in {s:.2} s ({:.0} tokens/s), {} logits, \
             peak RSS {:.0} MB",
            (batch * tokens) as f64 / s,
            logits.len(),
            peak_rss_mb()
        );
    }
}
