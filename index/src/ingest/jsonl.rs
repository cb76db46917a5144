//! JSONL: `{id?, title, text}` or the Search-R1/FlashRAG form `{id, contents}`.

use std::io::BufRead;

use serde::Deserialize;

use super::{Ctx, Passage};
use crate::error::{IoContext, Result};

#[derive(Deserialize)]
struct Record {
    #[serde(default)]
    id: Option<serde_json::Value>,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    contents: Option<String>,
}

pub(super) fn read<R: BufRead>(mut reader: R, ctx: &mut Ctx<'_>) -> Result<()> {
    // Lines are read as bytes so that one line of invalid UTF-8 is one malformed record,
    // not an I/O error that ends the whole build.
    let mut line = Vec::new();
    let mut number = 0u64;
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line).at(ctx.path)?;
        if n == 0 {
            return Ok(());
        }
        number += 1;
        let Ok(text) = std::str::from_utf8(&line) else {
            ctx.malformed(number, "invalid UTF-8")?;
            continue;
        };
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        match parse(text, number) {
            Ok(p) => ctx.document(p)?,
            Err(reason) => ctx.malformed(number, reason)?,
        }
    }
}

fn parse(line: &str, number: u64) -> Result<Passage, String> {
    let rec: Record = serde_json::from_str(line).map_err(|e| format!("invalid JSON: {e}"))?;
    let id = match rec.id {
        Some(serde_json::Value::String(s)) => s,
        Some(serde_json::Value::Number(n)) => n.to_string(),
        Some(other) => return Err(format!("id must be a string or number, got {other}")),
        // Without an id the line number is stable for a given file.
        None => number.to_string(),
    };
    let (title, text) = match (rec.title, rec.text, rec.contents) {
        (title, Some(text), _) => (title.unwrap_or_default(), text),
        (None, None, Some(contents)) => split_contents(&contents),
        (_, None, _) => return Err("no \"text\" (or \"contents\") field".into()),
    };
    if title.trim().is_empty() && text.trim().is_empty() {
        return Err("empty title and text".into());
    }
    Ok(Passage { id, title, text })
}

/// Splits FlashRAG's `"Title"\ntext`; a first line without quotes is taken as the title as is.
pub(crate) fn split_contents(contents: &str) -> (String, String) {
    let (first, rest) = contents.split_once('\n').unwrap_or((contents, ""));
    let first = first.trim();
    let title = first
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(first);
    (title.to_string(), rest.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contents_form_is_split_into_title_and_text() {
        let p = parse(
            r#"{"id": "7", "contents": "\"Aaron\"\nAaron is a prophet."}"#,
            1,
        )
        .unwrap();
        assert_eq!(p.id, "7");
        assert_eq!(p.title, "Aaron");
        assert_eq!(p.text, "Aaron is a prophet.");
    }

    #[test]
    fn missing_id_takes_line_number_and_missing_text_is_rejected() {
        let p = parse(r#"{"title": "T", "text": "x"}"#, 42).unwrap();
        assert_eq!(p.id, "42");
        assert!(parse(r#"{"title": "T"}"#, 1).is_err());
        assert!(parse(r#"{"id": [1], "text": "x"}"#, 1).is_err());
    }
}
