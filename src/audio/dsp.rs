//! Down-mixing, resampling and framing: pure, allocation-bounded signal code that runs
//! on whichever thread feeds the pipeline (the capture DSP thread or a file source thread).
//!
//! The resampler is a streaming windowed-sinc interpolator. `rubato` was measured
//! against it (1 s tones, release build): the same in-band gain, aliases −125 vs −90 dB
//! from 48 kHz and −115 vs −42 dB from 22.05 kHz, 25–55× less CPU (0.9–1.9 vs
//! 16–49 ms per second of audio) — but with it Whisper heard one of the synthetic
//! questions of `listen::the_question_after_a_pause…` wrong ("center timer" for "set a
//! timer", en-gb+f3 from espeak's 22.05 kHz), so this one stays until a broader
//! evaluation shows the switch costs no words. Sound cards run at 44.1 or
//! 48 kHz and files at anything; the pipeline wants 16 kHz. Low-pass filtering at the
//! output Nyquist frequency while interpolating keeps energy above 8 kHz from folding
//! into the speech band, which linear interpolation would not.

use crate::event::{AudioFrame, FRAME_SAMPLES, SAMPLE_RATE_HZ};

/// Half-width of the sinc kernel in input samples (at unity ratio). 16 taps a side is
/// well past what speech recognition can hear and costs ~32 multiply-adds per output sample.
const HALF_TAPS: usize = 16;

/// Streaming resampler from any rate to another, mono f32.
#[derive(Debug)]
pub struct Resampler {
    ratio: f64,
    cutoff: f64,
    half_width: usize,
    buf: Vec<f32>,
    /// Absolute input index of `buf[0]`.
    base: u64,
    /// Next output sample index.
    next_out: u64,
}

impl Resampler {
    /// A resampler from `from_hz` to `to_hz`.
    pub fn new(from_hz: u32, to_hz: u32) -> Self {
        let ratio = from_hz as f64 / to_hz as f64;
        let cutoff = (1.0 / ratio).min(1.0);
        let half_width = (HALF_TAPS as f64 / cutoff).ceil() as usize;
        Self {
            ratio,
            cutoff,
            half_width,
            buf: Vec::with_capacity(4096),
            base: 0,
            next_out: 0,
        }
    }

    /// Feeds input samples and appends every output sample they make computable.
    pub fn process(&mut self, input: &[f32], out: &mut Vec<f32>) {
        if self.ratio == 1.0 {
            out.extend_from_slice(input);
            return;
        }
        self.buf.extend_from_slice(input);
        let hw = self.half_width as i64;
        loop {
            let t = self.next_out as f64 * self.ratio;
            let centre = t.floor() as i64;
            let last_needed = centre + hw;
            if last_needed >= self.base as i64 + self.buf.len() as i64 {
                break;
            }
            let mut acc = 0.0f64;
            let mut norm = 0.0f64;
            for k in (centre - hw + 1)..=last_needed {
                let x = (t - k as f64) * self.cutoff;
                let w = window((t - k as f64) / (hw as f64));
                let c = sinc(x) * w;
                norm += c;
                let idx = k - self.base as i64;
                if idx >= 0 {
                    acc += c * self.buf[idx as usize] as f64;
                }
            }
            out.push(if norm != 0.0 {
                (acc / norm) as f32
            } else {
                0.0
            });
            self.next_out += 1;
        }
        // Drop input that no future output sample can reach.
        let t = self.next_out as f64 * self.ratio;
        let keep_from = (t.floor() as i64 - hw).max(self.base as i64) as u64;
        let drop = (keep_from - self.base) as usize;
        if drop > 0 {
            self.buf.drain(..drop.min(self.buf.len()));
            self.base = keep_from;
        }
    }

    /// Flushes the tail by feeding the kernel's worth of silence.
    pub fn finish(&mut self, out: &mut Vec<f32>) {
        if self.ratio != 1.0 {
            let pad = vec![0.0; self.half_width + 1];
            self.process(&pad, out);
        }
    }
}

