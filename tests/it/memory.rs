//! Long-term memory with the real MiniLM model and SQLite: embeddings against reference
//! vectors, retrieval of paraphrased questions, seeding across restarts, durability under
//! SIGKILL, refusal of damaged or foreign files, bad input from the CLI, and the voice
//! skills (remember / recall / forget, memories in the LLM prompt) through `panda ask`.

use crate::common;

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use panda::config::Config;
use panda::memory::{Embedder, Kind, Memory};
use panda::scripted::{Reply, Request, openai_stream, serve};
use rand::Rng;

/// `panda ARGS` with memory in `state` (and the test models).
fn panda_in(state: &Path, env: &[(&str, &str)], args: &[&str]) -> common::Run {
    let out = common::command_in(state)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("running panda");
    common::Run::from_output(out)
}

fn config_in(state: &Path) -> Config {
    let mut cfg = common::config();
    cfg.state.dir = state.to_path_buf();
    cfg
}

fn export(state: &Path) -> Vec<serde_json::Value> {
    let r = panda_in(state, &[], &["memory", "export"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    r.stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("export is JSON lines"))
        .collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[tokio::test]
async fn embeddings_match_the_reference_vectors() {
    let cfg = common::config();
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/minilm_reference.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let items = reference["sentences"].as_array().unwrap();
    let texts: Vec<String> = items
        .iter()
        .map(|s| s["text"].as_str().unwrap().to_string())
        .collect();
    let want: Vec<Vec<f32>> = items
        .iter()
        .map(|s| {
            s["vector"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        })
        .collect();
    let embedder = Embedder::spawn(
        &cfg.model_path(&cfg.memory.model),
        &cfg.model_path(&cfg.memory.tokenizer),
        &cfg.model_path(Path::new(panda::onnx::ORT_LIB)),
        &cfg.memory,
    )
    .await
    .unwrap();
    // One at a time, and all together in one padded batch: the same vectors.
    let batched = embedder.embed(texts.clone()).await.unwrap();
    for (i, t) in texts.iter().enumerate() {
        let one = embedder.embed(vec![t.clone()]).await.unwrap().remove(0);
        let c1 = cosine(&one, &want[i]);
        let cb = cosine(&batched[i], &want[i]);
        eprintln!("{t:?}: cosine {c1:.5} alone, {cb:.5} in a batch");
        assert!(c1 >= 0.999, "{t:?}: {c1}");
        assert!(cb >= 0.999, "{t:?} batched: {cb}");
    }
    // The query cache answers a repeated query without the model.
    let (a, cached_a) = embedder.embed_query("Where are my keys?").await.unwrap();
    let (b, cached_b) = embedder.embed_query("where are my keys?  ").await.unwrap();
    assert!(!cached_a && cached_b);
    assert_eq!(a, b);
}

#[tokio::test]
async fn paraphrased_questions_find_their_fact_in_the_top_three() {
    let state = tempfile::tempdir().unwrap();
    let memory = Memory::open(&config_in(state.path())).await.unwrap();
    let pairs = panda::bench::memory::RETRIEVAL;
    let (share, misses) = panda::bench::memory::retrieval(&memory, pairs)
        .await
        .unwrap();
    eprintln!(
        "retrieval: {:.0}% of {} questions find their fact in the top 3",
        share * 100.0,
        pairs.len()
    );
    for m in &misses {
        eprintln!("  miss: {m}");
    }
    assert!(share >= 0.9, "{share}: {misses:?}");
    // Filters: kinds and time.
    let facts_only = panda::memory::Filter {
        kinds: vec![Kind::Identity],
        ..Default::default()
    };
    let hits = memory.search("my dog", 5, facts_only).await.unwrap();
    assert!(
        hits.iter().all(|h| h.memory.kind == Kind::Identity),
        "{hits:?}"
    );
    let future = panda::memory::Filter {
        since_ms: Some(panda::memory::now_ms() + 60_000),
        ..Default::default()
    };
    assert!(memory.search("my dog", 5, future).await.unwrap().is_empty());
    // An exact name the embedding blurs is still found by keyword.
    let hits = memory
        .search("Biscuit", 3, Default::default())
        .await
        .unwrap();
    assert!(hits[0].memory.text.contains("Biscuit"), "{hits:?}");
    assert_eq!(hits[0].keyword_rank, Some(0));
    memory.close().await.unwrap();
}

#[test]
fn identity_facts_are_seeded_once_across_restarts() {
    let state = tempfile::tempdir().unwrap();
    let identity = Config::default().memory.identity;
    let mut seeded_logs = 0;
    for _ in 0..3 {
        let r = panda_in(
            state.path(),
            &[("RUST_LOG", "panda::memory=info")],
            &["memory", "stats"],
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
        seeded_logs += r.stderr.matches("identity facts seeded").count();
    }
    assert_eq!(seeded_logs, 1, "seeded on the first start only");
    let rows = export(state.path());
    let ids: Vec<i64> = rows
        .iter()
        .filter(|r| r["kind"] == "identity")
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids.len(), identity.len(), "{rows:?}");
    // A seeded fact the owner deleted stays deleted.
    let id = ids[0].to_string();
    let r = panda_in(state.path(), &[], &["memory", "forget", "--id", &id]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let _ = panda_in(state.path(), &[], &["memory", "stats"]);
    let left = export(state.path())
        .iter()
        .filter(|r| r["kind"] == "identity")
        .count();
    assert_eq!(left, identity.len() - 1);
}

#[test]
fn every_reported_write_survives_sigkill() {
    let state = tempfile::tempdir().unwrap();
    let mut rng = rand::rng();
    // (id, text) of every write a child reported as committed.
    let mut committed: Vec<(i64, String)> = Vec::new();
    for round in 0..20 {
        let mut child = common::command()
            .args(["memory", "add", "-", "--lines", "--json"])
            .env("PANDA_STATE__DIR", state.path())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let sent = Arc::new(Mutex::new(Vec::<String>::new()));
        let sent2 = sent.clone();
        let writer = std::thread::spawn(move || {
            for n in 0.. {
                let line =
                    format!("round {round} note {n}: the parcel for flat {n} is at the desk");
                sent2.lock().unwrap().push(line.clone());
                if writeln!(stdin, "{line}").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        let stdout = child.stdout.take().unwrap();
        let reports = Arc::new(Mutex::new(Vec::<i64>::new()));
        let reports2 = reports.clone();
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let v: serde_json::Value = serde_json::from_str(&line).unwrap();
                reports2.lock().unwrap().push(v["id"].as_i64().unwrap());
            }
        });
        // Kill at a random moment: some during start-up, most mid-stream.
        std::thread::sleep(Duration::from_millis(rng.random_range(300..2500)));
        child.kill().unwrap(); // SIGKILL
        let _ = child.wait();
        reader.join().unwrap();
        writer.join().unwrap();
        let sent = sent.lock().unwrap();
        // Lines are stored in order, one report each: report k is line k.
        for (k, id) in reports.lock().unwrap().iter().enumerate() {
            committed.push((*id, sent[k].clone()));
        }
    }
    eprintln!(
        "{} writes reported committed over 20 kills",
        committed.len()
    );
    assert!(committed.len() > 20, "the children wrote something");
    let path = state.path().join("memory.sqlite3");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
    }
    let rows = export(state.path());
    for (id, text) in &committed {
        assert!(
            rows.iter()
                .any(|r| r["id"].as_i64() == Some(*id) && r["text"] == text.as_str()),
            "#{id} {text:?} was reported committed but is missing"
        );
    }
}

fn sha(path: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

fn siblings(path: &Path) -> Vec<PathBuf> {
    let name = path.file_name().unwrap().to_string_lossy().to_string();
    std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(&name))
        .collect()
}

#[test]
fn damaged_or_foreign_databases_are_refused_and_left_alone() {
    // Not a database at all.
    let state = tempfile::tempdir().unwrap();
    let path = state.path().join("memory.sqlite3");
    std::fs::write(
        &path,
        "these are my holiday notes, not a database\n".repeat(200),
    )
    .unwrap();
    let before = sha(&path);
    for args in [
        &["memory", "stats"][..],
        &["ask", "--no-speak", "what time is it"],
    ] {
        let r = panda_in(state.path(), &[], args);
        assert_eq!(r.code, 73, "{args:?}: {}", r.stderr);
        assert!(
            r.stderr.contains(&path.display().to_string()) && r.stderr.contains("mv "),
            "{}",
            r.stderr
        );
    }
    assert_eq!(sha(&path), before);
    assert_eq!(
        siblings(&path),
        std::slice::from_ref(&path),
        "no WAL or journal created"
    );

    // Another program's SQLite database.
    let state = tempfile::tempdir().unwrap();
    let path = state.path().join("memory.sqlite3");
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch("CREATE TABLE photos (id INTEGER PRIMARY KEY, name TEXT); INSERT INTO photos (name) VALUES ('beach.jpg');")
            .unwrap();
    }
    let before = sha(&path);
    let r = panda_in(state.path(), &[], &["memory", "stats"]);
    assert_eq!(r.code, 73, "{}", r.stderr);
    assert!(
        r.stderr.contains("not Panda's memory") && r.stderr.contains("photos"),
        "{}",
        r.stderr
    );
    assert_eq!(sha(&path), before);

    // Panda's own database, damaged on disk.
    let state = tempfile::tempdir().unwrap();
    for i in 0..40 {
        let r = panda_in(
            state.path(),
            &[],
            &[
                "memory",
                "add",
                &format!("note {i}: {}", "the quick brown fox ".repeat(40)),
            ],
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
    }
    let path = state.path().join("memory.sqlite3");
    let mut bytes = std::fs::read(&path).unwrap();
    assert!(bytes.len() > 16_384, "{}", bytes.len());
    for b in &mut bytes[4096..12_288] {
        *b = 0x55;
    }
    std::fs::write(&path, &bytes).unwrap();
    let before = sha(&path);
    let r = panda_in(state.path(), &[], &["memory", "stats"]);
    assert_eq!(r.code, 73, "{}", r.stderr);
    assert!(r.stderr.contains("damaged"), "{}", r.stderr);
    assert_eq!(sha(&path), before);
}

#[test]
fn bad_input_from_the_cli_gets_clear_outcomes() {
    let state = tempfile::tempdir().unwrap();
    for text in ["", "   \n\t "] {
        let r = panda_in(state.path(), &[], &["memory", "add", text]);
        assert_eq!(r.code, 65, "{}", r.stderr);
        assert!(r.stderr.contains("nothing to remember"), "{}", r.stderr);
    }
    // Invalid UTF-8 as an argument and on stdin.
    use std::os::unix::ffi::OsStrExt;
    let out = common::command()
        .args(["memory", "add"])
        .arg(std::ffi::OsStr::from_bytes(b"caf\xe9 au lait"))
        .env("PANDA_STATE__DIR", state.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(65), "{err}");
    assert!(
        err.contains("not valid UTF-8") && err.contains("offset 3"),
        "{err}"
    );
    let stdin_add = |bytes: Vec<u8>, extra: &[(&str, &str)]| {
        let mut child = common::command()
            .args(["memory", "add", "-"])
            .env("PANDA_STATE__DIR", state.path())
            .env("RUST_LOG", "warn")
            .envs(extra.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let w = std::thread::spawn(move || {
            let _ = stdin.write_all(&bytes);
        });
        let out = child.wait_with_output().unwrap();
        w.join().unwrap();
        common::Run::from_output(out)
    };
    let r = stdin_add(b"ok \xff\xfe".to_vec(), &[]);
    assert_eq!(r.code, 65, "{}", r.stderr);
    assert!(r.stderr.contains("not valid UTF-8"), "{}", r.stderr);

    // One megabyte: stored whole, embedded from its start with a warning.
    let mut big = String::from("Grandpa's recipe for plum dumplings. ");
    while big.len() < 1 << 20 {
        big.push_str("Knead the dough gently and let it rest before shaping. ");
    }
    let t = Instant::now();
    let r = stdin_add(big.clone().into_bytes(), &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    eprintln!("1 MB text stored in {:?}", t.elapsed());
    assert!(
        r.stderr.contains("longer than the embedding model reads"),
        "{}",
        r.stderr
    );
    let rows = export(state.path());
    assert!(rows.iter().any(|r| r["text"] == big.trim()), "stored whole");
    let r = panda_in(
        state.path(),
        &[],
        &["memory", "search", "plum dumplings recipe", "-k", "1"],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("plum dumplings"), "{}", r.stdout);

    // Over the configured limit: refused, not cut.
    let r = stdin_add(
        big.into_bytes(),
        &[("PANDA_MEMORY__MAX_TEXT_BYTES", "100000")],
    );
    assert_eq!(r.code, 65, "{}", r.stderr);
    assert!(r.stderr.contains("max_text_bytes"), "{}", r.stderr);
    // An empty query prints nothing; an unknown kind is a usage error.
    let r = panda_in(
        state.path(),
        &[],
        &["memory", "search", "x", "--kind", "dream"],
    );
    assert_eq!(r.code, 64, "{}", r.stderr);
}

use crate::common::answers;

#[tokio::test(flavor = "multi_thread")]
async fn remember_recall_and_forget_by_voice_and_memories_reach_the_prompt() {
    let bodies = Arc::new(Mutex::new(Vec::<String>::new()));
    let b2 = bodies.clone();
    let server = serve(Arc::new(move |r: &Request| {
        b2.lock()
            .unwrap()
            .push(String::from_utf8_lossy(&r.body).to_string());
        Reply::Stream {
            content_type: "text/event-stream",
            pieces: openai_stream(&["It is locker ", "314."], Duration::from_millis(5)),
            die: false,
        }
    }))
    .await
    .unwrap();
    let url = server.url();
    let state = tempfile::tempdir().unwrap();
    let st = state.path().to_path_buf();
    let run = move |args: Vec<&'static str>| {
        let st = st.clone();
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            let mut a = vec!["ask", "--no-speak", "--json"];
            a.extend(args);
            panda_in(
                &st,
                &[
                    ("PANDA_LLM__URL", url.as_str()),
                    ("PANDA_LLM__BACKEND", "openai"),
                ],
                &a,
            )
        })
    };
    let r = run(vec![
        "Remember that my locker number is 314.",
        "Hey Panda, what do you remember about my locker?",
        "Which locker is mine at the gym?",
    ])
    .await
    .unwrap();
    assert_eq!(r.code, 0, "{}", r.stderr);
    let a = answers(&r);
    assert_eq!(a[0], "Okay, I'll remember that your locker number is 314.");
    assert_eq!(a[1], "You told me that your locker number is 314.");
    // The open question went to the LLM with the fact in its system prompt.
    let body = bodies.lock().unwrap().last().cloned().unwrap_or_default();
    assert!(
        body.contains("The user told you: my locker number is 314")
            || body.contains("The user told you: My locker number is 314"),
        "{body}"
    );
    // A new process still knows it; forgetting names it first, then deletes it.
    let r = run(vec![
        "Do you remember my locker number?",
        "Please forget my locker number.",
        "What do you remember about my locker?",
    ])
    .await
    .unwrap();
    assert_eq!(r.code, 0, "{}", r.stderr);
    let a = answers(&r);
    assert!(a[0].contains("314"), "{a:?}");
    assert_eq!(a[1], "Okay, I'll forget that your locker number is 314.");
    assert!(a[2].starts_with("I don't remember anything about"), "{a:?}");
    let facts: Vec<_> = export(state.path())
        .into_iter()
        .filter(|r| r["kind"] == "fact")
        .collect();
    assert!(facts.is_empty(), "{facts:?}");
    // Each exchange was kept as a turn memory, with the answer as heard.
    let turns = export(state.path())
        .into_iter()
        .filter(|r| r["kind"] == "turn")
        .count();
    assert!(turns >= 5, "{turns}");
}

#[test]
fn forgetting_something_not_stored_deletes_nothing_and_forgotten_rows_come_back() {
    let state = tempfile::tempdir().unwrap();
    let st = state.path();
    let r = panda_in(st, &[], &["memory", "add", "my brother Bob lives in Oslo"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    // The reported case: close enough for recall, but another person and another slot.
    let r = panda_in(
        st,
        &[("PANDA_LLM__URL", "http://127.0.0.1:9")],
        &["ask", "--no-speak", "--json", "forget my sister's address"],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let a = answers(&r);
    assert!(a[0].starts_with("I don't have anything about"), "{a:?}");
    let r = panda_in(
        st,
        &[],
        &["memory", "forget", "--dry-run", "my sister's address"],
    );
    assert_ne!(r.code, 0, "dry run picked something: {}", r.stdout);
    let facts: Vec<_> = export(st)
        .into_iter()
        .filter(|m| m["kind"] == "fact")
        .collect();
    assert_eq!(facts.len(), 1, "{facts:?}");
    // A real match is forgotten, then restored by id.
    let r = panda_in(st, &[], &["memory", "forget", "where my brother Bob lives"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("Bob"), "{}", r.stdout);
    assert!(export(st).iter().all(|m| m["kind"] != "fact"));
    let listed = panda_in(st, &[], &["memory", "restore"]);
    assert!(listed.stdout.contains("Oslo"), "{}", listed.stdout);
    let id = facts[0]["id"].as_i64().unwrap().to_string();
    let r = panda_in(st, &[], &["memory", "restore", &id]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let back: Vec<_> = export(st)
        .into_iter()
        .filter(|m| m["kind"] == "fact")
        .collect();
    assert_eq!(back.len(), 1, "{back:?}");
    let r = panda_in(st, &[], &["memory", "search", "Where does Bob live?"]);
    assert!(r.stdout.contains("Oslo"), "{}", r.stdout);
}
