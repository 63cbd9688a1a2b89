//! The listener stage: one thread (`panda-listener`) that owns the wake word detector,
//! the VAD and the endpointer, and turns 30 ms frames into wake events and utterances.
//!
//! It owns them because rustpotter and webrtc-vad keep per-stream state and are not
//! `Send`; they are built on this thread and never leave it. For every frame it runs the
//! wake word (always — it will also carry barge-in), and the VAD only while an utterance
//! is wanted. On a wake it mints the turn: a child of the root token.
//!
//! After a wake the question is the *next* speech (the hand-off: see
//! [`super::endpoint`]); with the earcon on, the VAD is held while it plays. A question
//! in which Whisper understood nothing (a noise in the pause after the phrase) gets one
//! more chance: the next speech, collected meanwhile ([`SecondChance`]). After an
//! answer the turn driver may ask for a follow-up ([`ListenControl::FollowUp`]): the
//! listener then takes the next speech without the wake word, for a while.
//!
//! Edges: frames arrive on the audio edge (the source drops when it is full); utterances
//! leave on a control edge (`blocking_send`: the listener waits for speech-to-text to take
//! them); events go to the event edge (also waits, so nothing a consumer is told is lost);
//! the driver's requests arrive on the listen-control edge, read between frames.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::command::CommandSpotter;
use super::endpoint::{Arm, Endpoint, EndpointParams, Endpointer};
use super::stt::{SttError, SttHandle, SttOutput};
use super::vad::{LevelGate, Vad};
use super::wake::{WakeDetector, WakeHit};
use crate::audio::aec::SelfWakeGuard;
use crate::config::Config;
use crate::event::{AudioFrame, Event, FRAME_MS, FRAME_SAMPLES, ListenControl, Turn, Utterance};

/// What the listener needs from the outside, given at construction.
pub struct ListenerIo {
    /// Audio edge in.
    pub frames: mpsc::Receiver<AudioFrame>,
    /// Utterances out (control edge).
    pub utterances: mpsc::Sender<Utterance>,
    /// Events out.
    pub events: mpsc::Sender<Event>,
    /// Parent of every turn token; cancelled on shutdown.
    pub root: CancellationToken,
    /// Requests from the turn driver (follow-ups); `None` where nothing asks.
    pub control: Option<mpsc::Receiver<ListenControl>>,
}

/// How the listener decides and hands off, given at construction.
#[derive(Default)]
pub struct ListenerOptions {
    /// A wake word opens turns (else every utterance is one: `panda listen --no-wake`).
    pub use_wake: bool,
    /// The wake word's Whisper second stage.
    pub verifier: Option<WakeVerifier>,
    /// After a wake, the VAD is held this long (the earcon plays on the speaker).
    pub hold_after_wake_ms: u64,
    /// Ignores detections while Panda's own answer says the keyword (`panda run` on a
    /// sound card).
    pub guard: Option<Arc<SelfWakeGuard>>,
    /// Stop words heard over an answer without the wake word (`[aec] stop_words`; on
    /// only with the echo canceller, which tells when Panda's voice is in the room).
    pub stop_words: bool,
    /// The source runs in real time (a microphone, `--realtime`): while a wake word
    /// check runs the listener keeps taking frames off the audio edge (which would
    /// otherwise fill and drop them). A batch source (a file, a bench) is made to wait
    /// instead, as a full edge makes it wait anyway: every frame in its order.
    pub live: bool,
}

/// Second-stage wake word check: Whisper on the last moments of audio must have heard the
/// wake word's keyword. Templates alone cannot give both recall and precision (measured by
/// `panda bench wake`: 93% recall came with ~200 false wakes an hour on other speech), so
/// the template threshold is set for recall and this check supplies precision.
pub struct WakeVerifier {
    /// The speech-to-text worker (shared with the turn task; checks are rare).
    pub stt: SttHandle,
    /// Audio the check transcribes, ending `delay_frames` after the detection.
    pub window_frames: usize,
    /// Frames the check waits after a detection (so that it hears the whole phrase).
    pub delay_frames: usize,
    /// Frames before the window a second look takes in after a check heard words but
    /// not the phrase (`[wake] verify_lookback_ms`; 0: no such look).
    pub lookback_frames: usize,
    /// The wake phrase that must be heard (e.g. `hey panda`; see [`heard_wake_phrase`]).
    pub phrase: String,
    /// Initial prompt that steers Whisper's spelling (the wake phrase, e.g. `Hey Panda.`).
    pub prompt: String,
}

impl WakeVerifier {
    /// Builds the verifier for `[wake]`'s phrase (e.g. "hey panda"), window and delay.
    pub fn new(stt: SttHandle, wake: &crate::config::WakeConfig) -> Self {
        let (_, prompt) = phrase_parts(&wake.phrase);
        Self {
            stt,
            window_frames: (wake.verify_window_ms / FRAME_MS as u64).max(1) as usize,
            delay_frames: wake.verify_delay_ms.div_ceil(FRAME_MS as u64) as usize,
            lookback_frames: (wake.verify_lookback_ms / FRAME_MS as u64) as usize,
            phrase: wake.phrase.clone(),
            prompt,
        }
    }
}

impl WakeVerifier {
    /// Queues the check of `audio` (the window before a detection) on the speech-to-text
    /// worker and returns at once: the listener reads on while Whisper runs. `prompted`:
    /// with the phrase as Whisper's prompt (see [`Self::prompt`]); without it for the
    /// confirmation of a keyword that ran on into other words ([`keyword_runs_on`]).
    fn submit(&self, audio: &[i16], prompted: bool, token: &CancellationToken) -> Check {
        let prompt = if prompted { self.prompt.as_str() } else { "" };
        match self
            .stt
            .submit_blocking_with_prompt(audio, Some(prompt), token)
        {
            Ok(rx) => Check::Running(rx),
            Err(e) => Check::Done(self.judge(Err(e))),
        }
    }

    /// Runs the check on `audio` and waits for it: whether the keyword was heard, and
    /// what was heard (benches; the listener itself never waits, see [`Self::submit`]).
    pub fn check(&self, audio: &[i16], token: &CancellationToken) -> (bool, Option<String>) {
        let first = self.check_once(audio, true, token);
        self.confirmed(audio, first, token)
    }

    /// `first`, a prompted check of `audio`, or — when it accepted a keyword that ran on
    /// into other words — the verdict of the same audio without the prompt, which decides
    /// for good.
    fn confirmed(
        &self,
        audio: &[i16],
        first: (bool, Option<String>),
        token: &CancellationToken,
    ) -> (bool, Option<String>) {
        if first.0 && self.runs_on(first.1.as_deref()) {
            return self.check_once(audio, false, token);
        }
        first
    }

    /// One check, prompted or not, waited for.
    fn check_once(
        &self,
        audio: &[i16],
        prompted: bool,
        token: &CancellationToken,
    ) -> (bool, Option<String>) {
        match self.submit(audio, prompted, token) {
            Check::Running(rx) => self.judge(rx.blocking_recv().unwrap_or(Err(SttError::Stopped))),
            Check::Done(d) => d,
        }
    }

    /// Whether an accepted check heard the keyword run straight on into another word
    /// ("Hey Panda Camera to the left"): the case for a confirmation without the prompt.
    fn runs_on(&self, heard: Option<&str>) -> bool {
        heard.is_some_and(|t| keyword_runs_on(t, &self.phrase))
    }

    /// [`Self::check`] on the last `window_frames` of `audio` (which may hold the
    /// look-back before them); when Whisper heard other words, once more on all of it
    /// (see `[wake] verify_lookback_ms`).
    pub fn check_looking_back(
        &self,
        audio: &[i16],
        token: &CancellationToken,
    ) -> (bool, Option<String>) {
        let window = (self.window_frames * FRAME_SAMPLES).min(audio.len());
        let last = &audio[audio.len() - window..];
        let first = self.check_once(last, true, token);
        if first.0 {
            return self.confirmed(last, first, token);
        }
        if !self.heard_other_words(first.1.as_deref())
            || self.lookback_frames == 0
            || window == audio.len()
        {
            return first;
        }
        self.check(audio, token)
    }

    /// Whether a rejected check heard words other than the phrase's start — the case
    /// for a look further back (see `[wake] verify_lookback_ms`).
    fn heard_other_words(&self, heard: Option<&str>) -> bool {
        heard.is_some_and(|t| !only_the_phrase_start(t, &self.phrase))
    }

