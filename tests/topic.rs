//! What a plain Kafka consumer finds in a topic Ferry published to: no
//! Ferry code involved, only rdkafka reading every partition to its end.

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// What a consumer reading the whole topic finds.
#[derive(Default)]
pub struct Consumed {
    /// Last value per record key (`None`: a tombstone).
    pub last: BTreeMap<String, Option<Value>>,
    /// (shard, sequence, sweep number) of every event record, with repeats
    /// (a snapshot's sweep deletes share the end marker's sequence).
    pub events: Vec<(u64, u64, Option<u64>)>,
    /// Each delete event and whether a tombstone followed it.
    pub deletes_without_tombstone: u64,
    pub ops: BTreeMap<String, u64>,
}

/// Reads every partition of `topic` from the beginning to its end, as a
/// plain Kafka consumer does (no Ferry code involved).
pub fn consume(bootstrap: &str, topic: &str) -> Consumed {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "kafka-sync-test")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let partitions = md.topics()[0].partitions().len() as i32;
    assert!(partitions > 0, "{topic} has no partitions");
    let mut out = Consumed::default();
    for p in 0..partitions {
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Offset(0))
            .unwrap();
        c.assign(&tpl).unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut pending_delete: Option<String> = None;
        loop {
            assert!(Instant::now() < deadline, "reading {topic}/{p} timed out");
            match c.poll(Duration::from_millis(500)) {
                Some(Ok(m)) => {
                    let key = String::from_utf8(m.key().unwrap().to_vec()).unwrap();
                    let Some(payload) = m.payload() else {
                        assert_eq!(
                            pending_delete.take().as_deref(),
                            Some(key.as_str()),
                            "a tombstone follows its delete event"
                        );
                        out.last.insert(key, None);
                        continue;
                    };
                    if pending_delete.take().is_some() {
                        out.deletes_without_tombstone += 1;
                    }
                    let v: Value = serde_json::from_slice(payload).unwrap();
                    let header = |name: &str| -> u64 {
                        let h = m.headers().expect("headers");
                        let x = h.iter().find(|x| x.key == name).expect(name);
                        std::str::from_utf8(x.value.unwrap())
                            .unwrap()
                            .parse()
                            .unwrap()
                    };
                    let (shard, seq) = (header("ferry.shard"), header("ferry.seq"));
                    assert_eq!(v["source"]["seq"].as_u64(), Some(seq), "{v}");
                    assert_eq!(v["source"]["shard"].as_u64(), Some(shard), "{v}");
                    assert!(v["before"].is_null(), "{v}");
                    let op = v["op"].as_str().unwrap().to_string();
                    *out.ops.entry(op.clone()).or_default() += 1;
                    let sweep = m
                        .headers()
                        .and_then(|h| h.iter().find(|x| x.key == "ferry.sweep"))
                        .and_then(|x| std::str::from_utf8(x.value?).ok()?.parse().ok());
                    out.events.push((shard, seq, sweep));
                    if op == "d" {
                        assert!(v["after"].is_null(), "{v}");
                        pending_delete = Some(key);
                    } else {
                        out.last.insert(key, Some(v["after"].clone()));
                    }
                }
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => break,
                Some(Err(e)) => panic!("reading {topic}/{p}: {e}"),
                None => {}
            }
        }
        if pending_delete.is_some() {
            out.deletes_without_tombstone += 1;
        }
    }
    out
}
