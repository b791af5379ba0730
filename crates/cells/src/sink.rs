//! The sink of a Cells service's Bolt file into MongoDB: the journal holds the Bolt
//! events as the tailer saw them; this sink maps each one
//! ([`crate::map`]) into the document Cells reads and hands it to the
//! MongoDB sink, which writes it with the shard's checkpoint. A Bolt entry
//! with no Mongo counterpart (a bucket, an unused bucket) becomes a marker,
//! so every sequence still reaches the checkpoint.
//!
//! `_id`s come from the Bolt location, so the mapping of a key is the same
//! document every time: re-applying, resuming, or running the whole
//! migration twice replaces documents and never duplicates them.
//!
//! An entry the mapping refuses (a value Cells could not read either) is
//! not applied and not dropped in silence: it is recorded in [`Unmapped`]
//! (shown by `status`, checked by the cutover, which opens nothing while an
//! entry is unmapped unless the operator accepts it by name), and its event
//! becomes a marker so the shard goes on.
//!
//! Markers (`lastread`, `lastsent`) take the `ts` of the inbox activity
//! they point to. The activity service's route has one shard, so that
//! activity was applied before the marker (or comes earlier in the same
//! batch): the sink finds it in the batch or on the target.

use crate::{map, set_marker_ts, unmap, MapError, MapOptions, Mapped, Service};
use ferry_bolt::{decode_key, encode_key, KeyRef};
use ferry_connect::{Unmapped, UnmappedEntry};
use ferry_core::{Event, Op, Seq, ShardId, ShardSpan, StoreMeta, Value};
use ferry_mongo::{MongoSink, MongoStore, Namespace};
use ferry_replay::{Sink, SinkError};
use mongodb::bson::{doc, Document, RawDocumentBuf};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

/// How an unmapped entry is named to accept it (`--cells.accept-unmapped`).
pub fn unmapped_name(e: &MapError) -> String {
    format!("{}:{}", e.service, e.path)
}

/// An unmapped entry as the agent records it.
pub fn unmapped_entry(e: &MapError) -> UnmappedEntry {
    UnmappedEntry {
        name: unmapped_name(e),
        sentence: e.to_string(),
    }
}

/// A batch's activities so far (`_id` → `ts`; `None`: deleted), for markers.
type BatchActivities = HashMap<String, Option<i64>>;

pub struct CellsSink {
    inner: MongoSink,
    service: Service,
    opts: MapOptions,
    db: String,
    /// The Bolt file and its shards, for the sweep (see [`Self::sweep`]).
    path: PathBuf,
    span: ShardSpan,
    unmapped: Arc<Unmapped>,
    /// The activity service's activities collection (markers take their
    /// `ts`); `None` for the other services.
    activities: Option<String>,
}

impl CellsSink {
    pub fn new(
        inner: MongoSink,
        service: Service,
        opts: MapOptions,
        db: String,
        path: PathBuf,
        span: ShardSpan,
        unmapped: Arc<Unmapped>,
    ) -> Self {
        CellsSink {
            inner,
            service,
            opts,
            db,
            path,
            span,
            unmapped,
            activities: (service == Service::Activity)
                .then(|| opts.collection(Service::Activity, "activities")),
        }
    }

    /// The `ts` of the activity `id`: from this batch, else the target.
    async fn activity_ts(
        &self,
        id: &str,
        batch: &BatchActivities,
    ) -> Result<Option<i64>, SinkError> {
        if let Some(ts) = batch.get(id) {
            return Ok(*ts);
        }
        let coll = self.opts.collection(Service::Activity, "activities");
        let found = self
            .inner_store()
            .client()
            .database(&self.db)
            .collection::<Document>(&coll)
            .find_one(doc! {"_id": id})
            .projection(doc! {"ts": 1})
            .await
            .map_err(|e| SinkError::transient(format!("reading {}.{coll} {id}: {e}", self.db)))?;
        Ok(found.and_then(|d| d.get_i64("ts").ok()))
    }

