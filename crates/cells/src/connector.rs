//! A Cells v4 home (`cells:///var/cells`) as a composite source: it
//! expands into routes of other connectors, each service's Bolt file to
//! the MongoDB target (mapped to the documents Cells reads, see
//! [`crate::map`]), `pydio.json` and `pydio-vault.json` to the etcd
//! target's `config` and `vault` keys, the keyring to the Vault target, and
//! `certs/` to the Vault mount `caddycerts`.

use crate::sink::{with_id, CellsSink};
use crate::{map, set_marker_ts, CellsHome, MapOptions, Prefixes, Service};
use ferry_bolt::{BoltTailer, FenceHandle};
use ferry_connect::check::line;
use ferry_connect::verify::{Comparison, DocumentsReader, MappedReader};
use ferry_connect::{
    async_trait, CheckContext, Connector, DataModel, Expansion, Fence, Opener, Options, Planned,
    ReadOnlyContext, ReadOnlyGuard, Reader, Refusal, Registry, SinkContext, Source, TailContext,
    Tailing, Target,
};
use ferry_core::{StoreKind, StoreUrl};
use ferry_mongo::connector::{refusal, MongoTarget};
use ferry_mongo::Namespace;
use ferry_replay::SharedSink;
use futures::TryStreamExt;
use mongodb::bson::{Bson, Document};
use std::any::Any;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The option naming collections (`--cells.prefixes`).
pub const PREFIXES_PARAM: &str = "cells.prefixes";

/// The values `--cells.prefixes` takes.
pub const PREFIXES: &[&str] = &["v4", "v4-early", "none"];

fn map_options(options: &Options) -> Result<MapOptions, String> {
    Ok(MapOptions {
        prefixes: match options.params.get(PREFIXES_PARAM) {
            Some(p) => p.parse().map_err(|e| format!("--cells.prefixes: {e}"))?,
            None => Prefixes::default(),
        },
    })
}

/// The database a Mongo URL names (`cells` when it names none, as Cells'
/// own default DSN does).
pub fn mongo_db(url: &StoreUrl) -> String {
    match url {
        StoreUrl::Mongo {
            database: Some(d), ..
        } if !d.is_empty() => d.clone(),
        _ => "cells".into(),
    }
}

pub struct CellsConnector;

impl Connector for CellsConnector {
    fn kind(&self) -> StoreKind {
        StoreKind::Cells
    }
    fn composite(&self) -> bool {
        true
    }
    fn source_model(&self) -> Option<DataModel> {
        None
    }
    fn target_models(&self) -> &'static [DataModel] {
        &[]
    }
    fn source(&self, url: &StoreUrl, _options: &Options) -> Result<Arc<dyn Source>, String> {
        Err(format!("{url}: a cells:// source stands alone: give it as the only --source, with a mongodb://, an etcd:// and a vault:// --target"))
    }
    fn target(&self, url: &StoreUrl, _options: &Options) -> Result<Arc<dyn Target>, String> {
        Err(format!("{url} cannot be a target: cells stores are read-only sources; choose etcd, vault, mongodb, kafka or a file as --target"))
    }
    fn expand(
        &self,
        url: &StoreUrl,
        targets: &[StoreUrl],
        registry: &Registry,
    ) -> Option<Result<Expansion, String>> {
        let StoreUrl::Cells { path } = url else {
            return None;
        };
        Some(expand(path, targets, registry))
    }
}

/// A Bolt file is read as part of its Cells home only.
pub struct BoltConnector;

impl Connector for BoltConnector {
    fn kind(&self) -> StoreKind {
        StoreKind::Bolt
    }
    fn source_model(&self) -> Option<DataModel> {
        None
    }
    fn target_models(&self) -> &'static [DataModel] {
        &[]
    }
    fn source(&self, url: &StoreUrl, _options: &Options) -> Result<Arc<dyn Source>, String> {
        Err(format!(
            "{url}: a Bolt file is read as part of its Cells home; give cells:///path/to/home as the source"
        ))
    }
    fn target(&self, url: &StoreUrl, _options: &Options) -> Result<Arc<dyn Target>, String> {
        Err(format!("{url} cannot be a target: bolt stores are read-only sources; choose etcd, vault, mongodb, kafka or a file as --target"))
    }
}

