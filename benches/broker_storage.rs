//! What tansu's durable storage costs a reader: the time to fetch a
//! partition's newest record as the partition grows, on `s3://` (moto)
//! against `memory://`, in one process, one run.
//!
//! The journal reads every partition right behind its writers (each append
//! waits until its own follower read it back), so this is a floor under
//! every Kafka-journal append and under a coordinated cutover's fence. On
//! `s3://` here the fetch grows with the number of batches the partition
//! holds, and somewhere short of 1000 batches a fetch at the tail returns
//! nothing at all (a fresh consumer waits out its deadline): the scale-out
//! tests keep each partition well under that.
//!
//! Each batch is one record (`linger.ms=0`, each send awaited), so the
//! partition holds as many batches as records.
//!
//! Run: `cargo bench -p ferry-benches --bench broker_storage`
//! Env: `FERRY_BENCH_BROKER_STEPS` (`100,300,600,1000`): partition sizes, in
//! batches, at which the fetch is timed.

use ferry_testkit::Kafka;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::time::{Duration, Instant};

const TOPIC: &str = "bench-storage";
/// How long a fetch of the newest record may take before it counts as
/// nothing served.
const FETCH_DEADLINE: Duration = Duration::from_secs(10);

/// A fresh consumer's time to read `partition` from `offset` to its end;
/// `None` if it got nothing within [`FETCH_DEADLINE`].
fn fetch_tail(bootstrap: &str, offset: i64) -> Option<Duration> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "bench-storage")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        // The Kafka journal's own setting.
        .set("fetch.wait.max.ms", "100")
        .create()
        .expect("a consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(TOPIC, 0, Offset::Offset(offset))
        .expect("a partition");
    c.assign(&tpl).expect("assign");
    let t0 = Instant::now();
    let mut got = false;
    while t0.elapsed() < FETCH_DEADLINE {
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(_)) => got = true,
            Some(Err(KafkaError::PartitionEOF(_))) if got => return Some(t0.elapsed()),
            _ => {}
        }
    }
    None
}

/// Grows one partition through `steps` (in batches), timing a tail fetch
/// at each.
fn run(kafka: &Kafka, steps: &[i64]) -> Vec<Option<Duration>> {
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    rt.block_on(ferry_kafka::connector::ensure_topic(
        &kafka.bootstrap(),
        TOPIC,
        1,
    ))
    .expect("the topic");
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", kafka.bootstrap())
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "0")
        .create()
        .expect("a producer");
    let mut next = 0i64;
    steps
        .iter()
        .map(|&n| {
            rt.block_on(async {
                while next < n {
                    let r: FutureRecord<'_, [u8], [u8]> =
                        FutureRecord::to(TOPIC).partition(0).payload(b"x");
                    let d = p
                        .send_result(r)
                        .map_err(|(e, _)| e)
                        .expect("queued")
                        .await
                        .expect("delivered")
                        .map_err(|(e, _)| e)
                        .expect("acknowledged");
                    next = d.offset + 1;
                }
            });
            fetch_tail(&kafka.bootstrap(), next - 1)
        })
        .collect()
}

fn main() {
    let steps: Vec<i64> = std::env::var("FERRY_BENCH_BROKER_STEPS")
        .unwrap_or_else(|_| "100,300,600,1000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let memory = {
        let k = Kafka::start().expect("tansu (install with deploy/local/install.sh)");
        run(&k, &steps)
    };
    let s3 = {
        let k = Kafka::start_durable().expect("tansu and moto (deploy/local/install.sh)");
        run(&k, &steps)
    };
    let show = |d: &Option<Duration>| match d {
        Some(d) => format!("{:>8.0} ms", d.as_secs_f64() * 1000.0),
        None => format!("nothing in {} s", FETCH_DEADLINE.as_secs()),
    };
    println!("tansu: a fresh consumer's fetch of a partition's newest record, by partition size:");
    for (i, n) in steps.iter().enumerate() {
        let ratio = match (memory[i], s3[i]) {
            (Some(m), Some(s)) => format!("{:.1}x", s.as_secs_f64() / m.as_secs_f64()),
            _ => "-".into(),
        };
        println!(
            "  {n:>5} batches: memory {}, s3 on moto {}  (s3/memory {ratio})",
            show(&memory[i]),
            show(&s3[i])
        );
    }
}
