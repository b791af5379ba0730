//! The contract's rules for appends and checkpoints, as pure functions,
//! so that every journal refuses the same calls with the same errors.

use crate::{JournalError, SourceCheckpoint};
use ferry_core::{Position, Seq, ShardId};

/// What a valid append is against the journal's current ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppendCheck {
    /// Every part starts at its shard's next sequence: write it.
    Fresh,
    /// Every part lies inside what exists: a repeat, write nothing.
    Duplicate,
}

/// Checks each `(shard, first_seq, count)` part of a batch against `next`,
/// the shard's next sequence (1 for a new shard).
pub fn check_append(
    parts: impl IntoIterator<Item = (ShardId, Seq, u64)>,
    next: impl Fn(ShardId) -> Seq,
) -> Result<AppendCheck, JournalError> {
    let (mut duplicates, mut fresh) = (0, 0);
    for (shard, first, n) in parts {
        let next = next(shard);
        if first == next {
            fresh += 1;
        } else if first < next && first + n <= next && n > 0 {
            duplicates += 1;
        } else if first > next {
            return Err(JournalError::Gap {
                shard,
                next,
                got: first,
            });
        } else {
            return Err(JournalError::Stale {
                shard,
                next,
                got: first,
            });
        }
    }
    match (duplicates, fresh) {
        (0, _) => Ok(AppendCheck::Fresh),
        (_, 0) => Ok(AppendCheck::Duplicate),
        _ => Err(JournalError::MixedDuplicate),
    }
}

/// Refuses a source checkpoint older than `current`.
pub fn check_checkpoint(
    current: Option<&Position>,
    cp: &SourceCheckpoint,
) -> Result<(), JournalError> {
    match current.filter(|cur| **cur > cp.position) {
        Some(cur) => Err(JournalError::CheckpointBackward {
            what: "source",
            name: cp.source.clone(),
            current: cur.to_string(),
            requested: cp.position.to_string(),
        }),
        None => Ok(()),
    }
}

/// Whether an applied checkpoint `seq` moves `current` on (`false`: equal,
/// nothing to write); lower is refused.
pub fn check_applied(
    current: Option<Seq>,
    target: &str,
    shard: ShardId,
    seq: Seq,
) -> Result<bool, JournalError> {
    match current {
        Some(cur) if cur > seq => Err(JournalError::CheckpointBackward {
            what: "applied",
            name: format!("{target} shard {shard}"),
            current: cur.to_string(),
            requested: seq.to_string(),
        }),
        Some(cur) => Ok(cur != seq),
        None => Ok(true),
    }
}
