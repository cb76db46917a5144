//! Loaders over every question file of the shared data, and scoring on real answer pairs
//! taken from the train files and the HippoRAG samples (never from the test files, whose
//! answers are only counted and checked for shape here).
use std::path::PathBuf;

use small_agent_eval::{
    dataset::{self, Kind, KNOWN},
    math::{extract_math_answer, math_equal, numeric_value},
    score::score_factual,
};

/// `../shared/data` relative to the repository root; missing data fails, never skips.
fn data_dir() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data");
    assert!(
        d.join("README.md").is_file(),
        "the shared data directory {} is missing: the evaluation tests need ../shared/data \
         beside the repository",
        d.display()
    );
    d
}

fn load(name: &str) -> dataset::Dataset {
    dataset::load_spec(name, &data_dir()).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn every_known_file_loads_with_its_size_and_kind() {
    // (name, items, kind, items with their own paragraphs)
    let expected: &[(&str, usize, Kind, usize)] = &[
        ("hotpotqa", 500, Kind::Factual, 0),
        ("musique", 500, Kind::Factual, 0),
        ("2wikimultihopqa", 500, Kind::Factual, 0),
        ("bamboogle", 125, Kind::Factual, 0),
        ("math500", 500, Kind::Math, 0),
        ("gsm-hard", 500, Kind::Math, 0),
        ("aime", 90, Kind::Math, 0),
        ("olymmath", 200, Kind::Math, 0),
        ("hotpotqa-train", 1000, Kind::Factual, 0),
        // Two items of each of these files have an empty or null answer and are left out.
        ("math-train", 998, Kind::Math, 0),
        ("math-medium-train", 998, Kind::Math, 0),
        ("hotpotqa-distractor", 500, Kind::Factual, 500),
        ("hotpotqa-distractor-amor", 500, Kind::Factual, 498),
        ("hipporag-hotpotqa", 100, Kind::Factual, 100),
        ("hipporag-musique", 100, Kind::Factual, 100),
    ];
    assert_eq!(
        expected.len(),
        KNOWN.len(),
        "a known dataset has no expectation"
    );
    for &(name, n, kind, paragraphs) in expected {
        let d = load(name);
        assert_eq!(d.name, name);
        assert_eq!(d.items.len(), n, "{name}: item count");
        assert!(d.items.iter().all(|i| i.kind == kind), "{name}: kind");
        assert!(
            d.items.iter().all(|i| !i.question.trim().is_empty()
                && !i.answers.is_empty()
                && i.answers.iter().all(|a| !a.trim().is_empty())),
            "{name}: every item has a question and an answer"
        );
        assert_eq!(
            d.items.iter().filter(|i| !i.paragraphs.is_empty()).count(),
            paragraphs,
            "{name}: items with own paragraphs (two AMOR items have an empty context)"
        );
        assert!(
            d.items
                .iter()
                .all(|i| i.id.trim() == i.id && !i.id.is_empty()),
            "{name}: ids are trimmed and non-empty"
        );
    }
    assert_eq!(load("math-medium-train").skipped_without_answer, 2);
    assert_eq!(load("math-train").skipped_without_answer, 2);
}

#[test]
fn paragraphs_and_aliases_are_read() {
    let h = load("hipporag-hotpotqa");
    let first = &h.items[0];
    assert_eq!(first.id, "5a77ec115542992a6e59dff7");
    assert_eq!(first.answers, ["a spirit"]);
    assert_eq!(first.paragraphs.len(), 10);
    assert_eq!(first.paragraphs[0].title, "Demon Dice");
    assert!(first.paragraphs[0]
        .text
        .starts_with("Demon Dice, originally published"));
    let m = load("hipporag-musique");
    assert_eq!(m.items[0].answers, ["G. Stanley Hall", "Stanley Hall"]);
    assert_eq!(m.items[0].paragraphs.len(), 20);
    let own = dataset::own_paragraphs(&h.items);
    assert!(own.len() > 900 && own.len() <= 1000, "{}", own.len());
    // The IRCoT file keeps the gold spans and its 10 contexts.
    let ircot = load("hotpotqa-distractor");
    assert_eq!(ircot.items[0].answers, ["Chief of Protocol"]);
    assert_eq!(ircot.items[0].paragraphs.len(), 10);
    // GSM-Hard's float answers lose their ".0".
    assert!(load("gsm-hard")
        .items
        .iter()
        .all(|i| !i.answers[0].ends_with(".0")));
}

#[test]
fn corpora_and_other_files_are_refused_with_a_reason() {
    let d = data_dir();
    for f in [
        "hotpotqa-distractor/agent_distillation_hotpotqa_test_coverage.json",
        "hipporag-samples/hotpotqa_train_corpus.json",
        "hotpotqa-distractor/derived_corpus_paragraphs.jsonl",
    ] {
        let err = dataset::load(&d.join(f)).expect_err(f).to_string();
        assert!(err.contains(f.rsplit('/').next().unwrap()), "{err}");
    }
    let err = dataset::load_spec("no-such-set", &d)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("hotpotqa") && err.contains("gsm-hard"),
        "{err}"
    );
}

