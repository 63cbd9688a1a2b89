//! The status page: what Panda is doing, live, plus a small JSON API and `/metrics`.
//!
//! - [`status`]: the status model — state, last turns with per-stage latency, action log,
//!   LLM and agent health — built from the pipeline's events, and the live feed: each
//!   change is serialised once and published on a bounded broadcast ring. Answer text is
//!   coalesced (≥ `coalesce_chars` or every `coalesce_ms`) so a token stream never becomes
//!   a message storm.
//! - [`server`]: axum on the tokio runtime. `GET /` (HTML, JS and CSS served from the
//!   binary, strict CSP, every user string inserted as text, never as HTML),
//!   `GET /api/events` (SSE), `GET /api/status`, `GET /healthz`, `GET /metrics`,
//!   `POST /api/ask` and `POST /api/stop` (bearer token). Per-address rate limits
//!   (governor), body size limits, security headers.
//!
//! A slow client can never slow the pipeline: publishing is a non-blocking write into the
//! ring; a client that falls more than `client_buffer` messages behind skips ahead (told
//! how many it missed) and a client that cannot take bytes at all is disconnected by its
//! TCP buffer filling, not by Panda waiting.

pub mod conn;
pub mod server;
pub mod status;

pub use server::{WebError, WebHandle, serve, status_page_url};
pub use status::{Hub, State};
