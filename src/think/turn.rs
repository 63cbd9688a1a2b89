//! One turn, end to end between a transcript and the sentences it speaks.
//!
//! The [`Thinker`] lives on the turn task (async). Per utterance it routes (cached), then:
//! a built-in skill answers at once; agents are called concurrently, each under its own
//! timeout and breaker, and their JSON is phrased by the LLM (or read through the agent's
//! reply template when the LLM is down); anything else streams from the LLM. Text is split
//! into sentences as it arrives and each sentence goes to TTS immediately, so speech
//! starts while the model is still generating. If nothing has been said after
//! `[conversation] filler_after_ms`, a short filler is spoken. Errors end the turn with a
//! short apology, never a crash; the next turn starts clean.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc};

use super::agents::{AgentError, Agents, render};
use super::conversation::Conversation;
use super::llm::{LlmClient, LlmError};
use super::router::{Route, Router, Skill};
use super::timers::Timers;
use crate::config::Config;
use crate::event::{Event, Sentence, Speech, Turn};
use crate::memory::{Filter, Kind, Memory, NewMemory};
use crate::speak::sentences::SentenceSplitter;

/// Where a turn's answer goes.
pub struct TurnIo<'a> {
    /// Sentences for TTS (absent with `--no-speak`).
    pub sentences: Option<&'a mpsc::Sender<Speech>>,
    /// Answer text as it is produced (CLI streaming); called with every piece.
    pub on_text: &'a mut (dyn FnMut(&str) + Send),
}

/// What a turn produced.
#[derive(Debug, Clone)]
pub struct TurnOutcome {
    /// The whole answer text.
    pub answer: String,
    /// Where it came from.
    pub source: AnswerSource,
}

pub use crate::event::AnswerSource;

/// A turn's answer on its way out: text is split into sentences and queued for TTS
/// (and streamed to the caller); it speaks nothing itself.
struct AnswerQueue<'a, 'b> {
    io: &'a mut TurnIo<'b>,
    events: &'a mpsc::Sender<Event>,
    turn: &'a Turn,
    splitter: SentenceSplitter,
    index: u32,
    voice: String,
    /// The espeak-ng language the voice reads in when it is not its own.
    reading: Option<&'static str>,
    speed: f32,
    text: String,
    said_anything: bool,
}

impl AnswerQueue<'_, '_> {
    async fn push(&mut self, delta: &str) {
        if delta.is_empty() {
            return;
        }
        (self.io.on_text)(delta);
        self.text.push_str(delta);
        self.said_anything = true;
        for s in self.splitter.push(delta) {
            self.queue(s).await;
        }
    }

    /// A whole sentence (or more) at once: a skill's answer, a filler, an apology. It is
    /// queued now — a filler must not wait for the text that follows it.
    async fn say(&mut self, text: &str) {
        let sep = if self.text.is_empty() || self.text.ends_with(' ') {
            ""
        } else {
            " "
        };
        self.push(&format!("{sep}{text} ")).await;
        if let Some(s) = self.splitter.finish() {
            self.queue(s).await;
        }
    }

    async fn queue(&mut self, text: String) {
        let _ = self
            .events
            .send(Event::Sentence {
                turn: self.turn.id,
                index: self.index,
                text: text.clone(),
            })
            .await;
        if let Some(tx) = self.io.sentences {
            let _ = tx
                .send(Speech::Say(Sentence {
                    turn: self.turn.clone(),
                    index: self.index,
                    text,
                    voice: self.voice.clone(),
                    reading: self.reading,
                    speed: self.speed,
                }))
                .await;
        }
        self.index += 1;
    }

    async fn finish(&mut self) {
        if let Some(s) = self.splitter.finish() {
            self.queue(s).await;
        }
        if let Some(tx) = self.io.sentences {
            let _ = tx
                .send(Speech::End {
                    turn: self.turn.clone(),
                    index: self.index,
                })
                .await;
        }
    }
}

