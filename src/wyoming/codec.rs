//! The Wyoming wire format: one event per frame.
//!
//! ```text
//! {"type": "audio-chunk", "version": "1.10.2", "data_length": 38, "payload_length": 3200}\n
//! {"rate": 16000, "width": 2, "channels": 1}      ← data_length bytes: a JSON object
//! <3200 bytes of PCM>                             ← payload_length bytes
//! ```
//!
//! What is accepted (what the Python `wyoming` library and the servers and clients built
//! on it send, checked against PyPI `wyoming` 1.10.2): `data` inline in the header, in the
//! data block, or both (the block's keys win); `data`, `data_length`, `payload_length`
//! and `version` missing or `null`; unknown header fields and unknown event types (the
//! caller ignores them). What is refused, with an error naming it: a header line longer
//! than [`MAX_HEADER_BYTES`], a data block that with the header passes that cap, a payload
//! over [`MAX_PAYLOAD_BYTES`], JSON that does not parse or is not an object, a header
//! without a `type`, and a stream that ends inside a frame. Reads are bounded before any
//! allocation: a peer cannot make Panda allocate more than the caps by announcing a size.
//!
//! What is written: always the header, `data` in a data block (as the Python library
//! does), `version`, and the payload if any.

use serde_json::{Map, Value};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Longest header line plus data block.
pub const MAX_HEADER_BYTES: usize = 1 << 20;
/// Largest payload (an audio chunk is usually a few kB; 16 MiB is 8 minutes of 16 kHz
/// 16-bit mono in one chunk).
pub const MAX_PAYLOAD_BYTES: usize = 16 << 20;
/// The protocol version Panda speaks (the Python library's at the time of writing).
pub const VERSION: &str = "1.10.2";

/// What can go wrong reading or writing a frame.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The connection failed.
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    /// The header line is longer than [`MAX_HEADER_BYTES`].
    #[error("header line longer than {MAX_HEADER_BYTES} bytes")]
    HeaderTooLong,
    /// The header or data block is not a JSON object.
    #[error("{part} is not a JSON object: {problem}")]
    BadJson {
        /// `header` or `data`.
        part: &'static str,
        /// What the parser said.
        problem: String,
    },
    /// The header has no `type`.
    #[error("header without a \"type\"")]
    NoType,
    /// A length field is negative, not a number, or past its cap.
    #[error("{field} {value} is not allowed (at most {max})")]
    TooLong {
        /// `data_length` or `payload_length`.
        field: &'static str,
        /// What the peer announced.
        value: String,
        /// The cap.
        max: usize,
    },
    /// The stream ended inside a frame.
    #[error("the connection ended inside a frame ({0})")]
    Truncated(&'static str),
}

/// One Wyoming event.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Event {
    /// `type`, e.g. `transcribe`, `audio-chunk`.
    pub kind: String,
    /// `data`: the event's fields.
    pub data: Map<String, Value>,
    /// Binary payload (PCM for `audio-chunk`).
    pub payload: Vec<u8>,
}

impl Event {
    /// An event of type `kind` with no data.
    pub fn new(kind: &str) -> Self {
        Self {
            kind: kind.to_string(),
            ..Self::default()
        }
    }

    /// Adds a data field.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.data.insert(key.to_string(), value.into());
        self
    }

    /// Sets the payload.
    pub fn with_payload(mut self, payload: Vec<u8>) -> Self {
        self.payload = payload;
        self
    }

    /// A string field (`None` when missing, null or not a string).
    pub fn str(&self, key: &str) -> Option<&str> {
        self.data.get(key).and_then(Value::as_str)
    }

    /// A non-negative integer field.
    pub fn uint(&self, key: &str) -> Option<u64> {
        self.data.get(key).and_then(Value::as_u64)
    }
}

/// Appends an `audio-chunk` payload's frames (little-endian 16- or 32-bit, `channels`
/// interleaved) to `out`, down-mixed to mono f32; the error names a payload that is not
/// whole frames. Callers check `width` is 2 or 4.
pub fn pcm_to_mono(
    payload: &[u8],
    width: usize,
    channels: usize,
    out: &mut Vec<f32>,
) -> Result<(), String> {
    if width * channels == 0 || !payload.len().is_multiple_of(width * channels) {
        return Err(format!(
            "audio-chunk of {} bytes is not whole frames of {channels} channel(s) × {width} bytes",
            payload.len()
        ));
    }
    for frame in payload.chunks_exact(width * channels) {
        let sum: f32 = frame
            .chunks_exact(width)
            .map(|s| match width {
                2 => i16::from_le_bytes([s[0], s[1]]) as f32 / 32_768.0,
                _ => i32::from_le_bytes([s[0], s[1], s[2], s[3]]) as f32 / 2_147_483_648.0,
            })
            .sum();
        out.push(sum / channels as f32);
    }
    Ok(())
}

