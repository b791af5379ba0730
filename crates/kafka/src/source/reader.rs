//! Verification of a Kafka source: the topic read to the end of every
//! partition, folded into each key's last state (a put's value and lease,
//! or gone after a delete), then served like a store: keys in key order
//! for key-value events, documents by namespace for document events. The
//! fold holds every live key in memory: a topic is compared whole, as a
//! store's reader pins one revision.

use super::decode::{lease, Change, Decoder, Events};
use super::malformed;
use crate::connector::partitions;
use crate::tail;
use bson::{Bson, Document, RawBson, RawDocumentBuf};
use ferry_connect::verify::{
    DocState, DocumentReader, DocumentsReader, FilesReader, KvCursor, KvEntry, KvReader,
    SecretMeta, SecretsReader,
};
use ferry_connect::{async_trait, doc_key, Namespace};
use ferry_core::{StoreMeta, StoreUrl, VaultVersionMeta};
use futures::stream::{self, BoxStream, StreamExt};
use rdkafka::message::Message;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The topic a reader folds.
#[derive(Clone)]
pub struct Topic {
    pub name: String,
    pub bootstrap: String,
    pub topic: String,
    pub events: Events,
}

/// Every key's last state: value and meta.
type Fold = BTreeMap<Vec<u8>, (Vec<u8>, StoreMeta)>;

impl Topic {
    /// The topic read to its end and folded into each key's last state;
    /// and how many records it held.
    async fn fold(&self) -> Result<(Fold, i64), String> {
        self.visit(Fold::new(), |state, change| match change {
            Change::Put {
                key, value, meta, ..
            } => {
                state.insert(key, (value, meta));
            }
            Change::Delete { key, .. } => {
                state.remove(&key);
            }
            Change::Tombstone => {}
        })
        .await
    }

    /// Every change of the topic, partition by partition, in order, handed
    /// to `each` with the state it builds.
    async fn visit<S: Send + 'static>(
        &self,
        state: S,
        each: impl FnMut(&mut S, Change) + Send + 'static,
    ) -> Result<(S, i64), String> {
        let me = self.clone();
        let n = partitions(&me.bootstrap, &me.topic).await?.unwrap_or(0);
        tokio::task::spawn_blocking(move || me.visit_blocking(n, state, each))
            .await
            .map_err(|e| e.to_string())?
    }

    fn visit_blocking<S>(
        &self,
        n: usize,
        mut state: S,
        mut each: impl FnMut(&mut S, Change),
    ) -> Result<(S, i64), String> {
        let url = StoreUrl::parse(&self.name).map_err(|e| e.to_string())?;
        let mut decoder = Decoder::new(self.events);
        let mut total = 0;
        for p in 0..n as i32 {
            total += tail::scan(
                &self.bootstrap,
                &self.topic,
                p,
                Duration::from_secs(600),
                |m| {
                    decoder.set_record_key(m.key());
                    let change = decoder
                        .decode(m.payload())
                        .map_err(|why| malformed(&url, &self.topic, p, m.offset(), &why))?;
                    each(&mut state, change);
                    Ok(())
                },
            )?;
        }
        Ok((state, total))
    }
}

/// Key-value events, as a key-value store.
pub struct TopicKv {
    pub topic: Topic,
    /// Each lease's TTL as last captured, filled by a cursor's read.
    pub ttls: Arc<Mutex<HashMap<i64, i64>>>,
}

struct Cursor {
    topic: Topic,
    pages: Option<std::vec::IntoIter<Vec<KvEntry>>>,
    position: i64,
    ttls: Arc<Mutex<HashMap<i64, i64>>>,
}

#[async_trait]
impl KvCursor for Cursor {
    async fn next_page(&mut self) -> Result<Option<Vec<KvEntry>>, String> {
        if self.pages.is_none() {
            let (state, total) = self.topic.fold().await?;
            self.position = total;
            let mut ttls = self.ttls.lock().expect("ttl lock poisoned");
            for (_, meta) in state.values() {
                if let Some((id, ttl)) = lease(meta) {
                    ttls.insert(id.max(1), ttl);
                }
            }
            drop(ttls);
            let entries: Vec<KvEntry> = state
                .into_iter()
                .map(|(suffix, (value, meta))| KvEntry {
                    suffix,
                    value,
                    lease: lease(&meta).map_or(0, |(id, _)| id.max(1)),
                })
                .collect();
            let pages: Vec<Vec<KvEntry>> = entries.chunks(1000).map(<[KvEntry]>::to_vec).collect();
            self.pages = Some(pages.into_iter());
        }
        Ok(self.pages.as_mut().and_then(Iterator::next))
    }
    fn position(&self) -> i64 {
        self.position
    }
}

