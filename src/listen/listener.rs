//! The listener stage: one thread (`panda-listener`) that owns the wake word detector,
//! the VAD and the endpointer, and turns 30 ms frames into wake events and utterances.
//!
//! It owns them because rustpotter and webrtc-vad keep per-stream state and are not
//! `Send`; they are built on this thread and never leave it. For every frame it runs the
//! wake word (always — it will also carry barge-in), and the VAD only while an utterance
//! is wanted. On a wake it mints the turn: a child of the root token.
//!
//! Edges: frames arrive on the audio edge (the source drops when it is full); utterances
//! leave on a control edge (`blocking_send`: the listener waits for speech-to-text to take
//! them); events go to the event edge (also waits, so nothing a consumer is told is lost).

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::endpoint::{Endpoint, EndpointParams, Endpointer};
use super::vad::Vad;
use super::wake::WakeDetector;
use crate::config::Config;
use crate::event::{AudioFrame, Event, FRAME_MS, FRAME_SAMPLES, Turn, Utterance};

/// Turn numbers are unique within the process.
static NEXT_TURN: AtomicU64 = AtomicU64::new(1);

/// What the listener needs from the outside, given at construction.
pub struct ListenerIo {
    /// Audio edge in.
    pub frames: mpsc::Receiver<AudioFrame>,
    /// Utterances out (control edge).
    pub utterances: mpsc::Sender<Utterance>,
    /// Events out.
    pub events: mpsc::Sender<Event>,
    /// Parent of every turn token; cancelled on shutdown.
    pub root: CancellationToken,
}

/// How the listener decides that a turn starts.
pub enum Trigger {
    /// A wake word detector (the appliance).
    Wake(Box<WakeDetector>),
    /// Every utterance is a turn (`panda listen --no-wake`, transcription of recordings).
    Always,
}

/// Runs the listener until the audio edge closes or `root` is cancelled. Build the
/// [`Trigger`] on the thread that runs this (see [`spawn`]).
pub fn run(cfg: &Config, mut trigger: Trigger, io: ListenerIo) {
    let mut vad = Vad::new(cfg.vad.mode);
    let mut ep = Endpointer::new(EndpointParams::from(&cfg.endpoint));
    let ListenerIo {
        mut frames,
        utterances,
        events,
        root,
    } = io;
    let mut turn: Option<Turn> = None;
    let mut last_seq = 0u64;
    let emit = |ev: Event| {
        let _ = events.blocking_send(ev);
    };
    loop {
        let frame = match frames.blocking_recv() {
            Some(f) if !root.is_cancelled() => f,
            _ => break,
        };
        last_seq = frame.seq;
        // A cancelled turn (barge-in, shutdown) stops collecting at once.
        if let Some(t) = &turn
            && t.token.is_cancelled()
            && ep.is_armed()
        {
            ep.disarm();
            emit(Event::Cancelled {
                turn: t.id,
                stage: "listener",
            });
            turn = None;
        }
        match &mut trigger {
            Trigger::Wake(det) => {
                if let Some(hit) = det.process(frame.seq, &frame.samples)
                    && !ep.is_armed()
                {
                    let t = new_turn(&root);
                    emit(Event::Wake {
                        turn: t.id,
                        name: hit.name,
                        score: hit.score,
                        at_ms: end_ms(&frame),
                    });
                    turn = Some(t);
                    ep.arm();
                }
            }
            Trigger::Always => {
                if !ep.is_armed() {
                    ep.arm();
                }
            }
        }
        let voiced = ep.is_armed() && vad.is_voiced(&frame.samples);
        if let Some(e) = ep.push(frame.seq, &frame.samples, voiced)
            && !deliver(e, &mut turn, &utterances, &root, &emit)
        {
            return;
        }
    }
    if let Some(e) = ep.finish(last_seq) {
        deliver(e, &mut turn, &utterances, &root, &emit);
    }
}

fn end_ms(frame: &AudioFrame) -> u64 {
    frame.start_ms() + FRAME_MS as u64
}

fn new_turn(root: &CancellationToken) -> Turn {
    Turn {
        id: NEXT_TURN.fetch_add(1, Ordering::Relaxed),
        token: root.child_token(),
    }
}

/// Maps an endpointer decision to events and (for a finished utterance) the STT edge.
/// Returns false when the STT edge is closed (shutdown).
fn deliver(
    e: Endpoint,
    turn: &mut Option<Turn>,
    utterances: &mpsc::Sender<Utterance>,
    root: &CancellationToken,
    emit: &impl Fn(Event),
) -> bool {
    let ms = |seq: u64| seq * FRAME_MS as u64;
    match e {
        Endpoint::SpeechStart { at_seq } => {
            let t = turn.get_or_insert_with(|| new_turn(root));
            emit(Event::SpeechStart {
                turn: t.id,
                at_ms: ms(at_seq),
            });
            true
        }
        Endpoint::NoSpeech { at_seq } => {
            if let Some(t) = turn.take() {
                emit(Event::NoSpeech {
                    turn: t.id,
                    at_ms: ms(at_seq),
                });
            }
            true
        }
        Endpoint::SpeechEnd {
            samples,
            start_seq,
            end_seq,
            reason,
        } => {
            let t = turn.take().unwrap_or_else(|| new_turn(root));
            emit(Event::SpeechEnd {
                turn: t.id,
                at_ms: ms(end_seq) + FRAME_MS as u64,
                reason,
            });
            debug_assert_eq!(samples.len() % FRAME_SAMPLES, 0);
            utterances
                .blocking_send(Utterance {
                    turn: t,
                    samples,
                    start_ms: ms(start_seq),
                    end: reason,
                })
                .is_ok()
        }
    }
}

/// Starts the listener thread. The wake word file is loaded on that thread (rustpotter is
/// not `Send`); a load error is returned here, before any audio flows.
pub fn spawn(
    cfg: Config,
    use_wake: bool,
    io: ListenerIo,
) -> Result<std::thread::JoinHandle<()>, super::wake::WakeError> {
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
    let handle = std::thread::Builder::new()
        .name("panda-listener".into())
        .spawn(move || {
            let trigger = if use_wake {
                match WakeDetector::load(&cfg.wake, &cfg.model_path(&cfg.wake.model)) {
                    Ok(d) => Trigger::Wake(Box::new(d)),
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                }
            } else {
                Trigger::Always
            };
            let _ = ready_tx.send(Ok(()));
            run(&cfg, trigger, io);
        })
        .expect("spawning a thread only fails when the OS is out of resources");
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(e)) => Err(e),
        Err(_) => Ok(handle),
    }
}
