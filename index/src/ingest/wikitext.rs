//! Wikitext to plain text, close to what DPR's preprocessing (WikiExtractor) kept: prose
//! paragraphs with link labels, without templates, tables, references, files, categories or
//! the trailing reference sections.

/// Sections after which an article holds only lists of links and citations.
const STOP_SECTIONS: [&str; 9] = [
    "references",
    "external links",
    "see also",
    "further reading",
    "notes",
    "bibliography",
    "sources",
    "footnotes",
    "citations",
];

/// Link namespaces whose targets are not prose (their captions are dropped with them).
const DROP_NAMESPACES: [&str; 6] = [
    "file",
    "image",
    "category",
    "media",
    "wikipedia",
    "template",
];

/// Cleans one article's wikitext to plain text, one paragraph per line.
pub fn clean(wikitext: &str) -> String {
    let s = remove_between(wikitext, "<!--", "-->");
    let s = remove_refs(&s);
    let s = remove_nested(&s, "{{", "}}");
    let s = remove_nested(&s, "{|", "|}");
    let s = replace_links(&s);
    let s = replace_external_links(&s);
    let s = strip_tags(&s);
    let s = decode_entities(&s);
    let mut out = String::with_capacity(s.len());
    for line in s.lines() {
        let line = line.trim();
        if line.starts_with('=') && line.ends_with('=') {
            let heading = line.trim_matches('=').trim().to_lowercase();
            if STOP_SECTIONS.contains(&heading.as_str()) {
                break;
            }
            // Headings are navigation, not content; DPR's passages do not carry them.
            continue;
        }
        let line = line.trim_start_matches(['*', '#', ':', ';']).trim();
        let line = line.replace("'''", "").replace("''", "");
        let line = remove_magic_words(&line);
        // Lines that are leftover markup (a lone `|`, `}}`) carry no prose.
        if line.chars().filter(|c| c.is_alphanumeric()).count() < 2 {
            continue;
        }
        if !out.is_empty() {
            out.push('\n');
        }
        let mut prev_space = false;
        for c in line.chars() {
            if c.is_whitespace() {
                if !prev_space {
                    out.push(' ');
                }
                prev_space = true;
            } else {
                out.push(c);
                prev_space = false;
            }
        }
    }
    out
}

fn remove_between(s: &str, open: &str, close: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find(open) {
        out.push_str(&rest[..i]);
        match rest[i + open.len()..].find(close) {
            Some(j) => rest = &rest[i + open.len() + j + close.len()..],
            None => return out,
        }
    }
    out.push_str(rest);
    out
}

/// `<ref name=x/>` and `<ref ...>...</ref>`; citations are not prose.
fn remove_refs(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    loop {
        let Some(i) = find_ci(rest, "<ref") else {
            out.push_str(rest);
            return out;
        };
        out.push_str(&rest[..i]);
        let after = &rest[i..];
        let Some(tag_end) = after.find('>') else {
            return out;
        };
        if after[..tag_end].ends_with('/') {
            rest = &after[tag_end + 1..];
            continue;
        }
        match find_ci(&after[tag_end..], "</ref>") {
            Some(j) => rest = &after[tag_end + j + "</ref>".len()..],
            None => rest = &after[tag_end + 1..],
        }
    }
}

fn find_ci(hay: &str, needle: &str) -> Option<usize> {
    let h = hay.as_bytes();
    let n = needle.as_bytes();
    if n.len() > h.len() {
        return None;
    }
    (0..=h.len() - n.len()).find(|&i| h[i..i + n.len()].eq_ignore_ascii_case(n))
}

/// Removes balanced `open … close` spans, nested to any depth (templates inside templates).
fn remove_nested(s: &str, open: &str, close: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut depth = 0usize;
    let mut i = 0;
    let b = s.as_bytes();
    let mut last = 0;
    while i < b.len() {
        if b[i..].starts_with(open.as_bytes()) {
            if depth == 0 {
                out.push_str(&s[last..i]);
            }
            depth += 1;
            i += open.len();
        } else if depth > 0 && b[i..].starts_with(close.as_bytes()) {
            depth -= 1;
            i += close.len();
            if depth == 0 {
                last = i;
            }
        } else {
            i += 1;
        }
    }
    if depth == 0 {
        out.push_str(&s[last..]);
    }
    out
}

