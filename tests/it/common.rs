//! Shared helpers for the integration tests: the installed models, speech made with
//! espeak-ng at test time, and running the real `panda` binary.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

pub use panda::web::status_page_url;

/// The model directory the tests use (installed by `panda models install --test-data`).
pub fn models_dir() -> PathBuf {
    std::env::var_os("PANDA_MODELS__DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("models"))
}

/// A config pointing at the installed models.
pub fn config() -> panda::config::Config {
    let mut c = panda::config::Config::default();
    c.models.dir = models_dir();
    c
}

/// Speaks `parts` with espeak-ng `voice`, joined by `gap_ms` of silence, into a WAV file.
pub fn espeak_wav(dir: &Path, name: &str, voice: &str, parts: &[&str], gap_ms: u32) -> PathBuf {
    let mut pcm: Vec<i16> = Vec::new();
    for (i, text) in parts.iter().enumerate() {
        if i > 0 {
            pcm.extend(std::iter::repeat_n(0, (22_050 * gap_ms / 1000) as usize));
        }
        let out = Command::new("espeak-ng")
            .args(["-v", voice, "--stdout", text])
            .output()
            .expect("espeak-ng is installed (apt-get install espeak-ng)");
        assert!(out.status.success(), "espeak-ng -v {voice} failed");
        pcm.extend(
            out.stdout[44..]
                .chunks_exact(2)
                .map(|b| i16::from_le_bytes([b[0], b[1]])),
        );
    }
    let path = dir.join(format!("{name}.wav"));
    write_wav(&path, 22_050, &pcm);
    path
}

/// `text` spoken by the espeak-ng voice `voice`, as 16 kHz mono samples.
pub fn espeak_16k(dir: &Path, voice: &str, text: &str) -> Vec<i16> {
    let name = format!("espeak-{}", text.len() ^ voice.len() << 8);
    let wav = espeak_wav(dir, &name, voice, &[text], 0);
    panda::audio::file::read_16k_mono(&wav).unwrap()
}

/// `parts` spoken by the Kokoro voice `voice` (`panda say`), each followed by `gaps_ms[i]`
/// (the last gap repeats) of silence, as 16 kHz mono samples.
pub fn kokoro_speech(
    dir: &Path,
    name: &str,
    voice: &str,
    parts: &[&str],
    gaps_ms: &[u32],
) -> Vec<i16> {
    let mut pcm: Vec<i16> = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        let wav = dir.join(format!("{name}-{i}.wav"));
        let r = panda(&["say", p, "--voice", voice, "-o", wav.to_str().unwrap()]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        pcm.extend(panda::audio::file::read_16k_mono(&wav).unwrap());
        let gap = gaps_ms.get(i).or(gaps_ms.last()).copied().unwrap_or(0);
        pcm.extend(std::iter::repeat_n(0i16, 16 * gap as usize));
    }
    pcm
}

/// Output of a `panda` run.
pub struct Run {
    pub events: Vec<Value>,
    pub stdout: String,
    pub stderr: String,
    pub code: i32,
}

impl Run {
    /// Parses a finished `panda` process: one JSON event per stdout line.
    pub fn from_output(out: std::process::Output) -> Run {
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        Run {
            events: stdout
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect(),
            stdout,
            stderr: String::from_utf8_lossy(&out.stderr).to_string(),
            code: out.status.code().unwrap_or(-1),
        }
    }

    pub fn of_type(&self, t: &str) -> Vec<&Value> {
        self.events.iter().filter(|e| e["type"] == t).collect()
    }

    /// The transcripts' texts, lower-cased.
    pub fn transcripts(&self) -> Vec<String> {
        self.of_type("transcript")
            .iter()
            .map(|t| t["text"].as_str().unwrap_or_default().to_lowercase())
            .collect()
    }
}

/// The one way the tests launch `panda`: the binary under test with the test models and
/// warnings-only logging (a test adds its own arguments and environment).
pub fn command() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_panda"));
    c.env("PANDA_MODELS__DIR", models_dir())
        .env("RUST_LOG", "warn");
    c
}

/// [`command`] keeping its state (timers, memory) in `state`.
pub fn command_in(state: &Path) -> Command {
    let mut c = command();
    c.env("PANDA_STATE__DIR", state);
    c
}

/// Runs the `panda` binary with the test models.
pub fn panda(args: &[&str]) -> Run {
    let out = command().args(args).output().expect("running panda");
    Run::from_output(out)
}

/// The texts of a run's `answer` events.
pub fn answers(r: &Run) -> Vec<String> {
    r.of_type("answer")
        .iter()
        .map(|e| e["text"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Writes 16-bit mono `pcm` at `rate_hz` as a WAV file.
pub fn write_wav(path: &Path, rate_hz: u32, pcm: &[i16]) {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: rate_hz,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for s in pcm {
        w.write_sample(*s).unwrap();
    }
    w.finalize().unwrap();
}

/// The llama.cpp server `scripts/llm-server.sh` starts (or `LLM_TEST_URL`), if it answers.
pub fn llm_server() -> Option<String> {
    use std::io::{Read, Write};
    let url = std::env::var("LLM_TEST_URL").unwrap_or_else(|_| "http://127.0.0.1:8081".into());
    let hostport = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let addr: std::net::SocketAddr = hostport.parse().ok()?;
    let mut s =
        std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(2)))
        .ok()?;
    write!(
        s,
        "GET /health HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.starts_with("HTTP/1.1 200").then_some(url)
}
