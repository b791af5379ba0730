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

use ferry_bolt::{decode_key, encode_key, KeyRef};
use ferry_cells::{map, set_marker_ts, unmap, MapError, MapOptions, Mapped, Service};
use ferry_core::{Event, Op, Seq, ShardId, ShardSpan, StoreMeta, StoreUrl, Value};
use ferry_mongo::{MongoSink, MongoStore, Namespace};
use ferry_replay::{Sink, SinkError};
use mongodb::bson::{doc, Bson, Document, RawDocumentBuf};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Bolt entries the Cells sinks could not map, by [`unmapped_name`].
#[derive(Default, Debug)]
pub struct Unmapped(Mutex<BTreeMap<String, MapError>>);

impl Unmapped {
    fn with<R>(&self, f: impl FnOnce(&mut BTreeMap<String, MapError>) -> R) -> R {
        f(&mut self.0.lock().expect("unmapped lock poisoned"))
    }

    pub fn record(&self, e: &MapError) {
        tracing::warn!(error = %e, "a Bolt entry could not be mapped; it is not applied");
        self.with(|m| m.insert(unmapped_name(e), e.clone()));
    }

    /// The entry at `buckets`/`key` of `service` mapped (or was deleted)
    /// after all. Called for every event: names nothing while none is
    /// recorded.
    fn clear(&self, service: Service, buckets: &[Vec<u8>], key: &[u8]) {
        self.with(|m| {
            if !m.is_empty() {
                let path = ferry_cells::map::location(buckets, key);
                m.remove(&format!("{}:{path}", service.name()));
            }
        });
    }

    pub fn list(&self) -> Vec<MapError> {
        self.with(|m| m.values().cloned().collect())
    }
}

