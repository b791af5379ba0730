//! A connection to one MongoDB URL, its namespace selection, and the
//! pre-checks.
//!
//! Invariants:
//! - [`MongoStore::connect`] returns only after the server answered `hello`
//!   (with the credentials checked), so "unreachable", "malformed" and
//!   "wrong password" are told apart before anything else runs.
//! - Every request is bounded in time by the driver's server selection and
//!   connect timeouts ([`CONNECT_TIMEOUT`]); change streams use their own
//!   `maxAwaitTimeMS`.
//! - Pre-checks only read.

use crate::error::classify;
use crate::namespace::split_uri;
use crate::{
    MongoError, Namespace, NamespaceFilter, MAX_DOCUMENT_BYTES, MAX_MESSAGE_BYTES, MAX_WRITE_OPS,
};
use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, Document, Timestamp};
use mongodb::options::ClientOptions;
use mongodb::Client;
use std::sync::Arc;
use std::time::Duration;

/// How long finding a usable server may take before the store counts as
/// unreachable: a healthy replica set answers in milliseconds, an election
/// takes a few seconds.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What `hello` told about the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerInfo {
    pub version: String,
    /// The replica set name; `None` on a standalone server or mongos.
    pub set_name: Option<String>,
    /// True when connected to a mongos router.
    pub mongos: bool,
    pub max_document_bytes: usize,
    pub max_message_bytes: usize,
    pub max_write_ops: usize,
}

impl ServerInfo {
    /// Change streams need a replica set or a sharded cluster.
    pub fn has_change_streams(&self) -> bool {
        self.set_name.is_some() || self.mongos
    }

    /// The major version (`8` for `8.2.11`), 0 when unknown.
    pub fn major_version(&self) -> u32 {
        self.version
            .split('.')
            .next()
            .and_then(|m| m.parse().ok())
            .unwrap_or(0)
    }
}

/// The largest document of a namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LargestDocument {
    pub namespace: Namespace,
    /// The `_id` in a short human form.
    pub id: String,
    pub bytes: usize,
}

struct Inner {
    client: Client,
    name: String,
    filter: NamespaceFilter,
    info: ServerInfo,
}

/// One MongoDB deployment and the namespaces selected on it. Cheap to clone.
#[derive(Clone)]
pub struct MongoStore(Arc<Inner>);

impl MongoStore {
    /// Connects to a `mongodb://` URL (its `include`/`exclude` parameters
    /// select namespaces, see [`NamespaceFilter`]) and runs `hello`.
    pub async fn connect(url: &ferry_core::StoreUrl) -> Result<MongoStore, MongoError> {
        let ferry_core::StoreUrl::Mongo { database, .. } = url else {
            return Err(MongoError::MalformedUri {
                store: url.to_string(),
                reason: format!("it is a {} URL, not a MongoDB one", url.kind().name()),
            });
        };
        let name = url.to_string();
        let raw = url.secret().unwrap_or_default();
        let (uri, include, exclude) = split_uri(raw);
        let mut filter = NamespaceFilter::new(&include, &exclude);
        if include.is_empty() {
            if let Some(db) = database {
                filter = NamespaceFilter::new([format!("{db}.*")], &exclude);
            }
        }
        let mut opts = ClientOptions::parse(&uri)
            .await
            .map_err(|e| MongoError::MalformedUri {
                store: name.clone(),
                reason: driver_reason(&e),
            })?;
        opts.app_name = Some("ferry".into());
        opts.server_selection_timeout = Some(CONNECT_TIMEOUT);
        opts.connect_timeout.get_or_insert(CONNECT_TIMEOUT);
        let client = Client::with_options(opts).map_err(|e| MongoError::MalformedUri {
            store: name.clone(),
            reason: driver_reason(&e),
        })?;
        let hello = client
            .database("admin")
            .run_command(doc! {"hello": 1})
            .await
            .map_err(|e| classify(&name, "connecting", &e))?;
        let version = client
            .database("admin")
            .run_command(doc! {"buildInfo": 1})
            .await
            .ok()
            .and_then(|d| d.get_str("version").ok().map(str::to_string))
            .unwrap_or_default();
        let num = |k: &str, default: usize| -> usize {
            match hello.get(k) {
                Some(Bson::Int32(n)) => usize::try_from(*n).unwrap_or(default),
                Some(Bson::Int64(n)) => usize::try_from(*n).unwrap_or(default),
                Some(Bson::Double(n)) => *n as usize,
                _ => default,
            }
        };
        let info = ServerInfo {
            version,
            set_name: hello.get_str("setName").ok().map(str::to_string),
            mongos: hello.get_str("msg").is_ok_and(|m| m == "isdbgrid"),
            max_document_bytes: num("maxBsonObjectSize", MAX_DOCUMENT_BYTES),
            max_message_bytes: num("maxMessageSizeBytes", MAX_MESSAGE_BYTES),
            max_write_ops: num("maxWriteBatchSize", MAX_WRITE_OPS),
        };
        let store = MongoStore(Arc::new(Inner {
            client,
            name,
            filter,
            info,
        }));
        // `hello` needs no authentication; a cheap authenticated command
        // tells a wrong password apart now rather than mid-copy.
        store
            .client()
            .list_database_names()
            .authorized_databases(true)
            .await
            .map_err(|e| store.err("listing databases", &e))?;
        Ok(store)
    }

