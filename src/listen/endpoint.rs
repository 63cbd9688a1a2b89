//! The endpointing state machine: given frames and a voiced/unvoiced decision per frame,
//! decides where an utterance starts and ends after a wake word.
//!
//! Pure — no I/O, no clocks, no threads: time is counted in frames, so it is unit-tested
//! exhaustively and driven by the listener thread. It keeps a short history of recent
//! frames at all times so the utterance can include audio from before the speech start
//! (pre-roll): soft onsets and words spoken straight after the wake word are not clipped.
//!
//! ```text
//!   Idle ──arm()──▶ Waiting ──N voiced frames──▶ InSpeech ──hangover of silence──▶ Idle (SpeechEnd)
//!                      │                            └──max length / end of stream──▶ Idle (SpeechEnd)
//!                      └──no-speech timeout──▶ Idle (NoSpeech)
//! ```

use std::collections::VecDeque;

use crate::config::EndpointConfig;
use crate::event::{EndReason, FRAME_MS, FRAME_SAMPLES};

/// Frame counts derived from [`EndpointConfig`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointParams {
    /// Frames of history kept before the speech start.
    pub pre_roll: usize,
    /// Voiced frames in a row that start speech.
    pub start: usize,
    /// Unvoiced frames in a row that end speech.
    pub hangover: usize,
    /// Maximum utterance length in frames (pre-roll included).
    pub max_len: usize,
    /// Frames to wait for speech after `arm`.
    pub no_speech: usize,
}

impl From<&EndpointConfig> for EndpointParams {
    fn from(c: &EndpointConfig) -> Self {
        let frames = |ms: u64| (ms.div_ceil(FRAME_MS as u64)) as usize;
        EndpointParams {
            pre_roll: frames(c.pre_roll_ms),
            start: frames(c.speech_start_ms).max(1),
            hangover: frames(c.hangover_ms).max(1),
            max_len: frames(c.max_utterance_ms).max(2),
            no_speech: frames(c.no_speech_timeout_ms).max(1),
        }
    }
}

/// What the state machine decided on a frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// Speech started; `at_seq` is the first voiced frame of the run that started it.
    SpeechStart {
        /// Sequence number of the first voiced frame.
        at_seq: u64,
    },
    /// The utterance is complete.
    SpeechEnd {
        /// The utterance audio, pre-roll included.
        samples: Vec<i16>,
        /// Sequence number of the utterance's first frame.
        start_seq: u64,
        /// Sequence number of the frame that ended it.
        end_seq: u64,
        /// Why it ended.
        reason: EndReason,
    },
    /// No speech started within the timeout after `arm`.
    NoSpeech {
        /// Sequence number of the frame where waiting gave up.
        at_seq: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Idle,
    Waiting { waited: usize, voiced_run: usize },
    InSpeech { silence_run: usize },
}

/// The endpointer. Feed every frame through [`Endpointer::push`], armed or not.
#[derive(Debug)]
pub struct Endpointer {
    p: EndpointParams,
    state: State,
    /// Recent frames (seq, samples), at most `pre_roll + start` of them while not in speech.
    history: VecDeque<(u64, Box<[i16; FRAME_SAMPLES]>)>,
    utterance: Vec<i16>,
    utterance_start: u64,
    utterance_frames: usize,
}

impl Endpointer {
    /// A disarmed endpointer.
    pub fn new(p: EndpointParams) -> Self {
        Self {
            p,
            state: State::Idle,
            history: VecDeque::with_capacity(p.pre_roll + p.start + 1),
            utterance: Vec::new(),
            utterance_start: 0,
            utterance_frames: 0,
        }
    }

    /// Starts waiting for speech (called on a wake word). Re-arming while an utterance is
    /// being collected is ignored: the current utterance finishes first.
    pub fn arm(&mut self) {
        if self.state == State::Idle {
            self.state = State::Waiting {
                waited: 0,
                voiced_run: 0,
            };
        }
    }

    /// Stops waiting or collecting and forgets the current utterance (turn cancelled).
    pub fn disarm(&mut self) {
        self.state = State::Idle;
        self.utterance = Vec::new();
        self.utterance_frames = 0;
    }

    /// True while waiting for or collecting speech.
    pub fn is_armed(&self) -> bool {
        self.state != State::Idle
    }

