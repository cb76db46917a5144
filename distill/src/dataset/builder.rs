//! Building a dataset directory from trajectory files.
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use small_agent::agent::PromptTemplate;
use small_agent::engine::ChatMessage;
use small_agent::Model;

use super::format::{ExampleId, SplitWriter};
use super::manifest::{
    ChatTemplateInfo, LengthStats, Manifest, SourceStats, SplitStats, StudentPromptInfo,
    TokenizerInfo, FORMAT_NAME, FORMAT_VERSION,
};
use super::render::{RenderProblem, Renderer};
use super::BuildError;
use crate::filter::question_key;
use crate::trajectory::read_jsonl;

/// The two splits, in the order they are listed.
pub const SPLITS: [&str; 2] = ["train", "val"];

/// Default `--max-len`: examples longer than this are dropped.
pub const DEFAULT_MAX_LEN: usize = 4096;
/// Default fraction of questions held out for validation.
pub const DEFAULT_VAL_FRAC: f64 = 0.05;

/// The split rule, as recorded in the manifest.
pub const SPLIT_RULE: &str = "h = SHA-256(seed as 8 little-endian bytes || UTF-8 of the normalised question \
     (small_agent_eval::score::normalize)); u = first 8 bytes of h as a big-endian integer / 2^64; \
     the example goes to val when u < val_frac, else to train. Every example of one question lands in \
     the same split.";

/// The mask rule, as recorded in the manifest.
pub const MASK_RULE: &str = "1 on each assistant reply's tokens (its whole text, the leading \
     `Thought:` included) and on the end-of-turn token that closes it; 0 on everything else \
     (system, task, observation and error turns, the template's turn headers such as \
     `<|im_start|>assistant\\n`, and the newline after `<|im_end|>`)";

/// How a dataset is built.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Examples longer than this many tokens are dropped and counted (never truncated).
    pub max_len: usize,
    /// Target fraction of questions in `val`.
    pub val_frac: f64,
    /// Seed of the split hash.
    pub seed: u64,
    /// The student's prompt template.
    pub template: PromptTemplate,
    /// Where the template came from (for the manifest).
    pub template_source: String,
    /// The template file's text (its SHA-256 goes into the manifest).
    pub template_text: String,
    /// The step budget written into the student's system prompt.
    pub max_steps: usize,
    /// The step grammar's forced start to check against (`None`: not checked).
    pub prefill: Option<String>,
}

/// Which split a question belongs to (see [`SPLIT_RULE`]).
pub fn split_of(question: &str, seed: u64, val_frac: f64) -> &'static str {
    let mut h = Sha256::new();
    h.update(seed.to_le_bytes());
    h.update(question_key(question).as_bytes());
    let d = h.finalize();
    let u = u64::from_be_bytes(d[..8].try_into().expect("8 bytes")) as f64 / 2f64.powi(64);
    if u < val_frac {
        "val"
    } else {
        "train"
    }
}

/// What the chat template makes of a fixed conversation.
pub fn template_probe(model: &Model) -> Result<ChatTemplateInfo, BuildError> {
    let m = [
        ChatMessage::new("system", "{system}"),
        ChatMessage::new("user", "{user}"),
        ChatMessage::new("assistant", "{assistant}"),
    ];
    let probe = model.render_chat(&m, false)?;
    let probe_open = model.render_chat(&m[..2], true)?;
    let sha256 = hex::encode(Sha256::digest(format!("{probe}{probe_open}").as_bytes()));
    Ok(ChatTemplateInfo {
        probe,
        probe_open,
        sha256,
    })
}

/// Trajectories rendered together between two writes.
const BATCH: usize = 256;

/// Renders the `fresh` trajectories of `batch` on up to `threads` threads; `None` for the
/// others. Results come back in input order.
fn render_batch(
    renderer: &Renderer<'_>,
    batch: &[(usize, crate::trajectory::Trajectory)],
    fresh: &[bool],
    threads: usize,
) -> Vec<Option<Result<super::Example, RenderProblem>>> {
    let work = |lo: usize, hi: usize| -> Vec<_> {
        (lo..hi)
            .map(|i| fresh[i].then(|| renderer.render(&batch[i].1)))
            .collect()
    };
    let threads = threads.clamp(1, batch.len().max(1));
    if threads == 1 {
        return work(0, batch.len());
    }
    let chunk = batch.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..batch.len())
            .step_by(chunk)
            .map(|lo| {
                let work = &work;
                scope.spawn(move || work(lo, (lo + chunk).min(batch.len())))
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a rendering thread panicked"))
            .collect()
    })
}

fn empty_stats(path: &str) -> SourceStats {
    SourceStats {
        path: path.to_owned(),
        sha256: String::new(),
        lines: 0,
        examples: SPLITS.iter().map(|s| (s.to_string(), 0)).collect(),
        dropped: BTreeMap::new(),
        tokens: LengthStats::default(),
    }
}

/// `DIR/.NAME.SUFFIX-PID` beside `dir`.
fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "dataset".into());
    dir.with_file_name(format!(".{name}.{suffix}-{}", std::process::id()))
}

