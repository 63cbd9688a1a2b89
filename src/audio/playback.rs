//! Playback: the output end of the speaking path, on its own thread (`panda-playback`).
//!
//! The thread owns the output (a [`Sink`]: the sound card through rodio, or a WAV file)
//! and a small single-threaded async runtime, so that it can wait on three things at once:
//! the next PCM chunk from TTS, the current turn's `CancellationToken`, and a 10 ms tick
//! that feeds the sink. Chunks play as they arrive, resampled from Kokoro's 24 kHz to the
//! output rate with the same windowed-sinc resampler the microphone path uses.
//!
//! Barge-in: when the turn's token is cancelled the thread wakes at once, drops every
//! sample not yet played (its own queue and the sink's buffer), and reports what was heard.
//! What can still come out afterwards is only what the sound card already holds: with the
//! default `buffer_ms = 40`, well inside the 50 ms budget.
//!
//! Progress: every chunk carries its text. Playback knows how many samples of each chunk
//! the output has played, so [`Event::Spoken`] says what the listener actually heard —
//! whole sentences, then the words of a sentence cut short in proportion to the audio
//! played. The conversation stores that, not the text that was generated.
//!
//! On the sound card, the cpal callback (inside rodio's mixer) only pops from a
//! pre-allocated lock-free ring and bumps a counter: no locks, no allocation, no logging.

use std::collections::VecDeque;
use std::io::BufWriter;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::AudioError;
use super::aec::{ReferenceLink, ReferenceTap, SelfWakeGuard};
use super::dsp::{Resampler, f32_to_i16};
use crate::event::{Cue, Event, PcmChunk, Turn};

/// How often the thread feeds the sink and checks progress. Also the granularity of
/// "first audio" events.
const TICK: Duration = Duration::from_millis(10);
/// Samples queued in front of the sink before the thread stops taking chunks (≈ 5 s at
/// 48 kHz): backpressure then reaches TTS through the PCM edge instead of memory growing.
const QUEUE_HIGH_WATER: usize = 48_000 * 5;

/// Due time and sample count of each block a paced file sink committed (tests count the
/// samples written after a cancel with it).
pub type SinkLog = Arc<Mutex<Vec<(Instant, u64)>>>;

/// Where playback goes.
#[derive(Debug, Clone)]
pub enum Output {
    /// A sound card through rodio/cpal.
    Device {
        /// Output device name as cpal lists it, or `default`.
        name: String,
        /// Output buffer length: the most audio that can still play after a flush.
        buffer_ms: u32,
        /// Daemon behaviour: a missing or lost speaker is reported and re-opened with
        /// backoff starting at this delay (answers meanwhile are reported unplayed);
        /// `None` makes a missing speaker an error at start.
        retry: Option<Duration>,
    },
    /// A 16-bit mono WAV file.
    Wav {
        /// File to write.
        path: PathBuf,
        /// Sample rate of the file.
        rate_hz: u32,
        /// Play in real time like a sound card with a `buffer_ms` buffer (tests of
        /// barge-in and streaming); otherwise write as fast as audio arrives.
        paced: Option<u32>,
        /// Commit log of a paced sink.
        log: Option<SinkLog>,
    },
}

/// An audio output as the playback thread sees it.
pub trait Sink: Send {
    /// Output sample rate.
    fn rate_hz(&self) -> u32;
    /// Offers mono samples; returns how many the output accepted (a sound card takes
    /// what fits in its buffer).
    fn write(&mut self, samples: &[f32]) -> Result<usize, AudioError>;
    /// Samples that have reached the listener so far (monotonic).
    fn played(&mut self) -> u64;
    /// A counter that moves whenever the output is being driven at all (the sound
    /// card's callback runs, playing audio or silence). An output whose `played` stands
    /// still while this moves is starved (an underrun under CPU load), not dead.
    fn heartbeat(&mut self) -> u64 {
        self.played()
    }
    /// Drops accepted but unplayed samples.
    fn flush(&mut self);
    /// Waits for accepted samples to play and closes the output.
    fn finish(&mut self) -> Result<(), AudioError>;
    /// False for the stand-in used while a speaker is missing.
    fn present(&self) -> bool {
        true
    }
}

/// The output while the speaker is missing or lost: it takes nothing. Answers that
/// arrive meanwhile are reported unplayed, never queued for later (an answer spoken
/// minutes after its question is worse than none).
struct MissingSink;

impl Sink for MissingSink {
    fn rate_hz(&self) -> u32 {
        48_000
    }
    fn write(&mut self, _: &[f32]) -> Result<usize, AudioError> {
        Ok(0)
    }
    fn played(&mut self) -> u64 {
        0
    }
    fn flush(&mut self) {}
    fn finish(&mut self) -> Result<(), AudioError> {
        Ok(())
    }
    fn present(&self) -> bool {
        false
    }
}

