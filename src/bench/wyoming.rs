//! `panda bench wyoming`: Panda as a Wyoming speech-to-text hub. N concurrent clients,
//! each sending voice commands (2–3 s, unseen Kokoro voices) over its own connection per
//! command as Home Assistant does; prints commands per second, p50/p95 latency per
//! command (audio-stop → transcript), errors and the word error rate side by side, and
//! `describe` → `info` latency. The server is the real one (`panda serve`'s), in process,
//! on a loopback port.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::BufReader;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::BenchError;
use crate::config::Config;
use crate::wyoming::codec::{Event, read_event, write_event};

/// The commands the clients say.
const COMMANDS: &[&str] = &[
    "Turn on the kitchen lights.",
    "Set a timer for ten minutes.",
    "What's the weather like tomorrow?",
    "Play some relaxing music in the living room.",
    "Turn off the bedroom fan.",
    "What time is it in Tokyo?",
];

/// One command over a fresh connection; (latency from audio-stop to transcript, text).
async fn command(addr: &str, pcm: &[i16]) -> Result<(Duration, String), String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let fmt = |e: Event| e.with("rate", 16_000).with("width", 2).with("channels", 1);
    let io = |e: crate::wyoming::codec::CodecError| e.to_string();
    write_event(&mut w, &Event::new("transcribe").with("language", "en"))
        .await
        .map_err(io)?;
    write_event(&mut w, &fmt(Event::new("audio-start")))
        .await
        .map_err(io)?;
    // 100 ms chunks, as a satellite streams them (sent at once: the recording exists).
    for chunk in pcm.chunks(1_600) {
        let bytes = chunk.iter().flat_map(|s| s.to_le_bytes()).collect();
        write_event(&mut w, &fmt(Event::new("audio-chunk")).with_payload(bytes))
            .await
            .map_err(io)?;
    }
    write_event(&mut w, &Event::new("audio-stop"))
        .await
        .map_err(io)?;
    let t0 = Instant::now();
    loop {
        match read_event(&mut r).await.map_err(io)? {
            Some(ev) if ev.kind == "transcript" => {
                return Ok((t0.elapsed(), ev.str("text").unwrap_or("").to_string()));
            }
            Some(ev) if ev.kind == "error" => {
                return Err(ev.str("text").unwrap_or("error").to_string());
            }
            Some(_) => {}
            None => return Err("closed".into()),
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Runs the benchmark with each of `clients` concurrent clients sending `per_client`
/// commands.
pub async fn run(cfg: &Config, clients: &[usize], per_client: usize) -> Result<(), BenchError> {
    use crate::models::install::paths;
    // The commands, said by unseen voices.
    let models = &cfg.models.dir;
    let mut k = crate::speak::kokoro::Kokoro::load(
        &models.join(paths::KOKORO_DIR),
        &models.join(paths::ORT_LIB),
        2,
    )?;
    let mut said: Vec<(String, Vec<i16>)> = Vec::new();
    for (i, text) in COMMANDS.iter().enumerate() {
        let voice = super::UNSEEN_VOICES[i % super::UNSEEN_VOICES.len()];
        let audio = super::wake::say_16k(&mut k, text, voice, 1.0)?;
        let pcm = audio
            .iter()
            .map(|&s| crate::audio::dsp::f32_to_i16(s))
            .collect();
        said.push((text.to_string(), pcm));
    }
    drop(k);
    let audio_s: f64 =
        said.iter().map(|(_, p)| p.len() as f64).sum::<f64>() / said.len() as f64 / 16_000.0;
    // Whisper's own error type, so a missing model is named as such.
    let cfg2 = cfg.clone();
    let (stt, _worker) =
        tokio::task::spawn_blocking(move || crate::listen::stt::spawn_configured(&cfg2))
            .await
            .map_err(|_| BenchError::Synth("the Whisper loader panicked".into()))??;
    let kinds = vec!["asr".to_string()];
    let services = crate::app::wyoming::services(cfg, &kinds, Some(stt), None);
    let stop = CancellationToken::new();
    let serving = crate::app::wyoming::start(cfg, "tcp://127.0.0.1:0", services, stop.clone())
        .await
        .map_err(|e| BenchError::Synth(e.to_string()))?;
    let addr = serving.addr.trim_start_matches("tcp://").to_string();

    // describe → info.
    let mut info_ms = Vec::new();
    for _ in 0..20 {
        let t0 = Instant::now();
        let s = TcpStream::connect(&addr).await?;
        let (r, mut w) = s.into_split();
        let mut r = BufReader::new(r);
        let _ = write_event(&mut w, &Event::new("describe")).await;
        let _ = read_event(&mut r).await;
        info_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    info_ms.sort_by(f64::total_cmp);
    println!(
        "panda bench wyoming — Whisper {} over Wyoming on loopback, commands of {audio_s:.1} s on average ({} unseen voices)",
        cfg.stt.model.display(),
        said.len()
    );
    println!(
        "describe → info: p50 {:.2} ms, max {:.2} ms",
        info_ms[info_ms.len() / 2],
        info_ms[info_ms.len() - 1]
    );
    println!(
        "{:>7} {:>10} {:>9} {:>9} {:>7} {:>6}",
        "clients", "commands/s", "p50", "p95", "errors", "WER"
    );
    let said = Arc::new(said);
    for &n in clients {
        let t0 = Instant::now();
        let mut tasks = Vec::new();
        for c in 0..n {
            let (said, addr) = (said.clone(), addr.clone());
            tasks.push(tokio::spawn(async move {
                let mut out = Vec::new();
                for j in 0..per_client {
                    let (text, pcm) = &said[(c + j) % said.len()];
                    out.push((text.clone(), command(&addr, pcm).await));
                }
                out
            }));
        }
        let mut lat = Vec::new();
        let (mut errors, mut wer_sum, mut done) = (0, 0.0, 0);
        for t in tasks {
            for (text, r) in t.await.unwrap_or_default() {
                match r {
                    Ok((d, heard)) => {
                        lat.push(d);
                        wer_sum += super::wer(&text, &heard);
                        done += 1;
                    }
                    Err(e) => {
                        errors += 1;
                        tracing::debug!(error = e, "bench wyoming: command failed");
                    }
                }
            }
        }
        let wall = t0.elapsed().as_secs_f64();
        lat.sort();
        println!(
            "{n:>7} {:>10.2} {:>7.0}ms {:>7.0}ms {errors:>7} {:>5.1}%",
            done as f64 / wall,
            percentile(&lat, 0.5).as_secs_f64() * 1000.0,
            percentile(&lat, 0.95).as_secs_f64() * 1000.0,
            100.0 * wer_sum / done.max(1) as f64,
        );
    }
    println!(
        "(one Whisper context serves the commands one at a time: commands/s is bounded by 1 / (Whisper time per command); more clients only queue — p95 grows with them. Seed target: ≥ 10 commands/s at p95 ≤ 2 s.)"
    );
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(1), serving.task).await;
    Ok(())
}