/// Maps an I/O error to [`BuildError::Io`] naming `path`.
fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BuildError {
    let path = path.to_path_buf();
    move |source| BuildError::Io { path, source }
}

/// Builds the dataset in `out` from `inputs` with `model`'s chat template and tokenizer.
///
/// Everything is written into a temporary directory beside `out`, which replaces `out` only
/// once complete and synced (an existing `out` must be a dataset directory or empty, and
/// stays intact when the build fails or is stopped). `progress(done, total)` is called
/// after each trajectory; when `keep_going()` turns false the build stops with
/// [`BuildError::Interrupted`].
pub fn build(
    model: &Model,
    inputs: &[PathBuf],
    out: &Path,
    opts: &BuildOptions,
    progress: &mut dyn FnMut(usize, usize),
    keep_going: &dyn Fn() -> bool,
) -> Result<Manifest, BuildError> {
    if out.exists() {
        let empty = out.is_dir() && std::fs::read_dir(out).map_err(io(out))?.next().is_none();
        if !empty && !out.join("manifest.json").is_file() {
            return Err(BuildError::OutNotDataset(out.to_path_buf()));
        }
    }
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(io(&parent))?;

    // Read every source first: the counts and hashes go into the manifest.
    let mut sources = Vec::new();
    let mut all = Vec::new();
    for (si, p) in inputs.iter().enumerate() {
        let trajs = read_jsonl(p)?;
        let sha256 = small_agent_eval::sha256_file(p).map_err(io(p))?;
        sources.push(SourceStats {
            sha256,
            lines: trajs.len(),
            ..empty_stats(&p.display().to_string())
        });
        all.extend(trajs.into_iter().map(|t| (si, t)));
    }

    let tmp = sibling(out, "tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    std::fs::create_dir(&tmp).map_err(io(&tmp))?;
    let result = write_into(model, &tmp, &mut sources, all, opts, progress, keep_going);
    let manifest = match result {
        Ok(m) => m,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    // Swap the finished directory in; the old one is moved aside first and put back if the
    // second rename fails.
    let old = sibling(out, "old");
    let had_old = out.exists();
    if had_old {
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(io(&old))?;
        }
        std::fs::rename(out, &old).map_err(io(out))?;
    }
    if let Err(e) = std::fs::rename(&tmp, out) {
        if had_old {
            let _ = std::fs::rename(&old, out);
        }
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(BuildError::Io {
            path: out.to_path_buf(),
            source: e,
        });
    }
    if had_old {
        std::fs::remove_dir_all(&old).map_err(io(&old))?;
    }
    if let Ok(d) = std::fs::File::open(&parent) {
        let _ = d.sync_all();
    }
    Ok(manifest)
}

#[allow(clippy::too_many_arguments)]
fn write_into(
    model: &Model,
    dir: &Path,
    sources: &mut [SourceStats],
    all: Vec<(usize, crate::trajectory::Trajectory)>,
    opts: &BuildOptions,
    progress: &mut dyn FnMut(usize, usize),
    keep_going: &dyn Fn() -> bool,
) -> Result<Manifest, BuildError> {
    let renderer = Renderer::new(
        model,
        opts.template.clone(),
        opts.max_steps,
        opts.prefill.clone(),
    );
    let mut writers = Vec::new();
    for s in SPLITS {
        writers.push(SplitWriter::create(dir, s).map_err(io(dir))?);
    }
    let mut dropped: BTreeMap<String, usize> = RenderProblem::REASONS
        .iter()
        .chain(&["too_long", "duplicate_id"])
        .map(|r| (r.to_string(), 0))
        .collect();
    let mut splits: BTreeMap<String, SplitStats> = SPLITS
        .iter()
        .map(|s| (s.to_string(), SplitStats::default()))
        .collect();
    let mut questions: [HashSet<String>; 2] = Default::default();
    let mut lengths: Vec<Vec<(usize, usize)>> = vec![Vec::new(); sources.len()];
    let mut seen = HashSet::new();
    let mut by_source: BTreeMap<String, SourceStats> = BTreeMap::new();
    let mut origin_lengths: BTreeMap<String, Vec<(usize, usize)>> = BTreeMap::new();
    let total = all.len();
    let mut first_problem_logged = HashSet::new();
    // Rendering (tokenizing every prefix) is the slow part: batches of trajectories are
    // rendered on all cores, then written one by one in input order, so the output does not
    // depend on the number of threads.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut done = 0;
    let mut rest = all.into_iter();
    loop {
        let batch: Vec<_> = rest.by_ref().take(BATCH).collect();
        if batch.is_empty() {
            break;
        }
        if !keep_going() {
            return Err(BuildError::Interrupted);
        }
        // Duplicates are decided in input order before rendering.
        let fresh: Vec<bool> = batch
            .iter()
            .map(|(_, t)| seen.insert(t.id.clone()))
            .collect();
        let rendered = render_batch(&renderer, &batch, &fresh, threads);
        for (((si, t), is_fresh), result) in batch.into_iter().zip(fresh).zip(rendered) {
            let origin = by_source
                .entry(t.source.clone())
                .or_insert_with(|| empty_stats(""));
            origin.lines += 1;
            let mut drop = |reason: &str| {
                *dropped.entry(reason.to_owned()).or_default() += 1;
                *sources[si].dropped.entry(reason.to_owned()).or_default() += 1;
                *origin.dropped.entry(reason.to_owned()).or_default() += 1;
            };
            match result {
                _ if !is_fresh => drop("duplicate_id"),
                None => unreachable!("every fresh trajectory is rendered"),
                Some(Err(p)) => {
                    if first_problem_logged.insert(p.reason()) {
                        tracing::warn!(id = %t.id, problem = %p, "trajectory dropped (first of its kind)");
                    }
                    drop(p.reason());
                }
                Some(Ok(ex)) if ex.tokens.len() > opts.max_len => drop("too_long"),
                Some(Ok(ex)) => {
                    let split = split_of(&t.question, opts.seed, opts.val_frac);
                    let k = SPLITS
                        .iter()
                        .position(|s| *s == split)
                        .expect("a known split");
                    let masked = ex.masked();
                    let id = ExampleId {
                        id: t.id.clone(),
                        source: si,
                        len: ex.tokens.len(),
                        masked,
                    };
                    writers[k]
                        .push(&ex.tokens, &ex.mask, &id, &ex.messages)
                        .map_err(io(dir))?;
                    let st = splits.get_mut(split).expect("a known split");
                    st.examples += 1;
                    st.tokens += ex.tokens.len() as u64;
                    st.masked_tokens += masked as u64;
                    questions[k].insert(question_key(&t.question));
                    *sources[si].examples.entry(split.to_owned()).or_default() += 1;
                    lengths[si].push((ex.tokens.len(), masked));
                    *origin.examples.entry(split.to_owned()).or_default() += 1;
                    origin_lengths
                        .entry(t.source.clone())
                        .or_default()
                        .push((ex.tokens.len(), masked));
                }
            }
            done += 1;
        }
        progress(done, total);
    }
    for w in writers {
        w.finish().map_err(io(dir))?;
    }
    for (k, s) in SPLITS.iter().enumerate() {
        splits.get_mut(*s).expect("a known split").questions = questions[k].len();
    }
    for (s, l) in sources.iter_mut().zip(&lengths) {
        s.tokens = LengthStats::of(l);
    }
    for (name, s) in by_source.iter_mut() {
        s.tokens = LengthStats::of(origin_lengths.get(name).map_or(&[][..], Vec::as_slice));
    }
    let system = renderer.system_prompt();
    let tokenizer_sha = small_agent_eval::sha256_file(model.path()).map_err(io(model.path()))?;
    let manifest = Manifest {
        format: FORMAT_NAME.into(),
        version: FORMAT_VERSION,
        created_by: small_agent_eval::code_version(),
        sources: sources.to_vec(),
        by_source,
        splits,
        dropped,
        tokenizer: TokenizerInfo {
            path: model.path().display().to_string(),
            sha256: tokenizer_sha,
            n_vocab: model.n_vocab().max(0) as u32,
            add_bos: true,
        },
        chat_template: template_probe(model)?,
        student_prompt: StudentPromptInfo {
            template: opts.template_source.clone(),
            template_sha256: hex::encode(Sha256::digest(opts.template_text.as_bytes())),
            system_sha256: hex::encode(Sha256::digest(system.as_bytes())),
            system,
            max_steps: opts.max_steps,
            tools: renderer.tool_names(),
        },
        max_len: opts.max_len,
        val_frac: opts.val_frac,
        seed: opts.seed,
        split_rule: SPLIT_RULE.into(),
        mask_rule: MASK_RULE.into(),
        grammar_prefill: opts.prefill.clone(),
    };
    let mpath = dir.join("manifest.json");
    let text = serde_json::to_string_pretty(&manifest).expect("the manifest serialises");
    let f = std::fs::File::create(&mpath).map_err(io(&mpath))?;
    std::io::Write::write_all(&mut &f, format!("{text}\n").as_bytes()).map_err(io(&mpath))?;
    f.sync_all().map_err(io(&mpath))?;
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_split_follows_the_normalised_question_and_the_fraction() {
        let q = "Who wrote the novel Kim?";
        for seed in 0..20 {
            assert_eq!(
                split_of(q, seed, 0.3),
                split_of("who wrote  novel kim", seed, 0.3)
            );
        }
        let n = 4000;
        let val = (0..n)
            .filter(|i| split_of(&format!("question {i}"), 7, 0.1) == "val")
            .count();
        assert!((300..500).contains(&val), "{val} of {n} in val at 10%");
        assert!((0..100).all(|i| split_of(&format!("q {i}"), 1, 0.0) == "train"));
        // Another seed moves questions.
        let moved = (0..n)
            .filter(|i| {
                split_of(&format!("question {i}"), 7, 0.5)
                    != split_of(&format!("question {i}"), 8, 0.5)
            })
            .count();
        assert!(moved > n / 4, "{moved}");
    }
}
