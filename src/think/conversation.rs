//! Conversation state for the LLM: system prompts, history, rolling summary, language.
//!
//! Owned by the turn task. System prompts are built once per language at start (never
//! per request). History is a sliding window inside a token budget (estimated at four
//! characters a token); exchanges that fall out of it are folded into a rolling summary —
//! at once as a short extract, then replaced by an LLM-written summary made in the
//! background when the model is available. What is stored as Panda's answer is what the
//! listener actually heard (playback progress), not what was generated.

use std::collections::{HashMap, VecDeque};

use super::llm::Message;
use crate::config::ConversationConfig;

/// Languages Panda can speak and understand: Kokoro has voices for them and Whisper's
/// multilingual models recognise them. (code, English name, default Kokoro voice).
pub const LANGUAGES: &[(&str, &str, &str)] = &[
    ("en", "English", "af_heart"),
    ("es", "Spanish", "ef_dora"),
    ("fr", "French", "ff_siwis"),
    ("hi", "Hindi", "hf_alpha"),
    ("it", "Italian", "if_sara"),
    ("ja", "Japanese", "jf_alpha"),
    ("pt", "Portuguese", "pf_dora"),
    ("zh", "Chinese", "zf_xiaobei"),
];

/// Languages people ask for that Panda cannot speak (Kokoro has no voice for them).
pub const UNSUPPORTED_LANGUAGES: &[&str] = &[
    "korean",
    "german",
    "russian",
    "arabic",
    "dutch",
    "swedish",
    "polish",
    "turkish",
    "greek",
    "hebrew",
    "thai",
    "vietnamese",
    "indonesian",
    "ukrainian",
    "czech",
    "danish",
    "finnish",
    "norwegian",
    "romanian",
    "hungarian",
    "bengali",
    "tamil",
    "urdu",
];

/// Finds a language by name ("spanish", "Español", "mandarin") or code.
pub fn find_language(name: &str) -> Option<&'static (&'static str, &'static str, &'static str)> {
    let n = name.trim().trim_end_matches(['.', '!', '?']).to_lowercase();
    let alias = match n.as_str() {
        "español" | "espanol" | "castellano" => "es",
        "français" | "francais" => "fr",
        "italiano" => "it",
        "português" | "portugues" | "brazilian portuguese" => "pt",
        "mandarin" | "chinese" | "mandarin chinese" | "中文" => "zh",
        "日本語" => "ja",
        "hindi" | "हिंदी" => "hi",
        other => other,
    };
    LANGUAGES
        .iter()
        .find(|(code, english, _)| *code == alias || english.to_lowercase() == alias)
}

/// One exchange as heard.
#[derive(Debug, Clone, PartialEq)]
pub struct Exchange {
    /// What the user said.
    pub user: String,
    /// What Panda said and was heard.
    pub assistant: String,
}

/// The conversation.
pub struct Conversation {
    prompts: HashMap<&'static str, String>,
    /// Current language code.
    pub language: String,
    history: VecDeque<Exchange>,
    summary: String,
    budget_tokens: usize,
}

/// Estimated tokens of a text (four characters a token, the usual rule for English).
pub fn estimate_tokens(s: &str) -> usize {
    s.chars().count().div_ceil(4)
}

impl Conversation {
    /// Builds every language's system prompt once.
    pub fn new(cfg: &ConversationConfig) -> Self {
        let prompts = LANGUAGES
            .iter()
            .map(|(code, english, _)| {
                // Said for English too: small models drift into other languages otherwise
                // (SmolLM2-135M answered in French without it).
                (
                    *code,
                    format!("{} Always answer in {english}.", cfg.persona),
                )
            })
            .collect();
        Self {
            prompts,
            language: find_language(&cfg.language)
                .map(|l| l.0.to_string())
                .unwrap_or_else(|| "en".into()),
            history: VecDeque::new(),
            summary: String::new(),
            budget_tokens: cfg.history_tokens,
        }
    }

