//! The thinking path: from a transcript to the sentences of the answer.
//!
//! - [`router`]: intent matchers compiled once, plus an LRU of normalised utterances.
//! - [`turn`]: the [`turn::Thinker`] — one utterance end to end on the turn task: skills,
//!   agents, LLM streaming into the sentence splitter, filler, apology.
//! - [`llm`]: the pooled streaming client for Ollama (NDJSON) and OpenAI-compatible (SSE)
//!   servers.
//! - [`agents`]: helper services from config, called concurrently, each behind a
//!   [`breaker`] with cached health from a background task.
//! - [`timers`]: the timer/alarm actor with its persisted list.
//! - [`conversation`]: prompts built once per language, history within a token budget,
//!   rolling summary.
//!
//! Everything here is async network I/O or microseconds of CPU, so it runs on the tokio
//! runtime; the one HTTP client is shared (pooled keep-alive connections).

pub mod agents;
pub mod breaker;
pub mod conversation;
pub mod driver;
pub mod llm;
pub mod router;
pub mod skills;
pub mod timers;
pub mod turn;

use std::time::Duration;

/// The process-wide HTTP client: keep-alive connections pooled per host, so every LLM and
/// agent call after the first reuses a connection (the seed opened one per request).
pub fn http_client(connect_timeout_ms: u64) -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_millis(connect_timeout_ms))
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(8)
        .tcp_nodelay(true)
        .no_proxy()
        .redirect(reqwest::redirect::Policy::custom(same_origin_redirects))
        .build()
        .expect("a client with these settings always builds")
}

/// Most redirects followed within one origin.
const MAX_REDIRECTS: usize = 5;

/// Redirects are followed only within the origin first asked (scheme, host and port):
/// a prompt carries the owner's remembered facts, and a 307 to another address once
/// received all of it.
fn same_origin_redirects(attempt: reqwest::redirect::Attempt<'_>) -> reqwest::redirect::Action {
    let Some(first) = attempt.previous().first() else {
        return attempt.follow();
    };
    if attempt.url().origin() != first.origin() {
        let msg = format!(
            "refused a redirect from {} to another origin, {}",
            first.origin().ascii_serialization(),
            attempt.url().origin().ascii_serialization()
        );
        return attempt.error(msg);
    }
    if attempt.previous().len() > MAX_REDIRECTS {
        return attempt.error(format!("more than {MAX_REDIRECTS} redirects"));
    }
    attempt.follow()
}

/// A reqwest error with its causes ("error sending request: connection refused"), without
/// the URL (callers name the service).
pub fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        let t = s.to_string();
        if !msg.contains(&t) {
            msg.push_str(": ");
            msg.push_str(&t);
        }
        src = s.source();
    }
    msg
}
