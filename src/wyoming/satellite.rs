//! Satellite mode (`panda run --satellite`): Panda as a Wyoming *satellite* of a hub —
//! Home Assistant's Wyoming integration, which connects to the satellite (port 10700 by
//! convention), sends `run-satellite` and `describe`, then a `ping` every ~2 s, and drops
//! a satellite that stays silent for 5 s.
//!
//! What stays on Panda: the microphone, the echo canceller, the wake word and its
//! Whisper check, voice activity and endpointing (so `info` says `has_vad`), the earcon,
//! barge-in and playback. What the hub does: speech-to-text, intents and text-to-speech,
//! with whatever pipeline the user chose there.
//!
//! One task on the runtime (the *satellite actor*) owns the hub connection and the
//! question in flight. It sits on the utterance edge between the listener and the STT
//! stage: a question heard after the wake word goes to the hub when one is connected
//! and running — `detection`, `run-pipeline {start_stage: asr, end_stage: tts}`,
//! `audio-start`, 1024-sample `audio-chunk`s (16 kHz, 16-bit mono, cut at the wake word
//! detection as wyoming-satellite streams from it), `audio-stop` — and to the local STT
//! stage otherwise (`[satellite] local_fallback`). A stop word said over an answer is
//! always decided locally.
//!
//! The hub replies `transcript` (a `transcript` event here), `synthesize` (the answer's
//! text) and the answer as `audio-start` / `audio-chunk`… / `audio-stop`. That audio
//! plays in the question's turn through the speaking path ([`Speech::Play`]), so the
//! echo canceller's reference, the self-wake guard and barge-in treat it like Panda's own
//! voice; once playback reports the turn, the hub gets `played`. Audio outside a question
//! (a Home Assistant announcement) plays in a turn of its own, also answered `played`. An
//! `error`, or no reply within `[satellite] answer_timeout_ms`, ends the turn.
//!
//! Barge-in: a wake word or stop word cancels the hub's turn like any other (the turn is
//! registered as the one in progress); what the hub still sends for the cancelled
//! question is discarded until its pipeline has had time to end.
//!
//! Connections: one hub at a time, a newer connection replacing the older (Home
//! Assistant reconnects after a restart before the old socket times out). Per connection
//! a reader task turns frames into events on a bounded edge, and a writer task writes
//! what the actor queues, each frame within 10 s (a hub that stops reading is dropped).
//! The hub's answer audio is handed to a player task on a bounded edge, so the actor
//! never waits on playback's pace and always answers `ping` at once.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tokio::io::BufReader;
use tokio::net::TcpListener;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::codec::{self, CodecError, Event as Frame};
use super::info::{SatelliteInfo, Served, satellite_info};
use crate::event::{
    AnswerSource, Event, PcmChunk, SAMPLE_RATE_HZ, SatelliteNews, Speech, Turn, Utterance,
};
use crate::think::driver::ActiveTurn;

/// Data edge, a hub connection's reader → the actor: the hub's events. When full the
/// reader stops reading (TCP pushes back on the hub); the actor drains it quickly.
pub const HUB_EVENTS_EDGE: usize = 32;
/// Data edge, the actor → a connection's writer: frames for the hub. A question is
/// ~50 frames per 3 s of audio; when full the actor waits, at most the write timeout.
pub const HUB_WRITE_EDGE: usize = 256;
/// Audio edge, the actor → the player task: the hub's answer audio, coalesced to
/// ~250 ms pieces, ~4 min of it. Full (a hub streaming far faster than playback for
/// minutes): the piece is dropped and counted.
pub const HUB_AUDIO_EDGE: usize = 1024;
/// Control edge, the event consumer → the actor: wake words, stop words and playback's
/// reports. Never waited on (the consumer must not stall behind the actor): full, the
/// report is dropped with a log line, and the turn then ends by its timeout.
pub const SATELLITE_REPORT_EDGE: usize = 64;

/// The hub's timers remembered at once (oldest forgotten first).
const MAX_HUB_TIMERS: usize = 64;
/// Samples per `audio-chunk` sent to the hub (what Home Assistant itself uses).
const CHUNK_SAMPLES: usize = 1024;
/// A hub frame write that takes longer than this drops the hub.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// The hub's answer audio is passed to playback in pieces of about this length.
const PIECE_MS: u64 = 250;

