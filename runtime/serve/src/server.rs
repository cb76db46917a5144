//! Loading, the router, serving and graceful shutdown.
use std::{
    future::Future,
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use axum::{
    extract::{DefaultBodyLimit, State},
    middleware,
    response::{IntoResponse, Response},
    routing::{delete, get, post},
    Json, Router,
};
use serde_json::{json, Value};
use small_agent::{
    agent::AgentConfig,
    embed::{Runtime, SessionConfig, ShardChoice},
    SessionParams,
};

use crate::{
    agent_api, error::ApiError, metrics::Metrics, openai, page, pool::Pool, security, worker,
    ServeConfig, ServeError,
};

/// What every handler sees.
#[derive(Clone)]
pub struct AppState {
    /// The settings.
    pub config: Arc<ServeConfig>,
    /// The sessions.
    pub pool: Arc<Pool>,
    /// Model, shard, interpreter.
    pub runtime: Runtime,
    /// The agent configuration runs start from (the runtime's sandbox limits).
    pub base_agent: Arc<AgentConfig>,
    /// The model's id in `/v1/models`.
    pub model_id: String,
    /// Start time (seconds since the epoch).
    pub started_s: u64,
    /// The port actually bound.
    pub port: u16,
    /// `GET /v1/info`.
    pub info: Arc<Value>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("model_id", &self.model_id)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

/// A loaded server, bound and ready to serve.
#[derive(Debug)]
pub struct Server {
    state: AppState,
    listener: std::net::TcpListener,
}

impl Server {
    /// Checks the settings, binds the address (so a busy port is said before the model
    /// loads), loads the runtime once and opens the sessions.
    pub fn start(config: ServeConfig) -> Result<Self, ServeError> {
        config.validate()?;
        let addr = config.addr();
        let listener = std::net::TcpListener::bind(addr)
            .map_err(|source| ServeError::Bind { addr, source })?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let (sessions, why) = config.session_count();
        let threads = config.threads_per_session(sessions);
        let t0 = Instant::now();
        let mut rc = config.runtime.clone();
        rc.threads = threads;
        let runtime = Runtime::load(&rc)?;
        let session_config = SessionConfig {
            agent: AgentConfig {
                sag: config.run.max_sag,
                ..AgentConfig::default()
            },
        };
        let chat = SessionParams {
            n_ctx: rc.context_size + (config.max_choices as u32 - 1) * 1024,
            n_threads: threads,
            n_threads_batch: threads,
            n_seq_max: config.max_choices as u32,
            ..SessionParams::default()
        };
        let metrics = Arc::new(Metrics::default());
        let (senders, handles) =
            worker::spawn(&runtime, sessions, &session_config, &chat, &metrics)?;
        let pool = Pool::new(senders, handles, config.queue, metrics);
        // Runs start from the runtime's sandbox limits (each session puts its own cancel
        // flag in).
        let base_agent = AgentConfig {
            limits: config.runtime.limits.clone(),
            template: config.run.template.clone(),
            ..AgentConfig::default()
        };
        let model_path = runtime.model().path().to_path_buf();
        let model_id = model_path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "small-agent".into());
        tracing::info!(
            sessions,
            why = %why,
            threads,
            queue = config.queue,
            model = %model_path.display(),
            ms = t0.elapsed().as_millis() as u64,
            "runtime loaded"
        );
        let info = info_of(&config, &model_path, &model_id, sessions, threads, &why);
        let started_s = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Ok(Self {
            state: AppState {
                config: Arc::new(config),
                pool,
                runtime,
                base_agent: Arc::new(base_agent),
                model_id,
                started_s,
                port,
                info: Arc::new(info),
            },
            listener,
        })
    }

    /// The address bound.
    pub fn addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound")
    }

    /// Sessions in the pool.
    pub fn sessions(&self) -> usize {
        self.state.pool.sessions()
    }

    /// The router (for tests that drive it in-process).
    pub fn router(&self) -> Router {
        router(self.state.clone())
    }

    /// Serves until `shutdown` completes; then refuses new requests, cancels the running
    /// runs, lets the open responses end (at most `grace`) and waits for the sessions.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
        grace: Duration,
    ) -> Result<(), ServeError> {
        let listener = tokio::net::TcpListener::from_std(self.listener)?;
        let pool = self.state.pool.clone();
        let app = router(self.state);
        let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
        let pool2 = pool.clone();
        let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
            shutdown.await;
            tracing::info!("shutting down: cancelling running asks");
            pool2.close();
            let _ = stopping_tx.send(());
        });
        let forced = async move {
            if stopping_rx.await.is_ok() {
                tokio::time::sleep(grace).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            r = serve => r?,
            _ = forced => tracing::warn!("responses still open after {grace:?}: closing them"),
        }
        pool.close();
        let joined = tokio::task::spawn_blocking(move || pool.join(Duration::from_secs(10)))
            .await
            .unwrap_or(false);
        if joined {
            tracing::info!("all sessions stopped");
        } else {
            tracing::warn!("a session did not stop in time");
        }
        Ok(())
    }
}

