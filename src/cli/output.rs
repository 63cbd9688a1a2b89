//! Output shared by the subcommands: the one JSON-lines event printer, the one builder
//! of an audio output (a WAV file or a sound device), input specs, and the small text
//! helpers of the memory commands.

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;

use panda::audio::file::{FileFormat, FileSpec};
use panda::audio::playback::Output;
use panda::config::Config;
use panda::exit;
use panda::memory::Kind;

use super::exit::{Exit, fail};

/// Prints one pipeline event as a JSON line on stdout, flushed (a reader sees each
/// event as it happens).
pub fn print_json<T: serde::Serialize>(ev: &T) {
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer(&mut out, ev);
    let _ = out.write_all(b"\n");
    let _ = out.flush();
}

/// Where speech goes: a WAV file at `rate_hz` (paced like a speaker with `paced`), or a
/// sound device (the configured one unless named; with `retry`, a missing one is
/// retried, as the daemon does).
pub fn audio_output(
    cfg: &Config,
    wav: Option<PathBuf>,
    rate_hz: u32,
    paced: bool,
    device: Option<String>,
    retry: bool,
) -> Output {
    match wav {
        Some(path) => Output::Wav {
            path,
            rate_hz,
            paced: paced.then_some(cfg.playback.buffer_ms),
            log: None,
        },
        None => Output::Device {
            name: device.unwrap_or_else(|| cfg.playback.output_device.clone()),
            buffer_ms: cfg.playback.buffer_ms,
            retry: retry.then(|| std::time::Duration::from_millis(cfg.audio.retry_delay_ms)),
        },
    }
}

pub fn file_spec(path: PathBuf, raw: Option<(u32, u16)>, realtime: bool) -> FileSpec {
    let format = match raw {
        Some((rate_hz, channels)) => FileFormat::RawS16le { rate_hz, channels },
        None => FileFormat::guess(&path),
    };
    FileSpec {
        path,
        format,
        realtime,
        tail_silence_ms: 1000,
    }
}

/// `OsString` → `String`, or a clear error naming the first invalid byte.
pub fn utf8(what: &str, s: OsString) -> Result<String, Exit> {
    use std::os::unix::ffi::OsStringExt;
    String::from_utf8(s.into_vec()).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let byte = e.as_bytes().get(at).copied().unwrap_or(0);
        fail(exit::DATA_ERR, format!("the {what} is not valid UTF-8 (byte {byte:#04x} at offset {at}); Panda stores UTF-8 text only"))
    })
}

pub fn read_stdin_utf8() -> Result<String, Exit> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::io::stdin()
        .lock()
        .read_to_end(&mut bytes)
        .map_err(|e| fail(exit::NO_INPUT, format!("reading stdin: {e}")))?;
    use std::os::unix::ffi::OsStringExt;
    utf8("text on stdin", OsString::from_vec(bytes))
}

pub fn parse_kind(s: &str) -> Result<Kind, Exit> {
    Kind::parse(s).ok_or_else(|| {
        fail(
            exit::USAGE,
            format!("unknown kind {s:?}: use fact, identity, turn or summary"),
        )
    })
}

pub fn clip(text: &str, n: usize) -> String {
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() <= n {
        one_line
    } else {
        format!("{}…", one_line.chars().take(n).collect::<String>())
    }
}

pub fn when(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| {
            t.with_timezone(&chrono::Local)
                .format("%Y-%m-%d %H:%M")
                .to_string()
        })
        .unwrap_or_default()
}
