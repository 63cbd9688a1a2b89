//! The turn driver: one turn at a time, whatever started it — a spoken question (already
//! transcribed), a typed one (`panda ask`, the status page's API), or a timer going off
//! (announced between answers). Runs as one tokio task that owns the [`Thinker`].
//!
//! For each turn it mints the [`Turn`] (number and token under the root; spoken turns
//! come minted by the listener), asks the thinker, and — when the answer is spoken —
//! waits until playback reports what was heard, so memory keeps only what the user
//! actually heard and the next turn does not talk over this one. A turn cancelled before
//! any of its audio reached playback (a stop or a barge-in while Panda was still
//! thinking) gets no such report: it ends [`HEARD_AFTER_CANCEL`] after its cancel, heard
//! = nothing. (Without that the driver once waited forever and Panda never answered
//! again while its watchdog still said "ok".)
//!
//! Follow-ups: after a spoken answer heard whole, the driver may ask the listener to take
//! the next question without the wake word ([`FollowUp`]): always when `[conversation]
//! follow_up_ms` is set, else only when the answer asked something back (ends in "?").
//!
//! The host (`app`) sees each turn through a [`Host`]: the status page and the watchdog's
//! progress in `panda run`, stdout in `panda ask`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::timers::{self, TimerEntry};
use super::turn::{AnswerSource, Thinker, TurnIo, TurnOutcome};
use crate::event::{Event, ListenControl, Question, Speech, Turn};

/// After a turn is cancelled, how long the driver waits for playback's report of what
/// was heard. Playback flushes within 50 ms of a cancel and reports at once; a turn whose
/// audio never reached playback is never reported, and counts as heard = nothing.
pub const HEARD_AFTER_CANCEL: Duration = Duration::from_millis(1500);

/// How long after a spoken answer ends (or is cut) a question made of that answer's own
/// words is taken for its echo (see [`is_echo_of`]).
pub const ECHO_QUESTION_WINDOW: Duration = Duration::from_secs(30);

/// Whether `question` is `answer` heard back: at least four words, and at least 80 % of
/// them found in the answer in the same order (a plural's "s" aside). A "hey panda" said
/// over an answer cuts it only once its check has heard the phrase, so the question
/// collected after it can hold Panda's own voice — what the canceller left of it — and
/// Whisper, on a busy machine, heard "Then came the story about the river and the hill"
/// where the person had said "stop" over "Then came part 4 of the story, about the river
/// and the hills". Asked as a question, Panda told the story again. A person asking
/// about the answer rephrases it, and short questions ("and the hills?") never match.
pub fn is_echo_of(question: &str, answer: &str) -> bool {
    let words = |t: &str| -> Vec<String> {
        t.split(|c: char| !c.is_alphanumeric() && c != '\'')
            .filter(|w| !w.is_empty())
            .map(|w| {
                let w = w.to_lowercase();
                match w.strip_suffix('s') {
                    Some(stem) if stem.chars().count() >= 3 => stem.to_string(),
                    _ => w,
                }
            })
            .collect()
    };
    let q = words(question);
    if q.len() < 4 {
        return false;
    }
    let a = words(answer);
    // Longest common subsequence, one row at a time (answers are a few hundred words).
    let mut row = vec![0usize; a.len() + 1];
    for qw in &q {
        let mut diag = 0;
        for (j, aw) in a.iter().enumerate() {
            let up = row[j + 1];
            row[j + 1] = if qw == aw { diag + 1 } else { up.max(row[j]) };
            diag = up;
        }
    }
    let common = row[a.len()];
    common * 5 >= q.len() * 4
}

/// Where the driver's questions come from.
pub enum Source {
    /// `panda ask`: these questions in order; then, with `wait_timers`, every pending
    /// timer is waited for and announced.
    List {
        /// The questions.
        questions: VecDeque<String>,
        /// Stay until no timer is pending.
        wait_timers: bool,
    },
    /// `panda run`: transcribed questions from the listener and typed ones from the API,
    /// until both edges close — or, for a recording (`end_with_spoken`), until the
    /// spoken ones do.
    Live {
        /// Transcribed questions (the STT stage).
        spoken: mpsc::Receiver<Question>,
        /// Typed questions (`POST /api/ask`).
        typed: mpsc::Receiver<String>,
        /// A recording's last question ends the run.
        end_with_spoken: bool,
    },
}