/// The thinking stage.
pub struct Thinker {
    pub(super) cfg: Config,
    pub(super) router: Router,
    pub(super) agents: Arc<Agents>,
    pub(super) llm: LlmClient,
    pub(super) conv: Conversation,
    pub(super) timers: Timers,
    pub(super) events: mpsc::Sender<Event>,
    /// The LLM failed to connect recently: skip it until then (no waiting on a dead
    /// server on the hot path).
    pub(super) llm_down_until: Option<Instant>,
    /// Questions whose answers are being played, by turn id (recorded when heard).
    pub(super) pending: HashMap<u64, String>,
    /// (summary it was made from, condensed summary) from the background summariser.
    pub(super) summaries: (mpsc::Sender<Summary>, mpsc::Receiver<Summary>),
    pub(super) voice_override: Option<String>,
    /// The conversation's language, for the STT stage.
    pub(super) language_tx: Option<tokio::sync::watch::Sender<String>>,
    /// Long-term memory (absent when `[memory] enabled = false`).
    pub(super) memory: Option<Memory>,
    /// Memories to delete once the turn that named them has been heard in full.
    pub(super) forget_after: HashMap<u64, Vec<i64>>,
}

/// Longest the turn waits for memories before asking the LLM without them (the embedder
/// may be busy storing a long text).
const PROMPT_MEMORY_TIMEOUT: Duration = Duration::from_millis(250);

/// Summary edge, background summariser → thinker: at most one summary is useful at a
/// time; when full, the newer one is dropped (the next fold makes another).
const SUMMARY_EDGE: usize = 1;

/// A background summary: (the summary it condensed, the condensed text).
type Summary = (String, String);

/// What a [`Thinker`] works with, given at construction.
pub struct ThinkerDeps {
    /// The shared, pooled HTTP client (LLM).
    pub http: reqwest::Client,
    /// Helper agents behind their breakers.
    pub agents: Arc<Agents>,
    /// The timer service.
    pub timers: Timers,
    /// Events out.
    pub events: mpsc::Sender<Event>,
    /// Long-term memory (absent when `[memory] enabled = false`).
    pub memory: Option<Memory>,
    /// A voice for every language (`panda ask --voice`); `None`: `[tts] voice` and the
    /// language's own voices.
    pub voice: Option<String>,
    /// Where the conversation's language goes when it switches (the STT stage hears in
    /// it); `None` where nothing listens.
    pub language: Option<tokio::sync::watch::Sender<String>>,
}

impl Thinker {
    /// A thinker over the shared clients, the timer service and memory.
    pub fn new(cfg: &Config, deps: ThinkerDeps) -> Self {
        let ThinkerDeps {
            http,
            agents,
            timers,
            events,
            memory,
            voice,
            language,
        } = deps;
        Self {
            cfg: cfg.clone(),
            router: Router::new(&cfg.router, &cfg.agents),
            agents,
            llm: LlmClient::new(&cfg.llm, http),
            conv: Conversation::new(&cfg.conversation),
            timers,
            events,
            llm_down_until: None,
            pending: HashMap::new(),
            summaries: mpsc::channel(SUMMARY_EDGE),
            voice_override: voice,
            language_tx: language,
            memory,
            forget_after: HashMap::new(),
        }
    }

    /// The voice for the conversation's language, and the espeak-ng language it reads in
    /// when that is not the voice's own (`[tts] language_voices` may lend a voice of
    /// another language).
    fn voice(&self) -> (String, Option<&'static str>) {
        let lang = self.conv.language.as_str();
        let voice = match (&self.voice_override, lang) {
            (Some(v), "en") => v.clone(),
            (Some(v), _) if v.starts_with(self.conv.voice().chars().next().unwrap_or('a')) => {
                v.clone()
            }
            _ if lang == "en" => self.cfg.tts.voice.clone(),
            _ => match self.cfg.tts.language_voices.get(lang) {
                Some(v) => v.clone(),
                None => self.conv.voice().to_string(),
            },
        };
        let own = crate::config::voice_language(&voice);
        let reading =
            crate::config::language_phonemes(lang).filter(|r| lang != "en" && Some(*r) != own);
        (voice, reading)
    }

