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

/// How far below the utterance's loudest speech a frame may be and still count as the
/// speaker's: background speech (a television, people talking across the room) keeps
/// webrtc-vad voiced forever, so an utterance would never end. 18 dB keeps soft word
/// endings (measured 6–15 dB under the peaks) and drops babble 10 dB or more under the
/// speaker.
pub const LEVEL_GATE_DB: f32 = 18.0;
/// The peak forgets at this rate (dB per 30 ms frame: 1 dB/s), following a speaker who
/// gets quieter. At 3.3 dB/s the peak had sunk to the level of babble 10–20 dB under the
/// speaker within the hangover after a question, and the television went on into it
/// ("What time is it? Five, five, eight of spades…"); at 1 dB/s `panda bench wake` hears
/// 84.6 % of the questions instead of 82.7 % (babble 74.7 → 79.7 %), none lost.
const PEAK_DECAY_DB: f32 = 0.03;

/// Voiced frames must also stand this far above the room's background level: steady
/// noise (a fan, a hum, the white and pink noise of the wake bench) at 10–18 dB under
/// the speaker passes both webrtc-vad and the peak gate, and held questions open until
/// the next "hey panda" 4.5 s later. A 30 ms frame of steady noise stays within ~2 dB of
/// its level; speech stands 10 dB and more above it.
pub const FLOOR_MARGIN_DB: f32 = 6.0;
/// The background is the quietest frame of the last [`FLOOR_BLOCKS`] ×
/// [`FLOOR_BLOCK_FRAMES`] frames (1.5 s; minimum statistics, kept as block minima): the
/// pauses between words hold it at the noise, not the speech, and it follows a room that
/// gets louder within 1.5 s. Unknown (no floor gate) until that much audio was seen.
const FLOOR_BLOCK_FRAMES: usize = 10;
/// See [`FLOOR_BLOCK_FRAMES`].
const FLOOR_BLOCKS: usize = 5;

/// The level gate: voiced frames must be within [`LEVEL_GATE_DB`] of the utterance's
/// loudest voiced frame so far (reset between utterances) and [`FLOOR_MARGIN_DB`] above
/// the background (tracked on every frame, armed or not).
#[derive(Debug, Clone, Copy)]
pub struct LevelGate {
    peak_db: f32,
    /// Minima of the last whole blocks (a ring), of the block being filled, its length,
    /// and how many blocks were completed.
    blocks: [f32; FLOOR_BLOCKS],
    block_min: f32,
    in_block: usize,
    completed: usize,
}

impl Default for LevelGate {
    fn default() -> Self {
        Self {
            peak_db: f32::NEG_INFINITY,
            blocks: [f32::INFINITY; FLOOR_BLOCKS],
            block_min: f32::INFINITY,
            in_block: 0,
            completed: 0,
        }
    }
}

impl LevelGate {
    /// Forgets the utterance's level (not the room's).
    pub fn reset(&mut self) {
        self.peak_db = f32::NEG_INFINITY;
    }

    /// Follows the background level with `frame`; its level in dB.
    pub fn observe(&mut self, frame: &[i16; FRAME_SAMPLES]) -> f32 {
        let energy = frame.iter().map(|&s| (s as f32).powi(2)).sum::<f32>() / FRAME_SAMPLES as f32;
        let db = 10.0 * (energy + 1.0).log10();
        self.block_min = self.block_min.min(db);
        self.in_block += 1;
        if self.in_block == FLOOR_BLOCK_FRAMES {
            self.blocks[self.completed % FLOOR_BLOCKS] = self.block_min;
            self.completed += 1;
            self.block_min = f32::INFINITY;
            self.in_block = 0;
        }
        db
    }

    /// The background level (dB), once 1.5 s of audio has been seen.
    pub fn floor_db(&self) -> Option<f32> {
        (self.completed >= FLOOR_BLOCKS)
            .then(|| self.blocks.iter().fold(self.block_min, |m, &b| m.min(b)))
    }

    /// The VAD's decision `voiced` for `frame`, gated by the utterance's level and the
    /// background's.
    pub fn voiced(&mut self, frame: &[i16; FRAME_SAMPLES], voiced: bool) -> bool {
        let floor = self.floor_db();
        let db = self.observe(frame);
        let voiced = voiced && floor.is_none_or(|f| db > f + FLOOR_MARGIN_DB);
        if voiced {
            self.peak_db = self.peak_db.max(db);
        }
        let keep = db > self.peak_db - LEVEL_GATE_DB;
        self.peak_db -= PEAK_DECAY_DB;
        voiced && keep
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame of a sine of amplitude `amp`.
    fn frame(amp: f32) -> [i16; FRAME_SAMPLES] {
        let mut f = [0i16; FRAME_SAMPLES];
        for (i, s) in f.iter_mut().enumerate() {
            *s = (amp * (i as f32 * 0.3).sin()) as i16;
        }
        f
    }

    #[test]
    fn the_level_gate_drops_background_speech_well_under_the_speaker() {
        let mut g = LevelGate::default();
        assert!(g.voiced(&frame(8000.0), true), "the speaker");
        assert!(g.voiced(&frame(2000.0), true), "12 dB under: a soft ending");
        assert!(
            !g.voiced(&frame(600.0), true),
            "22 dB under: the television"
        );
        assert!(!g.voiced(&frame(8000.0), false), "the VAD still decides");
        g.reset();
        assert!(
            g.voiced(&frame(600.0), true),
            "a new utterance sets its own level"
        );
    }

    #[test]
    fn a_television_20_db_under_stays_out_for_a_whole_hangover() {
        let mut g = LevelGate::default();
        for _ in 0..10 {
            assert!(g.voiced(&frame(8000.0), true), "the question");
        }
        // The question is over; the television goes on, 20 dB under it, for the 900 ms
        // that end the utterance: the peak must not sink to it meanwhile.
        for n in 0..30 {
            assert!(!g.voiced(&frame(800.0), true), "television frame {n}");
        }
    }

    #[test]
    fn steady_noise_is_background_and_speech_over_it_is_not() {
        let mut rng = 12345u32;
        let mut noise = |amp: f32| {
            let mut f = [0i16; FRAME_SAMPLES];
            for s in f.iter_mut() {
                rng = rng.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                *s = (((rng >> 16) as f32 / 32768.0 - 1.0) * amp) as i16;
            }
            f
        };
        let mut g = LevelGate::default();
        // Two seconds of the room: white noise the VAD calls voiced.
        assert!(g.voiced(&noise(1000.0), true), "no background known yet");
        for _ in 0..66 {
            g.observe(&noise(1000.0));
        }
        assert!(!g.voiced(&noise(1000.0), true), "the noise itself");
        assert!(!g.voiced(&noise(1300.0), true), "2 dB over it");
        // Someone speaking 12 dB over it; the noise after them is background again.
        assert!(g.voiced(&noise(4000.0), true), "12 dB over the noise");
        assert!(g.voiced(&noise(4000.0), true));
        assert!(
            !g.voiced(&noise(1000.0), true),
            "the noise after the speech"
        );
    }

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