    /// Whether a check's result heard the keyword, and what it heard. A failing STT
    /// worker accepts the detection — a wake is better than a deaf appliance.
    fn judge(&self, result: Result<SttOutput, SttError>) -> (bool, Option<String>) {
        match result {
            Ok(out) => {
                use std::sync::atomic::Ordering::Relaxed;
                WAKE_CHECKS.fetch_add(1, Relaxed);
                WAKE_CHECK_MS.fetch_add(out.stt_ms, Relaxed);
                (heard_wake_phrase(&out.text, &self.phrase), Some(out.text))
            }
            Err(e) => {
                tracing::warn!(error = %e, "wake word check failed; accepting the detection");
                (true, None)
            }
        }
    }
}

/// Second-stage checks run in this process and Whisper's wall time on them (ms): the
/// cost of the first stage's false detections, which `panda bench wake` reports beside
/// the listener's own CPU. Process-wide counters, only ever added to.
pub static WAKE_CHECKS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// See [`WAKE_CHECKS`].
pub static WAKE_CHECK_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A second-stage check on its way.
enum Check {
    /// Queued on the speech-to-text worker.
    Running(oneshot::Receiver<Result<SttOutput, SttError>>),
    /// Decided: (accepted, what Whisper heard).
    Done((bool, Option<String>)),
}

/// A template detection waiting for its second-stage check.
struct Pending {
    hit: WakeHit,
    /// The frame the detection fired on.
    seq: u64,
    /// Whether the check already ran once and heard nothing (see [`Listening::settle`]).
    looked_again: bool,
    /// Whether this check takes in the look-back before its window (see
    /// [`Listening::settle`]).
    looked_back: bool,
    /// Whether this check runs without the prompt, confirming one that heard the
    /// keyword run on into other words (see [`Listening::settle`]).
    unprompted: bool,
    /// The frame after which the check's window is complete.
    due: u64,
    /// When the detection fired (stream time).
    at_ms: u64,
    /// Submitted once `due` is reached.
    check: Option<Check>,
    /// It fired while a question was being collected: the frames since go on into that
    /// question (and are kept in `held` too, in case the check confirms a new wake).
    during: bool,
}

/// The keyword (last word, lower case) and the Whisper prompt (words capitalised, a full
/// stop) of a wake phrase: "hey panda" → ("panda", "Hey Panda.").
pub fn phrase_parts(phrase: &str) -> (String, String) {
    let keyword = phrase
        .split_whitespace()
        .last()
        .unwrap_or("")
        .to_lowercase();
    let mut prompt = phrase
        .split_whitespace()
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_uppercase().chain(c).collect::<String>())
                .unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join(" ");
    prompt.push('.');
    (keyword, prompt)
}

/// True when `text` contains `keyword` or a near-spelling of it, in a word or across two
/// adjacent words ("pan da"): a whole word one edit away ("banda"), a whole word two edits
/// away with the same first letter for keywords of five letters or more ("pander"), or a
/// piece of a longer word one edit away that starts with the keyword's first letter
/// (Whisper fuses "hey panda" into "tapeanda"), or two edits away when only vowels moved
/// ("tapeander"). "Amanda" is not "panda".
pub fn mentions_keyword(text: &str, keyword: &str) -> bool {
    let kw: Vec<char> = keyword
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric())
        .collect();
    if kw.is_empty() {
        return true;
    }
    let words: Vec<Vec<char>> = text
        .to_lowercase()
        .split(|c: char| !c.is_alphanumeric() && c != '\'')
        .filter(|w| !w.is_empty())
        .map(|w| w.chars().filter(|c| c.is_alphanumeric()).collect())
        .collect();
    let close = |w: &[char]| {
        let d = edit_distance(w, &kw);
        if d <= 1 || (kw.len() >= 5 && d <= 2 && w.first() == kw.first()) {
            return true;
        }
        (kw.len()..=kw.len() + 1).any(|n| w.windows(n).any(|piece| keyword_piece(piece, &kw)))
    };
    words.iter().any(|w| close(w))
        || words
            .windows(2)
            .any(|p| close(&[p[0].clone(), p[1].clone()].concat()))
}

/// Whether a wake word check's transcript holds the wake phrase *as a phrase*, not just
/// its last word: "I saw a panda", "Pandora", "the pandemic" and "don't pander" are
/// speech about something else. For "hey panda" the keyword (or a near spelling, see
/// [`mentions_keyword`]) counts when, within its sentence,
/// - it follows one of the phrase's earlier words, give or take a letter, or a greeting
///   Whisper writes for it ("hi", "hay", "eh"): "Hey panda", "Thanks, hey Banda";
/// - it is fused with what came before ("Tapeanda": Whisper ran the two words together);
/// - or it is a call on its own — nothing, "a" or "the" before it, nothing after it, spelt
///   at most a letter off ("Panda.", "A panda.", "The Panda.": a quiet or reverberant
///   "hey").
///
/// A one-word phrase ("computer") needs only the word.
pub fn heard_wake_phrase(text: &str, phrase: &str) -> bool {
    let (keyword, _) = phrase_parts(phrase);
    let lead: Vec<Vec<char>> = phrase
        .split_whitespace()
        .map(plain)
        .filter(|w| !w.is_empty())
        .collect();
    if lead.len() < 2 {
        return mentions_keyword(text, &keyword);
    }
    let lead = &lead[..lead.len() - 1];
    let kw = plain(&keyword);
    // The word right before the keyword, by its vowel: "Take Panda", "Jay Panda" are
    // Whisper's hearing of "hey panda" in voices it knows less (flite's and espeak-ng's
    // held-out speakers of the wake bench: 3 of the 25 true wakes the check rejected).
    let lead_vowel = lead.last().and_then(|p| vowel_sound(p));
    let is_lead = |w: &[char]| {
        GREETINGS.iter().any(|g| plain(g) == w)
            || lead
                .iter()
                .any(|p| p == w || (p.len() >= 3 && edit_distance(p, w) <= 1))
            || lead_vowel.is_some() && vowel_sound(w) == lead_vowel
    };
    // Fused: a piece of a longer word, after at least one other letter, that is the
    // keyword give or take a letter (or two vowels).
    let fused = |w: &[char]| {
        w.len() > kw.len()
            && (1..w.len()).any(|start| {
                (kw.len()..=kw.len() + 1).any(|n| {
                    w.get(start..start + n)
                        .is_some_and(|p| keyword_piece(p, &kw))
                })
            })
    };
    text.split(['.', '!', '?', ';'])
        .map(|sentence| {
            sentence
                // A hyphen joins: "C-Panda" is Whisper fusing the phrase, as "Tapeanda" is.
                .split(|c: char| !c.is_alphanumeric() && c != '\'' && c != '-')
                .map(plain)
                .filter(|w| !w.is_empty())
                .collect::<Vec<_>>()
        })
        .any(|words| {
            (0..words.len()).any(|i| {
                let w = &words[i];
                if fused(w) {
                    return true;
                }
                // At most a letter shorter than the keyword: "Hey, pan the camera" is
                // two edits from "hey panda" but "pan" is a word of its own (a false
                // wake on the wake bench's near-misses).
                if w.len() + 1 < kw.len()
                    || !mentions_keyword(&w.iter().collect::<String>(), &keyword)
                {
                    return false;
                }
                match i.checked_sub(1).map(|j| &words[j]) {
                    Some(prev) if is_lead(prev) => true,
                    _ => {
                        // The whole sentence: "Panda." or "A panda.", never the end of
                        // a longer one ("I saw a panda."). Not any short word and the
                        // keyword ("You panda." on the wake bench): the prompt pulls
                        // Whisper to "Panda" — espeak's French "…l'Australie" was
                        // checked as "Happy Panda." and woke Panda over its answer.
                        let alone = i + 1 == words.len()
                            && (i == 0
                                || (i == 1
                                    && matches!(words[0].as_slice(), ['a'] | ['t', 'h', 'e'])));
                        alone && edit_distance(w, &kw) <= 1
                    }
                }
            })
        })
}

/// How Whisper writes the greeting before a keyword ("hey"), heard alone or in a phrase.
const GREETINGS: &[&str] = &["hi", "hay", "eh", "ay", "hey", "hei", "he"];

/// Whether a check's transcript holds no words, or only the phrase's words before its
/// keyword (or a greeting Whisper writes for them): "", ". .", "Hey.", "Hey," — the
/// detection fired before the keyword was said.
pub fn only_the_phrase_start(text: &str, phrase: &str) -> bool {
    let words: Vec<Vec<char>> = phrase.split_whitespace().map(plain).collect();
    let lead = &words[..words.len().saturating_sub(1)];
    text.split(|c: char| !c.is_alphanumeric() && c != '\'')
        .map(plain)
        .filter(|w| !w.is_empty())
        .all(|w| {
            GREETINGS.iter().any(|g| plain(g) == w)
                || lead
                    .iter()
                    .any(|p| *p == w || (p.len() >= 3 && edit_distance(p, &w) <= 1))
        })
}

