//! `panda doctor`: one line per check, OK or FAIL with the fix.
use std::io::Write;

use panda::config::Config;
use panda::exit;

use super::exit::{Exit, fail};
use super::runtime;

pub fn run(cfg: &Config, json: bool) -> Result<(), Exit> {
    let checks = runtime()?.block_on(panda::doctor::run(cfg));
    let mut out = std::io::stdout().lock();
    for c in &checks {
        if json {
            let _ = writeln!(out, "{}", serde_json::to_string(c).unwrap_or_default());
        } else if c.ok {
            let _ = writeln!(out, "OK    {:<16} {}", c.name, c.detail);
        } else {
            let _ = writeln!(out, "FAIL  {:<16} {}", c.name, c.detail);
            if let Some(f) = &c.fix {
                let _ = writeln!(out, "      {:<16} fix: {f}", "");
            }
        }
    }
    let failed = checks.iter().filter(|c| !c.ok).count();
    if failed > 0 {
        return Err(fail(
            exit::UNAVAILABLE,
            format!("{failed} of {} checks failed", checks.len()),
        ));
    }
    Ok(())
}
