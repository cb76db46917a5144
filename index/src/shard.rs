//! Building, opening and searching a knowledge shard: a tantivy index plus `shard.json`.
//!
//! A build writes into a hidden sibling directory and only swaps it into place once the index
//! is committed and its metadata written, so a build that is killed half-way leaves the
//! previous shard untouched (and a stale sibling that the next build removes).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tantivy::collector::TopDocs;
use tantivy::query::{BooleanQuery, BoostQuery, Occur, Query, TermQuery};
use tantivy::schema::{
    Field, IndexRecordOption, Schema, TextFieldIndexing, TextOptions, Value, STORED, STRING,
};
use tantivy::tokenizer::{
    AsciiFoldingFilter, Language, LowerCaser, RemoveLongFilter, SimpleTokenizer, Stemmer,
    StopWordFilter, TextAnalyzer,
};
use tantivy::{doc, Index, IndexReader, ReloadPolicy, TantivyDocument, Term};

use crate::error::{Error, IoContext, Result};
use crate::ingest::{read_passages, Format, IngestOptions, IngestStats, Passage};
use crate::search::{Hit, Retriever};

/// Name of the metadata file that marks a directory as a shard.
pub const META_FILE: &str = "shard.json";
/// Value of `kind` in [`ShardMeta`]; anything else is a foreign file.
pub const SHARD_KIND: &str = "small-agent-knowledge-shard";
/// Bumped whenever fields, analyzer or scoring change incompatibly; older shards must be rebuilt.
pub const SCHEMA_VERSION: u32 = 1;
/// Name under which the text analyzer is registered in the index.
pub const ANALYZER: &str = "sa_en_v1";
/// Title boost: a query term matching the title counts this many times a body match.
/// Chosen on the HippoRAG train samples (see README "Choosing the BM25 parameters").
pub const DEFAULT_TITLE_BOOST: f32 = 1.5;
/// Indexing memory budget shared by all indexing threads; constant whatever the corpus size.
pub const DEFAULT_WRITER_HEAP_BYTES: usize = 512 << 20;
/// Query terms beyond this many distinct ones are dropped: a pasted 100 KB document should
/// cost a bounded amount of time, and past a few dozen terms BM25 rankings barely change.
pub const MAX_QUERY_TERMS: usize = 64;
/// Tokens longer than this are dropped from index and queries (base64 blobs, URLs).
const MAX_TOKEN_BYTES: usize = 40;

/// Function words that carry no topical signal. Dropping them keeps posting lists short at
/// query time (a question starts with "what was the …") and the index smaller.
const STOP_WORDS: &[&str] = &[
    "a", "about", "after", "all", "also", "an", "and", "any", "are", "as", "at", "be", "been",
    "before", "being", "between", "both", "but", "by", "can", "could", "did", "do", "does",
    "during", "each", "for", "from", "had", "has", "have", "he", "her", "here", "hers", "him",
    "his", "how", "i", "if", "in", "into", "is", "it", "its", "itself", "me", "more", "most", "my",
    "no", "nor", "not", "of", "on", "once", "only", "or", "other", "our", "out", "over", "own",
    "same", "she", "should", "so", "some", "such", "than", "that", "the", "their", "them", "then",
    "there", "these", "they", "this", "those", "through", "to", "too", "under", "until", "up",
    "very", "was", "we", "were", "what", "when", "where", "which", "while", "who", "whom", "why",
    "will", "with", "would", "you", "your",
];

/// The analyzer used for titles, bodies and queries alike.
pub fn analyzer() -> TextAnalyzer {
    TextAnalyzer::builder(SimpleTokenizer::default())
        .filter(RemoveLongFilter::limit(MAX_TOKEN_BYTES))
        .filter(LowerCaser)
        .filter(AsciiFoldingFilter)
        .filter(StopWordFilter::remove(
            STOP_WORDS.iter().map(|s| s.to_string()),
        ))
        .filter(Stemmer::new(Language::English))
        .build()
}

/// Build parameters recorded in the shard so that `index info` can say how it was made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildParams {
    /// Words per passage when splitting articles.
    pub passage_words: usize,
    /// Analyzer name.
    pub analyzer: String,
    /// Indexing threads.
    pub threads: usize,
    /// Indexing memory budget in bytes.
    pub heap_bytes: usize,
    /// Whether malformed records were fatal.
    pub strict: bool,
}

