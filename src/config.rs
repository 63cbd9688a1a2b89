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
            llm: LlmConfig::default(),
            router: RouterConfig::default(),
            conversation: ConversationConfig::default(),
            state: StateConfig::default(),
            memory: MemoryConfig::default(),
            web: WebConfig::default(),
            run: RunConfig::default(),
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
    /// Wake word file (rustpotter `.rpw`), relative to `[models] dir` unless absolute.
    pub model: PathBuf,
    /// Minimum score (0–1) against the best template for a detection.
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
    /// Audio the second-stage check transcribes, ending at the detection.
    pub verify_window_ms: u64,
}

impl Default for WakeConfig {
    fn default() -> Self {
        Self {
            model: PathBuf::from("wake/hey_panda.rpw"),
            threshold: 0.5,
            avg_threshold: 0.0,
            min_scores: 5,
            eager: true,
            refractory_ms: 2000,
            vad_gate: true,
            phrase: "hey panda".into(),
            verify: true,
            verify_window_ms: 1500,
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
    /// Silence after speech that ends the utterance.
    pub hangover_ms: u64,
    /// An utterance is cut here even if the speaker goes on.
    pub max_utterance_ms: u64,
    /// After a wake word, give up if no speech starts within this time.
    pub no_speech_timeout_ms: u64,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        Self {
            pre_roll_ms: 500,
            speech_start_ms: 90,
            hangover_ms: 800,
            max_utterance_ms: 15_000,
            no_speech_timeout_ms: 5_000,
        }
    }
}

/// `[stt]`: Whisper.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SttConfig {
    /// ggml Whisper model, relative to `[models] dir` unless absolute.
    pub model: PathBuf,
    /// Spoken language code (`en`, `de`, …) or `auto` (multilingual models only).
    pub language: String,
    /// 0 or 1: greedy decoding; 2 and more: beam search with this many beams.
    pub beam_size: u32,
    /// CPU threads for whisper.cpp; 0 picks the number of cores.
    pub threads: u32,
    /// Size the encoder window to the utterance instead of whisper's fixed 30 s. The main
    /// latency lever for short commands; `panda bench stt` prints what it costs in accuracy.
    pub dynamic_audio_ctx: bool,
    /// Use the GPU when Panda was built with the `cuda` feature.
    pub gpu: bool,
    /// Transcripts whose mean token probability is below this are discarded as noise.
    /// Measured on tiny.en: recorded speech 0.45–0.95, noise and non-words 0.15–0.17.
    pub min_confidence: f32,
}

