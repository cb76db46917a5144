//! The OpenAI-compatible API on the bare model: `POST /v1/chat/completions` (streamed or
//! not, `n` choices decoded as parallel sequences over one shared prompt, `stop`, `seed`,
//! `usage`, and vLLM's `continue_final_message`) and `GET /v1/models`.
use std::{
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use axum::{
    body::Bytes,
    extract::State,
    response::{
        sse::{Event, Sse},
        IntoResponse, Response,
    },
    Json,
};
use futures_util::stream::{self, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use small_agent::{
    engine::{DEFAULT_MIN_P, DEFAULT_TOP_K},
    ChatMessage, Completion, FinishReason, GenerateParams, SamplingParams,
};
use tokio::sync::mpsc;

use crate::{
    agent_api::random_id,
    error::{parse_json, ApiError},
    pool::JobControl,
    server::AppState,
    worker::{ChatEvent, ChatJob, Job, JobKind},
};

/// Tokens generated when a request sets no `max_tokens` (the context may end it sooner).
pub const DEFAULT_CHAT_MAX_TOKENS: u32 = 2048;
/// Most stop strings of a request (OpenAI's cap).
pub const MAX_STOP_STRINGS: usize = 4;

/// The body of `POST /v1/chat/completions`. Fields this server does not use (e.g.
/// `frequency_penalty`, `user`) are accepted and ignored, as OpenAI clients send them.
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    /// Ignored: the server has one model.
    #[serde(default)]
    pub model: Option<String>,
    /// The conversation.
    pub messages: Vec<InMessage>,
    /// Stream SSE chunks.
    #[serde(default)]
    pub stream: bool,
    /// `include_usage`: a last chunk with the usage.
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    /// Cap on generated tokens per choice.
    #[serde(default)]
    pub max_tokens: Option<u32>,
    /// OpenAI's newer name for `max_tokens`.
    #[serde(default)]
    pub max_completion_tokens: Option<u32>,
    /// Sampling temperature (0: greedy).
    #[serde(default)]
    pub temperature: Option<f32>,
    /// Nucleus threshold.
    #[serde(default)]
    pub top_p: Option<f32>,
    /// Seed; choice `i` samples with `seed + i`.
    #[serde(default)]
    pub seed: Option<i64>,
    /// Stop strings (one or a list).
    #[serde(default)]
    pub stop: Option<Stop>,
    /// Choices, decoded as parallel sequences over one evaluation of the prompt.
    #[serde(default)]
    pub n: Option<usize>,
    /// Continue the trailing assistant message instead of starting a new one (vLLM).
    #[serde(default)]
    pub continue_final_message: Option<bool>,
    /// Open an assistant turn after the messages (default true; false with
    /// `continue_final_message`).
    #[serde(default)]
    pub add_generation_prompt: Option<bool>,
}

/// `stream_options`.
#[derive(Debug, Deserialize)]
pub struct StreamOptions {
    /// Send a last chunk with the usage.
    #[serde(default)]
    pub include_usage: bool,
}

/// `stop`: one string or a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    /// One.
    One(String),
    /// Several.
    Many(Vec<String>),
}

/// A message of the request.
#[derive(Debug, Deserialize)]
pub struct InMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text, or a list of parts of which the `text` ones are used.
    #[serde(default)]
    pub content: Option<Content>,
}

/// Message content.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// Parts (`{"type": "text", "text": ...}`).
    Parts(Vec<Part>),
}

/// A content part.
#[derive(Debug, Deserialize)]
pub struct Part {
    /// `text` (others are refused).
    #[serde(rename = "type")]
    pub kind: String,
    /// The text.
    #[serde(default)]
    pub text: Option<String>,
}

/// A validated request, ready for a session.
#[derive(Debug)]
pub struct Prepared {
    /// The prompt text (template applied).
    pub prompt: String,
    /// Choices.
    pub n: usize,
    /// Generation settings.
    pub params: GenerateParams,
    /// Stream.
    pub stream: bool,
    /// Usage chunk when streaming.
    pub include_usage: bool,
    /// The request set a seed (the prompt is then evaluated from scratch).
    pub seeded: bool,
}

