//! `panda bench memory`: what the store and its search cost, and what they find.
//!
//! Prints, in one run on a scratch database: batched inserts vs one transaction per row
//! (same rows, same `synchronous = FULL`), embedding throughput at batch 1 and 32,
//! retrieval on [`RETRIEVAL`] (facts vs paraphrased questions), and search latency at
//! 1k / 10k / 100k memories with the query embedding cached (search only) and uncached
//! (embedding + search), plus the recall of the coarse binary scan against an exact one.
//!
//! Synthetic memories for the large sizes are sentences built from word lists, with
//! vectors made from real embeddings of their topic plus noise, so the index sees the
//! clustered geometry of real text without embedding 100k texts first.

use std::time::Instant;

use rand::{Rng, SeedableRng};

use super::percentile;
use crate::config::Config;
use crate::memory::index::VectorIndex;
use crate::memory::store::Commit;
use crate::memory::{DIM, Filter, Kind, Memory, MemoryError, NewMemory};

/// Facts and a paraphrased question for each (no shared wording where avoidable).
pub const RETRIEVAL: &[(&str, &str)] = &[
    ("My dog is called Biscuit.", "What's the name of my dog?"),
    (
        "My sister Anna lives in Lisbon.",
        "Which city does Anna live in?",
    ),
    (
        "The wifi password is sunflower42.",
        "What do I type to get on the wireless network?",
    ),
    ("I'm allergic to peanuts.", "Is there any food I can't eat?"),
    (
        "My car is parked on level three of the garage.",
        "Where did I leave the car?",
    ),
    (
        "The spare key is under the blue flower pot.",
        "Where is the extra house key hidden?",
    ),
    (
        "My favourite colour is green.",
        "Which colour do I like best?",
    ),
    (
        "I take my vitamins every morning with breakfast.",
        "When do I have my supplements?",
    ),
    (
        "The plumber's number is 555 0192.",
        "How can I reach the person who fixes the pipes?",
    ),
    (
        "My daughter's birthday is on the ninth of June.",
        "When was my daughter born?",
    ),
    ("I work as a nurse at the city hospital.", "What is my job?"),
    (
        "Our rubbish is collected on Thursday mornings.",
        "Which day does the garbage truck come?",
    ),
    (
        "My son plays the violin.",
        "Which instrument does my boy play?",
    ),
    (
        "I prefer my coffee black with no sugar.",
        "How do I take my coffee?",
    ),
    (
        "The cat needs her medicine twice a day.",
        "How often does the cat get her pills?",
    ),
    ("My mother's name is Margaret.", "What is my mum called?"),
    (
        "I parked my bike behind the library.",
        "Where is my bicycle?",
    ),
    (
        "The dentist appointment is next Tuesday at four.",
        "When am I seeing the dentist?",
    ),
    ("My shoe size is 42.", "What size shoes do I wear?"),
    (
        "I am learning Japanese on Wednesday evenings.",
        "Which language am I studying?",
    ),
    (
        "The boiler was serviced in March.",
        "When did the heating system last get a check-up?",
    ),
    ("My best friend is called Tom.", "Who is my closest friend?"),
    (
        "I keep the passports in the top drawer of the desk.",
        "Where are our travel documents?",
    ),
    ("My blood type is O negative.", "What blood group am I?"),
    (
        "We are going to Italy for our holiday in August.",
        "Where are we travelling this summer?",
    ),
    (
        "The recycling bin is the green one.",
        "Which bin is for recycling?",
    ),
    (
        "My favourite film is Casablanca.",
        "Which movie do I love most?",
    ),
    (
        "I water the tomato plants every evening.",
        "How often do the tomatoes get watered?",
    ),
    (
        "My grandmother turned ninety last year.",
        "How old is my grandma?",
    ),
    (
        "The landlord's name is Mr Patel.",
        "Who owns the flat we rent?",
    ),
    (
        "I don't eat meat; I'm a vegetarian.",
        "Do I have any dietary restrictions?",
    ),
    (
        "My phone's PIN is stored in the password manager.",
        "Where can I find the code for my phone?",
    ),
    (
        "The kids' school starts at half past eight.",
        "What time do the children need to be at school?",
    ),
    (
        "My husband David works night shifts.",
        "When does David work?",
    ),
    ("I bought the television in 2021.", "How old is our TV?"),
    (
        "The fuse box is in the cupboard under the stairs.",
        "Where is the electrical panel?",
    ),
    (
        "My favourite band is Radiohead.",
        "What music group do I like most?",
    ),
    (
        "The library books are due back on Friday.",
        "When do I have to return the books I borrowed?",
    ),
    (
        "I run five kilometres every Sunday.",
        "How far do I jog at the weekend?",
    ),
    (
        "The neighbour's cat is called Whiskers.",
        "What's the name of next door's cat?",
    ),
    (
        "Our anniversary is on the twelfth of October.",
        "When did we get married?",
    ),
    (
        "I keep the first aid kit in the bathroom cabinet.",
        "Where are the bandages?",
    ),
    (
        "My train to work leaves at 7:15.",
        "What time is my commute train?",
    ),
    (
        "The gym membership renews in January.",
        "When do I have to pay for the gym again?",
    ),
    ("I lent my ladder to Susan.", "Who has my ladder?"),
    (
        "My doctor is Dr. Okafor at the health centre.",
        "Who is my GP?",
    ),
    (
        "The garden gate sticks when it rains.",
        "What's wrong with the gate?",
    ),
    (
        "I'm saving up for a new camera.",
        "What am I putting money aside for?",
    ),
    (
        "My brother lives in Toronto with his two kids.",
        "Where does my brother live?",
    ),
    (
        "The car insurance is with Northway and ends in May.",
        "Who insures our car?",
    ),
];

