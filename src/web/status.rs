//! The status model and its live feed (see the module doc of [`crate::web`]).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::broadcast;

use crate::config::WebConfig;
use crate::event::Event;
use crate::metrics::Metrics;

/// What the pipeline is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Not listening (no audio device yet, or stopping).
    Idle,
    /// Waiting for the wake word, or hearing a question.
    Listening,
    /// Transcribing, routing, waiting for the answer.
    Thinking,
    /// Playing an answer.
    Speaking,
    /// After an answer, listening for a follow-up question without the wake word.
    FollowUp,
}

impl State {
    fn gauge(self) -> u64 {
        match self {
            State::Idle => 0,
            State::Listening => 1,
            State::Thinking => 2,
            State::Speaking => 3,
            State::FollowUp => 4,
        }
    }
}

/// One turn as the page shows it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TurnRecord {
    /// Turn id.
    pub id: u64,
    /// When it started (local time, HH:MM:SS).
    pub at: String,
    /// What was heard (or typed into the API).
    pub transcript: String,
    /// The answer as generated.
    pub answer: String,
    /// `skill`, `agent`, `llm`, `template`, `apology`.
    pub source: String,
    /// Route label.
    pub route: String,
    /// Wake → end of the question.
    pub listen_ms: Option<u64>,
    /// Speech-to-text.
    pub stt_ms: Option<u64>,
    /// Transcript → route.
    pub route_ms: Option<u64>,
    /// LLM first token.
    pub llm_first_token_ms: Option<u64>,
    /// Synthesis of the first audio.
    pub tts_first_audio_ms: Option<u64>,
    /// End of the question → first audio played.
    pub first_audio_ms: Option<u64>,
    /// The answer was cut short.
    pub interrupted: bool,
}

/// Marks of one turn's progress, for latencies that span events.
#[derive(Default)]
struct Marks {
    wake: Option<Instant>,
    speech_end: Option<Instant>,
    transcript: Option<Instant>,
    first_audio_done: bool,
}

struct Inner {
    state: State,
    turns: VecDeque<TurnRecord>,
    log: VecDeque<serde_json::Value>,
    marks: HashMap<u64, Marks>,
    llm_ok: Option<bool>,
    llm_error: Option<String>,
    /// Answer text waiting to be published: (turn, text, since).
    pending_text: Option<(u64, String, Instant)>,
    speaking_turn: Option<u64>,
    /// Satellite mode's view of its hub (absent without satellite mode).
    satellite: Option<SatelliteView>,
}

/// What the status page shows of the hub in satellite mode.
#[derive(Debug, Clone, Default, serde::Serialize)]
struct SatelliteView {
    /// The hub's address while one is connected.
    hub: Option<String>,
    /// `waiting` (no hub), `connected`, `running`, `paused`.
    state: &'static str,
    /// Questions sent to the hub, its answers played, its errors and silences, and
    /// questions answered here for want of a hub.
    sent: u64,
    played: u64,
    failed: u64,
    local: u64,
}

/// The status model plus its live feed. Cheap to share (`Arc`).
pub struct Hub {
    cfg: WebConfig,
    inner: Mutex<Inner>,
    feed: broadcast::Sender<Arc<str>>,
    /// Once the server runs: messages go here and a fan-out task broadcasts them, so the
    /// pipeline never pays for waking thousands of clients (a broadcast send wakes every
    /// waiting receiver: ~2 ms at 10,000 clients).
    outbox: std::sync::OnceLock<tokio::sync::mpsc::Sender<Arc<str>>>,
    /// Messages dropped because the fan-out fell behind.
    pub dropped: std::sync::atomic::AtomicU64,
    /// The process's metrics (the hub fills the cross-event latencies).
    pub metrics: Arc<Metrics>,
    started: Instant,
}

const LOG_KEPT: usize = 50;

/// Messages, pipeline → fan-out task. When full (the fan-out fell behind thousands of
/// clients), new messages are dropped and counted; the pipeline never waits.
pub const OUTBOX_EDGE: usize = 1024;

