//! Intent routing: utterance → built-in skill, helper agent(s), or the language model.
//!
//! Matchers are compiled once at start from example phrases (the skills' own and those
//! in each `[[agents]]` entry): an example with `{slots}` becomes an anchored regex that
//! captures them; one without becomes a word set scored by overlap — the share of the
//! example's words present, lightly penalised by extra words, so "what time is it please"
//! still routes to the clock while "what time does the shop close" does not. Below
//! `[router] min_confidence` the utterance goes to the LLM. Routes are cached in an LRU
//! keyed by the normalised utterance: a repeated question costs a hash lookup.
//!
//! Runs on the turn task (pure CPU, microseconds); no I/O.

use std::collections::{HashMap, HashSet};
use std::num::NonZeroUsize;
use std::sync::Mutex;

use regex::Regex;

use crate::config::{AgentConfig, RouterConfig};

/// Built-in skills (no LLM needed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Skill {
    /// Current time.
    Time,
    /// Today's date.
    Date,
    /// Start a timer (`duration` slot).
    Timer,
    /// Set an alarm (`time` slot).
    Alarm,
    /// Cancel timers and alarms.
    CancelTimers,
    /// Stop speaking / cancel the turn.
    Stop,
    /// Switch language (`language` slot).
    Language,
    /// What Panda can do.
    Help,
    /// Health of Panda's own services.
    Status,
    /// Store a fact (`fact` slot).
    Remember,
    /// Say what Panda remembers (`topic` slot; none: the latest facts).
    Recall,
    /// Delete the memory that best matches (`topic` slot).
    Forget,
}

impl Skill {
    /// Name for events.
    pub fn name(self) -> &'static str {
        match self {
            Skill::Time => "time",
            Skill::Date => "date",
            Skill::Timer => "timer",
            Skill::Alarm => "alarm",
            Skill::CancelTimers => "cancel_timers",
            Skill::Stop => "stop",
            Skill::Language => "language",
            Skill::Help => "help",
            Skill::Status => "status",
            Skill::Remember => "remember",
            Skill::Recall => "recall",
            Skill::Forget => "forget",
        }
    }
}

const SKILL_EXAMPLES: &[(Skill, &[&str])] = &[
    (
        Skill::Time,
        &[
            "what time is it",
            "what is the time",
            "tell me the time",
            "do you have the time",
            "what time is it now",
            "current time",
            // Clipped forms, as people (and Whisper) cut them: "What time?"
            "what time",
            "the time",
            "time",
        ],
    ),
    (
        Skill::Date,
        &[
            "what is the date",
            "what is the date today",
            "what day is it",
            "what day is it today",
            "what is today's date",
            "today's date",
            "what day",
            "what date",
            "the date",
            "date",
        ],
    ),
    (
        Skill::Timer,
        &[
            "set a timer for {duration}",
            "set timer for {duration}",
            "start a timer for {duration}",
            "timer for {duration}",
            "set a {duration} timer",
            "start a {duration} timer",
            "remind me in {duration}",
            "timer {duration}",
            "{duration} timer",
        ],
    ),
    (
        Skill::Alarm,
        &[
            "set an alarm for {time}",
            "set alarm for {time}",
            "wake me up at {time}",
            "wake me at {time}",
            "alarm at {time}",
        ],
    ),
    (
        Skill::CancelTimers,
        &[
            "cancel the timer",
            "cancel my timer",
            "cancel the alarm",
            "cancel all timers",
            "delete the timer",
            "turn off the alarm",
        ],
    ),
    (
        Skill::Stop,
        &[
            "stop",
            "cancel",
            "be quiet",
            "never mind",
            "stop talking",
            "that is enough",
            "shut up",
            "forget it",
        ],
    ),
    (
        Skill::Language,
        &[
            "speak {language}",
            "switch to {language}",
            "talk to me in {language}",
            "speak in {language}",
            "change the language to {language}",
            "change language to {language}",
            "can you speak {language}",
            "answer in {language}",
        ],
    ),
    (
        Skill::Help,
        &[
            "what can you do",
            "help",
            "what are your skills",
            "what do you do",
            "how can you help me",
        ],
    ),
    (
        Skill::Status,
        &[
            "status",
            "system status",
            "how are your services",
            "are your services working",
            "are you working",
            "service status",
        ],
    ),
    (
        Skill::Remember,
        &[
            "remember that {fact}",
            "remember {fact}",
            "do not forget that {fact}",
            "make a note that {fact}",
            "note that {fact}",
            "keep in mind that {fact}",
        ],
    ),
    (
        Skill::Recall,
        &[
            "what do you remember about {topic}",
            "do you remember {topic}",
            "what did i tell you about {topic}",
            "what have i told you about {topic}",
            "what do you remember",
            "what have you remembered",
        ],
    ),
    (
        Skill::Forget,
        &[
            "forget that {topic}",
            "forget about {topic}",
            "forget what i said about {topic}",
            "forget what i told you about {topic}",
            "delete the memory about {topic}",
            "forget {topic}",
        ],
    ),
];

