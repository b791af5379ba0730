use super::*;
use ferry_core::{Op, StoreMeta, Value};
use ferry_journal::{ShardAppend, SourceCheckpoint};
use std::time::Duration;

fn ev(key: &str, pos: u64) -> Event {
    Event {
        shard: ShardId(0),
        seq: 0,
        position: Position::at(pos),
        key: key.as_bytes().to_vec(),
        op: Op::Put {
            value: Value::Plain(format!("v-{key}").into_bytes()),
            meta: StoreMeta::None,
        },
        source_ts_ms: 0,
        capture_ts_ms: 0,
    }
}

fn batch(shard: u32, first: Seq, n: u64, cp: Option<u64>) -> AppendBatch {
    AppendBatch {
        shards: vec![ShardAppend {
            shard: ShardId(shard),
            first_seq: first,
            events: (0..n)
                .map(|i| ev(&format!("k{}", first + i), first + i))
                .collect(),
        }],
        checkpoint: cp.map(|p| SourceCheckpoint {
            source: "src".into(),
            position: Position::at(p),
        }),
    }
}

fn open(dir: &Path) -> RocksJournal {
    RocksJournal::open(dir, OpenMode::Create, PersistPolicy::EveryBatch).unwrap()
}

#[test]
fn append_read_and_sequence_rules() {
    let t = tempfile::tempdir().unwrap();
    let j = open(t.path());
    assert_eq!(
        j.append_blocking(batch(0, 1, 3, Some(3))).unwrap(),
        AppendOutcome::Appended { events: 3 }
    );
    // A repeat of the same range is a no-op, even partially inside.
    assert_eq!(
        j.append_blocking(batch(0, 1, 3, Some(3))).unwrap(),
        AppendOutcome::Duplicate
    );
    assert_eq!(
        j.append_blocking(batch(0, 2, 2, None)).unwrap(),
        AppendOutcome::Duplicate
    );
    assert!(matches!(
        j.append_blocking(batch(0, 6, 1, None)),
        Err(JournalError::Gap {
            next: 4,
            got: 6,
            ..
        })
    ));
    assert!(matches!(
        j.append_blocking(batch(0, 3, 2, None)),
        Err(JournalError::Stale {
            next: 4,
            got: 3,
            ..
        })
    ));
    assert!(matches!(
        j.append_blocking(batch(0, 4, 1, Some(2))),
        Err(JournalError::CheckpointBackward { .. })
    ));
    // Nothing of the refused batch was written.
    assert_eq!(
        j.bounds(ShardId(0)).unwrap(),
        Some(ShardBounds { first: 1, last: 3 })
    );
    let got = j.read(ShardId(0), 1, ReadBudget::DEFAULT).unwrap();
    assert_eq!(got.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert_eq!(got[2].key, b"k3");
    assert_eq!(got[2].shard, ShardId(0));
    assert_eq!(j.source_checkpoint("src").unwrap(), Some(Position::at(3)));
    // Budget: events and bytes, at least one event.
    let one = ReadBudget {
        max_events: 10,
        max_bytes: 1,
    };
    assert_eq!(j.read(ShardId(0), 2, one).unwrap().len(), 1);
    let two = ReadBudget {
        max_events: 2,
        max_bytes: 1 << 20,
    };
    assert_eq!(j.read(ShardId(0), 1, two).unwrap().len(), 2);
    assert!(j
        .read(ShardId(0), 4, ReadBudget::DEFAULT)
        .unwrap()
        .is_empty());
    assert!(j
        .read(ShardId(9), 1, ReadBudget::DEFAULT)
        .unwrap()
        .is_empty());
}

#[test]
fn multi_shard_batches_are_atomic() {
    let t = tempfile::tempdir().unwrap();
    let j = open(t.path());
    j.append_blocking(batch(1, 1, 2, None)).unwrap();
    let mut b = batch(0, 1, 2, Some(10));
    b.shards.push(batch(1, 5, 1, None).shards.remove(0)); // gap in shard 1
    assert!(matches!(
        j.append_blocking(b),
        Err(JournalError::Gap { .. })
    ));
    assert_eq!(j.bounds(ShardId(0)).unwrap(), None);
    assert_eq!(j.source_checkpoint("src").unwrap(), None);
    let mut b = batch(0, 1, 2, None);
    b.shards.push(batch(1, 1, 2, None).shards.remove(0)); // repeat in shard 1
    assert!(matches!(
        j.append_blocking(b),
        Err(JournalError::MixedDuplicate)
    ));
}

#[test]
fn reopen_keeps_everything_and_lock_is_exclusive() {
    let t = tempfile::tempdir().unwrap();
    {
        let j = open(t.path());
        j.append_blocking(batch(0, 1, 5, Some(5))).unwrap();
        j.append_blocking(batch(3, 1, 2, None)).unwrap();
        j.set_applied_blocking("tgt", ShardId(0), 4).unwrap();
        assert!(matches!(
            RocksJournal::open(t.path(), OpenMode::Create, PersistPolicy::EveryBatch),
            Err(JournalError::Locked { .. })
        ));
        // Read-only opens do not need the lock.
        let ro = RocksJournal::open(t.path(), OpenMode::ReadOnly, PersistPolicy::Never).unwrap();
        assert_eq!(ro.shards().unwrap(), vec![ShardId(0), ShardId(3)]);
    }
    let j = open(t.path());
    assert_eq!(j.shards().unwrap(), vec![ShardId(0), ShardId(3)]);
    assert_eq!(
        j.bounds(ShardId(0)).unwrap(),
        Some(ShardBounds { first: 1, last: 5 })
    );
    assert_eq!(j.applied("tgt", ShardId(0)).unwrap(), Some(4));
    assert_eq!(j.source_checkpoint("src").unwrap(), Some(Position::at(5)));
    assert!(matches!(
        j.set_applied_blocking("tgt", ShardId(0), 3),
        Err(JournalError::CheckpointBackward { .. })
    ));
    j.set_applied_blocking("tgt", ShardId(0), 4).unwrap();
    assert_eq!(
        j.append_blocking(batch(0, 6, 1, Some(6))).unwrap(),
        AppendOutcome::Appended { events: 1 }
    );
}

#[test]
fn truncate_never_reuses_sequences() {
    let t = tempfile::tempdir().unwrap();
    let j = open(t.path());
    j.append_blocking(batch(0, 1, 10, None)).unwrap();
    j.truncate_blocking(ShardId(0), 4).unwrap();
    assert_eq!(
        j.bounds(ShardId(0)).unwrap(),
        Some(ShardBounds { first: 5, last: 10 })
    );
    assert!(matches!(
        j.read(ShardId(0), 2, ReadBudget::DEFAULT),
        Err(JournalError::Corrupt { seq: 2, .. })
    ));
    assert_eq!(j.read(ShardId(0), 5, ReadBudget::DEFAULT).unwrap().len(), 6);
    j.truncate_blocking(ShardId(0), 10).unwrap();
    assert!(matches!(
        j.truncate_blocking(ShardId(0), 11),
        Err(JournalError::TruncateBeyondEnd { .. })
    ));
    drop(j);
    let j = open(t.path());
    assert_eq!(
        j.bounds(ShardId(0)).unwrap(),
        Some(ShardBounds {
            first: 11,
            last: 10
        })
    );
    assert!(matches!(
        j.append_blocking(batch(0, 1, 1, None)),
        Ok(AppendOutcome::Duplicate)
    ));
    assert_eq!(
        j.append_blocking(batch(0, 11, 1, None)).unwrap(),
        AppendOutcome::Appended { events: 1 }
    );
    assert!(verify(&j).unwrap().is_ok());
}

#[test]
fn every_persist_policy_acknowledges_durable_appends() {
    for policy in [
        PersistPolicy::EveryBatch,
        PersistPolicy::Interval(Duration::from_millis(20)),
        PersistPolicy::Never,
    ] {
        let t = tempfile::tempdir().unwrap();
        {
            let j = Arc::new(RocksJournal::open(t.path(), OpenMode::Create, policy).unwrap());
            // Concurrent appenders to different shards share write groups.
            let handles: Vec<_> = (0..4u32)
                .map(|s| {
                    let j = Arc::clone(&j);
                    std::thread::spawn(move || {
                        for b in 0..25u64 {
                            j.append_blocking(batch(s, 1 + b * 4, 4, None)).unwrap();
                        }
                    })
                })
                .collect();
            handles.into_iter().for_each(|h| h.join().unwrap());
        }
        let j = open(t.path());
        for s in 0..4 {
            assert_eq!(
                j.bounds(ShardId(s)).unwrap(),
                Some(ShardBounds {
                    first: 1,
                    last: 100
                }),
                "{policy}"
            );
        }
        assert_eq!(verify(&j).unwrap().records, 400);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_api() {
    let t = tempfile::tempdir().unwrap();
    let j = open(t.path());
    Journal::append(&j, batch(2, 1, 3, Some(1))).await.unwrap();
    Journal::set_applied(&j, "t", ShardId(2), 3).await.unwrap();
    Journal::truncate(&j, ShardId(2), 3).await.unwrap();
    assert_eq!(
        j.bounds(ShardId(2)).unwrap(),
        Some(ShardBounds { first: 4, last: 3 })
    );
}

#[test]
fn damaged_record_is_reported_never_returned_and_repaired() {
    let t = tempfile::tempdir().unwrap();
    let j = open(t.path());
    j.append_blocking(batch(0, 1, 10, Some(10))).unwrap();
    j.append_blocking(batch(1, 1, 3, None)).unwrap();
    j.set_applied_blocking("tgt", ShardId(0), 8).unwrap();
    // Flip one bit of record (0, 6) underneath the journal.
    flip_in_record(&j, ShardId(0), 6);

    let err = j.read(ShardId(0), 1, ReadBudget::DEFAULT).unwrap_err();
    assert!(
        matches!(
            err,
            JournalError::Corrupt {
                shard: ShardId(0),
                seq: 6,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("shard 0 sequence 6"), "{err}");
    // Records before the damage are readable in a smaller read.
    let before = ReadBudget {
        max_events: 5,
        max_bytes: 1 << 20,
    };
    assert_eq!(j.read(ShardId(0), 1, before).unwrap().len(), 5);

    let report = verify(&j).unwrap();
    assert_eq!(report.damage.len(), 1, "{:?}", report.damage);
    assert!(matches!(
        &report.damage[0],
        Damage::Record {
            shard: ShardId(0),
            seq: 6,
            ..
        }
    ));
    let fixed = repair(&j, &report).unwrap();
    assert!(
        fixed
            .actions
            .iter()
            .any(|a| a.contains("dropped sequences 6..=10 (5 records)")),
        "{:?}",
        fixed.actions
    );
    assert!(
        fixed
            .actions
            .iter()
            .any(|a| a.contains("moved back from 8 to 5")),
        "{:?}",
        fixed.actions
    );
    drop(j);
    let j = open(t.path());
    assert!(verify(&j).unwrap().is_ok());
    assert_eq!(
        j.bounds(ShardId(0)).unwrap(),
        Some(ShardBounds { first: 1, last: 5 })
    );
    assert_eq!(j.source_checkpoint("src").unwrap(), None);
    assert_eq!(j.applied("tgt", ShardId(0)).unwrap(), Some(5));
    assert_eq!(j.read(ShardId(1), 1, ReadBudget::DEFAULT).unwrap().len(), 3);
    j.append_blocking(batch(0, 6, 1, None)).unwrap();
}

#[test]
fn missing_record_is_damage() {
    let t = tempfile::tempdir().unwrap();
    let j = open(t.path());
    j.append_blocking(batch(0, 1, 2, None)).unwrap();
    j.append_blocking(batch(0, 3, 2, None)).unwrap();
    j.append_blocking(batch(0, 5, 1, None)).unwrap();
    let cf = j.db().cf_handle(columns::EVENTS).unwrap();
    j.db().delete_cf(cf, event_key(ShardId(0), 3)).unwrap();
    assert!(matches!(
        j.read(ShardId(0), 1, ReadBudget::DEFAULT),
        Err(JournalError::Corrupt { seq: 3, .. })
    ));
    let r = verify(&j).unwrap();
    assert!(
        matches!(&r.damage[..], [Damage::Record { seq: 3, .. }]),
        "{:?}",
        r.damage
    );
    repair(&j, &r).unwrap();
    drop(j);
    let j = open(t.path());
    assert!(verify(&j).unwrap().is_ok());
    assert_eq!(
        j.bounds(ShardId(0)).unwrap(),
        Some(ShardBounds { first: 1, last: 2 })
    );
}

#[test]
fn reads_and_truncation_cross_chunk_boundaries() {
    let t = tempfile::tempdir().unwrap();
    let j = open(t.path());
    for b in 0..10u64 {
        j.append_blocking(batch(0, 1 + b * 7, 7, None)).unwrap();
    }
    // Reads starting inside a chunk, ending inside another.
    let small = ReadBudget {
        max_events: 9,
        max_bytes: 1 << 20,
    };
    let got = j.read(ShardId(0), 12, small).unwrap();
    assert_eq!(
        got.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (12..21).collect::<Vec<_>>()
    );
    // Truncating into the middle of a chunk keeps it but hides its head.
    j.truncate_blocking(ShardId(0), 17).unwrap();
    assert!(matches!(
        j.read(ShardId(0), 17, small),
        Err(JournalError::Corrupt { seq: 17, .. })
    ));
    assert_eq!(j.read(ShardId(0), 18, small).unwrap()[0].seq, 18);
    assert!(verify(&j).unwrap().is_ok());
    drop(j);
    let j = open(t.path());
    assert_eq!(
        j.bounds(ShardId(0)).unwrap(),
        Some(ShardBounds {
            first: 18,
            last: 70
        })
    );
    assert_eq!(verify(&j).unwrap().records, 53);
    // Damage inside a chunk is cut at that record; the chunk keeps its head.
    flip_in_record(&j, ShardId(0), 40);
    let r = verify(&j).unwrap();
    assert!(
        matches!(&r.damage[..], [Damage::Record { seq: 40, .. }]),
        "{:?}",
        r.damage
    );
    repair(&j, &r).unwrap();
    drop(j);
    let j = open(t.path());
    assert!(verify(&j).unwrap().is_ok());
    assert_eq!(
        j.bounds(ShardId(0)).unwrap(),
        Some(ShardBounds {
            first: 18,
            last: 39
        })
    );
    assert_eq!(
        j.read(ShardId(0), 18, ReadBudget::DEFAULT).unwrap().len(),
        22
    );
    j.append_blocking(batch(0, 40, 3, None)).unwrap();
    assert_eq!(
        j.read(ShardId(0), 38, ReadBudget::DEFAULT).unwrap().len(),
        5
    );
}

/// Flips one bit inside the payload of record `seq` of `shard`, underneath
/// the journal, as a disk or memory error would.
fn flip_in_record(j: &RocksJournal, shard: ShardId, seq: Seq) {
    let start = chunk_start(j.db(), shard, seq)
        .unwrap()
        .expect("a chunk holds the record");
    let cf = j.db().cf_handle(columns::EVENTS).unwrap();
    let mut v = j.db().get_cf(cf, event_key(shard, start)).unwrap().unwrap();
    let (offset, _) = columns::records(&v)
        .nth((seq - start) as usize)
        .unwrap()
        .unwrap();
    v[offset + 4 + 4 + 2] ^= 0x04;
    j.db().put_cf(cf, event_key(shard, start), &v).unwrap();
}

#[test]
fn truncation_racing_appends_never_loses_the_end() {
    // Appends and truncations of one shard land in the same write groups;
    // a truncation must not roll back the `last` an append just moved.
    let t = tempfile::tempdir().unwrap();
    let j = Arc::new(open(t.path()));
    let appender = {
        let j = Arc::clone(&j);
        std::thread::spawn(move || {
            for b in 0..300u64 {
                j.append_blocking(batch(0, 1 + b * 3, 3, None)).unwrap();
            }
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !appender.is_finished() {
        assert!(std::time::Instant::now() < deadline);
        if let Some(b) = j.bounds(ShardId(0)).unwrap() {
            if b.last > 5 {
                j.truncate_blocking(ShardId(0), b.last - 5).unwrap();
            }
        }
    }
    appender.join().unwrap();
    let b = j.bounds(ShardId(0)).unwrap().unwrap();
    assert_eq!(b.last, 900);
    let got = j
        .read(
            ShardId(0),
            b.first,
            ReadBudget {
                max_events: 10_000,
                max_bytes: usize::MAX,
            },
        )
        .unwrap();
    assert_eq!(got.last().map(|e| e.seq), Some(900));
    assert!(verify(&j).unwrap().is_ok());
}

#[test]
fn sealed_secrets_never_reach_the_journal_files_in_clear() {
    use ferry_journal::seal::SealKey;
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("journal");
    let secret = b"keyring-master-Zq9xW2vLr8TqN4";
    let b64 = "a2V5cmluZy1tYXN0ZXItWnE5eFcydkxyOFRxTjQ"; // base64 of the secret, unpadded prefix
    {
        let j = open(&dir);
        let key = SealKey::load_or_create(&t.path().join("journal.key")).unwrap();
        let mut b = batch(0, 1, 50, None);
        for e in &mut b.shards[0].events {
            e.op = Op::Put {
                value: key.seal(secret),
                meta: StoreMeta::None,
            };
        }
        j.append_blocking(b).unwrap();
        let back = j.read(ShardId(0), 1, ReadBudget::DEFAULT).unwrap();
        let Op::Put { value, .. } = &back[7].op else {
            panic!()
        };
        assert_eq!(key.open(value).unwrap(), secret);
    }
    for entry in std::fs::read_dir(&dir).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap_or_default();
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret),
            "secret in clear"
        );
        assert!(
            !bytes.windows(b64.len()).any(|w| w == b64.as_bytes()),
            "secret in base64"
        );
    }
}

/// The RocksDB journal under the shared conformance suite. "Crash" drops
/// the journal (which closes RocksDB) and opens the directory again:
/// durability against a real kill is what the SIGKILL tests of the agent
/// check.
struct Rocks {
    dirs: Vec<tempfile::TempDir>,
}

impl ferry_journal::conformance::Harness for Rocks {
    type J = RocksJournal;
    fn create(&mut self) -> RocksJournal {
        self.dirs.push(tempfile::tempdir().unwrap());
        open(self.dirs.last().unwrap().path())
    }
    fn reopen(&mut self, j: RocksJournal) -> RocksJournal {
        drop(j);
        open(self.dirs.last().unwrap().path())
    }
    fn damage(&mut self, j: RocksJournal, shard: ShardId, seq: Seq) -> Option<RocksJournal> {
        flip_in_record(&j, shard, seq);
        Some(j)
    }
}

#[test]
fn the_journal_contract_holds() {
    ferry_journal::conformance::run_all(&mut Rocks { dirs: Vec::new() });
}

#[test]
fn random_operations_with_crashes_agree_with_the_model() {
    let mut h = Rocks { dirs: Vec::new() };
    for seed in 0..24 {
        ferry_journal::conformance::model_based(&mut h, seed, 300);
        h.dirs.clear();
    }
}