/// How long a sound card may take no audio while some is waiting before it counts as
/// lost (unplugged, or its server gone). A working card drains its buffer every few ms.
const STALL: Duration = Duration::from_secs(2);
/// The longest wait between attempts to re-open a missing speaker.
const REOPEN_MAX: Duration = Duration::from_secs(30);

/// Re-opening a missing or lost speaker with exponential backoff.
struct Reopen {
    name: String,
    buffer_ms: u32,
    first: Duration,
    delay: Duration,
    next: tokio::time::Instant,
}

impl Reopen {
    fn new(name: String, buffer_ms: u32, first: Duration) -> Self {
        Self {
            name,
            buffer_ms,
            first,
            delay: first,
            next: tokio::time::Instant::now() + first,
        }
    }

    /// Schedules the next attempt after a failed one (doubling, up to REOPEN_MAX).
    fn failed(&mut self) {
        self.delay = (self.delay * 2).min(REOPEN_MAX);
        self.next = tokio::time::Instant::now() + self.delay;
    }

    /// Starts over after a loss: the first attempt comes soon.
    fn restart(&mut self) {
        self.delay = self.first;
        self.next = tokio::time::Instant::now() + self.first;
    }
}

/// Counters at the end of playback.
#[derive(Debug, Default, Clone)]
pub struct PlaybackSummary {
    /// Samples that reached the output (at its rate).
    pub samples_played: u64,
    /// Output sample rate.
    pub rate_hz: u32,
    /// Turns played to the end.
    pub turns_completed: u64,
    /// Turns cut short by cancellation.
    pub turns_interrupted: u64,
}

/// Playback's connections to the pipeline.
pub struct PlaybackIo {
    /// PCM chunks from TTS.
    pub chunks: mpsc::Receiver<PcmChunk>,
    /// Events out (`playing`, `spoken`, `cancelled`).
    pub events: mpsc::Sender<Event>,
    /// Short sounds outside any answer (the wake earcon); `None` where nothing sends any.
    pub cues: Option<mpsc::Receiver<Cue>>,
    /// The echo canceller's reference: every sound card this thread opens copies what
    /// it sends to the DAC there. `None` without a canceller (and for WAV outputs).
    pub reference: Option<ReferenceLink>,
    /// Told when the answer playing says the wake word's keyword (self-wake guard).
    pub guard: Option<Arc<SelfWakeGuard>>,
}

/// Starts the playback thread. Returns once the output is open (or failed to open).
pub fn spawn(
    output: Output,
    io: PlaybackIo,
) -> Result<std::thread::JoinHandle<Result<PlaybackSummary, AudioError>>, AudioError> {
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel::<Result<(), AudioError>>(1);
    let handle = std::thread::Builder::new()
        .name("panda-playback".into())
        .spawn(move || {
            // The sink is built here: a cpal stream must live on the thread that made it.
            let mut reopen = None;
            let sink: Result<Box<dyn Sink>, AudioError> = match output {
                Output::Device {
                    name,
                    buffer_ms,
                    retry,
                } => match (
                    DeviceSink::open(&name, buffer_ms, io.reference.as_ref()),
                    retry,
                ) {
                    (Ok(s), retry) => {
                        reopen = retry.map(|d| Reopen::new(name, buffer_ms, d));
                        Ok(Box::new(s) as Box<dyn Sink>)
                    }
                    (Err(e), Some(d)) => {
                        tracing::error!(error = %e, retry_in_ms = d.as_millis() as u64, "speaker unavailable; answers are not played until it is back");
                        reopen = Some(Reopen::new(name, buffer_ms, d));
                        Ok(Box::new(MissingSink) as Box<dyn Sink>)
                    }
                    (Err(e), None) => Err(e),
                },
                Output::Wav {
                    path,
                    rate_hz,
                    paced,
                    log,
                } => WavSink::create(path, rate_hz, paced, log).map(|s| Box::new(s) as _),
            };
            let sink = match sink {
                Ok(s) => {
                    let _ = ready_tx.send(Ok(()));
                    s
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return Ok(PlaybackSummary::default());
                }
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .map_err(|e| AudioError::Device {
                    name: "playback".into(),
                    problem: format!("cannot start the playback runtime: {e}"),
                })?;
            let mut player = Player::new(sink, io);
            player.reopen = reopen;
            rt.block_on(player.run())
        })
        .map_err(|e| AudioError::Device {
            name: "playback".into(),
            problem: format!("cannot start the playback thread: {e}"),
        })?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(e)) => {
            let _ = handle.join();
            Err(e)
        }
        Err(_) => Err(AudioError::Device {
            name: "playback".into(),
            problem: "the playback thread ended while opening the output".into(),
        }),
    }
}

/// A stretch of output samples that speaks one chunk's text.
#[derive(Debug)]
struct Segment {
    sentence: u32,
    text: String,
    /// Positions in the turn's output samples.
    start: u64,
    end: u64,
    announced: bool,
    /// Where the wake word's keyword is said (turn samples), for the self-wake guard.
    keyword_at: Vec<u64>,
}

