//! Routes: which source feeds which targets, over which shards.
//!
//! `ferry start` takes `--source` and `--target` lists. One source feeds
//! every target; otherwise sources and targets pair up in the order given
//! (`--source A --source B --target A' --target B'`). Each route gets its
//! own span of the journal's shards (a JSON document needs one; etcd and
//! Vault get `--shards`), so every source keeps its own order, checkpoint
//! and fence in one journal.
//!
//! What can go where (checked before anything is written):
//!
//! | source | targets |
//! |---|---|
//! | etcd prefix | etcd prefix |
//! | JSON file | etcd key (the whole document, or one key per leaf with `?withKeys=true`), JSON file, Vault secret |
//! | Vault KV v2 path | Vault KV v2 path (every version) |
//! | MongoDB (namespaces selected by `?include=`/`?exclude=`) | MongoDB |
//! | `cells:///home` | a `mongodb://` (each service's Bolt file, mapped to Cells' documents), an `etcd://` (`pydio.json` at `config`, `pydio-vault.json` at `vault`) and a `vault://` (the keyring) target |

use crate::cells::CellsSink;
use crate::sinks::{SinkKind, TargetSink};
use ferry_bolt::BoltTailer;
use ferry_cells::{CellsHome, MapOptions, Service};
use ferry_core::{ShardSpan, StoreKind, StoreUrl};
use ferry_etcd::{EtcdSink, EtcdStore, EtcdTailer, FenceHandle, TailerOptions};
use ferry_file::pipeline::{FileSink, FileTailer};
use ferry_journal::seal::SealKey;
use ferry_journal::Journal;
use ferry_lag::LagTracker;
use ferry_mongo::{MongoSink, MongoStore, MongoTailer};
use ferry_replay::{PollFence, RateLimiter, Shutdown};
use ferry_vault::pipeline::{VaultSink, VaultTailer};
use ferry_vault::VaultStore;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The key file sealing secret values in the journal, in the journal dir.
pub const SEAL_KEY_FILE: &str = "journal.key";

/// One source and the targets it feeds.
#[derive(Clone)]
pub struct Route {
    pub source: StoreUrl,
    pub targets: Vec<StoreUrl>,
    pub span: ShardSpan,
    /// A Cells service's Bolt file: how its entries map to Mongo documents.
    pub mapping: Option<Service>,
    /// Collection naming of that mapping (`--cells.prefixes`).
    pub map_opts: MapOptions,
}

fn with_keys(url: &StoreUrl) -> bool {
    matches!(url, StoreUrl::Etcd { params, .. } if params.get("withKeys").map(String::as_str) == Some("true"))
}

/// Whether `source` can feed `target`, in one sentence if not.
pub fn check_pair(source: &StoreUrl, target: &StoreUrl) -> Result<(), String> {
    use StoreKind as K;
    if source.kind() == K::Bolt {
        return Err(format!(
            "{source}: a Bolt file is read as part of its Cells home; give cells:///path/to/home as the source"
        ));
    }
    let ok = matches!(
        (source.kind(), target.kind()),
        (K::Etcd, K::Etcd)
            | (K::File, K::Etcd | K::File | K::Vault)
            | (K::Vault, K::Vault)
            | (K::Mongo, K::Mongo)
    );
    if !ok {
        return Err(format!(
            "{source} cannot feed {target}: this build moves etcd to etcd, a JSON file to etcd, a file or Vault, Vault to Vault, MongoDB to MongoDB, and a Cells home to MongoDB, etcd and Vault"
        ));
    }
    if source.kind() == K::File && target.kind() == K::File && with_keys(target) {
        return Err(format!("{target}: withKeys applies to etcd targets only"));
    }
    if let StoreUrl::Etcd { prefix, .. } = target {
        if prefix.is_empty() {
            return Err(format!(
                "{target} names no key prefix; give one, e.g. etcd://127.0.0.1:2379/config"
            ));
        }
    }
    let is_dir = matches!(source, StoreUrl::File { path } if path.is_dir());
    if is_dir && target.kind() != K::Vault {
        return Err(format!(
            "{source} is a directory: it goes to a Vault mount (as Cells' certs/ to caddycerts)"
        ));
    }
    if let StoreUrl::Vault { path, params, .. } = target {
        if path.is_empty() && !params.contains_key("key") && source.kind() == K::File && !is_dir {
            return Err(format!(
                "{target} names no secret under its mount; e.g. vault://127.0.0.1:8200/secret/cells/keyring"
            ));
        }
    }
    Ok(())
}

