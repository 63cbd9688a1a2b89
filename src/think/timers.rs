//! Timers and alarms: an actor task that owns the list, persists it, and fires each one
//! when due — spoken by whoever listens to [`Event::TimerFired`].
//!
//! The list lives in `[state] dir/timers.json`, rewritten atomically (temp file + rename,
//! on a blocking thread) on every change, so timers survive a restart; ones that fell due
//! while Panda was off are returned at start so they can be announced as missed. The task
//! sleeps until the next due time, never polls.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::event::Event;

/// Control edge to the timer task: requests from the turn task. When full, the sender
/// waits (a few requests per turn at most).
const TIMER_EDGE: usize = 8;

/// Errors of the timer store.
#[derive(Debug, thiserror::Error)]
pub enum TimerError {
    /// The file exists but is not a timer list.
    #[error("{path} is not a timer list ({problem}); move it away to start with no timers")]
    Corrupt {
        /// File.
        path: PathBuf,
        /// Parser message.
        problem: String,
    },
    /// The state directory cannot be written.
    #[error("cannot write {path}: {problem}")]
    Io {
        /// File.
        path: PathBuf,
        /// OS message.
        problem: String,
    },
    /// The timer task has stopped.
    #[error("the timer service has stopped")]
    Stopped,
}

/// One timer or alarm.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimerEntry {
    /// Id, unique within the file.
    pub id: u64,
    /// What to say when it fires ("2 second timer", "alarm for 7 AM").
    pub label: String,
    /// Due time, ms since the Unix epoch.
    pub due_unix_ms: u64,
}

enum Cmd {
    Add {
        label: String,
        after: Duration,
        reply: oneshot::Sender<Result<TimerEntry, TimerError>>,
    },
    CancelAll {
        reply: oneshot::Sender<Result<usize, TimerError>>,
    },
    List {
        reply: oneshot::Sender<Vec<TimerEntry>>,
    },
    Unannounced {
        seen: u64,
        reply: oneshot::Sender<usize>,
    },
}

/// Handle to the timer task.
#[derive(Clone)]
pub struct Timers {
    tx: mpsc::Sender<Cmd>,
}

/// What Panda says when the timer or alarm labelled `label` goes off: "Your 2 minute
/// timer is done." or, for an alarm, "It's 7:00 AM. This is your alarm."
pub fn announcement(label: &str) -> String {
    match label.strip_prefix(ALARM_PREFIX) {
        Some(at) => format!("It's {at}. This is your alarm."),
        None => format!("Your {label} is done."),
    }
}

/// How an alarm's label starts; the rest is the spoken clock time.
pub const ALARM_PREFIX: &str = "alarm for ";

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn load(path: &Path) -> Result<Vec<TimerEntry>, TimerError> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| TimerError::Corrupt {
            path: path.to_path_buf(),
            problem: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(TimerError::Io {
            path: path.to_path_buf(),
            problem: e.to_string(),
        }),
    }
}

async fn save(path: &Path, list: &[TimerEntry]) -> Result<(), TimerError> {
    let path = path.to_path_buf();
    let bytes = serde_json::to_vec_pretty(list).unwrap_or_default();
    tokio::task::spawn_blocking(move || {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| TimerError::Io {
                path: dir.to_path_buf(),
                problem: e.to_string(),
            })?;
        }
        crate::fs::write_atomic(&path, &bytes).map_err(|e| TimerError::Io {
            path: path.clone(),
            problem: e.to_string(),
        })
    })
    .await
    .map_err(|_| TimerError::Stopped)?
}

/// Missed timers one by one are announced each; more than this many become one sentence.
const MISSED_ONE_BY_ONE: usize = 3;

/// What Panda says about timers that went off while it was not running: one sentence
/// each for a few, one sentence for many (100,000 past-due timers once queued ~100 hours
/// of announcements ahead of every question).
pub fn missed_announcements(missed: &[TimerEntry]) -> Vec<String> {
    if missed.len() <= MISSED_ONE_BY_ONE {
        return missed
            .iter()
            .map(|t| format!("While I was off, your {} went off.", t.label))
            .collect();
    }
    let last = missed
        .iter()
        .max_by_key(|t| t.due_unix_ms)
        .map(|t| t.label.as_str());
    vec![format!(
        "While I was off, {} timers went off; the last was your {}.",
        missed.len(),
        last.unwrap_or("timer")
    )]
}

