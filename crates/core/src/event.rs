//! The event: the unit everything in Ferry moves.
//!
//! A tailer turns a source's snapshot and change log into events; the
//! journal gives each one a per-shard sequence number; the replay engine
//! applies them, in sequence order per shard, to each target.
//!
//! Invariants:
//! - `seq` is assigned by the journal and is dense per shard (1, 2, 3, …);
//!   before an event is journaled it is 0.
//! - the final state of every key is the state of the source: applying a
//!   shard's events in order, any number of times from any earlier point,
//!   gives the same result (every operation is idempotent given its order).

use crate::position::Position;
use crate::shard::ShardId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// A per-shard sequence number, assigned by the journal, starting at 1.
pub type Seq = u64;

/// One captured change or marker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// The shard whose order this event belongs to.
    pub shard: ShardId,
    /// Assigned by the journal; 0 until journaled.
    pub seq: Seq,
    /// Where in the source's history the change happened.
    pub position: Position,
    /// The key as the source names it (an etcd key, a Mongo `_id` in
    /// canonical form, a Bolt bucket path plus key, a Vault secret path).
    // As bytes, not a sequence of u8: the same bincode encoding, one copy
    // instead of a call per byte.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// What happened.
    pub op: Op,
    /// When the source says the change happened, in Unix milliseconds (0
    /// where the source has no clock, e.g. etcd).
    pub source_ts_ms: u64,
    /// When Ferry captured it, in Unix milliseconds.
    pub capture_ts_ms: u64,
}

/// What an event does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Create or overwrite `key` with `value`.
    Put { value: Value, meta: StoreMeta },
    /// Remove `key`; a delete of a missing key is a no-op.
    Delete { meta: StoreMeta },
    /// A snapshot of the source starts; `total_keys` is an estimate when known.
    SnapshotBegin { total_keys: Option<u64> },
    /// The snapshot is complete: streaming follows from `Event::position`.
    SnapshotEnd,
    /// The source was made read-only; no change after this position exists.
    Fence,
    /// The source is alive and at `Event::position` (idle sources, lag).
    Heartbeat,
}

impl Op {
    /// Markers carry no data for a target; the replay engine only records
    /// their progress.
    pub fn is_marker(&self) -> bool {
        !matches!(self, Op::Put { .. } | Op::Delete { .. })
    }
}

/// A value, in clear or sealed (encrypted at rest in the journal).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Value {
    /// Plain bytes, as the source holds them.
    Plain(#[serde(with = "serde_bytes")] Vec<u8>),
    /// A secret (Vault value, keyring) sealed with an AEAD before it reaches
    /// the journal; only the process holding the key can open it.
    Sealed {
        /// Which key sealed it (so a rotated key file is detected, not misused).
        key_id: u32,
        nonce: [u8; 12],
        #[serde(with = "serde_bytes")]
        ciphertext: Vec<u8>,
    },
}

impl Value {
    /// The value's size in bytes as stored (what limits are checked against).
    pub fn len(&self) -> usize {
        match self {
            Value::Plain(b) => b.len(),
            Value::Sealed { ciphertext, .. } => ciphertext.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print value bytes: a plain value may still be sensitive, and
        // logs are the usual way secrets leak.
        match self {
            Value::Plain(b) => write!(f, "Plain({} bytes)", b.len()),
            Value::Sealed {
                key_id, ciphertext, ..
            } => {
                write!(f, "Sealed(key {key_id}, {} bytes)", ciphertext.len())
            }
        }
    }
}

/// Store-native metadata that Ferry promises to keep.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoreMeta {
    /// Nothing beyond the key and value.
    #[default]
    None,
    /// etcd: the key is attached to a lease.
    Etcd {
        /// The source lease id (target leases get their own ids).
        lease_id: i64,
        /// Remaining TTL in seconds when captured.
        lease_ttl_s: i64,
    },
    /// Vault KV v2: one version of a secret and the secret's metadata.
    Vault(Box<VaultVersionMeta>),
    /// MongoDB: the namespace the document lives in.
    Mongo { db: String, collection: String },
    /// BoltDB: the bucket path the key lives in (outermost first).
    Bolt { buckets: Vec<Vec<u8>> },
}

/// Vault KV v2 metadata for one version of a secret.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VaultVersionMeta {
    pub version: u64,
    /// RFC 3339, as Vault reports it.
    pub created_time: String,
    /// RFC 3339; empty when not soft-deleted.
    pub deletion_time: String,
    pub destroyed: bool,
    pub custom_metadata: BTreeMap<String, String>,
    pub max_versions: u32,
    pub cas_required: bool,
    /// RFC 3339 duration string as Vault reports it (`"0s"` for none).
    pub delete_version_after: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_value_bytes() {
        let v = Value::Plain(b"hunter2".to_vec());
        assert_eq!(format!("{v:?}"), "Plain(7 bytes)");
        let e = Event {
            shard: ShardId(1),
            seq: 0,
            position: Position::at(3),
            key: b"k".to_vec(),
            op: Op::Put {
                value: v,
                meta: StoreMeta::None,
            },
            source_ts_ms: 0,
            capture_ts_ms: 0,
        };
        assert!(!format!("{e:?}").contains("hunter2"));
    }

    #[test]
    fn markers_are_markers() {
        assert!(Op::Fence.is_marker());
        assert!(Op::SnapshotEnd.is_marker());
        assert!(!Op::Delete {
            meta: StoreMeta::None
        }
        .is_marker());
    }

    #[test]
    fn event_round_trips_through_bincode() {
        let e = Event {
            shard: ShardId(3),
            seq: 42,
            position: Position::with_token(9, vec![1, 2, 3]),
            key: b"/a/b".to_vec(),
            op: Op::Put {
                value: Value::Plain(vec![0; 10]),
                meta: StoreMeta::Vault(Box::new(VaultVersionMeta {
                    version: 2,
                    custom_metadata: [("a".to_string(), "b".to_string())].into(),
                    ..Default::default()
                })),
            },
            source_ts_ms: 1,
            capture_ts_ms: 2,
        };
        let cfg = bincode::config::standard();
        let bytes = bincode::serde::encode_to_vec(&e, cfg).unwrap();
        let (back, _): (Event, usize) = bincode::serde::decode_from_slice(&bytes, cfg).unwrap();
        assert_eq!(back, e);
    }
}