/// How an unmapped entry is named to accept it (`--cells.accept-unmapped`).
pub fn unmapped_name(e: &MapError) -> String {
    format!("{}:{}", e.service, e.path)
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
                self.unmapped.clear(self.service, &buckets, &key);
                m
            }
            Err(err) => {
                self.unmapped.record(&err);
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

/// What the Bolt file maps to, compared with the target's collections:
/// every expected document present and equal, no other document in the
/// service's collections, and each collection's indexes those Cells
/// declares. Entries the mapping refuses are listed in
/// [`crate::routes::Comparison::unmapped`], not counted as differences.
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
    let mut out = crate::routes::Comparison::default();
    let mut want: BTreeMap<String, BTreeMap<String, Document>> = BTreeMap::new();
    let mut markers: Vec<(String, String, String)> = Vec::new();
    for e in entries {
        let Some(value) = e.value.as_deref() else {
            continue;
        };
        match map(service, opts, &e.buckets, &e.key, Some(value)) {
            Ok(Some(m)) => {
                let body = m.doc.expect("a put maps to a document");
                if let Some(of) = m.ts_of {
                    markers.push((m.collection.clone(), m.id.clone(), of));
                }
                want.entry(m.collection)
                    .or_default()
                    .insert(m.id.clone(), with_id(&m.id, body));
            }
            Ok(None) => {}
            Err(err) => out.unmapped.push(err),
        }
    }
    // Markers take their activity's `ts`; one whose activity is gone from
    // the file cannot be derived from it (the sink took it while the
    // activity existed), so the target's value is taken and said.
    let activities = opts.collection(Service::Activity, "activities");
    let mut underived: BTreeSet<(String, String)> = BTreeSet::new();
    for (coll, id, of) in markers {
        let ts = want
            .get(&activities)
            .and_then(|a| a.get(&of))
            .and_then(|d| d.get_i64("ts").ok());
        match ts {
            Some(ts) => {
                if let Some(d) = want.get_mut(&coll).and_then(|c| c.get_mut(&id)) {
                    set_marker_ts(d, Some(ts));
                }
            }
            None => {
                underived.insert((coll, id));
            }
        }
    }
    // Every collection the service writes, so a leftover document in one
    // whose Bolt bucket is now empty is found too.
    let collections: BTreeSet<String> = service.collections(opts).into_iter().collect();
    let none = BTreeMap::new();
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
            let expected_doc = expected.get(&id).map(|e| {
                let mut e = e.clone();
                if underived.contains(&(coll.clone(), id.clone())) {
                    if let Some(t) = d.get("timestamp") {
                        e.insert("timestamp", t.clone());
                    }
                }
                e
            });
            match expected_doc {
                Some(e) if e == d => {}
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
    for (coll, specs) in service.indexes(opts) {
        let ns = Namespace::new(db.to_string(), coll.clone());
        let have = ferry_mongo::catalog::read_indexes(target, &ns)
            .await
            .map_err(|e| e.to_string())?;
        for spec in specs {
            let key = spec.get_document("key").expect("index specs have keys");
            if !have
                .iter()
                .any(|h| h.get_document("key").is_ok_and(|k| k == key))
            {
                out.note(format!(
                    "{db}.{coll}: index {key} (declared by Cells) is missing"
                ));
            }
        }
    }
    out.summary = format!(
        "compared {} documents mapped from {} ({}) with {} collections of {db}, indexes included: {} differences{}{}",
        out.compared,
        path.display(),
        service.name(),
        collections.len(),
        out.differences,
        if underived.is_empty() {
            String::new()
        } else {
            format!("; {} markers point to activities no longer in the file (their target timestamp kept)", underived.len())
        },
        if out.unmapped.is_empty() {
            String::new()
        } else {
            format!("; {} entries could not be mapped", out.unmapped.len())
        }
    );
    Ok(out)
}

/// The collections and indexes Cells' models declare for `service`, as a
/// catalog the MongoDB sink makes before the first document (Cells makes
/// indexes only on collections it creates itself, and Ferry creates them).
pub fn catalog(service: Service, opts: &MapOptions, db: &str) -> ferry_mongo::Catalog {
    ferry_mongo::Catalog {
        collections: service
            .indexes(opts)
            .into_iter()
            .map(|(coll, indexes)| ferry_mongo::CollectionSpec {
                namespace: Namespace::new(db.to_string(), coll),
                options: Document::new(),
                indexes,
            })
            .collect(),
    }
}

/// The etcd keys Cells reads its configuration and vault from, given the
/// target URL: `etcd://h:2379` or `…/config` → `config` and `vault`. Cells
/// reads its config vault from the key `vault` whatever the config URL's
/// path (it forces that key for every non-file scheme), so a target with
/// another prefix would put `pydio-vault.json` where Cells never looks: it
/// is refused.
pub fn cells_etcd_keys(etcd: &StoreUrl) -> Result<(String, String), String> {
    let prefix = match etcd {
        StoreUrl::Etcd { prefix, .. } => prefix.trim_matches('/').to_string(),
        _ => String::new(),
    };
    if prefix.is_empty() || prefix == "config" {
        return Ok(("config".into(), "vault".into()));
    }
    Err(format!(
        "{etcd}: Cells reads its config vault from the etcd key `vault` whatever the config key, so a cells:// migration to the prefix `{prefix}` would put pydio-vault.json where Cells does not read it; give the etcd target without a path (pydio.json goes to `config`, pydio-vault.json to `vault`)"
    ))
}

/// The keyring's Vault target for a Cells migration: the KV v2 secret
/// Cells reads for the `CELLS_KEYRING` Ferry prints ([`cells_keyring_url`]).
///
/// Cells' Vault store takes the secret in `?key=` and reads
/// `<URL path>/data/<key>`, so the URL's path must be the mount alone:
/// `vault://h/kv?key=keyring` is mount `kv`, secret `keyring`. Accepted:
/// that form, `vault://h/<mount>` (secret `keyring`) and
/// `vault://h/<mount>/<secret>` (Ferry's form; Cells is then pointed at
/// `?key=<secret>`). Refused: a sub-path *and* a key, which Cells would
/// resolve to another secret, then silently make a new master key and lose
/// every value of pydio-vault.json.
pub fn cells_keyring_target(vault: &StoreUrl) -> Result<StoreUrl, String> {
    let StoreUrl::Vault {
        tls,
        endpoint,
        mount,
        path,
        token,
        params,
    } = vault.clone()
    else {
        return Err(format!("{vault}: the keyring goes to a vault:// target"));
    };
    let key = params.get("key").map(|k| k.trim_matches('/').to_string());
    let secret = match (path.is_empty(), key) {
        (true, Some(k)) if !k.is_empty() => k,
        (true, _) => "keyring".to_string(),
        (false, None) => path,
        (false, Some(k)) => {
            return Err(format!(
                "{vault}: Cells would read the keyring from `{mount}/{path}/data/{k}`, which is not the secret `{path}/{k}` of mount `{mount}`: write the keyring target as {}://{endpoint}/{mount}?key={path}/{k}",
                if tls { "vaults" } else { "vault" }
            ))
        }
    };
    let mut params = params;
    params.remove("key");
    Ok(StoreUrl::Vault {
        tls,
        endpoint,
        mount,
        path: secret,
        token,
        params,
    })
}

/// The `CELLS_KEYRING` URL that makes Cells read the secret of a keyring
/// target (as [`cells_keyring_target`] made it): the mount in the path, the
/// secret in `?key=`. No token: Cells takes it from `VAULT_TOKEN`.
pub fn cells_keyring_url(target: &StoreUrl) -> String {
    match target {
        StoreUrl::Vault {
            tls,
            endpoint,
            mount,
            path,
            ..
        } => format!(
            "{}://{endpoint}/{mount}?key={path}",
            if *tls { "vaults" } else { "vault" }
        ),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> StoreUrl {
        s.parse().unwrap()
    }

    #[test]
    fn the_keyring_goes_where_cells_reads_it() {
        for (given, secret) in [
            ("vault://h:8200/kv/keyring", "keyring"),
            ("vault://h:8200/kv?key=keyring", "keyring"),
            ("vault://h:8200/kv", "keyring"),
            ("vault://h:8200/secret/cells/keyring", "cells/keyring"),
        ] {
            let t = cells_keyring_target(&url(given)).unwrap();
            let StoreUrl::Vault { path, params, .. } = &t else {
                panic!()
            };
            assert_eq!(
                (path.as_str(), params.get("key")),
                (secret, None),
                "{given}"
            );
            let mount = if given.contains("/secret") {
                "secret"
            } else {
                "kv"
            };
            assert_eq!(
                cells_keyring_url(&t),
                format!("vault://h:8200/{mount}?key={secret}")
            );
        }
        let e = cells_keyring_target(&url("vault://h:8200/kv/sub?key=k")).unwrap_err();
        assert!(
            e.contains("kv/sub/data/k") && e.contains("vault://h:8200/kv?key=sub/k"),
            "{e}"
        );
    }

    #[test]
    fn a_prefixed_etcd_target_is_refused() {
        for ok in ["etcd://h:2379", "etcd://h:2379/config"] {
            assert_eq!(
                cells_etcd_keys(&url(ok)).unwrap(),
                ("config".into(), "vault".into())
            );
        }
        let e = cells_etcd_keys(&url("etcd://h:2379/team-a/config")).unwrap_err();
        assert!(e.contains("`vault`"), "{e}");
    }
}
