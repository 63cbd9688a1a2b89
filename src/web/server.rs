//! The HTTP server (axum, on the tokio runtime): routes, authentication, rate limiting,
//! body limits and security headers. See [`crate::web`].

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::{self, Stream};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use super::status::{ClientGuard, Hub};
use crate::config::WebConfig;

/// Errors starting the server.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    /// The listen address is taken or not allowed.
    #[error(
        "status page: cannot listen on {addr}: {problem} (set [web] listen, or [web] enabled = false)"
    )]
    Bind {
        /// Address.
        addr: String,
        /// OS error.
        problem: String,
    },
}

/// What the API can ask of the pipeline.
#[derive(Clone)]
pub struct WebHandle {
    /// Text questions → the turn driver (control edge; full → 503).
    pub asks: mpsc::Sender<String>,
    /// Cancels the turn in progress; true if there was one.
    pub stop: Arc<dyn Fn() -> bool + Send + Sync>,
    /// Agent health as JSON (read from the agents' cached health).
    pub agents: Arc<dyn Fn() -> serde_json::Value + Send + Sync>,
    /// LLM configuration as JSON.
    pub llm: serde_json::Value,
}

#[derive(Clone)]
struct AppState {
    hub: Arc<Hub>,
    cfg: Arc<WebConfig>,
    handle: WebHandle,
    limiter: Arc<DefaultKeyedRateLimiter<IpAddr>>,
}

const INDEX_HTML: &str = include_str!("page/index.html");
const APP_JS: &str = include_str!("page/app.js");
const APP_CSS: &str = include_str!("page/app.css");

/// Content Security Policy: only this origin's script and style; no inline code, no
/// frames, no forms, no plug-ins.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Binds `[web] listen` and serves until `root` is cancelled. Returns the bound address
/// (port 0 in the config picks a free one) and the server task.
pub async fn serve(
    cfg: &WebConfig,
    hub: Arc<Hub>,
    handle: WebHandle,
    root: CancellationToken,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), WebError> {
    let quota = Quota::per_second(NonZeroU32::new(cfg.rate_per_s.max(1)).expect("max(1)"))
        .allow_burst(NonZeroU32::new(cfg.burst.max(1)).expect("max(1)"));
    let state = AppState {
        hub: hub.clone(),
        cfg: Arc::new(cfg.clone()),
        handle,
        limiter: Arc::new(RateLimiter::keyed(quota)),
    };
    let api = Router::new()
        .route("/api/status", get(status))
        .route("/api/events", get(events))
        .route("/api/ask", post(ask))
        .route("/api/stop", post(stop))
        .route_layer(middleware::from_fn_with_state(state.clone(), rate_limit));
    let app = Router::new()
        .route("/", get(|| async { html(INDEX_HTML) }))
        .route(
            "/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/app.css",
            get(|| async { asset("text/css; charset=utf-8", APP_CSS) }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .merge(api)
        .layer(DefaultBodyLimit::max(cfg.max_body_bytes))
        .layer(middleware::from_fn(security_headers))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind(&cfg.listen)
        .await
        .map_err(|e| WebError::Bind {
            addr: cfg.listen.clone(),
            problem: e.to_string(),
        })?;
    let addr = listener.local_addr().map_err(|e| WebError::Bind {
        addr: cfg.listen.clone(),
        problem: e.to_string(),
    })?;
    // Forget rate-limit state of addresses not seen for a while (bounded memory).
    hub.start_fanout(root.clone());
    let limiter = state.limiter.clone();
    let r2 = root.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = r2.cancelled() => return,
                _ = tick.tick() => {
                    limiter.retain_recent();
                    limiter.shrink_to_fit();
                }
            }
        }
    });
    // Coalesced text older than `coalesce_ms` goes out even if no more arrives.
    let h2 = hub.clone();
    let r3 = root.clone();
    let every = Duration::from_millis(cfg.coalesce_ms.max(10));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = r3.cancelled() => return,
                _ = tick.tick() => h2.flush_text(false),
            }
        }
    });
    tracing::info!(%addr, "status page at http://{addr}/");
    let task = tokio::spawn(async move {
        let r = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move { root.cancelled().await })
        .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "status page server stopped");
        }
    });
    Ok((addr, task))
}

fn html(body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response()
}

fn asset(ct: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, ct)], body).into_response()
}

