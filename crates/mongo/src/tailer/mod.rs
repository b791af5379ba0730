//! The MongoDB source tailer: copy the collections, then follow the change
//! stream from the cluster time recorded before the copy.
//!
//! Journal layout it produces, per shard of its span:
//!
//! ```text
//! SnapshotBegin@T  put…@T (documents of this shard)  SnapshotEnd@T  put/delete…@ct  [Fence@F] …
//! ```
//!
//! T is the cluster time read before the first document is copied; `ct` is
//! each change's cluster time. Snapshot events carry an empty position
//! token, streamed events the change's resume token (the sink uses this to
//! try plain inserts for the copy).
//!
//! Invariants:
//! - **No gap, no loss.** The copy is not a point-in-time read; the change
//!   stream starts at T (inclusive), before the copy began, so every change
//!   the copy missed or saw half-way is streamed afterwards and applied
//!   after the copy in its shard: the final state of every document is the
//!   source's. A change seen twice is re-applied harmlessly (replace by
//!   `_id`, delete by `_id`).
//! - **The resume point travels with the data.** After the copy the source
//!   checkpoint is `T` (no token: start at operation time T); afterwards it
//!   is the last journaled change's cluster time and resume token, written
//!   in the same atomic append as the events. A restart resumes after the
//!   last durable event; if the server no longer has that history, the
//!   tailer takes a new snapshot (or stops with
//!   [`MongoError::HistoryLost`] when told not to).
//! - **No checkpoint during a copy.** A crash mid-copy copies again from a
//!   new T; the sink sweeps documents that vanished in between.
//! - **Sequences are ours.** Each shard's next sequence comes from the
//!   journal's bounds at start; every append names it, so a second tailer
//!   on the same journal fails loudly instead of interleaving.
//! - Dropping or renaming a selected collection (or its database) while
//!   streaming triggers a new snapshot: the change stream cannot say which
//!   documents went.
//!
//! Collections are copied one after another in `_id`-index order of the
//! server's natural scan. Parallel `_id` ranges were not built: on the
//! servers measured the target's writes, not the source's reads, bound the
//! copy (see the README).

mod fence;
mod stream;

pub use fence::{FenceHandle, WriteAfterFence};

use crate::store::pack;
use crate::{key, MongoError, MongoStore, Namespace};
use fence::{FenceRequest, FenceShared};
use ferry_core::metric_names as m;
use ferry_core::{ErrorPolicy, Event, Op, Position, ShardId, ShardSpan, StoreMeta, Value};
use ferry_journal::Journal;
use ferry_lag::{now_ms, LagTracker, Phase};
use ferry_replay::{Shutdown, SpanAppender};
use futures::TryStreamExt;
use mongodb::bson::RawDocumentBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Tuning of a tailer. `Default` gives the documented values.
#[derive(Clone, Debug)]
pub struct TailerOptions {
    /// When the server lost the history to resume from: take a new
    /// snapshot (true) or stop with [`MongoError::HistoryLost`] (false).
    pub resnapshot_on_history_lost: bool,
    /// Copy: append after this many documents...
    pub snapshot_batch_docs: usize,
    /// ...or this many bytes, whichever first (bounds the tailer's memory).
    pub snapshot_batch_bytes: usize,
    /// Streaming: flush at this many events...
    pub batch_max_events: usize,
    /// ...or this long after the first pending one: groups a burst without
    /// adding visible lag.
    pub batch_max_wait: Duration,
    /// How long the server holds an idle `getMore` of the change stream:
    /// bounds how late an idle stream notices a fence or shutdown. A fence
    /// on a quiet (read-only) source is reached by the first empty batch
    /// that *started* after it was asked for, so the cutover's fence takes
    /// between one and two of these: 50 ms makes it 55–100 ms (200 ms made
    /// it about 400 ms of the read-only window, measured by the window
    /// bench), for 20 empty round trips a second on an idle source.
    pub max_await: Duration,
    /// Minimum time between checkpoint-only appends on an idle source.
    pub idle_checkpoint_interval: Duration,
    /// Caps documents read from the source per second (`--rate-limit`).
    pub rate_limit: Option<Arc<ferry_replay::RateLimiter>>,
}