/// What can go wrong starting satellite mode.
#[derive(Debug, thiserror::Error)]
pub enum SatelliteError {
    /// `[satellite] listen` is not `tcp://HOST:PORT`, or cannot be bound.
    #[error(transparent)]
    Listen(#[from] super::server::ServerError),
}

/// How the satellite presents itself and behaves.
#[derive(Debug, Clone)]
pub struct SatelliteOptions {
    /// Name, area and wake word, for `info`.
    pub info: SatelliteInfo,
    /// Services served beside (listed in `info` too).
    pub served: Served,
    /// A question with no reply from the hub for this long ends.
    pub answer_timeout: Duration,
    /// With no hub, answer locally.
    pub local_fallback: bool,
}

/// The actor's edges.
pub struct SatelliteIo {
    /// Utterances from the listener.
    pub utterances: mpsc::Receiver<Utterance>,
    /// Utterances for the local STT stage (stop words, and questions with no hub).
    pub local: mpsc::Sender<Utterance>,
    /// The speaking path's sentence edge, held weakly (shutdown closes it as before).
    pub speech: mpsc::WeakSender<Speech>,
    /// Pipeline events.
    pub events: mpsc::Sender<Event>,
    /// Wake words, stop words and playback's reports, from the event consumer.
    pub reports: mpsc::Receiver<Event>,
    /// The turn in progress (barge-in and the status page's stop cancel it).
    pub active: ActiveTurn,
    /// Root token: turns for announcements are its children.
    pub root: CancellationToken,
}

/// Binds `listen` and starts the actor; it ends when the listener's utterance edge
/// closes (closing the local edge after it) or `stop` is cancelled.
pub async fn start(
    listen: &str,
    opts: SatelliteOptions,
    io: SatelliteIo,
    stop: CancellationToken,
) -> Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>), SatelliteError> {
    let listener = super::server::bind(listen).await?;
    let addr = listener
        .local_addr()
        .map_err(|source| super::server::ServerError::Bind {
            addr: listen.to_string(),
            source,
        })?;
    let (audio_tx, audio_rx) = mpsc::channel(HUB_AUDIO_EDGE);
    tokio::spawn(player(audio_rx, io.speech.clone()));
    let (inbound_tx, inbound_rx) = mpsc::channel(HUB_EVENTS_EDGE);
    let actor = Actor {
        opts,
        io,
        hub: None,
        run: None,
        group: None,
        stale_until: None,
        wakes: VecDeque::new(),
        audio: audio_tx,
        inbound: inbound_tx,
        next_conn: 0,
        dropped_pieces: 0,
        timers: VecDeque::new(),
        fired: 0,
    };
    let _ = actor
        .io
        .events
        .send(Event::Satellite {
            turn: None,
            what: SatelliteNews::Waiting,
            detail: format!("tcp://{addr}"),
        })
        .await;
    let task = tokio::spawn(actor.run(listener, inbound_rx, stop));
    tracing::info!(%addr, "satellite: waiting for a hub (Home Assistant) to connect");
    Ok((addr, task))
}

/// The connected hub.
struct Hub {
    id: u64,
    peer: String,
    out: mpsc::Sender<Frame>,
    reader: tokio::task::JoinHandle<()>,
    state: HubState,
}

/// Where a connected hub stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HubState {
    /// Connected, no `run-satellite` yet (a probe, or a hub still starting): questions
    /// are answered here.
    Connected,
    /// `run-satellite` received (and no `pause-satellite` since): questions go to it.
    Running,
    /// `pause-satellite` received: the user muted the satellite in the hub.
    Paused,
}

impl Drop for Hub {
    fn drop(&mut self) {
        // The writer ends when `out` is dropped; the reader is stopped here, which
        // closes the socket.
        self.reader.abort();
    }
}

/// The question in flight at the hub.
struct Run {
    turn: Turn,
    sent: Instant,
    audio_ms: u64,
    /// The hub sent its transcript: audio from now on is this question's answer.
    heard: bool,
    /// The answer's text (`synthesize`), attached to its first audio.
    answer: String,
    /// No reply by then ends the turn; `None` while the answer plays.
    deadline: Option<Instant>,
}

/// An audio group (`audio-start` … `audio-stop`) from the hub.
struct Group {
    /// The turn it plays in; `None`: discarded (a cancelled question's answer).
    turn: Option<Turn>,
    /// An announcement's own turn (not a question's).
    announcement: bool,
    rate: u32,
    width: usize,
    channels: usize,
    /// Text for the next piece (the answer's, once).
    text: String,
    /// Samples not yet passed on.
    pending: Vec<f32>,
    /// `audio-stop` seen: waiting for playback's report to send `played`.
    stopped: bool,
}

enum Inbound {
    Frame(u64, Frame),
    Closed(u64, Option<CodecError>),
}

struct Actor {
    opts: SatelliteOptions,
    io: SatelliteIo,
    hub: Option<Hub>,
    run: Option<Run>,
    group: Option<Group>,
    /// A cancelled question's pipeline may still answer until then: its audio is dropped.
    stale_until: Option<Instant>,
    /// Recent wake words (turn, stream position), to cut the question at its detection.
    wakes: VecDeque<(u64, u64)>,
    audio: mpsc::Sender<PcmChunk>,
    inbound: mpsc::Sender<Inbound>,
    next_conn: u64,
    dropped_pieces: u64,
    /// The hub's running timers (id, label), oldest first.
    timers: VecDeque<(String, String)>,
    /// Hub timers that finished (numbers their `timer_fired` events).
    fired: u64,
}