    /// Before a snapshot's end is applied in `shard`: deletes the service's
    /// documents of this shard whose Bolt key the file no longer holds.
    ///
    /// A re-snapshot (the file moved on while Ferry was stopped) carries no
    /// deletes for keys removed meanwhile; this removes them. Safe against
    /// live writers: only this shard's worker writes this shard's
    /// documents, so a key deleted after the snapshot has its delete later
    /// in the shard (same end state), and a key created after the file was
    /// read has its put later (it comes back).
    async fn sweep(&self, shard: ShardId) -> Result<u64, SinkError> {
        let p = self.path.clone();
        let entries = tokio::task::spawn_blocking(move || {
            ferry_bolt::BoltFile::open(&p).and_then(|f| f.read_all())
        })
        .await
        .map_err(|e| SinkError::fatal(e.to_string()))?
        .map_err(|e| SinkError::transient(e.to_string()))?
        .1;
        // Only this shard's keys: the sweep looks at nothing else.
        let present: HashSet<Vec<u8>> = entries
            .iter()
            .filter(|e| e.value.is_some())
            .map(|e| encode_key(&e.buckets, &e.key))
            .filter(|k| self.span.shard_for(k) == shard)
            .collect();
        let client = self.inner_store().client();
        let mut deleted = 0;
        for coll in self.service.collections(&self.opts) {
            let c = client.database(&self.db).collection::<Document>(&coll);
            let read = |e: mongodb::error::Error| {
                SinkError::transient(format!("sweeping {}.{coll}: {e}", self.db))
            };
            let mut cursor = c.find(doc! {}).await.map_err(read)?;
            let mut stale = Vec::new();
            while cursor.advance().await.map_err(read)? {
                let d: Document = cursor
                    .deserialize_current()
                    .map_err(|e| SinkError::permanent(e.to_string()))?;
                let Ok(id) = d.get_str("_id") else { continue };
                let Some((buckets, key)) = unmap(self.service, &self.opts, &coll, id, &d) else {
                    continue;
                };
                let k = encode_key(&buckets, &key);
                if self.span.shard_for(&k) == shard && !present.contains(&k) {
                    stale.push(id.to_string());
                }
            }
            if !stale.is_empty() {
                let r = c
                    .delete_many(doc! {"_id": {"$in": &stale}})
                    .await
                    .map_err(read)?;
                deleted += r.deleted_count;
            }
        }
        if self.service == Service::Activity {
            self.fix_markers(&entries).await?;
        }
        Ok(deleted)
    }

    /// Gives every marker of the file the `ts` of the activity it points to.
    ///
    /// A snapshot reads the file page by page, so a marker can reach the
    /// sink before its activity does and be written with no `ts` to take;
    /// at the snapshot's end every activity is on the target. Streamed
    /// changes come in commit order (an activity before the marker that
    /// points to it), so they need no such step.
    async fn fix_markers(&self, entries: &[ferry_bolt::Entry]) -> Result<(), SinkError> {
        let mut ts: HashMap<String, i64> = HashMap::new();
        let mut markers: Vec<(String, String)> = Vec::new();
        for e in entries {
            let Some(v) = e.value.as_deref() else {
                continue;
            };
            let Ok(Some(m)) = map(self.service, &self.opts, &e.buckets, &e.key, Some(v)) else {
                continue;
            };
            match (m.ts_of, m.doc) {
                (Some(of), _) => markers.push((m.id, of)),
                (None, Some(d)) => {
                    if let Ok(t) = d.get_i64("ts") {
                        ts.insert(m.id, t);
                    }
                }
                _ => {}
            }
        }
        let coll = self.opts.collection(Service::Activity, "markers");
        let c = self
            .inner_store()
            .client()
            .database(&self.db)
            .collection::<Document>(&coll);
        for (id, of) in markers {
            let Some(t) = ts.get(&of) else { continue };
            c.update_one(
                doc! {"_id": &id, "timestamp": {"$ne": t}},
                doc! {"$set": {"timestamp": t}},
            )
            .await
            .map_err(|e| SinkError::transient(format!("setting {}.{coll} {id}: {e}", self.db)))?;
        }
        Ok(())
    }

    fn inner_store(&self) -> &MongoStore {
        self.inner.store()
    }

