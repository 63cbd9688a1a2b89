//! The one lookup of sound devices by name, for capture and playback alike (cpal's
//! default host: ALSA, or PulseAudio through ALSA's pulse plugin). Called on the thread
//! that opens the device.

use cpal::traits::{DeviceTrait, HostTrait};

use super::AudioError;

/// Which way the audio flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// A microphone.
    Input,
    /// A speaker.
    Output,
}

/// Names of the devices the default host offers in `dir` (for errors and `panda doctor`).
pub fn names(dir: Direction) -> Vec<String> {
    let host = cpal::default_host();
    let devices = match dir {
        Direction::Input => host.input_devices(),
        Direction::Output => host.output_devices(),
    };
    match devices {
        Ok(devs) => devs.map(|d| d.to_string()).collect(),
        Err(_) => Vec::new(),
    }
}

/// The device called `name` (`default` for the system default, or a name or id as the
/// host lists it). The error lists what the host has.
pub fn find(name: &str, dir: Direction) -> Result<cpal::Device, AudioError> {
    let host = cpal::default_host();
    let what = match dir {
        Direction::Input => "input",
        Direction::Output => "output",
    };
    let fail = |problem: String| {
        let name = name.to_string();
        match dir {
            Direction::Input => AudioError::NoDevice { name, problem },
            Direction::Output => AudioError::NoOutputDevice { name, problem },
        }
    };
    if name == "default" {
        let dev = match dir {
            Direction::Input => host.default_input_device(),
            Direction::Output => host.default_output_device(),
        };
        return dev.ok_or_else(|| {
            fail(format!(
                "the audio host has no default {what}; {what}s: [{}]",
                names(dir).join(", ")
            ))
        });
    }
    let devices = match dir {
        Direction::Input => host.input_devices(),
        Direction::Output => host.output_devices(),
    }
    .map_err(|e| fail(format!("cannot list {what} devices: {e}")))?;
    let mut seen = Vec::new();
    for d in devices {
        let n = d.to_string();
        if n == name || d.id().map(|id| id.to_string() == name).unwrap_or(false) {
            return Ok(d);
        }
        seen.push(n);
    }
    Err(fail(format!("not found; {what}s: [{}]", seen.join(", "))))
}
