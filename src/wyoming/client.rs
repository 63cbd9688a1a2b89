//! A Wyoming ASR client: Panda's questions transcribed by a remote engine (e.g.
//! `wyoming-faster-whisper` on a bigger box, or another Panda's `panda serve`).
//!
//! It runs on the async runtime, in the STT stage's task: network I/O only, bounded by
//! one deadline per request. Wyoming has no request ids, so every request gets a fresh
//! TCP connection, as Home Assistant does (the servers close it after the transcript);
//! there is nothing to pool, and "reconnecting" is simply the next request. Dropping the
//! future (the turn was cancelled) closes the connection, which a Wyoming server takes
//! as the end of the request.

use std::time::Duration;

use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::codec::{CodecError, Event, read_event, write_event};

/// Samples per `audio-chunk`: 1,024 at 16 kHz (64 ms), what the Python client sends.
const SAMPLES_PER_CHUNK: usize = 1024;

/// Events a server may send before the transcript (`transcript-start`,
/// `transcript-chunk`, and whatever a newer server adds); past this it is not
/// answering the request.
const MAX_EVENTS_BEFORE_TRANSCRIPT: usize = 10_000;

/// Errors of a remote transcription.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The configured address is not `tcp://HOST:PORT`.
    #[error("wyoming address {0:?} is not tcp://HOST:PORT")]
    BadAddress(String),
    /// The server could not be reached.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// `HOST:PORT`.
        addr: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The connection failed or the server sent a malformed frame.
    #[error("{0}")]
    Protocol(#[from] CodecError),
    /// The server answered with an `error` event.
    #[error("the server said: {0}")]
    Remote(String),
    /// The server closed the connection before the transcript.
    #[error("the server closed the connection before the transcript")]
    Closed,
    /// The server sent events but no transcript.
    #[error("no transcript after {MAX_EVENTS_BEFORE_TRANSCRIPT} events")]
    NoTranscript,
    /// No transcript within the deadline.
    #[error("no transcript within {0} ms")]
    Timeout(u64),
    /// The turn was cancelled.
    #[error("cancelled")]
    Cancelled,
}

/// A remote ASR service.
#[derive(Debug, Clone)]
pub struct AsrClient {
    /// `HOST:PORT`.
    addr: String,
    /// Connect + send + transcript.
    timeout: Duration,
}

impl AsrClient {
    /// A client of the service at `tcp://HOST:PORT`.
    pub fn new(url: &str, timeout: Duration) -> Result<Self, ClientError> {
        let addr = url
            .strip_prefix("tcp://")
            .filter(|a| {
                a.rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
            })
            .ok_or_else(|| ClientError::BadAddress(url.to_string()))?;
        Ok(Self {
            addr: addr.to_string(),
            timeout,
        })
    }

    /// `tcp://HOST:PORT`, for logs and the status page.
    pub fn url(&self) -> String {
        format!("tcp://{}", self.addr)
    }

    /// Transcribes 16 kHz mono samples; `language` is passed on when given.
    pub async fn transcribe(
        &self,
        samples: &[i16],
        language: Option<&str>,
        token: &CancellationToken,
    ) -> Result<String, ClientError> {
        let ms = self.timeout.as_millis() as u64;
        tokio::select! {
            _ = token.cancelled() => Err(ClientError::Cancelled),
            r = tokio::time::timeout(self.timeout, self.exchange(samples, language)) => {
                r.unwrap_or(Err(ClientError::Timeout(ms)))
            }
        }
    }

