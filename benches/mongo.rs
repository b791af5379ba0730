//! MongoDB benchmark, one run (SPEC section 10), against SecantusDB:
//!
//! 1. Apply rate: the same documents applied by `MongoSink` (journal-shaped
//!    batches of 1000 events, one task per shard) versus bulk-inserted
//!    directly with the same driver (`insert_many` of 1000, the same number
//!    of concurrent tasks), into one target server, in the same process.
//!    Printed as a ratio (goal ≥ 0.8). Measured twice: copy events (the
//!    sink's insert path) and change events (replace-with-upsert).
//! 2. Peak memory of a whole copy: tailer → RocksDB journal → replay
//!    workers → sink, from a source holding `FERRY_BENCH_MONGO_COPY_DOCS`
//!    documents; peak RSS of this process (VmHWM; the servers are other
//!    processes), goal < 300 MB for 1,000,000 documents.
//!
//! Run: `cargo bench -p ferry-benches --bench mongo`
//! Env: `FERRY_BENCH_MONGO_DOCS` (100000, part 1), `FERRY_BENCH_MONGO_COPY_DOCS`
//!      (1000000, part 2), `FERRY_BENCH_MONGO_SHARDS` (4).

use ferry_benches::{mib, peak_rss_bytes, rate};
use ferry_core::{Event, Op, Position, ShardId, ShardSpan, StoreMeta, StoreUrl, Value};
use ferry_journal::{Journal, PersistPolicy};
use ferry_journal_rocks::{OpenMode, RocksJournal};
use ferry_lag::LagTracker;
use ferry_mongo::{key, MongoSink, MongoStore, MongoTailer, Namespace, SinkOptions, TailerOptions};
use ferry_replay::worker::{self, Shutdown, WorkerConfig};
use ferry_replay::Sink;
use ferry_testkit::MongoWire;
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
async fn direct(uri: &str, n: i64, tasks: i64) -> Duration {
    let c = mongodb::Client::with_uri_str(uri).await.expect("connect");
    let coll = c.database("direct").collection::<Document>("docs");
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

/// The sink: events sharded as the tailer shards them, 1000 per apply.
async fn through_sink(uri: &str, db: &str, n: i64, shards: u32, snapshot: bool) -> Duration {
    let store = MongoStore::connect(&StoreUrl::parse(uri).unwrap())
        .await
        .expect("connect");
    let opts = SinkOptions {
        journal_id: Some(db.to_string()),
        ..SinkOptions::default()
    };
    let sink = Arc::new(MongoSink::new(store, format!("bench-{db}"), opts));
    sink.startup().await.expect("startup");
    let span = ShardSpan::all(shards);
    let ns = Namespace::new(db, "docs");
    let mut per: Vec<Vec<Event>> = vec![Vec::new(); shards as usize];
    for i in 0..n {
        let k = key::encode(&ns, RawBsonRef::Int64(i));
        let shard = span.shard_for(&k);
        let raw = RawDocumentBuf::from_document(&document(i)).expect("bson");
        let list = &mut per[shard.0 as usize];
        list.push(Event {
            shard,
            seq: list.len() as u64 + 1,
            position: if snapshot {
                Position::at(1)
            } else {
                Position::with_token(1, vec![1])
            },
            key: k,
            op: Op::Put {
                value: Value::Plain(raw.into_bytes()),
                meta: StoreMeta::Mongo {
                    db: db.into(),
                    collection: "docs".into(),
                },
            },
            source_ts_ms: 0,
            capture_ts_ms: 0,
        });
    }
    let started = Instant::now();
    let mut hs = Vec::new();
    for (s, events) in per.into_iter().enumerate() {
        let sink = Arc::clone(&sink);
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

async fn count(uri: &str, db: &str) -> u64 {
    let c = mongodb::Client::with_uri_str(uri).await.expect("connect");
    c.database(db)
        .collection::<Document>("docs")
        .count_documents(doc! {})
        .await
        .expect("count")
}

/// The whole copy pipeline; returns (documents applied, elapsed).
async fn copy(src: &MongoWire, dst: &MongoWire, n: i64, shards: u32) -> (u64, Duration) {
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

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n = env_u64("FERRY_BENCH_MONGO_DOCS", 100_000) as i64;
    let copy_n = env_u64("FERRY_BENCH_MONGO_COPY_DOCS", 1_000_000) as i64;
    let shards = env_u64("FERRY_BENCH_MONGO_SHARDS", 4) as u32;
    let dst = MongoWire::start().expect("SecantusDB (deploy/local/install.sh)");
    let uri = dst.uri();

    let d = direct(&uri, n, i64::from(shards)).await;
    let s = through_sink(&uri, "sink_copy", n, shards, true).await;
    let u = through_sink(&uri, "sink_stream", n, shards, false).await;
    assert_eq!(count(&uri, "direct").await, n as u64);
    assert_eq!(count(&uri, "sink_copy").await, n as u64);
    assert_eq!(count(&uri, "sink_stream").await, n as u64);
    let (rd, rs, ru) = (rate(n as u64, d), rate(n as u64, s), rate(n as u64, u));
    println!("apply, {n} documents, {shards} concurrent tasks, SecantusDB target:");
    println!("  direct insert_many      {rd:>9.0} docs/s");
    println!(
        "  MongoSink, copy events  {rs:>9.0} docs/s  ratio {:.2}",
        rs / rd
    );
    println!(
        "  MongoSink, change events (upserts) {ru:>9.0} docs/s  ratio {:.2}",
        ru / rd
    );
    drop(dst);

    let src = MongoWire::start().expect("SecantusDB");
    let dst = MongoWire::start().expect("SecantusDB");
    let before = peak_rss_bytes();
    let (applied, took) = copy(&src, &dst, copy_n, shards).await;
    assert_eq!(applied, copy_n as u64);
    println!(
        "copy of {copy_n} documents (tailer, RocksDB journal, {shards} workers, sink): {:.1} s, {:.0} docs/s; peak RSS of this process {:.0} MiB (before the copy {:.0} MiB)",
        took.as_secs_f64(),
        rate(applied, took),
        mib(peak_rss_bytes()),
        mib(before)
    );
}
