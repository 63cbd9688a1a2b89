//! Panda's Wyoming servers (`panda serve --wyoming`) against the PyPI `wyoming` client
//! (the library Home Assistant speaks it with) and against malformed and flooding peers.
//!
//! The client is `tests/it/wyoming_client.py`, run by the Python in `WYOMING_PYTHON`
//! (`scripts/test.sh` installs `wyoming` 1.10.2 into a virtual environment and sets it;
//! without it these tests skip, or fail when `REQUIRE_WYOMING=1`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common;

/// A running `panda serve --wyoming`.
struct Server {
    child: Child,
    addr: String,
}

impl Server {
    /// Starts the server on a free port with `services` and extra environment.
    fn start(services: &str, env: &[(&str, &str)]) -> Server {
        let mut cmd = common::command();
        cmd.args([
            "serve",
            "--wyoming",
            "tcp://127.0.0.1:0",
            "--services",
            services,
        ])
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("running panda serve");
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        let addr = loop {
            line.clear();
            if err.read_line(&mut line).unwrap_or(0) == 0 {
                let _ = child.kill();
                panic!("panda serve ended before serving");
            }
            if let Some(i) = line.find(" on tcp://") {
                break line[i + 4..].trim().to_string();
            }
        };
        // Keep draining stderr so the server never blocks on it.
        std::thread::spawn(move || {
            let mut sink = String::new();
            while err.read_line(&mut sink).unwrap_or(0) > 0 {
                sink.clear();
            }
        });
        Server { child, addr }
    }

    fn host_port(&self) -> &str {
        self.addr.trim_start_matches("tcp://")
    }

    /// Resident memory of the server process, in KiB.
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Python with the `wyoming` package, or `None` (skip) where the setup did not make
/// one and it is not required.
fn python() -> Option<PathBuf> {
    match std::env::var_os("WYOMING_PYTHON") {
        Some(p) => Some(PathBuf::from(p)),
        None if std::env::var("REQUIRE_WYOMING").as_deref() == Ok("1") => {
            panic!("WYOMING_PYTHON is not set (scripts/test.sh installs the wyoming client)")
        }
        None => {
            eprintln!("skipped: WYOMING_PYTHON is not set");
            None
        }
    }
}

/// Runs one client command; its JSON answer.
fn client(py: &Path, server: &Server, args: &[&str]) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/wyoming_client.py");
    let out = Command::new(py)
        .arg(script)
        .arg(&server.addr)
        .args(args)
        .output()
        .expect("running the wyoming client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "client {args:?}: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("client {args:?}: {e}: {stdout}"))
}

fn text_of(v: &Value) -> String {
    v["text"].as_str().unwrap_or_default().to_lowercase()
}

#[test]
fn the_python_wyoming_client_transcribes_synthesises_and_detects_through_panda() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start("asr,tts,wake", &[]);

    let info = client(&py, &server, &["info"]);
    assert!(
        info["asr"].as_array().unwrap().contains(&"tiny.en".into()),
        "{info}"
    );
    assert!(
        info["tts"].as_array().unwrap().contains(&"af_heart".into()),
        "{info}"
    );
    assert_eq!(info["wake"], serde_json::json!(["hey_panda"]), "{info}");
    println!("info in {:.1} ms", info["ms"].as_f64().unwrap());

    // A question recorded at 22,050 Hz (the server resamples) → its transcript.
    let q = common::espeak_wav(
        dir.path(),
        "question",
        "en-gb",
        &["What is the capital of France?"],
        0,
    );
    let t = client(&py, &server, &["transcribe", q.to_str().unwrap(), "en"]);
    let text = text_of(&t);
    assert!(text.contains("capital") && text.contains("france"), "{t}");
    assert_eq!(t["events"][0], "transcript-start", "{t}");

    // Synthesis, plain and streamed, heard back by the server's own Whisper.
    let plain = dir.path().join("plain.wav");
    let s = client(
        &py,
        &server,
        &[
            "synthesize",
            "The weather is sunny and warm today.",
            plain.to_str().unwrap(),
        ],
    );
    assert_eq!(s["audio_groups"], 1, "{s}");
    assert_eq!(s["rate"], 24_000, "{s}");
    let back = client(&py, &server, &["transcribe", plain.to_str().unwrap()]);
    assert!(
        text_of(&back).contains("weather") && text_of(&back).contains("sunny"),
        "{back}"
    );
    let streamed = dir.path().join("streamed.wav");
    let s = client(
        &py,
        &server,
        &[
            "synthesize",
            "Rivers run to the sea. Mountains rise above the clouds. Birds sing in the morning.",
            streamed.to_str().unwrap(),
            "--stream",
            "bm_george",
        ],
    );
    // One audio group per sentence, the first before the text was complete.
    assert_eq!(s["audio_groups"], 3, "{s}");
    let back = client(&py, &server, &["transcribe", streamed.to_str().unwrap()]);
    let heard = text_of(&back);
    for w in ["rivers", "mountains", "birds"] {
        assert!(heard.contains(w), "{w}: {back}");
    }

    // An unknown voice is a clear error, not a silent default.
    let bad = client(
        &py,
        &server,
        &["synthesize", "Hello.", plain.to_str().unwrap(), "xx_nobody"],
    );
    assert!(
        bad["error"]["text"]
            .as_str()
            .unwrap_or("")
            .contains("xx_nobody"),
        "{bad}"
    );

    // The wake word: one detection over "hey panda", none over other speech.
    let mut pcm = vec![0i16; 16_000];
    pcm.extend(common::kokoro_speech(
        dir.path(),
        "wake",
        "am_michael",
        &["Hey panda.", "What time is it?"],
        &[500, 1500],
    ));
    let wake = dir.path().join("wake.wav");
    common::write_wav(&wake, 16_000, &pcm);
    let d = client(&py, &server, &["detect", wake.to_str().unwrap()]);
    let found = d["detections"].as_array().unwrap();
    assert_eq!(found.len(), 1, "{d}");
    assert_eq!(found[0]["name"], "hey_panda", "{d}");
    let at = found[0]["timestamp"].as_u64().unwrap();
    assert!((1_000..3_500).contains(&at), "detected at {at} ms: {d}");
    let other = dir.path().join("other.wav");
    let mut pcm = vec![0i16; 8_000];
    pcm.extend(common::kokoro_speech(
        dir.path(),
        "other",
        "am_michael",
        &["What time is it?", "Tell me about the weather."],
        &[500, 1000],
    ));
    common::write_wav(&other, 16_000, &pcm);
    let d = client(&py, &server, &["detect", other.to_str().unwrap()]);
    assert_eq!(d["detections"], serde_json::json!([]), "{d}");
}

