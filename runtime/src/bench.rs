//! Throughput benchmarks of the engine, measured the way llama.cpp's `llama-bench` measures
//! (pp = prompt processing of N random tokens in one batch, tg = generating N tokens one at
//! a time), plus a runner for `llama-bench` itself so both are measured in the same run.

use std::{path::Path, process::Command, time::Instant};

use llama_cpp_2::token::LlamaToken;
use serde::Serialize;

use crate::engine::{EngineError, GenerateParams, Model, SamplingParams, SessionParams};

/// Default prompt length of the pp test (llama-bench's `-p` default).
pub const DEFAULT_PP_TOKENS: u32 = 512;
/// Default generation length of the tg test (llama-bench's `-n` default).
pub const DEFAULT_TG_TOKENS: u32 = 128;
/// Default repetitions (llama-bench's `-r` default).
pub const DEFAULT_REPETITIONS: u32 = 5;

/// Mean and standard deviation of tokens/s over repetitions.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Throughput {
    /// Mean tokens per second.
    pub tokens_per_s: f64,
    /// Standard deviation over repetitions.
    pub stddev: f64,
}

impl Throughput {
    /// From per-repetition tokens/s samples.
    pub fn from_samples(samples: &[f64]) -> Self {
        let n = samples.len().max(1) as f64;
        let mean = samples.iter().sum::<f64>() / n;
        let var = samples.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / n;
        Self {
            tokens_per_s: mean,
            stddev: var.sqrt(),
        }
    }
}

/// What to measure.
#[derive(Debug, Clone, Serialize)]
pub struct LlmBenchParams {
    /// Prompt tokens of the pp test.
    pub pp_tokens: u32,
    /// Generated tokens of the tg test.
    pub tg_tokens: u32,
    /// Repetitions (after one warm-up).
    pub repetitions: u32,
    /// Threads (generation and prompt).
    pub threads: i32,
}

/// Results of one engine.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct LlmBenchResult {
    /// Prompt processing.
    pub pp: Throughput,
    /// Token generation.
    pub tg: Throughput,
}

/// Deterministic pseudo-random tokens (xorshift), like llama-bench's random prompt.
fn random_tokens(n: usize, n_vocab: i32, seed: u64) -> Vec<LlamaToken> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            LlamaToken((x % n_vocab as u64) as i32)
        })
        .collect()
}

/// Measures our engine: pp through one prompt evaluation of random tokens in a fresh cache,
/// tg through the full generation path (greedy sampling, detokenisation, stop handling).
/// tg times `tg` decodes plus `tg + 1` samplings (llama-bench times the decodes alone).
pub fn bench_engine(model: &Model, params: &LlmBenchParams) -> Result<LlmBenchResult, EngineError> {
    // Contexts sized as llama-bench sizes them: the pp test's prompt, the tg test's tokens.
    let sp = |n_ctx: u32| SessionParams {
        n_ctx,
        n_threads: params.threads,
        n_threads_batch: params.threads,
        n_batch: params.pp_tokens.max(1),
        n_seq_max: 1,
        ..SessionParams::default()
    };
    let pp_prompt = random_tokens(params.pp_tokens as usize, model.n_vocab(), 0x5eed);
    let one = GenerateParams {
        max_tokens: 1,
        sampling: SamplingParams::greedy(),
        ..Default::default()
    };
    let gen = GenerateParams {
        max_tokens: params.tg_tokens + 1,
        sampling: SamplingParams::greedy(),
        ignore_eog: true,
        ..Default::default()
    };
    // One test at a time with one live session, as llama-bench runs one context (and one
    // thread pool) per test: an idle session's pool workers would otherwise spin beside
    // the measured one. Repetition 0 warms caches and the pool and is not counted.
    let mut pp = Vec::new();
    {
        let mut session = model.session(&sp(params.pp_tokens))?;
        for rep in 0..=params.repetitions {
            session.clear();
            let c = session.complete_tokens(&pp_prompt, &one, &mut |_| true)?;
            if rep > 0 {
                pp.push(params.pp_tokens as f64 / (c.stats.prompt_ms / 1e3));
            }
        }
    }
    let mut tg = Vec::new();
    {
        let mut session = model.session(&sp(params.tg_tokens + 1))?;
        for rep in 0..=params.repetitions {
            session.clear();
            let start = Instant::now();
            let g = session.complete_tokens(&pp_prompt[..1], &gen, &mut |_| true)?;
            let tg_s = start.elapsed().as_secs_f64() - g.stats.prompt_ms / 1e3;
            if rep > 0 {
                tg.push(params.tg_tokens as f64 / tg_s);
            }
        }
    }
    Ok(LlmBenchResult {
        pp: Throughput::from_samples(&pp),
        tg: Throughput::from_samples(&tg),
    })
}

