//! Wake word detection with rustpotter (MFCC features compared to reference templates
//! with dynamic time warping).
//!
//! A [`WakeDetector`] is owned by the listener thread: rustpotter keeps a rolling feature
//! window that must see every frame in order, so it cannot be shared. It also applies the
//! refractory window: one spoken "hey panda" gives exactly one detection even though the
//! score stays high for several frames.
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
    stages: Vec<Rustpotter>,
    refractory_frames: u64,
    last_hit: Option<u64>,
}

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
            det.stages.push(rp);
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
            stages: vec![inner],
            refractory_frames: cfg.refractory_ms / FRAME_MS as u64,
            last_hit: None,
        })
    }

    /// Feeds one frame to every detector; returns a detection outside the refractory
    /// window (the higher score when both fire on the same frame).
    pub fn process(&mut self, seq: u64, frame: &[i16; FRAME_SAMPLES]) -> Option<WakeHit> {
        let mut best: Option<rustpotter::RustpotterDetection> = None;
        for stage in &mut self.stages {
            if let Some(d) = stage.process_samples(frame.to_vec())
                && best.as_ref().is_none_or(|b| d.score > b.score)
            {
                best = Some(d);
            }
        }
        let det = best?;
        if let Some(last) = self.last_hit
            && seq.saturating_sub(last) < self.refractory_frames
        {
            return None;
        }
        self.last_hit = Some(seq);
        Some(WakeHit {
            name: det.name,
            score: det.score,
        })
    }

    /// Starts a refractory window now without a detection (e.g. while Panda itself speaks
    /// the wake word, or after a barge-in).
    pub fn suppress_from(&mut self, seq: u64) {
        self.last_hit = Some(seq);
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