/// Contents of `shard.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardMeta {
    /// Always [`SHARD_KIND`].
    pub kind: String,
    /// [`SCHEMA_VERSION`] at build time.
    pub schema_version: u32,
    /// The input the shard was built from.
    pub source: String,
    /// Input format name.
    pub format: String,
    /// Source documents indexed.
    pub documents: u64,
    /// Passages indexed (= tantivy documents).
    pub passages: u64,
    /// Build parameters.
    pub build: BuildParams,
    /// Build time, seconds since the Unix epoch.
    pub built_at_unix: u64,
    /// Version of this crate that built the shard.
    pub builder_version: String,
}

/// How to build a shard.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// How to read the input.
    pub ingest: IngestOptions,
    /// Indexing threads (tantivy segment writers).
    pub threads: usize,
    /// Indexing memory budget in bytes, shared by the threads.
    pub heap_bytes: usize,
}

impl Default for BuildOptions {
    fn default() -> Self {
        Self {
            ingest: IngestOptions::default(),
            threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                .clamp(1, 8),
            heap_bytes: DEFAULT_WRITER_HEAP_BYTES,
        }
    }
}

/// What a build did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BuildReport {
    /// Ingest counts (the final summary).
    pub stats: IngestStats,
    /// Metadata as written.
    pub meta: ShardMeta,
    /// Wall time including commit and swap, in seconds.
    pub total_seconds: f64,
}

struct Fields {
    id: Field,
    title: Field,
    text: Field,
}

fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    // Frequencies without positions: BM25 needs term frequencies, and we never run phrase
    // queries, so positions would only make indexing slower and the shard bigger.
    let indexing = TextFieldIndexing::default()
        .set_tokenizer(ANALYZER)
        .set_index_option(IndexRecordOption::WithFreqs);
    let text_opts = TextOptions::default()
        .set_indexing_options(indexing)
        .set_stored();
    let id = b.add_text_field("id", STRING | STORED);
    let title = b.add_text_field("title", text_opts.clone());
    let text = b.add_text_field("text", text_opts);
    (b.build(), Fields { id, title, text })
}

/// Builds a shard at `out` from the file `input`, replacing any shard already there only once
/// the new one is complete.
pub fn build_shard(
    input: &Path,
    format: Format,
    out: &Path,
    opts: &BuildOptions,
) -> Result<BuildReport> {
    build_with(
        out,
        &input.display().to_string(),
        format.name(),
        opts,
        |sink| read_passages(input, format, &opts.ingest, sink),
    )
}

/// Builds a shard at `out` from passages produced in memory (benchmarks, tests).
pub fn build_shard_from_iter(
    passages: impl IntoIterator<Item = Passage>,
    source: &str,
    out: &Path,
    opts: &BuildOptions,
) -> Result<BuildReport> {
    build_with(out, source, "passages", opts, |sink| {
        let started = Instant::now();
        let mut stats = IngestStats::default();
        for p in passages {
            stats.documents += 1;
            stats.passages += 1;
            stats.bytes += (p.id.len() + p.title.len() + p.text.len()) as u64;
            sink(p)?;
        }
        stats.seconds = started.elapsed().as_secs_f64();
        Ok(stats)
    })
}

