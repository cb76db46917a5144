//! Prompt templates of the agent: data of a model (`models/prompts/*.toml`), not code.
use std::path::Path;

use serde::Deserialize;

/// The built-in template (our own wording).
pub const DEFAULT_TEMPLATE: &str = include_str!("../../../models/prompts/agent-default.toml");

/// Errors of loading a template.
#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    /// The file cannot be read.
    #[error("cannot read prompt template {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not a valid template.
    #[error("prompt template {path} is invalid: {source} (see models/prompts/agent-default.toml)")]
    Parse {
        /// The file.
        path: String,
        /// The parse error.
        source: toml::de::Error,
    },
    /// A required placeholder is missing.
    #[error("prompt template {path}: `{field}` must contain {placeholder}")]
    MissingPlaceholder {
        /// The file.
        path: String,
        /// The template field.
        field: &'static str,
        /// The placeholder.
        placeholder: &'static str,
    },
}

/// The texts the agent sends, with `{placeholders}`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PromptTemplate {
    /// System message; `{tools}`, `{max_steps}`.
    pub system: String,
    /// First user message; `{question}`.
    pub task: String,
    /// Observation turn; `{observation}`.
    pub observation: String,
    /// Error turn; `{error}`.
    pub error: String,
    /// Turn sent when a reply has no code.
    pub no_code: String,
    /// Extra request when the steps ran out; `{question}`.
    pub final_fallback: String,
    /// System message of the plain chain-of-thought request behind the first-thought prefix.
    #[serde(default = "default_first_thought")]
    pub first_thought: String,
}

/// A template file may leave out `first_thought`; the built-in one is used then (it has it,
/// so this never recurses).
fn default_first_thought() -> String {
    PromptTemplate::builtin().first_thought
}

impl PromptTemplate {
    /// The built-in template.
    pub fn builtin() -> Self {
        Self::parse("agent-default.toml", DEFAULT_TEMPLATE).expect("the built-in template is valid")
    }

    /// Reads a template file.
    pub fn from_file(path: &Path) -> Result<Self, PromptError> {
        let text = std::fs::read_to_string(path).map_err(|source| PromptError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&path.display().to_string(), &text)
    }

    /// Parses a template and checks its placeholders.
    pub fn parse(name: &str, text: &str) -> Result<Self, PromptError> {
        let t: Self = toml::from_str(text).map_err(|source| PromptError::Parse {
            path: name.to_owned(),
            source,
        })?;
        for (field, value, placeholder) in [
            ("system", &t.system, "{tools}"),
            ("task", &t.task, "{question}"),
            ("observation", &t.observation, "{observation}"),
            ("error", &t.error, "{error}"),
        ] {
            if !value.contains(placeholder) {
                return Err(PromptError::MissingPlaceholder {
                    path: name.to_owned(),
                    field,
                    placeholder,
                });
            }
        }
        Ok(t)
    }
}

/// Replaces `{name}` placeholders; unknown ones stay as they are.
pub fn fill(template: &str, vars: &[(&str, &str)]) -> String {
    let mut out = template.trim().to_owned();
    for (k, v) in vars {
        out = out.replace(&format!("{{{k}}}"), v);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_template_is_valid_and_fills() {
        let t = PromptTemplate::builtin();
        let s = fill(
            &t.system,
            &[
                ("tools", "web_search(query: str) -> str"),
                ("max_steps", "5"),
            ],
        );
        assert!(s.contains("web_search(query: str) -> str") && s.contains("You have 5 steps"));
        assert!(!s.contains("{tools}"));
        assert!(
            t.system.len() < 2500,
            "keep the system prompt short for small models"
        );
    }

    #[test]
    fn a_template_without_its_placeholders_is_rejected() {
        let bad = DEFAULT_TEMPLATE.replace("{question}", "QUESTION");
        let e = PromptTemplate::parse("bad.toml", &bad).unwrap_err();
        assert!(e.to_string().contains("{question}"), "{e}");
    }
}
