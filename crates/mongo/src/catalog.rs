//! Collection options and indexes: read from the source, made on the target.
//!
//! Order, and why:
//! 1. **Before any data** ([`Catalog::create_on`] with
//!    [`IndexStage::BeforeData`], run by the sink's startup): every
//!    collection with its options (capped size, validator, collation, …)
//!    and every *plain* secondary index. Options must exist before the
//!    first insert (a capped or clustered collection cannot be converted
//!    afterwards); plain indexes cost the copy little on the servers
//!    measured (see the README figures) and make a standby usable at once.
//! 2. **Once the target holds the source's final state**
//!    ([`IndexStage::AfterFence`], run by the cutover after every shard
//!    applied the fence): unique indexes and TTL indexes.
//!
//! Unique indexes cannot come earlier: shards apply in parallel, each in
//! its own order, so the target passes through states the source never had.
//! A document D1 in shard 1 may release a unique value before D2 in shard 2
//! takes it on the source, while on the target shard 2 runs first; with the
//! unique index present the insert fails and, if D1 later leaves that value
//! for good only at the source, it never succeeds. Without the index every
//! write succeeds, and after the fence the target equals the source, which
//! satisfies every unique constraint, so the build succeeds. TTL indexes
//! would delete documents on the target on their own clock and make the
//! copies differ, so they wait too.
//!
//! Every step is idempotent: an existing collection or an identical
//! existing index is fine; an index with the same name but another
//! definition is an error naming both.

use crate::error::code;
use crate::{MongoError, MongoStore, Namespace};
use mongodb::bson::{doc, Bson, Document};

/// When an index may be built on the target (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IndexStage {
    /// Collections, options and plain secondary indexes.
    BeforeData,
    /// Unique and TTL indexes.
    AfterFence,
}

/// One collection's options and indexes (without the `_id` index).
#[derive(Clone, Debug, PartialEq)]
pub struct CollectionSpec {
    pub namespace: Namespace,
    /// `listCollections` options, as `createCollection` takes them.
    pub options: Document,
    /// `listIndexes` entries without `v` and `ns`, `_id_` left out.
    pub indexes: Vec<Document>,
}

impl CollectionSpec {
    /// The stage at which `index` is built.
    pub fn stage_of(index: &Document) -> IndexStage {
        let unique = matches!(index.get("unique"), Some(Bson::Boolean(true)));
        if unique || index.contains_key("expireAfterSeconds") {
            IndexStage::AfterFence
        } else {
            IndexStage::BeforeData
        }
    }
}

/// The collections of a selection, with options and indexes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Catalog {
    pub collections: Vec<CollectionSpec>,
}

impl Catalog {
    /// Reads options and indexes of `namespaces` on `store`.
    pub async fn read(store: &MongoStore, namespaces: &[Namespace]) -> Result<Catalog, MongoError> {
        let mut collections = Vec::with_capacity(namespaces.len());
        for ns in namespaces {
            let db = store.client().database(&ns.db);
            // The raw command, not the typed helper: options the driver
            // does not model must survive the copy too.
            let r = db
                .run_command(doc! {"listCollections": 1, "filter": {"name": &ns.coll}})
                .await
                .map_err(|e| store.err("reading collection options", &e))?;
            let Some(Bson::Document(spec)) = first_batch(&r).into_iter().next() else {
                continue; // dropped meanwhile
            };
            let options = spec.get_document("options").cloned().unwrap_or_default();
            let options = clean_options(options);
            let indexes = read_indexes(store, ns).await?;
            collections.push(CollectionSpec {
                namespace: ns.clone(),
                options,
                indexes,
            });
        }
        Ok(Catalog { collections })
    }

    pub fn namespaces(&self) -> Vec<Namespace> {
        self.collections
            .iter()
            .map(|c| c.namespace.clone())
            .collect()
    }

    /// Makes collections and the indexes of `stage` on `target`.
    pub async fn create_on(
        &self,
        target: &MongoStore,
        stage: IndexStage,
    ) -> Result<(), MongoError> {
        for c in &self.collections {
            let db = target.client().database(&c.namespace.db);
            if stage == IndexStage::BeforeData {
                let mut cmd = doc! {"create": &c.namespace.coll};
                cmd.extend(c.options.clone());
                match db.run_command(cmd).await {
                    Ok(_) => {}
                    Err(e) if crate::error::error_code(&e) == Some(code::NAMESPACE_EXISTS) => {}
                    Err(e) => {
                        return Err(target.err(&format!("creating collection {}", c.namespace), &e))
                    }
                }
            }
            let wanted: Vec<Document> = c
                .indexes
                .iter()
                .filter(|i| CollectionSpec::stage_of(i) == stage)
                .cloned()
                .collect();
            if wanted.is_empty() {
                continue;
            }
            let cmd = doc! {"createIndexes": &c.namespace.coll, "indexes": wanted};
            if let Err(e) = db.run_command(cmd).await {
                let what = match crate::error::error_code(&e) {
                    Some(code::INDEX_OPTIONS_CONFLICT | code::INDEX_KEY_SPECS_CONFLICT) => {
                        return Err(MongoError::Server {
                            store: target.name().to_string(),
                            action: format!("creating the indexes of {}", c.namespace),
                            detail: "an index of the same name or keys with another definition already exists on the target; drop it there".into(),
                            kind: ferry_core::ErrorKind::Permanent,
                        })
                    }
                    Some(code::DUPLICATE_KEY) => "building a unique index (the target holds duplicate values: is the source drained to the fence?)",
                    _ => "creating indexes",
                };
                return Err(target.err(&format!("{what} on {}", c.namespace), &e));
            }
        }
        Ok(())
    }
}

/// The indexes of `ns` on `store` (no `_id_`), normalised for comparison
/// and for `createIndexes`.
pub async fn read_indexes(store: &MongoStore, ns: &Namespace) -> Result<Vec<Document>, MongoError> {
    let db = store.client().database(&ns.db);
    let r = match db.run_command(doc! {"listIndexes": &ns.coll}).await {
        Ok(r) => r,
        Err(e) if crate::error::error_code(&e) == Some(code::NAMESPACE_NOT_FOUND) => {
            return Ok(Vec::new())
        }
        Err(e) => return Err(store.err("listing indexes", &e)),
    };
    let mut out = Vec::new();
    for b in first_batch(&r) {
        let Bson::Document(mut d) = b else { continue };
        d.remove("v");
        d.remove("ns");
        d.remove("background");
        if d.get_str("name").is_ok_and(|n| n == "_id_") {
            continue;
        }
        out.push(d);
    }
    out.sort_by(|a, b| {
        a.get_str("name")
            .unwrap_or("")
            .cmp(b.get_str("name").unwrap_or(""))
    });
    Ok(out)
}

/// `cursor.firstBatch` of a command reply (a collection has at most 64
/// indexes and one name matches one collection: one batch holds them).
fn first_batch(r: &Document) -> Vec<Bson> {
    r.get_document("cursor")
        .ok()
        .and_then(|c| c.get_array("firstBatch").ok())
        .cloned()
        .unwrap_or_default()
}

/// Options `createCollection` accepts back (drops read-only bits).
fn clean_options(mut o: Document) -> Document {
    for k in ["uuid", "readOnly", "idIndex"] {
        o.remove(k);
    }
    o
}
