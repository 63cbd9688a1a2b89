//! `panda run`: the whole appliance in one process (the topology is drawn in
//! [`crate::app`]'s module doc).
//!
//! Barge-in: a wake word while an answer plays cancels that turn's token — the LLM
//! stream is dropped, TTS stops between chunks, playback flushes — and the new turn
//! proceeds. While Panda speaks the listener takes no utterance without the wake word
//! (the endpointer is armed only by a wake). With a microphone and a sound card the echo
//! canceller sits between them (`[aec]`, see [`crate::audio::aec`]): the listener hears
//! the person over Panda's own voice, the self-wake guard ignores Panda saying its own
//! wake word, and a stop word said over an answer stops it (`stop` event → the same
//! cancel as a barge-in). Shutdown (SIGTERM, or the end of a
//! recording): the source stops, the listener drains, the driver finishes or cancels its
//! turn, TTS and playback drain, all under `[run] grace_ms`; memory is flushed before
//! anything that can hang, and the audio threads are joined last.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::shutdown::{Consume, Extras, consume};
use super::systemd::{Progress, sd_notify, watchdog_interval};
use super::topology::{
    EchoCancel, SpeakerTaps, spawn_stt_stage, start_listening, start_speaking, start_stt,
    start_thinking, transcriber,
};
use super::{
    ASK_EDGE, AppError, EVENT_EDGE, HEARD_EDGE, Input, LISTEN_CONTROL_EDGE, QUESTION_EDGE,
    RunOptions, RunSummary, UTTERANCE_EDGE,
};
use crate::audio::playback::Output;
use crate::config::Config;
use crate::event::{Cue, Event, ListenControl, Question, Utterance};
use crate::listen::listener::{ListenerOptions, WakeVerifier};
use crate::listen::transcriber::Transcriber;
use crate::think::agents::Agents;
use crate::think::driver::{ActiveTurn, Driver, FollowUp, Host, Source};
use crate::think::turn::TurnOutcome;
use crate::web::{Hub, State};

/// The driver's host in the appliance: the status page and the watchdog's progress.
struct Page {
    hub: Arc<Hub>,
    progress: Arc<Progress>,
}

impl Host for Page {
    fn busy(&mut self) {
        self.progress.begin();
    }

    fn idle(&mut self) {
        self.progress.end();
        // Nothing is being answered or played: back to listening.
        if self.hub.state() == State::Thinking {
            self.hub.set_state(State::Listening);
        }
    }

    fn asked(&mut self, turn: u64, text: &str) {
        self.hub.asked(turn, text);
    }

    fn text(&mut self, turn: u64, delta: &str) {
        self.hub.text(turn, delta);
    }

    fn answered(&mut self, _turn: u64, _outcome: &TurnOutcome) {
        self.hub.flush_text(true);
    }
}

