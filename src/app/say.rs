//! `panda say`: text → sentences → the speaking path, as one turn that Ctrl-C (cancelling
//! `root`) interrupts.

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::topology::{SpeakerTaps, Speaking, start_speaking};
use super::{AppError, EVENT_EDGE, SENTENCE_EDGE, SayInput, SayOptions, SaySummary};
use crate::config::Config;
use crate::event::{Event, Sentence, Speech, Turn};
use crate::speak::kokoro::voice_language;
use crate::speak::normalize::normalize;
use crate::speak::sentences::{SentenceSplitter, split_all};

/// `panda say`: text → sentences → TTS thread → playback thread, as one turn that Ctrl-C
/// (cancelling `root`) interrupts. Every event goes to `on_event` in order.
///
/// ```text
///  feeder ──SENTENCE_EDGE──▶ tts thread ──PCM_EDGE──▶ playback thread ──▶ sink
///      all ──EVENT_EDGE──▶ caller
/// ```
pub async fn say(
    cfg: &Config,
    opts: SayOptions,
    root: CancellationToken,
    mut on_event: impl FnMut(&Event),
) -> Result<SaySummary, AppError> {
    let lang = voice_language(&opts.voice).unwrap_or("en-us");
    if let SayInput::Text(t) = &opts.input
        && normalize(t, lang).text.is_empty()
    {
        return Err(AppError::NothingToSay);
    }
    let (ev_tx, mut ev_rx) = mpsc::channel::<Event>(EVENT_EDGE);
    let Speaking {
        sentences: sent_tx,
        tts_thread,
        player,
        info,
        ..
    } = start_speaking(
        cfg,
        &opts.voice,
        opts.output.clone(),
        &ev_tx,
        SpeakerTaps::default(),
    )
    .await?;

    let turn = Turn::next(&root);
    let max_chars = cfg.tts.max_sentence_chars as usize;
    let (voice, speed) = (opts.voice.clone(), opts.speed);
    let feeder_events = ev_tx.clone();
    drop(ev_tx);
    let started = std::time::Instant::now();
    let feeder = tokio::spawn(feed(
        opts.input,
        sent_tx,
        turn,
        voice,
        speed,
        max_chars,
        feeder_events,
    ));

    let mut summary = SaySummary {
        load_ms: info.load_ms + info.warmup_ms,
        ..Default::default()
    };
    while let Some(ev) = ev_rx.recv().await {
        match &ev {
            Event::Playing { .. } if summary.first_audio_ms.is_none() => {
                summary.first_audio_ms = Some(started.elapsed().as_millis() as u64);
            }
            Event::Spoken {
                played_ms,
                interrupted,
                ..
            } => {
                summary.played_ms = *played_ms;
                summary.interrupted = *interrupted;
            }
            _ => {}
        }
        on_event(&ev);
    }
    let _ = feeder.await;
    Speaking::join(tts_thread, player)
        .await
        .map_err(|_| AppError::Thread("playback"))??;
    Ok(summary)
}

/// Feeds `input` to TTS as sentences of `turn`, then the end-of-answer marker (playback
/// reports the turn when it has played it all).
async fn feed(
    input: SayInput,
    sent_tx: mpsc::Sender<Speech>,
    turn: Turn,
    voice: String,
    speed: f32,
    max_chars: usize,
    feeder_events: mpsc::Sender<Event>,
) {
    let mut index = 0u32;
    let make = |text: String, index: u32| {
        Speech::Say(Sentence {
            turn: turn.clone(),
            index,
            text,
            voice: voice.clone(),
            reading: None,
            speed,
        })
    };
    match input {
        SayInput::Text(t) => {
            for s in split_all(&t, max_chars) {
                if sent_tx.send(make(s, index)).await.is_err() {
                    return;
                }
                index += 1;
            }
        }
        SayInput::Stdin => {
            // Lines arrive on a blocking reader thread; each line is fed to the
            // splitter, so a sentence is spoken as soon as it is complete.
            let (line_tx, mut line_rx) = mpsc::channel::<std::io::Result<String>>(SENTENCE_EDGE);
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::stdin().lock().lines() {
                    let stop = line.is_err();
                    if line_tx.blocking_send(line).is_err() || stop {
                        return;
                    }
                }
            });
            let mut splitter = SentenceSplitter::new(max_chars);
            loop {
                let line = tokio::select! {
                    _ = turn.token.cancelled() => return,
                    l = line_rx.recv() => l,
                };
                let Some(line) = line else { break };
                let line = match line {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = feeder_events
                            .send(Event::Error {
                                stage: "input",
                                message: format!("stdin: {e} (only UTF-8 text can be spoken)"),
                            })
                            .await;
                        break;
                    }
                };
                for s in splitter.push(&format!("{line}\n")) {
                    if sent_tx.send(make(s, index)).await.is_err() {
                        return;
                    }
                    index += 1;
                }
            }
            if let Some(s) = splitter.finish() {
                let _ = sent_tx.send(make(s, index)).await;
                index += 1;
            }
        }
    }
    // The end-of-answer marker: playback reports the turn when it has played it all.
    let _ = sent_tx.send(Speech::End { turn, index }).await;
}