fn error(code: StatusCode, message: impl Into<String>) -> Response {
    (code, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

async fn security_headers(req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert("content-security-policy", HeaderValue::from_static(CSP));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert("cache-control", HeaderValue::from_static("no-store"));
    res
}

async fn rate_limit(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    if let Err(not_until) = st.limiter.check_key(&peer.ip()) {
        st.hub.metrics.rate_limited.add(1);
        let wait = not_until.wait_time_from(governor::clock::Clock::now(
            &governor::clock::DefaultClock::default(),
        ));
        let mut res = error(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "too many requests: at most {} per second (burst {})",
                st.cfg.rate_per_s, st.cfg.burst
            ),
        );
        let secs = wait.as_secs().max(1).to_string();
        if let Ok(v) = HeaderValue::from_str(&secs) {
            res.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return res;
    }
    next.run(req).await
}

/// Constant-time comparison (the token must not leak through timing).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The 401 response for a request without the right bearer token; `None` when it has it.
fn unauthorised(st: &AppState, headers: &HeaderMap) -> Option<Response> {
    if st.cfg.token.is_empty() {
        return Some(error(
            StatusCode::UNAUTHORIZED,
            "the API is disabled: set [web] token (PANDA_WEB__TOKEN) and send it as a bearer token",
        ));
    }
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !same(given.trim().as_bytes(), st.cfg.token.as_bytes()) {
        return Some(error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token",
        ));
    }
    None
}

async fn status(State(st): State<AppState>) -> Response {
    Json(st.hub.snapshot((st.handle.agents)(), st.handle.llm.clone())).into_response()
}

async fn metrics(State(st): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        st.hub.metrics.render(),
    )
        .into_response()
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AskBody {
    text: String,
}

/// The most of an oversized body that is read (and thrown away) so the client gets its
/// 413 on a connection it can still read from. Answering before the body is read makes
/// the server close a connection the client is still writing to, and many clients then
/// report a reset instead of the 413. Beyond this, the connection is closed regardless.
const OVERSIZE_DRAIN_BYTES: usize = 1024 * 1024;
/// How long reading a request body may take (a client trickling bytes holds nothing
/// longer than this).
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads a request body of at most `limit` bytes; an oversized one is a 413 naming the
/// limit (after draining up to [`OVERSIZE_DRAIN_BYTES`]).
async fn read_body(body: axum::body::Body, limit: usize) -> Result<Bytes, Response> {
    use futures_util::StreamExt;
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than the limit of {limit} bytes ([web] max_body_bytes)"),
        )
    };
    let mut stream = body.into_data_stream();
    let mut buf = Vec::new();
    let mut total = 0usize;
    let read = async {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                error(
                    StatusCode::BAD_REQUEST,
                    format!("cannot read the body: {e}"),
                )
            })?;
            total += chunk.len();
            if total > OVERSIZE_DRAIN_BYTES {
                return Err(too_large());
            }
            if total <= limit {
                buf.extend_from_slice(&chunk);
            }
        }
        Ok(())
    };
    match tokio::time::timeout(BODY_READ_TIMEOUT, read).await {
        Err(_) => Err(error(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the body did not arrive within {} s",
                BODY_READ_TIMEOUT.as_secs()
            ),
        )),
        Ok(Err(r)) => Err(r),
        Ok(Ok(())) if total > limit => Err(too_large()),
        Ok(Ok(())) => Ok(Bytes::from(buf)),
    }
}

async fn ask(State(st): State<AppState>, headers: HeaderMap, body: axum::body::Body) -> Response {
    if let Some(r) = unauthorised(&st, &headers) {
        return r;
    }
    let body = match read_body(body, st.cfg.max_body_bytes).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let parsed: AskBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("the body must be JSON like {{\"text\": \"what time is it\"}}: {e}"),
            );
        }
    };
    let text = parsed.text.trim().to_string();
    if text.is_empty() {
        return error(StatusCode::BAD_REQUEST, "\"text\" is empty");
    }
    match st.handle.asks.try_send(text) {
        Ok(()) => (
            StatusCode::ACCEPTED,
            Json(serde_json::json!({ "queued": true })),
        )
            .into_response(),
        Err(mpsc::error::TrySendError::Full(_)) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "Panda is busy with other questions; try again in a moment",
        ),
        Err(mpsc::error::TrySendError::Closed(_)) => {
            error(StatusCode::SERVICE_UNAVAILABLE, "Panda is shutting down")
        }
    }
}

async fn stop(State(st): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(r) = unauthorised(&st, &headers) {
        return r;
    }
    let stopped = (st.handle.stop)();
    Json(serde_json::json!({ "stopped": stopped })).into_response()
}

async fn events(State(st): State<AppState>) -> Response {
    let m = st.hub.metrics.clone();
    if m.clients.get() as usize >= st.cfg.max_clients {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("too many live clients (at most {})", st.cfg.max_clients),
        );
    }
    m.clients.add(1);
    let guard = ClientGuard(m.clone());
    // Subscribe before the snapshot, so nothing falls between them.
    let rx = st.hub.subscribe();
    let snap = st.hub.snapshot((st.handle.agents)(), st.handle.llm.clone());
    Sse::new(feed(rx, snap.to_string(), guard))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

/// The live feed of one client: the snapshot, then every published message; a client
/// that fell behind the ring is told how many it missed and continues with the newest.
fn feed(
    rx: broadcast::Receiver<Arc<str>>,
    snapshot: String,
    guard: ClientGuard,
) -> impl Stream<Item = Result<SseEvent, std::convert::Infallible>> {
    stream::unfold(
        (rx, Some(snapshot), guard),
        |(mut rx, snap, guard)| async move {
            if let Some(s) = snap {
                return Some((Ok(SseEvent::default().data(s)), (rx, None, guard)));
            }
            match rx.recv().await {
                Ok(msg) => Some((Ok(SseEvent::default().data(&*msg)), (rx, None, guard))),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    guard.0.clients_lagged.add(1);
                    let msg = serde_json::json!({"type": "lagged", "skipped": n}).to_string();
                    Some((Ok(SseEvent::default().data(msg)), (rx, None, guard)))
                }
                Err(broadcast::error::RecvError::Closed) => None,
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"abcd"));
    }
}
