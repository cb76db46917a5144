//! Building, rebuilding, opening damaged shards, and hostile queries.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use small_agent_index::shard::META_FILE;
use small_agent_index::{
    agent_search, build_shard, build_shard_from_iter, BuildOptions, Error, Format, Passage,
    Retriever, Shard,
};

fn build_musique(out: &Path) -> Shard {
    let corpus = common::data_file("hipporag-samples/musique_train_corpus.json");
    let report = build_shard(&corpus, Format::Hipporag, out, &BuildOptions::default()).unwrap();
    assert_eq!(report.meta.passages, 1_890);
    Shard::open(out).unwrap()
}

#[test]
fn build_open_search_and_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("musique");
    let shard = build_musique(&out);
    let meta = shard.meta();
    assert_eq!(
        meta.schema_version,
        small_agent_index::shard::SCHEMA_VERSION
    );
    assert_eq!(meta.format, "hipporag");
    assert_eq!(meta.documents, 1_890);
    assert!(meta.source.ends_with("musique_train_corpus.json"));
    let hits = shard
        .search("Journal of Psychotherapy Integration publisher", 5)
        .unwrap();
    assert_eq!(hits.len(), 5);
    assert_eq!(hits[0].title, "Journal of Psychotherapy Integration");
    assert_eq!(
        hits.iter().map(|h| h.rank).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));
    let shown = agent_search(&shard, "Journal of Psychotherapy Integration").unwrap();
    assert!(shown.starts_with("Result 1 (score "));
    assert!(shown.contains("\n\"Journal of Psychotherapy Integration\"\n"));
    assert_eq!(shown.matches("Result ").count(), 3);
    // Only stop words: no terms, no results, no error.
    assert!(shard.search("what was the", 10).unwrap().is_empty());
    // No temporary directories are left next to the shard.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("musique")]);
}

#[test]
fn title_boost_prefers_title_matches() {
    let dir = tempfile::tempdir().unwrap();
    let mut shard = build_musique(&dir.path().join("s"));
    let title_rank = |shard: &Shard| {
        shard
            .search("Adolescence", 20)
            .unwrap()
            .iter()
            .position(|h| h.title == "Adolescence")
    };
    shard.set_title_boost(0.0);
    let without = title_rank(&shard);
    shard.set_title_boost(3.0);
    let with = title_rank(&shard);
    assert_eq!(with, Some(0), "boosted title match must rank first");
    assert!(without.is_none_or(|r| r >= with.unwrap()));
}

#[test]
fn hostile_queries_never_fail() {
    let dir = tempfile::tempdir().unwrap();
    let shard = build_musique(&dir.path().join("s"));
    let corpus_text = std::fs::read_to_string(common::data_file(
        "hipporag-samples/musique_train_corpus.json",
    ))
    .unwrap();
    let big: String = corpus_text.chars().take(100 * 1024).collect();
    let invalid = dir.path().join("query.bin");
    std::fs::write(
        &invalid,
        b"Journal \xff\xfe of \xc3( Mathematical \x80Physics",
    )
    .unwrap();
    let from_file = small_agent_index::search::query_from_bytes(&std::fs::read(&invalid).unwrap());
    let queries = [
        "\"unclosed quote",
        "title:Adolescence",
        "text: : :",
        "[[brackets]] {braces} (parens",
        "AND OR NOT",
        "+-!^~*?\\/",
        "Physics^10 journal~2",
        "",
        "   ",
        "\u{0}\u{1f}\u{202e}",
        "名古屋 Привет مرحبا",
        &big,
        &from_file,
    ];
    for q in queries {
        let started = Instant::now();
        let hits = shard
            .search(q, 10)
            .unwrap_or_else(|e| panic!("query {:?} failed: {e}", &q[..q.len().min(40)]));
        assert!(hits.len() <= 10);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "query took {:?}",
            started.elapsed()
        );
    }
    // An absurd k is clamped to the shard, not allocated.
    assert_eq!(shard.search("journal", usize::MAX).unwrap().len(), {
        let all = shard.search("journal", 1_890).unwrap();
        all.len()
    });
    assert!(shard.search("journal", 0).unwrap().is_empty());
    let hits = shard.search(&from_file, 3).unwrap();
    assert_eq!(hits[0].title, "Journal of Mathematical Physics");
    assert!(!shard.search("title:Adolescence", 3).unwrap().is_empty());
}

fn assert_message(err: &Error, path: &Path) {
    let msg = err.to_string();
    assert!(
        msg.contains(&path.display().to_string()),
        "path missing in: {msg}"
    );
    assert!(
        msg.contains("small-agent index build"),
        "fix missing in: {msg}"
    );
}

