//! `panda bench aec` and the offline echo scenes it (and the tests) run: Panda's own
//! answer through a loudspeaker into a room and back into the microphone, a person
//! talking over it, and the real listening path (canceller, self-wake guard, wake word
//! with its Whisper check, VAD, endpointer, stop words) on top.
//!
//! A scene is simulated frame by frame, in stream order, so that it reacts like the
//! appliance: a wake word (or a stop word) accepted by the listener cuts the answer at
//! that moment — the speaker goes silent, the reference too — and the person's next
//! question is heard in a quiet room. The room: the answer through a soft-clipping
//! loudspeaker (tanh), a fixed latency, and an impulse response with a strong direct
//! path (speaker a few cm from the microphone), early reflections and an exponential
//! tail (`rt60`), all from a fixed seed. The reference is what was sent to the DAC,
//! before the loudspeaker's non-linearity: the canceller never sees the room.
//!
//! The guard runs on the scene's clock (stream time), fed the way playback feeds it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::BenchError;
use super::wake::{Rng, rms, say_16k};
use crate::audio::aec::{
    AecStats, EchoCanceller, LINEAR_LAG_SAMPLES, OUTPUT_LAG_SAMPLES, SelfWakeGuard,
};
use crate::config::Config;
use crate::event::{AudioFrame, Event, FRAME_MS, FRAME_SAMPLES, SAMPLE_RATE_HZ, Utterance};
use crate::listen::listener::{self, ListenerIo, ListenerOptions, WakeVerifier};
use crate::listen::stt::SttHandle;

/// A room's echo path: sparse impulse response taps (delay in samples, gain).
#[derive(Debug, Clone)]
pub struct Room {
    taps: Vec<(usize, f32)>,
    /// Longest tap delay.
    len: usize,
}

impl Room {
    /// A room with reverberation time `rt60_s`, the direct path after `latency_ms`
    /// (device buffers and air), from `seed`.
    pub fn new(seed: u64, rt60_s: f32, latency_ms: f32) -> Self {
        let mut rng = Rng(seed | 1);
        let d0 = (latency_ms * SAMPLE_RATE_HZ as f32 / 1000.0) as usize;
        let tail = (rt60_s * SAMPLE_RATE_HZ as f32) as usize;
        let mut taps = vec![(d0, 1.0f32)];
        // Early reflections: a few within 20 ms (the table, the walls of the enclosure).
        for _ in 0..6 {
            let d = d0 + 16 + (rng.next_u64() % 320) as usize;
            taps.push((d, rng.range(-0.2, 0.2)));
        }
        // The diffuse tail: noise decaying 60 dB over rt60 (every 3rd sample: a sparse
        // tail is still diffuse to a canceller and keeps long scenes cheap), scaled so
        // that the direct path is ~12 dB above the tail's energy: a loudspeaker a few
        // cm from the microphone in a living room.
        let scale = 0.27 / (rt60_s * SAMPLE_RATE_HZ as f32 / 13.8 / 3.0).sqrt();
        for i in (48..tail).step_by(3) {
            let t = i as f32 / SAMPLE_RATE_HZ as f32;
            let g = rng.gauss() * scale * (-6.9 * t / rt60_s).exp();
            if g.abs() > 1e-4 {
                taps.push((d0 + i, g));
            }
        }
        let len = taps.iter().map(|t| t.0).max().unwrap_or(0);
        Self { taps, len }
    }
}

/// Something a person says into the microphone, placed in the scene.
#[derive(Debug, Clone)]
pub struct Talk {
    /// Where it starts in the scene (samples).
    pub at: usize,
    /// The audio as the microphone gets it (16 kHz, already at its level).
    pub audio: Vec<f32>,
}

/// One scene: Panda's answer, what people say over it, and how loud the echo is.
#[derive(Debug, Clone)]
pub struct Scene {
    /// The answer as sent to the DAC (16 kHz, [-1, 1]); it starts at sample 0.
    pub answer: Vec<f32>,
    /// Where the answer says the wake word's keyword (answer samples): what playback
    /// tells the self-wake guard.
    pub keyword_at: Vec<u64>,
    /// The person.
    pub talks: Vec<Talk>,
    /// Gain of the echo at the microphone (after the room).
    pub echo_gain: f32,
    /// The room.
    pub room: Room,
    /// Total length (samples).
    pub len: usize,
    /// Seed of the microphone's noise floor.
    pub seed: u64,
    /// The loudspeaker's clock against the microphone's, in parts per million (a USB
    /// speaker and a USB microphone each run on their own crystal): positive plays the
    /// answer faster than the microphone's clock, so more reference arrives per capture
    /// frame than the capture covers; negative, less. 0: one clock.
    pub drift_ppm: f64,
}

