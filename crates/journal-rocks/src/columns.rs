//! The journal's RocksDB column families and their key/value encodings.
//!
//! All integers are big-endian and fixed-width so that RocksDB's bytewise
//! key order is the numeric order: iterating `events` is replay order.
//!
//! | column family | key | value |
//! |---|---|---|
//! | `events` | shard `u32` ‖ first seq `u64` (12 B) | a chunk: the records of one append to one shard, `first..first+n` |
//! | `shards` | shard `u32` (4 B) | first `u64` ‖ last `u64` (16 B): the shard's bounds |
//! | `source_checkpoints` | source name (UTF-8) | crc32 `u32` ‖ bincode of [`Position`] |
//! | `applied` | target name (UTF-8) ‖ `0x00` ‖ shard `u32` | seq `u64` (8 B) |
//! | `meta` | name (UTF-8) | per key; `format_version` is a `u32` (4 B) |
//!
//! A chunk is `n ≥ 1` records back to back, each `length u32 ‖ frame`
//! ([`ferry_journal::frame`]: CRC-32 ‖ bincode payload); record `i` has
//! sequence `first + i`. One RocksDB entry per append and shard, not per
//! event: the memtable, WAL and compaction costs are paid per batch. A
//! shard's chunks tile its sequences without gap or overlap; after a
//! truncation the first chunk may start before the shard's `first`, and
//! readers skip the records below it.
//!
//! `shards` is written in the same batch as the events it describes, so
//! the bounds and the records agree after any crash. `last` never decreases,
//! so sequence numbers are not reused after truncation.

use ferry_core::{Position, Seq, ShardId};
use ferry_journal::ShardBounds;

pub const EVENTS: &str = "events";
pub const SHARDS: &str = "shards";
pub const SOURCE_CHECKPOINTS: &str = "source_checkpoints";
pub const APPLIED: &str = "applied";
pub const META: &str = "meta";

pub const ALL: [&str; 5] = [EVENTS, SHARDS, SOURCE_CHECKPOINTS, APPLIED, META];

pub const META_FORMAT_VERSION: &[u8] = b"format_version";

pub fn event_key(shard: ShardId, seq: Seq) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..4].copy_from_slice(&shard.0.to_be_bytes());
    k[4..].copy_from_slice(&seq.to_be_bytes());
    k
}

pub fn parse_event_key(k: &[u8]) -> Option<(ShardId, Seq)> {
    let k: &[u8; 12] = k.try_into().ok()?;
    let shard = u32::from_be_bytes(k[..4].try_into().ok()?);
    let seq = u64::from_be_bytes(k[4..].try_into().ok()?);
    Some((ShardId(shard), seq))
}

/// Appends one record to a chunk being built.
pub fn push_record(chunk: &mut Vec<u8>, frame: &[u8]) {
    let len = u32::try_from(frame.len()).expect("a frame under 4 GiB");
    chunk.extend_from_slice(&len.to_be_bytes());
    chunk.extend_from_slice(frame);
}

/// The records of a chunk, in order, as `(byte offset, frame)`; a length
/// that runs past the end is an error at that offset.
pub fn records(chunk: &[u8]) -> impl Iterator<Item = Result<(usize, &[u8]), usize>> {
    let mut at = 0usize;
    let mut failed = false;
    std::iter::from_fn(move || {
        if failed || at >= chunk.len() {
            return None;
        }
        let start = at;
        let Some(len) = chunk
            .get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map(|b| u32::from_be_bytes(b) as usize)
        else {
            failed = true;
            return Some(Err(start));
        };
        match chunk.get(at + 4..at + 4 + len) {
            Some(frame) => {
                at += 4 + len;
                Some(Ok((start, frame)))
            }
            None => {
                failed = true;
                Some(Err(start))
            }
        }
    })
}

pub fn shard_key(shard: ShardId) -> [u8; 4] {
    shard.0.to_be_bytes()
}

pub fn parse_shard_key(k: &[u8]) -> Option<ShardId> {
    Some(ShardId(u32::from_be_bytes(k.try_into().ok()?)))
}

