//! The journal contract over the Kafka journal, on a real broker (tansu),
//! plus what only this journal has: epochs that fence a deposed writer,
//! commits that hide a half-written batch, a broker restart.

use ferry_core::{Position, ShardId};
use ferry_journal::conformance::{self, batch, Harness};
use ferry_journal::{AppendOutcome, Journal, JournalError, ReadBudget};

/// The journal's warnings (a follower that does not get where an
/// operation waits for) in the test's output.
fn trace() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("ferry_journal_kafka=warn")
        .with_test_writer()
        .try_init();
}
use ferry_journal_kafka::records::{self, Meta};
use ferry_journal_kafka::{JournalUrl, KafkaJournal, Role};
use ferry_testkit::{require, Kafka};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::time::{Duration, Instant};

const SHARDS: u32 = 4;

fn block<F: std::future::Future>(f: F) -> F::Output {
    futures::executor::block_on(f)
}

struct KafkaHarness {
    kafka: Kafka,
    rt: tokio::runtime::Runtime,
    n: usize,
    name: String,
}

impl KafkaHarness {
    fn new(kafka: Kafka) -> Self {
        KafkaHarness {
            kafka,
            rt: tokio::runtime::Runtime::new().unwrap(),
            n: 0,
            name: String::new(),
        }
    }

    fn url(&self, name: &str) -> JournalUrl {
        JournalUrl {
            bootstrap: self.kafka.bootstrap(),
            name: name.into(),
        }
    }

    fn open(&self, name: &str, role: Role) -> KafkaJournal {
        self.rt
            .block_on(KafkaJournal::open(&self.url(name), SHARDS, role))
            .unwrap()
    }
}

impl Harness for KafkaHarness {
    type J = KafkaJournal;

    fn create(&mut self) -> KafkaJournal {
        self.n += 1;
        self.name = format!("journal-{}", self.n);
        self.open(&self.name.clone(), Role::Writer(None))
    }

    fn reopen(&mut self, j: KafkaJournal) -> KafkaJournal {
        drop(j);
        self.open(&self.name.clone(), Role::Writer(None))
    }

    /// Kafka's records cannot be changed in place, so the damaged journal
    /// is a copy of the topic, record for record, with one byte of the
    /// frame of `shard`'s `seq` flipped.
    fn damage(&mut self, j: KafkaJournal, shard: ShardId, seq: u64) -> Option<KafkaJournal> {
        drop(j);
        let to = format!("{}-damaged", self.name);
        self.rt.block_on(copy_topic(
            &self.kafka.bootstrap(),
            &self.name,
            &to,
            shard.0 as i32 + 1,
            seq,
        ));
        self.name = to;
        Some(self.open(&self.name.clone(), Role::Writer(None)))
    }
}

fn consumer(bootstrap: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "conformance")
        .set("enable.partition.eof", "true")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap()
}

fn producer(bootstrap: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .create()
        .unwrap()
}

/// A record's headers (name, value).
type RawHeaders = Vec<(String, Vec<u8>)>;

/// Every record of `topic`'s partition `p`: (headers, payload).
fn records_of(bootstrap: &str, topic: &str, p: i32) -> Vec<(RawHeaders, Vec<u8>)> {
    let c = consumer(bootstrap);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, p, Offset::Beginning)
        .unwrap();
    c.assign(&tpl).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut out = Vec::new();
    while Instant::now() < deadline {
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => out.push((
                m.headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                            .collect()
                    })
                    .unwrap_or_default(),
                m.payload().unwrap_or_default().to_vec(),
            )),
            Some(Err(KafkaError::PartitionEOF(_))) => return out,
            _ => {}
        }
    }
    panic!("reading {topic}/{p} to its end took over 30 s");
}

