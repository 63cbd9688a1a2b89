//! Wake word detection with rustpotter (MFCC features compared to reference templates
//! with dynamic time warping).
//!
//! A [`WakeDetector`] is owned by the listener thread: rustpotter keeps a rolling feature
//! window that must see every frame in order, so it cannot be shared. It also applies the
//! refractory window: one spoken "hey panda" gives exactly one detection even though the
//! score stays high for several frames — and lifts most of it when the second stage
//! rejects a detection, so a false hit on other speech (Panda's own echo, above all)
//! does not blind it to a person who says the phrase a moment later.
//!
//! [`build_reference`] turns a handful of recordings into a `.rpw` template file — used by
//! `panda models install` (synthesised voices) and `panda enroll` (the owner's voice).

use std::collections::HashMap;
use std::path::Path;

use rustpotter::{
    Rustpotter, RustpotterConfig, ScoreMode, WakewordLoad, WakewordRef,
    WakewordRefBuildFromBuffers, WakewordSave,
};

use crate::config::WakeConfig;
use crate::event::{FRAME_MS, FRAME_SAMPLES, SAMPLE_RATE_HZ};

/// MFCC coefficients per feature frame in built references (rustpotter's default).
const MFCC_SIZE: u16 = 16;

/// Errors of the wake word stage.
#[derive(Debug, thiserror::Error)]
pub enum WakeError {
    /// The wake word file is missing.
    #[error("wake word file {0} is missing: run `panda models install` (or `panda enroll`)")]
    Missing(String),
    /// The file exists but rustpotter cannot load it.
    #[error("wake word file {path} cannot be loaded: {problem}")]
    Load {
        /// File.
        path: String,
        /// rustpotter's message.
        problem: String,
    },
    /// Building a reference from recordings failed.
    #[error("cannot build wake word {name:?}: {problem}")]
    Build {
        /// Wake word name.
        name: String,
        /// What went wrong.
        problem: String,
    },
}

/// A detection.
#[derive(Debug, Clone, PartialEq)]
pub struct WakeHit {
    /// Wake word name.
    pub name: String,
    /// Score 0–1.
    pub score: f32,
}

/// The wake word detector: rustpotter plus the refractory window. Two detectors side by
/// side, each with its own threshold, either of which may fire: the installed trained
/// model (cheap, set for recall) and DTW templates (the shipped ones, and the owner's
/// from `panda enroll`). Measured (`panda bench wake --first-stage`): the model alone
/// missed a voice the templates catch (espeak en-us+m3 in the tests), and the templates
/// alone miss noisy, reverberant and fast speakers the model catches.
pub struct WakeDetector {
    stages: Vec<Stage>,
    refractory_frames: u64,
    /// The first frame at which a detection may fire again.
    open_from: u64,
}

/// Below this RMS level (a quiet room's noise floor) the head's front end skips its
/// embedding network ([`crate::listen::embed::Embedder::with_quiet_gate`]).
const QUIET_DBFS: f32 = -55.0;

/// One detector of a [`WakeDetector`].
enum Stage {
    /// rustpotter: a trained MFCC model or DTW templates.
    Rustpotter(Box<Rustpotter>),
    /// A head over speech embeddings ([`HeadDetector`]).
    Head(Box<HeadDetector>),
}

impl Stage {
    fn process(&mut self, frame: &[i16; FRAME_SAMPLES]) -> Option<WakeHit> {
        match self {
            Stage::Rustpotter(rp) => rp.process_samples(frame.to_vec()).map(|d| WakeHit {
                name: d.name,
                score: d.score,
            }),
            Stage::Head(h) => h.process(frame),
        }
    }
}

