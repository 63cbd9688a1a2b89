//! File and stdin audio sources.
//!
//! Decoding is in-process (hound for WAV; raw s16le by hand): no ffmpeg subprocess, no
//! temp files. A source runs on its own thread ([`spawn_source`]) and feeds frames into
//! the pipeline's audio edge. Paced in real time it behaves like a microphone (frames are
//! `try_send`-ed and dropped when the listener lags, and counted); unpaced it is a batch
//! job and waits for the listener instead (`blocking_send`), so no audio is lost.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::dsp::Framer;
use super::{AudioError, EdgeStats};
use crate::event::{AudioFrame, FRAME_MS};

/// Samples decoded per read before they go through the DSP (~64 ms at 16 kHz).
const READ_CHUNK_SAMPLES: usize = 1024;

/// How a file's bytes are to be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    /// RIFF/WAVE (detected from the header).
    Wav,
    /// Headerless signed 16-bit little-endian samples.
    RawS16le {
        /// Sample rate of the raw stream.
        rate_hz: u32,
        /// Interleaved channel count.
        channels: u16,
    },
}

impl FileFormat {
    /// Picks raw for `.raw`/`.pcm` file names (16 kHz mono, the common case for speech
    /// corpora) and WAV otherwise.
    pub fn guess(path: &Path) -> FileFormat {
        match path.extension().and_then(|e| e.to_str()) {
            Some("raw" | "pcm") => FileFormat::RawS16le {
                rate_hz: 16_000,
                channels: 1,
            },
            _ => FileFormat::Wav,
        }
    }
}

/// Where a source reads from.
#[derive(Debug, Clone)]
pub struct FileSpec {
    /// A path, or `-` for stdin.
    pub path: PathBuf,
    /// Container/encoding.
    pub format: FileFormat,
    /// Pace frames at real time, as a microphone would deliver them.
    pub realtime: bool,
    /// Milliseconds of silence appended after the file, so a speaker who stops at the very
    /// end of a recording still gets an endpoint.
    pub tail_silence_ms: u32,
}

/// Most audio a whole-file read keeps (`panda transcribe`, `enroll`, benches): 10 min at
/// 16 kHz mono is 19 MB. Endless input (`/dev/zero`, a stream on stdin) stops here with
/// an error instead of growing memory without bound.
pub const MAX_READ_SECONDS: u64 = 10 * 60;

/// Most interleaved channels accepted (a header claiming 65,535 is refused before any
/// buffer is sized from it).
pub const MAX_CHANNELS: u16 = 32;

/// Decodes a whole input straight to 16 kHz mono i16, streaming (memory is the 16 kHz
/// output only, whatever the input's rate and channels), at most
/// [`MAX_READ_SECONDS`] of it.
pub fn read_16k_mono_as(path: &Path, format: FileFormat) -> Result<Vec<i16>, AudioError> {
    let max = MAX_READ_SECONDS as usize * 16_000;
    let mut out: Vec<i16> = Vec::new();
    let mut framer: Option<Framer> = None;
    let mut too_long = false;
    decode(path, format, &mut |rate, ch, chunk| {
        let f = framer.get_or_insert_with(|| Framer::new(rate, ch));
        f.push(chunk, &mut |fr| out.extend_from_slice(&fr.samples[..]));
        too_long = out.len() > max;
        !too_long
    })?;
    if too_long {
        return Err(AudioError::Decode {
            path: path.to_path_buf(),
            problem: format!(
                "longer than {} minutes: split it (endless input such as /dev/zero is refused)",
                MAX_READ_SECONDS / 60
            ),
        });
    }
    if let Some(mut f) = framer {
        f.finish(&mut |fr| out.extend_from_slice(&fr.samples[..]));
    }
    Ok(out)
}

/// Decodes a whole file to interleaved f32 at its own rate; returns (samples, rate,
/// channels). At most [`MAX_READ_SECONDS`] of it, like [`read_16k_mono_as`].
pub fn read_all(path: &Path, format: FileFormat) -> Result<(Vec<f32>, u32, u16), AudioError> {
    let mut out = Vec::new();
    let mut too_long = false;
    let (rate, ch) = decode(path, format, &mut |rate, ch, chunk| {
        out.extend_from_slice(chunk);
        too_long = out.len() as u64 > MAX_READ_SECONDS * rate as u64 * ch as u64;
        !too_long
    })?;
    if too_long {
        return Err(AudioError::Decode {
            path: path.to_path_buf(),
            problem: format!("longer than {} minutes: split it", MAX_READ_SECONDS / 60),
        });
    }
    Ok((out, rate, ch))
}