/// Drops a leading wake phrase — or what Whisper made of it — from a transcript: the
/// words up to the first that [`mentions_keyword`], when every word before it is one of
/// the phrase's own (give or take a letter) or a filler ("okay", "um"); the rest starts
/// with a capital. "Hey Panda, what time is it?" → "What time is it?"; "Tapeanda. What
/// time is it?" → "What time is it?"; "What do pandas eat?" stays; a transcript that is
/// only the phrase becomes empty.
pub fn strip_wake_phrase(text: &str, phrase: &str) -> String {
    // The phrase said (or written by Whisper) more than once: "Hey Panda. Hey Panda, what
    // time is it?" — Whisper repeats its prompt over the phrase's echo or the silence
    // after it; on the wake bench a check that heard "Hey Panda. Hey Panda." took the
    // phrase's own tail for a question said in one breath.
    let mut rest = strip_once(text, phrase);
    for _ in 0..4 {
        let again = strip_once(&rest, phrase);
        if again == rest {
            break;
        }
        rest = again;
    }
    rest
}

/// One pass of [`strip_wake_phrase`].
fn strip_once(text: &str, phrase: &str) -> String {
    // "A panda." and "Eh, panda" are how Whisper writes a reverberant "hey panda".
    const FILLERS: &[&str] = &[
        "okay", "ok", "um", "uh", "oh", "so", "hi", "hey", "and", "a", "eh", "ay", "hay",
    ];
    let (keyword, _) = phrase_parts(phrase);
    let phrase_words: Vec<Vec<char>> = phrase.split_whitespace().map(plain).collect();
    let lead_in = |w: &str| {
        let w = plain(w);
        FILLERS.iter().any(|f| plain(f) == w)
            || phrase_words
                .iter()
                .any(|p| *p == w || (p.len() >= 3 && edit_distance(p, &w) <= 1))
    };
    let words: Vec<&str> = text.split_whitespace().collect();
    // A first sentence that is the phrase as Whisper misheard it ("Pay Panda.", "Here
    // you panda."): it ends on the keyword, with at most one word more than the phrase's.
    if let Some(end) = words
        .iter()
        .position(|w| w.ends_with(['.', '!', '?']))
        .filter(|&end| end + 1 < words.len() && end < phrase_words.len() + 1)
        && mentions_keyword(words[end], &keyword)
    {
        return capitalised(&words[end + 1..].join(" "));
    }
    // The transcript's first word two letters off the phrase's greeting ("Pay Panda what
    // is…"): still the phrase when the keyword follows it.
    let misheard_lead = |w: &str| {
        let w = plain(w);
        w.len() <= 4
            && phrase_words[..phrase_words.len().saturating_sub(1)]
                .iter()
                .any(|p| p.len() >= 3 && edit_distance(p, &w) <= 2)
    };
    let limit = words.len().min(phrase_words.len() + 2);
    let Some(cut) = (0..limit)
        .take_while(|&i| i == 0 || lead_in(words[i - 1]) || (i == 1 && misheard_lead(words[0])))
        .find(|&i| mentions_keyword(&words[..=i].join(" "), &keyword))
    else {
        // The keyword's last sound, left at the start when the utterance reached back
        // into the phrase ("…anda, set a timer" heard as "And set a timer"): a first word
        // within a letter of the keyword's ending (three letters or more), with words
        // after it.
        let kw = plain(&keyword);
        if let [first, _, ..] = words.as_slice() {
            let w = plain(first);
            let remnant = (1..kw.len().saturating_sub(2)).any(|from| {
                let ending = &kw[from..];
                ending.len() >= 3 && edit_distance(&w, ending) <= 1
            });
            // Or the phrase's greeting alone ("Hey stop!"): its keyword went unheard
            // under noise, or into the utterance before.
            let greeting = ["hi", "hey", "hay", "hei"].iter().any(|g| plain(g) == w)
                || phrase_words[..phrase_words.len().saturating_sub(1)].contains(&w);
            if remnant || greeting {
                return capitalised(&words[1..].join(" "));
            }
        }
        return text.trim().to_string();
    };
    capitalised(&words[cut + 1..].join(" "))
}

/// Whether the wake word check's transcript goes on past the wake phrase with words of
/// a question ("Hey Panda, speak French." — not "Hey Panda.", "Hey Panda. Um." or the
/// "Thank you." Whisper writes over silence): the question was said in the same breath.
pub fn said_after_phrase(heard: &str, phrase: &str) -> bool {
    // What Whisper writes over silence and breath, and hesitations.
    const NOT_WORDS: &[&str] = &[
        "you", "thank", "thanks", "bye", "um", "uh", "hmm", "mm", "oh", "ah", "okay", "ok",
    ];
    let rest = strip_wake_phrase(heard, phrase);
    // "Hey Panda. Hey": the phrase begun again is not a question.
    rest != heard.trim()
        && !only_the_phrase_start(&rest, phrase)
        && rest.split_whitespace().any(|w| {
            let w: String = plain(w).into_iter().collect();
            w.chars().count() >= 2 && !NOT_WORDS.contains(&w.as_str())
        })
}

/// Whether the check's transcript has the keyword run straight on into another word, no
/// punctuation between ("Hey Panda Camera to the left", not "Hey Panda, what time is
/// it?"): Whisper writes a call with a pause mark after it, and a name inside a noun
/// phrase without — the shape of a transcript its prompt may have pulled to the phrase.
pub fn keyword_runs_on(heard: &str, phrase: &str) -> bool {
    let (keyword, _) = phrase_parts(phrase);
    let kw = plain(&keyword);
    let tokens: Vec<&str> = heard.split_whitespace().collect();
    tokens.windows(2).any(|pair| {
        let w = plain(pair[0]);
        pair[0].ends_with(|c: char| c.is_alphanumeric())
            && pair[1].starts_with(|c: char| c.is_alphanumeric())
            && (w == kw || (kw.len() >= 3 && edit_distance(&w, &kw) <= 1))
    })
}

/// `rest` without leading punctuation, starting with a capital.
fn capitalised(rest: &str) -> String {
    let rest = rest.trim_start_matches(|c: char| !c.is_alphanumeric());
    let mut chars = rest.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Whether `piece` (part of a heard word) is the keyword `kw` as Whisper writes it when
/// it fuses the phrase: the same first letter and one edit away, or two edits when only
/// vowels moved ("tapeander": every consonant of the keyword still there, in order, and
/// nothing else).
fn keyword_piece(piece: &[char], kw: &[char]) -> bool {
    piece.first() == kw.first()
        && match edit_distance(piece, kw) {
            0 | 1 => true,
            2 => kw.len() >= 5 && consonants(piece) == consonants(kw),
            _ => false,
        }
}

/// The vowel sound of a short one-syllable word, read from its spelling: "hey", "hay",
/// "they", "jay", "weigh", "take", "tape" and the letters "j" and "k" say "ey"; "pick"
/// says "i". `None` for longer words, more than one vowel group, and a vowel alone ("a",
/// "I": the article and the pronoun, not a call). Spelling is a rough guide to sound, so
/// this only ever widens which word may stand before the keyword, never the keyword.
fn vowel_sound(w: &[char]) -> Option<String> {
    const EY: &str = "ey";
    let is_vowel = |c: &char| matches!(c, 'a' | 'e' | 'i' | 'o' | 'u');
    if w.len() > 5 || w.iter().any(|c| !c.is_ascii_lowercase()) {
        return None;
    }
    if matches!(w, ['j'] | ['k']) {
        return Some(EY.into());
    }
    // After the leading consonants: the vowel group, then what follows it.
    let onset = w.iter().take_while(|c| !is_vowel(c)).count();
    if onset == 0 || onset == w.len() {
        return None;
    }
    let rest = &w[onset..];
    let group = rest
        .iter()
        .take_while(|c| is_vowel(c) || **c == 'y')
        .count();
    let (vowel, coda) = rest.split_at(group);
    let vowel: String = vowel.iter().collect();
    match (vowel.as_str(), coda) {
        ("ay" | "ey" | "ei" | "ai", []) | ("ei", ['g', 'h']) => Some(EY.into()),
        // A consonant and a silent "e": "take", "tape", "jake".
        ("a", [c, 'e']) if !is_vowel(c) => Some(EY.into()),
        (v, coda) if !coda.iter().any(is_vowel) && !coda.contains(&'y') => Some(v.into()),
        _ => None,
    }
}

/// A word lower-cased, letters and digits only.
fn plain(w: &str) -> Vec<char> {
    w.to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric())
        .collect()
}

