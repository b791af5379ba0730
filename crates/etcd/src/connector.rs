//! etcd as a Ferry source and target (see `ferry_connect` for the
//! contracts): a key prefix, with leases; the target also takes one JSON
//! document, as one key or one key per leaf (`?withKeys=true`).

use crate::readonly::{self, SavedPermissions, ServerMode};
use crate::store::RangeCursor;
use crate::{
    EtcdError, EtcdSink, EtcdStore, EtcdTailer, FenceHandle, LeaseLiveness, TailerOptions,
};
use ferry_connect::check::line;
use ferry_connect::place::{Doc, DocumentPlace};
use ferry_connect::state::write_record;
use ferry_connect::verify::{DocState, DocumentReader, KvCursor, KvEntry, KvReader};
use ferry_connect::{
    async_trait, CheckContext, Connection, Connector, DataModel, Fence, Options, ReadOnlyContext,
    ReadOnlyGuard, Reader, Refusal, SinkContext, Source, StateDir, TailContext, Tailing, Target,
};
use ferry_core::{StoreKind, StoreUrl};
use ferry_replay::SharedSink;
use std::any::Any;
use std::sync::Arc;

pub struct EtcdConnector;

impl Connector for EtcdConnector {
    fn kind(&self) -> StoreKind {
        StoreKind::Etcd
    }
    fn source_model(&self) -> Option<DataModel> {
        Some(DataModel::KeyValue)
    }
    fn target_models(&self) -> &'static [DataModel] {
        &[DataModel::KeyValue, DataModel::Document]
    }
    fn source(&self, url: &StoreUrl, _options: &Options) -> Result<Arc<dyn Source>, String> {
        Ok(Arc::new(EtcdSource {
            url: url.clone(),
            store: Connection::default(),
        }))
    }
    fn document(&self, url: &StoreUrl) -> Result<Arc<dyn DocumentPlace>, Refusal> {
        if prefix_of(url).is_empty() {
            return Err(Refusal::usage(format!("{url} names no key; the document goes to one key, e.g. etcd://127.0.0.1:2379/config")));
        }
        Ok(Arc::new(KeyPlace(url.clone())))
    }
    fn target(&self, url: &StoreUrl, _options: &Options) -> Result<Arc<dyn Target>, String> {
        Ok(Arc::new(EtcdTarget {
            url: url.clone(),
            store: Connection::default(),
        }))
    }
}

fn refused(e: EtcdError) -> Refusal {
    Refusal::refused(e.to_string())
}

/// Whether an etcd URL asks for one key per leaf of a document.
pub fn with_keys(url: &StoreUrl) -> bool {
    matches!(url, StoreUrl::Etcd { params, .. } if params.get("withKeys").map(String::as_str) == Some("true"))
}

fn prefix_of(url: &StoreUrl) -> &str {
    match url {
        StoreUrl::Etcd { prefix, .. } => prefix,
        _ => "",
    }
}

/// The sentence for a source prefix that holds no key, naming where the
/// keys are when the prefix with (or without) a leading `/` holds some: the
/// URL path is the prefix without its leading slash, as in Cells'
/// `etcd://h:2379/config`, so keys under `/app/…` need `etcd://h:2379//app`.
async fn empty_source(url: &StoreUrl) -> String {
    let prefix = prefix_of(url);
    let other = match prefix.strip_prefix('/') {
        Some(bare) => bare.to_string(),
        None => format!("/{prefix}"),
    };
    let alt = url.with_prefix(other.as_str());
    let held = match EtcdStore::connect(&alt).await {
        Ok(store) => store.count_prefix().await.unwrap_or(0),
        Err(_) => 0,
    };
    let elsewhere = if held > 0 {
        format!("; the prefix `{other}` holds {held} keys: write {alt} to copy those")
    } else {
        String::new()
    };
    format!(
        "{url} holds no key under the prefix `{prefix}` (the URL path is the prefix without its leading slash){elsewhere}; or pass --allow-empty-source to start from an empty source"
    )
}

