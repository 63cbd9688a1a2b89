//! The wake word head: a small network over the last [`HEAD_EMBEDDINGS`] speech
//! embeddings ([`crate::listen::embed`]) that says whether they end in "hey panda" — and
//! its training, in plain Rust (install time, [`crate::listen::wake_train`]).
//!
//! Shape, as openWakeWord's own heads: the 16 × 96 embeddings flattened, layer-normalised,
//! two hidden layers of [`HIDDEN`] ReLU units, a sigmoid out. ~100 k weights: scoring is a
//! few hundred microseconds per 80 ms step on the listener thread; training is minutes.
//! Trained with Adam on a weighted binary cross-entropy (negatives outnumber positives
//! ten to one and a false wake costs more than a repeat), from a seeded start so that an
//! install is reproducible.
//!
//! The file (`wake/hey_panda.oww`) is a small JSON header line (format, shapes, recipe)
//! and the weights as little-endian f32.

use std::path::Path;

use ndarray::{Array1, Array2, ArrayView2, Axis, s};

use crate::audio::synth::Rng;
use crate::listen::embed::{EMB_DIM, HEAD_EMBEDDINGS};

/// Inputs: the flattened embeddings.
pub const INPUTS: usize = EMB_DIM * HEAD_EMBEDDINGS;
/// Units per hidden layer.
pub const HIDDEN: usize = 64;
const FORMAT: &str = "panda-wake-head-1";

/// What can go wrong reading or writing a head.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    /// The file cannot be read or written.
    #[error("wake word head {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a head of this format.
    #[error("wake word head {path} is not a {FORMAT} file: {problem}")]
    Format {
        /// The file.
        path: String,
        /// What was wrong.
        problem: String,
    },
}

/// The network's weights.
#[derive(Clone, Debug)]
pub struct Head {
    w1: Array2<f32>,
    b1: Array1<f32>,
    w2: Array2<f32>,
    b2: Array1<f32>,
    w3: Array1<f32>,
    b3: f32,
}

/// Layer norm without learnt scale (the first layer's weights carry it).
fn normalise(x: &mut Array2<f32>) {
    for mut row in x.rows_mut() {
        let n = row.len() as f32;
        let mean = row.sum() / n;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
        let inv = 1.0 / (var + 1e-5).sqrt();
        row.mapv_inplace(|v| (v - mean) * inv);
    }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// What the forward pass keeps for the backward one.
struct Forward {
    x: Array2<f32>,
    h1: Array2<f32>,
    h2: Array2<f32>,
    p: Array1<f32>,
}

impl Head {
    /// A seeded start: Kaiming-uniform weights, zero biases.
    pub fn seeded(rng: &mut Rng) -> Head {
        let mut init = |rows: usize, cols: usize| {
            let a = (6.0 / rows as f32).sqrt();
            Array2::from_shape_fn((rows, cols), |_| rng.range(-a, a))
        };
        let w1 = init(INPUTS, HIDDEN);
        let w2 = init(HIDDEN, HIDDEN);
        let w3 = init(HIDDEN, 1).column(0).to_owned();
        Head {
            w1,
            b1: Array1::zeros(HIDDEN),
            w2,
            b2: Array1::zeros(HIDDEN),
            w3,
            b3: 0.0,
        }
    }

    fn forward(&self, x: ArrayView2<f32>) -> Forward {
        let mut x = x.to_owned();
        normalise(&mut x);
        let h1 = (x.dot(&self.w1) + &self.b1).mapv(|v| v.max(0.0));
        let h2 = (h1.dot(&self.w2) + &self.b2).mapv(|v| v.max(0.0));
        let p = (h2.dot(&self.w3) + self.b3).mapv(sigmoid);
        Forward { x, h1, h2, p }
    }

    /// Scores rows of flattened embeddings (0–1: how sure the phrase just ended).
    pub fn scores(&self, x: ArrayView2<f32>) -> Array1<f32> {
        self.forward(x).p
    }

    /// Scores one window of [`HEAD_EMBEDDINGS`] embeddings, oldest first.
    pub fn score(&self, window: &[f32]) -> f32 {
        let x = ArrayView2::from_shape((1, INPUTS), window).expect("a full window");
        self.scores(x)[0]
    }

    /// Writes the head (header line, then the weights).
    pub fn save(&self, path: &Path, recipe: &str) -> Result<(), HeadError> {
        let header = serde_json::json!({
            "format": FORMAT, "inputs": INPUTS, "hidden": HIDDEN, "recipe": recipe,
        });
        let mut bytes = format!("{header}\n").into_bytes();
        for v in self
            .w1
            .iter()
            .chain(&self.b1)
            .chain(&self.w2)
            .chain(&self.b2)
            .chain(&self.w3)
            .chain(std::iter::once(&self.b3))
        {
            bytes.extend(v.to_le_bytes());
        }
        std::fs::write(path, bytes).map_err(|source| HeadError::Io {
            path: path.display().to_string(),
            source,
        })
    }

    /// Reads a head written by [`Head::save`].
    pub fn load(path: &Path) -> Result<Head, HeadError> {
        let shown = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| HeadError::Io {
            path: shown.clone(),
            source,
        })?;
        let bad = |problem: &str| HeadError::Format {
            path: shown.clone(),
            problem: problem.to_string(),
        };
        let nl = bytes
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| bad("no header line"))?;
        let header: serde_json::Value =
            serde_json::from_slice(&bytes[..nl]).map_err(|_| bad("the header is not JSON"))?;
        if header["format"] != FORMAT || header["inputs"] != INPUTS || header["hidden"] != HIDDEN {
            return Err(bad(&format!("header {header}")));
        }
        let body = &bytes[nl + 1..];
        let want = INPUTS * HIDDEN + HIDDEN + HIDDEN * HIDDEN + HIDDEN + HIDDEN + 1;
        if body.len() != want * 4 {
            return Err(bad(&format!(
                "{} bytes of weights, {} expected",
                body.len(),
                want * 4
            )));
        }
        let mut vals = body
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]));
        let mut take = |n: usize| vals.by_ref().take(n).collect::<Vec<f32>>();
        let w1 = Array2::from_shape_vec((INPUTS, HIDDEN), take(INPUTS * HIDDEN)).expect("sized");
        let b1 = Array1::from(take(HIDDEN));
        let w2 = Array2::from_shape_vec((HIDDEN, HIDDEN), take(HIDDEN * HIDDEN)).expect("sized");
        let b2 = Array1::from(take(HIDDEN));
        let w3 = Array1::from(take(HIDDEN));
        let b3 = take(1)[0];
        Ok(Head {
            w1,
            b1,
            w2,
            b2,
            w3,
            b3,
        })
    }
}