/// Sends raw bytes on a new connection and reads every event until the server closes
/// it (or 10 s pass): the events' types and data.
fn exchange(addr: &str, bytes: &[u8], close_write: bool) -> Vec<(String, Value)> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(bytes).unwrap();
    if close_write {
        s.shutdown(std::net::Shutdown::Write).unwrap();
    }
    read_events(&mut s)
}

/// Reads events (header line, data block, payload) until EOF or a read timeout.
fn read_events(s: &mut TcpStream) -> Vec<(String, Value)> {
    let mut r = BufReader::new(s);
    let mut out = Vec::new();
    loop {
        let mut line = String::new();
        match r.read_line(&mut line) {
            Ok(0) | Err(_) => return out,
            Ok(_) => {}
        }
        let header: Value = serde_json::from_str(&line).expect("the server writes JSON");
        let mut data = header["data"].clone();
        if let Some(n) = header["data_length"].as_u64() {
            let mut block = vec![0u8; n as usize];
            r.read_exact(&mut block).unwrap();
            data = serde_json::from_slice(&block).unwrap();
        }
        if let Some(n) = header["payload_length"].as_u64() {
            let mut p = vec![0u8; n as usize];
            r.read_exact(&mut p).unwrap();
        }
        let kind = header["type"].as_str().unwrap().to_string();
        let done = kind == "pong";
        out.push((kind, data));
        if done {
            return out;
        }
    }
}

fn kinds(evs: &[(String, Value)]) -> Vec<&str> {
    evs.iter().map(|(k, _)| k.as_str()).collect()
}