/// A prefix of an etcd cluster, as a source.
pub struct EtcdSource {
    url: StoreUrl,
    store: Connection<EtcdStore>,
}

impl EtcdSource {
    pub fn store(&self) -> Result<&EtcdStore, String> {
        self.store.get(&self.url)
    }

    /// The user Ferry writes as (it keeps its write permission).
    fn user(&self) -> String {
        match &self.url {
            StoreUrl::Etcd { user, .. } => user.clone().unwrap_or_else(|| "root".into()),
            _ => "root".into(),
        }
    }
}

/// What an etcd source shares with its targets' sinks.
pub struct Shared {
    pub prefix: String,
    pub liveness: Option<LeaseLiveness>,
}

#[async_trait]
impl Source for EtcdSource {
    fn url(&self) -> &StoreUrl {
        &self.url
    }
    fn render(
        &self,
        key: &[u8],
        value: Option<&[u8]>,
        meta: &ferry_core::StoreMeta,
    ) -> ferry_connect::Rendered {
        let k = String::from_utf8_lossy(key).into_owned();
        let lease = match meta {
            ferry_core::StoreMeta::Etcd {
                lease_id,
                lease_ttl_s,
            } if *lease_id != 0 => {
                serde_json::json!({ "id": lease_id, "ttl_s": lease_ttl_s })
            }
            _ => serde_json::Value::Null,
        };
        ferry_connect::Rendered {
            key: serde_json::json!({ "key": k }),
            after: value.map(|v| {
                serde_json::json!({
                    "key": k,
                    "value": ferry_connect::text_or_base64(v),
                    "lease": lease,
                })
            }),
            created: None,
        }
    }
    fn model(&self) -> DataModel {
        DataModel::KeyValue
    }
    async fn connect(&self) -> Result<(), String> {
        self.store
            .connect(Box::pin(EtcdStore::connect(&self.url)))
            .await
            .map(drop)
    }

    async fn precheck(&self, ctx: &CheckContext) -> Result<(), Refusal> {
        if prefix_of(&self.url).is_empty() {
            return Err(Refusal::usage(format!(
                "{} names no key prefix; Ferry copies one prefix, e.g. etcd://127.0.0.1:2379/app",
                self.url
            )));
        }
        let src = EtcdStore::connect(&self.url).await.map_err(refused)?;
        let version = src.server_version().await.map_err(refused)?;
        let count = src.count_prefix().await.map_err(refused)?;
        let largest = src.max_value_len_in_prefix().await.map_err(refused)?;
        line(
            "source",
            format!(
                "{}: reachable, credentials accepted, etcd {version}, {count} keys{}",
                self.url,
                largest
                    .as_ref()
                    .map(|l| format!(", largest value {} B", l.value_bytes))
                    .unwrap_or_default()
            ),
        );
        if count == 0 && !ctx.resuming && !ctx.allow_empty_source {
            return Err(Refusal::refused(empty_source(&self.url).await));
        }
        let auth = src.auth_enabled().await.map_err(refused)?;
        if ctx.external_read_only {
            line("source", "read-only at cutover: external (you stop the writers; Ferry refuses to open the target if it sees a write after the fence)");
        } else if auth {
            line("source", "read-only at cutover: auth is on; write permission will be taken from every role but Ferry's and given back on abort");
        } else {
            return Err(Refusal::refused(format!("{} has authentication disabled, so Ferry cannot make it read-only at cutover; enable etcd auth or pass --source.read-only=external and stop the writers yourself", self.url)));
        }
        if ctx.resuming {
            resume_point(&src, &self.url.to_string(), ctx).await?;
        }
        self.store.set(src);
        Ok(())
    }