/// The wake word over speech embeddings: openWakeWord's front end
/// ([`crate::listen::embed`]) and Panda's trained head ([`crate::listen::wake_head`]).
/// Every 80 ms the last 16 embeddings are scored; a score at or over the threshold is a
/// detection.
pub struct HeadDetector {
    embedder: crate::listen::embed::Embedder,
    head: crate::listen::wake_head::Head,
    /// The last [`HEAD_EMBEDDINGS`](crate::listen::embed::HEAD_EMBEDDINGS) embeddings,
    /// flattened, oldest first.
    window: Vec<f32>,
    /// Embeddings seen since the stream started (until the window is full).
    seen: usize,
    threshold: f32,
    /// A frame over the threshold failed (the front end broke): logged once.
    failed: bool,
}

impl HeadDetector {
    /// Loads the head at `path` and the front end from `models_dir`.
    pub fn load(models_dir: &Path, path: &Path, threshold: f32) -> Result<Self, WakeError> {
        let load_err = |problem: String| WakeError::Load {
            path: path.display().to_string(),
            problem,
        };
        let head =
            crate::listen::wake_head::Head::load(path).map_err(|e| load_err(e.to_string()))?;
        let embedder = crate::listen::embed::Embedder::load(models_dir)
            .map_err(|e| load_err(e.to_string()))?
            .with_quiet_gate(QUIET_DBFS);
        Ok(Self {
            embedder,
            head,
            window: vec![0.0; crate::listen::wake_head::INPUTS],
            seen: 0,
            threshold,
            failed: false,
        })
    }

    /// Feeds one frame; a detection when a new window scores at or over the threshold.
    pub fn process(&mut self, frame: &[i16; FRAME_SAMPLES]) -> Option<WakeHit> {
        use crate::listen::embed::{EMB_DIM, HEAD_EMBEDDINGS};
        let (window, seen, head) = (&mut self.window, &mut self.seen, &self.head);
        let mut best: Option<f32> = None;
        let r = self.embedder.push(frame, |e| {
            window.rotate_left(EMB_DIM);
            let n = window.len();
            window[n - EMB_DIM..].copy_from_slice(e);
            *seen += 1;
            if *seen >= HEAD_EMBEDDINGS {
                let score = head.score(window);
                best = Some(best.map_or(score, |b: f32| b.max(score)));
            }
        });
        if let Err(e) = r {
            if !self.failed {
                tracing::error!(error = %e, "wake word front end failed; this detector is deaf");
                self.failed = true;
            }
            return None;
        }
        best.filter(|&s| s >= self.threshold).map(|score| WakeHit {
            name: "hey_panda".into(),
            score,
        })
    }
}

/// How long a detection the second stage rejected keeps the detector quiet: long enough
/// that the same stretch of speech does not fire again at once (a check per frame), short
/// enough for a person's "hey panda" that starts right after it. Measured (`panda bench
/// aec`): with the full 2 s window after false hits on Panda's own echo, barge-in recall
/// at +20 dB speech-to-echo was 67 %.
pub const REJECTED_REFRACTORY_MS: u64 = 500;

impl WakeDetector {
    /// Loads `[wake] model`, and beside it, as a second detector, `[wake] templates` and
    /// `[wake] owner_model` when those files exist (templates of the owner's own voice
    /// from `panda enroll` add to the shipped wake word instead of replacing it).
    pub fn load_configured(cfg: &crate::config::Config) -> Result<Self, WakeError> {
        let mut det = Self::load(&cfg.wake, &cfg.model_path(&cfg.wake.model))?;
        let files: Vec<std::path::PathBuf> = [&cfg.wake.templates, &cfg.wake.owner_model]
            .into_iter()
            .filter(|f| !f.as_os_str().is_empty())
            .map(|f| cfg.model_path(f))
            .filter(|f| f.exists())
            .collect();
        if !files.is_empty() {
            let mut rp = detector(&cfg.wake, cfg.wake.templates_threshold, &files[0])?;
            for (i, f) in files.iter().enumerate() {
                let p = f.to_string_lossy().to_string();
                rp.add_wakeword_from_file(&format!("templates{i}"), &p)
                    .map_err(|problem| WakeError::Load { path: p, problem })?;
            }
            det.stages.push(Stage::Rustpotter(Box::new(rp)));
            tracing::debug!(files = ?files, "wake word templates in use beside the model");
        }
        Ok(det)
    }