impl Scene {
    /// Panda's `answer` alone in `room`, the echo at `echo_gain`, one second of room
    /// after it; add what the person says with struct update syntax.
    pub fn new(
        answer: Vec<f32>,
        keyword_at: Vec<u64>,
        room: Room,
        echo_gain: f32,
        seed: u64,
    ) -> Self {
        Self {
            len: answer.len() + SAMPLE_RATE_HZ as usize,
            answer,
            keyword_at,
            talks: Vec::new(),
            echo_gain,
            room,
            seed,
            drift_ppm: 0.0,
        }
    }
}

/// What runs in a scene.
#[derive(Debug, Clone, Copy)]
pub struct SceneOptions {
    /// The echo canceller (else the microphone goes to the listener as it is).
    pub aec: bool,
    /// The self-wake guard.
    pub guard: bool,
    /// Stop words over the answer.
    pub stop_words: bool,
    /// A wake or a stop word cuts the answer (barge-in), as in `panda run`.
    pub barge_in: bool,
}

impl SceneOptions {
    /// Everything on, as `panda run` on a sound card with a microphone.
    pub const APPLIANCE: Self = Self {
        aec: true,
        guard: true,
        stop_words: true,
        barge_in: true,
    };
}

/// What happened in a scene.
#[derive(Debug, Default, Clone)]
pub struct SceneOutcome {
    /// Accepted wake words: stream position (ms).
    pub wakes: Vec<u64>,
    /// Detections the guard ignored.
    pub self_wakes_suppressed: u64,
    /// Transcripts of the questions (wake phrase dropped): (start ms, text).
    pub transcripts: Vec<(u64, String)>,
    /// Stop words heard over the answer: (ms, word).
    pub stops: Vec<(u64, String)>,
    /// Command-length utterances the stop-word spotter handed to Whisper (each costs a
    /// Whisper pass; over Panda's voice alone every one is its residual echo).
    pub command_candidates: usize,
    /// Where the answer was cut (ms), if it was.
    pub cut_at_ms: Option<u64>,
    /// Echo return loss enhancement on far-end-only frames after the first second (dB):
    /// microphone energy over output energy.
    pub erle_db: f64,
    /// The same for the linear filter alone (before residual-echo suppression).
    pub erle_linear_db: f64,
    /// ERLE (full, linear) over the last third of the answer: where a drifting clock
    /// has moved the echo furthest from where the canceller first found it.
    pub erle_late_db: (f64, f64),
    /// Reference frames dropped / missing / fed twice to catch up (see `AecStats`).
    pub render_dropped: u64,
    /// See [`SceneOutcome::render_dropped`].
    pub render_missing: u64,
    /// See [`SceneOutcome::render_dropped`].
    pub render_caught_up: u64,
    /// Near-end signal-to-distortion in double talk (dB): the person's voice through
    /// the canceller with no echo, against the full and the linear outputs with it.
    pub double_talk_sdr_db: (f64, f64),
    /// Canceller time per 30 ms frame (µs).
    pub aec_us_per_frame: f64,
    /// Frames processed.
    pub frames: usize,
}

/// A double-talk scene's outputs, kept to compare at the end.
#[derive(Default)]
struct DoubleTalkOutputs {
    clean: Vec<i16>,
    full: Vec<i16>,
    linear: Vec<i16>,
    /// Frames where both the echo and the person are present.
    judged: Vec<bool>,
}

/// Energies accumulated over a scene for ERLE and double-talk distortion.
#[derive(Default)]
struct Energy {
    echo_mic: f64,
    echo_out: f64,
    echo_linear: f64,
    /// The same three over the answer's last third.
    late: [f64; 3],
    near: f64,
    dist_full: f64,
    dist_linear: f64,
}

