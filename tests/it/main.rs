//! Panda's integration tests, one binary with a module per area (as ripgrep does): one
//! link of whisper.cpp, ONNX Runtime's bindings and rustpotter instead of eight.
//!
//! Every module runs the real `panda` binary or real stages with the real tiny models on
//! the CPU; network peers are real local servers started by the test.
//!
//! - [`aec`]: echo cancellation in offline rooms (canceller, self-wake guard, stop words).
//! - [`run`]: the appliance (`panda run`), its status API, faults and limits.
//! - [`listen`], [`stt`], [`speak`], [`fixtures`]: the listening and speaking paths.
//! - [`think`], [`memory`]: LLM, agents, timers, long-term memory.
//! - [`real_devices`]: real sound devices on a private PulseAudio server. `scripts/test.sh`
//!   runs this module on its own, one test at a time (real-time playback under the
//!   load of another test underruns).

mod aec;
mod common;
mod fixtures;
mod listen;
mod memory;
mod real_devices;
mod run;
mod speak;
mod stt;
mod think;
mod wyoming;
