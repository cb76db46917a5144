//! The passages `web_search` returned during a run, numbered as sources.
use serde::Serialize;

/// One passage the agent's search returned.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Passage {
    /// Its number among the run's sources (1-based, in order of first appearance).
    pub n: usize,
    /// The passage's title.
    pub title: String,
    /// Its text.
    pub text: String,
    /// The retrieval score.
    pub score: f32,
}

/// Parses the tool's output (`small_agent_index::agent_search`'s format: per passage a line
/// `Result R (score S):`, the title in double quotes, then the text).
pub fn parse_passages(found: &str) -> Vec<(String, String, f32)> {
    let mut out: Vec<(String, Vec<&str>, f32)> = Vec::new();
    let mut expect_title = false;
    for line in found.lines() {
        if let Some(score) = header_score(line) {
            out.push((String::new(), Vec::new(), score));
            expect_title = true;
            continue;
        }
        let Some(last) = out.last_mut() else { continue };
        if expect_title {
            last.0 = line.trim().trim_matches('"').to_owned();
            expect_title = false;
        } else {
            last.1.push(line);
        }
    }
    out.into_iter()
        .map(|(t, body, s)| (t, body.join("\n").trim().to_owned(), s))
        .collect()
}

fn header_score(line: &str) -> Option<f32> {
    let rest = line.strip_prefix("Result ")?;
    let (rank, rest) = rest.split_once(" (score ")?;
    rank.parse::<usize>().ok()?;
    rest.strip_suffix("):")?.parse().ok()
}

/// The sources of one run: numbering, and the numbers the current step found.
#[derive(Debug, Default)]
pub struct SourceList {
    all: Vec<Passage>,
    step: Vec<usize>,
}

impl SourceList {
    /// Adds a search's passages; returns them with their numbers (a passage seen before
    /// keeps its number).
    pub fn add(&mut self, found: &str) -> Vec<Passage> {
        let mut got = Vec::new();
        for (title, text, score) in parse_passages(found) {
            let p = match self.all.iter().find(|p| p.title == title && p.text == text) {
                Some(p) => p.clone(),
                None => {
                    let p = Passage {
                        n: self.all.len() + 1,
                        title,
                        text,
                        score,
                    };
                    self.all.push(p.clone());
                    p
                }
            };
            if !self.step.contains(&p.n) {
                self.step.push(p.n);
            }
            got.push(p);
        }
        got
    }

    /// The numbers found since the last call.
    pub fn take_step(&mut self) -> Vec<usize> {
        std::mem::take(&mut self.step)
    }

    /// Every source of the run.
    pub fn all(&self) -> &[Passage] {
        &self.all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_agent_format_and_numbers_once() {
        let found = "Result 1 (score 10.000):\n\"Paris\"\nCapital of France.\n\nSecond line.\n\n\
                     Result 2 (score 5.500):\n\"Lyon\"\nA city.";
        let p = parse_passages(found);
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].0, "Paris");
        assert_eq!(p[0].1, "Capital of France.\n\nSecond line.");
        assert_eq!(p[1], ("Lyon".into(), "A city.".into(), 5.5));
        let mut list = SourceList::default();
        assert_eq!(
            list.add(found).iter().map(|p| p.n).collect::<Vec<_>>(),
            [1, 2]
        );
        assert_eq!(list.take_step(), [1, 2]);
        let again = list.add("Result 1 (score 3.000):\n\"Lyon\"\nA city.");
        assert_eq!(again[0].n, 2);
        assert_eq!(list.take_step(), [2]);
        assert_eq!(list.all().len(), 2);
        assert!(parse_passages("no results").is_empty());
    }
}