fn clock() -> String {
    chrono::Local::now().format("%H:%M:%S").to_string()
}

impl Hub {
    /// An empty model publishing on a ring of `client_buffer` messages.
    pub fn new(cfg: &WebConfig, metrics: Arc<Metrics>) -> Arc<Hub> {
        let (feed, _) = broadcast::channel(cfg.client_buffer.max(1));
        Arc::new(Hub {
            cfg: cfg.clone(),
            inner: Mutex::new(Inner {
                state: State::Idle,
                turns: VecDeque::new(),
                log: VecDeque::new(),
                marks: HashMap::new(),
                llm_ok: None,
                llm_error: None,
                pending_text: None,
                speaking_turn: None,
                satellite: None,
            }),
            feed,
            outbox: std::sync::OnceLock::new(),
            dropped: std::sync::atomic::AtomicU64::new(0),
            metrics,
            started: Instant::now(),
        })
    }

    /// Moves broadcasting onto its own task (the server calls this when it starts).
    pub fn start_fanout(self: &Arc<Self>, root: tokio_util::sync::CancellationToken) {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Arc<str>>(OUTBOX_EDGE);
        if self.outbox.set(tx).is_err() {
            return;
        }
        let feed = self.feed.clone();
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    _ = root.cancelled() => return,
                    m = rx.recv() => m,
                };
                let Some(msg) = msg else { return };
                let _ = feed.send(msg);
            }
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        crate::lock(&self.inner)
    }

    /// A new live client's receiver (the page subscribes, then reads the snapshot).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<str>> {
        self.feed.subscribe()
    }

    fn publish(&self, v: serde_json::Value) {
        let msg: Arc<str> = Arc::from(v.to_string());
        match self.outbox.get() {
            // Never waits: a full outbox drops the message (counted); clients then see
            // the next snapshot-worthy change.
            Some(tx) => {
                if tx.try_send(msg).is_err() {
                    self.dropped
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
            // No server (tests, file mode): publish in place. No receivers is fine; a
            // full ring overwrites the oldest (slow clients skip).
            None => {
                let _ = self.feed.send(msg);
            }
        }
    }

    /// Publishes a line to the action log.
    pub fn log(&self, text: &str) {
        let line = serde_json::json!({"type": "log", "at": clock(), "text": text});
        {
            let mut g = self.lock();
            g.log.push_back(line.clone());
            while g.log.len() > LOG_KEPT {
                g.log.pop_front();
            }
        }
        self.publish(line);
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.lock().state
    }

    /// Sets the state (publishes a change).
    pub fn set_state(&self, s: State) {
        let changed = {
            let mut g = self.lock();
            let changed = g.state != s;
            g.state = s;
            changed
        };
        self.metrics.state.set(s.gauge());
        if changed {
            self.publish(serde_json::json!({"type": "state", "state": s}));
        }
    }

    /// The turn whose answer is playing (barge-in target).
    pub fn speaking_turn(&self) -> Option<u64> {
        self.lock().speaking_turn
    }

    /// Seconds since start.
    pub fn uptime_s(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    fn with_turn(
        g: &mut Inner,
        id: u64,
        kept: usize,
        f: impl FnOnce(&mut TurnRecord),
    ) -> TurnRecord {
        if !g.turns.iter().any(|t| t.id == id) {
            g.turns.push_back(TurnRecord {
                id,
                at: clock(),
                ..Default::default()
            });
            while g.turns.len() > kept {
                g.turns.pop_front();
            }
        }
        let t = g
            .turns
            .iter_mut()
            .find(|t| t.id == id)
            .expect("inserted above");
        f(t);
        t.clone()
    }

    /// A text question from the API starts a turn.
    pub fn asked(&self, id: u64, text: &str) {
        let rec = {
            let mut g = self.lock();
            g.marks.entry(id).or_default().speech_end = Some(Instant::now());
            Self::with_turn(&mut g, id, self.cfg.turns_kept, |t| {
                t.transcript = text.to_string();
            })
        };
        self.metrics.turns.add(1);
        self.publish(serde_json::json!({"type": "turn", "turn": rec}));
        self.set_state(State::Thinking);
    }

    /// Streaming answer text: published in pieces of at least `coalesce_chars`, or when
    /// `coalesce_ms` passed since the piece began ([`Hub::flush_text`] on a timer).
    pub fn text(&self, turn: u64, delta: &str) {
        let out = {
            let mut g = self.lock();
            let now = Instant::now();
            match &mut g.pending_text {
                Some((t, buf, _)) if *t == turn => buf.push_str(delta),
                _ => {
                    let prev = g.pending_text.take();
                    g.pending_text = Some((turn, delta.to_string(), now));
                    if let Some((t, buf, _)) = prev {
                        self.publish(serde_json::json!({"type": "text", "turn": t, "text": buf}));
                    }
                }
            }
            let ready = g.pending_text.as_ref().is_some_and(|(_, b, since)| {
                b.chars().count() >= self.cfg.coalesce_chars
                    || since.elapsed() >= Duration::from_millis(self.cfg.coalesce_ms)
            });
            if ready { g.pending_text.take() } else { None }
        };
        if let Some((t, buf, _)) = out {
            self.publish(serde_json::json!({"type": "text", "turn": t, "text": buf}));
        }
    }

    /// Publishes pending text older than `coalesce_ms` (called on a timer).
    pub fn flush_text(&self, force: bool) {
        let out = {
            let mut g = self.lock();
            let due = g.pending_text.as_ref().is_some_and(|(_, _, since)| {
                force || since.elapsed() >= Duration::from_millis(self.cfg.coalesce_ms)
            });
            if due { g.pending_text.take() } else { None }
        };
        if let Some((t, buf, _)) = out {
            self.publish(serde_json::json!({"type": "text", "turn": t, "text": buf}));
        }
    }

    /// Updates the model and metrics from a pipeline event and publishes what changed.
    pub fn observe(&self, ev: &Event) {
        self.metrics.observe(ev);
        let now = Instant::now();
        let kept = self.cfg.turns_kept;
        let mut publish = Vec::new();
        let mut state = None;
        {
            let mut g = self.lock();
            match ev {
                Event::Wake { turn, score, .. } => {
                    g.marks.entry(*turn).or_default().wake = Some(now);
                    self.metrics.turns.add(1);
                    let rec = Self::with_turn(&mut g, *turn, kept, |_| {});
                    publish.push(serde_json::json!({"type": "turn", "turn": rec}));
                    publish.push(serde_json::json!({"type": "log", "at": clock(), "text": format!("wake word (score {score:.2})")}));
                    if g.state != State::Speaking {
                        state = Some(State::Listening);
                    }
                }
                Event::SpeechEnd { turn, .. } => {
                    let m = g.marks.entry(*turn).or_default();
                    m.speech_end = Some(now);
                    let listen = m.wake.map(|w| now - w);
                    if let Some(d) = listen {
                        self.metrics
                            .wake_to_speech_end
                            .observe_ms(d.as_secs_f64() * 1000.0);
                    }
                    Self::with_turn(&mut g, *turn, kept, |t| {
                        t.listen_ms = listen.map(|d| d.as_millis() as u64)
                    });
                    if g.state != State::Speaking {
                        state = Some(State::Thinking);
                    }
                }
                Event::Transcript {
                    turn, text, stt_ms, ..
                } => {
                    g.marks.entry(*turn).or_default().transcript = Some(now);
                    let rec = Self::with_turn(&mut g, *turn, kept, |t| {
                        t.transcript = text.clone();
                        t.stt_ms = Some(*stt_ms);
                    });
                    publish.push(serde_json::json!({"type": "turn", "turn": rec}));
                    if text.is_empty() && g.state == State::Thinking {
                        state = Some(State::Listening);
                    }
                }
                Event::Route { turn, target, .. } => {
                    let ms = g
                        .marks
                        .get(turn)
                        .and_then(|m| m.transcript)
                        .map(|t| (now - t).as_secs_f64() * 1000.0);
                    if let Some(ms) = ms {
                        self.metrics.route.observe_ms(ms);
                    }
                    Self::with_turn(&mut g, *turn, kept, |t| {
                        t.route = target.clone();
                        t.route_ms = ms.map(|m| m.round() as u64);
                    });
                    publish.push(serde_json::json!({"type": "log", "at": clock(), "text": format!("route: {target}")}));
                }
                Event::Llm {
                    turn,
                    first_token_ms,
                    error,
                    ..
                } => {
                    if g.llm_ok != Some(error.is_none()) || g.llm_error != *error {
                        publish.push(serde_json::json!({"type": "llm", "last_ok": error.is_none(), "last_error": error}));
                    }
                    g.llm_ok = Some(error.is_none());
                    g.llm_error = error.clone();
                    Self::with_turn(&mut g, *turn, kept, |t| {
                        t.llm_first_token_ms = *first_token_ms
                    });
                    if let Some(e) = error {
                        publish.push(serde_json::json!({"type": "log", "at": clock(), "text": format!("LLM: {e}")}));
                    }
                }
                Event::Agent {
                    agent,
                    ok,
                    ms,
                    error,
                    ..
                } => {
                    let text = match error {
                        Some(e) => format!("agent {agent} failed: {e}"),
                        None => format!("agent {agent} answered in {ms} ms (ok: {ok})"),
                    };
                    publish.push(serde_json::json!({"type": "log", "at": clock(), "text": text}));
                }
                Event::Remote {
                    stage,
                    url,
                    ok,
                    ms,
                    error,
                    ..
                } => {
                    let (what, local) = if *stage == "tts" {
                        ("text-to-speech", "Kokoro spoke it")
                    } else {
                        ("speech-to-text", "the local Whisper heard it")
                    };
                    let text = match (ok, error) {
                        (false, Some(e)) => format!("{what} at {url} failed ({e}): {local}"),
                        _ => format!("{what} at {url} answered in {ms} ms"),
                    };
                    publish.push(serde_json::json!({"type": "log", "at": clock(), "text": text}));
                }
                Event::Breaker { agent, state: b } => {
                    publish
                        .push(serde_json::json!({"type": "breaker", "agent": agent, "state": b}));
                    publish.push(serde_json::json!({"type": "log", "at": clock(), "text": format!("breaker {agent}: {b:?}")}));
                }
                Event::Synthesized {
                    turn,
                    sentence: 0,
                    synth_ms,
                    ..
                } => {
                    let first = Self::with_turn(&mut g, *turn, kept, |_| {})
                        .tts_first_audio_ms
                        .is_none();
                    if first {
                        self.metrics.tts_first_audio.observe_ms(*synth_ms as f64);
                        Self::with_turn(&mut g, *turn, kept, |t| {
                            t.tts_first_audio_ms = Some(*synth_ms)
                        });
                    }
                }
                Event::Playing { turn, .. } => {
                    g.speaking_turn = Some(*turn);
                    let m = g.marks.entry(*turn).or_default();
                    if !m.first_audio_done {
                        m.first_audio_done = true;
                        let ms = m.speech_end.map(|e| (now - e).as_secs_f64() * 1000.0);
                        if let Some(ms) = ms {
                            self.metrics.speech_end_to_audio.observe_ms(ms);
                        }
                        let rec = Self::with_turn(&mut g, *turn, kept, |t| {
                            t.first_audio_ms = ms.map(|m| m.round() as u64)
                        });
                        publish.push(serde_json::json!({"type": "turn", "turn": rec}));
                    }
                    state = Some(State::Speaking);
                }
                Event::Answer { turn, text, source } => {
                    let rec = Self::with_turn(&mut g, *turn, kept, |t| {
                        t.answer = text.clone();
                        t.source = source.as_str().to_string();
                    });
                    publish.push(serde_json::json!({"type": "turn", "turn": rec}));
                }
                Event::Spoken {
                    turn, interrupted, ..
                } => {
                    let rec =
                        Self::with_turn(&mut g, *turn, kept, |t| t.interrupted = *interrupted);
                    publish.push(serde_json::json!({"type": "turn", "turn": rec}));
                    g.marks.remove(turn);
                    if g.speaking_turn == Some(*turn) {
                        g.speaking_turn = None;
                        state = Some(State::Listening);
                    }
                }
                Event::NoQuestion { turn, .. } => {
                    g.marks.remove(turn);
                    publish.push(serde_json::json!({"type": "log", "at": clock(), "text": "no question heard"}));
                    state = Some(State::Listening);
                }
                Event::FollowUp {
                    turn, window_ms, ..
                } => {
                    g.marks.entry(*turn).or_default().wake = Some(now);
                    publish.push(serde_json::json!({"type": "log", "at": clock(), "text": format!("listening for a follow-up ({:.1} s)", *window_ms as f64 / 1000.0)}));
                    if g.state != State::Speaking {
                        state = Some(State::FollowUp);
                    }
                }
                Event::TimerFired { label, .. } => {
                    publish.push(serde_json::json!({"type": "log", "at": clock(), "text": format!("{label} went off")}));
                }
                Event::SelfWake { .. } => {
                    publish.push(serde_json::json!({"type": "log", "at": clock(), "text": "wake word in Panda's own voice ignored"}));
                }
                Event::Stop { word, .. } => {
                    publish.push(serde_json::json!({"type": "log", "at": clock(), "text": format!("\"{word}\" said over the answer: stopped")}));
                }
                Event::Cancelled { turn, stage } => {
                    publish.push(serde_json::json!({"type": "log", "at": clock(), "text": format!("turn {turn} cancelled ({stage})")}));
                }
                Event::Error { stage, message } => {
                    publish.push(serde_json::json!({"type": "log", "at": clock(), "text": format!("error in {stage}: {message}")}));
                }
                Event::Satellite { what, detail, .. } => {
                    use crate::event::SatelliteNews as N;
                    let v = g.satellite.get_or_insert_with(|| SatelliteView {
                        state: "waiting",
                        ..SatelliteView::default()
                    });
                    match what {
                        N::Connected => (v.hub, v.state) = (Some(detail.clone()), "connected"),
                        N::Disconnected | N::Waiting => (v.hub, v.state) = (None, "waiting"),
                        N::Running => v.state = "running",
                        N::Paused => v.state = "paused",
                        N::Sent => v.sent += 1,
                        N::Played => v.played += 1,
                        N::HubError | N::NoReply => v.failed += 1,
                        N::Local => v.local += 1,
                        N::Dropped => {}
                    }
                    let text = match what {
                        N::Waiting => format!("satellite: waiting for a hub on {detail}"),
                        N::Connected => format!("hub connected: {detail}"),
                        N::Disconnected => format!("hub disconnected: {detail}"),
                        N::Running => "the hub is ready for questions".to_string(),
                        N::Paused => "the hub paused this satellite (muted)".to_string(),
                        N::Sent => format!("question sent to the hub: {detail}"),
                        N::HubError => format!("the hub could not answer: {detail}"),
                        N::NoReply => format!("no reply from the hub: {detail}"),
                        N::Played => "the hub's answer played".to_string(),
                        N::Local => "no hub: Panda answers itself".to_string(),
                        N::Dropped => format!("question dropped: {detail}"),
                    };
                    publish.push(serde_json::json!({"type": "log", "at": clock(), "text": text}));
                    // A question that ends without an answer returns to listening.
                    if matches!(what, N::HubError | N::NoReply | N::Dropped)
                        && g.state == State::Thinking
                    {
                        state = Some(State::Listening);
                    }
                }
                _ => {}
            }
            for p in &publish {
                if p["type"] == "log" {
                    g.log.push_back(p.clone());
                    while g.log.len() > LOG_KEPT {
                        g.log.pop_front();
                    }
                }
            }
        }
        for p in publish {
            self.publish(p);
        }
        if let Some(s) = state {
            self.set_state(s);
        }
    }

    /// The whole model as JSON (`GET /api/status`, and the first message of a live feed).
    pub fn snapshot(&self, agents: serde_json::Value, llm: serde_json::Value) -> serde_json::Value {
        let g = self.lock();
        let mut llm = llm;
        if let Some(o) = llm.as_object_mut() {
            o.insert("last_ok".into(), serde_json::json!(g.llm_ok));
            o.insert("last_error".into(), serde_json::json!(g.llm_error));
        }
        serde_json::json!({
            "type": "snapshot",
            "state": g.state,
            "turns": g.turns,
            "log": g.log,
            "agents": agents,
            "llm": llm,
            "uptime_s": self.uptime_s(),
            "clients": self.metrics.clients.get(),
            "dropped_frames": self.metrics.frames_dropped.get(),
            "echo": {
                "active": self.metrics.aec_active.get() == 1,
                "erle_db": self.metrics.aec_erle_db.get(),
                "delay_ms": self.metrics.aec_delay_ms.get(),
                "path_changes": self.metrics.aec_path_changes.get(),
                "reference_dropped": self.metrics.aec_reference_dropped.get(),
                "self_wakes_ignored": self.metrics.self_wakes_ignored.get(),
            },
            "satellite": g.satellite,
            "wyoming": {
                "connections": self.metrics.wyoming_connections.get(),
                "refused": self.metrics.wyoming_refused.get(),
                "malformed": self.metrics.wyoming_malformed.get(),
                "transcripts": self.metrics.wyoming_transcripts.get(),
                "syntheses": self.metrics.wyoming_syntheses.get(),
                "detections": self.metrics.wyoming_detections.get(),
            },
        })
    }
}

/// Counts a live client for as long as it lives.
pub struct ClientGuard(pub Arc<Metrics>);

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.0.clients.add(-1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub(chars: usize, ms: u64) -> Arc<Hub> {
        let cfg = WebConfig {
            coalesce_chars: chars,
            coalesce_ms: ms,
            client_buffer: 4,
            ..WebConfig::default()
        };
        Hub::new(&cfg, Arc::new(Metrics::new()))
    }

    fn drain(rx: &mut broadcast::Receiver<Arc<str>>) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        while let Ok(m) = rx.try_recv() {
            out.push(serde_json::from_str(&m).unwrap());
        }
        out
    }

    #[test]
    fn text_is_coalesced_by_size_and_age() {
        let h = hub(10, 60_000);
        let mut rx = h.subscribe();
        for d in ["The ", "cap", "ital ", "of France"] {
            h.text(1, d);
        }
        let msgs = drain(&mut rx);
        assert_eq!(msgs.len(), 1, "{msgs:?}");
        assert_eq!(msgs[0]["text"], "The capital ");
        h.flush_text(false);
        assert!(drain(&mut rx).is_empty(), "not old enough yet");
        h.flush_text(true);
        assert_eq!(drain(&mut rx)[0]["text"], "of France");
        // A new turn's text publishes the previous turn's rest first.
        let h = hub(1000, 60_000);
        let mut rx = h.subscribe();
        h.text(1, "a");
        h.text(2, "b");
        let msgs = drain(&mut rx);
        assert_eq!(msgs[0]["turn"], 1);
    }

    #[test]
    fn a_slow_client_skips_ahead_and_never_blocks_publishing() {
        let h = hub(1, 0);
        let mut slow = h.subscribe();
        for i in 0..100 {
            h.text(i, "x");
        }
        match slow.try_recv() {
            Err(broadcast::error::TryRecvError::Lagged(n)) => assert!(n >= 90, "{n}"),
            other => panic!("{other:?}"),
        }
        // After skipping, it reads the newest messages.
        assert!(slow.try_recv().is_ok());
    }

    #[test]
    fn the_page_shows_the_satellites_hub() {
        use crate::event::SatelliteNews as N;
        let h = hub(10, 10);
        let snap = |h: &Hub| h.snapshot(serde_json::json!([]), serde_json::json!({}));
        assert!(
            snap(&h)["satellite"].is_null(),
            "no satellite mode, no entry"
        );
        let news = |what, detail: &str| Event::Satellite {
            turn: None,
            what,
            detail: detail.into(),
        };
        h.observe(&news(N::Waiting, "tcp://127.0.0.1:10700"));
        assert_eq!(snap(&h)["satellite"]["state"], "waiting");
        h.observe(&news(N::Connected, "10.0.0.2:51000"));
        h.observe(&news(N::Running, ""));
        h.observe(&news(N::Sent, "2000 ms"));
        h.observe(&news(N::Played, ""));
        h.observe(&news(N::Sent, "1500 ms"));
        h.set_state(State::Thinking);
        h.observe(&news(N::NoReply, "nothing from the hub in 15000 ms"));
        let s = snap(&h);
        let sat = &s["satellite"];
        assert_eq!(sat["hub"], "10.0.0.2:51000");
        assert_eq!(sat["state"], "running");
        assert_eq!(
            (sat["sent"].as_u64(), sat["played"].as_u64()),
            (Some(2), Some(1))
        );
        assert_eq!(sat["failed"], 1);
        // A question the hub never answered returns the page to listening.
        assert_eq!(h.state(), State::Listening);
        h.observe(&news(N::Disconnected, "10.0.0.2:51000"));
        let s = snap(&h);
        assert!(s["satellite"]["hub"].is_null());
        assert!(s["log"].to_string().contains("no reply from the hub"));
    }

    #[test]
    fn states_follow_a_turn() {
        let h = hub(10, 10);
        h.set_state(State::Listening);
        h.observe(&Event::Wake {
            turn: 1,
            name: "hey panda".into(),
            score: 0.6,
            heard: None,
            at_ms: 0,
        });
        h.observe(&Event::SpeechEnd {
            turn: 1,
            at_ms: 0,
            reason: crate::event::EndReason::Silence,
        });
        assert_eq!(h.state(), State::Thinking);
        h.observe(&Event::Playing {
            turn: 1,
            sentence: 0,
        });
        assert_eq!(h.state(), State::Speaking);
        assert_eq!(h.speaking_turn(), Some(1));
        h.observe(&Event::Spoken {
            turn: 1,
            heard: "It's noon.".into(),
            total_chars: 10,
            played_ms: 900,
            interrupted: true,
        });
        assert_eq!(h.state(), State::Listening);
        assert_eq!(h.metrics.speech_end_to_audio.count(), 1);
        let snap = h.snapshot(serde_json::json!([]), serde_json::json!({}));
        assert_eq!(snap["turns"][0]["interrupted"], true);
    }

    #[test]
    fn service_changes_reach_the_page_live_once() {
        let cfg = WebConfig {
            client_buffer: 64,
            ..WebConfig::default()
        };
        let h = Hub::new(&cfg, Arc::new(Metrics::new()));
        let mut rx = h.subscribe();
        let llm = |error: Option<&str>| Event::Llm {
            turn: 1,
            first_token_ms: None,
            total_ms: 0,
            malformed: 0,
            error: error.map(str::to_string),
        };
        h.observe(&llm(Some("connection refused")));
        h.observe(&llm(Some("connection refused")));
        h.observe(&llm(None));
        h.observe(&Event::Breaker {
            agent: "scott".into(),
            state: crate::event::BreakerState::Open,
        });
        let msgs = drain(&mut rx);
        let llm: Vec<_> = msgs.iter().filter(|m| m["type"] == "llm").collect();
        assert_eq!(llm.len(), 2, "a repeated failure is not re-sent: {msgs:?}");
        assert_eq!(llm[0]["last_ok"], false);
        assert_eq!(llm[0]["last_error"], "connection refused");
        assert_eq!(llm[1]["last_ok"], true);
        let b: Vec<_> = msgs.iter().filter(|m| m["type"] == "breaker").collect();
        assert_eq!(b.len(), 1, "{msgs:?}");
        assert_eq!(
            (b[0]["agent"].as_str(), b[0]["state"].as_str()),
            (Some("scott"), Some("open"))
        );
    }
}
