//! Wyoming clients: Panda's questions transcribed ([`AsrClient`]) and its answers spoken
//! ([`TtsClient`]) by remote engines (e.g. `wyoming-faster-whisper` or `wyoming-piper` on
//! a bigger box, or another Panda's `panda serve`), and the [`Health`] (circuit breaker,
//! counters, last error) each remote backend keeps for its fallback and the status page.
//!
//! The clients are async and do network I/O only, bounded by one deadline per request
//! (the ASR client runs in the STT stage's task; the TTS client on a small runtime of the
//! TTS thread's own). Wyoming has no request ids, so every request gets a fresh
//! TCP connection, as Home Assistant does (the servers close it after the transcript);
//! there is nothing to pool, and "reconnecting" is simply the next request. Dropping the
//! future (the turn was cancelled) closes the connection, which a Wyoming server takes
//! as the end of the request.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::codec::{CodecError, Event, read_event, write_event};
use crate::think::breaker::{Breaker, BreakerConfig, BreakerState, Permit};

/// Samples per `audio-chunk`: 1,024 at 16 kHz (64 ms), what the Python client sends.
const SAMPLES_PER_CHUNK: usize = 1024;

/// Longest synthesis accepted from a remote TTS (seconds of audio): bounds the memory a
/// misbehaving server can make Panda hold for one sentence.
const MAX_SYNTH_AUDIO_S: u64 = 120;

/// Failed remote requests in a row that open a backend's breaker: two, so one dropped
/// packet does not switch engines but a dead hub is found on the second request.
const FAILURES_TO_OPEN: u32 = 2;
/// First open period; doubles on every re-open.
const BACKOFF: Duration = Duration::from_secs(5);
/// Longest open period.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Events a server may send before the transcript (`transcript-start`,
/// `transcript-chunk`, and whatever a newer server adds); past this it is not
/// answering the request.
const MAX_EVENTS_BEFORE_TRANSCRIPT: usize = 10_000;

/// Errors of a remote transcription.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The configured address is not `tcp://HOST:PORT`.
    #[error("wyoming address {0:?} is not tcp://HOST:PORT")]
    BadAddress(String),
    /// The server could not be reached.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// `HOST:PORT`.
        addr: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The connection failed or the server sent a malformed frame.
    #[error("{0}")]
    Protocol(#[from] CodecError),
    /// The server answered with an `error` event.
    #[error("the server said: {0}")]
    Remote(String),
    /// The server closed the connection before the transcript.
    #[error("the server closed the connection before the transcript")]
    Closed,
    /// The server sent events but no transcript.
    #[error("no transcript after {MAX_EVENTS_BEFORE_TRANSCRIPT} events")]
    NoTranscript,
    /// No answer within the deadline.
    #[error("no answer within {0} ms")]
    Timeout(u64),
    /// The synthesis' audio is not something Panda can play.
    #[error("bad audio from the server: {0}")]
    BadAudio(String),
    /// The turn was cancelled.
    #[error("cancelled")]
    Cancelled,
}

/// A remote ASR service.
#[derive(Debug, Clone)]
pub struct AsrClient {
    /// `HOST:PORT`.
    addr: String,
    /// Connect + send + transcript.
    timeout: Duration,
}

impl AsrClient {
    /// A client of the service at `tcp://HOST:PORT`.
    pub fn new(url: &str, timeout: Duration) -> Result<Self, ClientError> {
        let addr = url
            .strip_prefix("tcp://")
            .filter(|a| {
                a.rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
            })
            .ok_or_else(|| ClientError::BadAddress(url.to_string()))?;
        Ok(Self {
            addr: addr.to_string(),
            timeout,
        })
    }

    /// `tcp://HOST:PORT`, for logs and the status page.
    pub fn url(&self) -> String {
        format!("tcp://{}", self.addr)
    }

    /// Transcribes 16 kHz mono samples; `language` is passed on when given.
    pub async fn transcribe(
        &self,
        samples: &[i16],
        language: Option<&str>,
        token: &CancellationToken,
    ) -> Result<String, ClientError> {
        bounded(self.timeout, token, self.exchange(samples, language)).await
    }

