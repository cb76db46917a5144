//! Single-document JSON corpora, streamed element by element: HippoRAG's `{title: [sentences]}`
//! and `[{title, text}]` (also the 2Wiki corpus), and ovos' `{key: {title, extract, ...}}`.
//!
//! serde's visitor interface lets us walk the top-level map or array without materialising it:
//! only one element is in memory at a time.

use std::fmt;
use std::io::BufRead;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use super::{input_error, Ctx, Format, Passage};
use crate::error::{Error, Result};

pub(super) fn read<R: BufRead>(reader: R, format: Format, ctx: &mut Ctx<'_>) -> Result<()> {
    let mut de = serde_json::Deserializer::from_reader(reader);
    let mut walker = Walker {
        ctx,
        failure: None,
        index: 0,
    };
    let outcome = (&mut walker).deserialize(&mut de);
    if let Some(err) = walker.failure.take() {
        return Err(err);
    }
    outcome.map_err(|e| input_error(walker.ctx.path, format, e))?;
    de.end()
        .map_err(|e| input_error(walker.ctx.path, format, format!("trailing data: {e}")))
}

struct Walker<'c, 'a> {
    ctx: &'c mut Ctx<'a>,
    /// An error from the sink or from strict mode, smuggled past serde's error type.
    failure: Option<Error>,
    index: u64,
}

impl Walker<'_, '_> {
    /// Converts one element; `key` is the map key when the top level is an object.
    fn element(&mut self, key: Option<String>, value: Value) -> Result<()> {
        self.index += 1;
        let number = self.index;
        let id_default = match &key {
            // ovos keys are unique article names and make stable ids.
            Some(k) if matches!(value, Value::Object(_)) => k.clone(),
            _ => (number - 1).to_string(),
        };
        let passage = match value {
            Value::Array(sentences) => {
                let mut text = String::new();
                for s in sentences {
                    match s {
                        // HippoRAG keeps the leading space of each sentence; join verbatim.
                        Value::String(s) => text.push_str(&s),
                        other => {
                            return self
                                .ctx
                                .malformed(number, format!("sentence is not a string: {other}"))
                        }
                    }
                }
                Passage {
                    id: id_default,
                    title: key.unwrap_or_default(),
                    text: text.trim().to_string(),
                }
            }
            Value::String(text) => Passage {
                id: id_default,
                title: key.unwrap_or_default(),
                text,
            },
            Value::Object(mut obj) => {
                let take = |obj: &mut serde_json::Map<String, Value>, k: &str| match obj.remove(k) {
                    Some(Value::String(s)) => Some(s),
                    Some(Value::Number(n)) => Some(n.to_string()),
                    _ => None,
                };
                let text = take(&mut obj, "text").or_else(|| take(&mut obj, "extract"));
                let title = take(&mut obj, "title").or(key);
                let id = take(&mut obj, "id").unwrap_or(id_default);
                let Some(text) = text else {
                    return self
                        .ctx
                        .malformed(number, "object has no \"text\" or \"extract\"");
                };
                Passage {
                    id,
                    title: title.unwrap_or_default(),
                    text,
                }
            }
            other => {
                let kind = match other {
                    Value::Null => "null",
                    Value::Bool(_) => "a boolean",
                    _ => "a number",
                };
                return self
                    .ctx
                    .malformed(number, format!("element is {kind}, not a passage"));
            }
        };
        if passage.text.trim().is_empty() {
            return self.ctx.malformed(number, "empty text");
        }
        self.ctx.document(passage)
    }

    fn handle<E: serde::de::Error>(&mut self, r: Result<()>) -> Result<(), E> {
        r.map_err(|e| {
            self.failure = Some(e);
            E::custom("stopped")
        })
    }
}

impl<'de> DeserializeSeed<'de> for &mut Walker<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for &mut Walker<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object of passages or an array of passages")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<String>()? {
            let value: Value = map.next_value()?;
            let r = self.element(Some(key), value);
            self.handle(r)?;
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(value) = seq.next_element::<Value>()? {
            let r = self.element(None, value);
            self.handle(r)?;
        }
        Ok(())
    }
}