/// The letters of `w` that are not vowels (for "panda": p, n, d).
fn consonants(w: &[char]) -> Vec<char> {
    w.iter()
        .copied()
        .filter(|c| !matches!(c, 'a' | 'e' | 'i' | 'o' | 'u' | 'y'))
        .collect()
}

fn edit_distance(a: &[char], b: &[char]) -> usize {
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// How the listener decides that a turn starts.
pub enum Trigger {
    /// A wake word detector (the appliance).
    Wake(Box<WakeDetector>),
    /// Every utterance is a turn (`panda listen --no-wake`, transcription of recordings).
    Always,
}

/// Frames the listener holds back while a wake word check runs (10 s). It reads on
/// meanwhile, so a Whisper busy with a question (several seconds on a loaded machine)
/// never makes the audio edge drop the next question; past this it waits for the check
/// (a file source is then simply slowed; a live one drops and counts).
const MAX_HELD_FRAMES: usize = 334;

/// The utterance side of the listener: VAD, level gate, endpointer and the turn being
/// collected, fed frame by frame.
struct Collector {
    vad: Vad,
    level: LevelGate,
    ep: Endpointer,
    turn: Option<Turn>,
    /// The collection under way was armed by a wake word: its utterance earns a
    /// [`SecondChance`].
    wake_armed: bool,
    /// See [`SecondChance`].
    second: Option<SecondChance>,
    /// A real-time source: never wait on the speech-to-text stage (see
    /// [`ListenerOptions::live`]).
    live: bool,
}

/// Longest wait for the speech-to-text stage's word on a question (a file source only; a
/// live one never waits). It answers as soon as it has transcribed, so only a stage
/// stuck behind a full edge waits this long; the question is then taken as understood.
const UNDERSTOOD_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// After a wake word's question has ended and until the speech-to-text stage has said
/// whether it understood anything in it, the listener keeps listening for the turn. A
/// cough, a door or a burst of the television's chatter in the pause after "hey panda"
/// starts an utterance that ends before the person speaks; Whisper makes nothing of it,
/// and the turn used to end there with the question still to come (the wake bench's
/// empty transcripts, in babble after pauses of 1–2 s). What is collected meanwhile is
/// held back — no events, no utterance — until the word comes: nothing understood, and
/// it is the turn's question (one more chance, not more); understood, and it is dropped.
struct SecondChance {
    /// The turn whose question it may be.
    turn: Turn,
    /// The speech-to-text stage's word on the first utterance.
    understood: oneshot::Receiver<bool>,
    /// The endpointer's decisions on the new collection, held until the word comes.
    held: Vec<Endpoint>,
}

/// Where the listener's results go.
struct Outputs<'a> {
    utterances: &'a mpsc::Sender<Utterance>,
    events: &'a mpsc::Sender<Event>,
    root: &'a CancellationToken,
    wake_phrase: &'a Option<String>,
}

impl Outputs<'_> {
    fn emit(&self, ev: Event) {
        let _ = self.events.blocking_send(ev);
    }
}

impl Collector {
    fn new(cfg: &Config, live: bool) -> Self {
        Collector {
            vad: Vad::new(cfg.vad.mode),
            level: LevelGate::default(),
            ep: Endpointer::new(EndpointParams::from(&cfg.endpoint)),
            turn: None,
            wake_armed: false,
            second: None,
            live,
        }
    }

    /// Runs one frame through the VAD and the endpointer. False when the STT edge is
    /// closed (shutdown).
    fn feed(&mut self, f: &AudioFrame, out: &Outputs) -> bool {
        // The level gate belongs to one utterance: it starts over whenever none is being
        // collected.
        if !self.ep.in_speech() {
            self.level.reset();
        }
        let audio = audio_of(f);
        let voiced = if self.ep.is_armed() {
            self.level.voiced(audio, self.vad.is_voiced(audio))
        } else {
            // The room's level is followed while nothing listens too: the background
            // before a question is what its speech must stand above.
            self.level.observe(audio);
            false
        };
        match self.ep.push(f.seq, audio, voiced) {
            Some(e) => self.handle(e, out),
            None => true,
        }
    }

    /// Acts on an endpointer decision: held while a [`SecondChance`] awaits its word,
    /// else delivered — a wake's question with a second chance armed behind it.
    fn handle(&mut self, e: Endpoint, out: &Outputs) -> bool {
        if let Some(s) = &mut self.second {
            let ends = !matches!(e, Endpoint::SpeechStart { .. });
            s.held.push(e);
            // A file source waits for the word where the collection ends, so that what
            // is heard never depends on how fast Whisper ran.
            return !ends || self.live || self.resolve(true, out);
        }
        let question =
            self.wake_armed && matches!(e, Endpoint::SpeechEnd { .. }) && self.turn.is_some();
        if !matches!(e, Endpoint::SpeechStart { .. }) {
            self.wake_armed = false;
        }
        if !question {
            return deliver(e, &mut self.turn, out, None);
        }
        let turn = self.turn.clone().expect("checked above");
        let (tx, rx) = oneshot::channel();
        if !deliver(e, &mut self.turn, out, Some(tx)) {
            return false;
        }
        // Nothing from before the first utterance's end belongs to the next one.
        self.ep.arm(Arm::FollowUp {
            timeout: self.ep.question_timeout(),
        });
        self.second = Some(SecondChance {
            turn,
            understood: rx,
            held: Vec::new(),
        });
        true
    }

    /// Takes the speech-to-text stage's word on a [`SecondChance`]'s question if it has
    /// come (waiting for it when `wait`), and acts on it; a cancelled turn gives its
    /// second chance up at once. False when the STT edge closed.
    fn resolve(&mut self, wait: bool, out: &Outputs) -> bool {
        let Some(s) = &mut self.second else {
            return true;
        };
        let until = wait.then(|| std::time::Instant::now() + UNDERSTOOD_WAIT);
        let understood = loop {
            if s.turn.token.is_cancelled() {
                break true;
            }
            match s.understood.try_recv() {
                Ok(u) => break u,
                Err(oneshot::error::TryRecvError::Closed) => break true,
                Err(oneshot::error::TryRecvError::Empty) => match until {
                    None => return true,
                    Some(t) if std::time::Instant::now() >= t => {
                        tracing::warn!(
                            turn = s.turn.id,
                            "no word from speech-to-text on the question; taken as understood"
                        );
                        break true;
                    }
                    Some(_) => std::thread::sleep(std::time::Duration::from_millis(2)),
                },
            }
        };
        let s = self.second.take().expect("checked above");
        if understood {
            self.drop_second(s);
            return true;
        }
        tracing::info!(
            turn = s.turn.id,
            "nothing understood in the question; taking the next speech as it"
        );
        self.turn = Some(s.turn);
        for e in s.held {
            if !deliver(e, &mut self.turn, out, None) {
                return false;
            }
        }
        true
    }

    /// Forgets a second chance: what it collected, and the collection if still open —
    /// its audio goes back to the history, where a wake said meanwhile looks back.
    fn drop_second(&mut self, s: SecondChance) {
        let open = !s
            .held
            .iter()
            .any(|e| !matches!(e, Endpoint::SpeechStart { .. }));
        if open && self.ep.is_armed() {
            self.ep.release();
        }
    }

    /// A new wake word takes over from an unanswered second chance.
    fn abandon_second(&mut self) {
        if let Some(s) = self.second.take() {
            self.drop_second(s);
        }
    }

