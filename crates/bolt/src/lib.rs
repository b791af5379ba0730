//! BoltDB as a Ferry source: a read-only reader for live files and a
//! tailer that finds changed keys by copy-on-write page ids.
//!
//! - [`BoltFile`] opens a file without its lock; [`BoltFile::snapshot`]
//!   pins the newest transaction and [`Snapshot::entries`] reads it lazily
//!   (see [`walk`](crate::walk) for how consistency is kept while a bbolt
//!   writer commits).
//! - [`ChangeTracker`] turns "the txid moved" into [`Change`]s without
//!   reading the whole file (see the `track` module doc).
//! - [`BoltTailer`] journals a snapshot and then the changes, and
//!   [`FenceHandle`] makes the file read-only by taking its lock.
//!
//! Why a parser of our own rather than a crate: see the crate README.

mod error;
mod file;
mod format;
pub mod fuzzing;
mod key;
mod pages;
mod readahead;
mod tailer;
mod track;
pub mod walk;

pub use error::BoltError;
pub use file::BoltFile;
pub use format::Meta;
pub use key::{decode_key, encode_bucket, encode_key, show_path, KeyRef};
pub use tailer::{BoltTailer, FenceHandle, TailerOptions};
pub use track::{Change, ChangeTracker, Diff, SnapshotReader};
pub use walk::{Entries, Entry, Snapshot};
