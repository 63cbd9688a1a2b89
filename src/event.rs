//! The types stages exchange. Stages never import each other: they meet here.
//!
//! Audio inside the pipeline is always 16 kHz mono i16 in 30 ms frames ([`AudioFrame`]):
//! the rate Whisper, webrtc-vad and rustpotter all want, and a frame length all three accept.

use serde::Serialize;
use tokio_util::sync::CancellationToken;

/// Sample rate of every frame inside the pipeline.
pub const SAMPLE_RATE_HZ: u32 = 16_000;
/// Frame length in milliseconds.
pub const FRAME_MS: u32 = 30;
/// Samples in one frame.
pub const FRAME_SAMPLES: usize = (SAMPLE_RATE_HZ * FRAME_MS / 1000) as usize;

/// One 30 ms frame of 16 kHz mono audio.
#[derive(Debug, Clone)]
pub struct AudioFrame {
    /// Sequence number from the start of the source; the stream position in ms is
    /// `seq * FRAME_MS`.
    pub seq: u64,
    /// [`FRAME_SAMPLES`] samples.
    pub samples: Box<[i16; FRAME_SAMPLES]>,
    /// The echo canceller's linear output (before residual-echo suppression), present
    /// only while Panda's own voice is in the room: the wake word listens to it then, so
    /// that a person's "hey panda" over an answer survives the suppressor.
    pub linear: Option<Box<[i16; FRAME_SAMPLES]>>,
    /// The canceller heard someone besides Panda in this frame (double talk); false
    /// when no canceller runs or Panda is silent.
    pub near_end: bool,
    /// The canceller found that the microphone does not hear Panda at all (no echo
    /// path: a headset, a speaker in another room): Panda cannot wake itself, so the
    /// self-wake guard stands down. False when unknown (no canceller, or not yet learnt).
    pub no_echo: bool,
}

impl AudioFrame {
    /// Stream position of the frame's start, in milliseconds.
    pub fn start_ms(&self) -> u64 {
        self.seq * FRAME_MS as u64
    }
}

/// One turn's identity: a number for logs and events, and the token that cancels it.
///
/// The token tree, in one place: every turn's token is a *child of the root token* —
/// spoken turns (minted by the listener at a wake word), typed questions and timer
/// announcements (minted by the turn driver) alike — so shutdown cancels every turn, and
/// a barge-in or a stop cancels one turn without touching the rest. Inside a turn, the
/// LLM stream runs under a child of the turn's token (the answer bound closes it alone).
#[derive(Debug, Clone)]
pub struct Turn {
    /// Monotonic turn number within this process.
    pub id: u64,
    /// Cancelled on barge-in, timeout or shutdown.
    pub token: CancellationToken,
}

/// Where an answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AnswerSource {
    /// A built-in skill (time, timers, memory, language, …).
    Skill,
    /// Helper agents, phrased by the LLM.
    Agent,
    /// The LLM.
    Llm,
    /// Helper agents' replies through their templates (the LLM was down).
    Template,
    /// An apology (nothing could answer).
    Apology,
    /// A timer or alarm announcement.
    Timer,
    /// The hub Panda is a satellite of (Home Assistant, over Wyoming).
    Hub,
    /// Nothing (a stop, or a turn cancelled before any answer).
    None,
}

impl AnswerSource {
    /// The lower-case name (`skill`, `llm`, …) as in events and on the status page.
    pub fn as_str(self) -> &'static str {
        match self {
            AnswerSource::Skill => "skill",
            AnswerSource::Agent => "agent",
            AnswerSource::Llm => "llm",
            AnswerSource::Template => "template",
            AnswerSource::Apology => "apology",
            AnswerSource::Timer => "timer",
            AnswerSource::Hub => "hub",
            AnswerSource::None => "none",
        }
    }
}

/// A question heard and transcribed: the STT stage hands it to the turn driver.
#[derive(Debug)]
pub struct Question {
    /// The turn the listener opened for it.
    pub turn: Turn,
    /// What was heard.
    pub text: String,
}

/// The next turn number; numbers are unique within the process whoever mints the turn.
static NEXT_TURN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl Turn {
    /// A new turn: the next number, a token under `root`.
    pub fn next(root: &CancellationToken) -> Turn {
        Turn {
            id: NEXT_TURN.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            token: root.child_token(),
        }
    }
}