    /// A check decided: a wake opens the turn and arms the endpointer for the question
    /// (the held frames are then the batch to feed); anything else leaves the held frames
    /// as plain history.
    fn conclude(
        &mut self,
        p: Pending,
        Verdict {
            accepted,
            heard,
            one_breath,
        }: Verdict,
        held: &mut Vec<AudioFrame>,
        queued: usize,
        hold: usize,
        out: &Outputs,
    ) -> Vec<AudioFrame> {
        if !accepted {
            tracing::info!(score = p.hit.score, at_ms = p.at_ms, heard = ?heard, "wake word rejected by the second stage");
        }
        // Said again while a question was being collected (noise or a background voice
        // kept it open): the question is what came before the phrase, and the frames
        // since the detection start the new wake's turn.
        if accepted {
            // A new wake takes over from a question still to be judged.
            self.abandon_second();
        }
        if accepted && p.during {
            let cut = (p.seq + 1).saturating_sub(self.ep.lookback() as u64);
            if let Some(e) = self.ep.cut_for_wake(cut, p.seq + 1) {
                self.wake_armed = false;
                deliver(e, &mut self.turn, out, None);
            }
        }
        if accepted && !self.ep.is_armed() {
            let t = new_turn(out.root);
            out.emit(Event::Wake {
                turn: t.id,
                name: p.hit.name,
                score: p.hit.score,
                heard,
                at_ms: p.at_ms,
            });
            self.turn = Some(t);
            self.wake_armed = true;
            // The earcon plays from now, wall-clock: the held frames and those already
            // queued behind them were captured before it.
            self.ep.arm(if one_breath {
                Arm::WakeInOneBreath
            } else {
                Arm::Wake {
                    hold_after: held.len() + queued,
                    hold,
                }
            });
            std::mem::take(held)
        } else if p.during {
            // The held frames went into the question already.
            held.clear();
            Vec::new()
        } else {
            for f in held.drain(..) {
                self.ep.push(f.seq, audio_of(&f), false);
            }
            Vec::new()
        }
    }
}

/// Advances a pending detection's check: submits it once its window is complete, then
/// takes its result if there is one — waiting for it when `wait`.
fn poll_check(
    p: &mut Pending,
    verifier: &Option<WakeVerifier>,
    recent: &VecDeque<Box<[i16; FRAME_SAMPLES]>>,
    root: &CancellationToken,
    wait: bool,
) -> Option<(bool, Option<String>)> {
    let Some(v) = verifier else {
        return Some((true, None));
    };
    let check = match p.check.take() {
        Some(c) => c,
        None => {
            // Every look ends at the newest frame: it is the one the look was due at, as
            // frames wait in the backlog while a check runs. `recent` holds the
            // look-back too: only the look further back takes it.
            let frames = if p.looked_back {
                recent.len()
            } else {
                v.window_frames
            };
            let skip = recent.len().saturating_sub(frames);
            let audio: Vec<i16> = recent
                .iter()
                .skip(skip)
                .flat_map(|f| f.iter().copied())
                .collect();
            v.submit(&audio, !p.unprompted, &root.child_token())
        }
    };
    match check {
        Check::Done(d) => Some(d),
        Check::Running(rx) if wait => {
            Some(v.judge(rx.blocking_recv().unwrap_or(Err(SttError::Stopped))))
        }
        Check::Running(mut rx) => match rx.try_recv() {
            Ok(r) => Some(v.judge(r)),
            Err(oneshot::error::TryRecvError::Empty) => {
                p.check = Some(Check::Running(rx));
                None
            }
            Err(oneshot::error::TryRecvError::Closed) => Some(v.judge(Err(SttError::Stopped))),
        },
    }
}

/// The listener's state between frames (everything but its edges).
struct Listening {
    trigger: Trigger,
    verifier: Option<WakeVerifier>,
    guard: Option<Arc<SelfWakeGuard>>,
    spotter: Option<CommandSpotter>,
    c: Collector,
    /// Frames the VAD is held after a wake (the earcon).
    hold: usize,
    /// A template detection waiting for the second-stage check.
    pending: Option<Pending>,
    /// Frames since a detection, while its check waits for its window.
    held: Vec<AudioFrame>,
    /// The most recent audio, for the second-stage wake check.
    recent: VecDeque<Box<[i16; FRAME_SAMPLES]>>,
    window: usize,
    last_seq: u64,
    /// The last frame in which Panda's own voice was in the room (the canceller's linear
    /// output present, an echo path known or not yet learnt).
    echo_seq: Option<u64>,
    /// A real-time source (see [`ListenerOptions::live`]).
    live: bool,
}

/// A second-stage check's decision on a detection.
struct Verdict {
    /// The wake phrase was heard: a wake.
    accepted: bool,
    /// What Whisper heard (none without a check).
    heard: Option<String>,
    /// It heard words after the phrase: the question is already under way.
    one_breath: bool,
}

/// What [`Listening::settle`] found.
enum Settled {
    /// No check is running, or it has decided.
    Ready,
    /// The check is still running.
    Running,
    /// The STT edge closed (shutdown).
    Closed,
}

impl Listening {
    /// True while a second-stage check runs on the speech-to-text worker: frames wait
    /// their turn (they are processed in order once it has decided, as if it had taken
    /// no time — without the listener ever blocking on it).
    fn checking(&self) -> bool {
        self.pending.as_ref().is_some_and(|p| p.check.is_some())
    }

    /// Takes the running check's decision (waiting for it when `wait`) and acts on it.
    fn settle(&mut self, wait: bool, queued: usize, out: &Outputs) -> Settled {
        let Some(p) = self.pending.as_mut() else {
            return Settled::Ready;
        };
        let Some(verdict) = poll_check(p, &self.verifier, &self.recent, out.root, wait) else {
            return Settled::Running;
        };
        let p = self.pending.take().expect("checked above");
        // Whisper heard nothing at all in the window, or only the phrase's first words
        // ("Hey."): the detection fired early in the phrase (the network scores "hey
        // pan…" before "…da" is said) or on a noise. One more look, with the window
        // ending a check delay later, before rejecting — on the device test a rejected
        // early "hey panda" over an answer left the barge-in to a later detection, 1.9 s
        // after "stop"; on the wake bench "Hey.", "Hey," and ". ." were rejected phrases.
        let heard_nothing = verdict.1.as_deref().is_some_and(|t| {
            self.verifier
                .as_ref()
                .is_some_and(|v| only_the_phrase_start(t, &v.phrase))
        });
        // The unprompted confirmation's verdict is final: it heard the same window.
        if !verdict.0 && heard_nothing && !p.looked_again && !p.unprompted {
            let delay = self.verifier.as_ref().map_or(0, |v| v.delay_frames) as u64;
            tracing::debug!(
                score = p.hit.score,
                "wake word check heard nothing; looking again"
            );
            self.pending = Some(Pending {
                due: p.due + delay.max(1),
                check: None,
                looked_again: true,
                ..p
            });
            return Settled::Ready;
        }
        // Whisper heard words, but not the phrase: the detection may have fired late, on
        // a question said straight after the phrase (the network scores the phrase at
        // its window's start; on the wake bench "What's the weather?", "What should I
        // cook for?" — the phrase began before the check's window). One more look at the
        // same moment, with the look-back before the window.
        // Not where Panda's voice is in the audio: its answers say the keyword, and the
        // self-wake guard covers a detection on Panda's keyword, not a look back at it
        // from a detection elsewhere.
        let look_back = self
            .verifier
            .as_ref()
            .is_some_and(|v| v.lookback_frames > 0 && v.heard_other_words(verdict.1.as_deref()));
        let panda_heard = self
            .echo_seq
            .is_some_and(|e| e + self.window as u64 >= self.last_seq);
        if !verdict.0 && look_back && !p.looked_back && !panda_heard && !p.unprompted {
            tracing::debug!(
                score = p.hit.score,
                heard = ?verdict.1,
                "wake word check heard other words; looking further back"
            );
            self.pending = Some(Pending {
                check: None,
                looked_back: true,
                ..p
            });
            // Its window ends where the first look's did: submit it now.
            return self.settle(wait, queued, out);
        }
        // Whisper heard the keyword run straight on into another word ("Hey Panda Camera
        // to the left"): the prompt ("Hey Panda.") may have pulled it there from "hey, pan
        // the camera…" — the wake bench's only false wakes. The same window once more
        // without the prompt decides; a phrase said in one breath is still heard as one
        // there ("Hey Panda, what time is it?").
        if verdict.0
            && !p.unprompted
            && self
                .verifier
                .as_ref()
                .is_some_and(|v| v.runs_on(verdict.1.as_deref()))
        {
            tracing::debug!(
                score = p.hit.score,
                heard = ?verdict.1,
                "wake word ran on into other words; confirming without the prompt"
            );
            self.pending = Some(Pending {
                check: None,
                unprompted: true,
                ..p
            });
            return self.settle(wait, queued, out);
        }
        if !verdict.0
            && let Trigger::Wake(det) = &mut self.trigger
        {
            det.rejected(p.seq);
        }
        let one_breath = verdict.0
            && self
                .verifier
                .as_ref()
                .zip(verdict.1.as_deref())
                .is_some_and(|(v, heard)| said_after_phrase(heard, &v.phrase));
        let verdict = Verdict {
            accepted: verdict.0,
            heard: verdict.1,
            one_breath,
        };
        let batch = self
            .c
            .conclude(p, verdict, &mut self.held, queued, self.hold, out);
        for f in &batch {
            if !self.c.feed(f, out) {
                return Settled::Closed;
            }
        }
        Settled::Ready
    }

