//! Parity with llama.cpp: the same tokens through the burn student and through the runtime's
//! engine, logits compared at every position.
//!
//! Reference side ([`Reference`]), through the runtime's engine:
//! - [`Reference::AsIs`] (default): the file itself with llama.cpp's own kernels and logits
//!   ([`LoadOptions::as_is`]: no Q4_1 split; `own_output_head: false`, the runtime's
//!   `--llama-logits`). llama.cpp multiplies a quantised matrix with activations rounded to 8
//!   bits per block of 32 (256 for K-quants) and keeps K/V in f16; the student computes in f32
//!   with the dequantised weights. The logits differ by that rounding noise (a few percent of
//!   the logit scale on the 30-layer default model), and where two tokens nearly tie, the best
//!   one may differ. Reproducing the rounding in the student does not remove it (tried: on
//!   2-layer models it halved the difference, on the default model it changed nothing): the
//!   rounding is discontinuous, so llama.cpp's other small differences (f16 accumulation in
//!   its attention) move values across rounding steps;
//! - [`Reference::F32`]: the same, on a copy of the file with every matrix dequantised to F32
//!   ([`gguf::write_f32_copy`], a temporary file): the same weights, which llama.cpp then
//!   multiplies without rounding activations, so this compares two computations of one model
//!   (agreement to ~1e-3 of the logit scale, top-1 at every position on the default model);
//! - [`Reference::Runtime`]: the file as `small-agent` loads it by default (Q4_1 split, own
//!   output product where they apply).
//!
//! Numbers per prompt, over its positions `p` and the vocabulary `v` (`s` the student's
//! logits, `l` llama.cpp's):
//! - `max_abs_diff` = max over `p, v` of `|s[p][v] − l[p][v]|`;
//! - `max_rel_diff` = max over `p` of `max_v |s − l| / max_v |l|` (relative to the scale of the
//!   position's logits: a per-logit ratio would explode near zero logits);
//! - `mean_rel_diff` = the same ratio averaged over positions;
//! - `top1_agree[p]`: the two argmaxes (first on ties, as llama.cpp's greedy sampler) are the
//!   same token; every disagreement is listed with llama.cpp's margin between its choice and
//!   the student's (how near a tie it was).

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::Device;
use llama_cpp_2::token::LlamaToken;
use serde::Serialize;
use small_agent::engine::{LoadOptions, Model, SessionParams};

use crate::config::Arch;
use crate::error::{Result, StudentError};
use crate::gguf::{self, QkLayout};

/// Most characters of a prompt shown by [`ParityReport::render_text`].
pub const SHOWN_PROMPT_CHARS: usize = 48;

/// What llama.cpp runs on the reference side (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reference {
    /// The file as it is, llama.cpp's logits (`--as-is --llama-logits`).
    #[default]
    AsIs,
    /// A temporary copy of the file with every matrix dequantised to F32, as it is.
    F32,
    /// What `small-agent` runs by default: the Q4_1 split where it pays and the own output
    /// product where it applies.
    Runtime,
}

impl std::str::FromStr for Reference {
    type Err = String;

    /// `as-is`, `f32` or `runtime`.
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "as-is" => Ok(Self::AsIs),
            "f32" => Ok(Self::F32),
            "runtime" => Ok(Self::Runtime),
            other => Err(format!(
                "unknown reference {other:?}: as-is (the file as it is), f32 (a dequantised \
                 copy) or runtime (small-agent's default loading)"
            )),
        }
    }
}

/// Settings of a comparison.
#[derive(Debug, Clone)]
pub struct ParityOptions {
    /// llama.cpp's threads.
    pub threads: i32,
    /// The reference loading.
    pub reference: Reference,
    /// How the student is built from the file.
    pub student: gguf::LoadOptions,
}

impl Default for ParityOptions {
    fn default() -> Self {
        Self {
            threads: small_agent::engine::default_threads(),
            reference: Reference::default(),
            student: gguf::LoadOptions::default(),
        }
    }
}

/// A position where the two models' best tokens differ.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Disagreement {
    /// Position (0 = after the first token).
    pub position: usize,
    /// llama.cpp's best token.
    pub llama_token: u32,
    /// The student's best token.
    pub student_token: u32,
    /// llama.cpp's logit of its choice minus its logit of the student's.
    pub llama_margin: f32,
}

/// The comparison of one prompt.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PromptParity {
    /// The prompt text (empty when tokens were given).
    pub prompt: String,
    /// Its tokens (llama.cpp's tokenizer).
    pub tokens: usize,
    /// Largest absolute logit difference.
    pub max_abs_diff: f32,
    /// Largest per-position relative difference (see the module docs).
    pub max_rel_diff: f32,
    /// Mean per-position relative difference.
    pub mean_rel_diff: f32,
    /// Positions whose best tokens agree.
    pub top1_agreements: usize,
    /// Per position: do the best tokens agree.
    pub top1_agree: Vec<bool>,
    /// Per position: the largest absolute difference there.
    pub abs_diff: Vec<f32>,
    /// The positions that disagree.
    pub disagreements: Vec<Disagreement>,
    /// Time of the student's forward pass.
    pub student_ms: f64,
    /// Time of llama.cpp's evaluation.
    pub llama_ms: f64,
}

