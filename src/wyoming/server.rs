//! Panda's engines as Wyoming services: Whisper (`asr`), Kokoro (`tts`) and the wake word
//! (`wake`) for Home Assistant and any other Wyoming client.
//!
//! One tokio task per connection, at most `max_connections` at once (one more is answered
//! `error` and closed, so a flood never queues work). The models stay where they live:
//! transcriptions go to the Whisper owner thread through its bounded queue, syntheses to
//! the Kokoro owner thread as [`Speech::Serve`] requests (the same edges the appliance
//! uses, so `panda run` serves without a second copy of either model). A wake word
//! stream needs rustpotter's per-stream state, which is not `Send`: each `detect` gets a
//! thread of its own for as long as its audio flows (bounded by the connection limit).
//!
//! Each connection has a reader task that turns frames into events on a bounded edge
//! ([`EVENTS_IN`]; when full the reader stops reading and TCP pushes back on the
//! client): the handler can then wait for an event *or* a wake word detection without
//! ever dropping a half-read frame. A malformed frame is answered with `error` naming
//! what was wrong and the connection closes; other connections are untouched. A client
//! that goes away cancels its work (the turn-like token of the connection).
//!
//! Wyoming has no authentication: [`crate::config::WyomingConfig`] binds to loopback
//! by default.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::BufReader;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::codec::{CodecError, Event, read_event, write_event};
use super::info::{Served, info};
use crate::audio::dsp::{Resampler, f32_to_i16};
use crate::config::Config;
use crate::event::{FRAME_SAMPLES, ServedSpeech, Speech};
use crate::listen::listener::{WakeVerifier, phrase_parts};
use crate::listen::stt::SttHandle;
use crate::listen::wake::WakeDetector;
use crate::speak::sentences::SentenceSplitter;

/// Events read ahead of the handler per connection. When full the reader stops reading
/// (the client's sends then wait on TCP).
pub const EVENTS_IN: usize = 8;
/// Frames on their way to a wake word stream's thread. When full the connection waits
/// (and its client with it): a client streaming a recording faster than real time is
/// slowed, never cut.
pub const WAKE_FRAMES_EDGE: usize = 64;
/// Detections on their way back from a wake word stream's thread. When full the thread
/// waits; detections are seconds apart.
pub const DETECTIONS_EDGE: usize = 4;
/// Syntheses' audio on its way back from Kokoro: model calls (a few seconds of audio
/// each). When full Kokoro waits for this client.
pub const SYNTH_EDGE: usize = 4;
/// Samples per `audio-chunk` Panda sends (as the Python servers do: 1,024).
const SAMPLES_PER_CHUNK: usize = 1024;
/// The sample rate Kokoro speaks at.
const TTS_RATE_HZ: u32 = crate::speak::kokoro::SAMPLE_RATE_HZ;
/// Longest sentence sent to Kokoro at once when synthesising a stream.
const MAX_SENTENCE_CHARS: usize = 400;
/// A write that takes longer than this ends the connection (a client that stopped
/// reading must not hold Kokoro or Whisper).
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// What can end a connection or the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The listen address is not `tcp://HOST:PORT`.
    #[error("wyoming address {0:?} is not tcp://HOST:PORT")]
    BadAddress(String),
    /// Binding the address failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// Reading or writing a frame failed.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The client stopped reading.
    #[error("the client stopped reading for {}s", WRITE_TIMEOUT.as_secs())]
    WriteTimeout,
}

/// The engines a server reaches, and what it announces.
pub struct Services {
    /// The Whisper owner thread (`asr`).
    pub stt: Option<SttHandle>,
    /// The Kokoro owner thread's sentence edge (`tts`), held weakly: the server never
    /// keeps Kokoro alive (its owner ends it by closing the edge; the appliance's
    /// shutdown waits for that), and a request after that is answered `error`.
    pub tts: Option<mpsc::WeakSender<Speech>>,
    /// Wake word streams (`wake`): the configuration they load from.
    pub wake: Option<WakeService>,
    /// The `info` answer.
    pub served: Served,
    /// Voice when a `synthesize` names none.
    pub default_voice: String,
    /// Voices a `synthesize` may name.
    pub voices: Vec<String>,
}

/// What a wake word stream needs.
pub struct WakeService {
    /// The whole configuration (`[wake]` and the model directory).
    pub cfg: Config,
    /// The name announced and sent in `detection`.
    pub name: String,
    /// The second-stage check (Whisper), when the server has Whisper.
    pub stt: Option<SttHandle>,
}

