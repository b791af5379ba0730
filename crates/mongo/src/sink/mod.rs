//! The MongoDB target: a [`Sink`] applying a shard's batch with ordered
//! bulk writes.
//!
//! Each batch (or each run between markers) becomes one commit:
//!
//! ```text
//! start transaction
//!   read __ferry.checkpoints {_id: "shard-N"}; it must still say what this
//!   sink last read or wrote (else: abort, re-read, continue after it)
//!   update/insert/delete commands (one op per document, see writes.rs)
//!   upsert __ferry.checkpoints {_id: "shard-N", seq, journal, sweep}
//! commit
//! ```
//!
//! so data and progress move together (exactly-once effect). Puts are
//! `replace` with `upsert` by `_id`; deletes are by `_id`. Puts of a copy
//! (position without a token, see the tailer) are first tried as plain
//! inserts, which SecantusDB runs about four times faster; a duplicate key
//! aborts that transaction and the same writes run again as upserts, and
//! the shard stops trying inserts until its next `SnapshotBegin`.
//!
//! Without transactions ([`TransactionMode::Off`], or a standalone
//! target) the writes run first and the checkpoint moves after them with a
//! version filter (`seq < new`), so it never moves back; a crash in between
//! re-applies the batch, which replace-by-`_id` and delete-by-`_id` make
//! harmless.
//!
//! Collections are created before anything writes to them, once, outside
//! any transaction: `__ferry.checkpoints` and the catalog's collections at
//! [`startup`](Sink::startup), any other collection a batch puts into
//! before that batch's transaction starts, one creation at a time per sink
//! (see [`MongoSink::ensure_collections`]). Implicit creation by concurrent
//! writers is a race real mongod answers with a retryable conflict, and
//! that mongod under wine (the tests' server) answers by crashing; a write
//! inside a transaction into a collection created after the transaction's
//! snapshot fails too.
//!
//! Snapshot sweep: if the target already held documents of the source's
//! namespaces when a snapshot began (a restart mid-copy, a lost resume
//! token, `--force`), documents copied earlier may no longer exist at the
//! source. At the shard's `SnapshotEnd` the sink deletes this shard's
//! target documents whose `_id` the source no longer has (it needs the
//! source for that: [`SinkOptions::sweep_source`]). A document deleted at
//! the source after T is deleted by the stream anyway; one re-created later
//! comes back with its later change, which follows in the shard.

mod checkpoint;
mod writes;

use crate::catalog::IndexStage;
use crate::{key, Catalog, MongoError, MongoStore, Namespace, CHECKPOINTS, META_DB};
use checkpoint::ShardCheckpoint;
use ferry_core::{ErrorKind, Event, Op, Seq, ShardId, ShardSpan};
use ferry_replay::{Sink, SinkError};
use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, Document, RawDocumentBuf};
use mongodb::ClientSession;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Mutex;
use writes::Writes;

/// Whether checkpoints move in the same transaction as the data.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TransactionMode {
    /// Where the target supports them (a replica set or sharded cluster).
    #[default]
    Auto,
    /// Never: idempotent writes, then the checkpoint with a version filter.
    Off,
}

/// How a [`MongoSink`] works. `Default`: transactions where possible, no
/// catalog, no sweep source.
#[derive(Clone, Default)]
pub struct SinkOptions {
    pub transactions: TransactionMode,
    /// Collections, options and indexes to create at startup (plain
    /// indexes) and in [`MongoSink::create_deferred_indexes`] (unique and
    /// TTL ones).
    pub catalog: Option<Catalog>,
    /// The source, to sweep documents a new snapshot no longer has.
    pub sweep_source: Option<MongoStore>,
    /// The source's shard span (the sweep needs each document's shard).
    pub span: Option<ShardSpan>,
    /// Ties checkpoints to one journal (as `EtcdSink::with_journal_id`).
    pub journal_id: Option<String>,
    /// Overrides the target's `maxBsonObjectSize` (tests, stricter policy).
    pub max_document_bytes: Option<usize>,
}

