//! `small-agent bench sag`: the wall time of one agent step with N candidates against one
//! step with a single candidate, on real questions, with the same sampling and seed.
use std::{path::PathBuf, process::ExitCode, sync::Arc};

use anyhow::Result;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use small_agent::agent::{
    agent_toolbox, quick_eval::load_questions, Agent, AgentConfig, SearchFn, StepRecord,
    STEP_GRAMMAR,
};
use small_agent_sandbox::Flavour;

use super::{ContextArgs, ModelArgs, ShardArgs};

/// Arguments of `bench sag`.
#[derive(Debug, Args)]
pub struct BenchSagArgs {
    /// Question file: HippoRAG samples (`[{question, answer}]`) or an agent-distillation set
    #[arg(long, value_name = "FILE")]
    pub questions: PathBuf,
    /// First N questions
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub limit: usize,
    /// Candidates of the measured SAG step
    #[arg(long, short = 'n', default_value_t = 8, value_name = "N")]
    pub n: usize,
    /// Steps per question: 1 measures the first step, whose prompt both sides share; more
    /// measures every step of runs of up to N steps (after the first, each side follows its
    /// own conversation), as mean time per step
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub steps: usize,
    /// Sampling seed (candidate i uses seed + i; the single candidate uses seed)
    #[arg(long, default_value_t = 42, value_name = "S")]
    pub seed: u32,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub context: ContextArgs,
    #[command(flatten)]
    pub shard: ShardArgs,
}

/// One question's steps, both ways.
#[derive(Debug, Serialize)]
struct QuestionRow {
    question: String,
    single: StepTimes,
    sag: StepTimes,
}

/// Milliseconds of a question's measured steps, summed: their prompt evaluation, decoding
/// (all candidates) and the candidates' code on their sandbox forks.
#[derive(Debug, Clone, Copy, Serialize)]
struct StepTimes {
    /// Steps measured.
    steps: usize,
    prompt_ms: f64,
    gen_ms: f64,
    exec_ms: f64,
    /// Tokens of the longest candidate (the step decodes until the last one ends or is
    /// abandoned).
    gen_tokens: usize,
    /// Tokens of all candidates together.
    all_tokens: usize,
    total_ms: f64,
}

impl StepTimes {
    fn of_steps(steps: &[StepRecord]) -> Self {
        let mut sum = Self {
            steps: 0,
            prompt_ms: 0.0,
            gen_ms: 0.0,
            exec_ms: 0.0,
            gen_tokens: 0,
            all_tokens: 0,
            total_ms: 0.0,
        };
        for step in steps {
            let one = Self::of(step);
            sum.steps += 1;
            sum.prompt_ms += one.prompt_ms;
            sum.gen_ms += one.gen_ms;
            sum.exec_ms += one.exec_ms;
            sum.gen_tokens += one.gen_tokens;
            sum.all_tokens += one.all_tokens;
            sum.total_ms += one.total_ms;
        }
        sum
    }

    /// Mean milliseconds per step.
    fn per_step(&self) -> f64 {
        self.total_ms / self.steps.max(1) as f64
    }

    fn of(step: &StepRecord) -> Self {
        Self {
            steps: 1,
            prompt_ms: step.llm.prompt_ms,
            gen_ms: step.llm.gen_ms,
            exec_ms: step.exec_ms,
            gen_tokens: step
                .candidates
                .iter()
                .map(|c| c.gen_tokens)
                .max()
                .unwrap_or(step.llm.gen_tokens),
            all_tokens: step.candidates.iter().map(|c| c.gen_tokens).sum(),
            total_ms: step.llm.prompt_ms + step.llm.gen_ms + step.exec_ms,
        }
    }
}

#[derive(Debug, Serialize)]
struct Summary {
    n: usize,
    /// Whether the model's Q4_1 matrices ran as Q4_0 + offsets (`engine::split`).
    split: bool,
    /// Whether the N-candidate context was asked for Q8_0 keys (`SessionParams::q8_0_keys`;
    /// they apply where it runs on the CPU).
    q8_0_keys: bool,
    questions: usize,
    /// Steps asked for per question (`--steps`).
    steps: usize,
    /// Mean step wall time, one candidate.
    single_ms: f64,
    /// Mean step wall time, N candidates.
    sag_ms: f64,
    /// `sag_ms / single_ms` (target: at most 2 for N = 8).
    ratio: f64,
    /// The same without the prompt evaluation, i.e. what a later step whose prompt is
    /// already cached costs.
    ratio_after_prompt: f64,
    /// Median over questions of the per-question ratio.
    median_ratio: f64,
    /// 95% interval of `ratio` when the questions are resampled ([`ratio_interval`]): how
    /// far it could move on other questions of the same kind.
    ratio_ci95: [f64; 2],
    rows: Vec<QuestionRow>,
}

