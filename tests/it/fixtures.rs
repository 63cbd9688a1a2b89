//! The bundled recording used by the README's first command.

use crate::common;

const FIXTURE: &str = "tests/fixtures/hey-panda-what-time.wav";

/// Regenerates the fixture: "Hey panda." and "What time is it?" spoken by Kokoro's
/// `af_sky` (a voice not used for the wake word templates), 0.6 s apart, 16 kHz mono.
/// Run with `cargo test --test fixtures -- --ignored` after `panda models install`.
#[test]
#[ignore = "regenerates a committed file"]
fn regenerate_bundled_recording() {
    let dir = common::models_dir();
    let a =
        panda::listen::templates::synthesize_wake_clips(&dir, "Hey panda.", &["af_sky"], &[1.0])
            .unwrap();
    let b = panda::listen::templates::synthesize_wake_clips(
        &dir,
        "What time is it?",
        &["af_sky"],
        &[1.0],
    )
    .unwrap();
    let mut pcm = vec![0i16; 8_000];
    pcm.extend(&a[0].1);
    pcm.extend(std::iter::repeat_n(0, 9_600));
    pcm.extend(&b[0].1);
    pcm.extend(std::iter::repeat_n(0, 8_000));
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE);
    std::fs::write(&path, panda::listen::wake::wav_bytes(&pcm)).unwrap();
}

/// The README's main job works on the bundled recording.
#[test]
fn bundled_recording_wakes_and_transcribes() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE);
    let r = common::panda(&["listen", path.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.of_type("wake").len(), 1, "{}", r.stdout);
    let t = r.transcripts();
    assert_eq!(t.len(), 1, "{}", r.stdout);
    assert!(t[0].contains("time"), "{}", r.stdout);
}