/// Runs `scene` through the canceller and the real listener (wake word from `[wake]`,
/// checked by Whisper when `stt` is given; questions transcribed by it).
pub fn run_scene(
    cfg: &Config,
    stt: Option<&SttHandle>,
    scene: &Scene,
    opts: SceneOptions,
) -> Result<SceneOutcome, BenchError> {
    let clock = Arc::new(AtomicU64::new(0));
    let guard = opts.guard.then(|| {
        Arc::new(SelfWakeGuard::with_clock(
            &cfg.wake.phrase,
            cfg.aec.guard_tail_ms,
            clock.clone(),
        ))
    });
    let root = CancellationToken::new();
    // Small edges: the scene waits for the listener, so the clock stays with it.
    let (frame_tx, frame_rx) = mpsc::channel::<AudioFrame>(2);
    let (utt_tx, mut utt_rx) = mpsc::channel::<Utterance>(2);
    let (ev_tx, mut ev_rx) = mpsc::channel::<Event>(64);
    let listener = listener::spawn(
        cfg.clone(),
        ListenerOptions {
            use_wake: true,
            verifier: stt.map(|s| WakeVerifier::new(s.clone(), &cfg.wake)),
            hold_after_wake_ms: 0,
            guard: guard.clone(),
            stop_words: opts.stop_words && opts.aec,
            // Frames as fast as the machine goes, each in its order.
            live: false,
        },
        ListenerIo {
            frames: frame_rx,
            utterances: utt_tx,
            events: ev_tx,
            root: root.clone(),
            control: None,
        },
    )?;
    // Barge-in signals from the listener side to the scene: (ms, what).
    let (cut_tx, cut_rx) = std::sync::mpsc::channel::<u64>();
    let events = {
        let cut_tx = cut_tx.clone();
        std::thread::spawn(move || {
            let (mut wakes, mut ignored) = (Vec::new(), 0);
            while let Some(ev) = ev_rx.blocking_recv() {
                match ev {
                    Event::Wake { at_ms, .. } => {
                        wakes.push(at_ms);
                        let _ = cut_tx.send(at_ms);
                    }
                    Event::SelfWake { .. } => ignored += 1,
                    _ => {}
                }
            }
            (wakes, ignored)
        })
    };
    let utterances = {
        let stt = stt.cloned();
        let phrase = cfg.wake.phrase.clone();
        let words = cfg.aec.stop_words.clone();
        std::thread::spawn(move || {
            let mut transcripts = Vec::new();
            let mut stops = Vec::new();
            let mut candidates = 0;
            while let Some(u) = utt_rx.blocking_recv() {
                candidates += usize::from(u.command);
                let Some(stt) = &stt else { continue };
                let token = CancellationToken::new();
                let out = if u.command {
                    stt.transcribe_command_blocking(&u.samples, &token)
                } else {
                    stt.transcribe_blocking(&u.samples, &token)
                };
                let Ok(out) = out else {
                    continue;
                };
                if u.command {
                    tracing::debug!(heard = %out.text, ms = u.start_ms, len_ms = u.samples.len() / 16, "command candidate");
                    if let Some(w) = crate::listen::command::stop_command(&out.text, &words) {
                        let at = u.start_ms + (u.samples.len() / 16) as u64;
                        stops.push((at, w));
                        let _ = cut_tx.send(at);
                    }
                    continue;
                }
                let text = match &u.wake_phrase {
                    Some(_) => listener::strip_wake_phrase(&out.text, &phrase),
                    None => out.text,
                };
                transcripts.push((u.start_ms, text));
            }
            (transcripts, stops, candidates)
        })
    };

    let stats = Arc::new(AecStats::default());
    let mut aec = if opts.aec {
        Some(
            EchoCanceller::new(cfg.aec.delay_hint_ms, stats.clone())
                .map_err(|e| BenchError::Synth(e.to_string()))?,
        )
    } else {
        None
    };
    let mut rng = Rng(scene.seed | 1);
    // What the loudspeaker has emitted, kept as long as the room's memory.
    let hist_len = scene.room.len + FRAME_SAMPLES;
    let mut speaker: Vec<f32> = vec![0.0; hist_len];
    // The person at the microphone over the whole scene.
    let mut near = vec![0f32; scene.len + FRAME_SAMPLES];
    for t in &scene.talks {
        for (j, s) in t.audio.iter().enumerate() {
            if let Some(n) = near.get_mut(t.at + j) {
                *n += s;
            }
        }
    }
    let mut energy = Energy::default();
    // Double talk needs a second canceller (see below): only in scenes with a person.
    let mut double_talk = match (opts.aec, scene.talks.is_empty()) {
        (true, false) => Some((
            EchoCanceller::new(cfg.aec.delay_hint_ms, Arc::new(AecStats::default()))
                .map_err(|e| BenchError::Synth(e.to_string()))?,
            DoubleTalkOutputs::default(),
        )),
        _ => None,
    };
    let mut aec_time = std::time::Duration::ZERO;
    let mut cut: Option<u64> = None;
    let mut out = SceneOutcome::default();
    let frames = scene.len / FRAME_SAMPLES;
    let talk_near = |start: usize, end: usize| {
        scene
            .talks
            .iter()
            .any(|t| start < t.at + t.audio.len() + 8_000 && end + 8_000 > t.at)
    };
    let drift = 1.0 + scene.drift_ppm * 1e-6;
    let speaker_pos = |mic_sample: usize| (mic_sample as f64 * drift) as usize;
    for k in 0..frames {
        let start = k * FRAME_SAMPLES;
        let ms = (k as u64) * FRAME_MS as u64;
        clock.store(ms, Ordering::Relaxed);
        while let Ok(at) = cut_rx.try_recv() {
            if opts.barge_in && cut.is_none() {
                // Playback goes silent within a tick of the cancel.
                cut = Some(at.max(ms));
            }
        }
        // The speaker's own sample positions over this capture frame (its clock may
        // run apart from the microphone's: `drift_ppm`).
        let (from, to) = (speaker_pos(start), speaker_pos(start + FRAME_SAMPLES));
        let playing = cut.is_none() && from < scene.answer.len();
        if let Some(g) = &guard
            && playing
        {
            g.mark(
                from as u64,
                scene.keyword_at.iter().copied(),
                SAMPLE_RATE_HZ,
            );
        }
        // The DAC's samples this frame (the reference: what playback sent, at the
        // speaker's clock) and the loudspeaker's sound as the microphone samples it.
        let mut dac = vec![0f32; to - from];
        if playing {
            let end = to.min(scene.answer.len());
            dac[..end - from].copy_from_slice(&scene.answer[from..end]);
        }
        speaker.drain(..FRAME_SAMPLES);
        // (With one clock `at` is a whole sample and this is the DAC's own sample.)
        let sample = |j: usize| {
            if playing && j < scene.answer.len() {
                scene.answer[j]
            } else {
                0.0
            }
        };
        for i in 0..FRAME_SAMPLES {
            let at = (start + i) as f64 * drift;
            let (j, frac) = (at as usize, at.fract() as f32);
            let x = sample(j) * (1.0 - frac) + sample(j + 1) * frac;
            speaker.push((2.0 * x).tanh() / 2.0);
        }
        // Microphone = echo + person + noise floor (−75 dBFS).
        let base = hist_len - FRAME_SAMPLES;
        let mut mic = [0f32; FRAME_SAMPLES];
        for (i, m) in mic.iter_mut().enumerate() {
            let mut e = 0.0f32;
            for &(d, g) in &scene.room.taps {
                e += speaker[base + i - d] * g;
            }
            *m = e * scene.echo_gain;
        }
        let echo_energy: f64 = mic.iter().map(|s| (*s as f64).powi(2)).sum();
        let echo_part = mic;
        let near_frame = &near[start..start + FRAME_SAMPLES];
        for (m, n) in mic.iter_mut().zip(near_frame) {
            *m += n + rng.gauss() * 1.8e-4;
        }
        let mut pcm = Box::new([0i16; FRAME_SAMPLES]);
        for (d, s) in pcm.iter_mut().zip(&mic) {
            *d = crate::audio::dsp::f32_to_i16(*s);
        }
        let frame = match &mut aec {
            Some(a) => {
                let t0 = Instant::now();
                a.render(&dac);
                let c = a
                    .process(&pcm)
                    .map_err(|e| BenchError::Synth(e.to_string()))?;
                aec_time += t0.elapsed();
                let far_only = echo_energy > 1e-3 && !talk_near(start, start + FRAME_SAMPLES);
                if far_only && k >= 33 {
                    let e = |x: &[i16]| x.iter().map(|s| (*s as f64).powi(2)).sum::<f64>();
                    let (mic, out) = (e(&pcm[..]), e(&c.samples[..]));
                    let linear = c.linear.as_ref().map_or(0.0, |l| e(&l[..]));
                    energy.echo_mic += mic;
                    energy.echo_out += out;
                    energy.echo_linear += linear;
                    if start >= scene.answer.len() * 2 / 3 {
                        energy.late[0] += mic;
                        energy.late[1] += out;
                        energy.late[2] += linear;
                    }
                }
                if let Some((clean, dt)) = &mut double_talk {
                    // The same microphone without the echo, through a canceller of its
                    // own: what the person's voice becomes with no echo to remove.
                    let mut quiet = Box::new([0i16; FRAME_SAMPLES]);
                    for (i, q) in quiet.iter_mut().enumerate() {
                        *q = crate::audio::dsp::f32_to_i16(mic[i] - echo_part[i]);
                    }
                    clean.render(&[0.0; FRAME_SAMPLES]);
                    let q = clean
                        .process(&quiet)
                        .map_err(|e| BenchError::Synth(e.to_string()))?;
                    let near_energy: f64 = near_frame.iter().map(|s| (*s as f64).powi(2)).sum();
                    dt.clean.extend_from_slice(&q.samples[..]);
                    dt.full.extend_from_slice(&c.samples[..]);
                    dt.linear
                        .extend_from_slice(&c.linear.as_deref().unwrap_or(&c.samples)[..]);
                    dt.judged.push(echo_energy > 1e-3 && near_energy > 1e-4);
                }
                AudioFrame {
                    seq: k as u64,
                    samples: c.samples,
                    linear: c.linear,
                    near_end: c.near_end,
                    no_echo: c.no_echo,
                }
            }
            None => AudioFrame {
                seq: k as u64,
                samples: pcm,
                linear: None,
                near_end: false,
                no_echo: false,
            },
        };
        if frame_tx.blocking_send(frame).is_err() {
            break;
        }
    }
    drop(frame_tx);
    let _ = listener.join();
    root.cancel();
    (out.wakes, out.self_wakes_suppressed) = events.join().unwrap_or_default();
    let (transcripts, stops, candidates) = utterances.join().unwrap_or_default();
    out.command_candidates = candidates;
    out.transcripts = transcripts;
    out.stops = stops;
    out.cut_at_ms = cut;
    let db = |a: f64, b: f64| 10.0 * (a / b.max(1e-9)).log10();
    (out.erle_db, out.erle_linear_db) = if energy.echo_mic > 0.0 {
        (
            db(energy.echo_mic, energy.echo_out),
            db(energy.echo_mic, energy.echo_linear),
        )
    } else {
        (f64::NAN, f64::NAN)
    };
    out.erle_late_db = if energy.late[0] > 0.0 {
        (
            db(energy.late[0], energy.late[1]),
            db(energy.late[0], energy.late[2]),
        )
    } else {
        (f64::NAN, f64::NAN)
    };
    out.render_dropped = stats.render_dropped.load(Ordering::Relaxed);
    out.render_missing = stats.render_missing.load(Ordering::Relaxed);
    out.render_caught_up = stats.render_caught_up.load(Ordering::Relaxed);
    if let Some((_, dt)) = &double_talk {
        // The linear output is 64 samples ahead of the full outputs.
        let shift = OUTPUT_LAG_SAMPLES - LINEAR_LAG_SAMPLES;
        for (k, judged) in dt.judged.iter().enumerate() {
            if !judged {
                continue;
            }
            for i in k * FRAME_SAMPLES..(k + 1) * FRAME_SAMPLES {
                let c = dt.clean[i] as f64;
                energy.near += c * c;
                energy.dist_full += (dt.full[i] as f64 - c).powi(2);
                let l = dt.linear.get(i.saturating_sub(shift)).copied().unwrap_or(0) as f64;
                energy.dist_linear += (l - c).powi(2);
            }
        }
    }
    out.double_talk_sdr_db = if energy.near > 0.0 {
        (
            db(energy.near, energy.dist_full),
            db(energy.near, energy.dist_linear),
        )
    } else {
        (f64::NAN, f64::NAN)
    };
    out.frames = frames;
    out.aec_us_per_frame = aec_time.as_secs_f64() * 1e6 / frames.max(1) as f64;
    Ok(out)
}

