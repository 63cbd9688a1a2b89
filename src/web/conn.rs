//! The status server's connections (tokio tasks, one per connection): accepting within a
//! bound, evicting idle connections at that bound, and timing out slow request heads.
//!
//! axum's own `serve` accepts without limit and sets no header timeout: 1,100 idle TCP
//! connections used up the process's descriptors, so the LLM call, the timer store and
//! the speaker failed. Here:
//! - at most `limit` connections are open; the limit is also kept below the descriptor
//!   limit minus [`FD_RESERVE`], which belongs to the pipeline (model files, the
//!   database, sound devices, the LLM and agent pools);
//! - at the limit a new connection closes the oldest *idle* one (one not serving a
//!   request or a live feed), so idle or half-open clients can never lock out a real
//!   request; with none idle the new connection is closed at once;
//! - hyper closes a connection whose request head does not arrive within the header
//!   timeout, counted from the connection's start and again after every response, so a
//!   slowloris or an idle keep-alive client holds a descriptor for at most that long.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::metrics::Metrics;

/// Descriptors kept for the pipeline whatever the page's clients do: model files and
/// ONNX Runtime, the SQLite database and its WAL, the sound devices, the LLM and agent
/// connection pools, the timer store, logs.
pub const FD_RESERVE: u64 = 256;

/// How long an evicted or shutting-down connection gets to finish before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_millis(500);

/// Raises the soft descriptor limit to the hard one (systemd's `LimitNOFILE` sets both;
/// a shell's soft limit is often 1,024 under a far higher hard limit) and returns it.
pub fn raise_fd_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return 1024;
        }
        if r.rlim_cur < r.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: r.rlim_max,
                rlim_max: r.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                r.rlim_cur = r.rlim_max;
            }
        }
        r.rlim_cur
    }
}

/// The connection limit in force: `[web] max_connections`, held below the descriptor
/// limit minus [`FD_RESERVE`] (at least 8, so the page stays usable).
pub fn connection_limit(configured: usize) -> usize {
    let fds = raise_fd_limit();
    let budget = fds.saturating_sub(FD_RESERVE).max(8) as usize;
    if configured > budget {
        tracing::warn!(
            configured,
            budget,
            fd_limit = fds,
            "[web] max_connections is above what the descriptor limit leaves after the pipeline's reserve; using {budget}"
        );
    }
    configured.min(budget)
}

/// One open connection: how many requests (or live feeds) it is serving, and how to
/// close it.
struct Entry {
    busy: usize,
    close: CancellationToken,
}

/// The open connections, oldest first (ids grow).
pub struct Connections {
    limit: usize,
    header_timeout: Duration,
    metrics: Arc<Metrics>,
    open: Mutex<(u64, BTreeMap<u64, Entry>)>,
}

/// Marks a connection busy while a request, and its response body, is in flight.
struct Busy {
    conns: Arc<Connections>,
    id: u64,
}

impl Drop for Busy {
    fn drop(&mut self) {
        let mut g = self.conns.lock();
        if let Some(e) = g.1.get_mut(&self.id) {
            e.busy = e.busy.saturating_sub(1);
        }
    }
}

impl Connections {
    /// A registry for at most `limit` connections.
    pub fn new(limit: usize, header_timeout: Duration, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            limit: limit.max(1),
            header_timeout,
            metrics,
            open: Mutex::new((0, BTreeMap::new())),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, BTreeMap<u64, Entry>)> {
        crate::lock(&self.open)
    }

    /// Registers a new connection; at the limit the oldest idle one is closed to make
    /// room. `None`: every connection is busy, so the new one must be refused.
    fn admit(&self) -> Option<(u64, CancellationToken)> {
        let mut g = self.lock();
        if g.1.len() >= self.limit {
            let idle = g.1.iter().find(|(_, e)| e.busy == 0).map(|(id, _)| *id);
            match idle.and_then(|id| g.1.remove(&id)) {
                Some(e) => {
                    e.close.cancel();
                    self.metrics.connections_evicted.add(1);
                }
                None => return None,
            }
        }
        g.0 += 1;
        let id = g.0;
        let close = CancellationToken::new();
        g.1.insert(
            id,
            Entry {
                busy: 0,
                close: close.clone(),
            },
        );
        Some((id, close))
    }

