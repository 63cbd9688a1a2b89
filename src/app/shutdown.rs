//! The one event consumer and shutdown sequence of `panda ask` and `panda run` (a tokio
//! task's loop on the runtime): every stage's events pass through it to the caller, the
//! status page and the metrics; it forwards playback's reports and timer firings to the
//! turn driver, applies barge-in, feeds the watchdog, and shuts the pipeline down in
//! order:
//!
//! 1. the driver ends (its questions are exhausted, or the root token is cancelled); its
//!    sentence edge closes, so TTS ends and playback drains;
//! 2. once playback has ended, the root token is cancelled (background tasks — health
//!    checks, timers — stop) and the events still queued are passed on;
//! 3. after a SIGTERM (root cancelled from outside) all of this gets `[run] grace_ms`,
//!    then the consumer returns regardless. Memory is closed by the caller, last.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::systemd::{Progress, sd_notify};
use super::topology::Speaking;
use crate::config::Config;
use crate::event::{Cue, Event};
use crate::think::driver::{ActiveTurn, Answered};

/// What the consumer serves besides the caller (all optional: `panda ask` has none).
#[derive(Default)]
pub struct Extras {
    /// The status page's model (and the metrics it holds).
    pub hub: Option<Arc<crate::web::Hub>>,
    /// Barge-in: a wake word cancels the turn in progress.
    pub barge_in: Option<ActiveTurn>,
    /// The watchdog's view of the driver, and its interval.
    pub watchdog: Option<(Arc<Progress>, Duration)>,
    /// The wake earcon and playback's cue edge: played on every wake.
    pub earcon: Option<(mpsc::Sender<Cue>, Cue)>,
    /// Satellite mode's actor: wake words, stop words and playback's reports
    /// (`SATELLITE_REPORT_EDGE`, never waited on).
    pub satellite: Option<mpsc::Sender<Event>>,
}

/// The parts the consumer waits on.
pub struct Consume<'a> {
    /// Every stage's events.
    pub events: mpsc::Receiver<Event>,
    /// Playback's reports and timer firings, to the driver.
    pub reports: mpsc::Sender<Event>,
    /// The driver's task.
    pub driver: tokio::task::JoinHandle<Vec<Answered>>,
    /// TTS and playback threads, when answers are spoken.
    pub speaking: Option<Speaking>,
    /// The caller's view of each event.
    pub on_event: &'a mut dyn FnMut(&Event),
}

/// Runs the consumer until the pipeline has shut down (see the module doc); returns
/// the driver's turns.
pub async fn consume(
    cfg: &Config,
    root: &CancellationToken,
    parts: Consume<'_>,
    extras: Extras,
) -> Vec<Answered> {
    let Consume {
        mut events,
        reports,
        driver,
        speaking,
        on_event,
    } = parts;
    let mut driver = Some(driver);
    let mut answered = Vec::new();
    // TTS and playback are joined once the driver (the sentence edge's last sender) ends.
    let mut threads = speaking.map(|s| {
        drop(s.sentences);
        (s.tts_thread, s.player)
    });
    let mut tail = None;
    let mut stopping = false;
    let far = Duration::from_secs(365 * 24 * 3600);
    let grace = tokio::time::sleep(far);
    tokio::pin!(grace);
    let (progress, every) = extras
        .watchdog
        .clone()
        .map_or((None, far), |(p, d)| (Some(p), d));
    let mut watchdog_tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            ev = events.recv() => {
                let Some(ev) = ev else { break };
                observe(&ev, &extras, progress.as_deref());
                if matches!(ev, Event::Spoken { .. } | Event::TimerFired { .. }) {
                    let _ = reports.send(ev.clone()).await;
                }
                on_event(&ev);
            }
            r = async { driver.as_mut().expect("guarded").await }, if driver.is_some() => {
                driver = None;
                answered = r.unwrap_or_default();
                match threads.take() {
                    Some((t, p)) => tail = Some(Speaking::join(t, p)),
                    None => root.cancel(),
                }
            }
            r = async { tail.as_mut().expect("guarded").await }, if tail.is_some() => {
                tail = None;
                if let Ok(Err(e)) = r {
                    tracing::warn!(error = %e, "playback ended with an error");
                }
                // Every stage of a turn is done; background tasks stop with the root.
                root.cancel();
            }
            _ = root.cancelled(), if !stopping => {
                stopping = true;
                // Only the appliance (the one with a status page) talks to systemd.
                if let Some(h) = &extras.hub {
                    sd_notify("STOPPING=1");
                    h.set_state(crate::web::State::Idle);
                }
                grace.as_mut().reset(tokio::time::Instant::now() + Duration::from_millis(cfg.run.grace_ms));
            }
            _ = &mut grace => {
                tracing::warn!(grace_ms = cfg.run.grace_ms, "stages did not finish within the grace period; exiting anyway");
                break;
            }
            _ = watchdog_tick.tick(), if progress.is_some() => {
                let p = progress.as_deref().expect("guarded");
                match p.stalled(Duration::from_millis(cfg.run.stall_ms)) {
                    None => sd_notify("WATCHDOG=1"),
                    Some(quiet) => tracing::error!(
                        quiet_s = quiet.as_secs(),
                        "the turn in progress has made no progress: no longer feeding the watchdog, so systemd restarts Panda"
                    ),
                }
            }
        }
        if stopping && driver.is_none() && tail.is_none() && root.is_cancelled() {
            // Pass on what is still queued, then stop.
            while let Ok(ev) = events.try_recv() {
                observe(&ev, &extras, progress.as_deref());
                on_event(&ev);
            }
            break;
        }
    }
    answered
}

/// The status page, metrics, barge-in and the watchdog's progress see every event.
fn observe(ev: &Event, extras: &Extras, progress: Option<&Progress>) {
    // Background reports (breaker changes, timers, errors) are not a turn's progress: a
    // breaker probing a dead agent must not keep a stuck appliance's watchdog fed.
    if let Some(p) = progress
        && !matches!(
            ev,
            Event::Breaker { .. } | Event::TimerFired { .. } | Event::Error { .. }
        )
    {
        p.touch();
    }
    if let Some(h) = &extras.hub {
        h.observe(ev);
    }
    // A wake word, or a stop word said over the answer, ends the turn in progress.
    let barge = match ev {
        Event::Wake { turn, .. } => Some((*turn, "barge-in")),
        Event::Stop { turn, .. } => Some((*turn, "stop word")),
        _ => None,
    };
    if let (Some((turn, why)), Some(active)) = (barge, &extras.barge_in)
        && active.cancel(Some(turn))
    {
        if let Some(h) = &extras.hub {
            h.metrics.barge_ins.add(1);
        }
        tracing::info!(turn, why, "the answer in progress is cancelled");
    }
    if let Some(sat) = &extras.satellite
        && matches!(
            ev,
            Event::Wake { .. } | Event::Stop { .. } | Event::Spoken { .. }
        )
        && let Err(mpsc::error::TrySendError::Full(_)) = sat.try_send(ev.clone())
    {
        tracing::warn!("satellite: its report edge is full; a report is dropped");
    }
    // After the barge-in's cancel, so playback has silenced the old answer first (its
    // select takes a cancel before a cue).
    if let (Event::Wake { .. }, Some((cues, cue))) = (ev, &extras.earcon)
        && let Err(mpsc::error::TrySendError::Full(_)) = cues.try_send(cue.clone())
    {
        tracing::debug!("an earcon is already waiting to play; this one is dropped");
    }
}
