//! The journal contract as tests, run over every implementation.
//!
//! An implementation's test module provides a [`Harness`] (how to make an
//! empty journal, how to crash and reopen it, how to damage a stored record)
//! and calls [`run_all`] and [`model_based`]; the same checks then hold for
//! the RocksDB journal and for any journal added later. Each check panics
//! with what broke.
//!
//! [`model_based`] drives a journal and an in-memory model of the contract
//! (written here in a few lines, obviously right) with the same random
//! operations, a crash and reopen among them, and compares every answer.
//! It is seeded, and a failure names the seed and the operations so far.

use crate::{
    AppendBatch, AppendOutcome, Journal, JournalError, ReadBudget, ShardAppend, ShardBounds,
    SourceCheckpoint,
};
use ferry_core::{Event, Op, Position, Seq, ShardId, StoreMeta, Value};
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;

/// How the checks make, crash and damage a journal.
pub trait Harness {
    type J: Journal;
    /// A new, empty journal.
    fn create(&mut self) -> Self::J;
    /// The same journal after a crash: `j` is dropped without a shutdown
    /// and its storage opened again.
    fn reopen(&mut self, j: Self::J) -> Self::J;
    /// Damages the stored record `seq` of `shard` and reopens; `None` when
    /// the implementation's storage cannot be damaged from outside.
    fn damage(&mut self, j: Self::J, shard: ShardId, seq: Seq) -> Option<Self::J>;
}

/// An event of `shard` whose key and value name its sequence.
pub fn event(shard: u32, seq: Seq) -> Event {
    Event {
        shard: ShardId(shard),
        seq: 0,
        position: Position::at(seq),
        key: format!("s{shard}/k{seq}").into_bytes(),
        op: Op::Put {
            value: Value::Plain(format!("v{seq}-{}", "x".repeat((seq % 7) as usize)).into_bytes()),
            meta: StoreMeta::None,
        },
        source_ts_ms: seq,
        capture_ts_ms: seq,
    }
}

/// `n` events of `shard` from `first`, with an optional checkpoint.
pub fn batch(shard: u32, first: Seq, n: u64, checkpoint: Option<u64>) -> AppendBatch {
    AppendBatch {
        shards: vec![ShardAppend {
            shard: ShardId(shard),
            first_seq: first,
            events: (first..first + n).map(|s| event(shard, s)).collect(),
        }],
        checkpoint: checkpoint.map(|p| SourceCheckpoint {
            source: "src".into(),
            position: Position::at(p),
        }),
    }
}

fn block<F: std::future::Future>(f: F) -> F::Output {
    futures::executor::block_on(f)
}

fn seqs(j: &impl Journal, shard: u32, from: Seq) -> Vec<Seq> {
    j.read(ShardId(shard), from, ReadBudget::DEFAULT)
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect()
}

/// Every check of the contract, each on a journal of its own.
pub fn run_all<H: Harness>(h: &mut H) {
    appends_are_numbered_and_read_back_whole(h);
    repeats_are_duplicates_and_gaps_or_overlaps_are_refused(h);
    a_batch_is_atomic_across_shards(h);
    checkpoints_never_move_backward(h);
    reads_keep_to_the_budget_but_return_at_least_one(h);
    truncation_never_reuses_sequences(h);
    a_crash_keeps_every_acknowledged_append(h);
    damage_is_named_never_returned(h);
}