async fn send(
    p: &FutureProducer,
    topic: &str,
    partition: i32,
    headers: &[(String, Vec<u8>)],
    payload: &[u8],
) {
    let mut h = OwnedHeaders::new();
    for (k, v) in headers {
        h = h.insert(Header {
            key: k,
            value: Some(v),
        });
    }
    let r: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic)
        .partition(partition)
        .payload(payload)
        .headers(h);
    p.send(r, Duration::from_secs(10)).await.unwrap();
}

async fn copy_topic(bootstrap: &str, from: &str, to: &str, partition: i32, seq: u64) {
    ferry_kafka::connector::ensure_topic(bootstrap, to, SHARDS + 1)
        .await
        .unwrap();
    let p = producer(bootstrap);
    let mut flipped = false;
    for part in 0..=SHARDS as i32 {
        let (b, f) = (bootstrap.to_string(), from.to_string());
        let recs = tokio::task::spawn_blocking(move || records_of(&b, &f, part))
            .await
            .unwrap();
        for (headers, mut payload) in recs {
            let this_seq = headers
                .iter()
                .find(|(k, _)| k == records::HEADER_SEQ)
                .and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse::<u64>().ok());
            if part == partition && this_seq == Some(seq) {
                let mid = payload.len() / 2;
                payload[mid] ^= 0x40;
                flipped = true;
            }
            send(&p, to, part, &headers, &payload).await;
        }
    }
    assert!(
        flipped,
        "no record of sequence {seq} in partition {partition}"
    );
}

#[test]
fn the_kafka_journal_keeps_the_journal_contract() {
    let Some(k) = require(Kafka::start()) else {
        return;
    };
    let mut h = KafkaHarness::new(k);
    conformance::run_all(&mut h);
}

#[test]
fn the_kafka_journal_answers_as_the_model_does_through_random_operations_and_crashes() {
    let Some(k) = require(Kafka::start()) else {
        return;
    };
    let mut h = KafkaHarness::new(k);
    for seed in [7, 1913] {
        conformance::model_based(&mut h, seed, 250);
    }
}

#[test]
fn a_deposed_writer_appends_nothing_and_is_told_so() {
    let Some(k) = require(Kafka::start()) else {
        return;
    };
    let h = KafkaHarness::new(k);
    let old = h.open("fenced", Role::Writer(Some(5)));
    assert_eq!(old.epoch(), 5);
    block(old.append(batch(0, 1, 3, Some(3)))).unwrap();
    // A second writer takes over with a higher epoch; a lower one is refused.
    let new = h.open("fenced", Role::Writer(Some(6)));
    assert!(matches!(
        h.rt.block_on(KafkaJournal::open(
            &h.url("fenced"),
            SHARDS,
            Role::Writer(Some(6))
        )),
        Err(JournalError::Fenced { mine: 6, by: 6 })
    ));
    assert!(
        matches!(
            block(old.append(batch(0, 4, 2, Some(5)))),
            Err(JournalError::Fenced { mine: 5, by: 6 })
        ),
        "the deposed writer is told"
    );
    // Its produce requests still in flight land after the new epoch's
    // marker: records and a commit of epoch 5, sent straight to the broker.
    let p = producer(&h.kafka.bootstrap());
    let frame = ferry_journal::encode_frame(&{
        let mut e = conformance::event(0, 4);
        e.seq = 4;
        e
    });
    h.rt.block_on(async {
        send(
            &p,
            "fenced",
            1,
            &[
                (records::HEADER_EPOCH.into(), b"5".to_vec()),
                (records::HEADER_SEQ.into(), b"4".to_vec()),
            ],
            &frame,
        )
        .await;
        let commit = Meta::Commit {
            epoch: 5,
            shards: vec![(0, 4)],
            checkpoint: Some(("src".into(), Position::at(99))),
        };
        send(&p, "fenced", 0, &[], &serde_json::to_vec(&commit).unwrap()).await;
    });
    let reader = h.open("fenced", Role::Reader);
    for j in [&new, &reader] {
        assert_eq!(j.bounds(ShardId(0)).unwrap().unwrap().last, 3);
        assert_eq!(j.source_checkpoint("src").unwrap(), Some(Position::at(3)));
    }
    // The new writer goes on at 4, its event the one every reader sees.
    assert_eq!(
        block(new.append(batch(0, 4, 1, Some(4)))).unwrap(),
        AppendOutcome::Appended { events: 1 }
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while reader.bounds(ShardId(0)).unwrap().unwrap().last < 4 {
        assert!(Instant::now() < deadline, "the reader never saw sequence 4");
        std::thread::sleep(Duration::from_millis(20));
    }
    let got = reader.read(ShardId(0), 4, ReadBudget::DEFAULT).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].position, Position::at(4));
    assert!(matches!(
        block(reader.append(batch(0, 5, 1, None))),
        Err(JournalError::Io(m)) if m.contains("opened to read")
    ));
}

