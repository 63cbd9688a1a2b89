//! Configuration: one figment tree, read once at start-up on the main thread.
//!
//! Layers, lowest first: built-in defaults (the `Default` impls below) <
//! `/etc/panda/panda.toml` < `--config FILE` < `PANDA_*` environment variables in figment's
//! nested form (`PANDA_STT__MODEL=…` sets `[stt] model`). Every struct denies unknown fields
//! so a typo is an error naming the key, never a silently ignored setting. Units live in
//! field names (`_ms`, `_hz`). [`Config::validate`] checks ranges figment cannot express.
//!
//! Relative model paths are resolved against `[models] dir`, so one setting moves every
//! weight file (the systemd unit points it at the state directory).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// The system-wide configuration file, read when it exists.
pub const SYSTEM_CONFIG_PATH: &str = "/etc/panda/panda.toml";

/// `PANDA_*` variables that are not configuration keys.
const NON_CONFIG_ENV: &[&str] = &["CACHE_DIR"];

/// Errors while loading or validating the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A layer could not be read or parsed, or a key is unknown or of the wrong type.
    /// figment's message names the key and the layer (file or environment variable).
    #[error("configuration error: {0}")]
    Figment(#[from] Box<figment::Error>),
    /// A `--config` file was named but does not exist.
    #[error("configuration file {0} does not exist")]
    MissingFile(PathBuf),
    /// A `--config` path names a directory or another non-file (figment would silently
    /// read nothing from it).
    #[error("configuration file {0} is not a regular file")]
    NotAFile(PathBuf),
    /// A value parsed but is outside its allowed range.
    #[error("configuration error: `{key}`: {problem}")]
    Invalid {
        /// Dotted key, e.g. `vad.mode`.
        key: &'static str,
        /// What is wrong and what is allowed.
        problem: String,
    },
}

/// The whole configuration tree.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where model files live (`panda models install` writes there).
    pub models: ModelsConfig,
    /// Microphone capture.
    pub audio: AudioConfig,
    /// Wake word detection.
    pub wake: WakeConfig,
    /// Voice activity detection.
    pub vad: VadConfig,
    /// Endpointing: when an utterance starts and ends.
    pub endpoint: EndpointConfig,
    /// Speech-to-text.
    pub stt: SttConfig,
    /// Text-to-speech.
    pub tts: TtsConfig,
    /// Speech output.
    pub playback: PlaybackConfig,
    /// Echo cancellation: Panda's own voice out of the microphone.
    pub aec: AecConfig,
    /// The language model.
    pub llm: LlmConfig,
    /// Intent routing.
    pub router: RouterConfig,
    /// Conversation: language, history, filler.
    pub conversation: ConversationConfig,
    /// Where Panda keeps state (timers, memory).
    pub state: StateConfig,
    /// Long-term memory: SQLite store, embeddings, search.
    pub memory: MemoryConfig,
    /// The status page and its API (`panda run`).
    pub web: WebConfig,
    /// The daemon (`panda run`): shutdown and barge-in.
    pub run: RunConfig,
    /// Panda's engines as Wyoming services (Home Assistant).
    pub wyoming: WyomingConfig,
    /// Satellite mode: a hub (Home Assistant) answers what Panda hears.
    pub satellite: SatelliteConfig,
    /// Helper agents (`[[agents]]`), called over HTTP for the intents they serve.
    pub agents: Vec<AgentConfig>,
    /// Logging.
    pub log: LogConfig,
}

/// `[models]`: the model directory.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ModelsConfig {
    /// Directory holding every model file; relative paths elsewhere resolve against it.
    /// Relative to the working directory when itself relative.
    pub dir: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            models: ModelsConfig::default(),
            audio: AudioConfig::default(),
            wake: WakeConfig::default(),
            vad: VadConfig::default(),
            endpoint: EndpointConfig::default(),
            stt: SttConfig::default(),
            tts: TtsConfig::default(),
            playback: PlaybackConfig::default(),
            aec: AecConfig::default(),
            llm: LlmConfig::default(),
            router: RouterConfig::default(),
            conversation: ConversationConfig::default(),
            state: StateConfig::default(),
            memory: MemoryConfig::default(),
            web: WebConfig::default(),
            run: RunConfig::default(),
            wyoming: WyomingConfig::default(),
            satellite: SatelliteConfig::default(),
            agents: default_agents(),
            log: LogConfig::default(),
        }
    }
}

impl Default for ModelsConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("models"),
        }
    }
}

/// `[audio]`: the capture device.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AudioConfig {
    /// Input device name as cpal lists it (`panda listen --device` overrides it);
    /// `default` is the system default source.
    pub input_device: String,
    /// Capacity of the lock-free ring between the audio callback and the DSP thread.
    /// When the DSP thread falls this far behind, new samples are dropped and counted.
    pub ring_capacity_ms: u32,
    /// Delay before re-opening a capture device that failed or disappeared (daemon mode).
    pub retry_delay_ms: u64,
}

impl Default for AudioConfig {
    fn default() -> Self {
        Self {
            input_device: "default".into(),
            ring_capacity_ms: 2000,
            retry_delay_ms: 2000,
        }
    }
}

/// `[wake]`: the wake word.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WakeConfig {
    /// Wake word file, relative to `[models] dir` unless absolute: rustpotter `.rpw` (a
    /// trained model, as installed, or templates), or a head over openWakeWord speech
    /// embeddings `.oww` (`wake/hey_panda.oww` from `panda models install --wake-head`;
    /// `threshold` then applies to its 0–1 score).
    pub model: PathBuf,
    /// DTW templates of the phrase (installed beside the model), a second detector with
    /// its own threshold beside `model` when the file exists; empty to ignore.
    pub templates: PathBuf,
    /// Minimum score (0–1) for a template detection (`templates`, `owner_model`, or a
    /// template file given as `model`).
    pub templates_threshold: f32,
    /// Templates of the owner's own voice (`panda enroll` writes them here), used with
    /// `templates` when the file exists; empty to ignore.
    pub owner_model: PathBuf,
    /// Minimum detector score (0–1) for a detection. The installed model is set for
    /// recall (0.35: 88 % of unseen noisy speakers at 124 detections an hour of other
    /// speech, `panda bench wake --first-stage`); the second-stage check gives precision.
    pub threshold: f32,
    /// Minimum score (0–1) against the averaged template before the per-template
    /// comparison runs (a cheap pre-filter); 0 disables it.
    pub avg_threshold: f32,
    /// Minimum number of consecutive positive frames in a detection.
    pub min_scores: usize,
    /// Emit the detection as soon as `min_scores` is reached instead of waiting for the
    /// score peak. Measured: same scores, detection ~600 ms earlier, so the words spoken
    /// right after "hey panda" are still in the pre-roll.
    pub eager: bool,
    /// After a detection, further detections are ignored for this long (one utterance of
    /// "hey panda" must give exactly one wake).
    pub refractory_ms: u64,
    /// Compare templates only on frames with voice (rustpotter's energy gate): idle
    /// listening in a quiet room then costs almost nothing.
    pub vad_gate: bool,
    /// The wake phrase as spoken; its last word is what the second-stage check listens for.
    pub phrase: String,
    /// Second-stage check: Whisper on the audio before a template detection must hear the
    /// phrase's last word. Templates give recall, this gives precision.
    pub verify: bool,
    /// Audio the second-stage check transcribes, ending `verify_delay_ms` after the
    /// detection.
    pub verify_window_ms: u64,
    /// The second-stage check waits this long after a template detection, so that it
    /// hears the whole phrase: an eager detection fires while "panda" is still being
    /// said, and Whisper cannot confirm half a word.
    pub verify_delay_ms: u64,
    /// A check that heard words but not the phrase looks once more at this much audio
    /// before its window (same end): a detection that fired late, on a question said
    /// straight after the phrase, had the phrase at or before its window's start. 0: never.
    pub verify_lookback_ms: u64,
    /// Acknowledge a wake with a short chime on the speaker (`panda run` on a sound card;
    /// never into a WAV file). The microphone's VAD is held while it plays, so the chime
    /// is never taken for the question.
    pub earcon: bool,
    /// A WAV file to play as the chime instead of the built-in two-tone one (relative to
    /// `[models] dir` unless absolute; empty for the built-in one). At most 2 s.
    pub earcon_file: PathBuf,
}

