//! The building blocks the pipelines are composed of: each starts one part of the
//! topology (its threads or tasks, its bounded edges) and hands back what the composition
//! needs to feed it, read it and stop it. `listen`, `say`, `ask` and `run` are short
//! compositions of these.
//!
//! | block | starts | threads / tasks |
//! |---|---|---|
//! | [`start_stt`] | Whisper, loaded and warmed up | `panda-stt` |
//! | [`start_listening`] | audio source → listener | `panda-capture` or `panda-file-source`, `panda-listener` |
//! | [`transcriber`] | the question's engine: local Whisper or a Wyoming service | — |
//! | [`spawn_stt_stage`] | utterances → transcripts (→ questions) | a tokio task |
//! | [`start_speaking`] | sentences → Kokoro → playback | `panda-tts`, `panda-playback` |
//! | [`start_thinking`] | memory, agents, timers, the thinker | `panda-memory`, `panda-embed`, tokio tasks |

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{AUDIO_EDGE, AppError, CUE_EDGE, Input, PCM_EDGE, SENTENCE_EDGE};
use crate::audio::aec::{self, AecIo, AecStats, ReferenceFeed, ReferenceLink, SelfWakeGuard};
use crate::audio::capture::{CaptureStats, spawn_capture};
use crate::audio::file::spawn_source;
use crate::audio::playback::{self, Output, PlaybackIo};
use crate::audio::{AudioError, EdgeStats};
use crate::config::{Backend, Config};
use crate::event::{AudioFrame, Cue, Event, ListenControl, PcmChunk, Question, Speech, Utterance};
use crate::listen::listener::{self, ListenerIo, ListenerOptions};
use crate::listen::stt::{self, SttError, SttHandle};
use crate::listen::transcriber::{RemoteStt, Transcriber};
use crate::speak::kokoro::{KokoroError, voice_language};
use crate::speak::tts::{self, RemoteTts, TtsIo, TtsOptions};
use crate::think::agents::Agents;
use crate::think::timers::{self, TimerEntry};
use crate::think::turn::{Thinker, ThinkerDeps};
use crate::wyoming::client::{Health, TtsClient};

/// The question's transcriber for `[stt] backend`: the local Whisper (`stt`) alone, or a
/// Wyoming ASR service in front of it; `events` gets the remote's events.
pub fn transcriber(
    cfg: &Config,
    stt: SttHandle,
    events: &mpsc::Sender<Event>,
) -> Result<Transcriber, AppError> {
    Ok(match cfg.stt.backend {
        Backend::Local => Transcriber::Local(stt),
        Backend::Wyoming => Transcriber::Remote(Arc::new(RemoteStt::new(
            &cfg.stt.wyoming_url,
            std::time::Duration::from_millis(cfg.stt.wyoming_timeout_ms),
            &cfg.stt.language,
            stt,
            events.clone(),
        )?)),
    })
}

/// Loads Whisper on its owner thread (off the runtime: loading blocks).
pub async fn start_stt(cfg: &Config) -> Result<SttHandle, AppError> {
    let cfg = cfg.clone();
    let (handle, _worker) = tokio::task::spawn_blocking(move || stt::spawn_configured(&cfg))
        .await
        .map_err(|_| AppError::Thread("the Whisper loader"))??;
    Ok(handle)
}

/// The running listening path: the audio source, the echo canceller (when on) and the
/// listener threads.
pub struct Listening {
    listener: std::thread::JoinHandle<()>,
    source: std::thread::JoinHandle<Result<(), AudioError>>,
    aec: Option<std::thread::JoinHandle<()>>,
    file_stats: Arc<EdgeStats>,
    cap_stats: Arc<CaptureStats>,
    /// The canceller's counters (ERLE, delay, drops), when it runs.
    pub aec_stats: Option<Arc<AecStats>>,
}

/// The echo canceller's place in the listening path: the reference from playback and
/// where AEC3's delay search starts.
pub struct EchoCancel {
    /// Playback's samples.
    pub reference: ReferenceFeed,
    /// `[aec] delay_hint_ms`.
    pub delay_hint_ms: u32,
}