fn build_with(
    out: &Path,
    source: &str,
    format: &str,
    opts: &BuildOptions,
    produce: impl FnOnce(&mut dyn FnMut(Passage) -> Result<()>) -> Result<IngestStats>,
) -> Result<BuildReport> {
    let started = Instant::now();
    check_replaceable(out)?;
    let parent = parent_dir(out);
    fs::create_dir_all(&parent).at(&parent)?;
    remove_stale_builds(out);
    let tmp = sibling(out, &format!("building-{}", std::process::id()));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).at(&tmp)?;
    }
    fs::create_dir(&tmp).at(&tmp)?;
    let result = (|| {
        let (schema, f) = schema();
        let index = Index::create_in_dir(&tmp, schema)?;
        index.tokenizers().register(ANALYZER, analyzer());
        let mut writer = index.writer_with_num_threads::<TantivyDocument>(
            opts.threads.max(1),
            opts.heap_bytes.max(15_000_000 * opts.threads.max(1)),
        )?;
        let mut stats = produce(&mut |p: Passage| {
            writer.add_document(doc!(f.id => p.id, f.title => p.title, f.text => p.text))?;
            Ok(())
        })?;
        writer.commit()?;
        writer.wait_merging_threads()?;
        stats.seconds = started.elapsed().as_secs_f64();
        let meta = ShardMeta {
            kind: SHARD_KIND.into(),
            schema_version: SCHEMA_VERSION,
            source: source.into(),
            format: format.into(),
            documents: stats.documents,
            passages: stats.passages,
            build: BuildParams {
                passage_words: opts.ingest.passage_words,
                analyzer: ANALYZER.into(),
                threads: opts.threads,
                heap_bytes: opts.heap_bytes,
                strict: opts.ingest.strict,
            },
            built_at_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            builder_version: env!("CARGO_PKG_VERSION").into(),
        };
        let meta_path = tmp.join(META_FILE);
        let json = serde_json::to_vec_pretty(&meta).expect("metadata serialises");
        write_synced(&meta_path, &json)?;
        Ok((stats, meta))
    })();
    let (stats, meta) = match result {
        Ok(v) => v,
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    swap_into_place(&tmp, out)?;
    let report = BuildReport {
        stats,
        meta,
        total_seconds: started.elapsed().as_secs_f64(),
    };
    tracing::info!(out = %out.display(), passages = report.meta.passages, seconds = report.total_seconds, "shard built");
    Ok(report)
}

fn parent_dir(out: &Path) -> PathBuf {
    match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn sibling(out: &Path, suffix: &str) -> PathBuf {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "shard".into());
    parent_dir(out).join(format!(".{name}.{suffix}"))
}

/// A build may only replace a shard or an empty directory: pointing `--out` at a directory of
/// other files by mistake must not delete them.
fn check_replaceable(out: &Path) -> Result<()> {
    if !out.exists() {
        return Ok(());
    }
    if !out.is_dir() {
        return Err(Error::Foreign {
            path: out.to_path_buf(),
            marker: META_FILE,
        });
    }
    let empty = fs::read_dir(out).at(out)?.next().is_none();
    if empty || out.join(META_FILE).is_file() {
        Ok(())
    } else {
        Err(Error::Foreign {
            path: out.to_path_buf(),
            marker: META_FILE,
        })
    }
}

/// Removes leftovers of builds that were killed (their process no longer exists).
fn remove_stale_builds(out: &Path) {
    let prefix = match out.file_name() {
        Some(n) => format!(".{}.", n.to_string_lossy()),
        None => return,
    };
    let Ok(entries) = fs::read_dir(parent_dir(out)) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(&prefix) else {
            continue;
        };
        let pid = rest
            .strip_prefix("building-")
            .or_else(|| rest.strip_prefix("old-"))
            .and_then(|p| p.parse::<i32>().ok());
        if let Some(pid) = pid {
            if pid != std::process::id() as i32 && !process_alive(pid) {
                tracing::info!(path = %entry.path().display(), "removing leftover of an interrupted build");
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }
}

fn process_alive(pid: i32) -> bool {
    // Signal 0 checks existence without sending anything.
    // SAFETY: kill with signal 0 has no effect besides the permission/existence check.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = fs::File::create(path).at(path)?;
    f.write_all(bytes).at(path)?;
    f.sync_all().at(path)
}

fn sync_dir(dir: &Path) {
    if let Ok(f) = fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

/// Moves the finished build at `tmp` to `out`. On Linux an existing shard is exchanged in one
/// `renameat2(RENAME_EXCHANGE)`, so readers see either the old or the new shard, never none.
fn swap_into_place(tmp: &Path, out: &Path) -> Result<()> {
    sync_dir(tmp);
    if !out.exists() {
        fs::rename(tmp, out).at(out)?;
        sync_dir(&parent_dir(out));
        return Ok(());
    }
    #[cfg(target_os = "linux")]
    {
        use std::ffi::CString;
        use std::os::unix::ffi::OsStrExt;
        let a = CString::new(tmp.as_os_str().as_bytes()).expect("path without NUL");
        let b = CString::new(out.as_os_str().as_bytes()).expect("path without NUL");
        // SAFETY: both pointers are valid NUL-terminated strings for the duration of the call.
        let r = unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                a.as_ptr(),
                libc::AT_FDCWD,
                b.as_ptr(),
                libc::RENAME_EXCHANGE,
            )
        };
        if r == 0 {
            sync_dir(&parent_dir(out));
            // `tmp` now holds the previous shard.
            fs::remove_dir_all(tmp).at(tmp)?;
            return Ok(());
        }
        tracing::debug!(err = %std::io::Error::last_os_error(), "RENAME_EXCHANGE unavailable; falling back to two renames");
    }
    // Two renames: a crash between them leaves the old shard under `.NAME.old-PID`.
    let old = sibling(out, &format!("old-{}", std::process::id()));
    fs::rename(out, &old).at(out)?;
    fs::rename(tmp, out).at(out)?;
    sync_dir(&parent_dir(out));
    fs::remove_dir_all(&old).at(&old)
}