/// Default number of parallel candidates (the paper's self-consistent action generation).
pub const DEFAULT_PARALLEL: u32 = 8;

/// Wall time of one generation step with one sequence and with `n` parallel sequences.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ParallelBenchResult {
    /// Candidates in the parallel step.
    pub n: u32,
    /// Tokens generated per candidate.
    pub tokens: u32,
    /// Milliseconds (mean over repetitions) for one sequence.
    pub single_ms: f64,
    /// Milliseconds (mean over repetitions) for `n` sequences in one batch.
    pub parallel_ms: f64,
    /// `parallel_ms / single_ms` (the target for n = 8 is at most 2).
    pub ratio: f64,
    /// Tokens the N-candidate step evaluated (mean over repetitions), of `n * tokens`:
    /// candidates that have drawn the same tokens so far share an evaluation.
    pub parallel_decoded: f64,
    /// Baseline of the own output product ([`crate::engine::head`]), where it applies: the
    /// `n`-sequence step with llama.cpp computing the logits (same sessions otherwise).
    pub parallel_llama_logits_ms: Option<f64>,
}

/// Measures one agent-like step: a prompt already in the cache, then `tokens` generated
/// tokens per candidate (SAG's sampling: temperature 0.4, then top-p 0.8), once with a single
/// sequence and once with `n` sequences decoded side by side.
pub fn bench_parallel(
    model: &Model,
    params: &LlmBenchParams,
    n: u32,
) -> Result<ParallelBenchResult, EngineError> {
    let sp = SessionParams {
        n_ctx: params.pp_tokens + n * params.tg_tokens + 16,
        n_threads: params.threads,
        n_threads_batch: params.threads,
        n_batch: params.pp_tokens.max(n),
        n_seq_max: n,
        ..SessionParams::default()
    };
    // Each side gets the session the agent would give it: `--sag 1` runs in a
    // single-sequence context, which may be configured differently (see `Session::new`).
    let mut single_session = model.session(&SessionParams {
        n_seq_max: 1,
        ..sp.clone()
    })?;
    let mut parallel_session = model.session(&sp)?;
    // The same step with llama.cpp's output product, where ours applies (else `None`).
    let mut llama_logits_session = if sp.own_output_head && model.has_own_output_head() {
        Some(model.session(&SessionParams {
            own_output_head: false,
            ..sp.clone()
        })?)
    } else {
        None
    };
    let prompt = random_tokens(params.pp_tokens as usize, model.n_vocab(), 0x5eed);
    let gen = GenerateParams {
        max_tokens: params.tg_tokens,
        // SAG's sampling (the paper's, in vLLM's order).
        sampling: crate::agent::AgentConfig::default().with_sag(2).sampling,
        ignore_eog: true,
        ..Default::default()
    };
    let (mut single, mut parallel, mut llama_logits) = (Vec::new(), Vec::new(), Vec::new());
    let mut decoded = Vec::new();
    for rep in 0..=params.repetitions {
        // (candidates, times, session, whether its evaluated tokens are the ones reported)
        let mut sides = vec![
            (1, &mut single, &mut single_session, false),
            (n as usize, &mut parallel, &mut parallel_session, true),
        ];
        if let Some(s) = llama_logits_session.as_mut() {
            sides.push((n as usize, &mut llama_logits, s, false));
        }
        for (k, out, session, report_decoded) in sides {
            // The step's prompt is in the cache already, as after an agent's first step.
            session.complete_tokens(
                &prompt,
                &GenerateParams {
                    max_tokens: 1,
                    ..gen.clone()
                },
                &mut |_| true,
            )?;
            let c = session.complete_parallel(&prompt, k, &gen, &mut |_, _| true)?;
            if rep > 0 {
                out.push(c[0].stats.prompt_ms + c[0].stats.gen_ms);
                if report_decoded {
                    decoded.push(c[0].stats.decoded_tokens as f64);
                }
            }
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let (single_ms, parallel_ms) = (mean(&single), mean(&parallel));
    Ok(ParallelBenchResult {
        n,
        tokens: params.tg_tokens,
        single_ms,
        parallel_ms,
        ratio: parallel_ms / single_ms,
        parallel_decoded: mean(&decoded),
        parallel_llama_logits_ms: (!llama_logits.is_empty()).then(|| mean(&llama_logits)),
    })
}

/// Errors of running `llama-bench`.
#[derive(Debug, thiserror::Error)]
pub enum LlamaBenchError {
    /// The binary is not there.
    #[error(
        "llama-bench not found at {0}: build it from the llama.cpp source the crate vendors with \
         `scripts/build-llama-bench.sh`, or pass --llama-bench PATH"
    )]
    NotFound(String),
    /// It ran and failed.
    #[error("llama-bench failed ({status}): {stderr}")]
    Failed {
        /// Exit status.
        status: String,
        /// The end of its error output.
        stderr: String,
    },
    /// Its output was not the expected JSON.
    #[error("cannot read llama-bench's JSON output: {0}")]
    BadOutput(String),
}