    async fn exchange(
        &self,
        samples: &[i16],
        language: Option<&str>,
    ) -> Result<String, ClientError> {
        let stream =
            TcpStream::connect(&self.addr)
                .await
                .map_err(|source| ClientError::Connect {
                    addr: self.addr.clone(),
                    source,
                })?;
        // Small frames, sent at once: latency matters more than packet count.
        let _ = stream.set_nodelay(true);
        let (rd, mut wr) = stream.into_split();
        let mut rd = BufReader::new(rd);
        let mut transcribe = Event::new("transcribe");
        if let Some(l) = language.filter(|l| !l.is_empty() && *l != "auto") {
            transcribe = transcribe.with("language", l);
        }
        write_event(&mut wr, &transcribe).await?;
        let format = |e: Event| e.with("rate", 16_000).with("width", 2).with("channels", 1);
        write_event(&mut wr, &format(Event::new("audio-start"))).await?;
        for chunk in samples.chunks(SAMPLES_PER_CHUNK) {
            let pcm: Vec<u8> = chunk.iter().flat_map(|s| s.to_le_bytes()).collect();
            write_event(
                &mut wr,
                &format(Event::new("audio-chunk")).with_payload(pcm),
            )
            .await?;
        }
        write_event(&mut wr, &format(Event::new("audio-stop"))).await?;
        wr.flush().await.map_err(CodecError::from)?;
        for _ in 0..MAX_EVENTS_BEFORE_TRANSCRIPT {
            let Some(ev) = read_event(&mut rd).await? else {
                return Err(ClientError::Closed);
            };
            match ev.kind.as_str() {
                "transcript" => return Ok(ev.str("text").unwrap_or("").trim().to_string()),
                "error" => {
                    return Err(ClientError::Remote(
                        ev.str("text").unwrap_or("(no text)").to_string(),
                    ));
                }
                // transcript-start/-chunk (streaming servers), pings, anything newer.
                _ => {}
            }
        }
        Err(ClientError::NoTranscript)
    }
}

/// `HOST:PORT` of a `tcp://HOST:PORT` address.
fn host_port(url: &str) -> Result<String, ClientError> {
    url.strip_prefix("tcp://")
        .filter(|a| {
            a.rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
        })
        .map(str::to_string)
        .ok_or_else(|| ClientError::BadAddress(url.to_string()))
}

type Reader = BufReader<tokio::net::tcp::OwnedReadHalf>;
type Writer = tokio::net::tcp::OwnedWriteHalf;

/// A fresh connection, split for reading and writing.
async fn connect(addr: &str) -> Result<(Reader, Writer), ClientError> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|source| ClientError::Connect {
            addr: addr.to_string(),
            source,
        })?;
    // Small frames, sent at once: latency matters more than packet count.
    let _ = stream.set_nodelay(true);
    let (rd, wr) = stream.into_split();
    Ok((BufReader::new(rd), wr))
}

/// Runs a request under its deadline and the turn's token.
async fn bounded<T>(
    timeout: Duration,
    token: &CancellationToken,
    request: impl std::future::Future<Output = Result<T, ClientError>>,
) -> Result<T, ClientError> {
    let ms = timeout.as_millis() as u64;
    tokio::select! {
        _ = token.cancelled() => Err(ClientError::Cancelled),
        r = tokio::time::timeout(timeout, request) => r.unwrap_or(Err(ClientError::Timeout(ms))),
    }
}

/// A remote synthesis: mono samples at the server's rate.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteAudio {
    /// Sample rate the server chose (Piper 22,050 Hz, Kokoro 24,000 Hz).
    pub rate_hz: u32,
    /// Mono samples in [-1, 1].
    pub samples: Vec<f32>,
}

/// A remote TTS service.
#[derive(Debug, Clone)]
pub struct TtsClient {
    /// `HOST:PORT`.
    addr: String,
    /// Connect + send + the whole synthesis.
    timeout: Duration,
}

impl TtsClient {
    /// A client of the service at `tcp://HOST:PORT`.
    pub fn new(url: &str, timeout: Duration) -> Result<Self, ClientError> {
        Ok(Self {
            addr: host_port(url)?,
            timeout,
        })
    }

    /// `tcp://HOST:PORT`, for logs and the status page.
    pub fn url(&self) -> String {
        format!("tcp://{}", self.addr)
    }

