//! The tail reader on a real broker: the last record's Ferry headers and
//! the partition's end, on memory storage and on durable storage across a
//! broker restart (what a sink reads after a crash).

use ferry_kafka::connector::ensure_topic;
use ferry_kafka::{tail, HEADER_JOURNAL, HEADER_SEQ};
use ferry_testkit::{require, Kafka};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use std::time::{Duration, Instant};

async fn produce(bootstrap: &str, topic: &str, partition: i32, seqs: std::ops::Range<u64>) {
    let p = ferry_kafka::producer(bootstrap).unwrap();
    let mut pending = Vec::new();
    for s in seqs {
        let seq = s.to_string();
        let h = OwnedHeaders::new()
            .insert(Header {
                key: HEADER_SEQ,
                value: Some(seq.as_bytes()),
            })
            .insert(Header {
                key: HEADER_JOURNAL,
                value: Some("j1".as_bytes()),
            });
        let r: FutureRecord<'_, str, str> = FutureRecord::to(topic)
            .partition(partition)
            .key("k")
            .payload("v")
            .headers(h);
        pending.push(p.send_result(r).map_err(|(e, _)| e).unwrap());
    }
    for f in pending {
        f.await.unwrap().map_err(|(e, _)| e).unwrap();
    }
}

fn read(k: &Kafka, topic: &str, p: i32) -> (tail::Tail, Duration) {
    let t0 = Instant::now();
    let t = tail::read(&k.bootstrap(), topic, p, Duration::from_secs(60)).unwrap();
    (t, t0.elapsed())
}

#[test]
fn the_tail_is_the_last_record_also_after_a_restart() {
    let Some(mut k) = require(Kafka::start_durable()) else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        ensure_topic(&k.bootstrap(), "t", 3).await.unwrap();
        produce(&k.bootstrap(), "t", 0, 1..501).await;
        produce(&k.bootstrap(), "t", 1, 7..8).await;
    });
    let (t0, _) = read(&k, "t", 0);
    assert_eq!(
        (t0.end, t0.seq, t0.journal.as_deref()),
        (500, Some(500), Some("j1"))
    );
    let (t1, _) = read(&k, "t", 1);
    assert_eq!((t1.end, t1.seq), (1, Some(7)));
    let (t2, _) = read(&k, "t", 2);
    assert_eq!(t2, tail::Tail::default(), "an empty partition");
    k.restart().unwrap();
    let (again, took) = read(&k, "t", 0);
    assert_eq!((again.end, again.seq), (500, Some(500)), "after a restart");
    eprintln!("tail of a 500-record partition after a broker restart read in {took:?}");
    rt.block_on(produce(&k.bootstrap(), "t", 0, 501..502));
    assert_eq!(read(&k, "t", 0).0.seq, Some(501));
}