    fn busy(self: &Arc<Self>, id: u64) -> Busy {
        if let Some(e) = self.lock().1.get_mut(&id) {
            e.busy += 1;
        }
        Busy {
            conns: self.clone(),
            id,
        }
    }

    fn remove(&self, id: u64) {
        self.lock().1.remove(&id);
    }

    /// Open connections now.
    pub fn len(&self) -> usize {
        self.lock().1.len()
    }

    /// Whether no connection is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Accepts and serves connections until `root` is cancelled, then closes them all
    /// (each gets [`CLOSE_GRACE`] to finish).
    pub async fn serve(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        app: Router,
        root: CancellationToken,
    ) {
        let tasks = TaskTracker::new();
        loop {
            let (stream, peer) = tokio::select! {
                _ = root.cancelled() => break,
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of descriptors (EMFILE) or a connection reset before
                        // accept: wait a little instead of spinning.
                        tracing::debug!(error = %e, "status page: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let Some((id, close)) = self.admit() else {
                tracing::debug!(%peer, "status page: every connection is busy; refused");
                drop(stream);
                continue;
            };
            let conns = self.clone();
            let app = app.clone();
            let root = root.clone();
            tasks.spawn(async move {
                conns
                    .clone()
                    .connection(stream, peer, id, app, close, root)
                    .await;
                conns.remove(id);
            });
        }
        drop(listener);
        for (_, e) in self.lock().1.iter() {
            e.close.cancel();
        }
        tasks.close();
        let _ = tokio::time::timeout(CLOSE_GRACE * 2, tasks.wait()).await;
    }

    async fn connection(
        self: Arc<Self>,
        stream: tokio::net::TcpStream,
        peer: SocketAddr,
        id: u64,
        app: Router,
        close: CancellationToken,
        root: CancellationToken,
    ) {
        let conns = self.clone();
        let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            let busy = conns.busy(id);
            let app = app.clone();
            async move {
                let res = app.oneshot(req).await.unwrap_or_else(|e| match e {});
                // The connection stays busy until the response body is done (a live
                // feed is busy for as long as it streams).
                Ok::<_, Infallible>(res.map(|b| {
                    Body::new(b.map_frame(move |f| {
                        let _ = &busy;
                        f
                    }))
                }))
            }
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_timeout)
            .keep_alive(true);
        let conn = builder.serve_connection(TokioIo::new(stream), svc);
        tokio::pin!(conn);
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = close.cancelled() => {}
            _ = root.cancelled() => {}
        }
        conn.as_mut().graceful_shutdown();
        let _ = tokio::time::timeout(CLOSE_GRACE, conn).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_the_limit_the_oldest_idle_connection_makes_room() {
        let c = Connections::new(2, Duration::from_secs(1), Arc::new(Metrics::new()));
        let (a, a_close) = c.admit().expect("room");
        let (b, b_close) = c.admit().expect("room");
        // `a` serves a request: `b` is the oldest idle one.
        let busy_a = c.busy(a);
        let (_c, _) = c.admit().expect("b evicted");
        assert!(b_close.is_cancelled() && !a_close.is_cancelled());
        assert_eq!(c.len(), 2);
        let _busy_c = c.busy(_c);
        // Both busy: a new connection is refused.
        assert!(c.admit().is_none());
        drop(busy_a);
        assert!(c.admit().is_some(), "a is idle again");
        assert!(a_close.is_cancelled());
        let _ = b;
    }

    #[test]
    fn the_limit_leaves_the_pipeline_its_reserve() {
        let fds = raise_fd_limit();
        let limit = connection_limit(usize::MAX);
        assert_eq!(limit as u64, fds.saturating_sub(FD_RESERVE).max(8));
        assert_eq!(connection_limit(3), 3);
    }
}
