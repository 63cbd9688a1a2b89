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
    /// The speech-to-text backend's state as JSON (remote service, breaker, fallbacks).
    pub stt: Arc<dyn Fn() -> serde_json::Value + Send + Sync>,
    /// The text-to-speech backend's state, likewise.
    pub tts: Arc<dyn Fn() -> serde_json::Value + Send + Sync>,
}

#[derive(Clone)]
struct AppState {
    hub: Arc<Hub>,
    cfg: Arc<WebConfig>,
    handle: WebHandle,
    limiter: Arc<DefaultKeyedRateLimiter<IpAddr>>,
    /// Bound to a loopback address: only this machine can connect, so reading what was
    /// said needs no token (the `Host` check keeps browsers' rebinding pages out).
    loopback: bool,
    /// Host names answered besides IP literals (see `[web] allowed_hosts`).
    hosts: Arc<Vec<String>>,
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
    let state = AppState {
        hub: hub.clone(),
        cfg: Arc::new(cfg.clone()),
        handle,
        limiter: Arc::new(RateLimiter::keyed(quota)),
        loopback: addr.ip().is_loopback(),
        hosts: Arc::new(known_hosts(&cfg.allowed_hosts)),
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
        .layer(middleware::from_fn_with_state(state.clone(), check_host))
        .layer(middleware::from_fn(security_headers))
        .with_state(state.clone());
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
    let limit = super::conn::connection_limit(cfg.max_connections);
    tracing::info!(%addr, max_connections = limit, "status page at http://{addr}/");
    let conns = super::conn::Connections::new(
        limit,
        Duration::from_millis(cfg.header_timeout_ms),
        hub.metrics.clone(),
    );
    let task = tokio::spawn(conns.serve(listener, app, root));
    Ok((addr, task))
}

/// The status page's address in a `panda run` log line ("status page at http://…/"),
/// without the trailing slash or the colour codes that may follow it: what the soak
/// benchmark and the tests read to find a daemon started on port 0.
pub fn status_page_url(line: &str) -> Option<String> {
    let i = line.find("status page at http://")?;
    let url: String = line[i + "status page at ".len()..]
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != '\u{1b}')
        .collect();
    Some(url.trim_end_matches('/').to_string())
}

/// The names a `Host` header may carry besides IP literals: `localhost`, this
/// machine's name and `name.local`, and `[web] allowed_hosts`.
fn known_hosts(allowed: &[String]) -> Vec<String> {
    let mut out: Vec<String> = allowed.iter().map(|h| h.to_ascii_lowercase()).collect();
    out.push("localhost".into());
    if let Ok(name) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let name = name.trim().to_ascii_lowercase();
        if !name.is_empty() {
            out.push(format!("{name}.local"));
            out.push(name);
        }
    }
    out
}

/// Whether `host` (a `Host` header: name or address, optional port) may be answered.
/// IP literals cannot be rebound by DNS; names must be known.
fn host_allowed(host: &str, known: &[String]) -> bool {
    let host = host.trim();
    if host.starts_with('[') {
        // [v6]:port — an IPv6 literal.
        return host
            .split_once(']')
            .is_some_and(|(h, _)| h[1..].parse::<std::net::Ipv6Addr>().is_ok());
    }
    let name = host.rsplit_once(':').map_or(host, |(h, _)| h);
    if name.parse::<std::net::Ipv4Addr>().is_ok() {
        return true;
    }
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    known.iter().any(|k| k == "*" || *k == name)
}

/// Refuses requests whose `Host` is not this server's (a DNS-rebinding page in the
/// owner's browser would otherwise read a localhost install).
async fn check_host(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()));
    match host {
        Some(h) if host_allowed(h, &st.hosts) => next.run(req).await,
        Some(h) => error(
            StatusCode::FORBIDDEN,
            format!(
                "host {h:?} is not this Panda's: use its IP address, or add the name to [web] allowed_hosts"
            ),
        ),
        None => error(StatusCode::BAD_REQUEST, "the request has no Host header"),
    }
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

/// The bearer token a request carries: `Authorization: Bearer …` (the scheme is
/// case-insensitive, RFC 9110 §11.1) or RFC 6750's `access_token` query parameter (an
/// EventSource cannot send headers).
fn given_token<'a>(headers: &'a HeaderMap, query: Option<&'a str>) -> Option<&'a str> {
    let from_header = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim());
    from_header.or_else(|| {
        query?
            .split('&')
            .find_map(|kv| kv.strip_prefix("access_token="))
    })
}

/// Whether the request carries the configured token (never true when none is set).
fn has_token(st: &AppState, headers: &HeaderMap, query: Option<&str>) -> bool {
    let given = given_token(headers, query).unwrap_or("");
    let given = percent_decode(given);
    !st.cfg.token.is_empty() && same(given.as_bytes(), st.cfg.token.as_bytes())
}

