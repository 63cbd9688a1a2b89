//! The thinking path against real local HTTP servers started by each test: LLM servers
//! speaking Ollama NDJSON and OpenAI SSE (slow, broken, malformed, oversized), helper
//! agents (slow, failing), and the timer service on a real state directory.

use crate::common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use panda::config::{AgentConfig, LlmBackend, LlmConfig};
use panda::event::{BreakerState, Event};
use panda::scripted::{Reply, Request, ollama_stream, openai_stream, serve};
use panda::think::agents::{AgentError, Agents};
use panda::think::llm::{LlmClient, LlmError, Message};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

fn llm_cfg(url: &str, backend: LlmBackend) -> LlmConfig {
    LlmConfig {
        url: url.to_string(),
        backend,
        first_token_timeout_ms: 3000,
        answer_timeout_ms: 10_000,
        ..LlmConfig::default()
    }
}

fn question() -> Vec<Message> {
    vec![Message::new("user", "What is the capital of France?")]
}

async fn stream(client: &LlmClient) -> (Result<String, LlmError>, Vec<String>) {
    let mut deltas = Vec::new();
    let r = client
        .stream(&question(), &CancellationToken::new(), |d| {
            deltas.push(d.to_string())
        })
        .await
        .map(|a| a.text);
    (r, deltas)
}

/// Splits `bytes` into pieces of `n` bytes (cutting through UTF-8 characters).
fn rechunk(pieces: Vec<(Duration, Vec<u8>)>, n: usize) -> Vec<(Duration, Vec<u8>)> {
    let all: Vec<u8> = pieces.iter().flat_map(|p| p.1.clone()).collect();
    all.chunks(n)
        .map(|c| (Duration::from_millis(5), c.to_vec()))
        .collect()
}

#[tokio::test]
async fn ollama_and_openai_streams_arrive_token_by_token() {
    let tokens = ["The capital", " of France", " is Paris", " — café ☕ 🐼."];
    for backend in [LlmBackend::Ollama, LlmBackend::Openai] {
        let t = tokens;
        let server = serve(Arc::new(move |_r: &Request| {
            let pieces = match backend {
                LlmBackend::Ollama => ollama_stream(&t, Duration::from_millis(30)),
                LlmBackend::Openai => openai_stream(&t, Duration::from_millis(30)),
            };
            Reply::Stream {
                content_type: "text/event-stream",
                // 7-byte pieces cut through multi-byte characters.
                pieces: rechunk(pieces, 7),
                die: false,
            }
        }))
        .await
        .unwrap();
        let client = LlmClient::new(
            &llm_cfg(&server.url(), backend),
            panda::think::http_client(1000),
        );
        let (text, deltas) = stream(&client).await;
        assert_eq!(text.unwrap(), tokens.concat(), "{backend:?}");
        assert!(
            deltas.len() >= tokens.len(),
            "{backend:?}: streamed, not at once: {deltas:?}"
        );
    }
}

#[tokio::test]
async fn malformed_lines_are_skipped_and_counted() {
    let server = serve(Arc::new(|_r: &Request| {
        let mut pieces = openai_stream(&["Hello", " there."], Duration::from_millis(10));
        pieces.insert(1, (Duration::ZERO, b"data: {not json\n\n".to_vec()));
        pieces.insert(2, (Duration::ZERO, b"garbage line\n\n".to_vec()));
        pieces.insert(3, (Duration::ZERO, vec![0xff, 0xfe, b'\n']));
        Reply::Stream {
            content_type: "text/event-stream",
            pieces,
            die: false,
        }
    }))
    .await
    .unwrap();
    let client = LlmClient::new(
        &llm_cfg(&server.url(), LlmBackend::Openai),
        panda::think::http_client(1000),
    );
    let a = client
        .stream(&question(), &CancellationToken::new(), |_| {})
        .await
        .unwrap();
    assert_eq!(a.text, "Hello there.");
    assert_eq!(a.malformed, 3);
    assert_eq!(client.stats.malformed_lines.load(Ordering::Relaxed), 3);
}