/// An endpointed utterance, handed from the listener to speech-to-text.
#[derive(Debug)]
pub struct Utterance {
    /// The turn this utterance belongs to.
    pub turn: Turn,
    /// 16 kHz mono samples, pre-roll included.
    pub samples: Vec<i16>,
    /// Stream position where the utterance audio starts.
    pub start_ms: u64,
    /// Why the utterance ended.
    pub end: EndReason,
    /// The wake phrase, when the utterance came after one (or in the same breath): a
    /// leading wake phrase is dropped from its transcript.
    pub wake_phrase: Option<String>,
    /// Said while Panda spoke, without the wake word: only a stop word counts
    /// (`[aec] stop_words`); anything else is dropped after transcription.
    pub command: bool,
    /// The question after a wake word: the speech-to-text stage answers whether it
    /// understood anything in it (false: an empty transcript — noise, a cough, the wake
    /// phrase alone). The listener, which keeps listening meanwhile, then takes the next
    /// speech as the turn's question instead. Dropped unanswered counts as understood.
    pub understood: Option<tokio::sync::oneshot::Sender<bool>>,
}

/// What the turn driver asks of the listener (a control edge).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenControl {
    /// Listen this long for a follow-up question without the wake word.
    FollowUp {
        /// The window in milliseconds.
        window_ms: u64,
    },
}

/// A short sound playback plays outside any answer (the wake earcon): playback takes it
/// only when no answer is playing.
#[derive(Debug, Clone)]
pub struct Cue {
    /// Mono samples at `rate_hz`.
    pub samples: std::sync::Arc<[f32]>,
    /// Sample rate of `samples`.
    pub rate_hz: u32,
}

/// One sentence for the speaking path (turn task → TTS).
#[derive(Debug, Clone)]
pub struct Sentence {
    /// The turn it answers; cancelling the turn drops the sentence wherever it is.
    pub turn: Turn,
    /// Position of the sentence within the turn's answer (0-based).
    pub index: u32,
    /// The text as the answer has it (normalisation happens in the TTS stage).
    pub text: String,
    /// Kokoro voice (its first letter names the language).
    pub voice: String,
    /// espeak-ng language to read the text in when it is not the voice's own (a French
    /// answer in a voice `[tts] language_voices` borrowed from English); `None`: the
    /// voice's language.
    pub reading: Option<&'static str>,
    /// Speaking rate, 1.0 normal.
    pub speed: f32,
}

/// What travels the sentence edge to TTS: a sentence of a turn's answer, or the explicit
/// end of that answer (playback reports the turn once it has played everything before
/// it). An answer always ends with `End`, even one whose sentences made no sound.
#[derive(Debug, Clone)]
pub enum Speech {
    /// Speak this sentence.
    Say(Sentence),
    /// The turn's answer is complete.
    End {
        /// The turn.
        turn: Turn,
        /// One past the last sentence's index.
        index: u32,
    },
    /// Synthesise for someone other than the speaker (a Wyoming client): the audio goes
    /// back on the request's own channel, not to playback.
    Serve(ServedSpeech),
    /// Audio made elsewhere (the hub's answer in satellite mode), played in its turn's
    /// order like synthesised speech: TTS passes it to playback unchanged.
    Play(PcmChunk),
}

/// Text to synthesise for a client of Panda's TTS (see [`Speech::Serve`]).
#[derive(Debug, Clone)]
pub struct ServedSpeech {
    /// The text (one sentence or a few: each model call's audio is sent as it is made).
    pub text: String,
    /// Kokoro voice.
    pub voice: String,
    /// Speaking rate, 1.0 normal.
    pub speed: f32,
    /// Cancelled when the client is gone: the rest is skipped.
    pub token: CancellationToken,
    /// 24 kHz mono audio, one model call at a time, or what went wrong; closed when
    /// done. When full the TTS thread waits (the client sets the pace; its connection
    /// drops the receiver when it stops reading, which ends the wait).
    pub reply: tokio::sync::mpsc::Sender<Result<Vec<f32>, String>>,
}

