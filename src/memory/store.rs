//! The SQLite store on its owner thread `panda-memory` (mini-redis style: a cloneable
//! [`Store`] handle sends commands over [`STORE_EDGE`]; each carries a oneshot reply).
//!
//! - **Opening never overwrites.** A file that is not SQLite, that SQLite finds damaged
//!   (`quick_check`), that belongs to another program (`application_id`), or that a newer
//!   Panda wrote (`user_version`) is refused with a message naming the file and how to
//!   recover; nothing is written to it.
//! - **Durable commits.** WAL with `synchronous = FULL`: a write is reported committed only
//!   after its transaction is on disk, so a crash or power cut never loses what Panda said
//!   it remembered.
//! - **Group commit.** Inserts waiting in the channel are committed together in one
//!   transaction (the seed committed every row on its own: faults #5 and #14).
//! - **Migrations** run in order from `PRAGMA user_version`, each in its own transaction.
//! - **Identity seeding** is recorded in `seeds` (sha256 of the text): a fact is seeded once
//!   in the life of the database, not re-checked against the model on every start.
//! - **Search** is hybrid: the [`VectorIndex`] (loaded at open, updated after each commit)
//!   gives the nearest meanings, FTS5 (`porter unicode61`, bm25) the keyword matches, and
//!   reciprocal-rank fusion merges them — names and numbers an embedding blurs still match.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

use super::index::VectorIndex;
use super::{DIM, Filter, Kind, MemoryError, NewMemory, Vector, now_ms};
use crate::config::MemoryConfig;

/// Commands, callers → `panda-memory`. A control edge: when full, callers wait.
pub const STORE_EDGE: usize = 64;

/// Rows streamed by `export`, store → caller. When full the store waits for the reader
/// (export is an owner's command, not on a turn's path).
pub const EXPORT_EDGE: usize = 256;

/// "PAND": marks the file as Panda's memory (`PRAGMA application_id`).
const APP_ID: i64 = 0x5041_4E44;

/// Most insert commands folded into one transaction.
const GROUP_MAX: usize = 64;

/// Reciprocal-rank fusion constant (Cormack et al.; 60 is the usual choice).
const RRF_K: f64 = 60.0;

/// How many of each list (vector, keyword) are fused.
const FUSE_DEPTH: usize = 20;

/// A keyword in more than this share of memories carries no topic (like a stop word) and
/// is left out of the keyword search.
const COMMON_SHARE: f64 = 0.05;

/// bm25 scores every matching row before the LIMIT applies; above this many matches the
/// keyword list is the newest matches instead (cheap: FTS5 walks its doclist by rowid), so
/// a search never costs more than a bounded amount of ranking.
const RANK_BUDGET: u64 = 3000;

/// Schema migrations; migration `i` brings `user_version` from `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: memories, their keyword index kept in sync by triggers, seeds, settings.
    "CREATE TABLE memories (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL CHECK (kind IN ('identity', 'fact', 'turn', 'summary')),
        text TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        meta TEXT NOT NULL DEFAULT '{}',
        embedding BLOB NOT NULL
    );
    CREATE INDEX memories_kind_created ON memories (kind, created_ms);
    CREATE VIRTUAL TABLE memories_fts USING fts5 (
        text, content = 'memories', content_rowid = 'id',
        tokenize = 'porter unicode61 remove_diacritics 2'
    );
    CREATE TRIGGER memories_ai AFTER INSERT ON memories BEGIN
        INSERT INTO memories_fts (rowid, text) VALUES (new.id, new.text);
    END;
    CREATE TRIGGER memories_ad AFTER DELETE ON memories BEGIN
        INSERT INTO memories_fts (memories_fts, rowid, text) VALUES ('delete', old.id, old.text);
    END;
    CREATE TABLE seeds (key TEXT PRIMARY KEY, seeded_ms INTEGER NOT NULL) WITHOUT ROWID;
    CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;",
    // 2: forgotten memories are kept for a while (restorable), outside every search.
    "CREATE TABLE forgotten (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL,
        text TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        meta TEXT NOT NULL DEFAULT '{}',
        embedding BLOB NOT NULL,
        forgotten_ms INTEGER NOT NULL
    );
    CREATE INDEX forgotten_at ON forgotten (forgotten_ms);",
];

/// How long a forgotten memory can be restored before it is purged for good.
pub const KEEP_FORGOTTEN_MS: i64 = 30 * 24 * 3600 * 1000;

/// The schema version this Panda writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Words that carry no topic; left out of keyword queries.
const STOP_WORDS: &[&str] = &[
    "a", "about", "an", "and", "are", "as", "at", "be", "can", "could", "did", "do", "does", "for",
    "from", "has", "have", "how", "i", "in", "is", "it", "its", "me", "my", "of", "on", "or",
    "our", "please", "remember", "should", "so", "tell", "that", "the", "their", "them", "there",
    "they", "this", "to", "was", "we", "were", "what", "when", "where", "which", "who", "whom",
    "why", "will", "with", "would", "you", "your", "what's", "where's", "who's", "i'm", "i've",
    "don't", "know", "said", "told",
];