impl Default for TailerOptions {
    fn default() -> Self {
        TailerOptions {
            resnapshot_on_history_lost: true,
            snapshot_batch_docs: 1000,
            snapshot_batch_bytes: 4 << 20,
            batch_max_events: 1000,
            batch_max_wait: Duration::from_millis(5),
            max_await: Duration::from_millis(50),
            idle_checkpoint_interval: Duration::from_secs(5),
            rate_limit: None,
        }
    }
}

/// Tails the selected namespaces of one MongoDB deployment into the
/// journal. See the module doc.
pub struct MongoTailer {
    store: MongoStore,
    source: String,
    span: ShardSpan,
    opts: TailerOptions,
    fence_tx: mpsc::Sender<FenceRequest>,
    fence_rx: mpsc::Receiver<FenceRequest>,
    fence_shared: Arc<FenceShared>,
}

impl MongoTailer {
    /// `source_name` names the journal checkpoint (stable across
    /// restarts); `span` is this source's shards of the journal.
    pub fn new(
        store: MongoStore,
        source_name: String,
        span: ShardSpan,
        opts: TailerOptions,
    ) -> Self {
        let (fence_tx, fence_rx) = mpsc::channel(16);
        MongoTailer {
            store,
            source: source_name,
            span,
            opts,
            fence_tx,
            fence_rx,
            fence_shared: Arc::default(),
        }
    }

    /// A handle to ask the running tailer for fences.
    pub fn fence_handle(&self) -> FenceHandle {
        FenceHandle {
            tx: self.fence_tx.clone(),
            shared: Arc::clone(&self.fence_shared),
            store: self.store.name().into(),
        }
    }

    /// Runs until shutdown (`Ok`) or an error that is not transient.
    /// Transient errors (outages, elections) are retried with backoff,
    /// resuming from the last journaled resume token.
    pub async fn run<J: Journal>(
        mut self,
        journal: Arc<J>,
        lag: Arc<LagTracker>,
        mut shutdown: Shutdown,
    ) -> Result<(), MongoError> {
        let mut app = Appender::load(
            journal.as_ref(),
            &lag,
            self.source.clone(),
            self.store.name().to_string(),
            self.span,
        )?;
        let mut fences = fence::Fences::default();
        let mut attempt = 0u32;
        let result = loop {
            if shutdown.is_stopping() {
                break Ok(());
            }
            let step =
                Box::pin(self.step(&mut app, &lag, &mut shutdown, &mut fences, &mut attempt)).await;
            match step {
                Ok(true) => break Ok(()),
                Ok(false) => {}
                Err(e) => match e.kind().policy(attempt) {
                    ErrorPolicy::Retry { after } => {
                        tracing::warn!(store = self.store.name(), error = %e, attempt, "MongoDB tailer failed; retrying in {after:?} from the last journaled resume token");
                        attempt += 1;
                        tokio::select! {
                            () = tokio::time::sleep(after) => {}
                            () = shutdown.wait() => break Ok(()),
                        }
                    }
                    _ => break Err(e),
                },
            }
        };
        let stop = MongoError::TailerStopped {
            store: self.store.name().to_string(),
        };
        fences.fail_all(result.as_ref().err().unwrap_or(&stop));
        result
    }

