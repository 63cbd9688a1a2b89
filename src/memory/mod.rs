//! Long-term memory: facts, identity, past turns and summaries in SQLite, searched by
//! meaning and by keyword.
//!
//! - [`embed`]: the MiniLM owner thread (`panda-embed`): ONNX session + tokenizer loaded
//!   once, batched, mean-pooled, L2-normalised; an LRU of query embeddings in front of it.
//! - [`index`]: the in-memory vector index (binary codes for a coarse scan, int8 vectors
//!   to rescore) — pure data structure, kept in sync by the store.
//! - [`store`]: the SQLite owner thread (`panda-memory`): WAL, migrations on
//!   `user_version`, group commit, FTS5, identity seeding, hybrid search.
//!
//! [`Memory`] is the handle the rest of Panda uses: it embeds on one thread and stores on
//! the other, so neither the async runtime nor the turn ever waits on SQLite or ONNX
//! directly — every call is a bounded channel send and a oneshot reply.

pub mod embed;
pub mod index;
pub mod store;

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::config::Config;
pub use embed::Embedder;
pub use store::{Hit, Stats, Store, StoredMemory};

/// Size of one embedding (all-MiniLM-L6-v2).
pub const DIM: usize = 384;

/// What a memory is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Who Panda and its household are (seeded from `[memory] identity`).
    Identity,
    /// Something the user asked Panda to remember.
    Fact,
    /// One exchange: the question and the answer as it was heard.
    Turn,
    /// A condensed summary of a conversation.
    Summary,
}

impl Kind {
    /// Every kind, in storage order.
    pub const ALL: [Kind; 4] = [Kind::Identity, Kind::Fact, Kind::Turn, Kind::Summary];

