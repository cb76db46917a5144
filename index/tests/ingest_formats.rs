//! Every input format, read from real data.

mod common;

use std::io::Write;

use small_agent_index::{read_passages, Error, Format, IngestOptions, Passage};

fn read_all(
    path: &std::path::Path,
    format: Format,
) -> (Vec<Passage>, small_agent_index::IngestStats) {
    let mut out = Vec::new();
    let stats = read_passages(path, format, &IngestOptions::default(), &mut |p| {
        out.push(p);
        Ok(())
    })
    .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    (out, stats)
}

#[test]
fn hotpot_distractor_corpus_jsonl() {
    let path = common::data_file("hotpotqa-distractor/derived_corpus_paragraphs.jsonl");
    assert_eq!(Format::detect(&path).unwrap(), Format::Jsonl);
    let (ps, stats) = read_all(&path, Format::Hotpot);
    assert_eq!(stats.documents, 9_748);
    assert_eq!(stats.passages, 9_748);
    assert_eq!(stats.malformed_count, 0);
    assert_eq!(stats.bytes, std::fs::metadata(&path).unwrap().len());
    assert_eq!(ps[0].id, "hp000000");
    assert_eq!(ps[0].title, "Meet Corliss Archer");
    assert!(ps[0].text.starts_with("Meet Corliss Archer, a program"));
}

#[test]
fn hipporag_title_to_sentences_map() {
    let path = common::data_file("hipporag-samples/hotpotqa_train_corpus.json");
    assert_eq!(Format::detect(&path).unwrap(), Format::Hipporag);
    let (ps, stats) = read_all(&path, Format::Hipporag);
    assert_eq!(stats.documents, 994);
    let demon = ps
        .iter()
        .find(|p| p.title == "Demon Dice")
        .expect("Demon Dice");
    // Sentences are joined verbatim (HippoRAG keeps their leading spaces).
    assert!(demon
        .text
        .starts_with("Demon Dice, originally published as Chaos Progenitus"));
    assert!(demon.text.contains("Tim Brown. In it, each player"));
}

#[test]
fn hipporag_list_and_twowiki_corpus() {
    let musique = common::data_file("hipporag-samples/musique_train_corpus.json");
    let (ps, stats) = read_all(&musique, Format::Hipporag);
    assert_eq!(stats.documents, 1_890);
    assert_eq!(ps[0].title, "Journal of Mathematical Physics");
    let twowiki = common::data_file("twowiki-corpus/2wikimultihopqa_corpus.json");
    let (ps, stats) = read_all(&twowiki, Format::Hipporag);
    assert_eq!(stats.documents, 6_119);
    assert_eq!(ps[0].title, "Teutberga");
    assert_eq!(stats.malformed_count, 0);
}

#[test]
fn ovos_summaries_default_shard_source() {
    let path = common::asset("wiki-summaries-en", "summaries_en-us.json");
    assert_eq!(Format::detect(&path).unwrap(), Format::Ovos);
    let (ps, stats) = read_all(&path, Format::Ovos);
    assert_eq!(stats.documents, 10_033);
    let p = ps
        .iter()
        .find(|p| p.title == "20th-century classical music")
        .expect("first article");
    assert!(p
        .text
        .starts_with("20th-century classical music is Western art music"));
}

#[test]
fn mediawiki_xml_dump_is_cleaned_and_split() {
    let path = common::asset("enwiki-dump-excerpt", "enwiki-excerpt.xml.bz2");
    assert_eq!(Format::detect(&path).unwrap(), Format::WikiXml);
    let (ps, stats) = read_all(&path, Format::WikiXml);
    assert!(stats.documents >= 20, "only {} articles", stats.documents);
    assert!(
        stats.passages > stats.documents * 5,
        "articles were not split"
    );
    // DPR-style: every passage but an article's last is exactly 100 words.
    let full = ps
        .iter()
        .filter(|p| p.text.split_whitespace().count() == 100)
        .count();
    assert!(
        full * 10 > ps.len() * 8,
        "{full} of {} passages have 100 words",
        ps.len()
    );
    assert!(ps.iter().all(|p| p.text.split_whitespace().count() <= 100));
    for p in &ps {
        for markup in ["{{", "}}", "[[", "]]", "<ref", "'''", "&nbsp;", "{|"] {
            assert!(
                !p.text.contains(markup),
                "{markup} left in {}: {}",
                p.title,
                p.text
            );
        }
    }
    let anarchism = ps
        .iter()
        .find(|p| p.title == "Anarchism")
        .expect("Anarchism article");
    assert!(anarchism.id.ends_with("_0"));
    assert!(
        anarchism
            .text
            .to_lowercase()
            .contains("anarchism is a political philosophy"),
        "{}",
        anarchism.text
    );
    // Redirect pages (AccessibleComputing is one) are not articles.
    assert!(!ps.iter().any(|p| p.title == "AccessibleComputing"));
}