/// Per-server limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once.
    pub max_connections: usize,
    /// A connection that sends nothing for this long is closed.
    pub idle_timeout: Duration,
    /// Longest audio a `transcribe` takes.
    pub max_audio_ms: u64,
}

impl Limits {
    /// The limits in `[wyoming]`.
    pub fn from(cfg: &crate::config::WyomingConfig) -> Self {
        Self {
            max_connections: cfg.max_connections as usize,
            idle_timeout: Duration::from_millis(cfg.idle_timeout_ms),
            max_audio_ms: cfg.max_audio_ms,
        }
    }
}

/// Counters a server keeps (the caller's, so `panda run` can mirror them into its
/// metrics and status page), logged when it stops.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Connections accepted and served.
    pub connections: std::sync::atomic::AtomicU64,
    /// Connections refused because `max_connections` were open.
    pub refused: std::sync::atomic::AtomicU64,
    /// Connections closed for a malformed frame.
    pub malformed: std::sync::atomic::AtomicU64,
    /// Transcriptions answered.
    pub transcripts: std::sync::atomic::AtomicU64,
    /// Syntheses answered.
    pub syntheses: std::sync::atomic::AtomicU64,
    /// Wake word detections sent.
    pub detections: std::sync::atomic::AtomicU64,
}

/// Binds `tcp://HOST:PORT`.
pub async fn bind(url: &str) -> Result<TcpListener, ServerError> {
    let addr = url
        .strip_prefix("tcp://")
        .filter(|a| !a.is_empty())
        .ok_or_else(|| ServerError::BadAddress(url.to_string()))?;
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind {
            addr: addr.to_string(),
            source,
        })
}

/// Serves connections until `stop` is cancelled.
pub async fn serve(
    listener: TcpListener,
    services: Arc<Services>,
    limits: Limits,
    stats: Arc<ServerStats>,
    stop: CancellationToken,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => {
                tracing::info!(
                    connections = stats.connections.load(Relaxed),
                    refused = stats.refused.load(Relaxed),
                    malformed = stats.malformed.load(Relaxed),
                    transcripts = stats.transcripts.load(Relaxed),
                    syntheses = stats.syntheses.load(Relaxed),
                    detections = stats.detections.load(Relaxed),
                    "Wyoming server stopped"
                );
                return;
            }
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "wyoming: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            stats.refused.fetch_add(1, Relaxed);
            tokio::spawn(async move {
                let (_, mut w) = stream.into_split();
                let _ = send(
                    &mut w,
                    &error_event("too many connections; try again later", "busy"),
                )
                .await;
            });
            continue;
        };
        stats.connections.fetch_add(1, Relaxed);
        let (services, stats, token) = (services.clone(), stats.clone(), stop.child_token());
        let span = tracing::debug_span!("wyoming", %peer);
        tokio::spawn(
            async move {
                let _slot = slot;
                if let Err(e) = connection(stream, &services, limits, &stats, &token).await {
                    tracing::debug!(error = %e, "wyoming connection ended");
                }
                token.cancel();
            }
            .instrument(span),
        );
    }
}

fn error_event(text: &str, code: &str) -> Event {
    Event::new("error").with("text", text).with("code", code)
}

async fn send(w: &mut OwnedWriteHalf, ev: &Event) -> Result<(), ServerError> {
    tokio::time::timeout(WRITE_TIMEOUT, write_event(w, ev))
        .await
        .map_err(|_| ServerError::WriteTimeout)??;
    Ok(())
}

/// An audio stream's format (`audio-start`, or each `audio-chunk`'s own fields).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Format {
    rate: u32,
    width: u16,
    channels: u16,
}

impl Format {
    /// Reads `rate`, `width` and `channels` from an event, checking them.
    fn of(ev: &Event) -> Result<Self, String> {
        let field = |k: &str| {
            ev.uint(k)
                .ok_or_else(|| format!("{} without \"{k}\"", ev.kind))
        };
        let f = Format {
            rate: field("rate")? as u32,
            width: field("width")? as u16,
            channels: field("channels")? as u16,
        };
        if !(8_000..=192_000).contains(&f.rate) {
            return Err(format!("rate {} Hz is not supported (8000–192000)", f.rate));
        }
        if f.width != 2 && f.width != 4 {
            return Err(format!("width {} is not supported (2 or 4 bytes)", f.width));
        }
        if !(1..=8).contains(&f.channels) {
            return Err(format!("{} channels is not supported (1–8)", f.channels));
        }
        Ok(f)
    }
}

