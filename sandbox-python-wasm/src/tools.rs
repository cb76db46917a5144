//! Host tools: Rust callbacks that appear inside Python as plain functions.
//!
//! The guest reaches them only through frames that the host parses and checks here: a frame can
//! name a registered tool and pass JSON arguments, report its own result, or hand over a final
//! answer. Nothing else a frame says has any effect on the host.

use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// Names the driver defines itself; a tool may not shadow them.
const RESERVED: &[&str] = &[
    "final_answer",
    "print",
    "exec",
    "eval",
    "open",
    "__import__",
];

/// JSON type of a tool parameter, checked by the host before the callback runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamType {
    /// A JSON string.
    String,
    /// A JSON integer.
    Integer,
    /// Any JSON number.
    Number,
    /// `true` or `false`.
    Boolean,
    /// Any JSON value (lists and dicts included).
    Any,
}

impl ParamType {
    fn accepts(self, v: &Value) -> bool {
        match self {
            ParamType::String => v.is_string(),
            ParamType::Integer => v.is_i64() || v.is_u64(),
            ParamType::Number => v.is_number(),
            ParamType::Boolean => v.is_boolean(),
            ParamType::Any => true,
        }
    }

    fn name(self) -> &'static str {
        match self {
            ParamType::String => "str",
            ParamType::Integer => "int",
            ParamType::Number => "float",
            ParamType::Boolean => "bool",
            ParamType::Any => "any",
        }
    }
}

/// One parameter of a tool.
#[derive(Debug, Clone)]
pub struct ToolParam {
    /// Python parameter name.
    pub name: String,
    /// Its JSON type.
    pub ty: ParamType,
    /// Human-readable description (for the agent's prompt).
    pub description: String,
    /// Whether the call must pass it.
    pub required: bool,
}

impl ToolParam {
    /// A required parameter.
    pub fn required(name: &str, ty: ParamType, description: &str) -> Self {
        ToolParam {
            name: name.into(),
            ty,
            description: description.into(),
            required: true,
        }
    }

    /// An optional parameter.
    pub fn optional(name: &str, ty: ParamType, description: &str) -> Self {
        ToolParam {
            required: false,
            ..ToolParam::required(name, ty, description)
        }
    }
}

/// A tool's Rust side: receives the checked arguments, returns a JSON value or an error text
/// that the guest sees as `ToolError`.
pub type ToolCallback = Arc<dyn Fn(&Map<String, Value>) -> Result<Value, String> + Send + Sync>;

/// A host tool.
#[derive(Clone)]
pub struct Tool {
    /// Python function name.
    pub name: String,
    /// Docstring / prompt description.
    pub description: String,
    /// Parameters in positional order.
    pub params: Vec<ToolParam>,
    /// The callback.
    pub callback: ToolCallback,
}

impl fmt::Debug for Tool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tool")
            .field("name", &self.name)
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

impl Tool {
    /// Builds a tool from a closure.
    pub fn new(
        name: &str,
        description: &str,
        params: Vec<ToolParam>,
        callback: impl Fn(&Map<String, Value>) -> Result<Value, String> + Send + Sync + 'static,
    ) -> Self {
        Tool {
            name: name.into(),
            description: description.into(),
            params,
            callback: Arc::new(callback),
        }
    }

    /// `name(a: str, b: int = None) -> any` — the signature line for an agent's prompt.
    pub fn signature(&self) -> String {
        let params: Vec<String> = self
            .params
            .iter()
            .map(|p| {
                if p.required {
                    format!("{}: {}", p.name, p.ty.name())
                } else {
                    format!("{}: {} = None", p.name, p.ty.name())
                }
            })
            .collect();
        format!("{}({})", self.name, params.join(", "))
    }

    fn check_args(&self, args: &Map<String, Value>) -> Result<(), String> {
        for k in args.keys() {
            if !self.params.iter().any(|p| &p.name == k) {
                return Err(format!("unexpected argument '{k}'"));
            }
        }
        for p in &self.params {
            match args.get(&p.name) {
                None | Some(Value::Null) if p.required => {
                    return Err(format!("missing required argument '{}'", p.name))
                }
                Some(v) if !v.is_null() && !p.ty.accepts(v) => {
                    return Err(format!("argument '{}' must be {}", p.name, p.ty.name()))
                }
                _ => {}
            }
        }
        Ok(())
    }
}

fn valid_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 64
}

/// The registered tools of a session, checked once at registration.
#[derive(Debug, Clone, Default)]
pub struct Toolbox {
    tools: BTreeMap<String, Tool>,
}

