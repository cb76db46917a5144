//! Math answers: extraction (`\boxed{…}` with nested braces, else a stated final answer,
//! else the last number), clean-up (dollars, `\left`/`\right`, `\text{}`, units, thousands
//! separators, percent), numeric comparison with a relative tolerance of 1e-4, structural
//! comparison of tuples, intervals and lists, and a symbolic fallback through a
//! [`SymbolicChecker`](crate::symbolic::SymbolicChecker).
use serde::{Deserialize, Serialize};

use crate::symbolic::{SymbolicChecker, SymbolicVerdict};

/// Relative tolerance of numeric equality.
pub const REL_TOL: f64 = 1e-4;

/// The content of the last `\boxed{…}` (or `\fbox{…}`), braces balanced; `\boxed 5` (no
/// braces) gives the token after the space.
pub fn extract_boxed(text: &str) -> Option<String> {
    let (start, cmd) = ["\\boxed", "\\fbox"]
        .iter()
        .filter_map(|c| text.rfind(c).map(|i| (i, *c)))
        .max_by_key(|(i, _)| *i)?;
    let rest = &text[start + cmd.len()..];
    if let Some(inner) = rest.strip_prefix('{') {
        let mut depth = 1usize;
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        return Some(inner[..i].trim().to_owned());
                    }
                }
                _ => {}
            }
        }
        None
    } else if let Some(r) = rest.strip_prefix(' ') {
        let tok: String = r
            .chars()
            .take_while(|c| !c.is_whitespace() && *c != '$')
            .collect();
        (!tok.is_empty()).then_some(tok)
    } else {
        None
    }
}

/// The content of the last `<tag>…</tag>`.
pub fn extract_tagged(text: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = text.rfind(&open)? + open.len();
    let end = text[start..].find(&close)? + start;
    Some(text[start..end].trim().to_owned())
}

/// How an answer was found in a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Found {
    /// `\boxed{…}`.
    Boxed,
    /// `<answer>…</answer>`.
    Tag,
    /// A sentence such as "the final answer is …".
    Stated,
    /// The last number of the text (a guess; counted as a parse error in CoT).
    LastNumber,
    /// Nothing usable.
    None,
}

/// The answer of a free-text math reply and how it was found.
pub fn extract_math_answer(text: &str) -> (Option<String>, Found) {
    if let Some(b) = extract_boxed(text) {
        return (Some(b), Found::Boxed);
    }
    if let Some(t) = extract_tagged(text, "answer") {
        return (Some(extract_boxed(&t).unwrap_or(t)), Found::Tag);
    }
    if let Some(s) = stated_answer(text) {
        return (Some(s), Found::Stated);
    }
    match last_number(text) {
        Some(n) => (Some(n), Found::LastNumber),
        None => (None, Found::None),
    }
}

/// "The final answer is X" / "Answer: X": the rest of that line, up to a sentence end.
pub fn stated_answer(text: &str) -> Option<String> {
    let lower = text.to_lowercase();
    let mut best: Option<usize> = None;
    for key in ["final answer is", "answer is", "final answer:", "answer:"] {
        if let Some(i) = lower.rfind(key) {
            let end = i + key.len();
            if best.is_none_or(|b| end > b) {
                best = Some(end);
            }
        }
    }
    let start = best?;
    // `lower` and `text` differ in byte offsets only for characters whose lower case has
    // another length; fall back to nothing rather than slicing wrongly.
    if lower.len() != text.len() {
        return None;
    }
    let line = text[start..].lines().next().unwrap_or("").trim();
    let line = line.trim_start_matches(':').trim();
    // "… is 3 * 4 = 12": the value after the last equals sign.
    let line = line.rsplit('=').next().unwrap_or(line).trim();
    let line = line
        .strip_suffix('.')
        .filter(|l| !l.ends_with(|c: char| c.is_ascii_digit()) || !line.ends_with(".."))
        .unwrap_or(line)
        .trim();
    (!line.is_empty()).then(|| line.to_owned())
}