/// A stored memory.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredMemory {
    /// Row id.
    pub id: i64,
    /// Kind.
    pub kind: Kind,
    /// The text, whole.
    pub text: String,
    /// Creation time, Unix ms.
    pub created_ms: i64,
    /// Metadata (JSON object).
    pub meta: serde_json::Value,
}

/// One search result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Hit {
    /// The memory.
    #[serde(flatten)]
    pub memory: StoredMemory,
    /// Cosine similarity to the query.
    pub similarity: f32,
    /// Fused score (reciprocal-rank fusion).
    pub score: f64,
    /// Rank in the vector list (0 = nearest), if there.
    pub vector_rank: Option<usize>,
    /// Rank in the keyword list (0 = best bm25), if there.
    pub keyword_rank: Option<usize>,
}

/// Counts and sizes.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    /// The database file.
    pub path: PathBuf,
    /// Memories per kind.
    pub by_kind: Vec<(Kind, u64)>,
    /// All memories.
    pub total: u64,
    /// Oldest and newest creation time.
    pub oldest_ms: Option<i64>,
    /// Newest creation time.
    pub newest_ms: Option<i64>,
    /// Database size (pages × page size) plus the WAL file.
    pub file_bytes: u64,
    /// In-memory vector index.
    pub index_bytes: u64,
    /// Schema version.
    pub schema_version: i64,
    /// Time the database took to open, check and load, ms.
    pub open_ms: u64,
}

/// How an insert command commits (the bench compares them; Panda always uses `Batched`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// One transaction for the command (and any others waiting: group commit).
    Batched,
    /// One transaction per row, as the seed did.
    PerRow,
}

type Reply<T> = oneshot::Sender<Result<T, MemoryError>>;
type Embedded = Vec<(NewMemory, Vec<f32>)>;

enum Cmd {
    Insert {
        items: Embedded,
        commit: Commit,
        reply: Reply<Vec<i64>>,
    },
    Unseeded {
        texts: Vec<String>,
        reply: Reply<Vec<String>>,
    },
    Seed {
        items: Embedded,
        reply: Reply<Vec<i64>>,
    },
    Search {
        vector: Vector,
        text: String,
        k: usize,
        filter: Filter,
        reply: Reply<Vec<Hit>>,
    },
    Delete {
        ids: Vec<i64>,
        reply: Reply<Vec<StoredMemory>>,
    },
    Restore {
        ids: Vec<i64>,
        reply: Reply<Vec<StoredMemory>>,
    },
    Forgotten {
        n: usize,
        reply: Reply<Vec<StoredMemory>>,
    },
    Get {
        ids: Vec<i64>,
        reply: Reply<Vec<StoredMemory>>,
    },
    Recent {
        filter: Filter,
        n: usize,
        reply: Reply<Vec<StoredMemory>>,
    },
    Stats {
        reply: Reply<Stats>,
    },
    Export {
        rows: mpsc::Sender<StoredMemory>,
        reply: Reply<usize>,
    },
    Close {
        reply: Reply<()>,
    },
}

/// Handle to the store thread (cheap to clone).
#[derive(Clone)]
pub struct Store {
    tx: mpsc::Sender<Cmd>,
    path: PathBuf,
}

