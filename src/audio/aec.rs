//! Acoustic echo cancellation: takes Panda's own voice out of the microphone, with the
//! samples playback sent to the speaker as the reference (WebRTC AEC3, the `aec3` crate).
//!
//! Where it runs: its own thread (`panda-aec`, [`spawn`]; AEC3's graph is not `Send`, so it
//! is built there) between the audio source and the
//! listener, on the audio edges (a full edge drops the frame and counts it, as everywhere
//! on the audio path). It owns the canceller (AEC3 keeps per-stream state) and the
//! reference's resampler. Cost: ~0.15 ms per 10 ms frame on this CPU (`panda bench aec`).
//!
//! The reference: the sound card's callback (inside playback) copies every sample it hands
//! to the DAC — answer, earcon or silence — into a lock-free ring ([`ReferenceTap`]); no
//! locks, no allocation. Each time playback opens an output it sends the ring's other end
//! and the output rate on the reference link ([`reference_link`]); this thread swaps it in
//! and resamples it to 16 kHz with the same resampler the microphone path uses. Render
//! audio is fed to AEC3 before every capture frame as it arrives; AEC3 estimates and tracks
//! the delay between the two streams (seeded by `[aec] delay_hint_ms`). Reference that
//! piles up beyond [`RENDER_BACKLOG_MS`] (a speaker on a faster clock than the microphone,
//! a capture stall) is dropped and counted ([`AecStats::render_dropped`]), never waited for.
//!
//! Two outputs per frame: the full output (AEC3's linear filter, then its residual-echo
//! suppressor) for the VAD and Whisper; and, while Panda's voice is in the room (the
//! reference was loud within [`ECHO_TAIL_MS`]), the linear filter's output before
//! suppression ([`crate::event::AudioFrame::linear`]) for the wake word: the suppressor
//! also eats a person's "hey panda" said over the answer (double talk), the linear output
//! keeps it (measured on synthetic rooms, see the echo issue and `panda bench aec`).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use aec3::nodes::audio::AudioFormat;
use aec3::pipelines::linear::{self, LinearPipeline};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::EdgeStats;
use super::dsp::{Resampler, f32_to_i16};
use crate::event::{AudioFrame, FRAME_SAMPLES, SAMPLE_RATE_HZ};

/// AEC3's frame: 10 ms at 16 kHz.
pub const SUBFRAME: usize = (SAMPLE_RATE_HZ / 100) as usize;
/// Capacity of the reference ring, in ms of output audio. The AEC thread drains it every
/// capture frame (30 ms); when it stalls this long the callback drops reference samples
/// and counts them (the callback never waits).
pub const REFERENCE_RING_MS: u32 = 500;
/// Reference waiting for capture beyond this is dropped (oldest first) and counted: AEC3
/// cannot use render audio that far ahead of the microphone.
pub const RENDER_BACKLOG_MS: usize = 300;
/// After the reference goes quiet, Panda's voice still rings in the room (and in the
/// capture path's buffers) this long: the linear output keeps serving the wake word.
pub const ECHO_TAIL_MS: u64 = 400;
/// How far from its letter-estimated place the wake word's keyword may really be said
/// in a sentence (the self-wake guard covers this much either side).
pub const KEYWORD_MARGIN_MS: u64 = 500;
/// AEC3's full output lags the capture by this many samples (its 64-sample blocks and
/// the suppressor's look-ahead: 8 ms); the linear output by [`LINEAR_LAG_SAMPLES`] (4 ms).
/// Measured by a test; what compares outputs with inputs (the bench's double-talk
/// distortion) needs them.
pub const OUTPUT_LAG_SAMPLES: usize = 128;
/// Frames in a row (90 ms) where Panda alone speaks whose quietest sets the echo level
/// that [`NO_ECHO_DBFS`] is judged on (see [`EchoCanceller::process`]).
pub const ECHO_RUN_FRAMES: usize = 3;
/// See [`OUTPUT_LAG_SAMPLES`].
pub const LINEAR_LAG_SAMPLES: usize = 64;
/// Reference frames quieter than this (dBFS) count as silence.
const RENDER_ACTIVE_DBFS: f32 = -55.0;
/// Capacity of the reference link: playback opens an output rarely (start, re-open).
const LINK_CAPACITY: usize = 2;

