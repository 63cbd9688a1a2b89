//! The endpointing state machine: given frames and a voiced/unvoiced decision per frame,
//! decides where an utterance starts and ends after a wake word.
//!
//! Pure — no I/O, no clocks, no threads: time is counted in frames, so it is unit-tested
//! exhaustively and driven by the listener thread. It keeps a short history of recent
//! frames at all times so the utterance can include audio from before the speech start
//! (pre-roll): soft onsets are not clipped.
//!
//! ```text
//!   Idle ──arm()──▶ Waiting ──N voiced frames──▶ InSpeech ──hangover of silence──▶ Idle (SpeechEnd)
//!                      │                            └──max length / end of stream──▶ Idle (SpeechEnd)
//!                      └──question timeout──▶ Idle (NoSpeech)
//! ```
//!
//! **The hand-off after a wake word** ([`Arm::Wake`]). The question is the *next* speech,
//! not the wake phrase: a detection usually fires while "panda" is still sounding, and
//! people pause after a wake word, waiting for the device to show it heard them. So:
//! - voicing that runs on from the detection (the phrase's own tail) does not start the
//!   question; where it stops, the question's audio may begin (the pre-roll never reaches
//!   back past the tail's end);
//! - if that voicing goes on for longer than a tail can (`tail` frames: "hey panda what
//!   time is it" in one breath), it *is* the question: the utterance then starts
//!   `lookback` frames before the detection, wake phrase included — Whisper hears a
//!   whole sentence rather than a half-word — and the listener's STT stage drops the
//!   leading wake phrase from the transcript;
//! - when the wake word check already heard words after the phrase
//!   ([`Arm::WakeInOneBreath`]), the question is under way however short its rest ("hey
//!   panda, stop"): the utterance starts at once from the lookback and ends on silence;
//!   the tail ends on a pause of [`TAIL_GAP_MS`], not on the closure of a stop consonant
//!   inside running speech;
//! - frames under a `hold` (the earcon playing) never count as voiced;
//! - speech then has `question_timeout` frames to start.
//!
//! **The wake word said again** while an utterance is collected (noise or a background
//! voice kept it open, or the person starts over): [`Endpointer::cut_for_wake`] ends the
//! utterance where the phrase began and hands the phrase back as history, so the new
//! wake's question is taken as after any other detection.
//!
//! A follow-up ([`Arm::FollowUp`]) listens without a wake word: nothing from before the
//! arming belongs to it (that was Panda's own answer).

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
    /// Frames to wait for the question to start after a wake word.
    pub question_timeout: usize,
    /// Voicing that runs on from a wake detection for at most this many frames is the
    /// wake phrase's tail; longer, it is the question said in the same breath.
    pub tail: usize,
    /// Unvoiced frames in a row that end the tail: fewer are a stop consonant or a breath
    /// within the same run of speech ("…panda, set a timer"), not the pause after the
    /// phrase ([`TAIL_GAP_MS`]).
    pub tail_gap: usize,
    /// Frames before a detection an in-one-breath question's utterance starts at (the
    /// wake phrase, so that Whisper hears whole words).
    pub lookback: usize,
}

/// The shortest pause that ends a wake phrase's tail. The closure of a stop consonant
/// ("se*t* a *t*imer") leaves one to three unvoiced 30 ms frames inside running speech; a
/// pause after "hey panda" is 200 ms and more. Ending the tail on the first unvoiced frame
/// took a question said straight on after a late detection for tail, and lost its first
/// words ("Set a timer…" heard as "Time for 10 minutes").
pub const TAIL_GAP_MS: u64 = 120;

impl From<&EndpointConfig> for EndpointParams {
    fn from(c: &EndpointConfig) -> Self {
        let frames = |ms: u64| (ms.div_ceil(FRAME_MS as u64)) as usize;
        EndpointParams {
            pre_roll: frames(c.pre_roll_ms),
            start: frames(c.speech_start_ms).max(1),
            hangover: frames(c.hangover_ms).max(1),
            max_len: frames(c.max_utterance_ms).max(2),
            question_timeout: frames(c.question_timeout_ms).max(1),
            tail: frames(c.wake_tail_ms).max(1),
            tail_gap: frames(TAIL_GAP_MS).max(1),
            lookback: frames(c.wake_lookback_ms),
        }
    }
}

