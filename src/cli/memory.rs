//! `panda memory add|search|forget|restore|stats|export`.
//!
//! The arguments are checked once, into a [`Job`], before the database and the embedding
//! model are opened: bad input (invalid UTF-8, an unknown kind, empty text) is reported
//! at once with exit 65/64, never after seconds of loading.

use std::io::Write;

use panda::config::Config;
use panda::exit;
use panda::memory::{Filter, Kind, Memory, MemoryError, NewMemory, StoredMemory};

use super::exit::{Exit, fail};
use super::output::{clip, parse_kind, read_stdin_utf8, utf8, when};
use super::{MemoryCmd, runtime};

/// A checked `panda memory` command.
enum Job {
    /// Text to remember: given, all of stdin, or stdin line by line.
    Add {
        text: AddText,
        kind: Kind,
        json: bool,
    },
    Search {
        query: String,
        k: usize,
        filter: Filter,
        json: bool,
    },
    Forget {
        query: Option<String>,
        ids: Vec<i64>,
        dry_run: bool,
    },
    Restore {
        ids: Vec<i64>,
    },
    Stats,
    Export,
}

enum AddText {
    Given(String),
    Stdin,
    StdinLines,
}

/// Checks the arguments, then opens memory and runs the command; memory is closed
/// (flushed) whatever the command's outcome.
pub fn run(cfg: &Config, cmd: MemoryCmd) -> Result<(), Exit> {
    let job = parse(cmd)?;
    let rt = runtime()?;
    rt.block_on(async {
        let memory = Memory::open(cfg).await?;
        let r = match job {
            Job::Add { text, kind, json } => add(&memory, text, kind, json).await,
            Job::Search {
                query,
                k,
                filter,
                json,
            } => search(&memory, &query, k, filter, json).await,
            Job::Forget {
                query,
                ids,
                dry_run,
            } => forget(&memory, query, ids, dry_run).await,
            Job::Restore { ids } => restore(&memory, ids).await,
            Job::Stats => stats(&memory).await,
            Job::Export => export(&memory).await,
        };
        memory.close().await?;
        r
    })
}

fn parse(cmd: MemoryCmd) -> Result<Job, Exit> {
    Ok(match cmd {
        MemoryCmd::Add {
            text,
            kind,
            lines,
            json,
        } => {
            let kind = parse_kind(&kind)?;
            let text = if text == "-" {
                if lines {
                    AddText::StdinLines
                } else {
                    AddText::Stdin
                }
            } else {
                let t = utf8("text", text)?;
                if t.trim().is_empty() {
                    return Err(MemoryError::Empty.into());
                }
                AddText::Given(t)
            };
            Job::Add { text, kind, json }
        }
        MemoryCmd::Search {
            query,
            k,
            kind,
            days,
            json,
        } => Job::Search {
            query: utf8("query", query)?,
            k,
            filter: Filter {
                kinds: kind
                    .iter()
                    .map(|k| parse_kind(k))
                    .collect::<Result<_, _>>()?,
                since_ms: days.map(|d| panda::memory::now_ms() - (d * 86_400_000.0) as i64),
                until_ms: None,
            },
            json,
        },
        MemoryCmd::Forget { query, id, dry_run } => Job::Forget {
            query: query.map(|q| utf8("query", q)).transpose()?,
            ids: id,
            dry_run,
        },
        MemoryCmd::Restore { id } => Job::Restore { ids: id },
        MemoryCmd::Stats => Job::Stats,
        MemoryCmd::Export => Job::Export,
    })
}

async fn add(memory: &Memory, text: AddText, kind: Kind, json: bool) -> Result<(), Exit> {
    let mut out = std::io::stdout().lock();
    let mut report = |id: i64, text: &str| {
        if json {
            let _ = writeln!(
                out,
                "{}",
                serde_json::json!({"id": id, "kind": kind.as_str(), "bytes": text.len()})
            );
        } else {
            let _ = writeln!(
                out,
                "remembered #{id} ({}): {}",
                kind.as_str(),
                clip(text, 70)
            );
        }
        let _ = out.flush();
    };
    let text = match text {
        AddText::Given(t) => t,
        AddText::Stdin => read_stdin_utf8()?,
        AddText::StdinLines => {
            use std::io::BufRead;
            use std::os::unix::ffi::OsStringExt;
            for line in std::io::stdin().lock().split(b'\n') {
                let line = line.map_err(|e| fail(exit::NO_INPUT, format!("reading stdin: {e}")))?;
                let line = utf8("line on stdin", std::ffi::OsString::from_vec(line))?;
                if line.trim().is_empty() {
                    continue;
                }
                let id = memory.add(NewMemory::new(kind, line.clone())).await?;
                report(id, &line);
            }
            return Ok(());
        }
    };
    let id = memory.add(NewMemory::new(kind, text.clone())).await?;
    report(id, &text);
    Ok(())
}

