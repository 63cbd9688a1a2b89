//! The speaking path with the real int8 Kokoro and Whisper tiny.en on the CPU: what Panda
//! says must be what Whisper hears; speech streams sentence by sentence; a cancel silences
//! the output at once; bad input gets a clear outcome.

use crate::common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{Run, panda};
use panda::app::{self, SayInput, SayOptions};
use panda::audio::playback::{Output, SinkLog};
use panda::bench::word_errors;
use panda::event::Event;
use tokio_util::sync::CancellationToken;

/// Sentences of the kinds an assistant says: numbers, money, times, dates, names,
/// questions, abbreviations and punctuation of every sort.
const ROUND_TRIP: &[&str] = &[
    "Good morning! The time is 7:15.",
    "Your meeting with Sarah starts at 3:30 this afternoon.",
    "It is 22 degrees outside, with a light wind from the north.",
    "Would you like me to set a timer for ten minutes?",
    "The train to Boston leaves from platform 4.",
    "I found three recipes for chocolate cake.",
    "Dr. Johnson will see you on Tuesday.",
    "That costs $12.50, including tax.",
    "Mount Everest is about 8,849 meters tall.",
    "Shall I play some relaxing music?",
    "Your package should arrive on the 21st of June.",
    "The population of Canada is roughly 40 million people.",
    "Remember to buy milk, eggs, and bread.",
    "Sorry, I didn't catch that. Could you say it again?",
    "The battery is at 85% and charging.",
    "In 1969, astronauts first walked on the Moon.",
    "Turn left in 200 meters, then keep right.",
    "Michael said the concert was wonderful.",
    "Water boils at 100 degrees Celsius at sea level.",
    "Okay, I've added apples to your shopping list.",
];

#[test]
fn what_panda_says_is_what_whisper_hears() {
    let cfg = common::config();
    let dir = cfg.model_path(&cfg.tts.model_dir);
    let ort = cfg.model_path(std::path::Path::new(panda::onnx::ORT_LIB));
    let mut kokoro = panda::speak::kokoro::Kokoro::load(&dir, &ort, 2).unwrap();
    let (stt, _w) = panda::listen::stt::spawn_configured(&cfg).unwrap();
    let token = CancellationToken::new();
    let (mut errors, mut words) = (0, 0);
    for s in ROUND_TRIP {
        let audio = kokoro.synthesize(s, "af_heart", 1.0).unwrap();
        assert!(!audio.is_empty(), "no audio for {s:?}");
        let pcm = panda::audio::dsp::to_16k_mono(&audio, 24_000, 1);
        let out = stt.transcribe_blocking(&pcm, &token).unwrap();
        let (e, n) = word_errors(s, &out.text);
        println!("{e:>2}/{n:<2} {s:?} -> {:?}", out.text);
        errors += e;
        words += n;
    }
    let wer = errors as f64 / words as f64;
    println!(
        "round trip WER {:.1}% ({errors}/{words} words)",
        wer * 100.0
    );
    assert!(wer <= 0.10, "round-trip WER {:.1}% > 10%", wer * 100.0);
}

fn paced_say(
    text: &str,
    dir: &std::path::Path,
    cancel_after_first_audio: Option<Duration>,
) -> (Vec<Event>, SinkLog, Option<Instant>, std::path::PathBuf) {
    let cfg = common::config();
    let log: SinkLog = Arc::default();
    let wav = dir.join("out.wav");
    let opts = SayOptions {
        input: SayInput::Text(text.to_string()),
        output: Output::Wav {
            path: wav.clone(),
            rate_hz: 24_000,
            paced: Some(cfg.playback.buffer_ms),
            log: Some(log.clone()),
        },
        voice: "af_heart".into(),
        speed: 1.0,
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cancelled_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let events = rt.block_on(async {
        let root = CancellationToken::new();
        let mut events = Vec::new();
        let mut armed = false;
        app::say(&cfg, opts, root.clone(), |ev| {
            if let (Event::Playing { .. }, Some(after), false) =
                (ev, cancel_after_first_audio, armed)
            {
                armed = true;
                let (root, at) = (root.clone(), cancelled_at.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(after).await;
                    *at.lock().unwrap() = Some(Instant::now());
                    root.cancel();
                });
            }
            events.push(ev.clone());
        })
        .await
        .unwrap();
        events
    });
    let at = *cancelled_at.lock().unwrap();
    (events, log, at, wav)
}

/// The heard text and the interrupted flag of the run's `spoken` event.
fn spoken(events: &[Event]) -> (String, bool) {
    events
        .iter()
        .find_map(|e| match e {
            Event::Spoken {
                heard, interrupted, ..
            } => Some((heard.clone(), *interrupted)),
            _ => None,
        })
        .expect("a spoken event")
}