/// Runs the appliance until the recording ends or `root` is cancelled; every event goes
/// to `on_event`.
pub async fn run(
    cfg: &Config,
    opts: RunOptions,
    root: CancellationToken,
    mut on_event: impl FnMut(&Event),
) -> Result<RunSummary, AppError> {
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let hub = Hub::new(&cfg.web, metrics.clone());
    let (ev_tx, ev_rx) = mpsc::channel::<Event>(EVENT_EDGE);

    // Models first (each on its owner thread), so a missing one fails before audio flows.
    let stt = start_stt(cfg).await?;
    let transcriber = transcriber(cfg, stt.clone(), &ev_tx)?;
    // The conversation's language, from the thinker (which switches it) to the STT stage.
    let (lang_tx, lang_rx) = tokio::sync::watch::channel(cfg.conversation.language.clone());
    let thinking = start_thinking(cfg, &ev_tx, &root, None, Some(lang_tx)).await?;
    let mut echo = Echo::new(cfg, &opts);
    let taps = SpeakerTaps {
        reference: echo.reference.take(),
        guard: echo.guard.clone(),
    };
    let speaking = start_speaking(cfg, &cfg.tts.voice, opts.output.clone(), &ev_tx, taps).await?;

    let active = ActiveTurn::default();
    let (ask_tx, ask_rx) = mpsc::channel::<String>(ASK_EDGE);
    let mut summary = RunSummary::default();
    let handle = (opts.web && cfg.web.enabled).then(|| {
        web_handle(
            cfg,
            ask_tx,
            active.clone(),
            thinking.agents.clone(),
            transcriber.clone(),
            speaking.remote.clone(),
        )
    });
    let wyoming = (!cfg.wyoming.listen.is_empty()).then(|| {
        super::wyoming::services(
            cfg,
            &cfg.wyoming.services,
            Some(stt.clone()),
            Some(&speaking.sentences),
        )
    });
    let servers = Servers::start(cfg, &root, &hub, handle, wyoming, &mut summary).await?;

    // The listening path and the STT stage.
    let earcon = earcon(cfg, &opts)?;
    let (q_tx, q_rx) = mpsc::channel::<Question>(QUESTION_EDGE);
    let file_mode = matches!(opts.input, Input::File(_));
    let ears = Ears::start(cfg, &opts, &stt, echo, earcon.as_ref(), &ev_tx, &root)?;
    let listening = ears.listening;
    if let Some(stats) = listening.aec_stats.clone() {
        mirror_echo(&root, metrics.clone(), stats);
    }
    // Satellite mode sits on the utterance edge: questions go to the hub when one is
    // connected, to the local STT stage otherwise.
    let (satellite, utterances, sat_zeroconf) = satellite(
        cfg,
        ears.utterances,
        &speaking.sentences,
        &ev_tx,
        &active,
        &root,
        &mut summary,
    )
    .await?;
    let _stt_stage = spawn_stt_stage(
        utterances,
        Some(transcriber),
        ev_tx.clone(),
        Some(q_tx),
        // `[stt] language = "auto"` keeps detecting, whatever Panda speaks.
        (cfg.stt.language != "auto").then_some(lang_rx),
        cfg.aec.stop_words.clone(),
    );
    hub.set_state(State::Listening);

    // The turn driver.
    let progress = Arc::new(Progress::default());
    let (reports_tx, reports_rx) = mpsc::channel::<Event>(HEARD_EDGE);
    let driver = Driver {
        thinker: thinking.thinker,
        sentences: Some(speaking.sentences.clone()),
        reports: reports_rx,
        root: root.clone(),
        active: active.clone(),
        // Follow-ups need a wake word to be optional *after* an answer only.
        follow_up: opts.use_wake.then(|| FollowUp {
            listener: ears.control,
            window_ms: cfg.conversation.follow_up_ms,
            question_window_ms: cfg.endpoint.question_timeout_ms,
        }),
    };
    let source = Source::Live {
        spoken: q_rx,
        typed: ask_rx,
        end_with_spoken: file_mode,
    };
    let missed = thinking.missed;
    let mut host = Page {
        hub: hub.clone(),
        progress: progress.clone(),
    };
    let driver = tokio::spawn(async move { driver.run(source, &missed, &mut host).await });
    drop(ev_tx);
    sd_notify("READY=1");

    let extras = Extras {
        hub: Some(hub.clone()),
        barge_in: cfg.run.barge_in.then(|| active.clone()),
        watchdog: watchdog_interval(cfg.run.watchdog_ms).map(|every| (progress, every)),
        earcon: earcon.map(|c| (speaking.cues.clone(), c)),
        satellite,
    };
    let parts = Consume {
        events: ev_rx,
        reports: reports_tx,
        driver,
        speaking: Some(speaking),
        on_event: &mut on_event,
    };
    summary.turns = consume(cfg, &root, parts, extras).await.len();

    servers.stop().await;
    if let Some(a) = sat_zeroconf {
        a.withdraw().await;
    }
    summary.frames_dropped = listening.frames().1;
    close(thinking.memory, listening, cfg.run.grace_ms).await;
    Ok(summary)
}