/// The last number in the text (`-12`, `3.5`, `1,234`, `2/3`).
pub fn last_number(text: &str) -> Option<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut last = None;
    let mut i = 0;
    while i < chars.len() {
        let starts = chars[i].is_ascii_digit()
            || (chars[i] == '-'
                && chars.get(i + 1).is_some_and(|c| c.is_ascii_digit())
                && (i == 0 || !chars[i - 1].is_alphanumeric()));
        if starts {
            let s = i;
            i += 1;
            while i < chars.len()
                && (chars[i].is_ascii_digit()
                    || ((chars[i] == ',' || chars[i] == '.' || chars[i] == '/')
                        && chars.get(i + 1).is_some_and(|c| c.is_ascii_digit())))
            {
                i += 1;
            }
            last = Some(chars[s..i].iter().collect::<String>());
        } else {
            i += 1;
        }
    }
    last
}

/// Removes presentation from a math answer: `$`, `\left`/`\right`, spacing commands,
/// `\text{…}`/`\mbox{…}` (their content is kept), `^\circ`, `\%`, a leading `x =`, trailing
/// units or words after a number, thousands separators and a final period.
pub fn clean(s: &str) -> String {
    let mut t = s.trim().to_owned();
    for (from, to) in [
        ("\\left", ""),
        ("\\right", ""),
        ("\\displaystyle", ""),
        ("\\!", ""),
        ("\\,", ""),
        ("\\;", ""),
        ("\\:", ""),
        ("\\ ", " "),
        ("\\$", ""),
        ("$", ""),
        ("^{\\circ}", ""),
        ("^\\circ", ""),
        ("\\circ", ""),
        ("\\%", "%"),
        ("\\dfrac", "\\frac"),
        ("\\tfrac", "\\frac"),
        ("\\le ", "\\leq "),
        ("−", "-"),
    ] {
        t = t.replace(from, to);
    }
    t = unwrap_command(&t, "\\text");
    t = unwrap_command(&t, "\\textbf");
    t = unwrap_command(&t, "\\mathrm");
    t = unwrap_command(&t, "\\mbox");
    t = t.trim().trim_end_matches('.').trim().to_owned();
    // `x = 5`, `k=3`: a single short left-hand side.
    if let Some((lhs, rhs)) = t.split_once('=') {
        let lhs = lhs.trim();
        if !rhs.contains('=')
            && !lhs.is_empty()
            && lhs.len() <= 2
            && lhs.chars().all(|c| c.is_alphabetic())
        {
            t = rhs.trim().to_owned();
        }
    }
    // A number followed by words (units): keep the number.
    let (num, rest) = split_leading_number(&t);
    if !num.is_empty()
        && !rest.is_empty()
        && rest
            .trim()
            .chars()
            .all(|c| c.is_alphabetic() || c == ' ' || c == '.')
        && rest.starts_with(|c: char| c == ' ' || c.is_alphabetic())
        && !rest.trim().is_empty()
        && !matches!(rest.trim(), "pi" | "i" | "e")
    {
        t = num.to_owned();
    }
    if is_thousands(&t) {
        t = t.replace(',', "");
    }
    t.trim().to_owned()
}

fn split_leading_number(t: &str) -> (&str, &str) {
    let end = t
        .char_indices()
        .find(|&(i, c)| {
            !(c.is_ascii_digit() || c == '.' || c == ',' || (i == 0 && (c == '-' || c == '+')))
        })
        .map(|(i, _)| i)
        .unwrap_or(t.len());
    let num = &t[..end];
    if num.chars().any(|c| c.is_ascii_digit()) {
        (num, &t[end..])
    } else {
        ("", t)
    }
}

/// `1,234` or `-12,345,678.5`.
fn is_thousands(t: &str) -> bool {
    let body = t.strip_prefix('-').unwrap_or(t);
    let int = body.split('.').next().unwrap_or("");
    let groups: Vec<&str> = int.split(',').collect();
    groups.len() > 1
        && body.split('.').count() <= 2
        && body
            .split('.')
            .nth(1)
            .is_none_or(|f| f.chars().all(|c| c.is_ascii_digit()))
        && (1..=3).contains(&groups[0].len())
        && groups.iter().all(|g| g.chars().all(|c| c.is_ascii_digit()))
        && groups[1..].iter().all(|g| g.len() == 3)
}