    /// One snapshot or one change-stream session. `Ok(true)`: shutdown.
    async fn step<J: Journal>(
        &mut self,
        app: &mut Appender<'_, J>,
        lag: &LagTracker,
        shutdown: &mut Shutdown,
        fences: &mut fence::Fences,
        attempt: &mut u32,
    ) -> Result<bool, MongoError> {
        let Some(pos) = app.checkpoint().cloned() else {
            return self.snapshot(app, shutdown).await;
        };
        app.set_phase(Phase::Streaming);
        match self.stream(app, lag, pos, shutdown, fences, attempt).await {
            Ok(stream::StreamEnd::Shutdown) => Ok(true),
            Ok(stream::StreamEnd::Resnapshot(why)) => {
                tracing::warn!(store = self.store.name(), "{why}; taking a new snapshot");
                self.snapshot(app, shutdown).await
            }
            Err(MongoError::HistoryLost { .. }) if self.opts.resnapshot_on_history_lost => {
                tracing::warn!(store = self.store.name(), "the source no longer holds the history after the journaled resume token; taking a new snapshot");
                self.snapshot(app, shutdown).await
            }
            Err(e) => Err(e),
        }
    }

    /// Copies every selected collection; see the module doc for the
    /// markers. `Ok(true)`: stopped by shutdown before the end (nothing
    /// checkpointed, the next start copies again).
    async fn snapshot<J: Journal>(
        &self,
        app: &mut Appender<'_, J>,
        shutdown: &mut Shutdown,
    ) -> Result<bool, MongoError> {
        let t = self.store.head_position().await?;
        let namespaces = self.store.namespaces().await?;
        let mut total = 0u64;
        for ns in &namespaces {
            total += self.store.estimated_count(ns).await?;
        }
        tracing::info!(
            store = self.store.name(),
            cluster_time = t,
            collections = namespaces.len(),
            documents = total,
            "copying the collections"
        );
        app.append(
            app.markers(
                Op::SnapshotBegin {
                    total_keys: Some(total),
                },
                t,
            ),
            None,
        )
        .await?;
        app.set_phase(Phase::Snapshot { copied: 0, total });
        let mut copied = 0u64;
        for ns in &namespaces {
            if self
                .copy_collection(app, ns, t, &mut copied, total, shutdown)
                .await?
            {
                return Ok(true);
            }
        }
        app.append(app.markers(Op::SnapshotEnd, t), Some(Position::at(t)))
            .await?;
        app.set_phase(Phase::Streaming);
        tracing::info!(
            store = self.store.name(),
            documents = copied,
            "copy journaled; streaming changes"
        );
        Ok(false)
    }

    /// Copies one collection; `Ok(true)` on shutdown.
    #[allow(clippy::too_many_arguments)]
    async fn copy_collection<J: Journal>(
        &self,
        app: &mut Appender<'_, J>,
        ns: &Namespace,
        t: u64,
        copied: &mut u64,
        total: u64,
        shutdown: &mut Shutdown,
    ) -> Result<bool, MongoError> {
        let coll = self
            .store
            .client()
            .database(&ns.db)
            .collection::<RawDocumentBuf>(&ns.coll);
        let action = format!("copying {ns}");
        let mut cursor = coll
            .find(mongodb::bson::doc! {})
            .batch_size(u32::try_from(self.opts.snapshot_batch_docs).unwrap_or(1000))
            .await
            .map_err(|e| self.store.err(&action, &e))?;
        let mut per_shard = app.empty();
        let (mut n, mut bytes) = (0usize, 0usize);
        let position = Position::at(t);
        let now = now_ms();
        loop {
            if shutdown.is_stopping() {
                return Ok(true);
            }
            let doc = cursor
                .try_next()
                .await
                .map_err(|e| self.store.err(&action, &e))?;
            let done = doc.is_none();
            if let Some(doc) = doc {
                let id = doc
                    .get("_id")
                    .ok()
                    .flatten()
                    .ok_or_else(|| MongoError::Server {
                        store: self.store.name().to_string(),
                        action: action.clone(),
                        detail: "a document without _id".into(),
                        kind: ferry_core::ErrorKind::Permanent,
                    })?;
                let k = key::encode(ns, id);
                let shard = self.span.shard_for(&k);
                bytes += doc.as_bytes().len() + k.len();
                per_shard[app.index(shard)].push(Event {
                    shard,
                    seq: 0,
                    position: position.clone(),
                    key: k,
                    op: Op::Put {
                        value: Value::Plain(doc.into_bytes()),
                        meta: StoreMeta::Mongo {
                            db: ns.db.clone(),
                            collection: ns.coll.clone(),
                        },
                    },
                    source_ts_ms: u64::from((t >> 32) as u32) * 1000,
                    capture_ts_ms: now,
                });
                n += 1;
            }
            if n > 0
                && (done
                    || n >= self.opts.snapshot_batch_docs
                    || bytes >= self.opts.snapshot_batch_bytes)
            {
                if let Some(limiter) = &self.opts.rate_limit {
                    ferry_replay::throttle(limiter, n).await;
                }
                app.append(std::mem::replace(&mut per_shard, app.empty()), None)
                    .await?;
                *copied += n as u64;
                app.set_phase(Phase::Snapshot {
                    copied: *copied,
                    total,
                });
                metrics::counter!(m::SNAPSHOT_COPIED_KEYS_TOTAL, "source" => self.source.clone())
                    .increment(n as u64);
                (n, bytes) = (0, 0);
            }
            if done {
                return Ok(false);
            }
        }
    }
}