/// Immediate retries of a transaction the server aborted for a conflict
/// with another shard's, before the error goes to the worker's backoff.
const MAX_CONFLICT_RETRIES: u32 = 20;

/// A transaction aborted for a write conflict (transient by definition).
fn is_conflict(e: &SinkError) -> bool {
    e.kind == ErrorKind::Transient
        && (e.message.contains("WriteConflict") || e.message.contains("TransientTransactionError"))
}

/// How many times one apply call re-reads a checkpoint it found changed
/// before concluding that something else writes it.
const MAX_RESYNCS: u32 = 3;

/// A MongoDB target. See the module doc.
pub struct MongoSink {
    store: MongoStore,
    name: String,
    opts: SinkOptions,
    checkpoints: Mutex<HashMap<ShardId, ShardCheckpoint>>,
    /// Shards whose copy inserts met an existing document.
    no_inserts: Mutex<HashSet<ShardId>>,
    /// Per snapshot (position of its `SnapshotBegin`): whether the target
    /// held documents of the selected namespaces when the first shard began.
    held_at_begin: tokio::sync::Mutex<HashMap<u64, bool>>,
    /// Collections known to exist on the target; the lock also makes
    /// creations one at a time.
    created: tokio::sync::Mutex<BTreeSet<Namespace>>,
}

impl MongoSink {
    /// `name`: the target's redacted URL (names checkpoints in the journal).
    pub fn new(store: MongoStore, name: String, opts: SinkOptions) -> Self {
        MongoSink {
            store,
            name,
            opts,
            checkpoints: Mutex::new(HashMap::new()),
            no_inserts: Mutex::new(HashSet::new()),
            held_at_begin: tokio::sync::Mutex::new(HashMap::new()),
            created: tokio::sync::Mutex::new(BTreeSet::new()),
        }
    }

    /// The target store.
    pub fn store(&self) -> &MongoStore {
        &self.store
    }

    fn transactions(&self) -> bool {
        self.opts.transactions == TransactionMode::Auto && self.store.info().has_change_streams()
    }

    fn max_doc(&self) -> usize {
        self.opts
            .max_document_bytes
            .unwrap_or(self.store.info().max_document_bytes)
    }

    fn err(&self, e: MongoError) -> SinkError {
        SinkError {
            kind: e.kind(),
            message: e.to_string(),
        }
    }

    fn driver_err(&self, action: &str, e: &mongodb::error::Error) -> SinkError {
        self.err(self.store.err(action, e))
    }

    fn meta(&self) -> mongodb::Collection<Document> {
        self.store
            .client()
            .database(META_DB)
            .collection(CHECKPOINTS)
    }

