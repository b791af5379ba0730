//! MongoDB benchmark, one run (SPEC section 10), against real mongod 7.0
//! servers (the testkit's, under wine; SecantusDB with
//! `FERRY_BENCH_MONGO_SERVER=secantusdb`):
//!
//! 1. The target's own ceiling: the documents bulk-inserted directly with
//!    the same driver (`insert_many` of 1000 from as many concurrent tasks
//!    as Ferry has shards).
//! 2. Ferry's sink on the same documents, in journal-shaped batches of 1000
//!    events, one task per shard, into the same server, in the same
//!    process: copy events (the insert path), then change events
//!    replacing every document, then change events deleting every one
//!    (upserts and deletes by `_id`, each batch with its checkpoint in one
//!    transaction). Each printed as a ratio to the ceiling (goal ≥ 0.8).
//! 3. The whole copy phase: tailer → RocksDB journal → replay workers →
//!    sink, from a source holding `FERRY_BENCH_MONGO_COPY_DOCS` documents,
//!    against the ceiling measured for that many documents on a fresh
//!    target; peak RSS of this process (VmHWM; the servers are other
//!    processes), goal < 300 MB for 1,000,000 documents.
//!
//! Run: `cargo bench -p ferry-benches --bench mongo`
//! Env: `FERRY_BENCH_MONGO_DOCS` (100000, parts 1-2), `FERRY_BENCH_MONGO_COPY_DOCS`
//!      (1000000, part 3), `FERRY_BENCH_MONGO_SHARDS` (4), `FERRY_BENCH_MONGO_ROUNDS`
//!      (3), `FERRY_BENCH_MONGO_TRANSACTIONS` (`off`: the sink without transactions),
//!      `FERRY_BENCH_MONGO_SERVER` (`secantusdb`).

use ferry_benches::{mib, peak_rss_bytes, rate};
use ferry_core::{Event, Op, Position, ShardId, ShardSpan, StoreMeta, StoreUrl, Value};
use ferry_journal::{Journal, PersistPolicy};
use ferry_journal_rocks::{OpenMode, RocksJournal};
use ferry_lag::LagTracker;
use ferry_mongo::{
    key, MongoSink, MongoStore, MongoTailer, Namespace, SinkOptions, TailerOptions, TransactionMode,
};
use ferry_replay::worker::{self, Shutdown, WorkerConfig};
use ferry_replay::Sink;
use ferry_testkit::{MongoWire, Mongod};
use mongodb::bson::{doc, Document, RawBsonRef, RawDocumentBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn document(i: i64) -> Document {
    doc! {"_id": i, "name": format!("user-{i}"), "n": i % 1000, "tags": ["a", "b"], "nested": {"x": i as f64, "y": "some text of a typical size"}}
}

/// Direct bulk inserts: `tasks` tasks, `insert_many` of 1000.
async fn direct(uri: &str, db: &str, n: i64, tasks: i64) -> Duration {
    let c = mongodb::Client::with_uri_str(uri).await.expect("connect");
    let coll = c.database(db).collection::<Document>("docs");
    // Created before the concurrent inserts (mongod under wine crashes when
    // several connections create one collection at once).
    c.database(db)
        .create_collection("docs")
        .await
        .expect("create");
    let started = Instant::now();
    let mut hs = Vec::new();
    for t in 0..tasks {
        let coll = coll.clone();
        hs.push(tokio::spawn(async move {
            let ids: Vec<i64> = (0..n).filter(|i| i % tasks == t).collect();
            for chunk in ids.chunks(1000) {
                coll.insert_many(chunk.iter().map(|i| document(*i)))
                    .await
                    .expect("insert");
            }
        }));
    }
    for h in hs {
        h.await.expect("task");
    }
    started.elapsed()
}

/// The target's own ceiling for change events: the same replacements
/// (`update` commands of 1000 replace-with-upsert statements by `_id`) and
/// then deletes (`delete` commands of 1000 by `_id`) sent directly, no
/// transaction, from `tasks` tasks, onto the documents `direct` inserted.
async fn direct_changes(uri: &str, db: &str, n: i64, tasks: i64) -> (Duration, Duration) {
    let c = mongodb::Client::with_uri_str(uri).await.expect("connect");
    let mut times = Vec::new();
    for delete in [false, true] {
        let started = Instant::now();
        let mut hs = Vec::new();
        for t in 0..tasks {
            let db = c.database(db);
            hs.push(tokio::spawn(async move {
                let ids: Vec<i64> = (0..n).filter(|i| i % tasks == t).collect();
                for chunk in ids.chunks(1000) {
                    let cmd = if delete {
                        let deletes: Vec<Document> = chunk
                            .iter()
                            .map(|i| doc! {"q": {"_id": *i}, "limit": 1})
                            .collect();
                        doc! {"delete": "docs", "deletes": deletes}
                    } else {
                        let updates: Vec<Document> = chunk
                            .iter()
                            .map(|i| {
                                let mut d = document(*i);
                                d.insert("replaced", true);
                                doc! {"q": {"_id": *i}, "u": d, "upsert": true}
                            })
                            .collect();
                        doc! {"update": "docs", "updates": updates}
                    };
                    let r = db.run_command(cmd).await.expect("write");
                    assert!(!r.contains_key("writeErrors"), "{r}");
                }
            }));
        }
        for h in hs {
            h.await.expect("task");
        }
        times.push(started.elapsed());
    }
    (times[0], times[1])
}

/// What the events put through the sink do.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// Copy events (positions without a resume token): the insert path.
    Copy,
    /// Change events replacing each document (replace with upsert).
    Replace,
    /// Change events deleting each document.
    Delete,
}