impl Store {
    /// Opens (or creates) the database at `path` on a new `panda-memory` thread, checks it,
    /// migrates it and loads the vector index; blocks until that is done.
    pub fn open(path: &Path, cfg: &MemoryConfig) -> Result<Store, MemoryError> {
        let (tx, rx) = mpsc::channel(STORE_EDGE);
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        let p = path.to_path_buf();
        let candidates = cfg.candidates;
        std::thread::Builder::new()
            .name("panda-memory".into())
            .spawn(move || {
                let t0 = Instant::now();
                match Db::open(&p, candidates) {
                    Ok(mut db) => {
                        db.open_ms = t0.elapsed().as_millis() as u64;
                        tracing::info!(
                            path = %p.display(),
                            memories = db.index.len(),
                            open_ms = db.open_ms,
                            "memory ready"
                        );
                        let _ = ready_tx.send(Ok(()));
                        db.serve(rx);
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })
            .map_err(|e| MemoryError::Sqlite {
                path: path.to_path_buf(),
                problem: format!("cannot start the memory thread: {e}"),
            })?;
        ready_rx.recv().map_err(|_| MemoryError::Stopped)??;
        Ok(Store {
            tx,
            path: path.to_path_buf(),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Cmd) -> Result<T, MemoryError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| MemoryError::Stopped)?;
        rx.await.map_err(|_| MemoryError::Stopped)?
    }

    /// Inserts embedded memories in one transaction; ids in order, once committed.
    pub async fn insert(&self, items: Embedded) -> Result<Vec<i64>, MemoryError> {
        self.insert_with(items, Commit::Batched).await
    }

    /// [`Store::insert`] with an explicit commit mode (the bench).
    pub async fn insert_with(
        &self,
        items: Embedded,
        commit: Commit,
    ) -> Result<Vec<i64>, MemoryError> {
        for (_, v) in &items {
            if v.len() != DIM {
                return Err(MemoryError::Embed(format!(
                    "an embedding has {} values, not {DIM}",
                    v.len()
                )));
            }
        }
        self.call(|reply| Cmd::Insert {
            items,
            commit,
            reply,
        })
        .await
    }

    /// The texts among `texts` never seeded before.
    pub async fn unseeded(&self, texts: Vec<String>) -> Result<Vec<String>, MemoryError> {
        self.call(|reply| Cmd::Unseeded { texts, reply }).await
    }

    /// Stores identity facts and records them as seeded, in one transaction.
    pub async fn seed(&self, items: Embedded) -> Result<Vec<i64>, MemoryError> {
        self.call(|reply| Cmd::Seed { items, reply }).await
    }

    /// Hybrid search (see the module doc); best first.
    pub async fn search(
        &self,
        vector: Vector,
        text: String,
        k: usize,
        filter: Filter,
    ) -> Result<Vec<Hit>, MemoryError> {
        self.call(|reply| Cmd::Search {
            vector,
            text,
            k,
            filter,
            reply,
        })
        .await
    }

    /// Forgets by id: the memories leave every search at once but are kept, restorable,
    /// for [`KEEP_FORGOTTEN_MS`]; returns the memories that existed.
    pub async fn delete(&self, ids: Vec<i64>) -> Result<Vec<StoredMemory>, MemoryError> {
        self.call(|reply| Cmd::Delete { ids, reply }).await
    }

    /// Brings forgotten memories back (same ids); returns those restored.
    pub async fn restore(&self, ids: Vec<i64>) -> Result<Vec<StoredMemory>, MemoryError> {
        self.call(|reply| Cmd::Restore { ids, reply }).await
    }

    /// Forgotten memories still restorable, most recently forgotten first.
    pub async fn forgotten(&self, n: usize) -> Result<Vec<StoredMemory>, MemoryError> {
        self.call(|reply| Cmd::Forgotten { n, reply }).await
    }

    /// The memories with these ids (those that exist, in the order given).
    pub async fn get(&self, ids: Vec<i64>) -> Result<Vec<StoredMemory>, MemoryError> {
        self.call(|reply| Cmd::Get { ids, reply }).await
    }

    /// Newest first.
    pub async fn recent(&self, filter: Filter, n: usize) -> Result<Vec<StoredMemory>, MemoryError> {
        self.call(|reply| Cmd::Recent { filter, n, reply }).await
    }

    /// Counts and sizes.
    pub async fn stats(&self) -> Result<Stats, MemoryError> {
        self.call(|reply| Cmd::Stats { reply }).await
    }

    /// Streams every memory, oldest id first, into `rows`; returns how many.
    pub async fn export(&self, rows: mpsc::Sender<StoredMemory>) -> Result<usize, MemoryError> {
        self.call(|reply| Cmd::Export { rows, reply }).await
    }

    /// Checkpoints the WAL into the database file and stops the thread. Other clones
    /// get [`MemoryError::Stopped`] afterwards.
    pub async fn close(&self) -> Result<(), MemoryError> {
        self.call(|reply| Cmd::Close { reply }).await
    }
}

/// The connection and index, owned by the store thread.
struct Db {
    conn: Connection,
    path: PathBuf,
    index: VectorIndex,
    candidates: usize,
    open_ms: u64,
    /// Document frequency per keyword (FTS5 matches), refreshed as the store grows.
    df: HashMap<String, u64>,
    /// Store size when `df` was last cleared.
    df_rows: usize,
    /// `PRAGMA data_version` when the index was last in step with the file.
    data_version: i64,
}

fn is_corruption(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
    )
}

fn embedding_blob(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn blob_embedding(b: &[u8]) -> Option<Vec<f32>> {
    (b.len() == DIM * 4).then(|| {
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    })
}

fn seed_key(text: &str) -> String {
    hex::encode(Sha256::digest(text.trim().as_bytes()))
}

/// The topic words of `text` for a keyword search: lower-cased, possessive `'s` dropped,
/// stop words and single letters left out, at most 16, in order.
pub fn keyword_terms(text: &str) -> Vec<String> {
    let mut terms: Vec<String> = Vec::new();
    for w in text
        .split(|c: char| !c.is_alphanumeric() && c != '\'')
        .map(|w| w.trim_matches('\'').to_lowercase())
    {
        let w = w.strip_suffix("'s").unwrap_or(&w).to_string();
        if w.is_empty() || STOP_WORDS.contains(&w.as_str()) || terms.contains(&w) {
            continue;
        }
        if w.chars().count() < 2 && !w.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        terms.push(w);
        if terms.len() == 16 {
            break;
        }
    }
    terms
}

/// An FTS5 query matching any of `terms` (each quoted, so no FTS syntax gets through).
pub fn any_of(terms: &[String]) -> String {
    terms
        .iter()
        .map(|t| format!("\"{}\"", t.replace('"', "")))
        .collect::<Vec<_>>()
        .join(" OR ")
}

/// Reciprocal-rank fusion of ranked id lists; best first.
pub fn fuse(lists: &[&[i64]]) -> Vec<(i64, f64)> {
    let mut score: HashMap<i64, f64> = HashMap::new();
    for list in lists {
        for (rank, id) in list.iter().enumerate() {
            *score.entry(*id).or_default() += 1.0 / (RRF_K + rank as f64 + 1.0);
        }
    }
    let mut v: Vec<(i64, f64)> = score.into_iter().collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1).then(b.0.cmp(&a.0)));
    v
}

