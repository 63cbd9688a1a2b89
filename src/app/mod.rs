//! Wiring: the only module that connects stages. It creates the bounded edges and the
//! root cancellation token, starts each stage with its dependencies (the blocks in
//! [`topology`]), and shuts them down in order ([`shutdown`]). The pipelines are short
//! compositions of those blocks:
//!
//! | command | composition | file |
//! |---|---|---|
//! | `panda listen` | listening → STT stage → caller | [`listen`](mod@listen) |
//! | `panda say` | text → speaking | [`say`](mod@say) |
//! | `panda ask` | question list → turn driver → speaking | [`ask`](mod@ask) |
//! | `panda run` | listening → STT stage → turn driver → speaking, status page | [`run`](mod@run) |
//!
//! `panda run`, the appliance:
//!
//! ```text
//!  source ─AUDIO_EDGE─▶ listener ─UTTERANCE_EDGE─▶ stt stage ─QUESTION_EDGE─▶ turn driver ─SENTENCE_EDGE─▶ tts ─PCM_EDGE─▶ playback
//!  (cpal / file)   (wake, VAD, endpoint)      (Whisper thread)             (think::driver:        (Kokoro)          (speaker / WAV)
//!                                                                           skills, agents, LLM,
//!  status page API ─ASK_EDGE──────────────────────────────────────────────▶  memory, timers)
//!  every stage ─EVENT_EDGE─▶ consumer (shutdown.rs): caller, status hub + metrics, barge-in,
//!                            watchdog; playback reports + timers ─HEARD_EDGE─▶ turn driver
//! ```
//!
//! With `--satellite` the satellite actor ([`crate::wyoming::satellite`]) sits on the
//! utterance edge (listener ─UTTERANCE_EDGE─▶ satellite ─UTTERANCE_EDGE─▶ stt stage): a
//! question goes to the hub when one is connected, and the hub's answer audio enters the
//! sentence edge as `Speech::Play`; the consumer passes it wake words, stop words and
//! playback's reports (`SATELLITE_REPORT_EDGE`).
//!
//! A new stage: its block in [`topology`] (it owns its thread or task and its edges), one
//! line in the compositions that use it; a new subcommand: a composition here and a file
//! in `src/cli/`.

mod ask;
mod listen;
mod run;
mod say;
pub mod shutdown;
pub mod systemd;
pub mod topology;
pub mod wyoming;

pub use ask::ask;
pub use listen::listen;
pub use run::run;
pub use say::say;
pub use topology::{check_voice, tts_options};

use std::time::Duration;

use crate::audio::AudioError;
use crate::audio::file::FileSpec;
use crate::audio::playback::Output;
use crate::listen::stt::SttError;
use crate::listen::wake::WakeError;
use crate::speak::kokoro::KokoroError;

/// Audio edge, source → listener: 64 frames ≈ 1.9 s. When full, a real-time source
/// drops the newest frame and counts it; a batch (file) source waits.
pub const AUDIO_EDGE: usize = 64;
/// Control edge, listener → STT stage: finished utterances. When full, the listener
/// waits (and the audio edge absorbs the delay, then drops).
pub const UTTERANCE_EDGE: usize = 2;
/// Event edge, stages → the consumer (CLI printer; later the status fan-out). When full,
/// stages wait: events are few (a handful per turn) and none may be lost.
pub const EVENT_EDGE: usize = 256;

/// Control edge, turn task (or `panda say`) → TTS: sentences. When full, the sender
/// waits; 16 sentences is more than any answer gets ahead of its speech.
pub const SENTENCE_EDGE: usize = 16;
/// Audio edge, TTS → playback: synthesised chunks (each up to a sentence, a few hundred
/// KB). When full, TTS waits — playback sets the pace, and synthesis runs at most this
/// many chunks ahead of the speaker, so memory stays bounded for any answer length.
pub const PCM_EDGE: usize = 4;

/// Control edge, event consumer → turn driver: what playback reports as heard (and timer
/// firings). When full, the consumer waits; one or two per turn.
pub const HEARD_EDGE: usize = 8;

/// Control edge, STT stage → turn driver: transcribed questions. When full, the STT stage
/// waits (the utterance edge behind it absorbs the delay); one per spoken turn.
pub const QUESTION_EDGE: usize = 2;

/// Control edge, turn driver → listener: follow-up requests (one per answer at most).
/// When full the driver waits; the listener reads it between frames, every 30 ms.
pub const LISTEN_CONTROL_EDGE: usize = 2;