impl Default for SttConfig {
    fn default() -> Self {
        Self {
            model: PathBuf::from("whisper/ggml-tiny.en.bin"),
            language: "en".into(),
            beam_size: 1,
            threads: 0,
            dynamic_audio_ctx: true,
            gpu: true,
            min_confidence: 0.3,
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
}

impl Default for TtsConfig {
    fn default() -> Self {
        Self {
            model_dir: PathBuf::from("kokoro"),
            voice: "af_heart".into(),
            speed: 1.0,
            threads: 0,
            gpu: true,
            first_fragment_words: 4,
            max_sentence_chars: 300,
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
            dir: PathBuf::from("state"),
        }
    }
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

/// `[web]`: the status page (HTML, live events over SSE), its JSON API and `/metrics`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WebConfig {
    /// Serve the status page while `panda run` runs.
    pub enabled: bool,
    /// Address and port (keep it on localhost unless a reverse proxy adds TLS).
    pub listen: String,
    /// Bearer token for `POST /api/ask` and `POST /api/stop` (env `PANDA_WEB__TOKEN`);
    /// empty: those endpoints answer 401 to everyone.
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
            max_clients: 10_000,
            coalesce_chars: 48,
            coalesce_ms: 150,
            turns_kept: 20,
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
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            grace_ms: 1000,
            barge_in: true,
            watchdog_ms: 0,
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
            fig = fig.merge(Toml::file(path));
        }
        // `PANDA_CACHE_DIR` is read by the model installer, not part of the tree.
        fig = fig.merge(Env::prefixed(env_prefix).ignore(NON_CONFIG_ENV).split("__"));
        let cfg: Config = fig.extract().map_err(Box::new)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Range checks that the types alone do not express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn invalid(key: &'static str, problem: impl Into<String>) -> ConfigError {
            ConfigError::Invalid {
                key,
                problem: problem.into(),
            }
        }
        if self.vad.mode > 3 {
            return Err(invalid(
                "vad.mode",
                format!("{} is not in 0..=3", self.vad.mode),
            ));
        }
        for (key, v) in [
            ("wake.threshold", self.wake.threshold),
            ("wake.avg_threshold", self.wake.avg_threshold),
            ("stt.min_confidence", self.stt.min_confidence),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(invalid(key, format!("{v} is not in 0.0..=1.0")));
            }
        }
        if !(0.0..=1.0).contains(&self.memory.min_similarity) {
            return Err(invalid(
                "memory.min_similarity",
                format!("{} is not in 0.0..=1.0", self.memory.min_similarity),
            ));
        }
        if !(8..=512).contains(&self.memory.max_tokens) {
            return Err(invalid(
                "memory.max_tokens",
                format!(
                    "{} is not in 8..=512 (the model's positions)",
                    self.memory.max_tokens
                ),
            ));
        }
        if self.memory.batch_size == 0 || self.memory.candidates == 0 {
            return Err(invalid(
                "memory.batch_size",
                "batch_size and candidates must be at least 1",
            ));
        }
        if self.web.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid(
                "web.listen",
                format!(
                    "{:?} is not an address:port such as 127.0.0.1:8080",
                    self.web.listen
                ),
            ));
        }
        if self.web.rate_per_s == 0 || self.web.burst == 0 || self.web.client_buffer == 0 {
            return Err(invalid(
                "web.rate_per_s",
                "rate_per_s, burst and client_buffer must be at least 1",
            ));
        }
        if self.memory.path.as_os_str().is_empty() {
            return Err(invalid("memory.path", "must name a file"));
        }
        if self.wake.min_scores == 0 {
            return Err(invalid("wake.min_scores", "must be at least 1"));
        }
        let e = &self.endpoint;
        if e.speech_start_ms == 0 || e.hangover_ms == 0 {
            return Err(invalid(
                "endpoint.hangover_ms",
                "speech_start_ms and hangover_ms must be positive",
            ));
        }
        if e.max_utterance_ms < 1000 || e.max_utterance_ms > 30_000 {
            return Err(invalid(
                "endpoint.max_utterance_ms",
                format!(
                    "{} is outside 1000..=30000 (Whisper hears at most 30 s)",
                    e.max_utterance_ms
                ),
            ));
        }
        if self.stt.beam_size > 16 {
            return Err(invalid("stt.beam_size", "at most 16 beams"));
        }
        let lang = self.stt.language.as_str();
        if lang != "auto" && !(2..=3).contains(&lang.len()) {
            return Err(invalid(
                "stt.language",
                format!("`{lang}` is neither `auto` nor a language code like `en`"),
            ));
        }
        if self.stt.language != "en"
            && self
                .stt
                .model
                .file_name()
                .is_some_and(|n| n.to_string_lossy().contains(".en"))
        {
            return Err(invalid(
                "stt.language",
                format!(
                    "`{lang}` needs a multilingual model, but {} is English-only",
                    self.stt.model.display()
                ),
            ));
        }
        if !SPEED_RANGE.contains(&self.tts.speed) {
            return Err(invalid(
                "tts.speed",
                format!("{} is not in {SPEED_RANGE:?}", self.tts.speed),
            ));
        }
        if voice_language(&self.tts.voice).is_none() {
            return Err(invalid(
                "tts.voice",
                format!(
                    "`{}` is not a Kokoro voice name (like `af_heart`; `panda voices` lists them)",
                    self.tts.voice
                ),
            ));
        }
        if self.tts.max_sentence_chars < 40 {
            return Err(invalid("tts.max_sentence_chars", "at least 40"));
        }
        if !(5..=500).contains(&self.playback.buffer_ms) {
            return Err(invalid(
                "playback.buffer_ms",
                format!("{} is not in 5..=500", self.playback.buffer_ms),
            ));
        }
        if !self.llm.url.starts_with("http://") && !self.llm.url.starts_with("https://") {
            return Err(invalid(
                "llm.url",
                format!("`{}` is not an http:// or https:// URL", self.llm.url),
            ));
        }
        if self.llm.max_line_bytes < 1024 {
            return Err(invalid("llm.max_line_bytes", "at least 1024"));
        }
        if !(0.0..=1.0).contains(&self.router.min_confidence) {
            return Err(invalid("router.min_confidence", "not in 0.0..=1.0"));
        }
        let mut names = std::collections::HashSet::new();
        for a in &self.agents {
            if !names.insert(a.name.as_str()) {
                return Err(invalid(
                    "agents",
                    format!("two agents are named `{}`", a.name),
                ));
            }
            if !a.url.starts_with("http://") && !a.url.starts_with("https://") {
                return Err(invalid(
                    "agents.url",
                    format!("agent `{}`: `{}` is not an http(s) URL", a.name, a.url),
                ));
            }
            if !matches!(a.request.method.as_str(), "GET" | "POST") {
                return Err(invalid(
                    "agents.request.method",
                    format!("agent `{}`: method must be GET or POST", a.name),
                ));
            }
            if a.failure_threshold == 0 || a.timeout_ms == 0 {
                return Err(invalid(
                    "agents.failure_threshold",
                    format!(
                        "agent `{}`: failure_threshold and timeout_ms must be positive",
                        a.name
                    ),
                ));
            }
        }
        if self.audio.ring_capacity_ms < 100 {
            return Err(invalid("audio.ring_capacity_ms", "at least 100 ms"));
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
        let err = load("[stt]\nlanguage = \"de\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("English-only"), "{err}");
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