/// A source, its targets, and the mapping of a Cells service's Bolt file.
type Pair = (StoreUrl, Vec<StoreUrl>, Option<Service>);

/// Pairs sources with targets; see the module doc.
pub fn plan(sources: &[StoreUrl], targets: &[StoreUrl], shards: u32) -> Result<Vec<Route>, String> {
    plan_with(sources, targets, shards, MapOptions::default())
}

/// [`plan`] with the Cells mapping's options.
pub fn plan_with(
    sources: &[StoreUrl],
    targets: &[StoreUrl],
    shards: u32,
    map_opts: MapOptions,
) -> Result<Vec<Route>, String> {
    if sources.is_empty() || targets.is_empty() {
        return Err("give at least one --source and one --target".into());
    }
    let mut pairs: Vec<Pair> = Vec::new();
    if let [StoreUrl::Cells { path }] = sources {
        pairs = expand_cells(path, targets)?;
    } else if sources.iter().any(|s| s.kind() == StoreKind::Cells) {
        return Err("a cells:// source stands alone: give it as the only --source, with a mongodb://, an etcd:// and a vault:// --target".into());
    } else if sources.len() == 1 {
        pairs.push((sources[0].clone(), targets.to_vec(), None));
    } else if sources.len() == targets.len() {
        pairs.extend(
            sources
                .iter()
                .cloned()
                .zip(targets.iter().map(|t| vec![t.clone()]))
                .map(|(s, t)| (s, t, None)),
        );
    } else {
        return Err(format!(
            "{} sources and {} targets: give one source for any number of targets, or as many targets as sources (paired in order)",
            sources.len(),
            targets.len()
        ));
    }
    let mut first = 0u32;
    let mut routes = Vec::new();
    for (source, targets, mapping) in pairs {
        for t in &targets {
            if mapping.is_none() {
                check_pair(&source, t)?;
            }
            if t.to_string() == source.to_string() {
                return Err(format!(
                    "{t} is both a source and a target; give the target a different store or prefix"
                ));
            }
        }
        let count = match (source.kind(), mapping) {
            (StoreKind::File, _) => 1,
            // Markers take the ts of the activity they point to: one shard
            // keeps every activity before the markers that follow it.
            (_, Some(Service::Activity)) => 1,
            _ => shards.max(1),
        };
        routes.push(Route {
            source,
            targets,
            span: ShardSpan { first, count },
            mapping,
            map_opts,
        });
        first += count;
    }
    // Routes may share a Mongo target (the Cells services do): their
    // shards differ, so do their checkpoints. Other targets are one route's.
    let mut names: Vec<String> = routes
        .iter()
        .flat_map(|r| r.targets.iter())
        .filter(|t| t.kind() != StoreKind::Mongo)
        .map(ToString::to_string)
        .collect();
    names.sort();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        return Err(format!(
            "{} is the target of two sources; give each source its own target",
            w[0]
        ));
    }
    Ok(routes)
}

/// `cells:///home` with its targets, as routes: each service's Bolt file to
/// the MongoDB target, `pydio.json` and `pydio-vault.json` to the etcd
/// target's `config` and `vault` keys, the keyring to the Vault target.
fn expand_cells(home: &Path, targets: &[StoreUrl]) -> Result<Vec<Pair>, String> {
    let home = CellsHome::open(home).map_err(|e| e.to_string())?;
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
    let (config_key, vault_key) = crate::cells::cells_etcd_keys(etcd)?;
    let with_prefix = |prefix: String| match etcd.clone() {
        StoreUrl::Etcd {
            tls,
            endpoints,
            user,
            password,
            params,
            ..
        } => StoreUrl::Etcd {
            tls,
            endpoints,
            prefix,
            user,
            password,
            params,
        },
        other => other,
    };
    let keyring = crate::cells::cells_keyring_target(vault)?;
    let mut out = Vec::new();
    for (service, path) in &home.bolts {
        out.push((
            StoreUrl::Bolt { path: path.clone() },
            vec![mongo.clone()],
            Some(*service),
        ));
    }
    out.push((
        StoreUrl::File {
            path: home.config.clone(),
        },
        vec![with_prefix(config_key)],
        None,
    ));
    out.push((
        StoreUrl::File {
            path: home.vault.clone(),
        },
        vec![with_prefix(vault_key)],
        None,
    ));
    out.push((
        StoreUrl::File {
            path: home.keyring.clone(),
        },
        vec![keyring],
        None,
    ));
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
        out.push((
            StoreUrl::File {
                path: certs.clone(),
            },
            vec![caddy],
            None,
        ));
    }
    Ok(out)
}

