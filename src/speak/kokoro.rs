//! Kokoro-82M (int8 ONNX) speech synthesis.
//!
//! A [`Kokoro`] owns its ONNX session (`Session::run` takes `&mut self`), its vocabulary
//! and the voice packs it has loaded, so it lives on exactly one thread — the TTS owner
//! thread, or `panda models install` while it builds the wake word templates. The session
//! is built once and reused; voice packs are read once and cached.
//!
//! Model facts (DESIGN §4): inputs `tokens` i64 [1,T] (vocab ids, 0-padded at both ends),
//! `style` f32 [1,256] (row `min(T, 509)` of the voice pack), `speed` f32 [1]; output f32
//! audio at 24 kHz. At most 510 tokens per call: [`Kokoro::prepare`] splits longer text at
//! clause marks (then word boundaries) so that no call exceeds it and nothing is cut off.
//!
//! Language: a voice's first letter names its language (`a` American English, `b` British
//! English, `e` Spanish, `f` French, `h` Hindi, `i` Italian, `j` Japanese, `p` Brazilian
//! Portuguese, `z` Mandarin); [`voice_language`] maps it to the espeak-ng voice that
//! phonemizes for it, and the text normaliser uses the same code.
//!
//! GPU: with the `cuda` feature and `gpu = true`, the CUDA execution provider is
//! registered; if it cannot be (no GPU, a CPU-only ONNX Runtime library), the session is
//! built on the CPU after one warning.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ort::session::Session;
use ort::value::TensorRef;

use super::normalize::normalize;
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
    /// The voice's language has no espeak-ng phonemizer mapping.
    #[error(
        "voice {0:?} has no known language (its first letter names it: a, b, e, f, h, i, j, p, z)"
    )]
    UnknownLanguage(String),
}

pub use crate::config::voice_language;

/// Human-readable language and gender of a voice (`panda voices`).
pub fn describe_voice(voice: &str) -> (&'static str, &'static str) {
    let mut cs = voice.chars();
    let lang = match cs.next() {
        Some('a') => "American English",
        Some('b') => "British English",
        Some('e') => "Spanish",
        Some('f') => "French",
        Some('h') => "Hindi",
        Some('i') => "Italian",
        Some('j') => "Japanese",
        Some('p') => "Brazilian Portuguese",
        Some('z') => "Mandarin Chinese",
        _ => "unknown",
    };
    let gender = match cs.next() {
        Some('f') => "female",
        Some('m') => "male",
        _ => "unknown",
    };
    (lang, gender)
}

/// Session options.
#[derive(Debug, Clone, Copy)]
pub struct KokoroOptions {
    /// Intra-op threads.
    pub threads: usize,
    /// Try the CUDA execution provider (feature `cuda`).
    pub gpu: bool,
}

/// One model call's worth of text: the words and their token ids.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    /// The normalised text this chunk speaks.
    pub text: String,
    /// Vocabulary ids (without the pads), at most [`MAX_TOKENS`].
    pub tokens: Vec<i64>,
}

/// The synthesiser.
pub struct Kokoro {
    session: Session,
    vocab: HashMap<char, i64>,
    voices_dir: PathBuf,
    voices: HashMap<String, Vec<f32>>,
    /// Symbols espeak produced that the vocabulary lacks (dropped, counted).
    pub unknown_symbols: u64,
    /// Emoji, control characters and other unspeakable input dropped by normalisation.
    pub skipped_chars: u64,
    /// Whether the session runs on the CUDA execution provider.
    pub on_gpu: bool,
}

impl Kokoro {
    /// Loads `kokoro-v1.0.int8.onnx`, `vocab.json` and the `voices/` directory from `dir`
    /// on the CPU with `threads` intra-op threads.
    pub fn load(dir: &Path, ort_lib: &Path, threads: usize) -> Result<Self, KokoroError> {
        Self::load_with(
            dir,
            ort_lib,
            KokoroOptions {
                threads,
                gpu: false,
            },
        )
    }

