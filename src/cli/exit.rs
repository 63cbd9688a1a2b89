//! The one mapping from errors to exit codes (sysexits, see [`panda::exit`]): every
//! subcommand returns an [`Exit`], built from any library error by `?` (its code found by
//! walking the error's causes) or with [`fail`] for the CLI's own checks.

use panda::app::AppError;
use panda::audio::AudioError;
use panda::config::ConfigError;
use panda::exit;
use panda::listen::stt::SttError;
use panda::listen::wake::WakeError;
use panda::memory::MemoryError;
use panda::models::ModelError;
use panda::onnx::OnnxError;
use panda::speak::kokoro::KokoroError;

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An error with the exit code it maps to.
#[derive(Debug)]
pub struct Exit {
    /// The process exit code.
    pub code: i32,
    error: BoxError,
}

/// A message of the CLI's own (a usage or input problem it found itself).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Message(pub String);

/// An [`Exit`] with `code` and `message`.
pub fn fail(code: i32, message: impl Into<String>) -> Exit {
    Exit {
        code,
        error: Box::new(Message(message.into())),
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for Exit {
    fn from(e: E) -> Self {
        Exit {
            code: code_for(&e),
            error: Box::new(e),
        }
    }
}

impl Exit {
    /// `error` with an explicit `code`.
    pub fn with_code(code: i32, error: impl std::error::Error + Send + Sync + 'static) -> Exit {
        Exit {
            code,
            error: Box::new(error),
        }
    }

    /// One line: the error, then any cause whose text it does not already carry.
    pub fn message(&self) -> String {
        let mut msg = self.error.to_string();
        let mut cause = self.error.source();
        while let Some(c) = cause {
            let t = c.to_string();
            if !msg.contains(&t) {
                msg.push_str(": ");
                msg.push_str(&t);
            }
            cause = c.source();
        }
        msg
    }
}

fn code_for(e: &(dyn std::error::Error + 'static)) -> i32 {
    // `AppError` forwards its inner error transparently (its source is the inner error's
    // source): look at it before walking the chain.
    if let Some(app) = e.downcast_ref::<AppError>() {
        return match app {
            AppError::Audio(a) => audio_code(a),
            AppError::Stt(SttError::MissingModel(_)) => exit::NO_INPUT,
            AppError::Wake(WakeError::Missing(_)) => exit::NO_INPUT,
            AppError::Stt(_) | AppError::Wake(_) => exit::SOFTWARE,
            AppError::Tts(k) => tts_code(k),
            AppError::NothingToSay => exit::DATA_ERR,
            AppError::Timers(_) => exit::CANT_CREATE,
            AppError::Memory(m) => memory_code(m),
            AppError::Web(_)
            | AppError::Wyoming(_)
            | AppError::Satellite(_)
            | AppError::Zeroconf(_) => exit::UNAVAILABLE,
            // Only a bad `wyoming_url` fails at start (validation catches it first).
            AppError::Remote(_) => exit::CONFIG,
            AppError::Thread(_) | AppError::Aec(_) => exit::SOFTWARE,
        };
    }
    let mut cause = Some(e);
    while let Some(c) = cause {
        if c.downcast_ref::<ConfigError>().is_some() {
            return exit::CONFIG;
        }
        if let Some(a) = c.downcast_ref::<AudioError>() {
            return audio_code(a);
        }
        if let Some(s) = c.downcast_ref::<SttError>() {
            return match s {
                SttError::MissingModel(_) => exit::NO_INPUT,
                _ => exit::SOFTWARE,
            };
        }
        if let Some(WakeError::Missing(_)) = c.downcast_ref::<WakeError>() {
            return exit::NO_INPUT;
        }
        if let Some(ModelError::Missing(_)) = c.downcast_ref::<ModelError>() {
            return exit::NO_INPUT;
        }
        if let Some(k) = c.downcast_ref::<KokoroError>() {
            return tts_code(k);
        }
        if let Some(m) = c.downcast_ref::<MemoryError>() {
            return memory_code(m);
        }
        cause = c.source();
    }
    1
}

fn memory_code(m: &MemoryError) -> i32 {
    match m {
        MemoryError::Corrupt { .. } | MemoryError::Foreign { .. } | MemoryError::TooNew { .. } => {
            exit::CANT_CREATE
        }
        MemoryError::Io { .. } | MemoryError::Sqlite { .. } => exit::CANT_CREATE,
        MemoryError::Empty | MemoryError::TooLong { .. } => exit::DATA_ERR,
        MemoryError::MissingModel(_) | MemoryError::Onnx(OnnxError::MissingLibrary(_)) => {
            exit::NO_INPUT
        }
        _ => exit::SOFTWARE,
    }
}

fn tts_code(k: &KokoroError) -> i32 {
    match k {
        KokoroError::Missing(_) | KokoroError::Onnx(OnnxError::MissingLibrary(_)) => exit::NO_INPUT,
        KokoroError::UnknownVoice { .. } | KokoroError::UnknownLanguage(_) => exit::USAGE,
        _ => exit::SOFTWARE,
    }
}

fn audio_code(a: &AudioError) -> i32 {
    match a {
        AudioError::Decode { .. } => exit::DATA_ERR,
        AudioError::Io { .. } => exit::NO_INPUT,
        _ => exit::UNAVAILABLE,
    }
}
