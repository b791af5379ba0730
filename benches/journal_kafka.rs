//! Journal append rate: the Kafka journal against the RocksDB journal and
//! against the broker's own ceiling, in one process, one run.
//!
//! The same `N` events (keys of about 20 B, values of 256 B) in batches of
//! `B` events over 4 shards, each batch with a source checkpoint:
//!
//! 1. RocksDB journal, fsync'd every batch (the embedded default).
//! 2. Kafka journal on tansu (memory storage, loopback): each append is its
//!    events, acknowledged, then its commit record, acknowledged, then read
//!    back by the handle's follower (see `ferry_journal_kafka`).
//! 3. The ceiling: the same frames produced straight to the same
//!    partitions by an rdkafka producer with the journal's settings
//!    (idempotent, `acks=all`), all in flight at once, timed to the last
//!    delivery; no commit records, no read back.
//!
//! Run: `cargo bench -p ferry-benches --bench journal_kafka`
//! Env: `FERRY_BENCH_JOURNAL_EVENTS` (100000), `FERRY_BENCH_JOURNAL_BATCH` (500),
//! `FERRY_BENCH_KAFKA_STORAGE` (`memory`, or `s3` for tansu's durable
//! storage on moto, as the scale-out tests run it). Small batches
//! (`FERRY_BENCH_JOURNAL_BATCH=1`) give one append's latency, the cost of
//! each journal write inside a cutover's read-only window.

use ferry_core::{Event, Op, Position, ShardId, StoreMeta, Value};
use ferry_journal::{AppendBatch, Journal, PersistPolicy, ShardAppend, SourceCheckpoint};
use ferry_journal_kafka::{JournalUrl, KafkaJournal, Role};
use ferry_journal_rocks::{OpenMode, RocksJournal};
use ferry_testkit::Kafka;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use std::time::{Duration, Instant};

const SHARDS: u32 = 4;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn event(i: u64) -> Event {
    Event {
        shard: ShardId((i % SHARDS as u64) as u32),
        seq: 0,
        position: Position::at(i + 1),
        key: format!("bench/key-{i:08}").into_bytes(),
        op: Op::Put {
            value: Value::Plain(vec![b'v'; 256]),
            meta: StoreMeta::None,
        },
        source_ts_ms: 0,
        capture_ts_ms: 0,
    }
}

/// The batches: `n` events, `b` per batch, each shard's part numbered on.
fn batches(n: u64, b: u64) -> Vec<AppendBatch> {
    let mut next = [1u64; SHARDS as usize];
    let mut out = Vec::new();
    let mut i = 0;
    while i < n {
        let end = (i + b).min(n);
        let mut parts: Vec<Vec<Event>> = vec![Vec::new(); SHARDS as usize];
        for k in i..end {
            let e = event(k);
            parts[e.shard.0 as usize].push(e);
        }
        let shards = parts
            .into_iter()
            .enumerate()
            .filter(|(_, p)| !p.is_empty())
            .map(|(s, events)| {
                let first_seq = next[s];
                next[s] += events.len() as u64;
                ShardAppend {
                    shard: ShardId(s as u32),
                    first_seq,
                    events,
                }
            })
            .collect();
        out.push(AppendBatch {
            shards,
            checkpoint: Some(SourceCheckpoint {
                source: "bench".into(),
                position: Position::at(end),
            }),
        });
        i = end;
    }
    out
}

async fn append_all(j: &impl Journal, batches: Vec<AppendBatch>) -> Duration {
    let t0 = Instant::now();
    for b in batches {
        j.append(b).await.expect("append");
    }
    t0.elapsed()
}

fn main() {
    let n = env_u64("FERRY_BENCH_JOURNAL_EVENTS", 100_000);
    let b = env_u64("FERRY_BENCH_JOURNAL_BATCH", 500);
    let durable = std::env::var("FERRY_BENCH_KAFKA_STORAGE").is_ok_and(|s| s == "s3");
    let kafka = if durable {
        Kafka::start_durable()
    } else {
        Kafka::start()
    }
    .expect("tansu (install with deploy/local/install.sh)");
    let storage = if durable { "s3 on moto" } else { "memory" };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let rate = |d: Duration| n as f64 / d.as_secs_f64();

    let dir = tempfile::tempdir().unwrap();
    let rocks = RocksJournal::open(dir.path(), OpenMode::Create, PersistPolicy::EveryBatch)
        .expect("rocksdb journal");
    let t_rocks = rt.block_on(append_all(&rocks, batches(n, b)));
    drop(rocks);

    let url = JournalUrl {
        bootstrap: kafka.bootstrap(),
        name: "bench-journal".into(),
    };
    let kj = rt
        .block_on(KafkaJournal::open(&url, SHARDS, Role::Writer(None)))
        .expect("kafka journal");
    let t_kafka = rt.block_on(append_all(&kj, batches(n, b)));
    drop(kj);

    // The ceiling: the same frames, straight to a topic of the same shape.
    let t_raw = rt.block_on(async {
        ferry_kafka::connector::ensure_topic(&kafka.bootstrap(), "bench-raw", SHARDS + 1)
            .await
            .unwrap();
        let p: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", kafka.bootstrap())
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "1")
            .set("queue.buffering.max.messages", "1000000")
            .create()
            .unwrap();
        let frames: Vec<(i32, Vec<u8>)> = (0..n)
            .map(|i| {
                let e = event(i);
                (e.shard.0 as i32 + 1, ferry_journal::encode_frame(&e))
            })
            .collect();
        let t0 = Instant::now();
        let mut pending = Vec::with_capacity(frames.len());
        for (part, f) in &frames {
            let r: FutureRecord<'_, [u8], [u8]> =
                FutureRecord::to("bench-raw").partition(*part).payload(f);
            pending.push(p.send_result(r).map_err(|(e, _)| e).unwrap());
        }
        for f in pending {
            f.await.unwrap().map_err(|(e, _)| e).unwrap();
        }
        t0.elapsed()
    });

    println!("journal append, {n} events of 256 B in batches of {b} over {SHARDS} shards:");
    println!(
        "  rocksdb journal (fsync per batch):  {:>9.0} events/s ({:.2} s)",
        rate(t_rocks),
        t_rocks.as_secs_f64()
    );
    println!(
        "  kafka journal (tansu, {storage}): {:>9.0} events/s ({:.2} s), {:.2}x the rocksdb journal",
        rate(t_kafka),
        t_kafka.as_secs_f64(),
        t_rocks.as_secs_f64() / t_kafka.as_secs_f64()
    );
    println!(
        "  broker ceiling (raw produce):       {:>9.0} events/s ({:.2} s); the kafka journal reaches {:.0}% of it",
        rate(t_raw),
        t_raw.as_secs_f64(),
        100.0 * t_raw.as_secs_f64() / t_kafka.as_secs_f64()
    );
    println!(
        "  per append (batch of {b}): kafka journal {:.1} ms, rocksdb journal {:.1} ms",
        t_kafka.as_secs_f64() * 1000.0 / (n as f64 / b as f64),
        t_rocks.as_secs_f64() * 1000.0 / (n as f64 / b as f64)
    );
}