pub fn appends_are_numbered_and_read_back_whole<H: Harness>(h: &mut H) {
    let j = h.create();
    assert_eq!(
        j.bounds(ShardId(0)).unwrap(),
        None,
        "a new journal is empty"
    );
    assert_eq!(
        block(j.append(batch(0, 1, 3, Some(3)))).unwrap(),
        AppendOutcome::Appended { events: 3 }
    );
    let got = j.read(ShardId(0), 1, ReadBudget::DEFAULT).unwrap();
    assert_eq!(got.len(), 3);
    for (i, e) in got.iter().enumerate() {
        let want = event(0, i as u64 + 1);
        assert_eq!((e.shard, e.seq), (ShardId(0), i as u64 + 1));
        assert_eq!(
            (&e.key, &e.op, &e.position),
            (&want.key, &want.op, &want.position)
        );
        assert_eq!(
            (e.source_ts_ms, e.capture_ts_ms),
            (want.source_ts_ms, want.capture_ts_ms)
        );
    }
    assert_eq!(
        j.bounds(ShardId(0)).unwrap(),
        Some(ShardBounds { first: 1, last: 3 })
    );
    assert_eq!(j.shards().unwrap(), vec![ShardId(0)]);
    assert!(seqs(&j, 0, 4).is_empty(), "nothing after the end");
    assert!(
        seqs(&j, 9, 1).is_empty(),
        "nothing in a shard never written"
    );
}

pub fn repeats_are_duplicates_and_gaps_or_overlaps_are_refused<H: Harness>(h: &mut H) {
    let j = h.create();
    block(j.append(batch(0, 1, 3, Some(3)))).unwrap();
    for (first, n) in [(1, 3), (2, 2), (3, 1)] {
        assert_eq!(
            block(j.append(batch(0, first, n, None))).unwrap(),
            AppendOutcome::Duplicate,
            "a repeat of {first}..{} inside what exists",
            first + n - 1
        );
    }
    assert!(matches!(
        block(j.append(batch(0, 6, 1, None))),
        Err(JournalError::Gap {
            next: 4,
            got: 6,
            ..
        })
    ));
    assert!(matches!(
        block(j.append(batch(0, 3, 2, None))),
        Err(JournalError::Stale {
            next: 4,
            got: 3,
            ..
        })
    ));
    assert_eq!(
        seqs(&j, 0, 1),
        vec![1, 2, 3],
        "refused appends wrote nothing"
    );
    assert_eq!(
        block(j.append(batch(0, 4, 1, None))).unwrap(),
        AppendOutcome::Appended { events: 1 }
    );
}

pub fn a_batch_is_atomic_across_shards<H: Harness>(h: &mut H) {
    let j = h.create();
    block(j.append(batch(0, 1, 2, None))).unwrap();
    // Shard 1 is new and fine, shard 0 has a gap: nothing of it is written.
    let mut b = batch(1, 1, 2, Some(9));
    b.shards.extend(batch(0, 5, 1, None).shards);
    assert!(matches!(block(j.append(b)), Err(JournalError::Gap { .. })));
    assert_eq!(
        j.bounds(ShardId(1)).unwrap(),
        None,
        "half a batch was written"
    );
    assert_eq!(j.source_checkpoint("src").unwrap(), None);
    // A repeat of shard 0 beside new events of shard 1: a caller bug.
    let mut b = batch(1, 1, 2, None);
    b.shards.extend(batch(0, 1, 2, None).shards);
    assert!(matches!(
        block(j.append(b)),
        Err(JournalError::MixedDuplicate)
    ));
    assert_eq!(j.bounds(ShardId(1)).unwrap(), None);
    // Both new: both written, with the checkpoint.
    let mut b = batch(1, 1, 2, Some(4));
    b.shards.extend(batch(0, 3, 1, None).shards);
    assert_eq!(
        block(j.append(b)).unwrap(),
        AppendOutcome::Appended { events: 3 }
    );
    assert_eq!(seqs(&j, 1, 1), vec![1, 2]);
    assert_eq!(seqs(&j, 0, 1), vec![1, 2, 3]);
    assert_eq!(j.source_checkpoint("src").unwrap(), Some(Position::at(4)));
}

