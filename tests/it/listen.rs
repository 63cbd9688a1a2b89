//! The listening pipeline end to end through the real `panda listen` binary: wake word,
//! VAD, endpointing and Whisper on speech made at test time, and bad input.

use crate::common;

use crate::common::{espeak_wav, panda};

/// espeak-ng voices that are not among the wake word templates (unseen speakers).
const VOICES: &[&str] = &["en-us+m3", "en-gb+f3", "en-us+m5"];

#[test]
fn wake_word_then_question_gives_one_wake_and_a_transcript() {
    let dir = tempfile::tempdir().unwrap();
    for (i, v) in VOICES.iter().enumerate() {
        // A pause after the wake word, as people leave for the assistant, and one without.
        for gap in [700, 150] {
            let wav = espeak_wav(
                dir.path(),
                &format!("q{i}_{gap}"),
                v,
                &["Hey panda.", "What time is it?"],
                gap,
            );
            let r = panda(&["listen", wav.to_str().unwrap()]);
            assert_eq!(r.code, 0, "{v}: {}", r.stderr);
            let wakes = r.of_type("wake");
            assert_eq!(wakes.len(), 1, "{v} gap {gap}: {}", r.stdout);
            assert!(wakes[0]["score"].as_f64().unwrap() > 0.0);
            let t = r.transcripts();
            assert_eq!(t.len(), 1, "{v} gap {gap}: {}", r.stdout);
            let text = &t[0];
            println!("{v} gap {gap} ms: score {} → {text:?}", wakes[0]["score"]);
            assert!(text.contains("time"), "{v} gap {gap}: {text:?}");
            // Events come in pipeline order for the one turn.
            let order: Vec<&str> = r
                .events
                .iter()
                .map(|e| e["type"].as_str().unwrap())
                .collect();
            assert_eq!(
                order,
                ["wake", "speech_start", "speech_end", "transcript"],
                "{v}"
            );
        }
    }
}