    async fn mapped_event(
        &self,
        e: &Event,
        batch: &mut BatchActivities,
    ) -> Result<Event, SinkError> {
        let (value, is_put) = match &e.op {
            Op::Put { value, .. } => (Some(value), true),
            Op::Delete { .. } => (None, false),
            _ => return Ok(e.clone()),
        };
        let marker = || Event {
            op: Op::Heartbeat,
            key: Vec::new(),
            ..e.clone()
        };
        let Some(KeyRef::Value { buckets, key }) = decode_key(&e.key) else {
            return Ok(marker());
        };
        let bytes = match value {
            Some(Value::Plain(b)) => Some(b.as_slice()),
            Some(Value::Sealed { .. }) => {
                return Err(SinkError::fatal(format!(
                    "{}: a sealed value reached the sink unopened",
                    self.inner.name()
                )))
            }
            None => None,
        };
        let m = match map(self.service, &self.opts, &buckets, &key, bytes) {
            Ok(m) => {
                if !self.unmapped.is_empty() {
                    let path = crate::map::location(&buckets, &key);
                    self.unmapped
                        .clear(&format!("{}:{path}", self.service.name()));
                }
                m
            }
            Err(err) => {
                self.unmapped.record(unmapped_entry(&err));
                return Ok(marker());
            }
        };
        let Some(Mapped {
            collection,
            id,
            doc: body,
            ts_of,
        }) = m
        else {
            return Ok(marker());
        };
        if self.activities.as_deref() == Some(collection.as_str()) {
            batch.insert(id.clone(), body.as_ref().and_then(|d| d.get_i64("ts").ok()));
        }
        let body = match (body, ts_of) {
            (Some(mut d), Some(of)) => {
                let ts = self.activity_ts(&of, batch).await?;
                if ts.is_none() {
                    tracing::warn!(marker = %id, activity = %of, "a marker points to an activity that does not exist; its timestamp is 0");
                }
                set_marker_ts(&mut d, ts);
                Some(d)
            }
            (body, _) => body,
        };
        let ns = Namespace::new(self.db.clone(), collection.clone());
        let key = ferry_mongo::key::encode(&ns, mongodb::bson::RawBsonRef::String(&id));
        let meta = StoreMeta::Mongo {
            db: self.db.clone(),
            collection,
        };
        let op = match (is_put, body) {
            (true, Some(body)) => {
                let raw = RawDocumentBuf::from_document(&with_id(&id, body)).map_err(|err| {
                    SinkError::permanent(format!("{}: {id}: {err}", self.service.name()))
                })?;
                Op::Put {
                    value: Value::Plain(raw.into_bytes()),
                    meta,
                }
            }
            _ => Op::Delete { meta },
        };
        Ok(Event {
            key,
            op,
            ..e.clone()
        })
    }
}

/// `body` with `_id` as its first field.
pub(crate) fn with_id(id: &str, body: Document) -> Document {
    let mut d = doc! { "_id": id };
    d.extend(body);
    d
}

impl Sink for CellsSink {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn startup(&self) -> Result<(), SinkError> {
        self.inner.startup().await
    }

    async fn durable_checkpoint(&self, shard: ShardId) -> Result<Option<Seq>, SinkError> {
        self.inner.durable_checkpoint(shard).await
    }

    async fn apply(&self, shard: ShardId, events: &[Event]) -> Result<Seq, SinkError> {
        let mut batch = BatchActivities::new();
        let mut mapped = Vec::with_capacity(events.len());
        for e in events {
            mapped.push(self.mapped_event(e, &mut batch).await?);
        }
        // Up to each snapshot end, then the sweep, then the end itself: a
        // crash in between applies the end (and sweeps) again.
        let mut done = 0;
        let mut last = 0;
        for (i, e) in mapped.iter().enumerate() {
            if matches!(e.op, Op::SnapshotEnd) {
                if i > done {
                    last = self.inner.apply(shard, &mapped[done..i]).await?;
                    done = i;
                }
                let n = self.sweep(shard).await?;
                if n > 0 {
                    tracing::info!(
                        shard = shard.0,
                        deleted = n,
                        service = self.service.name(),
                        "removed documents whose Bolt keys are gone"
                    );
                }
            }
        }
        if done < mapped.len() {
            last = self.inner.apply(shard, &mapped[done..]).await?;
        }
        Ok(last)
    }

    async fn shutdown(&self) {
        self.inner.shutdown().await
    }
}
