//! The text protocol of a code-agent step (BRIEF §3): `Thought: …`, `Code:`, one or more
//! fenced ```` ```py ```` blocks, `<end_code>`. Pure functions, no model, no interpreter.

/// Generation of a step stops at any of these (the reference agent's stop sequences).
pub const STOP_SEQUENCES: [&str; 3] = ["<end_code>", "Observation:", "Calling tools:"];
/// Marker that closes a code block.
pub const END_CODE: &str = "<end_code>";

/// Puts back the closing marker that the stop sequence removed, so the assistant turn in
/// the conversation reads like the trained format.
pub fn close_reply(reply: &str) -> String {
    let trimmed = reply.trim_end();
    if trimmed.ends_with("```") {
        format!("{trimmed}{END_CODE}")
    } else {
        trimmed.to_owned()
    }
}

/// The code of a reply: every ```` ```py ```` / ```` ```python ```` block, in order, joined
/// by a blank line. `None` when there is no such block (an unclosed last block counts: the
/// stop sequence may have cut its closing fence).
pub fn extract_code(reply: &str) -> Option<String> {
    let mut blocks = Vec::new();
    let mut rest = reply;
    while let Some(start) = rest.find("```") {
        let after = &rest[start + 3..];
        let lang_end = after.find('\n').unwrap_or(after.len());
        let lang = after[..lang_end].trim();
        if lang != "py" && lang != "python" {
            // Not a Python fence (or a closing fence): skip past it.
            rest = &after[lang_end.min(after.len())..];
            continue;
        }
        let body = &after[(lang_end + 1).min(after.len())..];
        let (code, next) = match body.find("```") {
            Some(end) => (&body[..end], &body[end + 3..]),
            None => (body, ""),
        };
        let code = code.trim_end_matches(END_CODE).trim_matches('\n');
        if !code.trim().is_empty() {
            blocks.push(code.to_owned());
        }
        rest = next;
    }
    (!blocks.is_empty()).then(|| blocks.join("\n\n"))
}

/// The text every reply must start with under `grammar` (GBNF): the first literal of its
/// `root` rule when the rule begins with one, without trailing whitespace (so the model's own
/// next token still carries its leading space). `None` when the rule starts otherwise or the
/// literal has escapes.
pub fn grammar_forced_prefix(grammar: &str) -> Option<String> {
    let rule = grammar
        .lines()
        .map(str::trim_start)
        .find(|l| l.starts_with("root") && l["root".len()..].trim_start().starts_with("::="))?;
    let body = rule.split_once("::=")?.1.trim_start();
    let literal = body.strip_prefix('"')?;
    let end = literal.find('"')?;
    let text = &literal[..end];
    if text.contains('\\') {
        return None;
    }
    let text = text.trim_end();
    (!text.is_empty()).then(|| text.to_owned())
}

/// The thought of a reply: the text before `Code:` (or before the first fence), without the
/// `Thought:` label.
pub fn extract_thought(reply: &str) -> String {
    let end = reply
        .find("Code:")
        .or_else(|| reply.find("```"))
        .unwrap_or(reply.len());
    let t = reply[..end].trim();
    t.strip_prefix("Thought:").unwrap_or(t).trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_well_formed_step_yields_thought_and_code() {
        let reply = "Thought: I need the population.\nCode:\n```py\nr = web_search(\"Paris\")\nprint(r)\n```";
        assert_eq!(extract_thought(reply), "I need the population.");
        assert_eq!(
            extract_code(reply).unwrap(),
            "r = web_search(\"Paris\")\nprint(r)"
        );
        assert_eq!(close_reply(reply), format!("{reply}<end_code>"));
    }

    #[test]
    fn several_blocks_are_joined_and_other_languages_ignored() {
        let reply =
            "```text\nnot code\n```\n```python\na = 1\n```\nand\n```py\nprint(a)\n```<end_code>";
        assert_eq!(extract_code(reply).unwrap(), "a = 1\n\nprint(a)");
    }

    #[test]
    fn the_forced_start_of_a_grammar_is_its_root_rules_first_literal() {
        assert_eq!(
            grammar_forced_prefix(crate::agent::STEP_GRAMMAR).as_deref(),
            Some("Thought:")
        );
        assert_eq!(
            grammar_forced_prefix("# c\nroot ::= \"Answer: \" [0-9]+\n").as_deref(),
            Some("Answer:")
        );
        // Not a literal first, an escape, or only whitespace: nothing is forced.
        assert_eq!(
            grammar_forced_prefix("root ::= line \"x\"\nline ::= [a-z]+"),
            None
        );
        assert_eq!(grammar_forced_prefix("root ::= \"a\\nb\" [0-9]"), None);
        assert_eq!(grammar_forced_prefix("root ::= \" \" [0-9]"), None);
        assert_eq!(grammar_forced_prefix("roots ::= \"x\""), None);
    }

    #[test]
    fn an_unclosed_block_still_counts() {
        assert_eq!(extract_code("Code:\n```py\nx = 2\n").unwrap(), "x = 2");
    }

    #[test]
    fn no_fence_means_no_code() {
        assert_eq!(extract_code("Thought: the answer is 4."), None);
        assert_eq!(extract_code("```py\n\n```"), None);
        assert_eq!(extract_thought("just text"), "just text");
        assert_eq!(close_reply("no fence  "), "no fence");
    }
}
