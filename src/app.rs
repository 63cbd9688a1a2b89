//! Wiring: the only module that connects stages. It creates the bounded channels, the
//! root cancellation token and the task tracker, starts each stage with its dependencies,
//! and shuts them down in order.
//!
//! Two pipelines today. The speaking path (`panda say`, [`say`]): sentences → TTS thread →
//! playback thread, one turn whose token Ctrl-C cancels. The listening path
//! (`panda listen`, [`listen`]):
//!
//! ```text
//!  source thread ──AUDIO_EDGE──▶ listener thread ──UTTERANCE_EDGE──▶ turn task ──▶ stt thread
//!        (file or cpal)             (wake, VAD, endpoint)              (async)        (whisper)
//!                    all stages ──EVENT_EDGE──▶ caller (JSON lines)
//! ```
//!
//! Shutdown: cancelling the root token stops the source; its sender drops, the listener's
//! `recv` returns `None`, it flushes and drops its senders, the turn task ends when the
//! utterance edge closes, and the event stream ends when every sender is gone.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::audio::capture::{CaptureStats, spawn_capture};
use crate::audio::file::{FileSpec, spawn_source};
use crate::audio::playback::{self, Output, PlaybackIo};
use crate::audio::{AudioError, EdgeStats};
use crate::config::Config;
use crate::event::{AudioFrame, Event, PcmChunk, Sentence, Turn, Utterance};
use crate::listen::listener::{self, ListenerIo, WakeVerifier};
use crate::listen::stt::{self, SttError, SttHandle};
use crate::listen::wake::WakeError;
use crate::speak::kokoro::{KokoroError, voice_language};
use crate::speak::normalize::normalize;
use crate::speak::sentences::{SentenceSplitter, split_all};
use crate::speak::tts::{self, TtsIo, TtsOptions};
use crate::think::{agents::Agents, timers, turn::Thinker, turn::TurnIo};

/// Audio edge, source → listener: 64 frames ≈ 1.9 s. When full, a real-time source
/// drops the newest frame and counts it; a batch (file) source waits.
pub const AUDIO_EDGE: usize = 64;
/// Control edge, listener → turn task: finished utterances. When full, the listener
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

/// After a turn is cancelled, how long the driver waits for playback's report of what
/// was heard. Playback flushes within 50 ms of a cancel and reports at once; a turn whose
/// audio never reached playback is never reported, and counts as heard = nothing.
const HEARD_AFTER_CANCEL: Duration = Duration::from_millis(1500);

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

