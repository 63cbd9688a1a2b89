//! Speech-to-text: the Whisper owner thread.
//!
//! One thread (`panda-stt`) loads the ggml model once, warms it up, and keeps the
//! whisper.cpp context and state resident (on the GPU with the `cuda` feature). Everyone
//! else holds a cheap, cloneable [`SttHandle`] and sends requests through a bounded
//! channel with a `oneshot` reply — whisper.cpp's compute never runs on the async runtime.
//!
//! Cancellation: each request carries its turn's `CancellationToken`. whisper.cpp polls
//! an abort callback between graph computations; ours reads the token directly (one atomic
//! load). During the encoder an abort waits for the current pass to end; during decoding
//! it takes effect at the next token. A cancelled request replies [`SttError::Cancelled`]
//! and its text is discarded.

use std::collections::VecDeque;
use std::ffi::c_void;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use whisper_rs::{FullParams, SamplingStrategy, WhisperContext, WhisperContextParameters};

use crate::config::SttConfig;
use crate::event::SAMPLE_RATE_HZ;

/// Requests waiting for the Whisper thread. Whisper serves one utterance at a time and a
/// voice appliance produces one at a time, so a short queue suffices; when it is full,
/// senders wait (control edge).
const STT_QUEUE: usize = 4;

/// Errors of the speech-to-text stage.
#[derive(Debug, thiserror::Error)]
pub enum SttError {
    /// The model file is missing.
    #[error("Whisper model {0} is missing: run `panda models install`")]
    MissingModel(PathBuf),
    /// whisper.cpp could not load the model (corrupt or not a ggml Whisper file).
    #[error("Whisper model {path} cannot be loaded: {problem}")]
    Load {
        /// Model file.
        path: PathBuf,
        /// whisper.cpp's message.
        problem: String,
    },
    /// The turn was cancelled before or during transcription.
    #[error("transcription cancelled")]
    Cancelled,
    /// whisper.cpp failed while transcribing.
    #[error("transcription failed: {0}")]
    Failed(String),
    /// The Whisper thread has stopped (shutdown or a crash).
    #[error("the speech-to-text worker has stopped")]
    Stopped,
}

/// A finished transcription.
#[derive(Debug, Clone, PartialEq)]
pub struct SttOutput {
    /// Recognised text, trimmed, with non-speech annotations removed.
    pub text: String,
    /// Audio length.
    pub audio_ms: u64,
    /// Wall time inside whisper.cpp.
    pub stt_ms: u64,
    /// Detected (or configured) language code.
    pub language: String,
    /// Mean probability of the text tokens Whisper chose (0–1).
    pub confidence: f32,
    /// Which model heard it: the Whisper file's name ("ggml-base.bin"), or the remote
    /// service's address.
    pub model: String,
}

struct SttRequest {
    samples: Vec<f32>,
    /// Language to hear (`None`: `[stt] language`).
    language: Option<String>,
    /// The wake word's second-stage check: 1.5 s, decoded with the encoder window sized
    /// to it, as its recall and false-accept figures were measured.
    wake_check: bool,
    /// Text Whisper is told came before (biases spelling, e.g. of the wake word).
    prompt: Option<String>,
    /// Decode with the encoder window sized to the audio (benches compare it with the
    /// full window; stop word candidates keep the full one: `panda bench aec` measured
    /// 87.5 % of their decisions right sized against 93.8 % full).
    short: bool,
    /// Goes to `[stt] fast_model`: a wake word check, or a stop word candidate over an
    /// answer — someone is waiting on a yes or no, not on a whole sentence.
    fast: bool,
    token: CancellationToken,
    reply: oneshot::Sender<Result<SttOutput, SttError>>,
}

/// Handle to the Whisper thread; clone freely.
#[derive(Clone)]
pub struct SttHandle {
    tx: mpsc::Sender<SttRequest>,
}

/// Owner-thread bookkeeping returned by [`spawn`].
pub struct SttWorker {
    /// The thread; it ends when every handle is dropped.
    pub thread: std::thread::JoinHandle<()>,
    /// Time to load the model.
    pub load_time: Duration,
    /// Time of the warm-up transcription.
    pub warmup_time: Duration,
}

/// Loads the model on a new thread, warms it up, and returns once it is ready.
pub fn spawn(cfg: &SttConfig, model: &Path) -> Result<(SttHandle, SttWorker), SttError> {
    spawn_with(cfg, model, Models::default())
}