/// Starts the listener (wake word, VAD, endpointing, the hand-off: `opts`), the echo
/// canceller in front of it (with `echo`) and then the source, wired by audio edges.
/// Finished utterances go to `utterances`, events to `events`; `control` carries the
/// driver's follow-up requests. Cancelling `root` stops the source; the canceller and the
/// listener then drain and end.
#[allow(clippy::too_many_arguments)]
pub fn start_listening(
    cfg: &Config,
    input: Input,
    opts: ListenerOptions,
    utterances: mpsc::Sender<Utterance>,
    events: mpsc::Sender<Event>,
    control: Option<mpsc::Receiver<ListenControl>>,
    echo: Option<EchoCancel>,
    root: &CancellationToken,
) -> Result<Listening, AppError> {
    let (frame_tx, frame_rx) = mpsc::channel::<AudioFrame>(AUDIO_EDGE);
    // With a canceller: source → edge → canceller → edge → listener.
    let (frame_tx, frame_rx, aec) = match echo {
        Some(e) => {
            let (src_tx, src_rx) = mpsc::channel::<AudioFrame>(AUDIO_EDGE);
            let stats = Arc::new(AecStats::default());
            let handle = aec::spawn(
                e.delay_hint_ms,
                AecIo {
                    frames: src_rx,
                    out: frame_tx,
                    reference: e.reference,
                    root: root.clone(),
                },
                stats.clone(),
            )?;
            (src_tx, frame_rx, Some((handle, stats)))
        }
        None => (frame_tx, frame_rx, None),
    };
    let listener = listener::spawn(
        cfg.clone(),
        opts,
        ListenerIo {
            frames: frame_rx,
            utterances,
            events,
            root: root.clone(),
            control,
        },
    )?;
    let file_stats = Arc::new(EdgeStats::default());
    let cap_stats = Arc::new(CaptureStats::default());
    let source = match input {
        Input::File(spec) => spawn_source(spec, frame_tx, root.clone(), file_stats.clone()),
        Input::Device { name, retry } => spawn_capture(
            name,
            cfg.audio.ring_capacity_ms,
            retry,
            frame_tx,
            root.clone(),
            cap_stats.clone(),
        ),
    };
    let (aec, aec_stats) = match aec {
        Some((h, s)) => (Some(h), Some(s)),
        None => (None, None),
    };
    Ok(Listening {
        listener,
        source,
        aec,
        file_stats,
        cap_stats,
        aec_stats,
    })
}

impl Listening {
    /// Frames the source delivered and frames dropped on the audio edge.
    pub fn frames(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.file_stats.frames_sent.load(Relaxed)
                + self.cap_stats.edge.frames_sent.load(Relaxed),
            self.file_stats.frames_dropped.load(Relaxed)
                + self.cap_stats.edge.frames_dropped.load(Relaxed)
                + self
                    .aec_stats
                    .as_ref()
                    .map_or(0, |s| s.edge.frames_dropped.load(Relaxed)),
        )
    }

    /// Waits up to `grace` for the listener and the source to end; returns the source's
    /// error. A device thread stuck in a dying sound server is left behind (joined on a
    /// detached thread, never on the runtime's blocking pool, which would hold the exit).
    pub async fn join(self, grace: Duration) -> Result<(), AppError> {
        let Listening {
            listener,
            source,
            aec,
            ..
        } = self;
        let joined = join_detached(move || {
            if let Some(a) = aec {
                let _ = a.join();
            }
            let _ = listener.join();
            source.join()
        });
        match tokio::time::timeout(grace, joined).await {
            Ok(Ok(Ok(r))) => r.map_err(AppError::from),
            Ok(Ok(Err(_))) => Err(AppError::Thread("the audio source")),
            Ok(Err(_)) => Ok(()),
            Err(_) => {
                tracing::warn!("the audio source did not stop in time; exiting without it");
                Ok(())
            }
        }
    }
}

/// Runs a blocking join on its own detached thread; the receiver gets its result. Unlike
/// `spawn_blocking`, a join that never returns does not hold up the runtime's shutdown.
pub fn join_detached<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> tokio::sync::oneshot::Receiver<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let _ = std::thread::Builder::new()
        .name("panda-join".into())
        .spawn(move || {
            let _ = tx.send(f());
        });
    rx
}