impl Default for WakeConfig {
    fn default() -> Self {
        Self {
            model: PathBuf::from("wake/hey_panda.rpw"),
            templates: PathBuf::from("wake/hey_panda_templates.rpw"),
            templates_threshold: 0.5,
            owner_model: PathBuf::from("wake/owner.rpw"),
            threshold: 0.35,
            avg_threshold: 0.0,
            min_scores: 5,
            eager: true,
            refractory_ms: 2000,
            vad_gate: true,
            phrase: "hey panda".into(),
            verify: true,
            verify_window_ms: 1500,
            verify_delay_ms: 300,
            verify_lookback_ms: 1000,
            earcon: true,
            earcon_file: PathBuf::new(),
        }
    }
}

/// `[vad]`: webrtc-vad.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct VadConfig {
    /// Aggressiveness 0–3: 0 lets most sound count as speech, 3 is strictest.
    pub mode: u8,
}

impl Default for VadConfig {
    fn default() -> Self {
        Self { mode: 2 }
    }
}

/// `[endpoint]`: utterance boundaries after the wake word.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EndpointConfig {
    /// Audio kept from before the detected speech start (so soft onsets, and words spoken
    /// straight after the wake word before it was detected, are not clipped).
    pub pre_roll_ms: u64,
    /// Voiced audio needed in a row before speech counts as started.
    pub speech_start_ms: u64,
    /// Silence after speech that ends the utterance. The level gate counts a soft word
    /// ending as silence too, so 800 ms ended a question at a 600 ms pause inside it
    /// ("Set a timer … for ten minutes" heard as "Set a timer."); 900 ms lets people
    /// pause mid-sentence for 100 ms more latency.
    pub hangover_ms: u64,
    /// An utterance is cut here even if the speaker goes on.
    pub max_utterance_ms: u64,
    /// After a wake word, how long the question has to start (people pause after a wake
    /// word, waiting for the device to show it heard them), counted from the earcon — the
    /// moment the wake word check accepted the detection; then a `no_question` event and
    /// back to idle. (`no_speech_timeout_ms` is the old name.)
    #[serde(alias = "no_speech_timeout_ms")]
    pub question_timeout_ms: u64,
    /// Voicing that runs on from a wake detection for at most this long is the wake
    /// phrase's own tail, not the question; longer, it is a question said in the same
    /// breath.
    pub wake_tail_ms: u64,
    /// A question said in the same breath as the wake word is transcribed from this long
    /// before the detection (the wake phrase, dropped from the transcript afterwards), so
    /// that Whisper hears whole words.
    pub wake_lookback_ms: u64,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        Self {
            pre_roll_ms: 500,
            speech_start_ms: 90,
            hangover_ms: 900,
            max_utterance_ms: 15_000,
            question_timeout_ms: 5_000,
            wake_tail_ms: 600,
            wake_lookback_ms: 1_000,
        }
    }
}

/// `[stt]`: Whisper.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SttConfig {
    /// ggml Whisper model for questions, relative to `[models] dir` unless absolute.
    /// `whisper/ggml-base.bin` (installed, multilingual, told the language) makes fewer
    /// word errors on the recorded human clips (3.6 % against 5.4 %) and on accented
    /// English, about as many on `panda bench wake`'s noisy questions (85.4 % heard
    /// against 85.0 %), for twice the time, and mishears espeak's voices that tiny.en
    /// hears ("What time is it?" → "What I will it?"): tiny.en stays the default until
    /// an evaluation on more people's voices says otherwise.
    pub model: PathBuf,
    /// The model for the wake word's second-stage check and for stop word candidates over
    /// an answer (empty: `model`). Both run often and someone waits on a yes or no, so a
    /// small model: tiny.en checks a wake in ~0.2 s. `whisper/ggml-tiny.en-q8_0.bin` (also
    /// installed) is 22 % faster at the same word errors on the recorded clips but
    /// misheard a synthetic question the f16 file hears, so f16 stays (accuracy first).
    pub fast_model: PathBuf,
    /// Spoken language code (`en`, `de`, …) or `auto` (multilingual models only).
    pub language: String,
    /// 0 or 1: greedy decoding; 2 and more: beam search with this many beams (English
    /// questions; the wake word's check is always greedy). 5 beams: 3.6 % word errors on
    /// the 19 recorded human clips against 5.4 % greedy, p50 1079 ms against 881 ms
    /// (`panda bench stt`); 86.9 % of the wake bench's questions heard against 86.2 %.
    pub beam_size: u32,
    /// `beam_size` for `multilingual_model` (every language but English). Beam search
    /// earns its time there: on the recorded French prompts Whisper base makes 10.8 %
    /// word errors with 5 beams against 13.8 % greedy (+17 % time), Spanish 11.5 % vs
    /// 12.0 % (`panda bench stt`).
    pub multilingual_beam_size: u32,
    /// CPU threads for whisper.cpp; 0 picks the number of cores.
    pub threads: u32,
    /// Size the encoder window to the utterance instead of whisper's fixed 30 s. Faster
    /// for short commands but off by default: on recorded human speech it made 2.5× the
    /// word errors of the full window (sentences repeated, words dropped). Accuracy first.
    pub dynamic_audio_ctx: bool,
    /// whisper.cpp's flash attention (CPU and GPU): same words, less time in the encoder
    /// (`panda bench stt` prints both).
    pub flash_attn: bool,
    /// The model for every language but English when `model` is English-only (relative
    /// to `[models] dir` unless absolute; empty: English only). Loaded when the
    /// conversation first switches language ("speak French"), or at start when
    /// `language` is not English.
    pub multilingual_model: PathBuf,
    /// Use the GPU when Panda was built with the `cuda` feature.
    pub gpu: bool,
    /// Transcripts whose mean token probability is below this are discarded as noise.
    /// Measured on tiny.en: recorded speech 0.45–0.95, noise and non-words 0.15–0.17.
    pub min_confidence: f32,
    /// Which engine transcribes questions: `local` (Whisper here) or `wyoming` (the
    /// Wyoming ASR service at `wyoming_url`, e.g. wyoming-faster-whisper or another
    /// Panda's `panda serve` on a bigger box). The local model stays loaded either way:
    /// the wake word's check uses it, and it transcribes while the remote fails (a
    /// breaker stops trying a failing remote for 5 s, doubling up to 5 min).
    pub backend: Backend,
    /// `tcp://HOST:PORT` of the Wyoming ASR service (`backend = "wyoming"`).
    pub wyoming_url: String,
    /// Longest wait for the remote transcript (connect, send, answer); past it the
    /// local Whisper transcribes the question.
    pub wyoming_timeout_ms: u64,
}

