//! Stop words while Panda speaks: "stop", "cancel", "quiet" said over an answer stop it
//! without the wake word (`[aec] stop_words`).
//!
//! Pure, like the endpointer: the listener thread feeds it the echo-cancelled frames and
//! their VAD decisions only while Panda's voice is in the room and no question is being
//! collected; it hands back a short utterance (a word or two, pre-roll included), which
//! the STT stage transcribes and [`stop_command`] judges. Anything longer than a command
//! is dropped unheard: Panda does not transcribe its own answer's residual echo or a
//! conversation in the room.

use std::collections::VecDeque;

use crate::event::{FRAME_MS, FRAME_SAMPLES};

const fn frames(ms: u32) -> usize {
    (ms / FRAME_MS) as usize
}

/// Frames kept before the first voiced one (soft onsets: the "s" of "stop").
const PRE_ROLL: usize = frames(210);
/// Voiced frames in a row that start a candidate.
const START: usize = frames(90);
/// Unvoiced frames in a row that end it.
const HANGOVER: usize = frames(300);
/// Voiced frames a command has at least ...
const MIN_VOICED: usize = frames(150);
/// ... and at most ("stop it, please" is about a second).
const MAX_VOICED: usize = frames(1500);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Idle {
        run: usize,
    },
    Collecting {
        voiced: usize,
        silence: usize,
    },
    /// Too long for a command: wait for silence, then start over.
    Overlong {
        silence: usize,
    },
}

/// Finds command-length utterances in a stream of frames (see the module doc).
#[derive(Debug)]
pub struct CommandSpotter {
    state: State,
    history: VecDeque<Box<[i16; FRAME_SAMPLES]>>,
    collected: Vec<i16>,
}

impl Default for CommandSpotter {
    fn default() -> Self {
        Self {
            state: State::Idle { run: 0 },
            history: VecDeque::with_capacity(PRE_ROLL + START + 1),
            collected: Vec::new(),
        }
    }
}

impl CommandSpotter {
    /// Forgets everything (Panda stopped speaking, or a question is being collected).
    pub fn reset(&mut self) {
        self.state = State::Idle { run: 0 };
        self.history.clear();
        self.collected.clear();
    }

    /// Takes one frame and its voicing; returns a finished command-length utterance.
    pub fn push(&mut self, samples: &[i16; FRAME_SAMPLES], voiced: bool) -> Option<Vec<i16>> {
        match self.state {
            State::Idle { run } => {
                if self.history.len() == PRE_ROLL + START {
                    self.history.pop_front();
                }
                self.history.push_back(Box::new(*samples));
                let run = if voiced { run + 1 } else { 0 };
                if run >= START {
                    self.collected = self.history.drain(..).flat_map(|f| *f).collect();
                    self.state = State::Collecting {
                        voiced: run,
                        silence: 0,
                    };
                } else {
                    self.state = State::Idle { run };
                }
                None
            }
            State::Collecting { voiced: v, silence } => {
                self.collected.extend_from_slice(samples);
                let (v, silence) = if voiced { (v + 1, 0) } else { (v, silence + 1) };
                if v > MAX_VOICED {
                    self.collected.clear();
                    self.state = State::Overlong { silence: 0 };
                    return None;
                }
                if silence < HANGOVER {
                    self.state = State::Collecting { voiced: v, silence };
                    return None;
                }
                self.state = State::Idle { run: 0 };
                let out = std::mem::take(&mut self.collected);
                (v >= MIN_VOICED).then_some(out)
            }
            State::Overlong { silence } => {
                let silence = if voiced { 0 } else { silence + 1 };
                self.state = if silence >= HANGOVER {
                    State::Idle { run: 0 }
                } else {
                    State::Overlong { silence }
                };
                None
            }
        }
    }
}

/// Words that may stand beside a stop word ("stop it, please", "okay, quiet now").
const COURTESY: &[&str] = &[
    "it", "please", "now", "ok", "okay", "hey", "panda", "just", "that", "oh", "um", "uh",
];

/// The stop word `text` is, if it is one of `words` with at most courtesy words around
/// it: "Stop." → stop, "Quiet, please." → quiet; "Stop the timer." → none (that is a
/// question for the wake word), "" → none.
pub fn stop_command(text: &str, words: &[String]) -> Option<String> {
    let said: Vec<String> = text
        .split(|c: char| !c.is_alphanumeric() && c != '\'')
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect();
    if said.is_empty() || said.len() > 4 {
        return None;
    }
    let hit = said
        .iter()
        .find(|w| words.iter().any(|s| s.eq_ignore_ascii_case(w)))?;
    said.iter()
        .all(|w| w == hit || COURTESY.contains(&w.as_str()))
        .then(|| hit.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(spotter: &mut CommandSpotter, pattern: &[(bool, usize)]) -> Vec<Vec<i16>> {
        let mut out = Vec::new();
        for &(v, n) in pattern {
            for _ in 0..n {
                let f = [if v { 1000 } else { 0 }; FRAME_SAMPLES];
                out.extend(spotter.push(&f, v));
            }
        }
        out
    }

    #[test]
    fn a_short_word_is_spotted_with_its_pre_roll() {
        let mut s = CommandSpotter::default();
        let got = run(&mut s, &[(false, 20), (true, 15), (false, 12)]);
        assert_eq!(got.len(), 1);
        // Pre-roll (7) + voiced (15) + hangover (10).
        assert_eq!(got[0].len(), (PRE_ROLL + 15 + HANGOVER) * FRAME_SAMPLES);
    }

    #[test]
    fn long_speech_and_clicks_are_not_commands() {
        let mut s = CommandSpotter::default();
        // Three seconds of talk: dropped, and nothing comes out of its end either.
        assert!(run(&mut s, &[(true, 100), (false, 20)]).is_empty());
        // A click: voiced too briefly to start.
        assert!(run(&mut s, &[(true, 2), (false, 20)]).is_empty());
        // Speech that starts but stays under the minimum.
        assert!(run(&mut s, &[(true, 4), (false, 20)]).is_empty());
        // And the spotter still works afterwards.
        assert_eq!(run(&mut s, &[(true, 10), (false, 12)]).len(), 1);
        s.reset();
        assert!(run(&mut s, &[(true, 8)]).is_empty());
    }

    #[test]
    fn stop_words_with_courtesy_only() {
        let words: Vec<String> = ["stop", "cancel", "quiet"].map(String::from).to_vec();
        for (text, want) in [
            ("Stop.", Some("stop")),
            ("Stop it, please.", Some("stop")),
            ("Okay, quiet now.", Some("quiet")),
            ("Cancel!", Some("cancel")),
            ("Stop the timer.", None),
            ("Don't stop.", None),
            ("", None),
            ("Thank you.", None),
            ("Stop stop stop stop stop.", None),
        ] {
            assert_eq!(stop_command(text, &words).as_deref(), want, "{text}");
        }
    }
}