#[test]
fn malformed_frames_close_only_their_connection_and_floods_are_refused() {
    let server = Server::start("asr", &[("PANDA_WYOMING__MAX_CONNECTIONS", "16")]);
    let addr = server.host_port().to_string();
    let ping = b"{\"type\":\"ping\",\"data\":{\"text\":\"still here\"}}\n";

    // Each malformed frame: an error naming what was wrong, then the connection closes.
    for (what, bytes, want) in [
        (
            "not JSON",
            b"this is not json\n".to_vec(),
            "not a JSON object",
        ),
        ("no type", b"{\"data\":{}}\n".to_vec(), "type"),
        (
            "data not an object",
            b"{\"type\":\"transcribe\",\"data\":[1,2]}\n".to_vec(),
            "not an object",
        ),
        (
            "payload past the cap",
            b"{\"type\":\"audio-chunk\",\"payload_length\":100000000}\n".to_vec(),
            "payload_length",
        ),
        (
            "negative length",
            b"{\"type\":\"audio-chunk\",\"data_length\":-5}\n".to_vec(),
            "data_length",
        ),
        (
            "truncated payload",
            b"{\"type\":\"audio-chunk\",\"payload_length\":1000}\n0123456789".to_vec(),
            "ended inside a frame",
        ),
    ] {
        let evs = exchange(&addr, &bytes, true);
        assert_eq!(kinds(&evs), ["error"], "{what}: {evs:?}");
        let text = evs[0].1["text"].as_str().unwrap_or("");
        assert!(text.contains(want), "{what}: {text}");
    }
    // A header line past 1 MiB is refused without reading it whole.
    let mut long = b"{\"type\":\"describe\",\"pad\":\"".to_vec();
    long.extend(std::iter::repeat_n(b'x', 2 << 20));
    let evs = exchange(&addr, &long, false);
    assert_eq!(kinds(&evs), ["error"], "{evs:?}");

    // Bad audio is an error on a connection that goes on serving; unknown events are
    // ignored.
    let mut bytes =
        b"{\"type\":\"audio-start\",\"data\":{\"rate\":16000,\"width\":2,\"channels\":2}}\n"
            .to_vec();
    bytes.extend(b"{\"type\":\"audio-chunk\",\"data\":{\"rate\":16000,\"width\":2,\"channels\":2},\"payload_length\":3}\nabc");
    bytes.extend(
        b"{\"type\":\"audio-start\",\"data\":{\"rate\":16000,\"width\":3,\"channels\":1}}\n",
    );
    bytes.extend(b"{\"type\":\"some-future-event\",\"data\":{\"x\":null}}\n");
    bytes.extend(ping);
    let evs = exchange(&addr, &bytes, false);
    assert_eq!(kinds(&evs), ["error", "error", "pong"], "{evs:?}");
    assert!(
        evs[0].1["text"].as_str().unwrap().contains("whole frames"),
        "{evs:?}"
    );
    assert!(
        evs[1].1["text"].as_str().unwrap().contains("width 3"),
        "{evs:?}"
    );
    assert_eq!(evs[2].1["text"], "still here");

    // A flood of idle connections: the first 16 are served, the rest refused at once
    // with `busy`; memory stays bounded; once they go, the server serves again.
    let rss_before = server.rss_kib();
    let mut held = Vec::new();
    let mut busy = 0;
    for _ in 0..1000 {
        let mut s = TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut b = [0u8; 256];
        if let Ok(n) = s.read(&mut b)
            && n > 0
            && String::from_utf8_lossy(&b[..n]).contains("\"error\"")
        {
            busy += 1;
        }
        held.push(s);
        if held.len() == 16 {
            // The served ones are idle: nothing comes back on them.
            assert_eq!(busy, 0, "refused before the limit");
        }
    }
    let rss_flood = server.rss_kib();
    assert_eq!(busy, 1000 - 16, "refused connections");
    println!(
        "1000 connections: {busy} refused; server memory {} → {} MiB",
        rss_before / 1024,
        rss_flood / 1024
    );
    assert!(
        rss_flood < rss_before + 64 * 1024,
        "memory grew from {rss_before} to {rss_flood} KiB"
    );
    drop(held);
    let t = Instant::now();
    loop {
        let evs = exchange(&addr, ping, false);
        if kinds(&evs) == ["pong"] {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "never served again: {evs:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn an_idle_connection_is_closed_with_an_error() {
    let server = Server::start("asr", &[("PANDA_WYOMING__IDLE_TIMEOUT_MS", "500")]);
    let t = Instant::now();
    let evs = exchange(server.host_port(), b"", false);
    assert_eq!(kinds(&evs), ["error"], "{evs:?}");
    assert_eq!(evs[0].1["code"], "idle");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}

#[test]
fn the_appliance_serves_wyoming_with_its_own_models_and_still_shuts_down_in_time() {
    let dir = tempfile::tempdir().unwrap();
    let silence = dir.path().join("silence.wav");
    common::write_wav(&silence, 16_000, &vec![0i16; 16_000 * 300]);
    // A free port (bound and released; the appliance binds it next).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = common::command_in(dir.path())
        .args(["run", "--json", "--realtime", "--no-web", "--input"])
        .arg(&silence)
        .arg("--output")
        .arg(dir.path().join("out.wav"))
        .env("PANDA_WYOMING__LISTEN", format!("tcp://{addr}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while TcpStream::connect(&addr).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "the appliance never served Wyoming"
        );
        assert!(child.try_wait().unwrap().is_none(), "panda run ended");
        std::thread::sleep(Duration::from_millis(200));
    }
    let evs = exchange(&addr, b"{\"type\":\"describe\"}\n", false);
    assert_eq!(evs[0].0, "info", "{evs:?}");
    assert_eq!(evs[0].1["tts"][0]["name"], "panda-tts", "{evs:?}");

    // Kokoro (the appliance's) speaks; Whisper (the appliance's) hears it back.
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(b"{\"type\":\"synthesize\",\"data\":{\"text\":\"The library opens at nine in the morning.\"}}\n")
        .unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut pcm = Vec::new();
    loop {
        let mut line = String::new();
        assert!(r.read_line(&mut line).unwrap() > 0, "connection closed");
        let h: Value = serde_json::from_str(&line).unwrap();
        if let Some(n) = h["data_length"].as_u64() {
            let mut b = vec![0u8; n as usize];
            r.read_exact(&mut b).unwrap();
        }
        if let Some(n) = h["payload_length"].as_u64() {
            let mut b = vec![0u8; n as usize];
            r.read_exact(&mut b).unwrap();
            pcm.extend(b);
        }
        if h["type"] == "audio-stop" {
            break;
        }
        assert_ne!(h["type"], "error", "{line}");
    }
    assert!(pcm.len() > 24_000 * 2, "{} bytes of audio", pcm.len());
    let fmt = "\"rate\":24000,\"width\":2,\"channels\":1";
    let mut req = format!(
        "{{\"type\":\"transcribe\",\"data\":{{\"language\":\"en\"}}}}\n{{\"type\":\"audio-start\",\"data\":{{{fmt}}}}}\n"
    )
    .into_bytes();
    for chunk in pcm.chunks(4096) {
        req.extend(
            format!(
                "{{\"type\":\"audio-chunk\",\"data\":{{{fmt}}},\"payload_length\":{}}}\n",
                chunk.len()
            )
            .bytes(),
        );
        req.extend_from_slice(chunk);
    }
    req.extend(b"{\"type\":\"audio-stop\"}\n");
    s.write_all(&req).unwrap();
    let text = loop {
        let mut line = String::new();
        assert!(r.read_line(&mut line).unwrap() > 0, "connection closed");
        let h: Value = serde_json::from_str(&line).unwrap();
        let mut data = h["data"].clone();
        if let Some(n) = h["data_length"].as_u64() {
            let mut b = vec![0u8; n as usize];
            r.read_exact(&mut b).unwrap();
            data = serde_json::from_slice(&b).unwrap();
        }
        if h["type"] == "transcript" {
            break data["text"].as_str().unwrap_or("").to_lowercase();
        }
        assert_ne!(h["type"], "error", "{data}");
    };
    assert!(
        text.contains("library") && (text.contains("nine") || text.contains('9')),
        "heard {text:?}"
    );

    // SIGTERM: the server never holds Kokoro's edge, so the shutdown order holds.
    let t = Instant::now();
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            // Exited by itself (a recording with no question ends with 65, "nothing
            // to answer"), not killed.
            assert!(status.code().is_some(), "{status:?}");
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "panda run did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("SIGTERM → exit in {:?}", t.elapsed());
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
}

/// `wyoming-faster-whisper` (PyPI) on the CTranslate2 tiny.en the installer fetched
/// (`CT2_TINY_EN_DIR`, set by `scripts/test.sh`), serving on a free port; the child
/// is shared so a test can kill it mid-request.
struct FasterWhisper {
    child: std::sync::Arc<std::sync::Mutex<Child>>,
    port: u16,
}

impl Drop for FasterWhisper {
    fn drop(&mut self) {
        let mut c = self.child.lock().unwrap_or_else(|e| e.into_inner());
        let _ = c.kill();
        let _ = c.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts wyoming-faster-whisper and waits until it answers `describe`; `None` (skip)
/// where the setup did not install it and `REQUIRE_WYOMING` is not 1.
fn faster_whisper() -> Option<FasterWhisper> {
    let required = std::env::var("REQUIRE_WYOMING").as_deref() == Ok("1");
    let (Some(py), Some(model)) = (
        std::env::var_os("WYOMING_PYTHON"),
        std::env::var_os("CT2_TINY_EN_DIR"),
    ) else {
        assert!(
            !required,
            "WYOMING_PYTHON and CT2_TINY_EN_DIR must be set (scripts/test.sh sets them)"
        );
        eprintln!("skipped: WYOMING_PYTHON or CT2_TINY_EN_DIR is not set");
        return None;
    };
    let port = free_port();
    let data = tempfile::tempdir().unwrap();
    let child = Command::new(&py)
        .args(["-m", "wyoming_faster_whisper", "--uri"])
        .arg(format!("tcp://127.0.0.1:{port}"))
        .arg("--model")
        .arg(&model)
        .arg("--data-dir")
        .arg(data.path())
        .args([
            "--local-files-only",
            "--language",
            "en",
            "--beam-size",
            "1",
            "--compute-type",
            "int8",
            "--device",
            "cpu",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("running wyoming-faster-whisper");
    let fw = FasterWhisper {
        child: std::sync::Arc::new(std::sync::Mutex::new(child)),
        port,
    };
    let t = Instant::now();
    loop {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(b"{\"type\": \"describe\"}\n").unwrap();
            let mut line = String::new();
            let _ = BufReader::new(&mut s).read_line(&mut line);
            if line.contains("\"info\"") {
                return Some(fw);
            }
        }
        let exited = fw.child.lock().unwrap().try_wait().unwrap();
        assert!(
            exited.is_none() && t.elapsed() < Duration::from_secs(120),
            "wyoming-faster-whisper did not start (exit {exited:?}) within 120 s"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A TCP proxy in front of `upstream` that, on its `cut_on`-th connection (from 1), kills
/// `victim` once the request's audio has all arrived (before `audio-stop` passes on):
/// the server dies mid-request, deterministically, and the proxy stops listening.
/// Returns the proxy's port.
fn cutting_proxy(
    upstream: u16,
    cut_on: usize,
    victim: std::sync::Arc<std::sync::Mutex<Child>>,
) -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    // Once the server is killed the proxy stops listening too, so the next request
    // finds nobody there (connection refused), as it would without a proxy.
    let dead = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    l.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let mut i = 0;
        while !dead.load(std::sync::atomic::Ordering::SeqCst) {
            let Ok((mut client, _)) = l.accept() else {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            };
            i += 1;
            client.set_nonblocking(false).unwrap();
            let Ok(mut server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                continue;
            };
            let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut s2, &mut c2);
                let _ = c2.shutdown(std::net::Shutdown::Both);
            });
            let (victim, dead) = (victim.clone(), dead.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                let mut tail: Vec<u8> = Vec::new();
                loop {
                    let n = match client.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    tail.extend_from_slice(&buf[..n]);
                    let seen = tail.windows(12).any(|w| w == b"\"audio-stop\"");
                    if i == cut_on && seen {
                        let mut v = victim.lock().unwrap_or_else(|e| e.into_inner());
                        let _ = v.kill();
                        let _ = v.wait();
                        dead.store(true, std::sync::atomic::Ordering::SeqCst);
                        break;
                    }
                    let keep = tail.len().saturating_sub(16);
                    tail.drain(..keep);
                    if server.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = server.shutdown(std::net::Shutdown::Both);
                let _ = client.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    port
}

#[test]
fn a_remote_wyoming_asr_hears_the_question_and_the_local_whisper_takes_over_when_it_dies() {
    let Some(fw) = faster_whisper() else { return };
    // Question 1 through wyoming-faster-whisper; during question 2 the server is killed
    // (after the audio arrived, before the transcript); question 3 finds nobody there.
    let proxy = cutting_proxy(fw.port, 2, fw.child.clone());
    let dir = tempfile::tempdir().unwrap();
    let question = panda::audio::file::read_16k_mono(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hey-panda-what-time.wav"),
    )
    .unwrap();
    let gap = vec![0i16; 16_000 * 6];
    let mut pcm = Vec::new();
    for _ in 0..3 {
        pcm.extend_from_slice(&question);
        pcm.extend_from_slice(&gap);
    }
    // Silence after the last question keeps the appliance up for the status page.
    pcm.extend(std::iter::repeat_n(0i16, 16_000 * 60));
    let input = dir.path().join("three-questions.wav");
    common::write_wav(&input, 16_000, &pcm);

    let token = "wyoming-backend-token";
    let mut child = common::command_in(dir.path())
        .args(["run", "--json", "--web", "--realtime", "--input"])
        .arg(&input)
        .arg("--output")
        .arg(dir.path().join("out.wav"))
        .env("PANDA_STT__BACKEND", "wyoming")
        .env("PANDA_STT__WYOMING_URL", format!("tcp://127.0.0.1:{proxy}"))
        .env("PANDA_WEB__LISTEN", "127.0.0.1:0")
        .env("PANDA_WEB__TOKEN", token)
        .env("RUST_LOG", "panda=info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Value>::new()));
    let (url_tx, url_rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let log_sink = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(url) = common::status_page_url(&line) {
                let _ = url_tx.send(url);
            }
            let mut l = log_sink.lock().unwrap();
            l.push_str(&line);
            l.push('\n');
        }
    });
    let stdout = child.stdout.take().unwrap();
    let sink = events.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                sink.lock().unwrap().push(v);
            }
        }
    });
    let Ok(url) = url_rx.recv_timeout(Duration::from_secs(120)) else {
        let _ = child.kill();
        panic!(
            "the appliance did not print its status page address:\n{}",
            log.lock().unwrap()
        );
    };
    let of_type = |t: &str| -> Vec<Value> {
        let evs = events.lock().unwrap();
        evs.iter().filter(|e| e["type"] == t).cloned().collect()
    };
    let t = Instant::now();
    while of_type("route").len() < 3 && t.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(200));
    }
    let status: Value = reqwest::blocking::Client::new()
        .get(format!("{url}/api/status"))
        .bearer_auth(token)
        .send()
        .unwrap()
        .json()
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    for e in events.lock().unwrap().iter() {
        if ["remote", "transcript", "breaker", "route"].contains(&e["type"].as_str().unwrap_or(""))
        {
            println!("{e}");
        }
    }
    let remote = of_type("remote");
    let oks: Vec<bool> = remote.iter().map(|e| e["ok"].as_bool().unwrap()).collect();
    assert_eq!(oks, [true, false, false], "{remote:?}");
    let transcripts = of_type("transcript");
    assert_eq!(transcripts.len(), 3, "{transcripts:?}");
    for t in &transcripts {
        let text = t["text"].as_str().unwrap().to_lowercase();
        assert!(
            text.contains("time"),
            "every question heard, remote or local: {text}"
        );
    }
    let routes = of_type("route");
    assert!(
        routes.iter().all(|r| r["target"] == "skill:time"),
        "{routes:?}"
    );
    // Two failures in a row open the breaker; the status page says so and why.
    assert!(
        of_type("breaker")
            .iter()
            .any(|b| b["agent"] == "stt" && b["state"] == "open"),
        "{:?}",
        of_type("breaker")
    );
    let stt = &status["stt"];
    assert_eq!(stt["backend"], "wyoming", "{status}");
    // Open, or already half-open when the 5 s backoff ran out before this read (the
    // local fallbacks are slow on a loaded machine): either way not trusted.
    assert!(
        stt["breaker"] == "open" || stt["breaker"] == "half_open",
        "{stt}"
    );
    assert_eq!(stt["remote_ok"], 1, "{stt}");
    assert_eq!(stt["fallbacks"], 2, "{stt}");
    assert!(
        stt["last_error"].as_str().unwrap_or("").contains("connect"),
        "the last failure was nobody listening: {stt}"
    );
    let log = status["log"].to_string();
    assert!(log.contains("the local Whisper heard it"), "{log}");
}