fn router(state: AppState) -> Router {
    let max_body = state.config.max_body_bytes;
    Router::new()
        .route("/", get(|| async { page::serve(0) }))
        .route("/app.js", get(|| async { page::serve(1) }))
        .route("/style.css", get(|| async { page::serve(2) }))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/info", get(info))
        .route("/v1/models", get(openai::models))
        .route("/v1/agent/runs", post(agent_api::create_run))
        .route("/v1/agent/runs/{id}", delete(agent_api::cancel_run))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::map_response(body_limit_as_json))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            security::guard,
        ))
        .with_state(state)
}

/// axum answers an oversized body with a plain-text 413; this makes it the JSON error.
async fn body_limit_as_json(r: Response) -> Response {
    if r.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE
        && r.headers()
            .get(axum::http::header::CONTENT_TYPE)
            .is_none_or(|v| !v.as_bytes().starts_with(b"application/json"))
    {
        return ApiError::PayloadTooLarge(
            "the request body is larger than this server takes (--max-body-bytes)".into(),
        )
        .into_response();
    }
    r
}

async fn not_found() -> Response {
    ApiError::NotFound("no such route (the page is at /, the API under /v1/)".into())
        .into_response()
}

async fn method_not_allowed() -> Response {
    ApiError::MethodNotAllowed("this route does not take that method".into()).into_response()
}

async fn health(State(state): State<AppState>) -> Response {
    let g = state.pool.gauges();
    Json(json!({
        "status": "ok",
        "sessions": g.sessions,
        "busy": g.busy,
        "queued": g.queued,
        "queue_capacity": g.queue_capacity,
    }))
    .into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    let text = state.pool.metrics.render(&state.pool.gauges());
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn info(State(state): State<AppState>) -> Response {
    Json((*state.info).clone()).into_response()
}

fn dir_size(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_size(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

fn info_of(
    config: &ServeConfig,
    model: &std::path::Path,
    model_id: &str,
    sessions: usize,
    threads: i32,
    why: &str,
) -> Value {
    let shard: Option<PathBuf> = match &config.runtime.shard {
        ShardChoice::Default => small_agent::assets::built_default_shard_dir().ok(),
        ShardChoice::Path(p) => Some(p.clone()),
        ShardChoice::None => None,
    };
    let shard_meta = shard
        .as_ref()
        .and_then(|d| std::fs::read_to_string(d.join("shard.json")).ok())
        .and_then(|t| serde_json::from_str::<Value>(&t).ok());
    json!({
        "name": "small-agent",
        "version": env!("CARGO_PKG_VERSION"),
        "model": {
            "id": model_id,
            "path": model.display().to_string(),
            "size_bytes": std::fs::metadata(model).map(|m| m.len()).unwrap_or(0),
            "adapter": config.runtime.adapter.as_ref().map(|a| a.display().to_string()),
        },
        "shard": shard.as_ref().map(|d| json!({
            "path": d.display().to_string(),
            "size_bytes": dir_size(d),
            "meta": shard_meta,
        })),
        "python": config.runtime.python.as_str(),
        "prompt": config.run.template_name,
        "sessions": sessions,
        "sessions_why": why,
        "threads_per_session": threads,
        "queue": config.queue,
        "auth": config.api_key.is_some(),
        "defaults": {
            "sag": config.run.sag,
            "max_sag": config.run.max_sag,
            "max_steps": config.run.max_steps,
            "max_steps_cap": config.run.max_steps_cap,
            "grammar": config.run.grammar,
        },
        "limits": {
            "max_question_chars": config.max_question_chars,
            "max_body_bytes": config.max_body_bytes,
            "max_choices": config.max_choices,
            "sandbox_timeout_s": config.runtime.limits.timeout.as_secs_f64(),
            "sandbox_memory_bytes": config.runtime.limits.memory_bytes,
        },
    })
}
