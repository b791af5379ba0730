//! Kafka benchmark: etcd to Kafka, on a real broker (tansu, memory
//! storage), one run.
//!
//! 1. Publishing rate. The journal already holds a snapshot of `N` etcd
//!    keys of 256 B (the etcd tailer took it first); the replay workers then
//!    publish it through the Kafka connector's sink, the agent's own path
//!    (`ferry_stores::registry`, one worker per shard, one partition per
//!    shard). The ceiling: the same number of records, of the same key and
//!    value sizes and the same four headers, produced directly by an rdkafka
//!    producer with the same settings (idempotent, `acks=all`, gapless, same
//!    linger) to the same partitions, all in flight at once. Both timed to the last delivery.
//! 2. End-to-end lag while streaming: a source put (its value holds the
//!    put's time) to the record being readable by a plain consumer, p50 and
//!    p99, at a steady write rate.
//!
//! Run: `cargo bench -p ferry-benches --bench kafka`
//! Env: `FERRY_BENCH_KAFKA_KEYS` (50000), `FERRY_BENCH_KAFKA_SHARDS` (4),
//!      `FERRY_BENCH_KAFKA_LAG_PUTS` (2000).

use etcd_client::{Client, Txn, TxnOp};
use ferry_connect::{Options, SinkContext, Source, TailContext, Target, Unmapped};
use ferry_core::{ShardSpan, StoreUrl};
use ferry_journal::seal::SealKey;
use ferry_journal::{PersistPolicy, SharedJournal};
use ferry_journal_rocks::{OpenMode, RocksJournal};
use ferry_lag::{LagTracker, Phase};
use ferry_replay::{worker, Shutdown, WorkerConfig};
use ferry_testkit::{Etcd, Kafka};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

async fn load(ep: &str, n: u64) {
    let mut c = Client::connect([ep], None).await.expect("connect");
    let mut i = 0;
    while i < n {
        let ops: Vec<TxnOp> = (i..(i + 128).min(n))
            .map(|k| TxnOp::put(format!("bench/key-{k:08}"), vec![b'v'; 256], None))
            .collect();
        i += ops.len() as u64;
        c.txn(Txn::new().and_then(ops)).await.expect("load");
    }
}

/// The same records produced directly: `n` records of Ferry's key and
/// value sizes, spread over `shards` partitions.
async fn direct(
    kafka: &Kafka,
    topic: &str,
    n: u64,
    shards: u32,
    key: usize,
    value: usize,
) -> Duration {
    ferry_kafka::connector::ensure_topic(&kafka.bootstrap(), topic, shards)
        .await
        .unwrap();
    let p = ferry_kafka::producer(&kafka.bootstrap()).unwrap();
    let (k, v) = (vec![b'k'; key], vec![b'v'; value]);
    let t0 = Instant::now();
    let mut pending = Vec::with_capacity(n as usize);
    for i in 0..n {
        // The same four headers Ferry sets.
        let (shard, seq) = ((i % u64::from(shards)).to_string(), i.to_string());
        let h = OwnedHeaders::new()
            .insert(Header {
                key: ferry_kafka::HEADER_SHARD,
                value: Some(shard.as_bytes()),
            })
            .insert(Header {
                key: ferry_kafka::HEADER_SEQ,
                value: Some(seq.as_bytes()),
            })
            .insert(Header {
                key: ferry_kafka::HEADER_JOURNAL,
                value: Some("bench".as_bytes()),
            })
            .insert(Header {
                key: ferry_kafka::HEADER_SNAPSHOT,
                value: Some("true".as_bytes()),
            });
        let r: FutureRecord<'_, Vec<u8>, Vec<u8>> = FutureRecord::to(topic)
            .partition((i % u64::from(shards)) as i32)
            .key(&k)
            .payload(&v)
            .headers(h);
        pending.push(p.send_result(r).map_err(|(e, _)| e).expect("queue"));
    }
    for f in pending {
        f.await.unwrap().map_err(|(e, _)| e).unwrap();
    }
    t0.elapsed()
}

/// CPU seconds (user + system) a process has used so far, from
/// `/proc/<pid>/stat`; `None` for this process.
fn cpu_s(pid: Option<u32>) -> f64 {
    let path = pid.map_or("/proc/self/stat".to_string(), |p| format!("/proc/{p}/stat"));
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime and
    // stime are the 12th and 13th after its closing parenthesis.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|x| x.parse().ok())
        .collect();
    let hz = 100.0; // USER_HZ on Linux
    f.iter().sum::<f64>() / hz
}