/// The turn being played.
struct Active {
    turn: Turn,
    resampler: Resampler,
    /// The rate `resampler` converts from: the synthesiser's (Kokoro 24 kHz; a remote
    /// Wyoming TTS may use another, and a fallback mid-answer switches back).
    rate_hz: u32,
    segments: Vec<Segment>,
    /// Output samples queued for this turn so far (resampled).
    queued: u64,
    /// `sink.played()` when the turn's first sample was written.
    base: Option<u64>,
    /// Output samples handed to the sink for this turn.
    written: u64,
    /// The last chunk has arrived.
    complete: bool,
    /// A cue, not an answer: nothing is reported for it.
    cue: bool,
}

struct Player {
    sink: Box<dyn Sink>,
    io: PlaybackIo,
    queue: VecDeque<f32>,
    active: Option<Active>,
    /// A chunk of the next turn that arrived before the current one ended.
    held: Option<PcmChunk>,
    summary: PlaybackSummary,
    input_open: bool,
    /// Set in daemon mode: how a missing or lost speaker is re-opened.
    reopen: Option<Reopen>,
    /// The turn whose answer was last reported unplayed (no speaker).
    unplayed: Option<u64>,
    /// `sink.played()` at its last change, and when (lost-device detection).
    last_played: (u64, Instant),
    /// The sink's heartbeat at the last check.
    last_beat: u64,
}

impl Player {
    fn new(sink: Box<dyn Sink>, io: PlaybackIo) -> Self {
        let rate_hz = sink.rate_hz();
        Self {
            sink,
            io,
            queue: VecDeque::new(),
            active: None,
            held: None,
            summary: PlaybackSummary {
                rate_hz,
                ..Default::default()
            },
            input_open: true,
            reopen: None,
            unplayed: None,
            last_played: (0, Instant::now()),
            last_beat: 0,
        }
    }