/// `[stt] backend`, `[tts] backend`: which engine serves.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// The model on this machine (Whisper, Kokoro).
    #[default]
    Local,
    /// A Wyoming service, the local model as fallback.
    Wyoming,
}

impl SttConfig {
    /// Beam width for `lang`: beam search earns its time in the other languages (see
    /// `multilingual_beam_size`); English keeps `beam_size`.
    pub fn beam_for(&self, lang: &str) -> u32 {
        if lang == "en" {
            self.beam_size
        } else {
            self.multilingual_beam_size
        }
    }

    /// Threads Whisper runs on: `threads`, or every core when it is 0.
    pub fn whisper_threads(&self) -> usize {
        if self.threads == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            self.threads as usize
        }
    }
}

impl Default for SttConfig {
    fn default() -> Self {
        Self {
            model: PathBuf::from("whisper/ggml-tiny.en.bin"),
            fast_model: PathBuf::from("whisper/ggml-tiny.en.bin"),
            language: "en".into(),
            beam_size: 5,
            multilingual_beam_size: 5,
            threads: 0,
            dynamic_audio_ctx: false,
            flash_attn: false,
            multilingual_model: PathBuf::from("whisper/ggml-base.bin"),
            gpu: true,
            min_confidence: 0.3,
            backend: Backend::Local,
            wyoming_url: "tcp://127.0.0.1:10300".into(),
            wyoming_timeout_ms: 10_000,
        }
    }
}

/// Speaking rates Kokoro renders intelligibly (`[tts] speed`, `panda say --speed`).
pub const SPEED_RANGE: std::ops::RangeInclusive<f32> = 0.5..=2.0;

/// `[tts]`: Kokoro text-to-speech.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TtsConfig {
    /// Directory with `kokoro-v1.0.int8.onnx`, `vocab.json` and `voices/`, relative to
    /// `[models] dir` unless absolute.
    pub model_dir: PathBuf,
    /// Voice (`panda voices` lists them; the first letter names the language).
    pub voice: String,
    /// The voice for each language a conversation can switch to ("speak French"), by
    /// language code: `{ fr = "af_heart" }`. A language not named here speaks in its
    /// default voice (`panda voices` lists each language's). A voice of another language
    /// reads the words as this language is read (espeak-ng's phonemes for it) in its own
    /// timbre — an accent, but understood.
    pub language_voices: BTreeMap<String, String>,
    /// Speaking rate: 1.0 is normal, 0.5–2.0 allowed.
    pub speed: f32,
    /// ONNX Runtime intra-op threads; 0 = all cores.
    pub threads: u32,
    /// Use the CUDA execution provider when built with the `cuda` feature (falls back to
    /// the CPU with one warning when it cannot).
    pub gpu: bool,
    /// Speak the first sentence of an answer as a short first fragment of about this many
    /// words (ending at a clause mark or before a conjunction or preposition) and the
    /// rest, so the first audio comes sooner; 0 speaks it whole.
    pub first_fragment_words: u32,
    /// A sentence without an end is cut at a clause mark or word after this many
    /// characters, so a run-on answer cannot hold speech back.
    pub max_sentence_chars: u32,
    /// Which engine speaks answers: `local` (Kokoro here) or `wyoming` (the Wyoming TTS
    /// service at `wyoming_url`, e.g. wyoming-piper or another Panda's `panda serve`).
    /// Kokoro stays loaded and speaks a sentence whenever the remote fails (a breaker
    /// stops trying it for 5 s, doubling up to 5 min), and every sentence in a voice
    /// other than `voice` (the remote speaks one voice: a conversation switched to
    /// another language is spoken here).
    pub backend: Backend,
    /// `tcp://HOST:PORT` of the Wyoming TTS service (`backend = "wyoming"`).
    pub wyoming_url: String,
    /// The remote voice's name; empty: the server's default.
    pub wyoming_voice: String,
    /// Longest wait for one sentence's whole synthesis; past it Kokoro speaks it.
    pub wyoming_timeout_ms: u64,
}

impl Default for TtsConfig {
    fn default() -> Self {
        Self {
            model_dir: PathBuf::from("kokoro"),
            voice: "af_heart".into(),
            language_voices: BTreeMap::new(),
            speed: 1.0,
            threads: 0,
            gpu: true,
            first_fragment_words: 4,
            max_sentence_chars: 300,
            backend: Backend::Local,
            wyoming_url: "tcp://127.0.0.1:10200".into(),
            wyoming_voice: String::new(),
            wyoming_timeout_ms: 10_000,
        }
    }
}

/// `[playback]`: the speaker.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PlaybackConfig {
    /// Output device name as cpal lists it; `default` is the system default sink.
    pub output_device: String,
    /// Output buffer: the most audio that still plays after a barge-in flush. Smaller is
    /// snappier but risks underruns on a busy machine.
    pub buffer_ms: u32,
}

impl Default for PlaybackConfig {
    fn default() -> Self {
        Self {
            output_device: "default".into(),
            buffer_ms: 40,
        }
    }
}

/// `[aec]`: acoustic echo cancellation (WebRTC AEC3 with playback's samples as the
/// reference), so that Panda neither hears nor wakes itself and a person can talk over it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AecConfig {
    /// Cancel the echo when Panda listens on a microphone and speaks on a sound card
    /// (`panda run`); never for recordings or WAV answers, where there is no echo path.
    pub enabled: bool,
    /// Where AEC3's delay search starts: the time from a sample leaving playback to its
    /// echo reaching the canceller (output buffer, sound server, capture buffer). AEC3
    /// finds and tracks the real delay; a good hint only makes it converge sooner.
    pub delay_hint_ms: u32,
    /// Ignore a wake word detected while Panda's own answer says the wake phrase's
    /// keyword (Panda knows what it is saying and when), up to `guard_tail_ms` after.
    pub self_wake_guard: bool,
    /// How long after Panda said the keyword a detection is still its own echo (room
    /// reverberation, capture and detection latency).
    pub guard_tail_ms: u32,
    /// Words that stop an answer without the wake word, said while Panda speaks (a short
    /// utterance, transcribed, that is one of these and little else). Empty: only
    /// "hey panda, stop" stops an answer.
    pub stop_words: Vec<String>,
}

impl Default for AecConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            delay_hint_ms: 80,
            self_wake_guard: true,
            guard_tail_ms: 600,
            stop_words: vec!["stop".into(), "cancel".into(), "quiet".into()],
        }
    }
}

/// The LLM server's protocol.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LlmBackend {
    /// Ollama's native `/api/chat`, NDJSON stream.
    Ollama,
    /// OpenAI-compatible `/v1/chat/completions`, server-sent events (llama.cpp's
    /// `llama-server`, vLLM, LocalAI, …).
    Openai,
}

/// `[llm]`: the language model server.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LlmConfig {
    /// Use a language model for open questions (built-in skills work without one).
    pub enabled: bool,
    /// Protocol: `ollama` or `openai`.
    pub backend: LlmBackend,
    /// Server base URL (no path).
    pub url: String,
    /// Model name as the server knows it.
    pub model: String,
    /// Sampling temperature.
    pub temperature: f32,
    /// Longest answer, in tokens (spoken answers should be short).
    pub max_tokens: u32,
    /// Ollama: keep the model loaded this long after a request.
    pub keep_alive_s: u64,
    /// TCP connect timeout (shared HTTP client).
    pub connect_timeout_ms: u64,
    /// Request → first token; one retry happens inside this budget's repeat.
    pub first_token_timeout_ms: u64,
    /// Request → end of the answer.
    pub answer_timeout_ms: u64,
    /// Longest stream line accepted; a longer one fails the answer (bounded buffers).
    pub max_line_bytes: usize,
}