    /// Records what the listener heard of `turn`'s answer (from playback progress):
    /// into the conversation, and into memory as a `turn`. A memory the turn said it
    /// would forget is deleted now, once its naming was heard uninterrupted.
    pub async fn heard(&mut self, turn: u64, heard: &str, interrupted: bool) {
        if let Some(ids) = self.forget_after.remove(&turn)
            && let Some(m) = &self.memory
        {
            if interrupted {
                tracing::info!(
                    turn,
                    "forget cancelled: the answer naming it was interrupted"
                );
            } else if let Err(e) = m.forget(ids).await {
                tracing::error!(error = %e, "memory not deleted");
            }
        }
        if let Some(q) = self.pending.remove(&turn) {
            let folded = self.conv.record(&q, heard.trim());
            if !folded.is_empty() && self.cfg.llm.enabled && !self.llm_is_down() {
                self.summarise_in_background();
            }
            if let Some(m) = &self.memory
                && self.cfg.memory.store_turns
                && !heard.trim().is_empty()
            {
                let mut item = NewMemory::new(
                    Kind::Turn,
                    format!(
                        "The user asked: {} Panda answered: {}",
                        q.trim(),
                        heard.trim()
                    ),
                );
                item.meta = serde_json::json!({ "turn": turn, "interrupted": interrupted });
                if let Err(e) = m.add(item).await {
                    tracing::warn!(error = %e, "turn not stored in memory");
                }
            }
        }
    }

