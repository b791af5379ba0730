//! The tailer into a real RocksDB journal while bbolt commits 100,000 keys
//! in random transactions; the journal, reduced the way a sink applies it,
//! equals bbolt's final content exactly. Then resume and the read-only
//! fence.

use crate::fixture::{self, Content};
use crate::track::wait_for;
use ferry_bolt::{decode_key, BoltError, BoltTailer, KeyRef, TailerOptions};
use ferry_core::{Op, ShardSpan, Value};
use ferry_journal::{Journal, PersistPolicy, ReadBudget};
use ferry_journal_rocks::{OpenMode, RocksJournal};
use ferry_lag::LagTracker;
use ferry_replay::Shutdown;
use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const SPAN: ShardSpan = ShardSpan { first: 2, count: 4 };
const SOURCE: &str = "bolt-test";

struct Running {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), BoltError>>,
    fence: ferry_bolt::FenceHandle,
}

fn start(db: &Path, journal: &Arc<RocksJournal>) -> Running {
    let tailer = BoltTailer::new(db, SOURCE.into(), SPAN, TailerOptions::default());
    let fence = tailer.fence_handle();
    let (stop, shutdown) = Shutdown::new();
    let task = tokio::spawn(tailer.run(Arc::clone(journal), Arc::new(LagTracker::new()), shutdown));
    Running { stop, task, fence }
}

impl Running {
    async fn stop(self) {
        self.stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("the tailer stops within 30 s")
            .unwrap()
            .unwrap();
    }
}

async fn until_checkpoint(run: &Running, journal: &RocksJournal, txid: u64, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        assert!(
            !run.task.is_finished(),
            "the tailer stopped before journaling {txid}"
        );
        let cp = journal.source_checkpoint(SOURCE).unwrap().map(|p| p.order);
        if cp == Some(txid) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "checkpoint {cp:?} did not reach {txid} within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Applies every shard's events in order as a sink does, sweeping at
/// `SnapshotEnd` the keys of that shard the snapshot did not put; returns
/// the content and the fence positions seen per shard.
fn reduce(journal: &RocksJournal) -> (Content, BTreeMap<u32, Vec<u64>>) {
    let mut state: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let mut fences = BTreeMap::new();
    for shard in SPAN.iter() {
        let mut seen: Option<HashSet<Vec<u8>>> = None;
        let mut from = 1;
        loop {
            let events = journal.read(shard, from, ReadBudget::DEFAULT).unwrap();
            let Some(last) = events.last() else { break };
            from = last.seq + 1;
            for e in events {
                assert_eq!(e.shard, shard);
                if !e.op.is_marker() {
                    assert_eq!(SPAN.shard_for(&e.key), shard, "an event in the wrong shard");
                }
                match e.op {
                    Op::Put {
                        value: Value::Plain(v),
                        ..
                    } => {
                        if let Some(s) = &mut seen {
                            s.insert(e.key.clone());
                        }
                        state.insert(e.key, v);
                    }
                    Op::Put { .. } => panic!("a sealed Bolt value"),
                    Op::Delete { .. } => {
                        state.remove(&e.key);
                    }
                    Op::SnapshotBegin { .. } => seen = Some(HashSet::new()),
                    Op::SnapshotEnd => {
                        let s = seen.take().expect("SnapshotEnd without SnapshotBegin");
                        state.retain(|k, _| SPAN.shard_for(k) != shard || s.contains(k));
                    }
                    Op::Fence => fences
                        .entry(shard.0)
                        .or_insert_with(Vec::new)
                        .push(e.position.order),
                    Op::Heartbeat => {}
                }
            }
        }
    }
    let mut content = Content::new();
    for (k, v) in state {
        match decode_key(&k).expect("a key the tailer encoded") {
            KeyRef::Value { buckets, key } => content.insert((buckets, key), Some(v)),
            KeyRef::Bucket { buckets, name } => {
                assert!(v.is_empty());
                content.insert((buckets, name), None)
            }
        };
    }
    (content, fences)
}

fn bounds(journal: &RocksJournal) -> Vec<Option<u64>> {
    SPAN.iter()
        .map(|s| journal.bounds(s).unwrap().map(|b| b.last))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_tail_of_100k_keys_equals_bbolt() {
    let Some(bin) = fixture::program() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("live.db");
    let started = dir.path().join("started");
    let jdir = dir.path().join("journal");
    let journal =
        Arc::new(RocksJournal::open(&jdir, OpenMode::Create, PersistPolicy::Never).unwrap());

    let writer = std::process::Command::new(&bin)
        .arg("random")
        .arg(&db)
        .args([
            "-keys", "100000", "-seed", "11", "-nosync", "-pause", "200us",
        ])
        .arg("-started")
        .arg(&started)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&started, Duration::from_secs(30));
    let t0 = Instant::now();
    let run = start(&db, &journal);

    // While bbolt has the file open, it cannot be made read-only.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let locked = run.fence.make_read_only().unwrap_err();
    assert!(matches!(locked, BoltError::Locked { .. }), "{locked}");
    assert!(
        locked.to_string().contains("locked by a writer"),
        "{locked}"
    );

    let out = tokio::task::spawn_blocking(move || writer.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(out.status.success());
    let report = String::from_utf8(out.stdout).unwrap();
    let txid = fixture::field(&report, "txid");
    let write_time = t0.elapsed();
    until_checkpoint(&run, &journal, txid, Duration::from_secs(120)).await;
    eprintln!(
        "writer: {report} in {write_time:?}; journaled through {txid} {:?} after start",
        t0.elapsed()
    );

    // Cutover: the lock, then a fence at the head.
    let fence = run.fence.make_read_only().unwrap();
    assert_eq!(fence, txid);
    tokio::time::timeout(Duration::from_secs(30), run.fence.fence(fence))
        .await
        .expect("the fence is placed within 30 s")
        .unwrap();
    assert!(run.fence.writes_after_fence().is_empty());
    run.fence.release();
    run.stop().await;

    let want = fixture::read_dump(&db);
    let (got, fences) = reduce(&journal);
    assert_eq!(got.len(), want.len());
    assert!(
        got == want,
        "the journal does not replay to bbolt's final content"
    );
    assert_eq!(fences.len(), SPAN.count as usize, "a fence in every shard");
    assert!(fences.values().all(|f| f == &vec![txid]));

    // Resume on an unchanged file: re-read, nothing journaled.
    let before = bounds(&journal);
    let run = start(&db, &journal);
    tokio::time::sleep(Duration::from_millis(500)).await;
    run.stop().await;
    assert_eq!(
        bounds(&journal),
        before,
        "a resume on an unchanged file journaled events"
    );

    // The file moves on while Ferry is stopped: a new snapshot whose sweep
    // removes what was deleted meanwhile.
    let report = fixture::run(
        &bin,
        "random",
        &db,
        &["-keys", "3000", "-seed", "12", "-nosync"],
    );
    let txid = fixture::field(&report, "txid");
    let run = start(&db, &journal);
    until_checkpoint(&run, &journal, txid, Duration::from_secs(60)).await;
    run.stop().await;
    let want = fixture::read_dump(&db);
    let (got, _) = reduce(&journal);
    assert!(
        got == want,
        "after a re-snapshot the journal does not replay to bbolt's content"
    );
}