pub fn encode_bounds(b: ShardBounds) -> [u8; 16] {
    let mut v = [0u8; 16];
    v[..8].copy_from_slice(&b.first.to_be_bytes());
    v[8..].copy_from_slice(&b.last.to_be_bytes());
    v
}

pub fn decode_bounds(v: &[u8]) -> Option<ShardBounds> {
    let v: &[u8; 16] = v.try_into().ok()?;
    Some(ShardBounds {
        first: u64::from_be_bytes(v[..8].try_into().ok()?),
        last: u64::from_be_bytes(v[8..].try_into().ok()?),
    })
}

pub fn applied_key(target: &str, shard: ShardId) -> Vec<u8> {
    let mut k = Vec::with_capacity(target.len() + 5);
    k.extend_from_slice(target.as_bytes());
    k.push(0);
    k.extend_from_slice(&shard.0.to_be_bytes());
    k
}

pub fn parse_applied_key(k: &[u8]) -> Option<(String, ShardId)> {
    let split = k.len().checked_sub(5)?;
    if k[split] != 0 {
        return None;
    }
    let target = String::from_utf8(k[..split].to_vec()).ok()?;
    Some((target, parse_shard_key(&k[split + 1..])?))
}

pub fn encode_seq(seq: Seq) -> [u8; 8] {
    seq.to_be_bytes()
}

pub fn decode_seq(v: &[u8]) -> Option<Seq> {
    Some(u64::from_be_bytes(v.try_into().ok()?))
}

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<{ 1 << 20 }>()
}

pub fn encode_position(p: &Position) -> Vec<u8> {
    let mut out = vec![0u8; 4];
    bincode::serde::encode_into_std_write(p, &mut out, bincode_config())
        .expect("a position under 1 MiB");
    let crc = crc32(&out[4..]);
    out[..4].copy_from_slice(&crc.to_be_bytes());
    out
}

pub fn decode_position(v: &[u8]) -> Option<Position> {
    if v.len() < 4 || crc32(&v[4..]).to_be_bytes() != v[..4] {
        return None;
    }
    bincode::serde::decode_from_slice(&v[4..], bincode_config())
        .ok()
        .filter(|(_, used)| *used == v.len() - 4)
        .map(|(p, _)| p)
}

fn crc32(b: &[u8]) -> u32 {
    // The frame module's checksum, reused so there is one CRC in the format.
    let mut h = crc32fast::Hasher::new();
    h.update(b);
    h.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_in_replay_order() {
        let a = event_key(ShardId(1), 255);
        let b = event_key(ShardId(1), 256);
        let c = event_key(ShardId(2), 0);
        assert!(a < b && b < c);
        assert_eq!(parse_event_key(&b), Some((ShardId(1), 256)));
        assert_eq!(parse_event_key(&b[..11]), None);
    }

    #[test]
    fn chunks_split_into_records() {
        let mut c = Vec::new();
        push_record(&mut c, b"abc");
        push_record(&mut c, b"");
        push_record(&mut c, b"xy");
        let got: Vec<_> = records(&c).collect();
        assert_eq!(
            got,
            vec![
                Ok((0, &b"abc"[..])),
                Ok((7, &b""[..])),
                Ok((11, &b"xy"[..]))
            ]
        );
        c.truncate(c.len() - 1);
        let got: Vec<_> = records(&c).collect();
        assert_eq!(got.last(), Some(&Err(11)));
    }

    #[test]
    fn codecs_round_trip() {
        let b = ShardBounds { first: 3, last: 9 };
        assert_eq!(decode_bounds(&encode_bounds(b)), Some(b));
        let k = applied_key("etcd://h:1/p", ShardId(7));
        assert_eq!(
            parse_applied_key(&k),
            Some(("etcd://h:1/p".into(), ShardId(7)))
        );
        let p = Position::with_token(5, vec![1, 2]);
        let mut v = encode_position(&p);
        assert_eq!(decode_position(&v), Some(p));
        v[5] ^= 1;
        assert_eq!(decode_position(&v), None);
    }
}