const SUBJECTS: &[&str] = &[
    "my sister",
    "the neighbour",
    "our landlord",
    "the dentist",
    "my colleague",
    "the plumber",
    "grandma",
    "the kids",
    "my friend Sam",
    "the vet",
    "our gardener",
    "my boss",
];
const VERBS: &[&str] = &[
    "called about",
    "asked about",
    "forgot",
    "fixed",
    "paid for",
    "booked",
    "cancelled",
    "recommended",
    "brought back",
    "complained about",
    "moved",
    "cleaned",
];
const OBJECTS: &[&str] = &[
    "the boiler",
    "the blue car",
    "the holiday flights",
    "the garden fence",
    "the birthday cake",
    "the piano lessons",
    "the kitchen tap",
    "the library books",
    "the cat's injections",
    "the winter tyres",
    "the school trip",
    "the new sofa",
    "the broken window",
    "the concert tickets",
];
const WHEN: &[&str] = &[
    "on Monday",
    "last week",
    "yesterday",
    "this morning",
    "in March",
    "after lunch",
    "before the weekend",
    "at the end of the month",
];

/// Scratch directory for a bench or test database.
fn scratch() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("panda-bench-memory-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Share of questions whose fact is in the top 3 (and the misses), after storing `facts`.
pub async fn retrieval(
    memory: &Memory,
    pairs: &[(&str, &str)],
) -> Result<(f64, Vec<String>), MemoryError> {
    let ids = memory
        .add_many(
            pairs
                .iter()
                .map(|(f, _)| NewMemory::new(Kind::Fact, *f))
                .collect(),
        )
        .await?;
    let facts = Filter {
        kinds: vec![Kind::Fact],
        ..Default::default()
    };
    let mut found = 0;
    let mut misses = Vec::new();
    for ((fact, q), id) in pairs.iter().zip(&ids) {
        let hits = memory.search(q, 3, facts.clone()).await?;
        if hits.iter().any(|h| h.memory.id == *id) {
            found += 1;
        } else {
            misses.push(format!(
                "{q} → {} (wanted: {fact})",
                hits.first()
                    .map(|h| h.memory.text.as_str())
                    .unwrap_or("nothing")
            ));
        }
    }
    Ok((found as f64 / pairs.len() as f64, misses))
}

fn noisy(base: &[f32], rng: &mut impl Rng, amount: f32) -> Vec<f32> {
    let mut v: Vec<f32> = base
        .iter()
        .map(|x| x + amount * rng.random_range(-1.0f32..1.0) / (DIM as f32).sqrt() * 3.0)
        .collect();
    crate::memory::embed::l2_normalize(&mut v);
    v
}

fn synthetic_text(rng: &mut impl Rng) -> (usize, String) {
    let o = rng.random_range(0..OBJECTS.len());
    let s = SUBJECTS[rng.random_range(0..SUBJECTS.len())];
    let v = VERBS[rng.random_range(0..VERBS.len())];
    let w = WHEN[rng.random_range(0..WHEN.len())];
    (
        o,
        format!(
            "{s} {v} {} {w}, note {}.",
            OBJECTS[o],
            rng.random_range(0..1_000_000)
        ),
    )
}

async fn open_scratch(cfg: &Config, name: &str) -> Result<(Config, Memory), MemoryError> {
    let mut cfg = cfg.clone();
    cfg.memory.path = name.into();
    cfg.memory.identity.clear();
    let memory = Memory::open(&cfg).await?;
    Ok((cfg, memory))
}

/// Runs the whole benchmark (see the module doc).
pub async fn run(cfg: &Config, max: usize, queries: usize) -> Result<(), MemoryError> {
    let dir = scratch();
    let mut base = cfg.clone();
    base.state.dir = dir.clone();
    let t0 = Instant::now();
    let (cfg, memory) = open_scratch(&base, "small.sqlite3").await?;
    println!(
        "memory bench: scratch databases in {} (opened + model loaded in {} ms, embedding model {} ms)",
        dir.display(),
        t0.elapsed().as_millis(),
        memory.embedder().info().load_ms
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);

    // Embedding throughput.
    let texts: Vec<String> = (0..256).map(|_| synthetic_text(&mut rng).1).collect();
    let t = Instant::now();
    for s in texts.iter().take(64) {
        memory.embedder().embed(vec![s.clone()]).await?;
    }
    let one = 64.0 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for chunk in texts.chunks(32) {
        memory.embedder().embed(chunk.to_vec()).await?;
    }
    let batch = texts.len() as f64 / t.elapsed().as_secs_f64();
    println!(
        "embedding (all-MiniLM-L6-v2 int8, {} thread{}): batch 1 {one:.0} texts/s, batch 32 {batch:.0} texts/s ({:.1}×)",
        cfg.memory.threads,
        if cfg.memory.threads == 1 { "" } else { "s" },
        batch / one
    );

    // Retrieval on the fact set.
    let (share, misses) = retrieval(&memory, RETRIEVAL).await?;
    println!(
        "retrieval: {}/{} paraphrased questions find their fact in the top 3 ({:.0}%)",
        (share * RETRIEVAL.len() as f64).round(),
        RETRIEVAL.len(),
        share * 100.0
    );
    for m in &misses {
        println!("  miss: {m}");
    }

    // Topic vectors: real embeddings of each object phrase.
    let topics = memory
        .embedder()
        .embed(
            OBJECTS
                .iter()
                .map(|o| format!("something about {o}"))
                .collect(),
        )
        .await?;
    let make = |n: usize, rng: &mut rand::rngs::StdRng| -> Vec<(NewMemory, Vec<f32>)> {
        (0..n)
            .map(|_| {
                let (o, text) = synthetic_text(rng);
                let v = noisy(&topics[o], rng, 0.6);
                (NewMemory::new(Kind::Fact, text), v)
            })
            .collect()
    };

    // Inserts: one transaction for many rows vs one per row (the seed's way).
    let rows = 300;
    let t = Instant::now();
    memory
        .store()
        .insert_with(make(rows, &mut rng), Commit::PerRow)
        .await?;
    let per_row = rows as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for _ in 0..10 {
        memory
            .store()
            .insert_with(make(rows, &mut rng), Commit::Batched)
            .await?;
    }
    let batched = (rows * 10) as f64 / t.elapsed().as_secs_f64();
    println!(
        "inserts (synchronous=FULL): one transaction per row {per_row:.0} rows/s; batched ({rows} rows per transaction) {batched:.0} rows/s → {:.0}×",
        batched / per_row
    );
    memory.close().await?;

    // Search at increasing sizes, on a fresh database.
    let (cfg, memory) = open_scratch(&base, "large.sqlite3").await?;
    let questions: Vec<&str> = RETRIEVAL.iter().map(|(_, q)| *q).collect();
    let mut exact_index = VectorIndex::new();
    let mut vectors: Vec<Vec<f32>> = Vec::new();
    let mut stored = 0usize;
    let sizes: Vec<usize> = [1_000, 10_000, 100_000]
        .into_iter()
        .filter(|s| *s <= max.max(1_000))
        .collect();
    println!(
        "search (k = 5; binary scan → {} rescored, + FTS5, fused), latency in ms:",
        cfg.memory.candidates
    );
    println!(
        "  {:>8}  {:>17}  {:>17}  {:>17}  {:>9}  {:>9}  {:>6}",
        "memories",
        "cached p50/p99",
        "vector-only p50/p99",
        "uncached p50/p99",
        "target@1",
        "recall@10",
        "fill s"
    );
    for size in sizes {
        let t = Instant::now();
        while stored < size {
            let n = (size - stored).min(2_000);
            let batch = make(n, &mut rng);
            let ids = memory.store().insert(batch.clone()).await?;
            for (id, (m, v)) in ids.iter().zip(&batch) {
                exact_index.insert(*id, m.kind, 0, v);
                vectors.push(v.clone());
            }
            stored += n;
        }
        let fill = t.elapsed().as_secs_f64();
        // Uncached: the query is embedded every time.
        let mut uncached = Vec::new();
        for i in 0..queries.min(100) {
            memory.embedder().clear_cache();
            let t = Instant::now();
            memory
                .search(questions[i % questions.len()], 5, Filter::default())
                .await?;
            uncached.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        // Cached: warm the LRU, then search (LRU hit + store search).
        for q in &questions {
            memory.embedder().embed_query(q).await?;
        }
        let mut cached = Vec::new();
        for i in 0..queries {
            let t = Instant::now();
            memory
                .search(questions[i % questions.len()], 5, Filter::default())
                .await?;
            cached.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        // The vector side alone (no keywords), and its quality on queries that target one
        // stored memory (a paraphrase of it): is that memory first, and how much of the
        // exact top 10 does the coarse scan keep.
        let mut vector_only = Vec::new();
        let mut first = 0;
        let mut found = 0;
        let probes = 100;
        for _ in 0..probes {
            let target = rng.random_range(0..vectors.len());
            let q = noisy(&vectors[target], &mut rng, 0.3);
            let qv: crate::memory::Vector = q.clone().into();
            let t = Instant::now();
            let hits = memory
                .store()
                .search(qv, String::new(), 5, Filter::default())
                .await?;
            vector_only.push(t.elapsed().as_secs_f64() * 1000.0);
            let exact: Vec<i64> = exact_index
                .search_exact(&q, 10, &Filter::default())
                .iter()
                .map(|h| h.0)
                .collect();
            if hits.first().map(|h| h.memory.id) == exact.first().copied() {
                first += 1;
            }
            let got: Vec<i64> = exact_index
                .search(&q, 10, cfg.memory.candidates, &Filter::default())
                .iter()
                .map(|h| h.0)
                .collect();
            found += exact.iter().filter(|id| got.contains(id)).count();
        }
        println!(
            "  {:>8}  {:>7.3} / {:>7.3}  {:>7.3} / {:>7.3}  {:>7.3} / {:>7.3}  {:>9.2}  {:>9.2}  {:>6.1}",
            stored,
            percentile(&cached, 50.0),
            percentile(&cached, 99.0),
            percentile(&vector_only, 50.0),
            percentile(&vector_only, 99.0),
            percentile(&uncached, 50.0),
            percentile(&uncached, 99.0),
            first as f64 / probes as f64,
            found as f64 / (probes * 10) as f64,
            fill
        );
    }
    let s = memory.stats().await?;
    println!(
        "store: {} memories, file {:.0} MB, index {:.0} MB in memory; compass goal: cached p99 < 2 ms at 100k",
        s.total,
        s.file_bytes as f64 / 1e6,
        s.index_bytes as f64 / 1e6
    );
    memory.close().await?;
    let t = Instant::now();
    let (path, mcfg) = (cfg.memory_path(), cfg.memory.clone());
    let reopened = tokio::task::spawn_blocking(move || crate::memory::Store::open(&path, &mcfg))
        .await
        .map_err(|_| MemoryError::Stopped)??;
    println!(
        "reopen (checks + index load of {} memories): {} ms",
        s.total,
        t.elapsed().as_millis()
    );
    reopened.close().await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
