//! `panda ask`: a list of questions through the turn driver (and, with `speak`, the
//! speaking path), one turn at a time, each answer heard before the next question.
//!
//! ```text
//!  question list ─▶ turn driver ─SENTENCE_EDGE─▶ tts ─PCM_EDGE─▶ playback
//!        ▲ HEARD_EDGE (spoken, timer fired)   every stage ─EVENT_EDGE─▶ consumer ─▶ caller
//! ```

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::shutdown::{Consume, Extras, consume};
use super::topology::{SpeakerTaps, start_speaking, start_thinking};
use super::{AppError, AskOptions, EVENT_EDGE, HEARD_EDGE};
use crate::config::Config;
use crate::event::Event;
use crate::think::driver::{ActiveTurn, Answered, Driver, Host, Source};
use crate::think::turn::TurnOutcome;

/// Answer text goes to the caller as it is produced; each answer ends with a newline.
struct Stdout(Box<dyn FnMut(&str) + Send>);

impl Host for Stdout {
    fn text(&mut self, _turn: u64, delta: &str) {
        (self.0)(delta);
    }

    fn answered(&mut self, _turn: u64, _outcome: &TurnOutcome) {
        (self.0)("\n");
    }
}

/// Runs each question as one turn; answer text streams to `on_text`, every event goes
/// to `on_event`. Returns the turns (timer announcements included).
pub async fn ask(
    cfg: &Config,
    opts: AskOptions,
    root: CancellationToken,
    mut on_event: impl FnMut(&Event),
    on_text: Box<dyn FnMut(&str) + Send>,
) -> Result<Vec<Answered>, AppError> {
    let (ev_tx, ev_rx) = mpsc::channel::<Event>(EVENT_EDGE);
    let thinking = start_thinking(cfg, &ev_tx, &root, opts.voice.clone(), None).await?;
    let speaking = match opts.speak {
        Some(output) => {
            let voice = opts.voice.clone().unwrap_or_else(|| cfg.tts.voice.clone());
            Some(start_speaking(cfg, &voice, output, &ev_tx, SpeakerTaps::default()).await?)
        }
        None => None,
    };
    drop(ev_tx);
    let (reports_tx, reports_rx) = mpsc::channel::<Event>(HEARD_EDGE);
    let driver = Driver {
        thinker: thinking.thinker,
        sentences: speaking.as_ref().map(|s| s.sentences.clone()),
        reports: reports_rx,
        root: root.clone(),
        active: ActiveTurn::default(),
        follow_up: None,
    };
    let source = Source::List {
        questions: opts.questions.into(),
        wait_timers: opts.wait_timers,
    };
    let missed = thinking.missed;
    let driver = tokio::spawn(async move {
        let mut host = Stdout(on_text);
        driver.run(source, &missed, &mut host).await
    });
    let parts = Consume {
        events: ev_rx,
        reports: reports_tx,
        driver,
        speaking,
        on_event: &mut on_event,
    };
    let turns = consume(cfg, &root, parts, Extras::default()).await;
    // Memory flushes last, after every stage that could still write to it has ended.
    if let Some(m) = thinking.memory
        && let Err(e) = m.close().await
    {
        tracing::warn!(error = %e, "memory: closing failed");
    }
    Ok(turns)
}