pub fn checkpoints_never_move_backward<H: Harness>(h: &mut H) {
    let j = h.create();
    block(j.append(batch(0, 1, 2, Some(5)))).unwrap();
    assert!(matches!(
        block(j.append(batch(0, 3, 1, Some(4)))),
        Err(JournalError::CheckpointBackward { .. })
    ));
    assert_eq!(
        seqs(&j, 0, 1),
        vec![1, 2],
        "the refused batch's events were written"
    );
    // A checkpoint alone moves the source on.
    block(j.append(AppendBatch {
        shards: vec![],
        checkpoint: batch(0, 1, 0, Some(7)).checkpoint,
    }))
    .unwrap();
    assert_eq!(j.source_checkpoint("src").unwrap(), Some(Position::at(7)));
    assert_eq!(j.source_checkpoint("other").unwrap(), None);
    block(j.set_applied("t", ShardId(0), 2)).unwrap();
    block(j.set_applied("t", ShardId(0), 2)).unwrap();
    assert!(matches!(
        block(j.set_applied("t", ShardId(0), 1)),
        Err(JournalError::CheckpointBackward { .. })
    ));
    assert_eq!(j.applied("t", ShardId(0)).unwrap(), Some(2));
    assert_eq!(j.applied("u", ShardId(0)).unwrap(), None);
}

pub fn reads_keep_to_the_budget_but_return_at_least_one<H: Harness>(h: &mut H) {
    let j = h.create();
    block(j.append(batch(0, 1, 50, None))).unwrap();
    let tiny = ReadBudget {
        max_events: 10,
        max_bytes: 1,
    };
    assert_eq!(
        seqs_budget(&j, 7, tiny),
        vec![7],
        "one event even over budget"
    );
    let five = ReadBudget {
        max_events: 5,
        max_bytes: 1 << 20,
    };
    assert_eq!(seqs_budget(&j, 10, five), vec![10, 11, 12, 13, 14]);
    // Reading on from each batch's end covers every event once, in order.
    let (mut from, mut all) = (1, Vec::new());
    loop {
        let got = seqs_budget(&j, from, five);
        let Some(&last) = got.last() else { break };
        all.extend(got);
        from = last + 1;
    }
    assert_eq!(all, (1..=50).collect::<Vec<_>>());
}

fn seqs_budget(j: &impl Journal, from: Seq, budget: ReadBudget) -> Vec<Seq> {
    j.read(ShardId(0), from, budget)
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect()
}

pub fn truncation_never_reuses_sequences<H: Harness>(h: &mut H) {
    let j = h.create();
    block(j.append(batch(0, 1, 10, None))).unwrap();
    block(j.truncate(ShardId(0), 4)).unwrap();
    assert_eq!(
        j.bounds(ShardId(0)).unwrap(),
        Some(ShardBounds { first: 5, last: 10 })
    );
    assert_eq!(seqs(&j, 0, 5), (5..=10).collect::<Vec<_>>());
    assert!(
        matches!(
            j.read(ShardId(0), 2, ReadBudget::DEFAULT),
            Err(JournalError::Corrupt { seq: 2, .. })
        ),
        "a read of truncated events is an error, never a silent skip"
    );
    assert!(matches!(
        block(j.truncate(ShardId(0), 11)),
        Err(JournalError::TruncateBeyondEnd { .. })
    ));
    block(j.truncate(ShardId(0), 10)).unwrap();
    let b = j.bounds(ShardId(0)).unwrap().unwrap();
    assert!(b.is_empty() && b.next_seq() == 11, "{b:?}");
    assert!(matches!(
        block(j.append(batch(0, 1, 1, None))),
        Ok(AppendOutcome::Duplicate) | Err(JournalError::Stale { .. })
    ));
    block(j.append(batch(0, 11, 2, None))).unwrap();
    assert_eq!(seqs(&j, 0, 11), vec![11, 12]);
    let j = h.reopen(j);
    assert_eq!(
        j.bounds(ShardId(0)).unwrap(),
        Some(ShardBounds {
            first: 11,
            last: 12
        }),
        "truncation survives a reopen"
    );
}