impl Db {
    fn sqlite(&self, e: rusqlite::Error) -> MemoryError {
        if is_corruption(&e) {
            MemoryError::Corrupt {
                path: self.path.clone(),
                problem: e.to_string(),
            }
        } else {
            MemoryError::Sqlite {
                path: self.path.clone(),
                problem: e.to_string(),
            }
        }
    }

    fn open(path: &Path, candidates: usize) -> Result<Db, MemoryError> {
        let corrupt = |problem: String| MemoryError::Corrupt {
            path: path.to_path_buf(),
            problem,
        };
        let existing = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0) > 0;
        if existing {
            // Check the header before SQLite touches the file at all.
            let mut head = [0u8; 16];
            let n = std::fs::File::open(path)
                .and_then(|mut f| std::io::Read::read(&mut f, &mut head))
                .map_err(|e| corrupt(e.to_string()))?;
            if n < 16 || &head != b"SQLite format 3\0" {
                return Err(corrupt(
                    "the file does not start with the SQLite header".into(),
                ));
            }
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| MemoryError::Sqlite {
            path: path.to_path_buf(),
            problem: e.to_string(),
        })?;
        let mut db = Db {
            conn,
            path: path.to_path_buf(),
            index: VectorIndex::new(),
            candidates: candidates.max(1),
            open_ms: 0,
            df: HashMap::new(),
            df_rows: 0,
            data_version: 0,
        };
        let _ = db.conn.busy_timeout(std::time::Duration::from_secs(5));
        let q = |db: &Db, sql: &str| -> Result<i64, MemoryError> {
            db.conn
                .query_row(sql, [], |r| r.get(0))
                .map_err(|e| db.sqlite(e))
        };
        let app_id = q(&db, "PRAGMA application_id")?;
        let version = q(&db, "PRAGMA user_version")?;
        let tables: Vec<String> = {
            let mut st = db
                .conn
                .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
                .map_err(|e| db.sqlite(e))?;
            st.query_map([], |r| r.get(0))
                .and_then(|rows| rows.collect())
                .map_err(|e| db.sqlite(e))?
        };
        if app_id != APP_ID && !(app_id == 0 && tables.is_empty()) {
            let shown: Vec<&str> = tables.iter().take(5).map(String::as_str).collect();
            return Err(MemoryError::Foreign {
                path: path.to_path_buf(),
                problem: format!(
                    "application_id {app_id:#x}, tables: {}",
                    if shown.is_empty() {
                        "none".into()
                    } else {
                        shown.join(", ")
                    }
                ),
            });
        }
        if version > SCHEMA_VERSION {
            return Err(MemoryError::TooNew {
                path: path.to_path_buf(),
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        if existing {
            let check: String = db
                .conn
                .query_row("PRAGMA quick_check(1)", [], |r| r.get(0))
                .map_err(|e| db.sqlite(e))?;
            if check != "ok" {
                return Err(corrupt(format!("quick_check: {check}")));
            }
        }
        // Only now, with the file known to be ours (or new), is anything written.
        db.conn
            .pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| db.sqlite(e))?;
        db.conn
            .pragma_update(None, "synchronous", "FULL")
            .map_err(|e| db.sqlite(e))?;
        db.migrate(version)?;
        db.purge_forgotten()?;
        db.load_index()?;
        db.data_version = db.data_version();
        Ok(db)
    }

    /// `PRAGMA data_version`: changes when another connection commits.
    fn data_version(&self) -> i64 {
        self.conn
            .query_row("PRAGMA data_version", [], |r| r.get(0))
            .unwrap_or(0)
    }

    /// Reloads the vector index when another process changed the database, so facts
    /// added or forgotten by `panda memory` reach a running daemon at its next search.
    fn sync_foreign_writes(&mut self) {
        let v = self.data_version();
        if v == self.data_version {
            return;
        }
        self.data_version = v;
        match self.load_index() {
            Ok(()) => {
                self.df.clear();
                self.df_rows = self.index.len();
                tracing::info!(
                    memories = self.index.len(),
                    "memory: another process changed the database; index reloaded"
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, "memory: reloading after another process's change failed")
            }
        }
    }

    /// Purges forgotten memories older than [`KEEP_FORGOTTEN_MS`].
    fn purge_forgotten(&mut self) -> Result<(), MemoryError> {
        let cutoff = super::now_ms() - KEEP_FORGOTTEN_MS;
        let n = self
            .conn
            .execute("DELETE FROM forgotten WHERE forgotten_ms < ?1", [cutoff])
            .map_err(|e| self.sqlite(e))?;
        if n > 0 {
            tracing::info!(
                purged = n,
                "memory: forgotten memories past their keeping time purged"
            );
        }
        Ok(())
    }

    fn migrate(&mut self, from: i64) -> Result<(), MemoryError> {
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(from as usize) {
            let path = self.path.clone();
            let err = |e: rusqlite::Error| MemoryError::Sqlite {
                path: path.clone(),
                problem: format!("migration {}: {e}", i + 1),
            };
            let tx = self.conn.transaction().map_err(err)?;
            tx.execute_batch(sql).map_err(err)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)
                .map_err(err)?;
            tx.pragma_update(None, "application_id", APP_ID)
                .map_err(err)?;
            tx.commit().map_err(err)?;
            tracing::info!(version = i + 1, "memory schema migrated");
        }
        Ok(())
    }