/// [`spawn_with`] for a whole configuration: `[stt] model`, `fast_model` and
/// `multilingual_model`, resolved under `[models] dir`.
pub fn spawn_configured(cfg: &crate::config::Config) -> Result<(SttHandle, SttWorker), SttError> {
    let path_of = |p: &Path| (!p.as_os_str().is_empty()).then(|| cfg.model_path(p));
    spawn_with(
        &cfg.stt,
        &cfg.model_path(&cfg.stt.model),
        Models {
            multilingual: path_of(&cfg.stt.multilingual_model),
            fast: path_of(&cfg.stt.fast_model),
        },
    )
}

/// The models beside `[stt] model` (`None`: that one does the work).
#[derive(Debug, Clone, Default)]
pub struct Models {
    /// For every language but English when the main model is English-only.
    pub multilingual: Option<PathBuf>,
    /// For wake word checks and stop word candidates.
    pub fast: Option<PathBuf>,
}

/// Checks that `model` is there and looks like a ggml Whisper file.
fn check_model(model: &Path) -> Result<(), SttError> {
    if !model.exists() {
        return Err(SttError::MissingModel(model.to_path_buf()));
    }
    check_ggml_header(model).map_err(|problem| SttError::Load {
        path: model.to_path_buf(),
        problem: format!(
            "{problem} (run `panda models verify`, or reinstall with `panda models install`)"
        ),
    })
}

/// [`spawn`] with the models beside the main one: requests in another language go to
/// the multilingual model when the main one is English-only (loaded on the same thread,
/// at start when `[stt] language` is not English, else on the first such request); wake
/// word checks and stop word candidates go to the fast model (loaded at start).
pub fn spawn_with(
    cfg: &SttConfig,
    model: &Path,
    others: Models,
) -> Result<(SttHandle, SttWorker), SttError> {
    check_model(model)?;
    // The fast model is the main one when it is the same file (no second copy).
    let fast = others.fast.filter(|f| f != model);
    if let Some(f) = &fast {
        check_model(f)?;
    }
    let multilingual = others.multilingual;
    let (tx, rx) = mpsc::channel(STT_QUEUE);
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
    let cfg = cfg.clone();
    let model = model.to_path_buf();
    let thread = std::thread::Builder::new()
        .name("panda-stt".into())
        .spawn(move || worker(cfg, model, fast, multilingual, rx, ready_tx))
        .expect("spawning a thread only fails when the OS is out of resources");
    match ready_rx.recv() {
        Ok(Ok((load_time, warmup_time))) => Ok((
            SttHandle { tx },
            SttWorker {
                thread,
                load_time,
                warmup_time,
            },
        )),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(SttError::Stopped),
    }
}

impl SttHandle {
    /// Transcribes 16 kHz mono audio. Returns [`SttError::Cancelled`] as soon as `token` is
    /// cancelled — without waiting for the worker, which stops at its next abort check.
    pub async fn transcribe(
        &self,
        samples: &[i16],
        token: &CancellationToken,
    ) -> Result<SttOutput, SttError> {
        self.transcribe_in(samples, None, token).await
    }

    /// [`SttHandle::transcribe`] in `language` (a Whisper code; `None`: `[stt] language`).
    pub async fn transcribe_in(
        &self,
        samples: &[i16],
        language: Option<&str>,
        token: &CancellationToken,
    ) -> Result<SttOutput, SttError> {
        self.transcribe_with(samples, language, false, token).await
    }

    /// Queues a request (on the fast model when `fast`) and waits for its transcript, or
    /// returns at once when `token` is cancelled.
    async fn transcribe_with(
        &self,
        samples: &[i16],
        language: Option<&str>,
        fast: bool,
        token: &CancellationToken,
    ) -> Result<SttOutput, SttError> {
        let rx = self.submit_in(samples, language, fast, token).await?;
        tokio::select! {
            biased;
            _ = token.cancelled() => Err(SttError::Cancelled),
            r = rx => r.unwrap_or(Err(SttError::Stopped)),
        }
    }

    /// Queues a request and returns the worker's own reply (which, on cancellation,
    /// arrives only once the worker has actually let go — tests measure that).
    pub async fn submit(
        &self,
        samples: &[i16],
        token: &CancellationToken,
    ) -> Result<oneshot::Receiver<Result<SttOutput, SttError>>, SttError> {
        self.submit_in(samples, None, false, token).await
    }

    /// Blocking [`SttHandle::transcribe`] with the encoder window sized to the audio
    /// (`short`) or the configured one: for benches that compare the two.
    pub fn transcribe_blocking_window(
        &self,
        samples: &[i16],
        short: bool,
        token: &CancellationToken,
    ) -> Result<SttOutput, SttError> {
        let (mut req, rx) = SttRequest::new(samples, None, None, token);
        req.short = short;
        self.wait_blocking(req, rx)
    }

