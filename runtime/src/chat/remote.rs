//! The remote back-end: an OpenAI-compatible `/v1/chat/completions` server.
//!
//! Requests stream (`stream: true`), so the agent sees text as it comes, a cancelled call
//! closes its connections at once (servers stop decoding a request whose client has gone),
//! and a candidate ends as soon as it produces a stop string even on a server that ignores
//! `stop`. A step's `n` candidates are asked for as `n` choices of one request where the
//! server honours `n`, otherwise as `n` concurrent requests with seeds `seed + i`; which of
//! the two works is learnt on the first multi-candidate step.

use std::io::{BufRead, BufReader};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::sse::{parse_line, SseLine};
use super::{ChatError, ChatModel};
use crate::engine::{
    AfterEnd, CallStats, ChatMessage, Completion, FinishReason, GenerateParams, StopBuffer,
};

/// Time allowed to open a connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest silence allowed inside a response (a long prompt on a busy server comes first).
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(300);
/// Attempts after the first on a connection failure, HTTP 429 or 5xx, before any text came.
pub const DEFAULT_RETRIES: u32 = 3;
/// First back-off delay; it doubles with each retry.
pub const RETRY_BASE_DELAY: Duration = Duration::from_millis(500);
/// The OpenAI API takes at most this many stop strings (the rest are applied here).
pub const MAX_STOP_STRINGS: usize = 4;
/// How much of an unusable answer an error message quotes.
const QUOTE_CHARS: usize = 300;

/// Errors of the remote back-end. Each names the URL it was talking to.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RemoteError {
    /// The URL is not something we can talk to.
    #[error("model URL {url}: {why}")]
    BadUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        why: String,
    },
    /// No connection (refused, no route, timed out).
    #[error(
        "cannot reach the model server at {url}: {detail}. Is it running? (for example: \
         llama-server -m MODEL.gguf --port 8080, then --model-url http://127.0.0.1:8080)"
    )]
    Unreachable {
        /// The endpoint.
        url: String,
        /// The transport error.
        detail: String,
    },
    /// The server answered with an HTTP error.
    #[error("the model server at {url} answered HTTP {status}: {body}")]
    Status {
        /// The endpoint.
        url: String,
        /// The status code.
        status: u16,
        /// The start of the response body.
        body: String,
    },
    /// The server answered something that is not an OpenAI chat completion.
    #[error("the model server at {url} answered something that is not an OpenAI-compatible chat completion: {detail}")]
    Garbage {
        /// The endpoint.
        url: String,
        /// What was wrong, with the start of what came.
        detail: String,
    },
    /// The server lists no model and none was named.
    #[error("the model server at {url} lists no model in /v1/models; name one with --model-name")]
    NoModel {
        /// The server's base URL.
        url: String,
    },
}

/// How to reach the server.
#[derive(Debug, Clone)]
pub struct RemoteConfig {
    /// Base URL: `http://HOST:PORT`, with or without a trailing `/v1`.
    pub url: String,
    /// The model to ask for; `None` takes the first one the server lists.
    pub model: Option<String>,
    /// Sent as `Authorization: Bearer KEY`.
    pub api_key: Option<String>,
    /// See [`DEFAULT_CONNECT_TIMEOUT`].
    pub connect_timeout: Duration,
    /// See [`DEFAULT_READ_TIMEOUT`].
    pub read_timeout: Duration,
    /// See [`DEFAULT_RETRIES`].
    pub retries: u32,
    /// Ask for each candidate with a request of its own instead of `n` choices of one
    /// (e.g. replicas behind a load balancer share the candidates out); by default `n` is
    /// tried first and the separate requests are the fallback.
    pub request_per_candidate: bool,
}

impl RemoteConfig {
    /// The defaults for a server at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            model: None,
            api_key: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            read_timeout: DEFAULT_READ_TIMEOUT,
            retries: DEFAULT_RETRIES,
            request_per_candidate: false,
        }
    }
}

/// A chat model behind an OpenAI-compatible server.
pub struct RemoteChat {
    config: RemoteConfig,
    base: String,
    model: String,
    http: ureq::Agent,
    /// Whether the server returns `n` choices for one request: unknown until a
    /// multi-candidate step has asked.
    n_choices: Option<bool>,
    /// Whether the log already said that the step grammar is not sent.
    grammar_noted: bool,
}

