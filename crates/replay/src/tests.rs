//! The worker against an in-process recording sink: the worker's own logic
//! (order, checkpoints, retries, permanent errors), not a store's.

use super::*;
use ferry_core::{Event, Op, Position, Seq, ShardId, StoreMeta, Value};
use ferry_journal::{AppendBatch, Journal, PersistPolicy, ShardAppend};
use ferry_journal_rocks::{OpenMode, RocksJournal};
use ferry_lag::LagTracker;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Records what it is given; fails on command.
#[derive(Default)]
struct Recording {
    applied: Mutex<Vec<Seq>>,
    transient_failures: Mutex<u32>,
    permanent_at: Option<Seq>,
    /// Each apply takes this long (a target's round trip).
    delay: Duration,
}

impl Sink for Recording {
    fn name(&self) -> &str {
        "recording"
    }
    async fn startup(&self) -> Result<(), SinkError> {
        Ok(())
    }
    async fn durable_checkpoint(&self, _shard: ShardId) -> Result<Option<Seq>, SinkError> {
        Ok(self.applied.lock().unwrap().last().copied())
    }
    async fn apply(&self, _shard: ShardId, events: &[Event]) -> Result<Seq, SinkError> {
        tokio::time::sleep(self.delay).await;
        {
            let mut f = self.transient_failures.lock().unwrap();
            if *f > 0 {
                *f -= 1;
                return Err(SinkError::transient("try again"));
            }
        }
        let mut applied = self.applied.lock().unwrap();
        for e in events {
            if Some(e.seq) == self.permanent_at {
                return Err(SinkError::permanent(format!("refused seq {}", e.seq)));
            }
            if applied.last().is_some_and(|l| *l >= e.seq) {
                continue;
            }
            assert_eq!(
                applied.last().copied().unwrap_or(0) + 1,
                e.seq,
                "gap or reorder"
            );
            applied.push(e.seq);
        }
        Ok(*applied.last().unwrap_or(&0))
    }
    async fn shutdown(&self) {}
}

fn batch(first: Seq, n: u64) -> AppendBatch {
    AppendBatch {
        shards: vec![ShardAppend {
            shard: ShardId(0),
            first_seq: first,
            events: (0..n)
                .map(|i| Event {
                    shard: ShardId(0),
                    seq: 0,
                    position: Position::at(first + i),
                    key: vec![i as u8],
                    op: Op::Put {
                        value: Value::Plain(vec![1]),
                        meta: StoreMeta::None,
                    },
                    source_ts_ms: 0,
                    capture_ts_ms: 0,
                })
                .collect(),
        }],
        checkpoint: None,
    }
}