/// Incoming audio converted to 16 kHz mono as it arrives.
struct Converter {
    format: Format,
    resampler: Resampler,
    mono: Vec<f32>,
    out: Vec<f32>,
}

impl Converter {
    fn new(format: Format) -> Self {
        Self {
            format,
            resampler: Resampler::new(format.rate, 16_000),
            mono: Vec::new(),
            out: Vec::new(),
        }
    }

    /// Converts one chunk's payload; the samples it completes are appended to `to`.
    fn push(&mut self, payload: &[u8], to: &mut Vec<i16>) -> Result<(), String> {
        let (w, ch) = (self.format.width as usize, self.format.channels as usize);
        self.mono.clear();
        super::codec::pcm_to_mono(payload, w, ch, &mut self.mono)?;
        self.out.clear();
        self.resampler.process(&self.mono, &mut self.out);
        to.extend(self.out.iter().map(|&s| f32_to_i16(s)));
        Ok(())
    }

    fn finish(&mut self, to: &mut Vec<i16>) {
        self.out.clear();
        self.resampler.finish(&mut self.out);
        to.extend(self.out.iter().map(|&s| f32_to_i16(s)));
    }
}

/// What the connection is doing with the audio it receives.
#[derive(Default)]
struct Audio {
    converter: Option<Converter>,
    /// 16 kHz mono, for a transcription.
    pcm: Vec<i16>,
    /// `transcribe` asked for this language (`None`: the configured one).
    language: Option<String>,
    /// A wake word stream (`detect`).
    wake: Option<WakeStream>,
    /// 16 kHz samples not yet a whole frame for the wake word stream.
    partial: Vec<i16>,
    /// The transcription was refused (too long): the rest of the audio is ignored.
    refused: bool,
}

/// One `detect` stream's thread.
struct WakeStream {
    frames: Option<mpsc::Sender<Box<[i16; FRAME_SAMPLES]>>>,
    detections: mpsc::Receiver<(String, u64)>,
    detected: bool,
}

