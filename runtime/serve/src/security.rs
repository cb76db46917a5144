//! The checks every request passes before its route, in this order:
//!
//! 1. **Host** (DNS rebinding, as in Ollama's CVE-2024-28224): the `Host` header must name
//!    this server: `localhost` or the bound address (any IP address when bound to all
//!    interfaces), with the bound port. A page on another site whose name was made to
//!    resolve to 127.0.0.1 sends its own name and gets 403.
//! 2. **Origin** (CORS): a request with an `Origin` other than this server's own is refused
//!    (403) unless `--cors-origin` lists it; listed origins get the CORS headers and their
//!    preflight `OPTIONS` is answered. No wildcard is ever sent.
//! 3. **API key**: with a key, every `/v1/...` and `/metrics` request needs
//!    `Authorization: Bearer KEY` (401 otherwise). The page's files and `/health` stay open:
//!    they hold nothing private, and the page asks for the key.
//!
//! Body size is capped by the router (413), and each route checks its fields (400).
use std::{net::IpAddr, time::Instant};

use axum::{
    extract::{Request, State},
    http::{header, HeaderMap, HeaderValue, Method, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
};

use crate::{error::ApiError, server::AppState};

/// Whether `host` (a `Host` header) names this server, bound to `bound` on `port`.
pub fn host_allowed(host: &str, bound: IpAddr, port: u16) -> bool {
    let (name, host_port) = split_host(host);
    let port_ok = match host_port {
        Some(p) => p == Some(port),
        None => port == 80,
    };
    if !port_ok {
        return false;
    }
    if name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    match name.parse::<IpAddr>() {
        Ok(ip) => {
            ip == bound || bound.is_unspecified() || (bound.is_loopback() && ip.is_loopback())
        }
        Err(_) => false,
    }
}

/// `name[:port]` or `[v6][:port]` → the name (without brackets) and, when a port is given,
/// `Some(parsed)` (`Some(None)` for a port that does not parse).
fn split_host(host: &str) -> (&str, Option<Option<u16>>) {
    if let Some(rest) = host.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((ip, tail)) => (ip, tail.strip_prefix(':').map(|p| p.parse().ok())),
            None => (host, None),
        };
    }
    match host.rsplit_once(':') {
        Some((name, p)) => (name, Some(p.parse().ok())),
        None => (host, None),
    }
}

/// Whether a path is part of the API (the key applies).
fn is_api(path: &str) -> bool {
    path.starts_with("/v1/") || path == "/metrics"
}

/// Compares without stopping at the first difference.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

fn check(
    state: &AppState,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
) -> Result<Option<String>, ApiError> {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| ApiError::Forbidden("the request has no Host header".into()))?;
    if !host_allowed(host, state.config.host, state.port) {
        return Err(ApiError::Forbidden(format!(
            "Host {host:?} is not this server (DNS-rebinding protection); use \
             http://localhost:{port}/ or http://{ip}:{port}/",
            port = state.port,
            ip = state.config.host
        )));
    }
    let mut cors = None;
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        let own = origin
            .strip_prefix("http://")
            .is_some_and(|o| o.eq_ignore_ascii_case(host));
        if !own {
            if state.config.cors_origins.iter().any(|o| o == origin) {
                cors = Some(origin.to_owned());
            } else {
                return Err(ApiError::Forbidden(format!(
                    "cross-origin request from {origin:?} refused; start the server with \
                     --cors-origin {origin} to allow that origin"
                )));
            }
        }
    }
    if let Some(key) = &state.config.api_key {
        if is_api(path) && *method != Method::OPTIONS {
            let given = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim);
            match given {
                Some(g) if same_secret(g.as_bytes(), key.as_bytes()) => {}
                Some(_) => return Err(ApiError::Unauthorized("wrong API key".into())),
                None => {
                    return Err(ApiError::Unauthorized(
                        "this server needs an API key: send `Authorization: Bearer KEY`".into(),
                    ))
                }
            }
        }
    }
    Ok(cors)
}

/// The middleware: the checks above, CORS headers, the response counter and one log line
/// per request.
pub async fn guard(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let t0 = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let mut resp = match check(&state, &method, &path, req.headers()) {
        Err(e) => e.into_response(),
        Ok(cors) => {
            let preflight = method == Method::OPTIONS
                && req
                    .headers()
                    .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
            let mut r = if preflight {
                StatusCode::NO_CONTENT.into_response()
            } else {
                next.run(req).await
            };
            if let Some(origin) = cors {
                let h = r.headers_mut();
                if let Ok(v) = HeaderValue::from_str(&origin) {
                    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
                }
                h.insert(header::VARY, HeaderValue::from_static("Origin"));
                if preflight {
                    h.insert(
                        header::ACCESS_CONTROL_ALLOW_METHODS,
                        HeaderValue::from_static("GET, POST, DELETE, OPTIONS"),
                    );
                    h.insert(
                        header::ACCESS_CONTROL_ALLOW_HEADERS,
                        HeaderValue::from_static("authorization, content-type, accept"),
                    );
                    h.insert(
                        header::ACCESS_CONTROL_MAX_AGE,
                        HeaderValue::from_static("600"),
                    );
                }
                h.insert(
                    header::ACCESS_CONTROL_EXPOSE_HEADERS,
                    HeaderValue::from_static("x-run-id, x-conversation-id, retry-after"),
                );
            }
            r
        }
    };
    resp.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    let status = resp.status().as_u16();
    state.pool.metrics.count_response(status);
    tracing::info!(
        %method,
        path,
        status,
        ms = t0.elapsed().as_millis() as u64,
        "request"
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(host_allowed("127.0.0.1:8077", lo, 8077));
        assert!(host_allowed("localhost:8077", lo, 8077));
        assert!(host_allowed("LOCALHOST:8077", lo, 8077));
        assert!(host_allowed("[::1]:8077", lo, 8077));
        assert!(!host_allowed("evil.example:8077", lo, 8077));
        assert!(!host_allowed("127.0.0.1.nip.io:8077", lo, 8077));
        assert!(!host_allowed("127.0.0.1:9999", lo, 8077));
        assert!(!host_allowed("127.0.0.1", lo, 8077));
        assert!(host_allowed("localhost", lo, 80));
        let any: IpAddr = "0.0.0.0".parse().unwrap();
        assert!(host_allowed("192.168.1.5:8077", any, 8077));
        assert!(!host_allowed("attacker.test:8077", any, 8077));
        let lan: IpAddr = "192.168.1.5".parse().unwrap();
        assert!(!host_allowed("10.0.0.1:8077", lan, 8077));
    }

    #[test]
    fn secrets() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
    }
}