impl Actor {
    async fn run(
        mut self,
        listener: TcpListener,
        mut inbound: mpsc::Receiver<Inbound>,
        stop: CancellationToken,
    ) {
        loop {
            let deadline = self
                .run
                .as_ref()
                .and_then(|r| r.deadline)
                .map(tokio::time::Instant::from_std);
            tokio::select! {
                _ = stop.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => self.connected(stream, peer.to_string()).await,
                    Err(e) => {
                        tracing::warn!(error = %e, "satellite: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Some(msg) = inbound.recv() => match msg {
                    Inbound::Frame(id, f) if self.hub.as_ref().is_some_and(|h| h.id == id) => {
                        self.hub_event(f).await;
                    }
                    Inbound::Closed(id, why) if self.hub.as_ref().is_some_and(|h| h.id == id) => {
                        self.disconnected(why).await;
                    }
                    _ => {} // a replaced connection's last words
                },
                u = self.io.utterances.recv() => match u {
                    Some(u) => self.utterance(u).await,
                    // The listener has ended (shutdown or the end of a recording):
                    // dropping `local` lets the STT stage end after it.
                    None => break,
                },
                Some(r) = self.io.reports.recv() => self.report(r).await,
                _ = async { tokio::time::sleep_until(deadline.expect("guarded")).await }, if deadline.is_some() => {
                    self.no_reply().await;
                }
            }
        }
        if self.dropped_pieces > 0 {
            tracing::warn!(
                pieces = self.dropped_pieces,
                "satellite: hub audio dropped (more than the player's edge holds)"
            );
        }
    }

    async fn emit(&self, ev: Event) {
        let _ = self.io.events.send(ev).await;
    }

    async fn news(&self, turn: Option<u64>, what: SatelliteNews, detail: impl Into<String>) {
        self.emit(Event::Satellite {
            turn,
            what,
            detail: detail.into(),
        })
        .await;
    }

    /// A hub connected: it replaces the one before.
    async fn connected(&mut self, stream: tokio::net::TcpStream, peer: String) {
        let _ = stream.set_nodelay(true);
        self.next_conn += 1;
        let id = self.next_conn;
        let (r, w) = stream.into_split();
        let (out_tx, out_rx) = mpsc::channel(HUB_WRITE_EDGE);
        tokio::spawn(writer(w, out_rx));
        let inbound = self.inbound.clone();
        let reader = tokio::spawn(async move {
            let mut r = BufReader::new(r);
            loop {
                match codec::read_event(&mut r).await {
                    Ok(Some(f)) => {
                        if inbound.send(Inbound::Frame(id, f)).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => {
                        let _ = inbound.send(Inbound::Closed(id, None)).await;
                        return;
                    }
                    Err(e) => {
                        let _ = inbound.send(Inbound::Closed(id, Some(e))).await;
                        return;
                    }
                }
            }
        });
        if let Some(old) = self.hub.take() {
            tracing::info!(old = %old.peer, new = %peer, "satellite: a new hub connection replaces the old one");
            // The old connection's question will not be answered by the new one.
            self.unanswered("the hub reconnected").await;
        } else {
            tracing::info!(%peer, "satellite: hub connected");
        }
        self.hub = Some(Hub {
            id,
            peer: peer.clone(),
            out: out_tx,
            reader,
            state: HubState::Connected,
        });
        self.news(None, SatelliteNews::Connected, peer).await;
    }

    async fn disconnected(&mut self, why: Option<CodecError>) {
        let Some(hub) = self.hub.take() else { return };
        match &why {
            Some(e) => {
                tracing::warn!(peer = %hub.peer, error = %e, "satellite: hub connection ended")
            }
            None => tracing::info!(peer = %hub.peer, "satellite: hub disconnected"),
        }
        self.unanswered("the hub went away").await;
        let detail = why.map_or_else(|| hub.peer.clone(), |e| format!("{}: {e}", hub.peer));
        self.news(None, SatelliteNews::Disconnected, detail).await;
    }

    /// The question in flight will get no reply (`why`): its turn ends (a `no_reply`
    /// event), unless the hub's answer to it is already playing — that plays on (its
    /// `played` may have nowhere to go).
    async fn unanswered(&mut self, why: &str) {
        let playing = self.group.as_ref().is_some_and(|g| g.stopped);
        let Some(run) = self.run.take_if(|_| !playing) else {
            return;
        };
        self.io.active.end(run.turn.id);
        self.news(Some(run.turn.id), SatelliteNews::NoReply, why)
            .await;
    }

    /// Queues a frame for the hub; false when the hub is gone.
    async fn send(&mut self, f: Frame) -> bool {
        let Some(hub) = &self.hub else { return false };
        if hub.out.send(f).await.is_ok() {
            return true;
        }
        self.disconnected(None).await;
        false
    }

    async fn hub_event(&mut self, f: Frame) {
        match f.kind.as_str() {
            "ping" => {
                let mut pong = Frame::new("pong");
                if let Some(t) = f.data.get("text").filter(|t| !t.is_null()) {
                    pong.data.insert("text".into(), t.clone());
                }
                self.send(pong).await;
            }
            "pong" => {}
            "describe" => {
                let info = satellite_info(&self.opts.served, &self.opts.info);
                self.send(info).await;
            }
            "run-satellite" => {
                if let Some(h) = &mut self.hub {
                    h.state = HubState::Running;
                    let peer = h.peer.clone();
                    tracing::info!(%peer, "satellite: the hub is ready for questions");
                    self.news(None, SatelliteNews::Running, peer).await;
                }
            }
            "pause-satellite" => {
                if let Some(h) = &mut self.hub {
                    h.state = HubState::Paused;
                    let peer = h.peer.clone();
                    tracing::info!(%peer, "satellite: paused by the hub (muted)");
                    self.cancel_run("paused");
                    self.news(None, SatelliteNews::Paused, peer).await;
                }
            }
            "transcript" => self.transcript(&f).await,
            "synthesize" => {
                let text = f.str("text").unwrap_or_default().trim().to_string();
                if let Some(run) = &mut self.run
                    && run.heard
                {
                    run.answer = text.clone();
                    run.deadline = Some(Instant::now() + self.opts.answer_timeout);
                    let turn = run.turn.id;
                    self.emit(Event::Answer {
                        turn,
                        text,
                        source: AnswerSource::Hub,
                    })
                    .await;
                }
            }
            "audio-start" => self.audio_start(&f),
            "audio-chunk" => self.audio_chunk(&f),
            "audio-stop" => self.audio_stop(),
            "error" => {
                let text = f.str("text").unwrap_or("(no text)").to_string();
                let code = f.str("code").unwrap_or_default();
                match self.run.take() {
                    Some(run) if !self.stale() || run.heard => {
                        tracing::warn!(turn = run.turn.id, %text, code, "satellite: the hub could not answer");
                        self.io.active.end(run.turn.id);
                        self.news(Some(run.turn.id), SatelliteNews::HubError, text)
                            .await;
                    }
                    other => {
                        self.run = other;
                        tracing::info!(%text, code, "satellite: error from the hub (no question of ours in flight)");
                    }
                }
            }
            kind if kind.starts_with("timer-") => self.timer(&f).await,
            // transcribe, voice-started, voice-stopped, detect, detection, … : the hub's
            // progress, nothing to do.
            kind => tracing::debug!(kind, "satellite: event from the hub"),
        }
    }

    /// The hub's voice timers ("set a timer" answered by Home Assistant): when one
    /// finishes, Panda announces it the way it announces its own (a `timer_fired` event:
    /// the turn driver speaks "Your 5 minute timer is done.").
    async fn timer(&mut self, f: &Frame) {
        let id = match f.data.get("id") {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(v) if !v.is_null() => v.to_string(),
            _ => {
                tracing::debug!(kind = %f.kind, "satellite: timer event without an id");
                return;
            }
        };
        match f.kind.as_str() {
            "timer-started" => {
                let name = f.str("name").map(str::trim).unwrap_or_default();
                let label = if name.is_empty() {
                    let secs = f.uint("total_seconds").unwrap_or(0);
                    format!(
                        "{} timer",
                        crate::think::timers::label_for(Duration::from_secs(secs))
                    )
                } else if name.to_lowercase().ends_with("timer") {
                    name.to_string()
                } else {
                    format!("{name} timer")
                };
                tracing::info!(%id, %label, "satellite: the hub started a timer");
                if self.timers.len() >= MAX_HUB_TIMERS {
                    self.timers.pop_front();
                }
                self.timers.push_back((id, label));
            }
            "timer-cancelled" => self.timers.retain(|(t, _)| *t != id),
            "timer-finished" => {
                let Some(i) = self.timers.iter().position(|(t, _)| *t == id) else {
                    tracing::info!(%id, "satellite: a timer of the hub's finished (started before Panda connected)");
                    self.emit(Event::TimerFired {
                        id: 0,
                        label: "timer".into(),
                    })
                    .await;
                    return;
                };
                let (_, label) = self.timers.remove(i).expect("found");
                self.fired += 1;
                tracing::info!(%id, %label, "satellite: the hub's timer finished");
                self.emit(Event::TimerFired {
                    id: self.fired,
                    label,
                })
                .await;
            }
            _ => {} // timer-updated: the label stays
        }
    }

    fn stale(&self) -> bool {
        self.stale_until.is_some_and(|t| Instant::now() < t)
    }

    async fn transcript(&mut self, f: &Frame) {
        let text = f.str("text").unwrap_or_default().trim().to_string();
        let Some(run) = &mut self.run else { return };
        if run.heard {
            return;
        }
        run.heard = true;
        run.deadline = Some(Instant::now() + self.opts.answer_timeout);
        // Audio that arrives from now on answers this question, not an old one.
        self.stale_until = None;
        let ev = Event::Transcript {
            turn: run.turn.id,
            text,
            audio_ms: run.audio_ms,
            stt_ms: run.sent.elapsed().as_millis() as u64,
            // The hub's transcripts carry no confidence.
            confidence: 1.0,
        };
        self.emit(ev).await;
    }

    fn audio_start(&mut self, f: &Frame) {
        // A group still open (no audio-stop) ends here.
        self.flush_group(false);
        let Some(fmt) = format_of(f) else {
            let data = serde_json::Value::Object(f.data.clone()).to_string();
            tracing::warn!(%data, "satellite: the hub's audio format is not one Panda plays; discarded");
            self.group = Some(Group::discard());
            return;
        };
        let stale = self.stale();
        let (turn, announcement) = match &mut self.run {
            Some(run) if run.heard => {
                run.deadline = None;
                (Some(run.turn.clone()), false)
            }
            // Before the transcript, or while a cancelled question's pipeline may
            // still answer: not ours to play.
            Some(_) => (None, false),
            None if stale => (None, false),
            None => {
                // An announcement: a turn of its own, cut by barge-in like any other.
                let turn = Turn::next(&self.io.root);
                self.io.active.begin(turn.clone());
                (Some(turn), true)
            }
        };
        if turn.is_none() {
            tracing::debug!(
                "satellite: audio from the hub for a question no longer asked; discarded"
            );
        }
        let text = self
            .run
            .as_ref()
            .map(|r| r.answer.clone())
            .unwrap_or_default();
        self.group = Some(Group {
            turn,
            announcement,
            rate: fmt.0,
            width: fmt.1,
            channels: fmt.2,
            text,
            pending: Vec::new(),
            stopped: false,
        });
    }

    fn audio_chunk(&mut self, f: &Frame) {
        if self.group.is_none() {
            // A hub that skips audio-start: the chunk's own format opens the group.
            self.audio_start(f);
        }
        let Some(g) = &mut self.group else { return };
        if g.turn.is_none() || g.stopped {
            return;
        }
        let (rate, width, channels) = format_of(f).unwrap_or((g.rate, g.width, g.channels));
        if rate != g.rate {
            // A rate change inside a group: pass on what came before at the old rate.
            self.flush_group(false);
            let Some(g) = &mut self.group else { return };
            g.rate = rate;
        }
        let Some(g) = &mut self.group else { return };
        if let Err(e) = codec::pcm_to_mono(&f.payload, width, channels, &mut g.pending) {
            tracing::warn!(error = %e, "satellite: bad audio from the hub; chunk skipped");
            return;
        }
        if g.pending.len() as u64 >= g.rate as u64 * PIECE_MS / 1000 {
            self.flush_group(false);
        }
    }

    fn audio_stop(&mut self) {
        let Some(g) = &self.group else { return };
        if g.turn.is_none() {
            self.group = None;
            return;
        }
        self.flush_group(true);
        if let Some(g) = &mut self.group {
            g.stopped = true;
        }
    }

    /// Passes the group's pending audio to the player (`last`: and the end of it).
    fn flush_group(&mut self, last: bool) {
        let Some(g) = &mut self.group else { return };
        let Some(turn) = g.turn.clone() else { return };
        if g.pending.is_empty() && !last {
            return;
        }
        let piece = PcmChunk {
            turn,
            sentence: 0,
            text: std::mem::take(&mut g.text),
            samples: std::mem::take(&mut g.pending),
            rate_hz: g.rate,
            last,
        };
        if self.audio.try_send(piece).is_err() {
            self.dropped_pieces += 1;
        }
    }

    /// A question from the listener: to the hub, or answered here.
    async fn utterance(&mut self, u: Utterance) {
        if u.command {
            // A stop word is decided here at once, never by the network.
            let _ = self.io.local.send(u).await;
            return;
        }
        if u.turn.token.is_cancelled() {
            return;
        }
        let turn = u.turn.id;
        match &self.hub {
            Some(h) if h.state == HubState::Running => {
                if let Some(u) = self.ask_hub(u).await {
                    self.answer_locally(u).await;
                }
            }
            Some(h) if h.state == HubState::Paused => {
                tracing::info!(
                    turn,
                    "satellite: the hub has muted this satellite; the question is not sent"
                );
                self.news(
                    Some(turn),
                    SatelliteNews::Dropped,
                    "the hub paused this satellite",
                )
                .await;
            }
            _ => self.answer_locally(u).await,
        }
    }

    async fn answer_locally(&mut self, u: Utterance) {
        let turn = u.turn.id;
        if self.opts.local_fallback {
            tracing::info!(turn, "satellite: no hub is ready; Panda answers itself");
            self.news(Some(turn), SatelliteNews::Local, "no hub connected")
                .await;
            let _ = self.io.local.send(u).await;
        } else {
            tracing::info!(turn, "satellite: no hub is ready; the question is dropped");
            self.news(Some(turn), SatelliteNews::Dropped, "no hub connected")
                .await;
        }
    }

    /// Sends the question to the hub; gives it back when the hub is gone.
    async fn ask_hub(&mut self, u: Utterance) -> Option<Utterance> {
        // An earlier question still in flight is over: this one replaces it.
        self.cancel_run("a new question");
        let wake_at = self
            .wakes
            .iter()
            .find(|(t, _)| *t == u.turn.id)
            .map(|(_, at)| *at);
        // A question said in the same breath starts before the detection; the hub
        // gets it from the detection on (as wyoming-satellite streams it).
        let skip = wake_at
            .filter(|at| *at > u.start_ms)
            .map_or(0, |at| {
                ((at - u.start_ms) * SAMPLE_RATE_HZ as u64 / 1000) as usize
            })
            .min(u.samples.len());
        let audio = &u.samples[skip..];
        let audio_ms = audio.len() as u64 * 1000 / SAMPLE_RATE_HZ as u64;
        let wake = self.opts.info.wake_word.0.clone();
        let mut frames = Vec::with_capacity(audio.len() / CHUNK_SAMPLES + 4);
        if u.wake_phrase.is_some() {
            frames.push(
                Frame::new("detection")
                    .with("name", wake.clone())
                    .with("timestamp", wake_at.unwrap_or(u.start_ms)),
            );
        }
        let mut run = Frame::new("run-pipeline")
            .with("start_stage", "asr")
            .with("end_stage", "tts")
            .with("restart_on_end", false);
        if u.wake_phrase.is_some() {
            run = run.with("wake_word_name", wake);
        }
        frames.push(run);
        let fmt = |f: Frame| {
            f.with("rate", SAMPLE_RATE_HZ)
                .with("width", 2)
                .with("channels", 1)
        };
        frames.push(fmt(Frame::new("audio-start")).with("timestamp", 0));
        for (i, chunk) in audio.chunks(CHUNK_SAMPLES).enumerate() {
            let bytes: Vec<u8> = chunk.iter().flat_map(|s| s.to_le_bytes()).collect();
            let at = (i * CHUNK_SAMPLES) as u64 * 1000 / SAMPLE_RATE_HZ as u64;
            frames.push(
                fmt(Frame::new("audio-chunk"))
                    .with("timestamp", at)
                    .with_payload(bytes),
            );
        }
        frames.push(Frame::new("audio-stop").with("timestamp", audio_ms));
        for f in frames {
            if !self.send(f).await {
                return Some(u);
            }
        }
        let peer = self
            .hub
            .as_ref()
            .map(|h| h.peer.clone())
            .unwrap_or_default();
        tracing::info!(turn = u.turn.id, audio_ms, %peer, "satellite: the question went to the hub");
        self.io.active.begin(u.turn.clone());
        self.run = Some(Run {
            turn: u.turn.clone(),
            sent: Instant::now(),
            audio_ms,
            heard: false,
            answer: String::new(),
            deadline: Some(Instant::now() + self.opts.answer_timeout),
        });
        self.news(
            Some(u.turn.id),
            SatelliteNews::Sent,
            format!("{audio_ms} ms of audio to {peer}"),
        )
        .await;
        None
    }

    /// Ends the question in flight (its turn cancelled: playback drops its audio); what
    /// the hub still sends for it is discarded for a while.
    fn cancel_run(&mut self, why: &str) {
        if let Some(run) = self.run.take() {
            tracing::info!(
                turn = run.turn.id,
                why,
                "satellite: the hub's answer is cancelled"
            );
            run.turn.token.cancel();
            self.io.active.end(run.turn.id);
            self.stale_until = Some(Instant::now() + self.opts.answer_timeout);
        }
        if let Some(g) = self.group.take()
            && let Some(t) = g.turn
        {
            t.token.cancel();
            self.io.active.end(t.id);
        }
    }

    async fn no_reply(&mut self) {
        let Some(run) = &self.run else { return };
        let ms = self.opts.answer_timeout.as_millis();
        tracing::warn!(
            turn = run.turn.id,
            ms,
            heard = run.heard,
            "satellite: no reply from the hub; the turn ends"
        );
        // (No deadline runs while the hub's answer plays.)
        self.unanswered(&format!("nothing from the hub in {ms} ms"))
            .await;
    }

    async fn report(&mut self, r: Event) {
        match r {
            Event::Wake { turn, at_ms, .. } => {
                self.wakes.push_back((turn, at_ms));
                while self.wakes.len() > 4 {
                    self.wakes.pop_front();
                }
                self.barge_in(turn);
            }
            Event::Stop { turn, .. } => self.barge_in(turn),
            Event::Spoken { turn, .. } => {
                let ours = self
                    .group
                    .as_ref()
                    .is_some_and(|g| g.stopped && g.turn.as_ref().is_some_and(|t| t.id == turn));
                if !ours {
                    return;
                }
                let g = self.group.take().expect("checked");
                self.io.active.end(turn);
                if !g.announcement {
                    self.run = None;
                }
                if self.send(Frame::new("played")).await {
                    self.news(Some(turn), SatelliteNews::Played, "").await;
                }
            }
            _ => {}
        }
    }

    /// A wake word or stop word (in turn `by`) ends the hub's turn in progress.
    fn barge_in(&mut self, by: u64) {
        let ours = self.run.as_ref().map(|r| r.turn.id).or_else(|| {
            self.group
                .as_ref()
                .and_then(|g| g.turn.as_ref().map(|t| t.id))
        });
        if ours.is_some_and(|t| t != by) {
            self.cancel_run("barge-in");
        }
    }
}

impl Group {
    fn discard() -> Group {
        Group {
            turn: None,
            announcement: false,
            rate: SAMPLE_RATE_HZ,
            width: 2,
            channels: 1,
            text: String::new(),
            pending: Vec::new(),
            stopped: false,
        }
    }
}

/// `rate`, `width`, `channels` of an audio event, when Panda plays that format.
fn format_of(f: &Frame) -> Option<(u32, usize, usize)> {
    let rate = f.uint("rate")?;
    let width = f.uint("width")?;
    let channels = f.uint("channels")?;
    ((8_000..=192_000).contains(&rate) && matches!(width, 2 | 4) && (1..=8).contains(&channels))
        .then_some((rate as u32, width as usize, channels as usize))
}

/// Writes the actor's frames to the hub, each within [`WRITE_TIMEOUT`]; ends when the
/// actor drops the connection or the hub stops reading.
async fn writer(mut w: OwnedWriteHalf, mut frames: mpsc::Receiver<Frame>) {
    while let Some(f) = frames.recv().await {
        match tokio::time::timeout(WRITE_TIMEOUT, codec::write_event(&mut w, &f)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "satellite: writing to the hub failed");
                return;
            }
            Err(_) => {
                tracing::warn!("satellite: the hub stopped reading for 10 s; dropping it");
                return;
            }
        }
    }
}