/// Adam's moments for one parameter tensor.
struct Moments<D: ndarray::Dimension> {
    m: ndarray::Array<f32, D>,
    v: ndarray::Array<f32, D>,
}

impl<D: ndarray::Dimension> Moments<D> {
    fn new(like: &ndarray::Array<f32, D>) -> Self {
        Moments {
            m: ndarray::Array::zeros(like.raw_dim()),
            v: ndarray::Array::zeros(like.raw_dim()),
        }
    }

    fn step(
        &mut self,
        p: &mut ndarray::Array<f32, D>,
        g: &ndarray::Array<f32, D>,
        t: i32,
        lr: f32,
    ) {
        const B1: f32 = 0.9;
        const B2: f32 = 0.999;
        const WEIGHT_DECAY: f32 = 1e-4;
        self.m.zip_mut_with(g, |m, g| *m = B1 * *m + (1.0 - B1) * g);
        self.v
            .zip_mut_with(g, |v, g| *v = B2 * *v + (1.0 - B2) * g * g);
        let c1 = 1.0 - B1.powi(t);
        let c2 = 1.0 - B2.powi(t);
        ndarray::Zip::from(p)
            .and(&self.m)
            .and(&self.v)
            .for_each(|p, m, v| {
                *p -= lr * ((m / c1) / ((v / c2).sqrt() + 1e-8) + WEIGHT_DECAY * *p);
            });
    }
}

/// Training settings.
#[derive(Clone, Copy, Debug)]
pub struct TrainSettings {
    /// Passes over the data.
    pub epochs: usize,
    /// Rows per step.
    pub batch: usize,
    /// Adam's step size.
    pub learning_rate: f32,
    /// How much more a positive's error counts than a negative's.
    pub positive_weight: f32,
}

