//! Helper agents: HTTP services declared in config (`[[agents]]`), called through the one
//! shared pooled HTTP client, each behind its own circuit breaker.
//!
//! Runs on the async runtime. A call fills the agent's request template with slots from
//! the utterance, asks the breaker for a permit (an open breaker refuses at once — no
//! network on the hot path for a service known to be down), and runs under the agent's
//! own timeout and the turn's cancellation token. Several agents needed by one utterance
//! are called concurrently ([`Agents::call_many`]).
//!
//! Health: one background task per agent polls its health path and stores the answer;
//! everyone else (status page, routing, `panda doctor`) reads that cache and never makes a
//! request to find out. Breaker transitions become [`Event::Breaker`].

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::breaker::{Breaker, BreakerConfig, BreakerState, Permit};
use crate::config::AgentConfig;
use crate::event::Event;

/// Largest agent reply read (bytes); a longer one is an error naming the agent.
pub const MAX_REPLY_BYTES: usize = 256 * 1024;

/// Errors of one agent call.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AgentError {
    /// No agent has this name.
    #[error("no agent named {0}")]
    Unknown(String),
    /// The breaker is open: the agent failed recently and is not called until it backs off.
    #[error("{agent} is unavailable (circuit open after repeated failures)")]
    Open {
        /// Agent.
        agent: String,
    },
    /// No reply within the agent's timeout.
    #[error("{agent} did not answer within {ms} ms")]
    Timeout {
        /// Agent.
        agent: String,
        /// Its timeout.
        ms: u64,
    },
    /// Connection failed.
    #[error("{agent} is not reachable: {problem}")]
    Unreachable {
        /// Agent.
        agent: String,
        /// What failed.
        problem: String,
    },
    /// Non-2xx status.
    #[error("{agent} answered HTTP {status}")]
    Status {
        /// Agent.
        agent: String,
        /// Status.
        status: u16,
    },
    /// The reply was not the JSON object the contract asks for, or too large.
    #[error("{agent} sent a reply Panda cannot use: {problem}")]
    BadReply {
        /// Agent.
        agent: String,
        /// What is wrong.
        problem: String,
    },
    /// The turn was cancelled.
    #[error("cancelled")]
    Cancelled,
}

/// A successful call.
#[derive(Debug, Clone)]
pub struct AgentReply {
    /// Agent name.
    pub agent: String,
    /// The JSON object it returned.
    pub json: serde_json::Value,
    /// Call duration.
    pub ms: u64,
}

/// Health as the cache holds it.
#[derive(Debug, Clone, Serialize)]
pub struct AgentHealth {
    /// Agent.
    pub name: String,
    /// Last health check passed (`None` before the first check).
    pub healthy: Option<bool>,
    /// Breaker state.
    pub breaker: BreakerState,
    /// Calls made (not refused).
    pub calls: u64,
}

struct Agent {
    cfg: AgentConfig,
    breaker: Mutex<Breaker>,
    /// 0 unknown, 1 healthy, 2 unhealthy.
    health: AtomicU64,
    calls: AtomicU64,
    probing: AtomicBool,
}

/// All agents.
pub struct Agents {
    agents: Vec<Agent>,
    http: reqwest::Client,
    events: Option<mpsc::Sender<Event>>,
}

