//! Sentence embeddings: all-MiniLM-L6-v2 (int8 ONNX) on its owner thread `panda-embed`.
//!
//! The ort session (`run` takes `&mut self`) and the tokenizer live on one dedicated thread,
//! loaded once; callers send batches over [`EMBED_EDGE`] and get vectors back on a oneshot.
//! Inputs are tokenized without the file's fixed 128-token padding (DESIGN §4: padding
//! every sentence to 128 made each call 7× slower), sorted by length and padded per batch,
//! truncated at `[memory] max_tokens` (256, what the model was trained on); outputs are
//! mean-pooled over real tokens and L2-normalised, as sentence-transformers does, so a dot
//! product is the cosine similarity.
//!
//! Query embeddings are cached in an LRU on the caller's side of the channel: a repeated
//! question costs a hash lookup, not a trip to the model thread.

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use lru::LruCache;
use ort::session::Session;
use ort::value::TensorRef;
use tokenizers::{Tokenizer, TruncationParams};
use tokio::sync::{mpsc, oneshot};

use super::{DIM, MemoryError, Vector};
use crate::config::MemoryConfig;

/// Embedding requests, callers → `panda-embed`. A control edge: when full, callers wait
/// (each request is a few milliseconds of work; nothing is dropped).
pub const EMBED_EDGE: usize = 8;

/// Text longer than this is cut before tokenizing: 256 tokens never need more, and
/// tokenizing a megabyte only to throw it away would hold up every other caller.
const MAX_TOKENIZE_BYTES: usize = 16 * 1024;

/// The model and tokenizer (owned by one thread; also used directly by the bench).
pub struct EmbedModel {
    session: Session,
    tokenizer: Tokenizer,
    batch_size: usize,
    max_tokens: usize,
}

/// Loading and run figures.
#[derive(Debug, Clone, Copy, Default)]
pub struct EmbedInfo {
    /// Session + tokenizer load time.
    pub load_ms: u64,
}

impl EmbedModel {
    /// Loads the ONNX model and tokenizer.
    pub fn load(
        model: &Path,
        tokenizer: &Path,
        ort_lib: &Path,
        cfg: &MemoryConfig,
    ) -> Result<EmbedModel, MemoryError> {
        for p in [model, tokenizer] {
            if !p.exists() {
                return Err(MemoryError::MissingModel(p.to_path_buf()));
            }
        }
        let env = crate::onnx::environment(ort_lib)?;
        let e = |what: &Path, err: String| MemoryError::Embed(format!("{}: {err}", what.display()));
        let session = Session::builder(env)
            .and_then(|b| Ok(b.with_intra_threads(cfg.threads.max(1))?))
            .and_then(|b| Ok(b.with_intra_op_spinning(false)?))
            .and_then(|mut b| b.commit_from_file(model))
            .map_err(|err| e(model, err.to_string()))?;
        let mut tok =
            Tokenizer::from_file(tokenizer).map_err(|err| e(tokenizer, err.to_string()))?;
        tok.with_padding(None);
        tok.with_truncation(Some(TruncationParams {
            max_length: cfg.max_tokens,
            ..Default::default()
        }))
        .map_err(|err| e(tokenizer, err.to_string()))?;
        Ok(EmbedModel {
            session,
            tokenizer: tok,
            batch_size: cfg.batch_size.max(1),
            max_tokens: cfg.max_tokens,
        })
    }

    /// Embeds `texts` (any number; run in batches of `[memory] batch_size`, shortest
    /// first so a batch pads little). Vectors are unit length, in input order.
    pub fn embed(&mut self, texts: &[String]) -> Result<Vec<Vec<f32>>, MemoryError> {
        let mut encoded = Vec::with_capacity(texts.len());
        for t in texts {
            let cut = if t.len() > MAX_TOKENIZE_BYTES {
                &t[..t.floor_char_boundary(MAX_TOKENIZE_BYTES)]
            } else {
                t.as_str()
            };
            let enc = self
                .tokenizer
                .encode(cut, true)
                .map_err(|e| MemoryError::Embed(format!("tokenizer: {e}")))?;
            if cut.len() < t.len() || !enc.get_overflowing().is_empty() {
                tracing::warn!(
                    bytes = t.len(),
                    max_tokens = self.max_tokens,
                    "text longer than the embedding model reads: its embedding covers the start; the whole text is stored and keyword-searchable"
                );
            }
            encoded.push((enc.get_ids().to_vec(), enc.get_attention_mask().to_vec()));
        }
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| encoded[i].0.len());
        let mut out = vec![Vec::new(); texts.len()];
        for chunk in order.chunks(self.batch_size) {
            let vecs = self.run_batch(chunk.iter().map(|&i| &encoded[i]).collect())?;
            for (&i, v) in chunk.iter().zip(vecs) {
                out[i] = v;
            }
        }
        Ok(out)
    }

    fn run_batch(
        &mut self,
        batch: Vec<&(Vec<u32>, Vec<u32>)>,
    ) -> Result<Vec<Vec<f32>>, MemoryError> {
        let b = batch.len();
        let t = batch
            .iter()
            .map(|(ids, _)| ids.len())
            .max()
            .unwrap_or(0)
            .max(1);
        let mut ids = vec![0i64; b * t];
        let mut mask = vec![0i64; b * t];
        let types = vec![0i64; b * t];
        for (r, (i, m)) in batch.iter().enumerate() {
            for (c, (&id, &mm)) in i.iter().zip(m.iter()).enumerate() {
                ids[r * t + c] = id as i64;
                mask[r * t + c] = mm as i64;
            }
        }
        let err = |e: ort::Error| MemoryError::Embed(e.to_string());
        let t_ids = TensorRef::from_array_view(([b, t], &ids[..])).map_err(err)?;
        let t_mask = TensorRef::from_array_view(([b, t], &mask[..])).map_err(err)?;
        let t_types = TensorRef::from_array_view(([b, t], &types[..])).map_err(err)?;
        let outputs = self
            .session
            .run(ort::inputs![
                "input_ids" => t_ids,
                "attention_mask" => t_mask,
                "token_type_ids" => t_types
            ])
            .map_err(err)?;
        let (shape, hidden) = outputs[0].try_extract_tensor::<f32>().map_err(err)?;
        if shape.len() != 3 || shape[2] as usize != DIM {
            return Err(MemoryError::Embed(format!(
                "unexpected output shape {shape:?} (want [batch, tokens, {DIM}])"
            )));
        }
        Ok((0..b)
            .map(|r| {
                pool(
                    &hidden[r * t * DIM..(r + 1) * t * DIM],
                    &mask[r * t..(r + 1) * t],
                )
            })
            .collect())
    }
}