    /// Loads one wake word file: a trained model (at `threshold`) or templates (at
    /// `templates_threshold`).
    pub fn load(cfg: &WakeConfig, path: &Path) -> Result<Self, WakeError> {
        let p = path.to_string_lossy().to_string();
        if !path.exists() {
            return Err(WakeError::Missing(p));
        }
        // Read once: a trained model, or else templates (rustpotter's own loader tries
        // each template format).
        let load_err = |problem| WakeError::Load {
            path: p.clone(),
            problem,
        };
        // A head over speech embeddings: its front end lives beside it in the models
        // directory (`wake/oww/`, two levels up from `wake/hey_panda.oww`).
        if path.extension().is_some_and(|e| e == "oww") {
            let models_dir = path
                .parent()
                .and_then(Path::parent)
                .unwrap_or(Path::new("."));
            let head = HeadDetector::load(models_dir, path, cfg.threshold)?;
            return Ok(Self {
                stages: vec![Stage::Head(Box::new(head))],
                refractory_frames: cfg.refractory_ms / FRAME_MS as u64,
                open_from: 0,
            });
        }
        let inner = match rustpotter::WakewordModel::load_from_file(&p) {
            Ok(model) => {
                let mut rp = detector(cfg, cfg.threshold, path)?;
                rp.add_wakeword_model("wake", model).map_err(load_err)?;
                rp
            }
            Err(_) => {
                let mut rp = detector(cfg, cfg.templates_threshold, path)?;
                rp.add_wakeword_from_file("wake", &p).map_err(load_err)?;
                rp
            }
        };
        debug_assert_eq!(inner.get_samples_per_frame(), FRAME_SAMPLES);
        Ok(Self {
            stages: vec![Stage::Rustpotter(Box::new(inner))],
            refractory_frames: cfg.refractory_ms / FRAME_MS as u64,
            open_from: 0,
        })
    }

    /// Feeds one frame to every detector; returns a detection outside the refractory
    /// window (the higher score when both fire on the same frame).
    pub fn process(&mut self, seq: u64, frame: &[i16; FRAME_SAMPLES]) -> Option<WakeHit> {
        let mut best: Option<WakeHit> = None;
        for stage in &mut self.stages {
            if let Some(d) = stage.process(frame)
                && best.as_ref().is_none_or(|b| d.score > b.score)
            {
                best = Some(d);
            }
        }
        let det = best?;
        if seq < self.open_from {
            return None;
        }
        self.open_from = seq + self.refractory_frames;
        Some(det)
    }

    /// The second stage rejected the detection at frame `seq`: what is left of its
    /// refractory window shrinks to [`REJECTED_REFRACTORY_MS`] from it.
    pub fn rejected(&mut self, seq: u64) {
        let short = seq + REJECTED_REFRACTORY_MS / FRAME_MS as u64;
        self.open_from = self.open_from.min(short);
    }
}

/// An empty rustpotter detector for 16 kHz mono 16-bit frames at `threshold`.
fn detector(cfg: &WakeConfig, threshold: f32, path: &Path) -> Result<Rustpotter, WakeError> {
    let mut rp_cfg = RustpotterConfig::default();
    rp_cfg.fmt.sample_rate = SAMPLE_RATE_HZ as usize;
    rp_cfg.fmt.channels = 1;
    rp_cfg.fmt.sample_format = rustpotter::SampleFormat::I16;
    rp_cfg.detector.threshold = threshold;
    rp_cfg.detector.avg_threshold = cfg.avg_threshold;
    rp_cfg.detector.min_scores = cfg.min_scores;
    rp_cfg.detector.eager = cfg.eager;
    rp_cfg.detector.score_mode = ScoreMode::Max;
    // rustpotter's own energy gate: the comparison (the expensive part) runs only on
    // frames with voice, or while a detection is in progress.
    rp_cfg.detector.vad_mode = cfg.vad_gate.then_some(rustpotter::VADMode::Easy);
    Rustpotter::new(&rp_cfg).map_err(|problem| WakeError::Load {
        path: path.display().to_string(),
        problem,
    })
}

