//! The target side of the pipeline.

use ferry_core::{ErrorKind, Event, Seq, ShardId};
use std::future::Future;

/// A sink error, classified once, where it happened.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct SinkError {
    pub kind: ErrorKind,
    /// One clear sentence: which store, which key or shard, what to do.
    pub message: String,
}

impl SinkError {
    pub fn transient(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Transient,
            message: message.into(),
        }
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Permanent,
            message: message.into(),
        }
    }

    pub fn fatal(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Fatal,
            message: message.into(),
        }
    }

    /// The bounded `error_type` label for metrics.
    pub fn error_type(&self) -> &'static str {
        match self.kind {
            ErrorKind::Transient => "transient",
            ErrorKind::Permanent => "permanent",
            ErrorKind::Fatal => "fatal",
        }
    }
}

/// A target store.
///
/// Contract:
/// - **Delivery is at least once.** After a crash, events up to the last
///   checkpoint the journal recorded may be offered again; applying an event
///   twice must leave the target as applying it once. Sinks that can store
///   their own checkpoint in the same transaction as the data (etcd, Mongo)
///   report it from [`Sink::durable_checkpoint`] and skip what they already
///   applied: exactly-once in effect.
/// - **Order holds within a shard only.** `apply` gets one shard's events in
///   sequence order, contiguous, never a gap. Calls for different shards may
///   run concurrently; calls for one shard never overlap.
/// - **The durable watermark only grows.** `apply` returns the highest
///   sequence now durable on the target; it is never lower than a value
///   returned before for that shard.
/// - Markers (`Op::is_marker`) carry no data: a sink applies what it needs
///   (a snapshot sweep at `SnapshotEnd`) and advances past the rest.
pub trait Sink: Send + Sync + 'static {
    /// A stable name: the target's redacted URL. Names checkpoints and labels.
    fn name(&self) -> &str;

    /// Connects and checks the target; called once before any apply.
    fn startup(&self) -> impl Future<Output = Result<(), SinkError>> + Send;

    /// The last sequence of `shard` this target durably holds, by its own
    /// records, if it keeps any.
    fn durable_checkpoint(
        &self,
        shard: ShardId,
    ) -> impl Future<Output = Result<Option<Seq>, SinkError>> + Send;

    /// Applies one shard's ordered batch; returns the highest durable sequence.
    fn apply(
        &self,
        shard: ShardId,
        events: &[Event],
    ) -> impl Future<Output = Result<Seq, SinkError>> + Send;

    /// Releases connections and background tasks.
    fn shutdown(&self) -> impl Future<Output = ()> + Send;
}
