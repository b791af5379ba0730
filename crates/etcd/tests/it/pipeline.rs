//! Snapshot and streaming into a RocksDB journal, replay into a second
//! etcd, with writes going on throughout; then the stores compare equal.

use crate::common::*;
use etcd_client::{Client, LeaseGrantOptions};
use ferry_core::{Op, ShardId};
use ferry_etcd::{verify, TailerOptions};
use ferry_journal::{Journal, ReadBudget};
use ferry_lag::Phase;
use std::time::{Duration, Instant};

const KEYS: usize = 10_000;
const VALUE_BYTES: usize = 200;
const WRITES: usize = 3_000;

/// Puts, overwrites, deletes and leased puts on `app/`, deterministic.
async fn writer(mut c: Client, lease: i64) -> usize {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..WRITES {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let k = format!("app/{:06}", x % (KEYS as u64 + 2_000));
        match i % 10 {
            0..=5 => {
                c.put(k, value(i, VALUE_BYTES), None).await.unwrap();
            }
            6 | 7 => {
                c.delete(k, None).await.unwrap();
            }
            8 => put_leased(&mut c, &format!("app/leased-{i}"), "l", lease).await,
            _ => {
                // A multi-key revision: one transaction, several events.
                let ops = (0..3)
                    .map(|j| etcd_client::TxnOp::put(format!("app/txn-{i}-{j}"), "t", None))
                    .collect::<Vec<_>>();
                c.txn(etcd_client::Txn::new().and_then(ops)).await.unwrap();
            }
        }
    }
    WRITES
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_stream_replay_and_verify_equal() {
    let (Some(src), Some(dst)) = (etcd(), etcd()) else {
        return;
    };
    let mut c = client(&src).await;
    fill(&mut c, "app/", KEYS, VALUE_BYTES).await;
    c.put("outside/x", "not copied", None).await.unwrap();
    let lease = c
        .lease_grant(120, None::<LeaseGrantOptions>)
        .await
        .unwrap()
        .id();
    for i in 0..50 {
        put_leased(&mut c, &format!("app/leased-pre-{i}"), "l", lease).await;
    }
    let source = store(&src, "app/").await;
    let target = store(&dst, "app-copy/").await;
    let shards = 4;
    let started = Instant::now();
    let p = Pipeline::start(
        source.clone(),
        target.clone(),
        shards,
        TailerOptions::default(),
    )
    .await;
    let w = tokio::spawn(writer(client(&src).await, lease));
    until("snapshot journaled", Duration::from_secs(120), || async {
        let l = p.lag.snapshot();
        l.shards.len() == shards as usize && l.shards.iter().all(|s| s.phase == Phase::Streaming)
    })
    .await;
    let snapshot_s = started.elapsed().as_secs_f64();
    // Everything journaled so far holds the whole snapshot.
    let marks: Vec<u64> = (0..shards)
        .map(|s| p.journal.bounds(ShardId(s)).unwrap().unwrap().last)
        .collect();
    until("snapshot applied", Duration::from_secs(120), || async {
        (0..shards).all(|s| {
            p.journal.applied(TARGET, ShardId(s)).unwrap().unwrap_or(0) >= marks[s as usize]
        })
    })
    .await;
    let applied_s = started.elapsed().as_secs_f64();
    let applied_events: u64 = marks.iter().sum();
    assert_eq!(w.await.unwrap(), WRITES);
    p.drain(&source, Duration::from_secs(120)).await;
    let total_s = started.elapsed().as_secs_f64();

    let t0 = Instant::now();
    let report = verify::compare(&source, &target, 3).await.unwrap();
    let verify_s = t0.elapsed().as_secs_f64();
    assert!(report.is_equal(), "{:#?}", &report.differences);
    assert_eq!(report.source_digest, report.target_digest);
    assert!(report.ranges.iter().all(|r| r.equal));
    assert!(
        report.source_keys > KEYS as u64 / 2,
        "{}",
        report.source_keys
    );
    assert_eq!(target.count_prefix().await.unwrap(), report.source_keys);
    assert!(p.fence.writes_after_fence().is_empty());

    // Every shard: SnapshotBegin first, one SnapshotEnd, and a Fence last.
    for s in 0..shards {
        let evs = p
            .journal
            .read(
                ShardId(s),
                1,
                ReadBudget {
                    max_events: 1_000_000,
                    max_bytes: 1 << 30,
                },
            )
            .unwrap();
        assert!(matches!(evs[0].op, Op::SnapshotBegin { total_keys: Some(n) } if n >= KEYS as u64));
        assert_eq!(evs.iter().filter(|e| e.op == Op::SnapshotEnd).count(), 1);
        assert_eq!(evs.last().unwrap().op, Op::Fence);
        // Snapshot events carry their key's mod revision (any order, at
        // most R); from SnapshotEnd on, positions only grow.
        let end = evs.iter().position(|e| e.op == Op::SnapshotEnd).unwrap();
        assert!(evs[..end].iter().all(|e| e.position <= evs[end].position));
        let bad: Vec<_> = evs[end..]
            .windows(2)
            .filter(|w| w[0].position > w[1].position)
            .take(3)
            .collect();
        assert!(bad.is_empty(), "positions grow per shard: {bad:#?}");
    }
    let events: u64 = (0..shards)
        .map(|s| p.journal.bounds(ShardId(s)).unwrap().unwrap().last)
        .sum();
    eprintln!(
        "pipeline: snapshot of {KEYS} keys x {VALUE_BYTES} B journaled in {snapshot_s:.2} s ({:.0} keys/s); \
         the first {applied_events} journaled events applied to the target after {applied_s:.2} s ({:.0} events/s); \
         all {events} events (with {WRITES} concurrent writes) applied after {total_s:.2} s; verify of {} keys in {verify_s:.2} s",
        KEYS as f64 / snapshot_s,
        applied_events as f64 / applied_s,
        report.source_keys,
    );
    p.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_after_a_fence_are_reported() {
    let (Some(src), Some(dst)) = (etcd(), etcd()) else {
        return;
    };
    let mut c = client(&src).await;
    fill(&mut c, "app/", 100, 10).await;
    let source = store(&src, "app/").await;
    let p = Pipeline::start(
        source.clone(),
        store(&dst, "copy/").await,
        2,
        TailerOptions::default(),
    )
    .await;
    p.drain(&source, Duration::from_secs(60)).await;
    let fence = source.head_revision().await.unwrap();
    p.fence.fence(fence).await.unwrap();
    assert!(p.fence.writes_after_fence().is_empty());
    c.put("app/late", "x", None).await.unwrap();
    until("late write seen", Duration::from_secs(20), || async {
        !p.fence.writes_after_fence().is_empty()
    })
    .await;
    let after = p.fence.writes_after_fence();
    assert_eq!(after[0].0, b"app/late".to_vec());
    assert!(after[0].1 > fence);
    p.stop().await.unwrap();
}
