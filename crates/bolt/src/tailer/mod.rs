//! The Bolt source tailer: a snapshot of one transaction, then the changes
//! of every later transaction, found by polling the meta pages.
//!
//! Journal layout it produces, per shard of its span:
//!
//! ```text
//! SnapshotBegin@T  put…@T (entries of this shard at T)  SnapshotEnd@T  put/delete…@txid  [Fence@F] …
//! ```
//!
//! Positions are transaction ids (`Position::at(txid)`); the source
//! checkpoint is the newest transaction whose changes are all journaled,
//! written in the same append as the last of them.
//!
//! Event keys are [`encode_key`](crate::encode_key) /
//! [`encode_bucket`](crate::encode_bucket) of (bucket path, key); values
//! carry `StoreMeta::Bolt { buckets }`. A bucket itself is a put of an
//! empty value under its bucket key (created) or a delete of it (deleted);
//! a deleted bucket's keys get their own deletes.
//!
//! Invariants:
//! - **Consistent reads.** Every chunk journaled was read while its
//!   transaction was still the file's newest (see [`crate::walk`]); a read
//!   the writer overtook is read again at the new head.
//! - **No checkpoint during a snapshot.** A crash (or a writer too fast
//!   for a consistent read) mid-snapshot snapshots again from scratch at a
//!   new transaction; the sink's sweep at `SnapshotEnd` removes keys that
//!   vanished in between.
//! - **Resume.** Diffs need the tree of the checkpointed transaction, and
//!   bbolt reuses its pages once two more transactions committed, so the
//!   tree is only readable if the file is still at the checkpoint. If it
//!   is, the tailer re-reads it (no events) and streams on; if the file
//!   moved on while Ferry was stopped, it takes a new snapshot (with its
//!   `SnapshotBegin`/`SnapshotEnd` markers, so the sink's sweep deletes
//!   keys removed in the meantime).
//! - **Sequences are ours**, as in the etcd tailer: a second tailer on the
//!   same journal fails loudly.
//!
//! File reads are synchronous positional reads on the tailer's task:
//! small per poll, and a snapshot is read in chunks between appends.

mod fence;

pub use fence::FenceHandle;

use crate::track::{Change, ChangeTracker, SnapshotReader};
use crate::{encode_bucket, encode_key, BoltError, BoltFile, Entry};
use fence::{FenceRequest, FenceShared};
use ferry_core::metric_names as m;
use ferry_core::{ErrorPolicy, Event, Op, Position, ShardSpan, StoreMeta, Value};
use ferry_journal::Journal;
use ferry_lag::{now_ms, LagTracker, Phase};
use ferry_replay::appender::{AppendError, SpanAppender};
use ferry_replay::Shutdown;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Tuning of a tailer. `Default` gives the documented values.
#[derive(Clone, Debug)]
pub struct TailerOptions {
    /// How often the meta pages are read while the file is idle. A poll
    /// is two 64-byte reads; polling often keeps diffs on the cheap path
    /// (one transaction at a time). After a change the tailer polls again
    /// at once.
    pub poll_interval: Duration,
    /// Events per journal append.
    pub batch_max_events: usize,
    /// Caps keys read from the source per second (`--rate-limit`).
    pub rate_limit: Option<Arc<ferry_replay::RateLimiter>>,
}

/// 20 ms: a Cells server commits a handful of transactions per second at
/// most, so this sees nearly every one separately at negligible cost.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(20);

impl Default for TailerOptions {
    fn default() -> Self {
        TailerOptions {
            poll_interval: DEFAULT_POLL_INTERVAL,
            batch_max_events: 1000,
            rate_limit: None,
        }
    }
}

/// Tails one Bolt file into the journal. See the module doc.
pub struct BoltTailer {
    path: PathBuf,
    name: String,
    source: String,
    span: ShardSpan,
    opts: TailerOptions,
    fence_tx: mpsc::Sender<FenceRequest>,
    fence_rx: mpsc::Receiver<FenceRequest>,
    fence_shared: Arc<FenceShared>,
}

