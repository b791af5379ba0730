//! Journal durability under SIGKILL: a child appends batches with fsync per
//! batch and is killed at random moments; after every kill the journal
//! holds every acknowledged batch whole, no partial batch, the checkpoint
//! agrees with the events, and `ferry journal verify` passes.

use ferry_core::ShardId;
use ferry_journal::{Journal, PersistPolicy, ReadBudget};
use ferry_journal_rocks::{OpenMode, RocksJournal};
use ferry_tests::{
    crash_batch_len, crash_batch_shards, crash_event, ferry_bin, CRASH_SHARDS, CRASH_SOURCE,
};
use rand::Rng;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const KILLS: usize = 50;

/// What the checker has already proven: batches `1..=through` are in the
/// journal whole, and shard `s`'s next unchecked sequence is `next[s]`.
struct Checked {
    through: u64,
    next: Vec<u64>,
}

/// Reopens the journal and checks every batch since the last check: each
/// is there whole, in order, byte for byte, and nothing lies past the
/// checkpoint. Earlier records are covered by `ferry journal verify`, which
/// re-reads every record each round.
/// Returns false when the child died before the journal existed.
fn check_journal(dir: &Path, acked: u64, checked: &mut Checked) -> bool {
    let j = match RocksJournal::open(dir, OpenMode::Existing, PersistPolicy::EveryBatch) {
        Ok(j) => j,
        // Killed while creating the journal, before anything was acknowledged:
        // there is nothing to check yet (the next round creates it again).
        Err(ferry_journal::JournalError::Missing { .. }) if acked == 0 => return false,
        Err(e) => panic!("reopen after kill: {e:?}"),
    };
    let cp = j
        .source_checkpoint(CRASH_SOURCE)
        .unwrap()
        .map_or(0, |p| p.order);
    assert!(
        cp >= acked,
        "checkpoint {cp} is behind acknowledged batch {acked}"
    );
    assert!(
        cp >= checked.through,
        "checkpoint moved back from {} to {cp}",
        checked.through
    );
    for s in 0..CRASH_SHARDS {
        let mut expected = (checked.through + 1..=cp)
            .filter(|b| crash_batch_shards(*b).contains(&s))
            .flat_map(|b| (0..crash_batch_len(b)).map(move |i| (b, i)));
        let mut from = checked.next[s as usize];
        loop {
            let events = j.read(ShardId(s), from, ReadBudget::DEFAULT).unwrap();
            if events.is_empty() {
                break;
            }
            for e in &events {
                let (b, i) = expected.next().unwrap_or_else(|| {
                    panic!(
                        "shard {s} seq {} holds an event past checkpoint {cp}",
                        e.seq
                    )
                });
                let mut want = crash_event(b, s, i);
                want.seq = from;
                assert_eq!(e, &want, "shard {s} seq {from}");
                from += 1;
            }
        }
        assert!(
            expected.next().is_none(),
            "shard {s}: events of checkpointed batches are missing after seq {}",
            from - 1
        );
        assert_eq!(
            j.bounds(ShardId(s)).unwrap().map_or(0, |b| b.last),
            from - 1
        );
        checked.next[s as usize] = from;
    }
    checked.through = cp;
    true
}

#[test]
fn sigkill_during_appends_loses_no_acknowledged_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("journal");
    let child_bin = env!("CARGO_BIN_EXE_journal-crash-child");
    let mut rng = rand::thread_rng();
    let mut acked_total = 0u64;
    let mut checked = Checked {
        through: 0,
        next: vec![1; CRASH_SHARDS as usize],
    };
    let deadline = Instant::now() + Duration::from_secs(240);
    for round in 0..KILLS {
        assert!(
            Instant::now() < deadline,
            "crash test exceeded its time bound"
        );
        let mut child = Command::new(child_bin)
            .arg(&dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(b) = line
                    .strip_prefix("ACK ")
                    .and_then(|n| n.parse::<u64>().ok())
                {
                    let _ = tx.send(b);
                }
            }
        });
        // Kill at a random moment: sometimes while opening, mostly mid-append.
        std::thread::sleep(Duration::from_millis(rng.gen_range(5..400)));
        child.kill().expect("SIGKILL");
        child.wait().unwrap();
        reader.join().unwrap();
        let acked = rx.try_iter().max().unwrap_or(acked_total);
        acked_total = acked_total.max(acked);
        if !check_journal(&dir, acked_total, &mut checked) {
            continue;
        }
        let out = Command::new(ferry_bin())
            .args(["journal", "verify"])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "round {round}: verify failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        acked_total = acked_total.max(checked.through);
    }
    assert!(
        acked_total > 50,
        "the child made too little progress ({acked_total} batches) to test anything"
    );
}