/// Panda's own voice on a sound card: the listener hears it. The canceller (with a
/// microphone) takes it out; the guard ignores a wake word Panda says itself.
struct Echo {
    /// The canceller runs.
    on: bool,
    /// Playback's end of the reference link, when it runs (taken by playback).
    reference: Option<crate::audio::aec::ReferenceLink>,
    /// The canceller's end.
    feed: Option<crate::audio::aec::ReferenceFeed>,
    /// The self-wake guard, shared by playback and the listener.
    guard: Option<Arc<crate::audio::aec::SelfWakeGuard>>,
}

impl Echo {
    fn new(cfg: &Config, opts: &RunOptions) -> Self {
        let on_speaker = matches!(opts.output, Output::Device { .. });
        let on = cfg.aec.enabled && on_speaker && matches!(opts.input, Input::Device { .. });
        let (reference, feed) = on.then(crate::audio::aec::reference_link).unzip();
        let guard = (cfg.aec.self_wake_guard && on_speaker && opts.use_wake).then(|| {
            Arc::new(crate::audio::aec::SelfWakeGuard::new(
                &cfg.wake.phrase,
                cfg.aec.guard_tail_ms,
            ))
        });
        Self {
            on,
            reference,
            feed,
            guard,
        }
    }
}

/// The servers beside the appliance: the status page and, with `[wyoming] listen`, the
/// Wyoming server (the same Whisper and Kokoro, reached through their edges; it holds
/// Kokoro's weakly, so the shutdown order is unchanged). Each has a child token of root.
struct Servers {
    web: Option<(CancellationToken, tokio::task::JoinHandle<()>)>,
    wyoming: Option<(CancellationToken, tokio::task::JoinHandle<()>)>,
    /// Withdrawn when the servers stop.
    announcement: Option<crate::wyoming::zeroconf::Announcement>,
}

impl Servers {
    /// Starts the status page when given its handle, and Wyoming when given its
    /// services; their addresses go into `summary`.
    async fn start(
        cfg: &Config,
        root: &CancellationToken,
        hub: &Arc<Hub>,
        web: Option<crate::web::WebHandle>,
        wyoming: Option<crate::wyoming::server::Services>,
        summary: &mut RunSummary,
    ) -> Result<Servers, AppError> {
        let mut s = Servers {
            web: None,
            wyoming: None,
            announcement: None,
        };
        if let Some(handle) = web {
            let token = root.child_token();
            let (addr, task) =
                crate::web::serve(&cfg.web, hub.clone(), handle, token.clone()).await?;
            summary.web_addr = Some(addr);
            s.web = Some((token, task));
        }
        if let Some(wyoming) = wyoming {
            let token = root.child_token();
            let serving =
                super::wyoming::start(cfg, &cfg.wyoming.listen, wyoming, token.clone()).await?;
            summary.wyoming_addr = Some(serving.addr);
            s.wyoming = Some((token, serving.task));
            s.announcement = serving.announcement;
            // Its counters reach the metrics and the status page once a second.
            let (metrics, stats) = (hub.metrics.clone(), serving.stats);
            every_second(root, move || metrics.mirror_wyoming(&stats));
        }
        Ok(s)
    }

    /// Stops both (half a second each at most) and withdraws the announcement.
    async fn stop(self) {
        for (token, task) in [self.web, self.wyoming].into_iter().flatten() {
            token.cancel();
            let _ = tokio::time::timeout(Duration::from_millis(500), task).await;
        }
        if let Some(a) = self.announcement {
            a.withdraw().await;
        }
    }
}

/// The listening path as `panda run` starts it, and the ends of its edges the rest of
/// the appliance holds.
struct Ears {
    listening: super::topology::Listening,
    /// Utterances, to the STT stage.
    utterances: mpsc::Receiver<Utterance>,
    /// Follow-up arming, from the driver.
    control: mpsc::Sender<ListenControl>,
}

