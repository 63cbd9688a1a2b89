//! The Wyoming protocol (Home Assistant's protocol for voice services): the codec first.
//!
//! - [`codec`]: frames — a JSON header line, a JSON data block, a binary payload — read
//!   with bounded buffers and written the way the Python `wyoming` library writes them.
//! - [`info`]: the `info` event (the answer to `describe`) for what Panda serves.
//!
//! - [`server`]: Panda's Whisper, Kokoro and wake word as Wyoming services
//!   (`panda serve --wyoming`, and `panda run` with `[wyoming] listen`).
//!
//! - [`client`]: a remote Wyoming ASR engine as Panda's speech-to-text backend
//!   (`[stt] backend = "wyoming"`).
//!
//! - [`zeroconf`]: the opt-in `_wyoming._tcp.local.` announcement Home Assistant
//!   discovers servers by.
//!
//! - [`satellite`]: satellite mode (`panda run --satellite`): a hub (Home Assistant)
//!   answers the questions Panda hears and sends back the audio Panda plays.

pub mod client;
pub mod codec;
pub mod info;
pub mod satellite;
pub mod server;
pub mod zeroconf;