/// An open, read-only knowledge shard.
pub struct Shard {
    path: PathBuf,
    meta: ShardMeta,
    reader: IndexReader,
    fields: Fields,
    analyzer: TextAnalyzer,
    title_boost: f32,
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard")
            .field("path", &self.path)
            .field("passages", &self.meta.passages)
            .finish()
    }
}

impl Shard {
    /// Opens the shard at `path`, checking that it is one, that its schema version matches and
    /// that the index files load.
    pub fn open(path: &Path) -> Result<Shard> {
        let corrupt = |reason: String| Error::Corrupt {
            path: path.to_path_buf(),
            reason,
        };
        if !path.exists() {
            return Err(Error::Missing {
                path: path.to_path_buf(),
            });
        }
        let meta_path = path.join(META_FILE);
        if !path.is_dir() || !meta_path.is_file() {
            return Err(Error::Foreign {
                path: path.to_path_buf(),
                marker: META_FILE,
            });
        }
        let bytes = fs::read(&meta_path).at(&meta_path)?;
        let meta: ShardMeta = serde_json::from_slice(&bytes)
            .map_err(|e| corrupt(format!("{META_FILE} is unreadable: {e}")))?;
        if meta.kind != SHARD_KIND {
            return Err(Error::Foreign {
                path: path.to_path_buf(),
                marker: META_FILE,
            });
        }
        if meta.schema_version != SCHEMA_VERSION {
            return Err(corrupt(format!(
                "schema version {} but this program reads version {SCHEMA_VERSION}",
                meta.schema_version
            )));
        }
        // tantivy asserts (panics) on some damaged files instead of returning an error; a
        // damaged shard must be an error that names it, never a crash of the caller.
        let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| -> Result<Shard> {
            let index = Index::open_in_dir(path)
                .map_err(|e| corrupt(format!("index does not open: {e}")))?;
            index.tokenizers().register(ANALYZER, analyzer());
            let (expected, _) = schema();
            if index.schema() != expected {
                return Err(corrupt("index schema differs from the expected one".into()));
            }
            let fields = {
                let s = index.schema();
                let get = |n: &str| s.get_field(n).map_err(|e| corrupt(e.to_string()));
                Fields {
                    id: get("id")?,
                    title: get("title")?,
                    text: get("text")?,
                }
            };
            let reader = index
                .reader_builder()
                .reload_policy(ReloadPolicy::Manual)
                .try_into()
                .map_err(|e| corrupt(format!("index segments do not load: {e}")))?;
            let shard = Shard {
                path: path.to_path_buf(),
                meta,
                reader,
                fields,
                analyzer: analyzer(),
                title_boost: DEFAULT_TITLE_BOOST,
            };
            let docs = shard.reader.searcher().num_docs();
            if docs != shard.meta.passages {
                return Err(corrupt(format!(
                    "index holds {docs} passages but {META_FILE} records {}",
                    shard.meta.passages
                )));
            }
            Ok(shard)
        }));
        let shard = opened.unwrap_or_else(|panic| {
            Err(corrupt(format!(
                "index files are damaged ({})",
                panic_text(&panic)
            )))
        })?;
        tracing::debug!(path = %path.display(), passages = shard.meta.passages, "shard opened");
        Ok(shard)
    }

    /// Path the shard was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its metadata.
    pub fn meta(&self) -> &ShardMeta {
        &self.meta
    }

    /// Number of passages.
    pub fn len(&self) -> u64 {
        self.meta.passages
    }

    /// Whether the shard holds no passage.
    pub fn is_empty(&self) -> bool {
        self.meta.passages == 0
    }

    /// Current title boost.
    pub fn title_boost(&self) -> f32 {
        self.title_boost
    }

    /// Changes the title boost (for tuning; the default is [`DEFAULT_TITLE_BOOST`]).
    pub fn set_title_boost(&mut self, boost: f32) {
        self.title_boost = boost;
    }

    /// The analysed, de-duplicated query terms, at most [`MAX_QUERY_TERMS`].
    pub fn query_terms(&self, query: &str) -> Vec<String> {
        let mut analyzer = self.analyzer.clone();
        let mut stream = analyzer.token_stream(query);
        let mut terms: Vec<String> = Vec::new();
        while let Some(tok) = stream.next() {
            if !terms.iter().any(|t| t == &tok.text) {
                terms.push(tok.text.clone());
                if terms.len() == MAX_QUERY_TERMS {
                    break;
                }
            }
        }
        terms
    }

    /// Builds the BM25 query directly from analysed terms, never through a query parser: user
    /// text is data, so quotes, colons or brackets in it cannot be a syntax error.
    fn build_query(&self, query: &str) -> Option<BooleanQuery> {
        let terms = self.query_terms(query);
        if terms.is_empty() {
            return None;
        }
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::with_capacity(terms.len() * 2);
        for t in &terms {
            let title = TermQuery::new(
                Term::from_field_text(self.fields.title, t),
                IndexRecordOption::WithFreqs,
            );
            let text = TermQuery::new(
                Term::from_field_text(self.fields.text, t),
                IndexRecordOption::WithFreqs,
            );
            clauses.push((
                Occur::Should,
                Box::new(BoostQuery::new(Box::new(title), self.title_boost)),
            ));
            clauses.push((Occur::Should, Box::new(text)));
        }
        Some(BooleanQuery::new(clauses))
    }

    /// BM25 top-`k` as (score, passage) pairs.
    pub fn bm25(&self, query: &str, k: usize) -> Result<Vec<(f32, Passage)>> {
        // As in `open`: damage tantivy meets lazily (e.g. in a doc-store block) can panic.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.bm25_unguarded(query, k)
        }))
        .unwrap_or_else(|panic| {
            Err(Error::Corrupt {
                path: self.path.clone(),
                reason: format!("index files are damaged ({})", panic_text(&panic)),
            })
        })
    }

    fn bm25_unguarded(&self, query: &str, k: usize) -> Result<Vec<(f32, Passage)>> {
        let Some(q) = self.build_query(query) else {
            return Ok(Vec::new());
        };
        // A caller-supplied k (the CLI's -k) must not size a heap beyond the shard itself.
        let k = k.min(self.meta.passages as usize);
        if k == 0 {
            return Ok(Vec::new());
        }
        let searcher = self.reader.searcher();
        let top = searcher.search(&q, &TopDocs::with_limit(k).order_by_score())?;
        let mut out = Vec::with_capacity(top.len());
        for (score, addr) in top {
            let doc: TantivyDocument = searcher.doc(addr).map_err(|e| Error::Corrupt {
                path: self.path.clone(),
                reason: format!("stored passage unreadable: {e}"),
            })?;
            let get = |f: Field| {
                doc.get_first(f)
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_string()
            };
            out.push((
                score,
                Passage {
                    id: get(self.fields.id),
                    title: get(self.fields.title),
                    text: get(self.fields.text),
                },
            ));
        }
        Ok(out)
    }

    /// BM25 top-`k` document addresses only (no stored-field reads), for latency measurement.
    pub fn bm25_ids_only(&self, query: &str, k: usize) -> Result<usize> {
        let Some(q) = self.build_query(query) else {
            return Ok(0);
        };
        let k = k.min(self.meta.passages as usize).max(1);
        let searcher = self.reader.searcher();
        Ok(searcher
            .search(&q, &TopDocs::with_limit(k).order_by_score())?
            .len())
    }
}

/// The message of a caught panic.
fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown failure".into())
}

impl Retriever for Shard {
    fn search(&self, query: &str, k: usize) -> Result<Vec<Hit>> {
        Ok(self
            .bm25(query, k)?
            .into_iter()
            .enumerate()
            .map(|(i, (score, p))| Hit {
                rank: i + 1,
                score,
                id: p.id,
                title: p.title,
                text: p.text,
            })
            .collect())
    }
}