/// Passes the hub's audio to the speaking path at playback's pace (the actor never
/// waits on it).
async fn player(mut pieces: mpsc::Receiver<PcmChunk>, speech: mpsc::WeakSender<Speech>) {
    while let Some(p) = pieces.recv().await {
        if p.turn.token.is_cancelled() {
            continue;
        }
        let Some(tx) = speech.upgrade() else {
            continue; // shutting down: nothing plays any more
        };
        let turn = p.turn.token.clone();
        tokio::select! {
            _ = tx.send(Speech::Play(p)) => {}
            // A cancelled turn's piece is not worth waiting for.
            _ = turn.cancelled() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EndReason;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;

    /// The test's side of things: the hub's socket and every edge of the actor.
    struct Rig {
        root: CancellationToken,
        hub_r: BufReader<tokio::net::tcp::OwnedReadHalf>,
        hub_w: OwnedWriteHalf,
        utterances: mpsc::Sender<Utterance>,
        local: mpsc::Receiver<Utterance>,
        speech: mpsc::Receiver<Speech>,
        _speech_tx: mpsc::Sender<Speech>,
        events: mpsc::Receiver<Event>,
        reports: mpsc::Sender<Event>,
        addr: std::net::SocketAddr,
    }

    impl Rig {
        async fn start() -> Rig {
            let root = CancellationToken::new();
            let (utt_tx, utt_rx) = mpsc::channel(4);
            let (local_tx, local_rx) = mpsc::channel(4);
            let (speech_tx, speech_rx) = mpsc::channel(64);
            let (ev_tx, ev_rx) = mpsc::channel(64);
            let (rep_tx, rep_rx) = mpsc::channel(8);
            let opts = SatelliteOptions {
                info: SatelliteInfo {
                    name: "test".into(),
                    area: None,
                    wake_word: ("hey_panda".into(), "hey panda".into()),
                },
                served: Served::default(),
                answer_timeout: Duration::from_secs(5),
                local_fallback: true,
            };
            let io = SatelliteIo {
                utterances: utt_rx,
                local: local_tx,
                speech: speech_tx.downgrade(),
                events: ev_tx,
                reports: rep_rx,
                active: ActiveTurn::default(),
                root: root.clone(),
            };
            let (addr, _task) = start("tcp://127.0.0.1:0", opts, io, root.clone())
                .await
                .unwrap();
            let (r, w) = TcpStream::connect(addr).await.unwrap().into_split();
            let mut rig = Rig {
                root,
                hub_r: BufReader::new(r),
                hub_w: w,
                utterances: utt_tx,
                local: local_rx,
                speech: speech_rx,
                _speech_tx: speech_tx,
                events: ev_rx,
                reports: rep_tx,
                addr,
            };
            rig.news(SatelliteNews::Connected).await;
            rig
        }

        async fn send(&mut self, f: Frame) {
            codec::write_event(&mut self.hub_w, &f).await.unwrap();
        }

        async fn next(&mut self) -> Frame {
            tokio::time::timeout(Duration::from_secs(5), codec::read_event(&mut self.hub_r))
                .await
                .expect("a frame from the satellite")
                .unwrap()
                .expect("the connection is open")
        }

        /// Everything sent before it has been handled once the pong is back.
        async fn sync(&mut self) {
            self.send(Frame::new("ping").with("text", "sync")).await;
            loop {
                let f = self.next().await;
                if f.kind == "pong" {
                    assert_eq!(f.str("text"), Some("sync"));
                    return;
                }
            }
        }

        async fn news(&mut self, want: SatelliteNews) -> Event {
            loop {
                let ev = tokio::time::timeout(Duration::from_secs(5), self.events.recv())
                    .await
                    .expect("an event")
                    .unwrap();
                if matches!(&ev, Event::Satellite { what, .. } if *what == want) {
                    return ev;
                }
            }
        }

        fn question(&self) -> (Turn, Utterance) {
            let turn = Turn::next(&self.root);
            let u = Utterance {
                turn: turn.clone(),
                // 2 s of audio from 500 ms on.
                samples: vec![100; 32_000],
                start_ms: 500,
                end: EndReason::Silence,
                wake_phrase: Some("hey panda".into()),
                command: false,
                understood: None,
            };
            (turn, u)
        }

        async fn wake(&self, turn: u64, at_ms: u64) {
            self.reports
                .send(Event::Wake {
                    turn,
                    name: "hey_panda".into(),
                    score: 0.9,
                    heard: None,
                    at_ms,
                })
                .await
                .unwrap();
        }
    }

    fn audio(kind: &str, ms: u64) -> Frame {
        let f = Frame::new(kind)
            .with("rate", 22_050)
            .with("width", 2)
            .with("channels", 1);
        match kind {
            "audio-chunk" => f.with_payload(vec![1; (22_050 * ms / 1000) as usize * 2]),
            _ => f,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_hub_gets_the_question_and_a_barge_in_discards_the_rest_of_its_answer() {
        let mut rig = Rig::start().await;
        rig.send(Frame::new("run-satellite")).await;
        rig.send(Frame::new("describe")).await;
        let info = rig.next().await;
        assert_eq!(info.kind, "info");
        assert_eq!(info.data["satellite"]["has_vad"], true);
        rig.news(SatelliteNews::Running).await;

        // A question said in one breath: the hub gets it from the detection (1000 ms)
        // on, i.e. 1.5 s of the 2 s.
        let (turn, u) = rig.question();
        rig.wake(turn.id, 1000).await;
        rig.sync().await;
        rig.utterances.send(u).await.unwrap();
        let mut kinds = Vec::new();
        let mut samples = 0;
        loop {
            let f = rig.next().await;
            if f.kind == "run-pipeline" {
                assert_eq!(f.str("start_stage"), Some("asr"));
                assert_eq!(f.str("end_stage"), Some("tts"));
                assert_eq!(f.str("wake_word_name"), Some("hey_panda"));
            }
            samples += f.payload.len() / 2;
            let stop = f.kind == "audio-stop";
            kinds.push(f.kind);
            if stop {
                break;
            }
        }
        assert_eq!(&kinds[..3], ["detection", "run-pipeline", "audio-start"]);
        assert_eq!(samples, 24_000);
        rig.news(SatelliteNews::Sent).await;

        // The hub answers; its audio plays in the question's turn.
        rig.send(Frame::new("transcript").with("text", "What time is it?"))
            .await;
        rig.send(Frame::new("synthesize").with("text", "It is noon."))
            .await;
        rig.send(audio("audio-start", 0)).await;
        rig.send(audio("audio-chunk", 300)).await;
        rig.sync().await;
        let Some(Speech::Play(p)) = rig.speech.recv().await else {
            panic!("no audio to play")
        };
        assert_eq!(p.turn.id, turn.id);
        assert_eq!(p.rate_hz, 22_050);
        assert_eq!(p.text, "It is noon.");

        // "Hey panda" over it: the turn is cancelled, and what the hub still sends for
        // that question — the rest of this group, even a new group — is not played.
        let barge = Turn::next(&rig.root);
        rig.wake(barge.id, 9_000).await;
        tokio::time::timeout(Duration::from_secs(5), turn.token.cancelled())
            .await
            .expect("the hub's turn is cancelled");
        rig.send(audio("audio-chunk", 300)).await;
        rig.send(audio("audio-stop", 0)).await;
        rig.send(audio("audio-start", 0)).await;
        rig.send(audio("audio-chunk", 300)).await;
        rig.send(audio("audio-stop", 0)).await;
        rig.sync().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            rig.speech.try_recv().is_err(),
            "a cancelled answer played on"
        );

        // A timer the hub set finishes: announced like Panda's own.
        rig.send(
            Frame::new("timer-started")
                .with("id", "abc")
                .with("total_seconds", 300)
                .with("name", serde_json::Value::Null),
        )
        .await;
        rig.send(
            Frame::new("timer-started")
                .with("id", "x")
                .with("total_seconds", 5),
        )
        .await;
        rig.send(Frame::new("timer-cancelled").with("id", "x"))
            .await;
        rig.send(Frame::new("timer-finished").with("id", "abc"))
            .await;
        let fired = loop {
            match tokio::time::timeout(Duration::from_secs(5), rig.events.recv()).await {
                Ok(Some(Event::TimerFired { label, .. })) => break label,
                Ok(Some(_)) => {}
                other => panic!("no timer_fired: {other:?}"),
            }
        };
        assert_eq!(fired, "5 minute timer");

        // Muted by the hub: the question goes nowhere.
        rig.send(Frame::new("pause-satellite")).await;
        rig.news(SatelliteNews::Paused).await;
        let (_, u) = rig.question();
        rig.utterances.send(u).await.unwrap();
        rig.news(SatelliteNews::Dropped).await;
        assert!(rig.local.try_recv().is_err());

        // A stop word is always decided here.
        let (_, mut u) = rig.question();
        u.command = true;
        rig.utterances.send(u).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), rig.local.recv()).await;
        assert!(got.unwrap().unwrap().command);

        // The hub goes away: Panda answers itself.
        rig.hub_w.shutdown().await.unwrap();
        rig.news(SatelliteNews::Disconnected).await;
        let (turn, u) = rig.question();
        rig.utterances.send(u).await.unwrap();
        rig.news(SatelliteNews::Local).await;
        let got = tokio::time::timeout(Duration::from_secs(5), rig.local.recv()).await;
        assert_eq!(got.unwrap().unwrap().turn.id, turn.id);

        // A newer hub connection replaces an older one.
        let _a = TcpStream::connect(rig.addr).await.unwrap();
        rig.news(SatelliteNews::Connected).await;
        let mut b = TcpStream::connect(rig.addr).await.unwrap();
        rig.news(SatelliteNews::Connected).await;
        b.write_all(b"{\"type\":\"ping\"}\n").await.unwrap();
        let mut r = BufReader::new(b);
        let pong = codec::read_event(&mut r).await.unwrap().unwrap();
        assert_eq!(pong.kind, "pong");
        rig.root.cancel();
    }

    #[test]
    fn only_formats_playback_takes_are_accepted() {
        let f = |rate: u64, width: u64, channels: u64| {
            Frame::new("audio-start")
                .with("rate", rate)
                .with("width", width)
                .with("channels", channels)
        };
        assert_eq!(format_of(&f(22_050, 2, 1)), Some((22_050, 2, 1)));
        assert_eq!(format_of(&f(48_000, 4, 2)), Some((48_000, 4, 2)));
        assert_eq!(format_of(&f(22_050, 3, 1)), None);
        assert_eq!(format_of(&f(100, 2, 1)), None);
        assert_eq!(format_of(&f(16_000, 2, 0)), None);
        assert_eq!(format_of(&Frame::new("audio-start")), None);
    }
}
