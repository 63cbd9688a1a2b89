//! Prometheus metrics: per-stage latency histograms, counters and gauges, exposed in
//! the OpenMetrics text format for `GET /metrics`.
//!
//! The exposition is the official `prometheus-client` crate's (it gets the format's
//! types, units, `_total` suffixes, cumulative buckets and `# EOF` right); the thin
//! wrappers below keep the call sites short and add what Panda needs on top: a
//! histogram's observation count for tests and the status page, and counters that
//! mirror a stage's own atomic total. Every value is an atomic (a histogram takes a
//! short lock: ~19 ns an observation, measured), so stages record from any thread, and a
//! scrape (~2 µs to encode) reads a consistent-enough snapshot without stopping them.
//! The daemon fills them from the pipeline's events in one place ([`Metrics::observe`]),
//! so no stage knows about metrics.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use prometheus_client::metrics::{counter, gauge, histogram};
use prometheus_client::registry::{Registry, Unit};

use crate::event::Event;

/// Bucket upper bounds (s) shared by the latency histograms: 5 ms to 30 s.
const BUCKETS_S: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0,
];

/// A latency histogram, observed in milliseconds and exported in seconds.
pub struct Histogram {
    inner: histogram::Histogram,
    count: AtomicU64,
}

impl Histogram {
    /// Registers `name` + `_seconds`. `help` has no final full stop (the encoder adds one).
    fn new(reg: &mut Registry, name: &str, help: &str) -> Self {
        let inner = histogram::Histogram::new(BUCKETS_S);
        reg.register_with_unit(name, help, Unit::Seconds, inner.clone());
        Self {
            inner,
            count: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe_ms(&self, ms: f64) {
        self.inner.observe(ms.max(0.0) / 1000.0);
        self.count.fetch_add(1, Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }
}

/// A monotonically increasing counter.
pub struct Counter(counter::Counter);

impl Counter {
    /// Registers `name` + `_total`.
    fn new(reg: &mut Registry, name: &str, help: &str) -> Self {
        let c = counter::Counter::default();
        reg.register(name, help, c.clone());
        Self(c)
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.inc_by(n);
    }

    /// Mirrors a monotonic count kept elsewhere (a stage's own atomic counter).
    pub fn mirror(&self, total: u64) {
        self.0.inner().fetch_max(total, Relaxed);
    }

    /// Current value.
    pub fn get(&self) -> u64 {
        self.0.get()
    }
}

/// A value that goes up and down (never below zero for Panda's gauges).
pub struct Gauge(gauge::Gauge);

impl Gauge {
    fn new(reg: &mut Registry, name: &str, help: &str) -> Self {
        let g = gauge::Gauge::default();
        reg.register(name, help, g.clone());
        Self(g)
    }

    /// Sets the value.
    pub fn set(&self, v: u64) {
        self.0.set(i64::try_from(v).unwrap_or(i64::MAX));
    }

    /// Adds (or, with a negative `d`, subtracts) from the value.
    pub fn add(&self, d: i64) {
        self.0.inc_by(d);
    }

    /// Current value.
    pub fn get(&self) -> u64 {
        u64::try_from(self.0.get()).unwrap_or(0)
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
    /// Wyoming connections served (`[wyoming] listen`).
    pub wyoming_connections: Counter,
    /// Wyoming connections refused at `[wyoming] max_connections`.
    pub wyoming_refused: Counter,
    /// Wyoming connections closed for a malformed frame.
    pub wyoming_malformed: Counter,
    /// Transcripts answered over Wyoming.
    pub wyoming_transcripts: Counter,
    /// Syntheses answered over Wyoming.
    pub wyoming_syntheses: Counter,
    /// Wake word detections sent over Wyoming.
    pub wyoming_detections: Counter,
    /// What `/metrics` encodes: clones of the handles above.
    registry: Registry,
}

impl Metrics {
    /// Copies the Wyoming server's counters (called periodically while it serves).
    pub fn mirror_wyoming(&self, s: &crate::wyoming::server::ServerStats) {
        self.wyoming_connections.mirror(s.connections.load(Relaxed));
        self.wyoming_refused.mirror(s.refused.load(Relaxed));
        self.wyoming_malformed.mirror(s.malformed.load(Relaxed));
        self.wyoming_transcripts.mirror(s.transcripts.load(Relaxed));
        self.wyoming_syntheses.mirror(s.syntheses.load(Relaxed));
        self.wyoming_detections.mirror(s.detections.load(Relaxed));
    }

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

/// The `Content-Type` of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// All zero.
    pub fn new() -> Self {
        let mut r = Registry::default();
        let reg = &mut r;
        let h = |reg: &mut Registry, n, help| Histogram::new(reg, n, help);
        let c = |reg: &mut Registry, n, help| Counter::new(reg, n, help);
        let g = |reg: &mut Registry, n, help| Gauge::new(reg, n, help);
        Self {
            wake_to_speech_end: h(
                reg,
                "panda_wake_to_speech_end",
                "Wake word to end of the question",
            ),
            stt: h(reg, "panda_stt", "Speech-to-text time per utterance"),
            route: h(reg, "panda_route", "Transcript to routing decision"),
            llm_first_token: h(reg, "panda_llm_first_token", "LLM request to first token"),
            tts_first_audio: h(
                reg,
                "panda_tts_first_audio",
                "Synthesis time of the first audio of an answer",
            ),
            speech_end_to_audio: h(
                reg,
                "panda_speech_end_to_first_audio",
                "End of the question to the first audio of the answer played",
            ),
            turns: c(reg, "panda_turns", "Turns started"),
            errors: c(reg, "panda_errors", "Errors reported by any stage"),
            frames_dropped: c(
                reg,
                "panda_audio_frames_dropped",
                "Audio frames dropped because a stage fell behind",
            ),
            breaker_transitions: c(
                reg,
                "panda_breaker_transitions",
                "Agent circuit breaker state changes",
            ),
            rate_limited: c(
                reg,
                "panda_http_rate_limited",
                "API requests refused by the rate limiter",
            ),
            barge_ins: c(reg, "panda_barge_ins", "Answers cut short by barge-in"),
            state: g(
                reg,
                "panda_state",
                "Pipeline state: 0 idle, 1 listening, 2 thinking, 3 speaking",
            ),
            clients: g(reg, "panda_status_clients", "Live status page clients"),
            clients_lagged: c(
                reg,
                "panda_status_clients_lagged",
                "Status page clients that fell behind and skipped events",
            ),
            connections_evicted: c(
                reg,
                "panda_http_connections_evicted",
                "Idle HTTP connections closed to make room at the connection limit",
            ),
            aec_active: g(reg, "panda_aec_active", "1 while the echo canceller runs"),
            aec_erle_db: g(
                reg,
                "panda_aec_erle_db",
                "Echo return loss enhancement estimated by the canceller (dB)",
            ),
            aec_delay_ms: g(
                reg,
                "panda_aec_delay_ms",
                "Speaker-to-microphone delay estimated by the canceller (ms)",
            ),
            aec_path_changes: c(
                reg,
                "panda_aec_echo_path_changes",
                "Jumps of the canceller's delay estimate (a new echo path)",
            ),
            aec_reference_dropped: c(
                reg,
                "panda_aec_reference_dropped",
                "10 ms reference frames the canceller could not align and dropped",
            ),
            self_wakes_ignored: c(
                reg,
                "panda_self_wakes_ignored",
                "Wake words in Panda's own voice ignored by the self-wake guard",
            ),
            wyoming_connections: c(
                reg,
                "panda_wyoming_connections",
                "Wyoming connections served",
            ),
            wyoming_refused: c(
                reg,
                "panda_wyoming_refused",
                "Wyoming connections refused at the connection limit",
            ),
            wyoming_malformed: c(
                reg,
                "panda_wyoming_malformed",
                "Wyoming connections closed for a malformed frame",
            ),
            wyoming_transcripts: c(
                reg,
                "panda_wyoming_transcripts",
                "Transcripts answered over Wyoming",
            ),
            wyoming_syntheses: c(
                reg,
                "panda_wyoming_syntheses",
                "Syntheses answered over Wyoming",
            ),
            wyoming_detections: c(
                reg,
                "panda_wyoming_detections",
                "Wake word detections sent over Wyoming",
            ),
            registry: r,
        }
    }

    /// The exposition text (OpenMetrics; serve it as [`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        // Writing into a String cannot fail; an encoder error would leave a partial page,
        // which a scraper rejects as a whole (it never sees made-up values).
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "metrics encoding failed");
        }
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
            text.contains("panda_stt_seconds_bucket{le=\"30.0\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("panda_stt_seconds_bucket{le=\"+Inf\"} 3"),
            "{text}"
        );
        assert!(text.contains("panda_stt_seconds_count 3"), "{text}");
        assert!(text.contains("panda_turns_total 2"), "{text}");
        assert!(text.contains("panda_state 3"), "{text}");
        assert!(text.contains("# TYPE panda_turns counter"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
    #[test]
    fn wyoming_counters_mirror_the_servers_own() {
        use std::sync::atomic::Ordering::Relaxed;
        let m = Metrics::new();
        let s = crate::wyoming::server::ServerStats::default();
        s.connections.store(5, Relaxed);
        s.refused.store(2, Relaxed);
        s.transcripts.store(3, Relaxed);
        m.mirror_wyoming(&s);
        m.mirror_wyoming(&s); // mirroring twice counts nothing twice
        let text = m.render();
        assert!(text.contains("panda_wyoming_connections_total 5"), "{text}");
        assert!(text.contains("panda_wyoming_refused_total 2"), "{text}");
        assert!(text.contains("panda_wyoming_transcripts_total 3"), "{text}");
        assert!(text.contains("panda_wyoming_syntheses_total 0"), "{text}");
    }
}
