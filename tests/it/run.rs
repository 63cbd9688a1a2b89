//! `panda run`, the appliance: a recording in and the spoken answer out through every
//! stage with the real models; the status page and its API against a running daemon
//! (authentication, body limits, bad JSON, rate limits, the live feed, metrics); and
//! SIGTERM in the middle of a turn.

use crate::common;

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
    let mut c = common::command_in(state);
    // No LLM server in these tests: a dead port answers at once.
    c.env("PANDA_LLM__URL", "http://127.0.0.1:9");
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
    let mem = common::command()
        .args(["memory", "export"])
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

/// A wake word with no question ends in a `no_question` event and nothing is asked; a
/// question asked after an answer, inside the follow-up window, needs no wake word; and
/// silence past that window ends it the same way.
#[test]
fn no_question_ends_quietly_and_a_follow_up_needs_no_wake_word() {
    let state = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let say = |t: &str| common::espeak_16k(dir.path(), "en-us", t);
    let silence = |ms: usize| vec![0i16; 16 * ms];
    let mut pcm = silence(500);
    pcm.extend(say("Hey panda."));
    // The 3 s question window counts from the earcon, which plays once the wake word
    // check has decided (seconds on a loaded CI machine): the next wake comes well after.
    pcm.extend(silence(12_000));
    pcm.extend(say("Hey panda."));
    pcm.extend(silence(800));
    pcm.extend(say("What time is it?"));
    // The answer has been spoken within 20 s of the question even on a loaded CI machine
    // (15.4 s measured: a full Whisper window beside another test); the follow-up window
    // (22 s) is open from then on and still open at the question on a fast machine (~13 s).
    pcm.extend(silence(20_000));
    pcm.extend(say("What's the date today?"));
    // That answer's window closes on silence within 20 + 22 s.
    pcm.extend(silence(45_000));
    let wav = dir.path().join("follow-up.wav");
    common::write_wav(&wav, 16_000, &pcm);
    let r = panda_cmd(state.path())
        .args(["run", "--json", "--realtime", "--input"])
        .arg(&wav)
        .arg("--output")
        .arg(state.path().join("answers.wav"))
        .env("PANDA_ENDPOINT__QUESTION_TIMEOUT_MS", "3000")
        .env("PANDA_CONVERSATION__FOLLOW_UP_MS", "22000")
        .output()
        .unwrap();
    let run = common::Run::from_output(r);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let seq: Vec<String> = run
        .events
        .iter()
        .filter_map(|e| {
            let t = e["type"].as_str()?;
            let turn = e["turn"].as_u64().unwrap_or(0);
            match t {
                "wake" | "no_question" | "follow_up" => Some(format!("{t} {turn}")),
                "route" => Some(format!("route {turn} {}", e["target"].as_str()?)),
                _ => None,
            }
        })
        .collect();
    println!("{seq:#?}");
    let turn_of = |i: usize| seq[i].split(' ').nth(1).unwrap().to_string();
    assert_eq!(seq.len(), 8, "{seq:#?}\n{}", run.stdout);
    // 1. A wake, then nothing: no_question for that turn, nothing routed.
    assert!(seq[0].starts_with("wake") && seq[1] == format!("no_question {}", turn_of(0)));
    // 2. A wake and a question: answered, then a follow-up window opens.
    assert!(seq[2].starts_with("wake"));
    assert_eq!(seq[3], format!("route {} skill:time", turn_of(2)));
    assert!(seq[4].starts_with("follow_up"), "{seq:#?}");
    // 3. The follow-up question, without the wake word, is that window's turn.
    assert_eq!(seq[5], format!("route {} skill:date", turn_of(4)));
    // 4. After its answer another window opens and closes on silence.
    assert!(seq[6].starts_with("follow_up"));
    assert_eq!(seq[7], format!("no_question {}", turn_of(6)));
    assert_eq!(run.of_type("follow_up")[0]["window_ms"], 22000);
    assert_eq!(common::answers(&run).len(), 2);
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
    common::write_wav(&path, 16_000, &vec![0i16; 16_000 * seconds as usize]);
    path
}

fn daemon(env: &[(&str, &str)]) -> Daemon {
    daemon_with(env, |_| {})
}