/// Checks a request and renders its prompt with the model's chat template.
pub fn prepare(state: &AppState, req: ChatRequest) -> Result<Prepared, ApiError> {
    if req.messages.is_empty() {
        return Err(ApiError::field("messages", "`messages` is empty"));
    }
    let mut messages = Vec::with_capacity(req.messages.len());
    for (i, m) in req.messages.iter().enumerate() {
        if !matches!(m.role.as_str(), "system" | "user" | "assistant") {
            return Err(ApiError::field(
                format!("messages[{i}].role"),
                format!(
                    "`messages[{i}].role` is {:?}; this server takes system, user and assistant",
                    m.role
                ),
            ));
        }
        let text = match &m.content {
            None => String::new(),
            Some(Content::Text(t)) => t.clone(),
            Some(Content::Parts(parts)) => {
                let mut t = String::new();
                for (j, p) in parts.iter().enumerate() {
                    match (p.kind.as_str(), &p.text) {
                        ("text", Some(s)) => t.push_str(s),
                        _ => return Err(ApiError::field(
                            format!("messages[{i}].content[{j}]"),
                            "only text parts (`{\"type\": \"text\", \"text\": ...}`) are supported",
                        )),
                    }
                }
                t
            }
        };
        messages.push(ChatMessage::new(&m.role, text));
    }
    let n = req.n.unwrap_or(1);
    if n == 0 || n > state.config.max_choices {
        return Err(ApiError::field(
            "n",
            format!(
                "`n` must be between 1 and {}, got {n}",
                state.config.max_choices
            ),
        ));
    }
    let max_tokens = req
        .max_completion_tokens
        .or(req.max_tokens)
        .unwrap_or(DEFAULT_CHAT_MAX_TOKENS);
    if max_tokens == 0 {
        return Err(ApiError::field(
            "max_tokens",
            "`max_tokens` must be at least 1",
        ));
    }
    let temperature = req
        .temperature
        .unwrap_or(small_agent::engine::DEFAULT_TEMPERATURE);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::field(
            "temperature",
            format!("`temperature` must be between 0 and 2, got {temperature}"),
        ));
    }
    let top_p = req.top_p.unwrap_or(small_agent::engine::DEFAULT_TOP_P);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::field(
            "top_p",
            format!("`top_p` must be in (0, 1], got {top_p}"),
        ));
    }
    let stop = match req.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(v)) => v,
    };
    if stop.len() > MAX_STOP_STRINGS || stop.iter().any(|s| s.is_empty()) {
        return Err(ApiError::field(
            "stop",
            format!("`stop` takes 1 to {MAX_STOP_STRINGS} non-empty strings"),
        ));
    }
    let cont = req.continue_final_message.unwrap_or(false);
    let add_prompt = req.add_generation_prompt.unwrap_or(!cont);
    let model = state.runtime.model();
    let prompt = if cont {
        if add_prompt {
            return Err(ApiError::field(
                "continue_final_message",
                "`continue_final_message` and `add_generation_prompt` cannot both be true",
            ));
        }
        let (last, before) = messages.split_last().expect("not empty");
        if last.role != "assistant" {
            return Err(ApiError::field(
                "continue_final_message",
                "`continue_final_message` needs the last message to be the assistant's",
            ));
        }
        let mut p = render(model, before, true)?;
        p.push_str(&last.content);
        p
    } else {
        render(model, &messages, add_prompt)?
    };
    let seeded = req.seed.is_some();
    let seed = req.seed.map(|s| s as u32).unwrap_or_else(|| {
        random_id()
            .as_bytes()
            .iter()
            .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(*b as u32))
    });
    let _ = req.model;
    Ok(Prepared {
        prompt,
        n,
        params: GenerateParams {
            max_tokens,
            sampling: SamplingParams {
                temperature,
                top_p,
                top_k: DEFAULT_TOP_K,
                min_p: DEFAULT_MIN_P,
                seed,
                ..SamplingParams::default()
            },
            stop,
            ..GenerateParams::default()
        },
        stream: req.stream,
        include_usage: req.stream_options.as_ref().is_some_and(|o| o.include_usage),
        seeded,
    })
}

fn render(
    model: &small_agent::Model,
    messages: &[ChatMessage],
    add_assistant: bool,
) -> Result<String, ApiError> {
    model.render_chat(messages, add_assistant).map_err(|e| {
        ApiError::field(
            "messages",
            format!("the chat template refused the messages: {e}"),
        )
    })
}

fn finish_reason(c: &Completion) -> &'static str {
    match c.finish_reason {
        FinishReason::Length | FinishReason::ContextFull => "length",
        _ => "stop",
    }
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn usage(prompt_tokens: usize, completions: &[Completion]) -> Value {
    let gen: usize = completions.iter().map(|c| c.stats.gen_tokens).sum();
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": gen,
        "total_tokens": prompt_tokens + gen,
    })
}

