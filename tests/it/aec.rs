//! Echo cancellation in offline rooms (fixed seeds): Panda's own Kokoro answer through a
//! soft-clipping loudspeaker and a reverberant room back into the microphone, the real
//! canceller, self-wake guard, listener (wake word with its Whisper check) and Whisper on
//! top (`panda::bench::aec::run_scene`, which `panda bench aec` also runs).

use panda::bench::aec::{Room, Scene, SceneOptions, Talk, at_level, echo_gain_for, run_scene};
use panda::listen::stt::SttHandle;

use crate::common;

/// 16 kHz mono f32 of `text` in Kokoro voice `voice`, with the keyword's places.
fn say(
    k: &mut panda::speak::kokoro::Kokoro,
    text: &str,
    voice: &str,
    phrase: &str,
) -> (Vec<f32>, Vec<u64>) {
    let audio = panda::bench::wake::say_16k(k, text, voice, 1.0).unwrap();
    let at =
        panda::audio::aec::SelfWakeGuard::new(phrase, 0).keyword_samples(text, audio.len() as u64);
    (audio, at)
}

fn models() -> (
    panda::config::Config,
    panda::speak::kokoro::Kokoro,
    SttHandle,
) {
    let cfg = common::config();
    let dir = cfg.model_path(&cfg.tts.model_dir);
    let ort = cfg.model_path(std::path::Path::new(panda::onnx::ORT_LIB));
    let k = panda::speak::kokoro::Kokoro::load(&dir, &ort, 2).unwrap();
    let (stt, worker) = panda::listen::stt::spawn_configured(&cfg).unwrap();
    // The worker thread lives as long as the handle's clones.
    std::mem::forget(worker);
    (cfg, k, stt)
}

/// An answer that says the wake phrase and its keyword.
const ANSWER: &str = "You can wake me by saying hey panda. The giant panda eats bamboo, \
     and a red panda is about the size of a cat. Say hey panda again whenever you like, \
     and I will listen to you.";

/// An answer without it (over which a person barges in: the guard is not in the way).
const PLAIN: &str = "Tomorrow will be cloudy in the morning, with some sun in the afternoon \
     and a light wind from the west. In the evening the clouds come back, and there may be \
     a little rain after midnight, so take an umbrella if you go out late.";

#[test]
fn the_echo_is_cancelled_and_an_answer_saying_panda_wakes_nothing() {
    let (cfg, mut k, stt) = models();
    let (answer, keyword_at) = say(&mut k, ANSWER, &cfg.tts.voice, &cfg.wake.phrase);
    assert!(keyword_at.len() >= 4, "{keyword_at:?}");
    let room = Room::new(7, 0.35, 60.0);
    // A loud speaker: the echo at −20 dBFS.
    let gain = echo_gain_for(&answer, &room, 0.1, 0.0);
    let scene = Scene {
        len: answer.len() + 32_000,
        ..Scene::new(answer, keyword_at, room, gain, 1)
    };
    let on = SceneOptions::APPLIANCE;
    let o = run_scene(&cfg, Some(&stt), &scene, on).unwrap();
    println!(
        "ERLE {:.1} dB; {} stop-word candidates in {} s of Panda's voice",
        o.erle_db,
        o.command_candidates,
        o.frames * 30 / 1000
    );
    assert!(o.erle_db >= 30.0, "ERLE {:.1} dB", o.erle_db);
    assert!(o.wakes.is_empty(), "Panda woke itself at {:?} ms", o.wakes);
    assert!(o.stops.is_empty(), "Panda stopped itself: {:?}", o.stops);
    assert!(o.cut_at_ms.is_none());
    // Without the canceller the microphone has all the echo: the measure can fail.
    let off = run_scene(&cfg, None, &scene, SceneOptions { aec: false, ..on }).unwrap();
    assert!(off.erle_db.is_nan());
}

#[test]
fn hey_panda_stop_over_the_answer_cuts_it_and_the_next_question_is_heard() {
    let (cfg, mut k, stt) = models();
    let (answer, keyword_at) = say(&mut k, PLAIN, &cfg.tts.voice, &cfg.wake.phrase);
    // The person: a voice that makes no wake word template, 6 dB under the echo. (The
    // wake word misses "hey panda, stop" from some unseen voices even in a silent room;
    // `panda bench aec` measures recall over many.)
    let person = "bf_lily";
    let level = 10f32.powf(-26.0 / 20.0);
    let (stop, _) = say(&mut k, "Hey panda, stop.", person, &cfg.wake.phrase);
    let (next, _) = say(
        &mut k,
        "Hey panda, what time is it?",
        person,
        &cfg.wake.phrase,
    );
    let room = Room::new(8, 0.35, 60.0);
    let gain = echo_gain_for(&answer, &room, level, -6.0);
    let at = 4 * 16_000;
    let stop_end = at + stop.len();
    let next_at = stop_end + 2 * 16_000;
    let scene = Scene {
        len: (next_at + next.len() + 3 * 16_000).max(answer.len()),
        talks: vec![
            Talk {
                at,
                audio: at_level(&stop, level),
            },
            Talk {
                at: next_at,
                audio: at_level(&next, level),
            },
        ],
        ..Scene::new(answer, keyword_at, room, gain, 2)
    };
    let o = run_scene(&cfg, Some(&stt), &scene, SceneOptions::APPLIANCE).unwrap();
    let ms = |s: usize| s as u64 / 16;
    let cut = o
        .cut_at_ms
        .unwrap_or_else(|| panic!("the answer was not cut: {o:?}"));
    assert!(
        cut >= ms(at) && cut <= ms(stop_end) + 1500,
        "cut at {cut} ms; \"hey panda, stop\" at {}–{} ms; {o:?}",
        ms(at),
        ms(stop_end)
    );
    assert!(
        o.transcripts
            .iter()
            .any(|(s, t)| *s >= ms(stop_end) && t.to_lowercase().contains("time")),
        "the next question was not heard: {:?}",
        o.transcripts
    );
    // Without the canceller the same person is not heard over the answer.
    let off = run_scene(
        &cfg,
        Some(&stt),
        &scene,
        SceneOptions {
            aec: false,
            ..SceneOptions::APPLIANCE
        },
    )
    .unwrap();
    assert!(
        off.cut_at_ms.is_none_or(|c| c > ms(stop_end) + 1500),
        "{off:?}"
    );
}