fn expand(home: &Path, targets: &[StoreUrl], registry: &Registry) -> Result<Expansion, String> {
    let opts = map_options(registry.options())?;
    let home = CellsHome::open(home).map_err(|e| e.to_string())?;
    if let [t @ StoreUrl::Kafka { .. }] = targets {
        return publish(&home, t, opts, registry);
    }
    let one = |kind: StoreKind| -> Result<&StoreUrl, String> {
        let mut of_kind = targets.iter().filter(|t| t.kind() == kind);
        match (of_kind.next(), of_kind.next()) {
            (Some(t), None) => Ok(t),
            (None, _) => Err(format!(
                "cells:// needs a {} target: give --target mongodb://… (the services' data), --target etcd://… (pydio.json and pydio-vault.json) and --target vault://… (the keyring)",
                kind.name()
            )),
            (Some(_), Some(_)) => Err(format!("cells:// takes one {} target, several given", kind.name())),
        }
    };
    if let Some(t) = targets.iter().find(|t| {
        !matches!(
            t.kind(),
            StoreKind::Mongo | StoreKind::Etcd | StoreKind::Vault
        )
    }) {
        return Err(format!(
            "{t}: a cells:// source goes to MongoDB, etcd and Vault targets only"
        ));
    }
    let (mongo, etcd, vault) = (
        one(StoreKind::Mongo)?,
        one(StoreKind::Etcd)?,
        one(StoreKind::Vault)?,
    );
    let (config_key, vault_key) = cells_etcd_keys(etcd)?;
    let keyring = cells_keyring_target(vault)?;
    let db = mongo_db(mongo);
    let mut routes = Vec::new();
    let mut services = Vec::new();
    for (service, path) in &home.bolts {
        services.push(service.name());
        routes.push(Planned {
            source: Arc::new(BoltSource::new(path, *service, opts, &db)),
            targets: vec![Arc::new(CellsTarget {
                inner: MongoTarget::new(mongo),
                service: *service,
                opts,
                db: db.clone(),
            })],
        });
    }
    let config_target = etcd.with_prefix(config_key);
    let vault_target = etcd.with_prefix(vault_key);
    for (file, target) in [
        (&home.config, &config_target),
        (&home.vault, &vault_target),
        (&home.keyring, &keyring),
    ] {
        routes.push(Planned {
            source: registry.source(&StoreUrl::File { path: file.clone() })?,
            targets: vec![registry.target(target)?],
        });
    }
    let mut steps = vec![
        format!("export CELLS_CONFIG={config_target}"),
        format!("export CELLS_VAULT={vault_target}"),
        format!("export CELLS_KEYRING={}", cells_keyring_url(&keyring)),
        format!(
            "point these services' storage at {mongo} (`cells admin config db add`; Ferry copied pydio.json unchanged): {}",
            services.join(", ")
        ),
        "rebuild the search and log indexes, which Ferry does not copy (Bleve files): cells admin resync --service pydio.grpc.search".into(),
    ];
    if let Some(certs) = &home.certs {
        let caddy = match vault.clone() {
            StoreUrl::Vault {
                tls,
                endpoint,
                token,
                ..
            } => StoreUrl::Vault {
                tls,
                endpoint,
                mount: "caddycerts".into(),
                path: String::new(),
                token,
                params: Default::default(),
            },
            other => other,
        };
        steps.insert(3, format!("export CELLS_CERTS_STORE={caddy}"));
        routes.push(Planned {
            source: registry.source(&StoreUrl::File {
                path: certs.clone(),
            })?,
            targets: vec![registry.target(&caddy)?],
        });
    }
    Ok(Expansion {
        routes,
        next_steps: steps,
    })
}

/// `topic` with `.suffix` appended: `kafka://b/cells` → `kafka://b/cells.config`.
fn topic_of(url: &StoreUrl, suffix: &str) -> StoreUrl {
    match url {
        StoreUrl::Kafka { topic, .. } => url.with_topic(format!("{topic}.{suffix}")),
        other => other.clone(),
    }
}

