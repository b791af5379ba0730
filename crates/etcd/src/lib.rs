//! etcd v3 as a Ferry source and target.
//!
//! - [`EtcdStore`]: a connection to one `etcd://` URL and its prefix, with
//!   the pre-checks `ferry start` runs (version, head revision, key count,
//!   auth, largest value).
//! - [`EtcdTailer`]: the source side. Snapshot of the prefix at one revision
//!   R, then a watch from R + 1, appended to the journal with the source
//!   checkpoint in the same atomic batch. Leases are captured with their
//!   remaining TTL and their liveness is published in [`LeaseLiveness`]. A
//!   [`FenceHandle`] lets the cutover ask for a fence marker in every shard.
//! - [`EtcdSink`]: the target side, a [`ferry_replay::Sink`]. Each batch is
//!   one or more transactions that compare and advance a per-shard
//!   checkpoint stored on the target, so a batch takes effect exactly once.
//! - [`readonly`]: switching a source read-only through its auth roles.
//! - [`verify`]: comparing source and target prefixes by page digests.
//!
//! Invariants shared by every part:
//! - Keys are bytes; a prefix is a plain byte prefix, as in `etcdctl
//!   make-mirror --prefix/--dest-prefix`: `etcd://a/app` covers `app/x` and
//!   also `apple`. A target key is the target prefix followed by the source
//!   key without the source prefix.
//! - Keys starting with [`RESERVED_PREFIX`] (`__ferry/`) belong to Ferry:
//!   checkpoints, lease mappings and saved permissions. They are never
//!   captured, swept or compared, even when a prefix would cover them.
//! - Nothing here logs or formats a password; stores are named by their
//!   redacted URL.

pub mod connector;
mod error;
mod lease;
pub mod readonly;
mod sink;
mod store;
mod tailer;
pub mod verify;

pub use error::EtcdError;
pub use lease::{LeaseLiveness, LeaseState};
pub use sink::EtcdSink;
pub use store::{EtcdStore, LargestValue};
pub use tailer::{EtcdTailer, FenceHandle, TailerOptions};

/// etcd's default `--max-request-bytes` (1.5 MiB): the largest request, and
/// so the largest transaction, a target accepts unless its operator raised it.
pub const TARGET_MAX_REQUEST_BYTES: usize = 1_572_864;

/// etcd's default `--max-txn-ops`: the most operations one transaction may
/// hold.
pub const MAX_TXN_OPS: usize = 128;

/// Keys under this prefix are Ferry's own bookkeeping (see the module doc).
pub const RESERVED_PREFIX: &[u8] = b"__ferry/";

/// True for a key Ferry reserves for itself.
pub fn is_reserved(key: &[u8]) -> bool {
    key.starts_with(RESERVED_PREFIX)
}