/// `\text{abc}` → `abc` (balanced braces).
fn unwrap_command(s: &str, cmd: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find(cmd) {
        let after = &rest[i + cmd.len()..];
        // Only the whole command (`\text`, not `\textbf` when unwrapping `\text`).
        if after.starts_with(|c: char| c.is_ascii_alphabetic()) {
            out.push_str(&rest[..i + cmd.len()]);
            rest = after;
            continue;
        }
        out.push_str(&rest[..i]);
        let after_trim = after.trim_start();
        if let Some(inner) = after_trim.strip_prefix('{') {
            if let Some(end) = matching_brace(inner) {
                out.push_str(&inner[..end]);
                rest = &inner[end + 1..];
                continue;
            }
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

/// Byte index of the `}` closing an already opened brace.
fn matching_brace(s: &str) -> Option<usize> {
    let mut depth = 1usize;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

// ---------------------------------------------------------------------------------------
// Numeric evaluation of LaTeX-ish and Python-ish expressions without variables.

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Num(f64),
    Op(char),
    Open(char),
    Close(char),
    Frac,
    Sqrt,
    Pi,
    Inf,
}

fn tokenize(s: &str) -> Option<Vec<Tok>> {
    let chars: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit()))
        {
            let s0 = i;
            while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                i += 1;
            }
            // Scientific notation: 1e-5, 2.5E+3.
            if i < chars.len() && (chars[i] == 'e' || chars[i] == 'E') {
                let mut j = i + 1;
                if j < chars.len() && (chars[j] == '-' || chars[j] == '+') {
                    j += 1;
                }
                if j < chars.len() && chars[j].is_ascii_digit() {
                    while j < chars.len() && chars[j].is_ascii_digit() {
                        j += 1;
                    }
                    i = j;
                }
            }
            let text: String = chars[s0..i].iter().collect();
            out.push(Tok::Num(text.parse().ok()?));
        } else if c == '\\' {
            let s0 = i + 1;
            i += 1;
            while i < chars.len() && chars[i].is_ascii_alphabetic() {
                i += 1;
            }
            let name: String = chars[s0..i].iter().collect();
            match name.as_str() {
                "frac" => out.push(Tok::Frac),
                "sqrt" => out.push(Tok::Sqrt),
                "pi" => out.push(Tok::Pi),
                "infty" | "infinity" => out.push(Tok::Inf),
                "cdot" | "times" => out.push(Tok::Op('*')),
                "div" => out.push(Tok::Op('/')),
                "" if i < chars.len() && (chars[i] == '{' || chars[i] == '}') => {
                    // `\{` `\}`: set braces are not arithmetic.
                    return None;
                }
                _ => return None,
            }
        } else if c.is_ascii_alphabetic() {
            let s0 = i;
            while i < chars.len() && chars[i].is_ascii_alphabetic() {
                i += 1;
            }
            let name: String = chars[s0..i].iter().collect();
            match name.as_str() {
                "sqrt" => out.push(Tok::Sqrt),
                "pi" => out.push(Tok::Pi),
                "oo" | "inf" | "infinity" => out.push(Tok::Inf),
                _ => return None,
            }
        } else if c == '*' && chars.get(i + 1) == Some(&'*') {
            out.push(Tok::Op('^'));
            i += 2;
        } else if "+-*/^".contains(c) {
            out.push(Tok::Op(c));
            i += 1;
        } else if c == '(' || c == '{' {
            out.push(Tok::Open(c));
            i += 1;
        } else if c == ')' || c == '}' {
            out.push(Tok::Close(c));
            i += 1;
        } else if c == '%' {
            // Percent: divide by 100.
            out.push(Tok::Op('%'));
            i += 1;
        } else {
            return None;
        }
    }
    Some(out)
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }
    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }
    fn expr(&mut self) -> Option<f64> {
        let mut v = self.term()?;
        while let Some(Tok::Op(c @ ('+' | '-'))) = self.peek().cloned() {
            self.pos += 1;
            let r = self.term()?;
            v = if c == '+' { v + r } else { v - r };
        }
        Some(v)
    }
    fn term(&mut self) -> Option<f64> {
        let mut v = self.unary()?;
        loop {
            match self.peek().cloned() {
                Some(Tok::Op('*')) => {
                    self.pos += 1;
                    v *= self.unary()?;
                }
                Some(Tok::Op('/')) => {
                    self.pos += 1;
                    v /= self.unary()?;
                }
                Some(Tok::Op('%')) => {
                    self.pos += 1;
                    v /= 100.0;
                }
                // Implicit multiplication: `2\sqrt{3}`, `3\pi`, `2(1+x)`.
                Some(Tok::Open(_) | Tok::Frac | Tok::Sqrt | Tok::Pi) => v *= self.power()?,
                _ => return Some(v),
            }
        }
    }
    fn unary(&mut self) -> Option<f64> {
        match self.peek() {
            Some(Tok::Op('-')) => {
                self.pos += 1;
                Some(-self.unary()?)
            }
            Some(Tok::Op('+')) => {
                self.pos += 1;
                self.unary()
            }
            _ => self.power(),
        }
    }
    fn power(&mut self) -> Option<f64> {
        let base = self.primary()?;
        if let Some(Tok::Op('^')) = self.peek() {
            self.pos += 1;
            let e = self.unary()?;
            return Some(base.powf(e));
        }
        Some(base)
    }
    fn group(&mut self) -> Option<f64> {
        // A braced group, or a single primary (`\frac12` was split beforehand).
        match self.peek() {
            Some(Tok::Open('{')) => {
                self.pos += 1;
                let v = self.expr()?;
                matches!(self.next()?, Tok::Close('}')).then_some(v)
            }
            _ => self.primary(),
        }
    }
    fn primary(&mut self) -> Option<f64> {
        match self.next()? {
            Tok::Num(n) => Some(n),
            Tok::Pi => Some(std::f64::consts::PI),
            Tok::Inf => Some(f64::INFINITY),
            Tok::Open(o) => {
                let v = self.expr()?;
                let want = if o == '(' { ')' } else { '}' };
                matches!(self.next()?, Tok::Close(c) if c == want).then_some(v)
            }
            Tok::Frac => {
                let n = self.group()?;
                let d = self.group()?;
                Some(n / d)
            }
            Tok::Sqrt => {
                let v = self.group()?;
                Some(v.sqrt())
            }
            _ => None,
        }
    }
}