    fn load_index(&mut self) -> Result<(), MemoryError> {
        let mut st = self
            .conn
            .prepare("SELECT id, kind, created_ms, embedding FROM memories")
            .map_err(|e| self.sqlite(e))?;
        let mut rows = st.query([]).map_err(|e| self.sqlite(e))?;
        let mut skipped = 0usize;
        let mut index = VectorIndex::new();
        while let Some(r) = rows.next().map_err(|e| self.sqlite(e))? {
            let id: i64 = r.get(0).map_err(|e| self.sqlite(e))?;
            let kind: String = r.get(1).map_err(|e| self.sqlite(e))?;
            let created: i64 = r.get(2).map_err(|e| self.sqlite(e))?;
            let blob = r.get_ref(3).map_err(|e| self.sqlite(e))?;
            match (
                Kind::parse(&kind),
                blob.as_blob().ok().and_then(blob_embedding),
            ) {
                (Some(k), Some(v)) => index.insert(id, k, created, &v),
                _ => skipped += 1,
            }
        }
        drop(rows);
        drop(st);
        if skipped > 0 {
            tracing::warn!(
                skipped,
                "memories with an unreadable kind or embedding: kept, found by keyword only"
            );
        }
        self.index = index;
        Ok(())
    }

    fn serve(mut self, mut rx: mpsc::Receiver<Cmd>) {
        let mut held: Option<Cmd> = None;
        loop {
            let cmd = match held.take() {
                Some(c) => c,
                None => match rx.blocking_recv() {
                    Some(c) => c,
                    None => break,
                },
            };
            // Another process (`panda memory add` beside the daemon) may have written:
            // SQLite's data_version changes only for other connections' commits.
            self.sync_foreign_writes();
            match cmd {
                Cmd::Insert {
                    items,
                    commit: Commit::Batched,
                    reply,
                } => {
                    // Group commit: fold every batched insert already waiting into this
                    // transaction; anything else waits its turn.
                    let mut group = vec![(items, reply)];
                    while group.len() < GROUP_MAX {
                        match rx.try_recv() {
                            Ok(Cmd::Insert {
                                items,
                                commit: Commit::Batched,
                                reply,
                            }) => group.push((items, reply)),
                            Ok(other) => {
                                held = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.insert_group(group);
                }
                Cmd::Insert {
                    items,
                    commit: Commit::PerRow,
                    reply,
                } => {
                    let mut ids = Vec::with_capacity(items.len());
                    let mut result = Ok(());
                    for item in items {
                        match self.insert_tx(vec![item], false) {
                            Ok(mut id) => ids.append(&mut id),
                            Err(e) => {
                                result = Err(e);
                                break;
                            }
                        }
                    }
                    let _ = reply.send(result.map(|_| ids));
                }
                Cmd::Unseeded { texts, reply } => {
                    let _ = reply.send(self.unseeded(texts));
                }
                Cmd::Seed { items, reply } => {
                    let _ = reply.send(self.insert_tx(items, true));
                }
                Cmd::Search {
                    vector,
                    text,
                    k,
                    filter,
                    reply,
                } => {
                    let _ = reply.send(self.search(&vector, &text, k, &filter));
                }
                Cmd::Delete { ids, reply } => {
                    let _ = reply.send(self.delete(&ids));
                }
                Cmd::Restore { ids, reply } => {
                    let _ = reply.send(self.restore(&ids));
                }
                Cmd::Forgotten { n, reply } => {
                    let _ = reply.send(self.forgotten(n));
                }
                Cmd::Get { ids, reply } => {
                    let r = ids
                        .iter()
                        .map(|&id| self.get(id))
                        .filter_map(Result::transpose)
                        .collect();
                    let _ = reply.send(r);
                }
                Cmd::Recent { filter, n, reply } => {
                    let _ = reply.send(self.recent(&filter, n));
                }
                Cmd::Stats { reply } => {
                    let _ = reply.send(self.stats());
                }
                Cmd::Export { rows, reply } => {
                    let _ = reply.send(self.export(&rows));
                }
                Cmd::Close { reply } => {
                    let _ = reply.send(self.checkpoint());
                    return;
                }
            }
        }
        if let Err(e) = self.checkpoint() {
            tracing::warn!(error = %e, "memory: final checkpoint failed (the WAL is kept and replayed at the next start)");
        }
    }

    fn checkpoint(&self) -> Result<(), MemoryError> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .map_err(|e| self.sqlite(e))
    }

    fn insert_group(&mut self, group: Vec<(Embedded, Reply<Vec<i64>>)>) {
        let sizes: Vec<usize> = group.iter().map(|(i, _)| i.len()).collect();
        let (all, replies): (Vec<Embedded>, Vec<Reply<Vec<i64>>>) = group.into_iter().unzip();
        match self.insert_tx(all.into_iter().flatten().collect(), false) {
            Ok(ids) => {
                let mut it = ids.into_iter();
                for (n, reply) in sizes.into_iter().zip(replies) {
                    let _ = reply.send(Ok(it.by_ref().take(n).collect()));
                }
            }
            Err(e) => {
                let msg = e.to_string();
                for reply in replies {
                    let _ = reply.send(Err(MemoryError::Sqlite {
                        path: self.path.clone(),
                        problem: msg.clone(),
                    }));
                }
            }
        }
    }

    /// One transaction; the index is updated only after the commit succeeded.
    fn insert_tx(&mut self, items: Embedded, seed: bool) -> Result<Vec<i64>, MemoryError> {
        let now = now_ms();
        let path = self.path.clone();
        let err = |e: rusqlite::Error| {
            if is_corruption(&e) {
                MemoryError::Corrupt {
                    path: path.clone(),
                    problem: e.to_string(),
                }
            } else {
                MemoryError::Sqlite {
                    path: path.clone(),
                    problem: e.to_string(),
                }
            }
        };
        let tx = self.conn.transaction().map_err(err)?;
        let mut ids = Vec::with_capacity(items.len());
        {
            let mut st = tx
                .prepare_cached(
                    "INSERT INTO memories (kind, text, created_ms, meta, embedding) VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .map_err(err)?;
            let mut seed_st = tx
                .prepare_cached("INSERT OR IGNORE INTO seeds (key, seeded_ms) VALUES (?1, ?2)")
                .map_err(err)?;
            for (m, v) in &items {
                st.execute(params![
                    m.kind.as_str(),
                    m.text,
                    now,
                    m.meta.to_string(),
                    embedding_blob(v)
                ])
                .map_err(err)?;
                ids.push(tx.last_insert_rowid());
                if seed {
                    seed_st
                        .execute(params![seed_key(&m.text), now])
                        .map_err(err)?;
                }
            }
        }
        tx.commit().map_err(err)?;
        for (id, (m, v)) in ids.iter().zip(&items) {
            self.index.insert(*id, m.kind, now, v);
        }
        Ok(ids)
    }

    fn unseeded(&self, texts: Vec<String>) -> Result<Vec<String>, MemoryError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT 1 FROM seeds WHERE key = ?1")
            .map_err(|e| self.sqlite(e))?;
        let mut out = Vec::new();
        for t in texts {
            let seen = st
                .query_row([seed_key(&t)], |_| Ok(()))
                .optional()
                .map_err(|e| self.sqlite(e))?
                .is_some();
            if !seen && !out.contains(&t) {
                out.push(t);
            }
        }
        Ok(out)
    }

    /// How many memories contain `term` (cached; the cache is cleared when the store has
    /// grown by a tenth, so frequencies stay close without a count per search).
    fn doc_freq(&mut self, term: &str) -> Result<u64, MemoryError> {
        if self.index.len() > self.df_rows + self.df_rows / 10 + 100 {
            self.df.clear();
            self.df_rows = self.index.len();
        }
        if let Some(n) = self.df.get(term) {
            return Ok(*n);
        }
        let n: i64 = self
            .conn
            .prepare_cached("SELECT count(*) FROM memories_fts WHERE memories_fts MATCH ?1")
            .and_then(|mut st| st.query_row([any_of(&[term.to_string()])], |r| r.get(0)))
            .map_err(|e| self.sqlite(e))?;
        self.df.insert(term.to_string(), n as u64);
        Ok(n as u64)
    }

    fn keyword_ids(&mut self, text: &str, filter: &Filter) -> Result<Vec<i64>, MemoryError> {
        let common = ((self.index.len() as f64 * COMMON_SHARE) as u64).max(200);
        let mut terms = Vec::new();
        let mut matches = 0u64;
        for t in keyword_terms(text) {
            let df = self.doc_freq(&t)?;
            if df > 0 && df <= common {
                matches += df;
                terms.push(t);
            }
        }
        if terms.is_empty() {
            return Ok(Vec::new());
        }
        let sql = if matches <= RANK_BUDGET {
            "SELECT rowid FROM memories_fts WHERE memories_fts MATCH ?1 ORDER BY rank LIMIT ?2"
        } else {
            "SELECT rowid FROM memories_fts WHERE memories_fts MATCH ?1 ORDER BY rowid DESC LIMIT ?2"
        };
        // Filtered searches look further down the list so the filter still leaves some.
        let filtered = *filter != Filter::default();
        let limit = if filtered {
            FUSE_DEPTH * 10
        } else {
            FUSE_DEPTH
        };
        let ids: Vec<i64> = self
            .conn
            .prepare_cached(sql)
            .and_then(|mut st| {
                st.query_map(params![any_of(&terms), limit as i64], |r| r.get(0))
                    .and_then(|rows| rows.collect())
            })
            .map_err(|e| self.sqlite(e))?;
        Ok(ids
            .into_iter()
            .filter(|id| {
                self.index
                    .meta(*id)
                    .is_some_and(|(k, c)| filter.allows(k, c))
            })
            .take(FUSE_DEPTH)
            .collect())
    }

    fn get(&self, id: i64) -> Result<Option<StoredMemory>, MemoryError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT id, kind, text, created_ms, meta FROM memories WHERE id = ?1")
            .map_err(|e| self.sqlite(e))?;
        st.query_row([id], row_memory)
            .optional()
            .map_err(|e| self.sqlite(e))
    }

    fn search(
        &mut self,
        q: &[f32],
        text: &str,
        k: usize,
        filter: &Filter,
    ) -> Result<Vec<Hit>, MemoryError> {
        let depth = FUSE_DEPTH.max(k);
        let vector: Vec<i64> = self
            .index
            .search(q, depth, self.candidates, filter)
            .into_iter()
            .map(|h| h.0)
            .collect();
        let keyword = self.keyword_ids(text, filter)?;
        let mut hits = Vec::with_capacity(k);
        for (id, score) in fuse(&[&vector, &keyword]).into_iter().take(k) {
            let Some(memory) = self.get(id)? else {
                continue;
            };
            hits.push(Hit {
                memory,
                similarity: self.index.similarity(id, q).unwrap_or(0.0),
                score,
                vector_rank: vector.iter().position(|x| *x == id),
                keyword_rank: keyword.iter().position(|x| *x == id),
            });
        }
        Ok(hits)
    }

    fn delete(&mut self, ids: &[i64]) -> Result<Vec<StoredMemory>, MemoryError> {
        let mut gone = Vec::new();
        for &id in ids {
            if let Some(m) = self.get(id)? {
                gone.push(m);
            }
        }
        let path = self.path.clone();
        let err = |e: rusqlite::Error| MemoryError::Sqlite {
            path: path.clone(),
            problem: e.to_string(),
        };
        let tx = self.conn.transaction().map_err(err)?;
        {
            let mut keep = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO forgotten (id, kind, text, created_ms, meta, embedding, forgotten_ms)
                     SELECT id, kind, text, created_ms, meta, embedding, ?2 FROM memories WHERE id = ?1",
                )
                .map_err(err)?;
            let mut st = tx
                .prepare_cached("DELETE FROM memories WHERE id = ?1")
                .map_err(err)?;
            let now = super::now_ms();
            for m in &gone {
                keep.execute(rusqlite::params![m.id, now]).map_err(err)?;
                st.execute([m.id]).map_err(err)?;
            }
        }
        tx.commit().map_err(err)?;
        for m in &gone {
            self.index.remove(m.id);
        }
        Ok(gone)
    }

