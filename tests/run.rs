//! `panda run`, the appliance: a recording in and the spoken answer out through every
//! stage with the real models; the status page and its API against a running daemon
//! (authentication, body limits, bad JSON, rate limits, the live feed, metrics); and
//! SIGTERM in the middle of a turn.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn panda_cmd(state: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_panda"));
    c.env("PANDA_MODELS__DIR", common::models_dir())
        .env("PANDA_STATE__DIR", state)
        // No LLM server in these tests: a dead port answers at once.
        .env("PANDA_LLM__URL", "http://127.0.0.1:9");
    c
}

#[test]
fn a_recorded_question_gets_a_spoken_answer() {
    let state = tempfile::tempdir().unwrap();
    let out = state.path().join("answer.wav");
    let t = Instant::now();
    let r = panda_cmd(state.path())
        .args(["run", "--json", "--input"])
        .arg(fixture("hey-panda-what-time.wav"))
        .arg("--output")
        .arg(&out)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let run = common::Run::from_output(r);
    assert_eq!(run.code, 0, "{}", run.stderr);
    eprintln!("panda run took {:?}", t.elapsed());
    let types: Vec<&str> = run
        .events
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    for want in [
        "wake",
        "speech_end",
        "transcript",
        "route",
        "answer",
        "playing",
        "spoken",
    ] {
        assert!(types.contains(&want), "{want} missing: {types:?}");
    }
    assert_eq!(run.of_type("route")[0]["target"], "skill:time");
    // The answer in the WAV says the time.
    let heard = common::panda(&["transcribe", out.to_str().unwrap()]);
    assert_eq!(heard.code, 0, "{}", heard.stderr);
    let text = heard.stdout.to_lowercase();
    eprintln!("answer as transcribed: {text}");
    assert!(text.contains("it's") || text.contains("it is"), "{text}");
    assert!(
        text.chars().any(|c| c.is_ascii_digit()) || text.contains("o'clock"),
        "{text}"
    );
    // The exchange was remembered as a turn.
    let mem = Command::new(env!("CARGO_BIN_EXE_panda"))
        .args(["memory", "export"])
        .env("PANDA_MODELS__DIR", common::models_dir())
        .env("PANDA_STATE__DIR", state.path())
        .output()
        .unwrap();
    let mem = String::from_utf8_lossy(&mem.stdout);
    assert!(
        mem.contains("\"kind\":\"turn\"") && mem.contains("What time is it"),
        "{mem}"
    );
}

#[test]
fn a_recording_without_the_wake_word_is_not_answered() {
    let state = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let wav = common::espeak_wav(dir.path(), "no-wake", "en-us", &["What time is it?"], 0);
    let r = panda_cmd(state.path())
        .args(["run", "--input"])
        .arg(&wav)
        .arg("--output")
        .arg(state.path().join("a.wav"))
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(65), "{err}");
    assert!(err.contains("no question was heard"), "{err}");
}

/// A daemon reading a long silent recording in real time, with the status page on a free
/// port; killed when dropped.
struct Daemon {
    child: Child,
    url: String,
    state: tempfile::TempDir,
    _audio: tempfile::TempDir,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const TOKEN: &str = "test-token-7f3a";

fn silence_wav(dir: &Path, seconds: u32) -> PathBuf {
    let path = dir.join("silence.wav");
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 16_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(&path, spec).unwrap();
    for _ in 0..16_000 * seconds {
        w.write_sample(0i16).unwrap();
    }
    w.finalize().unwrap();
    path
}

fn daemon(env: &[(&str, &str)]) -> Daemon {
    let state = tempfile::tempdir().unwrap();
    let audio = tempfile::tempdir().unwrap();
    let wav = silence_wav(audio.path(), 120);
    let mut child = panda_cmd(state.path())
        .args(["run", "--json", "--web", "--realtime", "--input"])
        .arg(&wav)
        .arg("--output")
        .arg(state.path().join("out.wav"))
        .env("PANDA_WEB__LISTEN", "127.0.0.1:0")
        .env("PANDA_WEB__TOKEN", TOKEN)
        .env("RUST_LOG", "panda=info")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The log names the bound address.
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(url) = common::status_page_url(&line) {
                let _ = tx.send(url);
            }
        }
    });
    // Drain stdout so the daemon never blocks on it.
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = BufReader::new(stdout).read_to_end(&mut sink);
    });
    let url = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("the daemon printed its status page address");
    Daemon {
        child,
        url,
        state,
        _audio: audio,
    }
}

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