/// Runs the listening pipeline until the input ends or `root` is cancelled, handing every
/// event to `on_event` in order.
pub async fn listen(
    cfg: &Config,
    opts: ListenOptions,
    root: CancellationToken,
    mut on_event: impl FnMut(&Event),
) -> Result<ListenSummary, AppError> {
    let verify = opts.use_wake && cfg.wake.verify;
    let stt = if opts.transcribe || verify {
        let model = cfg.model_path(&cfg.stt.model);
        let cfg = cfg.stt.clone();
        let (handle, _worker) = tokio::task::spawn_blocking(move || stt::spawn(&cfg, &model))
            .await
            .expect("the STT loader does not panic")?;
        Some(handle)
    } else {
        None
    };

    let (frame_tx, frame_rx) = mpsc::channel::<AudioFrame>(AUDIO_EDGE);
    let (utt_tx, utt_rx) = mpsc::channel::<Utterance>(UTTERANCE_EDGE);
    let (ev_tx, mut ev_rx) = mpsc::channel::<Event>(EVENT_EDGE);

    let verifier = stt
        .as_ref()
        .filter(|_| verify)
        .map(|h| WakeVerifier::new(h.clone(), &cfg.wake.phrase, cfg.wake.verify_window_ms));
    let stt = stt.filter(|_| opts.transcribe);
    let listener = listener::spawn(
        cfg.clone(),
        opts.use_wake,
        verifier,
        ListenerIo {
            frames: frame_rx,
            utterances: utt_tx,
            events: ev_tx.clone(),
            root: root.clone(),
        },
    )?;

    let tracker = TaskTracker::new();
    tracker.spawn(turns(utt_rx, stt, ev_tx));
    tracker.close();

    let file_stats = Arc::new(EdgeStats::default());
    let cap_stats = Arc::new(CaptureStats::default());
    let source = match opts.input {
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

    while let Some(ev) = ev_rx.recv().await {
        on_event(&ev);
    }
    tracker.wait().await;
    let _ = tokio::task::spawn_blocking(move || listener.join()).await;
    let source_result = tokio::task::spawn_blocking(move || source.join())
        .await
        .expect("joining does not panic");
    match source_result {
        Ok(r) => r?,
        Err(_) => {
            return Err(AppError::Audio(AudioError::Device {
                name: "source".into(),
                problem: "the audio source thread panicked".into(),
            }));
        }
    }
    use std::sync::atomic::Ordering::Relaxed;
    Ok(ListenSummary {
        frames: file_stats.frames_sent.load(Relaxed) + cap_stats.edge.frames_sent.load(Relaxed),
        frames_dropped: file_stats.frames_dropped.load(Relaxed)
            + cap_stats.edge.frames_dropped.load(Relaxed),
    })
}

/// The turn task: one utterance at a time through speech-to-text. A cancelled turn ends
/// here at once (the STT worker lets go at its next abort check) and its text is dropped.
async fn turns(
    mut rx: mpsc::Receiver<Utterance>,
    stt: Option<SttHandle>,
    events: mpsc::Sender<Event>,
) {
    while let Some(u) = rx.recv().await {
        let Some(stt) = &stt else { continue };
        let turn = u.turn.id;
        let span = tracing::info_span!("turn", turn);
        let ev = match stt
            .transcribe(&u.samples, &u.turn.token)
            .instrument(span)
            .await
        {
            Ok(out) => Event::Transcript {
                turn,
                text: out.text,
                audio_ms: out.audio_ms,
                stt_ms: out.stt_ms,
                confidence: out.confidence,
            },
            Err(SttError::Cancelled) => Event::Cancelled { turn, stage: "stt" },
            Err(e) => Event::Error {
                stage: "stt",
                message: e.to_string(),
            },
        };
        if events.send(ev).await.is_err() {
            return;
        }
    }
}

/// A running speaking path: the sentence edge into it and its two threads.
struct Speaking {
    sentences: mpsc::Sender<Sentence>,
    tts_thread: std::thread::JoinHandle<tts::TtsStats>,
    player: std::thread::JoinHandle<Result<playback::PlaybackSummary, AudioError>>,
    info: tts::TtsInfo,
}

/// Starts TTS (model loaded and warmed up) and playback (output opened), wired by the PCM
/// edge; both report to `events`. Closing the returned sentence edge ends TTS, which
/// closes the PCM edge, after which playback drains and ends.
async fn start_speaking(
    cfg: &Config,
    voice: &str,
    output: Output,
    events: &mpsc::Sender<Event>,
) -> Result<Speaking, AppError> {
    let (sent_tx, sent_rx) = mpsc::channel::<Sentence>(SENTENCE_EDGE);
    let (pcm_tx, pcm_rx) = mpsc::channel::<PcmChunk>(PCM_EDGE);
    let topts = tts_options(cfg, voice);
    let tts_io = TtsIo {
        sentences: sent_rx,
        pcm: pcm_tx,
        events: events.clone(),
    };
    let (tts_thread, info) = tokio::task::spawn_blocking(move || tts::spawn(topts, tts_io))
        .await
        .expect("the TTS loader does not panic")?;
    let pb_events = events.clone();
    let player = tokio::task::spawn_blocking(move || {
        playback::spawn(
            output,
            PlaybackIo {
                chunks: pcm_rx,
                events: pb_events,
            },
        )
    })
    .await
    .expect("opening the output does not panic")?;
    Ok(Speaking {
        sentences: sent_tx,
        tts_thread,
        player,
        info,
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

/// `panda say`: text → sentences → TTS thread → playback thread, as one turn that Ctrl-C
/// (cancelling `root`) interrupts. Every event goes to `on_event` in order.
///
/// ```text
///  feeder ──SENTENCE_EDGE──▶ tts thread ──PCM_EDGE──▶ playback thread ──▶ sink
///      all ──EVENT_EDGE──▶ caller
/// ```
pub async fn say(
    cfg: &Config,
    opts: SayOptions,
    root: CancellationToken,
    mut on_event: impl FnMut(&Event),
) -> Result<SaySummary, AppError> {
    check_voice(cfg, &opts.voice)?;
    let lang = voice_language(&opts.voice).unwrap_or("en-us");
    if let SayInput::Text(t) = &opts.input
        && normalize(t, lang).text.is_empty()
    {
        return Err(AppError::NothingToSay);
    }
    let (ev_tx, mut ev_rx) = mpsc::channel::<Event>(EVENT_EDGE);
    let Speaking {
        sentences: sent_tx,
        tts_thread,
        player,
        info,
    } = start_speaking(cfg, &opts.voice, opts.output.clone(), &ev_tx).await?;

    let turn = Turn {
        id: 1,
        token: root.child_token(),
    };
    let max_chars = cfg.tts.max_sentence_chars as usize;
    let (voice, speed) = (opts.voice.clone(), opts.speed);
    let feeder_events = ev_tx.clone();
    drop(ev_tx);
    let started = std::time::Instant::now();
    let feeder = tokio::spawn(async move {
        let mut index = 0u32;
        let make = |text: String, index: u32, last: bool| Sentence {
            turn: turn.clone(),
            index,
            text,
            voice: voice.clone(),
            speed,
            last,
        };
        match opts.input {
            SayInput::Text(t) => {
                for s in split_all(&t, max_chars) {
                    if sent_tx.send(make(s, index, false)).await.is_err() {
                        return;
                    }
                    index += 1;
                }
            }
            SayInput::Stdin => {
                // Lines arrive on a blocking reader thread; each line is fed to the
                // splitter, so a sentence is spoken as soon as it is complete.
                let (line_tx, mut line_rx) =
                    mpsc::channel::<std::io::Result<String>>(SENTENCE_EDGE);
                std::thread::spawn(move || {
                    use std::io::BufRead;
                    for line in std::io::stdin().lock().lines() {
                        let stop = line.is_err();
                        if line_tx.blocking_send(line).is_err() || stop {
                            return;
                        }
                    }
                });
                let mut splitter = SentenceSplitter::new(max_chars);
                loop {
                    let line = tokio::select! {
                        _ = turn.token.cancelled() => return,
                        l = line_rx.recv() => l,
                    };
                    let Some(line) = line else { break };
                    let line = match line {
                        Ok(l) => l,
                        Err(e) => {
                            let _ = feeder_events
                                .send(Event::Error {
                                    stage: "input",
                                    message: format!("stdin: {e} (only UTF-8 text can be spoken)"),
                                })
                                .await;
                            break;
                        }
                    };
                    for s in splitter.push(&format!("{line}\n")) {
                        if sent_tx.send(make(s, index, false)).await.is_err() {
                            return;
                        }
                        index += 1;
                    }
                }
                if let Some(s) = splitter.finish() {
                    let _ = sent_tx.send(make(s, index, false)).await;
                    index += 1;
                }
            }
        }
        // The end-of-answer marker: playback reports the turn when it has played it all.
        let _ = sent_tx.send(make(String::new(), index, true)).await;
    });

    let mut summary = SaySummary {
        load_ms: info.load_ms + info.warmup_ms,
        ..Default::default()
    };
    while let Some(ev) = ev_rx.recv().await {
        match &ev {
            Event::Playing { .. } if summary.first_audio_ms.is_none() => {
                summary.first_audio_ms = Some(started.elapsed().as_millis() as u64);
            }
            Event::Spoken {
                played_ms,
                interrupted,
                ..
            } => {
                summary.played_ms = *played_ms;
                summary.interrupted = *interrupted;
            }
            _ => {}
        }
        on_event(&ev);
    }
    let _ = feeder.await;
    let _ = tokio::task::spawn_blocking(move || tts_thread.join()).await;
    match tokio::task::spawn_blocking(move || player.join()).await {
        Ok(Ok(r)) => {
            r?;
        }
        _ => {
            return Err(AppError::Audio(AudioError::Device {
                name: "playback".into(),
                problem: "the playback thread panicked".into(),
            }));
        }
    }
    Ok(summary)
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

/// What `panda ask` reports per turn.
#[derive(Debug, Clone)]
pub struct AskTurn {
    /// The question.
    pub question: String,
    /// The answer as generated.
    pub answer: String,
    /// Where it came from.
    pub source: &'static str,
}

/// Waits until playback reports what was heard of `turn`'s answer (or the run stops) and
/// tells the thinker, which stores the exchange as heard. Timers that go off meanwhile
/// are queued in `fired` as announcements for after this answer.
///
/// A turn cancelled before any of its audio reached playback (a stop or a barge-in while
/// Panda was still thinking) gets no report: once its token is cancelled, playback has
/// [`HEARD_AFTER_CANCEL`] to report what it flushed, and after that nothing was heard.
/// Without this the driver waited forever and Panda never answered again.
async fn wait_heard(
    heard_rx: &mut mpsc::Receiver<Event>,
    root: &CancellationToken,
    turn: &Turn,
    thinker: &mut Thinker,
    fired: &mut std::collections::VecDeque<String>,
) {
    let token = turn.token.clone();
    let turn = turn.id;
    let deadline = tokio::time::sleep(Duration::from_secs(365 * 24 * 3600));
    tokio::pin!(deadline);
    let mut cancelled = false;
    loop {
        let ev = tokio::select! {
            _ = root.cancelled() => return,
            _ = token.cancelled(), if !cancelled => {
                cancelled = true;
                deadline.as_mut().reset(tokio::time::Instant::now() + HEARD_AFTER_CANCEL);
                continue;
            }
            _ = &mut deadline, if cancelled => {
                thinker.heard(turn, "", true).await;
                return;
            }
            e = heard_rx.recv() => e,
        };
        match ev {
            Some(Event::Spoken {
                turn: t,
                heard,
                interrupted,
                ..
            }) if t == turn => {
                thinker.heard(t, &heard, interrupted).await;
                return;
            }
            Some(Event::TimerFired { label, .. }) => fired.push_back(timers::announcement(&label)),
            Some(_) => continue,
            None => return,
        }
    }
}

/// `panda ask`: runs each question as one turn through the thinking path — and, with
/// `speak`, through TTS and playback, waiting for each answer to be heard before the next
/// question (as in a conversation). Answer text streams to `on_text` as it is produced;
/// every event goes to `on_event`.
///
/// ```text
///  driver task (Thinker) ──SENTENCE_EDGE──▶ tts ──PCM_EDGE──▶ playback
///        ▲ HEARD_EDGE (spoken, timer fired)            all ──EVENT_EDGE──▶ caller
/// ```
pub async fn ask(
    cfg: &Config,
    opts: AskOptions,
    root: CancellationToken,
    mut on_event: impl FnMut(&Event),
    on_text: Box<dyn FnMut(&str) + Send>,
) -> Result<Vec<AskTurn>, AppError> {
    let (ev_tx, mut ev_rx) = mpsc::channel::<Event>(EVENT_EDGE);
    let http = crate::think::http_client(cfg.llm.connect_timeout_ms);
    let agents = Agents::new(&cfg.agents, http.clone(), Some(ev_tx.clone()));
    agents.spawn_health(&root);
    let (timer_handle, missed) = timers::spawn(&cfg.state.dir, ev_tx.clone(), root.clone()).await?;
    let memory = if cfg.memory.enabled {
        Some(crate::memory::Memory::open(cfg).await?)
    } else {
        None
    };
    let mut thinker = Thinker::new(cfg, http, agents, timer_handle, ev_tx.clone());
    thinker.set_voice(opts.voice.clone());
    thinker.set_memory(memory.clone());

    // The speaking path, when asked for.
    let mut speaking = None;
    if let Some(output) = opts.speak.clone() {
        let voice = opts.voice.clone().unwrap_or_else(|| cfg.tts.voice.clone());
        check_voice(cfg, &voice)?;
        let sp = start_speaking(cfg, &voice, output, &ev_tx).await?;
        speaking = Some((sp.sentences, sp.tts_thread, sp.player));
    }
    let sentences = speaking.as_ref().map(|s| s.0.clone());
    let speak = sentences.is_some();
    let (heard_tx, mut heard_rx) = mpsc::channel::<Event>(HEARD_EDGE);
    let questions = opts.questions;
    let wait_timers = opts.wait_timers;
    let driver_root = root.clone();
    drop(ev_tx);
    let driver = tokio::spawn(async move {
        let mut on_text = on_text;
        let mut out = Vec::new();
        // Timers that went off while a turn was being spoken, announced after it.
        let mut fired = std::collections::VecDeque::new();
        for text in timers::missed_announcements(&missed) {
            on_text(&format!("({text})\n"));
        }
        for (i, q) in questions.iter().enumerate() {
            if driver_root.is_cancelled() {
                break;
            }
            let turn = Turn {
                id: i as u64 + 1,
                token: driver_root.child_token(),
            };
            let span = tracing::info_span!("turn", turn = turn.id);
            let mut io = TurnIo {
                sentences: sentences.as_ref(),
                on_text: &mut *on_text,
            };
            let outcome = thinker.turn(&turn, q, &mut io).instrument(span).await;
            on_text("\n");
            if speak && !outcome.answer.is_empty() {
                wait_heard(&mut heard_rx, &driver_root, &turn, &mut thinker, &mut fired).await;
            } else {
                thinker.heard(turn.id, &outcome.answer, false).await;
            }
            out.push(AskTurn {
                question: q.clone(),
                answer: outcome.answer,
                source: outcome.source,
            });
        }
        // Timers that fire while we wait are announced like any answer.
        let mut id = questions.len() as u64;
        while wait_timers && (!fired.is_empty() || thinker.pending_timers().await > 0) {
            let text = match fired.pop_front() {
                Some(t) => t,
                None => {
                    let ev = tokio::select! {
                        _ = driver_root.cancelled() => None,
                        e = heard_rx.recv() => e,
                    };
                    match ev {
                        Some(Event::TimerFired { label, .. }) => timers::announcement(&label),
                        Some(_) => continue,
                        None => break,
                    }
                }
            };
            id += 1;
            let turn = Turn {
                id,
                token: driver_root.child_token(),
            };
            let mut io = TurnIo {
                sentences: sentences.as_ref(),
                on_text: &mut *on_text,
            };
            let o = thinker.announce(&turn, &text, &mut io).await;
            on_text("\n");
            out.push(AskTurn {
                question: String::new(),
                answer: o.answer,
                source: o.source,
            });
        }
        drop(sentences);
        out
    });

    // The event consumer: forwards to the caller; playback's reports go to the driver.
    // The timer and health tasks hold event senders until the root token is cancelled,
    // so the loop ends when the driver is done and the speaking path has drained.
    let mut driver = Some(driver);
    let mut turns = Vec::new();
    let mut tts_join = None;
    let mut speaking = speaking;
    loop {
        tokio::select! {
            ev = ev_rx.recv() => {
                let Some(ev) = ev else { break };
                if matches!(ev, Event::Spoken { .. } | Event::TimerFired { .. }) {
                    let _ = heard_tx.send(ev.clone()).await;
                }
                on_event(&ev);
            }
            r = async { driver.as_mut().expect("guarded").await }, if driver.is_some() => {
                driver = None;
                turns = r.unwrap_or_default();
                // Close the sentence edge: TTS ends, then playback drains and ends.
                if let Some((tx, tts_thread, player)) = speaking.take() {
                    drop(tx);
                    tts_join = Some(tokio::task::spawn_blocking(move || {
                        let _ = tts_thread.join();
                        player.join()
                    }));
                } else {
                    root.cancel();
                }
            }
            r = async { tts_join.as_mut().expect("guarded").await }, if tts_join.is_some() => {
                tts_join = None;
                if let Ok(Ok(Err(e))) = r {
                    tracing::warn!(error = %e, "playback ended with an error");
                }
                root.cancel();
            }
        }
    }
    // Memory flushes last, after every stage that could still write to it has ended.
    if let Some(m) = memory
        && let Err(e) = m.close().await
    {
        tracing::warn!(error = %e, "memory: closing failed");
    }
    Ok(turns)
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
}

/// The turn in progress, for barge-in and `POST /api/stop`.
#[derive(Default)]
struct Active {
    turn: Option<Turn>,
}

type Shared<T> = Arc<std::sync::Mutex<T>>;

fn cancel_active(active: &Shared<Active>, except: Option<u64>) -> bool {
    let g = active.lock().unwrap_or_else(|e| e.into_inner());
    match &g.turn {
        Some(t) if Some(t.id) != except && !t.token.is_cancelled() => {
            t.token.cancel();
            true
        }
        _ => false,
    }
}

/// `panda run`: the whole appliance in one process.
///
/// ```text
///  source ──AUDIO_EDGE──▶ listener ──UTTERANCE_EDGE──▶ turn driver ──SENTENCE_EDGE──▶ tts ──PCM_EDGE──▶ playback
///  (mic/file)        (wake, VAD, endpoint)     (stt → Thinker: skills,      (kokoro)           (speaker/WAV)
///                                              agents, LLM, memory)
///  status page API ──ASK_EDGE──▶ turn driver          every stage ──EVENT_EDGE──▶ consumer:
///                                                      status hub + metrics, barge-in, heard → driver
/// ```
///
/// Barge-in: a wake word while an answer plays cancels that turn's token — the LLM
/// stream is dropped, TTS stops between chunks, playback flushes — and the new turn
/// proceeds. While Panda speaks the listener takes no utterance without the wake word
/// (the endpointer is armed only by a wake). Shutdown (SIGTERM, or the end of a
/// recording): the source stops, the listener drains, the driver finishes or cancels its
/// turn, TTS and playback drain, all under `[run] grace_ms`; memory is flushed last.
pub async fn run(
    cfg: &Config,
    opts: RunOptions,
    root: CancellationToken,
    mut on_event: impl FnMut(&Event),
) -> Result<RunSummary, AppError> {
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let hub = crate::web::Hub::new(&cfg.web, metrics.clone());
    let (ev_tx, mut ev_rx) = mpsc::channel::<Event>(EVENT_EDGE);

    // Models first (each on its owner thread), so a missing one fails before audio flows.
    let model = cfg.model_path(&cfg.stt.model);
    let stt_cfg = cfg.stt.clone();
    let (stt, _stt_worker) = tokio::task::spawn_blocking(move || stt::spawn(&stt_cfg, &model))
        .await
        .expect("the STT loader does not panic")?;
    let memory = if cfg.memory.enabled {
        Some(crate::memory::Memory::open(cfg).await?)
    } else {
        None
    };
    let voice = cfg.tts.voice.clone();
    check_voice(cfg, &voice)?;
    let Speaking {
        sentences,
        tts_thread,
        player,
        ..
    } = start_speaking(cfg, &voice, opts.output.clone(), &ev_tx).await?;

    let http = crate::think::http_client(cfg.llm.connect_timeout_ms);
    let agents = Agents::new(&cfg.agents, http.clone(), Some(ev_tx.clone()));
    agents.spawn_health(&root);
    let (timer_handle, missed) = timers::spawn(&cfg.state.dir, ev_tx.clone(), root.clone()).await?;
    let mut thinker = Thinker::new(cfg, http, agents.clone(), timer_handle, ev_tx.clone());
    thinker.set_memory(memory.clone());

    // The status page.
    let active: Shared<Active> = Arc::default();
    let (ask_tx, mut ask_rx) = mpsc::channel::<String>(ASK_EDGE);
    let mut summary = RunSummary::default();
    let web_root = root.child_token();
    let mut web_task = None;
    if opts.web && cfg.web.enabled {
        let a2 = active.clone();
        let ag = agents.clone();
        let handle = crate::web::WebHandle {
            asks: ask_tx.clone(),
            stop: Arc::new(move || cancel_active(&a2, None)),
            agents: Arc::new(move || {
                serde_json::Value::Array(
                    ag.health()
                        .into_iter()
                        .map(|h| {
                            serde_json::json!({
                                "name": h.name,
                                "healthy": h.healthy,
                                "breaker": h.breaker,
                                "calls": h.calls,
                            })
                        })
                        .collect(),
                )
            }),
            llm: serde_json::json!({
                "enabled": cfg.llm.enabled,
                "url": cfg.llm.url,
                "model": cfg.llm.model,
            }),
        };
        let (addr, task) =
            crate::web::serve(&cfg.web, hub.clone(), handle, web_root.clone()).await?;
        summary.web_addr = Some(addr);
        web_task = Some(task);
    }
    drop(ask_tx);

    // The listening path.
    let verify = opts.use_wake && cfg.wake.verify;
    let verifier =
        verify.then(|| WakeVerifier::new(stt.clone(), &cfg.wake.phrase, cfg.wake.verify_window_ms));
    let (frame_tx, frame_rx) = mpsc::channel::<AudioFrame>(AUDIO_EDGE);
    let (utt_tx, mut utt_rx) = mpsc::channel::<Utterance>(UTTERANCE_EDGE);
    let source_stop = root.child_token();
    let listener = listener::spawn(
        cfg.clone(),
        opts.use_wake,
        verifier,
        ListenerIo {
            frames: frame_rx,
            utterances: utt_tx,
            events: ev_tx.clone(),
            root: source_stop.clone(),
        },
    )?;
    let file_stats = Arc::new(EdgeStats::default());
    let cap_stats = Arc::new(CaptureStats::default());
    let source = match opts.input.clone() {
        Input::File(spec) => spawn_source(spec, frame_tx, source_stop.clone(), file_stats.clone()),
        Input::Device { name, retry } => spawn_capture(
            name,
            cfg.audio.ring_capacity_ms,
            retry,
            frame_tx,
            source_stop.clone(),
            cap_stats.clone(),
        ),
    };
    hub.set_state(crate::web::State::Listening);

    // The turn driver: utterances and typed questions, one turn at a time; timers that
    // go off are announced between turns.
    let (heard_tx, mut heard_rx) = mpsc::channel::<Event>(HEARD_EDGE);
    let driver_root = root.clone();
    let driver_active = active.clone();
    let driver_hub = hub.clone();
    let driver_events = ev_tx.clone();
    let file_mode = matches!(opts.input, Input::File(_));
    let progress = Arc::new(Progress::new());
    let driver_progress = progress.clone();
    let driver = tokio::spawn(async move {
        let mut answered = 0usize;
        let mut fired = std::collections::VecDeque::new();
        fired.extend(timers::missed_announcements(&missed));
        let mut utterances_open = true;
        let mut asks_open = true;
        loop {
            // A question: spoken (utterance) or typed (API); or a timer announcement.
            enum Job {
                Spoken(Utterance),
                Typed(String),
                Announce(String),
            }
            let job = if let Some(text) = fired.pop_front() {
                Job::Announce(text)
            } else {
                // A recording ends the run when its last question is answered.
                if !utterances_open && (!asks_open || file_mode) {
                    break;
                }
                tokio::select! {
                    _ = driver_root.cancelled() => break,
                    u = utt_rx.recv(), if utterances_open => match u {
                        Some(u) => Job::Spoken(u),
                        None => { utterances_open = false; continue; }
                    },
                    a = ask_rx.recv(), if asks_open => match a {
                        Some(a) => Job::Typed(a),
                        None => { asks_open = false; continue; }
                    },
                    e = heard_rx.recv() => match e {
                        Some(Event::TimerFired { label, .. }) => {
                            Job::Announce(timers::announcement(&label))
                        }
                        _ => continue,
                    },
                }
            };
            driver_progress.begin();
            let (turn, text, announce) = match job {
                Job::Spoken(u) => {
                    if u.turn.token.is_cancelled() {
                        driver_progress.end();
                        continue;
                    }
                    let transcript = stt.transcribe(&u.samples, &u.turn.token).await;
                    let ev = match &transcript {
                        Ok(out) => Event::Transcript {
                            turn: u.turn.id,
                            text: out.text.clone(),
                            audio_ms: out.audio_ms,
                            stt_ms: out.stt_ms,
                            confidence: out.confidence,
                        },
                        Err(SttError::Cancelled) => Event::Cancelled {
                            turn: u.turn.id,
                            stage: "stt",
                        },
                        Err(e) => Event::Error {
                            stage: "stt",
                            message: e.to_string(),
                        },
                    };
                    let _ = driver_events.send(ev).await;
                    match transcript {
                        Ok(out) if !out.text.trim().is_empty() => (u.turn, out.text, false),
                        _ => {
                            driver_progress.end();
                            continue;
                        }
                    }
                }
                Job::Typed(q) => {
                    let t = Turn {
                        id: listener::next_turn_id(),
                        token: driver_root.child_token(),
                    };
                    driver_hub.asked(t.id, &q);
                    (t, q, false)
                }
                Job::Announce(text) => (
                    Turn {
                        id: listener::next_turn_id(),
                        token: driver_root.child_token(),
                    },
                    text,
                    true,
                ),
            };
            driver_active.lock().unwrap_or_else(|e| e.into_inner()).turn = Some(turn.clone());
            let hub_text = driver_hub.clone();
            let tid = turn.id;
            let mut on_text = move |d: &str| hub_text.text(tid, d);
            let mut io = TurnIo {
                sentences: Some(&sentences),
                on_text: &mut on_text,
            };
            let span = tracing::info_span!("turn", turn = turn.id);
            let outcome = if announce {
                thinker
                    .announce(&turn, &text, &mut io)
                    .instrument(span)
                    .await
            } else {
                thinker.turn(&turn, &text, &mut io).instrument(span).await
            };
            driver_hub.flush_text(true);
            if !outcome.answer.is_empty() {
                wait_heard(&mut heard_rx, &driver_root, &turn, &mut thinker, &mut fired).await;
            } else if driver_hub.state() == crate::web::State::Thinking {
                driver_hub.set_state(crate::web::State::Listening);
            }
            driver_active.lock().unwrap_or_else(|e| e.into_inner()).turn = None;
            driver_progress.end();
            answered += 1;
        }
        drop(sentences);
        answered
    });
    drop(ev_tx);
    sd_notify("READY=1");
    let watchdog = watchdog_interval(cfg.run.watchdog_ms);
    let mut watchdog_tick = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));

    // The event consumer: status and metrics, barge-in, and playback's reports to the
    // driver. It ends when every event sender is gone (stages ended, root cancelled).
    let mut driver = Some(driver);
    let mut tail = None;
    let mut speaking_threads = Some((tts_thread, player));
    let mut stopping = false;
    let grace = tokio::time::sleep(Duration::from_secs(365 * 24 * 3600));
    tokio::pin!(grace);
    loop {
        tokio::select! {
            ev = ev_rx.recv() => {
                let Some(ev) = ev else { break };
                // Background reports (breaker changes, timers, errors) are not a turn's
                // progress: a breaker probing a dead agent must not keep a stuck
                // appliance's watchdog fed.
                if !matches!(ev, Event::Breaker { .. } | Event::TimerFired { .. } | Event::Error { .. }) {
                    progress.touch();
                }
                hub.observe(&ev);
                if let Event::Wake { turn, .. } = &ev
                    && cfg.run.barge_in
                    && cancel_active(&active, Some(*turn))
                {
                    metrics.barge_ins.add(1);
                    tracing::info!(turn, "barge-in: the answer in progress is cancelled");
                }
                if matches!(ev, Event::Spoken { .. } | Event::TimerFired { .. }) {
                    let _ = heard_tx.send(ev.clone()).await;
                }
                on_event(&ev);
            }
            r = async { driver.as_mut().expect("guarded").await }, if driver.is_some() => {
                driver = None;
                summary.turns = r.unwrap_or_default();
                // The sentence edge is closed: TTS ends, playback drains, then both end.
                if let Some((t, p)) = speaking_threads.take() {
                    tail = Some(join_detached(move || {
                        let _ = t.join();
                        p.join()
                    }));
                }
            }
            r = async { tail.as_mut().expect("guarded").await }, if tail.is_some() => {
                if let Ok(Ok(Err(e))) = r {
                    tracing::warn!(error = %e, "playback ended with an error");
                }
                // Every stage of a turn is done; background tasks (health checks, timers)
                // stop with the root token. Pass on what is still queued, then stop.
                root.cancel();
                while let Ok(ev) = ev_rx.try_recv() {
                    hub.observe(&ev);
                    on_event(&ev);
                }
                break;
            }
            _ = root.cancelled(), if !stopping => {
                stopping = true;
                sd_notify("STOPPING=1");
                hub.set_state(crate::web::State::Idle);
                grace.as_mut().reset(tokio::time::Instant::now() + Duration::from_millis(cfg.run.grace_ms));
            }
            _ = &mut grace => {
                tracing::warn!(grace_ms = cfg.run.grace_ms, "stages did not finish within the grace period; exiting anyway");
                break;
            }
            _ = watchdog_tick.tick(), if watchdog.is_some() => {
                match progress.stalled(Duration::from_millis(cfg.run.stall_ms)) {
                    None => sd_notify("WATCHDOG=1"),
                    Some(quiet) => tracing::error!(
                        quiet_s = quiet.as_secs(),
                        "the turn in progress has made no progress: no longer feeding the watchdog, so systemd restarts Panda"
                    ),
                }
            }
        }
    }
    web_root.cancel();
    if let Some(t) = web_task {
        let _ = tokio::time::timeout(Duration::from_millis(500), t).await;
    }
    // Memory is flushed before anything that can hang (a device thread stuck in a dying
    // sound server): every turn is over or past its grace by now.
    if let Some(m) = memory
        && let Err(e) = m.close().await
    {
        tracing::warn!(error = %e, "memory: closing failed");
    }
    // Joined on a detached thread, not the runtime's blocking pool: the runtime would
    // wait for a stuck join at exit, whatever the timeout here says.
    let joined = join_detached(move || {
        let _ = listener.join();
        source.join()
    });
    match tokio::time::timeout(Duration::from_millis(cfg.run.grace_ms), joined).await {
        Ok(Ok(Ok(Err(e)))) => tracing::warn!(error = %e, "audio source ended with an error"),
        Err(_) => tracing::warn!("the audio source did not stop in time; exiting without it"),
        _ => {}
    }
    use std::sync::atomic::Ordering::Relaxed;
    summary.frames_dropped =
        file_stats.frames_dropped.load(Relaxed) + cap_stats.edge.frames_dropped.load(Relaxed);
    Ok(summary)
}

/// Runs a blocking join on its own detached thread; the receiver gets its result. Unlike
/// `spawn_blocking`, a join that never returns (a device thread stuck in a dying sound
/// server) does not hold up the runtime's shutdown.
fn join_detached<T: Send + 'static>(
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

/// Whether the turn driver makes progress, for the watchdog: the driver marks the start
/// and end of each job; every event from any stage counts as progress. A job with no
/// event for `[run] stall_ms` is stalled, and the watchdog stops being fed so systemd
/// restarts the daemon (a stuck appliance that says "ok" is worse than a restart).
struct Progress {
    epoch: std::time::Instant,
    /// Milliseconds since `epoch` + 1 when the current job started; 0 when idle.
    busy_since_ms: std::sync::atomic::AtomicU64,
    /// Milliseconds since `epoch` of the last event.
    last_event_ms: std::sync::atomic::AtomicU64,
}

impl Progress {
    fn new() -> Self {
        Self {
            epoch: std::time::Instant::now(),
            busy_since_ms: 0.into(),
            last_event_ms: 0.into(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn begin(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        self.busy_since_ms.store(self.now_ms() + 1, Relaxed);
    }

    fn end(&self) {
        self.busy_since_ms
            .store(0, std::sync::atomic::Ordering::Relaxed);
    }

    fn touch(&self) {
        self.last_event_ms
            .store(self.now_ms(), std::sync::atomic::Ordering::Relaxed);
    }

    /// The stalled job's age, if the driver is stuck in one.
    fn stalled(&self, stall: Duration) -> Option<Duration> {
        use std::sync::atomic::Ordering::Relaxed;
        let busy = self.busy_since_ms.load(Relaxed);
        if busy == 0 {
            return None;
        }
        let since = (busy - 1).max(self.last_event_ms.load(Relaxed));
        let quiet = Duration::from_millis(self.now_ms().saturating_sub(since));
        (quiet >= stall).then_some(quiet)
    }
}

/// Sends a state line to systemd when run as a `Type=notify` service (no-op otherwise).
fn sd_notify(msg: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(_) => return,
    };
    // Never block the runtime: a notify socket whose queue is full (nobody reading)
    // drops the message instead of stalling the event loop that sends it.
    let _ = sock.set_nonblocking(true);
    let bytes = path.as_encoded_bytes();
    let r = if let Some(abstract_name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)
            .and_then(|a| sock.send_to_addr(msg.as_bytes(), &a))
    } else {
        sock.send_to(msg.as_bytes(), &path)
    };
    if let Err(e) = r {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// The watchdog keep-alive interval: `[run] watchdog_ms`, or half of systemd's
/// `WATCHDOG_USEC`; none when no watchdog is asked for.
fn watchdog_interval(configured_ms: u64) -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    Some(if configured_ms > 0 {
        Duration::from_millis(configured_ms)
    } else {
        Duration::from_micros(usec / 2)
    })
}