/// Where an utterance goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Route {
    /// A built-in skill with its slots.
    Skill {
        /// Which.
        skill: Skill,
        /// Captured slots.
        slots: HashMap<String, String>,
    },
    /// One or more agents (called concurrently).
    Agents(Vec<AgentCall>),
    /// The language model.
    Llm,
}

impl Route {
    /// Short label for events: `skill:time`, `agent:scott+penny`, `llm`.
    pub fn label(&self) -> String {
        match self {
            Route::Skill { skill, .. } => format!("skill:{}", skill.name()),
            Route::Agents(calls) => format!(
                "agent:{}",
                calls
                    .iter()
                    .map(|c| c.agent.as_str())
                    .collect::<Vec<_>>()
                    .join("+")
            ),
            Route::Llm => "llm".into(),
        }
    }
}

/// One agent call a route asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentCall {
    /// Agent name.
    pub agent: String,
    /// Intent name.
    pub intent: String,
    /// Slots, plus `utterance`.
    pub slots: HashMap<String, String>,
}

/// The router's decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Routed {
    /// Destination.
    pub route: Route,
    /// Match score (0–1).
    pub confidence: f32,
    /// Came from the cache.
    pub cached: bool,
}

/// A pattern's destination and the slots it captured.
type Match = (Target, HashMap<String, String>);

#[derive(Debug, Clone, PartialEq)]
enum Target {
    Skill(Skill),
    Agent { agent: String, intent: String },
}

struct Pattern {
    target: Target,
    /// Examples with slots.
    regex: Option<Regex>,
    /// Examples without: their (non-filler) words.
    words: Vec<String>,
}

/// The compiled router.
pub struct Router {
    patterns: Vec<Pattern>,
    min_confidence: f32,
    cache: Mutex<lru::LruCache<String, (Route, f32)>>,
}

/// Words that carry no intent: the wake phrase and politeness.
const NO_INTENT_WORDS: &[&str] = &[
    "hey", "panda", "please", "ok", "okay", "um", "uh", "so", "just", "now", "oh", "well",
];

/// Hesitations dropped wherever they are ("uh, timer ten minutes").
const DISFLUENCIES: &[&str] = &["uh", "um", "umm", "uhm", "er", "erm", "hmm", "mm", "ah"];

/// Function words: they shape a sentence but say little about what is wanted, so a
/// match on them counts a fifth of a match on a content word. "What time?" then covers
/// most of "what time is it", and "what time does the train leave" stays with the LLM.
const FUNCTION_WORDS: &[&str] = &[
    "what", "is", "it", "the", "a", "an", "me", "do", "you", "your", "for", "of", "to", "my", "i",
    "can", "how", "are", "in", "on", "at", "this", "that", "there", "be", "does", "did", "will",
    "would", "could", "tell", "give", "have", "has", "with", "about", "some", "any",
];

/// A word's weight in matching (see [`FUNCTION_WORDS`]).
fn weight(w: &str) -> f32 {
    if FUNCTION_WORDS.contains(&w) {
        0.2
    } else {
        1.0
    }
}