    async fn run(mut self) -> Result<PlaybackSummary, AudioError> {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if self.active.is_none()
                && let Some(c) = self.held.take()
            {
                self.accept(c).await;
                continue;
            }
            if !self.input_open && self.active.is_none() {
                break;
            }
            let token = self.active.as_ref().map(|a| a.turn.token.clone());
            let can_take = self.input_open
                && self.held.is_none()
                && self.queue.len() < QUEUE_HIGH_WATER
                && self.active.as_ref().is_none_or(|a| !a.complete);
            tokio::select! {
                biased;
                _ = async { token.as_ref().expect("guarded").cancelled().await }, if token.is_some() => {
                    self.interrupt().await;
                }
                chunk = self.io.chunks.recv(), if can_take => match chunk {
                    Some(c) => self.accept(c).await,
                    None => {
                        self.input_open = false;
                        if let Some(a) = &mut self.active {
                            // TTS went away mid-turn: play what arrived, then stop.
                            a.complete = true;
                            flush_resampler(a, &mut self.queue);
                        }
                    }
                },
                _ = tick.tick(), if self.active.is_some() => {
                    self.feed()?;
                    self.progress().await;
                    self.check_stall().await;
                }
                cue = async { self.io.cues.as_mut().expect("guarded").recv().await }, if self.io.cues.is_some() => match cue {
                    Some(c) => self.play_cue(c),
                    None => self.io.cues = None,
                },
                _ = async { tokio::time::sleep_until(self.reopen.as_ref().expect("guarded").next).await },
                    if !self.sink.present() && self.active.is_none() && self.reopen.is_some() => {
                    self.try_reopen();
                }
            }
        }
        self.sink.finish()?;
        self.summary.samples_played = self.sink.played();
        Ok(self.summary)
    }

    /// Takes a chunk into the queue (resampled), or drops it when its turn is cancelled
    /// or there is no speaker.
    async fn accept(&mut self, c: PcmChunk) {
        if c.turn.token.is_cancelled() {
            return;
        }
        if self.unplayed == Some(c.turn.id) {
            // The rest of an answer already reported unplayed (speaker lost or missing).
            return;
        }
        if !self.sink.present() {
            self.report_unplayed(&c).await;
            return;
        }
        if let Some(a) = self.active.as_mut().filter(|a| a.turn.id != c.turn.id) {
            // The previous turn never sent its last chunk: let it finish what it has.
            a.complete = true;
            flush_resampler(a, &mut self.queue);
            self.held = Some(c);
            return;
        }
        let out_rate = self.sink.rate_hz();
        if self.active.is_none() {
            // The stall clock starts with the turn, not at the end of the last one.
            self.last_played = (self.sink.played(), Instant::now());
        }
        let a = self.active.get_or_insert_with(|| Active {
            turn: c.turn.clone(),
            resampler: Resampler::new(c.rate_hz, out_rate),
            rate_hz: c.rate_hz,
            segments: Vec::new(),
            queued: 0,
            base: None,
            written: 0,
            complete: false,
            cue: false,
        });
        let mut out = Vec::with_capacity(
            c.samples.len() * out_rate as usize / c.rate_hz.max(1) as usize + 64,
        );
        if a.rate_hz != c.rate_hz && !c.samples.is_empty() {
            // Audio at another rate within one answer: the old rate's tail first.
            a.resampler.finish(&mut out);
            a.resampler = Resampler::new(c.rate_hz, out_rate);
            a.rate_hz = c.rate_hz;
        }
        a.resampler.process(&c.samples, &mut out);
        if c.last {
            a.resampler.finish(&mut out);
            a.complete = true;
        }
        let start = a.queued;
        a.queued += out.len() as u64;
        if !c.text.is_empty() || !out.is_empty() {
            let keyword_at = self.io.guard.as_ref().map_or(Vec::new(), |g| {
                g.keyword_samples(&c.text, a.queued - start)
                    .into_iter()
                    .map(|at| start + at)
                    .collect()
            });
            a.segments.push(Segment {
                sentence: c.sentence,
                text: c.text,
                start,
                end: a.queued,
                announced: false,
                keyword_at,
            });
        }
        self.queue.extend(out);
        // Start at once rather than on the next tick: first audio is latency.
        let _ = self.feed();
        self.progress().await;
    }

    /// Plays a cue now if nothing else plays (a barge-in's cancel has been handled first:
    /// the select is biased to it); an answer that is playing keeps the speaker.
    fn play_cue(&mut self, c: Cue) {
        if self.active.is_some() || self.held.is_some() || !self.sink.present() {
            tracing::debug!("cue skipped: the speaker is busy or missing");
            return;
        }
        let out_rate = self.sink.rate_hz();
        let mut resampler = Resampler::new(c.rate_hz, out_rate);
        let mut out = Vec::with_capacity(
            c.samples.len() * out_rate as usize / c.rate_hz.max(1) as usize + 64,
        );
        resampler.process(&c.samples, &mut out);
        resampler.finish(&mut out);
        self.last_played = (self.sink.played(), Instant::now());
        self.active = Some(Active {
            // A turn of its own that nothing cancels: the cue is a few hundred ms.
            turn: Turn {
                id: 0,
                token: tokio_util::sync::CancellationToken::new(),
            },
            resampler,
            rate_hz: c.rate_hz,
            segments: Vec::new(),
            queued: out.len() as u64,
            base: None,
            written: 0,
            complete: true,
            cue: true,
        });
        self.queue.extend(out);
        let _ = self.feed();
    }

    /// Hands queued samples to the sink as far as it takes them.
    fn feed(&mut self) -> Result<(), AudioError> {
        let Some(a) = &mut self.active else {
            return Ok(());
        };
        while !self.queue.is_empty() {
            let before = a.base.is_none().then(|| self.sink.played());
            let (head, _) = self.queue.as_slices();
            let len = head.len();
            let n = self.sink.write(head)?;
            if n > 0 && a.base.is_none() {
                a.base = before;
            }
            a.written += n as u64;
            self.queue.drain(..n);
            if n < len {
                break;
            }
        }
        Ok(())
    }

    /// Announces sentences whose first sample reached the sink; ends a finished turn.
    async fn progress(&mut self) {
        let Some(a) = &mut self.active else { return };
        let mut events = Vec::new();
        for s in a.segments.iter_mut() {
            if !s.announced && a.written > s.start {
                s.announced = true;
                events.push(Event::Playing {
                    turn: a.turn.id,
                    sentence: s.sentence,
                });
            }
        }
        for e in events {
            let _ = self.io.events.send(e).await;
        }
        let played = a
            .base
            .map(|b| self.sink.played().saturating_sub(b))
            .unwrap_or(0);
        if let Some(g) = &self.io.guard {
            let at = a.segments.iter().flat_map(|s| s.keyword_at.iter().copied());
            g.mark(played, at, self.sink.rate_hz());
        }
        if a.complete && self.queue.is_empty() && played >= a.queued {
            self.end_turn(false).await;
        }
    }

    /// Without a speaker a turn's answer is reported once, as an error and as heard by
    /// nobody, so the turn ends (the conversation keeps nothing it did not say).
    async fn report_unplayed(&mut self, c: &PcmChunk) {
        self.unplayed = Some(c.turn.id);
        // Nobody can hear the rest: stop generating it (as a barge-in would), so the
        // next question is not queued behind an answer that goes nowhere.
        c.turn.token.cancel();
        let name = self.reopen.as_ref().map_or("", |r| r.name.as_str());
        let _ = self
            .io
            .events
            .send(Event::Error {
                stage: "playback",
                message: format!("no speaker ({name}): the answer was not played"),
            })
            .await;
        let _ = self
            .io
            .events
            .send(Event::Spoken {
                turn: c.turn.id,
                heard: String::new(),
                total_chars: c.text.chars().count(),
                played_ms: 0,
                interrupted: true,
            })
            .await;
    }

    /// A sound card that takes no audio for [`STALL`] while some waits is lost: the turn
    /// ends with what was heard, and (in daemon mode) the speaker is re-opened.
    async fn check_stall(&mut self) {
        let now = self.sink.played();
        let beat = self.sink.heartbeat();
        if now != self.last_played.0 {
            self.last_played = (now, Instant::now());
            self.last_beat = beat;
            return;
        }
        if beat != self.last_beat {
            // The card is still asking for audio: a starved moment (an underrun under
            // CPU load), not a dead device. Re-opening would cut the answer for nothing.
            self.last_beat = beat;
            self.last_played.1 = Instant::now();
            return;
        }
        // Samples handed to the sink that it has not played yet.
        let waiting = self.active.as_ref().is_some_and(|a| {
            a.base
                .is_some_and(|base| a.written > now.saturating_sub(base))
        });
        if !waiting || self.last_played.1.elapsed() < STALL || self.reopen.is_none() {
            return;
        }
        let name = self
            .reopen
            .as_ref()
            .map_or(String::new(), |r| r.name.clone());
        tracing::error!(device = %name, stalled_ms = STALL.as_millis() as u64, "the speaker stopped taking audio; re-opening it");
        let id = self.active.as_ref().map(|a| a.turn.id).unwrap_or(0);
        if let Some(a) = &self.active {
            a.turn.token.cancel();
        }
        self.unplayed = Some(id);
        self.queue.clear();
        self.end_turn(true).await;
        let _ = self
            .io
            .events
            .send(Event::Error {
                stage: "playback",
                message: format!("the speaker ({name}) stopped playing during turn {id}"),
            })
            .await;
        let lost = std::mem::replace(&mut self.sink, Box::new(MissingSink));
        super::abandon("speaker", lost);
        if let Some(r) = &mut self.reopen {
            r.restart();
        }
    }

    fn try_reopen(&mut self) {
        let Some(r) = &mut self.reopen else { return };
        match DeviceSink::open(&r.name, r.buffer_ms, self.io.reference.as_ref()) {
            Ok(s) => {
                tracing::info!(device = %r.name, "speaker back");
                self.sink = Box::new(s);
                self.summary.rate_hz = self.sink.rate_hz();
                self.last_played = (self.sink.played(), Instant::now());
                r.restart();
            }
            Err(e) => {
                r.failed();
                tracing::warn!(error = %e, retry_in_ms = r.delay.as_millis() as u64, "speaker still unavailable");
            }
        }
    }

    /// The turn was cancelled: silence now, then report what was heard.
    async fn interrupt(&mut self) {
        self.queue.clear();
        self.sink.flush();
        let id = self.active.as_ref().map(|a| a.turn.id).unwrap_or(0);
        self.end_turn(true).await;
        let _ = self
            .io
            .events
            .send(Event::Cancelled {
                turn: id,
                stage: "playback",
            })
            .await;
    }

    async fn end_turn(&mut self, interrupted: bool) {
        let Some(a) = self.active.take() else { return };
        if a.cue {
            return;
        }
        let played = a
            .base
            .map(|b| self.sink.played().saturating_sub(b))
            .unwrap_or(0)
            .min(a.queued);
        let heard = heard_text(&a.segments, played);
        if interrupted {
            self.summary.turns_interrupted += 1;
        } else {
            self.summary.turns_completed += 1;
        }
        let rate = self.sink.rate_hz().max(1) as u64;
        let _ = self
            .io
            .events
            .send(Event::Spoken {
                turn: a.turn.id,
                heard,
                total_chars: a.segments.iter().map(|s| s.text.chars().count()).sum(),
                played_ms: played * 1000 / rate,
                interrupted,
            })
            .await;
    }
}

