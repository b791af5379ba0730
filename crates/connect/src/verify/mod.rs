//! Verification by data model: a source's [`Reader`] against a target's.
//!
//! Each model has one comparison, written once here over its reader trait,
//! so a store gets `ferry verify` and the cutover's verification against
//! every store of its model by implementing the reader:
//!
//! | source | target | comparison |
//! |---|---|---|
//! | [`KvReader`] | [`KvReader`] | [`kv::compare`]: merge by key suffix, range digests, leases |
//! | [`DocumentsReader`] | [`DocumentsReader`] | [`documents::compare`]: digests per namespace, then `_id`s, indexes |
//! | [`SecretsReader`] | [`SecretsReader`] | version by version, metadata included |
//! | [`DocumentReader`] | [`DocumentReader`] | JSON equality, exact bytes where the target keeps bytes |
//! | [`DocumentReader`] | [`KvReader`] | the document's leaves against the keys (`?withKeys=true`) |
//! | [`FilesReader`] | [`SecretsReader`] | each file against the current version of its secret |
//! | [`MappedReader`] | any | the source's own mapping against the target's reader (Cells) |
//! | any | [`EventsReader`] | the stream alone: every event once, and where each partition ends |

pub mod continuous;
pub mod doc_ranges;
pub mod documents;
pub mod kv;
mod simple;

use crate::model::Namespace;
use crate::unmapped::UnmappedEntry;
use async_trait::async_trait;
use bson::{Bson, Document, RawDocumentBuf};
use futures::stream::BoxStream;
use std::sync::Arc;

/// A store's data as verification reads it, by data model.
#[derive(Clone)]
pub enum Reader {
    KeyValue(Arc<dyn KvReader>),
    Documents(Arc<dyn DocumentsReader>),
    Secrets(Arc<dyn SecretsReader>),
    Document(Arc<dyn DocumentReader>),
    Files(Arc<dyn FilesReader>),
    Mapped(Arc<dyn MappedReader>),
    /// An event stream (Kafka): it holds events, not state.
    Events(Arc<dyn EventsReader>),
}

/// One key of a key-value store, relative to its side's prefix.
#[derive(Clone, Debug)]
pub struct KvEntry {
    pub suffix: Vec<u8>,
    pub value: Vec<u8>,
    /// The store's lease id, 0 for none.
    pub lease: i64,
}

/// Keys under a prefix, read in key order at one position.
#[async_trait]
pub trait KvReader: Send + Sync {
    fn name(&self) -> &str;
    /// A cursor over every key, in key order; the first page pins the
    /// position every later page reads at. Ferry's reserved keys are left
    /// out.
    fn cursor(&self) -> Box<dyn KvCursor>;
    /// A cursor over the suffixes in `[from, to)` (`to` `None`: to the
    /// end). The default filters [`Self::cursor`]; a store with range
    /// reads reads only the range.
    fn cursor_range(&self, from: &[u8], to: Option<&[u8]>) -> Box<dyn KvCursor> {
        Box::new(continuous::Filtered {
            inner: self.cursor(),
            from: from.to_vec(),
            to: to.map(<[u8]>::to_vec),
            done: false,
        })
    }
    /// Whether [`Self::cursor_range`] reads only the range (a store's range
    /// read) rather than filtering everything: the continuous verifier
    /// runs only between two such readers.
    fn range_reads(&self) -> bool {
        false
    }
    /// The suffix of a journaled event's key (the key as the source names
    /// it), `None` when it is not one of this reader's keys. The default:
    /// the key is the suffix.
    fn suffix<'k>(&self, key: &'k [u8]) -> Option<&'k [u8]> {
        Some(key)
    }
    /// (remaining, granted) TTL of a lease, in seconds.
    async fn lease_ttl(&self, lease: i64) -> Result<(i64, i64), String>;
}

#[async_trait]
pub trait KvCursor: Send {
    /// The next page, `None` at the end.
    async fn next_page(&mut self) -> Result<Option<Vec<KvEntry>>, String>;
    /// The position the cursor reads at (0 before the first page).
    fn position(&self) -> i64;
}