/// How the endpointer is armed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arm {
    /// A wake word was detected just before the next pushed frame: the question is the
    /// next speech (see the module doc). `hold` frames, starting `hold_after` frames on,
    /// count as unvoiced (the earcon is playing; frames already captured before it
    /// started are not held).
    Wake {
        /// Frames after the arming before the hold starts.
        hold_after: usize,
        /// Frames masked from the VAD.
        hold: usize,
    },
    /// A wake word whose check heard words after the phrase ("hey panda speak French"
    /// said without a pause, however short the rest): the question is already under
    /// way, so the utterance starts at once, `lookback` frames before the detection
    /// (wake phrase included, dropped from the transcript later), and ends on silence.
    /// No hold: the person is speaking.
    WakeInOneBreath,
    /// Listen for a follow-up without the wake word for `timeout` frames; nothing from
    /// before the arming is part of it.
    FollowUp {
        /// Frames to wait for speech.
        timeout: usize,
    },
    /// Any speech is an utterance (no wake word): the plain pre-roll, the question
    /// timeout.
    Open,
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
    Waiting {
        waited: usize,
        voiced_run: usize,
        /// Unvoiced frames in a row while the wake phrase's tail may still sound.
        quiet_run: usize,
    },
    InSpeech {
        silence_run: usize,
    },
}

/// The current arming's rules.
#[derive(Debug, Clone, Copy)]
struct Armed {
    /// Sequence number of the first frame after arming.
    at: u64,
    /// Frames to wait for speech.
    timeout: usize,
    /// Frames whose voicing is masked: `hold.0 .. hold.1` (sequence numbers).
    hold: (u64, u64),
    /// The wake phrase's tail may still be sounding (wake arming, no unvoiced frame yet).
    tail_open: bool,
    /// The earliest frame the utterance may start at.
    floor: u64,
    /// The question is already being said: start on the first frame.
    start_now: bool,
}

/// The endpointer. Feed every frame through [`Endpointer::push`], armed or not.
#[derive(Debug)]
pub struct Endpointer {
    p: EndpointParams,
    state: State,
    /// Recent frames (seq, samples): enough for the pre-roll or the wake lookback.
    history: VecDeque<(u64, Box<[i16; FRAME_SAMPLES]>)>,
    armed: Option<Armed>,
    /// Set by `arm`, filled in from the next pushed frame's number.
    pending: Option<Arm>,
    utterance: Vec<i16>,
    utterance_start: u64,
    utterance_frames: usize,
    /// The first voiced frame of the run that started the utterance.
    speech_at: u64,
}

impl Endpointer {
    /// A disarmed endpointer.
    pub fn new(p: EndpointParams) -> Self {
        Self {
            p,
            state: State::Idle,
            history: VecDeque::with_capacity(Self::history_cap(&p) + 1),
            armed: None,
            pending: None,
            utterance: Vec::new(),
            utterance_start: 0,
            utterance_frames: 0,
            speech_at: 0,
        }
    }

    fn history_cap(p: &EndpointParams) -> usize {
        // Enough for the pre-roll before a start, or for the lookback before a detection
        // plus the tail after it.
        (p.pre_roll + p.start).max(p.lookback + p.tail + p.start)
    }

    /// Starts waiting for speech, by the rules of `how`, from the next pushed frame.
    /// Re-arming while waiting or collecting is ignored: the current utterance finishes
    /// first.
    pub fn arm(&mut self, how: Arm) {
        if self.state == State::Idle {
            self.state = State::Waiting {
                waited: 0,
                voiced_run: 0,
                quiet_run: 0,
            };
            self.pending = Some(how);
        }
    }

    /// Stops waiting or collecting and forgets the current utterance (turn cancelled).
    pub fn disarm(&mut self) {
        self.state = State::Idle;
        self.armed = None;
        self.pending = None;
        self.utterance = Vec::new();
        self.utterance_frames = 0;
    }

