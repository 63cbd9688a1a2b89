//! The streaming LLM client: Ollama's native `/api/chat` (NDJSON) or an OpenAI-compatible
//! `/v1/chat/completions` (server-sent events), over the one shared, pooled HTTP client.
//!
//! Runs on the async runtime (it is all network I/O). Tokens are handed to the caller as
//! they arrive, so the turn can split sentences and start speaking while the model is
//! still generating. Bytes are split into lines before they are decoded, so a UTF-8
//! character split across network chunks arrives whole. A line longer than
//! `[llm] max_line_bytes` fails the answer cleanly instead of growing a buffer without
//! bound; a malformed line is skipped and counted.
//!
//! Timeouts: connect (in the shared client), first token, and the whole answer. A failure
//! before the first token is retried once (nothing has been said yet); after it, never —
//! the user has already heard part of the answer. Cancelling the turn's token drops the
//! response future at once, which closes the stream.
//!
//! After the end marker the rest of the body is drained (briefly), so the connection goes
//! back to the pool instead of being closed: one TCP connection serves every turn.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::config::{LlmBackend, LlmConfig};

/// Errors of one LLM answer.
#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    /// No LLM is configured (`[llm] enabled = false`).
    #[error("no language model is configured")]
    Disabled,
    /// The server could not be reached.
    #[error("the language model at {url} is not reachable: {problem}")]
    Unreachable {
        /// Base URL.
        url: String,
        /// What failed.
        problem: String,
    },
    /// The server answered with an error status.
    #[error("the language model answered HTTP {status}: {body}")]
    Status {
        /// HTTP status.
        status: u16,
        /// Start of the body.
        body: String,
    },
    /// The server answered with something that is not a token stream (an HTML page:
    /// `[llm] url` points at a web server, a captive portal or a proxy's error page).
    #[error(
        "the server at {url} answered with {content_type}, not a token stream: is [llm] url the language model server?"
    )]
    NotAStream {
        /// Base URL.
        url: String,
        /// The Content-Type it sent.
        content_type: String,
    },
    /// The server reported an error inside the stream.
    #[error("the language model reported an error: {0}")]
    Server(String),
    /// No token arrived in time.
    #[error("the language model sent nothing within {0} ms")]
    FirstTokenTimeout(u64),
    /// The whole answer took too long.
    #[error("the language model's answer took longer than {0} ms")]
    AnswerTimeout(u64),
    /// A stream line exceeded the limit.
    #[error("the language model sent a line longer than {limit} bytes; answer dropped")]
    Oversize {
        /// `[llm] max_line_bytes`.
        limit: usize,
    },
    /// The stream broke off before its end marker.
    #[error("the language model's stream broke off: {0}")]
    Interrupted(String),
    /// The turn was cancelled.
    #[error("cancelled")]
    Cancelled,
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// Text.
    pub content: String,
}

impl Message {
    /// A message with `role`.
    pub fn new(role: &str, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// Counters shared by every answer.
#[derive(Debug, Default)]
pub struct LlmStats {
    /// Answers started.
    pub requests: AtomicU64,
    /// Lines that were not valid protocol messages (skipped).
    pub malformed_lines: AtomicU64,
    /// Retries before the first token.
    pub retries: AtomicU64,
}

/// A finished answer.
#[derive(Debug, Clone)]
pub struct LlmAnswer {
    /// The whole text.
    pub text: String,
    /// Request → first token.
    pub first_token_ms: u64,
    /// Request → end marker.
    pub total_ms: u64,
    /// Malformed lines skipped in this answer.
    pub malformed: u64,
}

/// The client. Cheap to clone (the HTTP client is a pooled handle).
#[derive(Clone)]
pub struct LlmClient {
    http: reqwest::Client,
    cfg: LlmConfig,
    /// Shared counters.
    pub stats: Arc<LlmStats>,
}

/// Splits a byte stream into lines, bounded.
#[derive(Debug, Default)]
pub struct LineBuffer {
    buf: Vec<u8>,
    limit: usize,
}

impl LineBuffer {
    /// Lines may be at most `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            buf: Vec::new(),
            limit,
        }
    }