async fn until(what: &str, f: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applies_in_order_retries_and_truncates() {
    let t = tempfile::tempdir().unwrap();
    let j = Arc::new(RocksJournal::open(t.path(), OpenMode::Create, PersistPolicy::Never).unwrap());
    let sink = Arc::new(Recording {
        transient_failures: Mutex::new(2),
        ..Default::default()
    });
    let lag = Arc::new(LagTracker::new());
    let (stop, shutdown) = Shutdown::new();
    let cfg = WorkerConfig {
        budget: ferry_journal::ReadBudget {
            max_events: 7,
            max_bytes: 1 << 20,
        },
        idle_wait: Duration::from_millis(50),
        ..WorkerConfig::default()
    };
    let w = tokio::spawn(worker::run(
        Arc::clone(&j),
        Arc::clone(&sink),
        ShardId(0),
        Arc::clone(&lag),
        None,
        cfg,
        shutdown.clone(),
    ));
    ferry_journal::Journal::append(j.as_ref(), batch(1, 30))
        .await
        .unwrap();
    lag.journaled(ShardId(0), 1, 30, &Position::at(30), 0);
    until("30 applied", || sink.applied.lock().unwrap().len() == 30).await;
    until("checkpoint 30", || {
        j.applied("recording", ShardId(0)).unwrap() == Some(30)
    })
    .await;
    ferry_journal::Journal::append(j.as_ref(), batch(31, 5))
        .await
        .unwrap();
    lag.journaled(ShardId(0), 31, 35, &Position::at(35), 0);
    until("35 applied", || sink.applied.lock().unwrap().len() == 35).await;
    // The journal records the checkpoint just after the sink acknowledged.
    until("checkpoint 35", || {
        j.applied("recording", ShardId(0)).unwrap() == Some(35)
    })
    .await;
    assert_eq!(
        truncator::truncate_applied(j.as_ref(), &["recording".into()])
            .await
            .unwrap(),
        1
    );
    assert_eq!(j.bounds(ShardId(0)).unwrap().map(|b| b.first), Some(36));
    stop.send(true).unwrap();
    w.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_error_stops_the_shard_and_is_reported() {
    let t = tempfile::tempdir().unwrap();
    let j = Arc::new(RocksJournal::open(t.path(), OpenMode::Create, PersistPolicy::Never).unwrap());
    let sink = Arc::new(Recording {
        permanent_at: Some(4),
        ..Default::default()
    });
    let lag = Arc::new(LagTracker::new());
    let (stop, shutdown) = Shutdown::new();
    let w = tokio::spawn(worker::run(
        Arc::clone(&j),
        Arc::clone(&sink),
        ShardId(0),
        Arc::clone(&lag),
        None,
        WorkerConfig::default(),
        shutdown,
    ));
    ferry_journal::Journal::append(j.as_ref(), batch(1, 10))
        .await
        .unwrap();
    lag.journaled(ShardId(0), 1, 10, &Position::at(10), 0);
    until("error reported", || {
        lag.snapshot().shards.iter().any(|s| {
            s.targets
                .get("recording")
                .is_some_and(|t| t.error.is_some())
        })
    })
    .await;
    let snap = lag.snapshot();
    assert!(snap.shards[0].targets["recording"]
        .error
        .as_deref()
        .unwrap()
        .contains("refused seq 4"));
    assert_eq!(j.applied("recording", ShardId(0)).unwrap(), None);
    stop.send(true).unwrap();
    w.await.unwrap().unwrap();
}

/// Under a limit below the batch size a batch still takes its time: 500
/// operations at 200/s (burst 200) need at least 1.5 s (200 at once, 200 a
/// second later, 100 half a second after that). Only a lower bound: a slow
/// machine makes it longer, never shorter.
#[tokio::test]
async fn a_batch_larger_than_the_burst_is_throttled_to_the_rate() {
    let limiter = governor::RateLimiter::direct(governor::Quota::per_second(
        std::num::NonZeroU32::new(200).unwrap(),
    ));
    let t0 = std::time::Instant::now();
    crate::throttle(&limiter, 500).await;
    assert!(
        t0.elapsed() >= std::time::Duration::from_millis(1400),
        "500 operations at 200/s passed in {:?}",
        t0.elapsed()
    );
}

/// While a shard streams, the lag tracker sees every applied batch, but the
/// journal's checkpoint is written at most every `record_every` (plus once
/// when the worker runs dry): 40 one-event batches of 25 ms each leave far
/// fewer distinct journal checkpoints than batches, and the journal ends at
/// the last one. The bound grows with the elapsed time, so a slow machine
/// cannot fail it; recording every batch would show about 40.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streaming_worker_records_its_journal_checkpoint_at_most_every_interval() {
    let t = tempfile::tempdir().unwrap();
    let j = Arc::new(RocksJournal::open(t.path(), OpenMode::Create, PersistPolicy::Never).unwrap());
    let sink = Arc::new(Recording {
        delay: Duration::from_millis(25),
        ..Default::default()
    });
    let lag = Arc::new(LagTracker::new());
    let (stop, shutdown) = Shutdown::new();
    let cfg = WorkerConfig {
        budget: ferry_journal::ReadBudget {
            max_events: 1,
            max_bytes: 1 << 20,
        },
        idle_wait: Duration::from_millis(50),
        record_every: worker::KAFKA_RECORD_EVERY,
        ..WorkerConfig::default()
    };
    ferry_journal::Journal::append(j.as_ref(), batch(1, 40))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let w = tokio::spawn(worker::run(
        Arc::clone(&j),
        Arc::clone(&sink),
        ShardId(0),
        Arc::clone(&lag),
        None,
        cfg,
        shutdown.clone(),
    ));
    lag.journaled(ShardId(0), 1, 40, &Position::at(40), 0);
    let mut seen = std::collections::BTreeSet::new();
    let mut lag_ahead = false;
    while sink.applied.lock().unwrap().len() < 40 {
        assert!(started.elapsed() < Duration::from_secs(20), "40 applied");
        let journal = j.applied("recording", ShardId(0)).unwrap().unwrap_or(0);
        let tracked = lag
            .snapshot()
            .shards
            .first()
            .and_then(|s| s.targets.get("recording").map(|t| t.applied_seq))
            .unwrap_or(0);
        lag_ahead |= tracked > journal;
        seen.insert(journal);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let streamed = started.elapsed();
    until("journal checkpoint 40", || {
        j.applied("recording", ShardId(0)).unwrap() == Some(40)
    })
    .await;
    let bound = (streamed.as_millis() / worker::KAFKA_RECORD_EVERY.as_millis()) as usize + 2;
    assert!(
        seen.len() <= bound && seen.len() < 40,
        "{} distinct journal checkpoints in {streamed:?} (bound {bound}): {seen:?}",
        seen.len()
    );
    assert!(
        lag_ahead,
        "the lag tracker showed applied batches before the journal recorded them"
    );
    stop.send(true).unwrap();
    w.await.unwrap().unwrap();
}