/// A cluster time from the driver as a position order.
pub(crate) fn order_of(t: Option<mongodb::bson::Timestamp>) -> u64 {
    t.map_or(0, pack)
}

/// The shared [`SpanAppender`], with errors named after this store and
/// one rule of its own: the source checkpoint only grows.
pub(crate) struct Appender<'a, J> {
    inner: SpanAppender<'a, J>,
    store: String,
    /// The last source checkpoint written.
    checkpoint: Option<Position>,
}

impl<'a, J: Journal> Appender<'a, J> {
    fn load(
        journal: &'a J,
        lag: &'a LagTracker,
        source: String,
        store: String,
        span: ShardSpan,
    ) -> Result<Self, MongoError> {
        let append_err = |e| append_err(&store, e);
        let inner = SpanAppender::load(journal, lag, source, span).map_err(append_err)?;
        let checkpoint = inner.checkpoint().map_err(append_err)?;
        Ok(Appender {
            inner,
            store,
            checkpoint,
        })
    }

    /// Sets the phase of this source's shards (not the other sources').
    fn set_phase(&self, phase: Phase) {
        self.inner.set_phase(phase);
    }

    /// The source checkpoint this appender last wrote or found.
    fn checkpoint(&self) -> Option<&Position> {
        self.checkpoint.as_ref()
    }

    fn index(&self, shard: ShardId) -> usize {
        self.inner.index(shard)
    }

    fn empty(&self) -> Vec<Vec<Event>> {
        self.inner.empty()
    }

    /// One marker event per shard, at `position`.
    fn markers(&self, op: Op, position: u64) -> Vec<Vec<Event>> {
        self.inner.markers(op, &Position::at(position))
    }

    /// Appends `per_shard` (indexed within the span) and, if given and
    /// newer than the last one, the source checkpoint, atomically;
    /// resolves once durable.
    async fn append(
        &mut self,
        per_shard: Vec<Vec<Event>>,
        checkpoint: Option<Position>,
    ) -> Result<(), MongoError> {
        // A checkpoint that would not grow is left out: two changes of one
        // transaction share a cluster time, and their tokens need not
        // compare in stream order as bytes. Resuming a little early only
        // re-journals changes, which re-apply harmlessly.
        let checkpoint = checkpoint.filter(|p| self.checkpoint.as_ref().is_none_or(|c| p > c));
        self.inner
            .append(per_shard, checkpoint.clone())
            .await
            .map_err(|e| append_err(&self.store, e))?;
        if checkpoint.is_some() {
            self.checkpoint = checkpoint;
        }
        Ok(())
    }
}

fn append_err(store: &str, e: ferry_replay::AppendError) -> MongoError {
    MongoError::Journal {
        store: store.to_string(),
        detail: e.to_string(),
    }
}