/// `[[target|label]]` → label, `[[target]]` → target; file, image and category links vanish
/// together with any links nested in their captions.
fn replace_links(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    let mut last = 0;
    while i + 1 < b.len() {
        if b[i] == b'[' && b[i + 1] == b'[' {
            // Find the matching close, honouring nesting.
            let mut depth = 0usize;
            let mut j = i;
            let mut end = None;
            while j + 1 < b.len() {
                if b[j] == b'[' && b[j + 1] == b'[' {
                    depth += 1;
                    j += 2;
                } else if b[j] == b']' && b[j + 1] == b']' {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        end = Some(j);
                        break;
                    }
                } else {
                    j += 1;
                }
            }
            let Some(end) = end else { break };
            out.push_str(&s[last..i]);
            let inner = &s[i + 2..end - 2];
            let target = inner.split('|').next().unwrap_or("");
            let drop = match target.split_once(':') {
                Some((ns, _)) => {
                    let ns = ns.trim().to_lowercase();
                    // Interlanguage links (`de:`, `zh-yue:`) are short lowercase prefixes.
                    DROP_NAMESPACES.contains(&ns.as_str())
                        || (ns.len() <= 12
                            && !ns.is_empty()
                            && ns.chars().all(|c| c.is_ascii_lowercase() || c == '-'))
                }
                None => false,
            };
            if !drop {
                let label = inner.rsplit('|').next().unwrap_or(inner);
                out.push_str(&replace_links(label));
            }
            i = end;
            last = end;
        } else {
            i += 1;
        }
    }
    out.push_str(&s[last..]);
    out
}

/// `[http://x label]` → label, `[http://x]` → nothing.
fn replace_external_links(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('[') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let is_url = after.starts_with("http://")
            || after.starts_with("https://")
            || after.starts_with("//")
            || after.starts_with("ftp://");
        match (is_url, after.find(']')) {
            (true, Some(j)) => {
                if let Some((_, label)) = after[..j].split_once(' ') {
                    out.push_str(label);
                }
                rest = &after[j + 1..];
            }
            _ => {
                out.push('[');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Drops HTML-like tags but keeps their content (`<sub>2</sub>` → `2`); `<math>`, `<gallery>`
/// and similar blocks lose their content as well.
fn strip_tags(s: &str) -> String {
    let mut s = s.to_string();
    for tag in [
        "math",
        "gallery",
        "timeline",
        "score",
        "syntaxhighlight",
        "source",
    ] {
        let open = format!("<{tag}");
        let close = format!("</{tag}>");
        while let Some(i) = find_ci(&s, &open) {
            let end = find_ci(&s[i..], &close)
                .map(|j| i + j + close.len())
                .unwrap_or(s.len());
            s.replace_range(i..end, "");
        }
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s.as_str();
    while let Some(i) = rest.find('<') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let looks_like_tag = after
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '/' || c == '!');
        match (looks_like_tag, after.find('>')) {
            (true, Some(j)) => {
                let name = after[..j].trim_start_matches('/').to_lowercase();
                // Line breaks and paragraphs separate words.
                if name.starts_with("br") || name.starts_with('p') {
                    out.push(' ');
                }
                rest = &after[j + 1..];
            }
            _ => {
                out.push('<');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

fn decode_entities(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let end = after.find(';').filter(|&j| j <= 10);
        let decoded = end.and_then(|j| {
            let name = &after[..j];
            let c = match name {
                "amp" => '&',
                "lt" => '<',
                "gt" => '>',
                "quot" => '"',
                "apos" => '\'',
                "nbsp" | "ensp" | "emsp" | "thinsp" => ' ',
                "ndash" => '–',
                "mdash" => '—',
                "minus" => '−',
                "times" => '×',
                "deg" => '°',
                _ => {
                    let num = name.strip_prefix('#')?;
                    let code = match num.strip_prefix(['x', 'X']) {
                        Some(hex) => u32::from_str_radix(hex, 16).ok()?,
                        None => num.parse().ok()?,
                    };
                    char::from_u32(code)?
                }
            };
            Some((c, j))
        });
        match decoded {
            Some((c, j)) => {
                out.push(c);
                rest = &after[j + 1..];
            }
            None => {
                out.push('&');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

fn remove_magic_words(s: &str) -> String {
    let mut out = s.to_string();
    while let Some(i) = out.find("__") {
        match out[i + 2..].find("__") {
            Some(j)
                if out[i + 2..i + 2 + j]
                    .chars()
                    .all(|c| c.is_ascii_uppercase()) =>
            {
                out.replace_range(i..i + 4 + j, "");
            }
            _ => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::clean;

    #[test]
    fn markup_is_reduced_to_prose() {
        let w = "{{Infobox person|name=X {{nested}}}}\n'''Ada''' was a [[mathematician|mathematical]] \
                 [[writer]].<ref name=a>Cite</ref> She&nbsp;wrote [http://x.org notes].<ref name=b/>\n\
                 [[File:Ada.jpg|thumb|A [[portrait]]]]\n== Life ==\n* Born in [[London]]\n\
                 {| class=wikitable\n|-\n| cell\n|}\n== References ==\n{{reflist}} junk";
        let c = clean(w);
        assert_eq!(
            c,
            "Ada was a mathematical writer. She wrote notes.\nBorn in London"
        );
    }

    #[test]
    fn unbalanced_markup_does_not_panic() {
        for w in [
            "{{open",
            "[[open",
            "<ref>open",
            "&#99999999;",
            "[[a|",
            "}} ]] |}",
            "<",
        ] {
            let _ = clean(w);
        }
    }
}