/// Runs `llama-bench -o json` on the same model, threads and sizes.
pub fn bench_llama_cpp(
    llama_bench: &Path,
    model: &Path,
    params: &LlmBenchParams,
) -> Result<LlmBenchResult, LlamaBenchError> {
    if !llama_bench.is_file() {
        return Err(LlamaBenchError::NotFound(llama_bench.display().to_string()));
    }
    let out = Command::new(llama_bench)
        .arg("-m")
        .arg(model)
        .args(["-t", &params.threads.to_string()])
        .args(["-p", &params.pp_tokens.to_string()])
        .args(["-n", &params.tg_tokens.to_string()])
        .args(["-r", &params.repetitions.to_string()])
        .args(["-ngl", "0", "-o", "json"])
        .output()
        .map_err(|e| LlamaBenchError::NotFound(format!("{} ({e})", llama_bench.display())))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(8).collect();
        return Err(LlamaBenchError::Failed {
            status: out.status.to_string(),
            stderr: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        });
    }
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)
        .map_err(|e| LlamaBenchError::BadOutput(e.to_string()))?;
    let find = |pp: bool| -> Result<Throughput, LlamaBenchError> {
        let row = rows
            .iter()
            .find(|r| {
                let n_prompt = r["n_prompt"].as_u64().unwrap_or(0);
                let n_gen = r["n_gen"].as_u64().unwrap_or(0);
                if pp {
                    n_prompt > 0 && n_gen == 0
                } else {
                    n_prompt == 0 && n_gen > 0
                }
            })
            .ok_or_else(|| LlamaBenchError::BadOutput("no pp/tg row".into()))?;
        Ok(Throughput {
            tokens_per_s: row["avg_ts"]
                .as_f64()
                .ok_or_else(|| LlamaBenchError::BadOutput("avg_ts missing".into()))?,
            stddev: row["stddev_ts"].as_f64().unwrap_or(0.0),
        })
    };
    Ok(LlmBenchResult {
        pp: find(true)?,
        tg: find(false)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throughput_mean_and_stddev() {
        let t = Throughput::from_samples(&[10.0, 20.0]);
        assert_eq!((t.tokens_per_s, t.stddev), (15.0, 5.0));
    }

    #[test]
    fn random_tokens_are_in_range_and_reproducible() {
        let a = random_tokens(1000, 49152, 7);
        assert_eq!(a, random_tokens(1000, 49152, 7));
        assert!(a.iter().all(|t| (0..49152).contains(&t.0)));
        assert!(a.iter().collect::<std::collections::HashSet<_>>().len() > 900);
    }
}