/// The echo gain that puts an answer's echo `speech_to_echo_db` above (positive) or
/// below (negative) a person's voice of RMS `speech_rms` at the microphone. Measured
/// on the voiced parts of the answer through the room, non-linearity included.
pub fn echo_gain_for(answer: &[f32], room: &Room, speech_rms: f32, speech_to_echo_db: f32) -> f32 {
    let n = answer.len().min(10 * SAMPLE_RATE_HZ as usize);
    let spk: Vec<f32> = answer[..n]
        .iter()
        .map(|&x| (2.0 * x).tanh() / 2.0)
        .collect();
    let mut echo = vec![0f32; n];
    for (i, e) in echo.iter_mut().enumerate() {
        for &(d, g) in &room.taps {
            if let Some(j) = i.checked_sub(d) {
                *e += spk[j] * g;
            }
        }
    }
    let voiced: Vec<f32> = echo.iter().copied().filter(|s| s.abs() > 1e-3).collect();
    let echo_rms = rms(&voiced).max(1e-9);
    let want = speech_rms / 10f32.powf(speech_to_echo_db / 20.0);
    want / echo_rms
}

/// Scales `speech` (16 kHz) so that its voiced part has RMS `level`.
pub fn at_level(speech: &[f32], level: f32) -> Vec<f32> {
    let voiced: Vec<f32> = speech.iter().copied().filter(|s| s.abs() > 1e-3).collect();
    let g = level / rms(&voiced).max(1e-9);
    speech.iter().map(|s| s * g).collect()
}