/// `\frac12` → `\frac{1}{2}`, `\sqrt2` → `\sqrt{2}` (LaTeX takes one character per
/// unbraced argument).
fn brace_short_args(s: &str) -> String {
    let mut out = String::new();
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let rest: String = chars[i..].iter().take(6).collect();
        let (cmd, nargs) = if rest.starts_with("\\frac") {
            ("\\frac", 2)
        } else if rest.starts_with("\\sqrt") {
            ("\\sqrt", 1)
        } else {
            out.push(chars[i]);
            i += 1;
            continue;
        };
        out.push_str(cmd);
        i += cmd.len();
        for _ in 0..nargs {
            while i < chars.len() && chars[i] == ' ' {
                i += 1;
            }
            match chars.get(i) {
                Some('{') => {
                    // Copy the braced group as is.
                    let mut depth = 0;
                    while i < chars.len() {
                        out.push(chars[i]);
                        if chars[i] == '{' {
                            depth += 1;
                        } else if chars[i] == '}' {
                            depth -= 1;
                            if depth == 0 {
                                i += 1;
                                break;
                            }
                        }
                        i += 1;
                    }
                }
                Some(c) if c.is_ascii_alphanumeric() => {
                    out.push('{');
                    out.push(*c);
                    out.push('}');
                    i += 1;
                }
                _ => break,
            }
        }
    }
    out
}

/// The value of an expression without variables (`\frac{3}{4}`, `2\sqrt{3}`, `1/2`,
/// `50%`, `3\pi/2`, `-\infty`), if it has one.
pub fn numeric_value(s: &str) -> Option<f64> {
    let t = brace_short_args(&clean(s));
    let toks = tokenize(&t)?;
    if toks.is_empty() {
        return None;
    }
    let mut p = Parser { toks, pos: 0 };
    let v = p.expr()?;
    (p.pos == p.toks.len() && !v.is_nan()).then_some(v)
}

/// Equality within [`REL_TOL`] (relative to the larger magnitude); infinities equal
/// themselves.
pub fn numbers_equal(a: f64, b: f64) -> bool {
    if a.is_infinite() || b.is_infinite() {
        return a == b;
    }
    let scale = a.abs().max(b.abs());
    (a - b).abs() <= REL_TOL * scale || scale == 0.0
}

// ---------------------------------------------------------------------------------------
// Structure: tuples, intervals, sets, unions, unordered lists.

/// Splits on a separator at bracket depth 0.
fn split_top(s: &str, sep: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut cur = String::new();
    let mut i = 0;
    let bytes = s.as_bytes();
    while i < s.len() {
        let c = bytes[i] as char;
        if depth == 0 && s[i..].starts_with(sep) {
            parts.push(std::mem::take(&mut cur));
            i += sep.len();
            continue;
        }
        match c {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => depth -= 1,
            _ => {}
        }
        let ch = s[i..].chars().next().unwrap_or(' ');
        cur.push(ch);
        i += ch.len_utf8();
    }
    parts.push(cur);
    parts.into_iter().map(|p| p.trim().to_owned()).collect()
}

