//! The TTS owner thread (`panda-tts`): sentences in, PCM chunks out.
//!
//! The thread owns the [`Kokoro`] synthesiser — its ONNX session (`run` takes `&mut self`),
//! vocabulary and voice packs — for the life of the process: the model is loaded once,
//! warmed up with one short sentence, and never re-created per request (the seed's fault).
//! Synthesis is CPU-bound for up to a second per sentence, so it never runs on the async
//! runtime; the turn task reaches it through the bounded sentence edge.
//!
//! Latency: Kokoro is no faster than its Python peer (same ONNX Runtime), so time to first
//! audio comes from what is synthesised first. The first sentence of a turn is split into
//! a short first fragment (about `first_fragment_words` words, ending at a clause mark or
//! before a conjunction/preposition — [`first_fragment`]) and the rest, which is
//! synthesised while the fragment plays. Every piece of audio goes to playback as soon as it is
//! made; the PCM edge's capacity bounds how far synthesis runs ahead.
//!
//! Cancellation: the turn's token is checked before each model call (a call is at most
//! 510 tokens, about a second of CPU); a cancelled turn's remaining sentences are skipped.

use std::path::PathBuf;
use std::time::Instant;

use tokio::sync::mpsc;

use super::kokoro::{self, Kokoro, KokoroError, KokoroOptions, SAMPLE_RATE_HZ};
use super::sentences::first_fragment;
use crate::event::{Event, PcmChunk, Sentence, ServedSpeech, Speech};

/// What the TTS thread needs to start.
#[derive(Debug, Clone)]
pub struct TtsOptions {
    /// Directory with `kokoro-v1.0.int8.onnx`, `vocab.json` and `voices/`.
    pub model_dir: PathBuf,
    /// ONNX Runtime library.
    pub ort_lib: PathBuf,
    /// Intra-op threads (0: number of cores).
    pub threads: usize,
    /// Try the CUDA execution provider.
    pub gpu: bool,
    /// Voice loaded and warmed up at start (and checked to exist).
    pub voice: String,
    /// Aim for a first fragment of about this many words (0: whole first sentence).
    pub first_fragment_words: usize,
}

/// What start-up measured.
#[derive(Debug, Clone)]
pub struct TtsInfo {
    /// Time to build the ONNX session and read the vocabulary.
    pub load_ms: u64,
    /// Time of the warm-up synthesis.
    pub warmup_ms: u64,
    /// Whether the session runs on the GPU.
    pub on_gpu: bool,
}

/// Counters at the end of the thread.
#[derive(Debug, Default, Clone)]
pub struct TtsStats {
    /// Sentences synthesised.
    pub sentences: u64,
    /// Model calls.
    pub calls: u64,
    /// Sentences skipped because their turn was cancelled.
    pub skipped_cancelled: u64,
    /// Characters dropped by normalisation (emoji, control characters).
    pub skipped_chars: u64,
    /// Phoneme symbols not in the vocabulary.
    pub unknown_symbols: u64,
}

/// The thread's connections.
pub struct TtsIo {
    /// Sentences from the turn task (or the CLI).
    pub sentences: mpsc::Receiver<Speech>,
    /// Audio towards playback. When full, synthesis waits: playback sets the pace.
    pub pcm: mpsc::Sender<PcmChunk>,
    /// Events (`synthesized`, `error`).
    pub events: mpsc::Sender<Event>,
}

/// Loads Kokoro on a new thread and starts serving sentences. Returns after the model is
/// loaded and warmed up, or with the reason it could not be.
pub fn spawn(
    opts: TtsOptions,
    io: TtsIo,
) -> Result<(std::thread::JoinHandle<TtsStats>, TtsInfo), KokoroError> {
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel::<Result<TtsInfo, KokoroError>>(1);
    let handle = std::thread::Builder::new()
        .name("panda-tts".into())
        .spawn(move || {
            let threads = match opts.threads {
                0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
                n => n,
            };
            let t0 = Instant::now();
            let mut k = match Kokoro::load_with(
                &opts.model_dir,
                &opts.ort_lib,
                KokoroOptions {
                    threads,
                    gpu: opts.gpu,
                },
            ) {
                Ok(k) => k,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return TtsStats::default();
                }
            };
            let load_ms = t0.elapsed().as_millis() as u64;
            let t1 = Instant::now();
            if let Err(e) = k.synthesize("Hello.", &opts.voice, 1.0) {
                let _ = ready_tx.send(Err(e));
                return TtsStats::default();
            }
            let info = TtsInfo {
                load_ms,
                warmup_ms: t1.elapsed().as_millis() as u64,
                on_gpu: k.on_gpu,
            };
            tracing::info!(
                load_ms,
                warmup_ms = info.warmup_ms,
                gpu = info.on_gpu,
                "Kokoro ready"
            );
            let _ = ready_tx.send(Ok(info));
            serve(&mut k, &opts, io)
        })
        .map_err(|e| KokoroError::Inference(format!("cannot start the TTS thread: {e}")))?;
    match ready_rx.recv() {
        Ok(Ok(info)) => Ok((handle, info)),
        Ok(Err(e)) => {
            let _ = handle.join();
            Err(e)
        }
        Err(_) => Err(KokoroError::Inference(
            "the TTS thread ended while loading".into(),
        )),
    }
}