/// What the host learns about each turn.
pub trait Host: Send {
    /// A job (a turn, or a spoken question being dropped) starts; the watchdog's
    /// progress clock runs until [`Host::idle`].
    fn busy(&mut self) {}
    /// The driver waits for the next job.
    fn idle(&mut self) {}
    /// A typed question became turn `turn`.
    fn asked(&mut self, _turn: u64, _text: &str) {}
    /// A piece of answer text as it is produced.
    fn text(&mut self, turn: u64, delta: &str);
    /// The answer is complete (all its text produced; it may still be playing).
    fn answered(&mut self, _turn: u64, _outcome: &TurnOutcome) {}
}

/// A turn the driver finished, for `panda ask`'s summary.
#[derive(Debug, Clone)]
pub struct Answered {
    /// The question (empty for an announcement).
    pub question: String,
    /// The answer as generated.
    pub answer: String,
    /// Where it came from.
    pub source: AnswerSource,
}

/// When and how long to listen for a follow-up, and where to ask for it.
pub struct FollowUp {
    /// The listener's control edge.
    pub listener: mpsc::Sender<ListenControl>,
    /// `[conversation] follow_up_ms`: after every answer heard whole (0: only after a
    /// question).
    pub window_ms: u64,
    /// The window after an answer that asks something back, when `window_ms` is 0
    /// (`[endpoint] question_timeout_ms`).
    pub question_window_ms: u64,
}

impl FollowUp {
    /// The window after `answer`, heard whole: `None` for no follow-up.
    pub fn window_after(&self, answer: &str) -> Option<u64> {
        if self.window_ms > 0 {
            return Some(self.window_ms);
        }
        let asks = answer
            .trim_end_matches(|c: char| c.is_whitespace() || c == '"' || c == '\'' || c == ')')
            .ends_with(['?', '？', '¿']);
        (asks && self.question_window_ms > 0).then_some(self.question_window_ms)
    }
}

/// The turn in progress, for barge-in and `POST /api/stop`: shared between the driver
/// (which sets it) and the event consumer and API (which cancel it).
#[derive(Clone, Default)]
pub struct ActiveTurn(Arc<std::sync::Mutex<Option<Turn>>>);

impl ActiveTurn {
    fn set(&self, turn: Option<Turn>) {
        *crate::lock(&self.0) = turn;
    }

    /// Makes `turn` the one in progress: a turn answered outside the driver (by the hub
    /// in satellite mode) is cut by barge-in and the status page's stop like any other.
    pub fn begin(&self, turn: Turn) {
        self.set(Some(turn));
    }

    /// Clears the turn in progress if it is still `id`.
    pub fn end(&self, id: u64) {
        let mut g = crate::lock(&self.0);
        if g.as_ref().is_some_and(|t| t.id == id) {
            *g = None;
        }
    }

    /// Cancels the turn in progress unless it is `except` (the new turn of a barge-in);
    /// true if one was cancelled.
    pub fn cancel(&self, except: Option<u64>) -> bool {
        let g = crate::lock(&self.0);
        match &*g {
            Some(t) if Some(t.id) != except && !t.token.is_cancelled() => {
                t.token.cancel();
                true
            }
            _ => false,
        }
    }
}

/// One thing to do.
enum Job {
    Spoken(Question),
    Typed(String),
    Announce(String),
}

/// Timer announcements waiting to be spoken, and how many firings have arrived.
struct Announcements {
    queue: VecDeque<String>,
    /// [`Event::TimerFired`]s received (`--wait-timers` ends when the timer task has
    /// fired no more than this and holds none).
    firings_seen: u64,
}

impl Announcements {
    fn fired(&mut self, label: &str) {
        self.firings_seen += 1;
        self.queue.push_back(timers::announcement(label));
    }
}

/// The driver (see the module doc).
pub struct Driver {
    /// Answers questions (skills, agents, the LLM, memory).
    pub thinker: Thinker,
    /// Sentences to TTS; `None` when answers are not spoken (`--no-speak`).
    pub sentences: Option<mpsc::Sender<Speech>>,
    /// Playback's reports (`spoken`) and timers going off (`timer_fired`), from the event
    /// consumer.
    pub reports: mpsc::Receiver<Event>,
    /// Cancelled at shutdown.
    pub root: CancellationToken,
    /// The turn in progress.
    pub active: ActiveTurn,
    /// Follow-up listening after spoken answers (`panda run` with a listener).
    pub follow_up: Option<FollowUp>,
}