pub fn run(a: BenchSagArgs) -> Result<ExitCode> {
    let loaded = load_questions(&a.questions)?;
    let mut questions = loaded.items;
    questions.truncate(a.limit.max(1));
    let shard = Arc::new(a.shard.open()?);
    let search: SearchFn = Arc::new(move |q: &str| {
        small_agent_index::agent_search(&*shard, q).map_err(|e| e.to_string())
    });
    let python = super::python_backend(Flavour::Full)?;
    let model = a.model.load()?;
    // Both agents sample alike (the paper's SAG temperature and top-p, same seed), so the
    // single candidate is the SAG step's candidate 0 and the difference is the other N-1.
    let mut sag_config = AgentConfig {
        max_steps: a.steps.max(1),
        grammar: Some(STEP_GRAMMAR.to_owned()),
        ..AgentConfig::default()
    }
    .with_sag(a.n.max(2));
    sag_config.sampling.seed = a.seed;
    let single_config = AgentConfig {
        sag: 1,
        ..sag_config.clone()
    };
    let mut agents = Vec::new();
    for config in [single_config, sag_config] {
        let mut session = a.context.session_params();
        session.n_ctx = config.context_size(session.n_ctx);
        let tools = agent_toolbox(Some(search.clone()))?;
        agents.push(Agent::new(&model, &session, python.clone(), tools, config)?);
    }
    let bar = ProgressBar::new(questions.len() as u64).with_style(
        ProgressStyle::with_template(
            "one step, 1 vs {msg} candidates [{bar:30}] {pos}/{len} {elapsed}",
        )
        .expect("valid template"),
    );
    bar.set_message(a.n.to_string());
    let mut rows = Vec::new();
    for (i, q) in questions.iter().enumerate() {
        // Alternate which side goes first, so that neither always runs on a machine the
        // other has just warmed (caches) or left busy.
        let order: [usize; 2] = if i % 2 == 0 { [0, 1] } else { [1, 0] };
        let mut times = [None, None];
        for k in order {
            let run = agents[k].run(&q.question, &mut |_| true)?;
            if run.steps.is_empty() {
                anyhow::bail!("the agent ended before its first step: {:?}", run.failure);
            }
            times[k] = Some(StepTimes::of_steps(&run.steps));
        }
        let [Some(single), Some(sag)] = times else {
            unreachable!("both sides ran")
        };
        rows.push(QuestionRow {
            question: q.question.clone(),
            single,
            sag,
        });
        bar.inc(1);
    }
    bar.finish_and_clear();
    // Means per step over all measured steps of a side.
    let per_step = |f: &dyn Fn(&QuestionRow) -> (f64, usize)| {
        let (ms, n) = rows
            .iter()
            .map(f)
            .fold((0.0, 0), |(a, n), (x, m)| (a + x, n + m));
        ms / n.max(1) as f64
    };
    let single_ms = per_step(&|r| (r.single.total_ms, r.single.steps));
    let sag_ms = per_step(&|r| (r.sag.total_ms, r.sag.steps));
    let after = |t: &StepTimes| (t.gen_ms + t.exec_ms, t.steps);
    let ratio_after_prompt = per_step(&|r| after(&r.sag)) / per_step(&|r| after(&r.single));
    let mut ratios: Vec<f64> = rows
        .iter()
        .map(|r| r.sag.per_step() / r.single.per_step())
        .collect();
    ratios.sort_by(f64::total_cmp);
    let median_ratio = ratios[ratios.len() / 2];
    let sides: Vec<[(f64, usize); 2]> = rows
        .iter()
        .map(|r| {
            [
                (r.sag.total_ms, r.sag.steps),
                (r.single.total_ms, r.single.steps),
            ]
        })
        .collect();
    let ratio_ci95 = ratio_interval(&sides);
    let s = Summary {
        n: a.n.max(2),
        split: model.is_split(),
        q8_0_keys: !a.context.f16_keys,
        questions: rows.len(),
        steps: a.steps.max(1),
        single_ms,
        sag_ms,
        ratio: sag_ms / single_ms,
        ratio_after_prompt,
        median_ratio,
        ratio_ci95,
        rows,
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        println!(
            "| question | 1 candidate: steps, ms per step (tokens) | {} candidates: steps, ms per step (longest) | ratio |",
            s.n
        );
        println!("|---|---|---|---|");
        for r in &s.rows {
            let q: String = r.question.chars().take(48).collect();
            println!(
                "| {q} | {}, {:.0} ({}) | {}, {:.0} ({}) | {:.2} |",
                r.single.steps,
                r.single.per_step(),
                r.single.gen_tokens,
                r.sag.steps,
                r.sag.per_step(),
                r.sag.gen_tokens,
                r.sag.per_step() / r.single.per_step()
            );
        }
        println!(
            "mean step: 1 candidate {:.0} ms, {} candidates {:.0} ms: ratio {:.2}x \
             (95% interval over questions {:.2}-{:.2}x; median {:.2}x; without the prompt \
             evaluation {:.2}x)",
            s.single_ms,
            s.n,
            s.sag_ms,
            s.ratio,
            s.ratio_ci95[0],
            s.ratio_ci95[1],
            s.median_ratio,
            s.ratio_after_prompt
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Resamplings of [`ratio_interval`].
const RESAMPLES: usize = 2000;

/// The 2.5% and 97.5% points of the ratio of mean step times, `(Σ a / Σ steps of a) /
/// (Σ b / Σ steps of b)`, over [`RESAMPLES`] resamplings of the questions `[a, b]` with
/// replacement (a percentile bootstrap with a fixed seed, so a run's JSON is reproducible from
/// its rows). Why: a step's length is a draw of the sampler, and one long step moves a
/// 30-question mean by a lot; the interval says whether a ratio against a target means
/// anything.
fn ratio_interval(pairs: &[[(f64, usize); 2]]) -> [f64; 2] {
    if pairs.is_empty() {
        return [f64::NAN, f64::NAN];
    }
    // SplitMix64: enough for picking indices, and no dependency.
    let mut state = 0x5eed_u64;
    let mut next = || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let mut ratios: Vec<f64> = (0..RESAMPLES)
        .map(|_| {
            let (mut a, mut na, mut b, mut nb) = (0.0, 0, 0.0, 0);
            for _ in pairs {
                let [(x, nx), (y, ny)] = pairs[(next() % pairs.len() as u64) as usize];
                (a, na, b, nb) = (a + x, na + nx, b + y, nb + ny);
            }
            (a / na.max(1) as f64) / (b / nb.max(1) as f64)
        })
        .collect();
    ratios.sort_by(f64::total_cmp);
    [
        ratios[RESAMPLES / 40],
        ratios[RESAMPLES - 1 - RESAMPLES / 40],
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interval_holds_the_ratio_and_narrows_only_when_the_questions_agree() {
        // Every question at exactly 2x: nothing to resample.
        let same: Vec<[(f64, usize); 2]> = (1..=30)
            .map(|i| [(2.0 * i as f64, 1), (i as f64, 1)])
            .collect();
        assert_eq!(ratio_interval(&same), [2.0, 2.0]);
        // Per step: a side that took two steps for twice the time is as fast per step.
        let per_step: Vec<[(f64, usize); 2]> = (1..=30)
            .map(|i| [(4.0 * i as f64, 2), (i as f64, 1)])
            .collect();
        assert_eq!(ratio_interval(&per_step), [2.0, 2.0]);
        // Mostly 1.5x with a few long 5x steps: the interval is wide and holds the ratio.
        let mixed: Vec<[(f64, usize); 2]> = (0..30)
            .map(|i| {
                if i % 7 == 0 {
                    [(5000.0, 1), (1000.0, 1)]
                } else {
                    [(450.0, 1), (300.0, 1)]
                }
            })
            .collect();
        let ratio =
            mixed.iter().map(|p| p[0].0).sum::<f64>() / mixed.iter().map(|p| p[1].0).sum::<f64>();
        let [lo, hi] = ratio_interval(&mixed);
        assert!(lo < ratio && ratio < hi, "{lo} {ratio} {hi}");
        assert!(hi - lo > 0.5, "{lo} {hi}");
        // The same seed, the same interval.
        assert_eq!(ratio_interval(&mixed), [lo, hi]);
    }
}
