//! The per-shard checkpoint a sink keeps on its target.
//!
//! Key: `__ferry/<target prefix>/checkpoint/<shard>` (outside the mapped
//! prefix unless that prefix is empty; reserved keys are skipped
//! everywhere). Value: JSON
//!
//! ```json
//! {"seq": 1234, "journal": "optional journal id", "sweep_before": 5678}
//! ```
//!
//! - `seq`: the last journal sequence of the shard applied to the target.
//!   It is written in the same transaction as the data it covers, with a
//!   compare on the exact bytes previously read or written, so a batch
//!   takes effect once: a retry after an unknown outcome fails the compare,
//!   and the sink reads the checkpoint back instead of writing twice.
//! - `journal`: the journal the sequences belong to, when the sink was
//!   given one; a record of another journal counts as no checkpoint, so a
//!   new journal onto an old target starts from its first event.
//! - `sweep_before`: set between a shard's `SnapshotBegin` and the end of
//!   its sweep: the target revision before which a key of this shard not
//!   rewritten by the snapshot is stale (see `sweep.rs`).

use ferry_core::{Seq, ShardId};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    seq: Seq,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    journal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sweep_before: Option<i64>,
}

/// A shard's checkpoint as the sink knows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ShardCheckpoint {
    pub seq: Seq,
    pub sweep_before: Option<i64>,
    /// The exact bytes on the target (`None`: no key), for the compare.
    pub raw: Option<Vec<u8>>,
}

pub(crate) fn key(target_prefix: &[u8], shard: ShardId) -> Vec<u8> {
    let mut k = crate::RESERVED_PREFIX.to_vec();
    k.extend_from_slice(target_prefix);
    k.extend_from_slice(format!("/checkpoint/{}", shard.0).as_bytes());
    k
}

/// Reads a stored value; a record of another journal, or one Ferry cannot
/// parse, counts as sequence 0 but keeps its bytes for the compare.
pub(crate) fn decode(
    raw: Option<Vec<u8>>,
    journal: Option<&str>,
) -> Result<ShardCheckpoint, String> {
    let Some(bytes) = raw else {
        return Ok(ShardCheckpoint::default());
    };
    let rec: Record = serde_json::from_slice(&bytes)
        .map_err(|e| format!("the checkpoint record is not Ferry's ({e})"))?;
    let ours = match (journal, rec.journal.as_deref()) {
        (Some(want), Some(have)) => want == have,
        (Some(_), None) => false,
        (None, _) => true,
    };
    Ok(if ours {
        ShardCheckpoint {
            seq: rec.seq,
            sweep_before: rec.sweep_before,
            raw: Some(bytes),
        }
    } else {
        ShardCheckpoint {
            raw: Some(bytes),
            ..Default::default()
        }
    })
}

pub(crate) fn encode(seq: Seq, journal: Option<&str>, sweep_before: Option<i64>) -> Vec<u8> {
    serde_json::to_vec(&Record {
        seq,
        journal: journal.map(str::to_string),
        sweep_before,
    })
    .expect("a checkpoint record always serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_foreign_journal() {
        let raw = encode(42, Some("j1"), Some(7));
        let cp = decode(Some(raw.clone()), Some("j1")).unwrap();
        assert_eq!((cp.seq, cp.sweep_before), (42, Some(7)));
        let cp = decode(Some(raw.clone()), Some("j2")).unwrap();
        assert_eq!((cp.seq, cp.raw), (0, Some(raw)));
        assert_eq!(decode(None, None).unwrap(), ShardCheckpoint::default());
        assert!(decode(Some(b"junk".to_vec()), None).is_err());
        assert_eq!(
            key(b"app", ShardId(3)),
            b"__ferry/app/checkpoint/3".to_vec()
        );
    }
}
