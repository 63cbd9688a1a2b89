//! The real device path: cpal capture from a PulseAudio virtual microphone (null sink
//! + remap source, DESIGN §7), started by the test in a private runtime directory.
//!
//! Without PulseAudio the test says so loudly; with `REQUIRE_PULSEAUDIO=1` (CI, after
//! `scripts/setup.sh` installed it) a missing sound server is a failure, never a pass.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Pulse {
    /// The daemon; None while it is stopped (device-loss tests).
    child: Option<Child>,
    runtime: tempfile::TempDir,
}

impl Pulse {
    fn server(&self) -> String {
        format!("unix:{}/pulse/native", self.runtime.path().display())
    }
    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("XDG_RUNTIME_DIR", self.runtime.path())
            .env("PULSE_SERVER", self.server());
        c
    }

    /// A runtime directory whose sound server is not running yet.
    fn stopped() -> Pulse {
        Pulse {
            child: None,
            runtime: tempfile::tempdir().unwrap(),
        }
    }

    /// Starts the daemon (a virtual speaker `spk`, a virtual microphone `mic` fed from
    /// the `micfeed` sink) and waits until it answers.
    fn start(&mut self) -> Result<(), String> {
        let script = self.runtime.path().join("panda-test.pa");
        std::fs::write(
            &script,
            "load-module module-native-protocol-unix auth-anonymous=1\n\
             load-module module-null-sink sink_name=spk rate=48000 channels=2\n\
             load-module module-null-sink sink_name=micfeed rate=16000 channels=1\n\
             load-module module-remap-source source_name=mic master=micfeed.monitor\n\
             set-default-sink spk\n\
             set-default-source mic\n",
        )
        .map_err(|e| e.to_string())?;
        let child = Command::new("pulseaudio")
            .args(["--daemonize=no", "--exit-idle-time=-1", "-n", "-F"])
            .arg(&script)
            .env("XDG_RUNTIME_DIR", self.runtime.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run pulseaudio: {e}"))?;
        self.child = Some(child);
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(10) {
            if self
                .cmd("pactl")
                .arg("info")
                .output()
                .is_ok_and(|o| o.status.success())
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err("pulseaudio did not answer within 10 s".into())
    }

    /// Loops the speaker's monitor into the microphone with `latency_ms`, at full level:
    /// a real echo path through the sound server, as a room would make.
    fn loop_speaker_into_mic(&self, latency_ms: u32) {
        let ok = self
            .cmd("pactl")
            .args([
                "load-module",
                "module-loopback",
                "source=spk.monitor",
                "sink=micfeed",
                &format!("latency_msec={latency_ms}"),
            ])
            .status()
            .unwrap()
            .success();
        assert!(ok, "loading the speaker → microphone loopback failed");
        std::thread::sleep(Duration::from_millis(500));
    }

    /// Kills the daemon, as a crashed sound server or an unplugged card would go.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Pulse {
    fn drop(&mut self) {
        self.kill();
    }
}

fn start_pulse() -> Result<Pulse, String> {
    let mut p = Pulse::stopped();
    p.start()?;
    Ok(p)
}

fn pulse_or_skip() -> Option<Pulse> {
    match start_pulse() {
        Ok(p) => Some(p),
        Err(e) if std::env::var("REQUIRE_PULSEAUDIO").is_ok_and(|v| v == "1") => {
            panic!("PulseAudio is required (REQUIRE_PULSEAUDIO=1) but: {e}")
        }
        Err(e) => {
            eprintln!("\n\n*** SKIPPED: real-device test needs PulseAudio: {e} ***\n\n");
            None
        }
    }
}

/// The tests on virtual devices run one at a time: each plays and records in real time,
/// and on a small machine a second one running beside it causes underruns and slow
/// transcription — measuring the machine, not Panda.
static ONE_APPLIANCE: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// What every device test starts from: the one-appliance lock (tests share the machine's
/// CPU and must not hear each other), a private PulseAudio with the virtual microphone
/// and speaker, a runtime for the test's LLM server, and a scratch directory. Fields
/// drop in order: the sound server stops before the lock is released.
struct Rig {
    pulse: Pulse,
    rt: tokio::runtime::Runtime,
    dir: tempfile::TempDir,
    _one: std::sync::MutexGuard<'static, ()>,
}

impl Rig {
    /// None (the test skips, loudly) where PulseAudio cannot run, unless
    /// `REQUIRE_PULSEAUDIO=1` makes that a failure.
    fn start_or_skip() -> Option<Rig> {
        let one = ONE_APPLIANCE.lock().unwrap_or_else(|e| e.into_inner());
        let pulse = pulse_or_skip()?;
        Some(Rig {
            pulse,
            rt: tokio::runtime::Runtime::new().unwrap(),
            dir: tempfile::tempdir().unwrap(),
            _one: one,
        })
    }
}

fn resample_to_16k(src: &Path, dir: &Path) -> PathBuf {
    let pcm = panda::audio::file::read_16k_mono(src).unwrap();
    let out = dir.join("mic.wav");
    std::fs::write(&out, panda::listen::wake::wav_bytes(&pcm)).unwrap();
    out
}

#[test]
fn listen_on_a_virtual_microphone() {
    let Some(rig) = Rig::start_or_skip() else {
        return;
    };
    let Rig { pulse, dir, .. } = &rig;
    let wav = common::espeak_wav(
        dir.path(),
        "q",
        "en-us+m3",
        &["Hey panda.", "What time is it?"],
        700,
    );
    let wav = resample_to_16k(&wav, dir.path());
    let mut listener = pulse
        .cmd(env!("CARGO_BIN_EXE_panda"))
        .args(["listen", "--device", "default", "--seconds", "25"])
        .env("PANDA_MODELS__DIR", common::models_dir())
        .env(
            "RUST_LOG",
            "warn,panda::audio::capture=info,panda::listen::listener=debug",
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Play the question only once capture runs: loading the models can take seconds on a
    // busy machine, and a fixed wait lost the question under load.
    let stderr = listener.stderr.take().unwrap();
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut all = String::new();
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("capture started") {
                let _ = started_tx.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let started = started_rx.recv_timeout(Duration::from_secs(20));
    assert!(started.is_ok(), "capture did not start within 20 s");
    std::thread::sleep(Duration::from_millis(500));
    let played = pulse
        .cmd("paplay")
        .args(["-d", "micfeed"])
        .arg(&wav)
        .status()
        .unwrap();
    assert!(played.success(), "paplay failed");
    let mut r = common::Run::from_output(listener.wait_with_output().unwrap());
    r.stderr = reader.join().unwrap();
    println!("{}{}", r.stdout, r.stderr);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.of_type("wake").len(), 1, "{}", r.stdout);
    let t = r.transcripts();
    assert_eq!(t.len(), 1, "{}", r.stdout);
    assert!(t[0].contains("time"), "{}", r.stdout);
}

#[test]
fn no_sound_server_is_a_clear_error() {
    // With PulseAudio pointed at nothing and no ALSA card, the default device cannot open.
    let out = common::command()
        .args([
            "listen",
            "--device",
            "default",
            "--no-stt",
            "--seconds",
            "3",
        ])
        .env("PULSE_SERVER", "unix:/nonexistent/pulse/native")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        // A machine with a real sound card opens its default device: nothing to test.
        eprintln!("*** SKIPPED: this machine has a working default input device ***");
        return;
    }
    assert_eq!(out.status.code(), Some(69), "{stderr}");
    assert!(stderr.contains("audio"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn daemon_mode_retries_a_missing_device_until_stopped() {
    let out = common::command()
        .args([
            "listen",
            "--device",
            "default",
            "--retry",
            "--no-wake",
            "--no-stt",
            "--seconds",
            "3",
        ])
        .env("PULSE_SERVER", "unix:/nonexistent/pulse/native")
        .env("PANDA_AUDIO__RETRY_DELAY_MS", "500")
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let attempts = stderr.matches("audio capture unavailable").count();
    if attempts == 0 && out.status.success() {
        eprintln!("*** SKIPPED: this machine has a working default input device ***");
        return;
    }
    assert!(
        out.status.success(),
        "stopping a retrying listener is a clean exit: {stderr}"
    );
    assert!(
        attempts >= 3,
        "{attempts} attempts in 3 s at 500 ms: {stderr}"
    );
}

#[test]
fn say_plays_on_a_virtual_speaker() {
    let Some(rig) = Rig::start_or_skip() else {
        return;
    };
    let Rig { pulse, dir, .. } = &rig;
    let raw = dir.path().join("speaker.raw");
    // Record what reaches the speaker (the null sink's monitor) while Panda speaks.
    let mut rec = pulse
        .cmd("parec")
        .args([
            "-d",
            "spk.monitor",
            "--format=s16le",
            "--rate=16000",
            "--channels=1",
        ])
        .stdout(std::fs::File::create(&raw).unwrap())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    let sentence = "The library opens at nine and closes at six tonight.";
    let out = pulse
        .cmd(env!("CARGO_BIN_EXE_panda"))
        .args(["say", sentence])
        .env("PANDA_MODELS__DIR", common::models_dir())
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let _ = rec.kill();
    let _ = rec.wait();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let t = common::panda(&["transcribe", "--raw", raw.to_str().unwrap()]);
    let heard = t.stdout.trim().to_lowercase();
    println!("speaker said: {heard:?}");
    let (e, n) = panda::bench::word_errors(sentence, &heard);
    assert!(e * 10 <= n, "{e}/{n} word errors: {heard:?}");
}

/// `panda run` on the virtual devices, with an OpenAI-protocol LLM server started here;
/// its stdout events are collected on a thread.
struct Appliance {
    child: std::process::Child,
    events: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
    /// Its log (stderr), line by line.
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// The status page's address, when it was started with one.
    web_url: Option<String>,
    _state: tempfile::TempDir,
}

/// The bearer token of the appliance's status page in these tests.
const WEB_TOKEN: &str = "device-test-token-51c2";

impl Appliance {
    fn start(pulse: &Pulse, llm_url: &str) -> Appliance {
        Self::start_with(pulse, llm_url, false)
    }

    /// With `web`, the status page listens on a free loopback port.
    fn start_with(pulse: &Pulse, llm_url: &str, web: bool) -> Appliance {
        let app = Self::spawn(pulse, llm_url, web, &[]);
        app.wait_log("capture started", 1, 60);
        std::thread::sleep(Duration::from_millis(500));
        app
    }

    /// Starts `panda run` without waiting for its devices.
    fn spawn(pulse: &Pulse, llm_url: &str, web: bool, env: &[(&str, &str)]) -> Appliance {
        use std::io::BufRead;
        let state = tempfile::tempdir().unwrap();
        let mut child = pulse
            .cmd(env!("CARGO_BIN_EXE_panda"))
            .args(["run", "--device", "default", "--json"])
            .arg(if web { "--web" } else { "--no-web" })
            .env("PANDA_WEB__LISTEN", "127.0.0.1:0")
            .env("PANDA_WEB__TOKEN", WEB_TOKEN)
            .env("PANDA_MODELS__DIR", common::models_dir())
            .env("PANDA_STATE__DIR", state.path())
            .env("PANDA_LLM__URL", llm_url)
            .env("PANDA_LLM__BACKEND", "openai")
            .env(
                "RUST_LOG",
                "warn,panda::audio=debug,panda::listen=debug,panda::app=debug,panda::think=debug,panda::web=info",
            )
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log2 = log.clone();
        let (url_tx, url_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                log2.lock().unwrap().push(line.clone());
                if let Some(url) = common::status_page_url(&line) {
                    let _ = url_tx.send(url);
                }
                eprintln!("panda: {line}");
            }
        });
        let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let ev2 = events.clone();
        let stdout = child.stdout.take().unwrap();
        let t0 = Instant::now();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if let Ok(mut v) = serde_json::from_str::<serde_json::Value>(&line) {
                    v["_t_ms"] = serde_json::json!(t0.elapsed().as_millis() as u64);
                    ev2.lock().unwrap().push(v);
                }
            }
        });
        let web_url = web.then(|| {
            url_rx
                .recv_timeout(Duration::from_secs(60))
                .expect("the status page address is logged")
        });
        Appliance {
            child,
            events,
            log,
            web_url,
            _state: state,
        }
    }

    /// Waits until the log holds `n` lines containing `what`.
    fn wait_log(&self, what: &str, n: usize, secs: u64) {
        let t = Instant::now();
        loop {
            let seen = self
                .log
                .lock()
                .unwrap()
                .iter()
                .filter(|l| l.contains(what))
                .count();
            if seen >= n {
                return;
            }
            assert!(
                t.elapsed() < Duration::from_secs(secs),
                "{seen} of {n} log lines with {what:?} within {secs} s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits up to `secs` for an event matching `pred`, without failing.
    fn wait_until(&self, secs: u64, pred: impl Fn(&serde_json::Value) -> bool) -> bool {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(secs) {
            if self.events.lock().unwrap().iter().any(&pred) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Waits for an event matching `pred`; returns it.
    fn wait_for(
        &self,
        what: &str,
        secs: u64,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let t = Instant::now();
        loop {
            if let Some(e) = self.events.lock().unwrap().iter().find(|e| pred(e)) {
                return e.clone();
            }
            if t.elapsed() > Duration::from_secs(secs) {
                for e in self.events.lock().unwrap().iter() {
                    if e["type"] != "synthesized" && e["type"] != "sentence" {
                        eprintln!("event: {e}");
                    }
                }
                panic!("no {what} within {secs} s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(5) {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Appliance {
    fn drop(&mut self) {
        // A failed assertion must not leave a daemon running (it retries its device
        // forever once the test's sound server is gone).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Records the virtual speaker (16 kHz mono s16le) from now on.
struct SpeakerRecording {
    child: std::process::Child,
    path: PathBuf,
    started: Instant,
}

fn record_speaker(pulse: &Pulse, dir: &Path) -> SpeakerRecording {
    let path = dir.join("speaker.raw");
    let child = pulse
        .cmd("parec")
        .args([
            "-d",
            "spk.monitor",
            "--format=s16le",
            "--rate=16000",
            "--channels=1",
            "--latency-msec=10",
        ])
        .stdout(std::fs::File::create(&path).unwrap())
        .spawn()
        .unwrap();
    SpeakerRecording {
        child,
        path,
        started: Instant::now(),
    }
}

impl SpeakerRecording {
    fn finish(mut self) -> (Vec<i16>, PathBuf, Instant) {
        std::thread::sleep(Duration::from_millis(300));
        let _ = self.child.kill();
        let _ = self.child.wait();
        let bytes = std::fs::read(&self.path).unwrap();
        let pcm = bytes
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]))
            .collect();
        (pcm, self.path, self.started)
    }
}

/// Plays `parts` (spoken by Kokoro's am_michael, with pauses between them) into the
/// virtual microphone; returns when playback has ended.
fn say_into_mic(pulse: &Pulse, dir: &Path, name: &str, parts: &[&str]) -> Instant {
    play_into_mic(pulse, &mic_wav(dir, name, parts))
}

/// `parts` spoken by am_michael into a 16 kHz WAV for the microphone, made ahead of time.
fn mic_wav(dir: &Path, name: &str, parts: &[&str]) -> PathBuf {
    let pcm = common::kokoro_speech(dir, name, "am_michael", parts, &[600]);
    let mic = dir.join(format!("{name}-16k.wav"));
    std::fs::write(&mic, panda::listen::wake::wav_bytes(&pcm)).unwrap();
    mic
}

/// Plays a WAV into the virtual microphone; returns when playback has ended.
/// Plays `clip` into the microphone until an event matches `heard` within `secs` of it,
/// three tries at most — as a person says again what was not heard. The caller's own
/// wait for the event then fails the test if no try was heard.
fn say_until_heard(
    pulse: &Pulse,
    app: &Appliance,
    clip: &Path,
    secs: u64,
    what: &str,
    heard: impl Fn(&serde_json::Value) -> bool,
) {
    for attempt in 1..=3 {
        play_into_mic(pulse, clip);
        if app.wait_until(secs, &heard) {
            return;
        }
        println!("{what}, try {attempt}, was not heard");
    }
}

fn play_into_mic(pulse: &Pulse, mic: &Path) -> Instant {
    let ok = pulse
        .cmd("paplay")
        .args(["-d", "micfeed"])
        .arg(mic)
        .status()
        .unwrap()
        .success();
    assert!(ok, "paplay failed");
    Instant::now()
}

/// An OpenAI-compatible LLM server that streams `answer(last user message, lower case)`.
fn llm_replying(
    rt: &tokio::runtime::Runtime,
    answer: impl Fn(&str) -> Vec<String> + Send + Sync + 'static,
) -> panda::scripted::Server {
    use panda::scripted::{Reply, Request, openai_stream, serve};
    rt.block_on(serve(std::sync::Arc::new(move |r: &Request| {
        let body = String::from_utf8_lossy(&r.body).to_lowercase();
        // The last user message decides (the history holds earlier questions).
        let last = body
            .rsplit("{\"content\":")
            .find(|m| m.contains("\"role\":\"user\""))
            .unwrap_or("");
        let text = answer(last);
        let refs: Vec<&str> = text.iter().map(String::as_str).collect();
        Reply::Stream {
            content_type: "text/event-stream",
            pieces: openai_stream(&refs, Duration::from_millis(5)),
            die: false,
        }
    })))
    .unwrap()
}

fn llm_server(rt: &tokio::runtime::Runtime, words: usize) -> panda::scripted::Server {
    llm_replying(rt, move |last| {
        if last.contains("france") {
            vec!["The capital of France ".into(), "is Paris.".into()]
        } else {
            // A long answer, for barge-in.
            (0..words)
                .map(|i| {
                    format!(
                        "Sentence {} of a very long story about a patient panda. ",
                        i + 1
                    )
                })
                .collect()
        }
    })
}

#[test]
fn the_appliance_answers_through_a_microphone_and_a_speaker() {
    let Some(rig) = Rig::start_or_skip() else {
        return;
    };
    let Rig { pulse, rt, dir, .. } = &rig;
    let server = llm_server(rt, 10);
    let mut app = Appliance::start(pulse, &server.url());
    let rec = record_speaker(pulse, dir.path());
    say_into_mic(
        pulse,
        dir.path(),
        "time",
        &["Hey panda.", "What time is it?"],
    );
    let first = app.wait_for("a spoken answer", 60, |e| e["type"] == "spoken");
    say_into_mic(
        pulse,
        dir.path(),
        "paris",
        &["Hey panda.", "What is the capital of France?"],
    );
    let second = app.wait_for("a second spoken answer", 60, |e| {
        e["type"] == "spoken" && e["turn"] != first["turn"]
    });
    let (_, raw, _) = rec.finish();
    app.stop();
    for e in app.events.lock().unwrap().iter() {
        if e["type"] == "transcript" || e["type"] == "answer" {
            println!("{e}");
        }
    }
    assert_eq!(first["interrupted"], false);
    assert_eq!(second["interrupted"], false);
    let t = common::panda(&["transcribe", "--raw", raw.to_str().unwrap()]);
    let heard = t.stdout.to_lowercase();
    println!("the speaker said: {heard:?}");
    assert!(heard.contains("it's") || heard.contains("it is"), "{heard}");
    assert!(
        heard.chars().any(|c| c.is_ascii_digit()),
        "the time: {heard}"
    );
    assert!(heard.contains("paris"), "{heard}");
}

/// Share of a window's energy at `freq_hz` (Goertzel), 0–1.
fn tone_share(w: &[i16], freq_hz: f32, rate_hz: f32) -> f32 {
    let k = 2.0 * (2.0 * std::f32::consts::PI * freq_hz / rate_hz).cos();
    let (mut s1, mut s2, mut energy) = (0f32, 0f32, 0f32);
    for &x in w {
        let x = x as f32 / 32768.0;
        energy += x * x;
        let s0 = x + k * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let power = s1 * s1 + s2 * s2 - k * s1 * s2;
    if energy < 1e-6 {
        0.0
    } else {
        (2.0 * power / (w.len() as f32 * energy)).min(1.0)
    }
}

/// The wake earcon on the speaker, fed back into the microphone (a loopback, as a room
/// would): it is heard on the speaker for every wake, never taken for the question (a
/// wake with nothing after it ends in `no_question`), and a question asked 1.5 s after
/// it is answered.
#[test]
fn the_earcon_plays_on_a_wake_and_is_never_the_question() {
    let Some(rig) = Rig::start_or_skip() else {
        return;
    };
    let Rig { pulse, rt, dir, .. } = &rig;
    let server = llm_server(rt, 10);
    let app = Appliance::spawn(
        pulse,
        &server.url(),
        false,
        &[("PANDA_ENDPOINT__QUESTION_TIMEOUT_MS", "4000")],
    );
    // Speech made before the appliance listens: synthesis must not eat the pauses.
    let wake_only = mic_wav(dir.path(), "wake-only", &["Hey panda."]);
    let question = mic_wav(dir.path(), "question", &["What time is it?"]);
    app.wait_log("capture started", 1, 60);
    pulse.loop_speaker_into_mic(30);
    let rec = record_speaker(pulse, dir.path());
    // A wake and nothing else: the chime comes back through the microphone, and must
    // not be the question.
    play_into_mic(pulse, &wake_only);
    let first = app.wait_for("a wake", 30, |e| e["type"] == "wake");
    let ended = app.wait_for("no_question", 30, |e| e["type"] == "no_question");
    assert_eq!(ended["turn"], first["turn"]);
    // A wake, the chime, 1.5 s of waiting, then the question.
    play_into_mic(pulse, &wake_only);
    let second = app.wait_for("a second wake", 30, |e| {
        e["type"] == "wake" && e["turn"] != first["turn"]
    });
    std::thread::sleep(Duration::from_millis(180 + 1500));
    play_into_mic(pulse, &question);
    let spoken = app.wait_for("the answer", 60, |e| {
        e["type"] == "spoken" && e["turn"] == second["turn"]
    });
    let (pcm, _, _) = rec.finish();
    let events = app.events.lock().unwrap().clone();
    drop(app);
    assert_eq!(spoken["interrupted"], false);
    let transcripts: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["type"] == "transcript")
        .collect();
    println!("{transcripts:#?}");
    assert_eq!(transcripts.len(), 1, "only the question is transcribed");
    assert_eq!(transcripts[0]["turn"], second["turn"]);
    let text = transcripts[0]["text"].as_str().unwrap().to_lowercase();
    assert!(text.contains("time"), "{text}");
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "route" && e["target"] == "skill:time"),
        "{events:#?}"
    );
    // Both chimes are on the speaker: 30 ms windows where the chime's upper tone
    // carries most of the energy, in two separate runs.
    let tonal: Vec<usize> = pcm
        .chunks_exact(480)
        .enumerate()
        .filter(|(_, w)| tone_share(w, 987.77, 16_000.0) > 0.6)
        .map(|(i, _)| i)
        .collect();
    let runs =
        tonal.windows(2).filter(|p| p[1] > p[0] + 10).count() + usize::from(!tonal.is_empty());
    println!("chime windows {tonal:?}");
    assert_eq!(runs, 2, "two chimes on the speaker: {tonal:?}");
}

#[test]
fn barge_in_silences_the_speaker_and_the_next_question_works() {
    let Some(rig) = Rig::start_or_skip() else {
        return;
    };
    let Rig { pulse, rt, dir, .. } = &rig;
    let server = llm_server(rt, 40);
    let mut app = Appliance::start(pulse, &server.url());
    let rec = record_speaker(pulse, dir.path());
    say_into_mic(
        pulse,
        dir.path(),
        "story",
        &["Hey panda.", "Tell me a long story."],
    );
    app.wait_for("the answer playing", 60, |e| e["type"] == "playing");
    // Three seconds into the answer: the canceller has learnt there is no echo path (a
    // second of Panda alone) and the self-wake guard has stood down. 1.5 s raced it — the
    // "playing" event leads the audio — and a "hey panda" that met the story's own
    // "panda" while the guard was still up was ignored (2 of 4 runs, the cut 6–8 s late).
    std::thread::sleep(Duration::from_millis(3000));
    let stop_ended = say_into_mic(pulse, dir.path(), "stop", &["Hey panda.", "Stop."]);
    let spoken = app.wait_for("the interrupted answer", 30, |e| e["type"] == "spoken");
    assert_eq!(spoken["interrupted"], true, "{spoken}");
    std::thread::sleep(Duration::from_millis(1500));
    let (pcm, _, rec_started) = rec.finish();
    // When did the speaker go quiet, relative to the end of "stop"?
    let loud = |s: &[i16]| s.iter().map(|x| (*x as i32).abs()).max().unwrap_or(0) > 300;
    let last_loud = pcm
        .chunks(160)
        .enumerate()
        .filter(|(_, c)| loud(c))
        .map(|(i, _)| i)
        .next_back()
        .expect("the speaker played something");
    let quiet_at = rec_started + Duration::from_millis(last_loud as u64 * 10 + 10);
    let after_stop_ms = quiet_at.saturating_duration_since(stop_ended).as_millis();
    let before_stop_ms = stop_ended.saturating_duration_since(quiet_at).as_millis();
    println!(
        "speaker quiet {} the end of \"stop\" ({} ms)",
        if after_stop_ms > 0 { "after" } else { "before" },
        after_stop_ms.max(before_stop_ms)
    );
    // The barge-in is decided by the wake word's second stage (300 ms of audio after the
    // detection, then Whisper on the phrase) and reaches the speaker within a tick; with
    // the echo canceller's frame in between, measured 310–380 ms after the end of a
    // short "stop" said right after "hey panda" on this 2-core machine, and 740 ms with
    // a CPU hog on one core (Whisper's check took 4.2 s beside Kokoro). The bound is
    // for what a timed test can say on a loaded CI machine: the cut comes with the
    // person's own "hey panda", not with a later detection or none (the faults this
    // test found cut 2–10 s late); `panda bench aec` measures the latency itself.
    assert!(
        after_stop_ms <= 1500,
        "quiet {after_stop_ms} ms after the end of stop"
    );
    // The next question works: heard, transcribed, answered and played (where it is routed
    // depends on how Whisper hears it on a busy machine; a long answer is cut by `stop()`).
    let stop_turn = app.wait_for("the stop turn", 30, |e| {
        e["type"] == "wake" && e["turn"] != spoken["turn"]
    })["turn"]
        .clone();
    say_into_mic(
        pulse,
        dir.path(),
        "time",
        &["Hey panda.", "What time is it?"],
    );
    let next = app.wait_for("the next wake word", 60, |e| {
        e["type"] == "wake" && e["turn"] != spoken["turn"] && e["turn"] != stop_turn
    });
    let transcript = app.wait_for("the next transcript", 60, |e| {
        e["type"] == "transcript" && e["turn"] == next["turn"]
    });
    assert!(
        transcript["text"]
            .as_str()
            .unwrap_or("")
            .to_lowercase()
            .contains("time"),
        "{transcript}"
    );
    app.wait_for("the next answer playing", 60, |e| {
        e["type"] == "playing" && e["turn"] == next["turn"]
    });
    app.stop();
}

/// A WebDriver session in headless Chromium (Debian's `chromium` and `chromedriver`),
/// spoken to over plain HTTP (W3C WebDriver protocol); the driver is killed when dropped.
struct Browser {
    driver: Child,
    base: String,
    http: reqwest::blocking::Client,
}

impl Browser {
    /// None (after saying so loudly) when Chromium or ChromeDriver is missing, unless
    /// `REQUIRE_CHROMIUM=1` (CI), where that is a failure.
    fn start_or_skip() -> Option<Browser> {
        let missing = ["chromium", "chromedriver"].into_iter().find(|p| {
            Command::new(p)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map_or(true, |s| !s.success())
        });
        if let Some(p) = missing {
            if std::env::var("REQUIRE_CHROMIUM").is_ok_and(|v| v == "1") {
                panic!("Chromium is required (REQUIRE_CHROMIUM=1) but `{p}` does not run");
            }
            eprintln!(
                "\n\n*** SKIPPED: the status page test needs `{p}` (Debian chromium, chromium-driver) ***\n\n"
            );
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut b = Browser {
            driver,
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
        };
        let t = Instant::now();
        while b
            .http
            .get(format!("{}/status", b.base))
            .send()
            .map_or(true, |r| !r.status().is_success())
        {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "chromedriver did not answer within 20 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let caps = serde_json::json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,800"]
            }
        }}});
        let v = b.call("POST", "/session", Some(caps));
        let id = v["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {v}"))
            .to_string();
        b.base = format!("{}/session/{id}", b.base);
        Some(b)
    }

    /// One WebDriver command; returns its `value`.
    fn call(&self, method: &str, path: &str, body: Option<serde_json::Value>) -> serde_json::Value {
        let url = format!("{}{path}", self.base);
        let req = match method {
            "POST" => self
                .http
                .post(&url)
                .json(&body.unwrap_or(serde_json::json!({}))),
            "DELETE" => self.http.delete(&url),
            _ => self.http.get(&url),
        };
        let r = req.send().unwrap();
        let ok = r.status().is_success();
        let v: serde_json::Value = r.json().unwrap();
        assert!(ok, "WebDriver {method} {path}: {v}");
        v["value"].clone()
    }

    fn open(&self, url: &str) {
        self.call("POST", "/url", Some(serde_json::json!({ "url": url })));
    }

    /// Runs `script` (a function body) in the page; returns what it returns.
    fn eval(&self, script: &str) -> serde_json::Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(serde_json::json!({ "script": script, "args": [] })),
        )
    }

    fn screenshot(&self, path: &Path) {
        use base64::Engine;
        let png = self.call("GET", "/screenshot", None);
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap();
        std::fs::write(path, bytes).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if self.base.contains("/session/") {
            let _ = self.http.delete(&self.base).send();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// What the status page shows now: the state badge, the feed connection, and the turn
/// rows (heard, answer).
const PAGE_VIEW: &str = r#"
const rows = [...document.querySelectorAll('#turns tbody tr')].map(tr => ({
  heard: tr.querySelector('td.heard') ? tr.querySelector('td.heard').textContent : '',
  answer: tr.cells[3] ? tr.cells[3].textContent : '',
}));
return {
  state: document.getElementById('state').textContent,
  conn: document.getElementById('conn').textContent,
  rows: rows,
  markup: document.querySelectorAll('#turns img, #turns b, #log img').length,
  llm: document.querySelector('#services li') ? document.querySelector('#services li').textContent : '',
};
"#;

#[test]
fn the_status_page_follows_a_spoken_turn_in_chromium() {
    let Some(rig) = Rig::start_or_skip() else {
        return;
    };
    let Rig { pulse, rt, dir, .. } = &rig;
    let Some(browser) = Browser::start_or_skip() else {
        return;
    };
    let server = llm_server(rt, 10);
    let app = Appliance::start_with(pulse, &server.url(), true);
    let url = app.web_url.clone().unwrap();
    browser.open(&format!("{url}/"));
    // The page connects to the live feed and shows the appliance listening.
    let t = Instant::now();
    let mut view = browser.eval(PAGE_VIEW);
    while (view["conn"] != "live" || view["state"] != "listening")
        && t.elapsed() < Duration::from_secs(20)
    {
        std::thread::sleep(Duration::from_millis(100));
        view = browser.eval(PAGE_VIEW);
    }
    assert_eq!(view["conn"], "live", "{view}");
    assert_eq!(view["state"], "listening", "{view}");

    // A spoken question, watched in the page while it happens (the speaking thread plays
    // it into the microphone; this one samples the page every 50 ms).
    let mut seen: Vec<serde_json::Value> = Vec::new();
    let done = |v: &serde_json::Value| {
        v["state"] == "listening"
            && v["rows"][0]["answer"]
                .as_str()
                .is_some_and(|a| a.starts_with("It"))
    };
    std::thread::scope(|s| {
        let saying = s.spawn(|| {
            say_into_mic(
                pulse,
                dir.path(),
                "time",
                &["Hey panda.", "What time is it?"],
            )
        });
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(90) {
            let v = browser.eval(PAGE_VIEW);
            let finished = done(&v) && saying.is_finished();
            if seen.last() != Some(&v) {
                seen.push(v);
            }
            if finished {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    browser.screenshot(&shot);
    println!("screenshot: {}", shot.display());
    for v in &seen {
        println!("page: {v}");
    }
    let states: Vec<&str> = seen.iter().filter_map(|v| v["state"].as_str()).collect();
    let pos = |s: &str| states.iter().position(|x| *x == s);
    let (thinking, speaking) = (pos("thinking"), pos("speaking"));
    assert!(
        thinking.is_some() && speaking.is_some() && thinking < speaking,
        "the state went listening → thinking → speaking: {states:?}"
    );
    assert_eq!(states.last(), Some(&"listening"), "{states:?}");
    // The transcript is on the page while the answer is still being spoken.
    assert!(
        seen.iter().any(|v| v["state"] == "speaking"
            && v["rows"][0]["heard"]
                .as_str()
                .is_some_and(|h| h.to_lowercase().contains("time"))),
        "the transcript appeared live: {seen:?}"
    );
    let last = seen.last().unwrap();
    assert!(
        last["rows"][0]["answer"]
            .as_str()
            .unwrap()
            .starts_with("It"),
        "{last}"
    );

    // A typed question with markup in it is shown as text, never as markup.
    let typed = "<img src=x onerror=alert(1)><b>what</b> time is it";
    let r = reqwest::blocking::Client::new()
        .post(format!("{url}/api/ask"))
        .bearer_auth(WEB_TOKEN)
        .json(&serde_json::json!({ "text": typed }))
        .send()
        .unwrap();
    assert_eq!(r.status(), 202);
    let t = Instant::now();
    let mut v = browser.eval(PAGE_VIEW);
    while v["rows"][0]["heard"] != typed && t.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(100));
        v = browser.eval(PAGE_VIEW);
    }
    assert_eq!(v["rows"][0]["heard"], typed, "{v}");
    assert_eq!(v["markup"], 0, "user text became markup: {v}");
    // That question went to the test's LLM server: the services list says so, live.
    let t = Instant::now();
    while !v["llm"].as_str().unwrap_or("").contains("answering")
        && t.elapsed() < Duration::from_secs(30)
    {
        std::thread::sleep(Duration::from_millis(100));
        v = browser.eval(PAGE_VIEW);
    }
    assert!(v["llm"].as_str().unwrap().contains("answering"), "{v}");
    browser.screenshot(&shot);
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000);
}

#[test]
fn the_appliance_waits_for_its_sound_server_and_survives_losing_it() {
    let _one = ONE_APPLIANCE.lock().unwrap_or_else(|e| e.into_inner());
    // Only to learn whether PulseAudio is there at all (and skip or fail as the others).
    let Some(probe) = pulse_or_skip() else { return };
    drop(probe);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = llm_server(&rt, 40);
    let dir = tempfile::tempdir().unwrap();
    let mut pulse = Pulse::stopped();
    // Started with no sound server: no microphone, no speaker.
    let app = Appliance::spawn(
        &pulse,
        &server.url(),
        true,
        &[("PANDA_AUDIO__RETRY_DELAY_MS", "500")],
    );
    app.wait_log("audio capture unavailable", 2, 60);
    app.wait_log("speaker unavailable", 1, 10);
    // The status page serves meanwhile.
    let url = app.web_url.clone().unwrap();
    let status: serde_json::Value = reqwest::blocking::get(format!("{url}/api/status"))
        .unwrap()
        .json()
        .unwrap();
    assert!(status["state"].is_string(), "{status}");

    // The sound server comes: both devices are picked up, and a question is answered.
    pulse.start().unwrap();
    app.wait_log("capture started", 1, 30);
    app.wait_log("speaker back", 1, 30);
    std::thread::sleep(Duration::from_millis(500));
    let rec = record_speaker(&pulse, dir.path());
    say_into_mic(
        &pulse,
        dir.path(),
        "time",
        &["Hey panda.", "What time is it?"],
    );
    let first = app.wait_for("a spoken answer", 60, |e| e["type"] == "spoken");
    assert_eq!(first["interrupted"], false, "{first}");
    let (pcm, _, _) = rec.finish();
    let loud = pcm.iter().filter(|s| s.unsigned_abs() > 1000).count();
    assert!(
        loud > 1600,
        "the answer reached the speaker ({loud} loud samples)"
    );

    // The sound server dies while a long answer plays: the turn ends (as heard so far),
    // the loss is reported, and nothing hangs.
    say_into_mic(
        &pulse,
        dir.path(),
        "story",
        &["Hey panda.", "Tell me a long story."],
    );
    let playing = app.wait_for("the story playing", 60, |e| {
        e["type"] == "playing" && e["turn"] != first["turn"]
    });
    std::thread::sleep(Duration::from_millis(1000));
    pulse.kill();
    let cut = app.wait_for("the story ended by the loss", 15, |e| {
        e["type"] == "spoken" && e["turn"] == playing["turn"]
    });
    assert_eq!(cut["interrupted"], true, "{cut}");
    app.wait_for("the loss reported", 5, |e| {
        e["type"] == "error"
            && e["stage"] == "playback"
            && e["message"]
                .as_str()
                .is_some_and(|m| m.contains("stopped playing"))
    });
    app.wait_log("audio capture unavailable", 3, 20);

    // It comes back: the next question is answered on the new server.
    pulse.start().unwrap();
    app.wait_log("capture started", 2, 30);
    app.wait_log("speaker back", 2, 60);
    std::thread::sleep(Duration::from_millis(500));
    let rec = record_speaker(&pulse, dir.path());
    say_into_mic(
        &pulse,
        dir.path(),
        "again",
        &["Hey panda.", "What time is it?"],
    );
    let again = app.wait_for("an answer after the loss", 60, |e| {
        e["type"] == "spoken" && e["turn"] != first["turn"] && e["turn"] != playing["turn"]
    });
    assert_eq!(again["interrupted"], false, "{again}");
    let (pcm, _, _) = rec.finish();
    let loud = pcm.iter().filter(|s| s.unsigned_abs() > 1000).count();
    assert!(
        loud > 1600,
        "the answer reached the speaker ({loud} loud samples)"
    );
}

#[test]
fn shutdown_ends_in_time_when_the_sound_server_dies_with_it() {
    let Some(mut rig) = Rig::start_or_skip() else {
        return;
    };
    let Rig { pulse, .. } = &mut rig;
    let mut app = Appliance::start(pulse, "http://127.0.0.1:9");
    // The sound server dies at the moment systemd stops Panda (`systemctl stop` during a
    // shutdown): closing the capture stream then deadlocks inside libpulse.
    pulse.kill();
    let t = Instant::now();
    let _ = Command::new("kill")
        .args(["-TERM", &app.child.id().to_string()])
        .status();
    let exited = loop {
        if let Some(s) = app.child.try_wait().unwrap() {
            break Some(s);
        }
        if t.elapsed() > Duration::from_secs(10) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = t.elapsed();
    eprintln!("exit after SIGTERM with the sound server gone: {exited:?} in {took:?}");
    assert!(exited.is_some(), "still running 10 s after SIGTERM");
    assert!(took < Duration::from_secs(3), "{took:?}");
}

/// A real echo path through a real sound server: the speaker's monitor is looped back
/// into the microphone (60 ms, full level) while the person's voice is played into the
/// same microphone. Panda tells a long story that says "hey panda" three times and does
/// not wake itself; "hey panda, stop" over it (and over its echo) silences the speaker;
/// the next question is answered. The canceller reports its figures on the status API.
#[test]
fn with_its_own_voice_in_the_microphone_panda_neither_wakes_itself_nor_misses_a_stop() {
    let Some(rig) = Rig::start_or_skip() else {
        return;
    };
    let Rig { pulse, rt, dir, .. } = &rig;
    // Anything but the story gets the short answer: how Whisper hears the second
    // question on a machine busy synthesising the story is not what is tested.
    let server = llm_replying(rt, |last| {
        if !last.contains("story") {
            return vec!["The capital of France is Paris.".into()];
        }
        let mut s = vec![
            "Once upon a time a child called out, hey panda, to a sleepy bear. ".into(),
            "The bear only yawned, so she said it louder: hey panda! ".into(),
            "And a third time, hey panda, and at last it looked up. ".into(),
        ];
        s.extend((0..25).map(|i| {
            format!(
                "Then came part {} of the story, about the river and the hills. ",
                i + 4
            )
        }));
        s
    });
    let story = mic_wav(
        dir.path(),
        "story",
        &["Hey panda.", "Tell me a long story."],
    );
    let stop = mic_wav(dir.path(), "stop", &["Hey panda.", "Stop."]);
    let paris = mic_wav(
        dir.path(),
        "paris",
        &["Hey panda.", "What is the capital of France?"],
    );
    let app = Appliance::spawn(pulse, &server.url(), true, &[]);
    app.wait_log("capture started", 1, 60);
    pulse.loop_speaker_into_mic(60);
    play_into_mic(pulse, &story);
    let playing = app.wait_for("the story playing", 60, |e| e["type"] == "playing");
    let story_turn = playing["turn"].clone();
    // The three "hey panda"s are in the first sentences: ~15 s of Panda's own voice.
    std::thread::sleep(Duration::from_secs(15));
    let events = app.events.lock().unwrap().clone();
    let wakes: Vec<&serde_json::Value> = events.iter().filter(|e| e["type"] == "wake").collect();
    println!(
        "self-wakes ignored: {}",
        events.iter().filter(|e| e["type"] == "self_wake").count()
    );
    assert_eq!(wakes.len(), 1, "Panda woke itself: {wakes:#?}");
    assert!(
        !events
            .iter()
            .any(|e| e["type"] == "spoken" && e["turn"] == story_turn),
        "the story was cut by Panda's own voice: {events:#?}"
    );
    // The person, over the story and its echo.
    let url = app.web_url.clone().unwrap();
    let echo = |url: &str| -> serde_json::Value {
        let s: serde_json::Value = reqwest::blocking::get(format!("{url}/api/status"))
            .unwrap()
            .json()
            .unwrap();
        s["echo"].clone()
    };
    println!("echo before the stop: {}", echo(&url));
    // As a person would, the stop is said again while it is not heard: the wake word over
    // a full-level echo on this path is not always caught (one try in three or four
    // missed here, two in a row twice in ~8 runs; `panda bench aec` measures the rate),
    // and what is tested is that it can be, and that Panda never wakes itself meanwhile.
    let cut = |e: &serde_json::Value| e["type"] == "spoken" && e["turn"] == story_turn;
    say_until_heard(pulse, &app, &stop, 15, "\"hey panda. stop.\"", cut);
    let spoken = app.wait_for("the story cut", 30, cut);
    for l in app.log.lock().unwrap().iter() {
        if l.contains("wake") || l.contains("stop") || l.contains("echo") {
            println!("log: {l}");
        }
    }
    assert_eq!(spoken["interrupted"], true, "{spoken}");
    std::thread::sleep(Duration::from_millis(1500));
    // The question's own turn (what the words after the barge-in's "hey panda" were
    // heard as — "stop", or the end of Panda's sentence under it — makes a turn of its
    // own, which the next wake may cut before it plays).
    // Heard well enough to be that question: "capital" or "France" (CI once heard it
    // without "France" and answered it all the same).
    let asked = |e: &serde_json::Value| {
        e["type"] == "transcript"
            && e["text"].as_str().is_some_and(|t| {
                let t = t.to_lowercase();
                t.contains("france") || t.contains("capital")
            })
    };
    // As with the stop, a person whose question went unheard asks again: what Whisper
    // makes of the echo's tail after the barge-in ("Thank you.") can be a turn of its own
    // whose answer plays over the question, and a wake over that answer is not always
    // caught (the rate is `panda bench aec`'s "next question heard"). Panda must not
    // wake itself meanwhile, and must hear the question.
    say_until_heard(pulse, &app, &paris, 25, "the question about France", asked);
    let question = app.wait_for("the question about France", 60, asked);
    app.wait_for("the answer about Paris", 60, |e| {
        e["type"] == "answer"
            && e["turn"] == question["turn"]
            && e["text"].as_str().is_some_and(|t| t.contains("Paris"))
    });
    app.wait_for("the Paris answer played", 60, |e| {
        e["type"] == "spoken" && e["turn"] == question["turn"]
    });
    let echo = echo(&url);
    println!("echo: {echo}");
    assert_eq!(echo["active"], true, "{echo}");
    assert!(echo["erle_db"].as_u64().is_some(), "{echo}");
}