    /// Queues `req` and waits for its reply on this (non-async) thread.
    fn wait_blocking(
        &self,
        req: SttRequest,
        rx: oneshot::Receiver<Result<SttOutput, SttError>>,
    ) -> Result<SttOutput, SttError> {
        self.tx.blocking_send(req).map_err(|_| SttError::Stopped)?;
        rx.blocking_recv().unwrap_or(Err(SttError::Stopped))
    }

    async fn submit_in(
        &self,
        samples: &[i16],
        language: Option<&str>,
        fast: bool,
        token: &CancellationToken,
    ) -> Result<oneshot::Receiver<Result<SttOutput, SttError>>, SttError> {
        let (mut req, rx) = SttRequest::new(samples, language, None, token);
        req.fast |= fast;
        self.tx.send(req).await.map_err(|_| SttError::Stopped)?;
        Ok(rx)
    }

    /// [`SttHandle::transcribe_in`] on `[stt] fast_model`: a stop word candidate over an
    /// answer, decided at once (English; another language goes to its own model).
    pub async fn transcribe_command(
        &self,
        samples: &[i16],
        language: Option<&str>,
        token: &CancellationToken,
    ) -> Result<SttOutput, SttError> {
        self.transcribe_with(samples, language, true, token).await
    }

    /// Blocking [`SttHandle::transcribe_command`] (benches).
    pub fn transcribe_command_blocking(
        &self,
        samples: &[i16],
        token: &CancellationToken,
    ) -> Result<SttOutput, SttError> {
        let (mut req, rx) = SttRequest::new(samples, None, None, token);
        req.fast = true;
        self.wait_blocking(req, rx)
    }

    /// Blocking [`SttHandle::transcribe`] for non-async callers (CLI tools, benches).
    pub fn transcribe_blocking(
        &self,
        samples: &[i16],
        token: &CancellationToken,
    ) -> Result<SttOutput, SttError> {
        self.transcribe_blocking_with_prompt(samples, None, token)
    }

    /// [`SttHandle::transcribe_blocking`] with an initial prompt (the listener's wake word
    /// check: "Hey Panda." makes Whisper spell a heard "hey panda" the same way every time).
    pub fn transcribe_blocking_with_prompt(
        &self,
        samples: &[i16],
        prompt: Option<&str>,
        token: &CancellationToken,
    ) -> Result<SttOutput, SttError> {
        self.submit_blocking_with_prompt(samples, prompt, token)?
            .blocking_recv()
            .unwrap_or(Err(SttError::Stopped))
    }

    /// Queues [`SttHandle::transcribe_blocking_with_prompt`]'s request and returns at once
    /// with the reply's receiver, for a thread that must go on with other work while
    /// Whisper runs (the listener keeps reading the microphone during its wake word
    /// check). Waits only while the worker's queue is full.
    pub fn submit_blocking_with_prompt(
        &self,
        samples: &[i16],
        prompt: Option<&str>,
        token: &CancellationToken,
    ) -> Result<oneshot::Receiver<Result<SttOutput, SttError>>, SttError> {
        // The wake phrase is English whatever the conversation's language.
        let language = prompt.map(|_| "en");
        let (req, rx) = SttRequest::new(samples, language, prompt, token);
        self.tx.blocking_send(req).map_err(|_| SttError::Stopped)?;
        Ok(rx)
    }
}

impl SttRequest {
    /// A request for `samples` (16 kHz i16) and the receiver of its reply; a `prompt`
    /// makes it a wake word check.
    fn new(
        samples: &[i16],
        language: Option<&str>,
        prompt: Option<&str>,
        token: &CancellationToken,
    ) -> (Self, oneshot::Receiver<Result<SttOutput, SttError>>) {
        let (reply, rx) = oneshot::channel();
        let req = SttRequest {
            samples: samples.iter().map(|&s| s as f32 / 32768.0).collect(),
            language: language.map(str::to_string),
            wake_check: prompt.is_some(),
            prompt: prompt.map(|p| p.replace('\0', " ")),
            short: false,
            fast: prompt.is_some(),
            token: token.clone(),
            reply,
        };
        (req, rx)
    }
}

type Ready = Result<(Duration, Duration), SttError>;

