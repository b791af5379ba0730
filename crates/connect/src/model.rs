//! The data models sources hold and targets take.

use std::fmt;

/// What a store holds, as far as a copy is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DataModel {
    /// Keys under a prefix with values and store metadata (leases): etcd.
    KeyValue,
    /// Documents by namespace and `_id`, with collection options and
    /// indexes: MongoDB.
    Documents,
    /// Secrets under a path, every version with its metadata: Vault KV v2.
    Secrets,
    /// One whole JSON document: a file, an etcd key, one Vault secret.
    Document,
    /// A directory of documents, each by its relative path.
    Files,
}

impl DataModel {
    /// A few words for messages.
    pub fn describe(self) -> &'static str {
        match self {
            DataModel::KeyValue => "keys and values",
            DataModel::Documents => "documents by namespace",
            DataModel::Secrets => "versioned secrets",
            DataModel::Document => "one JSON document",
            DataModel::Files => "a directory of documents",
        }
    }
}

/// A MongoDB-style namespace: database and collection.
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct Namespace {
    pub db: String,
    pub coll: String,
}

impl Namespace {
    pub fn new(db: impl Into<String>, coll: impl Into<String>) -> Self {
        Namespace {
            db: db.into(),
            coll: coll.into(),
        }
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.db, self.coll)
    }
}

/// The leaves of `doc`: `/a/b/0` → JSON text of the leaf. Empty objects and
/// arrays are leaves too, so the document's shape survives. How a document
/// becomes keys for a key-value target (`?withKeys=true`).
pub fn leaves(doc: &serde_json::Value) -> std::collections::BTreeMap<String, Vec<u8>> {
    use serde_json::Value as Json;
    fn walk(v: &Json, path: &mut String, out: &mut std::collections::BTreeMap<String, Vec<u8>>) {
        let len = path.len();
        match v {
            Json::Object(m) if !m.is_empty() => {
                for (k, v) in m {
                    path.push('/');
                    path.push_str(k);
                    walk(v, path, out);
                    path.truncate(len);
                }
            }
            Json::Array(a) if !a.is_empty() => {
                for (i, v) in a.iter().enumerate() {
                    path.push('/');
                    path.push_str(&i.to_string());
                    walk(v, path, out);
                    path.truncate(len);
                }
            }
            leaf => {
                out.insert(
                    path.clone(),
                    serde_json::to_vec(leaf).expect("JSON serialises"),
                );
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    walk(doc, &mut String::new(), &mut out);
    out
}