impl Default for LlmConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            backend: LlmBackend::Openai,
            url: "http://127.0.0.1:8081".into(),
            model: "smollm2-135m-instruct".into(),
            temperature: 0.3,
            max_tokens: 200,
            keep_alive_s: 600,
            connect_timeout_ms: 1000,
            first_token_timeout_ms: 10_000,
            answer_timeout_ms: 30_000,
            max_line_bytes: 1 << 20,
        }
    }
}

/// `[router]`: intent matching.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RouterConfig {
    /// Lowest match score (0–1) that routes to a skill or agent; below it the utterance
    /// goes to the language model.
    pub min_confidence: f32,
    /// Normalised utterances whose route is remembered (LRU).
    pub cache_entries: usize,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            min_confidence: 0.75,
            cache_entries: 512,
        }
    }
}

/// `[conversation]`: language, history and filler.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ConversationConfig {
    /// Language Panda starts in (`en`, `es`, `fr`, `hi`, `it`, `ja`, `pt`, `zh`).
    pub language: String,
    /// Who Panda is, for the system prompt.
    pub persona: String,
    /// History kept for the LLM, in (estimated) tokens; older turns fold into a summary.
    pub history_tokens: usize,
    /// Say a short filler when nothing has been said this long after the question.
    pub filler_after_ms: u64,
    /// Longest answer spoken, in characters (~15 per second of speech). An LLM answer
    /// that runs past it (a server ignoring `max_tokens`) is cut at a sentence end, the
    /// stream is closed and Panda says it stops there; what is kept is bounded alike.
    pub max_answer_chars: usize,
    /// Longest answer spoken, in sentences (the same cut).
    pub max_answer_sentences: usize,
    /// After an answer that was heard whole, listen this long for a follow-up without the
    /// wake word (0: only after an answer that asks something back, i.e. ends in "?",
    /// and then for `[endpoint] question_timeout_ms`). Silence returns to idle.
    pub follow_up_ms: u64,
}

impl Default for ConversationConfig {
    fn default() -> Self {
        Self {
            language: "en".into(),
            persona: "You are Panda, a friendly voice assistant on a small speaker. Answer in \
                      one to three short spoken sentences, without lists or markdown."
                .into(),
            history_tokens: 1500,
            filler_after_ms: 1500,
            max_answer_chars: 1500,
            max_answer_sentences: 30,
            follow_up_ms: 0,
        }
    }
}

/// `[state]`: Panda's own files.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// Directory for timers and memory (the systemd unit sets `/var/lib/panda`).
    pub dir: PathBuf,
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            dir: default_state_dir(),
        }
    }
}

/// Where a user's Panda keeps its state when nothing says otherwise: the XDG state
/// directory (`$XDG_STATE_HOME/panda`, else `~/.local/state/panda`) — never the current
/// directory, so a checkout or a working directory never collects timers and memories.
/// The service sets `/var/lib/panda` (systemd's `StateDirectory`).
pub fn default_state_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("panda");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(home).join(".local/state/panda");
    }
    PathBuf::from("/var/lib/panda")
}

/// `[memory]`: long-term memory (facts, identity, past turns) and how it is searched.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryConfig {
    /// Use memory: the remember/recall/forget skills, and relevant memories in the LLM
    /// prompt. Off: Panda keeps nothing between runs but timers.
    pub enabled: bool,
    /// The SQLite database; relative to `[state] dir` when relative
    /// (env `PANDA_MEMORY__PATH`).
    pub path: PathBuf,
    /// all-MiniLM-L6-v2 int8 ONNX model, relative to `[models] dir`.
    pub model: PathBuf,
    /// Its tokenizer (`tokenizer.json`), relative to `[models] dir`.
    pub tokenizer: PathBuf,
    /// ONNX Runtime threads for embeddings (each embedding is a few milliseconds; one
    /// thread leaves the cores to Whisper and Kokoro).
    pub threads: usize,
    /// Texts embedded per model call when storing many.
    pub batch_size: usize,
    /// Tokens the embedding reads (longer texts are stored whole; their embedding covers
    /// the start). The model was trained on 256.
    pub max_tokens: usize,
    /// Query embeddings kept in the LRU cache.
    pub query_cache_entries: usize,
    /// Vectors rescored exactly after the coarse binary scan; more is slower and closer
    /// to an exact search (`panda bench memory` prints the recall).
    pub candidates: usize,
    /// Cosine similarity at or above which a memory is relevant (recall answers and the
    /// LLM prompt). MiniLM gives ~0.5–0.8 for paraphrases, < 0.15 for unrelated text.
    pub min_similarity: f32,
    /// Memories put into the LLM prompt of each turn (0: none).
    pub prompt_memories: usize,
    /// Store every exchange (question and the answer as heard) as a `turn` memory.
    pub store_turns: bool,
    /// Largest text stored, in bytes.
    pub max_text_bytes: usize,
    /// Identity facts seeded once into a new database (who Panda is, who lives here).
    pub identity: Vec<String>,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            path: PathBuf::from("memory.sqlite3"),
            model: PathBuf::from("minilm/model.onnx"),
            tokenizer: PathBuf::from("minilm/tokenizer.json"),
            threads: 1,
            batch_size: 32,
            max_tokens: 256,
            query_cache_entries: 512,
            candidates: 400,
            min_similarity: 0.35,
            prompt_memories: 3,
            store_turns: true,
            max_text_bytes: 4 * 1024 * 1024,
            identity: vec![
                "Panda is a voice assistant that runs entirely on this device.".into(),
                "What Panda hears and remembers stays on this device.".into(),
            ],
        }
    }
}

/// `[wyoming]`: Panda's Whisper, Kokoro and wake word served over the Wyoming protocol
/// (Home Assistant's: its Wyoming integration adds Panda as a speech-to-text, text-to-
/// speech and wake word service). Wyoming has no authentication: anyone who can reach
/// the port can use the models, so it listens on loopback unless told otherwise.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WyomingConfig {
    /// Where `panda run` serves beside the appliance, and `panda serve` when `--wyoming`
    /// is not given (`tcp://HOST:PORT`, e.g. `tcp://127.0.0.1:10300`). Empty: `panda run`
    /// does not serve; `panda serve` uses `tcp://127.0.0.1:10300`.
    pub listen: String,
    /// What is served: any of `asr` (Whisper), `tts` (Kokoro), `wake` (the wake word).
    pub services: Vec<String>,
    /// Connections served at once; one more is answered `error` and closed.
    pub max_connections: u32,
    /// A connection that sends nothing for this long is closed (Home Assistant opens one
    /// per request; a satellite pings every few seconds).
    pub idle_timeout_ms: u64,
    /// Longest audio one `transcribe` takes; longer is answered `error`.
    pub max_audio_ms: u64,
    /// Announce the server over zeroconf (`_wyoming._tcp.local.`) so Home Assistant
    /// discovers it by itself. Off by default: Wyoming has no authentication.
    pub zeroconf: bool,
    /// The name announced (what Home Assistant shows); empty: `panda-<host name>`.
    pub zeroconf_name: String,
}