    /// Creates each collection of `namespaces` not known to exist yet, one
    /// at a time and outside any transaction (see the module doc); an
    /// existing one is fine. Collections the catalog describes were made
    /// with their options at startup; any other gets default options.
    async fn ensure_collections<'a>(
        &self,
        namespaces: impl Iterator<Item = &'a Namespace>,
    ) -> Result<(), SinkError> {
        let mut created = self.created.lock().await;
        for ns in namespaces {
            if created.contains(ns) {
                continue;
            }
            let r = self
                .store
                .client()
                .database(&ns.db)
                .run_command(doc! {"create": &ns.coll})
                .await;
            match r {
                Ok(_) => {}
                Err(e)
                    if crate::error::error_code(&e)
                        == Some(crate::error::code::NAMESPACE_EXISTS) => {}
                Err(e) => return Err(self.driver_err(&format!("creating collection {ns}"), &e)),
            }
            created.insert(ns.clone());
        }
        Ok(())
    }

    fn checkpoints_namespace() -> Namespace {
        Namespace::new(META_DB, CHECKPOINTS)
    }

    /// Builds the unique and TTL indexes of the catalog; call once the
    /// target holds the source's final state (after the fence is applied).
    pub async fn create_deferred_indexes(&self) -> Result<(), MongoError> {
        match &self.opts.catalog {
            Some(c) => c.create_on(&self.store, IndexStage::AfterFence).await,
            None => Ok(()),
        }
    }

    async fn load_checkpoint(
        &self,
        shard: ShardId,
        session: Option<&mut ClientSession>,
    ) -> Result<ShardCheckpoint, SinkError> {
        let filter = doc! {"_id": checkpoint::id(shard)};
        let found = match session {
            Some(s) => self.meta().find_one(filter).session(s).await,
            None => self.meta().find_one(filter).await,
        }
        .map_err(|e| self.driver_err("reading the checkpoint", &e))?;
        Ok(checkpoint::decode(
            found.as_ref(),
            self.opts.journal_id.as_deref(),
        ))
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

    fn inserts_allowed(&self, shard: ShardId) -> bool {
        !self.no_inserts.lock().expect("poisoned").contains(&shard)
    }

    fn set_inserts(&self, shard: ShardId, allowed: bool) {
        let mut s = self.no_inserts.lock().expect("poisoned");
        if allowed {
            s.remove(&shard);
        } else {
            s.insert(shard);
        }
    }

    /// Runs `writes` and moves the checkpoint to `next`. `Ok(false)`: the
    /// checkpoint on the target is not what `cp` says; `cp` now holds what
    /// the target has.
    async fn commit(
        &self,
        shard: ShardId,
        cp: &mut ShardCheckpoint,
        writes: &Writes,
        next: ShardCheckpoint,
    ) -> Result<bool, SinkError> {
        // Before the transaction: see the module doc.
        let meta = Self::checkpoints_namespace();
        self.ensure_collections(std::iter::once(&meta).chain(writes.put_namespaces()))
            .await?;
        let mut conflicts = 0u32;
        let mut as_inserts =
            !writes.is_empty() && writes.all_snapshot_puts() && self.inserts_allowed(shard);
        loop {
            let r = if self.transactions() {
                self.commit_txn(shard, cp, writes, &next, as_inserts).await
            } else {
                self.commit_plain(shard, writes, &next, as_inserts)
                    .await
                    .map(|()| true)
            };
            match r {
                Err(e) if as_inserts && e.message.contains("E11000") => {
                    // A copy onto documents the target already has.
                    self.set_inserts(shard, false);
                    as_inserts = false;
                }
                Err(e) if conflicts < MAX_CONFLICT_RETRIES && is_conflict(&e) => {
                    // Two shards' transactions met on one collection (the
                    // server aborted one): the driver's `withTransaction`
                    // retries such aborts at once, so does this.
                    conflicts += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(5 * u64::from(conflicts)))
                        .await;
                }
                Err(e) => {
                    // Unknown outcome: read the checkpoint again next time.
                    self.checkpoints.lock().expect("poisoned").remove(&shard);
                    return Err(e);
                }
                Ok(true) => {
                    *cp = next;
                    self.cache(shard, cp);
                    return Ok(true);
                }
                Ok(false) => {
                    let stored = self.load_checkpoint(shard, None).await?;
                    if stored.seq < cp.seq {
                        // What the target acknowledged as committed is gone:
                        // the events in between are no longer offered, so
                        // going on would lose them silently.
                        return Err(SinkError::fatal(format!(
                            "MongoDB sink {}: shard {shard}: the target's checkpoint went back from {} to {}, so the target lost writes it had acknowledged (a crash without journaled commits, or another program rewrote {META_DB}.{CHECKPOINTS}); run the target with durable commits (a journaled replica set; SecantusDB --sync-on-commit) and copy again with a new journal",
                            self.name, cp.seq, stored.seq
                        )));
                    }
                    *cp = stored;
                    self.cache(shard, cp);
                    return Ok(false);
                }
            }
        }
    }

    async fn commit_txn(
        &self,
        shard: ShardId,
        cp: &ShardCheckpoint,
        writes: &Writes,
        next: &ShardCheckpoint,
        as_inserts: bool,
    ) -> Result<bool, SinkError> {
        let client = self.store.client();
        let mut s = client
            .start_session()
            .await
            .map_err(|e| self.driver_err("starting a session", &e))?;
        s.start_transaction()
            .await
            .map_err(|e| self.driver_err("starting a transaction", &e))?;
        let stored = self.load_checkpoint(shard, Some(&mut s)).await?;
        if stored.seq != cp.seq {
            let _ = s.abort_transaction().await;
            return Ok(false);
        }
        if let Err(e) = self.run_writes(writes, Some(&mut s), as_inserts).await {
            let _ = s.abort_transaction().await;
            return Err(e);
        }
        self.meta()
            .update_one(
                doc! {"_id": checkpoint::id(shard)},
                doc! {"$set": checkpoint::fields(next, self.opts.journal_id.as_deref())},
            )
            .upsert(true)
            .session(&mut s)
            .await
            .map_err(|e| self.driver_err("writing the checkpoint", &e))?;
        s.commit_transaction()
            .await
            .map_err(|e| self.driver_err("committing a transaction", &e))?;
        Ok(true)
    }

    async fn commit_plain(
        &self,
        shard: ShardId,
        writes: &Writes,
        next: &ShardCheckpoint,
        as_inserts: bool,
    ) -> Result<(), SinkError> {
        self.run_writes(writes, None, as_inserts).await?;
        // The version filter: never move a checkpoint back. If it is
        // already at or past `next`, the upsert's insert fails on `_id`.
        let r = self
            .meta()
            .update_one(
                doc! {"_id": checkpoint::id(shard), "seq": {"$lt": checkpoint::seq_bson(next.seq)}},
                doc! {"$set": checkpoint::fields(next, self.opts.journal_id.as_deref())},
            )
            .upsert(true)
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(e) if crate::error::error_code(&e) == Some(crate::error::code::DUPLICATE_KEY) => {
                Ok(())
            }
            Err(e) => Err(self.driver_err("writing the checkpoint", &e)),
        }
    }

    async fn run_writes(
        &self,
        writes: &Writes,
        mut session: Option<&mut ClientSession>,
        as_inserts: bool,
    ) -> Result<(), SinkError> {
        let info = self.store.info();
        let cmds = writes.commands(info.max_document_bytes, info.max_write_ops, as_inserts);
        let client = self.store.client();
        for (ns, cmd) in cmds {
            let db = client.database(&ns.db);
            let reply = match session.as_deref_mut() {
                Some(s) => db.run_raw_command(cmd).session(s).await,
                None => db.run_raw_command(cmd).await,
            }
            .map_err(|e| self.driver_err(&format!("writing to {ns}"), &e))?;
            check_reply(&self.name, &ns, &reply).map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    async fn apply_batch(&self, shard: ShardId, events: &[Event]) -> Result<Seq, SinkError> {
        let mut cp = match self.cached(shard) {
            Some(cp) => cp,
            None => {
                let cp = self.load_checkpoint(shard, None).await?;
                self.cache(shard, &cp);
                cp
            }
        };
        let limit = self.max_doc();
        let mut resyncs = 0;
        'attempt: loop {
            if resyncs > MAX_RESYNCS {
                return Err(SinkError::fatal(format!(
                    "MongoDB sink {}: shard {shard}: the checkpoint keeps changing under Ferry; another ferry writes to {META_DB}.{CHECKPOINTS} on this target",
                    self.name
                )));
            }
            resyncs += 1;
            let start = events.partition_point(|e| e.seq <= cp.seq);
            let mut writes = Writes::default();
            let mut upto = cp.seq;
            for e in &events[start..] {
                match &e.op {
                    Op::Put { .. } | Op::Delete { .. } => {
                        writes.push(e, limit, &self.name).map_err(|e| self.err(e))?;
                    }
                    Op::SnapshotBegin { .. } | Op::SnapshotEnd => {
                        if upto > cp.seq {
                            let next = ShardCheckpoint {
                                seq: upto,
                                sweep: cp.sweep,
                            };
                            if !self
                                .commit(shard, &mut cp, &std::mem::take(&mut writes), next)
                                .await?
                            {
                                continue 'attempt;
                            }
                        }
                        let sweep = if matches!(e.op, Op::SnapshotBegin { .. }) {
                            self.set_inserts(shard, true);
                            self.held_at_begin(e.position.order).await?
                        } else {
                            if cp.sweep {
                                self.sweep(shard).await?;
                            }
                            false
                        };
                        let next = ShardCheckpoint { seq: e.seq, sweep };
                        if !self
                            .commit(shard, &mut cp, &Writes::default(), next)
                            .await?
                        {
                            continue 'attempt;
                        }
                    }
                    Op::Fence | Op::Heartbeat => {}
                }
                upto = e.seq;
            }
            if upto > cp.seq {
                let next = ShardCheckpoint {
                    seq: upto,
                    sweep: cp.sweep,
                };
                if !self.commit(shard, &mut cp, &writes, next).await? {
                    continue 'attempt;
                }
            }
            return Ok(cp.seq);
        }
    }

    /// The namespaces a sweep covers: the target's that the source selects.
    async fn sweep_namespaces(&self) -> Result<Vec<Namespace>, SinkError> {
        let Some(source) = &self.opts.sweep_source else {
            return Ok(Vec::new());
        };
        let all = self
            .store
            .with_filter(source.filter().clone())
            .namespaces()
            .await
            .map_err(|e| self.err(e))?;
        Ok(all)
    }

    /// See `held_at_begin`.
    async fn held_at_begin(&self, snapshot: u64) -> Result<bool, SinkError> {
        let mut known = self.held_at_begin.lock().await;
        if let Some(held) = known.get(&snapshot) {
            return Ok(*held);
        }
        let mut held = false;
        for ns in self.sweep_namespaces().await? {
            if self
                .store
                .estimated_count(&ns)
                .await
                .map_err(|e| self.err(e))?
                > 0
            {
                held = true;
                break;
            }
        }
        known.insert(snapshot, held);
        Ok(held)
    }

    /// Deletes this shard's target documents whose `_id` the source no
    /// longer has (see the module doc).
    async fn sweep(&self, shard: ShardId) -> Result<(), SinkError> {
        let (Some(source), Some(span)) = (&self.opts.sweep_source, self.opts.span) else {
            tracing::warn!(target_store = %self.name, shard = shard.0, "a snapshot began on a non-empty target but the sink has no sweep source; documents deleted at the source meanwhile may remain");
            return Ok(());
        };
        let mut deleted = 0u64;
        for ns in self.sweep_namespaces().await? {
            let coll = self
                .store
                .client()
                .database(&ns.db)
                .collection::<RawDocumentBuf>(&ns.coll);
            let mut cursor = coll
                .find(doc! {})
                .projection(doc! {"_id": 1})
                .await
                .map_err(|e| self.driver_err("sweeping", &e))?;
            let mut ids: Vec<Bson> = Vec::new();
            loop {
                let next = cursor
                    .try_next()
                    .await
                    .map_err(|e| self.driver_err("sweeping", &e))?;
                let done = next.is_none();
                if let Some(d) = next {
                    if let Ok(Some(id)) = d.get("_id") {
                        if span.shard_for(&key::encode(&ns, id)) == shard {
                            if let Ok(b) = Bson::try_from(id.to_raw_bson()) {
                                ids.push(b);
                            }
                        }
                    }
                }
                if ids.len() >= 1000 || (done && !ids.is_empty()) {
                    deleted += self
                        .sweep_chunk(source, &ns, std::mem::take(&mut ids))
                        .await?;
                }
                if done {
                    break;
                }
            }
        }
        tracing::info!(target_store = %self.name, shard = shard.0, deleted, "snapshot sweep done");
        Ok(())
    }

    async fn sweep_chunk(
        &self,
        source: &MongoStore,
        ns: &Namespace,
        ids: Vec<Bson>,
    ) -> Result<u64, SinkError> {
        let src = source
            .client()
            .database(&ns.db)
            .collection::<Document>(&ns.coll);
        let present: Vec<Bson> = src
            .find(doc! {"_id": {"$in": ids.clone()}})
            .projection(doc! {"_id": 1})
            .await
            .map_err(|e| self.err(source.err("sweeping", &e)))?
            .try_collect::<Vec<Document>>()
            .await
            .map_err(|e| self.err(source.err("sweeping", &e)))?
            .into_iter()
            .filter_map(|d| d.get("_id").cloned())
            .collect();
        let gone: Vec<Bson> = ids.into_iter().filter(|i| !present.contains(i)).collect();
        if gone.is_empty() {
            return Ok(0);
        }
        let r = self
            .store
            .client()
            .database(&ns.db)
            .collection::<Document>(&ns.coll)
            .delete_many(doc! {"_id": {"$in": gone}})
            .await
            .map_err(|e| self.driver_err("sweeping", &e))?;
        Ok(r.deleted_count)
    }
}