    /// The memories relevant to `question`, phrased for the system prompt.
    async fn prompt_memories(&self, question: &str) -> Vec<String> {
        let Some(m) = &self.memory else {
            return Vec::new();
        };
        let k = self.cfg.memory.prompt_memories;
        if k == 0 {
            return Vec::new();
        }
        // Past turns are left out: the conversation window already carries the recent
        // ones, and an old turn repeating the question would crowd out the facts.
        let filter = Filter {
            kinds: vec![Kind::Identity, Kind::Fact, Kind::Summary],
            ..Default::default()
        };
        match tokio::time::timeout(PROMPT_MEMORY_TIMEOUT, m.recall(question, k, filter)).await {
            Ok(Ok(hits)) => hits
                .into_iter()
                .map(|h| match h.memory.kind {
                    Kind::Fact => format!("The user told you: {}", h.memory.text),
                    _ => h.memory.text,
                })
                .collect(),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "memory search failed; answering without memories");
                Vec::new()
            }
            Err(_) => {
                tracing::warn!("memory search took too long; answering without memories");
                Vec::new()
            }
        }
    }

    pub(super) fn llm_is_down(&self) -> bool {
        self.llm_down_until.is_some_and(|t| Instant::now() < t)
    }

    /// Asks the LLM for a fresh summary off the hot path; it arrives on the summary edge
    /// and replaces the extract at the start of a later turn.
    fn summarise_in_background(&self) {
        let llm = self.llm.clone();
        let tx = self.summaries.0.clone();
        // The summary already holds an extract of the exchanges that left the window; the
        // window itself stays in the prompt, so only the summary is condensed.
        let base = self.conv.summary().to_string();
        let text = base.clone();
        tokio::spawn(async move {
            let msgs = [
                super::llm::Message::new(
                    "system",
                    "Summarise this conversation in at most three short sentences, keeping names, numbers and what the user wants.",
                ),
                super::llm::Message::new("user", text),
            ];
            let token = tokio_util::sync::CancellationToken::new();
            if let Ok(a) = llm.stream(&msgs, &token, |_| {}).await
                && !a.text.trim().is_empty()
            {
                let _ = tx.try_send((base, a.text.trim().to_string()));
            }
        });
    }

    /// Handles one utterance as `turn`.
    pub async fn turn(&mut self, turn: &Turn, text: &str, io: &mut TurnIo<'_>) -> TurnOutcome {
        if let Ok((base, s)) = self.summaries.1.try_recv() {
            // A fold since the request extended the summary: keep that, drop this one.
            if self.conv.summary() == base {
                self.conv.set_summary(s);
            }
        }
        let t0 = Instant::now();
        let routed = self.router.route(text);
        let label = routed.route.label();
        tracing::debug!(turn = turn.id, route = %label, confidence = routed.confidence, cached = routed.cached, routing_us = t0.elapsed().as_micros() as u64, "routed");
        let _ = self
            .events
            .send(Event::Route {
                turn: turn.id,
                target: label.clone(),
                confidence: routed.confidence,
                cached: routed.cached,
            })
            .await;
        let events = self.events.clone();
        let mut sp = self.speaker(io, &events, turn);
        let source = match routed.route {
            Route::Skill { skill, slots } => {
                if skill == Skill::Stop {
                    AnswerSource::None
                } else if matches!(skill, Skill::Remember | Skill::Recall | Skill::Forget) {
                    let answer = self.memory_skill(skill, turn, text, &slots).await;
                    sp.say(&answer).await;
                    AnswerSource::Skill
                } else {
                    let answer = self.skill(skill, &slots).await;
                    // A language switch speaks its confirmation in the new voice.
                    (sp.voice, sp.reading) = self.voice();
                    sp.say(&answer).await;
                    AnswerSource::Skill
                }
            }
            Route::Agents(calls) => self.agents_turn(turn, text, &calls, &mut sp).await,
            // Without an LLM, what was said is an apology.
            Route::Llm => self
                .llm_turn(turn, text, None, &mut sp)
                .await
                .unwrap_or(AnswerSource::Apology),
        };
        sp.finish().await;
        let answer = sp.text.trim().to_string();
        if !answer.is_empty() {
            let _ = self
                .events
                .send(Event::Answer {
                    turn: turn.id,
                    text: answer.clone(),
                    source,
                })
                .await;
            self.pending.insert(turn.id, text.to_string());
        }
        TurnOutcome { answer, source }
    }

    fn speaker<'a, 'b>(
        &self,
        io: &'a mut TurnIo<'b>,
        events: &'a mpsc::Sender<Event>,
        turn: &'a Turn,
    ) -> AnswerQueue<'a, 'b> {
        let (voice, reading) = self.voice();
        AnswerQueue {
            io,
            events,
            turn,
            splitter: SentenceSplitter::new(self.cfg.tts.max_sentence_chars as usize),
            index: 0,
            voice,
            reading,
            speed: self.cfg.tts.speed,
            text: String::new(),
            said_anything: false,
        }
    }

    /// Speaks a fixed announcement as its own turn (a timer going off).
    pub async fn announce(&mut self, turn: &Turn, text: &str, io: &mut TurnIo<'_>) -> TurnOutcome {
        let events = self.events.clone();
        let mut sp = self.speaker(io, &events, turn);
        sp.say(text).await;
        sp.finish().await;
        let answer = sp.text.trim().to_string();
        let _ = self
            .events
            .send(Event::Answer {
                turn: turn.id,
                text: answer.clone(),
                source: AnswerSource::Timer,
            })
            .await;
        TurnOutcome {
            answer,
            source: AnswerSource::Timer,
        }
    }

    /// Timers and alarms still to be announced to a driver that has received `seen`
    /// firings (see [`super::timers::Timers::unannounced`]).
    pub async fn unannounced_timers(&self, seen: u64) -> usize {
        self.timers.unannounced(seen).await
    }

    async fn agents_turn(
        &mut self,
        turn: &Turn,
        text: &str,
        calls: &[super::router::AgentCall],
        sp: &mut AnswerQueue<'_, '_>,
    ) -> AnswerSource {
        let asks: Vec<(String, HashMap<String, String>)> = calls
            .iter()
            .map(|c| (c.agent.clone(), c.slots.clone()))
            .collect();
        let filler = self
            .agents
            .config(&calls[0].agent)
            .map(|a| a.filler.clone())
            .unwrap_or_else(|| "One moment.".into());
        let agents = self.agents.clone();
        let fut = agents.call_many(&asks, &turn.token);
        tokio::pin!(fut);
        let wait = tokio::time::sleep(Duration::from_millis(self.cfg.conversation.filler_after_ms));
        tokio::pin!(wait);
        let mut filled = false;
        let results = loop {
            tokio::select! {
                r = &mut fut => break r,
                _ = &mut wait, if !filled => {
                    filled = true;
                    sp.say(&filler).await;
                }
            }
        };
        let mut context = Vec::new();
        let mut spoken_fallback = Vec::new();
        for (call, r) in calls.iter().zip(results) {
            let cfg = self.agents.config(&call.agent).cloned();
            let (ok, ms, error) = match &r {
                Ok(rep) => (true, rep.ms, None),
                Err(e) => (false, 0, Some(e.to_string())),
            };
            let _ = self
                .events
                .send(Event::Agent {
                    turn: turn.id,
                    agent: call.agent.clone(),
                    ok,
                    ms,
                    error,
                })
                .await;
            match r {
                Ok(rep) => {
                    let mut json = rep.json.to_string();
                    if json.len() > 4000 {
                        json = json.chars().take(4000).collect();
                    }
                    context.push(format!("{} ({}): {json}", call.agent, call.intent));
                    let rendered = cfg
                        .as_ref()
                        .and_then(|c| render(&c.reply_template, &rep.json))
                        .unwrap_or_else(|| {
                            format!(
                                "{} answered, but I couldn't read the reply.",
                                capitalise(&call.agent)
                            )
                        });
                    spoken_fallback.push(rendered);
                }
                Err(AgentError::Cancelled) => return AnswerSource::None,
                Err(e) => {
                    tracing::warn!(error = %e, "agent call failed");
                    let what = cfg.map(|c| c.description).unwrap_or_default();
                    spoken_fallback.push(format!(
                        "Sorry, I can't reach {} right now, so I can't {what}.",
                        capitalise(&call.agent)
                    ));
                }
            }
        }
        if context.is_empty() {
            for s in &spoken_fallback {
                sp.say(s).await;
            }
            return AnswerSource::Apology;
        }
        if self.cfg.llm.enabled && !self.llm_is_down() {
            let ctx = context.join("\n");
            match self.llm_turn(turn, text, Some(&ctx), sp).await {
                Some(AnswerSource::Llm) => return AnswerSource::Agent,
                Some(src) if sp.said_anything => return src,
                _ => {}
            }
        }
        for s in &spoken_fallback {
            sp.say(s).await;
        }
        AnswerSource::Template
    }

    /// Streams an LLM answer into the speaker. Returns where the answer came from, or
    /// `None` when the LLM could not be reached and nothing was said (with agent context
    /// the caller then falls back to the agents' templates).
    async fn llm_turn(
        &mut self,
        turn: &Turn,
        text: &str,
        context: Option<&str>,
        sp: &mut AnswerQueue<'_, '_>,
    ) -> Option<AnswerSource> {
        if !self.cfg.llm.enabled {
            if context.is_none() {
                sp.say("I can't answer that without a language model, and none is configured. I can tell you the time, set timers, and more: ask me what I can do.").await;
            }
            return None;
        }
        if self.llm_is_down() {
            if context.is_none() {
                sp.say(
                    "Sorry, my language model is not reachable right now, so I can't answer that.",
                )
                .await;
                return Some(AnswerSource::Apology);
            }
            return None;
        }
        let memories = self.prompt_memories(text).await;
        let messages = self.conv.messages(text, context, &memories);
        // The counter is shared by every answer; this answer's share is the difference.
        let malformed_before = self.llm.stats.malformed_lines.load(Ordering::Relaxed);
        let buf = Arc::new(Mutex::new(String::new()));
        let notify = Arc::new(Notify::new());
        let (b2, n2) = (buf.clone(), notify.clone());
        let llm = self.llm.clone();
        // The stream has its own token under the turn's: closing it at the answer bound
        // ends the stream without cancelling the turn.
        let token = turn.token.child_token();
        let stream_token = token.clone();
        let max_chars = self.cfg.conversation.max_answer_chars;
        let max_sentences = self.cfg.conversation.max_answer_sentences as u32;
        let received = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let r2 = received.clone();
        let t2 = token.clone();
        // The stream runs as its own task: it reads the server at the server's pace while
        // this loop waits on speech (a full sentence edge). Polled only from this loop, a
        // long answer spoken slower than it is generated would stall the stream and run
        // into the answer timeout. The text waits in `buf` (bounded by `max_tokens`); the
        // turn token still stops the stream at once.
        let mut fut = tokio::spawn(async move {
            llm.stream(&messages, &token, move |d| {
                // Nothing past the bound is spoken, so nothing past it is kept either.
                let total = r2.fetch_add(d.len(), Ordering::Relaxed) + d.len();
                if total > max_chars * 2 {
                    t2.cancel();
                    return;
                }
                crate::lock(&b2).push_str(d);
                n2.notify_one();
            })
            .await
        });
        let wait = tokio::time::sleep(Duration::from_millis(self.cfg.conversation.filler_after_ms));
        tokio::pin!(wait);
        let mut filled = sp.said_anything;
        // Whether the model itself has said anything (a filler does not count).
        let mut llm_said = false;
        let take = |buf: &Arc<Mutex<String>>| std::mem::take(&mut *crate::lock(buf));
        let result = loop {
            tokio::select! {
                biased;
                r = &mut fut => {
                    break r.unwrap_or_else(|e| Err(LlmError::Interrupted(format!("the LLM task failed: {e}"))));
                }
                _ = notify.notified() => {
                    let mut d = take(&buf);
                    llm_said |= !d.is_empty();
                    // Never past the bound, however much arrived at once.
                    let room = max_chars.saturating_sub(sp.text.len());
                    if d.len() > room {
                        let mut cut = room;
                        while !d.is_char_boundary(cut) {
                            cut -= 1;
                        }
                        d.truncate(cut);
                        stream_token.cancel();
                    }
                    sp.push(&d).await;
                    if sp.text.len() >= max_chars || sp.index >= max_sentences {
                        stream_token.cancel();
                    }
                }
                _ = &mut wait, if !filled => {
                    filled = true;
                    if !sp.said_anything {
                        sp.say("One moment.").await;
                    }
                }
            }
        };
        // Cut at the bound: the stream was closed by us, not by the turn.
        let capped = stream_token.is_cancelled() && !turn.token.is_cancelled();
        let rest = take(&buf);
        llm_said |= !rest.is_empty();
        if capped {
            // The unfinished sentence is dropped, then Panda says it stops there.
            sp.splitter = SentenceSplitter::new(self.cfg.tts.max_sentence_chars as usize);
            tracing::info!(
                turn = turn.id,
                chars = sp.text.len(),
                sentences = sp.index,
                received = received.load(Ordering::Relaxed),
                "the answer reached [conversation] max_answer_chars/max_answer_sentences: cut"
            );
            sp.say("That's where I'll stop; ask me if you want more.")
                .await;
        } else {
            sp.push(&rest).await;
        }
        let malformed_here =
            || self.llm.stats.malformed_lines.load(Ordering::Relaxed) - malformed_before;
        let (first_token_ms, total_ms, malformed, error) = match &result {
            Ok(a) => (Some(a.first_token_ms), a.total_ms, a.malformed, None),
            // Closed at the answer bound: an answer, not a failure.
            Err(_) if capped => (None, 0, malformed_here(), None),
            Err(e) => (None, 0, malformed_here(), Some(e.to_string())),
        };
        let _ = self
            .events
            .send(Event::Llm {
                turn: turn.id,
                first_token_ms,
                total_ms,
                malformed,
                error,
            })
            .await;
        match result {
            Ok(_) => {
                self.llm_down_until = None;
                Some(AnswerSource::Llm)
            }
            Err(_) if capped => {
                self.llm_down_until = None;
                Some(AnswerSource::Llm)
            }
            Err(LlmError::Cancelled) => Some(AnswerSource::None),
            Err(e) => {
                tracing::warn!(error = %e, "LLM answer failed");
                let got_text = llm_said;
                let apology = match &e {
                    LlmError::Unreachable { .. }
                    | LlmError::FirstTokenTimeout(_)
                    | LlmError::Status { .. } => {
                        self.llm_down_until = Some(Instant::now() + Duration::from_secs(10));
                        if context.is_some() && !got_text {
                            return None;
                        }
                        "Sorry, my language model is not reachable right now, so I can't answer that."
                    }
                    LlmError::Interrupted(_) | LlmError::AnswerTimeout(_) => {
                        "Sorry, I lost my connection to the language model before I could finish."
                    }
                    LlmError::NotAStream { .. } => {
                        self.llm_down_until = Some(Instant::now() + Duration::from_secs(10));
                        if context.is_some() && !got_text {
                            return None;
                        }
                        "Sorry, the address set for my language model answers with a web page, not a language model, so I can't answer that."
                    }
                    LlmError::Oversize { .. } | LlmError::Server(_) => {
                        "Sorry, something went wrong with that answer."
                    }
                    LlmError::Disabled | LlmError::Cancelled => return Some(AnswerSource::None),
                };
                // End the broken sentence before apologising.
                if let Some(s) = sp.splitter.finish() {
                    sp.queue(s).await;
                }
                sp.say(apology).await;
                Some(AnswerSource::Apology)
            }
        }
    }
}