fn flush_resampler(a: &mut Active, queue: &mut VecDeque<f32>) {
    let mut tail = Vec::new();
    a.resampler.finish(&mut tail);
    a.queued += tail.len() as u64;
    if let Some(s) = a.segments.last_mut() {
        s.end = a.queued;
    }
    queue.extend(tail);
}

/// The text a listener heard after `played` samples: whole segments, then the words of a
/// partly played segment in proportion to the audio played (a word counts once its end
/// would have been reached).
fn heard_text(segments: &[Segment], played: u64) -> String {
    let mut parts: Vec<String> = Vec::new();
    for s in segments {
        if played >= s.end {
            parts.push(s.text.clone());
        } else if played > s.start {
            let frac = (played - s.start) as f64 / (s.end - s.start).max(1) as f64;
            let total = s.text.chars().count();
            let cut = (total as f64 * frac).floor() as usize;
            let words: Vec<&str> = s.text.split_whitespace().collect();
            let mut taken = Vec::new();
            let mut pos = 0;
            for w in words {
                pos += w.chars().count();
                if pos > cut {
                    break;
                }
                taken.push(w);
                pos += 1;
            }
            if !taken.is_empty() {
                parts.push(taken.join(" "));
            }
            break;
        } else {
            break;
        }
    }
    parts.join(" ")
}