fn sinc(x: f64) -> f64 {
    if x.abs() < 1e-9 {
        1.0
    } else {
        let px = std::f64::consts::PI * x;
        px.sin() / px
    }
}

/// Blackman window over [-1, 1].
fn window(x: f64) -> f64 {
    if x.abs() >= 1.0 {
        return 0.0;
    }
    let n = (x + 1.0) / 2.0;
    let tau = 2.0 * std::f64::consts::PI;
    0.42 - 0.5 * (tau * n).cos() + 0.08 * (2.0 * tau * n).cos()
}

/// Turns interleaved samples at any rate and channel count into 16 kHz mono frames.
#[derive(Debug)]
pub struct Framer {
    channels: usize,
    resampler: Resampler,
    mono: Vec<f32>,
    resampled: Vec<f32>,
    pending: Vec<i16>,
    seq: u64,
}

impl Framer {
    /// A framer for interleaved input with `channels` channels at `rate_hz`.
    pub fn new(rate_hz: u32, channels: u16) -> Self {
        Self {
            channels: channels.max(1) as usize,
            resampler: Resampler::new(rate_hz, SAMPLE_RATE_HZ),
            mono: Vec::new(),
            resampled: Vec::new(),
            pending: Vec::with_capacity(FRAME_SAMPLES * 2),
            seq: 0,
        }
    }

    /// Feeds interleaved f32 samples in [-1, 1]; calls `emit` for every complete frame.
    pub fn push(&mut self, interleaved: &[f32], emit: &mut impl FnMut(AudioFrame)) {
        self.mono.clear();
        self.mono.extend(
            interleaved
                .chunks(self.channels)
                .map(|c| c.iter().sum::<f32>() / c.len() as f32),
        );
        self.resampled.clear();
        self.resampler.process(&self.mono, &mut self.resampled);
        self.drain(emit);
    }

    /// Flushes the resampler and emits the last partial frame padded with silence.
    pub fn finish(&mut self, emit: &mut impl FnMut(AudioFrame)) {
        self.resampled.clear();
        self.resampler.finish(&mut self.resampled);
        self.drain(emit);
        if !self.pending.is_empty() {
            self.pending.resize(FRAME_SAMPLES, 0);
            self.emit_frame(emit);
        }
    }

    /// Numbers the next frame `seq`: a re-opened device continues the numbering of the
    /// one it replaces, so that everything keyed on frame numbers downstream (the wake
    /// word's refractory window, the endpointer) sees time go on, not restart.
    pub fn continue_from(&mut self, seq: u64) {
        self.seq = seq;
    }

    /// Number of the next frame (frames emitted so far, for a fresh framer).
    pub fn frames(&self) -> u64 {
        self.seq
    }

    fn drain(&mut self, emit: &mut impl FnMut(AudioFrame)) {
        for i in 0..self.resampled.len() {
            self.pending.push(f32_to_i16(self.resampled[i]));
            if self.pending.len() == FRAME_SAMPLES {
                self.emit_frame(emit);
            }
        }
    }

    fn emit_frame(&mut self, emit: &mut impl FnMut(AudioFrame)) {
        let mut samples = Box::new([0i16; FRAME_SAMPLES]);
        samples.copy_from_slice(&self.pending[..FRAME_SAMPLES]);
        self.pending.clear();
        emit(AudioFrame {
            seq: self.seq,
            samples,
            linear: None,
            near_end: false,
            no_echo: false,
        });
        self.seq += 1;
    }
}

/// f32 in [-1, 1] → i16, clamped.
pub fn f32_to_i16(s: f32) -> i16 {
    (s * 32767.0).round().clamp(-32768.0, 32767.0) as i16
}