/// `panda say` with its voice from a remote Wyoming TTS (here another Panda's `panda
/// serve`); with the server gone, Kokoro speaks every sentence and the breaker opens.
#[test]
fn a_remote_wyoming_tts_speaks_the_answer_and_kokoro_takes_over_when_it_is_gone() {
    let server = Server::start("tts", &[]);
    let dir = tempfile::tempdir().unwrap();
    let text = "The river runs past the old mill. Seven green boats sail by the bridge. \
                The baker sells warm bread.";
    let say = |out: &Path| {
        let r = common::command_in(dir.path())
            .args(["say", "--json", "-o"])
            .arg(out)
            .arg(text)
            .env("PANDA_TTS__BACKEND", "wyoming")
            .env("PANDA_TTS__WYOMING_URL", &server.addr)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        let run = common::Run::from_output(r);
        assert_eq!(run.code, 0, "{}", run.stderr);
        run
    };
    let heard = |wav: &Path| {
        common::panda(&["transcribe", wav.to_str().unwrap()])
            .stdout
            .to_lowercase()
    };

    let remote_wav = dir.path().join("remote.wav");
    let run = say(&remote_wav);
    let remote = run.of_type("remote");
    assert_eq!(remote.len(), 3, "a request per sentence: {remote:?}");
    assert!(
        remote
            .iter()
            .all(|r| r["ok"] == true && r["stage"] == "tts"),
        "{remote:?}"
    );
    let words = heard(&remote_wav);
    println!("remote: {words:?}");
    for w in ["river", "boats", "bread"] {
        assert!(words.contains(w), "{w} in {words:?}");
    }

    // The server is gone: the first two sentences fail to connect (the breaker opens
    // on the second), the third goes straight to Kokoro; every word is still spoken.
    let addr = server.addr.clone();
    drop(server);
    let local_wav = dir.path().join("local.wav");
    let r = common::command_in(dir.path())
        .args(["say", "--json", "-o"])
        .arg(&local_wav)
        .arg(text)
        .env("PANDA_TTS__BACKEND", "wyoming")
        .env("PANDA_TTS__WYOMING_URL", &addr)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let run = common::Run::from_output(r);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let remote = run.of_type("remote");
    let oks: Vec<bool> = remote.iter().map(|r| r["ok"].as_bool().unwrap()).collect();
    assert_eq!(oks, [false, false], "{remote:?}");
    assert!(
        remote[0]["error"].as_str().unwrap().contains("connect"),
        "{remote:?}"
    );
    assert!(
        run.of_type("breaker")
            .iter()
            .any(|b| b["agent"] == "tts" && b["state"] == "open"),
        "{:?}",
        run.of_type("breaker")
    );
    let words = heard(&local_wav);
    println!("fallback: {words:?}");
    for w in ["river", "boats", "bread"] {
        assert!(words.contains(w), "{w} in {words:?}");
    }
}