    /// Loads the model with explicit options.
    pub fn load_with(dir: &Path, ort_lib: &Path, opts: KokoroOptions) -> Result<Self, KokoroError> {
        let model = dir.join("kokoro-v1.0.int8.onnx");
        let vocab_path = dir.join("vocab.json");
        for p in [&model, &vocab_path, &dir.join("voices")] {
            if !p.exists() {
                return Err(KokoroError::Missing(p.clone()));
            }
        }
        let env = crate::onnx::environment(ort_lib)?;
        let load = |problem: String| KokoroError::Load {
            path: model.clone(),
            problem,
        };
        let builder = Session::builder(env)
            .and_then(|b| Ok(b.with_intra_threads(opts.threads.max(1))?))
            .and_then(|b| Ok(b.with_intra_op_spinning(false)?))
            .map_err(|e| load(e.to_string()))?;
        let (mut builder, on_gpu) = with_gpu(builder, opts.gpu);
        let session = builder
            .commit_from_file(&model)
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
            unknown_symbols: 0,
            skipped_chars: 0,
            on_gpu,
        })
    }

    /// Names of the installed voices, sorted.
    pub fn installed_voices(&self) -> Vec<String> {
        installed_voices(&self.voices_dir)
    }

    /// Loads a voice pack (once; later calls hit the cache). Errors name the installed
    /// voices when `name` is not one of them.
    pub fn load_voice(&mut self, name: &str) -> Result<(), KokoroError> {
        self.voice(name).map(|_| ())
    }

    /// Registers `name` as a blend of two installed voices' style vectors (`weight_a` of
    /// `a`, the rest of `b`): a speaker neither voice is. Evaluation sets use blends for
    /// speakers the templates never heard.
    pub fn blend_voice(
        &mut self,
        name: &str,
        a: &str,
        b: &str,
        weight_a: f32,
    ) -> Result<(), KokoroError> {
        let va = self.voice(a)?.to_vec();
        let vb = self.voice(b)?;
        let mixed = va
            .iter()
            .zip(vb)
            .map(|(x, y)| weight_a * x + (1.0 - weight_a) * y)
            .collect();
        self.voices.insert(name.to_string(), mixed);
        Ok(())
    }

    fn voice(&mut self, name: &str) -> Result<&[f32], KokoroError> {
        if !self.voices.contains_key(name) {
            let path = self.voices_dir.join(format!("{name}.bin"));
            let valid_name = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            let bytes = match valid_name {
                true => std::fs::read(&path).ok(),
                false => None,
            }
            .ok_or_else(|| KokoroError::UnknownVoice {
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
        let before = self.unknown_symbols;
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
        if self.unknown_symbols > before {
            tracing::warn!(
                dropped = self.unknown_symbols - before,
                total = self.unknown_symbols,
                "phoneme symbols not in Kokoro's vocabulary were dropped"
            );
        }
        out
    }

    /// Normalises `text` for `voice`'s language and splits it into model calls of at most
    /// [`MAX_TOKENS`] tokens: whole text when it fits, else clause by clause (grouped back
    /// together while they fit), a clause that alone is too long at word boundaries.
    pub fn prepare(&mut self, text: &str, voice: &str) -> Result<Vec<Chunk>, KokoroError> {
        let lang =
            voice_language(voice).ok_or_else(|| KokoroError::UnknownLanguage(voice.to_string()))?;
        self.prepare_in(text, lang)
    }

    /// [`Kokoro::prepare`] with the espeak language given instead of taken from the voice.
    pub fn prepare_in(&mut self, text: &str, lang: &str) -> Result<Vec<Chunk>, KokoroError> {
        let norm = normalize(text, lang);
        if norm.skipped > 0 {
            self.skipped_chars += norm.skipped as u64;
            tracing::debug!(skipped = norm.skipped, "unspeakable characters skipped");
        }
        let phonemizer = Phonemizer::new(lang)?;
        let mut chunks = Vec::new();
        self.pack(&norm.text, &phonemizer, &mut chunks, 0)?;
        Ok(chunks)
    }

    fn pack(
        &mut self,
        text: &str,
        ph: &Phonemizer,
        out: &mut Vec<Chunk>,
        depth: u8,
    ) -> Result<(), KokoroError> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(());
        }
        let tokens = self.tokens(&ph.phonemize(text)?);
        if tokens.len() <= MAX_TOKENS {
            if !tokens.is_empty() {
                out.push(Chunk {
                    text: text.to_string(),
                    tokens,
                });
            }
            return Ok(());
        }
        // Too long: clauses first (depth 0), then halves at a word boundary.
        let parts = if depth == 0 {
            split_clauses(text)
        } else {
            Vec::new()
        };
        if parts.len() > 1 {
            let mut group = String::new();
            for part in parts {
                let candidate = if group.is_empty() {
                    part.clone()
                } else {
                    format!("{group} {part}")
                };
                let n = self.tokens(&ph.phonemize(&candidate)?).len();
                if n <= MAX_TOKENS || group.is_empty() {
                    group = candidate;
                } else {
                    self.pack(&group, ph, out, 1)?;
                    group = part;
                }
            }
            return self.pack(&group, ph, out, 1);
        }
        let words: Vec<&str> = text.split_whitespace().collect();
        if words.len() < 2 {
            // One enormous "word": keep the part that fits rather than fail.
            let mut tokens = tokens;
            tokens.truncate(MAX_TOKENS);
            out.push(Chunk {
                text: text.to_string(),
                tokens,
            });
            return Ok(());
        }
        let mid = words.len() / 2;
        self.pack(&words[..mid].join(" "), ph, out, depth.saturating_add(1))?;
        self.pack(&words[mid..].join(" "), ph, out, depth.saturating_add(1))
    }

    /// Synthesises one prepared chunk; returns 24 kHz mono f32.
    pub fn synthesize_chunk(
        &mut self,
        chunk: &Chunk,
        voice: &str,
        speed: f32,
    ) -> Result<Vec<f32>, KokoroError> {
        let tokens = &chunk.tokens[..chunk.tokens.len().min(MAX_TOKENS)];
        if tokens.is_empty() {
            return Ok(Vec::new());
        }
        let row = tokens.len().min(STYLE_ROWS - 1);
        let style: Vec<f32> = self.voice(voice)?[row * STYLE_DIM..(row + 1) * STYLE_DIM].to_vec();
        let mut ids = Vec::with_capacity(tokens.len() + 2);
        ids.push(0);
        ids.extend_from_slice(tokens);
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

    /// Synthesises all of `text` with `voice` at `speed`; returns 24 kHz mono f32.
    pub fn synthesize(
        &mut self,
        text: &str,
        voice: &str,
        speed: f32,
    ) -> Result<Vec<f32>, KokoroError> {
        let lang =
            voice_language(voice).ok_or_else(|| KokoroError::UnknownLanguage(voice.to_string()))?;
        self.synthesize_in(text, voice, lang, speed)
    }

    /// [`Kokoro::synthesize`] with phonemes of espeak language `lang` whatever the voice.
    pub fn synthesize_in(
        &mut self,
        text: &str,
        voice: &str,
        lang: &str,
        speed: f32,
    ) -> Result<Vec<f32>, KokoroError> {
        self.load_voice(voice)?;
        let mut audio = Vec::new();
        for chunk in self.prepare_in(text, lang)? {
            audio.extend(self.synthesize_chunk(&chunk, voice, speed)?);
        }
        Ok(audio)
    }
}

/// Names of the voices in `dir` (`*.bin`), sorted.
pub fn installed_voices(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
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

/// Splits at clause marks, keeping each mark with the clause it ends.
fn split_clauses(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        cur.push(c);
        let mark = matches!(c, ',' | ';' | ':' | '—' | '.' | '!' | '?' | '…');
        if mark && chars.peek().is_none_or(|n| n.is_whitespace()) {
            out.push(std::mem::take(&mut cur).trim().to_string());
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out
}

/// Registers the CUDA execution provider when asked and compiled in; on failure warns
/// once and returns the builder for the CPU.
#[cfg(feature = "cuda")]
fn with_gpu(
    b: ort::session::builder::SessionBuilder,
    gpu: bool,
) -> (ort::session::builder::SessionBuilder, bool) {
    if !gpu {
        return (b, false);
    }
    match b.with_execution_providers([ort::ep::CUDA::default().build().error_on_failure()]) {
        Ok(b) => (b, true),
        Err(e) => {
            tracing::warn!(error = %e, "Kokoro: CUDA execution provider unavailable, using the CPU");
            (e.recover(), false)
        }
    }
}

#[cfg(not(feature = "cuda"))]
fn with_gpu(
    b: ort::session::builder::SessionBuilder,
    _gpu: bool,
) -> (ort::session::builder::SessionBuilder, bool) {
    (b, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clauses_keep_their_marks() {
        assert_eq!(
            split_clauses("One, two; three. Four 3.5 five"),
            ["One,", "two;", "three.", "Four 3.5 five"]
        );
    }

    #[test]
    fn languages() {
        assert_eq!(voice_language("af_heart"), Some("en-us"));
        assert_eq!(voice_language("bm_george"), Some("en-gb"));
        assert_eq!(voice_language("zf_xiaobei"), Some("cmn"));
        assert_eq!(voice_language("x"), None);
        assert_eq!(describe_voice("ff_siwis"), ("French", "female"));
    }
}