impl Default for WyomingConfig {
    fn default() -> Self {
        Self {
            listen: String::new(),
            services: vec!["asr".into(), "tts".into(), "wake".into()],
            max_connections: 32,
            idle_timeout_ms: 30_000,
            max_audio_ms: 60_000,
            zeroconf: false,
            zeroconf_name: String::new(),
        }
    }
}

/// `[satellite]`: Panda as a Wyoming satellite (`panda run --satellite`). A hub — Home
/// Assistant's Wyoming integration — connects to Panda, and after each wake word Panda
/// sends it the question's audio and plays the answer it sends back. Wake word, voice
/// activity, echo cancellation and barge-in stay on Panda. With no hub connected, Panda
/// answers by itself (`local_fallback`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SatelliteConfig {
    /// Run as a satellite (`panda run --satellite` sets it).
    pub enabled: bool,
    /// Where the hub connects (`tcp://HOST:PORT`; 10700 is the satellite port by
    /// convention). Loopback by default: Wyoming has no authentication, and whoever
    /// connects hears every question — bind a LAN address only on a trusted network.
    pub listen: String,
    /// The satellite's name in `info` (what Home Assistant shows); empty:
    /// `panda-<host name>`.
    pub name: String,
    /// The area (room) the satellite reports; empty: none.
    pub area: String,
    /// A question sent to the hub with no reply (transcript, answer audio or error)
    /// for this long ends the turn (the hub is stuck or ignored it).
    pub answer_timeout_ms: u64,
    /// With no hub connected, Panda answers the question itself (its own Whisper,
    /// skills and LLM); off: the question is dropped with a log line.
    pub local_fallback: bool,
    /// Announce the satellite over zeroconf (`_wyoming._tcp.local.`) so Home Assistant
    /// discovers it. Off by default, as for `[wyoming]`.
    pub zeroconf: bool,
}

impl Default for SatelliteConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: "tcp://127.0.0.1:10700".into(),
            name: String::new(),
            area: String::new(),
            answer_timeout_ms: 15_000,
            local_fallback: true,
            zeroconf: false,
        }
    }
}

/// `[web]`: the status page (HTML, live events over SSE), its JSON API and `/metrics`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WebConfig {
    /// Serve the status page while `panda run` runs.
    pub enabled: bool,
    /// Address and port (keep it on localhost unless a reverse proxy adds TLS).
    pub listen: String,
    /// Bearer token for `POST /api/ask` and `POST /api/stop` (env `PANDA_WEB__TOKEN`);
    /// empty: those endpoints answer 401 to everyone. When `listen` is not a loopback
    /// address, reading transcripts and answers (`/api/status`, `/api/events`) and
    /// `/metrics` needs it too; without it the page shows only the state.
    pub token: String,
    /// Requests per second each client address may make to `/api/*` (steady rate).
    pub rate_per_s: u32,
    /// Requests a client may make at once before the rate applies.
    pub burst: u32,
    /// Largest request body, in bytes (bigger: 413).
    pub max_body_bytes: usize,
    /// Events buffered per live client; a client further behind skips ahead to the
    /// newest events (it never slows the pipeline).
    pub client_buffer: usize,
    /// Most live clients at once (more: 503).
    pub max_clients: usize,
    /// Streaming answer text is sent when this many characters have gathered…
    pub coalesce_chars: usize,
    /// …or this long after the first of them, whichever comes first.
    pub coalesce_ms: u64,
    /// Turns kept for the page.
    pub turns_kept: usize,
    /// Most open HTTP connections. At the limit a new connection closes the oldest idle
    /// one (one not serving a request or a live feed); the limit is also held below the
    /// process's descriptor limit minus a reserve for the pipeline (models, database,
    /// sound devices, the LLM pool), so clients can never starve the appliance.
    pub max_connections: usize,
    /// A client must send a whole request head within this long of connecting or of its
    /// previous response, or the connection is closed (slow or idle clients hold nothing).
    pub header_timeout_ms: u64,
    /// Host names the page answers to besides IP addresses, `localhost` and this
    /// machine's own name (`name`, `name.local`); other `Host` headers get 403, which
    /// stops DNS-rebinding pages. `"*"` allows any.
    pub allowed_hosts: Vec<String>,
}

impl Default for WebConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: "127.0.0.1:8080".into(),
            token: String::new(),
            rate_per_s: 5,
            burst: 10,
            max_body_bytes: 16 * 1024,
            client_buffer: 256,
            max_clients: 256,
            coalesce_chars: 48,
            coalesce_ms: 150,
            turns_kept: 20,
            max_connections: 1024,
            header_timeout_ms: 10_000,
            allowed_hosts: Vec::new(),
        }
    }
}

/// `[run]`: the daemon.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// On SIGTERM/SIGINT, how long stages get to finish before Panda exits anyway
    /// (memory is flushed in any case).
    pub grace_ms: u64,
    /// A wake word while Panda speaks cancels the answer (barge-in).
    pub barge_in: bool,
    /// Tell systemd the daemon is alive this often when run under `Type=notify` with a
    /// watchdog (0: half of `WATCHDOG_USEC`, as systemd suggests).
    pub watchdog_ms: u64,
    /// A turn that shows no progress (no event from any stage) for this long counts as
    /// stalled: the watchdog stops being fed, so systemd restarts the daemon. Keep it
    /// above the LLM's and agents' timeouts.
    pub stall_ms: u64,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            grace_ms: 1000,
            barge_in: true,
            watchdog_ms: 0,
            stall_ms: 120_000,
        }
    }
}

/// One intent an agent serves, with example phrases. `{slot}` in an example captures
/// words for the request template (`"news about {topic}"`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IntentConfig {
    /// Intent name (events, logs).
    pub name: String,
    /// Example phrases.
    pub examples: Vec<String>,
}

/// How to call an agent: `{slot}` placeholders are filled from the utterance (`{utterance}`
/// is the whole text); a query or body field whose slots are all empty is left out.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RequestTemplate {
    /// `GET` or `POST`.
    pub method: String,
    /// Path under the agent's URL.
    pub path: String,
    /// Query parameters.
    pub query: BTreeMap<String, String>,
    /// JSON body fields (POST).
    pub body: BTreeMap<String, String>,
}

impl Default for RequestTemplate {
    fn default() -> Self {
        Self {
            method: "GET".into(),
            path: "/".into(),
            query: BTreeMap::new(),
            body: BTreeMap::new(),
        }
    }
}

/// `[[agents]]`: a helper service. Its HTTP contract is in the README.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Name (events, status page).
    pub name: String,
    /// What it is for, spoken by "what can you do".
    pub description: String,
    /// Base URL.
    pub url: String,
    /// Health path (`GET`, 2xx = healthy).
    pub health_path: String,
    /// Per-call timeout.
    pub timeout_ms: u64,
    /// Interval of the background health check.
    pub health_interval_ms: u64,
    /// Consecutive failures that open its circuit breaker.
    pub failure_threshold: u32,
    /// First open period of the breaker; doubles per re-open (±20 % jitter).
    pub backoff_ms: u64,
    /// Longest open period.
    pub max_backoff_ms: u64,
    /// Intents it serves.
    pub intents: Vec<IntentConfig>,
    /// The call.
    pub request: RequestTemplate,
    /// Spoken when the LLM cannot phrase the reply: `{/json/pointer}` reads a value,
    /// `{/list/*/field}` joins a field of every item with ", ".
    pub reply_template: String,
    /// Said while waiting when the reply is slow ("Let me check the news.").
    pub filler: String,
}