impl std::fmt::Debug for RemoteChat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteChat")
            .field("base", &self.base)
            .field("model", &self.model)
            .field("n_choices", &self.n_choices)
            .finish_non_exhaustive()
    }
}

/// `http://host:port[/v1][/]` → `http://host:port`.
fn normalise_base(url: &str) -> Result<String, RemoteError> {
    let bad = |why: &str| RemoteError::BadUrl {
        url: url.to_owned(),
        why: why.to_owned(),
    };
    let trimmed = url.trim().trim_end_matches('/');
    if trimmed.starts_with("https://") {
        return Err(bad(
            "https is not built into small-agent; reach the server over http on the same \
             machine or network (or through an SSH tunnel)",
        ));
    }
    let rest = trimmed
        .strip_prefix("http://")
        .ok_or_else(|| bad("expected http://HOST:PORT"))?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err(bad("no host in it"));
    }
    let base = trimmed
        .strip_suffix("/v1/chat/completions")
        .or_else(|| trimmed.strip_suffix("/v1"))
        .unwrap_or(trimmed);
    Ok(base.to_owned())
}

fn quote(text: &str) -> String {
    let t = text.trim();
    if t.chars().count() <= QUOTE_CHARS {
        t.to_owned()
    } else {
        format!("{}…", t.chars().take(QUOTE_CHARS).collect::<String>())
    }
}

impl RemoteChat {
    /// Connects: checks the URL and asks the server for its models (which also proves it
    /// answers); the configured model name is used as given, or the first one listed.
    pub fn connect(config: RemoteConfig) -> Result<Self, RemoteError> {
        let base = normalise_base(&config.url)?;
        let http = ureq::AgentBuilder::new()
            .timeout_connect(config.connect_timeout)
            .timeout_read(config.read_timeout)
            .timeout_write(config.read_timeout)
            .build();
        let n_choices = config.request_per_candidate.then_some(false);
        let mut chat = Self {
            config,
            base,
            model: String::new(),
            http,
            n_choices,
            grammar_noted: false,
        };
        chat.model = match chat.config.model.clone() {
            Some(m) => m,
            None => chat.first_model()?,
        };
        Ok(chat)
    }

    /// The model name sent with each request.
    pub fn model_name(&self) -> &str {
        &self.model
    }

    /// The chat completions endpoint.
    pub fn endpoint(&self) -> String {
        format!("{}/v1/chat/completions", self.base)
    }

    /// Whether the server returned `n` choices for one request (`None`: not asked yet).
    pub fn serves_n_choices(&self) -> Option<bool> {
        self.n_choices
    }

    fn first_model(&self) -> Result<String, RemoteError> {
        let url = format!("{}/v1/models", self.base);
        let mut req = self.http.get(&url);
        if let Some(key) = &self.config.api_key {
            req = req.set("Authorization", &format!("Bearer {key}"));
        }
        let resp = with_retries(self.config.retries, &AtomicBool::new(false), || {
            req.clone().call().map_err(Box::new)
        })
        .map_err(|e| transport_error(&url, e))?;
        let body = resp.into_string().map_err(|e| RemoteError::Garbage {
            url: url.clone(),
            detail: e.to_string(),
        })?;
        let v: Value = serde_json::from_str(&body).map_err(|e| RemoteError::Garbage {
            url: url.clone(),
            detail: format!("{e}: {}", quote(&body)),
        })?;
        let first = v["data"]
            .as_array()
            .and_then(|a| a.first())
            .and_then(|m| m["id"].as_str())
            .map(str::to_owned);
        first.ok_or(RemoteError::NoModel {
            url: self.base.clone(),
        })
    }

    /// The request body for `n` choices with sampling seed `seed`.
    fn body(
        &self,
        messages: &[ChatMessage],
        params: &GenerateParams,
        n: usize,
        seed: u32,
    ) -> Value {
        let mut msgs: Vec<Value> = messages
            .iter()
            .map(|m| json!({"role": m.role, "content": m.content}))
            .collect();
        let s = &params.sampling;
        let mut body = json!({
            "model": self.model,
            "stream": true,
            "stream_options": {"include_usage": true},
            "max_tokens": params.max_tokens,
            "temperature": s.temperature.max(0.0),
            "top_p": s.top_p,
            "seed": seed,
        });
        if n > 1 {
            body["n"] = json!(n);
        }
        if !params.stop.is_empty() {
            let stops: Vec<&String> = params.stop.iter().take(MAX_STOP_STRINGS).collect();
            body["stop"] = json!(stops);
        }
        if let Some(p) = &params.prefill {
            // Continue a partial assistant turn (vLLM's and recent llama-server's way).
            msgs.push(json!({"role": "assistant", "content": p}));
            body["continue_final_message"] = json!(true);
            body["add_generation_prompt"] = json!(false);
        }
        body["messages"] = Value::Array(msgs);
        body
    }