/// Cancels the job when the response (or its stream) is dropped, and forgets it.
struct ChatGuard {
    control: Arc<JobControl>,
    pool: Arc<crate::pool::Pool>,
    id: String,
}

impl Drop for ChatGuard {
    fn drop(&mut self) {
        self.control.cancel();
        self.pool.unregister(&self.id);
    }
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(State(state): State<AppState>, body: Bytes) -> Response {
    match chat_inner(state, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn chat_inner(state: AppState, body: Bytes) -> Result<Response, ApiError> {
    let req: ChatRequest = parse_json(&body)?;
    let p = prepare(&state, req)?;
    let (lease, _) = state.pool.acquire(None).await?;
    let id = format!("chatcmpl-{}", random_id());
    let control = Arc::new(JobControl::default());
    // Registered like agent runs: shutdown cancels it, and so does a DELETE of its id.
    state.pool.register(&id, control.clone());
    let guard = ChatGuard {
        control: control.clone(),
        pool: state.pool.clone(),
        id: id.clone(),
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    state.pool.submit(Job {
        lease,
        control,
        kind: JobKind::Chat(ChatJob {
            prompt: p.prompt,
            fresh: p.seeded,
            n: p.n,
            params: p.params,
            events: tx,
        }),
    })?;
    let created = now_s();
    let model = state.model_id.clone();
    if !p.stream {
        while let Some(e) = rx.recv().await {
            match e {
                ChatEvent::Delta { .. } => {}
                ChatEvent::Error(e) => return Err(e),
                ChatEvent::Done {
                    completions,
                    prompt_tokens,
                } => {
                    drop(guard);
                    let choices: Vec<Value> = completions
                        .iter()
                        .enumerate()
                        .map(|(i, c)| {
                            json!({
                                "index": i,
                                "message": {"role": "assistant", "content": c.text},
                                "finish_reason": finish_reason(c),
                                "logprobs": null,
                            })
                        })
                        .collect();
                    return Ok(Json(json!({
                        "id": id,
                        "object": "chat.completion",
                        "created": created,
                        "model": model,
                        "choices": choices,
                        "usage": usage(prompt_tokens, &completions),
                    }))
                    .into_response());
                }
            }
        }
        return Err(ApiError::Internal(
            "the completion ended without a result".into(),
        ));
    }
    // Streaming: wait for the first event, so that an error before any text is an HTTP
    // error, not a broken stream.
    let first = rx.recv().await;
    if let Some(ChatEvent::Error(e)) = first {
        return Err(e);
    }
    let n = p.n;
    let include_usage = p.include_usage;
    let chunk = move |choices: Value, usage: Option<Value>| {
        let mut c = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": choices,
        });
        if let Some(u) = usage {
            c["usage"] = u;
        }
        Event::default().data(c.to_string())
    };
    let roles: Vec<Event> = (0..n)
        .map(|i| {
            chunk(
                json!([{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]),
                None,
            )
        })
        .collect();
    let chunk2 = chunk.clone();
    let rest = stream::iter(first)
        .chain(stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|e| (e, rx))
        }))
        .flat_map(move |e| {
            let events: Vec<Event> = match e {
                ChatEvent::Delta { index, text } => vec![chunk2(
                    json!([{"index": index, "delta": {"content": text}, "finish_reason": null}]),
                    None,
                )],
                ChatEvent::Done {
                    completions,
                    prompt_tokens,
                } => {
                    let mut v: Vec<Event> = completions
                        .iter()
                        .enumerate()
                        .map(|(i, c)| {
                            chunk2(
                                json!([{"index": i, "delta": {}, "finish_reason": finish_reason(c)}]),
                                None,
                            )
                        })
                        .collect();
                    if include_usage {
                        v.push(chunk2(json!([]), Some(usage(prompt_tokens, &completions))));
                    }
                    v.push(Event::default().data("[DONE]"));
                    v
                }
                ChatEvent::Error(e) => vec![Event::default().data(e.body().to_string())],
            };
            stream::iter(events)
        });
    let events = stream::iter(roles).chain(rest).map(move |e| {
        let _ = &guard;
        Ok::<_, std::convert::Infallible>(e)
    });
    Ok(Sse::new(events).into_response())
}

/// `GET /v1/models`.
pub async fn models(State(state): State<AppState>) -> Response {
    Json(json!({
        "object": "list",
        "data": [{
            "id": state.model_id,
            "object": "model",
            "created": state.started_s,
            "owned_by": "small-agent",
        }],
    }))
    .into_response()
}