/// The speech-to-text stage: one utterance at a time through Whisper, a `transcript`
/// event each; with `questions`, each transcript also goes on to the turn driver. With
/// `language`, each utterance is heard in the conversation's current language (the
/// thinker switches it: "speak French"). A
/// cancelled turn's utterance ends at Whisper's next abort check and its text is dropped.
/// A command utterance (said over an answer without the wake word) becomes a `stop`
/// event when it is one of `stop_words`, and nothing otherwise.
/// Ends when the utterance edge closes.
pub fn spawn_stt_stage(
    mut utterances: mpsc::Receiver<Utterance>,
    stt: Option<Transcriber>,
    events: mpsc::Sender<Event>,
    questions: Option<mpsc::Sender<Question>>,
    language: Option<tokio::sync::watch::Receiver<String>>,
    stop_words: Vec<String>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(mut u) = utterances.recv().await {
            let Some(stt) = &stt else { continue };
            if u.turn.token.is_cancelled() {
                continue;
            }
            let turn = u.turn.id;
            let span = tracing::info_span!("turn", turn);
            let lang = language.as_ref().map(|l| l.borrow().clone());
            let result = if u.command {
                // "stop" over the answer: the local model decides at once (a stop word
                // must not wait on the network, and the remote breaker is not for it).
                stt.local()
                    .transcribe_command(&u.samples, lang.as_deref(), &u.turn.token)
                    .instrument(span)
                    .await
            } else {
                stt.transcribe(turn, &u.samples, lang.as_deref(), &u.turn.token)
                    .instrument(span)
                    .await
            };
            if u.command {
                if let Ok(out) = &result {
                    match crate::listen::command::stop_command(&out.text, &stop_words) {
                        Some(word) => {
                            tracing::info!(turn, %word, "stop word over the answer");
                            if events.send(Event::Stop { turn, word }).await.is_err() {
                                return;
                            }
                        }
                        None => tracing::debug!(turn, heard = %out.text, "not a stop word"),
                    }
                }
                continue;
            }
            let (ev, text) = match result {
                Ok(mut out) => {
                    // The hand-off's fallback: a wake phrase Whisper heard at the start
                    // (a question said in the same breath) is not part of the question.
                    if let Some(p) = &u.wake_phrase {
                        out.text = listener::strip_wake_phrase(&out.text, p);
                    }
                    // The listener, still listening, takes the next speech as the
                    // question when this one held nothing (noise, the phrase alone).
                    if let Some(tx) = u.understood.take() {
                        let _ = tx.send(!out.text.trim().is_empty());
                    }
                    (
                        Event::Transcript {
                            turn,
                            text: out.text.clone(),
                            audio_ms: out.audio_ms,
                            stt_ms: out.stt_ms,
                            confidence: out.confidence,
                        },
                        Some(out.text),
                    )
                }
                Err(SttError::Cancelled) => (Event::Cancelled { turn, stage: "stt" }, None),
                Err(e) => (
                    Event::Error {
                        stage: "stt",
                        message: e.to_string(),
                    },
                    None,
                ),
            };
            if events.send(ev).await.is_err() {
                return;
            }
            if let (Some(q), Some(text)) = (&questions, text)
                && q.send(Question { turn: u.turn, text }).await.is_err()
            {
                return;
            }
        }
    })
}

/// A running speaking path: the sentence edge into it and its two threads.
pub struct Speaking {
    /// Sentences in (closing every sender ends TTS, then playback drains and ends).
    pub sentences: mpsc::Sender<Speech>,
    /// Cues (the wake earcon) straight to playback.
    pub cues: mpsc::Sender<Cue>,
    /// The Kokoro thread.
    pub tts_thread: std::thread::JoinHandle<tts::TtsStats>,
    /// The playback thread.
    pub player: std::thread::JoinHandle<Result<playback::PlaybackSummary, AudioError>>,
    /// Kokoro's load and warm-up.
    pub info: tts::TtsInfo,
    /// The remote TTS's health, when `[tts] backend = "wyoming"` (for the status page).
    pub remote: Option<Arc<Health>>,
}

impl Speaking {
    /// Waits (off the runtime) until TTS and playback have ended; playback's result.
    pub fn join(
        tts_thread: std::thread::JoinHandle<tts::TtsStats>,
        player: std::thread::JoinHandle<Result<playback::PlaybackSummary, AudioError>>,
    ) -> tokio::sync::oneshot::Receiver<Result<playback::PlaybackSummary, AppError>> {
        join_detached(move || {
            let _ = tts_thread.join();
            match player.join() {
                Ok(r) => r.map_err(AppError::from),
                Err(_) => Err(AppError::Thread("playback")),
            }
        })
    }
}

/// What playback tells the listening path about Panda's own voice (`panda run` on a
/// sound card): the canceller's reference and the self-wake guard.
#[derive(Default)]
pub struct SpeakerTaps {
    /// Every sample sent to the speaker, for the echo canceller.
    pub reference: Option<ReferenceLink>,
    /// When the answer says the wake word's keyword.
    pub guard: Option<Arc<SelfWakeGuard>>,
}

