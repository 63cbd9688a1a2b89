//! systemd integration for `panda run` (on the async runtime, in the event consumer):
//! `sd_notify` state lines and the watchdog, which is fed only while the turn driver
//! makes progress.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Sends a state line to systemd when run as a `Type=notify` service (no-op otherwise).
/// Never blocks: a notify socket whose queue is full (nobody reading) drops the line
/// rather than stalling the event loop that sends it.
///
/// Hand-written rather than the `sd-notify` crate (0.4.5, read for this): that crate
/// sends with a blocking socket (a stalled manager would stall this loop) and connects
/// to `NOTIFY_SOCKET` as a file path, so an abstract-namespace socket (`@…`, which
/// systemd uses in containers and some user managers) fails; it does check
/// `WATCHDOG_PID`, which `watchdog_interval` now does too.
pub fn sd_notify(msg: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = std::os::unix::net::UnixDatagram::unbound() else {
        return;
    };
    let _ = sock.set_nonblocking(true);
    let bytes = path.as_encoded_bytes();
    let r = if let Some(abstract_name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)
            .and_then(|a| sock.send_to_addr(msg.as_bytes(), &a))
    } else {
        sock.send_to(msg.as_bytes(), &path)
    };
    if let Err(e) = r {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// The watchdog keep-alive interval: `[run] watchdog_ms`, or half of systemd's
/// `WATCHDOG_USEC`; none when no watchdog is asked for.
pub fn watchdog_interval(configured_ms: u64) -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    // sd_watchdog_enabled(3): a WATCHDOG_PID naming another process (we were started by
    // a wrapper that did not unset it) means the watchdog is not ours to feed.
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.trim().parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    Some(if configured_ms > 0 {
        Duration::from_millis(configured_ms)
    } else {
        Duration::from_micros(usec / 2)
    })
}

/// Whether the turn driver makes progress, for the watchdog: the driver marks the start
/// and end of each job; every event of a turn counts as progress. A job with no event for
/// `[run] stall_ms` is stalled, and the watchdog stops being fed so systemd restarts the
/// daemon (a stuck appliance that says "ok" is worse than a restart).
pub struct Progress {
    epoch: Instant,
    /// Milliseconds since `epoch` + 1 when the current job started; 0 when idle.
    busy_since_ms: AtomicU64,
    /// Milliseconds since `epoch` of the last event.
    last_event_ms: AtomicU64,
}

impl Default for Progress {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            busy_since_ms: 0.into(),
            last_event_ms: 0.into(),
        }
    }
}

impl Progress {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// A job starts.
    pub fn begin(&self) {
        self.busy_since_ms.store(self.now_ms() + 1, Relaxed);
    }

    /// The driver is idle.
    pub fn end(&self) {
        self.busy_since_ms.store(0, Relaxed);
    }

    /// An event of a turn arrived.
    pub fn touch(&self) {
        self.last_event_ms.store(self.now_ms(), Relaxed);
    }

    /// The stalled job's quiet time, if the driver is stuck in one.
    pub fn stalled(&self, stall: Duration) -> Option<Duration> {
        let busy = self.busy_since_ms.load(Relaxed);
        if busy == 0 {
            return None;
        }
        let since = (busy - 1).max(self.last_event_ms.load(Relaxed));
        let quiet = Duration::from_millis(self.now_ms().saturating_sub(since));
        (quiet >= stall).then_some(quiet)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_busy_quiet_driver_is_stalled() {
        let p = Progress::default();
        let stall = Duration::from_millis(30);
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(p.stalled(stall), None, "idle is never stalled");
        p.begin();
        assert_eq!(p.stalled(stall), None);
        std::thread::sleep(Duration::from_millis(40));
        assert!(p.stalled(stall).is_some());
        p.touch();
        assert_eq!(p.stalled(stall), None, "an event is progress");
        p.end();
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(p.stalled(stall), None);
    }
}
