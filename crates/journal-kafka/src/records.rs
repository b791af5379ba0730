//! What the journal's topic holds, record by record.
//!
//! Partition 0 is the journal's own log ([`Meta`], JSON): writer epochs,
//! one commit record per append, applied checkpoints and truncations.
//! Partition `1 + s` holds shard `s`: each event as a journal frame (the
//! CRC-checked format of [`ferry_journal::frame`]) with its writer's epoch
//! and sequence in headers, and the epoch markers a new writer puts there
//! before its first append ([`Marker`]).

use ferry_core::{Position, Seq};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use serde::{Deserialize, Serialize};

/// The header naming a record's writer epoch (decimal).
pub const HEADER_EPOCH: &str = "ferry.epoch";
/// The header naming an event record's sequence (decimal).
pub const HEADER_SEQ: &str = "ferry.seq";
/// On an epoch marker in a shard's partition: `epoch`.
pub const HEADER_MARKER: &str = "ferry.marker";

/// A record of partition 0.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Meta {
    /// A writer takes over with `epoch`, above every earlier one; `writer`
    /// tells two writers that chose the same epoch apart (the first wins).
    Epoch { epoch: u64, writer: u64 },
    /// The append that made `shards` (shard, last sequence) visible, with
    /// the source checkpoint it covers. Valid only under the current epoch.
    Commit {
        epoch: u64,
        shards: Vec<(u32, Seq)>,
        checkpoint: Option<(String, Position)>,
    },
    /// A target applied `shard` through `seq`.
    Applied {
        target: String,
        shard: u32,
        seq: Seq,
    },
    /// Events of `shard` through `through` are gone.
    Truncate { shard: u32, through: Seq },
}

/// An epoch marker in a shard's partition: records of older epochs after
/// it are a deposed writer's and are ignored; indexed events above
/// `void_after` (uncommitted when the epoch began) are dropped.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Marker {
    pub epoch: u64,
    pub void_after: Seq,
}

pub fn header_u64(m: &impl Message, name: &str) -> Option<u64> {
    let h = m.headers()?;
    h.iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|s| s.parse().ok())
}

pub fn event_headers(epoch: &str, seq: &str) -> OwnedHeaders {
    OwnedHeaders::new()
        .insert(Header {
            key: HEADER_EPOCH,
            value: Some(epoch.as_bytes()),
        })
        .insert(Header {
            key: HEADER_SEQ,
            value: Some(seq.as_bytes()),
        })
}

pub fn marker_headers(epoch: &str) -> OwnedHeaders {
    OwnedHeaders::new()
        .insert(Header {
            key: HEADER_EPOCH,
            value: Some(epoch.as_bytes()),
        })
        .insert(Header {
            key: HEADER_MARKER,
            value: Some("epoch".as_bytes()),
        })
}

/// A record of the journal's topic, as the follower reads it.
pub enum Record<'a> {
    Meta(Meta),
    Marker(Marker),
    Event {
        epoch: u64,
        seq: Seq,
        frame: &'a [u8],
    },
    /// Not something this journal writes: named by the follower.
    Foreign(String),
}

pub fn parse<M: Message>(m: &M) -> Record<'_> {
    let payload = m.payload().unwrap_or_default();
    if m.partition() == 0 {
        return match serde_json::from_slice(payload) {
            Ok(meta) => Record::Meta(meta),
            Err(e) => Record::Foreign(format!("a journal record that does not parse ({e})")),
        };
    }
    let marker = m
        .headers()
        .is_some_and(|h| h.iter().any(|h| h.key == HEADER_MARKER));
    if marker {
        return match serde_json::from_slice(payload) {
            Ok(mk) => Record::Marker(mk),
            Err(e) => Record::Foreign(format!("an epoch marker that does not parse ({e})")),
        };
    }
    match (header_u64(m, HEADER_EPOCH), header_u64(m, HEADER_SEQ)) {
        (Some(epoch), Some(seq)) => Record::Event {
            epoch,
            seq,
            frame: payload,
        },
        _ => Record::Foreign("a record without Ferry's epoch and sequence headers".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_records_read_back_as_written() {
        for m in [
            Meta::Epoch {
                epoch: 3,
                writer: 99,
            },
            Meta::Commit {
                epoch: 3,
                shards: vec![(0, 7), (2, 1)],
                checkpoint: Some(("etcd://x".into(), Position::with_token(5, vec![0, 255]))),
            },
            Meta::Applied {
                target: "t".into(),
                shard: 1,
                seq: 4,
            },
            Meta::Truncate {
                shard: 1,
                through: 2,
            },
        ] {
            let bytes = serde_json::to_vec(&m).unwrap();
            assert_eq!(serde_json::from_slice::<Meta>(&bytes).unwrap(), m);
        }
    }
}