fn serve(k: &mut Kokoro, opts: &TtsOptions, mut io: TtsIo) -> TtsStats {
    let mut stats = TtsStats::default();
    while let Some(speech) = io.sentences.blocking_recv() {
        match speech {
            Speech::Say(s) => {
                let _span =
                    tracing::debug_span!("tts", turn = s.turn.id, sentence = s.index).entered();
                if s.turn.token.is_cancelled() {
                    // Playback ends the turn on the same token; nothing to send.
                    stats.skipped_cancelled += 1;
                    continue;
                }
                synthesize_sentence(k, opts, &s, &io, &mut stats);
                stats.sentences += 1;
            }
            // The answer ends here, whatever its sentences made: playback must learn
            // that it is done (a cancelled turn is ended by its token instead).
            Speech::End { turn, index } if !turn.token.is_cancelled() => {
                let _ = io.pcm.blocking_send(PcmChunk {
                    turn,
                    sentence: index,
                    text: String::new(),
                    samples: Vec::new(),
                    rate_hz: SAMPLE_RATE_HZ,
                    last: true,
                });
            }
            Speech::End { .. } => {}
            Speech::Serve(s) => {
                let _span = tracing::debug_span!("tts_served", chars = s.text.len()).entered();
                stats.sentences += u64::from(serve_one(k, &s, &mut stats));
            }
        }
    }
    stats.skipped_chars = k.skipped_chars;
    stats.unknown_symbols = k.unknown_symbols;
    stats
}

/// Synthesises one sentence piece by piece into PCM chunks.
fn synthesize_sentence(
    k: &mut Kokoro,
    opts: &TtsOptions,
    s: &Sentence,
    io: &TtsIo,
    stats: &mut TtsStats,
) {
    let error = |message: String| {
        let _ = io.events.blocking_send(Event::Error {
            stage: "tts",
            message,
        });
    };
    if let Err(e) = k.load_voice(&s.voice) {
        error(e.to_string());
        return;
    }
    let pieces: Vec<String> = if s.index == 0 && opts.first_fragment_words > 0 {
        let (head, tail) = first_fragment(&s.text, opts.first_fragment_words);
        std::iter::once(head).chain(tail).collect()
    } else {
        vec![s.text.clone()]
    };
    let mut chunks = Vec::new();
    for p in &pieces {
        match k.prepare(p, &s.voice) {
            Ok(c) => chunks.extend(c),
            Err(e) => {
                error(e.to_string());
                return;
            }
        }
    }
    for chunk in chunks {
        if s.turn.token.is_cancelled() {
            stats.skipped_cancelled += 1;
            return;
        }
        let t0 = Instant::now();
        let audio = match k.synthesize_chunk(&chunk, &s.voice, s.speed) {
            Ok(a) => a,
            Err(e) => {
                error(e.to_string());
                return;
            }
        };
        stats.calls += 1;
        let _ = io.events.blocking_send(Event::Synthesized {
            turn: s.turn.id,
            sentence: s.index,
            chars: chunk.text.chars().count(),
            audio_ms: audio.len() as u64 * 1000 / SAMPLE_RATE_HZ as u64,
            synth_ms: t0.elapsed().as_millis() as u64,
        });
        let sent = io.pcm.blocking_send(PcmChunk {
            turn: s.turn.clone(),
            sentence: s.index,
            text: chunk.text,
            samples: audio,
            rate_hz: SAMPLE_RATE_HZ,
            last: false,
        });
        if sent.is_err() {
            return; // playback is gone (shutdown)
        }
    }
}

/// Synthesises a client's text into its reply channel. False when nothing was sent
/// (cancelled before the first call, or an error, which is sent instead).
fn serve_one(k: &mut Kokoro, s: &ServedSpeech, stats: &mut TtsStats) -> bool {
    let fail = |e: KokoroError| {
        let _ = s.reply.blocking_send(Err(e.to_string()));
        false
    };
    if let Err(e) = k.load_voice(&s.voice) {
        return fail(e);
    }
    let chunks = match k.prepare(&s.text, &s.voice) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let mut sent = false;
    for chunk in chunks {
        if s.token.is_cancelled() {
            stats.skipped_cancelled += 1;
            break;
        }
        let audio = match k.synthesize_chunk(&chunk, &s.voice, s.speed) {
            Ok(a) => a,
            Err(e) => return fail(e),
        };
        stats.calls += 1;
        if s.reply.blocking_send(Ok(audio)).is_err() {
            break; // the client is gone
        }
        sent = true;
    }
    sent
}

/// Voices installed in `model_dir/voices`, sorted (no model load needed).
pub fn installed_voices(model_dir: &std::path::Path) -> Vec<String> {
    kokoro::installed_voices(&model_dir.join("voices"))
}
