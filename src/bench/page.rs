//! `panda bench page`: N live status-page clients while a turn runs every second.
//!
//! The real server (axum, SSE, the status hub) runs in this process on a free port; the
//! clients are raw HTTP/1.1 connections reading `/api/events` (cheap enough for 10,000 in
//! one process). Every second a turn's events go through the hub exactly as the daemon
//! sends them, followed by a marker carrying its send time. Printed: memory (RSS),
//! marker delivery p50/p99 across clients, clients that fell behind or were lost, and the
//! pipeline's cost of publishing a turn with and without the clients (the ratio is what
//! the page costs the pipeline).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio_util::sync::CancellationToken;

use super::percentile;
use crate::config::Config;
use crate::event::{EndReason, Event};
use crate::metrics::Metrics;
use crate::web::{Hub, WebHandle};

/// Resident memory, from a `/proc/self/status` handle opened before the clients (with
/// 10,000 sockets open the process may have no descriptor left to open it later).
fn rss_mb(f: &mut std::fs::File) -> f64 {
    use std::io::{Read, Seek};
    let mut s = String::new();
    let _ = f.seek(std::io::SeekFrom::Start(0));
    let _ = f.read_to_string(&mut s);
    Some(s)
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
        })
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// One turn's events, as the pipeline publishes them; returns the time they took.
fn publish_turn(hub: &Hub, turn: u64) -> Duration {
    let t = Instant::now();
    hub.observe(&Event::Wake {
        turn,
        name: "hey_panda".into(),
        score: 0.6,
        heard: Some("Hey Panda.".into()),
        at_ms: 0,
    });
    hub.observe(&Event::SpeechEnd {
        turn,
        at_ms: 0,
        reason: EndReason::Silence,
    });
    hub.observe(&Event::Transcript {
        turn,
        text: "What is the capital of France?".into(),
        audio_ms: 1800,
        stt_ms: 400,
        confidence: 0.9,
    });
    hub.observe(&Event::Route {
        turn,
        target: "llm".into(),
        confidence: 0.5,
        cached: false,
    });
    for piece in [
        "The capital ",
        "of France ",
        "is Paris, ",
        "a city on ",
        "the Seine.",
    ] {
        hub.text(turn, piece);
    }
    hub.flush_text(true);
    hub.observe(&Event::Answer {
        turn,
        text: "The capital of France is Paris, a city on the Seine.".into(),
        source: crate::event::AnswerSource::Llm,
    });
    hub.observe(&Event::Playing { turn, sentence: 0 });
    hub.observe(&Event::Spoken {
        turn,
        heard: "The capital of France is Paris, a city on the Seine.".into(),
        total_chars: 52,
        played_ms: 3000,
        interrupted: false,
    });
    t.elapsed()
}

