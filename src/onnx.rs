//! The process-wide ONNX Runtime environment.
//!
//! ort's `load-dynamic` feature loads `libonnxruntime.so` at run time (the build machine
//! cannot download ort's binaries; `panda models install` installs the library from the
//! `onnxruntime` wheel). ONNX Runtime allows one environment per process, so it is built
//! once here and shared by every session owner (Kokoro today, embeddings later).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Where `panda models install` puts the runtime library, relative to the model dir.
pub const ORT_LIB: &str = "onnxruntime/libonnxruntime.so.1.31.1";

/// Errors setting up ONNX Runtime.
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    /// The shared library is missing.
    #[error("ONNX Runtime library {0} is missing: run `panda models install`")]
    MissingLibrary(PathBuf),
    /// The library exists but could not be loaded or initialised.
    #[error("ONNX Runtime ({path}) failed to initialise: {problem}")]
    Init {
        /// Library path.
        path: PathBuf,
        /// ort's message.
        problem: String,
    },
}

static ENV: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();

/// The environment, initialised from `lib` on first use. `ORT_DYLIB_PATH` overrides `lib`.
pub fn environment(lib: &Path) -> Result<&'static ort::environment::Environment, OnnxError> {
    let lib = std::env::var_os("ORT_DYLIB_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| lib.to_path_buf());
    if ENV.get().is_none() && !lib.exists() {
        return Err(OnnxError::MissingLibrary(lib));
    }
    let r = ENV.get_or_init(|| {
        ort::init_from(&lib)
            .map_err(|e| e.to_string())?
            .with_name("panda")
            .build()
            .map_err(|e| e.to_string())
    });
    r.as_ref().map_err(|problem| OnnxError::Init {
        path: lib,
        problem: problem.clone(),
    })
}