/// `(a, b]` → ('(', [a, b], ']') when the outer brackets enclose the whole string.
fn bracketed(s: &str) -> Option<(char, String, char)> {
    let s = s.trim();
    let (s, set) = match s.strip_prefix("\\{").and_then(|r| r.strip_suffix("\\}")) {
        Some(inner) => (format!("{{{inner}}}"), true),
        None => (s.to_owned(), false),
    };
    let open = s.chars().next()?;
    let close = s.chars().last()?;
    if !"([{".contains(open) || !")]}".contains(close) || s.len() < 2 {
        return None;
    }
    let inner = &s[open.len_utf8()..s.len() - close.len_utf8()];
    // The outer pair must enclose everything: depth never drops below zero inside.
    let mut depth = 0i32;
    for c in inner.chars() {
        match c {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => {
                depth -= 1;
                if depth < 0 {
                    return None;
                }
            }
            _ => {}
        }
    }
    let _ = set;
    (depth == 0).then(|| (open, inner.to_owned(), close))
}

/// How two math answers were found equal (or not).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MathMethod {
    /// Identical after clean-up.
    Text,
    /// Equal numbers within tolerance.
    Numeric,
    /// Element-wise equal tuples, intervals, sets or lists.
    Structure,
    /// sympy said the difference simplifies to zero.
    Symbolic,
    /// No method found them equal.
    Different,
}

/// The verdict of [`math_equal`], with a note when the symbolic check could not decide.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MathVerdict {
    /// Equal or not.
    pub equal: bool,
    /// Which method decided.
    pub method: MathMethod,
    /// Why the symbolic check gave no answer (timeout, unparsable), if it ran and failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symbolic_note: Option<String>,
}

fn squash(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_lowercase()
}

/// Compares a predicted math answer with a gold one: text, then numbers (tolerance 1e-4),
/// then structure (tuples, intervals, sets, lists), then `symbolic` (sympy in the sandbox)
/// when given.
pub fn math_equal(pred: &str, gold: &str, symbolic: Option<&dyn SymbolicChecker>) -> MathVerdict {
    let mut note = None;
    let equal = |method| MathVerdict {
        equal: true,
        method,
        symbolic_note: None,
    };
    let p = clean(pred);
    let g = clean(gold);
    if p.is_empty() {
        return MathVerdict {
            equal: false,
            method: MathMethod::Different,
            symbolic_note: None,
        };
    }
    if squash(&p) == squash(&g) || squash(&strip_parens(&p)) == squash(&strip_parens(&g)) {
        return equal(MathMethod::Text);
    }
    if let (Some(a), Some(b)) = (numeric_value(&p), numeric_value(&g)) {
        let pct = p.contains('%') || g.contains('%');
        if numbers_equal(a, b)
            || (pct && (numbers_equal(a * 100.0, b) || numbers_equal(a, b * 100.0)))
        {
            return equal(MathMethod::Numeric);
        }
        // Both are plain numbers and differ: nothing symbolic to add.
        return MathVerdict {
            equal: false,
            method: MathMethod::Different,
            symbolic_note: None,
        };
    }
    if structure_equal(&p, &g, symbolic) {
        return equal(MathMethod::Structure);
    }
    if let Some(sym) = symbolic {
        if let (Some(a), Some(b)) = (to_sympy(&p), to_sympy(&g)) {
            match sym.equivalent(&a, &b) {
                SymbolicVerdict::Equal => return equal(MathMethod::Symbolic),
                SymbolicVerdict::Different => {}
                SymbolicVerdict::Undecided(why) => note = Some(why),
            }
        }
    }
    MathVerdict {
        equal: false,
        method: MathMethod::Different,
        symbolic_note: note,
    }
}

/// `(C)` → `C`, `\text{(B)}` (already unwrapped) likewise: a choice letter in parentheses.
fn strip_parens(s: &str) -> String {
    let t = s.trim();
    match t.strip_prefix('(').and_then(|r| r.strip_suffix(')')) {
        Some(inner) if inner.chars().count() == 1 => inner.to_owned(),
        _ => t.to_owned(),
    }
}