    /// The same connection with another namespace selection.
    pub fn with_filter(&self, filter: NamespaceFilter) -> MongoStore {
        MongoStore(Arc::new(Inner {
            client: self.0.client.clone(),
            name: self.0.name.clone(),
            filter,
            info: self.0.info.clone(),
        }))
    }

    /// The redacted URL: how every message names this store.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    pub fn filter(&self) -> &NamespaceFilter {
        &self.0.filter
    }

    pub fn info(&self) -> &ServerInfo {
        &self.0.info
    }

    /// The driver's client, for callers that need an operation this type
    /// does not wrap (tests, tools).
    pub fn client(&self) -> Client {
        self.0.client.clone()
    }

    pub(crate) fn err(&self, action: &str, e: &mongodb::error::Error) -> MongoError {
        classify(&self.0.name, action, e)
    }

    /// Refuses a server without change streams (a standalone `mongod`).
    pub fn check_change_streams(&self) -> Result<(), MongoError> {
        if self.0.info.has_change_streams() {
            Ok(())
        } else {
            Err(MongoError::NoChangeStreams {
                store: self.0.name.clone(),
            })
        }
    }

    /// Every selected namespace that exists now (collections, not views),
    /// sorted.
    pub async fn namespaces(&self) -> Result<Vec<Namespace>, MongoError> {
        let dbs = self
            .0
            .client
            .list_database_names()
            .authorized_databases(true)
            .await
            .map_err(|e| self.err("listing databases", &e))?;
        let mut out = Vec::new();
        for db in dbs {
            if !self.0.filter.may_select_db(&db) {
                continue;
            }
            let mut cursor = self
                .0
                .client
                .database(&db)
                .list_collections()
                .filter(doc! {"type": "collection"})
                .await
                .map_err(|e| self.err("listing collections", &e))?;
            while let Some(spec) = cursor
                .try_next()
                .await
                .map_err(|e| self.err("listing collections", &e))?
            {
                let ns = Namespace::new(db.clone(), spec.name);
                if self.0.filter.selects(&ns) {
                    out.push(ns);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// The selected namespaces, refusing a selection that matches nothing.
    pub async fn selected_namespaces(&self) -> Result<Vec<Namespace>, MongoError> {
        let ns = self.namespaces().await?;
        if ns.is_empty() {
            let mut names: Vec<String> = self
                .0
                .client
                .list_database_names()
                .await
                .unwrap_or_default()
                .into_iter()
                .filter(|d| !matches!(d.as_str(), "admin" | "local" | "config"))
                .collect();
            names.sort();
            let databases = match names.as_slice() {
                [] => "no database of its users".to_string(),
                [one] => format!("database {one}"),
                many => format!("databases {}", many.join(", ")),
            };
            return Err(MongoError::NothingSelected {
                store: self.0.name.clone(),
                include: self.0.filter.include_text(),
                exclude: self.0.filter.exclude_text(),
                databases,
            });
        }
        Ok(ns)
    }

    /// The exact number of documents in `ns`.
    pub async fn count(&self, ns: &Namespace) -> Result<u64, MongoError> {
        self.0
            .client
            .database(&ns.db)
            .collection::<Document>(&ns.coll)
            .count_documents(doc! {})
            .await
            .map_err(|e| self.err("counting documents", &e))
    }

    /// The collection's own estimate (metadata, no scan).
    pub async fn estimated_count(&self, ns: &Namespace) -> Result<u64, MongoError> {
        self.0
            .client
            .database(&ns.db)
            .collection::<Document>(&ns.coll)
            .estimated_document_count()
            .await
            .map_err(|e| self.err("estimating the document count", &e))
    }

    /// Refuses a target that holds documents in any of `namespaces`, unless
    /// `force`.
    pub async fn check_target_empty(
        &self,
        namespaces: &[Namespace],
        force: bool,
    ) -> Result<(), MongoError> {
        if force {
            return Ok(());
        }
        let (mut total, mut names) = (0u64, Vec::new());
        for ns in namespaces {
            let n = self.count(ns).await?;
            if n > 0 {
                total += n;
                if names.len() < 5 {
                    names.push(ns.to_string());
                }
            }
        }
        if total == 0 {
            return Ok(());
        }
        Err(MongoError::TargetNotEmpty {
            store: self.0.name.clone(),
            namespaces: names.join(", "),
            documents: total,
        })
    }

    /// The largest document of `ns` (a scan on the server, `$bsonSize`).
    pub async fn largest_document(
        &self,
        ns: &Namespace,
    ) -> Result<Option<LargestDocument>, MongoError> {
        let pipeline = [
            doc! {"$project": {"_id": 1, "s": {"$bsonSize": "$$ROOT"}}},
            doc! {"$sort": {"s": -1}},
            doc! {"$limit": 1},
        ];
        let mut cursor = self
            .0
            .client
            .database(&ns.db)
            .collection::<Document>(&ns.coll)
            .aggregate(pipeline)
            .await
            .map_err(|e| self.err("measuring document sizes", &e))?;
        let Some(d) = cursor
            .try_next()
            .await
            .map_err(|e| self.err("measuring document sizes", &e))?
        else {
            return Ok(None);
        };
        let bytes = match d.get("s") {
            Some(Bson::Int32(n)) => usize::try_from(*n).unwrap_or(0),
            Some(Bson::Int64(n)) => usize::try_from(*n).unwrap_or(0),
            _ => 0,
        };
        let id = d.get("_id").map_or("?".into(), |b| {
            b.to_string().chars().take(120).collect::<String>()
        });
        Ok(Some(LargestDocument {
            namespace: ns.clone(),
            id,
            bytes,
        }))
    }

    /// Refuses when a document of `namespaces` (on this source) is larger
    /// than `limit` bytes (the target's `maxBsonObjectSize`, see
    /// [`ServerInfo::max_document_bytes`]). `target` names the store in
    /// the error.
    pub async fn check_document_sizes(
        &self,
        namespaces: &[Namespace],
        target: &str,
        limit: usize,
    ) -> Result<(), MongoError> {
        for ns in namespaces {
            if let Some(big) = self.largest_document(ns).await? {
                if big.bytes > limit {
                    return Err(MongoError::DocumentTooLarge {
                        store: target.to_string(),
                        namespace: ns.to_string(),
                        id: big.id,
                        bytes: big.bytes,
                        limit,
                    });
                }
            }
        }
        Ok(())
    }

    /// The newest cluster time the server reports (`operationTime` of a
    /// `ping`), packed as a position order: `seconds << 32 | increment`.
    pub async fn head_position(&self) -> Result<u64, MongoError> {
        let r = self
            .0
            .client
            .database("admin")
            .run_command(doc! {"ping": 1})
            .await
            .map_err(|e| self.err("reading the cluster time", &e))?;
        match r.get("operationTime").or_else(|| {
            r.get_document("$clusterTime")
                .ok()
                .and_then(|c| c.get("clusterTime"))
        }) {
            Some(Bson::Timestamp(t)) => Ok(pack(*t)),
            _ => Err(MongoError::NoChangeStreams {
                store: self.0.name.clone(),
            }),
        }
    }
}

/// Every source pre-check `ferry start` runs, then the target's: change
/// streams, a selection that matches something, an empty target (unless
/// `force`), and no source document over the target's size limit. Returns
/// the selected namespaces.
pub async fn precheck(
    source: &MongoStore,
    target: &MongoStore,
    force: bool,
) -> Result<Vec<Namespace>, MongoError> {
    source.check_change_streams()?;
    let namespaces = source.selected_namespaces().await?;
    target.check_target_empty(&namespaces, force).await?;
    source
        .check_document_sizes(&namespaces, target.name(), target.info().max_document_bytes)
        .await?;
    Ok(namespaces)
}

/// A cluster time as a position order.
pub fn pack(t: Timestamp) -> u64 {
    (u64::from(t.time) << 32) | u64::from(t.increment)
}

/// A position order back as a cluster time.
pub fn unpack(order: u64) -> Timestamp {
    Timestamp {
        time: (order >> 32) as u32,
        increment: (order & 0xffff_ffff) as u32,
    }
}

fn driver_reason(e: &mongodb::error::Error) -> String {
    match e.kind.as_ref() {
        mongodb::error::ErrorKind::InvalidArgument { message, .. } => message.clone(),
        other => other.to_string(),
    }
    .lines()
    .next()
    .unwrap_or("")
    .chars()
    .take(200)
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_pack_in_order() {
        let a = Timestamp {
            time: 10,
            increment: 5,
        };
        let b = Timestamp {
            time: 11,
            increment: 0,
        };
        assert!(pack(a) < pack(b));
        assert_eq!(unpack(pack(a)), a);
    }
}
