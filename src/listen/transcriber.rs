//! Which engine turns a question's audio into text: the local Whisper thread, or a
//! remote Wyoming ASR service (`[stt] backend = "wyoming"`) with the local model as its
//! fallback.
//!
//! Owned by the STT stage's task (on the async runtime; the remote call is network I/O
//! only, the local one goes to the Whisper owner thread). The local model stays loaded
//! with a remote backend: the wake word's second stage needs it, and so the appliance
//! still hears while the remote is down. A circuit breaker ([`Health`]) stops trying a
//! failing remote for a backoff that doubles up to five minutes, so a dead hub costs one
//! deadline, not one per question; every remote attempt is a `remote` event and the
//! breaker's changes are `breaker` events with agent `stt`, which the status page shows
//! beside its `stt` entry (backend, breaker, last error, fallbacks).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::stt::{SttError, SttHandle, SttOutput, clean_transcript};
use crate::event::{Event, SAMPLE_RATE_HZ};
use crate::wyoming::client::{AsrClient, ClientError, Health};

/// The breaker's name in `breaker` events.
pub const BREAKER_NAME: &str = "stt";

/// The question's transcriber.
#[derive(Clone)]
pub enum Transcriber {
    /// Whisper on this machine.
    Local(SttHandle),
    /// A Wyoming ASR service, the local Whisper as fallback.
    Remote(Arc<RemoteStt>),
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
    health: Health,
    /// Language sent when the caller names none (`[stt] language`).
    language: String,
    events: mpsc::Sender<Event>,
}

impl RemoteStt {
    /// A remote backend at `url` (`tcp://HOST:PORT`), giving up on a request after
    /// `timeout`; `events` receives its `remote` and `breaker` events.
    pub fn new(
        url: &str,
        timeout: Duration,
        language: &str,
        local: SttHandle,
        events: mpsc::Sender<Event>,
    ) -> Result<Self, ClientError> {
        let client = AsrClient::new(url, timeout)?;
        Ok(Self {
            health: Health::new(client.url()),
            client,
            local,
            language: language.to_string(),
            events,
        })
    }

    async fn transcribe(
        &self,
        turn: u64,
        samples: &[i16],
        language: Option<&str>,
        token: &CancellationToken,
    ) -> Result<SttOutput, SttError> {
        if !self.health.permit() {
            tracing::debug!(turn, "remote STT breaker open: local Whisper");
            return self.fallback(samples, language, token).await;
        }
        let lang = language.unwrap_or(&self.language);
        let started = Instant::now();
        let result = self.client.transcribe(samples, Some(lang), token).await;
        let ms = started.elapsed().as_millis() as u64;
        let change = self.health.record(&result);
        if let Err(ClientError::Cancelled) = result {
            return Err(SttError::Cancelled);
        }
        let events = Event::remote(turn, "stt", &self.health, ms, &result, change);
        for ev in events {
            let _ = self.events.send(ev).await;
        }
        match result {
            Ok(text) => Ok(SttOutput {
                text: clean_transcript(&text),
                audio_ms: samples.len() as u64 * 1000 / SAMPLE_RATE_HZ as u64,
                stt_ms: ms,
                language: lang.to_string(),
                // A Wyoming transcript carries no confidence: the remote engine has
                // already decided it heard words.
                confidence: 1.0,
                model: self.health.url().to_string(),
            }),
            Err(e) => {
                tracing::warn!(turn, url = %self.health.url(), error = %e, "remote STT failed: local Whisper");
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
        self.health.fell_back();
        self.local.transcribe_in(samples, language, token).await
    }

    fn status(&self) -> serde_json::Value {
        self.health.status()
    }
}