/// Loads `dir/timers.json` and starts the task. Returns the handle and the timers that
/// fell due while Panda was not running (already removed from the file).
pub async fn spawn(
    dir: &Path,
    events: mpsc::Sender<Event>,
    root: CancellationToken,
) -> Result<(Timers, Vec<TimerEntry>), TimerError> {
    let path = dir.join("timers.json");
    let all = {
        let p = path.clone();
        tokio::task::spawn_blocking(move || load(&p))
            .await
            .map_err(|_| TimerError::Stopped)??
    };
    let now = now_ms();
    let (missed, mut list): (Vec<_>, Vec<_>) = all.into_iter().partition(|t| t.due_unix_ms <= now);
    if !missed.is_empty() {
        save(&path, &list).await?;
    }
    let (tx, mut rx) = mpsc::channel::<Cmd>(TIMER_EDGE);
    tokio::spawn(async move {
        // Timers fired since start. Counted as they leave the list, in the same step, so
        // no question to the task can see a timer in neither place (see `unannounced`).
        let mut firings = 0u64;
        loop {
            list.sort_by_key(|t| t.due_unix_ms);
            let next = list
                .first()
                .map(|t| Duration::from_millis(t.due_unix_ms.saturating_sub(now_ms())));
            tokio::select! {
                _ = root.cancelled() => return,
                _ = async { tokio::time::sleep(next.unwrap_or_default()).await }, if next.is_some() => {
                    let now = now_ms();
                    let (due, rest): (Vec<_>, Vec<_>) = list.drain(..).partition(|t| t.due_unix_ms <= now);
                    list = rest;
                    firings += due.len() as u64;
                    if let Err(e) = save(&path, &list).await {
                        tracing::error!(error = %e, "timers could not be saved");
                    }
                    for t in due {
                        tracing::info!(id = t.id, label = %t.label, "timer fired");
                        let _ = events.send(Event::TimerFired { id: t.id, label: t.label }).await;
                    }
                }
                cmd = rx.recv() => {
                    let Some(cmd) = cmd else { return };
                    match cmd {
                        Cmd::Add { label, after, reply } => {
                            let id = list.iter().map(|t| t.id).max().unwrap_or(0).max(now_ms()) + 1;
                            let t = TimerEntry { id, label, due_unix_ms: now_ms() + after.as_millis() as u64 };
                            list.push(t.clone());
                            // Committed before it is confirmed: "timer set" is never a lie.
                            let r = save(&path, &list).await.map(|_| t);
                            let _ = reply.send(r);
                        }
                        Cmd::CancelAll { reply } => {
                            let n = list.len();
                            list.clear();
                            let _ = reply.send(save(&path, &list).await.map(|_| n));
                        }
                        Cmd::List { reply } => {
                            let _ = reply.send(list.clone());
                        }
                        Cmd::Unannounced { seen, reply } => {
                            let _ = reply.send(list.len() + firings.saturating_sub(seen) as usize);
                        }
                    }
                }
            }
        }
    });
    Ok((Timers { tx }, missed))
}

impl Timers {
    /// Adds a timer due `after` from now; returns once it is saved.
    pub async fn add(&self, label: String, after: Duration) -> Result<TimerEntry, TimerError> {
        self.request(|reply| Cmd::Add {
            label,
            after,
            reply,
        })
        .await?
    }

    /// Sends the command `make` builds around a reply sender and waits for the reply;
    /// [`TimerError::Stopped`] when the task has ended.
    async fn request<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Cmd,
    ) -> Result<T, TimerError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| TimerError::Stopped)?;
        rx.await.map_err(|_| TimerError::Stopped)
    }

    /// Cancels every timer; returns how many there were.
    pub async fn cancel_all(&self) -> Result<usize, TimerError> {
        self.request(|reply| Cmd::CancelAll { reply }).await?
    }

    /// Pending timers, soonest first.
    pub async fn list(&self) -> Vec<TimerEntry> {
        self.request(|reply| Cmd::List { reply })
            .await
            .unwrap_or_default()
    }

    /// Timers a listener that has received `seen` [`Event::TimerFired`]s has still to
    /// hear of: the pending ones, plus the fired ones whose event is still on its way
    /// (between this task and the listener, through the event consumer). Zero when the
    /// task has stopped. `panda ask --wait-timers` ends on zero; counting pending timers
    /// alone ended it in that gap, and a fired timer went unannounced.
    pub async fn unannounced(&self, seen: u64) -> usize {
        self.request(|reply| Cmd::Unannounced { seen, reply })
            .await
            .unwrap_or_default()
    }
}