/// Trains `head` on rows `x` with labels `y` (1 = the phrase ends here); returns the
/// last epoch's mean loss.
pub fn train(
    head: &mut Head,
    x: &Array2<f32>,
    y: &[f32],
    settings: TrainSettings,
    rng: &mut Rng,
) -> f32 {
    let n = x.nrows();
    let mut order: Vec<usize> = (0..n).collect();
    let mut mom = (
        Moments::new(&head.w1),
        Moments::new(&head.b1),
        Moments::new(&head.w2),
        Moments::new(&head.b2),
        Moments::new(&head.w3),
    );
    let (mut mb3, mut vb3) = (0f32, 0f32);
    let mut t = 0;
    let mut last = 0.0;
    for epoch in 0..settings.epochs {
        // Fisher–Yates with the seeded generator.
        for i in (1..n).rev() {
            order.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
        }
        // Cosine decay to a tenth.
        let lr = settings.learning_rate
            * (0.1
                + 0.9
                    * 0.5
                    * (1.0 + (std::f32::consts::PI * epoch as f32 / settings.epochs as f32).cos()));
        let mut total = 0.0;
        for chunk in order.chunks(settings.batch) {
            let xb = x.select(Axis(0), chunk);
            let yb: Vec<f32> = chunk.iter().map(|&i| y[i]).collect();
            let f = head.forward(xb.view());
            let m = chunk.len() as f32;
            // dL/dlogit of the weighted cross-entropy.
            let mut d3 = Array1::zeros(chunk.len());
            for (i, (&p, &yy)) in f.p.iter().zip(&yb).enumerate() {
                let w = if yy > 0.5 {
                    settings.positive_weight
                } else {
                    1.0
                };
                d3[i] = w * (p - yy) / m;
                let p = p.clamp(1e-7, 1.0 - 1e-7);
                total += -w * (yy * p.ln() + (1.0 - yy) * (1.0 - p).ln());
            }
            let gw3 = f.h2.t().dot(&d3);
            let gb3 = d3.sum();
            let mut d2 = d3
                .view()
                .insert_axis(Axis(1))
                .dot(&head.w3.view().insert_axis(Axis(0)));
            d2.zip_mut_with(&f.h2, |d, h| {
                if *h <= 0.0 {
                    *d = 0.0
                }
            });
            let gw2 = f.h1.t().dot(&d2);
            let gb2 = d2.sum_axis(Axis(0));
            let mut d1 = d2.dot(&head.w2.t());
            d1.zip_mut_with(&f.h1, |d, h| {
                if *h <= 0.0 {
                    *d = 0.0
                }
            });
            let gw1 = f.x.t().dot(&d1);
            let gb1 = d1.sum_axis(Axis(0));
            t += 1;
            mom.0.step(&mut head.w1, &gw1, t, lr);
            mom.1.step(&mut head.b1, &gb1, t, lr);
            mom.2.step(&mut head.w2, &gw2, t, lr);
            mom.3.step(&mut head.b2, &gb2, t, lr);
            mom.4.step(&mut head.w3, &gw3, t, lr);
            mb3 = 0.9 * mb3 + 0.1 * gb3;
            vb3 = 0.999 * vb3 + 0.001 * gb3 * gb3;
            head.b3 -= lr * (mb3 / (1.0 - 0.9f32.powi(t)))
                / ((vb3 / (1.0 - 0.999f32.powi(t))).sqrt() + 1e-8);
        }
        last = total / n as f32;
    }
    last
}

/// Rows `from..to` of `x` as a view (benches).
pub fn rows(x: &Array2<f32>, from: usize, to: usize) -> ArrayView2<'_, f32> {
    x.slice(s![from..to, ..])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The trainer learns a separable toy problem and the file round-trips exactly.
    #[test]
    fn learns_and_round_trips() {
        let mut rng = Rng(7);
        let n = 400;
        let mut x = Array2::zeros((n, INPUTS));
        let mut y = vec![0f32; n];
        for i in 0..n {
            let pos = i % 4 == 0;
            y[i] = if pos { 1.0 } else { 0.0 };
            for j in 0..INPUTS {
                let bump = if pos && j % 7 == 0 { 1.5 } else { 0.0 };
                x[[i, j]] = rng.range(-1.0, 1.0) + bump;
            }
        }
        let mut head = Head::seeded(&mut Rng(1));
        let settings = TrainSettings {
            epochs: 20,
            batch: 32,
            learning_rate: 1e-3,
            positive_weight: 1.0,
        };
        let loss = train(&mut head, &x, &y, settings, &mut rng);
        assert!(loss < 0.1, "loss {loss}");
        let s = head.scores(x.view());
        let right = s
            .iter()
            .zip(&y)
            .filter(|(s, y)| (**s > 0.5) == (**y > 0.5))
            .count();
        assert!(right >= n * 98 / 100, "{right} of {n}");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("h.oww");
        head.save(&p, "test").unwrap();
        let back = Head::load(&p).unwrap();
        assert_eq!(back.scores(x.view()), s);
        std::fs::write(&p, b"{\"format\":\"x\"}\n").unwrap();
        assert!(matches!(Head::load(&p), Err(HeadError::Format { .. })));
    }
}