/// The total shard count of a plan.
pub fn shard_count(routes: &[Route]) -> u32 {
    routes.iter().map(|r| r.span.count).sum()
}

/// The key sealing secrets in the journal at `dir` (created 0600 on first use).
pub fn seal_key(dir: &Path) -> Result<Arc<SealKey>, String> {
    SealKey::load_or_create(&dir.join(SEAL_KEY_FILE))
        .map(Arc::new)
        .map_err(|e| e.to_string())
}

/// A connected source.
#[derive(Clone)]
pub enum SourceConn {
    Etcd(EtcdStore),
    File(PathBuf),
    Vault(Arc<VaultStore>),
    Mongo(MongoStore),
    Bolt(PathBuf),
    /// A directory of files (Cells' `certs/`).
    Dir(PathBuf),
}

/// A connected target.
#[derive(Clone)]
pub enum TargetConn {
    Etcd(EtcdStore),
    File(PathBuf),
    Vault(Arc<VaultStore>),
    Mongo(MongoStore),
}

fn file_path(url: &StoreUrl) -> Option<PathBuf> {
    match url {
        StoreUrl::File { path } => Some(path.clone()),
        _ => None,
    }
}

impl SourceConn {
    pub async fn connect(url: &StoreUrl) -> Result<SourceConn, String> {
        match url.kind() {
            StoreKind::Etcd => EtcdStore::connect(url)
                .await
                .map(SourceConn::Etcd)
                .map_err(|e| e.to_string()),
            StoreKind::File if file_path(url).is_some_and(|p| p.is_dir()) => {
                let path = file_path(url).expect("file URL");
                ferry_file::dir::list(&path).map_err(|e| e.to_string())?;
                Ok(SourceConn::Dir(path))
            }
            StoreKind::File => {
                let path = file_path(url).expect("file URL");
                ferry_file::read_settled(&path, ferry_file::DEFAULT_SETTLE)
                    .map_err(|e| e.to_string())?;
                Ok(SourceConn::File(path))
            }
            StoreKind::Vault => VaultStore::connect(url)
                .await
                .map(|s| SourceConn::Vault(Arc::new(s)))
                .map_err(|e| e.to_string()),
            StoreKind::Mongo => MongoStore::connect(url)
                .await
                .map(SourceConn::Mongo)
                .map_err(|e| e.to_string()),
            StoreKind::Bolt => {
                let StoreUrl::Bolt { path } = url else {
                    unreachable!("bolt kind")
                };
                let p = path.clone();
                tokio::task::spawn_blocking(move || {
                    ferry_bolt::BoltFile::open(&p).and_then(|f| f.head())
                })
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
                Ok(SourceConn::Bolt(path.clone()))
            }
            other => Err(format!(
                "{url}: {} sources arrive with a later release",
                other.name()
            )),
        }
    }

    pub fn etcd(&self) -> Option<&EtcdStore> {
        match self {
            SourceConn::Etcd(s) => Some(s),
            _ => None,
        }
    }
}

impl TargetConn {
    pub async fn connect(url: &StoreUrl) -> Result<TargetConn, String> {
        match url.kind() {
            StoreKind::Etcd => EtcdStore::connect(url)
                .await
                .map(TargetConn::Etcd)
                .map_err(|e| e.to_string()),
            StoreKind::File => Ok(TargetConn::File(file_path(url).expect("file URL"))),
            StoreKind::Vault => VaultStore::connect(url)
                .await
                .map(|s| TargetConn::Vault(Arc::new(s)))
                .map_err(|e| e.to_string()),
            StoreKind::Mongo => MongoStore::connect(url)
                .await
                .map(TargetConn::Mongo)
                .map_err(|e| e.to_string()),
            other => Err(format!(
                "{url}: {} targets arrive with a later release",
                other.name()
            )),
        }
    }
}

