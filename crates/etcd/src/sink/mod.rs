//! The etcd target: a [`Sink`] applying a shard's batch in transactions.
//!
//! Each batch becomes one or more transactions, each within etcd's limits
//! (see `txn.rs`), each of the form
//!
//! ```text
//! if checkpoint(shard) == <bytes last read or written>   (or: key absent)
//! then <puts and deletes> ; checkpoint(shard) := {seq: <last event in it>}
//! ```
//!
//! so data and progress move together (exactly-once effect, see
//! `checkpoint.rs`). A failed compare means an earlier attempt landed after
//! all (its outcome was unknown, e.g. a timeout): the sink reads the
//! checkpoint back and continues after it, never resending blindly.
//!
//! Key mapping: target key = target prefix + (source key without the source
//! prefix). Leases: `leases.rs`. Snapshot sweep: `sweep.rs`. `Fence` and
//! `Heartbeat` markers only advance the checkpoint.
//!
//! Call [`Sink::startup`] before applying: it checks the target and starts
//! the lease keeper; [`Sink::shutdown`] stops it.

mod checkpoint;
mod leases;
mod sweep;
mod txn;

use crate::error::{classify, is_lease_not_found};
use crate::lease::LeaseLiveness;
use crate::{EtcdError, EtcdStore};
use checkpoint::ShardCheckpoint;
use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp};
use ferry_core::{ErrorKind, Event, Op, Seq, ShardId, ShardSpan, StoreMeta, Value};
use ferry_replay::{Sink, SinkError};
use leases::TargetLeases;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::task::JoinHandle;
use txn::{TxnWrites, Write};

/// A sweep base no key can be below (etcd revisions start at 1): the
/// snapshot began on an empty target, so there is nothing to sweep.
const NOTHING_TO_SWEEP: i64 = 0;

/// How many times one apply call re-reads a checkpoint it found changed
/// before concluding that something else writes it.
const MAX_RESYNCS: u32 = 3;

/// An etcd target. See the module doc.
pub struct EtcdSink {
    store: EtcdStore,
    source_prefix: Vec<u8>,
    name: String,
    span: ShardSpan,
    journal_id: Option<String>,
    leases: Arc<TargetLeases>,
    checkpoints: Mutex<HashMap<ShardId, ShardCheckpoint>>,
    keeper: Mutex<Option<JoinHandle<()>>>,
    /// Per snapshot (the position of its `SnapshotBegin` markers): whether
    /// the target prefix was empty when the first shard began it. Decided
    /// once, under this lock, before any shard writes a key of that
    /// snapshot; an empty target needs no sweep (nothing can be stale), which
    /// spares every shard a scan of the whole prefix on an initial copy.
    empty_at_begin: tokio::sync::Mutex<HashMap<u64, bool>>,
}