/// Checks a whisper.cpp ggml file's header before whisper.cpp reads it: whisper.cpp
/// trusts the hyper-parameters and throws a C++ exception on absurd ones, which aborts
/// the process ("Rust cannot catch foreign exceptions") without naming the file. Reads
/// only the header (~1 KB), so it costs nothing at start-up; `panda models verify` and
/// `panda doctor` check the full sha256.
pub fn check_ggml_header(path: &Path) -> Result<(), String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let len = f.metadata().map_err(|e| e.to_string())?.len();
    let mut head = [0u8; 4 * 14];
    f.read_exact(&mut head)
        .map_err(|_| format!("only {len} bytes: too short for a Whisper model"))?;
    let word = |i: usize| {
        i32::from_le_bytes([
            head[4 * i],
            head[4 * i + 1],
            head[4 * i + 2],
            head[4 * i + 3],
        ])
    };
    if word(0) as u32 != 0x6767_6d6c {
        return Err("not a whisper.cpp ggml file (bad magic)".into());
    }
    let names = [
        "n_vocab",
        "n_audio_ctx",
        "n_audio_state",
        "n_audio_head",
        "n_audio_layer",
        "n_text_ctx",
        "n_text_state",
        "n_text_head",
        "n_text_layer",
    ];
    let limits = [
        (1, 1 << 20),
        (1, 1 << 14),
        (1, 1 << 14),
        (1, 1 << 10),
        (1, 1 << 10),
        (1, 1 << 14),
        (1, 1 << 14),
        (1, 1 << 10),
        (1, 1 << 10),
    ];
    for (i, (name, (lo, hi))) in names.iter().zip(limits).enumerate() {
        let v = word(1 + i);
        if v < lo || v > hi {
            return Err(format!("damaged header: {name} = {v}"));
        }
    }
    let (state, heads) = (word(3), word(4));
    if state % heads != 0 || word(7) % word(8) != 0 {
        return Err("damaged header: attention heads do not divide the width".into());
    }
    let n_mels = word(10);
    if n_mels != 80 && n_mels != 128 {
        return Err(format!("damaged header: n_mels = {n_mels}"));
    }
    let ftype = word(11);
    if !(0..=3000).contains(&ftype) {
        return Err(format!("damaged header: ftype = {ftype}"));
    }
    let (mel_rows, mel_cols) = (word(12), word(13));
    if mel_rows != n_mels || !(1..=4096).contains(&mel_cols) {
        return Err(format!("damaged header: mel filters {mel_rows}×{mel_cols}"));
    }
    // The tensors alone hold at least the n_vocab × n_text_state token embedding, in
    // the file's weight type: f32, f16, or a quantised format (the smallest whisper.cpp
    // writes, q4_0, takes 18 bytes per 32 weights).
    let bytes_per_32 = match ftype % 1000 {
        0 => 128,
        1 => 64,
        _ => 18,
    };
    let min = (word(1) as u64) * (word(7) as u64) * bytes_per_32 / 32;
    if len < min {
        return Err(format!(
            "truncated: {len} bytes, the header needs at least {min}"
        ));
    }
    Ok(())
}

/// A loaded model: its engine settings and its whisper.cpp state.
struct Loaded {
    engine: Engine,
    state: whisper_rs::WhisperState,
}

/// Loads and warms up `model`: (loaded, load time, warm-up time).
fn load(cfg: &SttConfig, model: &Path) -> Result<(Loaded, Duration, Duration), SttError> {
    let t0 = Instant::now();
    let mut params = WhisperContextParameters::default();
    params.use_gpu(cfg.gpu && cfg!(feature = "cuda"));
    params.flash_attn(cfg.flash_attn);
    let load_err = |problem: String| SttError::Load {
        path: model.to_path_buf(),
        problem,
    };
    let ctx =
        WhisperContext::new_with_params(model, params).map_err(|e| load_err(e.to_string()))?;
    let mut state = ctx.create_state().map_err(|e| load_err(e.to_string()))?;
    let load_time = t0.elapsed();
    let engine = Engine {
        cfg: cfg.clone(),
        multilingual: ctx.is_multilingual(),
        token_eot: ctx.token_eot(),
        name: model
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
    };
    // Warm-up: one short pass allocates whisper.cpp's compute buffers, so the first real
    // utterance does not pay for it.
    let t1 = Instant::now();
    let silence = vec![0.0f32; SAMPLE_RATE_HZ as usize];
    let lang = if engine.multilingual {
        &cfg.language
    } else {
        "en"
    };
    let _ = engine.run(
        &mut state,
        &silence,
        None,
        lang,
        engine.first_pass(cfg.beam_for(lang), false),
        &CancellationToken::new(),
    );
    let warmup_time = t1.elapsed();
    tracing::info!(
        model = %model.display(),
        multilingual = engine.multilingual,
        load_ms = load_time.as_millis() as u64,
        warmup_ms = warmup_time.as_millis() as u64,
        "whisper ready"
    );
    Ok((Loaded { engine, state }, load_time, warmup_time))
}