#[test]
fn missing_foreign_and_corrupt_directories_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let err = Shard::open(&missing).unwrap_err();
    assert!(matches!(err, Error::Missing { .. }), "{err:?}");
    assert_message(&err, &missing);

    let foreign = dir.path().join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("notes.txt"), "mine").unwrap();
    let err = Shard::open(&foreign).unwrap_err();
    assert!(matches!(err, Error::Foreign { .. }), "{err:?}");
    assert_message(&err, &foreign);
    // And a build refuses to replace it.
    let corpus = common::data_file("hipporag-samples/hotpotqa_train_corpus.json");
    let err = build_shard(
        &corpus,
        Format::Hipporag,
        &foreign,
        &BuildOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(err, Error::Foreign { .. }), "{err:?}");
    assert!(foreign.join("notes.txt").is_file());

    let good = dir.path().join("good");
    build_shard(&corpus, Format::Hipporag, &good, &BuildOptions::default()).unwrap();

    // Garbled metadata.
    let bad_meta = dir.path().join("bad-meta");
    copy_dir(&good, &bad_meta);
    std::fs::write(bad_meta.join(META_FILE), b"{ half").unwrap();
    let err = Shard::open(&bad_meta).unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");
    assert_message(&err, &bad_meta);

    // Index files damaged: every segment file truncated.
    let bad_index = dir.path().join("bad-index");
    copy_dir(&good, &bad_index);
    let mut damaged = 0;
    for e in std::fs::read_dir(&bad_index).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name != META_FILE && !name.starts_with('.') {
            let bytes = std::fs::read(&p).unwrap();
            std::fs::write(&p, &bytes[..bytes.len() / 3]).unwrap();
            damaged += 1;
        }
    }
    assert!(damaged > 2);
    let err = Shard::open(&bad_index).unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");
    assert_message(&err, &bad_index);

    // One kind of file overwritten with a few bytes (tantivy asserts on these rather than
    // returning an error; the shard must still report itself as corrupt).
    for ext in ["store", "term", "idx", "pos", "fast", "fieldnorm"] {
        let garbled = dir.path().join(format!("garbled-{ext}"));
        copy_dir(&good, &garbled);
        for e in std::fs::read_dir(&garbled).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == ext) {
                std::fs::write(&p, b"garbage").unwrap();
            }
        }
        let opened = Shard::open(&garbled);
        let err = match opened {
            Err(e) => e,
            // Some files are only read by a search.
            Ok(shard) => shard.search("Lilu demon", 3).unwrap_err(),
        };
        assert!(matches!(err, Error::Corrupt { .. }), "{ext}: {err:?}");
        assert_message(&err, &garbled);
    }

    // Tantivy's own meta.json gone.
    let no_meta = dir.path().join("no-tantivy-meta");
    copy_dir(&good, &no_meta);
    std::fs::remove_file(no_meta.join("meta.json")).unwrap();
    let err = Shard::open(&no_meta).unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");

    // Metadata from a future schema.
    let future = dir.path().join("future");
    copy_dir(&good, &future);
    let text = std::fs::read_to_string(future.join(META_FILE)).unwrap();
    let text = text.replace("\"schema_version\": 1", "\"schema_version\": 99");
    std::fs::write(future.join(META_FILE), text).unwrap();
    let err = Shard::open(&future).unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains("schema version 99"));

    assert!(Shard::open(&good).is_ok());
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

const CHILD_ENV: &str = "SMALL_AGENT_INDEX_KILLED_BUILD_OUT";

/// Run only as the child of `killed_build_leaves_previous_shard_intact`: starts a build that
/// never ends, into the directory named by the environment.
#[test]
#[ignore = "helper process for killed_build_leaves_previous_shard_intact"]
fn endless_build_child() {
    let out = std::env::var(CHILD_ENV).expect("run by the parent test only");
    let endless = (0u64..).map(|i| Passage {
        id: i.to_string(),
        title: format!("Endless {i}"),
        text: "a passage that keeps the build busy until it is killed ".repeat(4),
    });
    // A small indexing budget makes tantivy flush segments to disk within a second.
    let opts = BuildOptions {
        heap_bytes: 30_000_000,
        threads: 2,
        ..BuildOptions::default()
    };
    let _ = build_shard_from_iter(endless, "endless", Path::new(&out), &opts);
    unreachable!("the endless build cannot finish");
}

#[test]
fn killed_build_leaves_previous_shard_intact() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("shard");
    let before = build_musique(&out);
    let expected: Vec<String> = before
        .search("Journal of Mathematical Physics", 10)
        .unwrap()
        .into_iter()
        .map(|h| h.id)
        .collect();
    drop(before);

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "endless_build_child", "--ignored", "--nocapture"])
        .env(CHILD_ENV, &out)
        .spawn()
        .unwrap();
    let tmp = dir.path().join(format!(".shard.building-{}", child.id()));
    // Wait until the child has flushed a segment (its postings file) into its temp dir.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let flushed = std::fs::read_dir(&tmp)
            .map(|d| {
                d.flatten()
                    .any(|e| e.path().extension().is_some_and(|x| x == "idx"))
            })
            .unwrap_or(false);
        if flushed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "child build never started writing"
        );
        assert!(child.try_wait().unwrap().is_none(), "child exited early");
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap(); // SIGKILL: no destructor, no cleanup
    child.wait().unwrap();

    assert!(
        tmp.is_dir(),
        "the killed build's leftovers should still be there"
    );
    let after = Shard::open(&out).expect("previous shard must still open");
    assert_eq!(after.len(), 1_890);
    let got: Vec<String> = after
        .search("Journal of Mathematical Physics", 10)
        .unwrap()
        .into_iter()
        .map(|h| h.id)
        .collect();
    assert_eq!(got, expected);
    drop(after);

    // The next build replaces the shard and removes the dead build's directory.
    let corpus = common::data_file("hipporag-samples/hotpotqa_train_corpus.json");
    build_shard(&corpus, Format::Hipporag, &out, &BuildOptions::default()).unwrap();
    assert!(!tmp.exists(), "stale build directory not cleaned up");
    assert_eq!(Shard::open(&out).unwrap().len(), 994);
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("shard")]);
}