/// What can go wrong building or running the canceller.
#[derive(Debug, thiserror::Error)]
pub enum AecError {
    /// The AEC3 pipeline refused its configuration or a frame.
    #[error("echo canceller: {0}")]
    Aec3(String),
    /// The canceller's thread could not be started.
    #[error("cannot start the echo canceller thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// One output's reference stream: exactly the samples sent to the speaker.
pub struct ReferenceStream {
    /// The ring's consumer end.
    pub samples: rtrb::Consumer<f32>,
    /// The output's sample rate.
    pub rate_hz: u32,
}

/// Playback's end of the reference link: makes one ring per opened output.
#[derive(Clone)]
pub struct ReferenceLink {
    tx: std::sync::mpsc::SyncSender<ReferenceStream>,
    dropped: Arc<AtomicU64>,
}

/// The canceller's end of the reference link.
pub struct ReferenceFeed {
    rx: std::sync::mpsc::Receiver<ReferenceStream>,
    dropped: Arc<AtomicU64>,
}

/// A linked pair: playback gets the link, the AEC thread the feed.
pub fn reference_link() -> (ReferenceLink, ReferenceFeed) {
    let (tx, rx) = std::sync::mpsc::sync_channel(LINK_CAPACITY);
    let dropped = Arc::new(AtomicU64::new(0));
    (
        ReferenceLink {
            tx,
            dropped: dropped.clone(),
        },
        ReferenceFeed { rx, dropped },
    )
}

impl ReferenceLink {
    /// A new tap for an output at `rate_hz`; its stream goes to the canceller, which
    /// switches to it at its next frame.
    pub fn open(&self, rate_hz: u32) -> ReferenceTap {
        let cap = (rate_hz * REFERENCE_RING_MS / 1000) as usize;
        let (producer, consumer) = rtrb::RingBuffer::<f32>::new(cap);
        // A full link means the canceller is gone or two re-opens raced: the newest
        // stream is the one that matters, the tap still works (its samples go nowhere).
        let _ = self.tx.try_send(ReferenceStream {
            samples: consumer,
            rate_hz,
        });
        ReferenceTap {
            producer,
            dropped: self.dropped.clone(),
        }
    }
}

/// The real-time side of a reference stream, owned by the output callback.
pub struct ReferenceTap {
    producer: rtrb::Producer<f32>,
    dropped: Arc<AtomicU64>,
}

impl ReferenceTap {
    /// Records one sample sent to the DAC. Lock-free and allocation-free; a full ring
    /// (the canceller stalled) drops the sample and counts it.
    #[inline]
    pub fn push(&mut self, s: f32) {
        if self.producer.push(s).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Counters of the canceller, shared with observers.
#[derive(Debug, Default)]
pub struct AecStats {
    /// Capture frames processed.
    pub frames: AtomicU64,
    /// 10 ms render frames dropped because they piled up ahead of the microphone.
    pub render_dropped: AtomicU64,
    /// Reference samples the output callback could not hand over (ring full).
    pub reference_dropped: AtomicU64,
    /// 10 ms capture frames with no reference frame to match, once the reference has
    /// started: the speaker's clock behind the microphone's, or the output stalled.
    pub render_missing: AtomicU64,
    /// Extra reference frames fed to work off a backlog: the speaker's clock ahead of
    /// the microphone's, or bursty output callbacks.
    pub render_caught_up: AtomicU64,
    /// Echo-path changes: large jumps of AEC3's delay estimate.
    pub path_changes: AtomicU64,
    /// AEC3's echo return loss enhancement estimate, dB × 100 (latest).
    pub erle_centi_db: AtomicU64,
    /// AEC3's delay estimate, ms (latest).
    pub delay_ms: AtomicU64,
    /// The audio edge towards the listener.
    pub edge: EdgeStats,
}

/// One capture frame after cancellation.
pub struct Cancelled {
    /// Full output: linear filter and residual-echo suppression (for VAD and STT).
    pub samples: Box<[i16; FRAME_SAMPLES]>,
    /// The linear filter's output, while Panda's voice is in the room (for the wake word).
    pub linear: Option<Box<[i16; FRAME_SAMPLES]>>,
    /// Someone besides Panda is talking in this frame (double talk; see [`DoubleTalk`]).
    pub near_end: bool,
    /// The microphone does not hear Panda's voice at all (see [`NO_ECHO_DBFS`]).
    pub no_echo: bool,
}

/// Below this level (dBFS, the peak over the frames where Panda speaks and nobody else
/// does, after a second of them) the microphone does not hear Panda: there is no echo path, and Panda cannot
/// wake itself. The device's noise floor sits far under it; any echo a wake word could
/// be heard in sits far above it.
pub const NO_ECHO_DBFS: f32 = -55.0;

/// A double-talk detector on the linear filter: with Panda's voice alone, the linear
/// output sits a steady amount under the microphone (the filter's echo reduction, ~18 dB
/// in the bench's rooms, less with a distorting speaker); a person talking lifts it
/// towards the microphone's level. The steady amount is tracked (a minimum that creeps
/// up 2 dB/s, so it follows a changing echo path), and a frame more than
/// [`NEAR_END_MARGIN_DB`] above it, and audible, is a person.
#[derive(Debug)]
pub struct DoubleTalk {
    floor_db: f32,
}

/// See [`DoubleTalk`].
pub const NEAR_END_MARGIN_DB: f32 = 6.0;

/// Where the echo floor starts (and starts over when Panda falls silent): 10 dB of echo
/// reduction. Where the microphone hears no echo at all (a headset, a speaker in another
/// room, the device tests' virtual devices) the linear output never sounds without a
/// person, so the floor is never measured — and a person, whose voice passes the filter
/// unchanged (0 dB), must still count. With an echo the filter's first frames (10–20 dB
/// once converged) bring the floor down at once.
pub const FLOOR_START_DB: f32 = -10.0;

impl Default for DoubleTalk {
    fn default() -> Self {
        Self {
            floor_db: FLOOR_START_DB,
        }
    }
}

impl DoubleTalk {
    /// Judges one frame from the capture's and the linear output's energies (sums of
    /// squares of i16 samples over the frame).
    pub fn near_end(&mut self, capture: f64, linear: f64) -> bool {
        let n = FRAME_SAMPLES as f64;
        let level_db = 10.0 * (linear / n / (32768.0 * 32768.0)).max(1e-12).log10();
        if capture <= 0.0 || level_db < -60.0 {
            return false;
        }
        let ratio = (10.0 * (linear.max(1e-9) / capture).log10()) as f32;
        // 2 dB/s at 30 ms frames.
        self.floor_db = (self.floor_db + 0.06).min(ratio);
        ratio > self.floor_db + NEAR_END_MARGIN_DB
    }

    /// Panda is silent: the next answer starts from a fresh estimate.
    pub fn reset(&mut self) {
        self.floor_db = FLOOR_START_DB;
    }
}

/// The canceller: AEC3 at 16 kHz mono on 30 ms capture frames, with a render FIFO.
pub struct EchoCanceller {
    pipeline: LinearPipeline,
    /// Reference at 16 kHz waiting to be fed, oldest first.
    render: VecDeque<f32>,
    /// Capture samples (as f32) of the frame being processed.
    capture: Vec<f32>,
    /// One render frame on its way to AEC3 (kept: no allocation per frame).
    block: Vec<f32>,
    out: Vec<f32>,
    /// Frames (10 ms) since the reference was last loud; `u64::MAX` before it ever was.
    since_render: u64,
    double_talk: DoubleTalk,
    /// The microphone's peak level (dBFS, decaying 3 dB/s) on frames where Panda alone
    /// speaks, and how many such frames there were.
    echo_peak_db: f32,
    far_frames: u64,
    /// Levels (dBFS) of the last frames in a row where Panda alone speaks (see
    /// [`ECHO_RUN_FRAMES`]).
    echo_run: VecDeque<f32>,
    /// The capture's last [`LINEAR_LAG_SAMPLES`]: the linear output lags the capture by
    /// that much, and the double-talk detector compares the two over the same samples.
    capture_tail: [i16; LINEAR_LAG_SAMPLES],
    /// The last frame's [`Cancelled::no_echo`] (its changes are logged).
    no_echo: bool,
    /// A reference frame has been fed: from then on a capture frame without one counts
    /// as missing.
    fed_any: bool,
    /// Counters.
    pub stats: Arc<AecStats>,
}

impl EchoCanceller {
    /// A canceller whose delay search starts at `delay_hint_ms` (the output and input
    /// buffers' length, roughly).
    pub fn new(delay_hint_ms: u32, stats: Arc<AecStats>) -> Result<Self, AecError> {
        let format = AudioFormat::ten_ms(SAMPLE_RATE_HZ, 1);
        // High-pass and AEC3 only: noise suppression and automatic gain would change
        // what Whisper hears even when Panda is silent (accuracy first); the post filter
        // works at 48 kHz only.
        let pipeline = linear::builder(format, format)
            .enable_noise_suppression(false)
            .enable_gain_controller2(false)
            .enable_post_filter(false)
            .export_linear_output(true)
            .export_metrics(true)
            .initial_delay_ms(delay_hint_ms as i32)
            .build()
            .map_err(|e| AecError::Aec3(e.to_string()))?;
        Ok(Self {
            pipeline,
            render: VecDeque::with_capacity(SUBFRAME * 64),
            capture: vec![0.0; SUBFRAME],
            block: Vec::with_capacity(SUBFRAME),
            out: vec![0.0; SUBFRAME],
            since_render: u64::MAX,
            double_talk: DoubleTalk::default(),
            echo_peak_db: -120.0,
            far_frames: 0,
            echo_run: VecDeque::with_capacity(ECHO_RUN_FRAMES + 1),
            capture_tail: [0; LINEAR_LAG_SAMPLES],
            no_echo: false,
            fed_any: false,
            stats,
        })
    }

    /// Queues reference audio (16 kHz, [-1, 1]) played since the last call. Beyond
    /// [`RENDER_BACKLOG_MS`] the oldest is dropped and counted.
    pub fn render(&mut self, samples: &[f32]) {
        self.render.extend(samples);
        let max = RENDER_BACKLOG_MS * SAMPLE_RATE_HZ as usize / 1000;
        if self.render.len() > max {
            let excess = (self.render.len() - max).div_ceil(SUBFRAME) * SUBFRAME;
            let excess = excess.min(self.render.len());
            self.render.drain(..excess);
            self.stats
                .render_dropped
                .fetch_add((excess / SUBFRAME) as u64, Ordering::Relaxed);
        }
    }

    /// True while Panda's voice is (or was within [`ECHO_TAIL_MS`]) in the room.
    pub fn far_end_active(&self) -> bool {
        self.since_render <= ECHO_TAIL_MS / 10
    }

    /// Cancels the echo in one capture frame. Render audio queued so far is fed first.
    pub fn process(&mut self, frame: &[i16; FRAME_SAMPLES]) -> Result<Cancelled, AecError> {
        let err = |e: aec3::graph::GraphError| AecError::Aec3(e.to_string());
        let mut samples = Box::new([0i16; FRAME_SAMPLES]);
        let mut linear = Box::new([0i16; FRAME_SAMPLES]);
        let mut any_far = false;
        let mut fed_in_frame = 0u64;
        for (k, chunk) in frame.chunks_exact(SUBFRAME).enumerate() {
            // One render frame per capture frame keeps both streams on the same clock;
            // a backlog (bursty callbacks) is worked off one extra frame at a time.
            let feeds = if self.render.len() >= 3 * SUBFRAME {
                2
            } else {
                1
            };
            let mut loud = false;
            for _ in 0..feeds {
                if self.render.len() < SUBFRAME {
                    break;
                }
                fed_in_frame += 1;
                self.block.clear();
                self.block.extend(self.render.drain(..SUBFRAME));
                let energy = self.block.iter().map(|s| s * s).sum::<f32>() / SUBFRAME as f32;
                loud |= 10.0 * energy.max(1e-12).log10() > RENDER_ACTIVE_DBFS;
                self.pipeline
                    .handle_render_frame(&self.block)
                    .map_err(err)?;
            }
            if loud {
                self.since_render = 0;
            } else {
                self.since_render = self.since_render.saturating_add(1);
            }
            any_far |= self.far_end_active();
            for (c, s) in self.capture.iter_mut().zip(chunk) {
                *c = *s as f32 / 32768.0;
            }
            let produced = self
                .pipeline
                .process_capture_frame(&self.capture, &mut self.out)
                .map_err(err)?;
            let dst = &mut samples[k * SUBFRAME..(k + 1) * SUBFRAME];
            if produced {
                for (d, s) in dst.iter_mut().zip(&self.out) {
                    *d = f32_to_i16(*s);
                }
            } else {
                dst.copy_from_slice(chunk);
            }
            let lin = &mut linear[k * SUBFRAME..(k + 1) * SUBFRAME];
            match self.pipeline.try_pull_linear_output().map_err(err)? {
                Some(p) if p.payload().samples().len() == SUBFRAME => {
                    for (d, s) in lin.iter_mut().zip(p.payload().samples()) {
                        *d = f32_to_i16(*s);
                    }
                }
                _ => lin.copy_from_slice(dst),
            }
        }
        // Clock drift shows here, frame by frame (within a frame the reference arrives in
        // the output callback's bursts): fewer reference frames than capture frames, or
        // more. AEC3 follows the delay as it moves.
        let subframes = (FRAME_SAMPLES / SUBFRAME) as u64;
        if self.fed_any && fed_in_frame < subframes {
            self.stats
                .render_missing
                .fetch_add(subframes - fed_in_frame, Ordering::Relaxed);
        }
        if fed_in_frame > subframes {
            self.stats
                .render_caught_up
                .fetch_add(fed_in_frame - subframes, Ordering::Relaxed);
        }
        self.fed_any |= fed_in_frame > 0;
        if let Some(m) = self.pipeline.try_pull_metrics().map_err(err)? {
            let m = m.payload();
            let old = self
                .stats
                .delay_ms
                .swap(m.delay_ms.max(0) as u64, Ordering::Relaxed);
            // A jump of more than 20 ms is a new echo path (device re-opened, buffer
            // sizes changed), not the estimate settling.
            if old != 0 && (old as i64 - m.delay_ms as i64).abs() > 20 {
                self.stats.path_changes.fetch_add(1, Ordering::Relaxed);
            }
            let erle = (m.echo_return_loss_enhancement.max(0.0) * 100.0) as u64;
            self.stats.erle_centi_db.store(erle, Ordering::Relaxed);
        }
        self.stats.frames.fetch_add(1, Ordering::Relaxed);
        let energy = |x: &[i16]| x.iter().map(|s| (*s as f64).powi(2)).sum::<f64>();
        // The capture over the samples the linear output covers (it lags by
        // LINEAR_LAG_SAMPLES): compared frame against frame, a voice's onset — all of its
        // energy in the frame's last milliseconds — looked 5–20 dB quieter in the linear
        // output, as if the filter had taken it for echo, and a person's "hey" counted as
        // Panda heard in the microphone.
        let aligned =
            energy(&self.capture_tail) + energy(&frame[..FRAME_SAMPLES - LINEAR_LAG_SAMPLES]);
        self.capture_tail
            .copy_from_slice(&frame[FRAME_SAMPLES - LINEAR_LAG_SAMPLES..]);
        let linear_energy = energy(&linear[..]);
        let near_end = if any_far {
            self.double_talk.near_end(aligned, linear_energy)
        } else {
            self.double_talk.reset();
            false
        };
        if any_far && !near_end {
            let db = |x: f64| 10.0 * x.max(1e-12).log10() as f32;
            let level = db(energy(frame) / FRAME_SAMPLES as f64 / (32768.0 * 32768.0));
            // Once the microphone is known not to hear Panda, a frame counts as Panda
            // heard only where the filter takes something out of it (an echo path that
            // appeared: the filter converges on it within a second). A person's voice
            // passes a filter with no echo path unchanged, and the double-talk
            // detector's floor, never measured without an echo, creeps up under a
            // person who talks on for two seconds and stops flagging them.
            let removed_db = db(linear_energy / aligned.max(1e-9));
            let level = if self.no_echo && removed_db > -NEAR_END_MARGIN_DB {
                -120.0
            } else {
                level
            };
            if self.echo_run.len() == ECHO_RUN_FRAMES {
                self.echo_run.pop_front();
            }
            self.echo_run.push_back(level);
            // A peak: an echo's syllables keep it up through the pauses between them.
            // Of the quietest of a run of frames: an echo's syllable is loud for many
            // frames in a row, a person's onset that the double-talk detector has not
            // flagged yet for one or two.
            let run = if self.echo_run.len() == ECHO_RUN_FRAMES {
                self.echo_run.iter().copied().fold(f32::MAX, f32::min)
            } else {
                -120.0
            };
            self.echo_peak_db = (self.echo_peak_db - 0.1).max(run);
            self.far_frames += 1;
        } else {
            self.echo_run.clear();
        }
        // Learnt after a second of Panda speaking alone.
        let no_echo = self.far_frames >= 33 && self.echo_peak_db < NO_ECHO_DBFS;
        if no_echo != self.no_echo {
            self.no_echo = no_echo;
            tracing::info!(
                peak_dbfs = self.echo_peak_db,
                frames = self.far_frames,
                "echo canceller: the microphone {} Panda's voice",
                if no_echo { "does not hear" } else { "hears" }
            );
        }
        Ok(Cancelled {
            samples,
            linear: any_far.then_some(linear),
            near_end,
            no_echo,
        })
    }
}

/// The self-wake guard: Panda knows what it says and when, so a wake word detected while
/// its own voice says the keyword (or up to `tail` after) is its own echo, whatever is
/// left of it after the canceller. Playback marks the moments ([`Self::speaking_keyword`])
/// from the text of the chunk it plays; the listener asks ([`Self::active`]) on a detection.
#[derive(Debug)]
pub struct SelfWakeGuard {
    keyword: String,
    tail_ms: u64,
    epoch: std::time::Instant,
    /// A simulated clock (ms) instead of the wall clock: offline scenes run faster than
    /// real time (`panda bench aec`).
    clock: Option<Arc<AtomicU64>>,
    /// Until when (ms since `epoch`) detections are Panda's own; 0 = not now.
    until_ms: AtomicU64,
}

impl SelfWakeGuard {
    /// A guard for the wake phrase `phrase` (its last word is the keyword).
    pub fn new(phrase: &str, tail_ms: u32) -> Self {
        let (keyword, _) = crate::listen::listener::phrase_parts(phrase);
        Self {
            keyword,
            tail_ms: tail_ms as u64,
            epoch: std::time::Instant::now(),
            clock: None,
            until_ms: AtomicU64::new(0),
        }
    }

    /// The same guard on a simulated clock (ms, advanced by the caller).
    pub fn with_clock(phrase: &str, tail_ms: u32, clock: Arc<AtomicU64>) -> Self {
        Self {
            clock: Some(clock),
            ..Self::new(phrase, tail_ms)
        }
    }

    fn now_ms(&self) -> u64 {
        match &self.clock {
            Some(c) => c.load(Ordering::Relaxed),
            None => self.epoch.elapsed().as_millis() as u64,
        }
    }

    /// Playback's report: `played` samples (at `rate_hz`) of an answer whose keyword is
    /// said around the sample positions `at`. The place is estimated from letters, so
    /// [`KEYWORD_MARGIN_MS`] either side of it is guarded.
    pub fn mark(&self, played: u64, at: impl Iterator<Item = u64>, rate_hz: u32) {
        let rate = rate_hz.max(1) as u64;
        let margin = rate * KEYWORD_MARGIN_MS / 1000;
        for at in at {
            if played + margin >= at && played <= at + margin {
                self.speaking_keyword((at + margin - played) * 1000 / rate);
            }
        }
    }

    /// Where the keyword is said in `len` samples of speech reading `text`: the
    /// [`Self::mark`] positions for that speech.
    pub fn keyword_samples(&self, text: &str, len: u64) -> Vec<u64> {
        self.positions(text)
            .into_iter()
            .map(|f| (f * len as f64) as u64)
            .collect()
    }

    /// Where in `text` the keyword (or a near spelling: "pandas") is said, as fractions
    /// of the text's length (speech time is roughly proportional to letters).
    fn positions(&self, text: &str) -> Vec<f64> {
        let total = text.chars().count().max(1) as f64;
        let mut out = Vec::new();
        let mut at = 0usize;
        for word in text.split_inclusive(char::is_whitespace) {
            if crate::listen::listener::mentions_keyword(word, &self.keyword) {
                let mid = at + word.chars().count() / 2;
                out.push(mid as f64 / total);
            }
            at += word.chars().count();
        }
        out
    }

    /// Panda's voice says the keyword within the next `for_ms`: detections until then,
    /// and `tail_ms` after, are its own.
    pub fn speaking_keyword(&self, for_ms: u64) {
        let until = self.now_ms() + for_ms + self.tail_ms;
        self.until_ms.fetch_max(until, Ordering::Relaxed);
    }

    /// True while a detection would be Panda hearing itself.
    pub fn active(&self) -> bool {
        self.now_ms() < self.until_ms.load(Ordering::Relaxed)
    }
}

/// The reference as the canceller thread reads it: the current output's ring and a
/// resampler to 16 kHz.
struct Reference {
    feed: ReferenceFeed,
    current: Option<(ReferenceStream, Resampler)>,
    raw: Vec<f32>,
    resampled: Vec<f32>,
}

impl Reference {
    /// Everything played since the last call, at 16 kHz (switching to a newly opened
    /// output's stream first).
    fn take(&mut self) -> &[f32] {
        while let Ok(s) = self.feed.rx.try_recv() {
            let r = Resampler::new(s.rate_hz, SAMPLE_RATE_HZ);
            self.current = Some((s, r));
        }
        self.resampled.clear();
        if let Some((s, r)) = &mut self.current {
            let n = s.samples.slots();
            self.raw.clear();
            if let Ok(chunk) = s.samples.read_chunk(n) {
                let (a, b) = chunk.as_slices();
                self.raw.extend_from_slice(a);
                self.raw.extend_from_slice(b);
                chunk.commit_all();
            }
            r.process(&self.raw, &mut self.resampled);
        }
        &self.resampled
    }
}

/// What the canceller thread is connected to.
pub struct AecIo {
    /// Frames from the source (audio edge in).
    pub frames: mpsc::Receiver<AudioFrame>,
    /// Cancelled frames to the listener (audio edge out: full → dropped and counted).
    pub out: mpsc::Sender<AudioFrame>,
    /// The reference from playback.
    pub reference: ReferenceFeed,
    /// Stops the thread.
    pub root: CancellationToken,
}

/// Starts the canceller thread; it ends when the source's edge closes or `root` is
/// cancelled. A frame AEC3 rejects is passed on unprocessed (logged once): a deaf
/// appliance is worse than one that hears its own echo.
pub fn spawn(
    delay_hint_ms: u32,
    io: AecIo,
    stats: Arc<AecStats>,
) -> Result<std::thread::JoinHandle<()>, AecError> {
    let AecIo {
        mut frames,
        out,
        reference,
        root,
    } = io;
    let ref_dropped = reference.dropped.clone();
    let mut reference = Reference {
        feed: reference,
        current: None,
        raw: Vec::new(),
        resampled: Vec::new(),
    };
    // AEC3's graph is not `Send`: it is built on the thread that owns it, and the
    // build's result comes back before any audio flows.
    let (built_tx, built_rx) = std::sync::mpsc::sync_channel::<Result<(), AecError>>(1);
    let handle = std::thread::Builder::new()
        .name("panda-aec".into())
        .spawn(move || {
            let mut aec = match EchoCanceller::new(delay_hint_ms, stats.clone()) {
                Ok(a) => {
                    let _ = built_tx.send(Ok(()));
                    a
                }
                Err(e) => {
                    let _ = built_tx.send(Err(e));
                    return;
                }
            };
            let mut warned = false;
            while let Some(frame) = frames.blocking_recv() {
                if root.is_cancelled() {
                    break;
                }
                let played = reference.take();
                aec.render(played);
                let seq = frame.seq;
                let next = match aec.process(&frame.samples) {
                    Ok(c) => AudioFrame {
                        seq,
                        samples: c.samples,
                        linear: c.linear,
                        near_end: c.near_end,
                        no_echo: c.no_echo,
                    },
                    Err(e) => {
                        if !warned {
                            tracing::warn!(error = %e, "echo canceller failed on a frame; passing audio through");
                            warned = true;
                        }
                        frame
                    }
                };
                stats
                    .reference_dropped
                    .store(ref_dropped.load(Ordering::Relaxed), Ordering::Relaxed);
                if !stats.edge.offer(&out, next) {
                    break;
                }
            }
        })?;
    match built_rx.recv() {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(AecError::Aec3(
            "the canceller thread ended while starting".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A speech-like far end: noise through a resonator, syllable-rate envelope.
    fn far_end(n: usize, seed: u64) -> Vec<f32> {
        let mut x = seed;
        let mut y1 = 0.0f32;
        let mut y2 = 0.0f32;
        (0..n)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let w = (x % 2000) as f32 / 1000.0 - 1.0;
                let y = w + 1.6 * y1 - 0.8 * y2;
                y2 = y1;
                y1 = y;
                let env = (0.5
                    + 0.5 * (i as f32 * 2.0 * std::f32::consts::PI * 4.0 / 16000.0).sin())
                .powi(2);
                0.05 * y * env
            })
            .collect()
    }

    #[test]
    fn removes_a_delayed_echo_and_passes_silence_through() {
        let n = 16_000 * 8;
        let far = far_end(n, 7);
        // Echo: 40 ms late, attenuated, with a short decaying tail.
        let delay = 640;
        let mut mic = vec![0.0f32; n];
        for i in delay..n {
            mic[i] = 0.5 * far[i - delay] + 0.2 * far[i - delay - 40.min(i - delay)];
        }
        let mut aec = EchoCanceller::new(40, Arc::new(AecStats::default())).unwrap();
        let (mut e_in, mut e_out) = (0.0f64, 0.0f64);
        let mut linear_frames = 0;
        for (k, f) in mic.chunks_exact(FRAME_SAMPLES).enumerate() {
            let start = k * FRAME_SAMPLES;
            aec.render(&far[start..start + FRAME_SAMPLES]);
            let mut frame = [0i16; FRAME_SAMPLES];
            for (d, s) in frame.iter_mut().zip(f) {
                *d = f32_to_i16(*s);
            }
            let c = aec.process(&frame).unwrap();
            linear_frames += usize::from(c.linear.is_some());
            // Judge the last 3 s, after convergence.
            if start > 5 * 16_000 {
                e_in += frame.iter().map(|s| (*s as f64).powi(2)).sum::<f64>();
                e_out += c.samples.iter().map(|s| (*s as f64).powi(2)).sum::<f64>();
            }
        }
        let erle = 10.0 * (e_in / e_out.max(1.0)).log10();
        assert!(erle > 30.0, "ERLE {erle:.1} dB");
        assert!(
            linear_frames > 200,
            "the far end was active: {linear_frames}"
        );

        // Silence on both sides afterwards: the linear output stops after the tail.
        for _ in 0..40 {
            aec.render(&[0.0; FRAME_SAMPLES]);
            let c = aec.process(&[0; FRAME_SAMPLES]).unwrap();
            assert!(c.samples.iter().all(|s| s.abs() < 50));
        }
        assert!(!aec.far_end_active());
    }

    #[test]
    fn the_guard_finds_the_keyword_and_expires() {
        let g = SelfWakeGuard::new("hey panda", 50);
        let p = g.positions("The red panda eats bamboo, and pandas sleep.");
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0] > 0.1 && p[0] < 0.35 && p[1] > 0.55, "{p:?}");
        assert!(g.positions("Amanda ate a sandwich.").is_empty());
        assert!(!g.active());
        g.speaking_keyword(30);
        assert!(g.active());
        std::thread::sleep(std::time::Duration::from_millis(120));
        assert!(!g.active());
    }

    /// The lag of an output behind the capture, in samples (the best correlation).
    fn lag_of(linear: bool) -> usize {
        let mut aec = EchoCanceller::new(40, Arc::new(AecStats::default())).unwrap();
        let mut x = 12345u64;
        let (mut inp, mut out) = (Vec::new(), Vec::new());
        for _ in 0..100 {
            let mut f = [0i16; FRAME_SAMPLES];
            for s in f.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *s = ((x % 8000) as i32 - 4000) as i16;
            }
            // A far end unrelated to the capture: nothing to cancel, the outputs are
            // the capture, delayed.
            let r: Vec<f32> = (0..FRAME_SAMPLES)
                .map(|i| ((i * 7919) % 1000) as f32 / 5000.0 - 0.1)
                .collect();
            aec.render(&r);
            let c = aec.process(&f).unwrap();
            inp.extend_from_slice(&f);
            out.extend_from_slice(&c.linear.filter(|_| linear).unwrap_or(c.samples)[..]);
        }
        (0..400)
            .max_by_key(|&lag| {
                let num: f64 = (4800..inp.len() - 500)
                    .map(|i| inp[i] as f64 * out[i + lag] as f64)
                    .sum();
                num as i64
            })
            .unwrap()
    }

