//! The speaking path: text → sentences → normalised text → phonemes (espeak-ng) → speech
//! (Kokoro through ONNX Runtime) → PCM chunks for playback.
//!
//! - [`sentences`]: the streaming sentence splitter (pure).
//! - [`normalize`]: numbers, times, money, abbreviations, symbols → words (pure).
//! - [`phonemize`]: espeak-ng as a library through a small FFI of our own; one global
//!   instance behind a lock (espeak-ng keeps all state in C globals).
//! - [`kokoro`]: the Kokoro-82M synthesiser; whoever holds a [`kokoro::Kokoro`] owns its
//!   ONNX session (the TTS owner thread, or `panda models install` for the wake word).
//! - [`tts`]: the TTS owner thread: sentences in, PCM chunks out, the turn's token checked
//!   between chunks.

pub mod kokoro;
pub mod normalize;
pub mod phonemize;
pub mod sentences;
pub mod tts;