#[test]
fn stop_alone_over_the_answer_stops_it() {
    let (cfg, mut k, stt) = models();
    let (answer, keyword_at) = say(&mut k, PLAIN, &cfg.tts.voice, &cfg.wake.phrase);
    let answer_ms = answer.len() as u64 / 16;
    let level = 10f32.powf(-26.0 / 20.0);
    let (stop, _) = say(&mut k, "Stop.", "am_eric", &cfg.wake.phrase);
    let room = Room::new(9, 0.3, 60.0);
    let gain = echo_gain_for(&answer, &room, level, 0.0);
    let at = 5 * 16_000;
    let scene = Scene {
        talks: vec![Talk {
            at,
            audio: at_level(&stop, level),
        }],
        ..Scene::new(answer, keyword_at, room, gain, 3)
    };
    let on = SceneOptions::APPLIANCE;
    let o = run_scene(&cfg, Some(&stt), &scene, on).unwrap();
    assert_eq!(
        o.stops.iter().map(|s| s.1.as_str()).collect::<Vec<_>>(),
        ["stop"],
        "{o:?}"
    );
    // Cut once Whisper has heard the word (seconds in a debug build), before the end.
    assert!(
        o.cut_at_ms.is_some_and(|c| c >= 5000 && c < answer_ms),
        "{o:?}"
    );
    // Stop words are off without the canceller (nothing tells when Panda speaks).
    let off = run_scene(&cfg, Some(&stt), &scene, SceneOptions { aec: false, ..on }).unwrap();
    assert!(off.stops.is_empty());
}

#[test]
fn a_speaker_and_microphone_on_different_clocks_degrade_gracefully() {
    let (cfg, mut k, stt) = models();
    let (one, _) = say(&mut k, PLAIN, &cfg.tts.voice, &cfg.wake.phrase);
    // Half a minute of answer. USB audio crystals differ by up to ~100 ppm; at 1,000 ppm
    // the echo moves ~25 ms against the reference by the end.
    let answer: Vec<f32> = one.iter().chain(&one).copied().collect();
    let room = Room::new(11, 0.35, 60.0);
    let gain = echo_gain_for(&answer, &room, 0.1, 0.0);
    let mut rows = Vec::new();
    for ppm in [0.0, -100.0, 1000.0, -1000.0] {
        let scene = Scene {
            drift_ppm: ppm,
            ..Scene::new(answer.clone(), Vec::new(), room.clone(), gain, 3)
        };
        let o = run_scene(&cfg, Some(&stt), &scene, SceneOptions::APPLIANCE).unwrap();
        println!(
            "{ppm:+} ppm: ERLE {:.1} dB (linear {:.1}), last third {:.1} (linear {:.1}); reference frames dropped {}, missing {}, caught up {}",
            o.erle_db,
            o.erle_linear_db,
            o.erle_late_db.0,
            o.erle_late_db.1,
            o.render_dropped,
            o.render_missing,
            o.render_caught_up,
        );
        rows.push((ppm, o));
    }
    for (ppm, o) in &rows {
        // Nothing taken for a person, nothing stalled (every frame went through), no
        // reference thrown away: the canceller follows the moving delay.
        assert!(o.wakes.is_empty() && o.stops.is_empty(), "{ppm} ppm: {o:?}");
        assert_eq!(o.frames, answer.len().div_ceil(480) + 33, "{ppm} ppm");
        assert_eq!(o.render_dropped, 0, "{ppm} ppm: {o:?}");
        // Realistic drift costs a few dB; ten times that still cancels something.
        let floor = if ppm.abs() <= 100.0 { 30.0 } else { 10.0 };
        assert!(o.erle_late_db.0 >= floor, "{ppm} ppm: {o:?}");
    }
    // One clock: one reference frame per capture frame. A faster speaker's surplus is
    // worked off by extra frames, a slower one's shortfall shows as missing frames.
    assert_eq!(
        (rows[0].1.render_missing, rows[0].1.render_caught_up),
        (0, 0)
    );
    assert!(rows[2].1.render_caught_up > 0, "{:?}", rows[2].1);
    assert!(rows[3].1.render_missing > 0, "{:?}", rows[3].1);
}