/// The canceller's own cost per 30 ms frame (µs), nothing else running: `answer` as the
/// reference and, 60 ms later and quieter, as the microphone.
fn canceller_alone_us(cfg: &Config, answer: &[f32]) -> Result<f64, BenchError> {
    let mut aec = EchoCanceller::new(cfg.aec.delay_hint_ms, Arc::new(AecStats::default()))
        .map_err(|e| BenchError::Synth(e.to_string()))?;
    let frames = answer.len() / FRAME_SAMPLES;
    let t0 = Instant::now();
    for k in 0..frames {
        let start = k * FRAME_SAMPLES;
        aec.render(&answer[start..start + FRAME_SAMPLES]);
        let mut mic = [0i16; FRAME_SAMPLES];
        for (i, m) in mic.iter_mut().enumerate() {
            let j = (start + i).saturating_sub(960);
            *m = crate::audio::dsp::f32_to_i16(answer[j] * 0.3);
        }
        aec.process(&mic)
            .map_err(|e| BenchError::Synth(e.to_string()))?;
    }
    Ok(t0.elapsed().as_secs_f64() * 1e6 / frames.max(1) as f64)
}

/// Panda's answers for the scenes: plain ones, and ones that say the wake word.
const ANSWERS: &[&str] = &[
    "The giant panda lives in the mountains of central China and eats bamboo for most of the day.",
    "It is a quarter past three in the afternoon.",
    "I set a timer for ten minutes and I will tell you when it goes off.",
    "You can call me by saying hey panda, and then asking your question.",
    "Tomorrow will be cloudy in the morning, with some sun in the afternoon and a light wind.",
    "A red panda is much smaller than a giant panda, about the size of a cat.",
    "The capital of Australia is Canberra, not Sydney as many people think.",
    "Here is a story. A little panda said hey panda to its mother, and she answered.",
    "Boil the egg for about seven minutes if you like the yolk a little soft.",
    "Rainbows form when sunlight is bent and reflected inside raindrops.",
];

