//! `panda run`: the appliance, on devices or from a recording into a WAV file.
use std::io::Write;
use std::time::Duration;

use panda::config::Config;
use panda::exit;
use tokio_util::sync::CancellationToken;

use super::exit::{Exit, fail};
use panda::app::{self, Input};

use super::output::{audio_output, file_spec, print_json};
use super::{RunArgs, cancel_on_signals, runtime};

pub fn run(cfg: &Config, a: RunArgs) -> Result<(), Exit> {
    let mut with_satellite;
    let cfg = if a.satellite && !cfg.satellite.enabled {
        with_satellite = cfg.clone();
        with_satellite.satellite.enabled = true;
        &with_satellite
    } else {
        cfg
    };
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
    // On a device the appliance keeps running without its speaker (the page shows why)
    // and picks it up again when it is back.
    let output = audio_output(cfg, a.output, 24_000, a.realtime, a.output_device, true);
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
            if json {
                return print_json(ev);
            }
            let mut out = std::io::stdout().lock();
            match ev {
                panda::event::Event::Transcript { text, .. } if !text.is_empty() => {
                    let _ = writeln!(out, "heard:  {text}");
                }
                panda::event::Event::Answer { text, .. } => {
                    let _ = writeln!(out, "answer: {text}");
                }
                _ => {}
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
        return Err(fail(exit::DATA_ERR, "nothing to answer"));
    }
    tracing::info!(
        turns = summary.turns,
        dropped = summary.frames_dropped,
        "stopped"
    );
    Ok(())
}