    /// The messages for a new question: system prompt (with summary and any agent
    /// context), the history that fits the budget, the question.
    pub fn messages(
        &self,
        question: &str,
        context: Option<&str>,
        memories: &[String],
    ) -> Vec<Message> {
        let mut system = self
            .prompts
            .get(self.language.as_str())
            .or_else(|| self.prompts.get("en"))
            .cloned()
            .unwrap_or_default();
        if !self.summary.is_empty() {
            system.push_str("\nEarlier in this conversation: ");
            system.push_str(&self.summary);
        }
        if !memories.is_empty() {
            system.push_str("\nWhat you remember (use it only where it helps the answer):");
            for m in memories {
                system.push_str("\n- ");
                system.push_str(m);
            }
        }
        if let Some(c) = context {
            system.push_str(
                "\nUse this information from Panda's helper services to answer; say only what it supports:\n",
            );
            system.push_str(c);
        }
        let mut out = vec![Message::new("system", system)];
        for e in &self.history {
            out.push(Message::new("user", e.user.clone()));
            out.push(Message::new("assistant", e.assistant.clone()));
        }
        out.push(Message::new("user", question));
        out
    }

    /// Records an exchange with the answer as heard; returns the exchanges that no longer
    /// fit the budget (already folded into the summary as an extract).
    pub fn record(&mut self, user: &str, heard: &str) -> Vec<Exchange> {
        self.history.push_back(Exchange {
            user: user.to_string(),
            assistant: heard.to_string(),
        });
        let mut folded = Vec::new();
        while self.history_tokens() > self.budget_tokens && self.history.len() > 1 {
            if let Some(e) = self.history.pop_front() {
                folded.push(e);
            }
        }
        if !folded.is_empty() {
            let extract: Vec<String> = folded
                .iter()
                .map(|e| {
                    let a: String = e.assistant.chars().take(120).collect();
                    format!("The user said \"{}\"; Panda answered \"{a}\".", e.user)
                })
                .collect();
            self.append_summary(&extract.join(" "));
        }
        folded
    }

    fn append_summary(&mut self, text: &str) {
        if !self.summary.is_empty() {
            self.summary.push(' ');
        }
        self.summary.push_str(text);
        // The summary itself stays within about a quarter of the budget (chars ≈ 4 ×
        // tokens), and never below a few sentences.
        let max_chars = self.budget_tokens.max(600);
        if self.summary.chars().count() > max_chars {
            let skip = self.summary.chars().count() - max_chars;
            self.summary = self.summary.chars().skip(skip).collect();
        }
    }

    /// Replaces the summary with a better one (the background LLM summary).
    pub fn set_summary(&mut self, s: String) {
        self.summary = s;
    }

    /// The rolling summary.
    pub fn summary(&self) -> &str {
        &self.summary
    }

    /// Exchanges in the window.
    pub fn history(&self) -> impl Iterator<Item = &Exchange> {
        self.history.iter()
    }

    fn history_tokens(&self) -> usize {
        self.history
            .iter()
            .map(|e| estimate_tokens(&e.user) + estimate_tokens(&e.assistant) + 8)
            .sum()
    }

    /// The current language's default voice.
    pub fn voice(&self) -> &'static str {
        find_language(&self.language).map_or("af_heart", |l| l.2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_slides_inside_the_budget_and_folds_into_the_summary() {
        let mut c = Conversation::new(&ConversationConfig {
            history_tokens: 60,
            ..Default::default()
        });
        for i in 0..5 {
            c.record(
                &format!("question number {i} here"),
                "an answer of some length here",
            );
        }
        let kept: Vec<_> = c.history().collect();
        assert!(kept.len() < 5 && !kept.is_empty());
        assert!(c.summary().contains("question number 0"));
        let m = c.messages("next?", Some("{\"x\":1}"), &[]);
        assert_eq!(m[0].role, "system");
        assert!(m[0].content.contains("Earlier in this conversation"));
        assert!(m[0].content.contains("{\"x\":1}"));
        assert_eq!(m.last().unwrap().content, "next?");
    }

    #[test]
    fn prompts_per_language() {
        let mut c = Conversation::new(&ConversationConfig::default());
        assert!(
            c.messages("hi", None, &[])[0]
                .content
                .contains("Always answer in English.")
        );
        c.language = "es".into();
        assert!(c.messages("hola", None, &[])[0].content.contains("Spanish"));
        assert_eq!(c.voice(), "ef_dora");
        assert_eq!(find_language("Español").unwrap().0, "es");
        assert_eq!(find_language("mandarin").unwrap().0, "zh");
        assert!(find_language("korean").is_none());
    }
}