async fn connection(
    stream: TcpStream,
    services: &Services,
    limits: Limits,
    stats: &ServerStats,
    token: &CancellationToken,
) -> Result<(), ServerError> {
    use std::sync::atomic::Ordering::Relaxed;
    let (r, mut w) = stream.into_split();
    let (ev_tx, mut ev_rx) = mpsc::channel::<Result<Event, CodecError>>(EVENTS_IN);
    let reader_token = token.clone();
    // The reader: frames → events. It stops at the first bad frame (what follows it
    // cannot be framed) and when the handler is gone.
    tokio::spawn(async move {
        let mut r = BufReader::new(r);
        loop {
            let ev = tokio::select! {
                _ = reader_token.cancelled() => return,
                ev = read_event(&mut r) => ev,
            };
            let end = !matches!(ev, Ok(Some(_)));
            let Some(ev) = ev.transpose() else { return };
            if ev_tx.send(ev).await.is_err() || end {
                return;
            }
        }
    });
    let mut audio = Audio::default();
    let mut stream_synth: Option<(SentenceSplitter, String)> = None;
    loop {
        let detection = async {
            match audio.wake.as_mut() {
                Some(s) => s.detections.recv().await,
                None => std::future::pending().await,
            }
        };
        let ev = tokio::select! {
            _ = token.cancelled() => return Ok(()),
            d = detection => {
                match d {
                    Some((name, at_ms)) => {
                        stats.detections.fetch_add(1, Relaxed);
                        if let Some(s) = audio.wake.as_mut() {
                            s.detected = true;
                        }
                        send(&mut w, &Event::new("detection").with("name", name).with("timestamp", at_ms)).await?;
                    }
                    // The stream's thread ended (after audio-stop): the verdict.
                    None => {
                        if let Some(s) = audio.wake.take()
                            && !s.detected
                        {
                            send(&mut w, &Event::new("not-detected")).await?;
                        }
                    }
                }
                continue;
            }
            ev = tokio::time::timeout(limits.idle_timeout, ev_rx.recv()) => ev,
        };
        let ev = match ev {
            Err(_) => {
                let _ = send(&mut w, &error_event("idle for too long", "idle")).await;
                return Ok(());
            }
            Ok(None) => return Ok(()),
            Ok(Some(Err(e))) => {
                stats.malformed.fetch_add(1, Relaxed);
                let _ = send(&mut w, &error_event(&e.to_string(), "bad-frame")).await;
                return Err(e.into());
            }
            Ok(Some(Ok(ev))) => ev,
        };
        match ev.kind.as_str() {
            "describe" => send(&mut w, &info(&services.served)).await?,
            "ping" => {
                let mut pong = Event::new("pong");
                if let Some(t) = ev.str("text") {
                    pong = pong.with("text", t);
                }
                send(&mut w, &pong).await?;
            }
            "transcribe" => {
                if services.stt.is_none() {
                    send(
                        &mut w,
                        &error_event("this server does not transcribe", "unsupported"),
                    )
                    .await?;
                    continue;
                }
                audio.language = ev.str("language").map(str::to_string);
            }
            "detect" => {
                let Some(wake) = &services.wake else {
                    send(
                        &mut w,
                        &error_event("this server has no wake word", "unsupported"),
                    )
                    .await?;
                    continue;
                };
                let names = ev.data.get("names").and_then(Value::as_array).map(|a| {
                    a.iter()
                        .filter_map(|n| n.as_str().map(str::to_string))
                        .collect::<Vec<_>>()
                });
                audio.wake = Some(start_wake_stream(wake, names));
            }
            "audio-start" => match Format::of(&ev) {
                Ok(f) => {
                    audio.converter = Some(Converter::new(f));
                    audio.pcm.clear();
                    audio.partial.clear();
                    audio.refused = false;
                }
                Err(text) => send(&mut w, &error_event(&text, "bad-audio")).await?,
            },
            "audio-chunk" => {
                // Chunks carry their format: a client that skipped audio-start (or
                // changed format) is followed.
                let format = match Format::of(&ev) {
                    Ok(f) => f,
                    Err(text) => {
                        send(&mut w, &error_event(&text, "bad-audio")).await?;
                        continue;
                    }
                };
                if audio.converter.as_ref().is_none_or(|c| c.format != format) {
                    audio.converter = Some(Converter::new(format));
                }
                let before = audio.pcm.len();
                let conv = audio.converter.as_mut().expect("set above");
                if let Err(text) = conv.push(&ev.payload, &mut audio.pcm) {
                    send(&mut w, &error_event(&text, "bad-audio")).await?;
                    continue;
                }
                feed_wake(&mut audio, before).await;
                if audio.wake.is_none() && !audio.refused && services.stt.is_some() {
                    let max = limits.max_audio_ms as usize * 16;
                    if audio.pcm.len() > max {
                        audio.refused = true;
                        audio.pcm = Vec::new();
                        let text = format!("audio longer than {} ms", limits.max_audio_ms);
                        send(&mut w, &error_event(&text, "too-long")).await?;
                    }
                } else if audio.wake.is_some() {
                    // A wake word stream keeps nothing: it can run for hours.
                    audio.pcm.clear();
                }
            }
            "audio-stop" => {
                if let Some(c) = audio.converter.as_mut() {
                    let before = audio.pcm.len();
                    c.finish(&mut audio.pcm);
                    feed_wake(&mut audio, before).await;
                }
                audio.converter = None;
                if let Some(s) = audio.wake.as_mut() {
                    // The thread ends once it has the last frame; its channel closing
                    // brings the verdict (above).
                    s.frames = None;
                    audio.pcm.clear();
                    continue;
                }
                if audio.refused {
                    audio.refused = false;
                    continue;
                }
                let Some(stt) = &services.stt else { continue };
                let pcm = std::mem::take(&mut audio.pcm);
                let language = audio.language.take();
                let t0 = Instant::now();
                let out = stt.transcribe_in(&pcm, language.as_deref(), token).await;
                match out {
                    Ok(out) => {
                        stats.transcripts.fetch_add(1, Relaxed);
                        tracing::debug!(
                            audio_ms = out.audio_ms,
                            ms = t0.elapsed().as_millis() as u64,
                            "wyoming transcript"
                        );
                        let lang = out.language.clone();
                        send(
                            &mut w,
                            &Event::new("transcript-start").with("language", lang.clone()),
                        )
                        .await?;
                        if !out.text.is_empty() {
                            send(
                                &mut w,
                                &Event::new("transcript-chunk").with("text", out.text.clone()),
                            )
                            .await?;
                        }
                        send(
                            &mut w,
                            &Event::new("transcript")
                                .with("text", out.text)
                                .with("language", lang),
                        )
                        .await?;
                        send(&mut w, &Event::new("transcript-stop")).await?;
                    }
                    Err(e) => send(&mut w, &error_event(&e.to_string(), "stt")).await?,
                }
            }
            "synthesize" => {
                // Inside a stream the final `synthesize` repeats the whole text for
                // clients that do not stream: ignored.
                if stream_synth.is_some() {
                    continue;
                }
                let Some(text) = ev.str("text").map(str::to_string) else {
                    send(
                        &mut w,
                        &error_event("synthesize without \"text\"", "bad-request"),
                    )
                    .await?;
                    continue;
                };
                let Some(voice) = voice_of(services, &ev, &mut w).await? else {
                    continue;
                };
                synthesize(services, &text, &voice, token, &mut w).await?;
                stats.syntheses.fetch_add(1, Relaxed);
            }
            "synthesize-start" => {
                if let Some(voice) = voice_of(services, &ev, &mut w).await? {
                    stream_synth = Some((SentenceSplitter::new(MAX_SENTENCE_CHARS), voice));
                }
            }
            "synthesize-chunk" => {
                if let Some((split, voice)) = stream_synth.as_mut() {
                    let done = split.push(ev.str("text").unwrap_or(""));
                    let voice = voice.clone();
                    for sentence in done {
                        synthesize(services, &sentence, &voice, token, &mut w).await?;
                    }
                }
            }
            "synthesize-stop" => {
                if let Some((mut split, voice)) = stream_synth.take() {
                    if let Some(rest) = split.finish() {
                        synthesize(services, &rest, &voice, token, &mut w).await?;
                    }
                    stats.syntheses.fetch_add(1, Relaxed);
                    send(&mut w, &Event::new("synthesize-stopped")).await?;
                }
            }
            // Unknown events are ignored, as the protocol asks (newer clients send more).
            other => tracing::debug!(kind = other, "wyoming: event ignored"),
        }
    }
}

