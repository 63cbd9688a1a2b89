//! The listening path: wake word → voice activity → endpointing → speech-to-text.
//!
//! - [`embed`]: openWakeWord's speech embeddings (TensorFlow Lite) for the wake word.
//! - [`wake`]: rustpotter wake word detection and template building.
//! - [`wake_head`]: the network over speech embeddings that detects the phrase, and its trainer.
//! - [`wake_train`]: the default wake word's trained model (install time).
//! - [`vad`]: webrtc-vad frame classification.
//! - [`endpoint`]: the pure endpointing state machine.
//! - [`listener`]: the thread that owns the three above and mints turns.
//! - [`stt`]: the Whisper owner thread and its handle.
//! - [`transcriber`]: the question's engine: local Whisper, or a remote Wyoming ASR
//!   service with Whisper as fallback.

pub mod command;
pub mod embed;
pub mod endpoint;
pub mod listener;
pub mod stt;
pub mod templates;
pub mod transcriber;
pub mod vad;
pub mod wake;
pub mod wake_head;
pub mod wake_train;