/// Lower-cases, expands contractions, drops punctuation and the wake phrase.
pub fn normalize_utterance(text: &str) -> String {
    let lower = text.to_lowercase().replace(['’', '‘'], "'");
    let mut words = Vec::new();
    for raw in lower.split(|c: char| c.is_whitespace() || c == ',' || c == '-') {
        let w: String = raw
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == '\'' || *c == ':' || *c == '.')
            .collect();
        let w = w.trim_matches(|c| c == '.' || c == '\'' || c == ':');
        let expanded = match w {
            "what's" => "what is",
            "it's" => "it is",
            "that's" => "that is",
            "i'm" => "i am",
            "don't" => "do not",
            "can't" => "can not",
            "how's" => "how is",
            "where's" => "where is",
            "who's" => "who is",
            "let's" => "let us",
            "i'd" => "i would",
            "you're" => "you are",
            w => w,
        };
        words.extend(
            expanded
                .split(' ')
                .filter(|s| !s.is_empty() && !DISFLUENCIES.contains(s))
                .map(String::from),
        );
    }
    // The wake phrase often leads the transcript: "hey panda, what time is it".
    while matches!(
        words.first().map(String::as_str),
        Some("hey" | "hi" | "ok" | "okay" | "panda")
    ) {
        words.remove(0);
    }
    words.join(" ")
}

fn content_words(s: &str) -> Vec<String> {
    s.split_whitespace()
        .filter(|w| !NO_INTENT_WORDS.contains(w))
        .map(String::from)
        .collect()
}

fn compile(example: &str) -> (Option<Regex>, Vec<String>) {
    if !example.contains('{') {
        return (None, content_words(&normalize_utterance(example)));
    }
    let mut re = String::from(
        r"^(?:(?:please|can you|could you|would you|will you|i want you to|i'd like you to|a|an|the)\s+)*",
    );
    let mut first = true;
    for tok in example.split_whitespace() {
        if !first {
            re.push_str(r"\s+");
        }
        first = false;
        if let Some(name) = tok.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
            re.push_str(&format!("(?P<{name}>.+?)"));
        } else {
            re.push_str(&regex::escape(&normalize_utterance(tok)));
        }
    }
    re.push_str(r"(?:\s+please)?$");
    (Regex::new(&re).ok(), Vec::new())
}

impl Router {
    /// Compiles the skills' and agents' examples.
    pub fn new(cfg: &RouterConfig, agents: &[AgentConfig]) -> Self {
        let mut patterns = Vec::new();
        for (skill, examples) in SKILL_EXAMPLES {
            for e in *examples {
                let (regex, words) = compile(e);
                patterns.push(Pattern {
                    target: Target::Skill(*skill),
                    regex,
                    words,
                });
            }
        }
        for a in agents {
            for intent in &a.intents {
                for e in &intent.examples {
                    let (regex, words) = compile(e);
                    patterns.push(Pattern {
                        target: Target::Agent {
                            agent: a.name.clone(),
                            intent: intent.name.clone(),
                        },
                        regex,
                        words,
                    });
                }
            }
        }
        Self {
            patterns,
            min_confidence: cfg.min_confidence,
            cache: Mutex::new(lru::LruCache::new(
                NonZeroUsize::new(cfg.cache_entries.max(1)).expect("max(1) is not zero"),
            )),
        }
    }

    /// Routes `text`.
    pub fn route(&self, text: &str) -> Routed {
        let key = normalize_utterance(text);
        if let Some((route, confidence)) = crate::lock(&self.cache).get(&key).cloned() {
            return Routed {
                route,
                confidence,
                cached: true,
            };
        }
        let (route, confidence) = self.route_uncached(&key, text);
        crate::lock(&self.cache).put(key, (route.clone(), confidence));
        Routed {
            route,
            confidence,
            cached: false,
        }
    }