/// Reads one event; `Ok(None)` at a clean end of stream (between frames).
pub async fn read_event<R: AsyncBufRead + Unpin>(r: &mut R) -> Result<Option<Event>, CodecError> {
    let mut line = Vec::with_capacity(256);
    let n = (&mut *r)
        .take(MAX_HEADER_BYTES as u64 + 1)
        .read_until(b'\n', &mut line)
        .await?;
    if n == 0 {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        return Err(if line.len() > MAX_HEADER_BYTES {
            CodecError::HeaderTooLong
        } else {
            CodecError::Truncated("header")
        });
    }
    let header: Map<String, Value> = parse_object("header", &line)?;
    let kind = header
        .get("type")
        .and_then(Value::as_str)
        .ok_or(CodecError::NoType)?
        .to_string();
    let mut data = match header.get("data") {
        Some(Value::Object(m)) => m.clone(),
        Some(Value::Null) | None => Map::new(),
        Some(other) => {
            return Err(CodecError::BadJson {
                part: "header",
                problem: format!("\"data\" is {other}, not an object"),
            });
        }
    };
    let data_len = length(&header, "data_length", MAX_HEADER_BYTES - line.len())?;
    if data_len > 0 {
        let mut block = vec![0u8; data_len];
        read_all(r, &mut block, "data").await?;
        // The block's fields win over the header's.
        for (k, v) in parse_object("data", &block)? {
            data.insert(k, v);
        }
    }
    let payload_len = length(&header, "payload_length", MAX_PAYLOAD_BYTES)?;
    let mut payload = vec![0u8; payload_len];
    if payload_len > 0 {
        read_all(r, &mut payload, "payload").await?;
    }
    Ok(Some(Event {
        kind,
        data,
        payload,
    }))
}

/// Writes one event (header, data block, payload) and flushes.
pub async fn write_event<W: AsyncWrite + Unpin>(w: &mut W, ev: &Event) -> Result<(), CodecError> {
    let data = if ev.data.is_empty() {
        Vec::new()
    } else {
        serde_json::to_vec(&ev.data).map_err(|e| CodecError::BadJson {
            part: "data",
            problem: e.to_string(),
        })?
    };
    let mut header = Map::new();
    header.insert("type".into(), Value::from(ev.kind.clone()));
    header.insert("version".into(), Value::from(VERSION));
    if !data.is_empty() {
        header.insert("data_length".into(), Value::from(data.len()));
    }
    if !ev.payload.is_empty() {
        header.insert("payload_length".into(), Value::from(ev.payload.len()));
    }
    let mut out = serde_json::to_vec(&header).map_err(|e| CodecError::BadJson {
        part: "header",
        problem: e.to_string(),
    })?;
    out.push(b'\n');
    out.extend_from_slice(&data);
    out.extend_from_slice(&ev.payload);
    w.write_all(&out).await?;
    w.flush().await?;
    Ok(())
}

fn parse_object(part: &'static str, bytes: &[u8]) -> Result<Map<String, Value>, CodecError> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(other) => Err(CodecError::BadJson {
            part,
            problem: format!("{} instead", kind_of(&other)),
        }),
        Err(e) => Err(CodecError::BadJson {
            part,
            problem: e.to_string(),
        }),
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A length field: missing or null is 0; anything else must be an integer ≤ `max`.
fn length(
    header: &Map<String, Value>,
    field: &'static str,
    max: usize,
) -> Result<usize, CodecError> {
    match header.get(field) {
        None | Some(Value::Null) => Ok(0),
        Some(v) => match v.as_u64() {
            Some(n) if n as usize <= max => Ok(n as usize),
            _ => Err(CodecError::TooLong {
                field,
                value: v.to_string(),
                max,
            }),
        },
    }
}