    /// One single-choice request per candidate in `which`, candidate `i` with seed `seed + i`.
    fn separate(
        &self,
        messages: &[ChatMessage],
        params: &GenerateParams,
        which: &[usize],
    ) -> Vec<(Value, Vec<usize>)> {
        let seed = params.sampling.seed;
        which
            .iter()
            .map(|&i| {
                (
                    self.body(messages, params, 1, seed.wrapping_add(i as u32)),
                    vec![i],
                )
            })
            .collect()
    }

    /// Runs `requests` (body, candidate index of each choice) concurrently and feeds their
    /// streams to the callbacks. Returns each candidate's state.
    fn run(
        &self,
        requests: Vec<(Value, Vec<usize>)>,
        n: usize,
        params: &GenerateParams,
        on_text: &mut dyn FnMut(usize, &str) -> bool,
        on_done: &mut dyn FnMut(usize, &Completion) -> AfterEnd,
        cands: &mut [Cand],
    ) -> Result<bool, RemoteError> {
        // One flag per request: a request whose candidates all ended here (a stop string the
        // server did not apply) is closed alone; raising them all ends the call.
        let aborts: Vec<Arc<AtomicBool>> = requests
            .iter()
            .map(|_| Arc::new(AtomicBool::new(false)))
            .collect();
        let abort_all = || aborts.iter().for_each(|a| a.store(true, Ordering::Relaxed));
        let (tx, rx) = mpsc::channel::<Event>();
        let url = self.endpoint();
        let mut open = 0;
        for (req_id, (body, _)) in requests.iter().enumerate() {
            let tx = tx.clone();
            let abort = aborts[req_id].clone();
            let http = self.http.clone();
            let url = url.clone();
            let key = self.config.api_key.clone();
            let retries = self.config.retries;
            let body = body.clone();
            let prefill = params.prefill.clone();
            open += 1;
            std::thread::Builder::new()
                .name(format!("model-request-{req_id}"))
                .spawn(move || {
                    let call = Call {
                        req: req_id,
                        http: &http,
                        url: &url,
                        key: key.as_deref(),
                        body: &body,
                        prefill: prefill.as_deref(),
                        retries,
                    };
                    stream_request(&call, &abort, &tx)
                })
                .map_err(|e| RemoteError::Unreachable {
                    url: self.endpoint(),
                    detail: format!("could not start a request thread: {e}"),
                })?;
        }
        drop(tx);
        let mut stops: Vec<StopBuffer<'_>> =
            (0..n).map(|_| StopBuffer::new(&params.stop)).collect();
        let mut cancelled = false;
        let mut stopped_all = false;
        while open > 0 {
            let Ok(ev) = rx.recv() else { break };
            match ev {
                Event::Text { req, choice, text } => {
                    let Some(&i) = requests[req].1.get(choice) else {
                        continue;
                    };
                    let c = &mut cands[i];
                    if c.done {
                        continue;
                    }
                    c.seen = true;
                    c.chunks += 1;
                    if c.first_at.is_none() {
                        c.first_at = Some(Instant::now());
                    }
                    let (emit, stop) = stops[i].push(&text);
                    c.text.push_str(&emit);
                    if !emit.is_empty() && !on_text(i, &emit) {
                        cancelled = true;
                    }
                    if let Some(s) = stop {
                        c.finish(FinishReason::Stop, Some(s.to_owned()));
                        if requests[req].1.iter().all(|&j| cands[j].done) {
                            aborts[req].store(true, Ordering::Relaxed);
                        }
                    }
                }
                Event::Finish {
                    req,
                    choice,
                    reason,
                } => {
                    let Some(&i) = requests[req].1.get(choice) else {
                        continue;
                    };
                    let c = &mut cands[i];
                    c.seen = true;
                    if !c.done {
                        let tail = stops[i].finish("");
                        c.text.push_str(&tail);
                        if !tail.is_empty() && !on_text(i, &tail) {
                            cancelled = true;
                        }
                        let why = match reason.as_str() {
                            "length" => FinishReason::Length,
                            _ => FinishReason::Stop,
                        };
                        c.finish(why, None);
                    }
                }
                Event::Usage { req, usage } => {
                    let owners = &requests[req].1;
                    for &i in owners {
                        let c = &mut cands[i];
                        c.prompt_tokens = usage.prompt_tokens;
                        c.cached_tokens = usage.cached_tokens;
                        if owners.len() == 1 {
                            c.gen_tokens = Some(usage.completion_tokens);
                        }
                        c.server_ms = usage.timings;
                    }
                }
                Event::End { req } => {
                    open -= 1;
                    // A stream that ended without a finish reason ends its candidates here.
                    for &i in &requests[req].1 {
                        if cands[i].seen && !cands[i].done {
                            let tail = stops[i].finish("");
                            cands[i].text.push_str(&tail);
                            if !tail.is_empty() && !on_text(i, &tail) {
                                cancelled = true;
                            }
                            cands[i].finish(FinishReason::Stop, None);
                        }
                    }
                }
                Event::Failed {
                    req,
                    error,
                    got_text,
                } => {
                    open -= 1;
                    if !got_text && !cancelled && !stopped_all {
                        abort_all();
                        // A multi-choice request refused for its `n` is retried as single ones.
                        if requests[req].1.len() > 1 {
                            if let RemoteError::Status {
                                status: 400..=499, ..
                            } = error
                            {
                                return Ok(false);
                            }
                        }
                        return Err(error);
                    }
                    tracing::warn!(error = %error, "a model request failed after it had streamed");
                    for &i in &requests[req].1 {
                        if !cands[i].done {
                            let tail = stops[i].finish("");
                            cands[i].text.push_str(&tail);
                            cands[i].finish(FinishReason::Stop, None);
                        }
                    }
                }
            }
            if cancelled {
                abort_all();
                for c in cands.iter_mut().filter(|c| !c.done) {
                    c.finish(FinishReason::Cancelled, None);
                }
                return Ok(true);
            }
            // Tell the caller about each candidate that ended, in the order they ended.
            for (i, c) in cands.iter_mut().enumerate() {
                if c.done && !c.reported && !stopped_all {
                    c.reported = true;
                    let done = c.completion();
                    let after = on_done(i, &done);
                    if after.stop {
                        stopped_all = true;
                    }
                }
            }
            if stopped_all && cands.iter().any(|c| !c.done) {
                abort_all();
                for c in cands.iter_mut().filter(|c| !c.done) {
                    c.finish(FinishReason::Abandoned, None);
                    c.reported = true;
                }
                return Ok(true);
            }
            // Every candidate ended: the streams stay open for their usage chunks.
        }
        Ok(true)
    }
}

