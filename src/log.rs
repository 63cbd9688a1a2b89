//! Log flood control: a `tracing` filter that lets each log statement (callsite) through
//! at most [`BURST`] times per [`WINDOW`] and counts the rest, so a misbehaving peer
//! cannot turn Panda's log into a disk-filling firehose (200,000 malformed LLM lines once
//! wrote 200,002 WARN lines, 31 MB, in 2.3 s). When a callsite's next window opens, one
//! line says how many were suppressed. Runs inline on whichever thread logs; the state is
//! a small map behind a mutex, touched only by events that passed the level filter.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::Metadata;
use tracing::callsite::Identifier;
use tracing_subscriber::layer::{Context, Filter};

/// Lines one callsite may log per window.
pub const BURST: u32 = 20;
/// The window.
pub const WINDOW: Duration = Duration::from_secs(10);

struct Window {
    start: Instant,
    passed: u32,
    suppressed: u64,
}

/// The filter (see the module doc).
#[derive(Default)]
pub struct RepeatLimit {
    seen: Mutex<HashMap<Identifier, Window>>,
}

impl RepeatLimit {
    /// A filter with empty history.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether one more line from `meta`'s callsite may go out now.
    fn admit(&self, meta: &Metadata<'_>, now: Instant) -> bool {
        let mut seen = crate::lock(&self.seen);
        let w = seen.entry(meta.callsite()).or_insert(Window {
            start: now,
            passed: 0,
            suppressed: 0,
        });
        if now.duration_since(w.start) >= WINDOW {
            if w.suppressed > 0 {
                // Written directly: logging from inside the filter would re-enter it.
                eprintln!(
                    "panda: {} more log lines like {:?} ({}) were suppressed in {} s",
                    w.suppressed,
                    meta.name(),
                    meta.target(),
                    WINDOW.as_secs()
                );
            }
            *w = Window {
                start: now,
                passed: 0,
                suppressed: 0,
            };
        }
        if w.passed < BURST {
            w.passed += 1;
            true
        } else {
            w.suppressed += 1;
            false
        }
    }
}

impl<S> Filter<S> for RepeatLimit {
    fn enabled(&self, meta: &Metadata<'_>, _: &Context<'_, S>) -> bool {
        !meta.is_event() || self.admit(meta, Instant::now())
    }

    fn callsite_enabled(&self, _: &'static Metadata<'static>) -> tracing::subscriber::Interest {
        // Decided per event, never cached per callsite.
        tracing::subscriber::Interest::sometimes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flooding_callsite_is_cut_to_its_burst_per_window() {
        static CS: tracing::callsite::DefaultCallsite =
            tracing::callsite::DefaultCallsite::new(&META);
        static META: Metadata<'static> = tracing::metadata!(
            name: "flood",
            target: "panda::test",
            level: tracing::Level::WARN,
            fields: &[],
            callsite: &CS,
            kind: tracing::metadata::Kind::EVENT,
        );
        let f = RepeatLimit::new();
        let t0 = Instant::now();
        let passed = (0..200_000).filter(|_| f.admit(&META, t0)).count();
        assert_eq!(passed, BURST as usize);
        // The next window lets the burst through again.
        assert!(f.admit(&META, t0 + WINDOW));
    }
}