/// The comparison of all prompts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ParityReport {
    /// The model file.
    pub model: PathBuf,
    /// Its architecture.
    pub arch: Arch,
    /// The student's q/k layout.
    pub qk_layout: String,
    /// The reference loading.
    pub reference: Reference,
    /// Whether the reference loaded the Q4_1 split.
    pub reference_split: bool,
    /// Time to build the student from the file.
    pub student_load_ms: f64,
    /// Per prompt.
    pub prompts: Vec<PromptParity>,
    /// Largest absolute difference over all prompts.
    pub max_abs_diff: f32,
    /// Largest relative difference over all prompts.
    pub max_rel_diff: f32,
    /// Whether the best tokens agree at every position of every prompt.
    pub all_top1_agree: bool,
}

impl ParityReport {
    /// A table for people: one line per prompt.
    pub fn render_text(&self) -> String {
        let mut out = format!(
            "{} ({:?}, student q/k {}, reference {:?}{}), student built in {:.0} ms\n",
            self.model.display(),
            self.arch,
            self.qk_layout,
            self.reference,
            if self.reference_split { ", split" } else { "" },
            self.student_load_ms
        );
        out.push_str(
            "tokens  max|Δ|     max rel    mean rel   top-1 agree     burn ms  llama ms  prompt\n",
        );
        for p in &self.prompts {
            let shown: String = p.prompt.chars().take(SHOWN_PROMPT_CHARS).collect();
            let shown = shown.replace('\n', "⏎");
            out.push_str(&format!(
                "{:>6}  {:<9.3e}  {:<9.3e}  {:<9.3e}  {:>5}/{:<5}  {:>9.0}  {:>8.0}  {}{}\n",
                p.tokens,
                p.max_abs_diff,
                p.max_rel_diff,
                p.mean_rel_diff,
                p.top1_agreements,
                p.tokens,
                p.student_ms,
                p.llama_ms,
                shown,
                if p.prompt.chars().count() > SHOWN_PROMPT_CHARS {
                    "…"
                } else {
                    ""
                }
            ));
            for d in &p.disagreements {
                out.push_str(&format!(
                    "        position {}: llama.cpp {} / student {} (llama.cpp margin {:.4})\n",
                    d.position, d.llama_token, d.student_token, d.llama_margin
                ));
            }
        }
        out.push_str(&format!(
            "overall: max|Δ| {:.3e}, max rel {:.3e}, top-1 {}\n",
            self.max_abs_diff,
            self.max_rel_diff,
            if self.all_top1_agree {
                "agrees everywhere"
            } else {
                "DISAGREES somewhere"
            }
        ));
        out
    }
}

/// One input of a comparison: text (tokenized by llama.cpp, BOS as the model says) or tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParityInput {
    /// Text with special tokens parsed (a rendered chat, say).
    Text(String),
    /// Token ids.
    Tokens(Vec<u32>),
}

/// Compares the student built from `model_path` with llama.cpp on each prompt text. Prints
/// nothing: [`ParityReport::render_text`] or serde give the numbers. The CLI's
/// `small-agent-distill parity` is this function.
pub fn run_report(
    model_path: &Path,
    prompts: &[String],
    options: &ParityOptions,
) -> Result<ParityReport> {
    let inputs: Vec<ParityInput> = prompts.iter().cloned().map(ParityInput::Text).collect();
    compare(model_path, &inputs, options)
}