/// CPU seconds of (this process, the broker) spent in `f`.
async fn cpu_of<T>(kafka: &Kafka, f: impl std::future::Future<Output = T>) -> (T, f64, f64) {
    let (me, broker) = (cpu_s(None), cpu_s(kafka.pid()));
    let out = f.await;
    (out, cpu_s(None) - me, cpu_s(kafka.pid()) - broker)
}

fn caught_up(lag: &LagTracker, target: &str) -> bool {
    lag.snapshot().shards.iter().all(|sh| {
        sh.phase == Phase::Streaming
            && sh
                .targets
                .get(target)
                .is_some_and(|t| t.applied_seq >= sh.journaled_seq)
    })
}

struct Run {
    /// The sink's start (tail reads), before publishing.
    start: Duration,
    apply: Duration,
    /// CPU seconds of (this process, the broker) while publishing.
    cpu: (f64, f64),
    lag_us: Vec<u64>,
    record: (usize, usize),
}

async fn ferry(etcd: &Etcd, kafka: &Kafka, topic: &str, shards: u32, lag_puts: u64) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let journal = Arc::new(
        RocksJournal::open(dir.path(), OpenMode::Create, PersistPolicy::EveryBatch).unwrap(),
    );
    let seal = Arc::new(SealKey::load_or_create(&dir.path().join("journal.key")).unwrap());
    let registry = ferry_stores::registry();
    let source: Arc<dyn Source> = registry
        .source(&StoreUrl::parse(&etcd.url("bench")).unwrap())
        .unwrap();
    let target: Arc<dyn Target> = registry
        .target(&StoreUrl::parse(&kafka.url(topic)).unwrap())
        .unwrap();
    source.connect().await.unwrap();
    target.connect().await.unwrap();
    let span = ShardSpan::all(shards);
    let lag = Arc::new(LagTracker::new());
    let (stop, shutdown) = Shutdown::new();
    let tailing = source
        .tail(&TailContext {
            span,
            options: Options::default(),
            seal: Arc::clone(&seal),
            with_keys: false,
        })
        .unwrap();
    let name = target.url().to_string();
    let unmapped = Arc::new(Unmapped::default());
    let sink = Arc::new(ferry_agent::sinks::TargetSink::new(
        target
            .sink(&SinkContext {
                source: &source,
                shared: tailing.shared.as_ref(),
                span,
                journal_id: "bench",
                resumed: false,
                unmapped: &unmapped,
            })
            .unwrap(),
        Arc::clone(&seal),
        None,
    ));
    ferry_replay::Sink::startup(sink.as_ref()).await.unwrap();
    for shard in span.iter() {
        lag.register(shard, 0, &[(name.clone(), 0)]);
    }
    let tail = {
        let (j, l, s) = (
            Arc::new(SharedJournal::new(Arc::clone(&journal))),
            Arc::clone(&lag),
            shutdown.clone(),
        );
        let t = tailing.tailer;
        tokio::spawn(async move { t.run(j, l, s).await })
    };
    let deadline = Instant::now() + Duration::from_secs(600);
    while !lag
        .snapshot()
        .shards
        .iter()
        .all(|s| s.phase == Phase::Streaming)
    {
        assert!(
            Instant::now() < deadline,
            "the snapshot took over 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The sink's start: each partition's tail read, once its end settled
    // (see ferry_kafka::sink), timed apart from the publishing.
    let s0 = Instant::now();
    let mut starts = Vec::new();
    for shard in span.iter() {
        let k = Arc::clone(&sink);
        starts.push(tokio::spawn(async move {
            ferry_replay::Sink::durable_checkpoint(k.as_ref(), shard).await
        }));
    }
    for st in starts {
        st.await.unwrap().unwrap();
    }
    let start = s0.elapsed();
    let t0 = Instant::now();
    let cpu0 = (cpu_s(None), cpu_s(kafka.pid()));
    let mut workers = Vec::new();
    for shard in span.iter() {
        let (j, k, l, s) = (
            Arc::clone(&journal),
            Arc::clone(&sink),
            Arc::clone(&lag),
            shutdown.clone(),
        );
        workers.push(tokio::spawn(async move {
            worker::run(j, k, shard, l, None, worker_config(), s).await
        }));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    while !caught_up(&lag, &name) {
        assert!(Instant::now() < deadline, "publishing took over 10 minutes");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let apply = t0.elapsed();
    let cpu = (cpu_s(None) - cpu0.0, cpu_s(kafka.pid()) - cpu0.1);

    // One record's sizes, from the topic itself.
    let c: BaseConsumer = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", kafka.bootstrap())
        .set("group.id", "bench")
        .set("enable.auto.commit", "false")
        // A consumer that wants changes fast asks for them often (the
        // default waits up to 500 ms for a fetch to fill).
        .set("fetch.wait.max.ms", "10")
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..shards as i32 {
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Offset(0))
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut record = (0, 0);
    while record == (0, 0) {
        if let Some(Ok(m)) = c.poll(Duration::from_secs(5)) {
            record = (
                m.key().map_or(0, <[u8]>::len),
                m.payload().map_or(0, <[u8]>::len),
            );
        }
    }
    // Lag: puts carrying their time, read back by the consumer from the end.
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..shards as i32 {
        let tail =
            ferry_kafka::tail::read(&kafka.bootstrap(), topic, p, Duration::from_secs(30)).unwrap();
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Offset(tail.end))
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let ep = etcd.endpoint();
    let writer = tokio::spawn(async move {
        let mut cl = Client::connect([ep.as_str()], None).await.unwrap();
        for i in 0..lag_puts {
            cl.put(
                format!("bench/lag-{:04}", i % 1000),
                format!("t={}", now_us()),
                None,
            )
            .await
            .unwrap();
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    let mut lag_us = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    let c = tokio::task::spawn_blocking(move || {
        while (lag_us.len() as u64) < lag_puts && Instant::now() < deadline {
            if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
                let v: serde_json::Value =
                    serde_json::from_slice(m.payload().unwrap_or(b"null")).unwrap_or_default();
                if let Some(t) = v["after"]["value"]
                    .as_str()
                    .and_then(|s| s.strip_prefix("t="))
                {
                    lag_us.push(now_us().saturating_sub(t.parse().unwrap()));
                }
            }
        }
        lag_us
    });
    writer.await.unwrap();
    let mut lag_us = c.await.unwrap();
    lag_us.sort_unstable();
    let _ = stop.send(true);
    for w in workers {
        w.await.unwrap().unwrap();
    }
    tail.await.unwrap().unwrap();
    Run {
        start,
        apply,
        cpu,
        lag_us,
        record,
    }
}

fn main() {
    let keys = env_u64("FERRY_BENCH_KAFKA_KEYS", 50_000);
    let shards = env_u64("FERRY_BENCH_KAFKA_SHARDS", 4) as u32;
    let lag_puts = env_u64("FERRY_BENCH_KAFKA_LAG_PUTS", 2_000);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let etcd = Etcd::start().expect("etcd");
    let kafka = Kafka::start().expect("tansu");
    rt.block_on(async {
        load(&etcd.endpoint(), keys).await;
        let run = ferry(&etcd, &kafka, "ferry", shards, lag_puts).await;
        let (k, v) = run.record;
        let (d1, c1, b1) = cpu_of(&kafka, direct(&kafka, "direct1", keys, shards, k, v)).await;
        let (d2, c2, b2) = cpu_of(&kafka, direct(&kafka, "direct2", keys, shards, k, v)).await;
        let ceiling = d1.min(d2);
        let per_s = |d: Duration| keys as f64 / d.as_secs_f64();
        let pct = |q: f64| {
            let l = &run.lag_us;
            if l.is_empty() {
                return f64::NAN;
            }
            l[((l.len() - 1) as f64 * q) as usize] as f64 / 1000.0
        };
        println!("etcd to Kafka: {keys} keys of 256 B, {shards} shards / partitions, tansu (memory) on loopback; records of {k} B key + {v} B value");
        println!("  broker ceiling (rdkafka producer, same settings): {:>8.0} records/s (runs {d1:?}, {d2:?})", per_s(ceiling));
        println!("  ferry publishing (journal to topic):             {:>8.0} records/s = {:.2}x the ceiling", per_s(run.apply), ceiling.as_secs_f64() / run.apply.as_secs_f64());
        println!("  ferry's start before it (every partition's tail read once its end settled): {:?}; with it: {:.2}x", run.start, ceiling.as_secs_f64() / (run.apply + run.start).as_secs_f64());
        let us = |cpu: f64| cpu * 1e6 / keys as f64;
        println!("  CPU per record, producer process / broker: direct {:.1} / {:.1} us and {:.1} / {:.1} us; ferry {:.1} / {:.1} us", us(c1), us(b1), us(c2), us(b2), us(run.cpu.0), us(run.cpu.1));
        println!("  end-to-end lag, source put to readable record ({} puts at ~400/s): p50 {:.1} ms, p99 {:.1} ms", run.lag_us.len(), pct(0.5), pct(0.99));
    });
}

fn worker_config() -> WorkerConfig {
    let mut c = WorkerConfig::default();
    if let Some(n) = std::env::var("FERRY_BENCH_KAFKA_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        c.budget.max_events = n;
    }
    c
}
