//! The per-shard checkpoint a sink keeps on its target.
//!
//! Collection `__ferry.checkpoints`, one document per shard:
//!
//! ```json
//! {"_id": "shard-3", "seq": 1234, "journal": "optional journal id", "sweep": true}
//! ```
//!
//! - `seq`: the last journal sequence of the shard applied to the target,
//!   written in the same transaction as the data it covers.
//! - `journal`: the journal the sequences belong to, when the sink was
//!   given one; a record of another journal counts as no checkpoint.
//! - `sweep`: set between a shard's `SnapshotBegin` and its sweep at
//!   `SnapshotEnd` when the target held documents as the snapshot began.

use ferry_core::{Seq, ShardId};
use mongodb::bson::{doc, Bson, Document};

/// A shard's checkpoint as the sink knows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ShardCheckpoint {
    pub seq: Seq,
    pub sweep: bool,
}

pub(crate) fn id(shard: ShardId) -> String {
    format!("shard-{}", shard.0)
}

pub(crate) fn seq_bson(seq: Seq) -> Bson {
    Bson::Int64(i64::try_from(seq).unwrap_or(i64::MAX))
}

/// The stored fields of `cp`.
pub(crate) fn fields(cp: &ShardCheckpoint, journal: Option<&str>) -> Document {
    let mut d = doc! {"seq": seq_bson(cp.seq), "sweep": cp.sweep};
    if let Some(j) = journal {
        d.insert("journal", j);
    }
    d
}

/// Reads a stored record; a record of another journal counts as none.
pub(crate) fn decode(found: Option<&Document>, journal: Option<&str>) -> ShardCheckpoint {
    let Some(d) = found else {
        return ShardCheckpoint::default();
    };
    let ours = match (journal, d.get_str("journal").ok()) {
        (Some(want), Some(have)) => want == have,
        (Some(_), None) => false,
        (None, _) => true,
    };
    if !ours {
        return ShardCheckpoint::default();
    }
    let seq = match d.get("seq") {
        Some(Bson::Int64(n)) => u64::try_from(*n).unwrap_or(0),
        Some(Bson::Int32(n)) => u64::try_from(*n).unwrap_or(0),
        _ => 0,
    };
    ShardCheckpoint {
        seq,
        sweep: d.get_bool("sweep").unwrap_or(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_foreign_journal() {
        let cp = ShardCheckpoint {
            seq: 42,
            sweep: true,
        };
        let d = fields(&cp, Some("j1"));
        assert_eq!(decode(Some(&d), Some("j1")), cp);
        assert_eq!(decode(Some(&d), Some("j2")), ShardCheckpoint::default());
        assert_eq!(decode(Some(&d), None), cp);
        assert_eq!(decode(None, None), ShardCheckpoint::default());
        assert_eq!(id(ShardId(3)), "shard-3");
    }
}