    /// The name stored in the database and shown by the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Identity => "identity",
            Kind::Fact => "fact",
            Kind::Turn => "turn",
            Kind::Summary => "summary",
        }
    }

    /// Parses a stored or typed name.
    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Bit for kind masks in filters.
    pub fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// Errors of the memory service.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The database file is not SQLite, or SQLite reports it damaged. Panda never
    /// overwrites it; the message says how to recover.
    #[error(
        "memory database {path} is damaged or not a database ({problem}). Panda will not overwrite it: move it aside to start with empty memory (mv {path} {path}.broken) or restore it from a backup"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What SQLite or the header check said.
        problem: String,
    },
    /// The file is a SQLite database, but not Panda's memory.
    #[error(
        "{path} is a SQLite database but not Panda's memory ({problem}). Panda will not change it: point [memory] path (PANDA_MEMORY__PATH) at another file, or move it aside"
    )]
    Foreign {
        /// The file.
        path: PathBuf,
        /// What gave it away.
        problem: String,
    },
    /// The database was written by a newer Panda (schema version above ours).
    #[error(
        "memory database {path} has schema version {found}, newer than this Panda's {supported}: upgrade Panda, or move the file aside"
    )]
    TooNew {
        /// The file.
        path: PathBuf,
        /// Its `user_version`.
        found: i64,
        /// Ours.
        supported: i64,
    },
    /// The text to store is empty (after trimming).
    #[error("nothing to remember: the text is empty")]
    Empty,
    /// The text to store is longer than `[memory] max_text_bytes`.
    #[error("the text is {bytes} bytes, more than [memory] max_text_bytes ({limit})")]
    TooLong {
        /// Its size.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// The embedding model or tokenizer file is missing.
    #[error("{0} is missing: run `panda models install`")]
    MissingModel(PathBuf),
    /// The embedding model could not be loaded or run.
    #[error("embedding model: {0}")]
    Embed(String),
    /// ONNX Runtime could not be set up.
    #[error(transparent)]
    Onnx(#[from] crate::onnx::OnnxError),
    /// SQLite failed on a healthy database (disk full, permissions, I/O).
    #[error("memory database {path}: {problem}")]
    Sqlite {
        /// The file.
        path: PathBuf,
        /// SQLite's message.
        problem: String,
    },
    /// The state directory could not be created.
    #[error("cannot create {path}: {source}")]
    Io {
        /// Directory.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// The memory thread is gone (shutting down or crashed).
    #[error("the memory service has stopped")]
    Stopped,
}

/// A memory to store.
#[derive(Debug, Clone)]
pub struct NewMemory {
    /// What it is.
    pub kind: Kind,
    /// The text, stored whole.
    pub text: String,
    /// Free-form JSON object (source, turn id, language…).
    pub meta: serde_json::Value,
}

impl NewMemory {
    /// A memory of `kind` with empty metadata.
    pub fn new(kind: Kind, text: impl Into<String>) -> Self {
        Self {
            kind,
            text: text.into(),
            meta: serde_json::json!({}),
        }
    }
}

/// Which memories a search may return.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    /// Kinds allowed (empty: all).
    pub kinds: Vec<Kind>,
    /// Only memories created at or after this time (Unix ms).
    pub since_ms: Option<i64>,
    /// Only memories created before this time (Unix ms).
    pub until_ms: Option<i64>,
}

impl Filter {
    /// Bit mask of the allowed kinds (all bits when empty).
    pub fn kind_mask(&self) -> u8 {
        if self.kinds.is_empty() {
            0xff
        } else {
            self.kinds.iter().fold(0, |m, k| m | k.bit())
        }
    }

    /// Whether a memory of `kind` created at `created_ms` passes.
    pub fn allows(&self, kind: Kind, created_ms: i64) -> bool {
        self.kind_mask() & kind.bit() != 0
            && self.since_ms.is_none_or(|s| created_ms >= s)
            && self.until_ms.is_none_or(|u| created_ms < u)
    }
}

/// Panda's memory: the embedder and the store, used together.
#[derive(Clone)]
pub struct Memory {
    store: Store,
    embedder: Embedder,
    max_text_bytes: usize,
    min_similarity: f32,
}

/// Time now in Unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Memory {
    /// Opens the database named by `[memory] path` (refusing a damaged or foreign file),
    /// loads the embedding model, and seeds the identity facts not seeded before.
    pub async fn open(cfg: &Config) -> Result<Memory, MemoryError> {
        let path = cfg.memory_path();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| MemoryError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let store_cfg = cfg.memory.clone();
        let p = path.clone();
        let store = tokio::task::spawn_blocking(move || Store::open(&p, &store_cfg))
            .await
            .map_err(|_| MemoryError::Stopped)??;
        let embedder = Embedder::spawn(
            &cfg.model_path(&cfg.memory.model),
            &cfg.model_path(&cfg.memory.tokenizer),
            &cfg.model_path(std::path::Path::new(crate::onnx::ORT_LIB)),
            &cfg.memory,
        )
        .await?;
        let memory = Memory {
            store,
            embedder,
            max_text_bytes: cfg.memory.max_text_bytes,
            min_similarity: cfg.memory.min_similarity,
        };
        memory.seed(&cfg.memory.identity).await?;
        Ok(memory)
    }

    /// The store (for the bench and tests).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The embedder (for the bench and tests).
    pub fn embedder(&self) -> &Embedder {
        &self.embedder
    }

    /// The similarity at or above which a memory counts as relevant.
    pub fn min_similarity(&self) -> f32 {
        self.min_similarity
    }

    /// Seeds identity facts that were never seeded, in one transaction. A fact seeded
    /// once is never seeded again, even if the owner forgot it since.
    async fn seed(&self, facts: &[String]) -> Result<usize, MemoryError> {
        let facts: Vec<String> = facts
            .iter()
            .map(|f| f.trim().to_string())
            .filter(|f| !f.is_empty())
            .collect();
        if facts.is_empty() {
            return Ok(0);
        }
        let missing = self.store.unseeded(facts).await?;
        if missing.is_empty() {
            return Ok(0);
        }
        let vectors = self.embedder.embed(missing.clone()).await?;
        let items = missing
            .into_iter()
            .zip(vectors)
            .map(|(t, v)| (NewMemory::new(Kind::Identity, t), v))
            .collect::<Vec<_>>();
        let n = items.len();
        self.store.seed(items).await?;
        tracing::info!(facts = n, "identity facts seeded");
        Ok(n)
    }

    fn check(&self, m: &NewMemory) -> Result<(), MemoryError> {
        if m.text.trim().is_empty() {
            return Err(MemoryError::Empty);
        }
        if m.text.len() > self.max_text_bytes {
            return Err(MemoryError::TooLong {
                bytes: m.text.len(),
                limit: self.max_text_bytes,
            });
        }
        Ok(())
    }

    /// Stores one memory; returns its id once it is committed to disk.
    pub async fn add(&self, m: NewMemory) -> Result<i64, MemoryError> {
        Ok(self.add_many(vec![m]).await?[0])
    }

    /// Stores several memories in one transaction (embedded in batches); returns their
    /// ids, in order, once committed.
    pub async fn add_many(&self, items: Vec<NewMemory>) -> Result<Vec<i64>, MemoryError> {
        for m in &items {
            self.check(m)?;
        }
        let items: Vec<NewMemory> = items
            .into_iter()
            .map(|mut m| {
                m.text = m.text.trim().to_string();
                m
            })
            .collect();
        let vectors = self
            .embedder
            .embed(items.iter().map(|m| m.text.clone()).collect())
            .await?;
        self.store
            .insert(items.into_iter().zip(vectors).collect())
            .await
    }

    /// Best matches for `query`, best first: vector and keyword results fused.
    pub async fn search(
        &self,
        query: &str,
        k: usize,
        filter: Filter,
    ) -> Result<Vec<Hit>, MemoryError> {
        let q = query.trim();
        if q.is_empty() {
            return Ok(Vec::new());
        }
        let (vector, _cached) = self.embedder.embed_query(q).await?;
        self.store.search(vector, q.to_string(), k, filter).await
    }

    /// Matches that are relevant enough to speak or to put into a prompt: similar in
    /// meaning (≥ `[memory] min_similarity`), or sharing rare words with the query.
    pub async fn recall(
        &self,
        query: &str,
        k: usize,
        filter: Filter,
    ) -> Result<Vec<Hit>, MemoryError> {
        let min = self.min_similarity;
        Ok(self
            .search(query, k, filter)
            .await?
            .into_iter()
            .filter(|h| h.similarity >= min)
            .collect())
    }

    /// Forgets memories by id (restorable for a while: [`store::KEEP_FORGOTTEN_MS`]);
    /// returns those that existed.
    pub async fn forget(&self, ids: Vec<i64>) -> Result<Vec<StoredMemory>, MemoryError> {
        self.store.delete(ids).await
    }

    /// Brings forgotten memories back; returns those restored.
    pub async fn restore(&self, ids: Vec<i64>) -> Result<Vec<StoredMemory>, MemoryError> {
        self.store.restore(ids).await
    }

    /// Forgotten memories still restorable, most recently forgotten first.
    pub async fn forgotten(&self, n: usize) -> Result<Vec<StoredMemory>, MemoryError> {
        self.store.forgotten(n).await
    }

    /// The memory that "forget `topic`" means, if one matches strongly enough to delete.
    ///
    /// Deleting needs far more than recall: a recall that surfaces a loosely related
    /// memory costs nothing, a deletion of one loses data the owner never meant to lose
    /// ("forget my sister's address" once deleted "my brother Bob lives in Oslo"). So a
    /// candidate must be close in meaning (≥ [`FORGET_MIN_SIMILARITY`]) *and* name the
    /// same thing: at least half of the topic's content words (stemmed) appear in it —
    /// or be a near-paraphrase (≥ [`FORGET_SURE_SIMILARITY`]).
    pub async fn match_to_forget(
        &self,
        topic: &str,
        filter: Filter,
    ) -> Result<Option<Hit>, MemoryError> {
        let hits = self.search(topic, 5, filter).await?;
        Ok(hits
            .into_iter()
            .filter(|h| forget_matches(topic, &h.memory.text, h.similarity))
            .max_by(|a, b| a.similarity.total_cmp(&b.similarity)))
    }

    /// Most recent memories of the given kinds, newest first.
    pub async fn recent(&self, filter: Filter, n: usize) -> Result<Vec<StoredMemory>, MemoryError> {
        self.store.recent(filter, n).await
    }

    /// Counts and sizes.
    pub async fn stats(&self) -> Result<Stats, MemoryError> {
        self.store.stats().await
    }

    /// Flushes (WAL checkpoint) and stops both threads once every clone is dropped.
    pub async fn close(self) -> Result<(), MemoryError> {
        let Memory {
            store, embedder, ..
        } = self;
        drop(embedder);
        store.close().await
    }
}