    async fn recover(&self, state: &StateDir) {
        let Ok(store) = self.store() else { return };
        let name = self.url.to_string();
        let path = state.read_only_record(&name);
        let Ok(data) = std::fs::read(&path) else {
            return;
        };
        match serde_json::from_slice::<SavedPermissions>(&data) {
            Ok(saved) => match readonly::restore(store, &saved).await {
                Ok(()) => {
                    tracing::warn!(source = name, "a previous cutover was interrupted with the source read-only; its write permissions were restored");
                    let _ = std::fs::remove_file(&path);
                }
                Err(e) => {
                    tracing::error!(error = %e, "could not restore the source's write permissions saved by an interrupted cutover")
                }
            },
            Err(e) => tracing::error!(error = %e, "{} is damaged", path.display()),
        }
    }

    fn tail(&self, ctx: &TailContext) -> Result<Tailing, String> {
        let store = self.store()?.clone();
        let t = EtcdTailer::new(
            store.clone(),
            self.url.to_string(),
            ctx.span,
            TailerOptions {
                resnapshot_on_compaction: ctx.options.resnapshot_on_compaction,
                rate_limit: ctx.options.source_limiter.clone(),
                ..TailerOptions::default()
            },
        );
        let fence = Arc::new(EtcdFence {
            handle: t.fence_handle(),
            store: store.clone(),
            name: self.url.to_string(),
            user: self.user(),
        });
        let shared = Arc::new(Shared {
            prefix: String::from_utf8_lossy(store.prefix()).into_owned(),
            liveness: Some(t.liveness()),
        });
        Ok(Tailing {
            fence,
            shared,
            tailer: ferry_connect::tailer(move |j, l, s| t.run(j, l, s)),
        })
    }

    fn reader(&self) -> Result<Reader, String> {
        Ok(Reader::KeyValue(Arc::new(Kv(self.store()?.clone()))))
    }