    fn restore(&mut self, ids: &[i64]) -> Result<Vec<StoredMemory>, MemoryError> {
        let path = self.path.clone();
        let err = |e: rusqlite::Error| MemoryError::Sqlite {
            path: path.clone(),
            problem: e.to_string(),
        };
        let tx = self.conn.transaction().map_err(err)?;
        let mut back = Vec::new();
        {
            let mut get = tx
                .prepare_cached(
                    "SELECT id, kind, text, created_ms, meta, embedding FROM forgotten WHERE id = ?1",
                )
                .map_err(err)?;
            let mut put = tx
                .prepare_cached(
                    "INSERT INTO memories (id, kind, text, created_ms, meta, embedding)
                     SELECT id, kind, text, created_ms, meta, embedding FROM forgotten WHERE id = ?1",
                )
                .map_err(err)?;
            let mut drop_row = tx
                .prepare_cached("DELETE FROM forgotten WHERE id = ?1")
                .map_err(err)?;
            for &id in ids {
                let row = get
                    .query_row([id], |r| {
                        let m = row_memory(r)?;
                        let blob: Vec<u8> = r.get(5)?;
                        Ok((m, blob))
                    })
                    .optional()
                    .map_err(err)?;
                let Some((m, blob)) = row else { continue };
                put.execute([id]).map_err(err)?;
                drop_row.execute([id]).map_err(err)?;
                back.push((m, blob));
            }
        }
        tx.commit().map_err(err)?;
        let mut out = Vec::new();
        for (m, blob) in back {
            if let Some(v) = blob_embedding(&blob) {
                self.index.insert(m.id, m.kind, m.created_ms, &v);
            }
            out.push(m);
        }
        Ok(out)
    }

