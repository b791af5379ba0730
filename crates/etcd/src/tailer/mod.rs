//! The etcd source tailer: snapshot at a revision, then watch from it.
//!
//! Journal layout it produces, per shard:
//!
//! ```text
//! SnapshotBegin@R  put…@mod_rev (keys of this shard at R)  SnapshotEnd@R  put/delete…@rev  [Fence@F] …
//! ```
//!
//! Invariants:
//! - **No gap, no loss.** The snapshot reads every page at the same
//!   revision R; the watch starts at R + 1. The source checkpoint (R, then
//!   the highest revision known fully delivered) is written in the same
//!   atomic append as the events it covers, so a crash resumes exactly
//!   after the last durable event.
//! - **No checkpoint during a snapshot.** A crash mid-snapshot re-snapshots
//!   from scratch at a new revision; the sink's sweep at `SnapshotEnd`
//!   removes keys that vanished in between.
//! - **Sequences are ours.** Each shard's next sequence comes from the
//!   journal's bounds at start and is tracked here; every append names it
//!   (`first_seq`), so a second tailer on the same journal fails loudly
//!   instead of interleaving.
//! - **Compaction is never skipped silently:** it is an error, or (when
//!   allowed) a logged re-snapshot.

mod fence;
mod stream;

pub use fence::FenceHandle;

use crate::lease::{self, LeaseLiveness};
use crate::store::RangeCursor;
use crate::{is_reserved, EtcdError, EtcdStore};
use etcd_client::KeyValue;
use fence::{FenceRequest, FenceShared};
use ferry_core::metric_names as m;
use ferry_core::{ErrorPolicy, Event, Op, Position, ShardId, ShardSpan, StoreMeta, Value};
use ferry_journal::Journal;
use ferry_lag::{now_ms, LagTracker, Phase};
use ferry_replay::{AppendError, Shutdown, SpanAppender};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Tuning of a tailer. `Default` gives the documented values.
#[derive(Clone, Debug)]
pub struct TailerOptions {
    /// On compaction past the resume revision: take a new snapshot (true)
    /// or stop with [`EtcdError::Compacted`] (false).
    pub resnapshot_on_compaction: bool,
    /// Flush a streaming batch at this many events...
    pub batch_max_events: usize,
    /// ...or this long after its first event, whichever comes first: long
    /// enough to group a burst, short enough not to add visible lag.
    pub batch_max_wait: Duration,
    /// How often to ask etcd for watch progress (source head, idle
    /// checkpoints, fences).
    pub progress_interval: Duration,
    /// Minimum time between checkpoint-only appends on an idle source.
    pub idle_checkpoint_interval: Duration,
    /// How often live source leases are re-checked.
    pub lease_refresh_interval: Duration,
    /// Caps keys read from the source per second (`--rate-limit`), for
    /// sources in production; `None` reads as fast as the journal takes.
    pub rate_limit: Option<std::sync::Arc<ferry_replay::RateLimiter>>,
}

impl Default for TailerOptions {
    fn default() -> Self {
        TailerOptions {
            resnapshot_on_compaction: true,
            batch_max_events: 1000,
            batch_max_wait: Duration::from_millis(5),
            progress_interval: Duration::from_secs(1),
            idle_checkpoint_interval: Duration::from_secs(5),
            lease_refresh_interval: Duration::from_secs(1),
            rate_limit: None,
        }
    }
}

/// Tails one etcd prefix into the journal. See the module doc.
pub struct EtcdTailer {
    store: EtcdStore,
    source: String,
    span: ShardSpan,
    opts: TailerOptions,
    liveness: LeaseLiveness,
    fence_tx: mpsc::Sender<FenceRequest>,
    fence_rx: mpsc::Receiver<FenceRequest>,
    fence_shared: Arc<FenceShared>,
}

