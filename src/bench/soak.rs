//! `panda bench soak`: thousands of turns through a running `panda run`, stopped at random
//! moments, to show that every turn ends and that nothing grows.
//!
//! The daemon is this binary started as a child process (so its memory, threads and
//! descriptors are its own): `panda run --web --input -` reading a WAV stream of silence
//! that this bench writes at real-time pace (the microphone), answering into a WAV sink
//! that plays as fast as it can (so the soak is not paced by speech), with an
//! OpenAI-protocol LLM server in this process that thinks a little before each answer.
//! Each turn is one of: a skill question answered whole; an LLM question answered whole;
//! an LLM question stopped before its first token, before its first audio, or while it is
//! spoken (`POST /api/stop`); or a barge-in — "hey panda, what time is it" spoken into
//! the microphone while an LLM answer plays. A turn has ended when the status page shows
//! it (and a barge-in's own turn) and the state is back to listening; one that does not
//! within 60 s counts as stuck. Resident memory, threads and open descriptors of the daemon are sampled
//! after the warm-up and at the end.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rand::Rng;

use crate::config::Config;
use crate::scripted::{Reply, Request, openai_stream, serve};

/// The bearer token the soak's daemon is started with.
const TOKEN: &str = "soak-token";

/// What the bench does to one turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Skill,
    Llm,
    StopBeforeToken,
    StopBeforeAudio,
    StopWhileSpeaking,
    BargeIn,
}

const KINDS: [Kind; 6] = [
    Kind::Skill,
    Kind::Llm,
    Kind::StopBeforeToken,
    Kind::StopBeforeAudio,
    Kind::StopWhileSpeaking,
    Kind::BargeIn,
];

/// The daemon's footprint from /proc.
#[derive(Debug, Clone, Copy, Default)]
struct Footprint {
    rss_kb: u64,
    threads: u64,
    fds: u64,
}

fn footprint(pid: u32) -> Footprint {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Footprint {
        rss_kb: field("VmRSS:"),
        threads: field("Threads:"),
        fds: std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count() as u64)
            .unwrap_or(0),
    }
}

/// A 16 kHz mono WAV header that declares an endless stream.
fn endless_wav_header() -> Vec<u8> {
    let mut h = Vec::with_capacity(44);
    h.extend_from_slice(b"RIFF");
    h.extend_from_slice(&u32::MAX.to_le_bytes());
    h.extend_from_slice(b"WAVEfmt ");
    h.extend_from_slice(&16u32.to_le_bytes());
    h.extend_from_slice(&1u16.to_le_bytes());
    h.extend_from_slice(&1u16.to_le_bytes());
    h.extend_from_slice(&16_000u32.to_le_bytes());
    h.extend_from_slice(&32_000u32.to_le_bytes());
    h.extend_from_slice(&2u16.to_le_bytes());
    h.extend_from_slice(&16u16.to_le_bytes());
    h.extend_from_slice(b"data");
    // Even: a whole number of 16-bit samples (~37 hours of audio).
    h.extend_from_slice(&(u32::MAX - 1).to_le_bytes());
    h
}