    fn forgotten(&self, n: usize) -> Result<Vec<StoredMemory>, MemoryError> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT id, kind, text, created_ms, meta FROM forgotten ORDER BY forgotten_ms DESC, id DESC LIMIT ?1",
            )
            .map_err(|e| self.sqlite(e))?;
        let rows = st
            .query_map([n as i64], row_memory)
            .and_then(|r| r.collect::<Result<Vec<_>, _>>())
            .map_err(|e| self.sqlite(e))?;
        Ok(rows)
    }

    fn recent(&self, filter: &Filter, n: usize) -> Result<Vec<StoredMemory>, MemoryError> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT id, kind, text, created_ms, meta FROM memories ORDER BY created_ms DESC, id DESC",
            )
            .map_err(|e| self.sqlite(e))?;
        let mut rows = st.query([]).map_err(|e| self.sqlite(e))?;
        let mut out = Vec::new();
        while out.len() < n {
            let Some(r) = rows.next().map_err(|e| self.sqlite(e))? else {
                break;
            };
            let m = row_memory(r).map_err(|e| self.sqlite(e))?;
            if filter.allows(m.kind, m.created_ms) {
                out.push(m);
            }
        }
        Ok(out)
    }

    fn stats(&self) -> Result<Stats, MemoryError> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT kind, COUNT(*), MIN(created_ms), MAX(created_ms) FROM memories GROUP BY kind ORDER BY kind",
            )
            .map_err(|e| self.sqlite(e))?;
        let rows: Vec<(String, i64, Option<i64>, Option<i64>)> = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .and_then(|rows| rows.collect())
            .map_err(|e| self.sqlite(e))?;
        let mut s = Stats {
            path: self.path.clone(),
            schema_version: SCHEMA_VERSION,
            open_ms: self.open_ms,
            index_bytes: self.index.bytes() as u64,
            ..Default::default()
        };
        for (kind, n, lo, hi) in rows {
            if let Some(k) = Kind::parse(&kind) {
                s.by_kind.push((k, n as u64));
            }
            s.total += n as u64;
            s.oldest_ms = match (s.oldest_ms, lo) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            s.newest_ms = match (s.newest_ms, hi) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
        }
        let q = |sql: &str| -> i64 { self.conn.query_row(sql, [], |r| r.get(0)).unwrap_or(0) };
        let wal = std::fs::metadata(format!("{}-wal", self.path.display()))
            .map(|m| m.len())
            .unwrap_or(0);
        s.file_bytes = (q("PRAGMA page_count") * q("PRAGMA page_size")) as u64 + wal;
        Ok(s)
    }

    fn export(&self, out: &mpsc::Sender<StoredMemory>) -> Result<usize, MemoryError> {
        let mut st = self
            .conn
            .prepare("SELECT id, kind, text, created_ms, meta FROM memories ORDER BY id")
            .map_err(|e| self.sqlite(e))?;
        let mut rows = st.query([]).map_err(|e| self.sqlite(e))?;
        let mut n = 0;
        while let Some(r) = rows.next().map_err(|e| self.sqlite(e))? {
            let m = row_memory(r).map_err(|e| self.sqlite(e))?;
            if out.blocking_send(m).is_err() {
                break;
            }
            n += 1;
        }
        Ok(n)
    }
}