async fn search(
    memory: &Memory,
    query: &str,
    k: usize,
    filter: Filter,
    json: bool,
) -> Result<(), Exit> {
    let mut out = std::io::stdout().lock();
    for h in memory.search(query, k, filter).await? {
        if json {
            let _ = writeln!(out, "{}", serde_json::to_string(&h).unwrap_or_default());
        } else {
            let _ = writeln!(
                out,
                "{:.2}  #{:<5} {:<8} {}  {}",
                h.similarity,
                h.memory.id,
                h.memory.kind.as_str(),
                when(h.memory.created_ms),
                clip(&h.memory.text, 200)
            );
        }
    }
    Ok(())
}

/// One line per memory: `verb #id (kind): text`.
fn list(verb: &str, memories: &[StoredMemory]) {
    let mut out = std::io::stdout().lock();
    for m in memories {
        let _ = writeln!(
            out,
            "{verb}#{} ({}): {}",
            m.id,
            m.kind.as_str(),
            clip(&m.text, 200)
        );
    }
}

/// The ids asked for that `done` does not hold, as `#1, #2`.
fn missing(asked: &[i64], done: &[StoredMemory]) -> Option<String> {
    let ids: Vec<String> = asked
        .iter()
        .filter(|i| !done.iter().any(|m| m.id == **i))
        .map(|i| format!("#{i}"))
        .collect();
    (!ids.is_empty()).then(|| ids.join(", "))
}

async fn forget(
    memory: &Memory,
    query: Option<String>,
    ids: Vec<i64>,
    dry_run: bool,
) -> Result<(), Exit> {
    let ids = match query {
        Some(q) => {
            // The same strong match, over the same kinds, that the voice skill needs
            // before deleting; past turns are forgotten by --id.
            let forgettable = Filter {
                kinds: vec![Kind::Fact, Kind::Identity, Kind::Summary],
                ..Default::default()
            };
            match memory.match_to_forget(&q, forgettable).await? {
                Some(h) => vec![h.memory.id],
                None => {
                    return Err(fail(
                        exit::DATA_ERR,
                        format!(
                            "nothing remembered matches {q:?} closely enough; `panda memory search` shows what is there"
                        ),
                    ));
                }
            }
        }
        None => ids,
    };
    if dry_run {
        list("would forget ", &memory.store().get(ids).await?);
        return Ok(());
    }
    let gone = memory.forget(ids.clone()).await?;
    list("forgot ", &gone);
    if let Some(m) = missing(&ids, &gone) {
        return Err(fail(exit::DATA_ERR, format!("no memory {m}")));
    }
    Ok(())
}

async fn restore(memory: &Memory, ids: Vec<i64>) -> Result<(), Exit> {
    if ids.is_empty() {
        list("", &memory.forgotten(100).await?);
        return Ok(());
    }
    let back = memory.restore(ids.clone()).await?;
    list("restored ", &back);
    if let Some(m) = missing(&ids, &back) {
        return Err(fail(
            exit::DATA_ERR,
            format!("no forgotten memory {m} (forgotten memories are kept 30 days)"),
        ));
    }
    Ok(())
}

async fn stats(memory: &Memory) -> Result<(), Exit> {
    let s = memory.stats().await?;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "database   {}", s.path.display());
    let _ = writeln!(out, "schema     v{}", s.schema_version);
    let _ = writeln!(out, "memories   {}", s.total);
    for (k, n) in &s.by_kind {
        let _ = writeln!(out, "  {:<9}{n}", k.as_str());
    }
    if let (Some(a), Some(b)) = (s.oldest_ms, s.newest_ms) {
        let _ = writeln!(out, "oldest     {}", when(a));
        let _ = writeln!(out, "newest     {}", when(b));
    }
    let _ = writeln!(out, "file       {:.1} MB", s.file_bytes as f64 / 1e6);
    let _ = writeln!(
        out,
        "index      {:.1} MB in memory",
        s.index_bytes as f64 / 1e6
    );
    let _ = writeln!(out, "opened in  {} ms", s.open_ms);
    Ok(())
}

async fn export(memory: &Memory) -> Result<(), Exit> {
    let (tx, mut rx) = tokio::sync::mpsc::channel(panda::memory::store::EXPORT_EDGE);
    let store = memory.store().clone();
    let job = tokio::spawn(async move { store.export(tx).await });
    let mut out = std::io::stdout().lock();
    while let Some(m) = rx.recv().await {
        let _ = writeln!(out, "{}", serde_json::to_string(&m).unwrap_or_default());
    }
    job.await
        .map_err(|e| Exit::with_code(exit::SOFTWARE, e))??;
    Ok(())
}
