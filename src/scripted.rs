//! A small scripted HTTP/1.1 server for benchmarks and tests: a real TCP server on
//! loopback (keep-alive, chunked streaming) whose replies a closure decides — so a test
//! can make a peer stream slowly, die mid-stream, send garbage or stall, and count what
//! the client did (connections accepted, requests, their time intervals).
//!
//! Not part of the daemon: the benches (`panda bench agents`, `e2e`, `soak`) and the
//! integration tests start it as the LLM and agent peers they talk to; it sits beside
//! the stages rather than under `bench` so that tests do not reach into a bench.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// A parsed request.
#[derive(Debug, Clone)]
pub struct Request {
    /// `GET`, `POST`, …
    pub method: String,
    /// Path with query string.
    pub target: String,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl Request {
    /// The path without the query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// A query parameter (no percent-decoding beyond `+` and `%20`).
    pub fn query(&self, key: &str) -> Option<String> {
        let q = self.target.split_once('?')?.1;
        q.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (k == key).then(|| v.replace('+', " ").replace("%20", " "))
        })
    }
}

/// How the server answers.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A whole body after `delay`.
    Full {
        /// HTTP status.
        status: u16,
        /// Content type.
        content_type: &'static str,
        /// Body.
        body: Vec<u8>,
        /// Wait before answering.
        delay: Duration,
    },
    /// A redirect (`status` 301/302/307/308) to `location`.
    Redirect {
        /// HTTP status.
        status: u16,
        /// The `Location` header.
        location: String,
    },
    /// A chunked stream: each piece after its delay; `die` drops the connection after the
    /// last piece instead of ending the stream properly.
    Stream {
        /// Content type.
        content_type: &'static str,
        /// (delay before, bytes).
        pieces: Vec<(Duration, Vec<u8>)>,
        /// Break off instead of finishing.
        die: bool,
    },
}

impl Reply {
    /// 200 with a JSON body.
    pub fn json(v: serde_json::Value) -> Reply {
        Reply::Full {
            status: 200,
            content_type: "application/json",
            body: v.to_string().into_bytes(),
            delay: Duration::ZERO,
        }
    }
}

/// What the server saw.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// TCP connections accepted.
    pub accepts: AtomicU64,
    /// Requests served.
    pub requests: AtomicU64,
    /// (path, start, end) of every request.
    pub intervals: Mutex<Vec<(String, Instant, Instant)>>,
}

/// A running server; stops when dropped.
pub struct Server {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Counters.
    pub stats: Arc<ServerStats>,
    stop: CancellationToken,
}

impl Server {
    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The reply-deciding closure.
pub type Handler = Arc<dyn Fn(&Request) -> Reply + Send + Sync>;

/// Starts a server on a free loopback port on the current tokio runtime.
pub async fn serve(handler: Handler) -> std::io::Result<Server> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let stats = Arc::new(ServerStats::default());
    let stop = CancellationToken::new();
    let (s, st) = (stats.clone(), stop.clone());
    tokio::spawn(async move {
        loop {
            let (sock, _) = tokio::select! {
                _ = st.cancelled() => return,
                r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
            };
            s.accepts.fetch_add(1, Ordering::Relaxed);
            let _ = sock.set_nodelay(true);
            let (h, s2, st2) = (handler.clone(), s.clone(), st.clone());
            tokio::spawn(async move {
                tokio::select! {
                    _ = st2.cancelled() => {}
                    _ = connection(sock, h, s2) => {}
                }
            });
        }
    });
    Ok(Server { addr, stats, stop })
}

async fn connection(mut sock: TcpStream, handler: Handler, stats: Arc<ServerStats>) {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    loop {
        // Read the head.
        let head_end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i;
            }
            let mut tmp = [0u8; 4096];
            match sock.read(&mut tmp).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            }
            if buf.len() > 64 * 1024 {
                return;
            }
        };
        let start = Instant::now();
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let mut lines = head.split("\r\n");
        let mut first = lines.next().unwrap_or("").split_whitespace();
        let method = first.next().unwrap_or("").to_string();
        let target = first.next().unwrap_or("/").to_string();
        let mut len = 0usize;
        let mut close = false;
        for l in lines {
            let lower = l.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
            if lower.starts_with("connection:") && lower.contains("close") {
                close = true;
            }
        }
        buf.drain(..head_end + 4);
        while buf.len() < len {
            let mut tmp = [0u8; 4096];
            match sock.read(&mut tmp).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            }
        }
        let body: Vec<u8> = buf.drain(..len).collect();
        let req = Request {
            method,
            target,
            body,
        };
        stats.requests.fetch_add(1, Ordering::Relaxed);
        let reply = handler(&req);
        let keep = if close { "close" } else { "keep-alive" };
        let ok = match reply {
            Reply::Full {
                status,
                content_type,
                body,
                delay,
            } => {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                let head = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: {keep}\r\n\r\n",
                    body.len()
                );
                sock.write_all(head.as_bytes()).await.is_ok() && sock.write_all(&body).await.is_ok()
            }
            Reply::Redirect { status, location } => {
                let head = format!(
                    "HTTP/1.1 {status} X\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: {keep}\r\n\r\n"
                );
                sock.write_all(head.as_bytes()).await.is_ok()
            }
            Reply::Stream {
                content_type,
                pieces,
                die,
            } => {
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nTransfer-Encoding: chunked\r\nConnection: {keep}\r\n\r\n"
                );
                if sock.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let _ = sock.flush().await;
                for (delay, bytes) in pieces {
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    if bytes.is_empty() {
                        continue;
                    }
                    let mut chunk = format!("{:x}\r\n", bytes.len()).into_bytes();
                    chunk.extend_from_slice(&bytes);
                    chunk.extend_from_slice(b"\r\n");
                    if sock.write_all(&chunk).await.is_err() {
                        return;
                    }
                    let _ = sock.flush().await;
                }
                if die {
                    // Break off: close without the terminating chunk.
                    return;
                }
                sock.write_all(b"0\r\n\r\n").await.is_ok()
            }
        };
        crate::lock(&stats.intervals).push((req.target.clone(), start, Instant::now()));
        if !ok || close {
            return;
        }
    }
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

/// An OpenAI-protocol SSE stream of `tokens`, `delay` apart.
pub fn openai_stream(tokens: &[&str], delay: Duration) -> Vec<(Duration, Vec<u8>)> {
    let mut out: Vec<(Duration, Vec<u8>)> = tokens
        .iter()
        .map(|t| {
            let line =
                serde_json::json!({"choices": [{"delta": {"content": t}, "finish_reason": null}]});
            (delay, format!("data: {line}\n\n").into_bytes())
        })
        .collect();
    out.push((
        delay,
        b"data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n"
            .to_vec(),
    ));
    out
}

/// An Ollama-protocol NDJSON stream of `tokens`, `delay` apart.
pub fn ollama_stream(tokens: &[&str], delay: Duration) -> Vec<(Duration, Vec<u8>)> {
    let mut out: Vec<(Duration, Vec<u8>)> = tokens
        .iter()
        .map(|t| {
            let line =
                serde_json::json!({"message": {"role": "assistant", "content": t}, "done": false});
            (delay, format!("{line}\n").into_bytes())
        })
        .collect();
    out.push((
        delay,
        b"{\"message\":{\"role\":\"assistant\",\"content\":\"\"},\"done\":true}\n".to_vec(),
    ));
    out
}