/// Control edge, event consumer → playback: the wake earcon. When full, an earcon is
/// already waiting to play and the new one is dropped (counted in the log): two chimes
/// for one wake would only be noise.
pub const CUE_EDGE: usize = 1;

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
    /// Text-to-speech could not start.
    #[error(transparent)]
    Tts(#[from] KokoroError),
    /// The timer store could not be opened.
    #[error(transparent)]
    Timers(#[from] crate::think::timers::TimerError),
    /// The memory database or embedding model could not be opened.
    #[error(transparent)]
    Memory(#[from] crate::memory::MemoryError),
    /// The status page could not start.
    #[error(transparent)]
    Web(#[from] crate::web::WebError),
    /// The echo canceller could not start.
    #[error(transparent)]
    Aec(#[from] crate::audio::aec::AecError),
    /// The Wyoming server could not start (bad address, port in use).
    #[error(transparent)]
    Wyoming(#[from] crate::wyoming::server::ServerError),
    /// Satellite mode could not start (`[satellite] listen`: bad address, port in use).
    #[error("satellite: {0}")]
    Satellite(#[from] crate::wyoming::satellite::SatelliteError),
    /// The zeroconf announcement failed (`[wyoming] zeroconf`).
    #[error(transparent)]
    Zeroconf(#[from] crate::wyoming::zeroconf::ZeroconfError),
    /// A remote Wyoming client could not be set up (`[stt]`/`[tts] wyoming_url`).
    #[error("wyoming_url: {0}")]
    Remote(#[from] crate::wyoming::client::ClientError),
    /// A stage's thread panicked or could not be joined (names which).
    #[error("{0} stopped unexpectedly (a thread panicked)")]
    Thread(&'static str),
    /// There is nothing to say.
    #[error("nothing to say: the text is empty once emoji and control characters are removed")]
    NothingToSay,
}

/// What `panda say` speaks.
#[derive(Debug)]
pub enum SayInput {
    /// A whole text, known up front.
    Text(String),
    /// Lines as they arrive on stdin; each is spoken as soon as its sentences end.
    Stdin,
}

/// `panda say` options.
#[derive(Debug)]
pub struct SayOptions {
    /// Text source.
    pub input: SayInput,
    /// Where the speech goes.
    pub output: Output,
    /// Voice (default from `[tts] voice`).
    pub voice: String,
    /// Speaking rate.
    pub speed: f32,
}

/// Figures of one `panda say` run.
#[derive(Debug, Default, Clone)]
pub struct SaySummary {
    /// Start of synthesis → first audio at the output.
    pub first_audio_ms: Option<u64>,
    /// Audio played.
    pub played_ms: u64,
    /// Playback was cut short (Ctrl-C).
    pub interrupted: bool,
    /// Kokoro load and warm-up.
    pub load_ms: u64,
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

impl Input {
    /// A source that runs in real time: a device, or a file paced with `--realtime`.
    pub fn is_live(&self) -> bool {
        match self {
            Input::File(spec) => spec.realtime,
            Input::Device { .. } => true,
        }
    }
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

/// `panda ask` options.
pub struct AskOptions {
    /// Questions, one turn each, in order (a conversation).
    pub questions: Vec<String>,
    /// Speak the answers here; `None` prints only (`--no-speak`).
    pub speak: Option<Output>,
    /// Voice override (default: `[tts] voice` / the language's voice).
    pub voice: Option<String>,
    /// After the questions, stay until every pending timer has gone off, announcing each.
    pub wait_timers: bool,
}

/// Text questions, status page API → turn driver. A control edge: when full, the API
/// answers 503 (it never waits while holding a request).
pub const ASK_EDGE: usize = 4;

/// `panda run` options.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Microphone (device, retried) or a recording.
    pub input: Input,
    /// Speaker or a WAV file.
    pub output: Output,
    /// Require the wake word (otherwise every utterance is a question).
    pub use_wake: bool,
    /// Serve the status page (`[web]`).
    pub web: bool,
}

/// What a `panda run` did.
#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    /// Turns answered.
    pub turns: usize,
    /// The status page's address, when served.
    pub web_addr: Option<std::net::SocketAddr>,
    /// Audio frames dropped on the audio edge.
    pub frames_dropped: u64,
    /// The Wyoming server's address, when served (`[wyoming] listen`).
    pub wyoming_addr: Option<String>,
    /// Where the satellite waits for its hub (`--satellite`).
    pub satellite_addr: Option<std::net::SocketAddr>,
}