    /// One frame, in stream order. `queued`: frames captured after it and not yet
    /// processed. False when the STT edge closed (shutdown).
    fn step(
        &mut self,
        frame: AudioFrame,
        queued: usize,
        control: &mut Option<mpsc::Receiver<ListenControl>>,
        out: &Outputs,
    ) -> bool {
        let frames_of = |ms: u64| ms.div_ceil(FRAME_MS as u64) as usize;
        let c = &mut self.c;
        self.last_seq = frame.seq;
        if frame.linear.is_some() && !frame.no_echo {
            self.echo_seq = Some(frame.seq);
        }
        if self.window > 0 {
            if self.recent.len() == self.window {
                self.recent.pop_front();
            }
            // The wake word's audio: the canceller's linear output while Panda speaks.
            self.recent.push_back(Box::new(*audio_of(&frame)));
        }
        // The speech-to-text stage's word on a question, if it has come (or its turn
        // was cancelled).
        if !c.resolve(false, out) {
            return false;
        }
        // A cancelled turn (barge-in, shutdown) stops collecting at once.
        if let Some(t) = &c.turn
            && t.token.is_cancelled()
            && c.ep.is_armed()
        {
            c.ep.disarm();
            out.emit(Event::Cancelled {
                turn: t.id,
                stage: "listener",
            });
            c.turn = None;
        }
        while let Some(cmd) = control.as_mut().and_then(|c| c.try_recv().ok()) {
            match cmd {
                ListenControl::FollowUp { window_ms } if !c.ep.is_armed() => {
                    let t = new_turn(out.root);
                    out.emit(Event::FollowUp {
                        turn: t.id,
                        window_ms,
                        at_ms: frame.start_ms(),
                    });
                    c.turn = Some(t);
                    c.wake_armed = false;
                    c.ep.arm(Arm::FollowUp {
                        timeout: frames_of(window_ms),
                    });
                }
                // Already waiting for or hearing speech (a wake came first).
                ListenControl::FollowUp { .. } => {}
            }
        }
        let det = match &mut self.trigger {
            Trigger::Wake(det) => det,
            Trigger::Always => {
                if !c.ep.is_armed() {
                    c.ep.arm(Arm::Open);
                }
                return c.feed(&frame, out);
            }
        };
        let hit = det.process(frame.seq, audio_of(&frame));
        // Panda saying its own wake word is not a wake — where the microphone hears
        // Panda at all. (The canceller's double-talk
        // flags cannot overrule this: while its filter converges, early in the first
        // answer, Panda's own voice is flagged as someone else in half the frames of a
        // "hey panda" — measured by the offline room test.)
        let hit = match (hit, &self.guard) {
            (Some(h), Some(g)) if g.active() && !frame.no_echo => {
                tracing::info!(score = h.score, "wake word in Panda's own voice ignored");
                out.emit(Event::SelfWake {
                    score: h.score,
                    at_ms: end_ms(&frame),
                });
                None
            }
            (hit, _) => hit,
        };
        // Stop words over an answer: only while Panda's voice is in the room and nothing
        // else listens.
        match &mut self.spotter {
            Some(sp)
                if !c.ep.is_armed()
                    && self.pending.is_none()
                    && let Some(lin) = &frame.linear =>
            {
                // The linear output: the suppressor also eats a voice talking over the
                // answer. Its residual echo is voiced too, so a frame counts only where
                // the canceller also heard someone else.
                let voiced = frame.near_end && c.vad.is_voiced(lin);
                if let Some(samples) = sp.push(lin, voiced) {
                    let t = new_turn(out.root);
                    let start_ms = end_ms(&frame)
                        .saturating_sub((samples.len() / FRAME_SAMPLES) as u64 * FRAME_MS as u64);
                    let u = Utterance {
                        turn: t,
                        samples,
                        start_ms,
                        end: crate::event::EndReason::Silence,
                        wake_phrase: None,
                        command: true,
                        understood: None,
                    };
                    // A stop word is worth something only now: while the speech-to-text
                    // stage is behind (a question, or earlier candidates — often the
                    // answer's own residual echo), a live listener drops this one rather
                    // than wait on the edge, which would drop the microphone's frames (a
                    // next question, a "hey panda") instead. A file source just waits.
                    if !self.live {
                        if out.utterances.blocking_send(u).is_err() {
                            return false;
                        }
                    } else {
                        match out.utterances.try_send(u) {
                            Ok(()) => {}
                            Err(mpsc::error::TrySendError::Full(_)) => {
                                tracing::debug!("stop word candidate dropped: speech-to-text busy")
                            }
                            Err(mpsc::error::TrySendError::Closed(_)) => return false,
                        }
                    }
                }
            }
            Some(sp) => sp.reset(),
            None => {}
        }
        if self.pending.is_none() {
            // A detection while a question awaits its word: a file source waits for the
            // word (what follows is then as if Whisper had taken no time); a live one
            // lets the new wake take over.
            if hit.is_some() && c.second.is_some() {
                if self.live {
                    c.abandon_second();
                } else if !c.resolve(true, out) {
                    return false;
                }
            }
            // A detection while idle, or while a question is being collected (a wake
            // said again: the question ran on in noise, or the person starts over). Not
            // while waiting for a question to start: that is the same wake's phrase.
            let during = c.ep.in_speech();
            if let Some(hit) = hit.filter(|_| !c.ep.is_armed() || during) {
                tracing::debug!(
                    score = hit.score,
                    at_ms = end_ms(&frame),
                    during,
                    "wake word detected; checking"
                );
                let due = frame.seq + self.verifier.as_ref().map_or(0, |v| v.delay_frames) as u64;
                self.pending = Some(Pending {
                    hit,
                    seq: frame.seq,
                    looked_again: false,
                    looked_back: false,
                    unprompted: false,
                    due,
                    at_ms: end_ms(&frame),
                    check: None,
                    during,
                });
                if during {
                    if !c.feed(&frame, out) {
                        return false;
                    }
                } else {
                    // The detection's frame is the phrase's (kept as history).
                    c.ep.push(frame.seq, audio_of(&frame), false);
                }
            } else if !c.feed(&frame, out) {
                return false;
            }
        } else if self.pending.as_ref().is_some_and(|p| p.during) {
            // The question goes on meanwhile; a confirmed wake replays these frames.
            self.held.push(frame.clone());
            if !c.feed(&frame, out) {
                return false;
            }
        } else {
            self.held.push(frame);
        }
        // The check's window is complete: it starts (and, without a verifier, decides).
        if self
            .pending
            .as_ref()
            .is_some_and(|p| self.last_seq >= p.due)
        {
            return !matches!(self.settle(false, queued, out), Settled::Closed);
        }
        true
    }
}

/// Runs the listener until the audio edge closes or `root` is cancelled. Build the
/// [`Trigger`] on the thread that runs this (see [`spawn`]).
pub fn run(cfg: &Config, trigger: Trigger, opts: ListenerOptions, io: ListenerIo) {
    let ListenerOptions {
        verifier,
        hold_after_wake_ms,
        guard,
        stop_words,
        live,
        ..
    } = opts;
    let ListenerIo {
        mut frames,
        utterances,
        events,
        root,
        mut control,
    } = io;
    let wake_phrase = matches!(trigger, Trigger::Wake(_)).then(|| cfg.wake.phrase.clone());
    let out = Outputs {
        utterances: &utterances,
        events: &events,
        root: &root,
        wake_phrase: &wake_phrase,
    };
    let window = verifier
        .as_ref()
        .map_or(0, |v| v.window_frames + v.lookback_frames);
    let mut l = Listening {
        trigger,
        verifier,
        guard,
        spotter: stop_words.then(CommandSpotter::default),
        c: Collector::new(cfg, live),
        hold: hold_after_wake_ms.div_ceil(FRAME_MS as u64) as usize,
        pending: None,
        held: Vec::new(),
        recent: VecDeque::with_capacity(window + 1),
        window,
        last_seq: 0,
        echo_seq: None,
        live,
    };
    // Frames received and not yet processed (while a check runs).
    let mut backlog: VecDeque<AudioFrame> = VecDeque::new();
    let mut open = true;
    while open {
        match frames.blocking_recv() {
            Some(f) if !root.is_cancelled() => backlog.push_back(f),
            Some(_) => return,
            // The stream ended: what is left is processed, waiting for any check.
            None => open = false,
        }
        loop {
            if l.checking() {
                let wait = !live || !open || backlog.len() >= MAX_HELD_FRAMES;
                match l.settle(wait, backlog.len() + frames.len(), &out) {
                    Settled::Ready => {}
                    Settled::Running => break,
                    Settled::Closed => return,
                }
            }
            let Some(f) = backlog.pop_front() else { break };
            if !l.step(f, backlog.len() + frames.len(), &mut control, &out) {
                return;
            }
        }
    }
    // A check that looks again (after nothing, or further back) settles more than once.
    while l.pending.is_some() && !root.is_cancelled() {
        if matches!(l.settle(true, 0, &out), Settled::Closed) {
            return;
        }
    }
    if let Some(e) = l.c.ep.finish(l.last_seq)
        && !l.c.handle(e, &out)
    {
        return;
    }
    // A question still to be judged: its word decides what was held, and a turn left
    // waiting for its question ends.
    if !l.c.resolve(true, &out) {
        return;
    }
    if let Some(e) = l.c.ep.finish(l.last_seq) {
        deliver(e, &mut l.c.turn, &out, None);
    }
}