/// `[wyoming] zeroconf`: the server is found the way Home Assistant finds it (an mDNS
/// browse for `_wyoming._tcp.local.`), answers `describe` at the address found, and is
/// withdrawn (a goodbye, seen as the service's removal) when it stops.
#[test]
fn zeroconf_announces_the_server_and_withdraws_it_on_shutdown() {
    let name = format!("panda-test-{}", std::process::id());
    let server = Server::start(
        "tts",
        &[
            ("PANDA_WYOMING__ZEROCONF", "true"),
            ("PANDA_WYOMING__ZEROCONF_NAME", &name),
        ],
    );
    let port: u16 = server
        .host_port()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let mdns = mdns_sd::ServiceDaemon::new().expect("an mDNS daemon for the test");
    let events = mdns.browse("_wyoming._tcp.local.").unwrap();
    let fullname = format!("{name}._wyoming._tcp.local.");
    let next = |what: &str, pred: &dyn Fn(&mdns_sd::ServiceEvent) -> bool| {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(15) {
            if let Ok(ev) = events.recv_timeout(Duration::from_millis(250))
                && pred(&ev)
            {
                return ev;
            }
        }
        panic!("no {what} within 15 s");
    };
    let found = next(
        "resolution",
        &|ev| matches!(ev, mdns_sd::ServiceEvent::ServiceResolved(s) if s.get_fullname() == fullname),
    );
    let mdns_sd::ServiceEvent::ServiceResolved(info) = found else {
        unreachable!()
    };
    assert_eq!(info.get_port(), port, "{info:?}");
    let ip = info
        .get_addresses_v4()
        .into_iter()
        .next()
        .expect("an IPv4 address announced");
    // The address found is where the server answers (it binds 127.0.0.1 here, so the
    // announced address is loopback).
    let evs = exchange(
        &format!("{ip}:{port}"),
        b"{\"type\":\"describe\"}\n{\"type\":\"ping\"}\n",
        false,
    );
    assert_eq!(kinds(&evs), ["info", "pong"]);

    // SIGTERM: the server withdraws the service before it exits.
    let pid = server.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    next(
        "removal",
        &|ev| matches!(ev, mdns_sd::ServiceEvent::ServiceRemoved(_, n) if *n == fullname),
    );
    let _ = mdns.shutdown();
}

