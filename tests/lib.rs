//! Helpers for Ferry's end-to-end tests: where the binaries are, and the
//! deterministic workload the journal crash test writes and checks.

use ferry_core::{Event, Op, Position, ShardId, StoreMeta, Value};
use ferry_journal::{AppendBatch, ShardAppend, SourceCheckpoint};
pub mod harness;
pub mod mongo;
pub mod topic;

use std::path::PathBuf;

/// The `ferry` binary of this build. `cargo test --workspace` builds it
/// before any test runs (ferry-cli has integration tests, so cargo builds
/// its binary); `FERRY_BIN` overrides.
pub fn ferry_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("FERRY_BIN") {
        return PathBuf::from(p);
    }
    // target/<profile>/deps/<test-binary> -> target/<profile>/ferry
    let exe = std::env::current_exe().expect("current exe");
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test binary lives in target/<profile>/deps")
        .join("ferry");
    assert!(
        bin.exists(),
        "{} is missing: run the tests with `cargo test --workspace` (or `cargo build -p ferry-cli` first)",
        bin.display()
    );
    bin
}

/// The shards written by the crash workload.
pub const CRASH_SHARDS: u32 = 4;
/// The source name the crash workload checkpoints under.
pub const CRASH_SOURCE: &str = "crash://workload";

/// Which shards batch `b` writes to: one, two, or all of them.
pub fn crash_batch_shards(b: u64) -> Vec<u32> {
    match b % 5 {
        0 => (0..CRASH_SHARDS).collect(),
        1 | 2 => vec![(b % u64::from(CRASH_SHARDS)) as u32],
        _ => vec![
            (b % u64::from(CRASH_SHARDS)) as u32,
            ((b + 1) % u64::from(CRASH_SHARDS)) as u32,
        ],
    }
}

/// How many events batch `b` writes to each of its shards.
pub fn crash_batch_len(b: u64) -> u64 {
    1 + (b * 7) % 12
}

/// The event `i` of batch `b` in `shard`: fully determined by its numbers,
/// so the checker knows exactly what must be there.
pub fn crash_event(b: u64, shard: u32, i: u64) -> Event {
    let len = ((b * 13 + i * 7) % 300) as usize;
    Event {
        shard: ShardId(shard),
        seq: 0,
        position: Position::at(b),
        key: format!("b{b}-s{shard}-i{i}").into_bytes(),
        op: Op::Put {
            value: Value::Plain(vec![(b as u8) ^ (i as u8); len]),
            meta: StoreMeta::None,
        },
        source_ts_ms: b,
        capture_ts_ms: i,
    }
}

/// Batch `b`, given each shard's next sequence (updated).
pub fn crash_batch(b: u64, next: &mut [u64]) -> AppendBatch {
    let shards = crash_batch_shards(b)
        .into_iter()
        .map(|s| {
            let n = crash_batch_len(b);
            let first_seq = next[s as usize];
            next[s as usize] += n;
            ShardAppend {
                shard: ShardId(s),
                first_seq,
                events: (0..n).map(|i| crash_event(b, s, i)).collect(),
            }
        })
        .collect();
    AppendBatch {
        shards,
        checkpoint: Some(SourceCheckpoint {
            source: CRASH_SOURCE.into(),
            position: Position::at(b),
        }),
    }
}