/// FlashRAG `contents` records, DPR TSV, and malformed lines, all made from real passages.
#[test]
fn jsonl_contents_form_and_dpr_tsv_with_malformed_lines() {
    let musique = common::data_file("hipporag-samples/musique_train_corpus.json");
    let (real, _) = read_all(&musique, Format::Hipporag);
    let dir = tempfile::tempdir().unwrap();

    let jsonl = dir.path().join("flashrag.jsonl");
    let mut f = std::fs::File::create(&jsonl).unwrap();
    for (i, p) in real.iter().take(50).enumerate() {
        let contents = format!("\"{}\"\n{}", p.title, p.text);
        writeln!(
            f,
            "{}",
            serde_json::json!({"id": i.to_string(), "contents": contents})
        )
        .unwrap();
    }
    writeln!(f, "{{not json").unwrap(); // line 51
    f.write_all(b"{\"title\": \"x\", \"text\": \"\xff\xfe\"}\n")
        .unwrap(); // line 52
    writeln!(f, "{}", serde_json::json!({"title": "no text"})).unwrap(); // line 53
    drop(f);
    let (ps, stats) = read_all(&jsonl, Format::Jsonl);
    assert_eq!(stats.documents, 50);
    assert_eq!(ps[3].title, real[3].title);
    assert_eq!(ps[3].text, real[3].text.trim());
    assert_eq!(stats.malformed_count, 3);
    let lines: Vec<u64> = stats.malformed.iter().map(|m| m.line).collect();
    assert_eq!(lines, vec![51, 52, 53]);
    assert!(stats.summary().contains("3 malformed"));

    let strict = IngestOptions {
        strict: true,
        ..IngestOptions::default()
    };
    match read_passages(&jsonl, Format::Jsonl, &strict, &mut |_| Ok(())) {
        Err(Error::Malformed { line, path, .. }) => {
            assert_eq!(line, 51);
            assert_eq!(path, jsonl);
        }
        other => panic!("strict mode must fail on line 51, got {other:?}"),
    }

    let tsv = dir.path().join("psgs.tsv");
    let mut f = std::fs::File::create(&tsv).unwrap();
    writeln!(f, "id\ttext\ttitle").unwrap();
    for (i, p) in real.iter().take(100).enumerate() {
        let text = format!("\"{}\"", p.text.replace('"', "\"\""));
        writeln!(f, "{}\t{}\t{}", i + 1, text, p.title).unwrap();
    }
    writeln!(f, "only-one-field").unwrap();
    drop(f);
    assert_eq!(Format::detect(&tsv).unwrap(), Format::DprTsv);
    let (ps, stats) = read_all(&tsv, Format::DprTsv);
    assert_eq!(stats.documents, 100);
    assert_eq!(ps[7].id, "8");
    assert_eq!(ps[7].title, real[7].title);
    assert_eq!(ps[7].text, real[7].text.trim());
    assert_eq!(stats.malformed.len(), 1);
    assert_eq!(stats.malformed[0].line, 102);
}

/// Bad elements of a single-document JSON corpus are skipped by record number; a truncated
/// document is an error naming the file.
#[test]
fn json_document_bad_elements_and_truncation() {
    let twowiki = common::data_file("twowiki-corpus/2wikimultihopqa_corpus.json");
    let text = std::fs::read_to_string(&twowiki).unwrap();
    let dir = tempfile::tempdir().unwrap();

    let mixed = dir.path().join("mixed.json");
    let items: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    let mut doc = vec![
        items[0].clone(),
        serde_json::json!(5),
        serde_json::json!({"title": "x"}),
    ];
    doc.extend(items[1..20].iter().cloned());
    std::fs::write(&mixed, serde_json::to_string(&doc).unwrap()).unwrap();
    let (ps, stats) = read_all(&mixed, Format::Hipporag);
    assert_eq!(stats.documents, 20);
    assert_eq!(ps[1].title, items[1]["title"].as_str().unwrap());
    let records: Vec<u64> = stats.malformed.iter().map(|m| m.line).collect();
    assert_eq!(records, vec![2, 3]);

    let truncated = dir.path().join("truncated.json");
    std::fs::write(&truncated, &text[..text.len() / 2]).unwrap();
    let mut seen = 0;
    let err = read_passages(
        &truncated,
        Format::Hipporag,
        &IngestOptions::default(),
        &mut |_| {
            seen += 1;
            Ok(())
        },
    )
    .unwrap_err();
    assert!(matches!(err, Error::Input { .. }), "{err:?}");
    assert!(err.to_string().contains("truncated.json"));
    assert!(seen > 1000, "passages before the cut are still delivered");
}