/// A microphone on a child's stdin: an endless 16 kHz WAV of silence at real time, with
/// speech spliced in when asked; closing it ends the recording.
struct Mic {
    speech: std::sync::mpsc::Sender<Vec<i16>>,
    thread: std::thread::JoinHandle<()>,
}

impl Mic {
    fn start(mut stdin: std::process::ChildStdin) -> Mic {
        let (tx, rx) = std::sync::mpsc::channel::<Vec<i16>>();
        let thread = std::thread::spawn(move || {
            let mut h = Vec::with_capacity(44);
            h.extend_from_slice(b"RIFF");
            h.extend_from_slice(&u32::MAX.to_le_bytes());
            h.extend_from_slice(b"WAVEfmt ");
            for (v, n) in [
                (16u32, 4),
                (1, 2),
                (1, 2),
                (16_000, 4),
                (32_000, 4),
                (2, 2),
                (16, 2),
            ] {
                h.extend_from_slice(&v.to_le_bytes()[..n]);
            }
            h.extend_from_slice(b"data");
            h.extend_from_slice(&(u32::MAX - 1).to_le_bytes());
            if stdin.write_all(&h).is_err() {
                return;
            }
            let start = Instant::now();
            let mut sent_ms = 0u64;
            loop {
                let pcm = match rx.try_recv() {
                    Ok(p) => p,
                    Err(std::sync::mpsc::TryRecvError::Empty) => vec![0i16; 320],
                    Err(_) => return, // closed: the recording ends
                };
                for chunk in pcm.chunks(320) {
                    let bytes: Vec<u8> = chunk.iter().flat_map(|s| s.to_le_bytes()).collect();
                    if stdin.write_all(&bytes).is_err() {
                        return;
                    }
                    sent_ms += chunk.len() as u64 / 16;
                    let due = start + Duration::from_millis(sent_ms);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                }
            }
        });
        Mic { speech: tx, thread }
    }