/// Events sharded as the tailer shards them, sequences after `after`.
fn events(db: &str, n: i64, span: ShardSpan, kind: Kind, after: &[u64]) -> Vec<Vec<Event>> {
    let ns = Namespace::new(db, "docs");
    let mut per: Vec<Vec<Event>> = vec![Vec::new(); span.count as usize];
    for i in 0..n {
        let k = key::encode(&ns, RawBsonRef::Int64(i));
        let shard = span.shard_for(&k);
        let list = &mut per[shard.0 as usize];
        let op = match kind {
            Kind::Delete => Op::Delete {
                meta: StoreMeta::Mongo {
                    db: db.into(),
                    collection: "docs".into(),
                },
            },
            Kind::Copy | Kind::Replace => {
                let mut d = document(i);
                if kind == Kind::Replace {
                    d.insert("replaced", true);
                }
                let raw = RawDocumentBuf::from_document(&d).expect("bson");
                Op::Put {
                    value: Value::Plain(raw.into_bytes()),
                    meta: StoreMeta::Mongo {
                        db: db.into(),
                        collection: "docs".into(),
                    },
                }
            }
        };
        list.push(Event {
            shard,
            seq: after[shard.0 as usize] + list.len() as u64 + 1,
            position: if kind == Kind::Copy {
                Position::at(1)
            } else {
                Position::with_token(2, vec![1])
            },
            key: k,
            op,
            source_ts_ms: 0,
            capture_ts_ms: 0,
        });
    }
    per
}

/// Applies the events of every shard, one task per shard, 1000 per apply.
async fn apply_all(sink: &Arc<MongoSink>, per: Vec<Vec<Event>>) -> Duration {
    let started = Instant::now();
    let mut hs = Vec::new();
    for (s, events) in per.into_iter().enumerate() {
        let sink = Arc::clone(sink);
        hs.push(tokio::spawn(async move {
            for batch in events.chunks(1000) {
                let last = batch.last().map_or(0, |e| e.seq);
                let got = sink.apply(ShardId(s as u32), batch).await.expect("apply");
                assert_eq!(got, last);
            }
        }));
    }
    for h in hs {
        h.await.expect("task");
    }
    started.elapsed()
}