#[test]
fn generic_jsonl_with_numbers_lists_and_kinds() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("mine.jsonl");
    std::fs::write(
        &p,
        "{\"id\": 1, \"question\": \"2+2?\", \"answer\": 4, \"kind\": \"math\"}\n\
         {\"id\": \"b\", \"question\": \"Capital of France?\", \"answer\": [\"Paris\", \"City of Paris\"]}\n\n",
    )
    .unwrap();
    let d = dataset::load(&p).unwrap();
    assert_eq!(d.layout, "generic");
    assert_eq!(d.name, "mine");
    assert_eq!(d.items[0].answers, ["4"]);
    assert_eq!(d.items[0].kind, Kind::Math);
    assert_eq!(d.items[1].answers, ["Paris", "City of Paris"]);
    assert_eq!(d.items[1].kind, Kind::Factual);
    // A single record is a JSONL file too (it also parses as one JSON object).
    std::fs::write(&p, "{\"id\": 1, \"question\": \"q\", \"answer\": \"a\"}\n").unwrap();
    assert_eq!(dataset::load(&p).unwrap().items.len(), 1);
    std::fs::write(&p, "{\"id\": 1, \"question\": \"q\", \"answer\": \"a\"}\n{\"id\": 1, \"question\": \"q\", \"answer\": \"b\"}\n").unwrap();
    assert!(dataset::load(&p)
        .unwrap_err()
        .to_string()
        .contains("duplicate id"));
}

/// The gold answer of item `id` of a train file, checked to be `expect`, so the pair is
/// real data.
fn gold(set: &str, id: &str, expect: &str) -> String {
    let d = load(set);
    let item = d
        .items
        .iter()
        .find(|i| i.id == id)
        .unwrap_or_else(|| panic!("{set} has no item {id}"));
    assert_eq!(item.answers[0], expect, "{set} item {id}");
    item.answers[0].clone()
}

