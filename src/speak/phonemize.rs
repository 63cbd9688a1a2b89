//! espeak-ng phonemization through a hand-written FFI against Debian's `libespeak-ng`.
//!
//! Why not the `espeakng` crate: it returns only the first clause and leaks state between
//! calls. espeak-ng keeps every bit of state in C globals and returns a pointer to a static
//! buffer, so all calls go through one process-wide `Mutex`, and each result is copied out
//! before the lock is released. `espeak_TextToPhonemes` translates one clause per call and
//! advances the text pointer, so we loop until it becomes NULL.
//!
//! espeak-ng drops punctuation; Kokoro uses it for prosody. [`Phonemizer::phonemize`]
//! therefore phonemizes the runs between punctuation marks and puts the marks back.

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::sync::Mutex;

#[link(name = "espeak-ng")]
unsafe extern "C" {
    fn espeak_Initialize(
        output: c_int,
        buflength: c_int,
        path: *const c_char,
        options: c_int,
    ) -> c_int;
    fn espeak_SetVoiceByName(name: *const c_char) -> c_int;
    fn espeak_SetVoiceByProperties(voice_spec: *mut EspeakVoice) -> c_int;
    fn espeak_TextToPhonemes(
        textptr: *mut *const c_void,
        textmode: c_int,
        phonememode: c_int,
    ) -> *const c_char;
}

/// `espeak_VOICE` from speak_lib.h, used as a search spec (language only).
#[repr(C)]
struct EspeakVoice {
    name: *const c_char,
    languages: *const c_char,
    identifier: *const c_char,
    gender: u8,
    age: u8,
    variant: u8,
    xx1: u8,
    score: c_int,
    spare: *mut c_void,
}

const AUDIO_OUTPUT_SYNCHRONOUS: c_int = 2;
const ESPEAK_INITIALIZE_DONT_EXIT: c_int = 0x8000;
const ESPEAK_CHARS_UTF8: c_int = 1;
/// Phoneme mode: IPA output.
const PHONEMES_IPA: c_int = 0x02;

/// Errors of the phonemizer.
#[derive(Debug, thiserror::Error)]
pub enum PhonemizeError {
    /// espeak-ng could not initialise (data files missing?).
    #[error("espeak-ng failed to initialise (is the espeak-ng-data package installed?)")]
    Init,
    /// The voice/language is not known to espeak-ng.
    #[error("espeak-ng has no voice {0:?}")]
    Voice(String),
}

/// The process-wide espeak-ng instance: `Some(current voice)` once initialised.
static ESPEAK: Mutex<Option<String>> = Mutex::new(None);

/// Punctuation that Kokoro's vocabulary carries and espeak drops.
const PUNCT: &[char] = &[',', '.', '!', '?', ';', ':', '—', '…'];

/// A handle on the global espeak-ng instance for one voice (e.g. `en-us`).
#[derive(Debug, Clone)]
pub struct Phonemizer {
    voice: String,
}

impl Phonemizer {
    /// Initialises espeak-ng once per process and checks the voice exists.
    pub fn new(voice: &str) -> Result<Self, PhonemizeError> {
        let p = Self {
            voice: voice.to_string(),
        };
        let mut g = crate::lock(&ESPEAK);
        p.ensure(&mut g)?;
        Ok(p)
    }

    fn ensure(&self, g: &mut Option<String>) -> Result<(), PhonemizeError> {
        if g.is_none() {
            // SAFETY: called once, under the lock; NULL path selects the default data dir.
            let rate = unsafe {
                espeak_Initialize(
                    AUDIO_OUTPUT_SYNCHRONOUS,
                    0,
                    std::ptr::null(),
                    ESPEAK_INITIALIZE_DONT_EXIT,
                )
            };
            if rate <= 0 {
                return Err(PhonemizeError::Init);
            }
            *g = Some(String::new());
        }
        if g.as_deref() != Some(self.voice.as_str()) {
            let name = CString::new(self.voice.clone())
                .map_err(|_| PhonemizeError::Voice(self.voice.clone()))?;
            // A voice *name* ("en-us" is one) first; else a voice for the *language*
            // ("en-gb", "fr-fr" and "cmn" are languages whose voice files have other
            // names), as the espeak-ng command line does.
            // SAFETY: valid C strings, alive across the calls; under the lock.
            let by_name = unsafe { espeak_SetVoiceByName(name.as_ptr()) } == 0;
            let found = by_name || {
                let mut spec = EspeakVoice {
                    name: std::ptr::null(),
                    languages: name.as_ptr(),
                    identifier: std::ptr::null(),
                    gender: 0,
                    age: 0,
                    variant: 0,
                    xx1: 0,
                    score: 0,
                    spare: std::ptr::null_mut(),
                };
                unsafe { espeak_SetVoiceByProperties(&mut spec) == 0 }
            };
            if !found {
                return Err(PhonemizeError::Voice(self.voice.clone()));
            }
            *g = Some(self.voice.clone());
        }
        Ok(())
    }