/// Builds a wake word reference from 16 kHz mono clips (leading/trailing silence is
/// trimmed so the templates hold only the phrase) and writes it to `out`.
pub fn build_reference(
    name: &str,
    clips: &[(String, Vec<i16>)],
    out: &Path,
) -> Result<(), WakeError> {
    let build_err = |problem: String| WakeError::Build {
        name: name.to_string(),
        problem,
    };
    if clips.is_empty() {
        return Err(build_err("no recordings given".into()));
    }
    let mut samples = HashMap::new();
    for (label, clip) in clips {
        let trimmed = trim_silence(clip);
        if trimmed.len() < (SAMPLE_RATE_HZ as usize / 5) {
            return Err(build_err(format!(
                "recording {label} holds less than 200 ms of sound"
            )));
        }
        samples.insert(label.clone(), wav_bytes(trimmed));
    }
    let wakeword =
        WakewordRef::new_from_sample_buffers(name.to_string(), None, None, samples, MFCC_SIZE)
            .map_err(build_err)?;
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).map_err(|e| build_err(format!("{}: {e}", dir.display())))?;
    }
    wakeword
        .save_to_file(&out.to_string_lossy())
        .map_err(build_err)
}

/// Cuts leading and trailing audio quieter than 3% of the clip's peak (in 10 ms steps),
/// keeping 50 ms of margin on each side.
pub fn trim_silence(x: &[i16]) -> &[i16] {
    const STEP: usize = 160;
    let peak = x.iter().map(|s| s.unsigned_abs()).max().unwrap_or(0) as f32;
    if peak == 0.0 {
        return &x[..0];
    }
    let loud = |c: &[i16]| {
        let rms = (c.iter().map(|&s| (s as f32).powi(2)).sum::<f32>() / c.len() as f32).sqrt();
        rms > 0.03 * peak
    };
    let chunks: Vec<&[i16]> = x.chunks(STEP).collect();
    let first = chunks.iter().position(|c| loud(c)).unwrap_or(0);
    let last = chunks
        .iter()
        .rposition(|c| loud(c))
        .unwrap_or(chunks.len() - 1);
    let start = first.saturating_sub(5) * STEP;
    let end = ((last + 6) * STEP).min(x.len());
    &x[start..end]
}

/// 16 kHz mono 16-bit WAV bytes, as rustpotter's template builder reads them.
pub fn wav_bytes(samples: &[i16]) -> Vec<u8> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: SAMPLE_RATE_HZ,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut cur = std::io::Cursor::new(Vec::with_capacity(44 + samples.len() * 2));
    {
        let mut w = hound::WavWriter::new(&mut cur, spec).expect("in-memory WAV header");
        for &s in samples {
            w.write_sample(s).expect("in-memory write");
        }
        w.finalize().expect("in-memory finalize");
    }
    cur.into_inner()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trim_keeps_the_loud_part_with_margin() {
        let mut x = vec![0i16; 16_000];
        for s in &mut x[8_000..9_600] {
            *s = 10_000;
        }
        let t = trim_silence(&x);
        assert_eq!(t.len(), 1_600 + 2 * 800);
        assert!(trim_silence(&[0; 100]).is_empty());
    }

    #[test]
    fn missing_file_points_to_install() {
        let err = WakeDetector::load(&WakeConfig::default(), Path::new("/nope/x.rpw"))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("panda models install"), "{err}");
    }
}
