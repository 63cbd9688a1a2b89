//! `panda bench …`: benchmarks that print figures and ratios (accuracy beside speed).
use panda::config::Config;

use super::exit::Exit;
use super::{BenchCmd, runtime};

pub fn run(cfg: &Config, cmd: BenchCmd) -> Result<(), Exit> {
    match cmd {
        BenchCmd::Stt {
            clips,
            list_clips: true,
            ..
        } => panda::bench::list_clips(cfg, clips.as_deref())?,
        BenchCmd::Stt { clips, peer, .. } => {
            panda::bench::stt(cfg, clips.as_deref(), peer.as_deref())?
        }
        BenchCmd::Listen { minutes } => panda::bench::listen(cfg, minutes)?,
        BenchCmd::Wake {
            thresholds,
            first_stage,
            voices,
        } => {
            use panda::bench::wake::WakeSet;
            let which = if voices {
                WakeSet::OtherVoices
            } else {
                WakeSet::Kokoro
            };
            if first_stage {
                panda::bench::wake::first_stage(cfg, &thresholds, which)?
            } else {
                runtime()?.block_on(panda::bench::wake::run(cfg, &thresholds, which))?
            }
        }
        BenchCmd::Agents {
            requests,
            concurrency,
        } => panda::bench::agents(requests, concurrency)?,
        BenchCmd::Aec { minutes, trials } => panda::bench::aec::run(cfg, minutes, trials)?,
        BenchCmd::Route => panda::bench::route(cfg)?,
        BenchCmd::Wyoming {
            clients,
            per_client,
        } => runtime()?.block_on(panda::bench::wyoming::run(cfg, &clients, per_client))?,
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