#[test]
fn the_status_api_guards_itself_and_streams_turns() {
    let d = daemon(&[("PANDA_WEB__RATE_PER_S", "50"), ("PANDA_WEB__BURST", "50")]);
    let c = http();
    let url = &d.url;
    // Page, health, metrics, status.
    let page = c.get(format!("{url}/")).send().unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert_eq!(page.headers()["x-content-type-options"], "nosniff");
    assert_eq!(
        c.get(format!("{url}/healthz")).send().unwrap().status(),
        200
    );
    // Idle until the listener runs, then listening.
    let t = Instant::now();
    let status = loop {
        let s: serde_json::Value = c
            .get(format!("{url}/api/status"))
            .send()
            .unwrap()
            .json()
            .unwrap();
        if s["state"] == "listening" || t.elapsed() > Duration::from_secs(20) {
            break s;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status["state"], "listening", "{status}");
    assert_eq!(status["agents"].as_array().unwrap().len(), 3, "{status}");

    // The live feed, read on its own thread.
    let feed = c.get(format!("{url}/api/events")).send().unwrap();
    assert_eq!(feed.status(), 200);
    let (tx, rx) = std::sync::mpsc::channel::<serde_json::Value>();
    std::thread::spawn(move || {
        for line in BufReader::new(feed).lines().map_while(Result::ok) {
            if let Some(data) = line.strip_prefix("data:")
                && let Ok(v) = serde_json::from_str(data.trim())
                && tx.send(v).is_err()
            {
                return;
            }
        }
    });
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(10)).unwrap()["type"],
        "snapshot"
    );

    // Authentication.
    let ask = |body: &str, token: Option<&str>| {
        let mut r = c
            .post(format!("{url}/api/ask"))
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send().unwrap()
    };
    assert_eq!(ask(r#"{"text":"what time is it"}"#, None).status(), 401);
    assert_eq!(
        ask(r#"{"text":"what time is it"}"#, Some("wrong")).status(),
        401
    );
    assert_eq!(
        c.post(format!("{url}/api/stop")).send().unwrap().status(),
        401
    );
    // Bad JSON, wrong shape, oversized body.
    let bad = ask("{not json", Some(TOKEN));
    assert_eq!(bad.status(), 400);
    let msg: serde_json::Value = bad.json().unwrap();
    assert!(msg["error"].as_str().unwrap().contains("JSON"), "{msg}");
    assert_eq!(ask(r#"{"question":"x"}"#, Some(TOKEN)).status(), 400);
    let huge = format!(r#"{{"text":"{}"}}"#, "a".repeat(100_000));
    // Every time, on a connection the client can read the answer from (answering before
    // the body was read once made the client see a reset instead).
    for _ in 0..5 {
        let r = ask(&huge, Some(TOKEN));
        assert_eq!(r.status(), 413);
        let msg: serde_json::Value = r.json().unwrap();
        assert!(
            msg["error"].as_str().unwrap().contains("max_body_bytes"),
            "{msg}"
        );
    }

    // A typed question is answered, and the feed shows it as it happens.
    let r = ask(r#"{"text":"What time is it?"}"#, Some(TOKEN));
    assert_eq!(r.status(), 202);
    let t = Instant::now();
    let mut states = Vec::new();
    let mut answer = String::new();
    while t.elapsed() < Duration::from_secs(60)
        && (answer.is_empty()
            || !states.contains(&"listening".to_string())
            || !states.contains(&"speaking".to_string()))
    {
        let Ok(m) = rx.recv_timeout(Duration::from_secs(60)) else {
            break;
        };
        match m["type"].as_str() {
            Some("state") => states.push(m["state"].as_str().unwrap().to_string()),
            Some("turn") if !m["turn"]["answer"].as_str().unwrap_or("").is_empty() => {
                answer = m["turn"]["answer"].as_str().unwrap().to_string();
            }
            _ => {}
        }
    }
    assert!(answer.starts_with("It's"), "{answer}");
    assert!(
        states.contains(&"thinking".to_string()) && states.contains(&"speaking".to_string()),
        "{states:?}"
    );
    let metrics = c
        .get(format!("{url}/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(metrics.contains("panda_turns_total 1"), "{metrics}");
    assert!(
        metrics.contains("panda_speech_end_to_first_audio_seconds_count 1"),
        "{metrics}"
    );
    assert!(metrics.contains("panda_status_clients 1"), "{metrics}");
}

#[test]
fn a_flood_is_rate_limited() {
    let d = daemon(&[("PANDA_WEB__RATE_PER_S", "5"), ("PANDA_WEB__BURST", "10")]);
    let c = http();
    let codes: Vec<u16> = (0..40)
        .map(|_| {
            c.get(format!("{}/api/status", d.url))
                .send()
                .unwrap()
                .status()
                .as_u16()
        })
        .collect();
    let limited = codes.iter().filter(|c| **c == 429).count();
    eprintln!(
        "40 requests at once: {} answered, {limited} refused",
        codes.len() - limited
    );
    assert!(limited >= 20, "{codes:?}");
    assert!(
        codes[..10].iter().all(|c| *c == 200),
        "the burst is allowed: {codes:?}"
    );
    let r = c.get(format!("{}/api/status", d.url)).send().unwrap();
    if r.status() == 429 {
        assert!(r.headers().contains_key("retry-after"));
    }
    // Health and metrics are never limited (monitoring must see a busy Panda).
    assert_eq!(
        c.get(format!("{}/healthz", d.url)).send().unwrap().status(),
        200
    );
    let m = c
        .get(format!("{}/metrics", d.url))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(!m.contains("panda_http_rate_limited_total 0"), "{m}");
}

#[test]
fn sigterm_mid_turn_exits_quickly_with_memory_intact() {
    let mut d = daemon(&[]);
    let c = http();
    let ask = |text: &str| {
        c.post(format!("{}/api/ask", d.url))
            .bearer_auth(TOKEN)
            .json(&serde_json::json!({ "text": text }))
            .send()
            .unwrap()
            .status()
    };
    assert_eq!(
        ask("Remember that the spare key is under the blue pot."),
        202
    );
    // Wait until it is answered (committed before the answer).
    let t = Instant::now();
    loop {
        let s: serde_json::Value = c
            .get(format!("{}/api/status", d.url))
            .send()
            .unwrap()
            .json()
            .unwrap();
        if s["turns"].as_array().is_some_and(|t| {
            t.iter()
                .any(|t| t["answer"].as_str().is_some_and(|a| a.contains("remember")))
        }) {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "{s}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // A second turn, then SIGTERM while it is being answered.
    assert_eq!(ask("What can you do?"), 202);
    std::thread::sleep(Duration::from_millis(400));
    let t = Instant::now();
    unsafe_sigterm(d.child.id());
    let status = loop {
        if let Some(s) = d.child.try_wait().unwrap() {
            break s;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "still running");
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = t.elapsed();
    eprintln!("exited {status:?} {took:?} after SIGTERM");
    assert!(took < Duration::from_secs(2), "{took:?}");
    let db = d.state.path().join("memory.sqlite3");
    let conn = rusqlite::Connection::open(&db).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    let n: i64 = conn
        .query_row(
            "SELECT count(*) FROM memories WHERE kind = 'fact' AND text LIKE '%blue pot%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 1);
}

fn unsafe_sigterm(pid: u32) {
    let ok = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

#[test]
fn the_systemd_unit_is_hardened() {
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/panda.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    for must in [
        "Type=notify",
        "WatchdogSec=",
        "ExecStartPre=/usr/local/bin/panda check-config",
        "Restart=on-failure",
        "RestartPreventExitStatus=78",
        "SupplementaryGroups=audio",
        "StateDirectory=panda",
    ] {
        assert!(text.contains(must), "{must} missing");
    }
    let out = match Command::new("systemd-analyze")
        .args(["security", "--offline=true"])
        .arg(&unit)
        .output()
    {
        Ok(o) => o,
        Err(e) => {
            eprintln!("\n*** SKIPPED exposure check: systemd-analyze is not installed ({e}) ***\n");
            return;
        }
    };
    let report =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let level: f64 = report
        .lines()
        .find_map(|l| l.split("Overall exposure level for panda.service:").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in: {report}"));
    eprintln!("systemd-analyze security exposure: {level}");
    assert!(level <= 2.0, "{level}\n{report}");
}