/// Runs `turns` turns (the first `warmup` are not measured) and prints the report.
pub async fn run(cfg: &Config, turns: usize, warmup: usize) -> Result<(), super::BenchError> {
    let fail = |m: String| super::BenchError::Synth(m);
    // "Hey panda. What time is it?" for the barge-ins, in a template voice.
    let dir = std::env::temp_dir().join(format!("panda-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| fail(e.to_string()))?;
    let exe = std::env::current_exe().map_err(|e| fail(e.to_string()))?;
    let mut barge: Vec<i16> = Vec::new();
    for (i, part) in ["Hey panda.", "What time is it?"].iter().enumerate() {
        let wav = dir.join(format!("barge-{i}.wav"));
        let ok = std::process::Command::new(&exe)
            .args(["say", part, "--voice", "am_michael", "-o"])
            .arg(&wav)
            .env("PANDA_MODELS__DIR", &cfg.models.dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Err(fail("panda say failed (models installed?)".into()));
        }
        barge.extend(crate::audio::file::read_16k_mono(&wav)?);
        barge.extend(std::iter::repeat_n(0i16, 16 * 500));
    }

    // The LLM: thinks 300 ms, then three sentences 60 ms apart.
    let llm = serve(Arc::new(|_: &Request| {
        let mut pieces = openai_stream(
            &[
                "Rivers carry water from the hills to the sea. ",
                "Along the way they shape valleys and feed forests. ",
                "People have settled beside them for thousands of years.",
            ],
            Duration::from_millis(60),
        );
        pieces[0].0 = Duration::from_millis(300);
        Reply::Stream {
            content_type: "text/event-stream",
            pieces,
            die: false,
        }
    }))
    .await
    .map_err(|e| fail(e.to_string()))?;

    let mut child = std::process::Command::new(&exe)
        // The answers go nowhere: 2,000 of them would fill a disk, and a WAV writer
        // on /dev/null costs the same as on a file.
        .args(["run", "--web", "--input", "-", "--output", "/dev/null"])
        .env("PANDA_MODELS__DIR", &cfg.models.dir)
        .env("PANDA_STATE__DIR", &dir)
        .env("PANDA_LLM__URL", llm.url())
        .env("PANDA_LLM__BACKEND", "openai")
        .env("PANDA_WEB__LISTEN", "127.0.0.1:0")
        .env("PANDA_WEB__TOKEN", TOKEN)
        .env("PANDA_WEB__RATE_PER_S", "1000")
        .env("PANDA_WEB__BURST", "1000")
        .env("PANDA_MEMORY__STORE_TURNS", "false")
        .env("RUST_LOG", "warn,panda::web=info")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| fail(e.to_string()))?;
    let pid = child.id();

    // The microphone: silence at real time, with a barge-in spliced in when asked.
    let mut mic = child.stdin.take().expect("piped");
    let barge_now = Arc::new(AtomicBool::new(false));
    let stop_mic = Arc::new(AtomicBool::new(false));
    let (b2, s2) = (barge_now.clone(), stop_mic.clone());
    let mic_thread = std::thread::spawn(move || {
        if mic.write_all(&endless_wav_header()).is_err() {
            return;
        }
        let silence = vec![0u8; 320 * 2];
        let start = Instant::now();
        let mut sent_ms = 0u64;
        while !s2.load(Ordering::Relaxed) {
            if b2.swap(false, Ordering::Relaxed) {
                for chunk in barge.chunks(320) {
                    let bytes: Vec<u8> = chunk.iter().flat_map(|s| s.to_le_bytes()).collect();
                    if mic.write_all(&bytes).is_err() {
                        return;
                    }
                    sent_ms += chunk.len() as u64 / 16;
                    pace(start, sent_ms);
                }
            }
            if mic.write_all(&silence).is_err() {
                return;
            }
            sent_ms += 20;
            pace(start, sent_ms);
        }
    });

    // The status page's address from the log.
    let stderr = child.stderr.take().expect("piped");
    let (url_tx, url_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(url) = crate::web::status_page_url(&line) {
                let _ = url_tx.send(url);
            }
        }
    });
    let url = tokio::task::spawn_blocking(move || url_rx.recv_timeout(Duration::from_secs(120)))
        .await
        .ok()
        .and_then(Result::ok)
        .ok_or_else(|| fail("the daemon did not start its status page".into()))?;
    let http = reqwest::Client::new();
    let mut rng = rand::rng();
    let mut stuck = 0usize;
    let mut counts = [0usize; KINDS.len()];
    let mut ended_ms: Vec<u64> = Vec::new();
    let mut warm = Footprint::default();
    let started = Instant::now();
    println!("soak: {turns} turns ({warmup} warm-up) against pid {pid}, status page {url}");
    for i in 0..turns {
        if i == warmup {
            warm = footprint(pid);
        }
        let kind = KINDS[rng.random_range(0..KINDS.len())];
        counts[KINDS.iter().position(|k| *k == kind).unwrap_or(0)] += 1;
        let before = finished_turns(&http, &url).await;
        let question = if kind == Kind::Skill {
            "What time is it?"
        } else {
            "Tell me about rivers."
        };
        let t = Instant::now();
        let _ = http
            .post(format!("{url}/api/ask"))
            .bearer_auth(TOKEN)
            .json(&serde_json::json!({ "text": question }))
            .send()
            .await;
        let stop_after = match kind {
            Kind::StopBeforeToken => Some(rng.random_range(20..250)),
            Kind::StopBeforeAudio => Some(rng.random_range(300..700)),
            Kind::StopWhileSpeaking => Some(rng.random_range(900..2500)),
            _ => None,
        };
        if let Some(ms) = stop_after {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            let _ = http
                .post(format!("{url}/api/stop"))
                .bearer_auth(TOKEN)
                .send()
                .await;
        }
        if kind == Kind::BargeIn {
            tokio::time::sleep(Duration::from_millis(rng.random_range(400..1500))).await;
            barge_now.store(true, Ordering::Relaxed);
        }
        // Ended: the turn (and a barge-in's own turn) started and the appliance is back
        // to listening (twice in a row: a new turn may be about to start).
        let want = before + if kind == Kind::BargeIn { 2 } else { 1 };
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut calm = 0;
        loop {
            let (newest, state) = status(&http, &url).await;
            calm = if newest >= want && state == "listening" {
                calm + 1
            } else {
                0
            };
            if calm >= 2 {
                break;
            }
            if Instant::now() > deadline {
                stuck += 1;
                eprintln!("turn {i} ({kind:?}) did not end within 60 s (state {state})");
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        ended_ms.push(t.elapsed().as_millis() as u64);
        if (i + 1) % 100 == 0 {
            let f = footprint(pid);
            println!(
                "  {:>5} turns  {:>6.0} s  rss {:>7} kB  threads {:>3}  fds {:>4}  stuck {stuck}",
                i + 1,
                started.elapsed().as_secs_f64(),
                f.rss_kb,
                f.threads,
                f.fds
            );
        }
    }
    let end = footprint(pid);
    stop_mic.store(true, Ordering::Relaxed);
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = tokio::task::spawn_blocking(move || child.wait()).await;
    let _ = mic_thread.join();
    let _ = std::fs::remove_dir_all(&dir);

    let ended: Vec<f64> = ended_ms.iter().map(|&v| v as f64).collect();
    let growth = |a: u64, b: u64| {
        if a == 0 {
            0.0
        } else {
            (b as f64 - a as f64) * 100.0 / a as f64
        }
    };
    println!();
    println!(
        "turns        {turns} in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    for (k, n) in KINDS.iter().zip(counts) {
        println!("  {:<20} {n}", format!("{k:?}"));
    }
    println!("ended        {} of {turns} (stuck: {stuck})", turns - stuck);
    println!(
        "turn time    p50 {:.0} ms  p95 {:.0} ms",
        super::percentile(&ended, 50.0),
        super::percentile(&ended, 95.0)
    );
    println!(
        "rss          {} kB after warm-up → {} kB at the end ({:+.1} %, goal < 5 %)",
        warm.rss_kb,
        end.rss_kb,
        growth(warm.rss_kb, end.rss_kb)
    );
    println!(
        "threads      {} → {}   descriptors {} → {}",
        warm.threads, end.threads, warm.fds, end.fds
    );
    Ok(())
}

fn pace(start: Instant, sent_ms: u64) {
    let due = start + Duration::from_millis(sent_ms);
    if let Some(wait) = due.checked_duration_since(Instant::now()) {
        std::thread::sleep(wait);
    }
}

/// The newest turn the page knows (ids grow).
async fn finished_turns(http: &reqwest::Client, url: &str) -> usize {
    status(http, url).await.0
}

/// (the newest turn's id, state).
async fn status(http: &reqwest::Client, url: &str) -> (usize, String) {
    let Ok(r) = http
        .get(format!("{url}/api/status"))
        .bearer_auth(TOKEN)
        .send()
        .await
    else {
        return (0, String::new());
    };
    let Ok(v) = r.json::<serde_json::Value>().await else {
        return (0, String::new());
    };
    let state = v["state"].as_str().unwrap_or("").to_string();
    let newest = v["turns"]
        .as_array()
        .and_then(|ts| ts.iter().filter_map(|t| t["id"].as_u64()).max())
        .unwrap_or(0) as usize;
    (newest, state)
}
