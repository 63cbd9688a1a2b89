//! `panda doctor`: checks an installation the way a support person would, one line per
//! check — OK, or FAIL with the fix. Runs on the CLI's runtime; each check is
//! independent, so one failure never hides the others.

use std::path::Path;
use std::time::Duration;

use crate::config::{Config, LlmBackend};

/// One check's outcome.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Check {
    /// What was checked.
    pub name: String,
    /// It passed.
    pub ok: bool,
    /// What was found.
    pub detail: String,
    /// How to fix it (failures only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

fn ok(name: &str, detail: impl Into<String>) -> Check {
    Check {
        name: name.into(),
        ok: true,
        detail: detail.into(),
        fix: None,
    }
}

fn fail(name: &str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
    Check {
        name: name.into(),
        ok: false,
        detail: detail.into(),
        fix: Some(fix.into()),
    }
}

/// One audio device line: `want` (a name, or `default` when the host has a usable
/// default) among the host's `names` (`kind`: "inputs" or "outputs").
fn device_check(
    name: &str,
    kind: &str,
    want: &str,
    names: &[String],
    has_default: bool,
    fix: &str,
) -> Check {
    let mut listed = names.iter().take(4).cloned().collect::<Vec<_>>().join(", ");
    if names.len() > 4 {
        listed.push_str(&format!(", … {} more", names.len() - 4));
    }
    if (want == "default" && has_default) || names.iter().any(|n| n == want) {
        ok(name, format!("{want:?} found ({kind}: {listed})"))
    } else {
        fail(
            name,
            format!("{want:?} cannot be opened ({kind}: [{listed}])"),
            fix,
        )
    }
}

/// Free bytes on the file system holding `path` (or its nearest existing parent).
fn free_bytes(path: &Path) -> Option<u64> {
    let mut p = path.to_path_buf();
    while !p.exists() {
        p = p.parent()?.to_path_buf();
        if p.as_os_str().is_empty() {
            p = ".".into();
        }
    }
    let out = std::process::Command::new("df")
        .args(["-Pk"])
        .arg(&p)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().nth(1)?;
    let avail_kb: u64 = line.split_whitespace().nth(3)?.parse().ok()?;
    Some(avail_kb * 1024)
}

async fn http_ok(client: &reqwest::Client, url: &str) -> Result<u16, String> {
    match client.get(url).send().await {
        Ok(r) if r.status().is_success() => Ok(r.status().as_u16()),
        Ok(r) => Err(format!("HTTP {}", r.status().as_u16())),
        Err(e) => Err(crate::think::describe(e)),
    }
}