/// A piece of synthesised speech (TTS → playback): one model call's audio.
#[derive(Debug, Clone)]
pub struct PcmChunk {
    /// The turn it belongs to.
    pub turn: Turn,
    /// Sentence index within the turn.
    pub sentence: u32,
    /// The (normalised) text this audio speaks, for progress reporting.
    pub text: String,
    /// Mono samples at `rate_hz`.
    pub samples: Vec<f32>,
    /// Sample rate of `samples`.
    pub rate_hz: u32,
    /// Last chunk of the turn's answer: playback reports the turn done after it.
    pub last: bool,
}

/// A circuit breaker's state, as events and the status page show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls are refused until the backoff passes.
    Open,
    /// One probe call is in flight or allowed.
    HalfOpen,
}

/// What satellite mode reports (see [`Event::Satellite`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SatelliteNews {
    /// Satellite mode is waiting for a hub at the address in `detail`.
    Waiting,
    /// A hub connected (a newer connection replaces the older one).
    Connected,
    /// The hub went away.
    Disconnected,
    /// The hub is ready to run pipelines (`run-satellite`).
    Running,
    /// The hub paused the satellite (muted in Home Assistant): questions are not sent.
    Paused,
    /// The question's audio went to the hub.
    Sent,
    /// The hub answered with an error; the turn ends.
    HubError,
    /// The hub did not reply within `[satellite] answer_timeout_ms`; the turn ends.
    NoReply,
    /// The hub's answer has played (`played` sent).
    Played,
    /// No hub is connected: Panda answers the question itself.
    Local,
    /// The question was dropped (paused, or no hub and no local fallback).
    Dropped,
}

/// Why an utterance ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// Silence after speech (the normal case).
    Silence,
    /// The utterance hit `max_utterance_ms`.
    MaxLength,
    /// The source ended while speech was going on.
    EndOfStream,
    /// The wake word was said again while the question was being collected (noise or
    /// a background voice had kept it open): the question is what came before it, and
    /// the new wake starts a turn of its own.
    WakeWord,
}