impl Toolbox {
    /// An empty toolbox.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a tool; names must be Python identifiers, unique, and not shadow the driver's.
    pub fn register(&mut self, tool: Tool) -> crate::Result<&mut Self> {
        let bad = |m: String| Err(crate::SandboxError::InvalidTool(m));
        if !valid_identifier(&tool.name) || tool.name.starts_with("__") {
            return bad(format!("'{}' is not a plain Python identifier", tool.name));
        }
        if RESERVED.contains(&tool.name.as_str()) {
            return bad(format!("'{}' is reserved", tool.name));
        }
        if self.tools.contains_key(&tool.name) {
            return bad(format!("'{}' is registered twice", tool.name));
        }
        for p in &tool.params {
            if !valid_identifier(&p.name) {
                return bad(format!(
                    "parameter '{}' of '{}' is not an identifier",
                    p.name, tool.name
                ));
            }
        }
        self.tools.insert(tool.name.clone(), tool);
        Ok(self)
    }

    /// The registered tools, by name.
    pub fn iter(&self) -> impl Iterator<Item = &Tool> {
        self.tools.values()
    }

    pub(crate) fn specs(&self) -> Value {
        Value::Array(
            self.tools
                .values()
                .map(|t| {
                    serde_json::json!({
                        "name": t.name,
                        "description": t.description,
                        "params": t.params.iter().map(|p| serde_json::json!({"name": p.name})).collect::<Vec<_>>(),
                    })
                })
                .collect(),
        )
    }

    pub(crate) fn get(&self, name: &str) -> Option<&Tool> {
        self.tools.get(name)
    }
}

/// What `final_answer(x)` handed to the host.
#[derive(Debug, Clone, PartialEq)]
pub struct FinalAnswer {
    /// `x` as JSON, or `Null` when it has no JSON form.
    pub value: Value,
    /// `repr(x)`, capped like a value.
    pub repr: String,
}

/// Per-exec host state the frame handler writes to.
#[derive(Debug, Default)]
pub(crate) struct ExecState {
    pub tool_calls: usize,
    pub max_tool_calls: usize,
    pub value_chars: usize,
    pub final_answer: Option<FinalAnswer>,
    pub result: Option<Map<String, Value>>,
    pub protocol_errors: usize,
}

impl ExecState {
    pub(crate) fn new(limits: &crate::Limits) -> Self {
        ExecState {
            max_tool_calls: limits.max_tool_calls,
            value_chars: limits.value_chars,
            ..Default::default()
        }
    }
}

fn answer(ok: bool, key: &str, v: Value) -> Vec<u8> {
    let mut m = Map::new();
    m.insert("ok".into(), Value::Bool(ok));
    m.insert(key.into(), v);
    serde_json::to_vec(&Value::Object(m)).unwrap_or_else(|_| b"{\"ok\":false}".to_vec())
}

fn refuse(st: &mut ExecState, why: &str) -> Vec<u8> {
    st.protocol_errors += 1;
    tracing::debug!(why, "refused a guest frame");
    answer(false, "error", Value::String(format!("protocol: {why}")))
}

/// Handles one guest -> host frame and returns the answer bytes. Every frame gets an answer,
/// even a malformed one, so the guest's transport never blocks on a refused frame.
pub(crate) fn handle_frame(tools: &Toolbox, st: &mut ExecState, frame: &[u8]) -> Vec<u8> {
    if frame.len() > crate::limits::MAX_FRAME_BYTES {
        return refuse(st, "frame too large");
    }
    let Ok(Value::Object(mut obj)) = serde_json::from_slice::<Value>(frame) else {
        return refuse(st, "frame is not a JSON object");
    };
    let op = obj
        .get("op")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    match op.as_str() {
        "tool" => {
            let Some(name) = obj.get("name").and_then(Value::as_str) else {
                return refuse(st, "tool frame without a name");
            };
            let Some(tool) = tools.get(name) else {
                return answer(
                    false,
                    "error",
                    Value::String(format!("no tool named '{name}'")),
                );
            };
            let args = match obj.remove("args") {
                Some(Value::Object(a)) => a,
                None => Map::new(),
                Some(_) => return refuse(st, "tool arguments must be an object"),
            };
            if st.tool_calls >= st.max_tool_calls {
                return answer(
                    false,
                    "error",
                    Value::String("tool-call budget of this exec is spent".into()),
                );
            }
            st.tool_calls += 1;
            if let Err(e) = tool.check_args(&args) {
                return answer(false, "error", Value::String(e));
            }
            let cb = tool.callback.clone();
            // A panicking callback must not unwind through wasmtime's host-call frames.
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cb(&args))) {
                Ok(Ok(v)) => answer(true, "value", v),
                Ok(Err(e)) => answer(false, "error", Value::String(e)),
                Err(_) => answer(false, "error", Value::String("the tool panicked".into())),
            }
        }
        "final" => {
            if st.final_answer.is_none() {
                let repr = obj
                    .get("repr")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                st.final_answer = Some(FinalAnswer {
                    value: obj.remove("value").unwrap_or(Value::Null),
                    repr: cap_chars(&repr, st.value_chars).0,
                });
            }
            answer(true, "value", Value::Null)
        }
        "result" => {
            st.result = Some(obj);
            answer(true, "value", Value::Null)
        }
        _ => refuse(st, "unknown op"),
    }
}

