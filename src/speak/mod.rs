//! The speaking path: text → phonemes (espeak-ng) → speech (Kokoro through ONNX Runtime).
//!
//! - [`phonemize`]: espeak-ng as a library through a small FFI of our own; one global
//!   instance behind a lock (espeak-ng keeps all state in C globals).
//! - [`kokoro`]: the Kokoro-82M synthesiser; its ONNX session is owned by whoever holds the
//!   [`kokoro::Kokoro`] value (the TTS owner thread; today the wake word builder).

pub mod kokoro;
pub mod phonemize;
