//! Kokoro-82M (int8 ONNX) speech synthesis.
//!
//! A [`Kokoro`] owns its ONNX session (`Session::run` takes `&mut self`), its vocabulary
//! and the voice packs it has loaded, so it lives on exactly one thread — the TTS owner
//! thread, or `panda models install` while it builds the wake word templates. The session
//! is built once and reused; voice packs are read once and cached.
//!
//! Model facts (DESIGN §4): inputs `tokens` i64 [1,T] (vocab ids, 0-padded at both ends),
//! `style` f32 [1,256] (row `min(T, 509)` of the voice pack), `speed` f32 [1]; output f32
//! audio at 24 kHz. At most 510 tokens per call.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ort::session::Session;
use ort::value::TensorRef;

use super::phonemize::{PhonemizeError, Phonemizer};
use crate::onnx::OnnxError;

/// Output sample rate of the model.
pub const SAMPLE_RATE_HZ: u32 = 24_000;
/// Largest token sequence one call accepts (without the two pads).
pub const MAX_TOKENS: usize = 510;
const STYLE_DIM: usize = 256;
const STYLE_ROWS: usize = 510;

/// Errors of the Kokoro synthesiser.
#[derive(Debug, thiserror::Error)]
pub enum KokoroError {
    /// ONNX Runtime is not available.
    #[error(transparent)]
    Onnx(#[from] OnnxError),
    /// A model file is missing.
    #[error("Kokoro file {0} is missing: run `panda models install`")]
    Missing(PathBuf),
    /// The model or vocabulary could not be loaded.
    #[error("Kokoro model {path} cannot be loaded: {problem}")]
    Load {
        /// File.
        path: PathBuf,
        /// What went wrong.
        problem: String,
    },
    /// The requested voice is not installed.
    #[error("unknown voice {name:?}; installed voices: {installed}")]
    UnknownVoice {
        /// Voice asked for.
        name: String,
        /// Comma-separated list of installed voices.
        installed: String,
    },
    /// Phonemization failed.
    #[error(transparent)]
    Phonemize(#[from] PhonemizeError),
    /// Inference failed.
    #[error("Kokoro inference failed: {0}")]
    Inference(String),
}

/// The synthesiser.
pub struct Kokoro {
    session: Session,
    vocab: HashMap<char, i64>,
    voices_dir: PathBuf,
    voices: HashMap<String, Vec<f32>>,
    phonemizer: Phonemizer,
    /// Symbols espeak produced that the vocabulary lacks (dropped, counted).
    pub unknown_symbols: u64,
}

impl Kokoro {
    /// Loads `kokoro-v1.0.int8.onnx`, `vocab.json` and the `voices/` directory from `dir`.
    pub fn load(dir: &Path, ort_lib: &Path, threads: usize) -> Result<Self, KokoroError> {
        let model = dir.join("kokoro-v1.0.int8.onnx");
        let vocab_path = dir.join("vocab.json");
        for p in [&model, &vocab_path] {
            if !p.exists() {
                return Err(KokoroError::Missing(p.clone()));
            }
        }
        let env = crate::onnx::environment(ort_lib)?;
        let load = |problem: String| KokoroError::Load {
            path: model.clone(),
            problem,
        };
        let session = Session::builder(env)
            .and_then(|b| Ok(b.with_intra_threads(threads.max(1))?))
            .and_then(|b| Ok(b.with_intra_op_spinning(false)?))
            .and_then(|mut b| b.commit_from_file(&model))
            .map_err(|e| load(e.to_string()))?;
        let text = std::fs::read_to_string(&vocab_path).map_err(|e| KokoroError::Load {
            path: vocab_path.clone(),
            problem: e.to_string(),
        })?;
        // Either `{"vocab": {symbol: id}}` (kokoro-onnx's config) or a bare map.
        let mut json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| KokoroError::Load {
                path: vocab_path.clone(),
                problem: e.to_string(),
            })?;
        if let Some(inner) = json.get_mut("vocab") {
            json = inner.take();
        }
        let raw: HashMap<String, i64> =
            serde_json::from_value(json).map_err(|e| KokoroError::Load {
                path: vocab_path.clone(),
                problem: e.to_string(),
            })?;
        let vocab = raw
            .into_iter()
            .filter_map(|(k, v)| {
                let mut cs = k.chars();
                match (cs.next(), cs.next()) {
                    (Some(c), None) => Some((c, v)),
                    _ => None,
                }
            })
            .collect();
        Ok(Self {
            session,
            vocab,
            voices_dir: dir.join("voices"),
            voices: HashMap::new(),
            phonemizer: Phonemizer::new("en-us")?,
            unknown_symbols: 0,
        })
    }

    /// Names of the installed voices, sorted.
    pub fn installed_voices(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.voices_dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let n = e.file_name().to_string_lossy().to_string();
                n.strip_suffix(".bin").map(str::to_string)
            })
            .collect();
        v.sort();
        v
    }

    fn voice(&mut self, name: &str) -> Result<&[f32], KokoroError> {
        if !self.voices.contains_key(name) {
            let path = self.voices_dir.join(format!("{name}.bin"));
            let bytes = std::fs::read(&path).map_err(|_| KokoroError::UnknownVoice {
                name: name.to_string(),
                installed: self.installed_voices().join(", "),
            })?;
            if bytes.len() != STYLE_ROWS * STYLE_DIM * 4 {
                return Err(KokoroError::Load {
                    path,
                    problem: format!(
                        "{} bytes, expected {}",
                        bytes.len(),
                        STYLE_ROWS * STYLE_DIM * 4
                    ),
                });
            }
            let v = bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            self.voices.insert(name.to_string(), v);
        }
        Ok(&self.voices[name])
    }

    /// IPA → vocabulary ids with Kokoro's fix-ups; unknown symbols are dropped and counted.
    pub fn tokens(&mut self, ipa: &str) -> Vec<i64> {
        let mut out = Vec::with_capacity(ipa.len());
        for c in ipa.chars() {
            let c = match c {
                'r' => 'ɹ',
                'x' => 'k',
                'ɬ' => 'l',
                'ʲ' => 'j',
                '\u{200d}' => continue,
                c => c,
            };
            match self.vocab.get(&c) {
                Some(&id) => out.push(id),
                None => self.unknown_symbols += 1,
            }
        }
        out
    }

    /// Synthesises `text` (English) with `voice` at `speed`; returns 24 kHz mono f32.
    /// Text longer than one call's token limit is cut at a clause boundary.
    pub fn synthesize(
        &mut self,
        text: &str,
        voice: &str,
        speed: f32,
    ) -> Result<Vec<f32>, KokoroError> {
        let ipa = self.phonemizer.phonemize(text)?;
        let mut tokens = self.tokens(&ipa);
        tokens.truncate(MAX_TOKENS);
        if tokens.is_empty() {
            return Ok(Vec::new());
        }
        let row = tokens.len().min(STYLE_ROWS - 1);
        let style: Vec<f32> = self.voice(voice)?[row * STYLE_DIM..(row + 1) * STYLE_DIM].to_vec();
        let mut ids = Vec::with_capacity(tokens.len() + 2);
        ids.push(0);
        ids.extend_from_slice(&tokens);
        ids.push(0);
        let n = ids.len();
        let inf = |e: ort::Error| KokoroError::Inference(e.to_string());
        let t_tokens = TensorRef::from_array_view(([1usize, n], &ids[..])).map_err(inf)?;
        let t_style = TensorRef::from_array_view(([1usize, STYLE_DIM], &style[..])).map_err(inf)?;
        let speed_v = [speed];
        let t_speed = TensorRef::from_array_view(([1usize], &speed_v[..])).map_err(inf)?;
        let outputs = self
            .session
            .run(ort::inputs!["tokens" => t_tokens, "style" => t_style, "speed" => t_speed])
            .map_err(inf)?;
        let (_, audio) = outputs[0].try_extract_tensor::<f32>().map_err(inf)?;
        Ok(audio.to_vec())
    }
}
