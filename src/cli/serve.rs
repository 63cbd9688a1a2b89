//! `panda serve`: Panda's engines as Wyoming services, without the appliance.

use panda::config::Config;
use panda::exit;
use tokio_util::sync::CancellationToken;

use super::ServeArgs;
use super::exit::{Exit, fail};
use super::{cancel_on_signals, runtime};

pub fn run(cfg: &Config, a: ServeArgs) -> Result<(), Exit> {
    let listen = a
        .wyoming
        .or_else(|| Some(cfg.wyoming.listen.clone()).filter(|l| !l.is_empty()))
        .unwrap_or_else(|| "tcp://127.0.0.1:10300".into());
    let kinds = a.services.unwrap_or_else(|| cfg.wyoming.services.clone());
    if let Some(bad) = kinds
        .iter()
        .find(|k| !matches!(k.as_str(), "asr" | "tts" | "wake"))
    {
        return Err(fail(
            exit::USAGE,
            format!("--services: {bad:?} is not one of asr, tts, wake"),
        ));
    }
    let rt = runtime()?;
    rt.block_on(async {
        let root = CancellationToken::new();
        cancel_on_signals(&root);
        panda::app::wyoming::serve(cfg, &listen, &kinds, root, |addr| {
            // Scripts wait for this line.
            eprintln!("panda: serving Wyoming ({}) on {addr}", kinds.join(", "));
        })
        .await
    })?;
    Ok(())
}
