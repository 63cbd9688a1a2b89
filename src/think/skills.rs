//! The built-in skills: answers Panda gives without any server — time and date, timers
//! and alarms, languages, what it can do, its services' status — and the memory skills
//! (remember, recall, forget). Methods of the [`Thinker`], which owns what they touch
//! (timers, conversation, memory); the turn engine in [`super::turn`] routes to them.

use std::collections::HashMap;

use super::conversation::{LANGUAGES, UNSUPPORTED_LANGUAGES, find_language};
use super::router::Skill;
use super::timers::{parse_clock, parse_duration};
use super::turn::{Thinker, capitalise, confirmation, fact_from, spoken_fact};
use crate::event::Turn;
use crate::memory::{Filter, Kind, NewMemory};

impl Thinker {
    pub(super) async fn skill(&mut self, skill: Skill, slots: &HashMap<String, String>) -> String {
        match skill {
            Skill::Time => {
                let now = chrono::Local::now();
                format!("It's {}.", now.format("%-I:%M %p"))
            }
            Skill::Date => {
                let now = chrono::Local::now();
                let day = now.format("%-d").to_string();
                let suffix = match day.as_str() {
                    "1" | "21" | "31" => "st",
                    "2" | "22" => "nd",
                    "3" | "23" => "rd",
                    _ => "th",
                };
                format!(
                    "Today is {}, {} {day}{suffix}, {}.",
                    now.format("%A"),
                    now.format("%B"),
                    now.format("%Y")
                )
            }
            Skill::Timer => {
                let Some((d, label)) = slots.get("duration").and_then(|s| parse_duration(s)) else {
                    return "For how long? For example, say: set a timer for five minutes.".into();
                };
                match self.timers.add(format!("{label} timer"), d).await {
                    Ok(_) => format!("Okay, a {label} timer starts now."),
                    Err(e) => {
                        tracing::error!(error = %e, "timer not saved");
                        "Sorry, I couldn't save that timer.".into()
                    }
                }
            }
            Skill::Alarm => {
                let Some((h, m)) = slots.get("time").and_then(|s| parse_clock(s)) else {
                    return "For what time? For example, say: set an alarm for seven a m.".into();
                };
                let now = chrono::Local::now();
                let today = now.date_naive().and_hms_opt(h, m, 0);
                let Some(mut at) =
                    today.and_then(|t| t.and_local_timezone(chrono::Local).earliest())
                else {
                    return "Sorry, I couldn't work out that time.".into();
                };
                if at <= now {
                    at += chrono::Duration::days(1);
                }
                let after = (at - now).to_std().unwrap_or_default();
                let spoken = at.format("%-I:%M %p").to_string();
                match self
                    .timers
                    .add(
                        format!("{}{spoken}", crate::think::timers::ALARM_PREFIX),
                        after,
                    )
                    .await
                {
                    Ok(_) => format!("Okay, your alarm is set for {spoken}."),
                    Err(_) => "Sorry, I couldn't save that alarm.".into(),
                }
            }
            Skill::CancelTimers => match self.timers.cancel_all().await {
                Ok(0) => "There are no timers to cancel.".into(),
                Ok(1) => "Okay, I cancelled your timer.".into(),
                Ok(n) => format!("Okay, I cancelled {n} timers."),
                Err(_) => "Sorry, I couldn't cancel the timers.".into(),
            },
            Skill::Stop | Skill::Remember | Skill::Recall | Skill::Forget => String::new(),
            Skill::Language => {
                let asked = slots.get("language").map(String::as_str).unwrap_or("");
                match find_language(asked) {
                    Some((code, english, _)) => {
                        self.conv.language = code.to_string();
                        // From the next utterance on, Whisper hears this language too.
                        if let Some(tx) = &self.language_tx {
                            tx.send_replace(code.to_string());
                        }
                        if code != &"en"
                            && self.cfg.stt.model.to_string_lossy().contains(".en")
                            && self.cfg.stt.multilingual_model.as_os_str().is_empty()
                        {
                            tracing::warn!(
                                language = english,
                                "speaking {english}; understanding it needs a multilingual Whisper model ([stt] multilingual_model)"
                            );
                        }
                        confirmation(code)
                    }
                    None => {
                        let name = asked.trim().trim_end_matches(['.', '!', '?']);
                        let known: Vec<&str> = LANGUAGES.iter().map(|l| l.1).collect();
                        let list = format!(
                            "{} and {}",
                            known[..known.len() - 1].join(", "),
                            known[known.len() - 1]
                        );
                        if UNSUPPORTED_LANGUAGES.contains(&name.to_lowercase().as_str()) {
                            let mut n = name.to_string();
                            if let Some(f) = n.get_mut(0..1) {
                                f.make_ascii_uppercase();
                            }
                            format!("Sorry, I can't speak {n} yet. I can speak {list}.")
                        } else {
                            format!("Sorry, I don't know that language. I can speak {list}.")
                        }
                    }
                }
            }
            Skill::Help => {
                let agents: Vec<String> = self
                    .agents
                    .configs()
                    .map(|a| a.description.clone())
                    .collect();
                let mut s = "I can tell you the time and the date, set timers and alarms, switch languages, and answer questions".to_string();
                if !agents.is_empty() {
                    s.push_str(&format!(". My helpers can also {}", agents.join(", ")));
                }
                s.push('.');
                s
            }
            Skill::Status => {
                let llm = if !self.cfg.llm.enabled {
                    "No language model is configured".to_string()
                } else if self.llm_is_down() {
                    "My language model is not reachable right now".to_string()
                } else {
                    "My language model is set up".to_string()
                };
                let parts: Vec<String> = self
                    .agents
                    .health()
                    .iter()
                    .map(|h| {
                        let state = match (h.breaker, h.healthy) {
                            (crate::event::BreakerState::Open, _) => "unavailable",
                            (_, Some(true)) => "working",
                            (_, Some(false)) => "not answering",
                            (_, None) => "not checked yet",
                        };
                        format!("{} is {state}", capitalise(&h.name))
                    })
                    .collect();
                let timers = self.timers.list().await.len();
                format!(
                    "{llm}. {}. {} timer{} pending.",
                    parts.join(", "),
                    if timers == 0 {
                        "No".to_string()
                    } else {
                        timers.to_string()
                    },
                    if timers == 1 { " is" } else { "s are" }
                )
            }
        }
    }

