//! Microphone capture through cpal.
//!
//! One thread per capture session (`panda-capture`) opens the device — cpal streams are not
//! `Send` on every host, so the stream lives and dies on the thread that built it — and then
//! doubles as the DSP thread: it drains the ring, down-mixes, resamples and frames.
//!
//! The cpal data callback runs on the audio host's real-time thread. It only copies samples
//! into a pre-allocated lock-free SPSC ring (rtrb): no locks, no allocation, no logging.
//! When the ring is full the callback drops the rest of its buffer and counts it
//! ([`CaptureStats::samples_dropped`]); the DSP thread never blocks the callback.
//! Frames leave through the pipeline's audio edge with `try_send`: when the listener lags,
//! frames are dropped and counted rather than queued without bound.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cpal::traits::{DeviceTrait, StreamTrait};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::dsp::Framer;
use super::{AudioError, EdgeStats};
use crate::event::AudioFrame;

/// How often the DSP thread drains the ring. 10 ms keeps added latency below a third of
/// a frame while costing nothing measurable.
const DRAIN_INTERVAL: Duration = Duration::from_millis(10);
/// How long an open device may deliver nothing before it counts as lost (and, in daemon
/// mode, is re-opened). Generous against scheduling hiccups on a loaded two-core board.
const STALL: Duration = Duration::from_secs(2);

/// Counters shared between the callback, the DSP thread and observers.
#[derive(Debug, Default)]
pub struct CaptureStats {
    /// Samples the callback could not fit into the ring.
    pub samples_dropped: AtomicU64,
    /// The audio edge towards the listener.
    pub edge: EdgeStats,
    /// Times the device was (re)opened.
    pub opens: AtomicU64,
    /// Number of the next frame; a re-opened device continues from it.
    pub next_seq: AtomicU64,
}