/// The audio the listener works on: while Panda's voice is in the room, the echo
/// canceller's linear output (its residual-echo suppressor also eats a person talking
/// over the answer: `panda bench aec` measured the person's voice 2–4 dB above what the
/// suppressor changed of it, against 6–13 dB for the linear output, and the wake word
/// and Whisper hear the person better in the latter); otherwise the microphone as the
/// canceller passed it.
fn audio_of(frame: &AudioFrame) -> &[i16; FRAME_SAMPLES] {
    frame.linear.as_deref().unwrap_or(&frame.samples)
}

fn end_ms(frame: &AudioFrame) -> u64 {
    frame.start_ms() + FRAME_MS as u64
}

fn new_turn(root: &CancellationToken) -> Turn {
    Turn::next(root)
}

/// Maps an endpointer decision to events and (for a finished utterance) the STT edge,
/// with `understood` for the STT stage's word on it (see [`SecondChance`]). Returns false
/// when the STT edge is closed (shutdown).
fn deliver(
    e: Endpoint,
    turn: &mut Option<Turn>,
    out: &Outputs,
    understood: Option<oneshot::Sender<bool>>,
) -> bool {
    let (root, emit) = (out.root, |ev| out.emit(ev));
    let ms = |seq: u64| seq * FRAME_MS as u64;
    match e {
        Endpoint::SpeechStart { at_seq } => {
            let t = turn.get_or_insert_with(|| new_turn(root));
            emit(Event::SpeechStart {
                turn: t.id,
                at_ms: ms(at_seq),
            });
            true
        }
        Endpoint::NoSpeech { at_seq } => {
            if let Some(t) = turn.take() {
                emit(Event::NoQuestion {
                    turn: t.id,
                    at_ms: ms(at_seq),
                });
            }
            true
        }
        Endpoint::SpeechEnd {
            samples,
            start_seq,
            end_seq,
            reason,
        } => {
            let t = turn.take().unwrap_or_else(|| new_turn(root));
            emit(Event::SpeechEnd {
                turn: t.id,
                at_ms: ms(end_seq) + FRAME_MS as u64,
                reason,
            });
            debug_assert_eq!(samples.len() % FRAME_SAMPLES, 0);
            out.utterances
                .blocking_send(Utterance {
                    turn: t,
                    samples,
                    start_ms: ms(start_seq),
                    end: reason,
                    wake_phrase: out.wake_phrase.clone(),
                    command: false,
                    understood,
                })
                .is_ok()
        }
    }
}