fn agent(
    name: &str,
    description: &str,
    port: u16,
    intents: &[(&str, &[&str])],
    request: RequestTemplate,
    reply_template: &str,
    filler: &str,
) -> AgentConfig {
    AgentConfig {
        name: name.into(),
        description: description.into(),
        url: format!("http://127.0.0.1:{port}"),
        health_path: "/health".into(),
        timeout_ms: 3000,
        health_interval_ms: 10_000,
        failure_threshold: 3,
        backoff_ms: 5000,
        max_backoff_ms: 300_000,
        intents: intents
            .iter()
            .map(|(n, ex)| IntentConfig {
                name: (*n).into(),
                examples: ex.iter().map(|e| (*e).into()).collect(),
            })
            .collect(),
        request,
        reply_template: reply_template.into(),
        filler: filler.into(),
    }
}

/// The three agents the Python assistant had: SCOTT (news), PENNY (finance), SENSEI (tutor).
pub fn default_agents() -> Vec<AgentConfig> {
    let map = |kv: &[(&str, &str)]| {
        kv.iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect::<BTreeMap<_, _>>()
    };
    vec![
        agent(
            "scott",
            "read you the news",
            8101,
            &[(
                "news",
                &[
                    "what's the news",
                    "what is in the news today",
                    "read me the headlines",
                    "tell me the top stories",
                    "news about {topic}",
                    "what's happening with {topic}",
                ],
            )],
            RequestTemplate {
                method: "GET".into(),
                path: "/articles/top".into(),
                query: map(&[("limit", "3"), ("topic", "{topic}")]),
                body: BTreeMap::new(),
            },
            "Here are the top stories: {/articles/*/title}.",
            "Let me check the news.",
        ),
        agent(
            "penny",
            "check stock prices and markets",
            8102,
            &[(
                "quote",
                &[
                    "how is the stock market doing",
                    "what's the price of {symbol} stock",
                    "how much is {symbol} stock",
                    "stock price of {symbol}",
                    "how are {symbol} shares doing",
                ],
            )],
            RequestTemplate {
                method: "GET".into(),
                path: "/quote".into(),
                query: map(&[("symbol", "{symbol}")]),
                body: BTreeMap::new(),
            },
            "{/name} is at {/price} {/currency}, {/change_percent} percent today.",
            "Let me check the markets.",
        ),
        agent(
            "sensei",
            "explain things and help you learn",
            8103,
            &[(
                "explain",
                &[
                    "explain {topic}",
                    "teach me about {topic}",
                    "help me understand {topic}",
                    "how does {topic} work",
                ],
            )],
            RequestTemplate {
                method: "POST".into(),
                path: "/explain".into(),
                query: BTreeMap::new(),
                body: map(&[("topic", "{topic}"), ("question", "{utterance}")]),
            },
            "{/explanation}",
            "Let me think about that.",
        ),
    ]
}

/// espeak-ng voice that reads language `code` (a code of
/// [`crate::think::conversation::LANGUAGES`]: `en`, `es`, `fr`, …): the one its default
/// Kokoro voice reads with.
pub fn language_phonemes(code: &str) -> Option<&'static str> {
    crate::think::conversation::LANGUAGES
        .iter()
        .find(|l| l.0 == code)
        .and_then(|l| voice_language(l.2))
}

/// espeak-ng voice for a Kokoro voice name, from the name's first letter (validation
/// needs it here; the speaking path re-exports it).
pub fn voice_language(voice: &str) -> Option<&'static str> {
    Some(match voice.chars().next()? {
        'a' => "en-us",
        'b' => "en-gb",
        'e' => "es",
        'f' => "fr-fr",
        'h' => "hi",
        'i' => "it",
        'j' => "ja",
        'p' => "pt-br",
        'z' => "cmn",
        _ => return None,
    })
}

/// `[log]`: logging.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// tracing filter directive (`info`, `panda=debug`, …); `RUST_LOG` overrides it.
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            filter: "info".into(),
        }
    }
}

/// Most threads any model's owner may ask for: more only contends (and 100,000 crashed
/// whisper.cpp and hung ONNX Runtime).
const MAX_THREADS: u32 = 256;

fn invalid(key: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        problem: problem.into(),
    }
}