/// Documents by namespace.
#[async_trait]
pub trait DocumentsReader: Send + Sync {
    fn name(&self) -> &str;
    /// The namespaces a source's copy covers (its selection).
    async fn namespaces(&self) -> Result<Vec<Namespace>, String>;
    /// Every document of `ns` as raw BSON, in any order, a batch at a time.
    async fn scan(
        &self,
        ns: &Namespace,
    ) -> Result<BoxStream<'static, Result<RawDocumentBuf, String>>, String>;
    /// The documents of `ns` with these `_id`s (those that exist).
    async fn lookup(&self, ns: &Namespace, ids: Vec<Bson>) -> Result<Vec<RawDocumentBuf>, String>;
    /// The namespace's indexes, normalised (`_id_` aside).
    async fn indexes(&self, ns: &Namespace) -> Result<Vec<Document>, String>;
    /// Whether [`Self::scan_range`] reads a range of the `_id` index: the
    /// continuous verifier runs only between two such readers.
    fn range_reads(&self) -> bool {
        false
    }
    /// The documents of `ns` whose `_id` is in `[from, to)` in the order of
    /// the `_id` index (MongoDB's order of BSON values, not bracketed by
    /// type; `None`: unbounded), in that order.
    async fn scan_range(
        &self,
        ns: &Namespace,
        from: Option<Bson>,
        to: Option<Bson>,
    ) -> Result<BoxStream<'static, Result<RawDocumentBuf, String>>, String> {
        let _ = (ns, from, to);
        Err(format!("{} has no range reads", self.name()))
    }
    /// The server's count of `ns` from its metadata (no scan), where it
    /// keeps one: compared inside the cutover's window, it catches a
    /// document inserted or deleted behind Ferry's back in a range that was
    /// verified earlier.
    async fn estimated_count(&self, ns: &Namespace) -> Result<Option<u64>, String> {
        let _ = ns;
        Ok(None)
    }
    /// Whether the `_id` index of `ns` orders strings by their bytes (no
    /// collation), as [`doc_ranges::DocRanges`] places them.
    async fn binary_string_order(&self, ns: &Namespace) -> Result<bool, String> {
        let _ = ns;
        Ok(false)
    }
}

/// A secret's metadata, as far as Ferry reproduces it.
#[derive(Clone, Debug, PartialEq)]
pub struct SecretMeta {
    pub current_version: u64,
    pub max_versions: u64,
    pub cas_required: bool,
    pub delete_version_after: String,
    /// User metadata, Ferry's own keys left out.
    pub custom: serde_json::Map<String, serde_json::Value>,
    /// Version → (deleted, destroyed).
    pub versions: std::collections::BTreeMap<u64, (bool, bool)>,
}

/// Versioned secrets under a path.
#[async_trait]
pub trait SecretsReader: Send + Sync {
    fn name(&self) -> &str;
    /// Every secret, by path relative to the reader's root.
    async fn list(&self) -> Result<Vec<String>, String>;
    /// The full path of a relative one, for messages.
    fn absolute(&self, rel: &str) -> String;
    async fn metadata(&self, rel: &str) -> Result<Option<SecretMeta>, String>;
    async fn read_version(
        &self,
        rel: &str,
        version: u64,
    ) -> Result<Option<serde_json::Map<String, serde_json::Value>>, String>;
    /// The current version's data.
    async fn current(
        &self,
        rel: &str,
    ) -> Result<Option<serde_json::Map<String, serde_json::Value>>, String>;
}

/// One whole document as a store holds it.
#[derive(Clone, Debug)]
pub struct DocState {
    /// The exact bytes, where the store keeps them (a file, an etcd key);
    /// `None` where it keeps JSON only (Vault).
    pub bytes: Option<Vec<u8>>,
    /// `None` when the bytes are not JSON.
    pub json: Option<serde_json::Value>,
}

