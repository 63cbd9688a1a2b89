//! `panda bench …`: figures, never pass/fail. Runs on the CLI thread; the stages measured
//! run on their own threads exactly as in the daemon.
//!
//! Also home to the shared evaluation helpers the integration tests use: the recorded
//! speech corpus with its reference transcripts ([`corpus`]) and word error rate ([`wer`]).

pub mod aec;
pub mod e2e;
pub mod memory;
pub mod page;
pub mod soak;
pub mod wake;
pub mod wyoming;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::event::{FRAME_SAMPLES, SAMPLE_RATE_HZ};
use crate::listen::listener::WakeVerifier;
use crate::listen::stt::{self, SttError};
use crate::listen::vad::Vad;
use crate::listen::wake::{WakeDetector, WakeError};
use crate::models::install::paths;

/// Errors of the benchmarks.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Test recordings are not installed.
    #[error("no recordings under {0}: run `panda models install --test-data`")]
    NoCorpus(PathBuf),
    /// Speech-to-text failed.
    #[error(transparent)]
    Stt(#[from] SttError),
    /// The wake word failed to load.
    #[error(transparent)]
    Wake(#[from] WakeError),
    /// Audio decoding failed.
    #[error(transparent)]
    Audio(#[from] crate::audio::AudioError),
    /// Synthesis for the wake benchmark failed.
    #[error("synthesis: {0}")]
    Synth(String),
    /// Kokoro failed to load or run.
    #[error(transparent)]
    Tts(#[from] crate::speak::kokoro::KokoroError),
    /// Writing or reading a benchmark's files failed.
    #[error("benchmark files: {0}")]
    Io(#[from] std::io::Error),
}

/// The benchmark's sentences: assistant answers of the usual shapes and lengths.
pub const TTS_SENTENCES: &[&str] = &[
    "It's 3:45 in the afternoon.",
    "Sure, I've set a timer for ten minutes, and I'll let you know when it goes off.",
    "The weather today is sunny with a high of 22 degrees and a light breeze from the west.",
    "Here are the top headlines: markets rose 1.5% this morning, and a new bridge opened downtown.",
    "Paris is the capital of France.",
    "I couldn't reach the news service right now, so please try again in a minute.",
    "Dr. Smith's appointment is on Tuesday, March 4th, at 10:30 a.m.",
    "A kilogram of apples costs about $3.20 at the market on Main Street.",
    "Photosynthesis is the process plants use to turn sunlight, water and carbon dioxide into sugar and oxygen.",
    "Okay, stopping now.",
];

/// One TTS measurement.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TtsRun {
    /// Sentence submitted → first PCM chunk out of the TTS thread.
    pub first_audio_ms: f64,
    /// Sentence submitted → last PCM chunk.
    pub total_ms: f64,
    /// Audio produced.
    pub audio_ms: f64,
}

/// Runs `sentences` through a TTS thread one turn at a time (as the daemon does) and
/// returns per-sentence figures plus the load time.
pub fn tts_runs(
    cfg: &Config,
    voice: &str,
    first_fragment_words: usize,
    sentences: &[String],
) -> Result<(Vec<TtsRun>, u64), BenchError> {
    use crate::event::{PcmChunk, Sentence, Speech, Turn};
    use tokio::sync::mpsc;
    let mut opts = crate::app::tts_options(cfg, voice);
    opts.first_fragment_words = first_fragment_words;
    let (sent_tx, sent_rx) = mpsc::channel::<Speech>(crate::app::SENTENCE_EDGE);
    let (pcm_tx, mut pcm_rx) = mpsc::channel::<PcmChunk>(crate::app::PCM_EDGE);
    let (ev_tx, mut ev_rx) = mpsc::channel(crate::app::EVENT_EDGE);
    // Events are not needed here; drain them so the thread never waits on them.
    let drain = std::thread::spawn(move || while ev_rx.blocking_recv().is_some() {});
    let (thread, info) = crate::speak::tts::spawn(
        opts,
        crate::speak::tts::TtsIo {
            sentences: sent_rx,
            pcm: pcm_tx,
            events: ev_tx,
        },
    )?;
    let mut runs = Vec::new();
    for (i, text) in sentences.iter().enumerate() {
        let turn = Turn {
            id: i as u64 + 1,
            token: CancellationToken::new(),
        };
        let t0 = Instant::now();
        let _ = sent_tx.blocking_send(Speech::Say(Sentence {
            turn: turn.clone(),
            index: 0,
            text: text.clone(),
            voice: voice.to_string(),
            reading: None,
            speed: cfg.tts.speed,
        }));
        let _ = sent_tx.blocking_send(Speech::End { turn, index: 1 });
        let mut first = None;
        let mut samples = 0usize;
        while let Some(c) = pcm_rx.blocking_recv() {
            if first.is_none() && !c.samples.is_empty() {
                first = Some(t0.elapsed());
            }
            samples += c.samples.len();
            if c.last {
                break;
            }
        }
        let total = t0.elapsed();
        runs.push(TtsRun {
            first_audio_ms: first.unwrap_or(total).as_secs_f64() * 1e3,
            total_ms: total.as_secs_f64() * 1e3,
            audio_ms: samples as f64 * 1e3 / crate::speak::kokoro::SAMPLE_RATE_HZ as f64,
        });
    }
    drop(sent_tx);
    let _ = thread.join();
    let _ = drain.join();
    Ok((runs, info.load_ms + info.warmup_ms))
}

/// `panda bench tts`: time to first audio and real-time factor, whole sentences vs the
/// first fragment spoken on its own. With `json`, one summary object per line instead.
pub fn tts(
    cfg: &Config,
    voice: &str,
    sentences_file: Option<&Path>,
    json: bool,
) -> Result<(), BenchError> {
    crate::app::check_voice(cfg, voice)?;
    let sentences: Vec<String> = match sentences_file {
        Some(p) => std::fs::read_to_string(p)
            .map_err(|source| crate::audio::AudioError::Io {
                path: p.to_path_buf(),
                source,
            })?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect(),
        None => TTS_SENTENCES.iter().map(|s| s.to_string()).collect(),
    };
    for (label, words) in [
        ("whole sentences", 0usize),
        (
            "short first fragment",
            cfg.tts.first_fragment_words as usize,
        ),
    ] {
        let t = Instant::now();
        let (runs, load_ms) = tts_runs(cfg, voice, words, &sentences)?;
        let wall = t.elapsed().as_secs_f64();
        let ttfa: Vec<f64> = runs.iter().map(|r| r.first_audio_ms).collect();
        let total: Vec<f64> = runs.iter().map(|r| r.total_ms).collect();
        let rtf: Vec<f64> = runs
            .iter()
            .map(|r| r.total_ms / r.audio_ms.max(1.0))
            .collect();
        if json {
            println!(
                "{}",
                serde_json::json!({
                    "mode": label, "voice": voice, "load_ms": load_ms,
                    "first_audio_ms": ttfa, "total_ms": total,
                    "audio_ms": runs.iter().map(|r| r.audio_ms).collect::<Vec<_>>(),
                })
            );
            continue;
        }
        println!(
            "\n== Kokoro int8, voice {voice}, {label} | load + warm-up {load_ms} ms | {} sentences in {wall:.1} s",
            runs.len()
        );
        println!(
            "{:<60} {:>9} {:>9} {:>9} {:>6}",
            "sentence", "first_ms", "total_ms", "audio_ms", "rtf"
        );
        for (s, r) in sentences.iter().zip(&runs) {
            let short: String = s.chars().take(58).collect();
            println!(
                "{:<60} {:>9.0} {:>9.0} {:>9.0} {:>6.3}",
                short,
                r.first_audio_ms,
                r.total_ms,
                r.audio_ms,
                r.total_ms / r.audio_ms.max(1.0)
            );
        }
        println!(
            "first audio p50 {:.0} ms p95 {:.0} ms | whole sentence p50 {:.0} ms p95 {:.0} ms | rtf p50 {:.3} p95 {:.3}",
            percentile(&ttfa, 50.0),
            percentile(&ttfa, 95.0),
            percentile(&total, 50.0),
            percentile(&total, 95.0),
            percentile(&rtf, 50.0),
            percentile(&rtf, 95.0)
        );
    }
    Ok(())
}

/// A recorded clip with its reference transcript.
#[derive(Debug, Clone)]
pub struct Clip {
    /// File.
    pub path: PathBuf,
    /// What is said.
    pub reference: String,
}

/// The recorded human speech installed by `panda models install --test-data`: the
/// pocketsphinx sdist's `goforward.raw`, LibriVox excerpts and "cards" recordings, and the
/// alsa-utils channel announcements (whose file names are their transcripts).
pub fn corpus(models_dir: &Path) -> Result<Vec<Clip>, BenchError> {
    let root = models_dir.join(paths::TESTDATA);
    let ps = root.join("pocketsphinx");
    let mut clips = Vec::new();
    if ps.join("goforward.raw").exists() {
        clips.push(Clip {
            path: ps.join("goforward.raw"),
            reference: "go forward ten meters".into(),
        });
    }
    let mut libri: Vec<PathBuf> = read_dir_sorted(&ps.join("librivox"), "wav");
    for wav in libri.drain(..) {
        if let Ok(t) = std::fs::read_to_string(wav.with_extension("txt")) {
            clips.push(Clip {
                path: wav,
                reference: t.trim().to_string(),
            });
        }
    }
    if let Ok(t) = std::fs::read_to_string(ps.join("cards/cards.transcription")) {
        // Lines look like `<s> transcript </s> (001)`.
        for line in t.lines() {
            let Some((text, id)) = line.rsplit_once('(') else {
                continue;
            };
            let id = id.trim_end_matches(')').trim();
            let text = text.replace("<s>", "").replace("</s>", "");
            let wav = ps.join("cards").join(format!("{id}.wav"));
            if wav.exists() {
                clips.push(Clip {
                    path: wav,
                    reference: text.trim().to_string(),
                });
            }
        }
    }
    for wav in read_dir_sorted(&root.join("alsa"), "wav") {
        let name = wav
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        if name == "Noise" {
            continue;
        }
        clips.push(Clip {
            reference: name.replace('_', " "),
            path: wav,
        });
    }
    if clips.is_empty() {
        return Err(BenchError::NoCorpus(root));
    }
    Ok(clips)
}

fn read_dir_sorted(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    v.sort();
    v
}

/// Lower-cased words without punctuation, numbers, money, times and symbols spelled out
/// the way Panda's TTS normaliser speaks them — so "42" in a transcript and "forty-two"
/// in a reference are the same words.
pub fn normalize_words(s: &str) -> Vec<String> {
    normalize_words_in(s, "en")
}

/// [`normalize_words`] for `lang`: other languages keep their numbers as written, and
/// lose their accents (references and transcripts disagree on them: "Opcion" / "Opción").
pub fn normalize_words_in(s: &str, lang: &str) -> Vec<String> {
    let text = if lang == "en" {
        crate::speak::normalize::normalize(s, "en-us").text
    } else {
        s.chars().map(fold_accent).collect()
    };
    let text = if lang == "en" {
        text
    } else {
        // Digits as words, as the references and Whisper each write them one way or
        // the other ("marque 1" / "marque uno").
        text.split_whitespace()
            .map(|w| {
                let digits = w.trim_matches(|c: char| !c.is_ascii_digit());
                match digits
                    .parse::<usize>()
                    .ok()
                    .and_then(|n| number_word(n, lang))
                {
                    Some(word) if !digits.is_empty() => w.replace(digits, word),
                    _ => w.to_string(),
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    text.to_lowercase()
        .replace(['-', '—'], " ")
        .split_whitespace()
        .map(|w| {
            w.chars()
                .filter(|c| c.is_alphanumeric() || *c == '\'')
                .collect::<String>()
        })
        .filter(|w| !w.is_empty())
        .collect()
}

/// 0–10 as a word in `lang` (accents folded).
fn number_word(n: usize, lang: &str) -> Option<&'static str> {
    const ES: [&str; 11] = [
        "cero", "uno", "dos", "tres", "cuatro", "cinco", "seis", "siete", "ocho", "nueve", "diez",
    ];
    const FR: [&str; 11] = [
        "zero", "un", "deux", "trois", "quatre", "cinq", "six", "sept", "huit", "neuf", "dix",
    ];
    match lang {
        "es" => ES.get(n).copied(),
        "fr" => FR.get(n).copied(),
        _ => None,
    }
}

/// A letter without its accent (Latin letters of the prompt languages).
fn fold_accent(c: char) -> char {
    match c {
        'á' | 'à' | 'â' | 'ä' | 'ã' => 'a',
        'Á' | 'À' | 'Â' | 'Ä' => 'A',
        'é' | 'è' | 'ê' | 'ë' => 'e',
        'É' | 'È' | 'Ê' | 'Ë' => 'E',
        'í' | 'ì' | 'î' | 'ï' => 'i',
        'Í' | 'Î' => 'I',
        'ó' | 'ò' | 'ô' | 'ö' | 'õ' => 'o',
        'Ó' | 'Ô' => 'O',
        'ú' | 'ù' | 'û' | 'ü' => 'u',
        'Ú' | 'Û' => 'U',
        'ç' => 'c',
        'Ç' => 'C',
        'ñ' => 'n',
        'Ñ' => 'N',
        'œ' => 'o',
        _ => c,
    }
}

/// Word-level edit distance between reference and hypothesis, and the reference length.
pub fn word_errors(reference: &str, hypothesis: &str) -> (usize, usize) {
    word_errors_in(reference, hypothesis, "en")
}

/// [`word_errors`] in `lang`.
pub fn word_errors_in(reference: &str, hypothesis: &str, lang: &str) -> (usize, usize) {
    let r = normalize_words_in(reference, lang);
    let h = normalize_words_in(hypothesis, lang);
    let mut prev: Vec<usize> = (0..=h.len()).collect();
    for (i, rw) in r.iter().enumerate() {
        let mut cur = vec![i + 1; h.len() + 1];
        for (j, hw) in h.iter().enumerate() {
            let sub = prev[j] + usize::from(rw != hw);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    (prev[h.len()], r.len())
}

/// Word error rate of one pair.
pub fn wer(reference: &str, hypothesis: &str) -> f64 {
    let (e, n) = word_errors(reference, hypothesis);
    e as f64 / n.max(1) as f64
}

/// The recorded prompts in `lang` (`es`, `fr`: Asterisk's core sounds, installed with
/// `--test-data`), with their transcripts.
pub fn prompts(models_dir: &Path, lang: &str) -> Vec<Clip> {
    let dir = models_dir
        .join(paths::TESTDATA)
        .join(format!("prompts-{lang}"));
    read_dir_sorted(&dir, "wav")
        .into_iter()
        .filter_map(|wav| {
            let reference = std::fs::read_to_string(wav.with_extension("txt")).ok()?;
            // "[ tono de error ]": a sound, not speech.
            if reference.contains('[') {
                return None;
            }
            Some(Clip {
                path: wav,
                reference: reference.trim().to_string(),
            })
        })
        .collect()
}

/// The p-th percentile (0–100) of `v` (nearest rank).
pub fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

/// One setting's figures over a clip set.
struct SttRow {
    wer_pct: f64,
    p50_ms: f64,
    p95_ms: f64,
    rtf_p50: f64,
    rtf_p95: f64,
    load_ms: f64,
}

/// Runs `clips` (references in `lang`) through a Whisper worker spawned for `cfg`;
/// `BENCH_VERBOSE=1` prints each miss under `name`.
fn stt_row(cfg: &Config, clips: &[Clip], lang: &str, name: &str) -> Result<SttRow, BenchError> {
    let (h, worker) = stt::spawn_configured(cfg)?;
    let token = CancellationToken::new();
    let (mut times, mut rtfs) = (Vec::new(), Vec::new());
    let (mut errs, mut words) = (0, 0);
    for clip in clips {
        let pcm = crate::audio::file::read_16k_mono(&clip.path)?;
        let out = h.transcribe_blocking(&pcm, &token)?;
        let (e, n) = word_errors_in(&clip.reference, &out.text, lang);
        if e > 0 && std::env::var_os("BENCH_VERBOSE").is_some() {
            eprintln!("{name}: {:?} → {:?}", clip.reference, out.text);
        }
        errs += e;
        words += n;
        times.push(out.stt_ms as f64);
        rtfs.push(out.stt_ms as f64 / out.audio_ms.max(1) as f64);
    }
    Ok(SttRow {
        wer_pct: 100.0 * errs as f64 / words.max(1) as f64,
        p50_ms: percentile(&times, 50.0),
        p95_ms: percentile(&times, 95.0),
        rtf_p50: percentile(&rtfs, 50.0),
        rtf_p95: percentile(&rtfs, 95.0),
        load_ms: (worker.load_time + worker.warmup_time).as_secs_f64() * 1e3,
    })
}

/// The clips `panda bench stt` runs: `clips_dir`'s WAV files (no references), or the
/// installed recorded corpus.
fn stt_clips(cfg: &Config, clips_dir: Option<&Path>) -> Result<Vec<Clip>, BenchError> {
    Ok(match clips_dir {
        // A clip's transcript, when known, is the text file beside it (`a.wav`, `a.txt`).
        Some(d) => read_dir_sorted(d, "wav")
            .into_iter()
            .map(|p| Clip {
                reference: std::fs::read_to_string(p.with_extension("txt"))
                    .map(|t| t.trim().to_string())
                    .unwrap_or_default(),
                path: p,
            })
            .collect(),
        None => corpus(&cfg.models.dir)?,
    })
}

/// `panda bench stt --list-clips`: the clips as JSON lines (`path`, `reference`), for a
/// peer engine to transcribe the very same files.
pub fn list_clips(cfg: &Config, clips_dir: Option<&Path>) -> Result<(), BenchError> {
    for c in stt_clips(cfg, clips_dir)? {
        println!(
            "{}",
            serde_json::json!({ "path": c.path, "reference": c.reference })
        );
    }
    Ok(())
}

/// One transcript by a peer engine (`panda bench stt --peer`).
#[derive(Debug, serde::Deserialize)]
struct PeerTranscript {
    engine: String,
    path: PathBuf,
    text: String,
    ms: f64,
}

/// The peer's rows: each engine's WER (Panda's normalisation, the clips' references) and
/// latency over the clips it transcribed. Lines that do not parse, and clips not in the
/// set, are named and refused.
fn peer_rows(path: &Path, clips: &[Clip]) -> Result<Vec<(String, SttRow)>, BenchError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| BenchError::Synth(format!("{}: {e}", path.display())))?;
    // Per engine: word errors, reference words, each clip's time.
    let mut by: BTreeMap<String, (usize, usize, Vec<f64>)> = BTreeMap::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let t: PeerTranscript = serde_json::from_str(line)
            .map_err(|e| BenchError::Synth(format!("{} line {}: {e}", path.display(), i + 1)))?;
        let clip = clips.iter().find(|c| c.path == t.path).ok_or_else(|| {
            BenchError::Synth(format!(
                "{} line {}: {} is not one of the clips",
                path.display(),
                i + 1,
                t.path.display()
            ))
        })?;
        let (e, n) = word_errors_in(&clip.reference, &t.text, "en");
        let row = by.entry(t.engine).or_default();
        row.0 += e;
        row.1 += n;
        row.2.push(t.ms);
    }
    Ok(by
        .into_iter()
        .map(|(engine, (e, n, times))| {
            let name = format!("{engine} ({} clips)", times.len());
            let row = SttRow {
                wer_pct: 100.0 * e as f64 / n.max(1) as f64,
                p50_ms: percentile(&times, 50.0),
                p95_ms: percentile(&times, 95.0),
                rtf_p50: f64::NAN,
                rtf_p95: f64::NAN,
                load_ms: f64::NAN,
            };
            (name, row)
        })
        .collect())
}

/// `panda bench stt`.
pub fn stt(cfg: &Config, clips_dir: Option<&Path>, peer: Option<&Path>) -> Result<(), BenchError> {
    let clips = stt_clips(cfg, clips_dir)?;
    // The peer's file is checked before minutes of Whisper runs.
    let peer_rows = peer.map(|p| peer_rows(p, &clips)).transpose()?;
    let model = cfg.model_path(&cfg.stt.model);
    // The configured setting first, then each lever on its own against the full window.
    let full = crate::config::SttConfig {
        dynamic_audio_ctx: false,
        flash_attn: false,
        ..cfg.stt.clone()
    };
    // The other installed models beside the configured one, each on the full window:
    // base against tiny.en (questions), and tiny.en's two precisions (the fast model of
    // wake checks and stop words).
    let (f16, q8) = (
        crate::models::install::paths::WHISPER_TINY_EN,
        crate::models::install::paths::WHISPER_TINY_EN_Q8,
    );
    let others: Vec<(&str, &str)> = [
        (
            "base f16, full window",
            crate::models::install::paths::WHISPER_BASE,
        ),
        ("tiny.en f16, full window", f16),
        ("tiny.en q8_0, full window", q8),
    ]
    .into_iter()
    .filter(|(_, p)| cfg.stt.model != Path::new(p) && cfg.model_path(Path::new(p)).exists())
    .collect();
    let mut settings = vec![
        ("default (this config)", cfg.stt.clone()),
        ("full 30 s window", full.clone()),
        (
            "window sized to utterance",
            crate::config::SttConfig {
                dynamic_audio_ctx: true,
                ..full.clone()
            },
        ),
        (
            "full window + flash attn",
            crate::config::SttConfig {
                flash_attn: true,
                ..full.clone()
            },
        ),
    ];
    for (name, model) in others {
        settings.push((
            name,
            crate::config::SttConfig {
                model: model.into(),
                ..full.clone()
            },
        ));
    }
    // q5_1, quantised here from the f16 file (not installed: it has not earned a place).
    let q5 = std::env::temp_dir().join(format!(
        "panda-bench-tiny.en-q5_1-{}.bin",
        std::process::id()
    ));
    let f16_path = cfg.model_path(Path::new(f16));
    if let Ok(bytes) = std::fs::read(&f16_path)
        && let Ok(q) =
            crate::models::quantize::whisper_quantised(&bytes, crate::models::quantize::Quant::Q5_1)
        && std::fs::write(&q5, q).is_ok()
    {
        settings.push((
            "q5_1 weights, full window",
            crate::config::SttConfig {
                model: q5.clone(),
                ..full.clone()
            },
        ));
    }
    println!(
        "whisper {} on {} recorded clips, {} threads (accuracy beside speed)",
        model.display(),
        clips.len(),
        if cfg.stt.threads == 0 {
            "all".to_string()
        } else {
            cfg.stt.threads.to_string()
        }
    );
    println!(
        "{:<28} {:>7} {:>9} {:>9} {:>8} {:>8} {:>8}",
        "setting", "WER", "p50_ms", "p95_ms", "rtf_p50", "rtf_p95", "load_ms"
    );
    let mut default_row = None;
    for (name, c) in settings {
        let mut whole = cfg.clone();
        whole.stt = c;
        let r = stt_row(&whole, &clips, "en", name)?;
        println!(
            "{name:<28} {:>6.1}% {:>9.0} {:>9.0} {:>8.3} {:>8.3} {:>8.0}",
            r.wer_pct, r.p50_ms, r.p95_ms, r.rtf_p50, r.rtf_p95, r.load_ms
        );
        default_row.get_or_insert(r);
    }
    // The peer's engines on the same clips, scored the same way; the ratio is Panda's
    // default against each, with both WERs beside it (accuracy first: a faster engine
    // that mishears more is not faster at matched accuracy).
    if let (Some(rows), Some(mine)) = (peer_rows, default_row) {
        for (name, r) in &rows {
            println!(
                "{name:<28} {:>6.1}% {:>9.0} {:>9.0}",
                r.wer_pct, r.p50_ms, r.p95_ms
            );
        }
        for (name, r) in &rows {
            let ratio = r.p50_ms / mine.p50_ms;
            println!(
                "Panda default vs {name}: WER {:.1}% vs {:.1}% ({:+.1} points); p50 {:.0} vs {:.0} ms: Panda {}",
                mine.wer_pct,
                r.wer_pct,
                mine.wer_pct - r.wer_pct,
                mine.p50_ms,
                r.p50_ms,
                if ratio >= 1.0 {
                    format!("{ratio:.2}x faster")
                } else {
                    format!("{:.2}x slower", 1.0 / ratio)
                }
            );
        }
    }
    let _ = std::fs::remove_file(&q5);
    // Other languages, through the multilingual model, on recorded human prompts.
    for lang in crate::models::install::PROMPT_LANGUAGES {
        let clips = prompts(&cfg.models.dir, lang);
        if clips.is_empty() {
            continue;
        }
        let mut whole = cfg.clone();
        whole.stt.language = lang.to_string();
        let name = format!("{lang}: {}", cfg.stt.multilingual_model.display());
        let r = stt_row(&whole, &clips, lang, &name)?;
        println!(
            "{name:<28} {:>6.1}% {:>9.0} {:>9.0} {:>8.3} {:>8.3}   ({} clips, {})",
            r.wer_pct,
            r.p50_ms,
            r.p95_ms,
            r.rtf_p50,
            r.rtf_p95,
            clips.len(),
            if whole.stt.dynamic_audio_ctx {
                "sized window"
            } else {
                "full window"
            }
        );
    }
    Ok(())
}

/// Loops the recorded corpus (no wake word in it) up to `minutes` of 16 kHz audio
/// (at least once through).
pub(crate) fn non_wake_speech(cfg: &Config, minutes: f64) -> Result<Vec<i16>, BenchError> {
    let mut all = Vec::new();
    let mut pieces = Vec::new();
    for c in corpus(&cfg.models.dir)? {
        pieces.push(crate::audio::file::read_16k_mono(&c.path)?);
    }
    let want = (minutes * 60.0 * SAMPLE_RATE_HZ as f64) as usize;
    loop {
        for p in &pieces {
            all.extend_from_slice(p);
            all.extend(std::iter::repeat_n(0i16, SAMPLE_RATE_HZ as usize / 2));
        }
        if all.len() >= want {
            break;
        }
    }
    if want > 0 {
        all.truncate(want);
    }
    Ok(all)
}

/// CPU time of the calling thread.
fn thread_cpu() -> std::time::Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the struct we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Wake word and VAD CPU time over `audio`: (wake RTF, VAD RTF, false wakes).
pub(crate) fn listen_cost(cfg: &Config, audio: &[i16]) -> Result<(f64, f64, usize), BenchError> {
    let mut wake = WakeDetector::load_configured(cfg)?;
    let mut vad = Vad::new(cfg.vad.mode);
    let (mut wake_cpu, mut vad_cpu) = (std::time::Duration::ZERO, std::time::Duration::ZERO);
    let mut hits = 0;
    for (seq, chunk) in audio.chunks_exact(FRAME_SAMPLES).enumerate() {
        let frame: &[i16; FRAME_SAMPLES] = chunk.try_into().expect("exact chunk");
        let t = thread_cpu();
        if wake.process(seq as u64, frame).is_some() {
            hits += 1;
        }
        let t2 = thread_cpu();
        vad.is_voiced(frame);
        vad_cpu += thread_cpu() - t2;
        wake_cpu += t2 - t;
    }
    let secs = audio.len() as f64 / SAMPLE_RATE_HZ as f64;
    Ok((
        wake_cpu.as_secs_f64() / secs,
        vad_cpu.as_secs_f64() / secs,
        hits,
    ))
}

/// `panda bench listen`: wake word + VAD cost per second of idle listening, over speech
/// without the wake word (the worst case) and over a quiet room (the common case).
pub fn listen(cfg: &Config, minutes: f64) -> Result<(), BenchError> {
    let speech = non_wake_speech(cfg, minutes)?;
    // Room tone: low-level noise around -60 dBFS from a fixed-seed generator.
    let mut seed = 0x2545_f491_u32;
    let quiet: Vec<i16> = (0..speech.len())
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            (seed % 64) as i16 - 32
        })
        .collect();
    let secs = speech.len() as f64 / SAMPLE_RATE_HZ as f64;
    println!(
        "idle listening, one core's CPU time per second of audio ({secs:.0} s each), vad_gate={}:",
        cfg.wake.vad_gate
    );
    for (name, audio) in [
        ("speech without the wake word", &speech),
        ("quiet room", &quiet),
    ] {
        let (w, v, hits) = listen_cost(cfg, audio)?;
        println!(
            "  {name:<30} wake RTF {w:.4}  VAD RTF {v:.4}  total {:.4} (goal < 0.05)  false wakes {hits}",
            w + v
        );
    }
    Ok(())
}

/// English Kokoro voices kept out of the default templates: the unseen speakers.
pub const UNSEEN_VOICES: &[&str] = &[
    "af_alloy",
    "af_aoede",
    "af_jessica",
    "af_kore",
    "af_nicole",
    "af_river",
    "af_sky",
    "am_echo",
    "am_eric",
    "am_liam",
    "am_puck",
    "bf_isabella",
    "bf_lily",
    "bm_fable",
    "bm_lewis",
];

/// Non-wake sentences, some deliberately close to the wake phrase.
pub const CONFUSERS: &[&str] = &[
    "Hey, can you hand me that pen?",
    "I saw a panda at the zoo yesterday.",
    "The pandemic changed how we work.",
    "Hey Amanda, how was your weekend?",
    "Pass the pan, please, the sauce is ready.",
    "Hey there, nice to meet you.",
    "Banana bread is my favourite snack.",
    "What time does the train leave?",
];

/// Runs a wake detector over 16 kHz audio with one second of silence on both sides;
/// returns (template detections, detections the second stage accepted).
pub fn count_wakes(det: &mut WakeDetector, verifier: &WakeVerifier, pcm: &[i16]) -> (usize, usize) {
    let pad = vec![0i16; SAMPLE_RATE_HZ as usize];
    let (mut n, mut verified) = (0, 0);
    let all: Vec<i16> = pad.iter().chain(pcm).chain(pad.iter()).copied().collect();
    let token = CancellationToken::new();
    for (seq, c) in all.chunks_exact(FRAME_SAMPLES).enumerate() {
        if det
            .process(seq as u64, c.try_into().expect("exact chunk"))
            .is_some()
        {
            n += 1;
            // As the listener does: the check hears the window ending its delay later.
            let end = ((seq + 1 + verifier.delay_frames) * FRAME_SAMPLES).min(all.len());
            let start = end.saturating_sub(verifier.window_frames * FRAME_SAMPLES);
            if verifier.check(&all[start..end], &token).0 {
                verified += 1;
            }
        }
    }
    (n, verified)
}

/// `panda bench agents`: a local agent server driven through the pooled client vs a client
/// that opens a new connection per request (the seed's fault), same run, same server.
pub fn agents(requests: usize, concurrency: usize) -> Result<(), BenchError> {
    use std::sync::Arc;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| BenchError::Synth(e.to_string()))?;
    rt.block_on(async {
        let server = crate::scripted::serve(Arc::new(|_r: &crate::scripted::Request| {
            crate::scripted::Reply::json(
                serde_json::json!({"articles": [{"title": "Rain expected tomorrow"}]}),
            )
        }))
        .await
        .map_err(|e| BenchError::Synth(e.to_string()))?;
        let mut cfg = crate::config::default_agents().remove(0);
        cfg.url = server.url();
        println!(
            "== {requests} GET {}{} with {concurrency} in flight, 2 runtime threads",
            cfg.url, cfg.request.path
        );
        println!(
            "{:<28} {:>10} {:>9} {:>9} {:>9} {:>11}",
            "client", "req/s", "p50_ms", "p99_ms", "max_ms", "connections"
        );
        let mut rates = Vec::new();
        for (label, pooled) in [
            ("pooled keep-alive (Panda)", true),
            ("new connection per request", false),
        ] {
            let http = if pooled {
                crate::think::http_client(1000)
            } else {
                reqwest::Client::builder()
                    .pool_max_idle_per_host(0)
                    .no_proxy()
                    .build()
                    .map_err(|e| BenchError::Synth(e.to_string()))?
            };
            let agents = crate::think::agents::Agents::new(std::slice::from_ref(&cfg), http, None);
            let before = server
                .stats
                .accepts
                .load(std::sync::atomic::Ordering::Relaxed);
            // Warm-up.
            let token = CancellationToken::new();
            let slots = std::collections::HashMap::new();
            for _ in 0..50 {
                let _ = agents.call(&cfg.name, &slots, &token).await;
            }
            let start = Instant::now();
            let per = requests / concurrency.max(1);
            let mut tasks = Vec::new();
            for _ in 0..concurrency.max(1) {
                let (agents, name) = (agents.clone(), cfg.name.clone());
                tasks.push(tokio::spawn(async move {
                    let token = CancellationToken::new();
                    let slots = std::collections::HashMap::new();
                    let mut lat = Vec::with_capacity(per);
                    for _ in 0..per {
                        let t = Instant::now();
                        let ok = agents.call(&name, &slots, &token).await.is_ok();
                        lat.push((t.elapsed().as_secs_f64() * 1e3, ok));
                    }
                    lat
                }));
            }
            let mut lat = Vec::new();
            for t in tasks {
                lat.extend(t.await.unwrap_or_default());
            }
            let secs = start.elapsed().as_secs_f64();
            let failed = lat.iter().filter(|(_, ok)| !ok).count();
            let ms: Vec<f64> = lat.iter().map(|(m, _)| *m).collect();
            let rate = ms.len() as f64 / secs;
            rates.push(rate);
            let conns = server
                .stats
                .accepts
                .load(std::sync::atomic::Ordering::Relaxed)
                - before;
            println!(
                "{label:<28} {rate:>10.0} {:>9.3} {:>9.3} {:>9.3} {conns:>11}{}",
                percentile(&ms, 50.0),
                percentile(&ms, 99.0),
                percentile(&ms, 100.0),
                if failed > 0 {
                    format!("  ({failed} failed)")
                } else {
                    String::new()
                }
            );
        }
        println!(
            "pooled / new-connection throughput: {:.2}x",
            rates[0] / rates[1].max(1e-9)
        );
        Ok(())
    })
}

/// `panda bench route`: routing time per utterance, cold (matchers only) and cached.
pub fn route(cfg: &Config) -> Result<(), BenchError> {
    let router = crate::think::router::Router::new(&cfg.router, &cfg.agents);
    let utterances = [
        "What time is it?",
        "Hey Panda, what's the date today?",
        "Set a timer for ten minutes.",
        "Wake me up at 7 am",
        "Stop.",
        "Speak Spanish.",
        "What can you do?",
        "What's the news?",
        "News about the elections",
        "What's the price of Apple stock?",
        "Explain photosynthesis to me",
        "What's the news and how is the stock market doing",
        "What is the capital of France?",
        "Why is the sky blue?",
        "Tell me a joke about penguins",
        "How far away is the moon?",
        "Can you recommend a good book about history?",
        "What time does the bakery on Main Street close on Sundays?",
        "I saw a stop sign yesterday",
        "Cancel the timer",
    ];
    let n = 2000;
    println!(
        "{:<60} {:>8} {:>10} {:>10}",
        "utterance", "route", "cold_us", "cached_us"
    );
    let (mut cold_all, mut warm_all) = (Vec::new(), Vec::new());
    for u in utterances {
        let key = crate::think::router::normalize_utterance(u);
        let t = Instant::now();
        let mut label = String::new();
        for _ in 0..n {
            label = router.route_uncached(&key, u).0.label();
        }
        let cold = t.elapsed().as_secs_f64() * 1e6 / n as f64;
        let _ = router.route(u);
        let t = Instant::now();
        for _ in 0..n {
            std::hint::black_box(router.route(u));
        }
        let warm = t.elapsed().as_secs_f64() * 1e6 / n as f64;
        cold_all.push(cold);
        warm_all.push(warm);
        println!("{u:<60} {label:>8} {cold:>10.1} {warm:>10.2}");
    }
    println!(
        "cold p50 {:.1} us p95 {:.1} us | cached p50 {:.2} us p95 {:.2} us | speed-up {:.0}x",
        percentile(&cold_all, 50.0),
        percentile(&cold_all, 95.0),
        percentile(&warm_all, 50.0),
        percentile(&warm_all, 95.0),
        percentile(&cold_all, 50.0) / percentile(&warm_all, 50.0).max(1e-9)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wer_counts_edits_after_normalising() {
        assert_eq!(wer("Go forward ten meters.", "go forward 10 meters"), 0.0);
        assert_eq!(word_errors("a b c d", "a x c"), (2, 4));
        assert_eq!(wer("", ""), 0.0);
    }

    #[test]
    fn percentile_nearest_rank() {
        let v = [5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!(percentile(&v, 50.0), 3.0);
        assert_eq!(percentile(&v, 95.0), 5.0);
        assert!(percentile(&[], 50.0).is_nan());
    }
}