/// A route's tailer, ready to run.
pub enum Tailer {
    Etcd(Box<EtcdTailer>),
    File(FileTailer),
    Vault(VaultTailer),
    Mongo(Box<MongoTailer>),
    Bolt(Box<BoltTailer>),
    Dir(ferry_file::dir::DirTailer),
}

/// How the cutover fences a route's source.
#[derive(Clone)]
pub enum Fence {
    /// Wait for the tailer to see the source's head revision.
    Etcd {
        handle: FenceHandle,
        store: EtcdStore,
    },
    /// Ask the polling tailer for one more complete look.
    Poll(PollFence),
    /// Wait for the tailer to see the cluster time read after the switch.
    Mongo {
        handle: ferry_mongo::FenceHandle,
        store: MongoStore,
    },
    /// The file's lock taken (Cells' writers gone), then its txid.
    Bolt(ferry_bolt::FenceHandle),
}

impl Fence {
    /// Journals a fence marker in every shard of the route once the
    /// tailer has everything the (read-only) source holds; returns the
    /// fence position.
    pub async fn fence(&self) -> Result<u64, String> {
        match self {
            Fence::Etcd { handle, store } => {
                let rev = store.head_revision().await.map_err(|e| e.to_string())?;
                handle.fence(rev).await.map_err(|e| e.to_string())?;
                Ok(u64::try_from(rev).unwrap_or(0))
            }
            Fence::Poll(p) => p.fence().await,
            Fence::Mongo { handle, store } => {
                let at = store.head_position().await.map_err(|e| e.to_string())?;
                handle.fence(at).await.map_err(|e| e.to_string())?;
                Ok(at)
            }
            Fence::Bolt(h) => {
                // The lock is taken by the read-only step; this reads the head.
                let txid = h.make_read_only().map_err(|e| e.to_string())?;
                h.fence(txid).await.map_err(|e| e.to_string())?;
                Ok(txid)
            }
        }
    }

    /// Changes seen on the source after the fence: (key, position).
    pub fn writes_after_fence(&self) -> Vec<(Vec<u8>, u64)> {
        match self {
            Fence::Etcd { handle, .. } => handle
                .writes_after_fence()
                .into_iter()
                .map(|(k, r)| (k, u64::try_from(r).unwrap_or(0)))
                .collect(),
            Fence::Poll(p) => p.writes_after_fence(),
            Fence::Mongo { handle, .. } => handle
                .writes_after_fence()
                .into_iter()
                .map(|w| (format!("{} {}", w.namespace, w.id).into_bytes(), w.position))
                .collect(),
            Fence::Bolt(h) => h.writes_after_fence(),
        }
    }
}

/// What a route needs at run time.
pub struct Built {
    pub tailer: Tailer,
    pub fence: Fence,
    pub sinks: Vec<Arc<TargetSink>>,
}