#[test]
fn math_pairs_from_the_train_files() {
    let s = |p: &str, g: &str| math_equal(p, g, None).equal;
    // \dfrac and its decimal / slash forms.
    let g = gold("math-train", "165", "\\dfrac{11}{16}");
    assert!(
        s("0.6875", &g)
            && s("11/16", &g)
            && s("\\frac{11}{16}", &g)
            && s("\\boxed{\\tfrac{11}{16}}".trim_start_matches("\\boxed"), &g)
    );
    assert!(!s("0.6", &g));
    // \sqrt in several spellings.
    let g = gold("math-train", "48", "\\frac{2\\sqrt{3}}{3}");
    assert!(s("2*sqrt(3)/3", &g) && s("\\frac{2}{\\sqrt{3}}", &g) && s("1.1547", &g));
    assert!(!s("\\frac{\\sqrt{3}}{3}", &g));
    let g = gold("math-train", "147", "10\\sqrt3");
    assert!(s("10\\sqrt{3}", &g) && s("17.3205", &g));
    // Intervals and unions: brackets matter.
    let g = gold("math-train", "0", "(-\\infty,-8]\\cup [8,\\infty)");
    assert!(s("(-\\infty, -8] \\cup [8, \\infty)", &g));
    assert!(!s("(-\\infty, -8) \\cup (8, \\infty)", &g));
    let g = gold(
        "math-train",
        "40",
        "[3, 4) \\cup \\left(4, \\frac{64}{11}\\right]",
    );
    assert!(s("[3,4)\\cup(4,64/11]", &g));
    // Tuples.
    let g = gold(
        "math-train",
        "26",
        "\\left( \\frac{31}{10}, 0, \\frac{1}{5} \\right)",
    );
    assert!(s("(3.1, 0, 0.2)", &g) && !s("(0, 3.1, 0.2)", &g));
    // Units, text and percent.
    let g = gold("math-train", "121", "4319 \\text{ dollars}");
    assert!(s("4319", &g) && s("\\$4,319", &g));
    let g = gold("math-train", "310", "237.5\\%");
    assert!(s("237.5", &g) && s("2.375", &g));
    // Unordered solution lists.
    let g = gold("math-train", "254", "1,2,10");
    assert!(s("10, 1, 2", &g) && !s("1, 2", &g));
    // Thousands separators with LaTeX thin spaces, and multiple-choice letters.
    let g = gold("math-medium-train", "39", "12,\\!650");
    assert!(s("12650", &g) && s("12,650", &g));
    let g = gold("math-medium-train", "133", "\\text{(C)}");
    assert!(s("C", &g) && s("(C)", &g) && !s("B", &g));
    // The numeric evaluator sees through LaTeX.
    assert!((numeric_value("\\frac{\\sqrt{3}}{2}").unwrap() - 0.8660254).abs() < 1e-6);
    // Extraction from a reply with nested braces.
    let (a, _) = extract_math_answer("So $x = \\boxed{\\frac{2\\sqrt{3}}{3}}$.");
    assert!(s(
        &a.unwrap(),
        &gold("math-train", "48", "\\frac{2\\sqrt{3}}{3}")
    ));
}

#[test]
fn factual_pairs_from_the_train_files() {
    let g = gold(
        "hotpotqa-train",
        "5a8d7341554299441c6b9fe5",
        "President Richard Nixon",
    );
    let sc = score_factual("Richard Nixon", std::slice::from_ref(&g));
    assert!(!sc.em && (sc.f1 - 0.8).abs() < 1e-9 && !sc.contains);
    let sc = score_factual("It was President Richard Nixon.", std::slice::from_ref(&g));
    assert!(!sc.em && sc.contains);
    assert!(score_factual("president richard nixon", &[g]).em);
    // Yes / no answers: case and punctuation do not matter, the word does.
    let yes = gold("hipporag-hotpotqa", "5ae40c465542996836b02c25", "yes");
    assert!(score_factual("Yes.", std::slice::from_ref(&yes)).em);
    let sc = score_factual("no", &[yes]);
    assert!(!sc.em && sc.f1 == 0.0);
    let no = gold("hotpotqa-train", "5a8efd3c55429918e830d179", "no");
    assert!(score_factual("No", &[no]).em);
    // Aliases count.
    let m = load("hipporag-musique");
    assert!(score_factual("Stanley Hall", &m.items[0].answers).em);
    // Articles and punctuation are ignored.
    let g = gold(
        "hotpotqa-train",
        "5a89372855429951533612e6",
        "6.213 km long",
    );
    assert!(score_factual("6.213 km long", std::slice::from_ref(&g)).em);
    assert!(score_factual("6.213 km", &[g]).f1 > 0.7);
}