/// What a person may say over an answer without the wake word, and whether the stop
/// word spotter must take it for a stop.
const STOP_PHRASES: &[(&str, bool)] = &[
    ("Stop.", true),
    ("Stop it, please.", true),
    ("Cancel.", true),
    ("Quiet.", true),
    ("Okay, quiet now.", true),
    ("Stop, please.", true),
    ("Stop the timer.", false),
    ("Thank you.", false),
    ("Don't stop.", false),
    ("Go on.", false),
];

/// Voices the stop word rows are said in (English Kokoro voices; never the reserved
/// non-English ones).
const STOP_VOICES: &[&str] = &[
    "am_adam",
    "af_bella",
    "bm_george",
    "bf_emma",
    "am_puck",
    "af_nicole",
    "bm_fable",
    "bf_lily",
];

/// Stop words as the STT stage hears them: each phrase in each voice (200 ms before it,
/// 300 ms after, as the spotter cuts it, at −26 dBFS), decoded with the full encoder
/// window and with the window sized to the audio; the spotter's decisions right, and
/// Whisper's time per candidate (every candidate costs one pass, and over a loud echo
/// the answer's own residual makes one every second or two).
fn stop_word_windows(
    cfg: &Config,
    stt: &SttHandle,
    k: &mut crate::speak::kokoro::Kokoro,
) -> Result<(), BenchError> {
    let level = 10f32.powf(-26.0 / 20.0);
    let mut clips = Vec::new();
    for voice in STOP_VOICES {
        for (text, stop) in STOP_PHRASES {
            let speech = at_level(&say_16k(k, text, voice, 1.0)?, level);
            let mut pcm = vec![0i16; 16 * 200];
            pcm.extend(speech.iter().map(|s| crate::audio::dsp::f32_to_i16(*s)));
            pcm.extend(std::iter::repeat_n(0i16, 16 * 300));
            clips.push((voice, *text, *stop, pcm));
        }
    }
    let token = CancellationToken::new();
    println!(
        "stop words said over an answer ({} clips: {} voices × {} phrases, 6 of them stops):",
        clips.len(),
        STOP_VOICES.len(),
        STOP_PHRASES.len()
    );
    for (short, name) in [
        (false, "full 30 s window"),
        (true, "window sized to the audio"),
    ] {
        let (mut right, mut ms, mut misses) = (0, Vec::new(), Vec::new());
        for (voice, text, stop, pcm) in &clips {
            let t0 = Instant::now();
            let out = stt.transcribe_blocking_window(pcm, short, &token)?;
            ms.push(t0.elapsed().as_secs_f64() * 1000.0);
            let said_stop =
                crate::listen::command::stop_command(&out.text, &cfg.aec.stop_words).is_some();
            if said_stop == *stop {
                right += 1;
            } else {
                misses.push(format!("{voice} {text:?} → {:?}", out.text));
            }
        }
        println!(
            "  {name:<27} decisions right {right}/{} ({:.1}%), Whisper p50 {:.0} ms / p95 {:.0} ms per candidate",
            clips.len(),
            100.0 * right as f64 / clips.len() as f64,
            super::percentile(&ms, 50.0),
            super::percentile(&ms, 95.0),
        );
        for m in misses.iter().take(6) {
            println!("      miss: {m}");
        }
    }
    Ok(())
}

/// Sentences a person says over the answer.
const BARGE_IN: &str = "Hey panda, stop.";
const STOP_ALONE: &str = "Stop.";

/// Panda's voice, 16 kHz.
#[derive(Default)]
struct Speech {
    audio: Vec<f32>,
    keyword_at: Vec<u64>,
}

impl Speech {
    /// Appends `other` (its keyword places move with it), then `pause` samples of silence.
    fn append(&mut self, other: &Speech, pause: usize) {
        let at = self.audio.len() as u64;
        self.keyword_at
            .extend(other.keyword_at.iter().map(|k| k + at));
        self.audio.extend_from_slice(&other.audio);
        self.audio.extend(std::iter::repeat_n(0.0, pause));
    }
}

/// An answer stream of about `secs` seconds from `pool` (indices picked by `rng`), with
/// the keyword's places.
fn answer_stream(rng: &mut Rng, pool: &[Speech], picks: &[usize], secs: f32) -> Speech {
    let mut out = Speech::default();
    let mut i = 0;
    while (out.audio.len() as f32) < secs * SAMPLE_RATE_HZ as f32 {
        let pause = (rng.range(0.25, 0.6) * 16_000.0) as usize;
        out.append(&pool[picks[i % picks.len()]], pause);
        i += 1;
    }
    out
}

