//! A Cells service's Bolt file into MongoDB: the journal holds the Bolt
//! events as the tailer saw them; this sink maps each one
//! ([`ferry_cells::map`]) into the document Cells reads and hands it to the
//! MongoDB sink, which writes it with the shard's checkpoint. A Bolt entry
//! with no Mongo counterpart (a bucket, an unused bucket) becomes a marker,
//! so every sequence still reaches the checkpoint.
//!
//! `_id`s come from the Bolt location, so the mapping of a key is the same
//! document every time: re-applying, resuming, or running the whole
//! migration twice replaces documents and never duplicates them.

use ferry_bolt::{decode_key, encode_key, KeyRef};
use ferry_cells::{map, unmap, MapOptions, Mapped, Service};
use ferry_core::{Event, Op, Seq, ShardId, ShardSpan, StoreMeta, Value};
use ferry_mongo::{MongoSink, MongoStore, Namespace};
use ferry_replay::{Sink, SinkError};
use mongodb::bson::{doc, Bson, Document, RawDocumentBuf};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};

pub struct CellsSink {
    inner: MongoSink,
    service: Service,
    opts: MapOptions,
    db: String,
    /// The Bolt file and its shards, for the sweep (see [`Self::sweep`]).
    path: PathBuf,
    span: ShardSpan,
}

impl CellsSink {
    pub fn new(
        inner: MongoSink,
        service: Service,
        opts: MapOptions,
        db: String,
        path: PathBuf,
        span: ShardSpan,
    ) -> Self {
        CellsSink {
            inner,
            service,
            opts,
            db,
            path,
            span,
        }
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
        Ok(deleted)
    }

    fn inner_store(&self) -> &MongoStore {
        self.inner.store()
    }

    fn mapped_event(&self, e: &Event) -> Result<Event, SinkError> {
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
        let m = map(self.service, &self.opts, &buckets, &key, bytes)
            .map_err(|err| SinkError::permanent(err.to_string()))?;
        let Some(Mapped {
            collection,
            id,
            doc: body,
        }) = m
        else {
            return Ok(marker());
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
fn with_id(id: &str, body: Document) -> Document {
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
        let mapped = events
            .iter()
            .map(|e| self.mapped_event(e))
            .collect::<Result<Vec<_>, _>>()?;
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

/// What the Bolt file maps to, compared with the target's collections:
/// every expected document present and equal, no other document in the
/// service's collections.
pub async fn compare(
    path: &Path,
    service: Service,
    opts: &MapOptions,
    target: &MongoStore,
    db: &str,
) -> Result<crate::routes::Comparison, String> {
    let p = path.to_path_buf();
    let entries = tokio::task::spawn_blocking(move || {
        ferry_bolt::BoltFile::open(&p).and_then(|f| f.read_all())
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?
    .1;
    let mut want: BTreeMap<String, BTreeMap<String, Document>> = BTreeMap::new();
    for e in entries {
        let Some(value) = e.value.as_deref() else {
            continue;
        };
        if let Some(m) =
            map(service, opts, &e.buckets, &e.key, Some(value)).map_err(|e| e.to_string())?
        {
            let body = m.doc.expect("a put maps to a document");
            want.entry(m.collection)
                .or_default()
                .insert(m.id.clone(), with_id(&m.id, body));
        }
    }
    // Every collection the service writes, so a leftover document in one
    // whose Bolt bucket is now empty is found too.
    let collections: BTreeSet<String> = service.collections(opts).into_iter().collect();
    let none = BTreeMap::new();
    let mut out = crate::routes::Comparison::default();
    let client = target.client();
    for coll in &collections {
        let expected = want.get(coll).unwrap_or(&none);
        let c = client.database(db).collection::<Document>(coll);
        let mut cursor = c
            .find(doc! {})
            .await
            .map_err(|e| format!("reading {db}.{coll}: {e}"))?;
        let mut seen = BTreeSet::new();
        while cursor
            .advance()
            .await
            .map_err(|e| format!("reading {db}.{coll}: {e}"))?
        {
            let d: Document = cursor
                .deserialize_current()
                .map_err(|e| format!("reading {db}.{coll}: {e}"))?;
            let id = match d.get("_id") {
                Some(Bson::String(s)) => s.clone(),
                other => format!("{other:?}"),
            };
            match expected.get(&id) {
                Some(e) if *e == d => {}
                Some(_) => out.note(format!("{db}.{coll} {id}: differs from the Bolt entry")),
                None => out.note(format!("{db}.{coll} {id}: not in the Bolt file")),
            }
            seen.insert(id);
        }
        for id in expected.keys().filter(|id| !seen.contains(*id)) {
            out.note(format!("{db}.{coll} {id}: missing on the target"));
        }
        out.compared += expected.len() as u64;
    }
    out.summary = format!(
        "compared {} documents mapped from {} ({}) with {} collections of {db}: {} differences",
        out.compared,
        path.display(),
        service.name(),
        collections.len(),
        out.differences
    );
    Ok(out)
}