#[test]
fn a_batch_cut_off_before_its_commit_is_never_seen_and_its_sequences_are_reused() {
    let Some(k) = require(Kafka::start()) else {
        return;
    };
    let h = KafkaHarness::new(k);
    let j = h.open("torn", Role::Writer(None));
    let epoch = j.epoch();
    block(j.append(batch(1, 1, 2, Some(2)))).unwrap();
    // A writer that died after sending events 3 and 4 but not the commit.
    let p = producer(&h.kafka.bootstrap());
    h.rt.block_on(async {
        for seq in [3u64, 4] {
            let mut e = conformance::event(1, seq);
            e.shard = ShardId(1);
            e.seq = seq;
            send(
                &p,
                "torn",
                2,
                &[
                    (records::HEADER_EPOCH.into(), epoch.to_string().into_bytes()),
                    (records::HEADER_SEQ.into(), seq.to_string().into_bytes()),
                ],
                &ferry_journal::encode_frame(&e),
            )
            .await;
        }
    });
    drop(j);
    let j = h.open("torn", Role::Writer(None));
    assert_eq!(j.epoch(), epoch + 1);
    assert_eq!(j.bounds(ShardId(1)).unwrap().unwrap().last, 2);
    assert_eq!(j.source_checkpoint("src").unwrap(), Some(Position::at(2)));
    let mut again = batch(1, 3, 1, Some(3));
    again.shards[0].events[0].key = b"written again".to_vec();
    block(j.append(again)).unwrap();
    let got = j.read(ShardId(1), 1, ReadBudget::DEFAULT).unwrap();
    assert_eq!(got.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert_eq!(got[2].key, b"written again");
}

#[test]
fn the_kafka_journal_survives_a_broker_restart_on_durable_storage() {
    let Some(mut k) = require(Kafka::start_durable()) else {
        return;
    };
    let url = JournalUrl {
        bootstrap: k.bootstrap(),
        name: "durable".into(),
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let j = rt
        .block_on(KafkaJournal::open(&url, SHARDS, Role::Writer(None)))
        .unwrap();
    for i in 0..20u64 {
        block(j.append(batch((i % 2) as u32, i / 2 + 1, 1, Some(i + 1)))).unwrap();
    }
    block(j.set_applied("t", ShardId(0), 6)).unwrap();
    block(j.truncate(ShardId(0), 5)).unwrap();
    drop(j);
    k.restart().unwrap();
    let j = rt
        .block_on(KafkaJournal::open(&url, SHARDS, Role::Writer(None)))
        .unwrap();
    assert_eq!(j.bounds(ShardId(0)).unwrap().unwrap().first, 6);
    assert_eq!(j.bounds(ShardId(1)).unwrap().unwrap().last, 10);
    assert_eq!(j.applied("t", ShardId(0)).unwrap(), Some(6));
    assert_eq!(j.source_checkpoint("src").unwrap(), Some(Position::at(20)));
    let got = j.read(ShardId(1), 1, ReadBudget::DEFAULT).unwrap();
    assert_eq!(got.len(), 10);
    block(j.append(batch(1, 11, 1, Some(21)))).unwrap();
}

#[test]
fn a_journal_topic_with_too_few_partitions_is_refused_in_one_sentence() {
    let Some(k) = require(Kafka::start()) else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(ferry_kafka::connector::ensure_topic(
        &k.bootstrap(),
        "small",
        2,
    ))
    .unwrap();
    let url = JournalUrl {
        bootstrap: k.bootstrap(),
        name: "small".into(),
    };
    let err = rt
        .block_on(KafkaJournal::open(&url, SHARDS, Role::Writer(None)))
        .err()
        .expect("refused");
    let msg = err.to_string();
    assert!(
        msg.contains("has 2 partitions") && msg.contains("need 5"),
        "{msg}"
    );
    for bad in [
        "kafka://h:1",
        "etcd://h:1/x",
        "kafka:///x",
        "kafka://h:1/a b",
    ] {
        let e = JournalUrl::parse(bad).unwrap_err();
        assert!(e.contains("kafka://host:port"), "{bad}: {e}");
    }
}

#[test]
fn a_handle_opened_from_a_snapshot_answers_as_one_that_read_everything() {
    let Some(k) = require(Kafka::start()) else {
        return;
    };
    let h = KafkaHarness::new(k);
    let old = h.open("snap", Role::Writer(None));
    for i in 0..30u64 {
        block(old.append(batch((i % 3) as u32, i / 3 + 1, 1, Some(i + 1)))).unwrap();
    }
    block(old.truncate(ShardId(0), 4)).unwrap();
    block(old.set_applied("t", ShardId(0), 6)).unwrap();
    // A new writer, then the old one's late record after its marker.
    let j = h.open("snap", Role::Writer(None));
    let p = producer(&h.kafka.bootstrap());
    let mut late = conformance::event(1, 11);
    late.shard = ShardId(1);
    late.seq = 11;
    late.key = b"late".to_vec();
    h.rt.block_on(send(
        &p,
        "snap",
        2,
        &[
            (
                records::HEADER_EPOCH.into(),
                old.epoch().to_string().into_bytes(),
            ),
            (records::HEADER_SEQ.into(), b"11".to_vec()),
        ],
        &ferry_journal::encode_frame(&late),
    ));
    block(j.append(batch(2, 11, 2, Some(31)))).unwrap();
    drop(old);
    // The writer's follower puts a snapshot in `.state` every 2 s.
    let deadline = Instant::now() + Duration::from_secs(20);
    let snap = loop {
        let got = ferry_kafka::tail::last_payload(
            &h.kafka.bootstrap(),
            "snap.state",
            0,
            Duration::from_secs(10),
        )
        .unwrap()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .filter(|v| v["sources"][0][1]["order"] == 31);
        if let Some(v) = got {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "no snapshot covering the last append"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(snap["meta_next"].as_i64().unwrap() > 0, "{snap}");
    let answers = |j: &KafkaJournal| {
        (0..3)
            .map(|s| {
                let b = j.bounds(ShardId(s)).unwrap().unwrap();
                let seqs: Vec<u64> = j
                    .read(ShardId(s), b.first, ReadBudget::DEFAULT)
                    .unwrap()
                    .iter()
                    .map(|e| e.seq)
                    .collect();
                (b, seqs)
            })
            .collect::<Vec<_>>()
    };
    let want = answers(&j);
    let reader = h.open("snap", Role::Reader);
    assert_eq!(answers(&reader), want);
    assert_eq!(
        reader.source_checkpoint("src").unwrap(),
        Some(Position::at(31))
    );
    assert_eq!(reader.applied("t", ShardId(0)).unwrap(), Some(6));
    assert_eq!(want[0].0.first, 5);
    assert_eq!(want[2].0.last, 12);
    // The next writer from the snapshot goes on where the journal is.
    drop(j);
    let j = h.open("snap", Role::Writer(None));
    block(j.append(batch(1, 11, 1, Some(32)))).unwrap();
    let got = j.read(ShardId(1), 11, ReadBudget::DEFAULT).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].key,
        conformance::event(1, 11).key,
        "the deposed writer's late record is not the one read"
    );
}

#[test]
fn one_writer_and_two_readers_on_durable_storage_keep_up_under_load() {
    trace();
    let Some(k) = require(Kafka::start_durable()) else {
        return;
    };
    let url = JournalUrl {
        bootstrap: k.bootstrap(),
        name: "load".into(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let w = std::sync::Arc::new(
            KafkaJournal::open(&url, SHARDS, Role::Writer(None))
                .await
                .unwrap(),
        );
        let readers: Vec<_> = futures::future::join_all(
            (0..2).map(|_| KafkaJournal::open(&url, SHARDS, Role::Standby)),
        )
        .await
        .into_iter()
        .map(|r| std::sync::Arc::new(r.unwrap()))
        .collect();
        const BATCHES: u64 = 40;
        const PER: u64 = 50;
        let t0 = Instant::now();
        let writer = {
            let w = std::sync::Arc::clone(&w);
            tokio::spawn(async move {
                for i in 0..BATCHES {
                    let mut b = batch(0, i * PER + 1, PER, Some(i + 1));
                    for s in 1..SHARDS {
                        b.shards.extend(batch(s, i * PER + 1, PER, None).shards);
                    }
                    w.append(b).await.unwrap();
                }
            })
        };
        // Each reader applies two shards, as agents owning them do.
        let appliers: Vec<_> = readers
            .iter()
            .enumerate()
            .map(|(r, j)| {
                let j = std::sync::Arc::clone(j);
                let w2 = std::sync::Arc::clone(&w);
                tokio::spawn(async move {
                    let deadline = Instant::now() + Duration::from_secs(300);
                    let mut done = [0u64; SHARDS as usize];
                    while done
                        .iter()
                        .enumerate()
                        .any(|(s, d)| s % 2 == r && *d < BATCHES * PER)
                    {
                        assert!(
                            Instant::now() < deadline,
                            "reader {r} fell behind: {done:?}"
                        );
                        for s in (r..SHARDS as usize).step_by(2) {
                            let got = j
                                .read(ShardId(s as u32), done[s] + 1, ReadBudget::DEFAULT)
                                .unwrap();
                            if let Some(last) = got.last() {
                                done[s] = last.seq;
                                w2.set_applied("t", ShardId(s as u32), last.seq)
                                    .await
                                    .unwrap();
                                // Through what the writer's handle has read
                                // back (a reader may be ahead of it, as the
                                // agent's truncator allows for).
                                let shard = ShardId(s as u32);
                                let end = w2.bounds(shard).unwrap().map_or(0, |b| b.last);
                                let through = last.seq.min(end);
                                if through > 0 {
                                    w2.truncate(shard, through).await.unwrap();
                                }
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                })
            })
            .collect();
        writer.await.unwrap();
        for a in appliers {
            a.await.unwrap();
        }
        eprintln!(
            "{} events appended and applied through two readers in {:?}",
            BATCHES * PER * SHARDS as u64,
            t0.elapsed()
        );
        // Every handle sees every applied checkpoint once its follower has
        // read the writer's last records back (a reader lags it a little).
        for (h, j) in readers.iter().chain(std::iter::once(&w)).enumerate() {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let seen: Vec<Option<u64>> = (0..SHARDS)
                    .map(|s| j.applied("t", ShardId(s)).unwrap())
                    .collect();
                if seen.iter().all(|a| *a == Some(BATCHES * PER)) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "handle {h} still sees applied checkpoints {seen:?} 60 s after the last was written, not {} each",
                    BATCHES * PER
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
}