    /// Routing without the cache (benchmarks compare both).
    pub fn route_uncached(&self, key: &str, original: &str) -> (Route, f32) {
        let (best, score) = self.best(key);
        match best {
            Some((Target::Skill(skill), slots)) if score >= self.min_confidence => {
                return (Route::Skill { skill, slots }, score);
            }
            _ => {}
        }
        // Agents: the whole utterance, and each part of "… and …" (several agents at once).
        let mut calls: Vec<AgentCall> = Vec::new();
        let mut conf = 0.0f32;
        // Parts first, in the order spoken; the whole utterance when it has no parts.
        let mut parts: Vec<String> = key.split(" and ").map(str::to_string).collect();
        if parts.len() > 1 {
            parts.push(key.to_string());
        }
        for part in &parts {
            if let (Some((Target::Agent { agent, intent }, mut slots)), s) = self.best(part)
                && s >= self.min_confidence
                && !calls.iter().any(|c| c.agent == agent)
            {
                slots.insert("utterance".into(), original.trim().to_string());
                conf = conf.max(s);
                calls.push(AgentCall {
                    agent,
                    intent,
                    slots,
                });
            }
        }
        if !calls.is_empty() {
            return (Route::Agents(calls), conf);
        }
        if let Some(stop) = self.ends_on_stop(original) {
            return stop;
        }
        (Route::Llm, score)
    }

    /// A transcript whose last clause is a stop by itself ("Then came- Stop!", "Thank you,
    /// stop."): over Panda's own echo, the words Whisper hears before a barge-in's "stop"
    /// are often Panda's, and a person who ends on "stop" wants it to stop — not an
    /// answer from the model. The clause must be short and route to the stop skill
    /// alone ("…at the bus stop" does not).
    fn ends_on_stop(&self, original: &str) -> Option<(Route, f32)> {
        let last = original
            .rsplit(['.', '!', '?', ',', ';', '-', '—', '…'])
            .map(str::trim)
            .find(|c| !c.is_empty())?;
        if last == original.trim() || last.split_whitespace().count() > 3 {
            return None;
        }
        match self.best(&normalize_utterance(last)) {
            (Some((Target::Skill(Skill::Stop), slots)), s) if s >= self.min_confidence => Some((
                Route::Skill {
                    skill: Skill::Stop,
                    slots,
                },
                s,
            )),
            _ => None,
        }
    }