/// One candidate's reply as it comes in.
#[derive(Debug, Default, Clone)]
struct Cand {
    text: String,
    done: bool,
    reported: bool,
    seen: bool,
    finish: Option<FinishReason>,
    stop: Option<String>,
    chunks: usize,
    started: Option<Instant>,
    first_at: Option<Instant>,
    ended_at: Option<Instant>,
    prompt_tokens: usize,
    cached_tokens: usize,
    gen_tokens: Option<usize>,
    server_ms: Option<(f64, f64)>,
}

impl Cand {
    fn finish(&mut self, why: FinishReason, stop: Option<String>) {
        self.done = true;
        self.finish = Some(why);
        self.stop = stop;
        self.ended_at = Some(Instant::now());
    }

    fn completion(&self) -> Completion {
        let started = self.started.unwrap_or_else(Instant::now);
        let first = self.first_at.unwrap_or(started);
        let end = self.ended_at.unwrap_or_else(Instant::now);
        // The server's own timings where it reports them (llama-server), else the clock here.
        let (prompt_ms, gen_ms) = self.server_ms.unwrap_or((
            first.duration_since(started).as_secs_f64() * 1e3,
            end.duration_since(first).as_secs_f64() * 1e3,
        ));
        let gen_tokens = self.gen_tokens.unwrap_or(self.chunks);
        Completion {
            text: self.text.clone(),
            finish_reason: self.finish.unwrap_or(FinishReason::Stop),
            stop: self.stop.clone(),
            stats: CallStats {
                prompt_tokens: self.prompt_tokens,
                cached_tokens: self.cached_tokens,
                prompt_ms,
                gen_tokens,
                gen_ms,
                decoded_tokens: gen_tokens,
            },
        }
    }
}

