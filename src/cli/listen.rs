//! `panda listen` (events as JSON lines), `panda transcribe` and `panda enroll`.
use std::path::PathBuf;
use std::time::Duration;

use panda::config::Config;
use tokio_util::sync::CancellationToken;

use super::exit::{Exit, fail};
use panda::app::{self, AppError, Input, ListenOptions};
use panda::audio::file::FileFormat;

use super::output::{file_spec, print_json};
use super::{ListenArgs, cancel_on_signals, runtime};

pub fn listen(cfg: &Config, a: ListenArgs) -> Result<(), Exit> {
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
            return Err(fail(2, "give a FILE (or - for stdin) or --device NAME"));
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
        let summary = app::listen(cfg, opts, root, print_json).await?;
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

pub fn transcribe(cfg: &Config, file: PathBuf, raw: bool) -> Result<(), Exit> {
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
    let (stt, _worker) = panda::listen::stt::spawn_configured(cfg)?;
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

pub fn enroll(
    cfg: &Config,
    name: &str,
    out: Option<PathBuf>,
    files: &[PathBuf],
) -> Result<(), Exit> {
    if files.len() < 3 {
        return Err(fail(2, "give at least 3 recordings of the wake word"));
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
    let out = out.unwrap_or_else(|| cfg.model_path(&cfg.wake.owner_model));
    panda::listen::wake::build_reference(name, &clips, &out)?;
    println!(
        "wake word {name:?} written to {} (used beside the shipped wake word when it is [wake] owner_model)",
        out.display()
    );
    Ok(())
}