/// Parses a spoken duration: "2 seconds", "ten minutes", "an hour and a half",
/// "1 hour 30 minutes", "half an hour", "90 sec". Returns the duration and a label
/// ("2 second").
pub fn parse_duration(text: &str) -> Option<(Duration, String)> {
    let t = text.to_lowercase().replace(['-', ','], " ");
    let words: Vec<&str> = t.split_whitespace().collect();
    let mut total = 0f64;
    let mut pending: Option<f64> = None;
    let mut found = false;
    let mut i = 0;
    while i < words.len() {
        let w = words[i].trim_end_matches('.');
        if let Some(n) = number_word(w) {
            // "twenty five" → 25
            let n = match (pending, n) {
                (Some(p), n) if p >= 20.0 && p % 10.0 == 0.0 && n < 10.0 => p + n,
                _ => n,
            };
            pending = Some(n);
        } else if w == "half" {
            if pending.is_some() {
                // "an hour and a half" handled by "and a half" after a unit
            }
            pending = Some(pending.unwrap_or(1.0) * 0.5);
            if words.get(i + 1) == Some(&"an") || words.get(i + 1) == Some(&"a") {
                i += 1;
            }
        } else if let Some(unit) = unit_seconds(w) {
            total += pending.take().unwrap_or(1.0) * unit;
            found = true;
            // "an hour and a half": half of this unit.
            if words.get(i + 1..i + 4) == Some(&["and", "a", "half"]) {
                total += unit / 2.0;
                i += 3;
            }
        }
        i += 1;
    }
    if !found || total <= 0.0 || total > 366.0 * 86_400.0 {
        return None;
    }
    let d = Duration::from_secs_f64(total);
    Some((d, label_for(d)))
}

/// A duration as a timer's label says it: "2 minute", "90 second", "1 hour".
pub fn label_for(d: Duration) -> String {
    let s = d.as_secs();
    let (n, unit) = if s.is_multiple_of(3600) && s >= 3600 {
        (s / 3600, "hour")
    } else if s.is_multiple_of(60) && s >= 60 {
        (s / 60, "minute")
    } else {
        (s, "second")
    };
    format!("{n} {unit}")
}

fn unit_seconds(w: &str) -> Option<f64> {
    Some(match w {
        "second" | "seconds" | "sec" | "secs" | "s" => 1.0,
        "minute" | "minutes" | "min" | "mins" => 60.0,
        "hour" | "hours" | "hr" | "hrs" | "h" => 3600.0,
        "day" | "days" => 86_400.0,
        _ => return None,
    })
}

fn number_word(w: &str) -> Option<f64> {
    if let Ok(n) = w.parse::<f64>() {
        return Some(n);
    }
    if let Some(n) = crate::numbers::word_value(w) {
        return Some(n as f64);
    }
    match w {
        "a" | "an" => Some(1.0),
        "couple" => Some(2.0),
        _ => None,
    }
}

/// Parses a clock time: "7 am", "7:30 pm", "19:45", "seven thirty", "noon". Returns
/// (hour 0–23, minute).
pub fn parse_clock(text: &str) -> Option<(u32, u32)> {
    let t = text.to_lowercase().replace('.', "");
    let t = t.trim();
    if t == "noon" || t == "midday" {
        return Some((12, 0));
    }
    if t == "midnight" {
        return Some((0, 0));
    }
    let words: Vec<&str> = t.split_whitespace().collect();
    let mut pm = None;
    let mut nums = Vec::new();
    for w in &words {
        let w = *w;
        let (core, mer) = if let Some(c) = w.strip_suffix("am") {
            (c, Some(false))
        } else if let Some(c) = w.strip_suffix("pm") {
            (c, Some(true))
        } else {
            (w, None)
        };
        if mer.is_some() {
            pm = mer;
        }
        if core.is_empty() {
            continue;
        }
        if let Some((h, m)) = core.split_once(':') {
            nums.push(h.parse::<u32>().ok()?);
            nums.push(m.parse::<u32>().ok()?);
        } else if let Some(n) = number_word(core) {
            if core == "a" || core == "an" {
                continue;
            }
            nums.push(n as u32);
        } else if matches!(
            core,
            "o'clock" | "oclock" | "in" | "the" | "morning" | "evening" | "afternoon" | "at"
        ) {
            if matches!(core, "evening" | "afternoon") {
                pm = Some(true);
            }
        } else {
            return None;
        }
    }
    let (mut h, m) = match nums.as_slice() {
        [h] => (*h, 0),
        [h, m] => (*h, *m),
        // "seven forty five"
        [h, t, u] if *t >= 20 && *u < 10 => (*h, t + u),
        _ => return None,
    };
    if h > 23 || m > 59 {
        return None;
    }
    match pm {
        Some(true) if h < 12 => h += 12,
        Some(false) if h == 12 => h = 0,
        _ => {}
    }
    Some((h, m))
}

