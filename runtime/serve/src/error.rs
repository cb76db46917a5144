//! Errors: [`ServeError`] for starting the server, [`ApiError`] for answering a request (a
//! JSON body in OpenAI's layout, `{"error": {"message", "type", "param", "code"}}`).
use axum::{
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};

/// Errors of starting the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A setting is refused; the message names it.
    #[error("{0}")]
    Config(String),
    /// The runtime (model, shard, interpreter) could not load, or a session could not open.
    #[error(transparent)]
    Runtime(#[from] small_agent::embed::RuntimeError),
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Serving failed.
    #[error("server: {0}")]
    Io(#[from] std::io::Error),
}

/// A request that cannot be answered, as an HTTP status with a JSON message.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    /// 400: malformed JSON, a wrong type or a value out of range; `param` names the field.
    #[error("{message}")]
    BadRequest {
        /// What is wrong.
        message: String,
        /// The field, when one is at fault.
        param: Option<String>,
    },
    /// 401: the API key is missing or wrong.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: refused Host or Origin.
    #[error("{0}")]
    Forbidden(String),
    /// 404: no such route, run or model.
    #[error("{0}")]
    NotFound(String),
    /// 405: the route exists with another method.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// 413: the request body is larger than the server takes.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// 503: every session is busy and the queue is full; retry after the given seconds.
    #[error("the server is busy: every session is answering and the queue is full; retry in {retry_after_s} s")]
    Busy {
        /// The `Retry-After` value.
        retry_after_s: u64,
    },
    /// 503: the server is shutting down.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// 500: the run failed inside the server.
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// A 400 naming the field at fault.
    pub fn field(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self::BadRequest {
            message: message.into(),
            param: Some(param.into()),
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Busy { .. } | Self::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Self::BadRequest { .. } | Self::PayloadTooLarge(_) | Self::MethodNotAllowed(_) => {
                "invalid_request_error"
            }
            Self::Unauthorized(_) => "authentication_error",
            Self::Forbidden(_) => "permission_error",
            Self::NotFound(_) => "not_found_error",
            Self::Busy { .. } | Self::ShuttingDown => "server_busy",
            Self::Internal(_) => "server_error",
        }
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        let param = match self {
            Self::BadRequest { param, .. } => param.clone(),
            _ => None,
        };
        serde_json::json!({
            "error": {
                "message": self.to_string(),
                "type": self.kind(),
                "param": param,
                "code": self.status().as_u16(),
            }
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status(), Json(self.body())).into_response();
        if let Self::Busy { retry_after_s } = self {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_s));
        }
        if let Self::Unauthorized(_) = self {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        r
    }
}

/// Parses a JSON request body into `T`; a malformed body or a wrong type is a 400 naming
/// the field (its path, e.g. `messages[1].content`).
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::BadRequest {
            message: "the request body is empty; send a JSON object".into(),
            param: None,
        });
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            return ApiError::BadRequest {
                message: format!("malformed JSON: {inner}"),
                param: None,
            };
        }
        let msg = inner.to_string();
        // serde names a missing field in its message, not in the path.
        let missing = msg
            .strip_prefix("missing field `")
            .and_then(|r| r.split('`').next())
            .map(|f| {
                if path == "." {
                    f.to_owned()
                } else {
                    format!("{path}.{f}")
                }
            });
        let param = missing.unwrap_or(path);
        ApiError::field(param.clone(), format!("field `{param}`: {msg}"))
    })
}