/// Opens `device` and streams frames into `tx` until `stop` is cancelled or the device
/// fails. Blocks the calling thread (use [`spawn_capture`]).
pub fn capture(
    device: &str,
    ring_capacity_ms: u32,
    tx: &mpsc::Sender<AudioFrame>,
    stop: &CancellationToken,
    stats: &Arc<CaptureStats>,
) -> Result<(), AudioError> {
    let dev = super::device::find(device, super::device::Direction::Input)?;
    let failed = |problem: String| AudioError::Device {
        name: device.to_string(),
        problem,
    };
    let supported = dev
        .default_input_config()
        .map_err(|e| failed(format!("no usable input configuration: {e}")))?;
    let rate = supported.sample_rate();
    let channels = supported.channels();
    let capacity = (rate as usize * channels as usize * ring_capacity_ms as usize) / 1000;
    let (mut producer, mut consumer) = rtrb::RingBuffer::<f32>::new(capacity);
    let (err_tx, err_rx) = std::sync::mpsc::sync_channel::<String>(1);
    let cb_stats = stats.clone();
    let config: cpal::StreamConfig = supported.config();

    // One callback body for every sample type: convert while copying into the ring.
    macro_rules! build {
        ($t:ty, $conv:expr) => {{
            let err_tx = err_tx.clone();
            dev.build_input_stream::<$t, _, _>(
                config.clone(),
                move |data: &[$t], _| {
                    let n = data.len().min(producer.slots());
                    if let Ok(chunk) = producer.write_chunk_uninit(n) {
                        chunk.fill_from_iter(data[..n].iter().map($conv));
                    }
                    if n < data.len() {
                        cb_stats
                            .samples_dropped
                            .fetch_add((data.len() - n) as u64, Ordering::Relaxed);
                    }
                },
                move |e| {
                    let _ = err_tx.try_send(e.to_string());
                },
                None,
            )
        }};
    }
    let stream = match supported.sample_format() {
        cpal::SampleFormat::F32 => build!(f32, |&s| s),
        cpal::SampleFormat::I16 => build!(i16, |&s| s as f32 / 32768.0),
        cpal::SampleFormat::I32 => build!(i32, |&s| s as f32 / 2_147_483_648.0),
        cpal::SampleFormat::U16 => build!(u16, |&s| (s as f32 - 32768.0) / 32768.0),
        other => return Err(failed(format!("unsupported sample format {other:?}"))),
    }
    .map_err(|e| failed(format!("cannot open input stream: {e}")))?;
    stream
        .play()
        .map_err(|e| failed(format!("cannot start input stream: {e}")))?;
    stats.opens.fetch_add(1, Ordering::Relaxed);
    tracing::info!(device, rate, channels, "capture started");

    let mut framer = Framer::new(rate, channels);
    framer.continue_from(stats.next_seq.load(Ordering::Relaxed));
    let mut scratch = vec![0.0f32; capacity];
    let mut last_audio = std::time::Instant::now();
    loop {
        if stop.is_cancelled() {
            // Closed on a throwaway thread here too: a sound server that dies during
            // shutdown deadlocks the close, and shutdown must end regardless.
            super::abandon("microphone", stream);
            return Ok(());
        }
        if let Ok(e) = err_rx.try_recv() {
            super::abandon("microphone", stream);
            return Err(failed(e));
        }
        let n = consumer.slots();
        if n == 0 && last_audio.elapsed() > STALL {
            // A lost sound server does not always raise a stream error: the callbacks
            // just stop. A microphone delivers silence too, so no audio at all is a loss.
            super::abandon("microphone", stream);
            return Err(failed(format!(
                "the device delivered no audio for {} ms",
                STALL.as_millis()
            )));
        }
        if n > 0 {
            last_audio = std::time::Instant::now();
            let chunk = consumer.read_chunk(n).expect("n slots are readable");
            let (a, b) = chunk.as_slices();
            scratch[..a.len()].copy_from_slice(a);
            scratch[a.len()..a.len() + b.len()].copy_from_slice(b);
            chunk.commit_all();
            let mut open = true;
            framer.push(&scratch[..n], &mut |f| open &= stats.edge.offer(tx, f));
            stats.next_seq.store(framer.frames(), Ordering::Relaxed);
            if !open {
                super::abandon("microphone", stream);
                return Ok(());
            }
        }
        std::thread::sleep(DRAIN_INTERVAL);
    }
}

/// Runs [`capture`] on its own thread. With `retry`, a missing or failed device is
/// reported and re-opened after `retry_delay` until `stop` is cancelled (daemon mode);
/// without it the first error ends the thread and comes back through the join handle.
pub fn spawn_capture(
    device: String,
    ring_capacity_ms: u32,
    retry: Option<Duration>,
    tx: mpsc::Sender<AudioFrame>,
    stop: CancellationToken,
    stats: Arc<CaptureStats>,
) -> std::thread::JoinHandle<Result<(), AudioError>> {
    std::thread::Builder::new()
        .name("panda-capture".into())
        .spawn(move || {
            loop {
                let r = capture(&device, ring_capacity_ms, &tx, &stop, &stats);
                match (r, retry) {
                    (Ok(()), _) => return Ok(()),
                    // Shutdown while retrying is a clean stop, not a device failure.
                    (Err(_), Some(_)) if stop.is_cancelled() => return Ok(()),
                    (Err(e), Some(delay)) if !stop.is_cancelled() => {
                        tracing::error!(error = %e, retry_in_ms = delay.as_millis() as u64, "audio capture unavailable");
                        // Wait in short steps so shutdown is not held up by the retry delay.
                        let until = std::time::Instant::now() + delay;
                        while std::time::Instant::now() < until && !stop.is_cancelled() {
                            std::thread::sleep(DRAIN_INTERVAL * 10);
                        }
                    }
                    (Err(e), _) => return Err(e),
                }
            }
        })
        .expect("spawning a thread only fails when the OS is out of resources")
}
