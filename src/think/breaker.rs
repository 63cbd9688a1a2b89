//! A circuit breaker per helper agent: a pure state machine (time is passed in), so it is
//! unit-tested without clocks or servers.
//!
//! Closed: calls go through; `failure_threshold` failures in a row open it. Open: calls
//! are refused without touching the network until the backoff has passed; the backoff
//! doubles on every re-open (up to `max_backoff`) with ±20 % jitter so many devices do not
//! probe a recovering service in lock-step. Half-open: exactly one probe call is let
//! through; success closes the breaker (and resets the backoff), failure re-opens it.

use std::time::{Duration, Instant};

pub use crate::event::BreakerState;

/// Breaker settings.
#[derive(Debug, Clone, Copy)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker.
    pub failure_threshold: u32,
    /// First open period.
    pub base_backoff: Duration,
    /// Longest open period.
    pub max_backoff: Duration,
}

/// One agent's breaker.
#[derive(Debug, Clone)]
pub struct Breaker {
    cfg: BreakerConfig,
    state: BreakerState,
    failures: u32,
    /// How many times it opened without a success in between.
    opens: u32,
    open_until: Option<Instant>,
    probe_in_flight: bool,
}

/// What a caller may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// Call normally.
    Call,
    /// Call as the half-open probe.
    Probe,
    /// Do not call; the breaker is open (or a probe is already out).
    Refuse,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(cfg: BreakerConfig) -> Self {
        Self {
            cfg,
            state: BreakerState::Closed,
            failures: 0,
            opens: 0,
            open_until: None,
            probe_in_flight: false,
        }
    }

    /// Current state (an open breaker whose backoff passed reads as half-open).
    pub fn state(&self, now: Instant) -> BreakerState {
        match (self.state, self.open_until) {
            (BreakerState::Open, Some(t)) if now >= t => BreakerState::HalfOpen,
            (s, _) => s,
        }
    }

    /// Asks to make a call at `now`.
    pub fn permit(&mut self, now: Instant) -> Permit {
        match self.state(now) {
            BreakerState::Closed => Permit::Call,
            BreakerState::Open => Permit::Refuse,
            BreakerState::HalfOpen => {
                if self.probe_in_flight {
                    Permit::Refuse
                } else {
                    self.state = BreakerState::HalfOpen;
                    self.probe_in_flight = true;
                    Permit::Probe
                }
            }
        }
    }

    /// Records a successful call. Returns the new state when it changed.
    pub fn success(&mut self) -> Option<BreakerState> {
        self.failures = 0;
        self.probe_in_flight = false;
        self.opens = 0;
        self.open_until = None;
        let changed = self.state != BreakerState::Closed;
        self.state = BreakerState::Closed;
        changed.then_some(BreakerState::Closed)
    }

    /// Records a failed call at `now`; `jitter` in [-1, 1] scales ±20 % of the backoff.
    /// Returns the new state when it changed.
    pub fn failure(&mut self, now: Instant, jitter: f64) -> Option<BreakerState> {
        self.failures += 1;
        let probe_failed = self.state == BreakerState::HalfOpen;
        self.probe_in_flight = false;
        if probe_failed || self.failures >= self.cfg.failure_threshold {
            let backoff = self.backoff(jitter);
            self.opens = self.opens.saturating_add(1);
            self.open_until = Some(now + backoff);
            let changed = self.state != BreakerState::Open;
            self.state = BreakerState::Open;
            self.failures = 0;
            return (changed || probe_failed).then_some(BreakerState::Open);
        }
        None
    }

    /// The open period for the next opening: base × 2^opens, capped, ±20 % jitter.
    fn backoff(&self, jitter: f64) -> Duration {
        let exp = self
            .cfg
            .base_backoff
            .saturating_mul(1u32 << self.opens.min(16));
        let capped = exp.min(self.cfg.max_backoff);
        capped.mul_f64(1.0 + 0.2 * jitter.clamp(-1.0, 1.0))
    }

    /// Gives back a probe whose call ended without a verdict (the turn was cancelled):
    /// the next call may probe again.
    pub fn abandon(&mut self) {
        self.probe_in_flight = false;
    }

    /// When an open breaker lets the next probe through.
    pub fn open_until(&self) -> Option<Instant> {
        self.open_until
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(BreakerConfig {
            failure_threshold: 3,
            base_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(5),
        })
    }

    #[test]
    fn opens_after_threshold_and_refuses() {
        let t = Instant::now();
        let mut b = breaker();
        assert_eq!(b.failure(t, 0.0), None);
        assert_eq!(b.failure(t, 0.0), None);
        assert_eq!(b.permit(t), Permit::Call);
        assert_eq!(b.failure(t, 0.0), Some(BreakerState::Open));
        assert_eq!(b.permit(t), Permit::Refuse);
        assert_eq!(b.permit(t + Duration::from_millis(999)), Permit::Refuse);
    }

    #[test]
    fn one_probe_after_backoff_then_close_on_success() {
        let t = Instant::now();
        let mut b = breaker();
        for _ in 0..3 {
            b.failure(t, 0.0);
        }
        let later = t + Duration::from_secs(1);
        assert_eq!(b.state(later), BreakerState::HalfOpen);
        assert_eq!(b.permit(later), Permit::Probe);
        assert_eq!(b.permit(later), Permit::Refuse, "only one probe at a time");
        assert_eq!(b.success(), Some(BreakerState::Closed));
        assert_eq!(b.permit(later), Permit::Call);
    }

    #[test]
    fn failed_probe_reopens_with_doubled_capped_backoff() {
        let t = Instant::now();
        let mut b = breaker();
        for _ in 0..3 {
            b.failure(t, 0.0);
        }
        let mut now = t + Duration::from_secs(1);
        let mut periods = Vec::new();
        for _ in 0..4 {
            assert_eq!(b.permit(now), Permit::Probe);
            assert_eq!(b.failure(now, 0.0), Some(BreakerState::Open));
            let until = b.open_until().unwrap();
            periods.push((until - now).as_secs());
            now = until;
        }
        assert_eq!(periods, [2, 4, 5, 5]);
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        let t = Instant::now();
        for j in [-1.0, -0.3, 0.0, 0.7, 1.0] {
            let mut b = breaker();
            for _ in 0..3 {
                b.failure(t, j);
            }
            let d = (b.open_until().unwrap() - t).as_secs_f64();
            assert!((0.8..=1.2).contains(&d), "{d}");
        }
    }

    #[test]
    fn success_resets_the_failure_count() {
        let t = Instant::now();
        let mut b = breaker();
        b.failure(t, 0.0);
        b.failure(t, 0.0);
        assert_eq!(b.success(), None);
        b.failure(t, 0.0);
        b.failure(t, 0.0);
        assert_eq!(b.permit(t), Permit::Call);
    }
}
