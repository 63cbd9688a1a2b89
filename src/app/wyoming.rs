//! Wiring of the Wyoming server ([`crate::wyoming::server`]) to Panda's engines: for
//! `panda serve --wyoming`, a Whisper and a Kokoro owner thread of its own; for
//! `panda run` with `[wyoming] listen`, the appliance's own (its STT handle and its
//! sentence edge to Kokoro). One model of each kind serves every connection either way.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::AppError;
use crate::config::Config;
use crate::event::Speech;
use crate::listen::stt::SttHandle;
use crate::speak::tts::{self, TtsIo};
use crate::wyoming::info::{Offer, Served};
use crate::wyoming::server::{self, Limits, Services, WakeService, wake_name};

/// Control edge, Wyoming connections → the Kokoro thread of `panda serve`: syntheses.
/// When full a connection waits (each synthesis is a sentence or a text; Kokoro serves
/// one at a time).
pub const SERVE_SENTENCE_EDGE: usize = 8;

/// What `kinds` (`asr`, `tts`, `wake`) offer, reached through `stt` and `tts`.
pub fn services(
    cfg: &Config,
    kinds: &[String],
    stt: Option<SttHandle>,
    tts: Option<&mpsc::Sender<Speech>>,
) -> Services {
    let has = |k: &str| kinds.iter().any(|x| x == k);
    let name_of = |p: &std::path::Path| {
        p.file_stem()
            .map(|s| s.to_string_lossy().trim_start_matches("ggml-").to_string())
            .unwrap_or_else(|| "whisper".into())
    };
    // The main model; when it hears English only, the multilingual one beside it
    // (requests in other languages go to it).
    let english = name_of(&cfg.stt.model);
    let mut models = vec![(english.clone(), vec!["en".to_string()])];
    let all: Vec<String> = (0..=whisper_rs::get_lang_max_id())
        .filter_map(whisper_rs::get_lang_str)
        .map(str::to_string)
        .collect();
    if !english.ends_with(".en") {
        // The main model is multilingual itself (e.g. Whisper base).
        models[0].1 = all;
    } else if !cfg.stt.multilingual_model.as_os_str().is_empty() {
        models.push((name_of(&cfg.stt.multilingual_model), all));
    }
    let voices = tts::installed_voices(&cfg.model_path(&cfg.tts.model_dir));
    let name = wake_name(&cfg.wake.phrase);
    let asr = stt.clone().filter(|_| has("asr"));
    let tts = tts.filter(|_| has("tts")).map(mpsc::Sender::downgrade);
    Services {
        served: Served {
            asr: asr.as_ref().map(|_| Offer { models }),
            tts: tts.as_ref().map(|_| Offer {
                models: voices
                    .iter()
                    .map(|v| {
                        let lang = crate::config::voice_language(v).unwrap_or("en-us");
                        (v.clone(), vec![lang.to_string()])
                    })
                    .collect(),
            }),
            wake: has("wake").then(|| Offer {
                models: vec![(name.clone(), vec!["en".into()])],
            }),
        },
        stt: asr,
        tts,
        wake: has("wake").then(|| WakeService {
            cfg: cfg.clone(),
            name,
            stt,
        }),
        default_voice: cfg.tts.voice.clone(),
        voices,
    }
}

/// A running Wyoming server.
pub struct Serving {
    /// The bound address (`tcp://HOST:PORT`, the real port when 0 was asked for).
    pub addr: String,
    /// Ends when `stop` is cancelled.
    pub task: tokio::task::JoinHandle<()>,
    /// The server's counters.
    pub stats: Arc<server::ServerStats>,
    /// The zeroconf announcement (`[wyoming] zeroconf`), withdrawn when dropped.
    pub announcement: Option<crate::wyoming::zeroconf::Announcement>,
}

/// Starts serving `services` on `listen` until `stop` is cancelled; returns once bound.
pub async fn start(
    cfg: &Config,
    listen: &str,
    services: Services,
    stop: CancellationToken,
) -> Result<Serving, AppError> {
    let listener = server::bind(listen).await?;
    let bound = listener.local_addr().ok();
    let addr = bound.map_or_else(|| listen.to_string(), |a| format!("tcp://{a}"));
    let announcement = match bound.filter(|_| cfg.wyoming.zeroconf) {
        Some(a) => {
            let name = Some(cfg.wyoming.zeroconf_name.clone())
                .filter(|n| !n.is_empty())
                .unwrap_or_else(crate::wyoming::zeroconf::default_name);
            Some(crate::wyoming::zeroconf::Announcement::start(&name, a)?)
        }
        None => None,
    };
    let kinds: Vec<&str> = [
        services.served.asr.as_ref().map(|_| "asr"),
        services.served.tts.as_ref().map(|_| "tts"),
        services.served.wake.as_ref().map(|_| "wake"),
    ]
    .into_iter()
    .flatten()
    .collect();
    tracing::info!(addr, services = kinds.join(","), "serving Wyoming");
    let stats = Arc::new(server::ServerStats::default());
    let task = tokio::spawn(server::serve(
        listener,
        Arc::new(services),
        Limits::from(&cfg.wyoming),
        stats.clone(),
        stop,
    ));
    Ok(Serving {
        addr,
        task,
        stats,
        announcement,
    })
}

/// `panda serve --wyoming URL`: loads the engines `kinds` need (Whisper for `asr` and the
/// wake word's check, Kokoro for `tts`) and serves until `root` is cancelled.
/// `on_ready` gets the bound address once serving.
pub async fn serve(
    cfg: &Config,
    listen: &str,
    kinds: &[String],
    root: CancellationToken,
    on_ready: impl FnOnce(&str),
) -> Result<(), AppError> {
    let has = |k: &str| kinds.iter().any(|x| x == k);
    let whisper = if has("asr") || has("wake") {
        Some(super::topology::start_stt(cfg).await?)
    } else {
        None
    };
    // Kokoro's own thread, reached only by served requests: its playback and event
    // edges have no reader and carry nothing (they are kept open until the end).
    let mut kokoro = None;
    if has("tts") {
        super::check_voice(cfg, &cfg.tts.voice)?;
        let (sent_tx, sent_rx) = mpsc::channel(SERVE_SENTENCE_EDGE);
        let (pcm_tx, pcm_rx) = mpsc::channel(1);
        let (ev_tx, ev_rx) = mpsc::channel(1);
        let topts = super::tts_options(cfg, &cfg.tts.voice);
        let (thread, _) = tokio::task::spawn_blocking(move || {
            tts::spawn(
                topts,
                TtsIo {
                    sentences: sent_rx,
                    pcm: pcm_tx,
                    events: ev_tx,
                },
            )
        })
        .await
        .map_err(|_| AppError::Thread("the Kokoro loader"))??;
        kokoro = Some((sent_tx, thread, pcm_rx, ev_rx));
    }
    let services = services(cfg, kinds, whisper, kokoro.as_ref().map(|(tx, ..)| tx));
    let stop = root.child_token();
    let serving = start(cfg, listen, services, stop.clone()).await?;
    on_ready(&serving.addr);
    root.cancelled().await;
    stop.cancel();
    let _ = serving.task.await;
    if let Some(a) = serving.announcement {
        a.withdraw().await;
    }
    if let Some((tx, thread, _pcm, _ev)) = kokoro {
        drop(tx);
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
    Ok(())
}