/// Minimal `%XX` decoding for a token passed in the query string.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Some(Ok(v)) = s.get(i + 1..i + 3).map(|h| u8::from_str_radix(h, 16))
        {
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether the request may read transcripts, answers and metrics: always on a loopback
/// bind, otherwise only with the token.
fn may_read(st: &AppState, headers: &HeaderMap, query: Option<&str>) -> bool {
    st.loopback || has_token(st, headers, query)
}

/// The 401 response for a request without the right bearer token; `None` when it has it.
fn unauthorised(st: &AppState, headers: &HeaderMap) -> Option<Response> {
    if st.cfg.token.is_empty() {
        return Some(error(
            StatusCode::UNAUTHORIZED,
            "the API is disabled: set [web] token (PANDA_WEB__TOKEN) and send it as a bearer token",
        ));
    }
    if !has_token(st, headers, None) {
        return Some(error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token",
        ));
    }
    None
}

/// A snapshot without what people said: the state and service health only.
fn redacted(mut snap: serde_json::Value) -> serde_json::Value {
    if let Some(o) = snap.as_object_mut() {
        o.insert("turns".into(), serde_json::json!([]));
        o.insert("log".into(), serde_json::json!([]));
        o.insert("redacted".into(), serde_json::json!(true));
    }
    snap
}

/// The hub's model plus what the pipeline reports of its services.
fn snapshot(st: &AppState) -> serde_json::Value {
    let mut snap = st.hub.snapshot((st.handle.agents)(), st.handle.llm.clone());
    snap["stt"] = (st.handle.stt)();
    snap["tts"] = (st.handle.tts)();
    snap
}

async fn status(State(st): State<AppState>, headers: HeaderMap, uri: axum::http::Uri) -> Response {
    let snap = snapshot(&st);
    if may_read(&st, &headers, uri.query()) {
        Json(snap).into_response()
    } else {
        Json(redacted(snap)).into_response()
    }
}

async fn metrics(State(st): State<AppState>, headers: HeaderMap, uri: axum::http::Uri) -> Response {
    if !may_read(&st, &headers, uri.query()) {
        return error(
            StatusCode::UNAUTHORIZED,
            "the status page is not on loopback: /metrics needs the bearer token ([web] token)",
        );
    }
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
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

async fn events(State(st): State<AppState>, headers: HeaderMap, uri: axum::http::Uri) -> Response {
    let private = may_read(&st, &headers, uri.query());
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
    let mut snap = snapshot(&st);
    if !private {
        snap = redacted(snap);
    }
    Sse::new(feed(rx, snap.to_string(), guard, private))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

/// The live feed of one client: the snapshot, then every published message; a client
/// that fell behind the ring is told how many it missed and continues with the newest.
/// Without `private`, only messages that carry no words (state, service health) go out.
fn feed(
    rx: broadcast::Receiver<Arc<str>>,
    snapshot: String,
    guard: ClientGuard,
    private: bool,
) -> impl Stream<Item = Result<SseEvent, std::convert::Infallible>> {
    stream::unfold(
        (rx, Some(snapshot), guard),
        move |(mut rx, snap, guard)| async move {
            if let Some(s) = snap {
                return Some((Ok(SseEvent::default().data(s)), (rx, None, guard)));
            }
            let msg = loop {
                match rx.recv().await {
                    Ok(msg) if !private && !public_message(&msg) => continue,
                    other => break other,
                }
            };
            match msg {
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

/// Live messages a client without the token may see: those without anyone's words.
fn public_message(msg: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(msg)
        .ok()
        .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_owned))
        .is_some_and(|t| matches!(t.as_str(), "state" | "llm" | "breaker"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_rebinding_names_are_refused() {
        let known = vec!["localhost".to_string(), "panda.local".to_string()];
        for ok in [
            "127.0.0.1:8080",
            "localhost:8080",
            "LOCALHOST",
            "[::1]:8080",
            "192.168.1.9",
            "panda.local:80",
            "panda.local.",
        ] {
            assert!(host_allowed(ok, &known), "{ok}");
        }
        for bad in ["evil.example:8080", "localhost.evil.example", "[zz]:1", ""] {
            assert!(!host_allowed(bad, &known), "{bad}");
        }
        assert!(host_allowed("anything", &["*".to_string()]));
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_query_token_works() {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer abc"),
        );
        assert_eq!(given_token(&h, None), Some("abc"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("BEARER  abc "),
        );
        assert_eq!(given_token(&h, None), Some("abc"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(given_token(&h, None), None);
        assert_eq!(
            given_token(&HeaderMap::new(), Some("x=1&access_token=t%2B1")),
            Some("t%2B1")
        );
        assert_eq!(percent_decode("t%2B1"), "t+1");
        assert_eq!(percent_decode("100%"), "100%");
    }

    #[test]
    fn only_wordless_messages_are_public() {
        assert!(public_message(r#"{"type":"state","state":"idle"}"#));
        assert!(!public_message(
            r#"{"type":"text","turn":1,"text":"my PIN"}"#
        ));
        assert!(!public_message(r#"{"type":"turn","turn":{}}"#));
        assert!(!public_message("not json"));
    }

    #[test]
    fn token_comparison() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"abcd"));
    }
}
