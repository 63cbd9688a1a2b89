//! `panda models install|verify`.
use panda::config::Config;
use panda::models::{self, install};

use super::ModelsCmd;
use super::exit::Exit;

pub fn run(cfg: &Config, cmd: ModelsCmd) -> Result<(), Exit> {
    match cmd {
        ModelsCmd::Install {
            dir,
            cache,
            test_data,
            rebuild_wake,
            wake_head,
        } => {
            install::install(
                install::InstallOptions {
                    dir: dir.unwrap_or_else(|| cfg.models.dir.clone()),
                    cache: cache.unwrap_or_else(install::default_cache),
                    test_data,
                    rebuild_wake,
                    wake_head,
                },
                &panda::listen::templates::DefaultTemplates,
            )?;
        }
        ModelsCmd::Verify { dir } => {
            let dir = dir.unwrap_or_else(|| cfg.models.dir.clone());
            let n = models::verify(&dir)?;
            println!("{n} files verified in {}", dir.display());
        }
    }
    Ok(())
}