    fn best(&self, key: &str) -> (Option<Match>, f32) {
        let words: Vec<String> = content_words(key);
        let set: HashSet<&str> = words.iter().map(String::as_str).collect();
        let mut best: Option<Match> = None;
        let mut best_score = 0.0f32;
        for p in &self.patterns {
            let (score, slots) = if let Some(re) = &p.regex {
                match re.captures(key) {
                    Some(c) => {
                        let slots: HashMap<String, String> = re
                            .capture_names()
                            .flatten()
                            .filter_map(|n| {
                                c.name(n)
                                    .map(|m| (n.to_string(), m.as_str().trim().to_string()))
                            })
                            .filter(|(_, v)| !v.is_empty())
                            .collect();
                        // A slot that must be a duration or a clock time and is not
                        // ("cancel the timer" is not a "{duration} timer").
                        let typed_ok = slots.iter().all(|(k, v)| match k.as_str() {
                            "duration" => super::timers::parse_duration(v).is_some(),
                            "time" => super::timers::parse_clock(v).is_some(),
                            _ => true,
                        });
                        if !typed_ok {
                            continue;
                        }
                        (1.0, slots)
                    }
                    None => continue,
                }
            } else {
                if p.words.is_empty() || words.is_empty() {
                    continue;
                }
                let hit: f32 = p
                    .words
                    .iter()
                    .filter(|w| set.contains(w.as_str()))
                    .map(|w| weight(w))
                    .sum();
                if hit == 0.0 {
                    continue;
                }
                let coverage = hit / p.words.iter().map(|w| weight(w)).sum::<f32>();
                let precision = hit / words.iter().map(|w| weight(w)).sum::<f32>();
                (coverage * precision.sqrt(), HashMap::new())
            };
            if score > best_score {
                best_score = score;
                best = Some((p.target.clone(), slots));
            }
        }
        (best, best_score)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router() -> Router {
        Router::new(&RouterConfig::default(), &crate::config::default_agents())
    }

    fn target(text: &str) -> String {
        router().route(text).route.label()
    }

    #[test]
    fn skills() {
        assert_eq!(target("What time is it?"), "skill:time");
        assert_eq!(target("Hey Panda, what's the time?"), "skill:time");
        assert_eq!(target("what time is it please"), "skill:time");
        assert_eq!(target("What's the date today?"), "skill:date");
        assert_eq!(target("Set a timer for 2 seconds."), "skill:timer");
        assert_eq!(target("Wake me up at 7 am"), "skill:alarm");
        assert_eq!(target("Stop."), "skill:stop");
        assert_eq!(target("Speak Korean."), "skill:language");
        assert_eq!(target("What can you do?"), "skill:help");
        assert_eq!(
            target("Remember that my keys are in the drawer."),
            "skill:remember"
        );
        assert_eq!(
            target("Hey Panda, what do you remember about my keys?"),
            "skill:recall"
        );
        assert_eq!(target("Do you remember my sister's name?"), "skill:recall");
        assert_eq!(target("Forget my locker number."), "skill:forget");
        assert_eq!(target("Oh, forget it."), "skill:stop");
        assert_eq!(target("I always forget my keys"), "llm");
    }

    /// Clipped, disfluent and loosely worded requests, as people say them and Whisper
    /// writes them down, and near-misses that belong to the LLM.
    #[test]
    fn variants_people_say_reach_the_right_place() {
        let cases: &[(&str, &str)] = &[
            ("What time?", "skill:time"),
            ("what time", "skill:time"),
            ("Time?", "skill:time"),
            ("The time, please.", "skill:time"),
            ("Um, what's the time?", "skill:time"),
            ("what time is it uh", "skill:time"),
            ("Uh, timer ten minutes.", "skill:timer"),
            ("Timer, 5 minutes.", "skill:timer"),
            ("Ten minute timer.", "skill:timer"),
            ("a timer for two minutes", "skill:timer"),
            ("set a timer for uh 20 minutes", "skill:timer"),
            ("What day?", "skill:date"),
            ("The date?", "skill:date"),
            ("What's the date?", "skill:date"),
            ("Alarm at 7 am.", "skill:alarm"),
            ("Cancel the timer.", "skill:cancel_timers"),
            ("Stop!", "skill:stop"),
            ("Then came- Stop!", "skill:stop"),
            ("Thank you, stop.", "skill:stop"),
            ("Uh, stop.", "skill:stop"),
            ("The news?", "agent:scott"),
            ("What's the news?", "agent:scott"),
            ("the weather tomorrow?", "llm"),
            ("What time does the train leave?", "llm"),
            ("How much time do I need to boil an egg?", "llm"),
            ("Tell me about the history of time.", "llm"),
            ("What day was the moon landing?", "llm"),
            ("I need a date for the party.", "llm"),
        ];
        let r = router();
        let wrong: Vec<String> = cases
            .iter()
            .filter_map(|(text, want)| {
                let got = r.route(text).route.label();
                (got != *want).then(|| format!("{text:?} → {got}, want {want}"))
            })
            .collect();
        println!(
            "routing variants: {}/{} right",
            cases.len() - wrong.len(),
            cases.len()
        );
        assert!(wrong.is_empty(), "{wrong:#?}");
    }

    #[test]
    fn slots_are_captured() {
        let r = router().route("Please set a timer for 10 minutes");
        match r.route {
            Route::Skill { skill, slots } => {
                assert_eq!(skill, Skill::Timer);
                assert_eq!(slots["duration"], "10 minutes");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn open_questions_go_to_the_llm() {
        assert_eq!(target("What time does the bakery close on Sundays?"), "llm");
        assert_eq!(target("What is the capital of France?"), "llm");
        assert_eq!(target("I saw a stop sign yesterday"), "llm");
        assert_eq!(target("Where is the nearest bus stop?"), "llm");
        assert_eq!(target("Tell me a story. Don't stop."), "llm");
    }

    #[test]
    fn agents_and_several_at_once() {
        assert_eq!(target("What's the news?"), "agent:scott");
        assert_eq!(target("news about space"), "agent:scott");
        assert_eq!(target("What's the price of Apple stock?"), "agent:penny");
        assert_eq!(target("Explain photosynthesis"), "agent:sensei");
        assert_eq!(
            target("What's the news and how is the stock market doing"),
            "agent:scott+penny"
        );
    }

    #[test]
    fn cache_hits_on_the_normalised_text() {
        let r = router();
        assert!(!r.route("What time is it?").cached);
        assert!(r.route("what time is it").cached);
        assert!(r.route("Hey Panda, what time is it").cached);
    }
}