fn worker(
    cfg: SttConfig,
    model: PathBuf,
    fast: Option<PathBuf>,
    multilingual: Option<PathBuf>,
    mut rx: mpsc::Receiver<SttRequest>,
    ready: std::sync::mpsc::SyncSender<Ready>,
) {
    whisper_rs::install_logging_hooks();
    let (mut primary, load_time, warmup_time) = match load(&cfg, &model) {
        Ok(l) => l,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    // The fast model is loaded at start: the first wake word check must not wait on it.
    let mut fast = match fast.map(|f| load(&cfg, &f)).transpose() {
        Ok(l) => l.map(|(l, _, _)| l),
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    // The multilingual model, when the primary one hears English only: loaded now if
    // Panda starts in another language, else when first needed; a load failure is
    // reported once and English goes on working.
    let needs_other = |lang: &str| lang != "en";
    let mut other: Option<Loaded> = None;
    let mut other_failed = false;
    let load_other = |other: &mut Option<Loaded>, failed: &mut bool| {
        if other.is_some() || *failed {
            return;
        }
        match multilingual.as_deref().filter(|p| p.exists()) {
            Some(p) => match load(&cfg, p) {
                Ok((l, _, _)) => *other = Some(l),
                Err(e) => {
                    tracing::error!(error = %e, "the multilingual Whisper model failed to load; hearing English only");
                    *failed = true;
                }
            },
            None => {
                tracing::error!(model = ?multilingual, "no multilingual Whisper model installed (`panda models install`); hearing English only");
                *failed = true;
            }
        }
    };
    if !primary.engine.multilingual && needs_other(&cfg.language) {
        load_other(&mut other, &mut other_failed);
    }
    if ready.send(Ok((load_time, warmup_time))).is_err() {
        return;
    }
    // Requests taken off the channel and not yet run. A wake word check goes first: a
    // person is waiting on it (or talking over an answer to stop it), while what is
    // queued before it — a question, a stop word candidate that is most often the
    // answer's own residual echo — can wait a second. On a loaded machine, a check
    // behind three such candidates was decided 9.5 s after the "hey panda". At most
    // STT_QUEUE are taken: past that the channel's senders wait, as before.
    let mut waiting: VecDeque<SttRequest> = VecDeque::with_capacity(STT_QUEUE);
    loop {
        if waiting.is_empty() {
            match rx.blocking_recv() {
                Some(r) => waiting.push_back(r),
                None => return,
            }
        }
        while waiting.len() < STT_QUEUE
            && let Ok(r) = rx.try_recv()
        {
            waiting.push_back(r);
        }
        let next = waiting.iter().position(|r| r.wake_check).unwrap_or(0);
        let req = waiting.remove(next).expect("not empty");
        let lang = req.language.clone().unwrap_or_else(|| cfg.language.clone());
        let out = if req.token.is_cancelled() {
            Err(SttError::Cancelled)
        } else {
            let other_language = needs_other(&lang);
            if !primary.engine.multilingual && other_language {
                load_other(&mut other, &mut other_failed);
            }
            let target = match (other.as_mut(), fast.as_mut()) {
                (Some(o), _) if !primary.engine.multilingual && other_language => o,
                (_, Some(f)) if req.fast && (f.engine.multilingual || !other_language) => f,
                _ => &mut primary,
            };
            let lang = if target.engine.multilingual {
                lang.as_str()
            } else {
                "en"
            };
            target.engine.run(
                &mut target.state,
                &req.samples,
                req.prompt.as_deref(),
                lang,
                // An English wake word check is a yes or no someone waits on, decoded
                // greedily whatever the questions' beam width (`[stt] beam_size`).
                target.engine.first_pass(
                    if req.wake_check && !other_language {
                        1
                    } else {
                        cfg.beam_for(lang)
                    },
                    req.wake_check || req.short,
                ),
                &req.token,
            )
        };
        let _ = req.reply.send(out);
    }
}

struct Engine {
    cfg: SttConfig,
    multilingual: bool,
    /// Token ids at and above this are special (timestamps, language, task).
    token_eot: i32,
    /// The model file's name ([`SttOutput::model`]).
    name: String,
}

/// whisper.cpp's abort callback: `user_data` points at the request's CancellationToken,
/// which outlives the `full` call that polls it.
unsafe extern "C" fn abort_if_cancelled(user_data: *mut c_void) -> bool {
    // SAFETY: set in `Engine::run` to a token borrowed for the whole `state.full` call.
    let token = unsafe { &*(user_data as *const CancellationToken) };
    token.is_cancelled()
}

/// How one decoding pass runs.
#[derive(Debug, Clone, Copy)]
struct Pass {
    /// Encoder window sized to the utterance (`[stt] dynamic_audio_ctx`).
    dynamic_ctx: bool,
    /// whisper.cpp's temperature fallback (re-decode hotter when the text looks wrong).
    fallback: bool,
    /// 0 or 1: greedy; more: beam search with this many beams.
    beam: u32,
}

impl Engine {
    /// The first pass over a request: the encoder window sized to the audio when
    /// `[stt] dynamic_audio_ctx` is on or the request is `sized`.
    fn first_pass(&self, beam: u32, sized: bool) -> Pass {
        Pass {
            dynamic_ctx: self.cfg.dynamic_audio_ctx || sized,
            fallback: false,
            beam,
        }
    }

    /// Transcribes `samples`, `first` as the first pass. The loop guard: a transcript that repeats itself back to
    /// back, or holds more words than anyone says in that time, is decoded again with the
    /// full 30 s window and whisper.cpp's temperature fallback; what repeats after that
    /// is kept once. Clean audio pays nothing for the guard.
    fn run(
        &self,
        state: &mut whisper_rs::WhisperState,
        samples: &[f32],
        prompt: Option<&str>,
        language: &str,
        first: Pass,
        token: &CancellationToken,
    ) -> Result<SttOutput, SttError> {
        let mut out = self.pass(state, samples, prompt, language, token, first)?;
        let secs = samples.len() as f64 / SAMPLE_RATE_HZ as f64;
        if looks_looped(&out.text, secs) {
            tracing::info!(text = %out.text, "the transcript repeats itself; decoding again");
            let again = Pass {
                dynamic_ctx: false,
                fallback: true,
                beam: first.beam,
            };
            let second = self.pass(state, samples, prompt, language, token, again)?;
            let stt_ms = out.stt_ms + second.stt_ms;
            out = second;
            out.stt_ms = stt_ms;
            if looks_looped(&out.text, secs) {
                out.text = drop_repeats(&out.text);
            }
        }
        Ok(out)
    }

    fn pass(
        &self,
        state: &mut whisper_rs::WhisperState,
        samples: &[f32],
        prompt: Option<&str>,
        language: &str,
        token: &CancellationToken,
        pass: Pass,
    ) -> Result<SttOutput, SttError> {
        let strategy = if pass.beam > 1 {
            SamplingStrategy::BeamSearch {
                beam_size: pass.beam as i32,
                patience: -1.0,
            }
        } else {
            SamplingStrategy::Greedy { best_of: 1 }
        };
        let mut p = FullParams::new(strategy);
        p.set_n_threads(self.cfg.whisper_threads() as i32);
        p.set_print_progress(false);
        p.set_print_realtime(false);
        p.set_print_special(false);
        p.set_print_timestamps(false);
        p.set_no_context(true);
        // One utterance, one pass: with a reduced audio_ctx whisper.cpp's timestamp-driven
        // seeking re-decodes the same window and repeats itself; a voice command needs
        // neither timestamps nor more than one segment.
        p.set_no_timestamps(true);
        p.set_single_segment(true);
        p.set_suppress_blank(true);
        p.set_suppress_nst(true);
        let lang = if self.multilingual && language == "auto" {
            None
        } else {
            Some(language)
        };
        p.set_language(lang);
        p.set_detect_language(false);
        // An empty prompt is the wake check without one (see the listener's unprompted
        // confirmation).
        if let Some(prompt) = prompt.filter(|p| !p.is_empty()) {
            p.set_initial_prompt(prompt);
        }
        let audio_ms = samples.len() as u64 * 1000 / SAMPLE_RATE_HZ as u64;
        if pass.dynamic_ctx {
            p.set_audio_ctx(audio_ctx_for(samples.len()));
        }
        // The first pass decides alone: temperature fallback re-decodes can multiply the
        // time on noise. The loop guard's second pass turns it on.
        p.set_temperature_inc(if pass.fallback { 0.2 } else { 0.0 });
        // SAFETY: the callback only reads the token; `token` is borrowed for this whole
        // function, which outlives `state.full`.
        unsafe {
            p.set_abort_callback(Some(abort_if_cancelled));
            p.set_abort_callback_user_data(token as *const CancellationToken as *mut c_void);
        }
        // Whisper needs at least ~1 s of input to produce anything sensible; pad short
        // utterances with silence rather than feeding it a fragment.
        let mut padded;
        let input = if samples.len() < SAMPLE_RATE_HZ as usize + SAMPLE_RATE_HZ as usize / 10 {
            padded = samples.to_vec();
            padded.resize(SAMPLE_RATE_HZ as usize + SAMPLE_RATE_HZ as usize / 10, 0.0);
            &padded[..]
        } else {
            samples
        };
        let t = Instant::now();
        let r = state.full(p, input);
        let stt_ms = t.elapsed().as_millis() as u64;
        if token.is_cancelled() {
            return Err(SttError::Cancelled);
        }
        r.map_err(|e| SttError::Failed(e.to_string()))?;
        let mut text = String::new();
        let (mut prob_sum, mut n_text_tokens) = (0.0f32, 0usize);
        for seg in state.as_iter() {
            let s = seg
                .to_str_lossy()
                .map_err(|e| SttError::Failed(e.to_string()))?;
            text.push_str(&s);
            for i in 0..seg.n_tokens() {
                if let Some(t) = seg.get_token(i)
                    && t.token_id() < self.token_eot
                {
                    prob_sum += t.token_probability();
                    n_text_tokens += 1;
                }
            }
        }
        let confidence = if n_text_tokens == 0 {
            0.0
        } else {
            prob_sum / n_text_tokens as f32
        };
        tracing::debug!(confidence, text = %text, "transcribed");
        let language = if lang.is_none() {
            whisper_rs::get_lang_str(state.full_lang_id_from_state())
                .unwrap_or("?")
                .to_string()
        } else {
            language.to_string()
        };
        // Whisper always says something; on noise it is a low-confidence word ("I'm",
        // "you"). Below the floor the transcript is empty: nothing was understood.
        let text = if confidence < self.cfg.min_confidence {
            String::new()
        } else {
            clean_transcript(&text)
        };
        Ok(SttOutput {
            confidence,
            text,
            audio_ms,
            stt_ms,
            language,
            model: self.name.clone(),
        })
    }
}

/// Words of a transcript, lower case, without punctuation.
fn plain_words(text: &str) -> Vec<String> {
    text.split_whitespace()
        .map(|w| {
            w.chars()
                .filter(|c| c.is_alphanumeric() || *c == '\'')
                .collect::<String>()
                .to_lowercase()
        })
        .filter(|w| !w.is_empty())
        .collect()
}

/// True when a transcript looks like a decoder loop: a run of three or more words said
/// again straight after itself ("press 2 to access messages press 2 to access
/// messages"), a long word three times or a short one four times in a row, or more than
/// 6 words a second (+3) of audio.
pub fn looks_looped(text: &str, audio_secs: f64) -> bool {
    let w = plain_words(text);
    if w.len() as f64 > 6.0 * audio_secs + 3.0 {
        return true;
    }
    for n in 1..=w.len() / 2 {
        // A long word said three times running is a loop; "no, no, no" is not.
        let need = match n {
            1 if w.iter().any(|x| x.chars().count() >= 5) => 3,
            1 | 2 => 4,
            _ => 2,
        };
        for i in 0..w.len() {
            let mut k = 1;
            while i + (k + 1) * n <= w.len() && w[i..i + n] == w[i + k * n..i + (k + 1) * n] {
                k += 1;
            }
            if k >= need {
                return true;
            }
        }
    }
    false
}

/// Keeps one copy of each run of three or more words repeated back to back (the loop
/// guard's last resort, after a re-decode still loops): [`collapse_runs`] with a lower
/// bar than the one every transcript passes ([`collapse_repeats`]), as a loop has been
/// detected. Punctuation of the kept copy stays.
pub fn drop_repeats(text: &str) -> String {
    collapse_runs(text, 3, 2)
}

/// Encoder positions for an utterance: 50 per second of audio (whisper's conv front-end
/// halves 100 mel frames/s) plus two seconds of margin, never below 512 (~10 s), at most
/// the model's 1500. Measured on tiny.en (`panda bench stt`): windows sized tightly to
/// short commands (< 400 positions) make the decoder loop ("10 of clubs 10 of clubs …");
/// 512 was as accurate as 768 and ~4× faster than the fixed 30 s window.
pub fn audio_ctx_for(samples: usize) -> i32 {
    let secs = samples as f64 / SAMPLE_RATE_HZ as f64;
    ((secs * 50.0).ceil() as i32 + 100).clamp(512, 1500)
}

/// Trims, and removes Whisper's non-speech annotations (`[BLANK_AUDIO]`, `(music)`, `*cough*`)
/// so silence and noise give an empty transcript rather than a pseudo-sentence.
pub fn clean_transcript(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut depth = 0i32;
    let mut star = false;
    for c in raw.chars() {
        match c {
            '[' | '(' => depth += 1,
            ']' | ')' => depth = (depth - 1).max(0),
            '*' => star = !star,
            _ if depth == 0 && !star => out.push(c),
            _ => {}
        }
    }
    collapse_repeats(&out.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// Collapses Whisper's decoding loops: a phrase of two or more words repeated three or
/// more times in a row ("at 9 and closes at 6 tonight. at 9 and closes …") is kept once.
/// tiny.en falls into such loops on audio with long pauses (whisper's own guard, the
/// temperature fallback, is off for latency); people do not say a whole phrase three
/// times over, so real speech is left alone (and single words like "no, no, no" too).
pub fn collapse_repeats(text: &str) -> String {
    collapse_runs(text, 2, 3)
}

/// Keeps one copy of every phrase of at least `min_words` words said at least `min_copies`
/// times in a row (words compared without punctuation or case).
fn collapse_runs(text: &str, min_words: usize, min_copies: usize) -> String {
    let words: Vec<&str> = text.split_whitespace().collect();
    let key = |w: &str| {
        w.chars()
            .filter(|c| c.is_alphanumeric())
            .collect::<String>()
            .to_lowercase()
    };
    let keys: Vec<String> = words.iter().map(|w| key(w)).collect();
    let mut out: Vec<&str> = Vec::with_capacity(words.len());
    let mut i = 0;
    'outer: while i < words.len() {
        for period in min_words..=((words.len() - i) / min_copies) {
            let same = |a: usize, b: usize| keys[a..a + period] == keys[b..b + period];
            if (1..min_copies).all(|k| same(i, i + k * period)) {
                let mut end = i + min_copies * period;
                while end + period <= words.len() && same(i, end) {
                    end += period;
                }
                out.extend_from_slice(&words[i..i + period]);
                i = end;
                continue 'outer;
            }
        }
        out.push(words[i]);
        i += 1;
    }
    out.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding_loops_collapse_but_speech_stays() {
        assert_eq!(
            collapse_repeats(
                "the library opens. at 9 and closes at 6 tonight. at 9 and closes at 6 tonight. \
                 at 9 and closes at 6 tonight. at 9 and closes at 6 tonight."
            ),
            "the library opens. at 9 and closes at 6 tonight."
        );
        assert_eq!(
            collapse_repeats("10 of clubs 10 of clubs 10 of clubs 10 of clubs"),
            "10 of clubs"
        );
        assert_eq!(
            collapse_repeats("no, no, no, I said so"),
            "no, no, no, I said so"
        );
        assert_eq!(
            collapse_repeats("go forward ten meters, go forward ten meters"),
            "go forward ten meters, go forward ten meters"
        );
    }

    #[test]
    fn clean_removes_annotations_and_spaces() {
        assert_eq!(clean_transcript(" [BLANK_AUDIO] "), "");
        assert_eq!(
            clean_transcript(" (upbeat music)  Hello  there. "),
            "Hello there."
        );
        assert_eq!(
            clean_transcript("*coughs* What time is it?"),
            "What time is it?"
        );
    }

    #[test]
    fn loops_are_seen_and_kept_once() {
        let looped =
            "Press 2 to access messages. Press 2 to access messages. Press 0 for greetings.";
        assert!(looks_looped(looped, 6.0));
        assert_eq!(
            drop_repeats(looped),
            "Press 2 to access messages. Press 0 for greetings."
        );
        assert!(looks_looped("Capeander. Capeander. Capeander. Cape", 1.5));
        assert!(looks_looped("the the the the", 2.0));
        // More words than anyone says in a second.
        assert!(looks_looped(
            "one two three four five six seven eight nine ten eleven",
            1.0
        ));
        for clean in [
            "What time is it?",
            "I said no, no, I did not.",
            "Set a timer for ten minutes and a timer for five minutes.",
            "",
        ] {
            assert!(!looks_looped(clean, 3.0), "{clean}");
            assert_eq!(drop_repeats(clean), clean);
        }
    }

    #[test]
    fn audio_ctx_scales_with_length() {
        assert_eq!(audio_ctx_for(16_000 * 2), 512);
        assert_eq!(audio_ctx_for(16_000 * 12), 700);
        assert_eq!(audio_ctx_for(16_000 * 40), 1500);
    }

    #[test]
    fn missing_model_points_to_install() {
        let err = spawn(&SttConfig::default(), Path::new("/nope/ggml.bin"))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("panda models install"), "{err}");
    }
}