/// The voice a `synthesize` names (`voice.name`), or the default; an unknown one is
/// answered with `error` (and `None`).
async fn voice_of(
    services: &Services,
    ev: &Event,
    w: &mut OwnedWriteHalf,
) -> Result<Option<String>, ServerError> {
    if services.tts.is_none() {
        send(
            w,
            &error_event("this server does not synthesise", "unsupported"),
        )
        .await?;
        return Ok(None);
    }
    let named = ev
        .data
        .get("voice")
        .and_then(|v| v.get("name"))
        .and_then(Value::as_str);
    match named {
        None => Ok(Some(services.default_voice.clone())),
        Some(v) if services.voices.iter().any(|x| x == v) => Ok(Some(v.to_string())),
        Some(v) => {
            let text = format!(
                "unknown voice {v:?}; installed: {}",
                services.voices.join(", ")
            );
            send(w, &error_event(&text, "bad-voice")).await?;
            Ok(None)
        }
    }
}

/// Synthesises `text` and sends it as one `audio-start` … `audio-stop` group, sentence
/// by sentence (the first sentence's audio leaves while the rest is synthesised).
async fn synthesize(
    services: &Services,
    text: &str,
    voice: &str,
    token: &CancellationToken,
    w: &mut OwnedWriteHalf,
) -> Result<(), ServerError> {
    let Some(tts) = &services.tts else {
        return Ok(());
    };
    let stopped = || error_event("text-to-speech is not running", "tts");
    let format = |kind: &str| {
        Event::new(kind)
            .with("rate", TTS_RATE_HZ)
            .with("width", 2)
            .with("channels", 1)
    };
    let stamp = |samples: u64| samples * 1000 / TTS_RATE_HZ as u64;
    send(w, &format("audio-start").with("timestamp", 0)).await?;
    let mut sent_samples = 0u64;
    'sentences: for sentence in crate::speak::sentences::split_all(text, MAX_SENTENCE_CHARS) {
        let (reply, mut rx) = mpsc::channel(SYNTH_EDGE);
        let request = Speech::Serve(ServedSpeech {
            text: sentence,
            voice: voice.to_string(),
            speed: 1.0,
            token: token.clone(),
            reply,
        });
        // The edge is held only for this send.
        let sent = match tts.upgrade() {
            Some(tx) => tx.send(request).await.is_ok(),
            None => false,
        };
        if !sent {
            send(w, &stopped()).await?;
            break;
        }
        while let Some(piece) = rx.recv().await {
            let samples = match piece {
                Ok(s) => s,
                Err(e) => {
                    send(w, &error_event(&e, "tts")).await?;
                    break 'sentences;
                }
            };
            for chunk in samples.chunks(SAMPLES_PER_CHUNK) {
                let bytes: Vec<u8> = chunk
                    .iter()
                    .flat_map(|&s| f32_to_i16(s).to_le_bytes())
                    .collect();
                let ev = format("audio-chunk")
                    .with("timestamp", stamp(sent_samples))
                    .with_payload(bytes);
                send(w, &ev).await?;
                sent_samples += chunk.len() as u64;
            }
        }
    }
    send(
        w,
        &Event::new("audio-stop").with("timestamp", stamp(sent_samples)),
    )
    .await
}