/// A Cells home published to Kafka: one topic per route, named after the
/// Cells service (`<topic>.pydio.grpc.docstore`, …) or the file
/// (`<topic>.config`, `.vault`, `.keyring`, `.certs`). Per route, because
/// each service's documents have their own collections and shapes, and a
/// consumer subscribes to the services it needs; and because each route
/// has its own shards, which each take one partition of their topic. The
/// files hold secrets: their routes are planned only when the Kafka target
/// takes them (`--kafka.publish-secrets`); otherwise the next steps say so.
fn publish(
    home: &CellsHome,
    kafka: &StoreUrl,
    opts: MapOptions,
    registry: &Registry,
) -> Result<Expansion, String> {
    let mut routes = Vec::new();
    let mut topics = Vec::new();
    let db = "cells".to_string();
    for (service, path) in &home.bolts {
        let topic = topic_of(kafka, service.name());
        topics.push(topic.to_string());
        routes.push(Planned {
            source: Arc::new(BoltSource::new(path, *service, opts, &db)),
            targets: vec![registry.target(&topic)?],
        });
    }
    let mut withheld = Vec::new();
    let mut files = vec![
        ("config", &home.config),
        ("vault", &home.vault),
        ("keyring", &home.keyring),
    ];
    if let Some(certs) = &home.certs {
        files.push(("certs", certs));
    }
    for (name, file) in files {
        let source = registry.source(&StoreUrl::File { path: file.clone() })?;
        let target = registry.target(&topic_of(kafka, name))?;
        match target.check_source(source.as_ref()) {
            Ok(()) => {
                topics.push(target.url().to_string());
                routes.push(Planned {
                    source,
                    targets: vec![target],
                });
            }
            Err(_) => withheld.push(file.display().to_string()),
        }
    }
    let mut next_steps = vec![format!(
        "consumers read each Cells service's documents, keyed by collection and _id, from: {}",
        topics.join(", ")
    )];
    if !withheld.is_empty() {
        next_steps.push(format!(
            "not published, because they hold secrets: {}; pass --kafka.publish-secrets to publish them too",
            withheld.join(", ")
        ));
    }
    Ok(Expansion { routes, next_steps })
}

/// A Cells service's Bolt file, mapped to the documents Cells reads.
pub struct BoltSource {
    url: StoreUrl,
    path: PathBuf,
    service: Service,
    opts: MapOptions,
    /// The target database (for verification).
    db: String,
}

impl BoltSource {
    fn new(path: &Path, service: Service, opts: MapOptions, db: &str) -> Self {
        BoltSource {
            url: StoreUrl::Bolt {
                path: path.to_path_buf(),
            },
            path: path.to_path_buf(),
            service,
            opts,
            db: db.to_string(),
        }
    }

    async fn head(&self) -> Result<ferry_bolt::Meta, String> {
        let p = self.path.clone();
        tokio::task::spawn_blocking(move || ferry_bolt::BoltFile::open(&p).and_then(|f| f.head()))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }
}