    /// Adds bytes; returns the complete lines (without `\n` / `\r\n`), or `Err` when a
    /// line exceeds the limit.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<Vec<u8>>, usize> {
        let mut out = Vec::new();
        let mut rest = bytes;
        while let Some(i) = rest.iter().position(|&b| b == b'\n') {
            if self.buf.len() + i > self.limit {
                return Err(self.limit);
            }
            self.buf.extend_from_slice(&rest[..i]);
            let mut line = std::mem::take(&mut self.buf);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            out.push(line);
            rest = &rest[i + 1..];
        }
        if self.buf.len() + rest.len() > self.limit {
            return Err(self.limit);
        }
        self.buf.extend_from_slice(rest);
        Ok(out)
    }

    /// What is left after the stream ended (a last line without a newline).
    pub fn finish(&mut self) -> Option<Vec<u8>> {
        let b = std::mem::take(&mut self.buf);
        (!b.is_empty()).then_some(b)
    }
}

/// What one protocol line meant.
#[derive(Debug, PartialEq)]
pub enum Line {
    /// Text to append.
    Delta(String),
    /// The last text of the answer (a final message that carries text).
    Last(String),
    /// The answer is complete.
    Done,
    /// The server reported an error.
    Error(String),
    /// Nothing (keep-alive, comment, role-only delta).
    Nothing,
    /// Not a valid message.
    Malformed,
}

/// Parses one line of `backend`'s stream.
pub fn parse_line(backend: LlmBackend, line: &[u8]) -> Line {
    let Ok(text) = std::str::from_utf8(line) else {
        return Line::Malformed;
    };
    let text = text.trim();
    if text.is_empty() {
        return Line::Nothing;
    }
    match backend {
        LlmBackend::Ollama => {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(text) else {
                return Line::Malformed;
            };
            if let Some(e) = v.get("error") {
                return Line::Error(e.as_str().map_or_else(|| e.to_string(), String::from));
            }
            let delta = v
                .pointer("/message/content")
                .and_then(|c| c.as_str())
                .unwrap_or_default();
            if v.get("done").and_then(|d| d.as_bool()) == Some(true) {
                // The final object may carry a last piece of text.
                return if delta.is_empty() {
                    Line::Done
                } else {
                    Line::Last(delta.to_string())
                };
            }
            if v.get("message").is_none() {
                return Line::Malformed;
            }
            if delta.is_empty() {
                Line::Nothing
            } else {
                Line::Delta(delta.to_string())
            }
        }
        LlmBackend::Openai => {
            if text.starts_with(':') || text.starts_with("event:") || text.starts_with("id:") {
                return Line::Nothing;
            }
            let Some(data) = text.strip_prefix("data:") else {
                return Line::Malformed;
            };
            let data = data.trim();
            if data == "[DONE]" {
                return Line::Done;
            }
            let Ok(v) = serde_json::from_str::<serde_json::Value>(data) else {
                return Line::Malformed;
            };
            if let Some(e) = v.get("error") {
                return Line::Error(
                    e.get("message")
                        .and_then(|m| m.as_str())
                        .map_or_else(|| e.to_string(), String::from),
                );
            }
            let Some(choice) = v.pointer("/choices/0") else {
                return Line::Malformed;
            };
            let delta = choice
                .pointer("/delta/content")
                .and_then(|c| c.as_str())
                .unwrap_or_default();
            let finished = choice.get("finish_reason").is_some_and(|f| !f.is_null());
            match (delta.is_empty(), finished) {
                (true, true) => Line::Done,
                (false, true) => Line::Last(delta.to_string()),
                (false, false) => Line::Delta(delta.to_string()),
                (true, false) => Line::Nothing,
            }
        }
    }
}

impl LlmClient {
    /// A client for `cfg` over the shared pooled `http` client.
    pub fn new(cfg: &LlmConfig, http: reqwest::Client) -> Self {
        Self {
            http,
            cfg: cfg.clone(),
            stats: Arc::default(),
        }
    }

    fn request(&self, messages: &[Message]) -> reqwest::RequestBuilder {
        let base = self.cfg.url.trim_end_matches('/');
        match self.cfg.backend {
            LlmBackend::Ollama => {
                self.http
                    .post(format!("{base}/api/chat"))
                    .json(&serde_json::json!({
                        "model": self.cfg.model,
                        "messages": messages,
                        "stream": true,
                        "keep_alive": format!("{}s", self.cfg.keep_alive_s),
                        "options": {
                            "temperature": self.cfg.temperature,
                            "num_predict": self.cfg.max_tokens,
                        },
                    }))
            }
            LlmBackend::Openai => {
                self.http
                    .post(format!("{base}/v1/chat/completions"))
                    .json(&serde_json::json!({
                        "model": self.cfg.model,
                        "messages": messages,
                        "stream": true,
                        "temperature": self.cfg.temperature,
                        "max_tokens": self.cfg.max_tokens,
                    }))
            }
        }
    }