    fn say(&self, pcm: Vec<i16>) {
        self.speech.send(pcm).unwrap();
    }

    fn close(self) {
        drop(self.speech);
        let _ = self.thread.join();
    }
}

/// What a failed child said on stderr (it is killed first).
fn hub_err(child: &mut Child) -> String {
    let _ = child.kill();
    let mut s = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut s);
    }
    s
}

/// Lines of a child's stdout, as they come.
fn lines_of(out: impl Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

#[test]
fn a_hub_answers_what_the_satellite_hears_and_panda_answers_itself_without_one() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let ask = |parts: &[&str], name: &str| {
        common::kokoro_speech(dir.path(), name, "am_michael", parts, &[900, 1500])
    };
    let time_q = ask(&["Hey panda.", "What time is it?"], "time");
    let france_q = ask(&["Hey panda.", "What is the capital of France?"], "france");
    // The hub's answer: Kokoro's voice at Home Assistant's TTS rate.
    let answer_wav = dir.path().join("answer.wav");
    let r = common::panda(&[
        "say",
        "Paris is the capital of France.",
        "--rate",
        "22050",
        "-o",
        answer_wav.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);

    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let state = tempfile::tempdir().unwrap();
    let out_wav = dir.path().join("out.wav");
    let mut child = common::command_in(state.path())
        .args(["run", "--satellite", "--json", "--no-web", "--realtime"])
        .args(["--input", "-", "--output"])
        .arg(&out_wav)
        .env("PANDA_SATELLITE__LISTEN", format!("tcp://{addr}"))
        .env("PANDA_LLM__ENABLED", "false")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mic = Mic::start(child.stdin.take().unwrap());
    let events = lines_of(child.stdout.take().unwrap());
    let mut seen: Vec<Value> = Vec::new();
    // Waits for an event matching `want`, keeping every event seen.
    let mut wait_for = |what: &str, secs: u64, want: &dyn Fn(&Value) -> bool| -> Value {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(secs) {
            if let Ok(line) = events.recv_timeout(Duration::from_millis(200))
                && let Ok(ev) = serde_json::from_str::<Value>(&line)
            {
                seen.push(ev.clone());
                if want(&ev) {
                    return ev;
                }
            }
        }
        panic!("no {what} within {secs} s; events: {seen:#?}");
    };
    let t = Instant::now();
    while TcpStream::connect(&addr).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "the satellite never listened"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // No hub yet: Panda answers itself.
    mic.say(time_q);
    wait_for("local fallback", 60, &|e| {
        e["type"] == "satellite" && e["what"] == "local"
    });
    let route = wait_for("a route", 60, &|e| e["type"] == "route");
    assert_eq!(route["target"], "skill:time", "{route}");
    wait_for("the time spoken", 60, &|e| e["type"] == "spoken");

    // The hub connects (as Home Assistant does) and answers the next question.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/wyoming_client.py");
    let question_wav = dir.path().join("question.wav");
    let mut hub = Command::new(&py)
        .arg(script)
        .arg(format!("tcp://{addr}"))
        .arg("satellite")
        .arg(&question_wav)
        .arg(&answer_wav)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let hub_lines = lines_of(hub.stdout.take().unwrap());
    // The hub's next report, or what it said on stderr when none comes.
    let mut report = |secs: u64, what: &str| -> Value {
        match hub_lines.recv_timeout(Duration::from_secs(secs)) {
            Ok(line) => serde_json::from_str(&line).unwrap(),
            Err(_) => panic!("the hub never got {what}: {}", hub_err(&mut hub)),
        }
    };
    let ready = report(30, "info and a pong");
    let info = &ready["ready"];
    assert!(
        info["satellite"].as_str().is_some_and(|n| !n.is_empty()),
        "{ready}"
    );
    assert_eq!(info["has_vad"], true, "{ready}");
    assert_eq!(info["active_wake_words"][0], "hey_panda", "{ready}");
    assert_eq!(
        info["wake"][0],
        serde_json::json!(["hey_panda", "hey panda"]),
        "{ready}"
    );
    wait_for("the hub running", 10, &|e| {
        e["type"] == "satellite" && e["what"] == "running"
    });

    mic.say(france_q);
    let done = report(120, "`played`");
    println!("hub: {done}");
    let status = hub.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert_eq!(done["run_pipeline"]["start_stage"], "asr", "{done}");
    assert_eq!(done["run_pipeline"]["end_stage"], "tts", "{done}");
    assert_eq!(
        done["run_pipeline"]["wake_word_name"], "hey_panda",
        "{done}"
    );
    assert_eq!(done["format"], serde_json::json!([16000, 2, 1]), "{done}");
    // Pings were answered at once throughout, the answer's playback included.
    assert!(done["pongs"].as_u64().unwrap() >= 2, "{done}");
    assert!(done["max_pong_ms"].as_f64().unwrap() < 1000.0, "{done}");
    // `played` comes once the answer has played (the output is paced in real time),
    // and the hub's pings were answered meanwhile.
    let (played, answer) = (
        done["played_after_ms"].as_f64().unwrap(),
        done["answer_ms"].as_f64().unwrap(),
    );
    assert!(played > answer * 0.8, "{done}");
    let sent = wait_for("the question sent", 10, &|e| {
        e["type"] == "satellite" && e["what"] == "sent"
    });
    let turn = sent["turn"].clone();
    wait_for("played", 30, &|e| {
        e["type"] == "satellite" && e["what"] == "played"
    });
    mic.close();
    let status = child.wait().unwrap();
    for line in events.try_iter() {
        if let Ok(ev) = serde_json::from_str::<Value>(&line) {
            seen.push(ev);
        }
    }
    assert!(status.success(), "{status:?}");
    let of_turn = |t: &str| -> Vec<&Value> {
        seen.iter()
            .filter(|e| e["type"] == t && e["turn"] == turn)
            .collect()
    };
    // The hub's transcript and answer are the turn's; nothing answered it here.
    assert_eq!(
        of_turn("transcript")[0]["text"],
        "What is the capital of France?"
    );
    assert_eq!(of_turn("answer")[0]["source"], "hub");
    assert!(
        of_turn("route").is_empty(),
        "answered locally too: {seen:#?}"
    );
    let spoken = of_turn("spoken");
    assert_eq!(spoken.len(), 1, "{spoken:?}");
    assert_eq!(spoken[0]["interrupted"], false);

    // What the hub received is the question, from the wake word on; what played is
    // the hub's answer.
    let heard = |wav: &Path| {
        common::panda(&["transcribe", wav.to_str().unwrap()])
            .stdout
            .to_lowercase()
    };
    let q = heard(&question_wav);
    assert!(
        q.contains("capital") && q.contains("france"),
        "the hub got {q:?}"
    );
    assert!(
        !q.contains("panda"),
        "the wake phrase went to the hub: {q:?}"
    );
    let a = heard(&out_wav);
    assert!(a.contains("paris"), "played {a:?}");
}
