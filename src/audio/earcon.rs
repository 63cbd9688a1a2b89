//! The wake earcon: the short chime that tells the speaker "I heard you, go on". Built
//! once at start-up (or read from `[wake] earcon_file`) and handed to playback as a
//! [`Cue`] on every accepted wake; the listener holds its VAD for the chime's length plus
//! [`OUTPUT_LATENCY_MS`], so the chime coming back through the microphone is never taken
//! for the question.

use std::path::Path;
use std::sync::Arc;

use super::AudioError;
use super::file::{FileFormat, read_all};
use crate::event::Cue;

/// Rate of the built-in chime.
const RATE_HZ: u32 = 24_000;
/// The longest earcon file taken: a chime, not a jingle.
const MAX_MS: u64 = 2_000;
/// From handing the chime to playback until it has left the room: the output buffer,
/// the sound server and the capture path's own buffering.
pub const OUTPUT_LATENCY_MS: u64 = 250;

/// The built-in chime: two soft rising tones (E5 then B5, 70 + 110 ms) with raised-cosine
/// edges, at about −12 dBFS. Pure tones sit outside the VAD's idea of speech and are
/// gentle at night.
pub fn chime() -> Cue {
    let mut samples = Vec::new();
    for (freq_hz, ms) in [(659.25f32, 70u32), (987.77, 110)] {
        let n = (RATE_HZ * ms / 1000) as usize;
        let edge = (RATE_HZ / 100) as usize; // 10 ms fades: no clicks
        for i in 0..n {
            let t = i as f32 / RATE_HZ as f32;
            let fade = if i < edge {
                0.5 - 0.5 * (std::f32::consts::PI * i as f32 / edge as f32).cos()
            } else if i >= n - edge {
                0.5 - 0.5 * (std::f32::consts::PI * (n - 1 - i) as f32 / edge as f32).cos()
            } else {
                1.0
            };
            samples.push(0.25 * fade * (2.0 * std::f32::consts::PI * freq_hz * t).sin());
        }
    }
    Cue {
        samples: samples.into(),
        rate_hz: RATE_HZ,
    }
}

/// Reads an earcon file (any WAV Panda reads), down-mixed to mono; at most 2 s.
pub fn load(path: &Path) -> Result<Cue, AudioError> {
    let (interleaved, rate_hz, channels) = read_all(path, FileFormat::Wav)?;
    let ch = channels.max(1) as usize;
    let samples: Vec<f32> = interleaved
        .chunks(ch)
        .map(|f| f.iter().sum::<f32>() / ch as f32)
        .collect();
    let ms = samples.len() as u64 * 1000 / rate_hz.max(1) as u64;
    if samples.is_empty() || ms > MAX_MS {
        return Err(AudioError::Decode {
            path: path.to_path_buf(),
            problem: format!("an earcon must be 1 ms to {MAX_MS} ms long; this is {ms} ms"),
        });
    }
    Ok(Cue {
        samples: Arc::from(samples),
        rate_hz,
    })
}

/// The cue's length in milliseconds.
pub fn duration_ms(cue: &Cue) -> u64 {
    cue.samples.len() as u64 * 1000 / cue.rate_hz.max(1) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chime_is_short_quiet_and_starts_and_ends_in_silence() {
        let c = chime();
        assert_eq!(duration_ms(&c), 180);
        let peak = c.samples.iter().fold(0f32, |m, s| m.max(s.abs()));
        assert!(peak > 0.2 && peak <= 0.25, "{peak}");
        assert!(c.samples[0].abs() < 1e-3 && c.samples[c.samples.len() - 1].abs() < 0.01);
    }

    #[test]
    fn an_earcon_file_too_long_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("long.wav");
        let spec = hound::WavSpec {
            channels: 2,
            sample_rate: 8000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::create(&path, spec).unwrap();
        for _ in 0..8000 * 3 * 2 {
            w.write_sample(100i16).unwrap();
        }
        w.finalize().unwrap();
        let e = load(&path).unwrap_err().to_string();
        assert!(e.contains("long.wav") && e.contains("3000 ms"), "{e}");
        let short = dir.path().join("short.wav");
        let mut w = hound::WavWriter::create(&short, spec).unwrap();
        for _ in 0..8000 / 5 * 2 {
            w.write_sample(100i16).unwrap();
        }
        w.finalize().unwrap();
        let c = load(&short).unwrap();
        assert_eq!((duration_ms(&c), c.rate_hz), (200, 8000));
    }
}
