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

    /// Called once by the cutover after every shard applied its fence and
    /// before verification: what the target defers until then (MongoDB's
    /// unique and TTL indexes, so a replay can never fail on them midway).
    /// Nothing by default.
    fn after_fence(&self) -> impl Future<Output = Result<(), SinkError>> + Send {
        async { Ok(()) }
    }
}

type Fut<'a, T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The object-safe twin of [`Sink`], implemented for every sink.
trait ErasedSink: Send + Sync + 'static {
    fn name(&self) -> &str;
    fn startup(&self) -> Fut<'_, Result<(), SinkError>>;
    fn durable_checkpoint(&self, shard: ShardId) -> Fut<'_, Result<Option<Seq>, SinkError>>;
    fn apply<'a>(&'a self, shard: ShardId, events: &'a [Event]) -> Fut<'a, Result<Seq, SinkError>>;
    fn shutdown(&self) -> Fut<'_, ()>;
    fn after_fence(&self) -> Fut<'_, Result<(), SinkError>>;
}

impl<S: Sink> ErasedSink for S {
    fn name(&self) -> &str {
        Sink::name(self)
    }
    fn startup(&self) -> Fut<'_, Result<(), SinkError>> {
        Box::pin(Sink::startup(self))
    }
    fn durable_checkpoint(&self, shard: ShardId) -> Fut<'_, Result<Option<Seq>, SinkError>> {
        Box::pin(Sink::durable_checkpoint(self, shard))
    }
    fn apply<'a>(&'a self, shard: ShardId, events: &'a [Event]) -> Fut<'a, Result<Seq, SinkError>> {
        Box::pin(Sink::apply(self, shard, events))
    }
    fn shutdown(&self) -> Fut<'_, ()> {
        Box::pin(Sink::shutdown(self))
    }
    fn after_fence(&self) -> Fut<'_, Result<(), SinkError>> {
        Box::pin(Sink::after_fence(self))
    }
}

/// A sink of any type, behind one: what a connector hands the agent. The
/// boxed futures cost one allocation per batch.
#[derive(Clone)]
pub struct SharedSink(std::sync::Arc<dyn ErasedSink>);

impl SharedSink {
    pub fn new<S: Sink>(sink: S) -> Self {
        SharedSink(std::sync::Arc::new(sink))
    }
}

impl Sink for SharedSink {
    fn name(&self) -> &str {
        self.0.name()
    }
    fn startup(&self) -> impl Future<Output = Result<(), SinkError>> + Send {
        self.0.startup()
    }
    fn durable_checkpoint(
        &self,
        shard: ShardId,
    ) -> impl Future<Output = Result<Option<Seq>, SinkError>> + Send {
        self.0.durable_checkpoint(shard)
    }
    async fn apply(&self, shard: ShardId, events: &[Event]) -> Result<Seq, SinkError> {
        self.0.apply(shard, events).await
    }
    fn shutdown(&self) -> impl Future<Output = ()> + Send {
        self.0.shutdown()
    }
    fn after_fence(&self) -> impl Future<Output = Result<(), SinkError>> + Send {
        self.0.after_fence()
    }
}