#[test]
fn first_audio_plays_before_the_second_sentence_is_synthesised() {
    let dir = tempfile::tempdir().unwrap();
    let text = "Here is the forecast. Tomorrow will be cloudy in the morning. \
                The afternoon brings some sun. Winds stay light all day. \
                Expect rain again on Sunday.";
    let (events, log, _, _) = paced_say(text, dir.path(), None);
    for e in &events {
        println!("{e:?}");
    }
    let pos = |f: &dyn Fn(&Event) -> bool| events.iter().position(f);
    let first_play = pos(&|e| matches!(e, Event::Playing { sentence: 0, .. })).unwrap();
    let second_synth = pos(&|e| matches!(e, Event::Synthesized { sentence: 1, .. })).unwrap();
    assert!(
        first_play < second_synth,
        "sentence 0 must reach the sink (event {first_play}) before sentence 1 is \
         synthesised (event {second_synth})"
    );
    let sentences: Vec<u32> = events
        .iter()
        .filter_map(|e| match e {
            Event::Playing { sentence, .. } => Some(*sentence),
            _ => None,
        })
        .collect();
    assert_eq!(sentences, [0, 1, 2, 3, 4], "every sentence plays, in order");
    let spoken = spoken(&events);
    assert!(!spoken.1);
    assert!(
        spoken.0.ends_with("Expect rain again on Sunday."),
        "{}",
        spoken.0
    );
    assert!(
        log.lock().unwrap().len() > 10,
        "a paced sink commits block by block"
    );
}

#[test]
fn cancel_silences_playback_within_50_ms() {
    let dir = tempfile::tempdir().unwrap();
    let text = "This is a long answer that keeps going for quite a while. \
                It has several sentences, each of them long enough to take a few seconds. \
                Nobody will hear the end of it, because it is interrupted early on.";
    let (events, log, cancelled_at, wav) =
        paced_say(text, dir.path(), Some(Duration::from_millis(700)));
    let cancelled_at = cancelled_at.expect("the cancel fired");
    let log = log.lock().unwrap();
    let before: u64 = log
        .iter()
        .filter(|(t, _)| *t <= cancelled_at)
        .map(|(_, n)| n)
        .sum();
    let after: u64 = log
        .iter()
        .filter(|(t, _)| *t > cancelled_at)
        .map(|(_, n)| n)
        .sum();
    let after_ms = after as f64 * 1000.0 / 24_000.0;
    println!(
        "played before cancel {:.0} ms, after cancel {after_ms:.1} ms",
        before as f64 * 1000.0 / 24_000.0
    );
    assert!(
        before >= 24_000 * 6 / 10,
        "audio was playing before the cancel"
    );
    assert!(
        after_ms <= 50.0,
        "{after_ms:.1} ms of audio after the cancel"
    );
    let (heard, interrupted) = spoken(&events);
    assert!(interrupted);
    assert!(
        !heard.is_empty() && text.starts_with(heard.trim_end_matches('.')),
        "{heard:?}"
    );
    assert!(
        heard.len() < text.len() / 2,
        "only the start was heard: {heard:?}"
    );
    // The file holds exactly what was played.
    let samples = hound::WavReader::open(&wav).unwrap().len() as u64;
    assert_eq!(samples, before + after);
}

