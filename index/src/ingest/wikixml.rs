//! MediaWiki XML dumps (`pages-articles.xml[.bz2]`): main-namespace, non-redirect pages are
//! cleaned to plain text and cut into DPR-style passages of `passage_words` words.

use std::io::BufRead;

use quick_xml::events::Event;
use quick_xml::Reader;

use super::{input_error, split_words, wikitext, Ctx, Format, Passage};
use crate::error::Result;

#[derive(Default)]
struct Page {
    title: String,
    ns: String,
    id: String,
    text: String,
    redirect: bool,
}

#[derive(Clone, Copy, PartialEq)]
enum Field {
    None,
    Title,
    Ns,
    Id,
    Text,
}

pub(super) fn read<R: BufRead>(reader: R, ctx: &mut Ctx<'_>) -> Result<()> {
    let mut xml = Reader::from_reader(reader);
    let mut buf = Vec::new();
    let mut page: Option<Page> = None;
    let mut field = Field::None;
    // `<id>` also appears inside `<revision>` and `<contributor>`; only the page's own counts.
    let mut depth_in_page = 0usize;
    let mut pages_seen = 0u64;
    loop {
        let event = xml.read_event_into(&mut buf).map_err(|e| {
            input_error(
                ctx.path,
                Format::WikiXml,
                format!("XML error at byte {}: {e}", xml.error_position()),
            )
        })?;
        match event {
            Event::Start(e) => {
                let name = e.local_name();
                let name = name.as_ref();
                if name == b"page" {
                    page = Some(Page::default());
                    depth_in_page = 0;
                } else if page.is_some() {
                    depth_in_page += 1;
                    field = match (name, depth_in_page) {
                        (b"title", 1) => Field::Title,
                        (b"ns", 1) => Field::Ns,
                        (b"id", 1) => Field::Id,
                        (b"text", _) => Field::Text,
                        _ => Field::None,
                    };
                }
            }
            Event::Empty(e) if e.local_name().as_ref() == b"redirect" => {
                if let Some(p) = page.as_mut() {
                    p.redirect = true;
                }
            }
            Event::Text(t) => {
                if let (Some(p), true) = (page.as_mut(), field != Field::None) {
                    let s = t.decode().map_err(|e| {
                        input_error(ctx.path, Format::WikiXml, format!("bad encoding: {e}"))
                    })?;
                    push(p, field, &s);
                }
            }
            Event::CData(t) => {
                if let (Some(p), true) = (page.as_mut(), field != Field::None) {
                    push(p, field, &String::from_utf8_lossy(&t));
                }
            }
            Event::GeneralRef(r) => {
                if let (Some(p), true) = (page.as_mut(), field != Field::None) {
                    let resolved = match r.resolve_char_ref() {
                        Ok(Some(c)) => c.to_string(),
                        _ => {
                            let name = String::from_utf8_lossy(&r);
                            quick_xml::escape::resolve_predefined_entity(&name)
                                .map(str::to_string)
                                .unwrap_or_default()
                        }
                    };
                    push(p, field, &resolved);
                }
            }
            Event::End(e) => {
                if e.local_name().as_ref() == b"page" {
                    if let Some(p) = page.take() {
                        pages_seen += 1;
                        emit(p, pages_seen, ctx)?;
                    }
                } else if page.is_some() {
                    depth_in_page = depth_in_page.saturating_sub(1);
                }
                field = Field::None;
            }
            Event::Eof => return Ok(()),
            _ => {}
        }
        buf.clear();
    }
}

fn push(p: &mut Page, field: Field, s: &str) {
    match field {
        Field::Title => p.title.push_str(s),
        Field::Ns => p.ns.push_str(s),
        Field::Id => p.id.push_str(s),
        Field::Text => p.text.push_str(s),
        Field::None => {}
    }
}

fn emit(page: Page, number: u64, ctx: &mut Ctx<'_>) -> Result<()> {
    let ns = page.ns.trim();
    if !(ns.is_empty() || ns == "0") {
        return Ok(());
    }
    if page.redirect
        || page
            .text
            .trim_start()
            .to_lowercase()
            .starts_with("#redirect")
    {
        return Ok(());
    }
    if page.title.trim().is_empty() {
        return ctx.malformed(number, "page without a title");
    }
    let plain = wikitext::clean(&page.text);
    let chunks = split_words(&plain, ctx.opts.passage_words);
    if chunks.is_empty() {
        // Disambiguation stubs and template-only pages clean to nothing; not an error.
        return Ok(());
    }
    let id = if page.id.trim().is_empty() {
        number.to_string()
    } else {
        page.id.trim().to_string()
    };
    ctx.stats.documents += 1;
    for (i, text) in chunks.into_iter().enumerate() {
        ctx.passage(Passage {
            id: format!("{id}_{i}"),
            title: page.title.clone(),
            text,
        })?;
    }
    Ok(())
}