// ---------------------------------------------------------------------------------------
// WAV sink

/// A WAV file as an output: immediate, or paced like a sound card.
pub struct WavSink {
    writer: Option<hound::WavWriter<BufWriter<std::fs::File>>>,
    path: PathBuf,
    rate_hz: u32,
    written: u64,
    pace: Option<Pace>,
    log: Option<SinkLog>,
}

/// The clock of a paced sink: samples are committed to the file when their time comes.
struct Pace {
    buffer: usize,
    pending: VecDeque<f32>,
    /// Clock origin and the sample count committed at that moment.
    origin: Instant,
    origin_samples: u64,
}

impl WavSink {
    /// Creates (truncates) `path`.
    pub fn create(
        path: PathBuf,
        rate_hz: u32,
        paced_buffer_ms: Option<u32>,
        log: Option<SinkLog>,
    ) -> Result<Self, AudioError> {
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: rate_hz,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let writer = hound::WavWriter::create(&path, spec).map_err(|e| AudioError::Io {
            path: path.clone(),
            source: match e {
                hound::Error::IoError(io) => io,
                other => std::io::Error::other(other.to_string()),
            },
        })?;
        Ok(Self {
            writer: Some(writer),
            path,
            rate_hz,
            written: 0,
            pace: paced_buffer_ms.map(|ms| Pace {
                buffer: (rate_hz as u64 * ms as u64 / 1000) as usize,
                pending: VecDeque::new(),
                origin: Instant::now(),
                origin_samples: 0,
            }),
            log,
        })
    }

    fn commit(&mut self, samples: &[f32]) -> Result<(), AudioError> {
        let Some(w) = &mut self.writer else {
            return Ok(());
        };
        for &s in samples {
            w.write_sample(f32_to_i16(s)).map_err(|e| AudioError::Io {
                path: self.path.clone(),
                source: std::io::Error::other(e.to_string()),
            })?;
        }
        self.written += samples.len() as u64;
        Ok(())
    }

    /// Samples whose play time has come, per the paced clock.
    fn due(&self) -> u64 {
        match &self.pace {
            Some(p) => {
                p.origin_samples + (p.origin.elapsed().as_secs_f64() * self.rate_hz as f64) as u64
            }
            None => self.written,
        }
    }

    fn commit_due(&mut self) {
        let due = self.due();
        let Some(p) = &mut self.pace else { return };
        let n = (due.saturating_sub(self.written) as usize).min(p.pending.len());
        if n == 0 {
            return;
        }
        let block: Vec<f32> = p.pending.drain(..n).collect();
        let origin = p.origin;
        let origin_samples = p.origin_samples;
        let _ = self.commit(&block);
        if let Some(log) = &self.log {
            let at = origin
                + Duration::from_secs_f64(
                    (self.written - origin_samples) as f64 / self.rate_hz as f64,
                );
            crate::lock(log).push((at, n as u64));
        }
    }
}

impl Sink for WavSink {
    fn rate_hz(&self) -> u32 {
        self.rate_hz
    }

    fn write(&mut self, samples: &[f32]) -> Result<usize, AudioError> {
        if self.pace.is_none() {
            self.commit(samples)?;
            return Ok(samples.len());
        }
        self.commit_due();
        let written = self.written;
        let due = self.due();
        let p = self.pace.as_mut().expect("paced");
        if p.pending.is_empty() && due > written {
            // The output ran dry: its clock restarts now (silence is not written).
            p.origin = Instant::now();
            p.origin_samples = written;
        }
        let room = p.buffer.saturating_sub(p.pending.len());
        let n = room.min(samples.len());
        p.pending.extend(&samples[..n]);
        Ok(n)
    }

    fn played(&mut self) -> u64 {
        self.commit_due();
        self.written
    }

    fn flush(&mut self) {
        self.commit_due();
        if let Some(p) = &mut self.pace {
            p.pending.clear();
        }
    }