/// The fact in "remember that my sister lives in Lisbon", with the user's own casing and
/// punctuation (the router's slot is lower-cased).
pub(super) fn fact_from(text: &str) -> Option<String> {
    static RE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let re = RE.get_or_init(|| {
        regex::Regex::new(
            r"(?i)^[\s,.!]*(?:(?:hey|hi|ok|okay)[\s,.!]+)?(?:panda[\s,.!]+)?(?:(?:please|can you|could you)[\s,]+)*(?:remember|don'?t forget|do not forget|make a note|note|keep in mind)(?:\s+that)?[\s,:]+(.+?)[\s.!]*$",
        )
        .expect("a valid pattern")
    });
    re.captures(text.trim())
        .and_then(|c| c.get(1))
        .map(|m| m.as_str().trim().to_string())
        .filter(|s| !s.is_empty())
}

/// A fact as Panda says it back: the user's first person becomes second person
/// ("my sister lives in Lisbon" → "your sister lives in Lisbon"), no final full stop.
pub fn spoken_fact(fact: &str) -> String {
    let words: Vec<&str> = fact
        .trim()
        .trim_end_matches(['.', '!', '?'])
        .split(' ')
        .collect();
    let mut out: Vec<String> = Vec::with_capacity(words.len());
    let mut after_i = false;
    for w in words {
        let core: String = w
            .trim_matches(|c: char| !c.is_alphanumeric() && c != '\'' && c != '’')
            .to_string();
        let lower = core.to_lowercase().replace('’', "'");
        let swapped = match lower.as_str() {
            "i" => Some("you"),
            "i'm" => Some("you're"),
            "i've" => Some("you've"),
            "i'll" => Some("you'll"),
            "i'd" => Some("you'd"),
            "me" => Some("you"),
            "my" => Some("your"),
            "mine" => Some("yours"),
            "myself" => Some("yourself"),
            "our" => Some("your"),
            "ours" => Some("yours"),
            "us" => Some("you"),
            "we" => Some("you"),
            "we're" => Some("you're"),
            "am" if after_i => Some("are"),
            "was" if after_i => Some("were"),
            _ => None,
        };
        after_i = lower == "i";
        match swapped {
            Some(s) if !core.is_empty() => out.push(w.replacen(&core, s, 1)),
            _ => out.push(w.to_string()),
        }
    }
    out.join(" ")
}

pub(super) fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// "Okay, I'll speak X now", in X.
pub(super) fn confirmation(code: &str) -> String {
    match code {
        "es" => "De acuerdo, ahora hablo español.",
        "fr" => "D'accord, je parle français maintenant.",
        "hi" => "ठीक है, अब मैं हिंदी में बोलूँगा।",
        "it" => "Va bene, ora parlo italiano.",
        "ja" => "はい、これから日本語で話します。",
        "pt" => "Tudo bem, agora falo português.",
        "zh" => "好的，我现在说中文。",
        _ => "Okay, I'll speak English now.",
    }
    .to_string()
}