fn structure_equal(p: &str, g: &str, symbolic: Option<&dyn SymbolicChecker>) -> bool {
    // Unions of intervals: same number of parts, pairwise equal in order.
    for sep in ["\\cup", "∪"] {
        let (pu, gu) = (split_top(p, sep), split_top(g, sep));
        if pu.len() > 1 || gu.len() > 1 {
            return pu.len() == gu.len()
                && pu
                    .iter()
                    .zip(&gu)
                    .all(|(a, b)| math_equal(a, b, symbolic).equal);
        }
    }
    match (bracketed(p), bracketed(g)) {
        (Some((po, pi, pc)), Some((go, gi, gc))) => {
            let (pe, ge) = (split_top(&pi, ","), split_top(&gi, ","));
            if pe.len() < 2 && ge.len() < 2 {
                return false;
            }
            if pe.len() != ge.len() {
                return false;
            }
            if po == '{' && go == '{' {
                return unordered_equal(&pe, &ge, symbolic);
            }
            po == go
                && pc == gc
                && pe
                    .iter()
                    .zip(&ge)
                    .all(|(a, b)| math_equal(a, b, symbolic).equal)
        }
        (None, None) => {
            // Bare comma lists ("all solutions, separated by commas"): order-free.
            let (pe, ge) = (split_top(p, ","), split_top(g, ","));
            (pe.len() > 1 || ge.len() > 1)
                && pe.len() == ge.len()
                && unordered_equal(&pe, &ge, symbolic)
        }
        _ => false,
    }
}

fn unordered_equal(pe: &[String], ge: &[String], symbolic: Option<&dyn SymbolicChecker>) -> bool {
    let mut used = vec![false; ge.len()];
    pe.iter().all(|a| {
        for (j, b) in ge.iter().enumerate() {
            if !used[j] && math_equal(a, b, symbolic).equal {
                used[j] = true;
                return true;
            }
        }
        false
    })
}

