//! Stop strings over a token stream: text is released only once it can no longer be the
//! start of a stop string, so a caller never sees any part of one.

/// Holds back the tail of the generated text that could still grow into a stop string.
#[derive(Debug, Default)]
pub struct StopBuffer<'s> {
    stops: Vec<&'s str>,
    pending: String,
}

impl<'s> StopBuffer<'s> {
    /// A buffer for these stop strings (empty ones are ignored).
    pub fn new(stops: &'s [String]) -> Self {
        Self {
            stops: stops
                .iter()
                .map(String::as_str)
                .filter(|s| !s.is_empty())
                .collect(),
            pending: String::new(),
        }
    }

    /// Adds generated text. Returns the text that is safe to emit and, when a stop string
    /// was completed, that stop string (the text after it is dropped).
    pub fn push(&mut self, text: &str) -> (String, Option<&'s str>) {
        self.pending.push_str(text);
        let earliest = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s).map(|i| (i, *s)))
            .min_by_key(|(i, _)| *i);
        if let Some((i, stop)) = earliest {
            let emit = self.pending[..i].to_owned();
            self.pending.clear();
            return (emit, Some(stop));
        }
        let hold = self.held_suffix_len();
        let cut = self.pending.len() - hold;
        let emit = self.pending[..cut].to_owned();
        self.pending.drain(..cut);
        (emit, None)
    }

    /// Ends the stream: whatever was held back is emitted (it never became a stop string).
    pub fn finish(&mut self, tail: &str) -> String {
        self.pending.push_str(tail);
        std::mem::take(&mut self.pending)
    }

    /// Length in bytes of the longest suffix of `pending` that is a proper prefix of a stop
    /// string, at a char boundary.
    fn held_suffix_len(&self) -> usize {
        let p = &self.pending;
        self.stops
            .iter()
            .map(|s| {
                (1..s.len().min(p.len() + 1))
                    .rev()
                    .find(|&n| {
                        p.is_char_boundary(p.len() - n)
                            && s.is_char_boundary(n)
                            && p.ends_with(&s[..n])
                    })
                    .unwrap_or(0)
            })
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, Option<String>) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut b = StopBuffer::new(&stops);
        let mut out = String::new();
        for p in pieces {
            let (emit, hit) = b.push(p);
            out.push_str(&emit);
            if let Some(h) = hit {
                return (out, Some(h.to_owned()));
            }
        }
        out.push_str(&b.finish(""));
        (out, None)
    }

    #[test]
    fn stop_split_across_pieces_is_never_emitted() {
        let stops = ["<end_code>".to_owned()];
        let mut b = StopBuffer::new(&stops);
        assert_eq!(
            b.push("print(1)\n```<en"),
            ("print(1)\n```".to_owned(), None)
        );
        assert_eq!(b.push("d_co"), (String::new(), None));
        assert_eq!(b.push("de>tail"), (String::new(), Some("<end_code>")));
    }

    #[test]
    fn earliest_stop_wins_and_text_after_it_is_dropped() {
        assert_eq!(
            run(
                &["Observation:", "<end_code>"],
                &["a<end_code>b Observation:"]
            ),
            ("a".to_owned(), Some("<end_code>".to_owned()))
        );
    }

    #[test]
    fn a_false_start_is_released() {
        assert_eq!(
            run(&["<end_code>"], &["x <e", "nd", "!"]),
            ("x <end!".to_owned(), None)
        );
        assert_eq!(run(&["<end_code>"], &["x <en"]), ("x <en".to_owned(), None));
    }

    #[test]
    fn multibyte_text_is_split_only_at_char_boundaries() {
        assert_eq!(run(&["éé"], &["aé", "b"]), ("aéb".to_owned(), None));
        assert_eq!(
            run(&["éé"], &["aé", "é"]),
            ("a".to_owned(), Some("éé".to_owned()))
        );
    }

    #[test]
    fn no_stops_passes_everything_through() {
        assert_eq!(run(&[], &["a", "b"]), ("ab".to_owned(), None));
        assert_eq!(run(&[""], &["a"]), ("a".to_owned(), None));
    }
}