    /// Remember, recall and forget. A fact is committed to disk before Panda says it will
    /// remember it; a forget names the memory, and deletes it once that was heard.
    pub(super) async fn memory_skill(
        &mut self,
        skill: Skill,
        turn: &Turn,
        text: &str,
        slots: &HashMap<String, String>,
    ) -> String {
        let Some(m) = self.memory.clone() else {
            return "My memory is switched off, so I can't remember things between conversations."
                .into();
        };
        match skill {
            Skill::Remember => {
                let fact = fact_from(text)
                    .or_else(|| slots.get("fact").cloned())
                    .unwrap_or_default();
                if fact.trim().is_empty() {
                    return "What should I remember? For example, say: remember that my keys are in the drawer.".into();
                }
                let mut item = NewMemory::new(Kind::Fact, fact.clone());
                item.meta = serde_json::json!({ "source": "voice", "turn": turn.id });
                match m.add(item).await {
                    Ok(id) => {
                        tracing::info!(id, "fact remembered");
                        format!("Okay, I'll remember that {}.", spoken_fact(&fact))
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "fact not stored");
                        "Sorry, I couldn't save that, so I won't remember it.".into()
                    }
                }
            }
            Skill::Recall => {
                let topic = slots.get("topic").map(String::as_str).unwrap_or("").trim();
                let speakable = Filter {
                    kinds: vec![Kind::Fact, Kind::Identity, Kind::Summary],
                    ..Default::default()
                };
                let general = matches!(topic, "" | "me" | "us" | "anything" | "everything");
                let memories: Vec<(Kind, String)> = if general {
                    let facts = Filter {
                        kinds: vec![Kind::Fact],
                        ..Default::default()
                    };
                    match m.recent(facts, 3).await {
                        Ok(v) => v.into_iter().map(|x| (x.kind, x.text)).collect(),
                        Err(_) => return "Sorry, I couldn't read my memory just now.".into(),
                    }
                } else {
                    match m.recall(topic, 3, speakable).await {
                        Ok(v) => v
                            .into_iter()
                            .map(|h| (h.memory.kind, h.memory.text))
                            .collect(),
                        Err(_) => return "Sorry, I couldn't read my memory just now.".into(),
                    }
                };
                if memories.is_empty() {
                    return if general {
                        "You haven't asked me to remember anything yet.".into()
                    } else {
                        format!("I don't remember anything about {}.", spoken_fact(topic))
                    };
                }
                let told: Vec<String> = memories
                    .iter()
                    .filter(|(k, _)| *k == Kind::Fact)
                    .map(|(_, t)| spoken_fact(t))
                    .collect();
                let known: Vec<String> = memories
                    .iter()
                    .filter(|(k, _)| *k != Kind::Fact)
                    .map(|(_, t)| t.trim().trim_end_matches(['.', '!']).to_string())
                    .collect();
                let mut out = Vec::new();
                if !told.is_empty() {
                    out.push(format!("You told me that {}.", told.join(", and that ")));
                }
                if !known.is_empty() {
                    out.push(format!("I know that {}.", known.join(", and that ")));
                }
                out.join(" ")
            }
            Skill::Forget => {
                let topic = slots.get("topic").map(String::as_str).unwrap_or("").trim();
                // What Panda would say back or put in a prompt; past turns are the
                // owner's to prune (`panda memory forget --id`).
                let forgettable = Filter {
                    kinds: vec![Kind::Fact, Kind::Identity, Kind::Summary],
                    ..Default::default()
                };
                let hit = match m.match_to_forget(topic, forgettable).await {
                    Ok(h) => h,
                    Err(_) => return "Sorry, I couldn't read my memory just now.".into(),
                };
                match hit {
                    None => format!(
                        "I don't have anything about {}, so there is nothing to forget.",
                        spoken_fact(topic)
                    ),
                    Some(h) => {
                        // Deleted in `heard`, once this answer was heard uninterrupted.
                        self.forget_after.insert(turn.id, vec![h.memory.id]);
                        let what = match h.memory.kind {
                            Kind::Fact => format!("that {}", spoken_fact(&h.memory.text)),
                            _ => format!(
                                "this: {}",
                                h.memory.text.trim().trim_end_matches(['.', '!'])
                            ),
                        };
                        format!("Okay, I'll forget {what}.")
                    }
                }
            }
            _ => String::new(),
        }
    }
}