/// Rewrites cleaned LaTeX into sympy's input syntax (`\frac{a}{b}` → `((a)/(b))`,
/// `\sqrt[n]{x}` → `((x)**(1/(n)))`, `^` → `**`, `\pi` → `pi`, `\infty` → `oo`, braces →
/// parentheses). Returns `None` for text it does not understand (another command, `=`,
/// a relation), so that only expressions reach sympy.
pub fn to_sympy(s: &str) -> Option<String> {
    let s = brace_short_args(s);
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    fn group(chars: &[char], i: &mut usize, open: char, close: char) -> Option<String> {
        while *i < chars.len() && chars[*i] == ' ' {
            *i += 1;
        }
        if chars.get(*i) != Some(&open) {
            return None;
        }
        let mut depth = 0;
        let start = *i + 1;
        while *i < chars.len() {
            if chars[*i] == open {
                depth += 1;
            } else if chars[*i] == close {
                depth -= 1;
                if depth == 0 {
                    let inner: String = chars[start..*i].iter().collect();
                    *i += 1;
                    return to_sympy(&inner);
                }
            }
            *i += 1;
        }
        None
    }
    while i < chars.len() {
        let c = chars[i];
        if c == '\\' {
            let s0 = i + 1;
            i += 1;
            while i < chars.len() && chars[i].is_ascii_alphabetic() {
                i += 1;
            }
            let name: String = chars[s0..i].iter().collect();
            match name.as_str() {
                "frac" => {
                    let n = group(&chars, &mut i, '{', '}')?;
                    let d = group(&chars, &mut i, '{', '}')?;
                    out.push_str(&format!("(({n})/({d}))"));
                }
                "sqrt" => {
                    let root = if chars.get(i) == Some(&'[') {
                        Some(group(&chars, &mut i, '[', ']')?)
                    } else {
                        None
                    };
                    let x = group(&chars, &mut i, '{', '}')?;
                    match root {
                        Some(n) => out.push_str(&format!("(({x})**(1/({n})))")),
                        None => out.push_str(&format!("sqrt({x})")),
                    }
                }
                "pi" => out.push_str(" pi "),
                "infty" => out.push_str(" oo "),
                "cdot" | "times" => out.push('*'),
                "div" => out.push('/'),
                "ln" => out.push_str(" log"),
                "sin" | "cos" | "tan" | "log" | "exp" | "sec" | "csc" | "cot" => {
                    out.push(' ');
                    out.push_str(&name);
                }
                _ => return None,
            }
        } else if c == '^' {
            out.push_str("**");
            i += 1;
        } else if c == '{' {
            out.push('(');
            i += 1;
        } else if c == '}' {
            out.push(')');
            i += 1;
        } else if c.is_ascii_alphanumeric() || " +-*/().".contains(c) {
            out.push(c);
            i += 1;
        } else {
            return None;
        }
    }
    let out = out.trim().to_owned();
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eq(p: &str, g: &str) -> bool {
        math_equal(p, g, None).equal
    }

    #[test]
    fn boxed_with_nested_braces() {
        assert_eq!(
            extract_boxed("so \\boxed{\\frac{1}{2}} and then \\boxed{\\frac{\\sqrt{3}}{2}}.")
                .as_deref(),
            Some("\\frac{\\sqrt{3}}{2}")
        );
        assert_eq!(extract_boxed("\\boxed 5$").as_deref(), Some("5"));
        assert_eq!(extract_boxed("\\boxed{unclosed"), None);
        assert_eq!(extract_boxed("no box"), None);
    }

    #[test]
    fn final_answer_fallbacks() {
        assert_eq!(
            extract_math_answer("... so the final answer is 42.")
                .0
                .as_deref(),
            Some("42")
        );
        assert_eq!(
            extract_math_answer("We get <answer>7/3</answer>")
                .0
                .as_deref(),
            Some("7/3")
        );
        let (a, f) = extract_math_answer("3 apples plus 4 apples gives 7 apples");
        assert_eq!((a.as_deref(), f), (Some("7"), Found::LastNumber));
        assert_eq!(extract_math_answer("nothing here").1, Found::None);
        assert_eq!(
            extract_math_answer("The answer is 692 / 3 = 230.6 apples.")
                .0
                .as_deref(),
            Some("230.6 apples")
        );
        assert_eq!(
            last_number("costs 1,234.5 dollars").as_deref(),
            Some("1,234.5")
        );
    }

    #[test]
    fn numeric_forms() {
        assert!(eq("0.5", "\\frac{1}{2}"));
        assert!(eq("1/2", "\\dfrac12"));
        assert!(eq("0.5", "1/2"));
        assert!(eq("\\$1,000", "1000"));
        assert!(eq("50%", "50"));
        assert!(eq("0.5", "50\\%"));
        assert!(eq("10 cm", "10"));
        assert!(eq("x = 5", "5"));
        assert!(eq("1.15470", "\\frac{2\\sqrt{3}}{3}"));
        assert!(eq("2*sqrt(3)/3", "\\frac{2\\sqrt{3}}{3}"));
        assert!(eq("13138980", "13138980.0"));
        assert!(eq("1.00001", "1"));
        assert!(!eq("1.001", "1"));
        assert!(!eq("", "0"));
        assert!(eq("90^\\circ", "90"));
        assert!(eq("3\\pi/2", "\\frac{3\\pi}{2}"));
    }

    #[test]
    fn structures() {
        assert!(eq(
            "(3, \\frac{\\pi}{2})",
            "\\left( 3, \\frac{\\pi}{2} \\right)"
        ));
        assert!(eq(
            "(-\\infty,-8]\\cup[8,\\infty)",
            "(-\\infty,-8]\\cup [8,\\infty)"
        ));
        assert!(!eq(
            "(-\\infty,-8)\\cup[8,\\infty)",
            "(-\\infty,-8]\\cup [8,\\infty)"
        ));
        assert!(eq("[2\\sqrt{2}, 4]", "[2 \\sqrt{2},4]"));
        assert!(!eq("(2\\sqrt{2}, 4]", "[2 \\sqrt{2},4]"));
        assert!(eq("3, 1, 2", "1,2,3"));
        assert!(eq("\\{1, 2\\}", "\\{2,1\\}"));
        assert!(eq("\\text{(C)}", "C"));
    }

    #[test]
    fn sympy_syntax() {
        assert_eq!(to_sympy("\\frac{x}{2}").as_deref(), Some("((x)/(2))"));
        assert_eq!(to_sympy("\\sqrt[3]{x}").as_deref(), Some("((x)**(1/(3)))"));
        assert_eq!(to_sympy("x^{2}+1").as_deref(), Some("x**(2)+1"));
        assert_eq!(to_sympy("a \\le b"), None);
    }
}