impl Ears {
    /// The source, the canceller (with `echo`) and the listener. The earcon plays on a
    /// sound card only (a WAV answer file gets answers, not chimes); the listener holds
    /// its VAD meanwhile.
    fn start(
        cfg: &Config,
        opts: &RunOptions,
        stt: &crate::listen::stt::SttHandle,
        echo: Echo,
        earcon: Option<&Cue>,
        events: &mpsc::Sender<Event>,
        root: &CancellationToken,
    ) -> Result<Ears, AppError> {
        let verifier =
            (opts.use_wake && cfg.wake.verify).then(|| WakeVerifier::new(stt.clone(), &cfg.wake));
        let hold_after_wake_ms = earcon.map_or(0, |c| {
            crate::audio::earcon::duration_ms(c) + crate::audio::earcon::OUTPUT_LATENCY_MS
        });
        let (utt_tx, utt_rx) = mpsc::channel::<Utterance>(UTTERANCE_EDGE);
        let (control_tx, control_rx) = mpsc::channel::<ListenControl>(LISTEN_CONTROL_EDGE);
        let listening = start_listening(
            cfg,
            opts.input.clone(),
            ListenerOptions {
                use_wake: opts.use_wake,
                verifier,
                hold_after_wake_ms,
                guard: echo.guard,
                stop_words: echo.on && opts.use_wake && !cfg.aec.stop_words.is_empty(),
                live: opts.input.is_live(),
            },
            utt_tx,
            events.clone(),
            Some(control_rx),
            echo.feed.map(|reference| EchoCancel {
                reference,
                delay_hint_ms: cfg.aec.delay_hint_ms,
            }),
            root,
        )?;
        Ok(Ears {
            listening,
            utterances: utt_rx,
            control: control_tx,
        })
    }
}

/// Satellite mode (`[satellite] enabled`): the actor between the listener and the STT
/// stage, waiting for its hub. Returns its report edge (for the event consumer), the
/// utterance edge the STT stage reads (the listener's own without satellite mode), and
/// the zeroconf announcement.
#[allow(clippy::type_complexity)]
async fn satellite(
    cfg: &Config,
    utterances: mpsc::Receiver<Utterance>,
    speech: &mpsc::Sender<crate::event::Speech>,
    events: &mpsc::Sender<Event>,
    active: &ActiveTurn,
    root: &CancellationToken,
    summary: &mut RunSummary,
) -> Result<
    (
        Option<mpsc::Sender<Event>>,
        mpsc::Receiver<Utterance>,
        Option<crate::wyoming::zeroconf::Announcement>,
    ),
    AppError,
> {
    use crate::wyoming::satellite::{self, SATELLITE_REPORT_EDGE, SatelliteIo, SatelliteOptions};
    let sat = &cfg.satellite;
    if !sat.enabled {
        return Ok((None, utterances, None));
    }
    let name = Some(sat.name.clone())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(crate::wyoming::zeroconf::default_name);
    let (local_tx, local_rx) = mpsc::channel::<Utterance>(UTTERANCE_EDGE);
    let (reports_tx, reports_rx) = mpsc::channel::<Event>(SATELLITE_REPORT_EDGE);
    let opts = SatelliteOptions {
        info: crate::wyoming::info::SatelliteInfo {
            name: name.clone(),
            area: Some(sat.area.clone()).filter(|a| !a.is_empty()),
            wake_word: (
                crate::wyoming::server::wake_name(&cfg.wake.phrase),
                cfg.wake.phrase.clone(),
            ),
        },
        served: Default::default(),
        answer_timeout: Duration::from_millis(sat.answer_timeout_ms),
        local_fallback: sat.local_fallback,
    };
    let io = SatelliteIo {
        utterances,
        local: local_tx,
        speech: speech.downgrade(),
        events: events.clone(),
        reports: reports_rx,
        active: active.clone(),
        root: root.clone(),
    };
    let (addr, _task) = satellite::start(&sat.listen, opts, io, root.child_token()).await?;
    summary.satellite_addr = Some(addr);
    let announcement = if sat.zeroconf {
        Some(crate::wyoming::zeroconf::Announcement::start(&name, addr)?)
    } else {
        None
    };
    Ok((Some(reports_tx), local_rx, announcement))
}

