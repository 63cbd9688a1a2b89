//! Voice activity detection with webrtc-vad.
//!
//! `webrtc_vad::Vad` is not `Send`, so a [`Vad`] is built on the listener thread and
//! never leaves it. It classifies one 30 ms 16 kHz frame at a time.

use webrtc_vad::{SampleRate, VadMode};

use crate::event::FRAME_SAMPLES;

/// A voice/non-voice classifier for 30 ms 16 kHz frames.
pub struct Vad {
    inner: webrtc_vad::Vad,
}

impl Vad {
    /// A classifier with aggressiveness `mode` (0–3, validated by the config).
    pub fn new(mode: u8) -> Self {
        let mode = match mode {
            0 => VadMode::Quality,
            1 => VadMode::LowBitrate,
            2 => VadMode::Aggressive,
            _ => VadMode::VeryAggressive,
        };
        Self {
            inner: webrtc_vad::Vad::new_with_rate_and_mode(SampleRate::Rate16kHz, mode),
        }
    }

    /// True when the frame holds speech.
    pub fn is_voiced(&mut self, frame: &[i16; FRAME_SAMPLES]) -> bool {
        // webrtc-vad only rejects lengths other than 10/20/30 ms; ours is always 30 ms.
        self.inner.is_voice_segment(&frame[..]).unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_is_not_voiced_and_a_voice_like_signal_is() {
        let mut v = Vad::new(2);
        assert!(!v.is_voiced(&[0; FRAME_SAMPLES]));
        // A harmonic-rich 150 Hz buzz with formant-like partials reads as voice.
        let mut voiced = 0;
        for n in 0..40 {
            let mut f = [0i16; FRAME_SAMPLES];
            for (i, s) in f.iter_mut().enumerate() {
                let t = (n * FRAME_SAMPLES + i) as f32 / 16_000.0;
                let x: f32 = (1..20)
                    .map(|h| (2.0 * std::f32::consts::PI * 150.0 * h as f32 * t).sin() / h as f32)
                    .sum();
                *s = (x * 6000.0) as i16;
            }
            if v.is_voiced(&f) {
                voiced += 1;
            }
        }
        assert!(voiced > 30, "{voiced}/40 voiced");
    }
}