    async fn exchange(
        &self,
        samples: &[i16],
        language: Option<&str>,
    ) -> Result<String, ClientError> {
        let stream =
            TcpStream::connect(&self.addr)
                .await
                .map_err(|source| ClientError::Connect {
                    addr: self.addr.clone(),
                    source,
                })?;
        // Small frames, sent at once: latency matters more than packet count.
        let _ = stream.set_nodelay(true);
        let (rd, mut wr) = stream.into_split();
        let mut rd = BufReader::new(rd);
        let mut transcribe = Event::new("transcribe");
        if let Some(l) = language.filter(|l| !l.is_empty() && *l != "auto") {
            transcribe = transcribe.with("language", l);
        }
        write_event(&mut wr, &transcribe).await?;
        let format = |e: Event| e.with("rate", 16_000).with("width", 2).with("channels", 1);
        write_event(&mut wr, &format(Event::new("audio-start"))).await?;
        for chunk in samples.chunks(SAMPLES_PER_CHUNK) {
            let pcm: Vec<u8> = chunk.iter().flat_map(|s| s.to_le_bytes()).collect();
            write_event(
                &mut wr,
                &format(Event::new("audio-chunk")).with_payload(pcm),
            )
            .await?;
        }
        write_event(&mut wr, &format(Event::new("audio-stop"))).await?;
        wr.flush().await.map_err(CodecError::from)?;
        for _ in 0..MAX_EVENTS_BEFORE_TRANSCRIPT {
            let Some(ev) = read_event(&mut rd).await? else {
                return Err(ClientError::Closed);
            };
            match ev.kind.as_str() {
                "transcript" => return Ok(ev.str("text").unwrap_or("").trim().to_string()),
                "error" => {
                    return Err(ClientError::Remote(
                        ev.str("text").unwrap_or("(no text)").to_string(),
                    ));
                }
                // transcript-start/-chunk (streaming servers), pings, anything newer.
                _ => {}
            }
        }
        Err(ClientError::NoTranscript)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_tcp_host_port() {
        let t = Duration::from_secs(1);
        assert!(AsrClient::new("tcp://127.0.0.1:10300", t).is_ok());
        assert!(AsrClient::new("tcp://hub.local:10300", t).is_ok());
        for bad in [
            "127.0.0.1:10300",
            "tcp://",
            "tcp://host",
            "tcp://:10300",
            "tcp://h:99999",
            "unix:///x",
        ] {
            assert!(
                matches!(AsrClient::new(bad, t), Err(ClientError::BadAddress(_))),
                "{bad}"
            );
        }
    }

    /// A scripted server: reads the request, checks it, answers with `reply`.
    async fn one_shot(reply: Vec<Event>) -> (String, tokio::task::JoinHandle<Vec<Event>>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("tcp://{}", l.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let (rd, mut wr) = s.into_split();
            let mut rd = BufReader::new(rd);
            let mut got = Vec::new();
            while let Some(ev) = read_event(&mut rd).await.unwrap() {
                let stop = ev.kind == "audio-stop";
                got.push(ev);
                if stop {
                    break;
                }
            }
            for ev in reply {
                write_event(&mut wr, &ev).await.unwrap();
            }
            got
        });
        (url, task)
    }

    #[tokio::test]
    async fn sends_the_request_the_protocol_describes_and_reads_the_transcript() {
        let (url, server) = one_shot(vec![
            Event::new("transcript-start"),
            Event::new("transcript-chunk").with("text", "What"),
            Event::new("transcript").with("text", " What time is it? "),
        ])
        .await;
        let c = AsrClient::new(&url, Duration::from_secs(5)).unwrap();
        let samples = vec![8192i16; 3000];
        let text = c
            .transcribe(&samples, Some("en"), &CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(text, "What time is it?");
        let got = server.await.unwrap();
        let kinds: Vec<&str> = got.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "transcribe",
                "audio-start",
                "audio-chunk",
                "audio-chunk",
                "audio-chunk",
                "audio-stop"
            ]
        );
        assert_eq!(got[0].str("language"), Some("en"));
        assert_eq!(got[1].uint("rate"), Some(16_000));
        let bytes: usize = got.iter().map(|e| e.payload.len()).sum();
        assert_eq!(bytes, 3000 * 2, "every sample sent once, 16-bit");
        assert_eq!(
            i16::from_le_bytes([got[2].payload[0], got[2].payload[1]]),
            8192
        );
    }

    #[tokio::test]
    async fn a_server_error_a_hang_up_and_a_cancel_are_told_apart() {
        let (url, _s) = one_shot(vec![Event::new("error").with("text", "model not loaded")]).await;
        let c = AsrClient::new(&url, Duration::from_secs(5)).unwrap();
        let e = c
            .transcribe(&[0i16; 100], None, &CancellationToken::new())
            .await;
        assert!(
            matches!(&e, Err(ClientError::Remote(t)) if t == "model not loaded"),
            "{e:?}"
        );

        let (url, _s) = one_shot(vec![]).await;
        let c = AsrClient::new(&url, Duration::from_secs(5)).unwrap();
        let e = c
            .transcribe(&[0i16; 100], None, &CancellationToken::new())
            .await;
        assert!(matches!(e, Err(ClientError::Closed)), "{e:?}");

        // A server that accepts and never answers: the deadline, or the turn's cancel.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("tcp://{}", l.local_addr().unwrap());
        let _hold = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let (s2, _) = l.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop((s, s2));
        });
        let c = AsrClient::new(&url, Duration::from_millis(200)).unwrap();
        let e = c
            .transcribe(&[0i16; 100], None, &CancellationToken::new())
            .await;
        assert!(matches!(e, Err(ClientError::Timeout(200))), "{e:?}");
        let c = AsrClient::new(&url, Duration::from_secs(30)).unwrap();
        let token = CancellationToken::new();
        let t = token.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            t.cancel();
        });
        let e = c.transcribe(&[0i16; 100], None, &token).await;
        assert!(matches!(e, Err(ClientError::Cancelled)), "{e:?}");

        // Nobody listening.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let c = AsrClient::new(&format!("tcp://127.0.0.1:{port}"), Duration::from_secs(5)).unwrap();
        let e = c
            .transcribe(&[0i16; 100], None, &CancellationToken::new())
            .await;
        assert!(matches!(e, Err(ClientError::Connect { .. })), "{e:?}");
    }
}