/// Runs every check.
pub async fn run(cfg: &Config) -> Vec<Check> {
    let mut out = Vec::new();
    out.push(ok(
        "configuration",
        "valid (defaults < /etc/panda/panda.toml < --config < PANDA_* variables)",
    ));

    // Models and their checksums.
    let dir = cfg.models.dir.clone();
    let d2 = dir.clone();
    match tokio::task::spawn_blocking(move || crate::models::verify(&d2)).await {
        Ok(Ok(n)) => out.push(ok(
            "models",
            format!("{n} files match their sha256 in {}", dir.display()),
        )),
        Ok(Err(e)) => out.push(fail("models", e.to_string(), "run `panda models install`")),
        Err(e) => out.push(fail("models", e.to_string(), "run `panda models install`")),
    }

    // ONNX Runtime.
    let lib = cfg.model_path(Path::new(crate::onnx::ORT_LIB));
    match crate::onnx::environment(&lib) {
        Ok(_) => out.push(ok("ONNX Runtime", format!("{} loads", lib.display()))),
        Err(e) => out.push(fail(
            "ONNX Runtime",
            e.to_string(),
            "run `panda models install` (it installs the library)",
        )),
    }

    // Audio devices. Listing is not enough (ALSA lists plugins with no sound server
    // behind them): the default device must also describe its configuration.
    let default_in = {
        use cpal::traits::{DeviceTrait, HostTrait};
        cpal::default_host()
            .default_input_device()
            .is_some_and(|d| d.default_input_config().is_ok())
    };
    out.push(device_check(
        "microphone",
        "inputs",
        &cfg.audio.input_device,
        &crate::audio::device::names(crate::audio::device::Direction::Input),
        default_in,
        "plug in the microphone, check `arecord -l` and udev/99-panda-audio.rules (group audio), or set [audio] input_device",
    ));
    let default_out = {
        use cpal::traits::{DeviceTrait, HostTrait};
        cpal::default_host()
            .default_output_device()
            .is_some_and(|d| d.default_output_config().is_ok())
    };
    out.push(device_check(
        "speaker",
        "outputs",
        &cfg.playback.output_device,
        &crate::audio::device::names(crate::audio::device::Direction::Output),
        default_out,
        "plug in the speaker, check `aplay -l` and the udev rules, or set [playback] output_device",
    ));

    // Network peers.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .no_proxy()
        .build()
        .unwrap_or_default();
    if cfg.llm.enabled {
        let base = cfg.llm.url.trim_end_matches('/');
        let probe = match cfg.llm.backend {
            LlmBackend::Ollama => format!("{base}/api/tags"),
            LlmBackend::Openai => format!("{base}/v1/models"),
        };
        match http_ok(&client, &probe).await {
            Ok(_) => out.push(ok("language model", format!("{base} answers"))),
            Err(e) => out.push(fail(
                "language model",
                format!("{probe}: {e}"),
                "start the LLM server (scripts/llm-server.sh, or Ollama) or set [llm] url; built-in skills and memory work without it",
            )),
        }
    } else {
        out.push(ok("language model", "disabled ([llm] enabled = false)"));
    }
    for a in &cfg.agents {
        let url = format!("{}{}", a.url.trim_end_matches('/'), a.health_path);
        match http_ok(&client, &url).await {
            Ok(_) => out.push(ok(&format!("agent {}", a.name), format!("{url} healthy"))),
            Err(e) => out.push(fail(
                &format!("agent {}", a.name),
                format!("{url}: {e}"),
                format!("start the {} service or fix its url in [[agents]]; Panda says it cannot reach it meanwhile", a.name),
            )),
        }
    }

    // State: disk space and the memory database.
    let state = cfg.state.dir.clone();
    match free_bytes(&state) {
        Some(b) if b >= 200 * 1024 * 1024 => out.push(ok(
            "disk space",
            format!("{} MB free for {}", b / 1_000_000, state.display()),
        )),
        Some(b) => out.push(fail(
            "disk space",
            format!("only {} MB free for {}", b / 1_000_000, state.display()),
            "free space: memory and timers need room to commit",
        )),
        None => out.push(fail(
            "disk space",
            format!("cannot measure {}", state.display()),
            "check [state] dir",
        )),
    }
    if cfg.memory.enabled {
        let path = cfg.memory_path();
        let mcfg = cfg.memory.clone();
        let p2 = path.clone();
        let opened = tokio::task::spawn_blocking(move || {
            if let Some(d) = p2.parent() {
                let _ = std::fs::create_dir_all(d);
            }
            crate::memory::Store::open(&p2, &mcfg)
        })
        .await;
        match opened {
            Ok(Ok(store)) => {
                let n = store.stats().await.map(|s| s.total).unwrap_or(0);
                let _ = store.close().await;
                out.push(ok(
                    "memory",
                    format!("{} opens ({n} memories)", path.display()),
                ));
            }
            Ok(Err(e)) => out.push(fail(
                "memory",
                e.to_string(),
                "see the message; `panda memory stats` shows the same",
            )),
            Err(e) => out.push(fail("memory", e.to_string(), "report this")),
        }
    }

    // The status page's port.
    if cfg.web.enabled {
        match tokio::net::TcpListener::bind(&cfg.web.listen).await {
            Ok(_) => out.push(ok("status page", format!("{} is free", cfg.web.listen))),
            Err(e) => out.push(fail(
                "status page",
                format!("{}: {e}", cfg.web.listen),
                "another program (or a running Panda) uses the port: change [web] listen",
            )),
        }
    }
    out
}