    fn finish(&mut self) -> Result<(), AudioError> {
        while self.pace.as_ref().is_some_and(|p| !p.pending.is_empty()) {
            std::thread::sleep(TICK);
            self.commit_due();
        }
        if let Some(w) = self.writer.take() {
            w.finalize().map_err(|e| AudioError::Io {
                path: self.path.clone(),
                source: std::io::Error::other(e.to_string()),
            })?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Sound card sink (rodio)

/// State shared with the audio callback: written only by one side each.
#[derive(Default)]
struct Shared {
    /// Samples the callback has played (written by the callback).
    played: AtomicU64,
    /// Samples the callback was asked for, played or silence (written by the callback):
    /// the sign that the device is still running.
    polled: AtomicU64,
    /// Written by the playback thread: every sample it had pushed into the ring up to
    /// this count (since the ring was made) is to be dropped unplayed. A count rather
    /// than a "drop everything" flag: the callback acts on it at its next sample, and
    /// what the playback thread writes in between (the earcon right after a barge-in's
    /// flush) must survive — dropped, it would never be reported played and its turn
    /// would never end, holding the speaker for good while the card keeps polling.
    flush_upto: AtomicU64,
}

/// The rodio source the mixer pulls from: pops the ring, plays silence when it is empty.
struct RingSource {
    ring: rtrb::Consumer<f32>,
    shared: Arc<Shared>,
    /// Samples taken out of the ring so far, played or dropped by a flush.
    consumed: u64,
    played: u64,
    polled: u64,
    rate: rodio::SampleRate,
    /// The echo canceller's copy of every sample handed to the DAC, silence included.
    reference: Option<ReferenceTap>,
}

impl Iterator for RingSource {
    type Item = f32;

    fn next(&mut self) -> Option<f32> {
        self.polled += 1;
        if self.polled.is_multiple_of(256) {
            self.shared.polled.store(self.polled, Ordering::Relaxed);
        }
        let upto = self.shared.flush_upto.load(Ordering::Acquire);
        if upto > self.consumed {
            let n = ((upto - self.consumed) as usize).min(self.ring.slots());
            if let Ok(chunk) = self.ring.read_chunk(n) {
                chunk.commit_all();
                self.consumed += n as u64;
            }
        }
        let s = match self.ring.pop() {
            Ok(s) => {
                self.consumed += 1;
                self.played += 1;
                self.shared.played.store(self.played, Ordering::Release);
                s
            }
            Err(_) => 0.0,
        };
        if let Some(r) = &mut self.reference {
            r.push(s);
        }
        Some(s)
    }
}

impl rodio::Source for RingSource {
    fn current_span_len(&self) -> Option<usize> {
        None
    }
    fn channels(&self) -> rodio::ChannelCount {
        std::num::NonZero::new(1).expect("1 is not zero")
    }
    fn sample_rate(&self) -> rodio::SampleRate {
        self.rate
    }
    fn total_duration(&self) -> Option<Duration> {
        None
    }
}

/// A sound card through rodio's mixer.
pub struct DeviceSink {
    _stream: rodio::MixerDeviceSink,
    ring: RingWriter,
    rate_hz: u32,
}

/// The playback thread's end of the ring the callback plays from.
struct RingWriter {
    ring: rtrb::Producer<f32>,
    shared: Arc<Shared>,
    /// Samples pushed into the ring so far.
    pushed: u64,
}

impl RingWriter {
    fn write(&mut self, samples: &[f32]) -> usize {
        let n = self.ring.slots().min(samples.len());
        if n == 0 {
            return 0;
        }
        if let Ok(mut chunk) = self.ring.write_chunk_uninit(n) {
            let (a, b) = chunk.as_mut_slices();
            for (dst, src) in a.iter_mut().chain(b.iter_mut()).zip(samples) {
                dst.write(*src);
            }
            // SAFETY: every one of the n slots was initialised just above.
            unsafe { chunk.commit_all() };
            self.pushed += n as u64;
            return n;
        }
        0
    }

    /// Everything pushed so far is dropped unplayed (see [`Shared::flush_upto`]).
    fn flush(&mut self) {
        self.shared.flush_upto.store(self.pushed, Ordering::Release);
    }
}

impl DeviceSink {
    /// Opens `name` (`default` for the system default) with a `buffer_ms` output buffer;
    /// with `reference`, what it plays is copied to the echo canceller.
    pub fn open(
        name: &str,
        buffer_ms: u32,
        reference: Option<&ReferenceLink>,
    ) -> Result<Self, AudioError> {
        use cpal::traits::DeviceTrait;
        let dev = super::device::find(name, super::device::Direction::Output)?;
        let failed = |problem: String| AudioError::Device {
            name: name.to_string(),
            problem,
        };
        let rate = dev
            .default_output_config()
            .map(|c| c.sample_rate())
            .unwrap_or(48_000);
        // Stream errors (an underrun, a lost device) arrive on the audio thread: log the
        // first, count the rest — the callback must not flood the log at audio rate.
        let errors = Arc::new(AtomicU64::new(0));
        let on_error = move |e: cpal::Error| {
            if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                tracing::warn!(error = %e, "audio output stream error (further ones are not logged)");
            }
        };
        let builder = rodio::DeviceSinkBuilder::from_device(dev)
            .map_err(|e| failed(format!("no usable output configuration: {e}")))?
            .with_error_callback(on_error);
        let frames = (rate * buffer_ms.max(5) / 1000).max(64);
        let mut stream = builder
            .with_buffer_size(cpal::BufferSize::Fixed(frames))
            .open_sink_or_fallback()
            .map_err(|e| failed(format!("cannot open the output stream: {e}")))?;
        stream.log_on_drop(false);
        let rate_hz = stream.config().sample_rate().get();
        let (producer, consumer) = rtrb::RingBuffer::<f32>::new(rate_hz as usize / 2);
        let shared = Arc::new(Shared::default());
        stream.mixer().add(RingSource {
            ring: consumer,
            shared: shared.clone(),
            consumed: 0,
            played: 0,
            polled: 0,
            rate: stream.config().sample_rate(),
            reference: reference.map(|l| l.open(rate_hz)),
        });
        Ok(Self {
            _stream: stream,
            ring: RingWriter {
                ring: producer,
                shared,
                pushed: 0,
            },
            rate_hz,
        })
    }
}

impl Sink for DeviceSink {
    fn rate_hz(&self) -> u32 {
        self.rate_hz
    }

    fn write(&mut self, samples: &[f32]) -> Result<usize, AudioError> {
        Ok(self.ring.write(samples))
    }

    fn played(&mut self) -> u64 {
        self.ring.shared.played.load(Ordering::Acquire)
    }

    fn heartbeat(&mut self) -> u64 {
        self.ring.shared.polled.load(Ordering::Relaxed)
    }

    fn flush(&mut self) {
        self.ring.flush();
    }

    fn finish(&mut self) -> Result<(), AudioError> {
        // Let the ring drain (bounded: it holds at most half a second).
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.ring.ring.buffer().capacity() > self.ring.ring.slots()
            && Instant::now() < deadline
        {
            std::thread::sleep(TICK);
        }
        // And what the card itself still holds.
        std::thread::sleep(Duration::from_millis(100));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(sentence: u32, text: &str, start: u64, end: u64) -> Segment {
        Segment {
            sentence,
            text: text.into(),
            start,
            end,
            announced: false,
            keyword_at: Vec::new(),
        }
    }

    #[test]
    fn heard_text_counts_whole_and_partial_segments() {
        let segs = [
            seg(0, "Hello there.", 0, 100),
            seg(1, "This is a longer sentence here.", 100, 400),
        ];
        assert_eq!(heard_text(&segs, 0), "");
        assert_eq!(heard_text(&segs, 100), "Hello there.");
        assert_eq!(heard_text(&segs, 250), "Hello there. This is a");
        assert_eq!(
            heard_text(&segs, 400),
            "Hello there. This is a longer sentence here."
        );
    }

    /// The sound card's ring as the callback sees it: a flush drops what was written
    /// before it, however late the callback gets to it, and never what came after — the
    /// earcon written right after a barge-in's flush, before the callback ran, was
    /// dropped with the answer and never reported played, so playback waited for it
    /// forever and no answer played again (seen on the barge-in device test).
    #[test]
    fn a_flush_drops_what_was_written_before_it_and_keeps_what_came_after() {
        let (producer, consumer) = rtrb::RingBuffer::<f32>::new(1000);
        let shared = Arc::new(Shared::default());
        let mut w = RingWriter {
            ring: producer,
            shared: shared.clone(),
            pushed: 0,
        };
        let mut cb = RingSource {
            ring: consumer,
            shared: shared.clone(),
            consumed: 0,
            played: 0,
            polled: 0,
            rate: std::num::NonZero::new(48_000).unwrap(),
            reference: None,
        };
        assert_eq!(w.write(&[0.5; 300]), 300);
        // The card plays 100 of the answer.
        assert!((0..100).all(|_| cb.next() == Some(0.5)));
        // Barge-in: flush, and the earcon is written before the callback runs again.
        w.flush();
        assert_eq!(w.write(&[0.25; 40]), 40);
        let out: Vec<f32> = (0..60).map(|_| cb.next().unwrap()).collect();
        assert_eq!(&out[..40], &[0.25; 40][..], "the earcon plays whole");
        assert_eq!(&out[40..], &[0.0; 20][..], "then silence");
        assert_eq!(shared.played.load(Ordering::Acquire), 140);
        // A flush with nothing new written drops only what is left.
        assert_eq!(w.write(&[0.75; 10]), 10);
        w.flush();
        assert_eq!(cb.next(), Some(0.0));
        assert_eq!(w.write(&[0.125; 5]), 5);
        assert!((0..5).all(|_| cb.next() == Some(0.125)));
        assert_eq!(shared.played.load(Ordering::Acquire), 145);
    }

    #[test]
    fn paced_wav_sink_plays_in_real_time_and_flushes() {
        let dir = tempfile::tempdir().unwrap();
        let log: SinkLog = Arc::default();
        let mut s = WavSink::create(
            dir.path().join("a.wav"),
            24_000,
            Some(40),
            Some(log.clone()),
        )
        .unwrap();
        // Only the 40 ms buffer is accepted at once.
        assert_eq!(s.write(&vec![0.1; 24_000]).unwrap(), 960);
        std::thread::sleep(Duration::from_millis(30));
        let p = s.played();
        assert!((500..=960).contains(&p), "{p}");
        s.flush();
        let after = s.played();
        assert!(after <= 960);
        s.finish().unwrap();
        let logged: u64 = log.lock().unwrap().iter().map(|(_, n)| n).sum();
        assert_eq!(logged, after);
    }
}
