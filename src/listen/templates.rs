//! The wake word's templates: how the default "hey panda" is made (at install time, on
//! the installing thread) — Kokoro voices and espeak-ng voices rendering the phrase, turned
//! into rustpotter DTW templates. The listening stage owns this; the model installer calls
//! it through [`crate::models::install::WakeTemplates`].

use std::path::Path;
use std::process::Command;

use crate::models::install::{WakeTemplates, paths};

/// Voices whose "hey panda" renderings make the default wake word templates (DESIGN §4).
/// The other English voices stay out: they are the unseen speakers recall is measured on.
pub const TEMPLATE_VOICES: &[&str] = &[
    "af_heart",
    "af_bella",
    "af_sarah",
    "af_nova",
    "am_adam",
    "am_michael",
    "am_onyx",
    "am_fenrir",
    "bf_emma",
    "bf_alice",
    "bm_george",
    "bm_daniel",
];
/// Speaking speeds for the Kokoro templates. Measured (`panda bench wake`, threshold 0.5
/// with the Whisper check, unseen Kokoro voices): two speeds per voice gave 93% recall at
/// 0.20 of a core during speech; one gave 91% at 0.09 — the cheaper set is the default.
pub const TEMPLATE_SPEEDS: &[f32] = &[1.0];
/// espeak-ng voices added as extra templates (formant synthesis is far from Kokoro's
/// neural voices; both kinds widen what the DTW templates cover). Other espeak variants
/// stay out for testing.
pub const TEMPLATE_ESPEAK_VOICES: &[&str] = &["en-us", "en-gb", "en-us+f2", "en-gb-x-rp+m1"];
/// espeak-ng speaking rates (words per minute) for the extra templates. One rate lost the
/// unseen espeak voice en-gb+f3 in the tests; two keep every tested voice above 0.65.
pub const TEMPLATE_ESPEAK_WPM: &[u32] = &[140, 180];

/// What the default wake word is built from, as recorded in the manifest.
pub fn recipe() -> String {
    format!(
        "kokoro {TEMPLATE_VOICES:?} x {TEMPLATE_SPEEDS:?}; espeak {TEMPLATE_ESPEAK_VOICES:?} x {TEMPLATE_ESPEAK_WPM:?}"
    )
}

/// Renders `text` with each voice at each speed through Kokoro; returns labelled 16 kHz clips.
pub fn synthesize_wake_clips(
    dir: &Path,
    text: &str,
    voices: &[&str],
    speeds: &[f32],
) -> Result<Vec<(String, Vec<i16>)>, String> {
    let mut k = crate::speak::kokoro::Kokoro::load(
        &dir.join(paths::KOKORO_DIR),
        &dir.join(paths::ORT_LIB),
        2,
    )
    .map_err(|e| e.to_string())?;
    let mut clips = Vec::new();
    for v in voices {
        for &s in speeds {
            // American phonemes for every voice, British ones included: the default
            // templates and their recall/false-accept figures were measured this way.
            let audio = k
                .synthesize_in(text, v, "en-us", s)
                .map_err(|e| e.to_string())?;
            let pcm =
                crate::audio::dsp::to_16k_mono(&audio, crate::speak::kokoro::SAMPLE_RATE_HZ, 1);
            clips.push((format!("{v}_{s}.wav"), pcm));
        }
    }
    Ok(clips)
}

/// `text` in Kokoro voice `voice` as 16 kHz f32; British voices (and blends led by one)
/// read with British phonemes.
pub fn kokoro_16k(
    k: &mut crate::speak::kokoro::Kokoro,
    text: &str,
    voice: &str,
    speed: f32,
) -> Result<Vec<f32>, crate::speak::kokoro::KokoroError> {
    let lang = if voice.starts_with('b') {
        "en-gb"
    } else {
        "en-us"
    };
    let audio = k.synthesize_in(text, voice, lang, speed)?;
    let pcm = crate::audio::dsp::to_16k_mono(&audio, crate::speak::kokoro::SAMPLE_RATE_HZ, 1);
    Ok(pcm.iter().map(|&s| s as f32 / 32768.0).collect())
}

/// Renders `text` with the espeak-ng command (install time only) → 16 kHz mono.
pub fn espeak_clip(text: &str, voice: &str, wpm: u32) -> Result<Vec<i16>, String> {
    // 50 is espeak-ng's own default pitch.
    espeak_clip_with(text, voice, wpm, 50)
}

/// [`espeak_clip`] at a pitch (0–99).
pub fn espeak_clip_with(text: &str, voice: &str, wpm: u32, pitch: u32) -> Result<Vec<i16>, String> {
    let out = Command::new("espeak-ng")
        .args([
            "-v",
            voice,
            "-s",
            &wpm.to_string(),
            "-p",
            &pitch.to_string(),
            "--stdout",
            text,
        ])
        .output()
        .map_err(|e| format!("espeak-ng: {e} (install the espeak-ng package)"))?;
    if !out.status.success() {
        return Err(format!(
            "espeak-ng -v {voice}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    // espeak writes a streaming WAV header with unknown lengths; take the PCM after the
    // 44-byte header (22050 Hz mono s16le).
    let pcm: Vec<f32> = out
        .stdout
        .get(44..)
        .unwrap_or(&[])
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]) as f32 / 32768.0)
        .collect();
    Ok(crate::audio::dsp::to_16k_mono(&pcm, 22_050, 1))
}

