//! Shards: the unit of ordering.
//!
//! Events of one shard are journaled and applied in order; different shards
//! are independent. A key always maps to the same shard for a given shard
//! count, across processes, machines and Ferry versions, because the hash
//! (XXH3-64 with seed 0) is a fixed, specified function. Changing it would
//! reorder a resumed journal, so it must never change for existing journals.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A shard number, `0..shard_count`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct ShardId(pub u32);

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The shard of `key` among `shard_count` shards (`shard_count` of 0 is
/// treated as 1).
pub fn shard_for_key(key: &[u8], shard_count: u32) -> ShardId {
    let n = u64::from(shard_count.max(1));
    let shard = xxhash_rust::xxh3::xxh3_64(key) % n;
    // `shard < n <= u32::MAX`, so the narrowing cannot lose bits.
    ShardId(u32::try_from(shard).unwrap_or(0))
}

/// The shards one source's events go to: `first..first + count`.
///
/// An agent with several sources gives each its own span of one journal, so
/// every source keeps its own order and checkpoints and the journal stays
/// one file set. A source with one span of `first = 0` is the single-source
/// case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardSpan {
    pub first: u32,
    pub count: u32,
}

impl ShardSpan {
    /// The span `0..count` (a single source).
    pub fn all(count: u32) -> Self {
        ShardSpan {
            first: 0,
            count: count.max(1),
        }
    }

    /// The shard of `key` within this span.
    pub fn shard_for(&self, key: &[u8]) -> ShardId {
        ShardId(self.first + shard_for_key(key, self.count).0)
    }

    /// Every shard of the span, in order.
    pub fn iter(&self) -> impl Iterator<Item = ShardId> {
        (self.first..self.first + self.count.max(1)).map(ShardId)
    }

    /// Whether `shard` belongs to this span.
    pub fn contains(&self, shard: ShardId) -> bool {
        (self.first..self.first + self.count.max(1)).contains(&shard.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_offset_the_hash() {
        let span = ShardSpan { first: 8, count: 4 };
        let s = span.shard_for(b"config");
        assert_eq!(s.0, 8 + shard_for_key(b"config", 4).0);
        assert!(span.contains(s));
        assert!(!span.contains(ShardId(7)) && !span.contains(ShardId(12)));
        assert_eq!(span.iter().map(|s| s.0).collect::<Vec<_>>(), [8, 9, 10, 11]);
        assert_eq!(ShardSpan::all(0).iter().count(), 1);
    }

    #[test]
    fn mapping_is_stable_and_spread() {
        // Pinned values: a change here would silently reorder resumed journals.
        assert_eq!(shard_for_key(b"config", 16), shard_for_key(b"config", 16));
        assert_eq!(shard_for_key(b"anything", 1), ShardId(0));
        assert_eq!(shard_for_key(b"anything", 0), ShardId(0));
        let pinned = xxhash_rust::xxh3::xxh3_64(b"abc");
        assert_eq!(pinned, 0x78af_5f94_892f_3950);
        let mut counts = [0u32; 8];
        for i in 0..8000u32 {
            counts[shard_for_key(format!("key-{i}").as_bytes(), 8).0 as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (800..1200).contains(&c)),
            "{counts:?}"
        );
    }
}