/// Runs the benchmark with `clients` live clients for `seconds`.
pub async fn run(cfg: &Config, clients: usize, seconds: u64) -> Result<(), std::io::Error> {
    let limit = crate::web::conn::raise_fd_limit();
    let mut web = cfg.web.clone();
    web.listen = "127.0.0.1:0".into();
    web.rate_per_s = 1_000_000;
    web.burst = 1_000_000;
    web.max_clients = clients + 16;
    // Every client holds a connection; the server keeps its own descriptor reserve.
    web.max_connections = clients + 64;
    let metrics = Arc::new(Metrics::new());
    let hub = Hub::new(&web, metrics.clone());
    let (ask_tx, _ask_rx) = tokio::sync::mpsc::channel(1);
    let handle = WebHandle {
        asks: ask_tx,
        stop: Arc::new(|| false),
        agents: Arc::new(|| serde_json::json!([])),
        llm: serde_json::json!({}),
        stt: Arc::new(|| serde_json::json!({"backend": "local"})),
        tts: Arc::new(|| serde_json::json!({"backend": "local"})),
    };
    let root = CancellationToken::new();
    // Each client is two descriptors in this process (its socket and the server's).
    if (limit as usize) < clients * 2 + 64 {
        println!(
            "  note: the open-file limit {limit} is below 2 × {clients} clients; some will fail to connect"
        );
    }
    let (addr, _task) = crate::web::serve(&web, hub.clone(), handle, root.clone())
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    println!(
        "page bench: {clients} clients, a turn every second for {seconds} s (open-file limit {limit}); server on {addr}"
    );

    // Baseline: the pipeline's publishing cost with no clients.
    let mut alone = Vec::new();
    for i in 0..200 {
        alone.push(publish_turn(&hub, 1_000_000 + i).as_secs_f64() * 1e6);
    }
    let mut status = std::fs::File::open("/proc/self/status")?;
    let rss_before = rss_mb(&mut status);

    // Connect the clients (in batches: the listen backlog is finite).
    let t0 = Instant::now();
    let origin = Instant::now();
    let latencies = Arc::new(std::sync::Mutex::new(Vec::<f64>::new()));
    let connected = Arc::new(AtomicU64::new(0));
    let lost = Arc::new(AtomicU64::new(0));
    let stop = root.child_token();
    let mut tasks = Vec::with_capacity(clients);
    for batch in (0..clients).collect::<Vec<_>>().chunks(500) {
        for _ in batch {
            let (lat, conn, lost, stop) = (
                latencies.clone(),
                connected.clone(),
                lost.clone(),
                stop.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
                    lost.fetch_add(1, Relaxed);
                    return;
                };
                let req = format!(
                    "GET /api/events HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
                );
                if s.write_all(req.as_bytes()).await.is_err() {
                    lost.fetch_add(1, Relaxed);
                    return;
                }
                conn.fetch_add(1, Relaxed);
                let mut r = BufReader::new(s);
                let mut line = String::new();
                loop {
                    line.clear();
                    let n = tokio::select! {
                        _ = stop.cancelled() => return,
                        n = r.read_line(&mut line) => n,
                    };
                    match n {
                        Ok(0) | Err(_) => {
                            lost.fetch_add(1, Relaxed);
                            return;
                        }
                        Ok(_) => {}
                    }
                    if let Some(i) = line.find("bench-marker ") {
                        let sent: f64 = line[i + 13..]
                            .split(|c: char| !c.is_ascii_digit() && c != '.')
                            .next()
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(0.0);
                        let now = origin.elapsed().as_secs_f64() * 1000.0;
                        crate::lock(&lat).push(now - sent);
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    while (connected.load(Relaxed) + lost.load(Relaxed)) < clients as u64
        && t0.elapsed() < Duration::from_secs(60)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    println!(
        "  connected {} clients in {:.1} s ({} failed to connect); server sees {}",
        connected.load(Relaxed),
        t0.elapsed().as_secs_f64(),
        lost.load(Relaxed),
        metrics.clients.get()
    );

    // A turn every second, then a marker.
    let mut with = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    for i in 0..seconds {
        tick.tick().await;
        with.push(publish_turn(&hub, i + 1).as_secs_f64() * 1e6);
        hub.log(&format!(
            "bench-marker {:.3}",
            origin.elapsed().as_secs_f64() * 1000.0
        ));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = rss_mb(&mut status);
    let lat = crate::lock(&latencies).clone();
    let expected = connected.load(Relaxed) * seconds;
    println!(
        "  RSS {rss_before:.0} MB → {rss_after:.0} MB with the clients ({:.1} KB per client)",
        (rss_after - rss_before) * 1024.0 / clients.max(1) as f64
    );
    println!(
        "  markers delivered {}/{} ; delivery p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        lat.len(),
        expected,
        percentile(&lat, 50.0),
        percentile(&lat, 99.0),
        lat.iter().cloned().fold(0.0, f64::max)
    );
    println!(
        "  clients lost {}, fell behind and skipped ahead {}",
        lost.load(Relaxed),
        metrics.clients_lagged.get()
    );
    println!(
        "  pipeline cost of publishing one turn: {:.1} µs alone (p50), {:.1} µs with {clients} clients (p50) → {:.2}×",
        percentile(&alone, 50.0),
        percentile(&with, 50.0),
        percentile(&with, 50.0) / percentile(&alone, 50.0).max(0.001)
    );
    stop.cancel();
    root.cancel();
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}