pub fn a_crash_keeps_every_acknowledged_append<H: Harness>(h: &mut H) {
    let j = h.create();
    for i in 0..20u64 {
        block(j.append(batch((i % 3) as u32, i / 3 + 1, 1, Some(i + 1)))).unwrap();
    }
    block(j.set_applied("t", ShardId(1), 4)).unwrap();
    let j = h.reopen(j);
    assert_eq!(seqs(&j, 0, 1), (1..=7).collect::<Vec<_>>());
    assert_eq!(seqs(&j, 1, 1), (1..=7).collect::<Vec<_>>());
    assert_eq!(seqs(&j, 2, 1), (1..=6).collect::<Vec<_>>());
    assert_eq!(
        j.shards().unwrap(),
        vec![ShardId(0), ShardId(1), ShardId(2)]
    );
    assert_eq!(j.source_checkpoint("src").unwrap(), Some(Position::at(20)));
    assert_eq!(j.applied("t", ShardId(1)).unwrap(), Some(4));
    // The next append goes on where the journal was.
    assert!(matches!(
        block(j.append(batch(0, 7, 1, None))),
        Ok(AppendOutcome::Duplicate)
    ));
    block(j.append(batch(0, 8, 1, None))).unwrap();
}

pub fn damage_is_named_never_returned<H: Harness>(h: &mut H) {
    let j = h.create();
    block(j.append(batch(0, 1, 5, None))).unwrap();
    let Some(j) = h.damage(j, ShardId(0), 3) else {
        return;
    };
    let before = j
        .read(
            ShardId(0),
            1,
            ReadBudget {
                max_events: 2,
                max_bytes: 1 << 20,
            },
        )
        .unwrap();
    assert_eq!(before.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2]);
    match j.read(ShardId(0), 3, ReadBudget::DEFAULT) {
        Err(JournalError::Corrupt { shard, seq, .. }) => {
            assert_eq!((shard, seq), (ShardId(0), 3));
        }
        other => panic!("a damaged record was read as {other:?}"),
    }
}

/// The contract in memory: what every journal must answer.
#[derive(Clone, Debug, Default)]
struct Model {
    /// shard → (first, last).
    shards: BTreeMap<u32, (Seq, Seq)>,
    checkpoint: Option<u64>,
    applied: BTreeMap<u32, Seq>,
}

impl Model {
    fn append(
        &mut self,
        shard: u32,
        first: Seq,
        n: u64,
        cp: Option<u64>,
    ) -> Result<bool, &'static str> {
        let last = self.shards.get(&shard).map_or(0, |b| b.1);
        if first + n - 1 <= last && first >= 1 {
            return Ok(false);
        }
        if first > last + 1 {
            return Err("gap");
        }
        if first < last + 1 {
            return Err("stale");
        }
        if cp.zip(self.checkpoint).is_some_and(|(new, old)| new < old) {
            return Err("backward");
        }
        let b = self.shards.entry(shard).or_insert((1, 0));
        b.1 = first + n - 1;
        if cp.is_some() {
            self.checkpoint = cp;
        }
        Ok(true)
    }
}

