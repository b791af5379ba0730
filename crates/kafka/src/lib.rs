//! Kafka as a Ferry target: `kafka://broker[,broker]/topic`.
//!
//! Every change of any source becomes one record (a delete, two: the event
//! and a tombstone), in the shape Debezium's consumers already read:
//!
//! - **Key**: the entity's identity as its source connector renders it
//!   ([`ferry_connect::Source::render`]): `{"key": "/app/a"}` for etcd,
//!   `{"db", "collection", "id"}` for MongoDB, `{"path"}` for Vault. Stable
//!   across runs, so a compacted topic keeps the last state of each.
//! - **Value**: the envelope of [`envelope`]: `before` (null: no source
//!   gives it), `after`, `op` (`r` during the snapshot, `c` when the source
//!   says it created the entity, `u` otherwise, `d`), `source` (kind, name as
//!   the redacted URL, the source's own position, shard, journal sequence,
//!   `snapshot`), `ts_ms`.
//! - **Headers**: `ferry.shard`, `ferry.seq`, `ferry.journal` and
//!   `ferry.snapshot`, so a consumer can deduplicate by (shard, sequence).
//!
//! # Order and exactly once, without transactions
//!
//! Each shard of the route goes to one partition, chosen explicitly (shard
//! `first + i` to partition `i`); the topic is created with one partition
//! per shard, and an existing topic with fewer is refused. The broker here
//! delivers aborted transactions to `read_committed` consumers, so nothing
//! rests on transactions: the producer is idempotent (`acks=all`, gapless),
//! and the sink's durable checkpoint for a shard is the sequence of the last
//! record in its partition, found by reading the partition's tail up to the
//! fetch's high watermark ([`tail`]; ListOffsets answers wrong on this
//! broker). After a restart, or after any failed delivery, the sink reads
//! the tail again and skips every event already there. One writer per
//! partition (the shard's worker) makes every event appear exactly once.

pub mod connector;
mod context;
pub mod envelope;
mod sink;
pub mod source;
pub mod tail;

pub use context::Quiet;
pub use sink::producer;

/// Record headers Ferry sets on every record.
pub const HEADER_SHARD: &str = "ferry.shard";
pub const HEADER_SEQ: &str = "ferry.seq";
pub const HEADER_JOURNAL: &str = "ferry.journal";
/// `false` outside a snapshot; inside one, the sequence of its begin marker.
pub const HEADER_SNAPSHOT: &str = "ferry.snapshot";
/// On a delete a snapshot's sweep publishes (see [`sink`]): its number
/// within the sweep. Sweep deletes share the sequence of the snapshot's
/// end, so a consumer deduplicates by shard, sequence and sweep number.
pub const HEADER_SWEEP: &str = "ferry.sweep";

/// The client's largest record (librdkafka's `message.max.bytes` default).
pub const MAX_RECORD_BYTES: usize = 1_000_000;