    /// True while collecting speech.
    pub fn in_speech(&self) -> bool {
        matches!(self.state, State::InSpeech { .. })
    }

    /// Feeds one frame with its voice decision.
    pub fn push(
        &mut self,
        seq: u64,
        samples: &[i16; FRAME_SAMPLES],
        voiced: bool,
    ) -> Option<Endpoint> {
        match self.state {
            State::Idle => {
                self.remember(seq, samples);
                None
            }
            State::Waiting { waited, voiced_run } => {
                self.remember(seq, samples);
                let voiced_run = if voiced { voiced_run + 1 } else { 0 };
                if voiced_run >= self.p.start {
                    // Speech started: the utterance is the history up to now (pre-roll
                    // plus the voiced run), and collection continues in InSpeech.
                    let keep = (self.p.pre_roll + voiced_run).min(self.history.len());
                    let skip = self.history.len() - keep;
                    self.utterance.clear();
                    self.utterance_start = self.history[skip].0;
                    for (_, f) in self.history.iter().skip(skip) {
                        self.utterance.extend_from_slice(&f[..]);
                    }
                    self.utterance_frames = keep;
                    self.history.clear();
                    self.state = State::InSpeech { silence_run: 0 };
                    let at_seq = seq + 1 - voiced_run as u64;
                    if self.utterance_frames >= self.p.max_len {
                        return Some(self.end(seq, EndReason::MaxLength));
                    }
                    return Some(Endpoint::SpeechStart { at_seq });
                }
                let waited = waited + 1;
                if waited >= self.p.no_speech {
                    self.state = State::Idle;
                    return Some(Endpoint::NoSpeech { at_seq: seq });
                }
                self.state = State::Waiting { waited, voiced_run };
                None
            }
            State::InSpeech { silence_run } => {
                self.utterance.extend_from_slice(&samples[..]);
                self.utterance_frames += 1;
                let silence_run = if voiced { 0 } else { silence_run + 1 };
                if silence_run >= self.p.hangover {
                    // Keep a little of the trailing silence (Whisper likes a clean ending)
                    // but not the whole hangover.
                    let trailing = silence_run.saturating_sub(self.p.start.max(3));
                    let cut = trailing * FRAME_SAMPLES;
                    self.utterance.truncate(self.utterance.len() - cut);
                    return Some(self.end(seq, EndReason::Silence));
                }
                if self.utterance_frames >= self.p.max_len {
                    return Some(self.end(seq, EndReason::MaxLength));
                }
                self.state = State::InSpeech { silence_run };
                None
            }
        }
    }

    /// The source ended: an utterance in progress is delivered, waiting ends quietly.
    pub fn finish(&mut self, last_seq: u64) -> Option<Endpoint> {
        match self.state {
            State::InSpeech { .. } => Some(self.end(last_seq, EndReason::EndOfStream)),
            State::Waiting { .. } => {
                self.state = State::Idle;
                Some(Endpoint::NoSpeech { at_seq: last_seq })
            }
            State::Idle => None,
        }
    }

    fn remember(&mut self, seq: u64, samples: &[i16; FRAME_SAMPLES]) {
        let cap = self.p.pre_roll + self.p.start;
        while self.history.len() >= cap.max(1) {
            self.history.pop_front();
        }
        self.history.push_back((seq, Box::new(*samples)));
    }