#[tokio::test]
async fn a_ten_megabyte_line_fails_the_answer_cleanly() {
    let server = serve(Arc::new(|_r: &Request| {
        let mut huge = b"data: {\"choices\":[{\"delta\":{\"content\":\"".to_vec();
        huge.extend(std::iter::repeat_n(b'a', 10 << 20));
        huge.extend_from_slice(b"\"}}]}\n\n");
        Reply::Stream {
            content_type: "text/event-stream",
            pieces: vec![(Duration::ZERO, huge)],
            die: false,
        }
    }))
    .await
    .unwrap();
    let client = LlmClient::new(
        &llm_cfg(&server.url(), LlmBackend::Openai),
        panda::think::http_client(1000),
    );
    let (r, deltas) = stream(&client).await;
    assert!(
        matches!(r, Err(LlmError::Oversize { limit: 1_048_576 })),
        "{r:?}"
    );
    assert!(deltas.is_empty());
}

#[tokio::test]
async fn fifty_llm_calls_and_fifty_agent_calls_use_one_connection_each() {
    let server = serve(Arc::new(|r: &Request| {
        if r.path() == "/v1/chat/completions" {
            Reply::Stream {
                content_type: "text/event-stream",
                pieces: openai_stream(&["Paris."], Duration::ZERO),
                die: false,
            }
        } else {
            Reply::json(serde_json::json!({"articles": [{"title": "A"}]}))
        }
    }))
    .await
    .unwrap();
    let http = panda::think::http_client(1000);
    let client = LlmClient::new(&llm_cfg(&server.url(), LlmBackend::Openai), http.clone());
    for _ in 0..50 {
        assert_eq!(stream(&client).await.0.unwrap(), "Paris.");
    }
    assert_eq!(server.stats.requests.load(Ordering::Relaxed), 50);
    assert_eq!(
        server.stats.accepts.load(Ordering::Relaxed),
        1,
        "50 LLM calls, one TCP connection"
    );

    let agents = Agents::new(&[agent("scott", &server.url(), 1000, 3)], http, None);
    for _ in 0..50 {
        agents
            .call("scott", &HashMap::new(), &CancellationToken::new())
            .await
            .unwrap();
    }
    assert_eq!(server.stats.requests.load(Ordering::Relaxed), 100);
    assert_eq!(
        server.stats.accepts.load(Ordering::Relaxed),
        1,
        "and the agents share it"
    );
}

fn agent(name: &str, url: &str, timeout_ms: u64, failure_threshold: u32) -> AgentConfig {
    let mut a = panda::config::default_agents().remove(0);
    a.name = name.into();
    a.url = url.into();
    a.timeout_ms = timeout_ms;
    a.failure_threshold = failure_threshold;
    a.backoff_ms = 400;
    a.max_backoff_ms = 10_000;
    a.request.path = format!("/{name}");
    a
}

#[tokio::test]
async fn three_slow_agents_are_in_flight_at_the_same_time() {
    let server = serve(Arc::new(|r: &Request| Reply::Full {
        status: 200,
        content_type: "application/json",
        body: format!("{{\"from\":\"{}\"}}", r.path()).into_bytes(),
        delay: Duration::from_millis(300),
    }))
    .await
    .unwrap();
    let cfgs: Vec<_> = ["scott", "penny", "sensei"]
        .iter()
        .map(|n| agent(n, &server.url(), 2000, 3))
        .collect();
    let agents = Agents::new(&cfgs, panda::think::http_client(1000), None);
    let calls: Vec<(String, HashMap<String, String>)> = cfgs
        .iter()
        .map(|c| (c.name.clone(), HashMap::new()))
        .collect();
    let t = Instant::now();
    let results = agents.call_many(&calls, &CancellationToken::new()).await;
    let elapsed = t.elapsed();
    for (r, c) in results.iter().zip(&cfgs) {
        assert_eq!(r.as_ref().unwrap().json["from"], format!("/{}", c.name));
    }
    let iv = server.stats.intervals.lock().unwrap().clone();
    assert_eq!(iv.len(), 3);
    let latest_start = iv.iter().map(|i| i.1).max().unwrap();
    let earliest_end = iv.iter().map(|i| i.2).min().unwrap();
    assert!(
        latest_start < earliest_end,
        "all three requests overlap in time on the server"
    );
    // The overlap above is the proof; the time is reported, not asserted.
    println!("three 300 ms agents answered in {elapsed:?}");
}