/// Starts the listener thread. The wake word file is loaded on that thread (rustpotter is
/// not `Send`); a load error is returned here, before any audio flows.
pub fn spawn(
    cfg: Config,
    opts: ListenerOptions,
    io: ListenerIo,
) -> Result<std::thread::JoinHandle<()>, super::wake::WakeError> {
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
    let handle = std::thread::Builder::new()
        .name("panda-listener".into())
        .spawn(move || {
            let trigger = if opts.use_wake {
                match WakeDetector::load_configured(&cfg) {
                    Ok(d) => Trigger::Wake(Box::new(d)),
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                }
            } else {
                Trigger::Always
            };
            let _ = ready_tx.send(Ok(()));
            run(&cfg, trigger, opts, io);
        })
        .expect("spawning a thread only fails when the OS is out of resources");
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(e)) => Err(e),
        Err(_) => Ok(handle),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_keyword_running_on_into_a_word_is_told_from_a_call() {
        for heard in [
            "Hey Panda Camera to the left.",
            "Hey Panda camera",
            "hey banda express is open",
        ] {
            assert!(keyword_runs_on(heard, "hey panda"), "{heard}");
        }
        for heard in [
            "Hey Panda, what time is it?",
            "Hey Panda.",
            "Hey Panda. What?",
            "Hey Panda",
            "Hey Panda! Stop.",
            "Hey, pan the camera to the left.",
            "Tapeanda, set a timer",
            "I saw a Panda at the zoo.",
        ] {
            let expect = heard == "I saw a Panda at the zoo.";
            assert_eq!(keyword_runs_on(heard, "hey panda"), expect, "{heard}");
        }
    }

    #[test]
    fn keyword_matching_tolerates_near_spellings_only() {
        for heard in [
            "Hey Panda, what time is it?",
            "hey panda",
            "Hey, Banda.",
            "Hey pander",
            "pan da",
            "Panda's",
            "Tapeander.",
            "Shapander.",
        ] {
            assert!(mentions_keyword(heard, "panda"), "{heard}");
        }
        for heard in [
            "Hey Amanda",
            "I need a pen",
            "What time is it?",
            "",
            "Hey there",
            "pandemonium",
            "It happened when I opened the door",
            "I paint on weekends",
            "Hand me the spoon",
        ] {
            let expect = heard == "pandemonium";
            assert_eq!(mentions_keyword(heard, "panda"), expect, "{heard}");
        }
    }

    #[test]
    fn the_check_wants_the_phrase_not_just_its_last_word() {
        for heard in [
            "Hey Panda.",
            "Hey, panda, what time is it?",
            "hey panda what time is it",
            "Hey Banda.",
            "Hey pander.",
            "Hey Pand.",
            "Hi, Panda.",
            "A panda.",
            "Panda.",
            "Tapeanda.",
            "Heypanda.",
            "C-Panda.",
            "Thanks, hey panda.",
            "I left it there. Hey panda.",
            "Hey. Panda.",
            "The Panda.",
            "Take Panda.",
            "Jay Panda.",
            "They panda.",
            "K. Panda.",
        ] {
            assert!(heard_wake_phrase(heard, "hey panda"), "{heard}");
        }
        for heard in [
            "I saw a panda at the zoo yesterday.",
            "I saw a panda.",
            "There's a panda.",
            "a panda at the zoo",
            "Pandora opened the box.",
            "The pandemic changed how we work.",
            "Don't pander to them.",
            "The pandas in China eat bamboo.",
            "Hey Amanda, how was your weekend?",
            "Hey man, the bus is here.",
            "Hey, pan the camera to the left.",
            "Hey pad.",
            "Banana bread.",
            "We watched the panda.",
            "Happy Panda.",
            "You panda.",
            "Tell panda.",
            "Take the panda home.",
            "I paint pandas.",
            "",
        ] {
            assert!(!heard_wake_phrase(heard, "hey panda"), "{heard}");
        }
        assert!(heard_wake_phrase("Computer, lights.", "computer"));
    }

    #[test]
    fn a_check_that_heard_only_the_greeting_looks_again() {
        for heard in ["", ". .", "Hey.", "Hey,", "Hi!", "hey hey"] {
            assert!(only_the_phrase_start(heard, "hey panda"), "{heard:?}");
        }
        for heard in [
            "Hey Panda.",
            "Hey, can you hand me that pen?",
            "Thank you.",
            "Yeah.",
        ] {
            assert!(!only_the_phrase_start(heard, "hey panda"), "{heard:?}");
        }
    }

    #[test]
    fn words_after_the_phrase_in_the_check_mean_one_breath() {
        for heard in [
            "Hey Panda, speak French.",
            "Hey Panda. Speak.",
            "hey panda stop",
            "Tapeanda. What time",
            "A panda. Set a timer.",
            "Hey Panda. Hey Panda, what time is it?",
        ] {
            assert!(said_after_phrase(heard, "hey panda"), "{heard}");
        }
        for heard in [
            "Hey Panda.",
            "Hey, Panda!",
            "Hey Panda. Thank you.",
            "Hey panda, um.",
            "Tapeanda.",
            "Hey Panda. Hey Panda.",
            "Hey Panda. Hey",
            "Hey Panda. Hey Panda. Hey Panda. Hey",
            "",
            // No phrase found at the start: nothing is known to follow it.
            "I saw a panda at the zoo.",
        ] {
            assert!(!said_after_phrase(heard, "hey panda"), "{heard}");
        }
    }

    #[test]
    fn a_leading_wake_phrase_leaves_the_transcript() {
        for (heard, want) in [
            ("Hey Panda, what time is it?", "What time is it?"),
            ("hey panda what time is it", "What time is it"),
            ("Tapeanda. What time is it?", "What time is it?"),
            ("Hey, Banda. Set a timer.", "Set a timer."),
            ("Okay, hey panda, stop.", "Stop."),
            (
                "A panda. Set a timer for 10 minutes.",
                "Set a timer for 10 minutes.",
            ),
            ("Hey panda.", ""),
            ("Pay Panda. Set a timer.", "Set a timer."),
            (
                "Pay Panda what is seven times eight?",
                "What is seven times eight?",
            ),
            (
                "Here you panda. What's the date today?",
                "What's the date today?",
            ),
            (
                "I like the panda. It is cute.",
                "I like the panda. It is cute.",
            ),
            ("What time is it?", "What time is it?"),
            (
                "And set a timer for 10 minutes.",
                "Set a timer for 10 minutes.",
            ),
            ("Anda, what time is it?", "What time is it?"),
            ("Andrew is coming at six.", "Andrew is coming at six."),
            ("And.", "And."),
            ("What do pandas eat?", "What do pandas eat?"),
            ("Tell me about the panda.", "Tell me about the panda."),
            ("Hey Panda. Hey Panda, what time is it?", "What time is it?"),
            ("Hey Panda. Hey Panda. Hey Panda.", ""),
            (
                "Hey Panda, Andrew is coming at six.",
                "Andrew is coming at six.",
            ),
            ("Hey stop!", "Stop!"),
            ("Hey, what time is it?", "What time is it?"),
            ("He wrote a book.", "He wrote a book."),
            ("Hey.", "Hey."),
        ] {
            assert_eq!(strip_wake_phrase(heard, "hey panda"), want, "{heard}");
        }
    }

    /// The utterance side alone, with its edges: decisions go in by hand (no audio).
    struct Rig {
        c: Collector,
        utterances: mpsc::Receiver<Utterance>,
        events: mpsc::Receiver<Event>,
        utt_tx: mpsc::Sender<Utterance>,
        ev_tx: mpsc::Sender<Event>,
        root: CancellationToken,
        phrase: Option<String>,
    }

    impl Rig {
        fn new(live: bool) -> Self {
            let cfg = Config::default();
            let (utt_tx, utterances) = mpsc::channel(8);
            let (ev_tx, events) = mpsc::channel(32);
            Rig {
                c: Collector::new(&cfg, live),
                utterances,
                events,
                utt_tx,
                ev_tx,
                root: CancellationToken::new(),
                phrase: Some("hey panda".into()),
            }
        }

        /// Runs `f` with the collector and its outputs.
        fn with<R>(&mut self, f: impl FnOnce(&mut Collector, &Outputs) -> R) -> R {
            let out = Outputs {
                utterances: &self.utt_tx,
                events: &self.ev_tx,
                root: &self.root,
                wake_phrase: &self.phrase,
            };
            f(&mut self.c, &out)
        }

        /// A wake opened turn `Turn` and its question has just ended.
        fn question_ended(&mut self) -> Utterance {
            let t = new_turn(&self.root);
            self.c.turn = Some(t);
            self.c.wake_armed = true;
            self.c.ep.arm(Arm::Wake {
                hold_after: 0,
                hold: 0,
            });
            assert!(self.with(|c, o| c.handle(end(10, 20), o)));
            let u = self.utterances.try_recv().expect("the question was sent");
            assert!(matches!(
                self.events.try_recv(),
                Ok(Event::SpeechEnd { turn, .. }) if turn == u.turn.id
            ));
            u
        }

        fn events(&mut self) -> Vec<Event> {
            std::iter::from_fn(|| self.events.try_recv().ok()).collect()
        }
    }

    fn end(start_seq: u64, end_seq: u64) -> Endpoint {
        Endpoint::SpeechEnd {
            samples: vec![0; FRAME_SAMPLES * (end_seq - start_seq) as usize],
            start_seq,
            end_seq,
            reason: crate::event::EndReason::Silence,
        }
    }

    #[test]
    fn a_question_with_nothing_understood_gives_the_next_speech_its_place() {
        let mut r = Rig::new(true);
        let mut first = r.question_ended();
        let turn = first.turn.id;
        // Still listening: the endpointer waits for more speech, and what comes is held.
        assert!(r.c.ep.is_armed());
        assert!(r.with(|c, o| c.handle(Endpoint::SpeechStart { at_seq: 60 }, o)));
        assert!(r.with(|c, o| c.handle(end(50, 90), o)));
        assert!(r.with(|c, o| c.resolve(false, o)), "no word yet");
        assert!(r.events().is_empty());
        assert!(r.utterances.try_recv().is_err());
        // Whisper understood nothing in the first: the held speech is the turn's question.
        first.understood.take().unwrap().send(false).unwrap();
        assert!(r.with(|c, o| c.resolve(false, o)));
        let ev = r.events();
        assert!(
            matches!(ev[..], [Event::SpeechStart { turn: a, at_ms: 1800 }, Event::SpeechEnd { turn: b, .. }] if a == turn && b == turn),
            "{ev:?}"
        );
        let second = r.utterances.try_recv().expect("the second utterance");
        assert_eq!(second.turn.id, turn);
        assert_eq!(second.start_ms, 1500);
        // One more chance, not more.
        assert!(second.understood.is_none());
        assert!(r.c.second.is_none());
    }

    #[test]
    fn an_understood_question_drops_what_was_collected_after_it() {
        let mut r = Rig::new(true);
        let mut first = r.question_ended();
        assert!(r.with(|c, o| c.handle(Endpoint::SpeechStart { at_seq: 60 }, o)));
        first.understood.take().unwrap().send(true).unwrap();
        assert!(r.with(|c, o| c.resolve(false, o)));
        assert!(r.events().is_empty());
        assert!(r.utterances.try_recv().is_err());
        assert!(r.c.second.is_none() && r.c.turn.is_none());
        assert!(!r.c.ep.is_armed(), "the held collection is closed");
        // A word never sent (the stage dropped the question) counts as understood.
        let first = r.question_ended();
        drop(first);
        assert!(r.with(|c, o| c.resolve(false, o)));
        assert!(r.c.second.is_none() && !r.c.ep.is_armed());
    }

    #[test]
    fn a_file_source_waits_for_the_word_where_the_second_collection_ends() {
        let mut r = Rig::new(false);
        let mut first = r.question_ended();
        let turn = first.turn.id;
        let tx = first.understood.take().unwrap();
        let answer = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(50));
            tx.send(false).unwrap();
        });
        // No speech came in the window: with nothing understood, the turn had no question.
        assert!(r.with(|c, o| c.handle(Endpoint::NoSpeech { at_seq: 120 }, o)));
        answer.join().unwrap();
        let ev = r.events();
        assert!(
            matches!(ev[..], [Event::NoQuestion { turn: t, .. }] if t == turn),
            "{ev:?}"
        );
        assert!(r.c.second.is_none() && r.c.turn.is_none());
    }

    #[test]
    fn a_cancelled_turn_gives_up_its_second_chance() {
        let mut r = Rig::new(true);
        let mut first = r.question_ended();
        first.turn.token.cancel();
        first.understood.take().unwrap().send(false).unwrap();
        assert!(r.with(|c, o| c.handle(end(50, 90), o)));
        assert!(r.with(|c, o| c.resolve(false, o)));
        assert!(r.events().is_empty());
        assert!(r.utterances.try_recv().is_err());
    }

    #[test]
    fn phrase_gives_keyword_and_prompt() {
        assert_eq!(
            phrase_parts("hey panda"),
            ("panda".into(), "Hey Panda.".into())
        );
        assert_eq!(
            phrase_parts("  Computer "),
            ("computer".into(), "Computer.".into())
        );
    }
}