fn row_memory(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredMemory> {
    let kind: String = r.get(1)?;
    let meta: String = r.get(4)?;
    Ok(StoredMemory {
        id: r.get(0)?,
        kind: Kind::parse(&kind).unwrap_or(Kind::Fact),
        text: r.get(2)?,
        created_ms: r.get(3)?,
        meta: serde_json::from_str(&meta).unwrap_or_else(|_| serde_json::json!({})),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyword_queries_keep_topic_words() {
        assert_eq!(keyword_terms("What's my dog's name?"), ["dog", "name"]);
        assert!(keyword_terms("what is it").is_empty());
        let t = keyword_terms("room 7 \"code\" don't");
        assert_eq!(t, ["room", "7", "code"]);
        assert_eq!(any_of(&t), "\"room\" OR \"7\" OR \"code\"");
    }

    #[test]
    fn fusion_rewards_agreement() {
        let fused = fuse(&[&[1, 2, 3], &[3, 4]]);
        assert_eq!(fused[0].0, 3, "{fused:?}");
        assert_eq!(fused.len(), 4);
    }

    #[test]
    fn blobs_round_trip() {
        let v: Vec<f32> = (0..DIM).map(|i| i as f32 / 7.0).collect();
        assert_eq!(blob_embedding(&embedding_blob(&v)).unwrap(), v);
        assert!(blob_embedding(&[0; 12]).is_none());
    }
}