#[tokio::test]
async fn the_breaker_stops_calls_until_its_backoff_then_probes_once() {
    let fail = Arc::new(AtomicU64::new(1));
    let f = fail.clone();
    let server = serve(Arc::new(move |_r: &Request| {
        if f.load(Ordering::Relaxed) == 1 {
            Reply::Full {
                status: 500,
                content_type: "text/plain",
                body: b"down".to_vec(),
                delay: Duration::ZERO,
            }
        } else {
            Reply::json(serde_json::json!({"ok": true}))
        }
    }))
    .await
    .unwrap();
    let (tx, mut rx) = mpsc::channel(64);
    let agents = Agents::new(
        &[agent("penny", &server.url(), 1000, 3)],
        panda::think::http_client(1000),
        Some(tx),
    );
    let token = CancellationToken::new();
    let none = HashMap::new();
    let calls = || server.stats.requests.load(Ordering::Relaxed);
    for _ in 0..3 {
        assert!(matches!(
            agents.call("penny", &none, &token).await,
            Err(AgentError::Status { status: 500, .. })
        ));
    }
    assert_eq!(calls(), 3);
    for _ in 0..5 {
        assert!(matches!(
            agents.call("penny", &none, &token).await,
            Err(AgentError::Open { .. })
        ));
    }
    assert_eq!(calls(), 3, "an open breaker makes no request");
    // After the backoff (400 ms ± 20 %): one probe, which fails and re-opens it.
    tokio::time::sleep(Duration::from_millis(520)).await;
    assert!(agents.call("penny", &none, &token).await.is_err());
    assert_eq!(calls(), 4, "exactly one half-open probe");
    assert!(matches!(
        agents.call("penny", &none, &token).await,
        Err(AgentError::Open { .. })
    ));
    // The service recovers; the next probe (after the doubled backoff) closes it.
    fail.store(0, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(agents.call("penny", &none, &token).await.is_ok());
    assert!(agents.call("penny", &none, &token).await.is_ok());
    assert_eq!(calls(), 6);
    let mut states = Vec::new();
    while let Ok(ev) = rx.try_recv() {
        if let Event::Breaker { state, .. } = ev {
            states.push(state);
        }
    }
    use BreakerState::*;
    assert_eq!(states, [Open, HalfOpen, Open, HalfOpen, Closed]);
}

/// Runs `panda ask --json` with the LLM at `llm_url` and agents at `agent_url`.
fn ask(llm_url: &str, agents_url: Option<&str>, args: &[&str]) -> common::Run {
    ask_env(llm_url, agents_url, &[], args)
}

/// [`ask`] with extra environment (configuration overrides).
fn ask_env(
    llm_url: &str,
    agents_url: Option<&str>,
    env: &[(&str, &str)],
    args: &[&str],
) -> common::Run {
    let state = tempfile::tempdir().unwrap();
    let mut cmd = common::command_in(state.path());
    cmd.arg("ask")
        .args(args)
        .env("PANDA_LLM__URL", llm_url)
        .env("PANDA_LLM__BACKEND", "openai")
        .envs(env.iter().copied());
    // The temp dir must outlive the process.
    let state = Box::leak(Box::new(state));
    if let Some(u) = agents_url {
        // Point every default agent at the test server through a config file.
        let cfg = state.path().join("agents.toml");
        let list: Vec<AgentConfig> = panda::config::default_agents()
            .into_iter()
            .map(|mut a| {
                a.url = u.to_string();
                a
            })
            .collect();
        let mut t = toml::map::Map::new();
        t.insert("agents".into(), toml::Value::try_from(list).unwrap());
        std::fs::write(&cfg, toml::to_string(&t).unwrap()).unwrap();
        cmd.arg("--config").arg(&cfg);
    }
    common::Run::from_output(cmd.output().unwrap())
}

/// A URL nobody listens on (the port was free a moment ago).
fn dead_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", l.local_addr().unwrap())
}