    /// Stops waiting or collecting and gives what was collected back to the history, as
    /// if it had never been armed: a collection given up unheard (the listener's second
    /// chance, when the first question was understood after all) may hold the start of
    /// a wake phrase said meanwhile, which that wake's lookback needs.
    pub fn release(&mut self) {
        if self.in_speech() {
            self.back_to_history(0..self.utterance_frames);
        }
        self.disarm();
    }

    /// Puts the utterance's frames `range` (indices into it) back in the history, in
    /// order, ahead of anything newer there; the oldest go past the history's capacity.
    fn back_to_history(&mut self, range: std::ops::Range<usize>) {
        let start = self.utterance_start;
        let mut frames: VecDeque<(u64, Box<[i16; FRAME_SAMPLES]>)> = range
            .map(|i| {
                let f: [i16; FRAME_SAMPLES] = self.utterance
                    [i * FRAME_SAMPLES..(i + 1) * FRAME_SAMPLES]
                    .try_into()
                    .expect("whole frames");
                (start + i as u64, Box::new(f))
            })
            .collect();
        frames.extend(self.history.drain(..));
        let cap = Self::history_cap(&self.p).max(1);
        while frames.len() > cap {
            frames.pop_front();
        }
        self.history = frames;
    }

    /// True while waiting for or collecting speech.
    pub fn is_armed(&self) -> bool {
        self.state != State::Idle
    }

    /// Frames before a detection that an in-one-breath question reaches back to: where
    /// the wake phrase began.
    pub fn lookback(&self) -> usize {
        self.p.lookback
    }