    /// Text → IPA with punctuation kept, whitespace collapsed.
    pub fn phonemize(&self, text: &str) -> Result<String, PhonemizeError> {
        let mut g = crate::lock(&ESPEAK);
        self.ensure(&mut g)?;
        let mut out = String::new();
        let mut run = String::new();
        let flush = |run: &mut String, out: &mut String| {
            let t = run.trim();
            if !t.is_empty() {
                if !out.is_empty() && !out.ends_with(' ') {
                    out.push(' ');
                }
                out.push_str(&raw_ipa(t));
            }
            run.clear();
        };
        for c in text.chars() {
            if PUNCT.contains(&c) {
                flush(&mut run, &mut out);
                out.push(c);
            } else if c.is_control() {
                run.push(' ');
            } else {
                run.push(c);
            }
        }
        flush(&mut run, &mut out);
        Ok(out.split_whitespace().collect::<Vec<_>>().join(" "))
    }
}

/// One run of text without punctuation → IPA. Caller holds the lock.
fn raw_ipa(text: &str) -> String {
    let Ok(c) = CString::new(text.replace('\0', " ")) else {
        return String::new();
    };
    let mut ptr = c.as_ptr() as *const c_void;
    let mut out = String::new();
    while !ptr.is_null() {
        // SAFETY: `ptr` points into `c` (alive for this loop) or is advanced by espeak
        // within it; the returned buffer is static and copied before the next call.
        let res = unsafe { espeak_TextToPhonemes(&mut ptr, ESPEAK_CHARS_UTF8, PHONEMES_IPA) };
        if res.is_null() {
            break;
        }
        let s = unsafe { CStr::from_ptr(res) }.to_string_lossy();
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(s.trim());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phonemizes_with_punctuation() {
        let p = Phonemizer::new("en-us").unwrap();
        let ipa = p.phonemize("Hello, world. How are you?").unwrap();
        assert!(ipa.contains(','), "{ipa}");
        assert!(ipa.ends_with('?'), "{ipa}");
        assert!(ipa.contains("wˈɜːld"), "{ipa}");
    }

    #[test]
    fn all_clauses_are_kept() {
        let p = Phonemizer::new("en-us").unwrap();
        let ipa = p
            .phonemize("one two three four five six seven eight nine ten eleven")
            .unwrap();
        assert!(ipa.contains("lˈɛvən"), "{ipa}");
    }

    #[test]
    fn every_kokoro_language_has_a_voice() {
        for lang in [
            "en-us", "en-gb", "es", "fr-fr", "hi", "it", "ja", "pt-br", "cmn",
        ] {
            let p = Phonemizer::new(lang).unwrap_or_else(|e| panic!("{lang}: {e}"));
            assert!(!p.phonemize("12").unwrap().is_empty(), "{lang}");
        }
        // British and American English differ, so the right voice was really selected.
        let gb = Phonemizer::new("en-gb")
            .unwrap()
            .phonemize("tomato")
            .unwrap();
        let us = Phonemizer::new("en-us")
            .unwrap()
            .phonemize("tomato")
            .unwrap();
        assert_ne!(gb, us);
    }

    #[test]
    fn unknown_voice_is_an_error() {
        assert!(matches!(
            Phonemizer::new("xx-nope"),
            Err(PhonemizeError::Voice(_))
        ));
    }
}