/// What the pipeline tells the outside world. Serialised as one JSON object per line by
/// `panda listen` (`{"type":"wake",…}`).
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// The wake word was detected.
    Wake {
        /// The turn it opened.
        turn: u64,
        /// Wake word name.
        name: String,
        /// Detection score (0–1).
        score: f32,
        /// What the second-stage check heard (absent when it is off).
        #[serde(skip_serializing_if = "Option::is_none")]
        heard: Option<String>,
        /// Stream position of the detection.
        at_ms: u64,
    },
    /// Speech started after a wake word.
    SpeechStart {
        /// Turn.
        turn: u64,
        /// Stream position of the speech start (after pre-roll is taken off).
        at_ms: u64,
    },
    /// Speech ended; the utterance goes to speech-to-text.
    SpeechEnd {
        /// Turn.
        turn: u64,
        /// Stream position of the end.
        at_ms: u64,
        /// Why it ended.
        reason: EndReason,
    },
    /// No question followed the wake word (or no follow-up came) in time: back to idle,
    /// nothing goes to the LLM.
    NoQuestion {
        /// Turn.
        turn: u64,
        /// Stream position where listening gave up.
        at_ms: u64,
    },
    /// After an answer, the listener waits for a follow-up without the wake word.
    FollowUp {
        /// The turn a follow-up would be.
        turn: u64,
        /// How long it listens.
        window_ms: u64,
        /// Stream position where it started listening.
        at_ms: u64,
    },
    /// A transcript.
    Transcript {
        /// Turn.
        turn: u64,
        /// Recognised text, trimmed.
        text: String,
        /// Length of the transcribed audio.
        audio_ms: u64,
        /// Time Whisper took.
        stt_ms: u64,
        /// Mean token probability (0–1); below `[stt] min_confidence` the text is empty.
        confidence: f32,
    },
    /// A sentence (or a model call's part of it) was synthesised.
    Synthesized {
        /// Turn.
        turn: u64,
        /// Sentence index within the turn.
        sentence: u32,
        /// Characters of (normalised) text in this piece.
        chars: usize,
        /// Length of the audio produced.
        audio_ms: u64,
        /// Time the synthesis took.
        synth_ms: u64,
    },
    /// The first sample of a sentence reached the output.
    Playing {
        /// Turn.
        turn: u64,
        /// Sentence index within the turn.
        sentence: u32,
    },
    /// Playback of a turn's answer ended, complete or cut short.
    Spoken {
        /// Turn.
        turn: u64,
        /// The text the listener actually heard (whole sentences, then the words of a
        /// sentence cut short in proportion to the audio played).
        heard: String,
        /// Characters of answer text that reached playback.
        total_chars: usize,
        /// Audio that reached the output.
        played_ms: u64,
        /// Playback was cut short by the turn's cancellation (barge-in, shutdown).
        interrupted: bool,
    },
    /// The router chose where an utterance goes.
    Route {
        /// Turn.
        turn: u64,
        /// `skill:time`, `agent:scott`, `llm`, …
        target: String,
        /// Match score (0–1).
        confidence: f32,
        /// Answered from the route cache.
        cached: bool,
    },
    /// An agent call finished.
    Agent {
        /// Turn.
        turn: u64,
        /// Agent name.
        agent: String,
        /// It answered usably.
        ok: bool,
        /// Call time.
        ms: u64,
        /// The error, when it failed.
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// A request to a remote Wyoming engine (`[stt]`/`[tts] backend = "wyoming"`); on
    /// failure the local engine served it.
    Remote {
        /// Turn.
        turn: u64,
        /// `stt` or `tts`.
        stage: &'static str,
        /// The service, `tcp://HOST:PORT`.
        url: String,
        /// It answered.
        ok: bool,
        /// Request time.
        ms: u64,
        /// The error, when it failed.
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// An agent's (or a remote engine's: agent `stt`, `tts`) circuit breaker changed state.
    Breaker {
        /// Agent name.
        agent: String,
        /// New state.
        state: BreakerState,
    },
    /// A sentence of the answer was queued for speech.
    Sentence {
        /// Turn.
        turn: u64,
        /// Index within the answer.
        index: u32,
        /// Text.
        text: String,
    },
    /// The LLM finished (or failed) its answer.
    Llm {
        /// Turn.
        turn: u64,
        /// Request → first token.
        first_token_ms: Option<u64>,
        /// Request → end.
        total_ms: u64,
        /// Malformed stream lines skipped.
        malformed: u64,
        /// The error, when it failed.
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// The whole answer of a turn, as generated.
    Answer {
        /// Turn.
        turn: u64,
        /// Text.
        text: String,
        /// Where it came from.
        source: AnswerSource,
    },
    /// A timer or alarm went off.
    TimerFired {
        /// Timer id.
        id: u64,
        /// What it was for ("2 second timer").
        label: String,
    },
    /// A wake word detected while Panda's own answer said the keyword: ignored (the
    /// self-wake guard).
    SelfWake {
        /// Detector score.
        score: f32,
        /// Stream position of the detection.
        at_ms: u64,
    },
    /// A stop word said over an answer without the wake word: the answer stops.
    Stop {
        /// The (new) turn the stop word was heard in.
        turn: u64,
        /// The stop word.
        word: String,
    },
    /// A turn was cancelled; anything it had produced is discarded.
    Cancelled {
        /// Turn.
        turn: u64,
        /// Stage that noticed the cancellation.
        stage: &'static str,
    },
    /// Satellite mode: the hub connected, paused, ran a question, or failed to.
    Satellite {
        /// The turn it concerns (none for the connection's own changes).
        turn: Option<u64>,
        /// What happened.
        what: SatelliteNews,
        /// The hub's address, its error text, or what was dropped.
        detail: String,
    },
    /// A recoverable error inside a turn or a stage.
    Error {
        /// Stage that failed.
        stage: &'static str,
        /// What went wrong.
        message: String,
    },
}

impl Event {
    /// The events of one request to a remote engine: its `remote` report and, when the
    /// backend's breaker changed, a `breaker` event named after the stage.
    pub fn remote<T>(
        turn: u64,
        stage: &'static str,
        health: &crate::wyoming::client::Health,
        ms: u64,
        result: &Result<T, crate::wyoming::client::ClientError>,
        breaker: Option<BreakerState>,
    ) -> Vec<Event> {
        let mut evs = vec![Event::Remote {
            turn,
            stage,
            url: health.url().to_string(),
            ok: result.is_ok(),
            ms,
            error: result.as_ref().err().map(|e| e.to_string()),
        }];
        if let Some(state) = breaker {
            if state == BreakerState::Open {
                tracing::warn!(url = %health.url(), stage, "remote engine's breaker open: the local one serves until it recovers");
            }
            evs.push(Event::Breaker {
                agent: stage.to_string(),
                state,
            });
        }
        evs
    }
}