/// Renders `text` with the flite command (CMU's voices, install time only) → 16 kHz mono
/// f32: `voice` one of flite's 16 kHz voices (`kal16`, `awb`, `rms`, `slt`), spoken
/// `stretch` times slower than its own rate, its pitch at `f0_hz` mean and `f0_sd_hz`
/// spread. flite's voices are made from recordings of real people (diphones, or
/// statistical models of one speaker), a kind of voice neither Kokoro nor espeak-ng is.
pub fn flite_clip(
    text: &str,
    voice: &str,
    stretch: f32,
    f0_hz: f32,
    f0_sd_hz: f32,
) -> Result<Vec<f32>, String> {
    // flite falls back to its default voice, silently, for a name it does not have.
    let known = flite_voices()?;
    if !known.iter().any(|v| v == voice) {
        return Err(format!(
            "flite has no voice {voice:?} (it has {})",
            known.join(", ")
        ));
    }
    let out = Command::new("flite")
        .args([
            "-voice",
            voice,
            "--setf",
            &format!("duration_stretch={stretch:.3}"),
            "--setf",
            &format!("int_f0_target_mean={f0_hz:.1}"),
            "--setf",
            &format!("int_f0_target_stddev={f0_sd_hz:.1}"),
            "-t",
            text,
            "-o",
            "/dev/stdout",
        ])
        .output()
        .map_err(|e| format!("flite: {e} (install the flite package)"))?;
    if !out.status.success() {
        return Err(format!(
            "flite -voice {voice}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let (spec, samples) = {
        let mut r = hound::WavReader::new(std::io::Cursor::new(&out.stdout))
            .map_err(|e| format!("flite -voice {voice}: not a WAV: {e}"))?;
        let spec = r.spec();
        let s: Vec<f32> = r
            .samples::<i16>()
            .map(|s| s.map(|s| s as f32 / 32768.0))
            .collect::<Result<_, _>>()
            .map_err(|e| format!("flite -voice {voice}: {e}"))?;
        (spec, s)
    };
    let pcm = crate::audio::dsp::to_16k_mono(&samples, spec.sample_rate, spec.channels);
    Ok(pcm.iter().map(|&s| s as f32 / 32768.0).collect())
}

/// The voices the installed flite has (`flite -lv`), asked once.
fn flite_voices() -> Result<&'static [String], String> {
    static VOICES: std::sync::OnceLock<Result<Vec<String>, String>> = std::sync::OnceLock::new();
    VOICES
        .get_or_init(|| {
            let out = Command::new("flite")
                .arg("-lv")
                .output()
                .map_err(|e| format!("flite: {e} (install the flite package)"))?;
            let text = String::from_utf8_lossy(&out.stdout);
            Ok(text
                .split_once(':')
                .map_or("", |(_, list)| list)
                .split_whitespace()
                .map(str::to_string)
                .collect())
        })
        .as_deref()
        .map_err(Clone::clone)
}

/// The default wake word's builder, for the installer: the trained model of
/// [`super::wake_train`] at `out`, and the DTW templates above beside it
/// ([`paths::WAKE_TEMPLATES`]) — the listener runs both (see
/// [`super::wake::WakeDetector`]).
pub struct DefaultTemplates;

impl WakeTemplates for DefaultTemplates {
    fn recipe(&self) -> String {
        format!("{}; templates: {}", super::wake_train::recipe(), recipe())
    }

    fn build(&self, models_dir: &Path, out: &Path) -> Result<usize, String> {
        let mut clips =
            synthesize_wake_clips(models_dir, "Hey panda.", TEMPLATE_VOICES, TEMPLATE_SPEEDS)?;
        for v in TEMPLATE_ESPEAK_VOICES {
            for &wpm in TEMPLATE_ESPEAK_WPM {
                let pcm = espeak_clip("Hey panda.", v, wpm)?;
                clips.push((format!("espeak_{v}_{wpm}.wav"), pcm));
            }
        }
        super::wake::build_reference("hey_panda", &clips, &models_dir.join(paths::WAKE_TEMPLATES))
            .map_err(|e| e.to_string())?;
        let t = super::wake_train::train(models_dir, "hey_panda", out)?;
        Ok(t.positives + t.negatives)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// flite (a package `scripts/setup.sh` installs) renders 16 kHz speech whose length
    /// follows the rate asked for; a voice it does not have is an error, not its default.
    #[test]
    fn flite_renders_at_the_rate_asked_and_refuses_unknown_voices() {
        let fast = flite_clip("Hey panda, what time is it?", "slt", 0.8, 170.0, 20.0)
            .expect("flite renders");
        let slow = flite_clip("Hey panda, what time is it?", "slt", 1.25, 170.0, 20.0)
            .expect("flite renders");
        let secs = |p: &[f32]| p.len() as f32 / crate::event::SAMPLE_RATE_HZ as f32;
        assert!(secs(&fast) > 0.8 && secs(&fast) < 4.0, "{} s", secs(&fast));
        assert!(
            secs(&slow) > secs(&fast) * 1.3,
            "{} vs {} s",
            secs(&slow),
            secs(&fast)
        );
        assert!(crate::audio::synth::rms(&fast) > 0.01, "silence");
        let err = flite_clip("hi", "no_such_voice", 1.0, 100.0, 10.0).unwrap_err();
        assert!(
            err.contains("no_such_voice") && err.contains("slt"),
            "{err}"
        );
    }
}