/// Compares the student built from `model_path` with llama.cpp on each input.
pub fn compare(
    model_path: &Path,
    inputs: &[ParityInput],
    options: &ParityOptions,
) -> Result<ParityReport> {
    if inputs.is_empty() {
        return Err(StudentError::InvalidInput("no prompts to compare".into()));
    }
    let load = match options.reference {
        Reference::AsIs | Reference::F32 => LoadOptions::as_is(),
        Reference::Runtime => LoadOptions::default(),
    };
    let f32_copy = match options.reference {
        Reference::F32 => Some(TempFile::f32_copy_of(model_path)?),
        _ => None,
    };
    let reference_path = f32_copy.as_ref().map_or(model_path, |c| c.0.as_path());
    let reference = Model::load_with(reference_path, &load)?;
    let sequences: Vec<(String, Vec<u32>)> = inputs
        .iter()
        .map(|input| match input {
            ParityInput::Text(text) => (
                text.clone(),
                reference
                    .tokenize(text, true)
                    .into_iter()
                    .map(|t| t.0 as u32)
                    .collect(),
            ),
            ParityInput::Tokens(tokens) => (String::new(), tokens.clone()),
        })
        .collect();
    let longest = sequences.iter().map(|(_, t)| t.len()).max().unwrap_or(0);
    if sequences.iter().any(|(_, t)| t.is_empty()) {
        return Err(StudentError::InvalidInput("a prompt has no tokens".into()));
    }

    let t = Instant::now();
    let student = gguf::load(model_path, &options.student, &Device::flex())?;
    let student_load_ms = ms(t);
    if longest > student.config.context_length {
        return Err(StudentError::InvalidInput(format!(
            "a prompt of {longest} tokens exceeds the model's context of {}",
            student.config.context_length
        )));
    }
    if reference.n_vocab() as usize != student.config.vocab_size {
        return Err(StudentError::InvalidInput(format!(
            "llama.cpp sees {} tokens in the vocabulary, the student {}",
            reference.n_vocab(),
            student.config.vocab_size
        )));
    }
    let params = SessionParams {
        n_ctx: longest.next_multiple_of(256) as u32,
        n_threads: options.threads,
        n_threads_batch: options.threads,
        own_output_head: options.reference == Reference::Runtime,
        ..SessionParams::default()
    };
    let mut session = reference.session(&params)?;

    let mut prompts = Vec::with_capacity(sequences.len());
    for (prompt, tokens) in sequences {
        let t = Instant::now();
        let ours = student.logits(&tokens)?;
        let student_ms = ms(t);
        let t = Instant::now();
        let llama_tokens: Vec<LlamaToken> = tokens.iter().map(|&t| LlamaToken(t as i32)).collect();
        let theirs = session.logits_all(&llama_tokens)?;
        let llama_ms = ms(t);
        prompts.push(compare_logits(prompt, &ours, &theirs, student_ms, llama_ms));
    }
    let max_abs_diff = prompts.iter().map(|p| p.max_abs_diff).fold(0.0, f32::max);
    let max_rel_diff = prompts.iter().map(|p| p.max_rel_diff).fold(0.0, f32::max);
    let all_top1_agree = prompts.iter().all(|p| p.disagreements.is_empty());
    Ok(ParityReport {
        model: model_path.into(),
        arch: student.config.arch,
        qk_layout: match options.student.qk_layout {
            QkLayout::HuggingFace => "hugging-face".into(),
            QkLayout::Gguf => "gguf".into(),
        },
        reference: options.reference,
        reference_split: reference.is_split(),
        student_load_ms,
        prompts,
        max_abs_diff,
        max_rel_diff,
        all_top1_agree,
    })
}

/// The numbers of one prompt from both sides' logits (rows of equal length).
pub fn compare_logits(
    prompt: String,
    ours: &[Vec<f32>],
    theirs: &[Vec<f32>],
    student_ms: f64,
    llama_ms: f64,
) -> PromptParity {
    let mut abs_diff = Vec::with_capacity(ours.len());
    let mut top1_agree = Vec::with_capacity(ours.len());
    let mut disagreements = Vec::new();
    let mut max_rel_diff = 0.0f32;
    let mut sum_rel = 0.0f64;
    for (position, (s, l)) in ours.iter().zip(theirs).enumerate() {
        let diff = s
            .iter()
            .zip(l)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        let scale = l.iter().map(|x| x.abs()).fold(0.0f32, f32::max);
        let rel = if scale > 0.0 { diff / scale } else { diff };
        max_rel_diff = max_rel_diff.max(rel);
        sum_rel += f64::from(rel);
        abs_diff.push(diff);
        let (ls, ss) = (argmax(l), argmax(s));
        top1_agree.push(ls == ss);
        if ls != ss {
            disagreements.push(Disagreement {
                position,
                llama_token: ls as u32,
                student_token: ss as u32,
                llama_margin: l[ls] - l[ss],
            });
        }
    }
    PromptParity {
        prompt,
        tokens: ours.len(),
        max_abs_diff: abs_diff.iter().copied().fold(0.0, f32::max),
        max_rel_diff,
        mean_rel_diff: (sum_rel / ours.len().max(1) as f64) as f32,
        top1_agreements: top1_agree.iter().filter(|&&a| a).count(),
        top1_agree,
        abs_diff,
        disagreements,
        student_ms,
        llama_ms,
    }
}

/// Index of the largest value, the first one on ties.
fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

/// A file removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    /// An F32 copy of `model` in the temporary directory.
    fn f32_copy_of(model: &Path) -> Result<Self> {
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "small-agent-student-f32-{}-{n}.gguf",
            std::process::id()
        ));
        let file = Self(path);
        gguf::write_f32_copy(model, &file.0)?;
        Ok(file)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}