    async fn set_server_mode(&self, read_only: bool) -> Result<String, Refusal> {
        let url = &self.url;
        let store = EtcdStore::connect(url).await.map_err(refused)?;
        let mode = if read_only {
            ServerMode::ReadOnly
        } else {
            ServerMode::Default
        };
        let changed = readonly::set_server_mode(&store, mode, &self.user())
            .await
            .map_err(|e| Refusal::runtime(e.to_string()))?;
        Ok(match (mode, changed) {
            (ServerMode::ReadOnly, Some(s)) => format!(
                "{url} is read-only: took write from {}; `--mode default` gives it back",
                describe(&s)
            ),
            (ServerMode::Default, Some(s)) => {
                format!("{url} accepts writes again: restored {}", describe(&s))
            }
            (ServerMode::Default, None) => {
                format!("{url}: Ferry had made nothing read-only there; nothing to restore")
            }
            (ServerMode::ReadOnly, None) => format!("{url}: nothing to change"),
        })
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

fn describe(saved: &SavedPermissions) -> String {
    let roles: std::collections::BTreeSet<&str> =
        saved.changes.iter().map(|c| c.role.as_str()).collect();
    format!(
        "{} permission(s) of {} role(s) ({})",
        saved.changes.len(),
        roles.len(),
        roles.into_iter().collect::<Vec<_>>().join(", ")
    )
}

/// On resume: is the journaled revision still in the source's history?
/// Says so in one line; refuses (exit 3) when re-snapshots are off.
async fn resume_point(source: &EtcdStore, name: &str, ctx: &CheckContext) -> Result<(), Refusal> {
    let Some(pos) = &ctx.checkpoint else {
        line("source", "no snapshot journaled yet: the agent takes one");
        return Ok(());
    };
    let resume = pos.order as i64 + 1;
    let mut client = source.client();
    let opts = etcd_client::GetOptions::new()
        .with_count_only()
        .with_revision(resume);
    match client.get(source.prefix(), Some(opts)).await {
        Ok(_) => {
            line(
                "source",
                format!("resuming from journaled revision {}", pos.order),
            );
            Ok(())
        }
        Err(e) if e.to_string().contains("compacted") => {
            if ctx.resnapshot {
                line("source", format!("{name} was compacted past journaled revision {}: the agent takes a new snapshot and the target converges to it", pos.order));
                Ok(())
            } else {
                Err(Refusal::refused(format!("{name} was compacted past journaled revision {}, so the changes since are lost to Ferry; drop --no-resnapshot to take a new snapshot", pos.order)))
            }
        }
        // Head below the resume revision (nothing new) or a passing error:
        // the agent handles both.
        Err(_) => Ok(()),
    }
}

/// The fence: the tailer sees the source's head revision after the switch.
struct EtcdFence {
    handle: FenceHandle,
    store: EtcdStore,
    name: String,
    user: String,
}

#[async_trait]
impl Fence for EtcdFence {
    async fn make_read_only(
        &self,
        ctx: &ReadOnlyContext<'_>,
    ) -> Result<Option<Box<dyn ReadOnlyGuard>>, String> {
        if ctx.external {
            return Ok(None);
        }
        let perms = readonly::make_read_only(&self.store, &self.user)
            .await
            .map_err(|e| e.to_string())?;
        let record = ctx.state.read_only_record(&self.name);
        let data = serde_json::to_vec(&perms).expect("permissions serialise");
        if let Err(e) = write_record(&record, &data) {
            let _ = readonly::restore(&self.store, &perms).await;
            return Err(e);
        }
        Ok(Some(Box::new(Permissions {
            store: self.store.clone(),
            name: self.name.clone(),
            perms,
            record,
        })))
    }

    async fn fence(&self) -> Result<u64, String> {
        let rev = self
            .store
            .head_revision()
            .await
            .map_err(|e| e.to_string())?;
        self.handle.fence(rev).await.map_err(|e| e.to_string())?;
        Ok(u64::try_from(rev).unwrap_or(0))
    }

    fn writes_after_fence(&self) -> Vec<(Vec<u8>, u64)> {
        self.handle
            .writes_after_fence()
            .into_iter()
            .map(|(k, r)| (k, u64::try_from(r).unwrap_or(0)))
            .collect()
    }
}

/// Write permissions taken from the source's roles.
struct Permissions {
    store: EtcdStore,
    name: String,
    perms: SavedPermissions,
    record: std::path::PathBuf,
}

#[async_trait]
impl ReadOnlyGuard for Permissions {
    async fn undo(&self) {
        match readonly::restore(&self.store, &self.perms).await {
            Ok(()) => {
                let _ = std::fs::remove_file(&self.record);
            }
            Err(e) => {
                tracing::error!(source = %self.name, error = %e, "could not give the source its write permissions back; run `ferry set-server-mode --mode default`")
            }
        }
    }
    fn keep(&self) {
        let _ = std::fs::remove_file(&self.record);
    }
}

/// A prefix of an etcd cluster, as a target.
pub struct EtcdTarget {
    url: StoreUrl,
    store: Connection<EtcdStore>,
}

impl EtcdTarget {
    fn store(&self) -> Result<&EtcdStore, String> {
        self.store.get(&self.url)
    }
}

#[async_trait]
impl Target for EtcdTarget {
    fn url(&self) -> &StoreUrl {
        &self.url
    }
    fn accepts(&self) -> &'static [DataModel] {
        &[DataModel::KeyValue, DataModel::Document]
    }
    fn check_source(&self, _source: &dyn Source) -> Result<(), String> {
        if prefix_of(&self.url).is_empty() {
            return Err(format!(
                "{} names no key prefix; give one, e.g. etcd://127.0.0.1:2379/config",
                self.url
            ));
        }
        Ok(())
    }
    fn wants_leaves(&self) -> bool {
        with_keys(&self.url)
    }
    async fn connect(&self) -> Result<(), String> {
        self.store
            .connect(Box::pin(EtcdStore::connect(&self.url)))
            .await
            .map(drop)
    }

    async fn precheck(&self, source: &dyn Source, ctx: &CheckContext) -> Result<(), Refusal> {
        let t = &self.url;
        let tgt = EtcdStore::connect(t).await.map_err(refused)?;
        let max = crate::TARGET_MAX_REQUEST_BYTES;
        if let Some(src) = source.as_any().downcast_ref::<EtcdSource>() {
            let src = src.store().map_err(Refusal::runtime)?;
            if src.overlaps(&tgt) {
                return Err(Refusal::usage(format!("{} and {t} overlap on the same cluster: Ferry would copy its own writes; choose prefixes where neither contains the other", source.url())));
            }
            let tv = tgt.server_version().await.map_err(refused)?;
            let tcount = tgt.count_prefix().await.map_err(refused)?;
            if tcount > 0 && !ctx.force && !ctx.resuming {
                return Err(Refusal::refused(format!("{t} already holds {tcount} keys; copying overwrites them and removes those the source lacks: pass --force to go ahead or choose an empty prefix")));
            }
            if let Some(l) = src.max_value_len_in_prefix().await.map_err(refused)? {
                // A put carries the key and value plus a few dozen bytes of framing.
                if l.value_bytes + l.key.len() + 512 > max {
                    return Err(Refusal::refused(format!(
                        "the source key `{}` holds {} bytes, more than {t} accepts in one request ({max} bytes); raise --max-request-bytes on the target etcd or shrink the value",
                        String::from_utf8_lossy(&l.key),
                        l.value_bytes
                    )));
                }
            }
            let state = match (tcount, ctx.resuming) {
                (_, true) => "holds this migration's copy (resuming)".to_string(),
                (0, _) => "empty".to_string(),
                (n, _) => format!("holds {n} keys: --force given, they will be overwritten"),
            };
            line("target", format!("{t}: reachable, credentials accepted, etcd {tv}, {state}; values fit its {max}-byte request limit"));
            return Ok(());
        }
        // One document.
        let size = match source.reader() {
            Ok(Reader::Document(r)) => r
                .read()
                .await
                .map_err(Refusal::usage)?
                .and_then(|d| d.bytes)
                .map_or(0, |b| b.len()),
            _ => 0,
        };
        if size + tgt.prefix().len() + 512 > max {
            return Err(Refusal::refused(format!("the document is {size} bytes, more than {t} accepts in one request ({max} bytes); raise --max-request-bytes on that etcd")));
        }
        let n = tgt.count_prefix().await.map_err(refused)?;
        if n > 0 && !ctx.force && !ctx.resuming {
            return Err(Refusal::refused(format!("{t} already holds {n} keys under its prefix; copying overwrites it: pass --force to go ahead or choose another target")));
        }
        line(
            "target",
            format!("{t}: reachable, the document fits its request limit"),
        );
        Ok(())
    }

    fn sink(&self, ctx: &SinkContext<'_>) -> Result<SharedSink, String> {
        let shared = ctx.shared.downcast_ref::<Shared>();
        let sink = EtcdSink::new(
            self.store()?.clone(),
            shared.map(|s| s.prefix.clone()).unwrap_or_default(),
            self.url.to_string(),
            ctx.span,
            shared.and_then(|s| s.liveness.clone()),
        )
        .with_journal_id(ctx.journal_id.to_string());
        Ok(SharedSink::new(sink))
    }

    fn reader(&self, source: &dyn Source) -> Result<Reader, String> {
        let store = self.store()?.clone();
        if source.model() == DataModel::KeyValue || with_keys(&self.url) {
            Ok(Reader::KeyValue(Arc::new(Kv(store))))
        } else {
            Ok(Reader::Document(Arc::new(Key(store))))
        }
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// The keys under a store's prefix, for verification.
pub struct Kv(EtcdStore);

/// The verification reader of `store`'s prefix.
pub fn kv_reader(store: &EtcdStore) -> Kv {
    Kv(store.clone())
}

struct Cursor {
    store: EtcdStore,
    cursor: RangeCursor,
}

#[async_trait]
impl KvCursor for Cursor {
    async fn next_page(&mut self) -> Result<Option<Vec<KvEntry>>, String> {
        let n = self.store.prefix().len();
        Ok(self
            .cursor
            .next_page(&self.store)
            .await
            .map_err(|e| e.to_string())?
            .map(|page| {
                page.into_iter()
                    .map(|kv| KvEntry {
                        suffix: kv.key()[n..].to_vec(),
                        value: kv.value().to_vec(),
                        lease: kv.lease(),
                    })
                    .collect()
            }))
    }
    fn position(&self) -> i64 {
        self.cursor.revision
    }
}

#[async_trait]
impl KvReader for Kv {
    fn name(&self) -> &str {
        self.0.name()
    }
    fn cursor(&self) -> Box<dyn KvCursor> {
        Box::new(Cursor {
            store: self.0.clone(),
            cursor: RangeCursor::prefix(self.0.prefix(), 0),
        })
    }
    fn cursor_range(&self, from: &[u8], to: Option<&[u8]>) -> Box<dyn KvCursor> {
        let p = self.0.prefix();
        let start = [p, from].concat();
        let end = to.map_or_else(|| RangeCursor::prefix_end(p), |t| [p, t].concat());
        Box::new(Cursor {
            store: self.0.clone(),
            cursor: RangeCursor::between(start, end, 0),
        })
    }
    fn range_reads(&self) -> bool {
        true
    }
    fn suffix<'k>(&self, key: &'k [u8]) -> Option<&'k [u8]> {
        key.strip_prefix(self.0.prefix())
    }
    async fn lease_ttl(&self, lease: i64) -> Result<(i64, i64), String> {
        let mut lc = self.0.client().lease_client();
        let r = self
            .0
            .timed("reading a lease's TTL", lc.time_to_live(lease, None))
            .await
            .map_err(|e| e.to_string())?;
        Ok((r.ttl(), r.granted_ttl()))
    }
}

/// One key holding a whole document.
struct Key(EtcdStore);

#[async_trait]
impl DocumentReader for Key {
    fn name(&self) -> &str {
        self.0.name()
    }
    fn holder(&self) -> &'static str {
        "etcd key"
    }
    async fn read(&self) -> Result<Option<DocState>, String> {
        let mut c = self.0.client();
        let r = c
            .get(self.0.prefix(), None)
            .await
            .map_err(|e| format!("reading {}: {e}", self.0.name()))?;
        Ok(r.kvs().first().map(|kv| DocState {
            bytes: Some(kv.value().to_vec()),
            json: serde_json::from_slice(kv.value()).ok(),
        }))
    }
}

