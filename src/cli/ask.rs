//! `panda ask`: typed questions through the thinking path, answers streamed to stdout.
use std::io::Write;

use panda::config::Config;
use panda::exit;
use tokio_util::sync::CancellationToken;

use super::exit::{Exit, fail};
use panda::app;

use super::output::{audio_output, print_json};
use super::{AskArgs, cancel_on_signals, runtime};

pub fn run(cfg: &Config, a: AskArgs) -> Result<(), Exit> {
    let questions: Vec<String> = if a.questions == ["-"] {
        use std::io::BufRead;
        std::io::stdin()
            .lock()
            .lines()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                fail(
                    exit::DATA_ERR,
                    format!("stdin: {e} (questions must be UTF-8 text)"),
                )
            })?
            .into_iter()
            .filter(|l| !l.trim().is_empty())
            .collect()
    } else {
        a.questions
    };
    if questions.iter().all(|q| q.trim().is_empty()) {
        return Err(fail(exit::USAGE, "nothing to ask: the question is empty"));
    }
    let speak = if a.no_speak {
        None
    } else {
        Some(audio_output(cfg, a.output, 24_000, false, None, false))
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
                    print_json(ev);
                }
            },
            on_text,
        )
        .await
    })?;
    Ok(())
}
