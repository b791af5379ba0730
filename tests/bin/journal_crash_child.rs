//! Appends the crash workload to a journal forever, fsync per batch,
//! printing `ACK <batch>` only after each append returned (was durable).
//! The crash test kills it with SIGKILL at random moments.

use ferry_journal::{Journal, PersistPolicy};
use ferry_journal_rocks::{OpenMode, RocksJournal};
use ferry_tests::{crash_batch, CRASH_SHARDS, CRASH_SOURCE};
use std::io::Write;

fn main() {
    let dir = std::env::args()
        .nth(1)
        .expect("usage: journal-crash-child DIR");
    let j = RocksJournal::open(dir.as_ref(), OpenMode::Create, PersistPolicy::EveryBatch)
        .expect("open journal");
    let mut next: Vec<u64> = (0..CRASH_SHARDS)
        .map(|s| {
            j.bounds(ferry_core::ShardId(s))
                .expect("bounds")
                .map_or(1, |b| b.next_seq())
        })
        .collect();
    let mut b = j
        .source_checkpoint(CRASH_SOURCE)
        .expect("checkpoint")
        .map_or(0, |p| p.order);
    let mut out = std::io::stdout().lock();
    // Bounded: the parent kills us long before this many batches.
    for _ in 0..1_000_000 {
        b += 1;
        j.append_blocking(crash_batch(b, &mut next))
            .expect("append");
        writeln!(out, "ACK {b}")
            .and_then(|()| out.flush())
            .expect("stdout");
    }
}
