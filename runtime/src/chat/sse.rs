//! Server-Sent Events as OpenAI-compatible servers stream chat completions: `data: {json}`
//! lines separated by blank lines, ended by `data: [DONE]`.

/// What one line of an event stream holds.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SseLine<'a> {
    /// A `data:` payload (JSON for chat chunks).
    Data(&'a str),
    /// `data: [DONE]`: the stream is complete.
    Done,
    /// A blank line, a comment (`: keep-alive`) or a field we do not use (`event:`, `id:`).
    Other,
}

/// Classifies one line (without its line break).
pub(crate) fn parse_line(line: &str) -> SseLine<'_> {
    let line = line.trim_end_matches(['\r', '\n']);
    let Some(rest) = line.strip_prefix("data:") else {
        return SseLine::Other;
    };
    // The field value starts after one optional space.
    let payload = rest.strip_prefix(' ').unwrap_or(rest);
    if payload.trim() == "[DONE]" {
        SseLine::Done
    } else if payload.trim().is_empty() {
        SseLine::Other
    } else {
        SseLine::Data(payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_done_and_other_lines_are_told_apart() {
        assert_eq!(
            parse_line("data: {\"a\":1}\r\n"),
            SseLine::Data("{\"a\":1}")
        );
        assert_eq!(parse_line("data:{}"), SseLine::Data("{}"));
        assert_eq!(parse_line("data: [DONE]"), SseLine::Done);
        assert_eq!(parse_line(": keep-alive"), SseLine::Other);
        assert_eq!(parse_line(""), SseLine::Other);
        assert_eq!(parse_line("event: error"), SseLine::Other);
        assert_eq!(parse_line("data: "), SseLine::Other);
    }
}
