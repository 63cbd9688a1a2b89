//! Zeroconf: announcing a Wyoming server as `_wyoming._tcp.local.`, the way Home
//! Assistant discovers Wyoming services (opt-in: `[wyoming] zeroconf = true`).
//!
//! `mdns-sd` runs its own daemon thread (`mdns-sd` answers queries on every interface's
//! multicast group); [`Announcement`] owns it for as long as the server serves and, when
//! dropped, withdraws the service (a goodbye packet, so browsers forget it at once) and
//! stops the daemon.

use std::net::SocketAddr;

use mdns_sd::{ServiceDaemon, ServiceInfo};

/// The service type Home Assistant browses for.
pub const SERVICE_TYPE: &str = "_wyoming._tcp.local.";

/// No TXT properties: Home Assistant reads everything from `describe` → `info`.
const NO_TXT: Option<std::collections::HashMap<String, String>> = None;

/// Errors of the announcement.
#[derive(Debug, thiserror::Error)]
pub enum ZeroconfError {
    /// The mDNS daemon could not start or register (no multicast-capable interface, a
    /// bad instance name).
    #[error("zeroconf announcement failed: {0}")]
    Mdns(#[from] mdns_sd::Error),
}

/// A service announced on the local network; withdrawn when dropped.
pub struct Announcement {
    /// None once withdrawn.
    daemon: Option<ServiceDaemon>,
    fullname: String,
}

impl Announcement {
    /// Announces `name` (the instance name Home Assistant shows) for a server bound to
    /// `addr`: that address, or every interface's when it is unspecified (`0.0.0.0`).
    pub fn start(name: &str, addr: SocketAddr) -> Result<Self, ZeroconfError> {
        let daemon = ServiceDaemon::new()?;
        let host = format!("{}.local.", host_name());
        let ip = addr.ip();
        let info = if ip.is_unspecified() {
            ServiceInfo::new(SERVICE_TYPE, name, &host, "", addr.port(), NO_TXT)?.enable_addr_auto()
        } else {
            ServiceInfo::new(SERVICE_TYPE, name, &host, ip, addr.port(), NO_TXT)?
        };
        if ip.is_loopback() {
            tracing::warn!(
                %addr,
                "zeroconf announces a loopback address: only this machine can connect (bind a LAN address to let Home Assistant in)"
            );
        }
        let fullname = info.get_fullname().to_string();
        daemon.register(info)?;
        tracing::info!(service = %fullname, %addr, "announced over zeroconf");
        Ok(Self {
            daemon: Some(daemon),
            fullname,
        })
    }

    /// `<name>._wyoming._tcp.local.`
    pub fn fullname(&self) -> &str {
        &self.fullname
    }

    /// Withdraws the service and waits (up to a second) until the daemon has sent its
    /// goodbye, so browsers forget it now rather than when its records expire.
    pub async fn withdraw(mut self) {
        if let Some(d) = self.daemon.take() {
            if let Ok(rx) = d.unregister(&self.fullname) {
                let _ =
                    tokio::time::timeout(std::time::Duration::from_secs(1), rx.recv_async()).await;
            }
            let _ = d.shutdown();
        }
    }
}

impl Drop for Announcement {
    fn drop(&mut self) {
        // Not withdrawn (an error path): both only queue a command for the daemon
        // thread; neither blocks.
        if let Some(d) = self.daemon.take() {
            let _ = d.unregister(&self.fullname);
            let _ = d.shutdown();
        }
    }
}

/// This machine's host name (for the `.local.` record), or "panda".
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
        .unwrap_or_else(|| "panda".into())
}

/// The instance name when `[wyoming] zeroconf_name` is empty: `panda-<host>`.
pub fn default_name() -> String {
    format!("panda-{}", host_name())
}