    /// Synthesises `text` in `voice` (`None`: the server's default), whole: a sentence
    /// is short, and holding it until `audio-stop` means a server that fails half-way
    /// leaves nothing half-spoken (the fallback speaks the whole sentence instead).
    pub async fn synthesize(
        &self,
        text: &str,
        voice: Option<&str>,
        token: &CancellationToken,
    ) -> Result<RemoteAudio, ClientError> {
        bounded(self.timeout, token, self.exchange(text, voice)).await
    }

    async fn exchange(&self, text: &str, voice: Option<&str>) -> Result<RemoteAudio, ClientError> {
        let (mut rd, mut wr) = connect(&self.addr).await?;
        let mut ev = Event::new("synthesize").with("text", text);
        if let Some(v) = voice.filter(|v| !v.is_empty()) {
            ev = ev.with("voice", serde_json::json!({ "name": v }));
        }
        write_event(&mut wr, &ev).await?;
        wr.flush().await.map_err(CodecError::from)?;
        let mut format: Option<(u32, usize, usize)> = None;
        let mut samples = Vec::new();
        for _ in 0..MAX_EVENTS_BEFORE_TRANSCRIPT {
            let Some(ev) = read_event(&mut rd).await? else {
                return Err(ClientError::Closed);
            };
            match ev.kind.as_str() {
                "audio-start" | "audio-chunk" => {
                    let f = audio_format(&ev, format)?;
                    format = Some(f);
                    let (rate, width, channels) = f;
                    if !ev.payload.is_empty() {
                        super::codec::pcm_to_mono(&ev.payload, width, channels, &mut samples)
                            .map_err(ClientError::BadAudio)?;
                    }
                    if samples.len() as u64 > MAX_SYNTH_AUDIO_S * rate as u64 {
                        return Err(ClientError::BadAudio(format!(
                            "longer than {MAX_SYNTH_AUDIO_S} s for one sentence"
                        )));
                    }
                }
                "audio-stop" => {
                    let (rate_hz, _, _) = format.ok_or_else(|| {
                        ClientError::BadAudio("audio-stop without audio-start".into())
                    })?;
                    return Ok(RemoteAudio { rate_hz, samples });
                }
                "error" => {
                    return Err(ClientError::Remote(
                        ev.str("text").unwrap_or("(no text)").to_string(),
                    ));
                }
                _ => {}
            }
        }
        Err(ClientError::NoTranscript)
    }
}

/// `(rate, width, channels)` of an audio event (its own fields, else the stream's).
fn audio_format(
    ev: &Event,
    known: Option<(u32, usize, usize)>,
) -> Result<(u32, usize, usize), ClientError> {
    let get = |k: &str| ev.uint(k);
    let f = match (get("rate"), get("width"), get("channels"), known) {
        (Some(r), Some(w), Some(c), _) => (r as u32, w as usize, c as usize),
        (_, _, _, Some(k)) => k,
        _ => {
            return Err(ClientError::BadAudio(format!(
                "{} without rate/width/channels",
                ev.kind
            )));
        }
    };
    if !(8_000..=192_000).contains(&f.0) || !matches!(f.1, 2 | 4) || !(1..=8).contains(&f.2) {
        return Err(ClientError::BadAudio(format!(
            "rate {} Hz, width {}, channels {} (Panda plays 8-192 kHz, 16/32-bit, 1-8 channels)",
            f.0, f.1, f.2
        )));
    }
    Ok(f)
}