/// One etcd key holding a whole document, for `ferry config copy`.
pub struct KeyPlace(StoreUrl);

#[async_trait]
impl DocumentPlace for KeyPlace {
    fn label(&self) -> String {
        self.0.to_string()
    }
    fn keeps_bytes(&self) -> bool {
        true
    }
    async fn load(&self) -> Result<Doc, Refusal> {
        let url = &self.0;
        let store = EtcdStore::connect(url).await.map_err(refused)?;
        let mut c = store.client();
        let r = c
            .get(store.prefix(), None)
            .await
            .map_err(|e| Refusal::runtime(format!("reading {url}: {e}")))?;
        let Some(kv) = r.kvs().first() else {
            return Err(Refusal::usage(format!(
                "{url} holds no document (the key is absent)"
            )));
        };
        Doc::parse(&url.to_string(), kv.value().to_vec())
    }
    async fn save(&self, doc: &Doc) -> Result<(), Refusal> {
        let url = &self.0;
        let store = EtcdStore::connect(url).await.map_err(refused)?;
        let max = crate::TARGET_MAX_REQUEST_BYTES;
        if doc.bytes.len() + store.prefix().len() + 512 > max {
            return Err(Refusal::refused(format!(
                "the document is {} bytes, more than {url} accepts in one request ({max} bytes); raise --max-request-bytes on that etcd",
                doc.bytes.len()
            )));
        }
        let mut c = store.client();
        c.put(store.prefix().to_vec(), doc.bytes.clone(), None)
            .await
            .map_err(|e| Refusal::runtime(format!("writing {url}: {e}")))?;
        Ok(())
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}