/// Caps `text` at `max` characters; returns (capped text, characters dropped).
pub(crate) fn cap_chars(text: &str, max: usize) -> (String, usize) {
    match text.char_indices().nth(max) {
        None => (text.to_string(), 0),
        Some((cut, _)) => (text[..cut].to_string(), text[cut..].chars().count()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn box_with_counter() -> (Toolbox, Arc<AtomicUsize>) {
        let n = Arc::new(AtomicUsize::new(0));
        let c = n.clone();
        let mut tb = Toolbox::new();
        tb.register(Tool::new(
            "add",
            "adds",
            vec![
                ToolParam::required("a", ParamType::Integer, ""),
                ToolParam::optional("b", ParamType::Number, ""),
            ],
            move |a| {
                c.fetch_add(1, Ordering::SeqCst);
                Ok(serde_json::json!(
                    a["a"].as_i64().unwrap() as f64
                        + a.get("b").and_then(Value::as_f64).unwrap_or(0.0)
                ))
            },
        ))
        .unwrap();
        (tb, n)
    }

    fn call(tb: &Toolbox, st: &mut ExecState, frame: &str) -> Value {
        serde_json::from_slice(&handle_frame(tb, st, frame.as_bytes())).unwrap()
    }

    #[test]
    fn frames_only_reach_registered_tools_with_checked_args() {
        let (tb, n) = box_with_counter();
        let mut st = ExecState {
            max_tool_calls: 10,
            value_chars: 100,
            ..Default::default()
        };
        assert_eq!(
            call(
                &tb,
                &mut st,
                r#"{"op":"tool","name":"add","args":{"a":2,"b":0.5}}"#
            )["value"],
            2.5
        );
        for bad in [
            r#"{"op":"tool","name":"nope","args":{}}"#,
            r#"{"op":"tool","name":"add","args":{"a":"2"}}"#,
            r#"{"op":"tool","name":"add","args":{"b":1}}"#,
            r#"{"op":"tool","name":"add","args":{"a":1,"evil":1}}"#,
            r#"{"op":"tool","name":"add","args":[1]}"#,
            r#"{"op":"shell","cmd":"id"}"#,
            "not json",
            "[1,2]",
        ] {
            assert_eq!(call(&tb, &mut st, bad)["ok"], false, "{bad}");
        }
        assert_eq!(n.load(Ordering::SeqCst), 1);
        assert_eq!(
            st.tool_calls, 4,
            "calls that named a tool are counted against the budget"
        );
    }

    #[test]
    fn tool_budget_is_enforced() {
        let (tb, n) = box_with_counter();
        let mut st = ExecState {
            max_tool_calls: 2,
            value_chars: 100,
            ..Default::default()
        };
        for _ in 0..5 {
            call(&tb, &mut st, r#"{"op":"tool","name":"add","args":{"a":1}}"#);
        }
        assert_eq!(n.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn first_final_answer_wins_and_is_capped() {
        let tb = Toolbox::new();
        let mut st = ExecState {
            value_chars: 3,
            ..Default::default()
        };
        call(
            &tb,
            &mut st,
            r#"{"op":"final","value":12345,"repr":"12345"}"#,
        );
        call(&tb, &mut st, r#"{"op":"final","value":1,"repr":"1"}"#);
        let fa = st.final_answer.unwrap();
        assert_eq!(
            (fa.value, fa.repr.as_str()),
            (serde_json::json!(12345), "123")
        );
    }

    #[test]
    fn cap_chars_counts_characters_not_bytes() {
        assert_eq!(cap_chars("héllo", 2), ("hé".to_string(), 3));
        assert_eq!(cap_chars("abc", 5), ("abc".to_string(), 0));
    }
}