/// Passes the samples from `from` on to the wake word stream, in whole frames.
async fn feed_wake(audio: &mut Audio, from: usize) {
    let Some(s) = audio.wake.as_mut() else { return };
    audio.partial.extend_from_slice(&audio.pcm[from..]);
    let whole = audio.partial.len() / FRAME_SAMPLES * FRAME_SAMPLES;
    if let Some(tx) = &s.frames {
        for f in audio.partial[..whole].chunks_exact(FRAME_SAMPLES) {
            let frame: Box<[i16; FRAME_SAMPLES]> = Box::new(f.try_into().expect("whole frame"));
            if tx.send(frame).await.is_err() {
                break;
            }
        }
    }
    audio.partial.drain(..whole);
}

/// Starts a `detect` stream's thread: the wake word (and, with Whisper, its check) over
/// the frames it is sent; detections come back with their stream time.
fn start_wake_stream(svc: &WakeService, names: Option<Vec<String>>) -> WakeStream {
    let (frames_tx, mut frames_rx) = mpsc::channel::<Box<[i16; FRAME_SAMPLES]>>(WAKE_FRAMES_EDGE);
    let (det_tx, det_rx) = mpsc::channel(DETECTIONS_EDGE);
    let wanted = names
        .as_ref()
        .is_none_or(|n| n.is_empty() || n.contains(&svc.name));
    let cfg = svc.cfg.clone();
    let name = svc.name.clone();
    let verifier = svc.stt.clone().map(|stt| WakeVerifier::new(stt, &cfg.wake));
    let spawned = std::thread::Builder::new()
        .name("panda-wyoming-wake".into())
        .spawn(move || {
            let mut det = match WakeDetector::load_configured(&cfg) {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(error = %e, "wyoming: wake word stream not started");
                    return;
                }
            };
            let window = verifier
                .as_ref()
                .map_or(0, |v| v.window_frames + v.lookback_frames);
            let mut recent: std::collections::VecDeque<Box<[i16; FRAME_SAMPLES]>> =
                std::collections::VecDeque::with_capacity(window + 1);
            // A detection waiting for its check's window: (due frame, stream ms).
            let mut pending: Option<(u64, u64)> = None;
            let mut seq = 0u64;
            let token = CancellationToken::new();
            let decide = |recent: &std::collections::VecDeque<Box<[i16; FRAME_SAMPLES]>>,
                          at_ms: u64| {
                let ok = match &verifier {
                    None => true,
                    Some(v) => {
                        let audio: Vec<i16> =
                            recent.iter().flat_map(|f| f.iter().copied()).collect();
                        v.check_looking_back(&audio, &token).0
                    }
                };
                ok && wanted && det_tx.blocking_send((name.clone(), at_ms)).is_ok()
            };
            while let Some(frame) = frames_rx.blocking_recv() {
                if window > 0 {
                    if recent.len() == window {
                        recent.pop_front();
                    }
                    recent.push_back(frame.clone());
                }
                let hit = det.process(seq, &frame);
                let at_ms = (seq + 1) * crate::event::FRAME_MS as u64;
                if pending.is_none() && hit.is_some() {
                    pending = Some((
                        seq + verifier.as_ref().map_or(0, |v| v.delay_frames) as u64,
                        at_ms,
                    ));
                }
                if let Some((due, at)) = pending
                    && seq >= due
                {
                    pending = None;
                    decide(&recent, at);
                }
                seq += 1;
            }
            if let Some((_, at)) = pending {
                decide(&recent, at);
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "wyoming: cannot start a wake word stream");
    }
    WakeStream {
        frames: Some(frames_tx),
        detections: det_rx,
        detected: false,
    }
}

/// The name a wake phrase is announced and detected under: "hey panda" → `hey_panda`.
pub fn wake_name(phrase: &str) -> String {
    let (_, prompt) = phrase_parts(phrase);
    prompt
        .trim_end_matches('.')
        .to_lowercase()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join("_")
}
