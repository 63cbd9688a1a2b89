//! Prometheus metrics: per-stage latency histograms, counters and gauges, written in the
//! text exposition format for `GET /metrics`.
//!
//! Every value is an atomic, so stages record from any thread without locks or
//! allocation, and a scrape reads a consistent-enough snapshot without stopping them.
//! The daemon fills them from the pipeline's events in one place ([`Metrics::observe`]),
//! so no stage knows about metrics. Hand-written instead of a metrics crate: the format
//! is a few lines, and the fixed set below is all Panda exports.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::event::Event;

/// Bucket upper bounds (ms) shared by the latency histograms: 5 ms to 30 s.
const BUCKETS_MS: &[f64] = &[
    5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0, 30000.0,
];

/// A latency histogram in milliseconds.
pub struct Histogram {
    name: &'static str,
    help: &'static str,
    counts: [AtomicU64; 12],
    /// Sum in microseconds (integer atomics; exported in seconds).
    sum_us: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    const fn new(name: &'static str, help: &'static str) -> Self {
        Self {
            name,
            help,
            counts: [const { AtomicU64::new(0) }; 12],
            sum_us: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe_ms(&self, ms: f64) {
        let ms = ms.max(0.0);
        for (i, b) in BUCKETS_MS.iter().enumerate() {
            if ms <= *b {
                self.counts[i].fetch_add(1, Relaxed);
                break;
            }
        }
        self.sum_us.fetch_add((ms * 1000.0) as u64, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    fn render(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} histogram", self.name);
        let mut cumulative = 0;
        for (i, b) in BUCKETS_MS.iter().enumerate() {
            cumulative += self.counts[i].load(Relaxed);
            let _ = writeln!(
                out,
                "{}_bucket{{le=\"{}\"}} {cumulative}",
                self.name,
                b / 1000.0
            );
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "{}_bucket{{le=\"+Inf\"}} {count}", self.name);
        let _ = writeln!(
            out,
            "{}_sum {}",
            self.name,
            self.sum_us.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{}_count {count}", self.name);
    }
}

/// A monotonically increasing counter.
pub struct Counter {
    name: &'static str,
    help: &'static str,
    value: AtomicU64,
}

impl Counter {
    const fn new(name: &'static str, help: &'static str) -> Self {
        Self {
            name,
            help,
            value: AtomicU64::new(0),
        }
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.value.fetch_add(n, Relaxed);
    }

    /// Mirrors a monotonic count kept elsewhere (a stage's own atomic counter).
    pub fn mirror(&self, total: u64) {
        self.value.fetch_max(total, Relaxed);
    }

    /// Current value.
    pub fn get(&self) -> u64 {
        self.value.load(Relaxed)
    }

    fn render(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} counter", self.name);
        let _ = writeln!(out, "{} {}", self.name, self.get());
    }
}

/// A value that goes up and down.
pub struct Gauge {
    name: &'static str,
    help: &'static str,
    value: AtomicU64,
}

impl Gauge {
    const fn new(name: &'static str, help: &'static str) -> Self {
        Self {
            name,
            help,
            value: AtomicU64::new(0),
        }
    }

    /// Sets the value.
    pub fn set(&self, v: u64) {
        self.value.store(v, Relaxed);
    }

    /// Adds (or, with a negative `d`, subtracts) from the value.
    pub fn add(&self, d: i64) {
        if d >= 0 {
            self.value.fetch_add(d as u64, Relaxed);
        } else {
            self.value.fetch_sub(d.unsigned_abs(), Relaxed);
        }
    }

    /// Current value.
    pub fn get(&self) -> u64 {
        self.value.load(Relaxed)
    }

    fn render(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} gauge", self.name);
        let _ = writeln!(out, "{} {}", self.name, self.get());
    }
}

/// Every metric Panda exports.
pub struct Metrics {
    /// Wake word → end of speech.
    pub wake_to_speech_end: Histogram,
    /// Speech-to-text time.
    pub stt: Histogram,
    /// Routing (transcript → route decision).
    pub route: Histogram,
    /// LLM request → first token.
    pub llm_first_token: Histogram,
    /// TTS: first sentence queued → first audio synthesised.
    pub tts_first_audio: Histogram,
    /// End of speech → first audio played: what the user waits.
    pub speech_end_to_audio: Histogram,
    /// Turns started (wake words accepted, or text questions).
    pub turns: Counter,
    /// Errors reported by any stage.
    pub errors: Counter,
    /// Audio frames dropped on full audio edges.
    pub frames_dropped: Counter,
    /// Circuit breaker transitions.
    pub breaker_transitions: Counter,
    /// API requests refused by the rate limiter.
    pub rate_limited: Counter,
    /// Turns cut short by barge-in.
    pub barge_ins: Counter,
    /// Pipeline state: 0 idle, 1 listening, 2 thinking, 3 speaking.
    pub state: Gauge,
    /// Live status page clients.
    pub clients: Gauge,
    /// Status page clients dropped for falling behind.
    pub clients_lagged: Counter,
    /// Idle HTTP connections closed to make room for a new one (connection limit).
    pub connections_evicted: Counter,
    /// 1 while the echo canceller runs.
    pub aec_active: Gauge,
    /// The canceller's echo return loss enhancement estimate (dB, AEC3's own).
    pub aec_erle_db: Gauge,
    /// The canceller's estimate of the speaker-to-microphone delay.
    pub aec_delay_ms: Gauge,
    /// Echo-path changes (jumps of the delay estimate).
    pub aec_path_changes: Counter,
    /// Reference audio dropped (unaligned: speaker and microphone clocks drift apart,
    /// or capture stalled).
    pub aec_reference_dropped: Counter,
    /// Wake words in Panda's own voice ignored by the self-wake guard.
    pub self_wakes_ignored: Counter,
}

impl Metrics {
    /// Copies the echo canceller's counters (called periodically while it runs).
    pub fn mirror_aec(&self, s: &crate::audio::aec::AecStats) {
        self.aec_active.set(1);
        self.aec_erle_db
            .set(s.erle_centi_db.load(Relaxed).div_ceil(100));
        self.aec_delay_ms.set(s.delay_ms.load(Relaxed));
        self.aec_path_changes.mirror(s.path_changes.load(Relaxed));
        self.aec_reference_dropped
            .mirror(s.render_dropped.load(Relaxed) + s.reference_dropped.load(Relaxed) / 160);
    }
}

/// Pipeline states as the `panda_state` gauge encodes them.
pub const STATES: [&str; 4] = ["idle", "listening", "thinking", "speaking"];

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// All zero.
    pub const fn new() -> Self {
        Self {
            wake_to_speech_end: Histogram::new(
                "panda_wake_to_speech_end_seconds",
                "Wake word to end of the question.",
            ),
            stt: Histogram::new("panda_stt_seconds", "Speech-to-text time per utterance."),
            route: Histogram::new("panda_route_seconds", "Transcript to routing decision."),
            llm_first_token: Histogram::new(
                "panda_llm_first_token_seconds",
                "LLM request to first token.",
            ),
            tts_first_audio: Histogram::new(
                "panda_tts_first_audio_seconds",
                "Synthesis time of the first audio of an answer.",
            ),
            speech_end_to_audio: Histogram::new(
                "panda_speech_end_to_first_audio_seconds",
                "End of the question to the first audio of the answer played.",
            ),
            turns: Counter::new("panda_turns_total", "Turns started."),
            errors: Counter::new("panda_errors_total", "Errors reported by any stage."),
            frames_dropped: Counter::new(
                "panda_audio_frames_dropped_total",
                "Audio frames dropped because a stage fell behind.",
            ),
            breaker_transitions: Counter::new(
                "panda_breaker_transitions_total",
                "Agent circuit breaker state changes.",
            ),
            rate_limited: Counter::new(
                "panda_http_rate_limited_total",
                "API requests refused by the rate limiter.",
            ),
            barge_ins: Counter::new("panda_barge_ins_total", "Answers cut short by barge-in."),
            state: Gauge::new(
                "panda_state",
                "Pipeline state: 0 idle, 1 listening, 2 thinking, 3 speaking.",
            ),
            clients: Gauge::new("panda_status_clients", "Live status page clients."),
            clients_lagged: Counter::new(
                "panda_status_clients_lagged_total",
                "Status page clients that fell behind and skipped events.",
            ),
            connections_evicted: Counter::new(
                "panda_http_connections_evicted_total",
                "Idle HTTP connections closed to make room at the connection limit.",
            ),
            aec_active: Gauge::new("panda_aec_active", "1 while the echo canceller runs."),
            aec_erle_db: Gauge::new(
                "panda_aec_erle_db",
                "Echo return loss enhancement estimated by the canceller (dB).",
            ),
            aec_delay_ms: Gauge::new(
                "panda_aec_delay_ms",
                "Speaker-to-microphone delay estimated by the canceller (ms).",
            ),
            aec_path_changes: Counter::new(
                "panda_aec_echo_path_changes_total",
                "Jumps of the canceller's delay estimate (a new echo path).",
            ),
            aec_reference_dropped: Counter::new(
                "panda_aec_reference_dropped_total",
                "10 ms reference frames the canceller could not align and dropped.",
            ),
            self_wakes_ignored: Counter::new(
                "panda_self_wakes_ignored_total",
                "Wake words in Panda's own voice ignored by the self-wake guard.",
            ),
        }
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        for h in [
            &self.wake_to_speech_end,
            &self.stt,
            &self.route,
            &self.llm_first_token,
            &self.tts_first_audio,
            &self.speech_end_to_audio,
        ] {
            h.render(&mut out);
        }
        for c in [
            &self.turns,
            &self.errors,
            &self.frames_dropped,
            &self.breaker_transitions,
            &self.rate_limited,
            &self.barge_ins,
            &self.clients_lagged,
            &self.connections_evicted,
            &self.aec_path_changes,
            &self.aec_reference_dropped,
            &self.self_wakes_ignored,
        ] {
            c.render(&mut out);
        }
        self.state.render(&mut out);
        self.clients.render(&mut out);
        self.aec_active.render(&mut out);
        self.aec_erle_db.render(&mut out);
        self.aec_delay_ms.render(&mut out);
        out
    }

    /// Updates the metrics an event carries by itself (timings that span events are
    /// measured by the turn tracker in the daemon).
    pub fn observe(&self, ev: &Event) {
        match ev {
            Event::Transcript { stt_ms, .. } => self.stt.observe_ms(*stt_ms as f64),
            Event::Llm {
                first_token_ms: Some(ms),
                ..
            } => self.llm_first_token.observe_ms(*ms as f64),
            Event::Breaker { .. } => self.breaker_transitions.add(1),
            Event::Error { .. } => self.errors.add(1),
            Event::SelfWake { .. } => self.self_wakes_ignored.add(1),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_in_seconds() {
        let m = Metrics::new();
        m.stt.observe_ms(3.0);
        m.stt.observe_ms(300.0);
        m.stt.observe_ms(99_999.0);
        m.turns.add(2);
        m.state.set(3);
        let text = m.render();
        assert!(
            text.contains("panda_stt_seconds_bucket{le=\"0.005\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("panda_stt_seconds_bucket{le=\"0.5\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("panda_stt_seconds_bucket{le=\"30\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("panda_stt_seconds_bucket{le=\"+Inf\"} 3"),
            "{text}"
        );
        assert!(text.contains("panda_stt_seconds_count 3"), "{text}");
        assert!(text.contains("panda_turns_total 2"), "{text}");
        assert!(text.contains("panda_state 3"), "{text}");
    }
}