/// What the usage chunk says.
#[derive(Debug, Clone, Copy)]
struct Usage {
    prompt_tokens: usize,
    cached_tokens: usize,
    completion_tokens: usize,
    /// llama-server's `timings`: prompt and generation milliseconds.
    timings: Option<(f64, f64)>,
}

/// What a request thread reports.
enum Event {
    Text {
        req: usize,
        choice: usize,
        text: String,
    },
    Finish {
        req: usize,
        choice: usize,
        reason: String,
    },
    Usage {
        req: usize,
        usage: Usage,
    },
    End {
        req: usize,
    },
    Failed {
        req: usize,
        error: RemoteError,
        got_text: bool,
    },
}

fn transport_error(url: &str, e: Box<ureq::Error>) -> RemoteError {
    match *e {
        ureq::Error::Status(status, resp) => RemoteError::Status {
            url: url.to_owned(),
            status,
            body: quote(&resp.into_string().unwrap_or_default()),
        },
        ureq::Error::Transport(t) => RemoteError::Unreachable {
            url: url.to_owned(),
            detail: t.to_string(),
        },
    }
}

/// Whether an error is worth another attempt: no connection, too many requests, or a
/// server-side failure.
fn retryable(e: &ureq::Error) -> bool {
    match e {
        ureq::Error::Status(status, _) => *status == 429 || *status >= 500,
        ureq::Error::Transport(_) => true,
    }
}