/// [`daemon`] with a last say over the command (limits, extra variables).
fn daemon_with(env: &[(&str, &str)], adjust: impl FnOnce(&mut Command)) -> Daemon {
    let state = tempfile::tempdir().unwrap();
    let audio = tempfile::tempdir().unwrap();
    let wav = silence_wav(audio.path(), 300);
    let mut cmd = panda_cmd(state.path());
    cmd.args(["run", "--json", "--web", "--realtime", "--input"])
        .arg(&wav)
        .arg("--output")
        .arg(state.path().join("out.wav"))
        .env("PANDA_WEB__LISTEN", "127.0.0.1:0")
        .env("PANDA_WEB__TOKEN", TOKEN)
        .env("RUST_LOG", "panda=info")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    adjust(&mut cmd);
    let mut child = cmd.spawn().unwrap();
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

/// An OpenAI-protocol server whose every answer starts after `first_token` with a word
/// that ends no sentence ("Rivers"), then waits `rest` before the rest: a model streaming
/// slowly, with text received but nothing yet to speak.
fn slow_llm(
    rt: &tokio::runtime::Runtime,
    first_token: Duration,
    rest: Duration,
) -> panda::scripted::Server {
    use panda::scripted::{Reply, Request, openai_stream, serve};
    rt.block_on(serve(std::sync::Arc::new(move |_: &Request| {
        let mut pieces = openai_stream(
            &["Rivers", " run to the sea. ", "They carve valleys. "],
            Duration::from_millis(50),
        );
        pieces[0].0 = first_token;
        pieces[1].0 = rest;
        Reply::Stream {
            content_type: "text/event-stream",
            pieces,
            die: false,
        }
    })))
    .unwrap()
}

/// The daemon's turns (from `/api/status`, with the token: off loopback it is needed).
fn turns(c: &reqwest::blocking::Client, url: &str) -> Vec<serde_json::Value> {
    let s: serde_json::Value = c
        .get(format!("{url}/api/status"))
        .bearer_auth(TOKEN)
        .send()
        .unwrap()
        .json()
        .unwrap();
    s["turns"].as_array().cloned().unwrap_or_default()
}

/// Waits for a turn whose answer satisfies `ok`; panics with the turns after `secs`.
fn wait_answer(
    c: &reqwest::blocking::Client,
    url: &str,
    secs: u64,
    ok: impl Fn(&str) -> bool,
) -> serde_json::Value {
    let t = Instant::now();
    loop {
        let ts = turns(c, url);
        if let Some(t) = ts.iter().find(|t| t["answer"].as_str().is_some_and(&ok)) {
            return t.clone();
        }
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "no such answer: {ts:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn post(c: &reqwest::blocking::Client, url: &str, path: &str, body: Option<&str>) -> u16 {
    let mut r = c.post(format!("{url}{path}")).bearer_auth(TOKEN);
    if let Some(text) = body {
        r = r.json(&serde_json::json!({ "text": text }));
    }
    r.send().unwrap().status().as_u16()
}

#[test]
fn a_stop_before_the_first_audio_never_locks_up_the_appliance() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    // The first word at 200 ms, the rest after 4 s: stops land before the first token
    // (100 ms) and after it but before any audio (300 ms, 1 s).
    let llm = slow_llm(&rt, Duration::from_millis(200), Duration::from_secs(4));
    let url = llm.url();
    let d = daemon(&[
        ("PANDA_LLM__URL", url.as_str()),
        ("PANDA_WEB__RATE_PER_S", "50"),
        ("PANDA_WEB__BURST", "50"),
        // No filler: nothing at all reaches the speaker before the stop.
        ("PANDA_CONVERSATION__FILLER_AFTER_MS", "60000"),
    ]);
    let c = http();
    for (i, after_ms) in [100u64, 300, 1000].into_iter().enumerate() {
        assert_eq!(
            post(&c, &d.url, "/api/ask", Some("Tell me about rivers.")),
            202
        );
        std::thread::sleep(Duration::from_millis(after_ms));
        assert_eq!(post(&c, &d.url, "/api/stop", None), 200);
        // The appliance still answers: a skill question right after.
        assert_eq!(post(&c, &d.url, "/api/ask", Some("What time is it?")), 202);
        let t = Instant::now();
        let want = i + 1;
        loop {
            let n = turns(&c, &d.url)
                .iter()
                .filter(|t| t["answer"].as_str().is_some_and(|a| a.starts_with("It's")))
                .count();
            if n >= want {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "stop after {after_ms} ms: the next question was never answered: {:?}",
                turns(&c, &d.url)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!(
            "stop after {after_ms} ms: next answered in {:?}",
            t.elapsed()
        );
    }
}

#[test]
fn a_barge_in_before_the_first_audio_lets_the_next_question_through() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let llm = slow_llm(&rt, Duration::from_millis(300), Duration::from_secs(20));
    let dir = tempfile::tempdir().unwrap();
    // "Hey panda. Tell me about rivers." then, 1.2 s later while the LLM still thinks,
    // "Hey panda. What time is it?" (past the endpointer's 0.8 s hangover with room to
    // spare: this test is about the barge-in, not about short pauses).
    let mut pcm: Vec<i16> = vec![0; 16_000];
    pcm.extend(common::kokoro_speech(
        dir.path(),
        "barge",
        "am_michael",
        &[
            "Hey panda.",
            "Tell me about rivers.",
            "Hey panda.",
            "What time is it?",
        ],
        &[600, 1200, 600],
    ));
    pcm.extend(std::iter::repeat_n(0i16, 16_000 * 3));
    let input = dir.path().join("barge.wav");
    std::fs::write(&input, panda::listen::wake::wav_bytes(&pcm)).unwrap();
    let state = tempfile::tempdir().unwrap();
    let mut child = panda_cmd(state.path())
        .args(["run", "--json", "--realtime", "--input"])
        .arg(&input)
        .arg("--output")
        .arg(state.path().join("out.wav"))
        .env("PANDA_LLM__URL", llm.url())
        .env("PANDA_CONVERSATION__FILLER_AFTER_MS", "60000")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            panic!("panda run never finished: the driver is stuck");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let events: Vec<serde_json::Value> = out
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(status.success(), "{status:?}");
    let wakes = events.iter().filter(|e| e["type"] == "wake").count();
    let answers: Vec<(u64, &str)> = events
        .iter()
        .filter(|e| e["type"] == "answer")
        .filter_map(|e| Some((e["turn"].as_u64()?, e["text"].as_str()?)))
        .collect();
    eprintln!("wakes {wakes}, answers {answers:?}");
    assert!(wakes >= 2, "{out}");
    // The first answer was cut before any of it was spoken; the second question (what
    // Whisper makes of it under load decides its route) is answered and played whole.
    let (first, _) = answers[0];
    let (last, _) = *answers.last().unwrap();
    assert_ne!(
        first, last,
        "the second question was never answered: {answers:?}"
    );
    let spoken: Vec<_> = events.iter().filter(|e| e["type"] == "spoken").collect();
    assert!(
        spoken.iter().any(|e| e["turn"] == last
            && e["interrupted"] == false
            && e["heard"].as_str().is_some_and(|h| !h.is_empty())),
        "{spoken:?}"
    );
    assert!(
        !spoken
            .iter()
            .any(|e| e["turn"] == first && e["interrupted"] == false),
        "the barged-in answer played whole: {spoken:?}"
    );
}

#[test]
fn the_watchdog_starves_while_a_turn_is_stalled() {
    use std::os::unix::net::UnixDatagram;
    let rt = tokio::runtime::Runtime::new().unwrap();
    // The model never answers within the test; its timeouts are set far away, so only
    // the stall rule can notice.
    let llm = slow_llm(&rt, Duration::from_secs(600), Duration::ZERO);
    let url = llm.url();
    let sock_dir = tempfile::tempdir().unwrap();
    let sock_path = sock_dir.path().join("notify");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let sock_env = sock_path.to_str().unwrap().to_string();
    let d = daemon_with(
        &[
            ("PANDA_LLM__URL", url.as_str()),
            ("PANDA_LLM__FIRST_TOKEN_TIMEOUT_MS", "600000"),
            ("PANDA_LLM__ANSWER_TIMEOUT_MS", "600000"),
            ("PANDA_CONVERSATION__FILLER_AFTER_MS", "60000"),
            ("PANDA_RUN__STALL_MS", "3000"),
            ("PANDA_RUN__WATCHDOG_MS", "250"),
        ],
        |cmd| {
            cmd.env("NOTIFY_SOCKET", &sock_env)
                .env("WATCHDOG_USEC", "30000000");
        },
    );
    let pings = |secs: u64| {
        // What queued up before this window does not count.
        let mut buf = [0u8; 256];
        sock.set_nonblocking(true).unwrap();
        while sock.recv(&mut buf).is_ok() {}
        sock.set_nonblocking(false).unwrap();
        let t = Instant::now();
        let mut n = 0;
        while t.elapsed() < Duration::from_secs(secs) {
            if let Ok(len) = sock.recv(&mut buf)
                && buf[..len].starts_with(b"WATCHDOG=1")
            {
                n += 1;
            }
        }
        n
    };
    let idle = pings(2);
    assert!(idle >= 4, "an idle daemon feeds the watchdog: {idle}");
    let c = http();
    assert_eq!(
        post(&c, &d.url, "/api/ask", Some("Tell me about rivers.")),
        202
    );
    // Progress for a moment, then nothing for longer than stall_ms (3 s).
    std::thread::sleep(Duration::from_secs(6));
    let stalled = pings(2);
    eprintln!("watchdog pings: {idle} in 2 s idle, {stalled} in 2 s stalled");
    assert_eq!(stalled, 0, "a stalled turn must starve the watchdog");
    // A stop ends the stalled turn; the pings come back.
    assert_eq!(post(&c, &d.url, "/api/stop", None), 200);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        pings(2) >= 4,
        "the watchdog is fed again once the turn ended"
    );
}

/// Sets the child's descriptor limit before it runs.
fn limit_fds(cmd: &mut Command, n: u64) {
    use std::os::unix::process::CommandExt;
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let r = libc::rlimit {
                rlim_cur: n,
                rlim_max: n,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &r) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[test]
fn idle_and_slow_clients_cannot_starve_the_appliance() {
    // The old default limit (1,024 descriptors, tighter than the unit's LimitNOFILE) and
    // more idle connections than it allows.
    let d = daemon_with(
        &[
            ("PANDA_WEB__HEADER_TIMEOUT_MS", "3000"),
            ("PANDA_WEB__RATE_PER_S", "50"),
            ("PANDA_WEB__BURST", "50"),
        ],
        |cmd| limit_fds(cmd, 1024),
    );
    let addr: std::net::SocketAddr = d.url.trim_start_matches("http://").parse().unwrap();
    let mut idle = Vec::new();
    for _ in 0..1100 {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(s) => idle.push(s),
            Err(e) => panic!("connect {}: {e}", idle.len()),
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    // A question through a new connection is answered, and the pipeline (timers,
    // memory, TTS, the WAV speaker) still has its descriptors.
    let c = http();
    assert_eq!(post(&c, &d.url, "/api/ask", Some("What time is it?")), 202);
    let t = wait_answer(&c, &d.url, 60, |a| a.starts_with("It's"));
    eprintln!("answered with 1,100 idle connections open: {}", t["answer"]);
    assert_eq!(
        post(&c, &d.url, "/api/ask", Some("Set a timer for 10 minutes.")),
        202
    );
    wait_answer(&c, &d.url, 60, |a| a.contains("10 minute"));
    drop(idle);

    // 200 slowloris clients (a header begun, never finished) are closed by the header
    // timeout (3 s here).
    use std::io::Write;
    let mut slow: Vec<std::net::TcpStream> = (0..200)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.write_all(b"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
                .unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s
        })
        .collect();
    let t = Instant::now();
    let mut closed = 0;
    for s in &mut slow {
        let mut buf = [0u8; 512];
        // Closed (EOF, a 408, or a reset) rather than held open.
        match s.read(&mut buf) {
            Ok(_) => closed += 1,
            Err(e)
                if e.kind() != std::io::ErrorKind::WouldBlock
                    && e.kind() != std::io::ErrorKind::TimedOut =>
            {
                closed += 1
            }
            Err(_) => {}
        }
    }
    eprintln!(
        "{closed} of 200 slowloris connections closed after {:?}",
        t.elapsed()
    );
    assert_eq!(closed, 200);
    assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
}

#[test]
fn reads_off_loopback_need_the_token_and_foreign_hosts_are_refused() {
    let d = daemon(&[
        ("PANDA_WEB__LISTEN", "0.0.0.0:0"),
        ("PANDA_WEB__RATE_PER_S", "50"),
        ("PANDA_WEB__BURST", "50"),
    ]);
    // The log names 0.0.0.0; reach it over loopback.
    let url = d.url.replace("0.0.0.0", "127.0.0.1");
    let c = http();
    assert_eq!(
        post(
            &c,
            &url,
            "/api/ask",
            Some("Remember that my bank PIN is 4321.")
        ),
        202
    );
    wait_answer(&c, &url, 60, |a| a.contains("remember"));
    // Without the token: state only.
    let open: serde_json::Value = c
        .get(format!("{url}/api/status"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(open["redacted"], true, "{open}");
    assert!(!open.to_string().contains("4321"), "{open}");
    assert!(open["state"].is_string(), "{open}");
    assert_eq!(
        c.get(format!("{url}/metrics")).send().unwrap().status(),
        401
    );
    // With it (any case of "Bearer", or the access_token parameter): everything.
    for auth in [
        format!("Bearer {TOKEN}"),
        format!("bearer {TOKEN}"),
        format!("BEARER {TOKEN}"),
    ] {
        let full = c
            .get(format!("{url}/api/status"))
            .header("authorization", auth)
            .send()
            .unwrap()
            .text()
            .unwrap();
        assert!(full.contains("4321"), "{full}");
    }
    let q = c
        .get(format!("{url}/api/status?access_token={TOKEN}"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(q.contains("4321"));
    assert_eq!(
        c.get(format!("{url}/metrics"))
            .bearer_auth(TOKEN)
            .send()
            .unwrap()
            .status(),
        200
    );
    // The live feed without the token carries no words either.
    let mut feed = c.get(format!("{url}/api/events")).send().unwrap();
    let mut first = [0u8; 4096];
    let n = feed.read(&mut first).unwrap();
    let head = String::from_utf8_lossy(&first[..n]);
    assert!(
        head.contains("snapshot") && !head.contains("4321"),
        "{head}"
    );
    // A DNS-rebinding page: the browser sends its own host name.
    let r = c
        .get(format!("{url}/api/status"))
        .header("host", "attacker.example:8080")
        .send()
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = c
        .get(format!("{url}/"))
        .header("host", "attacker.example")
        .send()
        .unwrap();
    assert_eq!(r.status(), 403);
}

#[test]
fn check_config_refuses_values_that_would_crash_or_hang_run() {
    let dir = tempfile::tempdir().unwrap();
    for (key, value) in [
        ("PANDA_STT__THREADS", "100000"),
        ("PANDA_TTS__THREADS", "100000"),
        ("PANDA_MEMORY__THREADS", "100000"),
        ("PANDA_WEB__CLIENT_BUFFER", "10000000000"),
        ("PANDA_AUDIO__RING_CAPACITY_MS", "4000000000"),
        ("PANDA_MEMORY__CANDIDATES", "1e12"),
        ("PANDA_LLM__URL", "http://"),
        ("PANDA_LLM__URL", "ftp://example.org"),
        ("PANDA_WEB__MAX_CONNECTIONS", "0"),
        ("PANDA_RUN__STALL_MS", "0"),
        ("PANDA_CONVERSATION__MAX_ANSWER_CHARS", "0"),
    ] {
        let out = common::command()
            .arg("check-config")
            .env(key, value)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{key}={value}: {err}");
        eprintln!("{key}={value}: {}", err.trim());
    }
    // --config naming a directory is an error, not silently the defaults (both forms).
    let d = dir.path().to_str().unwrap();
    for args in [vec!["check-config", d], vec!["--config", d, "check-config"]] {
        let out = common::command().args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{args:?}: {err}");
    }
}

#[test]
fn bad_inputs_are_refused_clearly_and_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let run_input = |input: &Path| {
        let t = Instant::now();
        let out = panda_cmd(state.path())
            .args(["run", "--input"])
            .arg(input)
            .arg("--output")
            .arg(dir.path().join("a.wav"))
            .env("RUST_LOG", "info")
            .output()
            .unwrap();
        (out, t.elapsed())
    };
    // Missing file: 66 naming it, before any model loads.
    let (out, took) = run_input(&dir.path().join("nope.wav"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(66), "{err}");
    assert!(err.contains("nope.wav") && !err.contains("ready"), "{err}");
    eprintln!("missing input refused in {took:?}");
    // A directory and an undecodable file: 65.
    let (out, _) = run_input(dir.path());
    assert_eq!(
        out.status.code(),
        Some(65),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let junk = dir.path().join("junk.wav");
    std::fs::write(&junk, b"this is not audio at all").unwrap();
    let (out, _) = run_input(&junk);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(65), "{err}");
    assert!(err.contains("junk.wav") && !err.contains("ready"), "{err}");
    // 65,535 channels of 8-bit audio at 65,536 Hz: refused, nothing allocated from it.
    let mut wav = Vec::new();
    let (channels, rate, bits) = (65_535u16, 65_536u32, 8u16);
    let data = vec![128u8; 65_535 * 4];
    wav.extend_from_slice(b"RIFF");
    wav.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
    wav.extend_from_slice(b"WAVEfmt ");
    wav.extend_from_slice(&16u32.to_le_bytes());
    wav.extend_from_slice(&1u16.to_le_bytes());
    wav.extend_from_slice(&channels.to_le_bytes());
    wav.extend_from_slice(&rate.to_le_bytes());
    wav.extend_from_slice(&(rate * channels as u32).to_le_bytes());
    wav.extend_from_slice(&channels.to_le_bytes());
    wav.extend_from_slice(&bits.to_le_bytes());
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&(data.len() as u32).to_le_bytes());
    wav.extend_from_slice(&data);
    let wide = dir.path().join("wide.wav");
    std::fs::write(&wide, wav).unwrap();
    let (out, took) = run_input(&wide);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(65), "{err}");
    assert!(err.contains("65535 channels"), "{err}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    // Endless raw input is cut at the read bound, with an error, in bounded memory.
    let t = Instant::now();
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -v 4000000; exec {} transcribe --raw /dev/zero",
            env!("CARGO_BIN_EXE_panda")
        ))
        .env("PANDA_MODELS__DIR", common::models_dir())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    eprintln!("/dev/zero refused in {:?}: {}", t.elapsed(), err.trim());
    assert_eq!(out.status.code(), Some(65), "{err}");
    assert!(err.contains("longer than"), "{err}");
    // A Whisper model with a damaged header is refused, naming the file (whisper.cpp
    // aborted the process on it).
    let model = common::models_dir().join(panda::config::Config::default().stt.model);
    let mut bytes = std::fs::read(&model).unwrap();
    for b in &mut bytes[4..36] {
        *b = !*b;
    }
    let broken = dir.path().join("broken-whisper.bin");
    std::fs::write(&broken, bytes).unwrap();
    let clip = dir.path().join("clip.wav");
    std::fs::write(&clip, panda::listen::wake::wav_bytes(&vec![0i16; 16_000])).unwrap();
    let out = common::command()
        .arg("transcribe")
        .arg(&clip)
        .env("PANDA_STT__MODEL", &broken)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code().is_some_and(|c| c != 134 && c != 0),
        "{:?} {err}",
        out.status
    );
    assert!(
        err.contains("broken-whisper.bin") && err.contains("header"),
        "{err}"
    );
}

#[test]
fn facts_added_by_another_process_reach_the_running_daemon() {
    let d = daemon(&[("PANDA_WEB__RATE_PER_S", "50"), ("PANDA_WEB__BURST", "50")]);
    let c = http();
    // The daemon is up (its memory is open: the page starts after the models) before
    // the other process writes.
    let out = panda_cmd(d.state.path())
        .args(["memory", "add", "The wifi password is swordfish."])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        post(
            &c,
            &d.url,
            "/api/ask",
            Some("What do you remember about the wifi password?")
        ),
        202
    );
    let t = wait_answer(&c, &d.url, 60, |a| !a.is_empty());
    assert!(t["answer"].as_str().unwrap().contains("swordfish"), "{t}");
}

/// "Hey panda, speak French", then a question asked in French: Whisper hears it in
/// French (the multilingual model, switched with the conversation), the model is asked
/// for French and the French answer is spoken. The French voice is lent from English
/// (`[tts] language_voices`): Kokoro's French voice is kept out of every test.
#[test]
fn speak_french_then_a_french_question_is_heard_and_answered_in_french() {
    use panda::scripted::{Reply, Request, openai_stream, serve};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let asked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let log = asked.clone();
    let llm = rt
        .block_on(serve(std::sync::Arc::new(move |r: &Request| {
            log.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&r.body).into_owned());
            Reply::Stream {
                content_type: "text/event-stream",
                pieces: openai_stream(
                    &["La capitale de l'Australie ", "est Canberra."],
                    Duration::from_millis(20),
                ),
                die: false,
            }
        })))
        .unwrap();
    let state = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let silence = |ms: usize| vec![0i16; 16 * ms];
    let mut pcm = silence(500);
    // The confirmation is spoken (seconds on a loaded machine) before the next wake.
    pcm.extend(common::kokoro_speech(
        dir.path(),
        "speak-french",
        "af_bella",
        &["Hey panda, speak French.", "Hey panda."],
        &[12_000, 800],
    ));
    pcm.extend(common::espeak_16k(
        dir.path(),
        "fr",
        "Quelle est la capitale de l'Australie ?",
    ));
    pcm.extend(silence(20_000));
    let wav = dir.path().join("french.wav");
    common::write_wav(&wav, 16_000, &pcm);
    let out = state.path().join("answers.wav");
    let r = common::command_in(state.path())
        .args(["run", "--json", "--realtime", "--input"])
        .arg(&wav)
        .arg("--output")
        .arg(&out)
        .env("PANDA_LLM__URL", llm.url())
        .env("PANDA_TTS__LANGUAGE_VOICES__FR", "af_heart")
        .output()
        .unwrap();
    let run = common::Run::from_output(r);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let routes: Vec<&str> = run
        .of_type("route")
        .iter()
        .map(|e| e["target"].as_str().unwrap())
        .collect();
    assert_eq!(routes, ["skill:language", "llm"], "{}", run.stdout);
    let transcripts: Vec<String> = run
        .of_type("transcript")
        .iter()
        .map(|e| e["text"].as_str().unwrap().to_lowercase())
        .collect();
    println!("transcripts: {transcripts:?}");
    let question = &transcripts[transcripts.len() - 1];
    assert!(
        question.contains("capitale") && question.contains("australie"),
        "the question was not heard in French: {question}"
    );
    let answers = common::answers(&run);
    assert_eq!(answers.len(), 2, "{answers:?}");
    assert!(answers[0].contains("français"), "{answers:?}");
    assert_eq!(answers[1], "La capitale de l'Australie est Canberra.");
    // The model was told to answer in French, and given the French question.
    let bodies = asked.lock().unwrap().clone();
    assert_eq!(bodies.len(), 1, "{bodies:?}");
    assert!(
        bodies[0].contains("French") && bodies[0].to_lowercase().contains("capitale"),
        "{}",
        bodies[0]
    );
    // Both answers were spoken whole.
    let spoken = run.of_type("spoken");
    assert_eq!(spoken.len(), 2, "{}", run.stdout);
    assert!(
        spoken[1]["heard"].as_str().unwrap().contains("Canberra"),
        "{spoken:?}"
    );
    // And spoken as French is read (an English voice lent to French has an accent —
    // Whisper base heard "Canberra" as "qu'en béha" — but "d'accord" is clear). The two
    // answers lie in one file, their gap set by the turn's timing, and Whisper sometimes
    // runs them together ("je parle" became "j'appelais la capitale" in one CI run), so
    // beside "d'accord" any French word of either answer shows the French reading.
    let heard = common::command()
        .arg("transcribe")
        .arg(&out)
        .env("PANDA_STT__LANGUAGE", "fr")
        .output()
        .unwrap();
    assert!(
        heard.status.success(),
        "{}",
        String::from_utf8_lossy(&heard.stderr)
    );
    let text = String::from_utf8_lossy(&heard.stdout).to_lowercase();
    println!("answers as transcribed: {text}");
    let french_word = ["parle", "français", "francais", "capitale", "australie"]
        .iter()
        .any(|w| text.contains(w));
    assert!(text.contains("d'accord") && french_word, "{text}");
}