    /// Streams an answer to `messages`, calling `on_delta` with each piece of text as it
    /// arrives. Returns when the end marker arrives, on error, or at once when `token` is
    /// cancelled.
    pub async fn stream(
        &self,
        messages: &[Message],
        token: &CancellationToken,
        mut on_delta: impl FnMut(&str) + Send,
    ) -> Result<LlmAnswer, LlmError> {
        if !self.cfg.enabled {
            return Err(LlmError::Disabled);
        }
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let start = Instant::now();
        let deadline = start + Duration::from_millis(self.cfg.answer_timeout_ms);
        let mut attempt = 0;
        loop {
            let mut said_anything = false;
            let mut forward = |d: &str| {
                said_anything = true;
                on_delta(d)
            };
            let r = tokio::select! {
                _ = token.cancelled() => return Err(LlmError::Cancelled),
                r = self.attempt(messages, start, deadline, &mut forward) => r,
            };
            match r {
                Err(e) if !said_anything && attempt == 0 && retryable(&e) => {
                    attempt += 1;
                    self.stats.retries.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "LLM request failed before the first token; retrying once");
                }
                other => return other,
            }
        }
    }

    async fn attempt(
        &self,
        messages: &[Message],
        start: Instant,
        deadline: Instant,
        on_delta: &mut (dyn FnMut(&str) + Send),
    ) -> Result<LlmAnswer, LlmError> {
        let first_deadline =
            (Instant::now() + Duration::from_millis(self.cfg.first_token_timeout_ms)).min(deadline);
        let unreachable = |e: reqwest::Error| LlmError::Unreachable {
            url: self.cfg.url.clone(),
            problem: super::describe(e),
        };
        let resp = tokio::time::timeout_at(first_deadline.into(), self.request(messages).send())
            .await
            .map_err(|_| LlmError::FirstTokenTimeout(self.cfg.first_token_timeout_ms))?
            .map_err(unreachable)?;
        let status = resp.status();
        if !status.is_success() {
            let body = tokio::time::timeout(Duration::from_millis(500), resp.text())
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default();
            return Err(LlmError::Status {
                status: status.as_u16(),
                body: body.chars().take(200).collect(),
            });
        }
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        if content_type.contains("html") || content_type.contains("xml") {
            return Err(LlmError::NotAStream {
                url: self.cfg.url.clone(),
                content_type,
            });
        }
        let mut body = resp.bytes_stream();
        let mut lines = LineBuffer::new(self.cfg.max_line_bytes);
        let mut text = String::new();
        let mut first_token_ms = None;
        let mut malformed = 0u64;
        let backend = self.cfg.backend;
        loop {
            let limit = if first_token_ms.is_none() {
                first_deadline
            } else {
                deadline
            };
            let next = match tokio::time::timeout_at(limit.into(), body.next()).await {
                Err(_) if first_token_ms.is_none() => {
                    return Err(LlmError::FirstTokenTimeout(self.cfg.first_token_timeout_ms));
                }
                Err(_) => return Err(LlmError::AnswerTimeout(self.cfg.answer_timeout_ms)),
                Ok(n) => n,
            };
            let (chunk_lines, ended) = match next {
                Some(Ok(bytes)) => (
                    lines
                        .push(&bytes)
                        .map_err(|limit| LlmError::Oversize { limit })?,
                    false,
                ),
                Some(Err(e)) => {
                    return Err(LlmError::Interrupted(super::describe(e)));
                }
                None => (lines.finish().into_iter().collect(), true),
            };
            for line in chunk_lines {
                match parse_line(backend, &line) {
                    l @ (Line::Delta(_) | Line::Last(_)) => {
                        let done = matches!(l, Line::Last(_));
                        let (Line::Delta(d) | Line::Last(d)) = l else {
                            continue;
                        };
                        if first_token_ms.is_none() {
                            first_token_ms = Some(start.elapsed().as_millis() as u64);
                        }
                        on_delta(&d);
                        text.push_str(&d);
                        if done {
                            drain(body).await;
                            return Ok(self.answer(text, first_token_ms, start, malformed));
                        }
                    }
                    Line::Done => {
                        drain(body).await;
                        return Ok(self.answer(text, first_token_ms, start, malformed));
                    }
                    Line::Error(e) => return Err(LlmError::Server(e)),
                    Line::Nothing => {}
                    Line::Malformed => {
                        malformed += 1;
                        self.stats.malformed_lines.fetch_add(1, Ordering::Relaxed);
                        // One line per answer (with a count at its end), not one per
                        // bad line: 200,000 of them once wrote 31 MB of log.
                        if malformed == 1 {
                            tracing::warn!(
                                line = %String::from_utf8_lossy(&line[..line.len().min(120)]),
                                "skipping a malformed LLM stream line (further ones in this answer are counted)"
                            );
                        }
                    }
                }
            }
            if ended {
                return Err(LlmError::Interrupted(
                    "the connection closed before the end of the answer".into(),
                ));
            }
        }
    }

    fn answer(
        &self,
        text: String,
        first_token_ms: Option<u64>,
        start: Instant,
        malformed: u64,
    ) -> LlmAnswer {
        let total_ms = start.elapsed().as_millis() as u64;
        if malformed > 1 {
            tracing::warn!(
                malformed,
                "malformed LLM stream lines skipped in this answer"
            );
        }
        LlmAnswer {
            text,
            first_token_ms: first_token_ms.unwrap_or(total_ms),
            total_ms,
            malformed,
        }
    }
}