/// Calls `f` until it succeeds, fails for good, `retries` are spent or `abort` is raised,
/// sleeping [`RETRY_BASE_DELAY`] · 2^k between attempts (or the server's `Retry-After`).
fn with_retries(
    retries: u32,
    abort: &AtomicBool,
    mut f: impl FnMut() -> Result<ureq::Response, Box<ureq::Error>>,
) -> Result<ureq::Response, Box<ureq::Error>> {
    let mut attempt = 0;
    loop {
        match f() {
            Ok(r) => return Ok(r),
            Err(e) if attempt < retries && retryable(&e) && !abort.load(Ordering::Relaxed) => {
                let mut delay = RETRY_BASE_DELAY * 2u32.pow(attempt);
                if let ureq::Error::Status(_, resp) = &*e {
                    if let Some(secs) = resp
                        .header("Retry-After")
                        .and_then(|s| s.parse::<u64>().ok())
                    {
                        delay = Duration::from_secs(secs.min(30));
                    }
                }
                tracing::debug!(attempt, ?delay, error = %e, "model request failed; retrying");
                let until = Instant::now() + delay;
                while Instant::now() < until && !abort.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// What one request thread sends.
struct Call<'a> {
    req: usize,
    http: &'a ureq::Agent,
    url: &'a str,
    key: Option<&'a str>,
    body: &'a Value,
    /// The reply's forced start: a whole (not streamed) message may repeat it.
    prefill: Option<&'a str>,
    retries: u32,
}

/// One request on its own thread: POST with retries, then the event stream (or a whole JSON
/// completion, from a server that does not stream) turned into [`Event`]s.
fn stream_request(call: &Call<'_>, abort: &AtomicBool, tx: &mpsc::Sender<Event>) {
    let Call {
        req,
        http,
        url,
        key,
        body,
        prefill,
        retries,
    } = *call;
    let fail = |error: RemoteError, got_text: bool| {
        let _ = tx.send(Event::Failed {
            req,
            error,
            got_text,
        });
    };
    let resp = with_retries(retries, abort, || {
        let mut r = http.post(url).set("Content-Type", "application/json");
        if let Some(k) = key {
            r = r.set("Authorization", &format!("Bearer {k}"));
        }
        r.send_string(&body.to_string()).map_err(Box::new)
    });
    let resp = match resp {
        Ok(r) => r,
        Err(e) => return fail(transport_error(url, e), false),
    };
    let garbage = |detail: String| RemoteError::Garbage {
        url: url.to_owned(),
        detail,
    };
    if resp.content_type() == "application/json" {
        // Not streamed: one whole completion.
        let text = match resp.into_string() {
            Ok(t) => t,
            Err(e) => return fail(garbage(e.to_string()), false),
        };
        match serde_json::from_str::<Value>(&text) {
            Ok(v) if v["choices"].is_array() => {
                for (k, ch) in v["choices"].as_array().into_iter().flatten().enumerate() {
                    let choice = ch["index"].as_u64().map_or(k, |x| x as usize);
                    let mut content = ch["message"]["content"].as_str().unwrap_or_default();
                    // llama-server's whole message includes the continued start.
                    if let Some(p) = prefill {
                        content = content.strip_prefix(p).unwrap_or(content);
                    }
                    let _ = tx.send(Event::Text {
                        req,
                        choice,
                        text: content.to_owned(),
                    });
                    let reason = ch["finish_reason"].as_str().unwrap_or("stop").to_owned();
                    let _ = tx.send(Event::Finish {
                        req,
                        choice,
                        reason,
                    });
                }
                if let Some(u) = usage_of(&v) {
                    let _ = tx.send(Event::Usage { req, usage: u });
                }
                let _ = tx.send(Event::End { req });
            }
            _ => fail(garbage(quote(&text)), false),
        }
        return;
    }
    let mut reader = BufReader::new(resp.into_reader());
    let mut line = String::new();
    let mut got_text = false;
    loop {
        if abort.load(Ordering::Relaxed) {
            // Dropping the reader closes the connection: the server stops this request.
            let _ = tx.send(Event::End { req });
            return;
        }
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                return fail(
                    RemoteError::Unreachable {
                        url: url.to_owned(),
                        detail: format!("the stream broke off: {e}"),
                    },
                    got_text,
                )
            }
        }
        let payload = match parse_line(&line) {
            SseLine::Done => break,
            SseLine::Other => continue,
            SseLine::Data(p) => p,
        };
        let v: Value = match serde_json::from_str(payload) {
            Ok(v) => v,
            Err(e) => return fail(garbage(format!("{e}: {}", quote(payload))), got_text),
        };
        if let Some(err) = v.get("error") {
            return fail(
                garbage(format!("error in the stream: {}", quote(&err.to_string()))),
                got_text,
            );
        }
        let Some(choices) = v["choices"].as_array() else {
            return fail(
                garbage(format!("a chunk without choices: {}", quote(payload))),
                got_text,
            );
        };
        for (k, ch) in choices.iter().enumerate() {
            let choice = ch["index"].as_u64().map_or(k, |x| x as usize);
            if let Some(t) = ch["delta"]["content"].as_str() {
                if !t.is_empty() {
                    got_text = true;
                    let _ = tx.send(Event::Text {
                        req,
                        choice,
                        text: t.to_owned(),
                    });
                }
            }
            if let Some(reason) = ch["finish_reason"].as_str() {
                let _ = tx.send(Event::Finish {
                    req,
                    choice,
                    reason: reason.to_owned(),
                });
            }
        }
        if let Some(u) = usage_of(&v) {
            let _ = tx.send(Event::Usage { req, usage: u });
        }
    }
    let _ = tx.send(Event::End { req });
}

fn usage_of(v: &Value) -> Option<Usage> {
    let u = v.get("usage").filter(|u| u.is_object())?;
    let n = |x: &Value| x.as_u64().unwrap_or(0) as usize;
    let timings = v
        .get("timings")
        .and_then(|t| Some((t["prompt_ms"].as_f64()?, t["predicted_ms"].as_f64()?)));
    Some(Usage {
        prompt_tokens: n(&u["prompt_tokens"]),
        cached_tokens: n(&u["prompt_tokens_details"]["cached_tokens"]),
        completion_tokens: n(&u["completion_tokens"]),
        timings,
    })
}

impl ChatModel for RemoteChat {
    fn describe(&self) -> String {
        format!("{}@{}", self.model, self.base)
    }

    fn generate(
        &mut self,
        messages: &[ChatMessage],
        n: usize,
        params: &GenerateParams,
        on_text: &mut dyn FnMut(usize, &str) -> bool,
        on_done: &mut dyn FnMut(usize, &Completion) -> AfterEnd,
    ) -> Result<Vec<Completion>, ChatError> {
        let n = n.max(1);
        if params.grammar.is_some() && !self.grammar_noted {
            // GBNF is llama.cpp's own; OpenAI-compatible servers differ in how (and whether)
            // they take a grammar, so the format rests on the server's model, and replies
            // without code come back as the usual no-code observation.
            tracing::info!(server = %self.base, "the step grammar is not sent to a remote model");
            self.grammar_noted = true;
        }
        let seed = params.sampling.seed;
        let now = Instant::now();
        let mut cands: Vec<Cand> = (0..n)
            .map(|_| Cand {
                started: Some(now),
                ..Cand::default()
            })
            .collect();
        if n > 1 && self.n_choices != Some(false) {
            let one = vec![(self.body(messages, params, n, seed), (0..n).collect())];
            let accepted = self.run(one, n, params, on_text, on_done, &mut cands)?;
            let cancelled = cands
                .iter()
                .any(|c| c.finish == Some(FinishReason::Cancelled));
            // Candidates the server never answered (and that the vote did not make needless).
            let missing: Vec<usize> = if accepted {
                (0..n)
                    .filter(|&i| !cands[i].seen && cands[i].finish != Some(FinishReason::Abandoned))
                    .collect()
            } else {
                (0..n).collect()
            };
            if missing.is_empty() {
                if cands.iter().all(|c| c.seen) {
                    self.n_choices = Some(true);
                }
            } else if !cancelled {
                // The server refused `n` or returned fewer choices: ask for the others one by one.
                tracing::info!(
                    server = %self.base,
                    "the server does not return n choices per request; sending concurrent requests"
                );
                self.n_choices = Some(false);
                for &i in &missing {
                    cands[i] = Cand {
                        started: Some(Instant::now()),
                        ..Cand::default()
                    };
                }
                self.run(
                    self.separate(messages, params, &missing),
                    n,
                    params,
                    on_text,
                    on_done,
                    &mut cands,
                )?;
            }
        } else {
            let all: Vec<usize> = (0..n).collect();
            self.run(
                self.separate(messages, params, &all),
                n,
                params,
                on_text,
                on_done,
                &mut cands,
            )?;
        }
        Ok(cands.iter().map(Cand::completion).collect())
    }

    fn keep(&mut self, _i: usize) -> Result<(), ChatError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_are_normalised_and_bad_ones_refused_with_the_reason() {
        assert_eq!(
            normalise_base("http://127.0.0.1:8080").unwrap(),
            "http://127.0.0.1:8080"
        );
        assert_eq!(normalise_base("http://h:1/v1/").unwrap(), "http://h:1");
        assert_eq!(
            normalise_base("http://h:1/v1/chat/completions").unwrap(),
            "http://h:1"
        );
        let e = normalise_base("https://h/v1").unwrap_err().to_string();
        assert!(e.contains("https is not built"), "{e}");
        let e = normalise_base("localhost:8080").unwrap_err().to_string();
        assert!(e.contains("expected http://HOST:PORT"), "{e}");
    }

    #[test]
    fn the_body_continues_a_prefilled_reply_and_caps_the_stop_strings() {
        let chat = RemoteChat {
            config: RemoteConfig::new("http://h:1"),
            base: "http://h:1".into(),
            model: "m".into(),
            http: ureq::AgentBuilder::new().build(),
            n_choices: None,
            grammar_noted: false,
        };
        let params = GenerateParams {
            max_tokens: 7,
            stop: (0..6).map(|i| format!("s{i}")).collect(),
            prefill: Some("Thought:".into()),
            ..Default::default()
        };
        let b = chat.body(&[ChatMessage::new("user", "q")], &params, 3, 9);
        assert_eq!(b["n"], 3);
        assert_eq!(b["seed"], 9);
        assert_eq!(b["max_tokens"], 7);
        assert_eq!(b["stop"].as_array().unwrap().len(), MAX_STOP_STRINGS);
        assert_eq!(b["continue_final_message"], true);
        assert_eq!(b["add_generation_prompt"], false);
        let msgs = b["messages"].as_array().unwrap();
        assert_eq!(msgs.last().unwrap()["role"], "assistant");
        assert_eq!(msgs.last().unwrap()["content"], "Thought:");
        let single = chat.body(
            &[ChatMessage::new("user", "q")],
            &GenerateParams::default(),
            1,
            0,
        );
        assert!(single.get("n").is_none() && single.get("continue_final_message").is_none());
    }

    /// A loopback HTTP peer that answers each connection with the next canned response
    /// (status line, content type, body) and records the request bodies.
    fn canned_server(
        responses: Vec<(&'static str, &'static str, String)>,
    ) -> (String, std::thread::JoinHandle<Vec<String>>) {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let handle = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for (status, ctype, body) in responses {
                let (mut conn, _) = listener.accept().unwrap();
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Read the head, then as many body bytes as Content-Length says.
                let (head_end, len) = loop {
                    let n = conn.read(&mut chunk).unwrap();
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..i]).to_ascii_lowercase();
                        let len = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .map_or(0, |v| v.trim().parse::<usize>().unwrap());
                        break (i + 4, len);
                    }
                };
                while buf.len() < head_end + len {
                    let n = conn.read(&mut chunk).unwrap();
                    buf.extend_from_slice(&chunk[..n]);
                }
                seen.push(String::from_utf8_lossy(&buf[head_end..]).into_owned());
                let reply = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nRetry-After: 0\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                conn.write_all(reply.as_bytes()).unwrap();
            }
            seen
        });
        (url, handle)
    }

    fn no_callbacks() -> (
        impl FnMut(usize, &str) -> bool,
        impl FnMut(usize, &Completion) -> AfterEnd,
    ) {
        (
            |_: usize, _: &str| true,
            |_: usize, _: &Completion| AfterEnd::go_on(),
        )
    }

    #[test]
    fn a_busy_server_is_retried_and_its_whole_completion_is_taken() {
        let whole = r#"{"choices":[{"index":0,"message":{"role":"assistant","content":"Thought: four\nCode:"},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":5}}"#;
        let (url, server) = canned_server(vec![
            ("503 Service Unavailable", "text/plain", "busy".into()),
            ("429 Too Many Requests", "text/plain", "slow down".into()),
            ("200 OK", "application/json", whole.into()),
        ]);
        let mut cfg = RemoteConfig::new(&url);
        cfg.model = Some("m".into());
        let mut chat = RemoteChat::connect(cfg).unwrap();
        let params = GenerateParams {
            prefill: Some("Thought:".into()),
            ..Default::default()
        };
        let (mut on_text, mut on_done) = no_callbacks();
        let out = chat
            .generate(
                &[ChatMessage::new("user", "2+2?")],
                1,
                &params,
                &mut on_text,
                &mut on_done,
            )
            .unwrap();
        // llama-server's whole message repeats the continued start: it is not kept twice.
        assert_eq!(out[0].text, " four\nCode:");
        assert_eq!(out[0].stats.prompt_tokens, 12);
        assert_eq!(out[0].stats.gen_tokens, 5);
        let bodies = server.join().unwrap();
        assert_eq!(bodies.len(), 3, "two retries, then the answer");
        assert!(bodies
            .iter()
            .all(|b| b.contains("\"continue_final_message\":true")));
    }

    #[test]
    fn an_answer_that_is_not_a_chat_completion_is_an_error_naming_the_url() {
        let (url, server) = canned_server(vec![(
            "200 OK",
            "application/json",
            "{\"hello\": 1}".into(),
        )]);
        let mut cfg = RemoteConfig::new(&url);
        cfg.model = Some("m".into());
        cfg.retries = 0;
        let mut chat = RemoteChat::connect(cfg).unwrap();
        let (mut on_text, mut on_done) = no_callbacks();
        let e = chat
            .generate(
                &[ChatMessage::new("user", "q")],
                1,
                &GenerateParams::default(),
                &mut on_text,
                &mut on_done,
            )
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("{url}/v1/chat/completions"))
                && e.contains("not an OpenAI-compatible"),
            "{e}"
        );
        server.join().unwrap();
    }

    #[test]
    fn an_unreachable_server_is_named_in_the_error() {
        // Port 9 (discard) on loopback: nothing listens there in a test environment.
        let mut cfg = RemoteConfig::new("http://127.0.0.1:9");
        cfg.retries = 0;
        let e = RemoteChat::connect(cfg).unwrap_err().to_string();
        assert!(
            e.contains("cannot reach the model server at http://127.0.0.1:9/v1/models"),
            "{e}"
        );
    }
}