#[async_trait]
impl KvReader for TopicKv {
    fn name(&self) -> &str {
        &self.topic.name
    }
    fn cursor(&self) -> Box<dyn KvCursor> {
        Box::new(Cursor {
            topic: self.topic.clone(),
            pages: None,
            position: 0,
            ttls: Arc::clone(&self.ttls),
        })
    }
    /// No remaining TTL (a topic keeps no clock: what remains of a lease
    /// captured minutes ago is unknown), and as the grant the TTL the
    /// upstream had when it captured the lease: a target key may not
    /// outlive that.
    async fn lease_ttl(&self, lease: i64) -> Result<(i64, i64), String> {
        let ttl = self
            .ttls
            .lock()
            .expect("ttl lock poisoned")
            .get(&lease)
            .copied();
        ttl.map(|t| (0, t)).ok_or_else(|| {
            format!(
                "{}: no record of the topic names lease {lease}",
                self.topic.name
            )
        })
    }
}

/// Document events, as a MongoDB deployment: each namespace's documents
/// by event key. A verification starts by listing the namespaces, which
/// folds the topic afresh; its scans and lookups read that fold.
pub struct TopicDocs {
    pub topic: Topic,
    pub fold: Mutex<Option<Arc<DocFold>>>,
}

/// Namespace → event key → document.
type DocFold = BTreeMap<Namespace, BTreeMap<Vec<u8>, Vec<u8>>>;

impl TopicDocs {
    async fn refold(&self) -> Result<Arc<DocFold>, String> {
        let (state, _) = self.topic.fold().await?;
        let mut docs = DocFold::new();
        for (key, (value, _)) in state {
            let (ns, _) = doc_key::decode(&key)?;
            docs.entry(ns).or_default().insert(key, value);
        }
        let docs = Arc::new(docs);
        *self.fold.lock().expect("fold lock poisoned") = Some(Arc::clone(&docs));
        Ok(docs)
    }

    async fn current(&self) -> Result<Arc<DocFold>, String> {
        let cached = self.fold.lock().expect("fold lock poisoned").clone();
        match cached {
            Some(f) => Ok(f),
            None => self.refold().await,
        }
    }
}

fn raw(bytes: &[u8]) -> Result<RawDocumentBuf, String> {
    RawDocumentBuf::from_bytes(bytes.to_vec()).map_err(|e| e.to_string())
}

#[async_trait]
impl DocumentsReader for TopicDocs {
    fn name(&self) -> &str {
        &self.topic.name
    }
    async fn namespaces(&self) -> Result<Vec<Namespace>, String> {
        Ok(self.refold().await?.keys().cloned().collect())
    }
    async fn scan(
        &self,
        ns: &Namespace,
    ) -> Result<BoxStream<'static, Result<RawDocumentBuf, String>>, String> {
        let fold = self.current().await?;
        let docs: Vec<Result<RawDocumentBuf, String>> = fold
            .get(ns)
            .map(|m| m.values().map(|d| raw(d)).collect())
            .unwrap_or_default();
        Ok(stream::iter(docs).boxed())
    }
    /// By the `_id` as given and, for an integral one, as the 64-bit
    /// integer a Debezium event's key holds (see [`super::decode`]).
    async fn lookup(&self, ns: &Namespace, ids: Vec<Bson>) -> Result<Vec<RawDocumentBuf>, String> {
        let fold = self.current().await?;
        let Some(docs) = fold.get(ns) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for id in ids {
            let wide = match &id {
                Bson::Int32(n) => Some(Bson::Int64(i64::from(*n))),
                _ => None,
            };
            for candidate in std::iter::once(id).chain(wide) {
                let Ok(r) = RawBson::try_from(candidate) else {
                    continue;
                };
                if let Some(d) = docs.get(&doc_key::encode(ns, r.as_raw_bson_ref())) {
                    out.push(raw(d)?);
                    break;
                }
            }
        }
        Ok(out)
    }
    /// A topic carries no indexes.
    async fn indexes(&self, _ns: &Namespace) -> Result<Vec<Document>, String> {
        Ok(Vec::new())
    }
}

/// Version events of a Vault source, as a Vault path: per secret, each
/// version's last data and metadata; the secret's settings as of its last
/// event.
pub struct TopicSecrets {
    pub topic: Topic,
    pub fold: Mutex<Option<Arc<SecretFold>>>,
}

/// Path → version → (data, metadata).
type SecretFold = BTreeMap<String, BTreeMap<u64, (Vec<u8>, VaultVersionMeta)>>;

/// The prefix of the creation times Ferry keeps in `custom_metadata`
/// (`ferry_vault`'s own keys, left out of comparisons as its reader does).
const FERRY_CUSTOM_PREFIX: &str = "ferry-created-v";

impl TopicSecrets {
    async fn refold(&self) -> Result<Arc<SecretFold>, String> {
        let (fold, _) = self
            .topic
            .visit(SecretFold::new(), |state, change| match change {
                Change::Put {
                    key,
                    value,
                    meta: StoreMeta::Vault(m),
                    ..
                } => {
                    let path = String::from_utf8_lossy(&key).into_owned();
                    state
                        .entry(path)
                        .or_default()
                        .insert(m.version, (value, *m));
                }
                Change::Delete { key, .. } => {
                    state.remove(String::from_utf8_lossy(&key).as_ref());
                }
                _ => {}
            })
            .await?;
        let fold = Arc::new(fold);
        *self.fold.lock().expect("fold lock poisoned") = Some(Arc::clone(&fold));
        Ok(fold)
    }