impl BoltTailer {
    /// `source_name` names the journal checkpoint (stable across
    /// restarts); `span` is this source's shards of the journal.
    pub fn new(
        path: impl Into<PathBuf>,
        source_name: String,
        span: ShardSpan,
        opts: TailerOptions,
    ) -> Self {
        let path = path.into();
        let (fence_tx, fence_rx) = mpsc::channel(16);
        BoltTailer {
            name: path.display().to_string(),
            path,
            source: source_name,
            span,
            opts,
            fence_tx,
            fence_rx,
            fence_shared: Arc::default(),
        }
    }

    /// A handle to switch the file read-only and ask for fences.
    pub fn fence_handle(&self) -> FenceHandle {
        FenceHandle {
            tx: self.fence_tx.clone(),
            shared: Arc::clone(&self.fence_shared),
            path: self.path.clone(),
        }
    }

    /// Runs until shutdown (`Ok`) or an error that is not transient.
    /// Transient errors are retried with backoff, resuming from the last
    /// journaled transaction.
    pub async fn run<J: Journal>(
        mut self,
        journal: Arc<J>,
        lag: Arc<LagTracker>,
        mut shutdown: Shutdown,
    ) -> Result<(), BoltError> {
        let mut app = Appender {
            inner: SpanAppender::load(journal.as_ref(), &lag, self.source.clone(), self.span)
                .map_err(|e| journal_err(&self.name, e))?,
            lag: &lag,
            name: self.name.clone(),
        };
        let mut waiting: Vec<FenceRequest> = Vec::new();
        let mut attempt = 0u32;
        let result = loop {
            if shutdown.is_stopping() {
                break Ok(());
            }
            let step = Box::pin(self.session(
                &mut app,
                journal.as_ref(),
                &mut shutdown,
                &mut waiting,
                &mut attempt,
            ))
            .await;
            match step {
                Ok(()) => break Ok(()),
                Err(e) => match e.kind().policy(attempt) {
                    ErrorPolicy::Retry { after } => {
                        tracing::warn!(source = %self.name, error = %e, attempt, "bolt tailer failed; retrying in {after:?} from the last journaled transaction");
                        attempt += 1;
                        tokio::select! {
                            () = tokio::time::sleep(after) => {}
                            () = shutdown.wait() => break Ok(()),
                        }
                    }
                    _ => {
                        app.set_phase(Phase::Stopped {
                            error: e.to_string(),
                        });
                        break Err(e);
                    }
                },
            }
        };
        let err = result
            .as_ref()
            .err()
            .cloned()
            .unwrap_or(BoltError::TailerStopped {
                path: self.name.clone(),
            });
        for r in waiting.drain(..) {
            let _ = r.done.send(Err(err.clone()));
        }
        result
    }

    /// Opens the file, resumes or snapshots, then streams until shutdown
    /// (`Ok`) or an error.
    async fn session<J: Journal>(
        &mut self,
        app: &mut Appender<'_, J>,
        journal: &J,
        shutdown: &mut Shutdown,
        waiting: &mut Vec<FenceRequest>,
        attempt: &mut u32,
    ) -> Result<(), BoltError> {
        let file = BoltFile::open(&self.path)?;
        let resume = journal
            .source_checkpoint(&self.source)
            .map_err(|e| app.journal_err(e))?;
        let mut tracker = match resume {
            Some(pos) if file.head()?.txid == pos.order => {
                let t = ChangeTracker::index(&file)?;
                if t.txid() == pos.order {
                    tracing::info!(source = %self.name, txid = pos.order, "resuming at the journaled transaction");
                    Some(t)
                } else {
                    None
                }
            }
            Some(pos) => {
                tracing::warn!(source = %self.name, journaled = pos.order, "the file moved on while Ferry was stopped and the old transaction's pages may be reused; taking a new snapshot (the sink's sweep removes keys deleted meanwhile)");
                None
            }
            None => None,
        };
        if tracker.is_none() {
            match self.snapshot(app, &file, shutdown).await? {
                Some(t) => tracker = Some(t),
                None => return Ok(()),
            }
        }
        let Some(mut tracker) = tracker else {
            return Ok(());
        };
        *attempt = 0;
        app.set_phase(Phase::Streaming);
        let mut moved_in_a_row = 0u32;
        loop {
            if shutdown.is_stopping() {
                return Ok(());
            }
            self.answer_fences(app, waiting, tracker.txid()).await?;
            match tracker.poll(&file) {
                Ok(None) => {
                    moved_in_a_row = 0;
                    app.lag.source_head(&Position::at(tracker.txid()));
                }
                Ok(Some(diff)) => {
                    moved_in_a_row = 0;
                    let to = diff.to;
                    self.journal_changes(app, diff.changes, to).await?;
                    continue;
                }
                Err(BoltError::Moved { .. }) => {
                    // Overtaken by the writer mid-read: the tracker did not
                    // move; read again at the new head, soon.
                    moved_in_a_row += 1;
                    if moved_in_a_row.is_multiple_of(1000) {
                        tracing::warn!(source = %self.name, reads = moved_in_a_row, "the writer keeps committing faster than a diff can be read; still trying");
                    }
                    if moved_in_a_row < 8 {
                        continue;
                    }
                }
                Err(e) => return Err(e),
            }
            tokio::select! {
                biased;
                () = shutdown.wait() => return Ok(()),
                req = self.fence_rx.recv() => {
                    if let Some(req) = req {
                        waiting.push(req);
                    }
                }
                () = tokio::time::sleep(self.opts.poll_interval) => {}
            }
        }
    }