/// The sink's three phases into database `db`: (copy, replace, delete).
async fn through_sink(uri: &str, db: &str, n: i64, shards: u32) -> (Duration, Duration, Duration) {
    let store = MongoStore::connect(&StoreUrl::parse(uri).unwrap())
        .await
        .expect("connect");
    // FERRY_BENCH_MONGO_TRANSACTIONS=off: the sink's mode without
    // transactions (writes, then the checkpoint with a version filter).
    let transactions = if std::env::var("FERRY_BENCH_MONGO_TRANSACTIONS").as_deref() == Ok("off") {
        TransactionMode::Off
    } else {
        TransactionMode::Auto
    };
    let opts = SinkOptions {
        journal_id: Some(db.to_string()),
        transactions,
        ..SinkOptions::default()
    };
    let sink = Arc::new(MongoSink::new(store, format!("bench-{db}"), opts));
    sink.startup().await.expect("startup");
    let span = ShardSpan::all(shards);
    let mut after = vec![0u64; shards as usize];
    let mut times = Vec::new();
    for kind in [Kind::Copy, Kind::Replace, Kind::Delete] {
        let per = events(db, n, span, kind, &after);
        for (s, list) in per.iter().enumerate() {
            after[s] += list.len() as u64;
        }
        times.push(apply_all(&sink, per).await);
        let want = if kind == Kind::Delete { 0 } else { n as u64 };
        assert_eq!(count(uri, db).await, want);
        if kind == Kind::Replace {
            let c = mongodb::Client::with_uri_str(uri).await.expect("connect");
            let replaced = c
                .database(db)
                .collection::<Document>("docs")
                .count_documents(doc! {"replaced": true})
                .await
                .expect("count");
            assert_eq!(replaced, n as u64);
        }
    }
    (times[0], times[1], times[2])
}

async fn count(uri: &str, db: &str) -> u64 {
    let c = mongodb::Client::with_uri_str(uri).await.expect("connect");
    c.database(db)
        .collection::<Document>("docs")
        .count_documents(doc! {})
        .await
        .expect("count")
}