impl Agents {
    /// Agents from config over the shared `http` client; breaker transitions go to `events`.
    pub fn new(
        cfgs: &[AgentConfig],
        http: reqwest::Client,
        events: Option<mpsc::Sender<Event>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            agents: cfgs
                .iter()
                .map(|c| Agent {
                    cfg: c.clone(),
                    breaker: Mutex::new(Breaker::new(BreakerConfig {
                        failure_threshold: c.failure_threshold,
                        base_backoff: Duration::from_millis(c.backoff_ms),
                        max_backoff: Duration::from_millis(c.max_backoff_ms.max(c.backoff_ms)),
                    })),
                    health: AtomicU64::new(0),
                    calls: AtomicU64::new(0),
                    probing: AtomicBool::new(false),
                })
                .collect(),
            http,
            events,
        })
    }

    /// The configured agents.
    pub fn configs(&self) -> impl Iterator<Item = &AgentConfig> {
        self.agents.iter().map(|a| &a.cfg)
    }

    fn find(&self, name: &str) -> Option<&Agent> {
        self.agents.iter().find(|a| a.cfg.name == name)
    }

    /// The configuration of agent `name`.
    pub fn config(&self, name: &str) -> Option<&AgentConfig> {
        self.find(name).map(|a| &a.cfg)
    }

    /// Cached health of every agent (no network).
    pub fn health(&self) -> Vec<AgentHealth> {
        let now = Instant::now();
        self.agents
            .iter()
            .map(|a| AgentHealth {
                name: a.cfg.name.clone(),
                healthy: match a.health.load(Ordering::Relaxed) {
                    1 => Some(true),
                    2 => Some(false),
                    _ => None,
                },
                breaker: lock(&a.breaker).state(now),
                calls: a.calls.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Starts one health task per agent; they stop when `root` is cancelled.
    pub fn spawn_health(self: &Arc<Self>, root: &CancellationToken) {
        for i in 0..self.agents.len() {
            let me = self.clone();
            let root = root.clone();
            tokio::spawn(async move {
                let a = &me.agents[i];
                let url = join_url(&a.cfg.url, &a.cfg.health_path);
                let period = Duration::from_millis(a.cfg.health_interval_ms.max(100));
                loop {
                    let ok = me
                        .http
                        .get(&url)
                        .timeout(Duration::from_millis(a.cfg.timeout_ms))
                        .send()
                        .await
                        .is_ok_and(|r| r.status().is_success());
                    let prev = a.health.swap(if ok { 1 } else { 2 }, Ordering::Relaxed);
                    if prev != 0 && (prev == 1) != ok {
                        tracing::info!(agent = %a.cfg.name, healthy = ok, "agent health changed");
                    }
                    tokio::select! {
                        _ = root.cancelled() => return,
                        _ = tokio::time::sleep(period) => {}
                    }
                }
            });
        }
    }

    /// Calls one agent with `slots` under its breaker, its timeout and `token`.
    pub async fn call(
        &self,
        name: &str,
        slots: &HashMap<String, String>,
        token: &CancellationToken,
    ) -> Result<AgentReply, AgentError> {
        let a = self
            .find(name)
            .ok_or_else(|| AgentError::Unknown(name.to_string()))?;
        let permit = lock(&a.breaker).permit(Instant::now());
        match permit {
            Permit::Refuse => {
                return Err(AgentError::Open {
                    agent: name.to_string(),
                });
            }
            Permit::Probe => {
                a.probing.store(true, Ordering::Relaxed);
                self.emit(name, BreakerState::HalfOpen).await;
            }
            Permit::Call => {}
        }
        a.calls.fetch_add(1, Ordering::Relaxed);
        let start = Instant::now();
        let result = tokio::select! {
            _ = token.cancelled() => Err(AgentError::Cancelled),
            r = tokio::time::timeout(Duration::from_millis(a.cfg.timeout_ms), self.request(a, slots)) => {
                r.unwrap_or_else(|_| Err(AgentError::Timeout { agent: name.to_string(), ms: a.cfg.timeout_ms }))
            }
        };
        let change = match &result {
            Ok(_) => lock(&a.breaker).success(),
            // A cancelled call says nothing about the agent; give a probe back.
            Err(AgentError::Cancelled) => None,
            Err(_) => lock(&a.breaker).failure(Instant::now(), rand::random::<f64>() * 2.0 - 1.0),
        };
        if let Some(state) = change {
            self.emit(name, state).await;
        }
        result.map(|json| AgentReply {
            agent: name.to_string(),
            json,
            ms: start.elapsed().as_millis() as u64,
        })
    }

    /// Calls several agents at once; results come back in the order asked.
    pub async fn call_many(
        &self,
        calls: &[(String, HashMap<String, String>)],
        token: &CancellationToken,
    ) -> Vec<Result<AgentReply, AgentError>> {
        futures_util::future::join_all(calls.iter().map(|(n, s)| self.call(n, s, token))).await
    }

    async fn emit(&self, agent: &str, state: BreakerState) {
        tracing::info!(agent, ?state, "circuit breaker");
        if let Some(tx) = &self.events {
            let _ = tx
                .send(Event::Breaker {
                    agent: agent.to_string(),
                    state,
                })
                .await;
        }
    }

    async fn request(
        &self,
        a: &Agent,
        slots: &HashMap<String, String>,
    ) -> Result<serde_json::Value, AgentError> {
        let name = &a.cfg.name;
        let t = &a.cfg.request;
        let url = join_url(&a.cfg.url, &fill(&t.path, slots));
        let query: Vec<(String, String)> = fill_map(&t.query, slots).into_iter().collect();
        let req = match t.method.as_str() {
            "POST" => self
                .http
                .post(&url)
                .query(&query)
                .json(&fill_map(&t.body, slots)),
            _ => self.http.get(&url).query(&query),
        };
        let resp = req.send().await.map_err(|e| AgentError::Unreachable {
            agent: name.clone(),
            problem: super::describe(e),
        })?;
        if !resp.status().is_success() {
            return Err(AgentError::Status {
                agent: name.clone(),
                status: resp.status().as_u16(),
            });
        }
        let bad = |problem: String| AgentError::BadReply {
            agent: name.clone(),
            problem,
        };
        let mut body = Vec::new();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| bad(format!("reply broke off: {}", e.without_url())))?;
            if body.len() + chunk.len() > MAX_REPLY_BYTES {
                return Err(bad(format!("reply larger than {MAX_REPLY_BYTES} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        let json: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
            bad(format!(
                "not JSON ({e}): {:?}",
                String::from_utf8_lossy(&body[..body.len().min(80)])
            ))
        })?;
        if !json.is_object() {
            return Err(bad("the reply is JSON but not an object".into()));
        }
        Ok(json)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    crate::lock(m)
}

fn join_url(base: &str, path: &str) -> String {
    format!(
        "{}/{}",
        base.trim_end_matches('/'),
        path.trim_start_matches('/')
    )
}

/// Replaces `{slot}` with its value (empty when unknown).
pub fn fill(template: &str, slots: &HashMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(i) = rest.find('{') {
        out.push_str(&rest[..i]);
        match rest[i..].find('}') {
            Some(j) => {
                let key = &rest[i + 1..i + j];
                out.push_str(slots.get(key).map(String::as_str).unwrap_or(""));
                rest = &rest[i + j + 1..];
            }
            None => {
                out.push_str(&rest[i..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// Fills every field; drops fields that had placeholders and came out empty.
fn fill_map(
    m: &BTreeMap<String, String>,
    slots: &HashMap<String, String>,
) -> BTreeMap<String, String> {
    m.iter()
        .filter_map(|(k, v)| {
            let f = fill(v, slots);
            (!(f.trim().is_empty() && v.contains('{'))).then(|| (k.clone(), f))
        })
        .collect()
}

/// Renders a reply template: `{/json/pointer}` reads a value; `{/list/*/field}` joins the
/// field of every item with ", " (" and " before the last). `None` when a placeholder
/// finds nothing, so the caller can say plainly that the reply could not be read.
pub fn render(template: &str, json: &serde_json::Value) -> Option<String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(i) = rest.find('{') {
        out.push_str(&rest[..i]);
        let j = rest[i..].find('}')?;
        let path = &rest[i + 1..i + j];
        let value = match path.split_once("/*") {
            Some((list, field)) => {
                let items = json.pointer(list)?.as_array()?;
                let parts: Vec<String> = items
                    .iter()
                    .filter_map(|it| {
                        scalar(if field.is_empty() {
                            Some(it)
                        } else {
                            it.pointer(field)
                        }?)
                    })
                    .collect();
                if parts.is_empty() {
                    return None;
                }
                join_spoken(&parts)
            }
            None => scalar(json.pointer(path)?)?,
        };
        out.push_str(&value);
        rest = &rest[i + j + 1..];
    }
    out.push_str(rest);
    Some(out)
}

fn scalar(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn join_spoken(parts: &[String]) -> String {
    match parts {
        [] => String::new(),
        [a] => a.clone(),
        [init @ .., last] => format!("{}, and {last}", init.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn templates_fill_and_drop_empty_fields() {
        let slots: HashMap<String, String> = [("topic".to_string(), "space".to_string())].into();
        assert_eq!(fill("/a/{topic}/b", &slots), "/a/space/b");
        let m: BTreeMap<String, String> = [
            ("limit".to_string(), "3".to_string()),
            ("topic".to_string(), "{topic}".to_string()),
            ("symbol".to_string(), "{symbol}".to_string()),
        ]
        .into();
        let f = fill_map(&m, &slots);
        assert_eq!(f.len(), 2);
        assert_eq!(f["topic"], "space");
    }

    #[test]
    fn replies_render_through_pointers_and_lists() {
        let j = json!({"articles": [{"title": "A"}, {"title": "B"}, {"title": "C"}], "n": 3});
        assert_eq!(
            render("Top: {/articles/*/title}. ({/n})", &j).unwrap(),
            "Top: A, B, and C. (3)"
        );
        assert_eq!(render("{/missing}", &j), None);
        assert_eq!(render("{/articles/*/nope}", &j), None);
    }
}