    /// Journals the newest transaction whole. `Ok(None)`: stopped by
    /// shutdown before the end (nothing checkpointed).
    async fn snapshot<J: Journal>(
        &self,
        app: &mut Appender<'_, J>,
        file: &BoltFile,
        shutdown: &mut Shutdown,
    ) -> Result<Option<ChangeTracker>, BoltError> {
        let mut attempts = 0u32;
        'again: loop {
            attempts += 1;
            if attempts > crate::walk::DEFAULT_READ_ATTEMPTS {
                return Err(BoltError::Unstable {
                    path: self.name.clone(),
                    attempts: attempts - 1,
                });
            }
            let mut reader = SnapshotReader::new(file)?;
            let t = reader.txid();
            tracing::info!(source = %self.name, txid = t, "taking a snapshot");
            app.append(app.markers(Op::SnapshotBegin { total_keys: None }, t), None)
                .await?;
            app.set_phase(Phase::Snapshot {
                copied: 0,
                total: 0,
            });
            let mut copied = 0u64;
            loop {
                if shutdown.is_stopping() {
                    return Ok(None);
                }
                let chunk = match reader.next_chunk(file, self.opts.batch_max_events) {
                    Ok(Some(c)) => c,
                    Ok(None) => break,
                    Err(BoltError::Moved { .. }) => {
                        tracing::info!(source = %self.name, txid = t, "the file moved during the snapshot; taking it again at the new transaction");
                        continue 'again;
                    }
                    Err(e) => return Err(e),
                };
                let n = chunk.len() as u64;
                let mut per_shard = app.empty();
                for e in chunk {
                    let ev = self.entry_event(e, t);
                    per_shard[app.index(&ev)].push(ev);
                }
                if let Some(limiter) = &self.opts.rate_limit {
                    ferry_replay::throttle(limiter, n as usize).await;
                }
                app.append(per_shard, None).await?;
                copied += n;
                app.set_phase(Phase::Snapshot {
                    copied,
                    total: copied,
                });
                metrics::counter!(m::SNAPSHOT_COPIED_KEYS_TOTAL, "source" => self.source.clone())
                    .increment(n);
            }
            app.append(app.markers(Op::SnapshotEnd, t), Some(t)).await?;
            tracing::info!(source = %self.name, txid = t, keys = copied, "snapshot journaled; following transactions");
            return Ok(Some(reader.finish()));
        }
    }

    fn entry_event(&self, e: Entry, txid: u64) -> Event {
        let (key, op) = match e.value {
            Some(v) => (encode_key(&e.buckets, &e.key), put(v, e.buckets)),
            None => (
                encode_bucket(&e.buckets, &e.key),
                put(Vec::new(), e.buckets),
            ),
        };
        self.event(key, txid, op)
    }

    fn event(&self, key: Vec<u8>, txid: u64, op: Op) -> Event {
        Event {
            shard: self.span.shard_for(&key),
            seq: 0,
            position: Position::at(txid),
            key,
            op,
            // Bolt keeps no time per transaction.
            source_ts_ms: 0,
            capture_ts_ms: now_ms(),
        }
    }

    /// Appends the changes of transaction `txid`, in batches, the last one
    /// with the checkpoint.
    async fn journal_changes<J: Journal>(
        &self,
        app: &mut Appender<'_, J>,
        changes: Vec<Change>,
        txid: u64,
    ) -> Result<(), BoltError> {
        let mut per_shard = app.empty();
        let mut pending = 0usize;
        for c in changes {
            let (key, op) = match c {
                Change::Put {
                    buckets,
                    key,
                    value,
                } => (encode_key(&buckets, &key), put(value, buckets)),
                Change::Delete { buckets, key } => (encode_key(&buckets, &key), delete(buckets)),
                Change::BucketCreate { buckets, name } => {
                    (encode_bucket(&buckets, &name), put(Vec::new(), buckets))
                }
                Change::BucketDelete { buckets, name } => {
                    (encode_bucket(&buckets, &name), delete(buckets))
                }
            };
            self.fence_shared.observe(&key, txid);
            let ev = self.event(key, txid, op);
            per_shard[app.index(&ev)].push(ev);
            pending += 1;
            if pending >= self.opts.batch_max_events {
                if let Some(limiter) = &self.opts.rate_limit {
                    ferry_replay::throttle(limiter, pending).await;
                }
                app.append(std::mem::replace(&mut per_shard, app.empty()), None)
                    .await?;
                pending = 0;
            }
        }
        app.append(per_shard, Some(txid)).await
    }

    /// Places every waiting fence at or below `txid` (journaled through).
    async fn answer_fences<J: Journal>(
        &mut self,
        app: &mut Appender<'_, J>,
        waiting: &mut Vec<FenceRequest>,
        txid: u64,
    ) -> Result<(), BoltError> {
        while let Ok(req) = self.fence_rx.try_recv() {
            waiting.push(req);
        }
        let mut ready: Vec<u64> = waiting
            .iter()
            .map(|r| r.txid)
            .filter(|f| *f <= txid)
            .collect();
        if ready.is_empty() {
            return Ok(());
        }
        ready.sort_unstable();
        ready.dedup();
        for f in ready {
            app.append(app.markers(Op::Fence, f), None).await?;
        }
        let (done, keep): (Vec<_>, Vec<_>) = std::mem::take(waiting)
            .into_iter()
            .partition(|r| r.txid <= txid);
        *waiting = keep;
        for r in done {
            let _ = r.done.send(Ok(()));
        }
        Ok(())
    }
}