/// Least cosine similarity for a deletion by topic (with the same content words).
pub const FORGET_MIN_SIMILARITY: f32 = 0.45;
/// Cosine similarity at which a memory is the topic whatever its words.
pub const FORGET_SURE_SIMILARITY: f32 = 0.85;

/// A crude English stem: enough to match "addresses"/"address", "parked"/"parking".
fn stem(w: &str) -> &str {
    for suffix in ["ing", "ed", "es", "s"] {
        if let Some(s) = w.strip_suffix(suffix)
            && s.chars().count() >= 3
        {
            return s;
        }
    }
    w
}

/// Whether a memory with `text` and `similarity` to `topic` is what "forget `topic`"
/// names (see [`Memory::match_to_forget`]).
pub fn forget_matches(topic: &str, text: &str, similarity: f32) -> bool {
    if similarity >= FORGET_SURE_SIMILARITY {
        return true;
    }
    if similarity < FORGET_MIN_SIMILARITY {
        return false;
    }
    let want: Vec<String> = store::keyword_terms(topic)
        .iter()
        .map(|w| stem(w).to_string())
        .collect();
    if want.is_empty() {
        return false;
    }
    let have: std::collections::HashSet<String> = store::keyword_terms(text)
        .iter()
        .map(|w| stem(w).to_string())
        .collect();
    let shared = want.iter().filter(|w| have.contains(*w)).count();
    shared >= 1 && shared * 2 >= want.len()
}

/// Shared, immutable embedding vector.
pub type Vector = Arc<[f32]>;

#[cfg(test)]
mod tests {
    use super::forget_matches;

    #[test]
    fn forgetting_needs_the_same_thing_named() {
        // The reported case: close enough for recall, the wrong person and slot.
        assert!(!forget_matches(
            "my sister's address",
            "my brother Bob lives in Oslo",
            0.6
        ));
        assert!(forget_matches(
            "my sister's address",
            "My sister's address is 12 Elm Street",
            0.7
        ));
        assert!(forget_matches(
            "where I parked the car",
            "I parked the car on level 3",
            0.6
        ));
        // Same words, meaning too far: kept.
        assert!(!forget_matches("the car", "the car is red", 0.2));
        // A near-paraphrase with other words.
        assert!(forget_matches(
            "my mum's name",
            "My mother is called Anne",
            0.9
        ));
    }
}