    fn end(&mut self, seq: u64, reason: EndReason) -> Endpoint {
        self.state = State::Idle;
        self.utterance_frames = 0;
        Endpoint::SpeechEnd {
            samples: std::mem::take(&mut self.utterance),
            start_seq: self.utterance_start,
            end_seq: seq,
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: EndpointParams = EndpointParams {
        pre_roll: 2,
        start: 3,
        hangover: 4,
        max_len: 20,
        no_speech: 10,
    };

    /// Drives the machine with a voiced pattern ('x' voiced, '.' silence), arming before
    /// frame `arm_at`; returns (seq, event) pairs. Each frame's samples hold its seq.
    fn run(p: EndpointParams, pattern: &str, arm_at: usize) -> Vec<(u64, Endpoint)> {
        let mut e = Endpointer::new(p);
        let mut out = Vec::new();
        for (i, c) in pattern.chars().enumerate() {
            if i == arm_at {
                e.arm();
            }
            let f = [i as i16; FRAME_SAMPLES];
            if let Some(ev) = e.push(i as u64, &f, c == 'x') {
                out.push((i as u64, ev));
            }
        }
        if let Some(ev) = e.finish(pattern.len() as u64 - 1) {
            out.push((pattern.len() as u64, ev));
        }
        out
    }

    fn frames_of(samples: &[i16]) -> Vec<i16> {
        samples.chunks(FRAME_SAMPLES).map(|c| c[0]).collect()
    }

    #[test]
    fn idle_ignores_speech() {
        assert!(run(P, "xxxxxxxx....xxxx", usize::MAX).is_empty());
    }

    #[test]
    fn start_needs_n_voiced_frames_in_a_row() {
        // Two voiced, a gap, then three voiced: start at frame 5 (first of the run).
        let ev = run(P, "xx.xxx........", 0);
        assert_eq!(ev[0], (5, Endpoint::SpeechStart { at_seq: 3 }));
    }

    #[test]
    fn utterance_has_pre_roll_and_ends_after_hangover() {
        //           0123456789
        let ev = run(P, "..xxxx.x....", 0);
        assert_eq!(ev[0].1, Endpoint::SpeechStart { at_seq: 2 });
        match &ev[1] {
            (
                11,
                Endpoint::SpeechEnd {
                    samples,
                    start_seq,
                    end_seq,
                    reason,
                },
            ) => {
                assert_eq!(*reason, EndReason::Silence);
                assert_eq!(*start_seq, 0, "two frames of pre-roll before frame 2");
                assert_eq!(*end_seq, 11);
                // Frames 0..=11 minus trailing silence beyond 3 frames (4 silent, keep 3).
                assert_eq!(frames_of(samples), (0..=10).collect::<Vec<i16>>());
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(ev.len(), 2);
    }

    #[test]
    fn short_pause_does_not_end_speech() {
        let ev = run(P, "xxx...xxx.....", 0);
        assert_eq!(ev.len(), 2);
        assert!(matches!(ev[1], (12, Endpoint::SpeechEnd { .. })));
    }

    #[test]
    fn no_speech_timeout() {
        let ev = run(P, "..............", 2);
        assert_eq!(ev, vec![(11, Endpoint::NoSpeech { at_seq: 11 })]);
    }

    #[test]
    fn max_length_cuts() {
        let p = EndpointParams { max_len: 8, ..P };
        let ev = run(p, "xxxxxxxxxxxxxxxx", 0);
        match &ev[1] {
            (
                _,
                Endpoint::SpeechEnd {
                    samples, reason, ..
                },
            ) => {
                assert_eq!(*reason, EndReason::MaxLength);
                assert_eq!(samples.len(), 8 * FRAME_SAMPLES);
            }
            other => panic!("{other:?}"),
        }
        // After the cut the machine is idle: the rest of the speech is not an utterance.
        assert_eq!(ev.len(), 2);
    }

    #[test]
    fn end_of_stream_delivers_speech_in_progress() {
        let ev = run(P, "..xxxxx", 0);
        assert!(matches!(
            ev.last().unwrap().1,
            Endpoint::SpeechEnd {
                reason: EndReason::EndOfStream,
                ..
            }
        ));
    }

    #[test]
    fn rearm_during_speech_is_ignored_and_disarm_forgets() {
        let mut e = Endpointer::new(P);
        e.arm();
        let f = [0i16; FRAME_SAMPLES];
        for i in 0..4 {
            e.push(i, &f, true);
        }
        assert!(e.in_speech());
        e.arm();
        assert!(e.in_speech());
        e.disarm();
        assert!(!e.is_armed());
        assert_eq!(e.finish(5), None);
    }

    #[test]
    fn params_from_config_round_up() {
        let c = EndpointConfig {
            pre_roll_ms: 100,
            speech_start_ms: 90,
            hangover_ms: 800,
            max_utterance_ms: 15_000,
            no_speech_timeout_ms: 5_000,
        };
        let p = EndpointParams::from(&c);
        assert_eq!(
            p,
            EndpointParams {
                pre_roll: 4,
                start: 3,
                hangover: 27,
                max_len: 500,
                no_speech: 167
            }
        );
    }
}
