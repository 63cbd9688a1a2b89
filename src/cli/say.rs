//! `panda say` (text → speech) and `panda voices`.

use panda::config::Config;
use panda::exit;
use tokio_util::sync::CancellationToken;

use super::exit::{Exit, fail};
use panda::app::{self, SayInput, SayOptions};
use panda::speak::kokoro::KokoroError;

use super::output::{audio_output, print_json};
use super::{SayArgs, cancel_on_signals, runtime};

pub fn say(cfg: &Config, a: SayArgs) -> Result<(), Exit> {
    let speed = a.speed.unwrap_or(cfg.tts.speed);
    if !panda::config::SPEED_RANGE.contains(&speed) {
        return Err(fail(
            exit::USAGE,
            format!("--speed {speed} is not in {:?}", panda::config::SPEED_RANGE),
        ));
    }
    let input = if a.text == "-" {
        SayInput::Stdin
    } else {
        SayInput::Text(a.text)
    };
    let output = audio_output(cfg, a.output, a.rate, a.realtime, a.device, false);
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
        app::say(cfg, opts, root, |ev| {
            if json {
                print_json(ev);
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

pub fn voices(cfg: &Config) -> Result<(), Exit> {
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
