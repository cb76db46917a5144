//! DPR TSV (`psgs_w100.tsv`): a header naming the columns, then one passage per line.

use std::io::BufRead;

use super::{Ctx, Passage};
use crate::error::{IoContext, Result};

pub(super) fn read<R: BufRead>(mut reader: R, ctx: &mut Ctx<'_>) -> Result<()> {
    let mut line = Vec::new();
    let mut number = 0u64;
    // DPR's own file is `id text title`; the header is honoured when it orders them otherwise.
    let mut cols = (0usize, 1usize, 2usize);
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
        let text = text.trim_end_matches(['\n', '\r']);
        if text.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = text.split('\t').collect();
        if number == 1 {
            let lower: Vec<String> = fields.iter().map(|f| f.trim().to_lowercase()).collect();
            let pos = |name: &str| lower.iter().position(|f| f == name);
            if let (Some(i), Some(t), Some(ti)) = (pos("id"), pos("text"), pos("title")) {
                cols = (i, t, ti);
                continue;
            }
            // No header: treat the first line as data in DPR's column order.
        }
        let needed = cols.0.max(cols.1).max(cols.2) + 1;
        if fields.len() < needed {
            ctx.malformed(
                number,
                format!(
                    "expected {needed} tab-separated fields, got {}",
                    fields.len()
                ),
            )?;
            continue;
        }
        let id = fields[cols.0].trim().to_string();
        let body = unquote(fields[cols.1]);
        let title = unquote(fields[cols.2]);
        if id.is_empty() || body.trim().is_empty() {
            ctx.malformed(number, "empty id or text")?;
            continue;
        }
        ctx.document(Passage {
            id,
            title,
            text: body,
        })?;
    }
}

/// DPR's TSV writer quotes fields that contain quotes, doubling the inner ones.
fn unquote(field: &str) -> String {
    let f = field.trim();
    match f.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
        Some(inner) => inner.replace("\"\"", "\""),
        None => f.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn quoted_fields_are_unescaped() {
        assert_eq!(super::unquote(r#""say ""hi"" now""#), r#"say "hi" now"#);
        assert_eq!(super::unquote("plain"), "plain");
    }
}