/// Options shared by every route's tailer.
#[derive(Clone)]
pub struct BuildOptions {
    pub resnapshot_on_compaction: bool,
    pub source_limiter: Option<Arc<RateLimiter>>,
    pub journal_id: String,
    pub seal: Arc<SealKey>,
    pub vault_poll: std::time::Duration,
    /// For a MongoDB source: its collections' options and indexes.
    pub mongo_catalog: Option<ferry_mongo::Catalog>,
    /// Where the Cells sinks record the Bolt entries they cannot map.
    pub unmapped: Arc<crate::cells::Unmapped>,
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

/// Builds a route's tailer, fence and sinks over connected stores.
pub fn build(
    route: &Route,
    source: &SourceConn,
    targets: &[TargetConn],
    o: &BuildOptions,
) -> Result<Built, String> {
    let name = route.source.to_string();
    let (tailer, fence, liveness, source_prefix) = match source {
        SourceConn::Etcd(store) => {
            let t = EtcdTailer::new(
                store.clone(),
                name,
                route.span,
                TailerOptions {
                    resnapshot_on_compaction: o.resnapshot_on_compaction,
                    rate_limit: o.source_limiter.clone(),
                    ..TailerOptions::default()
                },
            );
            let fence = Fence::Etcd {
                handle: t.fence_handle(),
                store: store.clone(),
            };
            let live = Some(t.liveness());
            let prefix = String::from_utf8_lossy(store.prefix()).into_owned();
            (Tailer::Etcd(Box::new(t)), fence, live, prefix)
        }
        SourceConn::File(path) => {
            let t = FileTailer::new(
                path.clone(),
                name,
                route.span,
                ferry_file::pipeline::TailerOptions {
                    with_keys: route.targets.iter().any(with_keys),
                    ..Default::default()
                },
                Arc::clone(&o.seal),
            );
            let fence = Fence::Poll(t.fence_handle());
            (Tailer::File(t), fence, None, String::new())
        }
        SourceConn::Vault(store) => {
            let t = VaultTailer::new(
                (**store).clone(),
                name,
                route.span,
                ferry_vault::pipeline::TailerOptions {
                    poll_interval: o.vault_poll,
                    ..Default::default()
                },
                Arc::clone(&o.seal),
            );
            let fence = Fence::Poll(t.fence_handle());
            (Tailer::Vault(t), fence, None, String::new())
        }
        SourceConn::Mongo(store) => {
            let t = MongoTailer::new(
                store.clone(),
                name,
                route.span,
                ferry_mongo::TailerOptions::default(),
            );
            let fence = Fence::Mongo {
                handle: t.fence_handle(),
                store: store.clone(),
            };
            (Tailer::Mongo(Box::new(t)), fence, None, String::new())
        }
        SourceConn::Dir(path) => {
            let t = ferry_file::dir::DirTailer::new(
                path.clone(),
                name,
                route.span,
                Arc::clone(&o.seal),
            );
            let fence = Fence::Poll(t.fence_handle());
            (Tailer::Dir(t), fence, None, String::new())
        }
        SourceConn::Bolt(path) => {
            let t = BoltTailer::new(
                path.clone(),
                name,
                route.span,
                ferry_bolt::TailerOptions {
                    rate_limit: o.source_limiter.clone(),
                    ..Default::default()
                },
            );
            let fence = Fence::Bolt(t.fence_handle());
            (Tailer::Bolt(Box::new(t)), fence, None, String::new())
        }
    };
    let mut sinks = Vec::new();
    for (url, conn) in route.targets.iter().zip(targets) {
        let name = url.to_string();
        let kind = match conn {
            TargetConn::Etcd(store) => SinkKind::Etcd(
                EtcdSink::new(
                    store.clone(),
                    source_prefix.clone(),
                    name,
                    route.span,
                    liveness.clone(),
                )
                .with_journal_id(o.journal_id.clone()),
            ),
            TargetConn::File(path) => SinkKind::File(FileSink::new(path.clone(), name)),
            TargetConn::Vault(store) => SinkKind::Vault(VaultSink::new((**store).clone(), name)),
            TargetConn::Mongo(store) => {
                let sweep_source = match source {
                    SourceConn::Mongo(s) => Some(s.clone()),
                    _ => None,
                };
                let sink = MongoSink::new(
                    store.clone(),
                    name,
                    ferry_mongo::SinkOptions {
                        catalog: o.mongo_catalog.clone(),
                        sweep_source,
                        span: Some(route.span),
                        journal_id: Some(o.journal_id.clone()),
                        ..Default::default()
                    },
                );
                match route.mapping {
                    Some(service) => {
                        let SourceConn::Bolt(path) = source else {
                            return Err(format!(
                                "{}: a Cells mapping needs a Bolt source",
                                route.source
                            ));
                        };
                        let db = mongo_db(url);
                        let sink = MongoSink::new(
                            store.clone(),
                            url.to_string(),
                            ferry_mongo::SinkOptions {
                                catalog: Some(crate::cells::catalog(service, &route.map_opts, &db)),
                                span: Some(route.span),
                                journal_id: Some(o.journal_id.clone()),
                                ..Default::default()
                            },
                        );
                        SinkKind::Cells(CellsSink::new(
                            sink,
                            service,
                            route.map_opts,
                            db,
                            path.clone(),
                            route.span,
                            Arc::clone(&o.unmapped),
                        ))
                    }
                    None => SinkKind::Mongo(sink),
                }
            }
        };
        sinks.push(Arc::new(TargetSink::new(kind, Arc::clone(&o.seal))));
    }
    Ok(Built {
        tailer,
        fence,
        sinks,
    })
}

impl Tailer {
    pub async fn run<J: Journal>(
        self,
        journal: Arc<J>,
        lag: Arc<LagTracker>,
        shutdown: Shutdown,
    ) -> Result<(), String> {
        match self {
            Tailer::Etcd(t) => t
                .run(journal, lag, shutdown)
                .await
                .map_err(|e| e.to_string()),
            Tailer::File(t) => t
                .run(journal, lag, shutdown)
                .await
                .map_err(|e| e.to_string()),
            Tailer::Vault(t) => t
                .run(journal, lag, shutdown)
                .await
                .map_err(|e| e.to_string()),
            Tailer::Mongo(t) => t
                .run(journal, lag, shutdown)
                .await
                .map_err(|e| e.to_string()),
            Tailer::Bolt(t) => t
                .run(journal, lag, shutdown)
                .await
                .map_err(|e| e.to_string()),
            Tailer::Dir(t) => t
                .run(journal, lag, shutdown)
                .await
                .map_err(|e| e.to_string()),
        }
    }
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
    pub unmapped: Vec<ferry_cells::MapError>,
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

/// Compares a source with a target the way the route copies it.
pub async fn compare(
    source_url: &StoreUrl,
    source: &SourceConn,
    target_url: &StoreUrl,
    target: &TargetConn,
    mapping: Option<(Service, MapOptions)>,
    ttl_tolerance_s: i64,
) -> Result<Comparison, String> {
    match (source, target) {
        (SourceConn::Bolt(path), TargetConn::Mongo(t)) => {
            let (service, opts) = mapping.ok_or_else(|| format!("{source_url}: a Bolt file is compared through its Cells home"))?;
            crate::cells::compare(path, service, &opts, t, &mongo_db(target_url)).await
        }
        (SourceConn::Mongo(s), TargetConn::Mongo(t)) => {
            let namespaces = s.selected_namespaces().await.map_err(|e| e.to_string())?;
            let r = ferry_mongo::verify::compare(s, t, &namespaces)
                .await
                .map_err(|e| e.to_string())?;
            let mut c = Comparison {
                compared: r.source_documents(),
                ..Default::default()
            };
            for d in &r.differences {
                c.note(format!("{d:?}"));
            }
            for ns in &r.namespaces {
                for i in &ns.index_differences {
                    c.note(format!("{}: index {i}", ns.namespace));
                }
                if ns.source_documents != ns.target_documents && r.differences.is_empty() {
                    c.note(format!("{}: {} documents on the source, {} on the target", ns.namespace, ns.source_documents, ns.target_documents));
                }
            }
            c.summary = format!(
                "compared {} namespaces ({} source documents) of {source_url} with {target_url} by content digests, indexes included: {} differences",
                r.namespaces.len(),
                c.compared,
                c.differences
            );
            Ok(c)
        }
        (SourceConn::Etcd(s), TargetConn::Etcd(t)) => {
            let r = ferry_etcd::verify::compare(s, t, ttl_tolerance_s)
                .await
                .map_err(|e| e.to_string())?;
            let diff = r.missing_on_target + r.extra_on_target + r.value_differs + r.lease_differs;
            Ok(Comparison {
                compared: r.source_keys,
                differences: diff,
                details: r
                    .differences
                    .iter()
                    .take(20)
                    .map(|d| format!("{:?} {}: {}", d.kind, d.key_suffix, d.detail))
                    .collect(),
                summary: format!(
                    "compared {} source keys (revision {}) with {} target keys (revision {}) over {} ranges: {} equal, {} missing on the target, {} extra on the target, {} values differ, {} leases differ",
                    r.source_keys, r.source_revision, r.target_keys, r.target_revision, r.ranges.len(), r.equal_keys, r.missing_on_target, r.extra_on_target, r.value_differs, r.lease_differs
                ),
                ..Default::default()
            })
        }
        (SourceConn::File(path), t) => compare_document(path, target_url, t).await,
        (SourceConn::Dir(root), TargetConn::Vault(t)) => {
            let files = ferry_file::dir::list(root).map_err(|e| e.to_string())?;
            let mut c = Comparison::default();
            for rel in files.keys() {
                let want: serde_json::Value = serde_json::from_slice(
                    &ferry_file::dir::document(root, rel).map_err(|e| e.to_string())?,
                )
                .map_err(|e| e.to_string())?;
                let got = t.read_at(&t.absolute(rel)).await.map_err(|e| e.to_string())?;
                if got.map(serde_json::Value::Object) != Some(want) {
                    c.note(format!("{rel}: missing or different in {target_url}"));
                }
                c.compared += 1;
            }
            for p in t.list_all().await.map_err(|e| e.to_string())? {
                if !files.contains_key(t.relative(&p)) {
                    c.note(format!("{p}: in {target_url} only"));
                }
            }
            c.summary = format!(
                "compared {} files of {} with the secrets of {target_url}: {} differences",
                c.compared,
                root.display(),
                c.differences
            );
            Ok(c)
        }
        (SourceConn::Vault(s), TargetConn::Vault(t)) => {
            let paths = s.list_all().await.map_err(|e| e.to_string())?;
            let target_paths = t.list_all().await.map_err(|e| e.to_string())?;
            let mut c = Comparison::default();
            let rels: std::collections::BTreeSet<&str> =
                paths.iter().map(|p| s.relative(p)).collect();
            for p in &target_paths {
                if !rels.contains(t.relative(p)) {
                    c.note(format!("{p}: on the target only"));
                }
            }
            for p in &paths {
                let tp = t.absolute(s.relative(p));
                let diffs = s
                    .compare_secret_at(t, p, &tp)
                    .await
                    .map_err(|e| e.to_string())?;
                c.compared += s
                    .metadata(p)
                    .await
                    .map_err(|e| e.to_string())?
                    .map_or(0, |m| m.current_version);
                for d in diffs {
                    c.note(d);
                }
            }
            c.summary = format!(
                "compared {} secrets ({} versions) of {source_url} with {target_url} version by version, metadata included: {} differences",
                paths.len(),
                c.compared,
                c.differences
            );
            Ok(c)
        }
        _ => Err(format!("{source_url} and {target_url} cannot be compared: this build compares the pairs it copies")),
    }
}

/// A JSON document against its copy: JSON equality always, exact bytes
/// where the target keeps bytes (a file, an etcd key).
async fn compare_document(
    path: &Path,
    target_url: &StoreUrl,
    target: &TargetConn,
) -> Result<Comparison, String> {
    let src =
        ferry_file::read_settled(path, ferry_file::DEFAULT_SETTLE).map_err(|e| e.to_string())?;
    let (bytes, json, how): (Option<bool>, bool, &str) = match target {
        TargetConn::File(tp) => {
            let t = ferry_file::read(tp).map_err(|e| e.to_string())?;
            (Some(t.same_bytes(&src)), t.same_json(&src), "document")
        }
        TargetConn::Etcd(store) if with_keys(target_url) => {
            let mut c = store.client();
            let prefix = store.prefix().to_vec();
            let r = c
                .get(
                    prefix.clone(),
                    Some(etcd_client::GetOptions::new().with_prefix()),
                )
                .await
                .map_err(|e| format!("reading {target_url}: {e}"))?;
            let have: std::collections::BTreeMap<String, Vec<u8>> = r
                .kvs()
                .iter()
                .filter(|kv| kv.key().get(prefix.len()) == Some(&b'/'))
                .map(|kv| {
                    (
                        String::from_utf8_lossy(&kv.key()[prefix.len()..]).into_owned(),
                        kv.value().to_vec(),
                    )
                })
                .collect();
            let want = ferry_file::pipeline::leaves(&src.value);
            let mut c = Comparison {
                compared: want.len() as u64,
                ..Default::default()
            };
            for (k, v) in &want {
                if have.get(k) != Some(v) {
                    c.note(format!("{k}: missing or different on the target"));
                }
            }
            for k in have.keys().filter(|k| !want.contains_key(*k)) {
                c.note(format!("{k}: on the target only"));
            }
            c.summary = format!(
                "compared {} leaves of {} with the keys under {target_url}: {} differences",
                want.len(),
                path.display(),
                c.differences
            );
            return Ok(c);
        }
        TargetConn::Etcd(store) => {
            let mut c = store.client();
            let r = c
                .get(store.prefix(), None)
                .await
                .map_err(|e| format!("reading {target_url}: {e}"))?;
            match r.kvs().first() {
                Some(kv) => {
                    let same_bytes = kv.value() == src.bytes.as_slice();
                    let same_json = serde_json::from_slice::<serde_json::Value>(kv.value())
                        .is_ok_and(|v| v == src.value);
                    (Some(same_bytes), same_json, "etcd key")
                }
                None => (Some(false), false, "etcd key (absent)"),
            }
        }
        TargetConn::Mongo(_) => {
            return Err(format!(
                "{target_url}: a JSON document is not copied to MongoDB"
            ))
        }
        TargetConn::Vault(store) => {
            let data = store.read().await.map_err(|e| e.to_string())?;
            let same = data.is_some_and(|d| serde_json::Value::Object(d) == src.value);
            (None, same, "Vault secret")
        }
    };
    let equal = json && bytes.unwrap_or(true);
    Ok(Comparison {
        compared: 1,
        differences: u64::from(!equal),
        details: if equal {
            Vec::new()
        } else {
            vec![format!("{}: the {how} differs from the source", target_url)]
        },
        summary: format!(
            "compared {} with the {how} at {target_url}: bytes {}, JSON {}",
            path.display(),
            match bytes {
                None => "not compared (Vault keeps JSON, not layout)",
                Some(true) => "identical",
                Some(false) => "DIFFER",
            },
            if json { "equal" } else { "DIFFERS" }
        ),
        ..Default::default()
    })
}

/// For a Cells migration: the environment that points Cells at its new
/// stores and what Ferry did not copy. Empty for other migrations.
pub fn next_steps<'a>(routes: impl Iterator<Item = &'a Route>) -> Vec<String> {
    let routes: Vec<&Route> = routes.collect();
    let Some(mongo) = routes
        .iter()
        .find(|r| r.mapping.is_some())
        .and_then(|r| r.targets.first())
    else {
        return Vec::new();
    };
    let file_target = |name: &str| {
        routes
            .iter()
            .find(|r| matches!(&r.source, StoreUrl::File { path } if path.file_name().is_some_and(|f| f == name)))
            .and_then(|r| r.targets.first())
            .map(ToString::to_string)
            .unwrap_or_default()
    };
    let services: Vec<&str> = routes
        .iter()
        .filter_map(|r| r.mapping.map(Service::name))
        .collect();
    let certs = routes
        .iter()
        .find(|r| matches!(&r.source, StoreUrl::File { path } if path.file_name().is_some_and(|f| f == "certs")))
        .and_then(|r| r.targets.first())
        .map(ToString::to_string);
    let keyring = routes
        .iter()
        .find(|r| matches!(&r.source, StoreUrl::File { path } if path.file_name().is_some_and(|f| f == "cells-vault-key")))
        .and_then(|r| r.targets.first())
        .map(crate::cells::cells_keyring_url)
        .unwrap_or_default();
    let mut steps = vec![
        format!("export CELLS_CONFIG={}", file_target("pydio.json")),
        format!("export CELLS_VAULT={}", file_target("pydio-vault.json")),
        format!("export CELLS_KEYRING={keyring}"),
        format!(
            "point these services' storage at {mongo} (`cells admin config db add`; Ferry copied pydio.json unchanged): {}",
            services.join(", ")
        ),
        "rebuild the search and log indexes, which Ferry does not copy (Bleve files): cells admin resync --service pydio.grpc.search".into(),
    ];
    if let Some(c) = certs {
        steps.insert(3, format!("export CELLS_CERTS_STORE={c}"));
    }
    steps
}