#[test]
fn say_writes_speech_that_transcribes_back() {
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("hi.wav");
    let r = panda(&[
        "say",
        "Hello 👋 there\u{7}! 🎉 How are you today?",
        "-o",
        wav.to_str().unwrap(),
        "--rate",
        "16000",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    let t = panda(&["transcribe", wav.to_str().unwrap()]);
    let heard = t.stdout.to_lowercase();
    println!("{heard}");
    let (e, n) = word_errors("hello there how are you today", &heard);
    assert!(e <= 1, "{e}/{n} errors: {heard}");
}

#[test]
fn bad_input_gets_clear_outcomes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.wav");
    let out = out.to_str().unwrap();

    let r = panda(&["say", "", "-o", out]);
    assert_eq!(r.code, 65, "{}", r.stderr);
    assert!(r.stderr.contains("nothing to say"), "{}", r.stderr);

    let r = panda(&["say", "🎉🎉 \u{1}", "-o", out]);
    assert_eq!(r.code, 65, "{}", r.stderr);

    let r = panda(&["say", "hello", "--voice", "xx_nobody", "-o", out]);
    assert_eq!(r.code, 64, "{}", r.stderr);
    assert!(
        r.stderr.contains("xx_nobody") && r.stderr.contains("af_heart"),
        "the error lists the installed voices: {}",
        r.stderr
    );

    let r = panda(&["say", "hello", "--speed", "9", "-o", out]);
    assert_eq!(r.code, 64, "{}", r.stderr);

    let empty = tempfile::tempdir().unwrap();
    let o = common::command()
        .args(["say", "hello", "-o", out])
        .env("PANDA_MODELS__DIR", empty.path())
        .output()
        .unwrap();
    let r = Run::from_output(o);
    assert_eq!(r.code, 66, "{}", r.stderr);
    assert!(r.stderr.contains("panda models install"), "{}", r.stderr);

    let r = panda(&["voices"]);
    assert_eq!(r.code, 0);
    assert!(r.stdout.contains("af_heart") && r.stdout.contains("(default)"));
    assert!(r.stdout.contains("British English"), "{}", r.stdout);
}

/// 10,000 characters, spoken whole: the text is split into sentences, long sentences at
/// clauses, every model call stays under Kokoro's 510-token limit, and the last words are
/// in the audio.
#[test]
fn a_ten_thousand_character_text_is_spoken_whole() {
    let words = [
        "river", "garden", "morning", "window", "quiet", "silver", "mountain", "yellow", "candle",
        "letter", "forest", "bright", "ocean", "paper", "simple", "winter",
    ];
    let mut text = String::new();
    let mut i = 0usize;
    while text.len() < 9_900 {
        // Sentences of varied length; every fifth one runs on without any punctuation.
        let n = 6 + (i * 7) % 40;
        let sentence: Vec<&str> = (0..n)
            .map(|k| words[(i * 3 + k * 5) % words.len()])
            .collect();
        let mut s = sentence.join(" ");
        s[..1].make_ascii_uppercase();
        text.push_str(&s);
        text.push_str(if i % 5 == 4 { " " } else { ". " });
        i += 1;
    }
    text.push_str("The final words are purple elephant.");
    assert!(text.len() >= 10_000, "{}", text.len());

    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("long.wav");
    let r = panda(&[
        "say",
        &text,
        "-o",
        wav.to_str().unwrap(),
        "--speed",
        "2",
        "--json",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let spoken = r.of_type("spoken");
    assert_eq!(spoken.len(), 1);
    assert_eq!(spoken[0]["interrupted"], false);
    let heard = spoken[0]["heard"].as_str().unwrap();
    assert!(
        heard.ends_with("The final words are purple elephant."),
        "…{}",
        &heard[heard.len() - 80..]
    );
    let total: usize = r
        .of_type("synthesized")
        .iter()
        .map(|e| e["chars"].as_u64().unwrap() as usize)
        .sum();
    assert!(total >= 9_900, "synthesised {total} characters");
    println!(
        "{} model calls, {} s of audio",
        r.of_type("synthesized").len(),
        spoken[0]["played_ms"].as_u64().unwrap() / 1000
    );
    // The end of the file says the end of the text.
    let (pcm, rate, ch) =
        panda::audio::file::read_all(&wav, panda::audio::file::FileFormat::Wav).unwrap();
    let tail = &pcm[pcm.len().saturating_sub(rate as usize * ch as usize * 4)..];
    let tail16 = panda::audio::dsp::to_16k_mono(tail, rate, ch);
    let cfg = common::config();
    let (stt, _w) = panda::listen::stt::spawn_configured(&cfg).unwrap();
    let out = stt
        .transcribe_blocking(&tail16, &CancellationToken::new())
        .unwrap();
    println!("tail: {}", out.text);
    let tail = out.text.to_lowercase();
    assert!(
        tail.contains("final words") && tail.contains("purple"),
        "{tail}"
    );
}

#[test]
fn say_from_stdin_speaks_each_line_as_it_arrives() {
    use std::io::{BufRead, BufReader, Write};
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("stdin.wav");
    let mut child = common::command()
        .args([
            "say",
            "-",
            "-o",
            wav.to_str().unwrap(),
            "--realtime",
            "--json",
        ])
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "The first line is spoken at once.").unwrap();
    stdin.flush().unwrap();
    // The first line plays while stdin is still open.
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    loop {
        let l = lines.next().expect("panda ended early").unwrap();
        seen.push(l.clone());
        if l.contains("\"playing\"") {
            break;
        }
    }
    writeln!(stdin, "Then the second one").unwrap();
    writeln!(stdin, "follows.").unwrap();
    drop(stdin);
    seen.extend(lines.map_while(Result::ok));
    assert!(child.wait().unwrap().success());
    let events: Vec<serde_json::Value> = seen
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let spoken = events.iter().find(|e| e["type"] == "spoken").unwrap();
    assert_eq!(
        spoken["heard"],
        "The first line is spoken at once. Then the second one follows."
    );
}
