//! Ferry's domain types, shared by every other crate and free of any store
//! or storage-engine dependency.
//!
//! - [`event`]: the [`Event`] that moves through the pipeline, its
//!   operation and store-native metadata.
//! - [`position`]: the opaque, totally ordered source position.
//! - [`shard`]: shard ids and the stable key-to-shard mapping.
//! - [`store_url`]: parsing and validating every store URL Ferry accepts,
//!   with secrets that never reach `Display` or `Debug`.
//! - [`metric_names`]: every Prometheus metric name, defined once.
//! - [`error`]: the pipeline-wide [`ErrorKind`] and the one function that maps
//!   a kind to what the pipeline does about it, plus process exit codes.

pub mod error;
pub mod event;
pub mod fuzzing;
pub mod metric_names;
pub mod position;
pub mod shard;
pub mod store_url;

pub use error::{ErrorKind, ErrorPolicy, ExitCode};
pub use event::{Event, Op, Seq, StoreMeta, Value, VaultVersionMeta};
pub use position::Position;
pub use shard::{shard_for_key, ShardId, ShardSpan};
pub use store_url::{StoreKind, StoreUrl, UrlError};