async fn read_all<R: AsyncBufRead + Unpin>(
    r: &mut R,
    buf: &mut [u8],
    what: &'static str,
) -> Result<(), CodecError> {
    match r.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(CodecError::Truncated(what)),
        Err(e) => Err(CodecError::Io(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read_all_events(bytes: &[u8]) -> Vec<Result<Option<Event>, String>> {
        let mut r = tokio::io::BufReader::new(bytes);
        let mut out = Vec::new();
        loop {
            match read_event(&mut r).await {
                Ok(Some(e)) => out.push(Ok(Some(e))),
                Ok(None) => {
                    out.push(Ok(None));
                    break;
                }
                Err(e) => {
                    out.push(Err(e.to_string()));
                    break;
                }
            }
        }
        out
    }

    fn one(bytes: &[u8]) -> Result<Option<Event>, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(read_all_events(bytes)).remove(0)
    }

    #[test]
    fn round_trip_with_data_and_payload() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let ev = Event::new("audio-chunk")
            .with("rate", 16000)
            .with("width", 2)
            .with("channels", 1)
            .with_payload(vec![1, 2, 3, 4]);
        let mut buf = Vec::new();
        rt.block_on(write_event(&mut buf, &ev)).unwrap();
        rt.block_on(write_event(&mut buf, &Event::new("audio-stop")))
            .unwrap();
        let header: Value =
            serde_json::from_slice(&buf[..buf.iter().position(|b| *b == b'\n').unwrap()]).unwrap();
        assert_eq!(header["version"], VERSION);
        assert!(
            header.get("data").is_none(),
            "data goes in the block: {header}"
        );
        let got = rt.block_on(read_all_events(&buf));
        assert_eq!(got[0], Ok(Some(ev)));
        assert_eq!(got[1], Ok(Some(Event::new("audio-stop"))));
        assert_eq!(got[2], Ok(None));
    }

    #[test]
    fn accepts_what_python_peers_send() {
        // Inline data only.
        let e = one(b"{\"type\":\"transcribe\",\"data\":{\"language\":\"en\"}}\n")
            .unwrap()
            .unwrap();
        assert_eq!(e.str("language"), Some("en"));
        // Inline and block: the block wins; nulls and unknown fields are fine.
        let block = br#"{"language":"fr","extra":[1,2]}"#;
        let mut bytes = format!(
            "{{\"type\":\"transcribe\",\"data\":{{\"language\":\"en\",\"name\":\"x\"}},\"data_length\":{},\"payload_length\":null,\"version\":null,\"future\":true}}\n",
            block.len()
        )
        .into_bytes();
        bytes.extend_from_slice(block);
        let e = one(&bytes).unwrap().unwrap();
        assert_eq!(e.str("language"), Some("fr"));
        assert_eq!(e.str("name"), Some("x"));
        assert!(e.payload.is_empty());
        // No data at all, data null, an unknown event type.
        assert_eq!(one(b"{\"type\":\"ping\"}\n").unwrap().unwrap().kind, "ping");
        assert!(
            one(b"{\"type\":\"describe\",\"data\":null}\n")
                .unwrap()
                .unwrap()
                .data
                .is_empty()
        );
        assert_eq!(
            one(b"{\"type\":\"x-future\"}\n").unwrap().unwrap().kind,
            "x-future"
        );
        // End of stream between frames.
        assert_eq!(one(b""), Ok(None));
    }

    #[test]
    fn refuses_malformed_frames_with_a_clear_error() {
        for (bytes, want) in [
            (&b"not json\n"[..], "header is not a JSON object"),
            (b"[1,2]\n", "an array instead"),
            (b"{\"data\":{}}\n", "without a \"type\""),
            (b"{\"type\":\"x\",\"data\":5}\n", "\"data\" is 5"),
            (
                b"{\"type\":\"x\",\"payload_length\":-1}\n",
                "payload_length -1",
            ),
            (
                b"{\"type\":\"x\",\"payload_length\":\"9\"}\n",
                "payload_length \"9\"",
            ),
            (
                b"{\"type\":\"x\",\"payload_length\":99999999999}\n",
                "at most 16777216",
            ),
            (
                b"{\"type\":\"x\",\"data_length\":5000000}\n",
                "data_length 5000000",
            ),
            (
                b"{\"type\":\"x\",\"payload_length\":10}\nabc",
                "inside a frame (payload)",
            ),
            (
                b"{\"type\":\"x\",\"data_length\":10}\n{}",
                "inside a frame (data)",
            ),
            (
                b"{\"type\":\"x\",\"data_length\":2}\n[]",
                "data is not a JSON object",
            ),
            (b"{\"type\":\"x\"", "inside a frame (header)"),
        ] {
            let got = one(bytes);
            let err = got.clone().expect_err(&format!("{bytes:?} → {got:?}"));
            assert!(err.contains(want), "{bytes:?}: {err}");
        }
        // A header line past the cap is refused without reading it all into memory.
        let mut long = b"{\"type\":\"x\",\"pad\":\"".to_vec();
        long.extend(std::iter::repeat_n(b'a', MAX_HEADER_BYTES + 10));
        long.extend_from_slice(b"\"}\n");
        assert!(one(&long).unwrap_err().contains("header line longer"));
    }
}