/// `panda bench aec`: ERLE, double-talk distortion, barge-in recall and stop words at
/// three speech-to-echo ratios, self-wakes per hour of Panda's own speech (`minutes` of
/// it, the wake phrase said every minute), and the canceller's CPU per frame.
pub fn run(cfg: &Config, minutes: f64, trials: usize) -> Result<(), BenchError> {
    use crate::models::install::paths;
    let started = Instant::now();
    let models = &cfg.models.dir;
    let mut k = crate::speak::kokoro::Kokoro::load(
        &models.join(paths::KOKORO_DIR),
        &models.join(paths::ORT_LIB),
        2,
    )?;
    let (stt, _worker) = crate::listen::stt::spawn_configured(cfg)?;
    let guard = SelfWakeGuard::new(&cfg.wake.phrase, 0);
    let mut pool = Vec::new();
    for text in ANSWERS {
        let audio = say_16k(&mut k, text, &cfg.tts.voice, 1.0)?;
        let keyword_at = guard.keyword_samples(text, audio.len() as u64);
        pool.push(Speech { audio, keyword_at });
    }
    let plain: Vec<usize> = (0..ANSWERS.len())
        .filter(|&i| pool[i].keyword_at.is_empty())
        .collect();
    let wake_said: Vec<usize> = (0..ANSWERS.len())
        .filter(|&i| ANSWERS[i].contains("hey panda"))
        .collect();
    let mut rng = Rng(0x5eed_aec3);
    let speech_rms = 10f32.powf(-26.0 / 20.0);
    println!(
        "panda bench aec — Panda's voice {}, room rt60 0.35 s, 60 ms echo latency, soft-clipping speaker",
        cfg.tts.voice
    );

    // 1. Far end only: ERLE and cost.
    let far = answer_stream(&mut rng, &pool, &(0..pool.len()).collect::<Vec<_>>(), 60.0);
    let alone_us = canceller_alone_us(cfg, &far.audio)?;
    let room = Room::new(11, 0.35, 60.0);
    let gain = echo_gain_for(&far.audio, &room, speech_rms, -6.0);
    let scene = Scene::new(far.audio, far.keyword_at, room, gain, 3);
    let o = run_scene(cfg, Some(&stt), &scene, SceneOptions::APPLIANCE)?;
    println!(
        "far end only ({:.0} s): ERLE {:.1} dB (linear filter alone {:.1} dB); canceller {:.0} µs per 30 ms frame = {:.2}% of a core alone ({:.0} µs beside the listener and Whisper)",
        scene.len as f64 / 16_000.0,
        o.erle_db,
        o.erle_linear_db,
        alone_us,
        alone_us / 300.0,
        o.aec_us_per_frame,
    );

    stop_word_windows(cfg, &stt, &mut k)?;

    // 2. Self-wakes: the wake phrase once a minute in Panda's own speech.
    if minutes <= 0.0 {
        return barge_in(cfg, &stt, &mut k, &pool, &plain, &mut rng, trials, started);
    }
    println!(
        "self-wakes over {minutes:.0} min of Panda's speech, the wake phrase once a minute, echo at −20 dBFS:"
    );
    let mut long = Speech::default();
    let mut said = 0;
    while (long.audio.len() as f64) < minutes * 60.0 * 16_000.0 {
        let minute = answer_stream(&mut rng, &pool, &plain, 50.0);
        long.append(&minute, 0);
        long.append(&pool[*rng.pick(&wake_said)], 8_000);
        said += 1;
    }
    let room = Room::new(12, 0.35, 60.0);
    let gain = echo_gain_for(&long.audio, &room, 10f32.powf(-20.0 / 20.0), 0.0);
    let hours = long.audio.len() as f64 / 16_000.0 / 3600.0;
    let scene = Scene::new(long.audio, long.keyword_at, room, gain, 4);
    for (name, aec, guard) in [
        ("no canceller, no guard", false, false),
        ("canceller, no guard", true, false),
        ("canceller + guard", true, true),
    ] {
        let o = run_scene(
            cfg,
            Some(&stt),
            &scene,
            SceneOptions {
                aec,
                guard,
                stop_words: false,
                barge_in: false,
            },
        )?;
        println!(
            "  {name:<24} {:>3} wakes ({:.1} per hour; phrase said {said} times), {} ignored by the guard",
            o.wakes.len(),
            o.wakes.len() as f64 / hours,
            o.self_wakes_suppressed
        );
    }

    barge_in(cfg, &stt, &mut k, &pool, &plain, &mut rng, trials, started)
}