/// A remote backend's health, shared by its user (which asks before each request and
/// reports how it went) and the status page: a circuit breaker (the agents' state
/// machine: two failures in a row open it for 5 s, doubling up to 5 min), counters and
/// the last error.
#[derive(Debug)]
pub struct Health {
    url: String,
    breaker: Mutex<Breaker>,
    remote_ok: AtomicU64,
    fallbacks: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl Health {
    /// A closed breaker for the service at `url`.
    pub fn new(url: String) -> Self {
        Self {
            url,
            breaker: Mutex::new(Breaker::new(BreakerConfig {
                failure_threshold: FAILURES_TO_OPEN,
                base_backoff: BACKOFF,
                max_backoff: MAX_BACKOFF,
            })),
            remote_ok: AtomicU64::new(0),
            fallbacks: AtomicU64::new(0),
            last_error: Mutex::new(None),
        }
    }

    /// Whether to try the remote now (false while the breaker is open; the caller then
    /// falls back at once, without touching the network).
    pub fn permit(&self) -> bool {
        crate::lock(&self.breaker).permit(Instant::now()) != Permit::Refuse
    }

    /// Records how a permitted request went; the breaker's new state when it changed.
    pub fn record<T>(&self, result: &Result<T, ClientError>) -> Option<BreakerState> {
        let mut b = crate::lock(&self.breaker);
        match result {
            Ok(_) => {
                self.remote_ok.fetch_add(1, Relaxed);
                b.success()
            }
            // A cancelled request says nothing about the server; give a probe back.
            Err(ClientError::Cancelled) => {
                b.abandon();
                None
            }
            Err(e) => {
                *crate::lock(&self.last_error) = Some(e.to_string());
                b.failure(Instant::now(), rand::random::<f64>() * 2.0 - 1.0)
            }
        }
    }

    /// Counts a request the local engine served instead.
    pub fn fell_back(&self) {
        self.fallbacks.fetch_add(1, Relaxed);
    }

    /// The service's address.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The status page's entry for this backend.
    pub fn status(&self) -> serde_json::Value {
        serde_json::json!({
            "backend": "wyoming",
            "url": self.url,
            "breaker": crate::lock(&self.breaker).state(Instant::now()),
            "remote_ok": self.remote_ok.load(Relaxed),
            "fallbacks": self.fallbacks.load(Relaxed),
            "last_error": *crate::lock(&self.last_error),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_tcp_host_port() {
        let t = Duration::from_secs(1);
        assert!(AsrClient::new("tcp://127.0.0.1:10300", t).is_ok());
        assert!(AsrClient::new("tcp://hub.local:10300", t).is_ok());
        for bad in [
            "127.0.0.1:10300",
            "tcp://",
            "tcp://host",
            "tcp://:10300",
            "tcp://h:99999",
            "unix:///x",
        ] {
            assert!(
                matches!(AsrClient::new(bad, t), Err(ClientError::BadAddress(_))),
                "{bad}"
            );
        }
    }

    /// A scripted server: reads the request, checks it, answers with `reply`.
    async fn one_shot(reply: Vec<Event>) -> (String, tokio::task::JoinHandle<Vec<Event>>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("tcp://{}", l.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let (rd, mut wr) = s.into_split();
            let mut rd = BufReader::new(rd);
            let mut got = Vec::new();
            while let Some(ev) = read_event(&mut rd).await.unwrap() {
                let stop = ev.kind == "audio-stop";
                got.push(ev);
                if stop {
                    break;
                }
            }
            for ev in reply {
                write_event(&mut wr, &ev).await.unwrap();
            }
            got
        });
        (url, task)
    }

    #[tokio::test]
    async fn sends_the_request_the_protocol_describes_and_reads_the_transcript() {
        let (url, server) = one_shot(vec![
            Event::new("transcript-start"),
            Event::new("transcript-chunk").with("text", "What"),
            Event::new("transcript").with("text", " What time is it? "),
        ])
        .await;
        let c = AsrClient::new(&url, Duration::from_secs(5)).unwrap();
        let samples = vec![8192i16; 3000];
        let text = c
            .transcribe(&samples, Some("en"), &CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(text, "What time is it?");
        let got = server.await.unwrap();
        let kinds: Vec<&str> = got.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "transcribe",
                "audio-start",
                "audio-chunk",
                "audio-chunk",
                "audio-chunk",
                "audio-stop"
            ]
        );
        assert_eq!(got[0].str("language"), Some("en"));
        assert_eq!(got[1].uint("rate"), Some(16_000));
        let bytes: usize = got.iter().map(|e| e.payload.len()).sum();
        assert_eq!(bytes, 3000 * 2, "every sample sent once, 16-bit");
        assert_eq!(
            i16::from_le_bytes([got[2].payload[0], got[2].payload[1]]),
            8192
        );
    }

    #[tokio::test]
    async fn a_server_error_a_hang_up_and_a_cancel_are_told_apart() {
        let (url, _s) = one_shot(vec![Event::new("error").with("text", "model not loaded")]).await;
        let c = AsrClient::new(&url, Duration::from_secs(5)).unwrap();
        let e = c
            .transcribe(&[0i16; 100], None, &CancellationToken::new())
            .await;
        assert!(
            matches!(&e, Err(ClientError::Remote(t)) if t == "model not loaded"),
            "{e:?}"
        );

        let (url, _s) = one_shot(vec![]).await;
        let c = AsrClient::new(&url, Duration::from_secs(5)).unwrap();
        let e = c
            .transcribe(&[0i16; 100], None, &CancellationToken::new())
            .await;
        assert!(matches!(e, Err(ClientError::Closed)), "{e:?}");

        // A server that accepts and never answers: the deadline, or the turn's cancel.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("tcp://{}", l.local_addr().unwrap());
        let _hold = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let (s2, _) = l.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop((s, s2));
        });
        let c = AsrClient::new(&url, Duration::from_millis(200)).unwrap();
        let e = c
            .transcribe(&[0i16; 100], None, &CancellationToken::new())
            .await;
        assert!(matches!(e, Err(ClientError::Timeout(200))), "{e:?}");
        let c = AsrClient::new(&url, Duration::from_secs(30)).unwrap();
        let token = CancellationToken::new();
        let t = token.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            t.cancel();
        });
        let e = c.transcribe(&[0i16; 100], None, &token).await;
        assert!(matches!(e, Err(ClientError::Cancelled)), "{e:?}");

        // Nobody listening.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let c = AsrClient::new(&format!("tcp://127.0.0.1:{port}"), Duration::from_secs(5)).unwrap();
        let e = c
            .transcribe(&[0i16; 100], None, &CancellationToken::new())
            .await;
        assert!(matches!(e, Err(ClientError::Connect { .. })), "{e:?}");
    }
    /// A scripted TTS server: reads one `synthesize`, answers with `reply`.
    async fn tts_server(reply: Vec<Event>) -> (String, tokio::task::JoinHandle<Event>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("tcp://{}", l.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let (rd, mut wr) = s.into_split();
            let ev = read_event(&mut BufReader::new(rd)).await.unwrap().unwrap();
            for r in reply {
                write_event(&mut wr, &r).await.unwrap();
            }
            ev
        });
        (url, task)
    }

    #[tokio::test]
    async fn a_synthesis_arrives_whole_in_mono_at_the_servers_rate() {
        let fmt = |e: Event| e.with("rate", 22_050).with("width", 2).with("channels", 2);
        // Two stereo frames: (1000, 3000) and (-2000, -2000).
        let pcm: Vec<u8> = [1000i16, 3000, -2000, -2000]
            .iter()
            .flat_map(|s| s.to_le_bytes())
            .collect();
        let (url, server) = tts_server(vec![
            fmt(Event::new("audio-start")),
            fmt(Event::new("audio-chunk")).with_payload(pcm),
            Event::new("audio-stop"),
        ])
        .await;
        let c = TtsClient::new(&url, Duration::from_secs(5)).unwrap();
        let a = c
            .synthesize("Hello there.", Some("en_voice"), &CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(a.rate_hz, 22_050);
        assert_eq!(a.samples, [2000.0 / 32_768.0, -2000.0 / 32_768.0]);
        let req = server.await.unwrap();
        assert_eq!(req.kind, "synthesize");
        assert_eq!(req.str("text"), Some("Hello there."));
        assert_eq!(req.data["voice"]["name"], "en_voice");
    }

    #[tokio::test]
    async fn audio_panda_cannot_play_is_an_error_naming_it() {
        let (url, _s) = tts_server(vec![
            Event::new("audio-start")
                .with("rate", 22_050)
                .with("width", 3)
                .with("channels", 1),
        ])
        .await;
        let c = TtsClient::new(&url, Duration::from_secs(5)).unwrap();
        let e = c.synthesize("Hi.", None, &CancellationToken::new()).await;
        assert!(
            matches!(&e, Err(ClientError::BadAudio(m)) if m.contains("width 3")),
            "{e:?}"
        );
        let (url, _s) = tts_server(vec![Event::new("audio-chunk").with_payload(vec![0, 0])]).await;
        let c = TtsClient::new(&url, Duration::from_secs(5)).unwrap();
        let e = c.synthesize("Hi.", None, &CancellationToken::new()).await;
        assert!(
            matches!(&e, Err(ClientError::BadAudio(m)) if m.contains("without rate")),
            "{e:?}"
        );
    }
}