/// Starts TTS (model loaded and warmed up) and playback (output opened), wired by the PCM
/// edge; both report to `events`.
pub async fn start_speaking(
    cfg: &Config,
    voice: &str,
    output: Output,
    events: &mpsc::Sender<Event>,
    taps: SpeakerTaps,
) -> Result<Speaking, AppError> {
    check_voice(cfg, voice)?;
    let (sent_tx, sent_rx) = mpsc::channel::<Speech>(SENTENCE_EDGE);
    let (pcm_tx, pcm_rx) = mpsc::channel::<PcmChunk>(PCM_EDGE);
    let (cue_tx, cue_rx) = mpsc::channel::<Cue>(CUE_EDGE);
    let mut topts = tts_options(cfg, voice);
    // The remote speaks the configured voice; another one asked for (`panda say
    // --voice`) is Kokoro's.
    if cfg.tts.backend == Backend::Wyoming && voice == cfg.tts.voice {
        let client = TtsClient::new(
            &cfg.tts.wyoming_url,
            Duration::from_millis(cfg.tts.wyoming_timeout_ms),
        )?;
        topts.remote = Some(RemoteTts {
            health: Arc::new(Health::new(client.url())),
            client,
            voice: Some(cfg.tts.wyoming_voice.clone()).filter(|v| !v.is_empty()),
        });
    }
    let remote = topts.remote.as_ref().map(|r| r.health.clone());
    let tts_io = TtsIo {
        sentences: sent_rx,
        pcm: pcm_tx,
        events: events.clone(),
    };
    let (tts_thread, info) = tokio::task::spawn_blocking(move || tts::spawn(topts, tts_io))
        .await
        .map_err(|_| AppError::Thread("the Kokoro loader"))??;
    let pb_events = events.clone();
    let player = tokio::task::spawn_blocking(move || {
        playback::spawn(
            output,
            PlaybackIo {
                chunks: pcm_rx,
                events: pb_events,
                cues: Some(cue_rx),
                reference: taps.reference,
                guard: taps.guard,
            },
        )
    })
    .await
    .map_err(|_| AppError::Thread("opening the output"))??;
    Ok(Speaking {
        sentences: sent_tx,
        cues: cue_tx,
        tts_thread,
        player,
        info,
        remote,
    })
}

/// The TTS options `[tts]` and `[models]` describe, for `voice`.
pub fn tts_options(cfg: &Config, voice: &str) -> TtsOptions {
    TtsOptions {
        model_dir: cfg.model_path(&cfg.tts.model_dir),
        ort_lib: cfg.model_path(std::path::Path::new(crate::onnx::ORT_LIB)),
        threads: cfg.tts.threads as usize,
        gpu: cfg.tts.gpu,
        voice: voice.to_string(),
        first_fragment_words: cfg.tts.first_fragment_words as usize,
        remote: None,
    }
}

/// Checks that `voice` is installed; the error lists the installed voices.
pub fn check_voice(cfg: &Config, voice: &str) -> Result<(), KokoroError> {
    let dir = cfg.model_path(&cfg.tts.model_dir);
    let installed = tts::installed_voices(&dir);
    if installed.is_empty() {
        return Err(KokoroError::Missing(dir.join("voices")));
    }
    if !installed.iter().any(|v| v == voice) || voice_language(voice).is_none() {
        return Err(KokoroError::UnknownVoice {
            name: voice.to_string(),
            installed: installed.join(", "),
        });
    }
    Ok(())
}

/// The thinking path's parts: the thinker (with memory, agents and timers), the agents
/// (for the status page's health view), the timers that fell due while Panda was off,
/// and memory (closed last at shutdown).
pub struct Thinking {
    /// Answers questions.
    pub thinker: Thinker,
    /// Helper agents (their health runs in the background until `root` is cancelled).
    pub agents: std::sync::Arc<Agents>,
    /// Timers due while Panda was not running.
    pub missed: Vec<TimerEntry>,
    /// Long-term memory, when enabled.
    pub memory: Option<crate::memory::Memory>,
}

/// Opens memory, starts the agents' health checks and the timer task, and builds the
/// thinker; `voice` overrides `[tts] voice`.
pub async fn start_thinking(
    cfg: &Config,
    events: &mpsc::Sender<Event>,
    root: &CancellationToken,
    voice: Option<String>,
    language: Option<tokio::sync::watch::Sender<String>>,
) -> Result<Thinking, AppError> {
    let memory = if cfg.memory.enabled {
        Some(crate::memory::Memory::open(cfg).await?)
    } else {
        None
    };
    let http = crate::think::http_client(cfg.llm.connect_timeout_ms);
    let agents = Agents::new(&cfg.agents, http.clone(), Some(events.clone()));
    agents.spawn_health(root);
    let (timer_handle, missed) =
        timers::spawn(&cfg.state.dir, events.clone(), root.clone()).await?;
    let thinker = Thinker::new(
        cfg,
        ThinkerDeps {
            http,
            agents: agents.clone(),
            timers: timer_handle,
            events: events.clone(),
            memory: memory.clone(),
            voice,
            language,
        },
    );
    Ok(Thinking {
        thinker,
        agents,
        missed,
        memory,
    })
}