/// The canceller's figures reach the metrics and the status page once a second;
/// reference drops (drift or a stall) are logged when they happen, not per frame.
fn mirror_echo(
    root: &CancellationToken,
    metrics: Arc<crate::metrics::Metrics>,
    stats: Arc<crate::audio::aec::AecStats>,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let (mut dropped, mut missing) = (0, 0);
    let mut since_missing_log = 0u32;
    every_second(root, move || {
        metrics.mirror_aec(&stats);
        let now = stats.render_dropped.load(Relaxed);
        if now > dropped {
            tracing::warn!(
                frames = now - dropped,
                "echo canceller: reference frames dropped (speaker and microphone clocks drifting apart, or capture stalled)"
            );
            dropped = now;
        }
        // A speaker on a slower clock misses a frame every few seconds for good: a line
        // a minute says so, with the count.
        since_missing_log += 1;
        let now = stats.render_missing.load(Relaxed);
        if now > missing && since_missing_log >= 60 {
            tracing::info!(
                frames = now - missing,
                caught_up = stats.render_caught_up.load(Relaxed),
                "echo canceller: capture frames without a reference frame (the speaker's clock behind the microphone's, or output stalled); the delay estimate follows"
            );
            (missing, since_missing_log) = (now, 0);
        }
    });
}

/// The end of a run: memory is flushed before anything that can hang (a device thread
/// stuck in a dying sound server; every turn is over or past its grace by now), then
/// the audio threads are joined.
async fn close(
    memory: Option<crate::memory::Memory>,
    listening: super::topology::Listening,
    grace_ms: u64,
) {
    if let Some(m) = memory
        && let Err(e) = m.close().await
    {
        tracing::warn!(error = %e, "memory: closing failed");
    }
    if let Err(e) = listening.join(Duration::from_millis(grace_ms)).await {
        tracing::warn!(error = %e, "audio source ended with an error");
    }
}

/// Calls `tick` once a second until `root` is cancelled (on a task of its own).
fn every_second(root: &CancellationToken, mut tick: impl FnMut() + Send + 'static) {
    let stop = root.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = every.tick() => tick(),
            }
        }
    });
}

/// The wake earcon `panda run` plays, if any: `[wake] earcon` on, a wake word in use and
/// answers going to a sound card.
fn earcon(cfg: &Config, opts: &RunOptions) -> Result<Option<Cue>, AppError> {
    if !(cfg.wake.earcon && opts.use_wake && matches!(opts.output, Output::Device { .. })) {
        return Ok(None);
    }
    if cfg.wake.earcon_file.as_os_str().is_empty() {
        return Ok(Some(crate::audio::earcon::chime()));
    }
    Ok(Some(crate::audio::earcon::load(
        &cfg.model_path(&cfg.wake.earcon_file),
    )?))
}

/// What the status page's API may do: queue typed questions, stop the turn in progress,
/// read the agents' health and the LLM's settings.
fn web_handle(
    cfg: &Config,
    asks: mpsc::Sender<String>,
    active: ActiveTurn,
    agents: Arc<Agents>,
    stt: Transcriber,
    tts: Option<Arc<crate::wyoming::client::Health>>,
) -> crate::web::WebHandle {
    crate::web::WebHandle {
        asks,
        stop: Arc::new(move || active.cancel(None)),
        agents: Arc::new(move || {
            serde_json::Value::Array(
                agents
                    .health()
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
        stt: Arc::new(move || stt.status()),
        tts: Arc::new(move || {
            tts.as_ref()
                .map_or(serde_json::json!({"backend": "local"}), |h| h.status())
        }),
        llm: serde_json::json!({
            "enabled": cfg.llm.enabled,
            "url": cfg.llm.url,
            "model": cfg.llm.model,
        }),
    }
}