/// [`ask_env`] on a blocking thread, so the test's runtime keeps serving its HTTP servers
/// while `panda` talks to them.
async fn ask_async(
    llm_url: &str,
    agents_url: Option<&str>,
    env: &[(&'static str, &'static str)],
    args: &[&str],
) -> common::Run {
    let (llm, agents, env) = (
        llm_url.to_string(),
        agents_url.map(String::from),
        env.to_vec(),
    );
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        ask_env(&llm, agents.as_deref(), &env, &args)
    })
    .await
    .expect("panda ask ran")
}

use crate::common::answers;

#[tokio::test(flavor = "multi_thread")]
async fn after_a_mid_stream_death_the_turn_apologises_and_the_next_works() {
    let n = Arc::new(AtomicU64::new(0));
    let n2 = n.clone();
    let server = serve(Arc::new(move |_r: &Request| {
        let first = n2.fetch_add(1, Ordering::Relaxed) == 0;
        let tokens = if first {
            vec!["Paris is the capital", " of France. It is", " famous for"]
        } else {
            vec!["Rome is the capital", " of Italy."]
        };
        Reply::Stream {
            content_type: "text/event-stream",
            pieces: if first {
                // Tokens, then the connection dies without an end marker.
                openai_stream(&tokens, Duration::from_millis(20))[..3].to_vec()
            } else {
                openai_stream(&tokens, Duration::from_millis(20))
            },
            die: first,
        }
    }))
    .await
    .unwrap();
    let url = server.url();
    let r = ask_async(
        &url,
        None,
        &[],
        &[
            "--no-speak",
            "--json",
            "What is the capital of France?",
            "And of Italy?",
        ],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let a = answers(&r);
    println!("{a:#?}");
    assert_eq!(a.len(), 2, "{}", r.stdout);
    assert!(
        a[0].starts_with("Paris is the capital of France."),
        "{}",
        a[0]
    );
    assert!(a[0].contains("Sorry, I lost my connection"), "{}", a[0]);
    assert_eq!(a[1], "Rome is the capital of Italy.");
    let llm = r.of_type("llm");
    assert!(
        llm[0]["error"].as_str().unwrap().contains("broke off"),
        "{:?}",
        llm[0]
    );
    assert!(llm[1].get("error").is_none());
    // The second turn saw the first in its history: the request carried it.
    assert_eq!(
        n.load(Ordering::Relaxed),
        2,
        "no retry after tokens were spoken"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_first_sentence_reaches_tts_before_the_stream_ends() {
    let server = serve(Arc::new(|_r: &Request| Reply::Stream {
        content_type: "text/event-stream",
        pieces: openai_stream(
            &[
                "Sure.",
                " The first",
                " sentence is short.",
                " The second one",
                " takes",
                " a while",
                " to arrive.",
            ],
            // Slow enough (4 s in all) that synthesis of the first sentence, even on a
            // loaded machine, finishes while the model is still "generating".
            Duration::from_millis(600),
        ),
        die: false,
    }))
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("a.wav");
    let url = server.url();
    let r = ask_async(
        &url,
        None,
        &[],
        &["--json", "-o", wav.to_str().unwrap(), "Tell me something."],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let types: Vec<&str> = r
        .events
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    println!("{types:?}");
    let first_sentence = types.iter().position(|t| *t == "sentence").unwrap();
    let llm_end = types.iter().position(|t| *t == "llm").unwrap();
    let first_synth = types.iter().position(|t| *t == "synthesized").unwrap();
    assert!(
        first_sentence < llm_end,
        "sentence queued before the stream ended"
    );
    assert!(
        first_synth < llm_end,
        "and synthesised while the model was still generating"
    );
    let spoken = r.of_type("spoken");
    assert_eq!(spoken.len(), 1);
    assert!(spoken[0]["heard"].as_str().unwrap().ends_with("to arrive."));
    assert!(std::fs::metadata(&wav).unwrap().len() > 48_000);
}

#[test]
fn skills_work_with_the_llm_server_stopped() {
    let dead = dead_url();
    let r = ask(
        &dead,
        None,
        &[
            "--no-speak",
            "--json",
            "What time is it?",
            "Set a timer for 2 seconds.",
            "Speak Korean.",
            "Speak Spanish.",
            "What is the meaning of life?",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let a = answers(&r);
    println!("{a:#?}");
    assert!(a[0].starts_with("It's ") && a[0].contains(':'), "{}", a[0]);
    assert!(a[1].contains("2 second timer"), "{}", a[1]);
    assert!(
        a[2].contains("can't speak Korean") && a[2].contains("Spanish"),
        "{}",
        a[2]
    );
    assert!(a[3].contains("español"), "{}", a[3]);
    assert!(a[4].contains("not reachable"), "{}", a[4]);
    let routes: Vec<&str> = r
        .of_type("route")
        .iter()
        .map(|e| e["target"].as_str().unwrap())
        .collect();
    assert_eq!(
        routes,
        [
            "skill:time",
            "skill:timer",
            "skill:language",
            "skill:language",
            "llm"
        ]
    );
}

/// Waits for `label` to fire, `secs` (+ up to 1 s) after `started`.
async fn expect_fired(rx: &mut mpsc::Receiver<Event>, label: &str, started: Instant, secs: u64) {
    match tokio::time::timeout(Duration::from_secs(secs + 3), rx.recv())
        .await
        .unwrap()
    {
        Some(Event::TimerFired { label: l, .. }) => assert_eq!(l, label),
        other => panic!("{other:?}"),
    }
    let at = started.elapsed();
    assert!(
        at >= Duration::from_secs(secs) && at < Duration::from_millis(secs * 1000 + 1000),
        "{label} fired after {at:?}"
    );
}

#[tokio::test]
async fn timers_fire_and_survive_a_restart() {
    use panda::think::timers;
    let dir = tempfile::tempdir().unwrap();
    let (tx, mut rx) = mpsc::channel(8);
    let root = CancellationToken::new();
    let (t, missed) = timers::spawn(dir.path(), tx, root.clone()).await.unwrap();
    assert!(missed.is_empty());
    let started = Instant::now();
    t.add("2 second timer".into(), Duration::from_secs(2))
        .await
        .unwrap();
    t.add("4 second timer".into(), Duration::from_secs(4))
        .await
        .unwrap();
    t.add("1 hour timer".into(), Duration::from_secs(3600))
        .await
        .unwrap();
    expect_fired(&mut rx, "2 second timer", started, 2).await;
    // Restart: the process (task) goes away; a new one reads the same file.
    root.cancel();
    drop(t);
    let (tx, mut rx) = mpsc::channel(8);
    let root = CancellationToken::new();
    let (t, missed) = timers::spawn(dir.path(), tx, root.clone()).await.unwrap();
    assert!(missed.is_empty());
    let labels: Vec<String> = t.list().await.into_iter().map(|x| x.label).collect();
    assert_eq!(labels, ["4 second timer", "1 hour timer"]);
    // It fires at its original time, not 4 s after the restart.
    expect_fired(&mut rx, "4 second timer", started, 4).await;
    // A timer that fell due while Panda was off is reported as missed at the next start.
    t.add("short timer".into(), Duration::from_millis(100))
        .await
        .unwrap();
    root.cancel();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (tx, _rx) = mpsc::channel(8);
    let (_t, missed) = timers::spawn(dir.path(), tx, CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(missed.len(), 1);
    assert_eq!(missed[0].label, "short timer");
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_replies_go_through_the_llm_or_the_template_when_it_is_down() {
    let server = serve(Arc::new(|r: &Request| match r.path() {
        "/articles/top" => {
            assert_eq!(r.query("limit").as_deref(), Some("3"));
            Reply::json(serde_json::json!({"articles": [
                {"title": "Rain expected tomorrow"},
                {"title": "Local team wins the cup"}
            ]}))
        }
        "/quote" => Reply::Full {
            status: 200,
            content_type: "text/html",
            body: b"<html>not json</html>".to_vec(),
            delay: Duration::ZERO,
        },
        "/v1/chat/completions" => {
            let body = String::from_utf8_lossy(&r.body).to_string();
            // The agent's reply reached the model as context.
            let saw = body.contains("Rain expected tomorrow");
            Reply::Stream {
                content_type: "text/event-stream",
                pieces: openai_stream(
                    &[if saw {
                        "Rain is expected tomorrow, and the local team won the cup."
                    } else {
                        "I have no news."
                    }],
                    Duration::ZERO,
                ),
                die: false,
            }
        }
        _ => Reply::json(serde_json::json!({"status": "ok"})),
    }))
    .await
    .unwrap();
    let url = server.url();
    let dead = dead_url();
    let r = ask_async(
        &url,
        Some(&url),
        &[],
        &[
            "--no-speak",
            "--json",
            "What's the news?",
            "What's the price of Apple stock?",
        ],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let a = answers(&r);
    assert_eq!(
        a[0],
        "Rain is expected tomorrow, and the local team won the cup."
    );
    assert!(
        a[1].contains("can't reach Penny"),
        "a non-JSON reply is a failed call: {}",
        a[1]
    );
    let agent_ev = r.of_type("agent");
    assert!(
        agent_ev[1]["error"].as_str().unwrap().contains("not JSON"),
        "{:?}",
        agent_ev[1]
    );

    // LLM down: the agent's reply is read through its template.
    let r = ask_async(
        &dead,
        Some(&url),
        &[],
        &["--no-speak", "--json", "Read me the headlines"],
    )
    .await;
    let a = answers(&r);
    assert_eq!(
        a[0],
        "Here are the top stories: Rain expected tomorrow, and Local team wins the cup."
    );
}

/// With llama.cpp's server and SmolLM2 (built by `scripts/llm-server.sh`): a real model
/// answers through Panda's OpenAI backend.
#[test]
fn a_real_small_model_answers_through_the_openai_backend() {
    let Some(url) = common::llm_server() else {
        eprintln!(
            "\n\n*** SKIPPED: no llama-server (run scripts/llm-server.sh to build and start it) ***\n\n"
        );
        return;
    };
    // Greedy decoding: a sampled 135M model answers differently each run.
    let r = ask_env(
        &url,
        None,
        &[("PANDA_LLM__TEMPERATURE", "0")],
        &["--no-speak", "--json", "What is the capital of France?"],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let a = answers(&r);
    println!("{a:?}");
    assert!(a[0].contains("Paris"), "{}", a[0]);
}

#[test]
fn a_timer_fires_and_is_spoken_when_due() {
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("t.wav");
    let t = Instant::now();
    let r = ask(
        &dead_url(),
        None,
        &[
            "--json",
            "--wait-timers",
            "-o",
            wav.to_str().unwrap(),
            "Set a timer for 2 seconds.",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let fired = r.of_type("timer_fired");
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0]["label"], "2 second timer");
    let heard: Vec<&str> = r
        .of_type("spoken")
        .iter()
        .map(|e| e["heard"].as_str().unwrap())
        .collect();
    // What was heard, as spoken (numbers read out).
    assert_eq!(
        heard,
        [
            "Okay, a two second timer starts now.",
            "Your two second timer is done."
        ]
    );
    assert!(t.elapsed() >= Duration::from_secs(2));
}

#[tokio::test]
async fn cancelling_the_turn_drops_the_stream_at_once() {
    let tokens: Vec<String> = (0..50).map(|i| format!(" word{i}")).collect();
    let server = serve(Arc::new(move |_r: &Request| {
        let t: Vec<&str> = tokens.iter().map(String::as_str).collect();
        Reply::Stream {
            content_type: "application/x-ndjson",
            pieces: ollama_stream(&t, Duration::from_millis(100)),
            die: false,
        }
    }))
    .await
    .unwrap();
    let client = LlmClient::new(
        &llm_cfg(&server.url(), LlmBackend::Ollama),
        panda::think::http_client(1000),
    );
    let token = CancellationToken::new();
    let t2 = token.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(450)).await;
        t2.cancel();
    });
    let t = Instant::now();
    let mut got = 0;
    let r = client.stream(&question(), &token, |_| got += 1).await;
    let took = t.elapsed();
    assert!(matches!(r, Err(LlmError::Cancelled)), "{r:?}");
    // 50 tokens 100 ms apart: a stream that was not dropped would run for 5 s.
    assert!(got < 20, "{got} tokens before the cancel");
    assert!(
        took < Duration::from_secs(2),
        "returned {took:?} after start"
    );
}

#[tokio::test]
async fn a_failure_before_the_first_token_is_retried_once() {
    let n = Arc::new(AtomicU64::new(0));
    let n2 = n.clone();
    let server = serve(Arc::new(move |_r: &Request| {
        if n2.fetch_add(1, Ordering::Relaxed) == 0 {
            Reply::Full {
                status: 503,
                content_type: "text/plain",
                body: b"loading model".to_vec(),
                delay: Duration::ZERO,
            }
        } else {
            Reply::Stream {
                content_type: "text/event-stream",
                pieces: openai_stream(&["Paris."], Duration::ZERO),
                die: false,
            }
        }
    }))
    .await
    .unwrap();
    let client = LlmClient::new(
        &llm_cfg(&server.url(), LlmBackend::Openai),
        panda::think::http_client(1000),
    );
    assert_eq!(stream(&client).await.0.unwrap(), "Paris.");
    assert_eq!(n.load(Ordering::Relaxed), 2);
    assert_eq!(client.stats.retries.load(Ordering::Relaxed), 1);
    // Two failures in a row: one retry, then the error.
    n.store(0, Ordering::Relaxed);
    let dead = LlmClient::new(
        &llm_cfg(&dead_url(), LlmBackend::Openai),
        panda::think::http_client(1000),
    );
    assert!(matches!(
        stream(&dead).await.0,
        Err(LlmError::Unreachable { .. })
    ));
    assert_eq!(dead.stats.retries.load(Ordering::Relaxed), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_agent_gets_a_spoken_filler_first() {
    let server = serve(Arc::new(|r: &Request| match r.path() {
        "/articles/top" => Reply::Full {
            status: 200,
            content_type: "application/json",
            body: br#"{"articles": [{"title": "Rain expected tomorrow"}]}"#.to_vec(),
            delay: Duration::from_millis(1200),
        },
        _ => Reply::json(serde_json::json!({"status": "ok"})),
    }))
    .await
    .unwrap();
    let url = server.url();
    let r = ask_async(
        &dead_url(),
        Some(&url),
        &[("PANDA_CONVERSATION__FILLER_AFTER_MS", "400")],
        &["--no-speak", "--json", "What's the news?"],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let types: Vec<String> = r
        .events
        .iter()
        .map(|e| {
            format!(
                "{}:{}",
                e["type"].as_str().unwrap(),
                e["text"].as_str().unwrap_or("")
            )
        })
        .collect();
    println!("{types:#?}");
    let filler = types
        .iter()
        .position(|t| t == "sentence:Let me check the news.")
        .expect("a filler sentence");
    let agent = types.iter().position(|t| t.starts_with("agent:")).unwrap();
    assert!(
        filler < agent,
        "the filler is queued while the agent is still working"
    );
    assert_eq!(
        answers(&r)[0],
        "Let me check the news. Here are the top stories: Rain expected tomorrow."
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redirect_to_another_origin_is_not_followed() {
    // The other origin would receive the whole prompt (remembered facts included).
    let elsewhere = serve(Arc::new(|_: &Request| Reply::Stream {
        content_type: "text/event-stream",
        pieces: openai_stream(&["Stolen."], Duration::ZERO),
        die: false,
    }))
    .await
    .unwrap();
    let target = format!("{}/v1/chat/completions", elsewhere.url());
    let redirector = serve(Arc::new(move |_: &Request| Reply::Redirect {
        status: 307,
        location: target.clone(),
    }))
    .await
    .unwrap();
    let r = ask_async(
        &redirector.url(),
        None,
        &[],
        &["--no-speak", "--json", "Tell me about rivers."],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let a = answers(&r);
    assert_eq!(
        elsewhere.stats.requests.load(Ordering::Relaxed),
        0,
        "the redirect was followed: {a:?}"
    );
    assert!(a[0].starts_with("Sorry"), "{a:?}");
    assert!(!a[0].contains("Stolen"), "{a:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_html_page_from_the_llm_url_is_named_as_such() {
    let portal = serve(Arc::new(|_: &Request| Reply::Full {
        status: 200,
        content_type: "text/html; charset=utf-8",
        body: b"<html><body>Welcome to the hotel wifi</body></html>".to_vec(),
        delay: Duration::ZERO,
    }))
    .await
    .unwrap();
    let r = ask_async(
        &portal.url(),
        None,
        &[],
        &["--no-speak", "--json", "Tell me about rivers."],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let a = answers(&r);
    assert!(a[0].contains("web page"), "{a:?}");
    let llm = r.of_type("llm");
    assert!(
        llm[0]["error"].as_str().unwrap_or("").contains("text/html"),
        "{llm:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_five_thousand_sentence_stream_is_cut_at_the_bound() {
    let sentences: Vec<String> = (0..5000)
        .map(|i| format!("This is sentence number {i} of an answer that never ends. "))
        .collect();
    let refs: Vec<String> = sentences.clone();
    let server = serve(Arc::new(move |_: &Request| {
        let r: Vec<&str> = refs.iter().map(String::as_str).collect();
        Reply::Stream {
            content_type: "text/event-stream",
            pieces: openai_stream(&r, Duration::ZERO),
            die: false,
        }
    }))
    .await
    .unwrap();
    let t = Instant::now();
    let r = ask_async(
        &server.url(),
        None,
        &[("PANDA_CONVERSATION__MAX_ANSWER_CHARS", "600")],
        &["--no-speak", "--json", "Tell me everything."],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let a = answers(&r);
    eprintln!("cut after {:?}: {} chars", t.elapsed(), a[0].len());
    assert!(
        a[0].ends_with("That's where I'll stop; ask me if you want more."),
        "{}",
        &a[0][a[0].len().saturating_sub(200)..]
    );
    // Whole sentences up to the bound, then the closing line; nothing near 5,000.
    assert!(a[0].len() < 600 + 200, "{}", a[0].len());
    let sentences_spoken = r.of_type("sentence").len();
    assert!(sentences_spoken < 20, "{sentences_spoken}");
}