impl EtcdTailer {
    /// `source_name` names the journal checkpoint (stable across restarts);
    /// `span` is the journal's shards this source's events go to.
    pub fn new(
        store: EtcdStore,
        source_name: String,
        span: ShardSpan,
        opts: TailerOptions,
    ) -> Self {
        let (fence_tx, fence_rx) = mpsc::channel(16);
        EtcdTailer {
            store,
            source: source_name,
            span,
            opts,
            liveness: LeaseLiveness::new(),
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

    /// Source lease liveness, for [`EtcdSink`](crate::EtcdSink)s.
    pub fn liveness(&self) -> LeaseLiveness {
        self.liveness.clone()
    }

    /// Runs until shutdown (`Ok`) or an error that is not transient.
    /// Transient errors (outages, leader changes) are retried with backoff,
    /// resuming from the last journaled revision.
    pub async fn run<J: Journal>(
        mut self,
        journal: Arc<J>,
        lag: Arc<LagTracker>,
        mut shutdown: Shutdown,
    ) -> Result<(), EtcdError> {
        let refresher = tokio::spawn(lease::refresh_loop(
            self.store.clone(),
            self.liveness.clone(),
            self.opts.lease_refresh_interval,
        ));
        // Dropping a JoinHandle does not stop the task; abort it on every exit.
        let _refresher = AbortOnDrop(refresher);
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
            // Boxed: a watch session's state is large; `run`'s own future
            // stays small for whoever spawns it.
            let step = Box::pin(self.step(
                &mut app,
                journal.as_ref(),
                &lag,
                &mut shutdown,
                &mut fences,
                &mut attempt,
            ))
            .await;
            match step {
                Ok(true) => break Ok(()),
                Ok(false) => {}
                Err(e) => match e.kind().policy(attempt) {
                    ErrorPolicy::Retry { after } => {
                        tracing::warn!(store = self.store.name(), error = %e, attempt, "etcd tailer failed; retrying in {after:?} from the last journaled revision");
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
        let stop = EtcdError::TailerStopped {
            store: self.store.name().to_string(),
        };
        fences.fail_all(result.as_ref().err().unwrap_or(&stop));
        result
    }

    /// One snapshot or one watch session. `Ok(true)`: shutdown.
    async fn step<J: Journal>(
        &mut self,
        app: &mut Appender<'_, J>,
        journal: &J,
        lag: &LagTracker,
        shutdown: &mut Shutdown,
        fences: &mut fence::Fences,
        attempt: &mut u32,
    ) -> Result<bool, EtcdError> {
        let resume = journal
            .source_checkpoint(&self.source)
            .map_err(|e| app.journal_err(e))?;
        let Some(pos) = resume else {
            return self.snapshot(app, shutdown, attempt).await;
        };
        let from = i64::try_from(pos.order).unwrap_or(i64::MAX);
        app.set_phase(Phase::Streaming);
        match self
            .stream(app, lag, from, shutdown, fences, attempt)
            .await?
        {
            stream::StreamEnd::Shutdown => Ok(true),
            stream::StreamEnd::Compacted { compact_revision } => {
                if !self.opts.resnapshot_on_compaction {
                    return Err(EtcdError::Compacted {
                        store: self.store.name().to_string(),
                        resume: from + 1,
                        compact_revision,
                    });
                }
                tracing::warn!(
                    store = self.store.name(),
                    "source etcd compacted past journaled revision {from} (compacted to {compact_revision}); taking a new snapshot"
                );
                self.snapshot(app, shutdown, attempt).await
            }
        }
    }

    /// Copies the prefix at one revision R; see the module doc for the
    /// markers. `Ok(true)`: stopped by shutdown before the end (nothing
    /// checkpointed, the next start snapshots again).
    async fn snapshot<J: Journal>(
        &self,
        app: &mut Appender<'_, J>,
        shutdown: &mut Shutdown,
        attempt: &mut u32,
    ) -> Result<bool, EtcdError> {
        'restart: loop {
            let (rev, total) = self.store.count_at(0).await?;
            tracing::info!(
                store = self.store.name(),
                revision = rev,
                keys = total,
                "taking a snapshot"
            );
            let r = u64::try_from(rev).unwrap_or(0);
            app.append(
                app.markers(
                    Op::SnapshotBegin {
                        total_keys: Some(total),
                    },
                    r,
                ),
                None,
            )
            .await?;
            app.set_phase(Phase::Snapshot { copied: 0, total });
            let mut cursor = RangeCursor::prefix(self.store.prefix(), rev);
            let mut copied = 0u64;
            loop {
                if shutdown.is_stopping() {
                    return Ok(true);
                }
                let page = match cursor.next_page(&self.store).await {
                    Ok(Some(p)) => p,
                    Ok(None) => break,
                    Err(EtcdError::Compacted { .. }) => {
                        tracing::warn!(store = self.store.name(), revision = rev, "source etcd was compacted past the snapshot revision {rev} during the snapshot; taking a new snapshot");
                        continue 'restart;
                    }
                    Err(e) => match e.kind().policy(*attempt) {
                        // The cursor is pinned at R: after an outage the
                        // snapshot goes on where it was, unless compacted.
                        ErrorPolicy::Retry { after } => {
                            tracing::warn!(store = self.store.name(), error = %e, "snapshot page failed; retrying in {after:?}");
                            *attempt += 1;
                            tokio::select! {
                                () = tokio::time::sleep(after) => continue,
                                () = shutdown.wait() => return Ok(true),
                            }
                        }
                        _ => return Err(e),
                    },
                };
                *attempt = 0;
                let n = page.len() as u64;
                let mut per_shard = app.empty();
                for kv in page {
                    let ev = self.put_event(&kv).await?;
                    per_shard[app.index(ev.shard)].push(ev);
                }
                if let Some(limiter) = &self.opts.rate_limit {
                    ferry_replay::throttle(limiter, n as usize).await;
                }
                app.append(per_shard, None).await?;
                copied += n;
                app.set_phase(Phase::Snapshot { copied, total });
                metrics::counter!(m::SNAPSHOT_COPIED_KEYS_TOTAL, "source" => self.source.clone())
                    .increment(n);
            }
            app.append(app.markers(Op::SnapshotEnd, r), Some(rev))
                .await?;
            app.set_phase(Phase::Streaming);
            tracing::info!(
                store = self.store.name(),
                revision = rev,
                keys = copied,
                "snapshot journaled; streaming changes"
            );
            return Ok(false);
        }
    }

    /// The event for a put (snapshot or watch) of `kv`.
    async fn put_event(&self, kv: &KeyValue) -> Result<Event, EtcdError> {
        let meta = if kv.lease() != 0 {
            StoreMeta::Etcd {
                lease_id: kv.lease(),
                lease_ttl_s: lease::ttl_for_event(&self.store, &self.liveness, kv.lease()).await?,
            }
        } else {
            StoreMeta::None
        };
        let op = Op::Put {
            value: Value::Plain(kv.value().to_vec()),
            meta,
        };
        Ok(self.event(kv.key(), kv.mod_revision(), op))
    }

    fn event(&self, key: &[u8], revision: i64, op: Op) -> Event {
        Event {
            shard: self.span.shard_for(key),
            seq: 0,
            position: Position::at(u64::try_from(revision).unwrap_or(0)),
            key: key.to_vec(),
            op,
            // etcd keeps no wall-clock time per revision.
            source_ts_ms: 0,
            capture_ts_ms: now_ms(),
        }
    }

    /// True for a key this tailer must not capture.
    fn skip(key: &[u8]) -> bool {
        is_reserved(key)
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The shared span appender, with errors named after this store.
struct Appender<'a, J> {
    inner: SpanAppender<'a, J>,
    store: String,
}

impl<'a, J: Journal> Appender<'a, J> {
    fn load(
        journal: &'a J,
        lag: &'a LagTracker,
        source: String,
        store: String,
        span: ShardSpan,
    ) -> Result<Self, EtcdError> {
        let inner =
            SpanAppender::load(journal, lag, source, span).map_err(|e| append_err(&store, e))?;
        Ok(Appender { inner, store })
    }

    fn journal_err(&self, e: ferry_journal::JournalError) -> EtcdError {
        journal_err(&self.store, e)
    }

    fn empty(&self) -> Vec<Vec<Event>> {
        self.inner.empty()
    }

    fn index(&self, shard: ShardId) -> usize {
        self.inner.index(shard)
    }

    fn span(&self) -> ShardSpan {
        self.inner.span()
    }

    fn set_phase(&self, phase: Phase) {
        self.inner.set_phase(phase);
    }

    /// One marker event per shard, at `position`.
    fn markers(&self, op: Op, position: u64) -> Vec<Vec<Event>> {
        self.inner.markers(op, &Position::at(position))
    }

    /// Appends `per_shard` (indexed from the span's first shard) and, if
    /// given, the source checkpoint at revision `checkpoint`, atomically;
    /// resolves once durable.
    async fn append(
        &mut self,
        per_shard: Vec<Vec<Event>>,
        checkpoint: Option<i64>,
    ) -> Result<(), EtcdError> {
        let cp = checkpoint.map(|rev| Position::at(u64::try_from(rev).unwrap_or(0)));
        self.inner
            .append(per_shard, cp)
            .await
            .map_err(|e| append_err(&self.store, e))
    }
}

fn append_err(store: &str, e: AppendError) -> EtcdError {
    EtcdError::Journal {
        store: store.to_string(),
        detail: e.to_string(),
    }
}

fn journal_err(store: &str, e: ferry_journal::JournalError) -> EtcdError {
    EtcdError::Journal {
        store: store.to_string(),
        detail: e.to_string(),
    }
}
