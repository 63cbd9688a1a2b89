//! Synthetic rooms: a deterministic random generator, room noise (white, pink, babble)
//! and a reverberant room, for the wake word's training set (install time, on the
//! installing thread) and the benches' evaluation sets. Deterministic on purpose: the
//! same seed gives the same set on every machine, so figures can be compared.

use crate::event::SAMPLE_RATE_HZ;

/// A small deterministic generator (xorshift64*): the set is the same on every machine.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    pub fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[(self.next_u64() % v.len() as u64) as usize]
    }
    pub fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.unit()
    }
    pub fn gauss(&mut self) -> f32 {
        // Sum of uniforms: close enough to normal for noise.
        (0..4).map(|_| self.unit()).sum::<f32>() - 2.0
    }
}

pub fn rms(x: &[f32]) -> f32 {
    (x.iter().map(|s| s * s).sum::<f32>() / x.len().max(1) as f32).sqrt()
}

/// `n` samples of noise of `kind` (`white`, `pink`, `babble`: overlapping speech from
/// `babble_src`), unit RMS.
pub fn noise(rng: &mut Rng, kind: &str, n: usize, babble_src: &[f32]) -> Vec<f32> {
    let mut out = vec![0f32; n];
    match kind {
        "pink" => {
            // Paul Kellet's economy pink filter.
            let (mut b0, mut b1, mut b2) = (0f32, 0f32, 0f32);
            for o in out.iter_mut() {
                let w = rng.gauss();
                b0 = 0.99765 * b0 + w * 0.099_046;
                b1 = 0.96300 * b1 + w * 0.296_516_4;
                b2 = 0.57000 * b2 + w * 1.052_691_3;
                *o = b0 + b1 + b2 + w * 0.1848;
            }
        }
        "babble" if babble_src.len() > n => {
            for _ in 0..4 {
                let at = (rng.next_u64() % (babble_src.len() - n) as u64) as usize;
                for (o, s) in out.iter_mut().zip(&babble_src[at..at + n]) {
                    *o += s;
                }
            }
        }
        _ => out.iter_mut().for_each(|o| *o = rng.gauss()),
    }
    let r = rms(&out).max(1e-9);
    out.iter_mut().for_each(|o| *o /= r);
    out
}

/// A synthetic room: exponentially decaying noise with `rt60_s`, direct path first.
pub fn reverberate(rng: &mut Rng, x: &[f32], rt60_s: f32) -> Vec<f32> {
    let len = (rt60_s * SAMPLE_RATE_HZ as f32) as usize;
    let mut ir: Vec<f32> = (0..len)
        .map(|i| {
            let t = i as f32 / SAMPLE_RATE_HZ as f32;
            rng.gauss() * 0.3 * (-6.9 * t / rt60_s).exp()
        })
        .collect();
    ir[0] = 1.0;
    // Sparse taps are enough for an evaluation room and keep the build fast.
    let taps: Vec<(usize, f32)> = ir
        .iter()
        .enumerate()
        .filter(|(i, v)| *i == 0 || (i % 7 == 0 && v.abs() > 1e-3))
        .map(|(i, v)| (i, *v))
        .collect();
    let mut y = vec![0f32; x.len() + len];
    for (i, &s) in x.iter().enumerate() {
        if s == 0.0 {
            continue;
        }
        for &(d, g) in &taps {
            y[i + d] += s * g;
        }
    }
    let g = rms(x) / rms(&y).max(1e-9);
    y.iter_mut().for_each(|v| *v *= g);
    y
}

/// Samples in [-1, 1] as 16-bit PCM (×32767, clamped): the scale the synthetic training
/// and evaluation sets are written at.
pub fn to_i16(x: &[f32]) -> Vec<i16> {
    x.iter()
        .map(|s| (s * 32767.0).clamp(-32768.0, 32767.0) as i16)
        .collect()
}