/// One whole document.
#[async_trait]
pub trait DocumentReader: Send + Sync {
    fn name(&self) -> &str;
    /// What holds it, for messages: "document", "etcd key", "Vault secret".
    fn holder(&self) -> &'static str;
    /// `None`: absent.
    async fn read(&self) -> Result<Option<DocState>, String>;
}

/// A directory of documents.
#[async_trait]
pub trait FilesReader: Send + Sync {
    fn name(&self) -> &str;
    /// Relative paths.
    async fn list(&self) -> Result<Vec<String>, String>;
    async fn document(&self, rel: &str) -> Result<serde_json::Value, String>;
}

/// A source that maps its entries for the target and so compares itself
/// (Cells' Bolt files, mapped to the documents Cells reads).
#[async_trait]
pub trait MappedReader: Send + Sync {
    async fn compare(&self, target: &Reader, target_name: &str) -> Result<Comparison, String>;
}

/// An event stream read to its end: what it can prove on its own (every
/// event once) and where it ends.
#[async_trait]
pub trait EventsReader: Send + Sync {
    fn name(&self) -> &str;
    /// Reads every record: `compared` events, a difference per event that
    /// appears twice, `positions` the end of each partition.
    async fn check(&self) -> Result<Comparison, String>;
}

/// What a comparison of one source with one target found.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Comparison {
    /// Keys, documents or secret versions compared.
    pub compared: u64,
    pub differences: u64,
    /// The differences, at most 20, one line each.
    pub details: Vec<String>,
    /// One line on what was compared and how.
    pub summary: String,
    /// Source entries that have no counterpart the target's reader could
    /// read (a Cells Bolt value Cells itself cannot decode).
    #[serde(skip)]
    pub unmapped: Vec<UnmappedEntry>,
    /// Where the target ends (an event stream: partition → end offset),
    /// recorded in the cutover's proof.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub positions: std::collections::BTreeMap<String, u64>,
}

impl Comparison {
    pub fn is_equal(&self) -> bool {
        self.differences == 0
    }

    /// One more difference (the first 20 kept).
    pub fn note(&mut self, detail: String) {
        self.differences += 1;
        if self.details.len() < 20 {
            self.details.push(detail);
        }
    }
}

/// Options of a comparison.
#[derive(Clone, Copy, Debug)]
pub struct CompareOptions {
    /// How far two remaining lease TTLs may drift, seconds.
    pub ttl_tolerance_s: i64,
}

/// Compares a source with a target by their data model; see the module doc.
pub async fn compare(
    source_name: &str,
    source: &Reader,
    target_name: &str,
    target: &Reader,
    opts: CompareOptions,
) -> Result<Comparison, String> {
    use Reader as R;
    match (source, target) {
        // A topic holds events, whatever their source: checked as events.
        (_, R::Events(t)) => t.check().await,
        (R::Mapped(m), t) => m.compare(t, target_name).await,
        (R::KeyValue(s), R::KeyValue(t)) => {
            let r = kv::compare(s.as_ref(), t.as_ref(), opts.ttl_tolerance_s).await?;
            Ok(kv::summarise(&r))
        }
        (R::Documents(s), R::Documents(t)) => {
            let namespaces = s.namespaces().await?;
            let r = documents::compare(s.as_ref(), t.as_ref(), &namespaces).await?;
            Ok(documents::summarise(&r, source_name, target_name))
        }
        (R::Secrets(s), R::Secrets(t)) => {
            simple::secrets(s.as_ref(), t.as_ref(), source_name, target_name).await
        }
        (R::Document(s), R::Document(t)) => simple::document(s.as_ref(), t.as_ref(), target_name).await,
        (R::Document(s), R::KeyValue(t)) => simple::leaves(s.as_ref(), t.as_ref(), target_name).await,
        (R::Files(s), R::Secrets(t)) => simple::files(s.as_ref(), t.as_ref(), target_name).await,
        _ => Err(format!(
            "{source_name} and {target_name} cannot be compared: this build compares the pairs it copies"
        )),
    }
}