    /// Frames a question has to start after an arming (`[endpoint] question_timeout_ms`).
    pub fn question_timeout(&self) -> usize {
        self.p.question_timeout
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
        if let Some(how) = self.pending.take() {
            self.armed = Some(self.rules(how, seq));
        }
        match self.state {
            State::Idle => {
                self.remember(seq, samples);
                None
            }
            State::Waiting {
                waited,
                voiced_run,
                quiet_run,
            } => {
                self.remember(seq, samples);
                let mut a = self.armed.expect("waiting is armed");
                let held = (a.hold.0..a.hold.1).contains(&seq);
                let voiced = voiced && !held;
                let voiced_run = if voiced { voiced_run + 1 } else { 0 };
                let quiet_run = if voiced { 0 } else { quiet_run + 1 };
                let waited = waited + 1;
                if a.tail_open && quiet_run >= self.p.tail_gap {
                    // The wake phrase has stopped sounding: the question starts where the
                    // pause began at the earliest.
                    a.tail_open = false;
                    a.floor = a.floor.max(seq + 1 - quiet_run as u64);
                    self.armed = Some(a);
                }
                // Frames of the tail so far: since the detection, short gaps included.
                let tail_len = (seq + 1).saturating_sub(a.at) as usize - quiet_run;
                let started = if a.start_now {
                    Some(a.at)
                } else if a.tail_open {
                    // Voicing that runs on from the detection: the tail, unless it lasts.
                    (voiced && tail_len >= self.p.tail.max(self.p.start)).then(|| {
                        a.floor = a.at.saturating_sub(self.p.lookback as u64);
                        a.at
                    })
                } else {
                    (voiced_run >= self.p.start).then(|| {
                        let at_seq = seq + 1 - voiced_run as u64;
                        a.floor = a.floor.max(at_seq.saturating_sub(self.p.pre_roll as u64));
                        at_seq
                    })
                };
                if let Some(at_seq) = started {
                    // Speech started: the utterance is the history from the floor on,
                    // and collection continues in InSpeech.
                    self.utterance.clear();
                    self.utterance_frames = 0;
                    self.utterance_start = seq;
                    for (s, f) in self.history.iter().filter(|(s, _)| *s >= a.floor) {
                        if self.utterance_frames == 0 {
                            self.utterance_start = *s;
                        }
                        self.utterance.extend_from_slice(&f[..]);
                        self.utterance_frames += 1;
                    }
                    self.history.clear();
                    self.speech_at = at_seq;
                    self.state = State::InSpeech { silence_run: 0 };
                    if self.utterance_frames >= self.p.max_len {
                        return Some(self.end(seq, EndReason::MaxLength));
                    }
                    return Some(Endpoint::SpeechStart { at_seq });
                }
                if waited >= a.timeout {
                    self.state = State::Idle;
                    self.armed = None;
                    return Some(Endpoint::NoSpeech { at_seq: seq });
                }
                self.state = State::Waiting {
                    waited,
                    voiced_run,
                    quiet_run,
                };
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

    /// A wake word was confirmed while an utterance was collected (see
    /// [`EndReason::WakeWord`]): the utterance is cut before frame `cut` (where the wake
    /// phrase began) and delivered, or given up as [`Endpoint::NoSpeech`] when less than
    /// a speech start is left of it. Frames from `cut` to before `replay` go back into the
    /// history (the new wake's lookback); frames from `replay` on are forgotten, as the
    /// caller feeds them again under the new arming. The machine is idle afterwards.
    /// Returns nothing when no utterance was being collected.
    pub fn cut_for_wake(&mut self, cut: u64, replay: u64) -> Option<Endpoint> {
        // History frames the caller will feed again.
        self.history.retain(|(s, _)| *s < replay);
        let State::InSpeech { .. } = self.state else {
            return None;
        };
        let frames = self.utterance_frames;
        let start = self.utterance_start;
        let keep = (cut.saturating_sub(start) as usize).min(frames);
        let last = (replay.saturating_sub(start) as usize).min(frames);
        // The wake phrase's frames: history again, in order, ahead of anything newer.
        self.back_to_history(keep..last);
        self.utterance.truncate(keep * FRAME_SAMPLES);
        // Less than a speech start's worth of speech before the phrase: nothing to hear.
        if cut < self.speech_at + self.p.start as u64 {
            self.disarm();
            return Some(Endpoint::NoSpeech {
                at_seq: cut.saturating_sub(1),
            });
        }
        self.utterance_frames = keep;
        Some(self.end(cut.saturating_sub(1), EndReason::WakeWord))
    }

    /// The source ended: an utterance in progress is delivered, waiting ends quietly.
    pub fn finish(&mut self, last_seq: u64) -> Option<Endpoint> {
        match self.state {
            State::InSpeech { .. } => Some(self.end(last_seq, EndReason::EndOfStream)),
            State::Waiting { .. } => {
                self.state = State::Idle;
                self.armed = None;
                Some(Endpoint::NoSpeech { at_seq: last_seq })
            }
            State::Idle => None,
        }
    }

    /// The rules of an arming that takes effect at frame `at`.
    fn rules(&self, how: Arm, at: u64) -> Armed {
        match how {
            Arm::Wake { hold_after, hold } => Armed {
                at,
                // The question's time counts from the earcon, which the person waits
                // for: the frames captured while the wake word check ran (seconds on a
                // loaded machine) are not theirs to lose.
                timeout: self.p.question_timeout + hold_after,
                hold: (at + hold_after as u64, at + (hold_after + hold) as u64),
                tail_open: true,
                floor: at,
                start_now: false,
            },
            Arm::WakeInOneBreath => Armed {
                at,
                timeout: self.p.question_timeout,
                hold: (0, 0),
                tail_open: false,
                floor: at.saturating_sub(self.p.lookback as u64),
                start_now: true,
            },
            Arm::FollowUp { timeout } => Armed {
                at,
                timeout: timeout.max(1),
                hold: (0, 0),
                tail_open: false,
                floor: at,
                start_now: false,
            },
            Arm::Open => Armed {
                at,
                timeout: self.p.question_timeout,
                hold: (0, 0),
                tail_open: false,
                floor: 0,
                start_now: false,
            },
        }
    }

    fn remember(&mut self, seq: u64, samples: &[i16; FRAME_SAMPLES]) {
        let cap = Self::history_cap(&self.p).max(1);
        while self.history.len() >= cap {
            self.history.pop_front();
        }
        self.history.push_back((seq, Box::new(*samples)));
    }

    fn end(&mut self, seq: u64, reason: EndReason) -> Endpoint {
        self.state = State::Idle;
        self.armed = None;
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
        question_timeout: 10,
        tail: 6,
        tail_gap: 1,
        lookback: 3,
    };

    /// Drives the machine with a voiced pattern ('x' voiced, '.' silence), arming before
    /// frame `arm_at`; returns (seq, event) pairs. Each frame's samples hold its seq.
    fn run(p: EndpointParams, pattern: &str, arm_at: usize) -> Vec<(u64, Endpoint)> {
        run_as(p, pattern, arm_at, Arm::Open)
    }

    /// [`run`] with the arming `how`.
    fn run_as(p: EndpointParams, pattern: &str, arm_at: usize, how: Arm) -> Vec<(u64, Endpoint)> {
        let mut e = Endpointer::new(p);
        let mut out = Vec::new();
        for (i, c) in pattern.chars().enumerate() {
            if i == arm_at {
                e.arm(how);
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
    fn a_wake_during_a_question_cuts_it_before_the_wake_phrase() {
        let mut e = Endpointer::new(P);
        e.arm(Arm::Open);
        let mut ends = Vec::new();
        // Speech from frame 2 on, without a pause long enough to end it.
        for i in 0..16u64 {
            if let Some(ev) = e.push(i, &[i as i16; FRAME_SAMPLES], i >= 2) {
                ends.push(ev);
            }
        }
        assert!(e.in_speech());
        // The wake phrase began at frame 11; the detection fired on frame 13 and frames
        // 14 and 15 will be fed again.
        match e.cut_for_wake(11, 14) {
            Some(Endpoint::SpeechEnd {
                samples,
                start_seq,
                reason,
                ..
            }) => {
                assert_eq!(reason, EndReason::WakeWord);
                assert_eq!(start_seq, 0);
                assert_eq!(frames_of(&samples), (0..11).collect::<Vec<i16>>());
            }
            other => panic!("{other:?}"),
        }
        assert!(!e.is_armed());
        // The wake phrase is the next arming's lookback; the replayed frames follow it
        // once, in order.
        let got = one_breath(&mut e, 14..20, 16);
        assert_eq!(&got[..5], &[11, 12, 13, 14, 15]);
    }

    /// Arms `e` for a question said in one breath and feeds it `frames`, voiced before
    /// `silent_from`: the question's frames (each holds its seq).
    fn one_breath(e: &mut Endpointer, frames: std::ops::Range<u64>, silent_from: u64) -> Vec<i16> {
        e.arm(Arm::WakeInOneBreath);
        let mut got = None;
        for i in frames {
            if let Some(Endpoint::SpeechEnd { samples, .. }) =
                e.push(i, &[i as i16; FRAME_SAMPLES], i < silent_from)
            {
                got = Some(frames_of(&samples));
            }
        }
        got.expect("the question ends on silence")
    }

    #[test]
    fn a_released_collection_is_history_for_the_next_wake() {
        let mut e = Endpointer::new(P);
        e.arm(Arm::FollowUp { timeout: 10 });
        // Speech from frame 2 on: a wake phrase said into a collection given up.
        for i in 0..9u64 {
            assert!(
                !matches!(
                    e.push(i, &[i as i16; FRAME_SAMPLES], i >= 2),
                    Some(Endpoint::SpeechEnd { .. })
                ),
                "{i}"
            );
        }
        assert!(e.in_speech());
        e.release();
        assert!(!e.is_armed());
        // The wake's lookback (3 frames) reaches into what was collected.
        e.push(9, &[9; FRAME_SAMPLES], true);
        let got = one_breath(&mut e, 10..16, 12);
        assert_eq!(&got[..5], &[7, 8, 9, 10, 11]);
    }

    #[test]
    fn a_wake_right_after_a_question_starts_gives_no_question() {
        let mut e = Endpointer::new(P);
        e.arm(Arm::Open);
        for i in 0..8u64 {
            e.push(i, &[i as i16; FRAME_SAMPLES], i >= 2);
        }
        assert!(e.in_speech());
        // Speech began on frame 2: less than a speech start (3 frames) of it before
        // the phrase is nothing to transcribe.
        assert_eq!(e.cut_for_wake(4, 8), Some(Endpoint::NoSpeech { at_seq: 3 }));
        assert!(!e.is_armed());
        assert_eq!(Endpointer::new(P).cut_for_wake(3, 8), None);
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
    fn a_pause_shorter_than_the_hangover_ends_nothing() {
        let p = EndpointParams {
            hangover: 16,
            max_len: 200,
            ..P
        };
        // A pause one frame shorter than the hangover, inside a sentence, ends nothing.
        let ev = run(
            p,
            &format!("xxxxxxxxxx{}xxxxxx{}", ".".repeat(15), ".".repeat(40)),
            0,
        );
        let ends: Vec<_> = ev
            .iter()
            .filter(|(_, e)| matches!(e, Endpoint::SpeechEnd { .. }))
            .collect();
        assert_eq!(ends.len(), 1, "{ev:?}");
        // By the run rule: 16 unvoiced frames after the last voiced one (frame 30).
        assert_eq!(ends[0].0, 30 + 16);
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
        e.arm(Arm::Open);
        let f = [0i16; FRAME_SAMPLES];
        for i in 0..4 {
            e.push(i, &f, true);
        }
        assert!(e.in_speech());
        e.arm(Arm::Wake {
            hold_after: 0,
            hold: 0,
        });
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
            question_timeout_ms: 5_000,
            wake_tail_ms: 600,
            wake_lookback_ms: 1_000,
        };
        let p = EndpointParams::from(&c);
        assert_eq!(
            p,
            EndpointParams {
                pre_roll: 4,
                start: 3,
                hangover: 27,
                max_len: 500,
                question_timeout: 167,
                tail: 20,
                tail_gap: 4,
                lookback: 34,
            }
        );
    }

    fn utterance(ev: &[(u64, Endpoint)]) -> (u64, Vec<i16>) {
        ev.iter()
            .find_map(|(_, e)| match e {
                Endpoint::SpeechEnd {
                    samples, start_seq, ..
                } => Some((*start_seq, frames_of(samples))),
                _ => None,
            })
            .expect("an utterance")
    }

    #[test]
    fn the_wake_phrase_tail_is_not_the_question() {
        // Armed on frame 4 with the phrase still sounding for three frames, a long pause
        // (longer than the hangover), then the question.
        //              0123456789012345678901234
        let pattern = "xxxxxxx.......xxxxx.......";
        let p = EndpointParams {
            question_timeout: 20,
            ..P
        };
        let ev = run_as(
            p,
            pattern,
            4,
            Arm::Wake {
                hold_after: 0,
                hold: 0,
            },
        );
        let starts: Vec<_> = ev
            .iter()
            .filter(|(_, e)| matches!(e, Endpoint::SpeechStart { .. }))
            .collect();
        assert_eq!(starts.len(), 1, "{ev:?}");
        assert_eq!(starts[0].1, Endpoint::SpeechStart { at_seq: 14 });
        let (start, frames) = utterance(&ev);
        // Two frames of pre-roll, all after the tail (frames 4–6).
        assert_eq!(start, 12);
        assert!(frames.iter().all(|&f| f >= 7), "{frames:?}");
    }

    #[test]
    fn a_stop_consonant_does_not_end_the_tail() {
        // Armed on frame 4 in running speech: two unvoiced frames (a stop's closure,
        // under the gap of 3) and the speech goes on — the question said straight on,
        // taken from the lookback; a pause of 3 frames ends the tail.
        let p = EndpointParams { tail_gap: 3, ..P };
        let wake = Arm::Wake {
            hold_after: 0,
            hold: 0,
        };
        let (start, frames) = utterance(&run_as(p, "xxxxxx..xxxxxx.......", 4, wake));
        assert_eq!(start, 1, "lookback of 3 before the detection");
        assert_eq!(frames[0], 1);
        let (start, _) = utterance(&run_as(p, "xxxxxx...xxxxxx.......", 4, wake));
        assert_eq!(start, 7, "after the pause (6–8), with the pre-roll of 2");
    }

    #[test]
    fn a_short_pause_after_the_tail_still_keeps_the_tail_out() {
        // The tail ends at frame 6, the question starts at 8: the pre-roll (2 frames)
        // would reach back into the tail; it stops at the tail's end.
        let ev = run_as(
            P,
            "xxxxxxx.xxxxx.......",
            4,
            Arm::Wake {
                hold_after: 0,
                hold: 0,
            },
        );
        let (start, frames) = utterance(&ev);
        assert_eq!(start, 7);
        assert_eq!(frames[0], 7);
    }

    #[test]
    fn one_breath_takes_the_wake_phrase_along() {
        // Voicing runs on past the tail limit (6 frames): the question was said in the
        // same breath; the utterance starts `lookback` (3) frames before the detection.
        let ev = run_as(
            P,
            "xxxxxxxxxxxxxxx.....",
            4,
            Arm::Wake {
                hold_after: 0,
                hold: 0,
            },
        );
        assert_eq!(ev[0].1, Endpoint::SpeechStart { at_seq: 4 });
        let (start, frames) = utterance(&ev);
        assert_eq!(start, 1);
        assert_eq!(frames[0], 1);
    }

    #[test]
    fn a_question_already_under_way_starts_at_once_however_short() {
        // Voicing after the detection (frame 4) stops after 3 frames — shorter than a
        // tail (6) — but the check heard words after the phrase: it is the question,
        // from the lookback (3 frames before the detection) to the silence.
        let ev = run_as(P, "xxxxxxx..........", 4, Arm::WakeInOneBreath);
        assert_eq!(ev[0].1, Endpoint::SpeechStart { at_seq: 4 });
        let (start, frames) = utterance(&ev);
        assert_eq!(start, 1);
        assert_eq!(frames[..6], [1, 2, 3, 4, 5, 6], "{frames:?}");
        // The same voicing under the plain wake rules is the phrase's tail: no question.
        let ev = run_as(
            P,
            "xxxxxxx..........",
            4,
            Arm::Wake {
                hold_after: 0,
                hold: 0,
            },
        );
        assert!(matches!(ev[..], [(_, Endpoint::NoSpeech { .. })]), "{ev:?}");
    }

    #[test]
    fn a_hold_masks_voicing_and_the_question_may_start_after_it() {
        // The earcon's 4 frames after the arm are voiced on the microphone: not speech.
        let ev = run_as(
            P,
            "..xxxx........",
            2,
            Arm::Wake {
                hold_after: 0,
                hold: 4,
            },
        );
        assert_eq!(ev, vec![(11, Endpoint::NoSpeech { at_seq: 11 })]);
        let ev = run_as(
            P,
            "..xxxxxxxx.........",
            2,
            Arm::Wake {
                hold_after: 0,
                hold: 4,
            },
        );
        assert_eq!(ev[0].1, Endpoint::SpeechStart { at_seq: 6 });
    }

    #[test]
    fn the_hold_starts_after_the_frames_captured_before_the_earcon() {
        // Frames 2–3 were already queued when the earcon started: the question's first
        // voiced frames there count; the hold covers 4–7.
        let how = Arm::Wake {
            hold_after: 2,
            hold: 4,
        };
        let ev = run_as(P, "...xxxxxxxxxxx......", 2, how);
        // Frame 2 is silent: the tail is closed; 3 voiced, 4–7 held (the run breaks),
        // then 8–10 voiced start speech at 8.
        assert_eq!(ev[0].1, Endpoint::SpeechStart { at_seq: 8 });
    }

    #[test]
    fn the_question_timeout_counts_from_the_earcon() {
        // 10 frames of timeout after the 6 frames captured before the earcon: speech
        // starting at frame 14 (12 frames after the arming at 2) is the question.
        let how = Arm::Wake {
            hold_after: 6,
            hold: 0,
        };
        let ev = run_as(P, "..............xxxx......", 2, how);
        assert_eq!(ev[0].1, Endpoint::SpeechStart { at_seq: 14 });
        // And the window still ends: 16 frames after the arming.
        let ev = run_as(P, "........................", 2, how);
        assert_eq!(ev, vec![(17, Endpoint::NoSpeech { at_seq: 17 })]);
    }

    #[test]
    fn a_follow_up_has_its_own_timeout_and_no_audio_from_before() {
        let ev = run_as(P, "xxxx....", 4, Arm::FollowUp { timeout: 3 });
        assert_eq!(ev, vec![(6, Endpoint::NoSpeech { at_seq: 6 })]);
        let ev = run_as(P, "xxxx.xxxx.......", 4, Arm::FollowUp { timeout: 30 });
        let (start, frames) = utterance(&ev);
        assert_eq!(start, 4, "pre-roll stops at the arming");
        assert!(frames.iter().all(|&f| f >= 4));
    }
}