fn put(value: Vec<u8>, buckets: Vec<Vec<u8>>) -> Op {
    Op::Put {
        value: Value::Plain(value),
        meta: StoreMeta::Bolt { buckets },
    }
}

fn delete(buckets: Vec<Vec<u8>>) -> Op {
    Op::Delete {
        meta: StoreMeta::Bolt { buckets },
    }
}

/// The shared span appender, in this crate's terms (positions are txids,
/// errors are [`BoltError`]s).
struct Appender<'a, J> {
    inner: SpanAppender<'a, J>,
    lag: &'a LagTracker,
    name: String,
}

impl<J: Journal> Appender<'_, J> {
    fn journal_err(&self, e: ferry_journal::JournalError) -> BoltError {
        journal_err(&self.name, AppendError::Journal(e))
    }

    fn set_phase(&self, phase: Phase) {
        self.inner.set_phase(phase);
    }

    fn empty(&self) -> Vec<Vec<Event>> {
        self.inner.empty()
    }

    fn index(&self, ev: &Event) -> usize {
        self.inner.index(ev.shard)
    }

    fn markers(&self, op: Op, txid: u64) -> Vec<Vec<Event>> {
        self.inner.markers(op, &Position::at(txid))
    }

    async fn append(
        &mut self,
        per_shard: Vec<Vec<Event>>,
        checkpoint: Option<u64>,
    ) -> Result<(), BoltError> {
        self.inner
            .append(per_shard, checkpoint.map(Position::at))
            .await
            .map_err(|e| journal_err(&self.name, e))
    }
}

fn journal_err(name: &str, e: AppendError) -> BoltError {
    BoltError::Journal {
        path: name.to_string(),
        detail: e.to_string(),
    }
}