#[async_trait]
impl Source for BoltSource {
    fn url(&self) -> &StoreUrl {
        &self.url
    }
    fn model(&self) -> DataModel {
        DataModel::Documents
    }
    /// The document Cells reads, keyed by service, collection and `_id`;
    /// an entry with no document (a bucket) or one the mapping refuses
    /// shows its Bolt location and raw value. A marker's `timestamp` is
    /// the activity's `ts` on a MongoDB target only: the activity is its own
    /// record in the same topic.
    fn render(
        &self,
        key: &[u8],
        value: Option<&[u8]>,
        _meta: &ferry_core::StoreMeta,
    ) -> ferry_connect::Rendered {
        let service = self.service.name();
        let (buckets, key) = match ferry_bolt::decode_key(key) {
            Some(ferry_bolt::KeyRef::Value { buckets, key }) => (buckets, key),
            Some(ferry_bolt::KeyRef::Bucket { buckets, name }) => {
                return ferry_connect::Rendered {
                    key: serde_json::json!({ "service": service, "location": crate::map::location(&buckets, &name) }),
                    after: value.map(|_| serde_json::json!({ "bucket": true })),
                    created: None,
                }
            }
            None => (Vec::new(), key.to_vec()),
        };
        let (buckets, key) = (buckets.as_slice(), key.as_slice());
        match map(self.service, &self.opts, buckets, key, value) {
            Ok(Some(m)) => {
                let after = m
                    .doc
                    .map(|d| Bson::Document(with_id(&m.id, d)).into_relaxed_extjson());
                ferry_connect::Rendered {
                    key: serde_json::json!({ "service": service, "collection": m.collection, "id": m.id }),
                    after,
                    created: None,
                }
            }
            _ => ferry_connect::Rendered {
                key: serde_json::json!({ "service": service, "location": crate::map::location(buckets, key) }),
                after: value
                    .map(|v| serde_json::json!({ "value": ferry_connect::text_or_base64(v) })),
                created: None,
            },
        }
    }
    fn shards(&self, requested: u32) -> u32 {
        // Markers take the ts of the activity they point to: one shard
        // keeps every activity before the markers that follow it.
        if self.service == Service::Activity {
            1
        } else {
            requested.max(1)
        }
    }
    async fn connect(&self) -> Result<(), String> {
        self.head().await.map(drop)
    }
    async fn precheck(&self, _ctx: &CheckContext) -> Result<(), Refusal> {
        let head = self.head().await.map_err(Refusal::usage)?;
        line(
            "source",
            format!(
                "{} ({}): a Bolt file at transaction {}; read-only at cutover: its lock, which Ferry can only take once Cells has stopped",
                self.path.display(),
                self.service.name(),
                head.txid
            ),
        );
        Ok(())
    }
    fn tail(&self, ctx: &TailContext) -> Result<Tailing, String> {
        let t = BoltTailer::new(
            self.path.clone(),
            self.url.to_string(),
            ctx.span,
            ferry_bolt::TailerOptions {
                rate_limit: ctx.options.source_limiter.clone(),
                ..Default::default()
            },
        );
        Ok(Tailing {
            fence: Arc::new(BoltFence(t.fence_handle())),
            shared: Arc::new(()),
            tailer: ferry_connect::tailer(move |j, l, s| t.run(j, l, s)),
        })
    }
    fn reader(&self) -> Result<Reader, String> {
        Ok(Reader::Mapped(Arc::new(Mapping {
            path: self.path.clone(),
            service: self.service,
            opts: self.opts,
            db: self.db.clone(),
        })))
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// A Bolt file's fence: its lock taken (Cells' writers gone), then its txid.
struct BoltFence(FenceHandle);

#[async_trait]
impl Fence for BoltFence {
    /// Read-only once Ferry holds the file's lock, which it can only take
    /// once Cells has stopped writing it (with `external` too).
    async fn make_read_only(
        &self,
        _ctx: &ReadOnlyContext<'_>,
    ) -> Result<Option<Box<dyn ReadOnlyGuard>>, String> {
        self.0.make_read_only().map_err(|e| e.to_string())?;
        Ok(Some(Box::new(Lock(self.0.clone()))))
    }
    async fn fence(&self) -> Result<u64, String> {
        // The lock is taken by the read-only step; this reads the head.
        let txid = self.0.make_read_only().map_err(|e| e.to_string())?;
        self.0.fence(txid).await.map_err(|e| e.to_string())?;
        Ok(txid)
    }
    fn writes_after_fence(&self) -> Vec<(Vec<u8>, u64)> {
        self.0.writes_after_fence()
    }
}

struct Lock(FenceHandle);

#[async_trait]
impl ReadOnlyGuard for Lock {
    async fn undo(&self) {
        self.0.release();
    }
    fn keep(&self) {}
}

/// The MongoDB target of a Cells service: its collections, with the
/// indexes Cells declares, written by [`CellsSink`].
pub struct CellsTarget {
    inner: MongoTarget,
    service: Service,
    opts: MapOptions,
    db: String,
}

#[async_trait]
impl Target for CellsTarget {
    fn url(&self) -> &StoreUrl {
        self.inner.url()
    }
    fn accepts(&self) -> &'static [DataModel] {
        &[DataModel::Documents]
    }
    fn shared(&self) -> bool {
        true
    }
    async fn connect(&self) -> Result<(), String> {
        self.inner.connect().await
    }
    async fn precheck(&self, source: &dyn Source, ctx: &CheckContext) -> Result<(), Refusal> {
        let t = self.inner.url();
        let tgt = ferry_mongo::MongoStore::connect(t).await.map_err(refusal)?;
        let (service, opts, db) = (self.service, &self.opts, &self.db);
        let namespaces: Vec<Namespace> = service
            .collections(opts)
            .into_iter()
            .map(|c| Namespace::new(db.clone(), c))
            .collect();
        // A database written for a Cells of the other naming: a Cells
        // reads one set of names, so mixing them loses half the data.
        for (naming, coll) in opts.other_namings(service) {
            let ns = Namespace::new(db.clone(), coll);
            let n = tgt.estimated_count(&ns).await.map_err(refusal)?;
            if n > 0 {
                return Err(Refusal::refused(format!(
                    "{t}: {ns} holds {n} documents named as --cells.prefixes {} writes them, and this migration writes {} (--cells.prefixes {}); a Cells release reads one naming only, so migrate into another database, or choose the naming of the Cells that will read it with --cells.prefixes",
                    naming.as_str(),
                    namespaces.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
                    opts.prefixes.as_str()
                )));
            }
        }
        tgt.check_target_empty(&namespaces, ctx.force || ctx.resuming)
            .await
            .map_err(refusal)?;
        line(
            "target",
            format!(
                "{t}: reachable; {} empty; collection names as --cells.prefixes {} ({}), with the indexes Cells declares",
                namespaces
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
                opts.prefixes.as_str(),
                match opts.prefixes {
                    Prefixes::V4 => "later Cells v4; give --cells.prefixes v4-early for a release that names activity, chat and versions collections bare",
                    Prefixes::V4Early => "earlier Cells v4: activity, chat and versions bare",
                    Prefixes::None => "every collection bare",
                }
            ),
        );
        self.inner.protection_line(source, &tgt).await
    }
    fn sink(&self, ctx: &SinkContext<'_>) -> Result<SharedSink, String> {
        let Some(bolt) = ctx.source.as_any().downcast_ref::<BoltSource>() else {
            return Err(format!(
                "{}: a Cells mapping needs a Bolt source",
                ctx.source.url()
            ));
        };
        let sink = self.inner.sink_with(ferry_mongo::SinkOptions {
            catalog: Some(catalog(self.service, &self.opts, &self.db)),
            span: Some(ctx.span),
            journal_id: Some(ctx.journal_id.to_string()),
            ..Default::default()
        })?;
        Ok(SharedSink::new(CellsSink::new(
            sink,
            self.service,
            self.opts,
            self.db.clone(),
            bolt.path.clone(),
            ctx.span,
            Arc::clone(ctx.unmapped),
        )))
    }
    async fn protect(&self) -> Result<Option<Box<dyn Opener>>, String> {
        self.inner.protect().await
    }
    fn deployment(&self) -> Option<String> {
        self.inner.deployment()
    }
    fn reader(&self, source: &dyn Source) -> Result<Reader, String> {
        self.inner.reader(source)
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// A Bolt file's mapping, compared with the target's documents.
struct Mapping {
    path: PathBuf,
    service: Service,
    opts: MapOptions,
    db: String,
}

#[async_trait]
impl MappedReader for Mapping {
    async fn compare(&self, target: &Reader, target_name: &str) -> Result<Comparison, String> {
        let Reader::Documents(t) = target else {
            return Err(format!(
                "{}: a Cells service's Bolt file is compared with MongoDB documents, and {target_name} holds none",
                self.path.display()
            ));
        };
        compare(&self.path, self.service, &self.opts, t.as_ref(), &self.db).await
    }
}

/// What the Bolt file maps to, compared with the target's collections:
/// every expected document present and equal, no other document in the
/// service's collections, and each collection's indexes those Cells
/// declares. Entries the mapping refuses are listed in
/// [`Comparison::unmapped`], not counted as differences.
async fn compare(
    path: &Path,
    service: Service,
    opts: &MapOptions,
    target: &dyn DocumentsReader,
    db: &str,
) -> Result<Comparison, String> {
    let p = path.to_path_buf();
    let entries = tokio::task::spawn_blocking(move || {
        ferry_bolt::BoltFile::open(&p).and_then(|f| f.read_all())
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?
    .1;
    let mut out = Comparison::default();
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
            Err(err) => out.unmapped.push(crate::sink::unmapped_entry(&err)),
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
    for coll in &collections {
        let expected = want.get(coll).unwrap_or(&none);
        let ns = Namespace::new(db.to_string(), coll.clone());
        let mut docs = target.scan(&ns).await?;
        let mut seen = BTreeSet::new();
        while let Some(raw) = docs.try_next().await? {
            let d: Document = raw
                .to_document()
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
        let have = target.indexes(&ns).await?;
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