#[cfg(test)]
mod tests {

    #[test]
    fn many_missed_timers_are_one_sentence() {
        let entry = |id: u64| TimerEntry {
            id,
            label: format!("{id} minute timer"),
            due_unix_ms: id,
        };
        let few: Vec<_> = (1..=2).map(entry).collect();
        assert_eq!(
            missed_announcements(&few),
            vec![
                "While I was off, your 1 minute timer went off.",
                "While I was off, your 2 minute timer went off."
            ]
        );
        let many: Vec<_> = (1..=100_000).map(entry).collect();
        assert_eq!(
            missed_announcements(&many),
            vec!["While I was off, 100000 timers went off; the last was your 100000 minute timer."]
        );
    }

    use super::*;

    /// A fired timer whose event has not reached its listener yet is still owed an
    /// announcement: `--wait-timers` once ended in that gap (the timer had left the list)
    /// and the "done" sentence was never spoken.
    #[tokio::test]
    async fn a_fired_timer_is_unannounced_until_its_event_is_received() {
        let dir = tempfile::tempdir().unwrap();
        // Nobody reads the events yet: the firing sits in the channel, as on its way.
        let (events, mut rx) = mpsc::channel(4);
        let (timers, missed) = spawn(dir.path(), events, CancellationToken::new())
            .await
            .unwrap();
        assert!(missed.is_empty());
        assert_eq!(timers.unannounced(0).await, 0);
        timers
            .add("1 second timer".into(), Duration::from_millis(20))
            .await
            .unwrap();
        assert_eq!(timers.unannounced(0).await, 1, "pending");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(timers.list().await.is_empty(), "it has fired");
        assert_eq!(timers.unannounced(0).await, 1, "fired, not yet received");
        let Some(Event::TimerFired { label, .. }) = rx.recv().await else {
            panic!("no firing")
        };
        assert_eq!(label, "1 second timer");
        assert_eq!(timers.unannounced(1).await, 0, "received");
    }

    #[test]
    fn durations() {
        let d = |s: &str| parse_duration(s).map(|(d, l)| (d.as_secs(), l));
        assert_eq!(d("2 seconds"), Some((2, "2 second".into())));
        assert_eq!(d("ten minutes"), Some((600, "10 minute".into())));
        assert_eq!(d("twenty five minutes"), Some((1500, "25 minute".into())));
        assert_eq!(d("an hour"), Some((3600, "1 hour".into())));
        assert_eq!(d("an hour and a half"), Some((5400, "90 minute".into())));
        assert_eq!(d("half an hour"), Some((1800, "30 minute".into())));
        assert_eq!(d("1 hour 30 minutes"), Some((5400, "90 minute".into())));
        assert_eq!(d("90 sec"), Some((90, "90 second".into())));
        assert_eq!(d("a while"), None);
    }

    #[test]
    fn clock_times() {
        assert_eq!(parse_clock("7 am"), Some((7, 0)));
        assert_eq!(parse_clock("7:30 pm"), Some((19, 30)));
        assert_eq!(parse_clock("7:30 p.m."), Some((19, 30)));
        assert_eq!(parse_clock("19:45"), Some((19, 45)));
        assert_eq!(parse_clock("seven thirty"), Some((7, 30)));
        assert_eq!(parse_clock("seven forty five"), Some((7, 45)));
        assert_eq!(parse_clock("12 am"), Some((0, 0)));
        assert_eq!(parse_clock("noon"), Some((12, 0)));
        assert_eq!(parse_clock("6 in the evening"), Some((18, 0)));
        assert_eq!(parse_clock("banana"), None);
    }
}