impl Driver {
    /// Runs turns from `source` until it is exhausted or the root token is cancelled.
    /// `missed` timers (due while Panda was off) are announced first.
    pub async fn run(
        mut self,
        mut source: Source,
        missed: &[TimerEntry],
        host: &mut dyn Host,
    ) -> Vec<Answered> {
        let mut fired = Announcements {
            queue: timers::missed_announcements(missed).into(),
            firings_seen: 0,
        };
        let mut done = Vec::new();
        // The last spoken answer and when it ended (see `is_echo_of`).
        let mut last_spoken: Option<(String, std::time::Instant)> = None;
        while let Some(job) = self.next_job(&mut source, &mut fired).await {
            host.busy();
            let spoken = matches!(job, Job::Spoken(_));
            let (turn, text, announce) = match job {
                Job::Spoken(q) if q.turn.token.is_cancelled() || q.text.trim().is_empty() => {
                    host.idle();
                    continue;
                }
                Job::Spoken(q)
                    if last_spoken.as_ref().is_some_and(|(a, at)| {
                        at.elapsed() < ECHO_QUESTION_WINDOW && is_echo_of(&q.text, a)
                    }) =>
                {
                    tracing::info!(turn = q.turn.id, heard = %q.text, "the question is Panda's own answer heard back; ignored");
                    host.idle();
                    continue;
                }
                Job::Spoken(q) => (q.turn, q.text, false),
                Job::Typed(q) => {
                    let t = Turn::next(&self.root);
                    host.asked(t.id, &q);
                    (t, q, false)
                }
                Job::Announce(text) => (Turn::next(&self.root), text, true),
            };
            self.active.set(Some(turn.clone()));
            let outcome = self.one_turn(&turn, &text, announce, host).await;
            host.answered(turn.id, &outcome);
            if self.sentences.is_some() && !outcome.answer.is_empty() {
                let whole = self.wait_heard(&turn, &mut fired).await;
                last_spoken = Some((outcome.answer.clone(), std::time::Instant::now()));
                if spoken && whole && fired.queue.is_empty() {
                    self.follow_up(&outcome.answer).await;
                }
            } else {
                // Not spoken: what was generated is what the user got.
                self.thinker
                    .heard(turn.id, &outcome.answer, turn.token.is_cancelled())
                    .await;
            }
            self.active.set(None);
            host.idle();
            done.push(Answered {
                question: if announce { String::new() } else { text },
                answer: outcome.answer,
                source: outcome.source,
            });
        }
        done
    }

    async fn one_turn(
        &mut self,
        turn: &Turn,
        text: &str,
        announce: bool,
        host: &mut dyn Host,
    ) -> TurnOutcome {
        let tid = turn.id;
        let mut on_text = |d: &str| host.text(tid, d);
        let mut io = TurnIo {
            sentences: self.sentences.as_ref(),
            on_text: &mut on_text,
        };
        let span = tracing::info_span!("turn", turn = turn.id);
        if announce {
            self.thinker
                .announce(turn, text, &mut io)
                .instrument(span)
                .await
        } else {
            self.thinker
                .turn(turn, text, &mut io)
                .instrument(span)
                .await
        }
    }

    /// The next job: a timer announcement that is due, else whatever the source offers
    /// first. `None` when the source is exhausted or the run stops.
    async fn next_job(&mut self, source: &mut Source, fired: &mut Announcements) -> Option<Job> {
        loop {
            if self.root.is_cancelled() {
                return None;
            }
            if let Some(text) = fired.queue.pop_front() {
                return Some(Job::Announce(text));
            }
            match source {
                Source::List {
                    questions,
                    wait_timers,
                } => {
                    if let Some(q) = questions.pop_front() {
                        return Some(Job::Typed(q));
                    }
                    if !*wait_timers
                        || self.thinker.unannounced_timers(fired.firings_seen).await == 0
                    {
                        return None;
                    }
                    // Stay for the timers still pending; each is announced as it fires.
                    let report = tokio::select! {
                        _ = self.root.cancelled() => return None,
                        r = self.reports.recv() => r?,
                    };
                    if let Event::TimerFired { label, .. } = report {
                        fired.fired(&label);
                    }
                }
                Source::Live {
                    spoken,
                    typed,
                    end_with_spoken,
                } => {
                    let (spoken_open, typed_open) = (!spoken.is_closed(), !typed.is_closed());
                    if !spoken_open && (!typed_open || *end_with_spoken) && spoken.is_empty() {
                        return None;
                    }
                    tokio::select! {
                        _ = self.root.cancelled() => return None,
                        q = spoken.recv(), if spoken_open || !spoken.is_empty() => match q {
                            Some(q) => return Some(Job::Spoken(q)),
                            None => continue,
                        },
                        a = typed.recv(), if typed_open => match a {
                            Some(a) => return Some(Job::Typed(a)),
                            None => continue,
                        },
                        r = self.reports.recv() => match r {
                            Some(Event::TimerFired { label, .. }) => fired.fired(&label),
                            Some(_) => {}
                            None => return None,
                        },
                    }
                }
            }
        }
    }