/// Decodes a whole file (format from its name) straight to 16 kHz mono i16.
pub fn read_16k_mono(path: &Path) -> Result<Vec<i16>, AudioError> {
    read_16k_mono_as(path, FileFormat::guess(path))
}

/// Checks that `path` can be read as `format` (an existing, non-empty file or stdin with
/// a valid header) without decoding it: `panda run --input` calls this before loading
/// any model, so a missing or undecodable file is reported first.
pub fn probe(path: &Path, format: FileFormat) -> Result<(), AudioError> {
    if path != Path::new("-") {
        let meta = std::fs::metadata(path).map_err(|source| AudioError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        if meta.is_dir() {
            return Err(AudioError::Decode {
                path: path.to_path_buf(),
                problem: "is a directory, not an audio file".into(),
            });
        }
        // Decoding the first chunk checks the header and that samples follow.
        decode(path, format, &mut |_, _, _| false)?;
    }
    Ok(())
}

fn open(path: &Path) -> Result<Box<dyn Read + Send>, AudioError> {
    if path == Path::new("-") {
        return Ok(Box::new(std::io::stdin()));
    }
    let f = File::open(path).map_err(|source| AudioError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(Box::new(f))
}

/// Streams a file through `sink` in chunks of interleaved f32, with the stream's rate and
/// channel count. `sink` returns false to stop early. Returns the file's (rate, channels).
pub fn decode(
    path: &Path,
    format: FileFormat,
    sink: &mut dyn FnMut(u32, u16, &[f32]) -> bool,
) -> Result<(u32, u16), AudioError> {
    let bad = |problem: String| AudioError::Decode {
        path: path.to_path_buf(),
        problem,
    };
    let mut reader = BufReader::with_capacity(64 * 1024, open(path)?);
    match format {
        FileFormat::RawS16le { rate_hz, channels } => {
            let mut bytes = vec![0u8; READ_CHUNK_SAMPLES * 2];
            let mut chunk = Vec::with_capacity(READ_CHUNK_SAMPLES);
            let mut total = 0usize;
            let mut carry: Option<u8> = None;
            loop {
                let n = reader.read(&mut bytes).map_err(|e| bad(e.to_string()))?;
                if n == 0 {
                    break;
                }
                total += n;
                chunk.clear();
                let mut data = &bytes[..n];
                if let Some(lo) = carry.take() {
                    chunk.push(i16::from_le_bytes([lo, data[0]]) as f32 / 32768.0);
                    data = &data[1..];
                }
                let pairs = data.chunks_exact(2);
                if let [last] = pairs.remainder() {
                    carry = Some(*last);
                }
                chunk.extend(pairs.map(|b| i16::from_le_bytes([b[0], b[1]]) as f32 / 32768.0));
                if !sink(rate_hz, channels, &chunk) {
                    return Ok((rate_hz, channels));
                }
            }
            if total == 0 {
                return Err(bad("empty input: no audio samples".into()));
            }
            Ok((rate_hz, channels))
        }
        FileFormat::Wav => {
            let mut head = [0u8; 4];
            let got = read_up_to(&mut reader, &mut head).map_err(|e| bad(e.to_string()))?;
            if got == 0 {
                return Err(bad("empty file: no audio data".into()));
            }
            if got < 4 || &head != b"RIFF" {
                return Err(bad(
                    "not a WAV file (no RIFF header); raw 16-bit audio needs a .raw name or --raw"
                        .into(),
                ));
            }
            let chained = std::io::Cursor::new(head).chain(reader);
            let wav = hound::WavReader::new(chained)
                .map_err(|e| bad(format!("invalid WAV header: {e}")))?;
            let spec = wav.spec();
            if spec.channels == 0
                || spec.channels > MAX_CHANNELS
                || spec.sample_rate < 4_000
                || spec.sample_rate > 384_000
            {
                return Err(bad(format!(
                    "unsupported WAV: {} channels at {} Hz",
                    spec.channels, spec.sample_rate
                )));
            }
            let declared = wav.len() as usize;
            if declared == 0 {
                return Err(bad("WAV holds no samples".into()));
            }
            let (rate, ch) = (spec.sample_rate, spec.channels);
            let sink = &mut |c: &[f32]| sink(rate, ch, c);
            let read = match (spec.sample_format, spec.bits_per_sample) {
                (hound::SampleFormat::Float, 32) => pump(wav.into_samples::<f32>(), 1.0, sink),
                (hound::SampleFormat::Int, b @ (8 | 16 | 24 | 32)) => {
                    let scale = 1.0 / (1u64 << (b - 1)) as f32;
                    pump(
                        wav.into_samples::<i32>().map(|s| s.map(|v| v as f32)),
                        scale,
                        sink,
                    )
                }
                (f, b) => {
                    return Err(bad(format!("unsupported WAV sample format {f:?} {b}-bit")));
                }
            };
            match read {
                Ok(_) => Ok((rate, ch)),
                Err((n, e)) => Err(bad(format!(
                    "truncated WAV: header declares {declared} samples, only {n} could be read ({e})"
                ))),
            }
        }
    }
}

/// Reads samples in chunks into `sink`; on a read error returns how many were read.
fn pump<I>(
    samples: I,
    scale: f32,
    sink: &mut dyn FnMut(&[f32]) -> bool,
) -> Result<usize, (usize, hound::Error)>
where
    I: Iterator<Item = Result<f32, hound::Error>>,
{
    let mut chunk = Vec::with_capacity(READ_CHUNK_SAMPLES);
    let mut n = 0usize;
    for s in samples {
        match s {
            Ok(v) => chunk.push(v * scale),
            Err(e) => return Err((n, e)),
        }
        n += 1;
        if chunk.len() == READ_CHUNK_SAMPLES {
            if !sink(&chunk) {
                return Ok(n);
            }
            chunk.clear();
        }
    }
    if !chunk.is_empty() {
        sink(&chunk);
    }
    Ok(n)
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..])? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

/// Starts a source thread that decodes `spec` and sends frames to `tx`. The thread ends
/// at end of input, when `tx`'s receiver is gone, or when `stop` is cancelled; dropping
/// `tx` then tells the listener the stream is over. Decode errors come back through the
/// join handle.
pub fn spawn_source(
    spec: FileSpec,
    tx: mpsc::Sender<AudioFrame>,
    stop: CancellationToken,
    stats: Arc<EdgeStats>,
) -> std::thread::JoinHandle<Result<(), AudioError>> {
    std::thread::Builder::new()
        .name("panda-file-source".into())
        .spawn(move || run_source(spec, tx, stop, stats))
        .expect("spawning a thread only fails when the OS is out of resources")
}

fn run_source(
    spec: FileSpec,
    tx: mpsc::Sender<AudioFrame>,
    stop: CancellationToken,
    stats: Arc<EdgeStats>,
) -> Result<(), AudioError> {
    let started = Instant::now();
    let mut framer: Option<Framer> = None;
    let mut open = true;
    let send = |frame: AudioFrame, open: &mut bool| {
        if !*open || stop.is_cancelled() {
            *open = false;
            return;
        }
        if spec.realtime {
            // Pace: frame n is due at n * 30 ms after the start, like a microphone.
            let due = started + Duration::from_millis(frame.seq * FRAME_MS as u64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            *open = stats.offer(&tx, frame);
        } else if tx.blocking_send(frame).is_ok() {
            stats.frames_sent.fetch_add(1, Ordering::Relaxed);
        } else {
            *open = false;
        }
    };
    // The header gives the rate, so the framer is built on the first chunk.
    let probe = decode(&spec.path, spec.format, &mut |rate, ch, chunk| {
        let f = framer.get_or_insert_with(|| Framer::new(rate, ch));
        f.push(chunk, &mut |fr| send(fr, &mut open));
        open
    })?;
    if let Some(mut f) = framer {
        // Trailing silence in bounded chunks: its size follows the header's rate and
        // channels, which are checked but can still be large.
        let total = probe.0 as usize * probe.1 as usize * spec.tail_silence_ms as usize / 1000;
        let chunk = vec![0.0f32; (READ_CHUNK_SAMPLES * probe.1 as usize).min(total)];
        let mut left = total;
        while left > 0 && open {
            let n = left.min(chunk.len());
            f.push(&chunk[..n], &mut |fr| send(fr, &mut open));
            left -= n;
        }
        f.finish(&mut |fr| send(fr, &mut open));
    }
    Ok(())
}