/// The whole copy pipeline; returns (documents applied, elapsed).
async fn copy(src: &Server, dst: &Server, n: i64, shards: u32) -> (u64, Duration) {
    let c = mongodb::Client::with_uri_str(src.uri())
        .await
        .expect("connect");
    let coll = c.database("app").collection::<Document>("docs");
    let mut i = 0;
    while i < n {
        let end = (i + 5000).min(n);
        coll.insert_many((i..end).map(document))
            .await
            .expect("load");
        i = end;
    }
    let source = MongoStore::connect(&StoreUrl::parse(&src.uri()).unwrap())
        .await
        .expect("source");
    let target = MongoStore::connect(&StoreUrl::parse(&dst.uri()).unwrap())
        .await
        .expect("target");
    let dir = tempfile::tempdir().expect("tmp");
    let journal = Arc::new(
        RocksJournal::open(dir.path(), OpenMode::Create, PersistPolicy::Never).expect("journal"),
    );
    let lag = Arc::new(LagTracker::new());
    let (stop, shutdown) = Shutdown::new();
    let span = ShardSpan::all(shards);
    let started = Instant::now();
    let tailer = MongoTailer::new(source.clone(), "src".into(), span, TailerOptions::default());
    let t = tokio::spawn(tailer.run(Arc::clone(&journal), Arc::clone(&lag), shutdown.clone()));
    let sink = Arc::new(MongoSink::new(target, "tgt".into(), SinkOptions::default()));
    sink.startup().await.expect("startup");
    let ws: Vec<_> = span
        .iter()
        .map(|s| {
            tokio::spawn(worker::run(
                Arc::clone(&journal),
                Arc::clone(&sink),
                s,
                Arc::clone(&lag),
                None,
                WorkerConfig::default(),
                shutdown.clone(),
            ))
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(3600);
    loop {
        let done = lag.snapshot().all_streaming()
            && span.iter().all(|s| {
                let last = journal.bounds(s).unwrap().map_or(0, |b| b.last);
                journal.applied("tgt", s).unwrap().unwrap_or(0) >= last
            });
        if done || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let elapsed = started.elapsed();
    stop.send(true).expect("stop");
    for w in ws {
        w.await.expect("worker").expect("worker ok");
    }
    t.await.expect("tailer").expect("tailer ok");
    (count(&dst.uri(), "app").await, elapsed)
}

/// The server the bench runs against.
enum Server {
    Mongod(Mongod),
    Secantus(MongoWire),
}

impl Server {
    fn start() -> Server {
        if std::env::var("FERRY_BENCH_MONGO_SERVER").as_deref() == Ok("secantusdb") {
            Server::Secantus(MongoWire::start().expect("SecantusDB (deploy/local/install.sh)"))
        } else {
            Server::Mongod(Mongod::start().expect("mongod (deploy/local/install.sh)"))
        }
    }

    fn uri(&self) -> String {
        match self {
            Server::Mongod(m) => m.uri(),
            Server::Secantus(m) => m.uri(),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Server::Mongod(_) => "mongod 7.0.15 (wine)",
            Server::Secantus(_) => "SecantusDB",
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n = env_u64("FERRY_BENCH_MONGO_DOCS", 100_000) as i64;
    let copy_n = env_u64("FERRY_BENCH_MONGO_COPY_DOCS", 1_000_000) as i64;
    let shards = env_u64("FERRY_BENCH_MONGO_SHARDS", 4) as u32;
    let dst = Server::start();
    let uri = dst.uri();

    // Rounds alternate the ceiling and Ferry on one server and the median
    // of each figure is reported: other work on a two-core machine moves
    // single runs by a third.
    let rounds = env_u64("FERRY_BENCH_MONGO_ROUNDS", 3).max(1);
    let mut runs: Vec<[Duration; 6]> = Vec::new();
    for round in 0..rounds {
        let (dd, sd) = (format!("direct{round}"), format!("sink{round}"));
        let d = direct(&uri, &dd, n, i64::from(shards)).await;
        assert_eq!(count(&uri, &dd).await, n as u64);
        let (dr, dx) = direct_changes(&uri, &dd, n, i64::from(shards)).await;
        assert_eq!(count(&uri, &dd).await, 0);
        let (c, r, x) = through_sink(&uri, &sd, n, shards).await;
        runs.push([d, dr, dx, c, r, x]);
    }
    let median = |k: usize| {
        let mut v: Vec<Duration> = runs.iter().map(|r| r[k]).collect();
        v.sort();
        rate(n as u64, v[v.len() / 2])
    };
    let (rd, rr, rx) = (median(0), median(1), median(2));
    println!(
        "apply, {n} documents, {shards} concurrent tasks, {} target, median of {rounds} rounds:",
        dst.name()
    );
    println!("  ceiling: direct insert_many          {rd:>9.0} docs/s");
    println!("  direct update (replace, upsert)      {rr:>9.0} docs/s");
    println!("  direct delete                        {rx:>9.0} docs/s");
    for (what, k, same) in [
        ("MongoSink, copy events (inserts)", 3, rd),
        ("MongoSink, change events: replace", 4, rr),
        ("MongoSink, change events: delete", 5, rx),
    ] {
        let v = median(k);
        println!(
            "  {what:<36} {v:>9.0} docs/s  ratio {:.2} to insert_many, {:.2} to the same direct writes",
            v / rd,
            v / same
        );
    }
    drop(dst);

    let src = Server::start();
    let dst = Server::start();
    let ceiling = direct(&dst.uri(), "ceiling", copy_n, i64::from(shards)).await;
    mongodb::Client::with_uri_str(dst.uri())
        .await
        .expect("connect")
        .database("ceiling")
        .drop()
        .await
        .expect("drop");
    let before = peak_rss_bytes();
    let (applied, took) = copy(&src, &dst, copy_n, shards).await;
    assert_eq!(applied, copy_n as u64);
    let rc = rate(copy_n as u64, ceiling);
    println!(
        "copy phase of {copy_n} documents (tailer, RocksDB journal, {shards} workers, sink; {} source and target): {:.1} s, {:.0} docs/s, ratio {:.2} to the target's ceiling for as many documents ({rc:.0} docs/s); peak RSS of this process {:.0} MiB (before the copy {:.0} MiB)",
        src.name(),
        took.as_secs_f64(),
        rate(applied, took),
        rate(applied, took) / rc,
        mib(peak_rss_bytes()),
        mib(before)
    );
}