    /// Asks the listener for a follow-up after `answer`, if one is due.
    async fn follow_up(&self, answer: &str) {
        let Some(f) = &self.follow_up else { return };
        if let Some(window_ms) = f.window_after(answer) {
            // A closed edge: the listener has ended (the recording is over).
            let _ = f.listener.send(ListenControl::FollowUp { window_ms }).await;
        }
    }

    /// Waits until playback reports what was heard of `turn`'s answer (or the run stops)
    /// and tells the thinker, which stores the exchange as heard. Timers that go off
    /// meanwhile are queued in `fired` for after this answer. A turn cancelled before its
    /// audio reached playback ends [`HEARD_AFTER_CANCEL`] after the cancel. True when the
    /// answer was heard whole.
    async fn wait_heard(&mut self, turn: &Turn, fired: &mut Announcements) -> bool {
        let deadline = tokio::time::sleep(Duration::from_secs(365 * 24 * 3600));
        tokio::pin!(deadline);
        let mut cancelled = false;
        loop {
            let report = tokio::select! {
                _ = self.root.cancelled() => return false,
                _ = turn.token.cancelled(), if !cancelled => {
                    cancelled = true;
                    deadline.as_mut().reset(tokio::time::Instant::now() + HEARD_AFTER_CANCEL);
                    continue;
                }
                _ = &mut deadline, if cancelled => {
                    self.thinker.heard(turn.id, "", true).await;
                    return false;
                }
                r = self.reports.recv() => r,
            };
            match report {
                Some(Event::Spoken {
                    turn: t,
                    heard,
                    interrupted,
                    ..
                }) if t == turn.id => {
                    self.thinker.heard(t, &heard, interrupted).await;
                    return !interrupted;
                }
                Some(Event::TimerFired { label, .. }) => fired.fired(&label),
                Some(_) => continue,
                None => return false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_question_made_of_the_answer_s_own_words_is_its_echo() {
        let story = "Once upon a time a child called out, hey panda, to a sleepy bear. \
                     Then came part 4 of the story, about the river and the hills.";
        // Heard under a "stop" on a busy machine (the device test).
        assert!(is_echo_of(
            "Then came the story about the river and the hill.",
            story
        ));
        assert!(is_echo_of("A child called out to a sleepy bear.", story));
        // The person's own questions, even about the answer.
        assert!(!is_echo_of("What is the capital of France?", story));
        assert!(!is_echo_of("Tell me more about the bear.", story));
        assert!(!is_echo_of("What happened at the river?", story));
        assert!(!is_echo_of("Stop.", story));
        assert!(!is_echo_of("the river and the hills", "What time is it?"));
        // Too short to tell.
        assert!(!is_echo_of("the river and", story));
    }

    #[test]
    fn a_follow_up_comes_after_a_question_or_always_when_configured() {
        let (tx, _rx) = mpsc::channel(1);
        let mut f = FollowUp {
            listener: tx,
            window_ms: 0,
            question_window_ms: 5000,
        };
        assert_eq!(f.window_after("Which city do you mean?"), Some(5000));
        assert_eq!(f.window_after("¿Qué ciudad?  "), Some(5000));
        assert_eq!(f.window_after("He said \"why?\""), Some(5000));
        assert_eq!(f.window_after("It is ten past five."), None);
        assert_eq!(f.window_after(""), None);
        f.window_ms = 8000;
        assert_eq!(f.window_after("It is ten past five."), Some(8000));
    }
}
