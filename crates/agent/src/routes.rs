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

use crate::sinks::{SinkKind, TargetSink};
use ferry_core::{ShardSpan, StoreKind, StoreUrl};
use ferry_etcd::{EtcdSink, EtcdStore, EtcdTailer, FenceHandle, TailerOptions};
use ferry_file::pipeline::{FileSink, FileTailer};
use ferry_journal::seal::SealKey;
use ferry_journal::Journal;
use ferry_lag::LagTracker;
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
}

fn with_keys(url: &StoreUrl) -> bool {
    matches!(url, StoreUrl::Etcd { params, .. } if params.get("withKeys").map(String::as_str) == Some("true"))
}

/// Whether `source` can feed `target`, in one sentence if not.
pub fn check_pair(source: &StoreUrl, target: &StoreUrl) -> Result<(), String> {
    use StoreKind as K;
    let ok = matches!(
        (source.kind(), target.kind()),
        (K::Etcd, K::Etcd) | (K::File, K::Etcd | K::File | K::Vault) | (K::Vault, K::Vault)
    );
    if !ok {
        return Err(format!(
            "{source} cannot feed {target}: this build moves etcd to etcd, a JSON file to etcd, a file or Vault, and Vault to Vault"
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
    if let StoreUrl::Vault { path, params, .. } = target {
        if path.is_empty() && !params.contains_key("key") && source.kind() == K::File {
            return Err(format!(
                "{target} names no secret under its mount; e.g. vault://127.0.0.1:8200/secret/cells/keyring"
            ));
        }
    }
    Ok(())
}

/// Pairs sources with targets; see the module doc.
pub fn plan(sources: &[StoreUrl], targets: &[StoreUrl], shards: u32) -> Result<Vec<Route>, String> {
    if sources.is_empty() || targets.is_empty() {
        return Err("give at least one --source and one --target".into());
    }
    let pairs: Vec<(StoreUrl, Vec<StoreUrl>)> = if sources.len() == 1 {
        vec![(sources[0].clone(), targets.to_vec())]
    } else if sources.len() == targets.len() {
        sources
            .iter()
            .cloned()
            .zip(targets.iter().map(|t| vec![t.clone()]))
            .collect()
    } else {
        return Err(format!(
            "{} sources and {} targets: give one source for any number of targets, or as many targets as sources (paired in order)",
            sources.len(),
            targets.len()
        ));
    };
    let mut first = 0u32;
    let mut routes = Vec::new();
    for (source, targets) in pairs {
        for t in &targets {
            check_pair(&source, t)?;
            if t.to_string() == source.to_string() {
                return Err(format!(
                    "{t} is both a source and a target; give the target a different store or prefix"
                ));
            }
        }
        let count = match source.kind() {
            StoreKind::File => 1,
            _ => shards.max(1),
        };
        routes.push(Route {
            source,
            targets,
            span: ShardSpan { first, count },
        });
        first += count;
    }
    let mut names: Vec<String> = routes
        .iter()
        .flat_map(|r| r.targets.iter().map(ToString::to_string))
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
}

/// A connected target.
#[derive(Clone)]
pub enum TargetConn {
    Etcd(EtcdStore),
    File(PathBuf),
    Vault(Arc<VaultStore>),
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
}

/// How the cutover fences a route's source.
#[derive(Clone)]
pub enum Fence {
    /// Wait for the tailer to see the source's head revision.
    Etcd { handle: FenceHandle, store: EtcdStore },
    /// Ask the polling tailer for one more complete look.
    Poll(PollFence),
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
pub struct BuildOptions {
    pub resnapshot_on_compaction: bool,
    pub source_limiter: Option<Arc<RateLimiter>>,
    pub journal_id: String,
    pub seal: Arc<SealKey>,
    pub vault_poll: std::time::Duration,
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
            Tailer::Etcd(t) => t.run(journal, lag, shutdown).await.map_err(|e| e.to_string()),
            Tailer::File(t) => t.run(journal, lag, shutdown).await.map_err(|e| e.to_string()),
            Tailer::Vault(t) => t.run(journal, lag, shutdown).await.map_err(|e| e.to_string()),
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
}

impl Comparison {
    pub fn is_equal(&self) -> bool {
        self.differences == 0
    }
}

/// Compares a source with a target the way the route copies it.
pub async fn compare(
    source_url: &StoreUrl,
    source: &SourceConn,
    target_url: &StoreUrl,
    target: &TargetConn,
    ttl_tolerance_s: i64,
) -> Result<Comparison, String> {
    match (source, target) {
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
            })
        }
        (SourceConn::File(path), t) => compare_document(path, target_url, t).await,
        (SourceConn::Vault(s), TargetConn::Vault(t)) => {
            let paths = s.list_all().await.map_err(|e| e.to_string())?;
            let target_paths = t.list_all().await.map_err(|e| e.to_string())?;
            let mut details = Vec::new();
            let mut differences = 0u64;
            let mut versions = 0u64;
            let rels: std::collections::BTreeSet<&str> =
                paths.iter().map(|p| s.relative(p)).collect();
            for p in &target_paths {
                if !rels.contains(t.relative(p)) {
                    differences += 1;
                    if details.len() < 20 {
                        details.push(format!("{p}: on the target only"));
                    }
                }
            }
            for p in &paths {
                let tp = t.absolute(s.relative(p));
                let diffs = s
                    .compare_secret_at(t, p, &tp)
                    .await
                    .map_err(|e| e.to_string())?;
                versions += s
                    .metadata(p)
                    .await
                    .map_err(|e| e.to_string())?
                    .map_or(0, |m| m.current_version);
                differences += diffs.len() as u64;
                details.extend(diffs.into_iter().take(20 - details.len().min(20)));
            }
            Ok(Comparison {
                compared: versions,
                differences,
                details,
                summary: format!(
                    "compared {} secrets ({versions} versions) of {source_url} with {target_url} version by version, metadata included: {differences} differences",
                    paths.len()
                ),
            })
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
    let src = ferry_file::read_settled(path, ferry_file::DEFAULT_SETTLE).map_err(|e| e.to_string())?;
    let (bytes, json, how): (Option<bool>, bool, &str) = match target {
        TargetConn::File(tp) => {
            let t = ferry_file::read(tp).map_err(|e| e.to_string())?;
            (Some(t.same_bytes(&src)), t.same_json(&src), "document")
        }
        TargetConn::Etcd(store) if with_keys(target_url) => {
            let mut c = store.client();
            let prefix = store.prefix().to_vec();
            let r = c
                .get(prefix.clone(), Some(etcd_client::GetOptions::new().with_prefix()))
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
            let mut details = Vec::new();
            let mut diff = 0u64;
            for (k, v) in &want {
                if have.get(k) != Some(v) {
                    diff += 1;
                    if details.len() < 20 {
                        details.push(format!("{k}: missing or different on the target"));
                    }
                }
            }
            for k in have.keys().filter(|k| !want.contains_key(*k)) {
                diff += 1;
                if details.len() < 20 {
                    details.push(format!("{k}: on the target only"));
                }
            }
            return Ok(Comparison {
                compared: want.len() as u64,
                differences: diff,
                details,
                summary: format!(
                    "compared {} leaves of {} with the keys under {target_url}: {diff} differences",
                    want.len(),
                    path.display()
                ),
            });
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
    })
}