/// Turns write errors in a command reply into an error.
fn check_reply(store: &str, ns: &Namespace, reply: &Document) -> Result<(), MongoError> {
    let first = reply
        .get_array("writeErrors")
        .ok()
        .and_then(|a| a.first())
        .and_then(Bson::as_document)
        .map(|d| {
            (
                d.get_i32("code").unwrap_or(0),
                d.get_str("errmsg").unwrap_or("").to_string(),
            )
        });
    let wce = reply.get_document("writeConcernError").ok().map(|d| {
        (
            d.get_i32("code").unwrap_or(0),
            d.get_str("errmsg").unwrap_or("").to_string(),
        )
    });
    let Some((code, msg)) = first.or(wce) else {
        return Ok(());
    };
    let kind = if crate::error::is_transient_code(code) {
        ErrorKind::Transient
    } else {
        ErrorKind::Permanent
    };
    Err(MongoError::Server {
        store: store.to_string(),
        action: format!("writing to {ns}"),
        detail: format!("code {code}: {}", msg.chars().take(300).collect::<String>()),
        kind,
    })
}

impl Sink for MongoSink {
    fn name(&self) -> &str {
        &self.name
    }

    /// Creates `__ferry.checkpoints` and the catalog's collections (with
    /// their options) and plain indexes, before any worker writes.
    async fn startup(&self) -> Result<(), SinkError> {
        let meta = Self::checkpoints_namespace();
        self.ensure_collections(std::iter::once(&meta)).await?;
        if let Some(c) = &self.opts.catalog {
            let mut created = self.created.lock().await;
            c.create_on(&self.store, IndexStage::BeforeData)
                .await
                .map_err(|e| self.err(e))?;
            created.extend(c.namespaces());
        }
        Ok(())
    }

    async fn durable_checkpoint(&self, shard: ShardId) -> Result<Option<Seq>, SinkError> {
        let cp = self.load_checkpoint(shard, None).await?;
        self.cache(shard, &cp);
        Ok((cp.seq > 0).then_some(cp.seq))
    }

    async fn apply(&self, shard: ShardId, events: &[Event]) -> Result<Seq, SinkError> {
        self.apply_batch(shard, events).await
    }

    async fn shutdown(&self) {}

    async fn after_fence(&self) -> Result<(), SinkError> {
        self.create_deferred_indexes()
            .await
            .map_err(|e| SinkError::fatal(e.to_string()))
    }
}