/// People pause after the wake word, waiting for the device: the question is the next
/// speech, however long the pause (within the question timeout), and the wake phrase is
/// not part of it.
#[test]
fn the_question_after_a_pause_is_heard_whole_without_the_wake_phrase() {
    const PAUSES_MS: [u32; 5] = [200, 600, 1000, 1500, 2000];
    const QUESTIONS: [&str; 5] = [
        "What time is it?",
        "Set a timer for ten minutes.",
        "What is the weather like tomorrow?",
        "How far away is the moon?",
        "What is the capital of France?",
    ];
    let dir = tempfile::tempdir().unwrap();
    // Two espeak-ng voices and one Kokoro voice, none of them among the templates.
    let voices: [(&str, bool); 3] = [("en-us+m3", false), ("en-gb+f3", false), ("am_puck", true)];
    let mut failures = Vec::new();
    for (v, kokoro) in voices {
        let mut pcm: Vec<i16> = vec![0; 16_000];
        for (i, (pause, q)) in PAUSES_MS.iter().zip(QUESTIONS).enumerate() {
            let parts = ["Hey panda.", q];
            let said: Vec<Vec<i16>> = if kokoro {
                parts
                    .iter()
                    .enumerate()
                    .map(|(j, p)| {
                        common::kokoro_speech(dir.path(), &format!("{v}{i}{j}"), v, &[p], &[0])
                    })
                    .collect()
            } else {
                parts
                    .iter()
                    .map(|p| common::espeak_16k(dir.path(), v, p))
                    .collect()
            };
            pcm.extend(&said[0]);
            pcm.extend(std::iter::repeat_n(0i16, 16 * *pause as usize));
            pcm.extend(&said[1]);
            // Long enough for the next wake to be a new turn.
            pcm.extend(std::iter::repeat_n(0i16, 16 * 3000));
        }
        let r = listen_to(dir.path(), v, &pcm);
        let wakes = r.of_type("wake");
        let texts = r.transcripts();
        println!("{v}: {} wakes; {texts:?}", wakes.len());
        if wakes.len() != QUESTIONS.len() || texts.len() != QUESTIONS.len() {
            failures.push(format!("{v}: {} wakes, transcripts {texts:?}", wakes.len()));
            continue;
        }
        for ((q, t), pause) in QUESTIONS.iter().zip(&texts).zip(PAUSES_MS) {
            let wer = panda::bench::wer(q, t);
            if wer > 0.25 || t.contains("panda") {
                failures.push(format!(
                    "{v} pause {pause} ms: {q:?} heard as {t:?} (WER {wer:.2})"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// "Hey panda" said again while a question is still being collected — right after it, or
/// while a voice in the background keeps the question open — ends that question before
/// the phrase and starts a turn of its own: two wakes, two whole questions, no wake
/// phrase in either.
#[test]
fn a_wake_said_again_during_a_question_starts_a_turn_of_its_own() {
    const FIRST: &str = "What time is it?";
    const SECOND: &str = "Set a timer for ten minutes.";
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    // (voice, Kokoro, a background voice between and under the two)
    for (v, kokoro, background) in [
        ("en-us+m3", false, false),
        ("am_puck", true, false),
        ("en-gb+f3", false, true),
    ] {
        let say = |name: &str, text: &str| say_in(dir.path(), v, kokoro, name, text);
        let mut pcm = vec![0i16; 16_000];
        pcm.extend(say("first", &format!("Hey panda. {FIRST}")));
        // A breath between the two — or, with the background voice, longer than the
        // end-of-speech hangover, which only that voice keeps from ending the question.
        let gap_ms = if background { 1_500 } else { 150 };
        let from = pcm.len();
        pcm.extend(std::iter::repeat_n(0i16, 16 * gap_ms));
        pcm.extend(say("second", &format!("Hey panda. {SECOND}")));
        let to = pcm.len();
        pcm.extend(std::iter::repeat_n(0i16, 16 * 3_000));
        if background {
            let wav = espeak_wav(
                dir.path(),
                "background",
                "en-us+f4",
                &[
                    "The committee will meet again on Thursday to go over the budget for the \
                   library, the new roof and the summer reading programme for the children.",
                ],
                0,
            );
            let talk = panda::audio::file::read_16k_mono(&wav).unwrap();
            // 20 dB under the person, from the first question's end to the second's.
            for (s, b) in pcm[from..to].iter_mut().zip(talk.iter().cycle()) {
                *s = s.saturating_add((*b as f32 * 0.1) as i16);
            }
        }
        let r = listen_to(dir.path(), v, &pcm);
        let wakes = r.of_type("wake");
        let texts = r.transcripts();
        let ends: Vec<&str> = r
            .of_type("speech_end")
            .iter()
            .map(|e| e["reason"].as_str().unwrap_or(""))
            .collect();
        println!("{v}: {} wakes; ends {ends:?}; {texts:?}", wakes.len());
        if wakes.len() != 2 || texts.len() != 2 {
            failures.push(format!("{v}: {} wakes, transcripts {texts:?}", wakes.len()));
            continue;
        }
        // Without a background voice nothing but the second wake can end the first
        // question (150 ms of silence is no end of speech).
        if !background && ends.first() != Some(&"wake_word") {
            failures.push(format!("{v}: the first question ended by {ends:?}"));
        }
        for (q, t) in [FIRST, SECOND].iter().zip(&texts) {
            let wer = panda::bench::wer(q, t);
            if wer > 0.25 || t.to_lowercase().contains("panda") {
                failures.push(format!(
                    "{v}: {q:?} heard as {t:?} (WER {wer:.2}); events:\n{}",
                    r.stdout
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// A noise in the pause after "hey panda" (a door, a cough, the television) starts an
/// utterance in which Whisper understands nothing; the question that follows is still the
/// turn's question, not lost with the turn.
#[test]
fn a_noise_in_the_pause_after_the_wake_does_not_take_the_questions_place() {
    const QUESTION: &str = "What time is it?";
    let dir = tempfile::tempdir().unwrap();
    let noise =
        panda::audio::file::read_16k_mono(&common::models_dir().join("testdata/alsa/Noise.wav"))
            .unwrap();
    let silence = |ms: usize| vec![0i16; 16 * ms];
    let mut failures = Vec::new();
    for (v, kokoro) in [("en-us+m3", false), ("am_puck", true)] {
        let say = |name: &str, text: &str| say_in(dir.path(), v, kokoro, name, text);
        let mut pcm = silence(500);
        pcm.extend(say("wake", "Hey panda."));
        pcm.extend(silence(600));
        // 0.8 s of the noise, then the person speaks 1.2 s later.
        pcm.extend(&noise[..16 * 800]);
        pcm.extend(silence(1_200));
        pcm.extend(say("question", QUESTION));
        pcm.extend(silence(2_500));
        let r = listen_to(dir.path(), v, &pcm);
        let wakes = r.of_type("wake");
        let turns: Vec<u64> = r
            .of_type("transcript")
            .iter()
            .map(|t| t["turn"].as_u64().unwrap())
            .collect();
        let texts = r.transcripts();
        println!(
            "{v}: {} wakes; transcripts {texts:?} of turns {turns:?}",
            wakes.len()
        );
        // The noise is an utterance Whisper made nothing of, then the question is heard
        // in the same turn.
        let ok = wakes.len() == 1
            && texts.len() == 2
            && texts[0].is_empty()
            && panda::bench::wer(QUESTION, &texts[1]) <= 0.25
            && turns.iter().all(|t| Some(*t) == wakes[0]["turn"].as_u64());
        if !ok {
            failures.push(format!("{v}:\n{}", r.stdout));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// `text` in `voice` at 16 kHz — Kokoro's when `kokoro`, else espeak-ng's — rendered as
/// `VOICE-NAME` in `dir`. Kokoro's without its leading and trailing silence (up to half a
/// second each, longer than the gaps the tests choose); espeak-ng's are short.
fn say_in(dir: &std::path::Path, voice: &str, kokoro: bool, name: &str, text: &str) -> Vec<i16> {
    let file = format!("{voice}-{name}");
    if kokoro {
        let pcm = common::kokoro_speech(dir, &file, voice, &[text], &[0]);
        let loud = |s: &i16| s.unsigned_abs() > 300;
        let first = pcm.iter().position(loud).unwrap_or(0);
        let last = pcm.iter().rposition(loud).map_or(pcm.len(), |i| i + 1);
        pcm[first..last.max(first)].to_vec()
    } else {
        let wav = espeak_wav(dir, &file, voice, &[text], 0);
        panda::audio::file::read_16k_mono(&wav).unwrap()
    }
}

/// `panda listen` on `pcm` (16 kHz), written to `NAME.wav` in `dir`; it must exit 0.
fn listen_to(dir: &std::path::Path, name: &str, pcm: &[i16]) -> common::Run {
    let wav = dir.join(format!("{name}.wav"));
    common::write_wav(&wav, 16_000, pcm);
    let r = panda(&["listen", wav.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{name}: {}", r.stderr);
    r
}

#[test]
fn speech_without_the_wake_word_gives_no_wake() {
    let dir = tempfile::tempdir().unwrap();
    for (i, v) in VOICES.iter().enumerate() {
        let wav = espeak_wav(
            dir.path(),
            &format!("n{i}"),
            v,
            &[
                "What time is it?",
                "I saw a panda at the zoo.",
                "Hey, can you hand me that pen?",
            ],
            400,
        );
        let r = panda(&["listen", wav.to_str().unwrap()]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert!(r.events.is_empty(), "{v}: {}", r.stdout);
    }
}

#[test]
fn noise_gives_nothing() {
    let noise = common::models_dir().join("testdata/alsa/Noise.wav");
    let r = panda(&["listen", noise.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.events.is_empty(), "{}", r.stdout);
    // Even with every utterance treated as a turn, nothing is understood in noise.
    let r = panda(&["listen", "--no-wake", noise.to_str().unwrap()]);
    let t = r.of_type("transcript");
    assert!(
        !t.is_empty() && t.iter().all(|t| t["text"] == ""),
        "{}",
        r.stdout
    );
}

#[test]
fn stdin_and_raw_input() {
    let raw = common::models_dir().join("testdata/pocketsphinx/goforward.raw");
    let bytes = std::fs::read(&raw).unwrap();
    let mut child = common::command()
        .args(["listen", "--no-wake", "--raw", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(&bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(text.contains("forward"), "{text}");
}

fn write_wav(path: &std::path::Path, spec: hound::WavSpec, samples: &[f32]) {
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for &s in samples {
        match (spec.sample_format, spec.bits_per_sample) {
            (hound::SampleFormat::Float, _) => w.write_sample(s).unwrap(),
            (_, b) => w
                .write_sample((s * ((1i64 << (b - 1)) - 1) as f32) as i32)
                .unwrap(),
        }
    }
    w.finalize().unwrap();
}

#[test]
fn other_rates_bit_depths_and_channels_transcribe() {
    let dir = tempfile::tempdir().unwrap();
    let src = common::models_dir().join("testdata/pocketsphinx/goforward.raw");
    let pcm16k: Vec<f32> = std::fs::read(&src)
        .unwrap()
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]) as f32 / 32768.0)
        .collect();
    // Upsample 16 → 48 kHz stereo 24-bit, and 16 → 8 kHz mono 16-bit, with the project's
    // own resampler (tested separately against pure tones).
    let mut r = panda::audio::dsp::Resampler::new(16_000, 48_000);
    let mut up = Vec::new();
    r.process(&pcm16k, &mut up);
    r.finish(&mut up);
    let stereo: Vec<f32> = up.iter().flat_map(|&s| [s, s]).collect();
    let p48 = dir.path().join("s48k24.wav");
    write_wav(
        &p48,
        hound::WavSpec {
            channels: 2,
            sample_rate: 48_000,
            bits_per_sample: 24,
            sample_format: hound::SampleFormat::Int,
        },
        &stereo,
    );
    let mut r = panda::audio::dsp::Resampler::new(16_000, 8_000);
    let mut down = Vec::new();
    r.process(&pcm16k, &mut down);
    r.finish(&mut down);
    let p8 = dir.path().join("m8k.wav");
    write_wav(
        &p8,
        hound::WavSpec {
            channels: 1,
            sample_rate: 8_000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        },
        &down,
    );
    let pf = dir.path().join("float.wav");
    write_wav(
        &pf,
        hound::WavSpec {
            channels: 1,
            sample_rate: 16_000,
            bits_per_sample: 32,
            sample_format: hound::SampleFormat::Float,
        },
        &pcm16k,
    );
    for p in [&p48, &p8, &pf] {
        let r = panda(&["transcribe", p.to_str().unwrap()]);
        assert_eq!(r.code, 0, "{}: {}", p.display(), r.stderr);
        let text = r.stdout.to_lowercase();
        println!("{} → {text:?}", p.display());
        assert!(text.contains("forward"), "{}: {text:?}", p.display());
    }
}

#[test]
fn bad_input_is_one_clear_error_line_with_exit_65() {
    let dir = tempfile::tempdir().unwrap();
    let not_wav = dir.path().join("notes.wav");
    std::fs::write(&not_wav, b"this is a text file, not audio\n").unwrap();
    let empty = dir.path().join("empty.wav");
    std::fs::write(&empty, b"").unwrap();
    let truncated = dir.path().join("truncated.wav");
    let good = std::fs::read(common::models_dir().join("testdata/alsa/Front_Center.wav")).unwrap();
    std::fs::write(&truncated, &good[..good.len() / 3]).unwrap();
    let header_only = dir.path().join("header.wav");
    std::fs::write(&header_only, &good[..30]).unwrap();
    for (path, needle) in [
        (&not_wav, "not a WAV file"),
        (&empty, "empty"),
        (&truncated, "truncated"),
        (&header_only, "WAV"),
    ] {
        for cmd in ["listen", "transcribe"] {
            let r = panda(&[cmd, path.to_str().unwrap()]);
            assert_eq!(r.code, 65, "{cmd} {}: {}", path.display(), r.stderr);
            let lines: Vec<&str> = r
                .stderr
                .lines()
                .filter(|l| l.starts_with("panda:"))
                .collect();
            assert_eq!(lines.len(), 1, "{}", r.stderr);
            assert!(lines[0].contains(path.to_str().unwrap()), "{}", lines[0]);
            assert!(lines[0].contains(needle), "{}", lines[0]);
            assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
        }
    }
    let r = panda(&["listen", dir.path().join("absent.wav").to_str().unwrap()]);
    assert_eq!(r.code, 66, "{}", r.stderr);
}

#[test]
fn missing_device_is_a_clear_error() {
    let r = panda(&["listen", "--device", "no-such-microphone", "--no-stt"]);
    assert_eq!(r.code, 69, "{}", r.stderr);
    assert!(r.stderr.contains("no-such-microphone"), "{}", r.stderr);
}

#[test]
fn check_config_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[stt]\nbeam_sise = 2\n").unwrap();
    let r = panda(&["check-config", bad.to_str().unwrap()]);
    assert_eq!(r.code, 78);
    assert!(r.stderr.contains("beam_sise"), "{}", r.stderr);
    // A language Whisper does not know is named, with its key.
    std::fs::write(&bad, "[stt]\nlanguage = \"klingon\"\n").unwrap();
    let r = panda(&["check-config", bad.to_str().unwrap()]);
    assert_eq!(r.code, 78, "{}", r.stderr);
    assert!(
        r.stderr.contains("stt.language") && r.stderr.contains("klingon"),
        "{}",
        r.stderr
    );
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "[vad]\nmode = 3\n").unwrap();
    let r = panda(&["check-config", good.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("mode = 3"), "{}", r.stdout);
}

#[test]
fn enroll_builds_a_wake_word_from_recordings() {
    let dir = tempfile::tempdir().unwrap();
    // The "owner" records the phrase three times; espeak-ng's klatt voice stands in.
    let takes: Vec<_> = (0..3)
        .map(|i| {
            espeak_wav(
                dir.path(),
                &format!("take{i}"),
                "en-us+klatt",
                &["Hey panda."],
                0,
            )
        })
        .collect();
    let out = dir.path().join("mine.rpw");
    let mut args = vec![
        "enroll",
        "--name",
        "hey_panda",
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend(takes.iter().map(|p| p.to_str().unwrap()));
    let r = panda(&args);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(out.exists());
    let q = espeak_wav(
        dir.path(),
        "q",
        "en-us+klatt",
        &["Hey panda.", "What time is it?"],
        700,
    );
    let r = common::command()
        .args(["listen", "--no-stt", q.to_str().unwrap()])
        .env("PANDA_WAKE__MODEL", &out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&r.stdout);
    assert_eq!(stdout.matches("\"wake\"").count(), 1, "{stdout}");
    // Too few recordings is a clear error, not a bad wake word.
    let r = panda(&["enroll", "--name", "x", takes[0].to_str().unwrap()]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("at least 3"), "{}", r.stderr);
}

/// The wake word head over speech embeddings, end to end on the real front end
/// (openWakeWord's TensorFlow Lite models through the C library the installer fetched):
/// a head trained here on five espeak-ng speakers hears "hey panda" said after another
/// sentence, once, through the streaming detector, and stays quiet through sentences it
/// never saw; the front end's embeddings are deterministic and tell speech from silence.
#[test]
fn a_wake_word_head_on_speech_embeddings_trains_and_detects() {
    use panda::listen::embed::{EMB_DIM, Embedder, HEAD_EMBEDDINGS};
    use panda::listen::wake::HeadDetector;
    use panda::listen::wake_head::{Head, TrainSettings, train};
    let models = common::models_dir();
    let dir = tempfile::tempdir().unwrap();
    let mut emb = Embedder::load(&models).unwrap();
    let silence = |ms: usize| vec![0i16; 16 * ms];
    // 3 s: 37 steps of 80 ms, the first embedding once 76 mel frames exist.
    let quiet = emb.clip(&silence(3000)).unwrap();
    assert_eq!(quiet.len(), 28);
    let say = |v: &str, t: &str| common::espeak_16k(dir.path(), v, t);
    let speech = emb
        .clip(&say("en-us", "What is the weather like?"))
        .unwrap();
    assert_eq!(
        emb.clip(&say("en-us", "What is the weather like?"))
            .unwrap(),
        speech
    );
    let dist = |a: &[f32; EMB_DIM], b: &[f32; EMB_DIM]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).powi(2))
            .sum::<f32>()
            .sqrt()
    };
    assert!(dist(&quiet[20], &speech[speech.len() / 2]) > 1.0);

    let train_voices = ["en-us", "en-gb", "en-gb-scotland", "en-029", "en-us+f2"];
    let others = [
        "The train leaves at nine in the morning.",
        "Could you turn the kitchen lights off?",
        "My brother plays the guitar on weekends.",
        "Bananas are yellow when they are ripe.",
    ];
    let (mut rows, mut labels) = (Vec::new(), Vec::new());
    let last16 = |e: &[[f32; EMB_DIM]]| e[e.len() - HEAD_EMBEDDINGS..].concat();
    for v in train_voices {
        let phrase = say(v, "Hey panda.");
        // The phrase ending 0–240 ms before the window's end.
        for tail_ms in [0, 80, 160, 240] {
            let mut clip = silence(1200);
            clip.extend(&phrase);
            clip.extend(silence(tail_ms));
            rows.push(last16(&emb.clip(&clip).unwrap()));
            labels.push(1.0);
        }
        let mut stream = silence(300);
        for t in &others {
            stream.extend(say(v, t));
            stream.extend(silence(300));
        }
        for w in emb.clip(&stream).unwrap().windows(HEAD_EMBEDDINGS) {
            rows.push(w.concat());
            labels.push(0.0);
        }
    }
    let x =
        ndarray::Array2::from_shape_vec((labels.len(), EMB_DIM * HEAD_EMBEDDINGS), rows.concat())
            .unwrap();
    let mut head = Head::seeded(&mut panda::audio::synth::Rng(1));
    let settings = TrainSettings {
        epochs: 60,
        batch: 32,
        learning_rate: 1e-3,
        positive_weight: 4.0,
    };
    train(
        &mut head,
        &x,
        &labels,
        settings,
        &mut panda::audio::synth::Rng(2),
    );
    let path = dir.path().join("test.oww");
    head.save(&path, "test").unwrap();

    let detections = |pcm: &[i16]| {
        let mut det = HeadDetector::load(&models, &path, 0.5).unwrap();
        let mut at = Vec::new();
        for (i, f) in pcm.chunks_exact(480).enumerate() {
            if let Some(h) = det.process(f.try_into().unwrap()) {
                at.push((i * 30, h.score));
            }
        }
        at
    };
    // A training speaker, the phrase after a sentence of the training set's kind.
    let mut stream = silence(500);
    stream.extend(say("en-gb", "I think it might rain later."));
    stream.extend(silence(600));
    let phrase_at = stream.len() / 16;
    stream.extend(say("en-gb", "Hey panda."));
    stream.extend(silence(1500));
    let hits = detections(&stream);
    assert!(!hits.is_empty(), "the phrase was not detected");
    // Every frame over the threshold belongs to the phrase (the refractory window that
    // merges them into one wake is the WakeDetector's).
    assert!(
        hits.iter().all(|&(ms, _)| ms > phrase_at),
        "{hits:?} (phrase at {phrase_at} ms)"
    );
    // Sentences nobody trained on, by the training speakers: nothing.
    let mut other = silence(300);
    for (v, t) in [
        ("en-us", "Please put the red box on the table."),
        ("en-029", "We went swimming in the lake yesterday."),
        ("en-gb-scotland", "How many cups of flour does it need?"),
    ] {
        other.extend(say(v, t));
        other.extend(silence(400));
    }
    assert_eq!(
        detections(&other),
        vec![],
        "false detections on other speech"
    );
}
