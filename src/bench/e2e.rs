//! `panda bench e2e`: end of speech → first audio out, through the whole `panda run`
//! pipeline, per stage, with an instant local LLM server so the figure is Panda's own.
//!
//! Each question ("Hey panda. …", spoken by a Kokoro voice and by the bundled recording)
//! runs through [`crate::app::run`] from a file to a WAV sink: the listener endpoints it,
//! Whisper transcribes it, the turn routes and answers (skills, memory, or the LLM
//! server, which streams its answer at once), Kokoro synthesises the first fragment and
//! the sink takes it. Times are taken from the pipeline's own events as they arrive.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::percentile;
use crate::app::{Input, RunOptions};
use crate::audio::file::{FileFormat, FileSpec};
use crate::audio::playback::Output;
use crate::config::{Config, LlmBackend};
use crate::event::Event;
use crate::scripted::{Reply, Request, openai_stream, serve};

/// Questions of the benchmark (after "Hey panda.").
pub const QUESTIONS: &[&str] = &[
    "What time is it?",
    "What's the date today?",
    "What is the capital of France?",
    "Remember that my bike is in the shed.",
    "Why is the sky blue?",
    "Set a timer for ten minutes.",
];

#[derive(Default, Debug, Clone)]
struct Marks {
    speech_end: Option<Instant>,
    transcript: Option<Instant>,
    stt_ms: Option<u64>,
    route: Option<Instant>,
    route_label: String,
    llm_first_ms: Option<u64>,
    first_synth_ms: Option<u64>,
    first_playing: Option<Instant>,
}

/// Runs the benchmark and prints the table.
pub async fn run(cfg: &Config) -> Result<(), super::BenchError> {
    // An instant OpenAI-protocol server: the whole answer streamed at once.
    let server = serve(Arc::new(|_r: &Request| Reply::Stream {
        content_type: "text/event-stream",
        pieces: openai_stream(
            &[
                "That is a good question. ",
                "Here is a short answer for it.",
            ],
            Duration::ZERO,
        ),
        die: false,
    }))
    .await
    .map_err(|e| super::BenchError::Synth(format!("LLM server: {e}")))?;
    let dir = std::env::temp_dir().join(format!("panda-bench-e2e-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let mut cfg = cfg.clone();
    cfg.llm.url = server.url();
    cfg.llm.backend = LlmBackend::Openai;
    cfg.state.dir = dir.join("state");
    cfg.web.enabled = false;
    for a in &mut cfg.agents {
        a.url = "http://127.0.0.1:9".into();
    }

    // The clips: Kokoro saying each question, plus the bundled recording.
    let mut clips: Vec<(String, PathBuf)> = Vec::new();
    {
        let mut k = crate::speak::kokoro::Kokoro::load(
            &cfg.model_path(&cfg.tts.model_dir),
            &cfg.model_path(std::path::Path::new(crate::onnx::ORT_LIB)),
            2,
        )?;
        for (i, q) in QUESTIONS.iter().enumerate() {
            let mut pcm16: Vec<i16> = vec![0; 8000];
            for part in ["Hey panda.", q] {
                let audio = k.synthesize(part, "am_michael", 1.0)?;
                pcm16.extend(crate::audio::dsp::to_16k_mono(&audio, 24_000, 1));
                pcm16.extend(std::iter::repeat_n(0i16, 9600));
            }
            let path = dir.join(format!("q{i}.wav"));
            std::fs::write(&path, crate::listen::wake::wav_bytes(&pcm16))
                .map_err(|e| super::BenchError::Synth(e.to_string()))?;
            clips.push((q.to_string(), path));
        }
    }
    let fixture =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hey-panda-what-time.wav");
    if fixture.exists() {
        clips.push(("(recorded) What time is it?".into(), fixture));
    }

    println!("end of speech → first audio out, per question (release build recommended):");
    println!(
        "  {:<38} {:>8} {:>7} {:>8} {:>9} {:>9} {:>9} {:>9}",
        "question", "route", "STT", "LLM 1st", "TTS 1st", "e2e", "budget", "overhead"
    );
    let mut e2e_all = Vec::new();
    let mut overhead_all = Vec::new();
    for (q, path) in &clips {
        let marks: Arc<std::sync::Mutex<HashMap<u64, Marks>>> = Arc::default();
        let m2 = marks.clone();
        let opts = RunOptions {
            input: Input::File(FileSpec {
                path: path.clone(),
                format: FileFormat::Wav,
                realtime: false,
                tail_silence_ms: 1000,
            }),
            output: Output::Wav {
                path: dir.join("answer.wav"),
                rate_hz: 24_000,
                paced: None,
                log: None,
            },
            use_wake: true,
            web: false,
        };
        let r = crate::app::run(&cfg, opts, CancellationToken::new(), move |ev| {
            let now = Instant::now();
            let mut g = crate::lock(&m2);
            match ev {
                Event::SpeechEnd { turn, .. } => g.entry(*turn).or_default().speech_end = Some(now),
                Event::Transcript { turn, stt_ms, .. } => {
                    let m = g.entry(*turn).or_default();
                    m.transcript = Some(now);
                    m.stt_ms = Some(*stt_ms);
                }
                Event::Route { turn, target, .. } => {
                    let m = g.entry(*turn).or_default();
                    m.route = Some(now);
                    m.route_label = target.clone();
                }
                Event::Llm {
                    turn,
                    first_token_ms,
                    ..
                } => g.entry(*turn).or_default().llm_first_ms = *first_token_ms,
                Event::Synthesized {
                    turn,
                    sentence: 0,
                    synth_ms,
                    ..
                } => {
                    let m = g.entry(*turn).or_default();
                    if m.first_synth_ms.is_none() {
                        m.first_synth_ms = Some(*synth_ms);
                    }
                }
                Event::Playing { turn, .. } => {
                    let m = g.entry(*turn).or_default();
                    if m.first_playing.is_none() {
                        m.first_playing = Some(now);
                    }
                }
                _ => {}
            }
        })
        .await;
        if let Err(e) = r {
            println!("  {q:<38} failed: {e}");
            continue;
        }
        let g = crate::lock(&marks);
        let Some(m) = g
            .values()
            .find(|m| m.speech_end.is_some() && m.first_playing.is_some())
        else {
            println!("  {q:<38} no answer (wake word or question not heard)");
            continue;
        };
        let e2e = (m.first_playing.unwrap() - m.speech_end.unwrap()).as_secs_f64() * 1000.0;
        let stt = m.stt_ms.unwrap_or(0) as f64;
        let tts = m.first_synth_ms.unwrap_or(0) as f64;
        let budget = stt + tts + 20.0;
        e2e_all.push(e2e);
        overhead_all.push(e2e - stt - tts);
        println!(
            "  {:<38} {:>8} {:>5.0}ms {:>8} {:>7.0}ms {:>7.0}ms {:>7.0}ms {:>7.0}ms",
            q.chars().take(38).collect::<String>(),
            m.route_label,
            stt,
            m.llm_first_ms
                .map(|v| format!("{v}ms"))
                .unwrap_or_else(|| "-".into()),
            tts,
            e2e,
            budget,
            e2e - stt - tts
        );
    }
    if !e2e_all.is_empty() {
        println!(
            "end of speech → first audio: p50 {:.0} ms, p95 {:.0} ms; Panda's own overhead beyond STT + first TTS: p50 {:.0} ms, p95 {:.0} ms (compass goal ≤ 20 ms)",
            percentile(&e2e_all, 50.0),
            percentile(&e2e_all, 95.0),
            percentile(&overhead_all, 50.0),
            percentile(&overhead_all, 95.0)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
