//! Audio in and out: everything that turns sound into the pipeline's 16 kHz mono 30 ms
//! [`AudioFrame`](crate::event::AudioFrame)s, and speech back into sound.
//!
//! - [`capture`]: the microphone through cpal. The cpal callback only copies into a
//!   pre-allocated lock-free ring; a DSP thread drains it.
//! - [`file`]: WAV (8/16/24/32-bit int, 32-bit float, any rate and channel count) and raw
//!   s16le from a path or stdin, paced in real time or as fast as the consumer takes them.
//! - [`dsp`]: down-mixing, windowed-sinc resampling, and framing — shared by all.
//! - [`aec`]: echo cancellation (WebRTC AEC3) between the source and the listener, with
//!   playback's own samples as the reference.
//! - [`synth`]: deterministic noise and reverberant rooms for the wake word's training set
//!   and the benches' evaluation sets.
//! - [`playback`]: the output thread — rodio on a sound card or a WAV file — that plays
//!   PCM chunks as they arrive and goes silent when the turn is cancelled.

pub mod aec;
pub mod capture;
pub mod device;
pub mod dsp;
pub mod earcon;
pub mod file;
pub mod playback;
pub mod synth;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;

use crate::event::AudioFrame;

/// Counters of a real-time source's audio edge.
#[derive(Debug, Default)]
pub struct EdgeStats {
    /// Frames handed to the pipeline.
    pub frames_sent: AtomicU64,
    /// Frames dropped because the edge was full (the listener fell behind).
    pub frames_dropped: AtomicU64,
}

impl EdgeStats {
    /// Offers a frame without waiting: a full edge drops it and counts the drop, as a
    /// microphone cannot wait. Returns false once the receiver is gone.
    pub fn offer(&self, tx: &mpsc::Sender<AudioFrame>, frame: AudioFrame) -> bool {
        match tx.try_send(frame) {
            Ok(()) => {
                self.frames_sent.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.frames_dropped.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

/// Lets go of a stream whose sound server died, on a throwaway thread. Closing such a
/// stream can block forever: when PulseAudio disappears, libpulse (under ALSA's pulse
/// plugin) may deadlock in its disconnect path, and cpal's drop joins that thread. The
/// owner thread must stay free to report the loss and re-open the device; a stuck
/// closer costs one idle thread per lost device.
pub(crate) fn abandon<T: Send + 'static>(what: &'static str, stream: T) {
    let spawned = std::thread::Builder::new()
        .name("panda-audio-close".into())
        .spawn(move || drop(stream));
    if let Err(e) = spawned {
        tracing::warn!(error = %e, what, "cannot close a lost audio stream; leaving it open");
    }
}

/// Errors from audio sources.
#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    /// The input could not be decoded; names the input and the problem.
    #[error("{path}: {problem}")]
    Decode {
        /// File path, or `-` for stdin.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// The input could not be opened or read.
    #[error("{path}: {source}")]
    Io {
        /// File path, or `-` for stdin.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// No capture device matched, or the audio host has none.
    #[error("no audio input device {name:?}: {problem}")]
    NoDevice {
        /// The device asked for.
        name: String,
        /// What the host said, and which devices it has.
        problem: String,
    },
    /// No playback device matched, or the audio host has none.
    #[error("no audio output device {name:?}: {problem}")]
    NoOutputDevice {
        /// The device asked for.
        name: String,
        /// What the host said, and which devices it has.
        problem: String,
    },
    /// The device exists but could not be opened or started, or failed while running.
    #[error("audio device {name:?} failed: {problem}")]
    Device {
        /// Device name.
        name: String,
        /// What went wrong.
        problem: String,
    },
}