impl EtcdSink {
    /// `source_prefix`: the source URL's prefix (keys are re-rooted from it
    /// onto `store`'s prefix); `name`: the target's redacted URL; `span`:
    /// the source's shards in the journal (the sweep needs each key's shard);
    /// `liveness`: the source tailer's lease liveness, to keep target
    /// leases alive and revoke them with their source lease.
    pub fn new(
        store: EtcdStore,
        source_prefix: impl AsRef<[u8]>,
        name: String,
        span: ShardSpan,
        liveness: Option<LeaseLiveness>,
    ) -> Self {
        EtcdSink {
            leases: Arc::new(TargetLeases::new(store.clone(), liveness)),
            store,
            source_prefix: source_prefix.as_ref().to_vec(),
            name,
            span,
            journal_id: None,
            checkpoints: Mutex::new(HashMap::new()),
            keeper: Mutex::new(None),
            empty_at_begin: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Ties the target's checkpoints to one journal: records written for
    /// another journal id count as absent, so a new journal onto a target
    /// Ferry wrote before starts from its first event instead of skipping.
    pub fn with_journal_id(mut self, id: impl Into<String>) -> Self {
        self.journal_id = Some(id.into());
        self
    }

    fn err(&self, e: EtcdError) -> SinkError {
        let kind = match &e {
            // A compaction of the *target* only disturbs a sweep's paging;
            // running the sweep again succeeds.
            EtcdError::Compacted { .. } => ErrorKind::Transient,
            other => other.kind(),
        };
        SinkError {
            kind,
            message: e.to_string(),
        }
    }

    fn target_key(&self, source_key: &[u8]) -> Result<Vec<u8>, SinkError> {
        let Some(suffix) = source_key.strip_prefix(self.source_prefix.as_slice()) else {
            return Err(SinkError::fatal(format!(
                "etcd sink {}: event key `{}` is not under the source prefix `{}`; the sink was built for another source",
                self.name,
                String::from_utf8_lossy(source_key),
                String::from_utf8_lossy(&self.source_prefix)
            )));
        };
        let mut k = self.store.prefix().to_vec();
        k.extend_from_slice(suffix);
        Ok(k)
    }

    /// Reads the shard's checkpoint from the target and caches it.
    async fn load_checkpoint(&self, shard: ShardId) -> Result<ShardCheckpoint, SinkError> {
        let key = checkpoint::key(self.store.prefix(), shard);
        let mut kv = self.store.kv();
        let r = self
            .store
            .timed("reading the checkpoint", kv.get(key, None::<GetOptions>))
            .await
            .map_err(|e| self.err(e))?;
        let raw = r.kvs().first().map(|kv| kv.value().to_vec());
        let cp = checkpoint::decode(raw, self.journal_id.as_deref()).map_err(|why| {
            SinkError::fatal(format!(
                "etcd sink {}: shard {shard}: {why}; another program writes under {}",
                self.name,
                String::from_utf8_lossy(crate::RESERVED_PREFIX)
            ))
        })?;
        self.cache(shard, &cp);
        Ok(cp)
    }

    fn cache(&self, shard: ShardId, cp: &ShardCheckpoint) {
        self.checkpoints
            .lock()
            .expect("checkpoint cache poisoned")
            .insert(shard, cp.clone());
    }

    fn cached(&self, shard: ShardId) -> Option<ShardCheckpoint> {
        self.checkpoints
            .lock()
            .expect("checkpoint cache poisoned")
            .get(&shard)
            .cloned()
    }

    /// The writes for one data event, lease mapping included.
    async fn writes_for(
        &self,
        e: &Event,
        lease_ids: &mut Vec<i64>,
    ) -> Result<Vec<Write>, SinkError> {
        let key = self.target_key(&e.key)?;
        match &e.op {
            Op::Put { value, meta } => {
                let Value::Plain(value) = value else {
                    return Err(SinkError::fatal(format!(
                        "etcd sink {}: a sealed value reached the sink; values must be opened before replay",
                        self.name
                    )));
                };
                let mut ws = Vec::with_capacity(2);
                let lease = match meta {
                    StoreMeta::Etcd {
                        lease_id,
                        lease_ttl_s,
                    } if *lease_id != 0 => {
                        let (target, persist) = self
                            .leases
                            .target_for(*lease_id, *lease_ttl_s)
                            .await
                            .map_err(|e| self.err(e))?;
                        if persist {
                            ws.push(Write::Put {
                                key: self.leases.mapping_key(*lease_id),
                                value: target.to_string().into_bytes(),
                                lease: 0,
                            });
                            lease_ids.push(*lease_id);
                        }
                        target
                    }
                    _ => 0,
                };
                ws.push(Write::Put {
                    key,
                    value: value.clone(),
                    lease,
                });
                Ok(ws)
            }
            _ => Ok(vec![Write::Delete { key }]),
        }
    }

    /// Commits `writes` and moves the checkpoint to `seq` (with
    /// `sweep_before`). `Ok(false)`: the compare failed; `cp` now holds
    /// what the target has, and the caller continues after it.
    async fn commit(
        &self,
        shard: ShardId,
        cp: &mut ShardCheckpoint,
        writes: TxnWrites,
        seq: Seq,
        sweep_before: Option<i64>,
    ) -> Result<bool, SinkError> {
        let key = checkpoint::key(self.store.prefix(), shard);
        let record = checkpoint::encode(seq, self.journal_id.as_deref(), sweep_before);
        let compare = match &cp.raw {
            Some(raw) => Compare::value(key.clone(), CompareOp::Equal, raw.clone()),
            None => Compare::version(key.clone(), CompareOp::Equal, 0),
        };
        let largest = writes
            .largest()
            .map(|(k, b)| (String::from_utf8_lossy(k).into_owned(), b));
        let leases_used: Vec<i64> = writes.leases_used.clone();
        let mappings = writes.lease_mappings.clone();
        let mut ops = writes.into_ops();
        ops.push(TxnOp::put(key, record.clone(), None));
        let txn = Txn::new().when(vec![compare]).and_then(ops);
        let mut kv = self.store.kv();
        let resp = match self.store.timed_raw(kv.txn(txn)).await {
            Ok(r) => r,
            Err(e) if is_lease_not_found(&e) => {
                self.leases.forget_targets(&leases_used).await;
                return Err(SinkError::transient(format!(
                    "etcd sink {}: shard {shard}: a target lease expired before its keys were written; granting a new one",
                    self.name
                )));
            }
            Err(e) => {
                let err = match classify(self.store.name(), "writing a transaction", &e) {
                    EtcdError::RequestTooLarge { store, limit, .. } => {
                        let (key, bytes) = largest.unwrap_or_default();
                        EtcdError::RequestTooLarge {
                            store,
                            key,
                            bytes,
                            limit,
                        }
                    }
                    other => other,
                };
                return Err(self.err(err));
            }
        };
        if resp.succeeded() {
            *cp = ShardCheckpoint {
                seq,
                sweep_before,
                raw: Some(record),
            };
            self.cache(shard, cp);
            if !mappings.is_empty() {
                self.leases.persisted(&mappings).await;
            }
            return Ok(true);
        }
        let stored = self.load_checkpoint(shard).await?;
        if stored.seq < cp.seq {
            return Err(SinkError::fatal(format!(
                "etcd sink {}: shard {shard}: the target checkpoint moved backward from {} to {}; another ferry writes to this target prefix",
                self.name, cp.seq, stored.seq
            )));
        }
        tracing::info!(target_store = %self.name, shard = shard.0, at = stored.seq, "the target already holds an earlier attempt; continuing after it");
        *cp = stored;
        Ok(false)
    }

    async fn apply_batch(&self, shard: ShardId, events: &[Event]) -> Result<Seq, SinkError> {
        let mut cp = match self.cached(shard) {
            Some(cp) => cp,
            None => self.load_checkpoint(shard).await?,
        };
        let mut resyncs = 0;
        'attempt: loop {
            if resyncs > MAX_RESYNCS {
                return Err(SinkError::fatal(format!(
                    "etcd sink {}: shard {shard}: the checkpoint keeps changing under Ferry; another ferry writes to this target prefix",
                    self.name
                )));
            }
            resyncs += 1;
            let start = events.partition_point(|e| e.seq <= cp.seq);
            let mut writes = TxnWrites::default();
            // The sequence the pending transaction's checkpoint will carry.
            let mut upto = cp.seq;
            for e in &events[start..] {
                match &e.op {
                    Op::Put { .. } | Op::Delete { .. } => {
                        let mut mapped = Vec::new();
                        let ws = self.writes_for(e, &mut mapped).await?;
                        if !writes.fits(&ws.iter().collect::<Vec<_>>()) {
                            let (batch, keep) = (std::mem::take(&mut writes), cp.sweep_before);
                            if !self.commit(shard, &mut cp, batch, upto, keep).await? {
                                continue 'attempt;
                            }
                        }
                        for w in ws {
                            if let Write::Put { lease, .. } = &w {
                                if *lease != 0 {
                                    writes.leases_used.push(*lease);
                                }
                            }
                            writes.push(w);
                        }
                        writes.lease_mappings.extend(mapped);
                    }
                    Op::SnapshotBegin { .. } | Op::SnapshotEnd => {
                        if upto > cp.seq || !writes.is_empty() {
                            let (batch, keep) = (std::mem::take(&mut writes), cp.sweep_before);
                            if !self.commit(shard, &mut cp, batch, upto, keep).await? {
                                continue 'attempt;
                            }
                        }
                        let sweep_before = if matches!(e.op, Op::SnapshotBegin { .. }) {
                            if self.target_empty_at_begin(e.position.order).await? {
                                Some(NOTHING_TO_SWEEP)
                            } else {
                                let head =
                                    self.store.head_revision().await.map_err(|e| self.err(e))?;
                                Some(head + 1)
                            }
                        } else {
                            self.sweep(shard, cp.sweep_before).await?;
                            None
                        };
                        if !self
                            .commit(shard, &mut cp, TxnWrites::default(), e.seq, sweep_before)
                            .await?
                        {
                            continue 'attempt;
                        }
                    }
                    Op::Fence | Op::Heartbeat => {}
                }
                upto = e.seq;
            }
            let keep = cp.sweep_before;
            if upto > cp.seq && !self.commit(shard, &mut cp, writes, upto, keep).await? {
                continue 'attempt;
            }
            return Ok(cp.seq);
        }
    }

    /// See `empty_at_begin`.
    async fn target_empty_at_begin(&self, snapshot: u64) -> Result<bool, SinkError> {
        let mut known = self.empty_at_begin.lock().await;
        if let Some(empty) = known.get(&snapshot) {
            return Ok(*empty);
        }
        let empty = self.store.count_prefix().await.map_err(|e| self.err(e))? == 0;
        known.insert(snapshot, empty);
        Ok(empty)
    }

    async fn sweep(&self, shard: ShardId, before: Option<i64>) -> Result<(), SinkError> {
        if before.is_some_and(|b| b <= NOTHING_TO_SWEEP) {
            return Ok(());
        }
        let Some(before) = before else {
            // Only possible if the shard's SnapshotBegin was applied by a
            // Ferry that did not record the sweep base: nothing to compare.
            tracing::warn!(target_store = %self.name, shard = shard.0, "snapshot end without a recorded start on the target; skipping the sweep of keys deleted at the source");
            return Ok(());
        };
        let stats = sweep::sweep(&self.store, &self.source_prefix, self.span, shard, before)
            .await
            .map_err(|e| self.err(e))?;
        tracing::info!(target_store = %self.name, shard = shard.0, scanned = stats.scanned, deleted = stats.deleted, "snapshot sweep done");
        Ok(())
    }
}

impl Sink for EtcdSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn startup(&self) -> Result<(), SinkError> {
        self.store.server_version().await.map_err(|e| self.err(e))?;
        let n = self.leases.load_all().await.map_err(|e| self.err(e))?;
        if n > 0 {
            tracing::info!(target_store = %self.name, leases = n, "resuming target leases recorded by an earlier run");
        }
        let mut keeper = self.keeper.lock().expect("keeper lock poisoned");
        if keeper.is_none() {
            let leases = Arc::clone(&self.leases);
            *keeper = Some(tokio::spawn(async move {
                loop {
                    tokio::time::sleep(leases::KEEPER_INTERVAL).await;
                    leases.keep_round().await;
                }
            }));
        }
        Ok(())
    }

    async fn durable_checkpoint(&self, shard: ShardId) -> Result<Option<Seq>, SinkError> {
        let cp = self.load_checkpoint(shard).await?;
        Ok((cp.seq > 0).then_some(cp.seq))
    }

    async fn apply(&self, shard: ShardId, events: &[Event]) -> Result<Seq, SinkError> {
        self.apply_batch(shard, events).await
    }

    async fn shutdown(&self) {
        if let Some(k) = self.keeper.lock().expect("keeper lock poisoned").take() {
            k.abort();
        }
    }
}

impl Drop for EtcdSink {
    fn drop(&mut self) {
        if let Ok(mut k) = self.keeper.lock() {
            if let Some(k) = k.take() {
                k.abort();
            }
        }
    }
}
