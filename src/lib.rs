//! # Panda — a headless voice assistant for edge hardware
//!
//! # Layout
//!
//! ```text
//!  capture ──AudioFrame──▶ listener ──Utterance+turn token──▶ stt ──Transcript──▶ turn (think)
//!  (cpal thread → ring →    (own thread: wake word,           (whisper owner
//!   dsp thread, or file)     VAD, endpointing)                  thread, abortable)
//!
//!  (turn, or `panda say`) ──Sentence──▶ tts ──PcmChunk──▶ playback ──▶ speaker / WAV
//!                                      (kokoro owner      (own thread: rodio or WAV
//!                                       thread)            sink, flush on cancel)
//!        every stage ──Event──▶ bounded channel ──▶ CLI printer / (later) status page and metrics
//! ```
//!
//! The folders read as the pipeline:
//!
//! - [`audio`]: sources of 16 kHz mono 30 ms frames — the microphone through cpal
//!   ([`audio::capture`]), WAV/raw files and stdin ([`audio::file`]) — and the
//!   resampling/framing DSP they share ([`audio::dsp`]); and the way out, the playback
//!   thread ([`audio::playback`]).
//! - [`listen`]: the listening path — wake word ([`listen::wake`], rustpotter),
//!   voice activity ([`listen::vad`], webrtc-vad), the pure endpointing state machine
//!   ([`listen::endpoint`]), the listener thread that owns all three
//!   ([`listen::listener`]) and speech-to-text ([`listen::stt`], the whisper owner thread).
//! - [`speak`]: the speaking path — the streaming sentence splitter
//!   ([`speak::sentences`]), text normalisation ([`speak::normalize`]), espeak-ng phonemes
//!   ([`speak::phonemize`]), Kokoro synthesis ([`speak::kokoro`]) and the TTS owner
//!   thread ([`speak::tts`]).
//! - [`think`]: the thinking path — routing ([`think::router`]), the turn
//!   ([`think::turn`]), the streaming LLM client ([`think::llm`]), helper agents behind
//!   circuit breakers ([`think::agents`], [`think::breaker`]), timers
//!   ([`think::timers`]) and the conversation ([`think::conversation`]).
//! - [`memory`]: long-term memory — the SQLite owner thread ([`memory::store`]: WAL,
//!   migrations, group commit, FTS5), the MiniLM embedding owner thread
//!   ([`memory::embed`]) and the in-memory vector index ([`memory::index`]); the turn
//!   uses it for remember/recall/forget and for the facts it puts into the LLM prompt.
//! - [`models`]: `panda models install|verify` — fetching weights from package
//!   registries, checksums, and the CTranslate2 → ggml Whisper conversion.
//! - [`app`]: the only place that wires stages together (channels, root token, tasks).
//! - [`bench`]: `panda bench …` figures.
//! - [`config`], [`event`]: the figment configuration tree and the types stages exchange;
//!   [`numbers`]: English number words shared by speech and parsing.
//!
//! Arrows run downward only: `main → app → {audio, listen, think, speak} → {memory, models, config, event}`.
//! Stages never import each other; they meet in [`event`] types and in [`app`]. One
//! deliberate exception: the turn ([`think::turn`]) uses the speaking path's sentence
//! splitter ([`speak::sentences`]), a pure function module with no stage state, so that
//! the split that decides what is spoken first is the same code everywhere.

pub mod app;
pub mod audio;
pub mod bench;
pub mod config;
pub mod doctor;
pub mod event;
pub mod listen;
pub mod log;
pub mod memory;
pub mod metrics;
pub mod models;
pub mod numbers;
pub mod onnx;
pub mod speak;
pub mod think;
pub mod web;

/// sysexits-style process exit codes shared by the CLI and tests.
pub mod exit {
    /// The command was used wrongly (EX_USAGE): an unknown voice, a missing argument.
    pub const USAGE: i32 = 64;
    /// Bad input data (EX_DATAERR): an audio file that cannot be decoded.
    pub const DATA_ERR: i32 = 65;
    /// A required file (model, input) is missing (EX_NOINPUT).
    pub const NO_INPUT: i32 = 66;
    /// A required service or device is unavailable (EX_UNAVAILABLE).
    pub const UNAVAILABLE: i32 = 69;
    /// A state file cannot be created or read (EX_CANTCREAT).
    pub const CANT_CREATE: i32 = 73;
    /// Internal software error (EX_SOFTWARE).
    pub const SOFTWARE: i32 = 70;
    /// Bad configuration (EX_CONFIG); systemd's `RestartPreventExitStatus=78`.
    pub const CONFIG: i32 = 78;
}