fn retryable(e: &LlmError) -> bool {
    matches!(
        e,
        LlmError::Unreachable { .. }
            | LlmError::Interrupted(_)
            | LlmError::Status { status: 500.., .. }
    )
}

/// Reads what is left of a finished response so its connection returns to the pool.
async fn drain<S>(mut body: S)
where
    S: futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin,
{
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        let mut left = 64 * 1024usize;
        while let Some(Ok(b)) = body.next().await {
            left = left.saturating_sub(b.len());
            if left == 0 {
                break;
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_on_bytes_so_utf8_survives_chunking() {
        let mut b = LineBuffer::new(100);
        let s = "héllo 🐼\nnext\n".as_bytes();
        let mut got = Vec::new();
        for chunk in s.chunks(3) {
            got.extend(b.push(chunk).unwrap());
        }
        assert_eq!(got, vec!["héllo 🐼".as_bytes().to_vec(), b"next".to_vec()]);
        assert_eq!(b.finish(), None);
    }

    #[test]
    fn oversize_lines_are_refused() {
        let mut b = LineBuffer::new(10);
        assert!(b.push(b"12345").is_ok());
        assert_eq!(b.push(b"678901"), Err(10));
        let mut b = LineBuffer::new(10);
        assert_eq!(b.push(b"12345678901\n"), Err(10));
    }

    #[test]
    fn ollama_lines() {
        let p = |s: &str| parse_line(LlmBackend::Ollama, s.as_bytes());
        assert_eq!(
            p(r#"{"message":{"role":"assistant","content":"Hi"},"done":false}"#),
            Line::Delta("Hi".into())
        );
        assert_eq!(p(r#"{"message":{"content":""},"done":true}"#), Line::Done);
        assert_eq!(p(r#"{"done":true}"#), Line::Done);
        assert_eq!(
            p(r#"{"error":"model not found"}"#),
            Line::Error("model not found".into())
        );
        assert_eq!(p("{not json"), Line::Malformed);
        assert_eq!(p(r#"{"foo":1}"#), Line::Malformed);
        assert_eq!(p(""), Line::Nothing);
    }

    #[test]
    fn openai_lines() {
        let p = |s: &str| parse_line(LlmBackend::Openai, s.as_bytes());
        assert_eq!(
            p(r#"data: {"choices":[{"delta":{"content":"Hi"},"finish_reason":null}]}"#),
            Line::Delta("Hi".into())
        );
        assert_eq!(
            p(r#"data: {"choices":[{"delta":{"role":"assistant"}}]}"#),
            Line::Nothing
        );
        assert_eq!(
            p(r#"data: {"choices":[{"delta":{},"finish_reason":"stop"}]}"#),
            Line::Done
        );
        assert_eq!(p("data: [DONE]"), Line::Done);
        assert_eq!(p(": keep-alive"), Line::Nothing);
        assert_eq!(p("data: {broken"), Line::Malformed);
        assert_eq!(p("garbage"), Line::Malformed);
        assert_eq!(
            p(r#"data: {"error":{"message":"overloaded"}}"#),
            Line::Error("overloaded".into())
        );
    }
}
