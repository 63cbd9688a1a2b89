//! Which engine turns a question's audio into text: the local Whisper thread, or a
//! remote Wyoming ASR service (`[stt] backend = "wyoming"`) with the local model as its
//! fallback.
//!
//! Owned by the STT stage's task (on the async runtime; the remote call is network I/O
//! only, the local one goes to the Whisper owner thread). The local model stays loaded
//! with a remote backend: the wake word's second stage needs it, and so the appliance
//! still hears while the remote is down. A circuit breaker (the agents' state machine)
//! stops trying a failing remote for a backoff that doubles up to five minutes, so a dead
//! hub costs one deadline, not one per question; every remote attempt is an event
//! (`remote_stt`) and the breaker's changes are `breaker` events with agent `stt`, which
//! the status page shows beside its `stt` entry (backend, breaker, last error, fallbacks).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::stt::{SttError, SttHandle, SttOutput, clean_transcript};
use crate::event::{Event, SAMPLE_RATE_HZ};
use crate::think::breaker::{Breaker, BreakerConfig, BreakerState, Permit};
use crate::wyoming::client::{AsrClient, ClientError};

/// Failed remote requests in a row that open the breaker: two, so one dropped packet
/// does not switch engines but a dead hub is found on the second question.
const REMOTE_FAILURES_TO_OPEN: u32 = 2;
/// First open period; doubles on every re-open.
const REMOTE_BACKOFF: Duration = Duration::from_secs(5);
/// Longest open period.
const REMOTE_MAX_BACKOFF: Duration = Duration::from_secs(300);

/// The breaker's name in `breaker` events and on the status page.
pub const BREAKER_NAME: &str = "stt";

/// The question's transcriber.
#[derive(Clone)]
pub enum Transcriber {
    /// Whisper on this machine.
    Local(SttHandle),
    /// A Wyoming ASR service, the local Whisper as fallback.
    Remote(std::sync::Arc<RemoteStt>),
}

impl Transcriber {
    /// Transcribes a turn's question (16 kHz mono) in `language` (`None`: `[stt] language`).
    pub async fn transcribe(
        &self,
        turn: u64,
        samples: &[i16],
        language: Option<&str>,
        token: &CancellationToken,
    ) -> Result<SttOutput, SttError> {
        match self {
            Transcriber::Local(h) => h.transcribe_in(samples, language, token).await,
            Transcriber::Remote(r) => r.transcribe(turn, samples, language, token).await,
        }
    }

    /// The local Whisper (every backend has it).
    pub fn local(&self) -> &SttHandle {
        match self {
            Transcriber::Local(h) => h,
            Transcriber::Remote(r) => &r.local,
        }
    }

    /// The `stt` entry of the status page.
    pub fn status(&self) -> serde_json::Value {
        match self {
            Transcriber::Local(_) => serde_json::json!({"backend": "local"}),
            Transcriber::Remote(r) => r.status(),
        }
    }
}

/// A remote Wyoming ASR service with the local Whisper behind it.
pub struct RemoteStt {
    client: AsrClient,
    local: SttHandle,
    breaker: Mutex<Breaker>,
    /// Language sent when the caller names none (`[stt] language`).
    language: String,
    events: mpsc::Sender<Event>,
    remote_ok: AtomicU64,
    fallbacks: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl RemoteStt {
    /// A remote backend at `url` (`tcp://HOST:PORT`), giving up on a request after
    /// `timeout`; `events` receives its `remote_stt` and `breaker` events.
    pub fn new(
        url: &str,
        timeout: Duration,
        language: &str,
        local: SttHandle,
        events: mpsc::Sender<Event>,
    ) -> Result<Self, ClientError> {
        Ok(Self {
            client: AsrClient::new(url, timeout)?,
            local,
            breaker: Mutex::new(Breaker::new(BreakerConfig {
                failure_threshold: REMOTE_FAILURES_TO_OPEN,
                base_backoff: REMOTE_BACKOFF,
                max_backoff: REMOTE_MAX_BACKOFF,
            })),
            language: language.to_string(),
            events,
            remote_ok: AtomicU64::new(0),
            fallbacks: AtomicU64::new(0),
            last_error: Mutex::new(None),
        })
    }

    async fn transcribe(
        &self,
        turn: u64,
        samples: &[i16],
        language: Option<&str>,
        token: &CancellationToken,
    ) -> Result<SttOutput, SttError> {
        let permit = crate::lock(&self.breaker).permit(Instant::now());
        if permit == Permit::Refuse {
            tracing::debug!(turn, "remote STT breaker open: local Whisper");
            return self.fallback(samples, language, token).await;
        }
        let lang = language.unwrap_or(&self.language);
        let started = Instant::now();
        let result = self.client.transcribe(samples, Some(lang), token).await;
        let ms = started.elapsed().as_millis() as u64;
        let change = match &result {
            Ok(_) => crate::lock(&self.breaker).success(),
            Err(ClientError::Cancelled) => {
                crate::lock(&self.breaker).abandon();
                None
            }
            Err(_) => crate::lock(&self.breaker)
                .failure(Instant::now(), rand::random::<f64>() * 2.0 - 1.0),
        };
        let error = match &result {
            Err(ClientError::Cancelled) => return Err(SttError::Cancelled),
            Err(e) => Some(e.to_string()),
            Ok(_) => None,
        };
        let _ = self
            .events
            .send(Event::RemoteStt {
                turn,
                url: self.client.url(),
                ok: error.is_none(),
                ms,
                error: error.clone(),
            })
            .await;
        if let Some(state) = change {
            if state == BreakerState::Open {
                tracing::warn!(url = %self.client.url(), "remote STT breaker open: the local Whisper transcribes until it recovers");
            }
            let _ = self
                .events
                .send(Event::Breaker {
                    agent: BREAKER_NAME.to_string(),
                    state,
                })
                .await;
        }
        match result {
            Ok(text) => {
                self.remote_ok.fetch_add(1, Relaxed);
                Ok(SttOutput {
                    text: clean_transcript(&text),
                    audio_ms: samples.len() as u64 * 1000 / SAMPLE_RATE_HZ as u64,
                    stt_ms: ms,
                    language: lang.to_string(),
                    // A Wyoming transcript carries no confidence: the remote engine has
                    // already decided it heard words.
                    confidence: 1.0,
                })
            }
            Err(e) => {
                tracing::warn!(turn, url = %self.client.url(), error = %e, "remote STT failed: local Whisper");
                *crate::lock(&self.last_error) = error;
                self.fallback(samples, language, token).await
            }
        }
    }

    async fn fallback(
        &self,
        samples: &[i16],
        language: Option<&str>,
        token: &CancellationToken,
    ) -> Result<SttOutput, SttError> {
        self.fallbacks.fetch_add(1, Relaxed);
        self.local.transcribe_in(samples, language, token).await
    }

    fn status(&self) -> serde_json::Value {
        serde_json::json!({
            "backend": "wyoming",
            "url": self.client.url(),
            "breaker": crate::lock(&self.breaker).state(Instant::now()),
            "remote_ok": self.remote_ok.load(Relaxed),
            "fallbacks": self.fallbacks.load(Relaxed),
            "last_error": *crate::lock(&self.last_error),
        })
    }
}