/// Random operations on a journal and on the model, compared after each;
/// `steps` of them, a crash and reopen among them now and then.
pub fn model_based<H: Harness>(h: &mut H, seed: u64, steps: usize) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut j = h.create();
    let mut m = Model::default();
    let mut log: Vec<String> = Vec::new();
    let mut cp = 0u64;
    for _ in 0..steps {
        let shard = rng.gen_range(0..3u32);
        let (first, last) = m.shards.get(&shard).copied().unwrap_or((1, 0));
        match rng.gen_range(0..100) {
            // Appends: mostly the next, some repeats, gaps and overlaps.
            0..=49 => {
                let n = rng.gen_range(1..20u64);
                let (at, n) = match rng.gen_range(0..10) {
                    // A repeat (truncated sequences count as written).
                    0 if last >= 1 => {
                        let at = rng.gen_range(1..=last);
                        (at, n.min(last - at + 1))
                    }
                    1 => (last + 1 + rng.gen_range(1..5), n),
                    // Overlapping the end.
                    2 if last >= 1 => (last, n.max(2)),
                    _ => (last + 1, n),
                };
                let c = match rng.gen_range(0..4) {
                    0 => None,
                    1 if cp > 0 => Some(cp - 1),
                    _ => {
                        cp += 1;
                        Some(cp)
                    }
                };
                log.push(format!("append shard {shard} {at}+{n} checkpoint {c:?}"));
                let want = m.append(shard, at, n, c);
                let got = block(j.append(batch(shard, at, n, c)));
                let ok = match (&want, &got) {
                    (Ok(true), Ok(AppendOutcome::Appended { events })) => *events == n as usize,
                    (Ok(false), Ok(AppendOutcome::Duplicate)) => true,
                    (Err("gap"), Err(JournalError::Gap { .. })) => true,
                    (Err("stale"), Err(JournalError::Stale { .. })) => true,
                    (Err("backward"), Err(JournalError::CheckpointBackward { .. })) => true,
                    _ => false,
                };
                assert!(
                    ok,
                    "seed {seed}: model {want:?}, journal {got:?}\n{}",
                    log.join("\n")
                );
            }
            50..=64 if last >= first => {
                let through = rng.gen_range(first..=last);
                log.push(format!("truncate shard {shard} through {through}"));
                block(j.truncate(ShardId(shard), through)).unwrap();
                m.shards.insert(shard, (through + 1, last));
            }
            65..=74 if last >= 1 => {
                let to = rng.gen_range(1..=last);
                let before = m.applied.get(&shard).copied();
                log.push(format!("set_applied shard {shard} {to}"));
                let got = block(j.set_applied("t", ShardId(shard), to));
                if before.is_some_and(|b| to < b) {
                    assert!(
                        matches!(got, Err(JournalError::CheckpointBackward { .. })),
                        "seed {seed}: {got:?}\n{}",
                        log.join("\n")
                    );
                } else {
                    got.unwrap();
                    m.applied.insert(shard, to);
                }
            }
            75..=79 => {
                log.push("crash and reopen".into());
                j = h.reopen(j);
            }
            _ => {
                let from = rng.gen_range(1..=last + 2);
                let budget = ReadBudget {
                    max_events: rng.gen_range(1..40),
                    max_bytes: rng.gen_range(1..4096),
                };
                let read = j.read(ShardId(shard), from, budget);
                if from < first {
                    assert!(
                        matches!(read, Err(JournalError::Corrupt { .. })),
                        "seed {seed}: a read of truncated events gave {read:?}\n{}",
                        log.join("\n")
                    );
                    continue;
                }
                let got: Vec<Seq> = read
                    .unwrap()
                    .iter()
                    .map(|e| {
                        assert_eq!(e.key, event(shard, e.seq).key, "seed {seed}");
                        e.seq
                    })
                    .collect();
                let start = from.max(first);
                let want_first = (start <= last).then_some(start);
                assert_eq!(
                    got.first().copied(),
                    want_first,
                    "seed {seed}: read shard {shard} from {from}\n{}",
                    log.join("\n")
                );
                assert!(
                    got.windows(2).all(|w| w[1] == w[0] + 1)
                        && got.len() <= budget.max_events
                        && got.last().is_none_or(|&l| l <= last),
                    "seed {seed}: read shard {shard} from {from}: {got:?}\n{}",
                    log.join("\n")
                );
            }
        }
        for (&s, &(first, last)) in &m.shards {
            let b = j.bounds(ShardId(s)).unwrap().expect("a shard appended to");
            assert_eq!(b.last, last, "seed {seed}: shard {s}\n{}", log.join("\n"));
            if first <= last {
                assert_eq!(b.first, first, "seed {seed}: shard {s}\n{}", log.join("\n"));
            } else {
                assert!(
                    b.is_empty(),
                    "seed {seed}: shard {s} {b:?}\n{}",
                    log.join("\n")
                );
            }
        }
        assert_eq!(
            j.source_checkpoint("src").unwrap(),
            m.checkpoint.map(Position::at),
            "seed {seed}\n{}",
            log.join("\n")
        );
        for (&s, &a) in &m.applied {
            assert_eq!(j.applied("t", ShardId(s)).unwrap(), Some(a), "seed {seed}");
        }
    }
}
