//! `panda listen`: listening → STT stage → the caller (JSON lines).
//!
//! Shutdown: cancelling the root token stops the source; its sender drops, the
//! listener's `recv` returns `None`, it flushes and drops its senders, the STT stage ends
//! when the utterance edge closes, and the event stream ends when every sender is gone.

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::topology::{spawn_stt_stage, start_listening, start_stt, transcriber};
use super::{AppError, EVENT_EDGE, ListenOptions, ListenSummary, UTTERANCE_EDGE};
use crate::config::Config;
use crate::event::{Event, Utterance};
use crate::listen::listener::{ListenerOptions, WakeVerifier};

/// Runs the listening pipeline until the input ends or `root` is cancelled, handing every
/// event to `on_event` in order.
pub async fn listen(
    cfg: &Config,
    opts: ListenOptions,
    root: CancellationToken,
    mut on_event: impl FnMut(&Event),
) -> Result<ListenSummary, AppError> {
    let verify = opts.use_wake && cfg.wake.verify;
    let stt = if opts.transcribe || verify {
        Some(start_stt(cfg).await?)
    } else {
        None
    };
    let verifier = stt
        .as_ref()
        .filter(|_| verify)
        .map(|h| WakeVerifier::new(h.clone(), &cfg.wake));
    let (utt_tx, utt_rx) = mpsc::channel::<Utterance>(UTTERANCE_EDGE);
    let (ev_tx, mut ev_rx) = mpsc::channel::<Event>(EVENT_EDGE);
    let live = opts.input.is_live();
    let listening = start_listening(
        cfg,
        opts.input,
        ListenerOptions {
            use_wake: opts.use_wake,
            verifier,
            // No speaker here, no earcon to hold for.
            hold_after_wake_ms: 0,
            live,
            ..Default::default()
        },
        utt_tx,
        ev_tx.clone(),
        None,
        // Nothing plays here: no echo to cancel.
        None,
        &root,
    )?;
    let transcriber = match stt.filter(|_| opts.transcribe) {
        Some(h) => Some(transcriber(cfg, h, &ev_tx)?),
        None => None,
    };
    let stage = spawn_stt_stage(utt_rx, transcriber, ev_tx, None, None, Vec::new());
    while let Some(ev) = ev_rx.recv().await {
        on_event(&ev);
    }
    let _ = stage.await;
    let (frames, frames_dropped) = listening.frames();
    // A file source ends by itself; a device only when `root` is cancelled.
    listening.join(std::time::Duration::from_secs(3600)).await?;
    Ok(ListenSummary {
        frames,
        frames_dropped,
    })
}