/// Part 3 of the bench: barge-in and stop words at four speech-to-echo ratios.
#[allow(clippy::too_many_arguments)]
fn barge_in(
    cfg: &Config,
    stt: &SttHandle,
    k: &mut crate::speak::kokoro::Kokoro,
    pool: &[Speech],
    plain: &[usize],
    rng: &mut Rng,
    trials: usize,
    started: Instant,
) -> Result<(), BenchError> {
    if trials == 0 {
        return Ok(());
    }
    let speech_rms = 10f32.powf(-26.0 / 20.0);
    let opts = SceneOptions::APPLIANCE;
    let speakers = super::UNSEEN_VOICES;
    let mut said_bi = Vec::new();
    let mut said_stop = Vec::new();
    let mut follow = Vec::new();
    for v in speakers {
        said_bi.push(at_level(&say_16k(k, BARGE_IN, v, 1.0)?, speech_rms));
        said_stop.push(at_level(&say_16k(k, STOP_ALONE, v, 1.0)?, speech_rms));
        follow.push(at_level(
            &say_16k(k, "Hey panda, what time is it?", v, 1.0)?,
            speech_rms,
        ));
    }
    println!(
        "barge-in over an answer ({trials} trials per row, {} speakers; person at −26 dBFS):",
        speakers.len()
    );
    println!(
        "  {:<11} {:<9} {:>6} {:>10} {:>13} {:>17}",
        "speech/echo", "canceller", "wake", "stop alone", "next question", "double-talk SDR"
    );
    // Answers that say the keyword, for the rows where the person's "hey panda" lands on
    // Panda's own "panda": the self-wake guard is up and ignores it — what the guard
    // costs a person who barges in at that moment (only "stop" alone gets through).
    let saying: Vec<usize> = (0..pool.len())
        .filter(|&i| !pool[i].keyword_at.is_empty())
        .collect();
    for ratio in [20.0f32, 0.0, -6.0, -12.0] {
        for (aec, over_keyword) in [(true, false), (false, false), (true, true)] {
            let (mut woke, mut alone, mut next) = (0, 0, 0);
            let mut sdr = Vec::new();
            for t in 0..trials {
                let si = (t * 7 + ratio.abs() as usize) % speakers.len();
                let ans =
                    answer_stream(rng, pool, if over_keyword { &saying } else { plain }, 14.0);
                let room = Room::new(100 + t as u64, rng.range(0.2, 0.5), rng.range(30.0, 90.0));
                let gain = echo_gain_for(&ans.audio, &room, speech_rms, ratio);
                let at = match ans.keyword_at.iter().find(|&&k| k >= 40_000) {
                    // The person's "panda" (half a second in) on Panda's.
                    Some(&k) if over_keyword => k as usize - 8_000,
                    _ => (rng.range(2.0, 8.0) * 16_000.0) as usize,
                };
                let end = at + said_bi[si].len();
                let next_at = end + 3 * 16_000;
                let len = (next_at + follow[si].len() + 3 * 16_000).max(ans.audio.len());
                let scene = Scene {
                    len,
                    talks: vec![
                        Talk {
                            at,
                            audio: said_bi[si].clone(),
                        },
                        Talk {
                            at: next_at,
                            audio: follow[si].clone(),
                        },
                    ],
                    ..Scene::new(ans.audio, ans.keyword_at, room, gain, t as u64)
                };
                let o = run_scene(cfg, Some(stt), &scene, SceneOptions { aec, ..opts })?;
                let ms = |s: usize| s as u64 / 16;
                if o.wakes.iter().any(|&w| w >= ms(at) && w <= ms(end) + 1500) {
                    woke += 1;
                }
                if o.transcripts
                    .iter()
                    .any(|(s, t)| *s >= ms(end) && t.to_lowercase().contains("time"))
                {
                    next += 1;
                }
                if o.double_talk_sdr_db.0.is_finite() {
                    sdr.push(o.double_talk_sdr_db);
                }
                // The same answer with "stop" alone (no wake word).
                let scene = Scene {
                    talks: vec![Talk {
                        at,
                        audio: said_stop[si].clone(),
                    }],
                    ..scene
                };
                let o = run_scene(cfg, Some(stt), &scene, SceneOptions { aec, ..opts })?;
                if !o.stops.is_empty() {
                    alone += 1;
                }
            }
            let pct = |n: usize| 100.0 * n as f64 / trials.max(1) as f64;
            let sdr_txt = if sdr.is_empty() {
                "-".to_string()
            } else {
                let f = sdr.iter().map(|s| s.0).sum::<f64>() / sdr.len() as f64;
                let l = sdr.iter().map(|s| s.1).sum::<f64>() / sdr.len() as f64;
                format!("{f:.1} / {l:.1} dB")
            };
            println!(
                "  {:<11} {:<9} {:>5.0}% {:>9.0}% {:>12.0}% {:>17}",
                format!("{ratio:+.0} dB"),
                match (aec, over_keyword) {
                    (true, true) => "on*",
                    (true, false) => "on",
                    _ => "off",
                },
                pct(woke),
                pct(alone),
                pct(next),
                sdr_txt
            );
        }
    }
    println!(
        "(on*: the person's \"hey panda\" lands on Panda saying \"panda\", the self-wake guard up; wake: an accepted wake word during or ≤ 1.5 s after \"hey panda, stop\"; stop alone: \"stop\" without the wake word stops the answer; next question: \"hey panda, what time is it?\" 3 s later is transcribed; SDR: the person's voice through the canceller with the echo against without it, full / linear output; {:.0} s in all)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
