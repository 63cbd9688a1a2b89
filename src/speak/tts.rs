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
//!
//! A remote engine (`[tts] backend = "wyoming"`): each sentence of an answer in the
//! configured voice goes to the Wyoming TTS service first, over a small single-threaded
//! runtime this thread owns (the request is network I/O; a cancel drops it). Kokoro
//! stays loaded and speaks a sentence whenever the remote fails or its breaker is open,
//! and every sentence in another voice (a conversation switched language: the remote
//! speaks one configured voice). What Panda serves over Wyoming itself is always Kokoro.

use std::path::PathBuf;
use std::time::Instant;

use tokio::sync::mpsc;

use std::sync::Arc;

use super::kokoro::{self, Kokoro, KokoroError, KokoroOptions, SAMPLE_RATE_HZ};
use super::sentences::first_fragment;
use crate::event::{Event, PcmChunk, Sentence, ServedSpeech, Speech};
use crate::wyoming::client::{ClientError, Health, TtsClient};

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
    /// A remote Wyoming TTS in front of Kokoro (`[tts] backend = "wyoming"`).
    pub remote: Option<RemoteTts>,
}

/// A remote Wyoming TTS service, with the health the status page reads.
#[derive(Debug, Clone)]
pub struct RemoteTts {
    /// The service.
    pub client: TtsClient,
    /// Its breaker and counters (shared with the status page).
    pub health: Arc<Health>,
    /// The remote voice (`None`: the server's default).
    pub voice: Option<String>,
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
            // The remote's requests run on a runtime of this thread's own (the thread
            // must not borrow the process runtime's workers to block on).
            let remote = match opts.remote.clone().map(|r| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map(|rt| (r, rt))
            }) {
                Some(Err(e)) => {
                    let _ = ready_tx.send(Err(KokoroError::Inference(format!(
                        "cannot start the remote TTS client: {e}"
                    ))));
                    return TtsStats::default();
                }
                Some(Ok(r)) => Some(r),
                None => None,
            };
            let _ = ready_tx.send(Ok(info));
            serve(&mut k, &opts, remote.as_ref(), io)
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

/// The remote TTS and the runtime its requests run on.
type Remote = (RemoteTts, tokio::runtime::Runtime);

fn serve(k: &mut Kokoro, opts: &TtsOptions, remote: Option<&Remote>, mut io: TtsIo) -> TtsStats {
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
                let remote = remote.filter(|_| s.voice == opts.voice && s.reading.is_none());
                if !remote.is_some_and(|r| synthesize_remote(r, &s, &io, &mut stats)) {
                    synthesize_sentence(k, opts, &s, &io, &mut stats);
                }
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
            Speech::Play(c) if !c.turn.token.is_cancelled() => {
                let _ = io.pcm.blocking_send(c);
            }
            Speech::Play(_) => stats.skipped_cancelled += 1,
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

/// Speaks one sentence through the remote TTS. True when it was handled (spoken, or
/// its turn cancelled); false when Kokoro must speak it (the remote failed, or its
/// breaker is open).
fn synthesize_remote(r: &Remote, s: &Sentence, io: &TtsIo, stats: &mut TtsStats) -> bool {
    let (remote, rt) = r;
    if !remote.health.permit() {
        remote.health.fell_back();
        return false;
    }
    let t0 = Instant::now();
    let result = rt.block_on(remote.client.synthesize(
        &s.text,
        remote.voice.as_deref(),
        &s.turn.token,
    ));
    let ms = t0.elapsed().as_millis() as u64;
    let change = remote.health.record(&result);
    if let Err(ClientError::Cancelled) = result {
        stats.skipped_cancelled += 1;
        return true;
    }
    for ev in Event::remote(s.turn.id, "tts", &remote.health, ms, &result, change) {
        let _ = io.events.blocking_send(ev);
    }
    let audio = match result {
        Ok(a) if !a.samples.is_empty() => a,
        Ok(_) => return true, // nothing to say (the server made no audio of it)
        Err(e) => {
            tracing::warn!(turn = s.turn.id, url = %remote.health.url(), error = %e, "remote TTS failed: Kokoro speaks the sentence");
            remote.health.fell_back();
            return false;
        }
    };
    stats.calls += 1;
    let _ = io.events.blocking_send(Event::Synthesized {
        turn: s.turn.id,
        sentence: s.index,
        chars: s.text.chars().count(),
        audio_ms: audio.samples.len() as u64 * 1000 / audio.rate_hz.max(1) as u64,
        synth_ms: ms,
    });
    let _ = io.pcm.blocking_send(PcmChunk {
        turn: s.turn.clone(),
        sentence: s.index,
        text: s.text.clone(),
        samples: audio.samples,
        rate_hz: audio.rate_hz,
        last: false,
    });
    true
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
        let prepared = match s.reading {
            Some(lang) => k.prepare_in(p, lang),
            None => k.prepare(p, &s.voice),
        };
        match prepared {
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
