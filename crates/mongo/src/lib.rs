//! MongoDB as a Ferry source and target.
//!
//! - [`MongoStore`]: a connection to one `mongodb://` URL with the
//!   namespaces it selects ([`NamespaceFilter`]) and the pre-checks `ferry
//!   start` runs (credentials, change streams, selection, target emptiness,
//!   document sizes).
//! - [`MongoTailer`]: the source side. Records the cluster time T, copies
//!   every selected collection, then streams the cluster's change stream
//!   from T; every journal batch carries the resume token as the source
//!   checkpoint. A [`FenceHandle`] lets the cutover ask for a fence.
//! - [`MongoSink`]: the target side, a [`ferry_replay::Sink`]: per batch,
//!   replace-with-upsert and delete by `_id`, with the shard's checkpoint in
//!   `__ferry.checkpoints` updated in the same transaction.
//! - [`catalog`]: collection options and indexes, copied before the data;
//!   unique indexes only once the target holds the source's final state
//!   (see the module doc for why).
//! - [`readonly`]: `setUserWriteBlockMode` on MongoDB 6.0 and later.
//! - [`verify`]: per-namespace counts, order-independent digests, differing
//!   `_id`s and indexes.
//!
//! Invariants shared by every part:
//! - A document travels as its raw BSON bytes: field order and types (Int32
//!   vs Int64 vs Double, Decimal128, binary subtypes…) arrive unchanged.
//! - An event's key is [`key::encode`] of (database, collection, `_id`),
//!   the `_id` in its exact BSON type; its shard is the source's
//!   [`ShardSpan::shard_for`](ferry_core::ShardSpan::shard_for) of that key.
//! - The database [`META_DB`] (`__ferry`) belongs to Ferry; it is never
//!   selected, captured, or compared. Neither are `admin`, `local`,
//!   `config` nor `system.*` collections.
//! - Nothing here logs or formats a password; stores are named by their
//!   redacted URL.

pub mod catalog;
pub mod connector;
mod error;
pub use ferry_connect::doc_key as key;
mod namespace;
pub mod readonly;
mod sink;
mod store;
mod tailer;
pub mod verify;

pub use catalog::{Catalog, CollectionSpec};
pub use error::MongoError;
pub use namespace::{Namespace, NamespaceFilter};
pub use sink::{MongoSink, SinkOptions, TransactionMode};
pub use store::{pack, precheck, unpack, LargestDocument, MongoStore, ServerInfo};
pub use tailer::{FenceHandle, MongoTailer, TailerOptions, WriteAfterFence};

/// MongoDB's largest document (`maxBsonObjectSize`), used where a server
/// does not say.
pub const MAX_DOCUMENT_BYTES: usize = 16 * 1024 * 1024;
/// MongoDB's largest wire message (`maxMessageSizeBytes`).
pub const MAX_MESSAGE_BYTES: usize = 48_000_000;
/// MongoDB's most write operations in one command (`maxWriteBatchSize`).
pub const MAX_WRITE_OPS: usize = 100_000;

/// Ferry's own database on a target (checkpoints) and never a source namespace.
pub const META_DB: &str = "__ferry";
/// The collection of per-shard checkpoints in [`META_DB`].
pub const CHECKPOINTS: &str = "checkpoints";
