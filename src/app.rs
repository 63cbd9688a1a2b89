//! Wiring: the only module that connects stages. It creates the bounded channels, the
//! root cancellation token and the task tracker, starts each stage with its dependencies,
//! and shuts them down in order.
//!
//! Today's pipeline is the listening path (`panda listen`):
//!
//! ```text
//!  source thread ──AUDIO_EDGE──▶ listener thread ──UTTERANCE_EDGE──▶ turn task ──▶ stt thread
//!        (file or cpal)             (wake, VAD, endpoint)              (async)        (whisper)
//!                    all stages ──EVENT_EDGE──▶ caller (JSON lines)
//! ```
//!
//! Shutdown: cancelling the root token stops the source; its sender drops, the listener's
//! `recv` returns `None`, it flushes and drops its senders, the turn task ends when the
//! utterance edge closes, and the event stream ends when every sender is gone.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::audio::capture::{CaptureStats, spawn_capture};
use crate::audio::file::{FileSpec, spawn_source};
use crate::audio::{AudioError, EdgeStats};
use crate::config::Config;
use crate::event::{AudioFrame, Event, Utterance};
use crate::listen::listener::{self, ListenerIo, WakeVerifier};
use crate::listen::stt::{self, SttError, SttHandle};
use crate::listen::wake::WakeError;

/// Audio edge, source → listener: 64 frames ≈ 1.9 s. When full, a real-time source
/// drops the newest frame and counts it; a batch (file) source waits.
pub const AUDIO_EDGE: usize = 64;
/// Control edge, listener → turn task: finished utterances. When full, the listener
/// waits (and the audio edge absorbs the delay, then drops).
pub const UTTERANCE_EDGE: usize = 2;
/// Event edge, stages → the consumer (CLI printer; later the status fan-out). When full,
/// stages wait: events are few (a handful per turn) and none may be lost.
pub const EVENT_EDGE: usize = 256;

/// Errors that stop a pipeline.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The audio source failed (bad file, no device).
    #[error(transparent)]
    Audio(#[from] AudioError),
    /// The wake word could not be loaded.
    #[error(transparent)]
    Wake(#[from] WakeError),
    /// Speech-to-text could not start.
    #[error(transparent)]
    Stt(#[from] SttError),
}

/// Where audio comes from.
#[derive(Debug, Clone)]
pub enum Input {
    /// A file or stdin.
    File(FileSpec),
    /// A capture device; with `retry`, a missing device is retried until shutdown.
    Device {
        /// cpal device name or `default`.
        name: String,
        /// Re-open delay after a failure (daemon mode).
        retry: Option<Duration>,
    },
}

/// `panda listen` options.
#[derive(Debug, Clone)]
pub struct ListenOptions {
    /// Audio source.
    pub input: Input,
    /// Require the wake word (otherwise every utterance is a turn).
    pub use_wake: bool,
    /// Run speech-to-text on utterances.
    pub transcribe: bool,
}

/// Counters at the end of a run.
#[derive(Debug, Default, Clone)]
pub struct ListenSummary {
    /// Frames the source delivered.
    pub frames: u64,
    /// Frames dropped on the audio edge.
    pub frames_dropped: u64,
}

/// Runs the listening pipeline until the input ends or `root` is cancelled, handing every
/// event to `on_event` in order.
pub async fn listen(
    cfg: &Config,
    opts: ListenOptions,
    root: CancellationToken,
    mut on_event: impl FnMut(&Event),
) -> Result<ListenSummary, AppError> {
    let verify = opts.use_wake && cfg.wake.verify;
    let stt = if opts.transcribe || verify {
        let model = cfg.model_path(&cfg.stt.model);
        let cfg = cfg.stt.clone();
        let (handle, _worker) = tokio::task::spawn_blocking(move || stt::spawn(&cfg, &model))
            .await
            .expect("the STT loader does not panic")?;
        Some(handle)
    } else {
        None
    };

    let (frame_tx, frame_rx) = mpsc::channel::<AudioFrame>(AUDIO_EDGE);
    let (utt_tx, utt_rx) = mpsc::channel::<Utterance>(UTTERANCE_EDGE);
    let (ev_tx, mut ev_rx) = mpsc::channel::<Event>(EVENT_EDGE);

    let verifier = stt
        .as_ref()
        .filter(|_| verify)
        .map(|h| WakeVerifier::new(h.clone(), &cfg.wake.phrase, cfg.wake.verify_window_ms));
    let stt = stt.filter(|_| opts.transcribe);
    let listener = listener::spawn(
        cfg.clone(),
        opts.use_wake,
        verifier,
        ListenerIo {
            frames: frame_rx,
            utterances: utt_tx,
            events: ev_tx.clone(),
            root: root.clone(),
        },
    )?;

    let tracker = TaskTracker::new();
    tracker.spawn(turns(utt_rx, stt, ev_tx));
    tracker.close();

    let file_stats = Arc::new(EdgeStats::default());
    let cap_stats = Arc::new(CaptureStats::default());
    let source = match opts.input {
        Input::File(spec) => spawn_source(spec, frame_tx, root.clone(), file_stats.clone()),
        Input::Device { name, retry } => spawn_capture(
            name,
            cfg.audio.ring_capacity_ms,
            retry,
            frame_tx,
            root.clone(),
            cap_stats.clone(),
        ),
    };

    while let Some(ev) = ev_rx.recv().await {
        on_event(&ev);
    }
    tracker.wait().await;
    let _ = tokio::task::spawn_blocking(move || listener.join()).await;
    let source_result = tokio::task::spawn_blocking(move || source.join())
        .await
        .expect("joining does not panic");
    match source_result {
        Ok(r) => r?,
        Err(_) => {
            return Err(AppError::Audio(AudioError::Device {
                name: "source".into(),
                problem: "the audio source thread panicked".into(),
            }));
        }
    }
    use std::sync::atomic::Ordering::Relaxed;
    Ok(ListenSummary {
        frames: file_stats.frames_sent.load(Relaxed) + cap_stats.edge.frames_sent.load(Relaxed),
        frames_dropped: file_stats.frames_dropped.load(Relaxed)
            + cap_stats.edge.frames_dropped.load(Relaxed),
    })
}

/// The turn task: one utterance at a time through speech-to-text. A cancelled turn ends
/// here at once (the STT worker lets go at its next abort check) and its text is dropped.
async fn turns(
    mut rx: mpsc::Receiver<Utterance>,
    stt: Option<SttHandle>,
    events: mpsc::Sender<Event>,
) {
    while let Some(u) = rx.recv().await {
        let Some(stt) = &stt else { continue };
        let turn = u.turn.id;
        let span = tracing::info_span!("turn", turn);
        let ev = match stt
            .transcribe(&u.samples, &u.turn.token)
            .instrument(span)
            .await
        {
            Ok(out) => Event::Transcript {
                turn,
                text: out.text,
                audio_ms: out.audio_ms,
                stt_ms: out.stt_ms,
                confidence: out.confidence,
            },
            Err(SttError::Cancelled) => Event::Cancelled { turn, stage: "stt" },
            Err(e) => Event::Error {
                stage: "stt",
                message: e.to_string(),
            },
        };
        if events.send(ev).await.is_err() {
            return;
        }
    }
}