/// `value` must lie in `lo..=hi`.
fn int<T>(key: &'static str, value: T, lo: T, hi: T) -> Result<(), ConfigError>
where
    T: PartialOrd + std::fmt::Display + Copy,
{
    if value < lo || value > hi {
        return Err(invalid(key, format!("{value} is not in {lo}..={hi}")));
    }
    Ok(())
}

/// `value` must be a number in `lo..=hi` (NaN is not).
fn real(key: &'static str, value: f32, lo: f32, hi: f32) -> Result<(), ConfigError> {
    if !(lo..=hi).contains(&value) {
        return Err(invalid(key, format!("{value} is not in {lo}..={hi}")));
    }
    Ok(())
}

/// An http(s) URL with a host.
fn http_url(key: &'static str, url: &str) -> Result<(), ConfigError> {
    let parsed =
        reqwest::Url::parse(url).map_err(|e| invalid(key, format!("`{url}` is not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(invalid(
            key,
            format!("`{url}` is not an http:// or https:// URL"),
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(invalid(key, format!("`{url}` names no host")));
    }
    Ok(())
}

impl Config {
    /// Loads defaults < `/etc/panda/panda.toml` < `extra` file < `PANDA_*` env, then validates.
    pub fn load(extra: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_from(Path::new(SYSTEM_CONFIG_PATH), extra, "PANDA_")
    }

    /// [`Config::load`] with the system file and env prefix given (tests use their own).
    pub fn load_from(
        system: &Path,
        extra: Option<&Path>,
        env_prefix: &str,
    ) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if system.exists() {
            fig = fig.merge(Toml::file(system));
        }
        if let Some(path) = extra {
            if !path.exists() {
                return Err(ConfigError::MissingFile(path.to_path_buf()));
            }
            if !path.is_file() {
                return Err(ConfigError::NotAFile(path.to_path_buf()));
            }
            fig = fig.merge(Toml::file(path));
        }
        // `PANDA_CACHE_DIR` is read by the model installer, not part of the tree.
        fig = fig.merge(Env::prefixed(env_prefix).ignore(NON_CONFIG_ENV).split("__"));
        let cfg: Config = fig.extract().map_err(Box::new)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Range checks that the types alone do not express. Every numeric key has a range:
    /// a value that parses but would crash, hang or exhaust memory later (100,000 STT
    /// threads, a 4-billion-ms ring, 10^12 search candidates) is refused here with exit
    /// 78, so systemd does not restart a daemon that can never run.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let a = &self.audio;
        let w = &self.wake;
        let e = &self.endpoint;
        let llm = &self.llm;
        let c = &self.conversation;
        let m = &self.memory;
        let web = &self.web;
        let r = &self.run;
        let t = &self.tts;
        int("audio.ring_capacity_ms", a.ring_capacity_ms, 100, 60_000)?;
        int("audio.retry_delay_ms", a.retry_delay_ms, 100, 600_000)?;
        real("wake.threshold", w.threshold, 0.0, 1.0)?;
        real("wake.avg_threshold", w.avg_threshold, 0.0, 1.0)?;
        int("wake.min_scores", w.min_scores, 1, 100)?;
        int("wake.refractory_ms", w.refractory_ms, 0, 60_000)?;
        int("wake.verify_window_ms", w.verify_window_ms, 200, 10_000)?;
        int("wake.verify_delay_ms", w.verify_delay_ms, 0, 2_000)?;
        int("wake.verify_lookback_ms", w.verify_lookback_ms, 0, 5_000)?;
        int("vad.mode", self.vad.mode, 0, 3)?;
        let wy = &self.wyoming;
        if !wy.listen.is_empty() && !wy.listen.starts_with("tcp://") {
            return Err(invalid(
                "wyoming.listen",
                "must be tcp://HOST:PORT or empty",
            ));
        }
        if let Some(bad) = wy
            .services
            .iter()
            .find(|s| !matches!(s.as_str(), "asr" | "tts" | "wake"))
        {
            return Err(invalid(
                "wyoming.services",
                format!("{bad:?} is not one of asr, tts, wake"),
            ));
        }
        int("wyoming.max_connections", wy.max_connections, 1, 10_000)?;
        int(
            "wyoming.idle_timeout_ms",
            wy.idle_timeout_ms,
            100,
            3_600_000,
        )?;
        int("wyoming.max_audio_ms", wy.max_audio_ms, 1_000, 600_000)?;
        let sat = &self.satellite;
        if sat.enabled && !sat.listen.starts_with("tcp://") {
            return Err(invalid("satellite.listen", "must be tcp://HOST:PORT"));
        }
        int(
            "satellite.answer_timeout_ms",
            sat.answer_timeout_ms,
            1_000,
            600_000,
        )?;
        int("endpoint.pre_roll_ms", e.pre_roll_ms, 0, 5_000)?;
        int("endpoint.speech_start_ms", e.speech_start_ms, 10, 5_000)?;
        int("endpoint.hangover_ms", e.hangover_ms, 10, 10_000)?;
        if e.max_utterance_ms < 1000 || e.max_utterance_ms > 30_000 {
            return Err(invalid(
                "endpoint.max_utterance_ms",
                format!(
                    "{} is outside 1000..=30000 (Whisper hears at most 30 s)",
                    e.max_utterance_ms
                ),
            ));
        }
        int(
            "endpoint.question_timeout_ms",
            e.question_timeout_ms,
            0,
            600_000,
        )?;
        int("endpoint.wake_tail_ms", e.wake_tail_ms, 30, 5_000)?;
        int("endpoint.wake_lookback_ms", e.wake_lookback_ms, 0, 3_000)?;
        int(
            "conversation.follow_up_ms",
            self.conversation.follow_up_ms,
            0,
            60_000,
        )?;
        int("stt.beam_size", self.stt.beam_size, 0, 16)?;
        int(
            "stt.multilingual_beam_size",
            self.stt.multilingual_beam_size,
            0,
            16,
        )?;
        int("stt.threads", self.stt.threads, 0, MAX_THREADS)?;
        real("stt.min_confidence", self.stt.min_confidence, 0.0, 1.0)?;
        int(
            "stt.wyoming_timeout_ms",
            self.stt.wyoming_timeout_ms,
            100,
            600_000,
        )?;
        if self.stt.backend == Backend::Wyoming
            && let Err(e) = crate::wyoming::client::AsrClient::new(
                &self.stt.wyoming_url,
                std::time::Duration::from_millis(self.stt.wyoming_timeout_ms),
            )
        {
            return Err(invalid("stt.wyoming_url", e.to_string()));
        }
        let lang = self.stt.language.as_str();
        if lang != "auto" && whisper_rs::get_lang_id(lang).is_none() {
            return Err(invalid(
                "stt.language",
                format!(
                    "`{lang}` is neither `auto` nor a language Whisper knows (codes like `en`, `es`, `fr`)"
                ),
            ));
        }
        if self.stt.language != "en"
            && self.stt.multilingual_model.as_os_str().is_empty()
            && self
                .stt
                .model
                .file_name()
                .is_some_and(|n| n.to_string_lossy().contains(".en"))
        {
            return Err(invalid(
                "stt.language",
                format!(
                    "`{lang}` needs a multilingual model, but {} is English-only and [stt] multilingual_model is empty",
                    self.stt.model.display()
                ),
            ));
        }
        real(
            "tts.speed",
            t.speed,
            *SPEED_RANGE.start(),
            *SPEED_RANGE.end(),
        )?;
        int("tts.threads", t.threads, 0, MAX_THREADS)?;
        int("tts.first_fragment_words", t.first_fragment_words, 0, 100)?;
        int("tts.max_sentence_chars", t.max_sentence_chars, 40, 2_000)?;
        int("tts.wyoming_timeout_ms", t.wyoming_timeout_ms, 100, 600_000)?;
        if t.backend == Backend::Wyoming
            && let Err(e) = crate::wyoming::client::TtsClient::new(
                &t.wyoming_url,
                std::time::Duration::from_millis(t.wyoming_timeout_ms),
            )
        {
            return Err(invalid("tts.wyoming_url", e.to_string()));
        }
        if voice_language(&t.voice).is_none() {
            return Err(invalid(
                "tts.voice",
                format!(
                    "`{}` is not a Kokoro voice name (like `af_heart`; `panda voices` lists them)",
                    t.voice
                ),
            ));
        }
        for (code, voice) in &t.language_voices {
            let key = "tts.language_voices";
            if crate::think::conversation::LANGUAGES
                .iter()
                .all(|l| l.0 != code.as_str())
            {
                let codes: Vec<&str> = crate::think::conversation::LANGUAGES
                    .iter()
                    .map(|l| l.0)
                    .collect();
                return Err(invalid(
                    key,
                    format!(
                        "`{code}` is not a language Panda speaks ({})",
                        codes.join(", ")
                    ),
                ));
            }
            if code == "en" {
                return Err(invalid(key, "English speaks in `tts.voice`"));
            }
            if voice_language(voice).is_none() {
                return Err(invalid(
                    key,
                    format!("{code}: `{voice}` is not a Kokoro voice name (like `af_heart`)"),
                ));
            }
        }
        int("playback.buffer_ms", self.playback.buffer_ms, 5, 500)?;
        int("aec.delay_hint_ms", self.aec.delay_hint_ms, 0, 500)?;
        int("aec.guard_tail_ms", self.aec.guard_tail_ms, 0, 5_000)?;
        if let Some(w) = self
            .aec
            .stop_words
            .iter()
            .find(|w| w.split_whitespace().count() != 1)
        {
            return Err(invalid("aec.stop_words", format!("{w:?} is not one word")));
        }
        http_url("llm.url", &llm.url)?;
        real("llm.temperature", llm.temperature, 0.0, 2.0)?;
        int("llm.max_tokens", llm.max_tokens, 1, 32_768)?;
        int("llm.keep_alive_s", llm.keep_alive_s, 0, 7 * 24 * 3600)?;
        int("llm.connect_timeout_ms", llm.connect_timeout_ms, 10, 60_000)?;
        int(
            "llm.first_token_timeout_ms",
            llm.first_token_timeout_ms,
            100,
            600_000,
        )?;
        int(
            "llm.answer_timeout_ms",
            llm.answer_timeout_ms,
            100,
            3_600_000,
        )?;
        int("llm.max_line_bytes", llm.max_line_bytes, 1024, 64 << 20)?;
        real(
            "router.min_confidence",
            self.router.min_confidence,
            0.0,
            1.0,
        )?;
        int(
            "router.cache_entries",
            self.router.cache_entries,
            0,
            1_000_000,
        )?;
        int("conversation.history_tokens", c.history_tokens, 0, 100_000)?;
        int("conversation.filler_after_ms", c.filler_after_ms, 0, 60_000)?;
        int(
            "conversation.max_answer_chars",
            c.max_answer_chars,
            40,
            100_000,
        )?;
        int(
            "conversation.max_answer_sentences",
            c.max_answer_sentences,
            1,
            1_000,
        )?;
        if self.state.dir.as_os_str().is_empty() {
            return Err(invalid("state.dir", "must name a directory"));
        }
        if m.path.as_os_str().is_empty() {
            return Err(invalid("memory.path", "must name a file"));
        }
        int("memory.threads", m.threads, 0, MAX_THREADS as usize)?;
        int("memory.batch_size", m.batch_size, 1, 1_024)?;
        if !(8..=512).contains(&m.max_tokens) {
            return Err(invalid(
                "memory.max_tokens",
                format!("{} is not in 8..=512 (the model's positions)", m.max_tokens),
            ));
        }
        int(
            "memory.query_cache_entries",
            m.query_cache_entries,
            0,
            1_000_000,
        )?;
        int("memory.candidates", m.candidates, 1, 100_000)?;
        real("memory.min_similarity", m.min_similarity, 0.0, 1.0)?;
        int("memory.prompt_memories", m.prompt_memories, 0, 50)?;
        int("memory.max_text_bytes", m.max_text_bytes, 1, 64 << 20)?;
        if web.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid(
                "web.listen",
                format!(
                    "{:?} is not an address:port such as 127.0.0.1:8080",
                    web.listen
                ),
            ));
        }
        int("web.rate_per_s", web.rate_per_s, 1, 100_000)?;
        int("web.burst", web.burst, 1, 100_000)?;
        int("web.max_body_bytes", web.max_body_bytes, 16, 16 << 20)?;
        int("web.client_buffer", web.client_buffer, 1, 65_536)?;
        int("web.max_connections", web.max_connections, 8, 1_000_000)?;
        int("web.max_clients", web.max_clients, 1, web.max_connections)?;
        int("web.coalesce_chars", web.coalesce_chars, 1, 100_000)?;
        int("web.coalesce_ms", web.coalesce_ms, 10, 60_000)?;
        int("web.turns_kept", web.turns_kept, 1, 1_000)?;
        int("web.header_timeout_ms", web.header_timeout_ms, 100, 600_000)?;
        int("run.grace_ms", r.grace_ms, 0, 60_000)?;
        int("run.watchdog_ms", r.watchdog_ms, 0, 3_600_000)?;
        int("run.stall_ms", r.stall_ms, 1_000, 86_400_000)?;
        let mut names = std::collections::HashSet::new();
        for ag in &self.agents {
            if !names.insert(ag.name.as_str()) {
                return Err(invalid(
                    "agents.name",
                    format!("two agents are named `{}`", ag.name),
                ));
            }
            // The agent's name goes into the message, so the owner knows which one.
            let named = |key: &'static str, r: Result<(), ConfigError>| {
                r.map_err(|e| match e {
                    ConfigError::Invalid { problem, .. } => {
                        invalid(key, format!("agent `{}`: {problem}", ag.name))
                    }
                    other => other,
                })
            };
            named("agents.url", http_url("agents.url", &ag.url))?;
            if !matches!(ag.request.method.as_str(), "GET" | "POST") {
                return Err(invalid(
                    "agents.request.method",
                    format!("agent `{}`: method must be GET or POST", ag.name),
                ));
            }
            named(
                "agents.timeout_ms",
                int("agents.timeout_ms", ag.timeout_ms, 1, 600_000),
            )?;
            named(
                "agents.health_interval_ms",
                int(
                    "agents.health_interval_ms",
                    ag.health_interval_ms,
                    100,
                    86_400_000,
                ),
            )?;
            named(
                "agents.failure_threshold",
                int("agents.failure_threshold", ag.failure_threshold, 1, 1_000),
            )?;
            named(
                "agents.backoff_ms",
                int("agents.backoff_ms", ag.backoff_ms, 1, 86_400_000),
            )?;
            named(
                "agents.max_backoff_ms",
                int(
                    "agents.max_backoff_ms",
                    ag.max_backoff_ms,
                    ag.backoff_ms,
                    86_400_000,
                ),
            )?;
        }
        Ok(())
    }

    /// Resolves a model path against `[models] dir`.
    pub fn model_path(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.models.dir.join(p)
        }
    }

    /// The memory database file (`[memory] path`, relative to `[state] dir`).
    pub fn memory_path(&self) -> PathBuf {
        if self.memory.path.is_absolute() {
            self.memory.path.clone()
        } else {
            self.state.dir.join(&self.memory.path)
        }
    }

    /// The resolved configuration as TOML (for `panda check-config`).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn load(toml: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(toml.as_bytes()).unwrap();
        // A unique prefix per call keeps parallel tests from seeing each other's variables.
        let prefix = format!("PANDATEST{}_", std::process::id() ^ rand_suffix());
        for (k, v) in env {
            // SAFETY: the variables carry a prefix unique to this call.
            unsafe { std::env::set_var(format!("{prefix}{k}"), v) };
        }
        Config::load_from(Path::new("/nonexistent"), Some(f.path()), &prefix)
    }

    fn rand_suffix() -> u32 {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        N.fetch_add(1, Ordering::Relaxed) << 20
    }

    #[test]
    fn defaults_validate() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn file_then_env_override() {
        let cfg = load(
            "[stt]\nbeam_size = 3\n[vad]\nmode = 1\n",
            &[("STT__MODEL", "/m/x.bin"), ("VAD__MODE", "3")],
        )
        .unwrap();
        assert_eq!(cfg.stt.beam_size, 3);
        assert_eq!(cfg.stt.model, PathBuf::from("/m/x.bin"));
        assert_eq!(cfg.vad.mode, 3, "env beats file");
    }

    #[test]
    fn unknown_key_is_named() {
        let err = load("[stt]\nbeam_sise = 3\n", &[]).unwrap_err().to_string();
        assert!(err.contains("beam_sise"), "{err}");
    }

    #[test]
    fn wrong_type_is_named() {
        let err = load("[vad]\nmode = \"loud\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("mode"), "{err}");
    }

    #[test]
    fn range_errors_name_the_key() {
        let err = load("[vad]\nmode = 7\n", &[]).unwrap_err().to_string();
        assert!(err.contains("vad.mode"), "{err}");
        let err = load("[wake]\nthreshold = 1.5\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("wake.threshold"), "{err}");
        let err = load("[stt]\nlanguage = \"de\"\nmultilingual_model = \"\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("English-only"), "{err}");
        let err = load("[stt]\nlanguage = \"xx\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("stt.language"), "{err}");
        assert!(load("[stt]\nlanguage = \"de\"\n", &[]).is_ok());
        // Whisper base as the question model is multilingual itself.
        let base = "[stt]\nmodel = \"whisper/ggml-base.bin\"\nlanguage = \"de\"\n";
        assert!(load(&format!("{base}multilingual_model = \"\"\n"), &[]).is_ok());
    }

    #[test]
    fn missing_config_file_is_an_error() {
        let err = Config::load_from(
            Path::new("/nonexistent"),
            Some(Path::new("/no/such.toml")),
            "X_",
        )
        .unwrap_err();
        assert!(matches!(err, ConfigError::MissingFile(_)));
    }

    #[test]
    fn example_config_matches_defaults() {
        // config/panda.toml documents every field with its default value: it must parse,
        // and must not drift from the built-in defaults.
        let text = include_str!("../config/panda.toml");
        let parsed: Config = toml::from_str(text).unwrap();
        assert_eq!(parsed, Config::default());
    }
}