/// Whole-buffer conversion to 16 kHz mono i16 (for one-shot tools such as `panda enroll`).
pub fn to_16k_mono(interleaved: &[f32], rate_hz: u32, channels: u16) -> Vec<i16> {
    let mut framer = Framer::new(rate_hz, channels);
    let mut out = Vec::with_capacity(interleaved.len() / channels.max(1) as usize);
    let mut emit = |f: AudioFrame| out.extend_from_slice(&f.samples[..]);
    framer.push(interleaved, &mut emit);
    framer.finish(&mut emit);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(rate: u32, hz: f32, secs: f32) -> Vec<f32> {
        (0..(rate as f32 * secs) as usize)
            .map(|i| 0.5 * (2.0 * std::f32::consts::PI * hz * i as f32 / rate as f32).sin())
            .collect()
    }

    /// Amplitude of a frequency in a signal by correlation.
    fn amplitude(x: &[f32], rate: u32, hz: f32) -> f32 {
        let (mut s, mut c) = (0.0f64, 0.0f64);
        for (i, v) in x.iter().enumerate() {
            let ph = 2.0 * std::f64::consts::PI * hz as f64 * i as f64 / rate as f64;
            s += *v as f64 * ph.sin();
            c += *v as f64 * ph.cos();
        }
        (2.0 * (s * s + c * c).sqrt() / x.len() as f64) as f32
    }

    #[test]
    fn resample_keeps_in_band_tone_and_length() {
        for from in [8_000, 22_050, 44_100, 48_000] {
            let x = tone(from, 440.0, 1.0);
            let mut r = Resampler::new(from, 16_000);
            let mut y = Vec::new();
            // Feed in odd-sized chunks, as a sound card would.
            for c in x.chunks(997) {
                r.process(c, &mut y);
            }
            r.finish(&mut y);
            let expect = 16_000usize;
            assert!(
                (y.len() as i64 - expect as i64).abs() <= 40,
                "{from} Hz: {} samples",
                y.len()
            );
            let a = amplitude(&y[500..15_000], 16_000, 440.0);
            assert!((a - 0.5).abs() < 0.02, "{from} Hz: amplitude {a}");
        }
    }

    #[test]
    fn resample_rejects_out_of_band_tone() {
        // 12 kHz at 48 kHz would alias to 4 kHz at 16 kHz without the low-pass.
        let x = tone(48_000, 12_000.0, 0.5);
        let mut y = Vec::new();
        let mut r = Resampler::new(48_000, 16_000);
        r.process(&x, &mut y);
        let a = amplitude(&y[200..7_000], 16_000, 4_000.0);
        assert!(a < 0.01, "aliased amplitude {a}");
    }

    #[test]
    fn framer_downmixes_and_frames() {
        // Stereo with opposite channels cancels to silence; frames are 480 samples.
        let stereo: Vec<f32> = (0..16_000 * 2)
            .map(|i| if i % 2 == 0 { 0.3 } else { -0.3 })
            .collect();
        let mut frames = Vec::new();
        let mut f = Framer::new(16_000, 2);
        f.push(&stereo, &mut |fr| frames.push(fr));
        f.finish(&mut |fr| frames.push(fr));
        assert_eq!(frames.len(), 16_000 / FRAME_SAMPLES + 1);
        assert!(frames.iter().all(|f| f.samples.iter().all(|&s| s == 0)));
        assert_eq!(frames.last().unwrap().seq, frames.len() as u64 - 1);
        // A re-opened device's framer continues the numbering.
        let mut g = Framer::new(16_000, 2);
        g.continue_from(f.frames());
        let mut more = Vec::new();
        g.push(&stereo[..FRAME_SAMPLES * 2], &mut |fr| more.push(fr));
        assert_eq!(more[0].seq, frames.len() as u64);
    }

    #[test]
    fn f32_to_i16_clamps() {
        assert_eq!(f32_to_i16(2.0), 32767);
        assert_eq!(f32_to_i16(-2.0), -32768);
        assert_eq!(f32_to_i16(0.0), 0);
    }
}