/// Mean over the real tokens, then unit length.
fn pool(hidden: &[f32], mask: &[i64]) -> Vec<f32> {
    let mut v = vec![0f32; DIM];
    let mut n = 0f32;
    for (row, &m) in hidden.chunks_exact(DIM).zip(mask) {
        if m != 0 {
            n += 1.0;
            for (a, x) in v.iter_mut().zip(row) {
                *a += x;
            }
        }
    }
    let n = n.max(1.0);
    v.iter_mut().for_each(|a| *a /= n);
    l2_normalize(&mut v);
    v
}

/// Scales `v` to unit length (a zero vector stays zero).
pub fn l2_normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

struct Job {
    texts: Vec<String>,
    reply: oneshot::Sender<Result<Vec<Vec<f32>>, MemoryError>>,
}

/// Handle to the embedding thread (cheap to clone).
#[derive(Clone)]
pub struct Embedder {
    tx: mpsc::Sender<Job>,
    cache: Arc<Mutex<LruCache<String, Vector>>>,
    info: EmbedInfo,
}

impl Embedder {
    /// Starts `panda-embed`: loads the model there and waits until it is ready.
    pub async fn spawn(
        model: &Path,
        tokenizer: &Path,
        ort_lib: &Path,
        cfg: &MemoryConfig,
    ) -> Result<Embedder, MemoryError> {
        let (tx, mut rx) = mpsc::channel::<Job>(EMBED_EDGE);
        let (ready_tx, ready_rx) = oneshot::channel();
        let (model, tokenizer, ort_lib, cfg2): (PathBuf, PathBuf, PathBuf, MemoryConfig) =
            (model.into(), tokenizer.into(), ort_lib.into(), cfg.clone());
        std::thread::Builder::new()
            .name("panda-embed".into())
            .spawn(move || {
                let t0 = Instant::now();
                let mut m = match EmbedModel::load(&model, &tokenizer, &ort_lib, &cfg2) {
                    Ok(m) => m,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let load_ms = t0.elapsed().as_millis() as u64;
                tracing::info!(load_ms, "embedding model ready");
                let _ = ready_tx.send(Ok(EmbedInfo { load_ms }));
                // Ends when every handle is dropped.
                while let Some(job) = rx.blocking_recv() {
                    let r = m.embed(&job.texts);
                    let _ = job.reply.send(r);
                }
            })
            .map_err(|e| MemoryError::Embed(format!("cannot start the embedding thread: {e}")))?;
        let info = ready_rx.await.map_err(|_| MemoryError::Stopped)??;
        let cap = NonZeroUsize::new(cfg.query_cache_entries.max(1)).unwrap_or(NonZeroUsize::MIN);
        Ok(Embedder {
            tx,
            cache: Arc::new(Mutex::new(LruCache::new(cap))),
            info,
        })
    }

    /// Load figures.
    pub fn info(&self) -> EmbedInfo {
        self.info
    }

    /// Embeds texts (documents); no caching.
    pub async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, MemoryError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job { texts, reply })
            .await
            .map_err(|_| MemoryError::Stopped)?;
        rx.await.map_err(|_| MemoryError::Stopped)?
    }

    /// Embeds a search query through the LRU; returns the vector and whether it was cached.
    pub async fn embed_query(&self, query: &str) -> Result<(Vector, bool), MemoryError> {
        let key = query.trim().to_lowercase();
        if let Some(v) = self.lock().get(&key) {
            return Ok((v.clone(), true));
        }
        let v: Vector = self
            .embed(vec![query.trim().to_string()])
            .await?
            .pop()
            .unwrap_or_default()
            .into();
        self.lock().put(key, v.clone());
        Ok((v, false))
    }

    /// Empties the query cache (the bench's uncached runs).
    pub fn clear_cache(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<String, Vector>> {
        // The cache holds no invariants a panic could break.
        crate::lock(&self.cache)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooling_ignores_padding_and_normalises() {
        let mut hidden = vec![0f32; 3 * DIM];
        hidden[0] = 1.0; // token 0
        hidden[DIM + 1] = 1.0; // token 1
        hidden[2 * DIM + 2] = 100.0; // padding: must not count
        let v = pool(&hidden, &[1, 1, 0]);
        let h = std::f32::consts::FRAC_1_SQRT_2;
        assert!((v[0] - h).abs() < 1e-6 && (v[1] - h).abs() < 1e-6);
        assert_eq!(v[2], 0.0);
    }
}