    #[test]
    fn the_outputs_lag_the_capture_by_fixed_amounts() {
        assert_eq!(lag_of(false), OUTPUT_LAG_SAMPLES);
        assert_eq!(lag_of(true), LINEAR_LAG_SAMPLES);
    }

    #[test]
    fn double_talk_is_a_rise_of_the_linear_output_over_its_echo_floor() {
        let mut dt = DoubleTalk::default();
        let cap = 1e6 * FRAME_SAMPLES as f64; // −30 dBFS
        let at = |db: f64| cap * 10f64.powf(db / 10.0);
        // Panda alone: the linear output 18 dB under the microphone, then 16 dB (the
        // echo path changed a little): never a person.
        assert!((0..100).all(|_| !dt.near_end(cap, at(-18.0))));
        assert!((0..30).all(|_| !dt.near_end(cap, at(-16.0))));
        // A person as loud as the echo lifts it to −3 dB: a person.
        assert!(dt.near_end(cap, at(-3.0)));
        // Too quiet to be anyone, whatever the ratio.
        assert!(!dt.near_end(1.0, 1.0));
        // No echo in the room at all (the linear output silent while Panda speaks): a
        // person, untouched by the filter, counts from the first frame.
        let mut quiet_room = DoubleTalk::default();
        assert!((0..50).all(|_| !quiet_room.near_end(1.0, 0.5)));
        assert!(quiet_room.near_end(cap, cap));
        // The floor follows a worse canceller up (2 dB/s), so a steady −8 dB is Panda
        // again after a few seconds.
        let later = (0..200).map(|_| dt.near_end(cap, at(-8.0))).last().unwrap();
        assert!(!later);
    }

    #[test]
    fn a_render_backlog_is_dropped_and_counted() {
        let stats = Arc::new(AecStats::default());
        let mut aec = EchoCanceller::new(0, stats.clone()).unwrap();
        aec.render(&vec![0.1; 16_000]);
        assert!(aec.render.len() <= RENDER_BACKLOG_MS * 16);
        assert!(stats.render_dropped.load(Ordering::Relaxed) >= 70);
    }
}