    async fn current(&self) -> Result<Arc<SecretFold>, String> {
        let cached = self.fold.lock().expect("fold lock poisoned").clone();
        match cached {
            Some(f) => Ok(f),
            None => self.refold().await,
        }
    }

    fn data(bytes: &[u8]) -> Result<serde_json::Map<String, serde_json::Value>, String> {
        serde_json::from_slice(bytes)
            .map_err(|e| format!("a version's data is not a JSON object ({e})"))
    }
}

#[async_trait]
impl SecretsReader for TopicSecrets {
    fn name(&self) -> &str {
        &self.topic.name
    }
    /// Folds the topic afresh: a comparison starts here.
    async fn list(&self) -> Result<Vec<String>, String> {
        Ok(self.refold().await?.keys().cloned().collect())
    }
    fn absolute(&self, rel: &str) -> String {
        format!("{} {rel}", self.topic.name)
    }
    async fn metadata(&self, rel: &str) -> Result<Option<SecretMeta>, String> {
        let fold = self.current().await?;
        let Some(versions) = fold.get(rel) else {
            return Ok(None);
        };
        let Some((current, (_, last))) = versions.iter().next_back() else {
            return Ok(None);
        };
        Ok(Some(SecretMeta {
            current_version: *current,
            max_versions: u64::from(last.max_versions),
            cas_required: last.cas_required,
            delete_version_after: last.delete_version_after.clone(),
            custom: last
                .custom_metadata
                .iter()
                .filter(|(k, _)| !k.starts_with(FERRY_CUSTOM_PREFIX))
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                .collect(),
            versions: versions
                .iter()
                .map(|(v, (_, m))| (*v, (!m.deletion_time.is_empty(), m.destroyed)))
                .collect(),
        }))
    }
    async fn read_version(
        &self,
        rel: &str,
        version: u64,
    ) -> Result<Option<serde_json::Map<String, serde_json::Value>>, String> {
        let fold = self.current().await?;
        match fold.get(rel).and_then(|v| v.get(&version)) {
            Some((data, m)) if m.deletion_time.is_empty() && !m.destroyed => {
                Self::data(data).map(Some)
            }
            _ => Ok(None),
        }
    }
    async fn current(
        &self,
        rel: &str,
    ) -> Result<Option<serde_json::Map<String, serde_json::Value>>, String> {
        let fold = TopicSecrets::current(self).await?;
        match fold.get(rel).and_then(|v| v.iter().next_back()) {
            Some((_, (data, m))) if m.deletion_time.is_empty() && !m.destroyed => {
                Self::data(data).map(Some)
            }
            _ => Ok(None),
        }
    }
}

/// Document events of a file source: the document as the topic last holds
/// it.
pub struct TopicDocument {
    pub topic: Topic,
}

/// A document's bytes as a [`DocState`].
fn doc_state(bytes: Vec<u8>) -> DocState {
    DocState {
        json: serde_json::from_slice(&bytes).ok(),
        bytes: Some(bytes),
    }
}

#[async_trait]
impl DocumentReader for TopicDocument {
    fn name(&self) -> &str {
        &self.topic.name
    }
    fn holder(&self) -> &'static str {
        "topic"
    }
    async fn read(&self) -> Result<Option<DocState>, String> {
        let (state, _) = self.topic.fold().await?;
        Ok(state.into_values().next_back().map(|(v, _)| doc_state(v)))
    }
}

/// Document events of a directory source: each document by its relative
/// path. A comparison lists first, which folds the topic afresh.
pub struct TopicFiles {
    pub topic: Topic,
    pub fold: Mutex<Option<Arc<Fold>>>,
}

#[async_trait]
impl FilesReader for TopicFiles {
    fn name(&self) -> &str {
        &self.topic.name
    }
    async fn list(&self) -> Result<Vec<String>, String> {
        let (state, _) = self.topic.fold().await?;
        let names = state
            .keys()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect();
        *self.fold.lock().expect("fold lock poisoned") = Some(Arc::new(state));
        Ok(names)
    }
    async fn document(&self, rel: &str) -> Result<serde_json::Value, String> {
        let cached = self.fold.lock().expect("fold lock poisoned").clone();
        let fold = match cached {
            Some(f) => f,
            None => Arc::new(self.topic.fold().await?.0),
        };
        let (bytes, _) = fold
            .get(rel.as_bytes())
            .ok_or_else(|| format!("{}: no document {rel} in the topic", self.topic.name))?;
        serde_json::from_slice(bytes)
            .map_err(|e| format!("{}: {rel} is not JSON ({e})", self.topic.name))
    }
}
