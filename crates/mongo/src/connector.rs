//! MongoDB as a Ferry source and target (see `ferry_connect`): the
//! selected namespaces, document by document, with collection options and
//! indexes. Read-only at cutover by `setUserWriteBlockMode` (Ferry's user
//! bypasses it); a target is kept write-blocked the same way from start to
//! the cutover when Ferry's user may.

use crate::readonly::{self, TargetProtection};
use crate::{
    Catalog, FenceHandle, MongoError, MongoSink, MongoStore, MongoTailer, Namespace, SinkOptions,
    TailerOptions,
};
use ferry_connect::check::line;
use ferry_connect::state::write_record;
use ferry_connect::verify::DocumentsReader;
use ferry_connect::{
    async_trait, CheckContext, Connection, Connector, DataModel, Fence, Opener, Options,
    ReadOnlyContext, ReadOnlyGuard, Reader, Refusal, SinkContext, Source, StateDir, TailContext,
    Tailing, Target,
};
use ferry_core::{StoreKind, StoreUrl};
use ferry_replay::SharedSink;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use mongodb::bson::{doc, Bson, Document, RawDocumentBuf};
use std::any::Any;
use std::sync::{Arc, Mutex, OnceLock};

pub struct MongoConnector;

impl Connector for MongoConnector {
    fn kind(&self) -> StoreKind {
        StoreKind::Mongo
    }
    fn source_model(&self) -> Option<DataModel> {
        Some(DataModel::Documents)
    }
    fn target_models(&self) -> &'static [DataModel] {
        &[DataModel::Documents]
    }
    fn source(&self, url: &StoreUrl, _options: &Options) -> Result<Arc<dyn Source>, String> {
        Ok(Arc::new(MongoSource {
            url: url.clone(),
            store: Connection::default(),
            catalog: OnceLock::new(),
        }))
    }
    fn target(&self, url: &StoreUrl, _options: &Options) -> Result<Arc<dyn Target>, String> {
        Ok(Arc::new(MongoTarget::new(url)))
    }
}

/// A MongoDB error as a refusal: a malformed URI is bad input (exit 2),
/// anything else a store that cannot be used (exit 3).
pub fn refusal(e: MongoError) -> Refusal {
    if matches!(e, MongoError::MalformedUri { .. }) {
        Refusal::usage(e.to_string())
    } else {
        Refusal::refused(e.to_string())
    }
}

/// The deployment a MongoDB URL names (its hosts).
fn hosts(url: &StoreUrl) -> Option<String> {
    match url {
        StoreUrl::Mongo { hosts, .. } => Some(format!("{hosts:?}")),
        _ => None,
    }
}

/// A MongoDB deployment's selected namespaces, as a source.
pub struct MongoSource {
    url: StoreUrl,
    store: Connection<MongoStore>,
    catalog: OnceLock<Catalog>,
}

impl MongoSource {
    pub fn store(&self) -> Result<&MongoStore, String> {
        self.store.get(&self.url)
    }
}

/// What a MongoDB source shares with its targets' sinks.
pub struct Shared {
    /// The source, for the sink's snapshot sweep.
    pub store: MongoStore,
    /// The source's collections' options and indexes.
    pub catalog: Option<Catalog>,
}

#[async_trait]
impl Source for MongoSource {
    fn url(&self) -> &StoreUrl {
        &self.url
    }
    /// Key `{"db", "collection", "id"}` with the `_id` as canonical
    /// extended JSON, and `after` as a string of the document in canonical
    /// extended JSON, as Debezium's MongoDB connector gives it (a string
    /// its consumers parse with a BSON JSON reader): canonical, because
    /// relaxed JSON loses which numbers are 32-bit, 64-bit or doubles, and
    /// a Kafka source reads these records back into a MongoDB target.
    fn render(
        &self,
        key: &[u8],
        value: Option<&[u8]>,
        _meta: &ferry_core::StoreMeta,
    ) -> ferry_connect::Rendered {
        let id = |raw: &mongodb::bson::RawDocument| -> serde_json::Value {
            raw.get("_id")
                .ok()
                .flatten()
                .and_then(|v| Bson::try_from(v.to_raw_bson()).ok())
                .map_or(serde_json::Value::Null, Bson::into_canonical_extjson)
        };
        let key = match crate::key::decode(key) {
            Ok((ns, filter)) => {
                serde_json::json!({ "db": ns.db, "collection": ns.coll, "id": id(&filter) })
            }
            Err(_) => serde_json::json!({ "key": ferry_connect::text_or_base64(key) }),
        };
        let after = value.map(|v| {
            match RawDocumentBuf::from_bytes(v.to_vec())
                .ok()
                .and_then(|d| d.to_document().ok())
            {
                Some(d) => serde_json::Value::String(
                    Bson::Document(d).into_canonical_extjson().to_string(),
                ),
                None => serde_json::json!({ "base64": ferry_connect::base64(v) }),
            }
        });
        ferry_connect::Rendered {
            key,
            after,
            created: None,
        }
    }
    fn model(&self) -> DataModel {
        DataModel::Documents
    }
    async fn connect(&self) -> Result<(), String> {
        self.store
            .connect(MongoStore::connect(&self.url))
            .await
            .map(drop)
    }
    async fn precheck(&self, ctx: &CheckContext) -> Result<(), Refusal> {
        let src = MongoStore::connect(&self.url).await.map_err(refusal)?;
        src.check_change_streams().map_err(refusal)?;
        if ctx.external_read_only {
            line("source", "read-only at cutover: external (you stop the writers; Ferry refuses to open the target if it sees a write after the fence)");
        } else {
            readonly::check_write_block(&src).await.map_err(refusal)?;
            line("source", "read-only at cutover: setUserWriteBlockMode (Ferry's user needs bypassWriteBlockingMode)");
        }
        self.store.set(src);
        Ok(())
    }
    async fn recover(&self, state: &StateDir) {
        let Ok(store) = self.store() else { return };
        let name = self.url.to_string();
        let path = state.read_only_record(&name);
        if !path.exists() {
            return;
        }
        match readonly::set_user_write_block(store, false).await {
            Ok(()) => {
                tracing::warn!(source = name, "a previous cutover was interrupted with the source write-blocked; writes are allowed again");
                let _ = std::fs::remove_file(&path);
            }
            Err(e) => {
                tracing::error!(source = name, error = %e, "could not lift the write block an interrupted cutover left; run `ferry set-server-mode --mode default`")
            }
        }
    }
    async fn prepare(&self) -> Result<(), String> {
        let s = self.store()?;
        let namespaces = s.selected_namespaces().await.map_err(|e| e.to_string())?;
        let catalog = Catalog::read(s, &namespaces)
            .await
            .map_err(|e| e.to_string())?;
        let _ = self.catalog.set(catalog);
        Ok(())
    }
    fn tail(&self, ctx: &TailContext) -> Result<Tailing, String> {
        let store = self.store()?.clone();
        let t = MongoTailer::new(
            store.clone(),
            self.url.to_string(),
            ctx.span,
            TailerOptions::default(),
        );
        let fence = Arc::new(MongoFence {
            handle: t.fence_handle(),
            store: store.clone(),
            name: self.url.to_string(),
        });
        Ok(Tailing {
            fence,
            shared: Arc::new(Shared {
                store,
                catalog: self.catalog.get().cloned(),
            }),
            tailer: ferry_connect::tailer(move |j, l, s| t.run(j, l, s)),
        })
    }
    fn reader(&self) -> Result<Reader, String> {
        Ok(Reader::Documents(Arc::new(Docs {
            store: self.store()?.clone(),
            source: true,
        })))
    }
    async fn set_server_mode(&self, read_only: bool) -> Result<String, Refusal> {
        let url = &self.url;
        let store = MongoStore::connect(url)
            .await
            .map_err(|e| Refusal::refused(e.to_string()))?;
        readonly::set_user_write_block(&store, read_only)
            .await
            .map_err(|e| Refusal::refused(e.to_string()))?;
        Ok(if read_only {
            format!("{url} is read-only: user writes are blocked (setUserWriteBlockMode); `--mode default` lifts it")
        } else {
            format!("{url} accepts user writes again")
        })
    }
    fn deployment(&self) -> Option<String> {
        hosts(&self.url)
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// The fence: the tailer sees the cluster time read after the switch.
struct MongoFence {
    handle: FenceHandle,
    store: MongoStore,
    name: String,
}

#[async_trait]
impl Fence for MongoFence {
    async fn make_read_only(
        &self,
        ctx: &ReadOnlyContext<'_>,
    ) -> Result<Option<Box<dyn ReadOnlyGuard>>, String> {
        if ctx.external {
            return Ok(None);
        }
        let record = ctx.state.read_only_record(&self.name);
        let result = match write_record(&record, br#"{"mongo_write_block":true}"#) {
            Ok(()) => readonly::set_user_write_block(&self.store, true)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            let _ = std::fs::remove_file(&record);
            return Err(e);
        }
        Ok(Some(Box::new(Blocked {
            store: self.store.clone(),
            name: self.name.clone(),
            record,
        })))
    }
    async fn fence(&self) -> Result<u64, String> {
        let at = self
            .store
            .head_position()
            .await
            .map_err(|e| e.to_string())?;
        self.handle.fence(at).await.map_err(|e| e.to_string())?;
        Ok(at)
    }
    fn writes_after_fence(&self) -> Vec<(Vec<u8>, u64)> {
        self.handle
            .writes_after_fence()
            .into_iter()
            .map(|w| (format!("{} {}", w.namespace, w.id).into_bytes(), w.position))
            .collect()
    }
}

/// A source's user writes blocked.
struct Blocked {
    store: MongoStore,
    name: String,
    record: std::path::PathBuf,
}

#[async_trait]
impl ReadOnlyGuard for Blocked {
    async fn undo(&self) {
        match readonly::set_user_write_block(&self.store, false).await {
            Ok(()) => {
                let _ = std::fs::remove_file(&self.record);
            }
            Err(e) => {
                tracing::error!(source = %self.name, error = %e, "could not unblock writes on the source; run `ferry set-server-mode --mode default`")
            }
        }
    }
    fn keep(&self) {
        let _ = std::fs::remove_file(&self.record);
    }
}

/// A MongoDB deployment, as a target.
pub struct MongoTarget {
    url: StoreUrl,
    store: Connection<MongoStore>,
}

impl MongoTarget {
    pub fn new(url: &StoreUrl) -> Self {
        MongoTarget {
            url: url.clone(),
            store: Connection::default(),
        }
    }

    pub fn store(&self) -> Result<&MongoStore, String> {
        self.store.get(&self.url)
    }

    /// Connects, as [`Target::connect`].
    pub async fn connect_store(&self) -> Result<&MongoStore, String> {
        self.store.connect(MongoStore::connect(&self.url)).await?;
        self.store()
    }

    /// The pre-check's line on whether the target stays write-blocked
    /// during the sync (the agent decides the same way at start), once per
    /// target: routes may share one.
    pub async fn protection_line(
        &self,
        source: &dyn Source,
        tgt: &MongoStore,
    ) -> Result<(), Refusal> {
        static SAID: Mutex<Vec<String>> = Mutex::new(Vec::new());
        let t = &self.url;
        {
            let mut said = SAID.lock().expect("pre-check lock poisoned");
            if said.contains(&t.to_string()) {
                return Ok(());
            }
            said.push(t.to_string());
        }
        if source.deployment().is_some() && source.deployment() == self.deployment() {
            line("target", format!("{t}: not write-protected during the sync: it shares the source's deployment, which a deployment-wide write block would stop; the cutover's verification finds stray writes"));
            return Ok(());
        }
        let p = readonly::target_protection(tgt).await.map_err(refusal)?;
        line("target", format!("{t}: {}", p.describe()));
        Ok(())
    }

    /// A sink with these options (a mapping target wraps it).
    pub fn sink_with(&self, options: SinkOptions) -> Result<MongoSink, String> {
        Ok(MongoSink::new(
            self.store()?.clone(),
            self.url.to_string(),
            options,
        ))
    }
}

#[async_trait]
impl Target for MongoTarget {
    fn url(&self) -> &StoreUrl {
        &self.url
    }
    fn accepts(&self) -> &'static [DataModel] {
        &[DataModel::Documents]
    }
    fn shared(&self) -> bool {
        true
    }
    async fn connect(&self) -> Result<(), String> {
        self.store
            .connect(MongoStore::connect(&self.url))
            .await
            .map(drop)
    }
    async fn precheck(&self, source: &dyn Source, ctx: &CheckContext) -> Result<(), Refusal> {
        let t = &self.url;
        let tgt = MongoStore::connect(t).await.map_err(refusal)?;
        let Some(src) = source.as_any().downcast_ref::<MongoSource>() else {
            // Documents from elsewhere (a Kafka topic of document events):
            // the namespaces are those its reader holds.
            let Ok(Reader::Documents(reader)) = source.reader() else {
                return Err(Refusal::usage(format!(
                    "{t}: MongoDB takes documents from a MongoDB source or a topic of document events"
                )));
            };
            let namespaces = reader.namespaces().await.map_err(Refusal::refused)?;
            tgt.check_target_empty(&namespaces, ctx.force || ctx.resuming)
                .await
                .map_err(refusal)?;
            line(
                "target",
                format!(
                    "{t}: reachable; the {} namespaces the source holds now are empty here",
                    namespaces.len()
                ),
            );
            return self.protection_line(source, &tgt).await;
        };
        let src = src.store().map_err(Refusal::runtime)?;
        let namespaces = crate::precheck(src, &tgt, ctx.force || ctx.resuming)
            .await
            .map_err(refusal)?;
        line(
            "source",
            format!(
                "{}: reachable, change streams available, {} namespaces selected",
                source.url(),
                namespaces.len()
            ),
        );
        oplog_window(src, &namespaces).await?;
        line(
            "target",
            format!("{t}: reachable; documents fit its size limit"),
        );
        self.protection_line(source, &tgt).await
    }
    fn sink(&self, ctx: &SinkContext<'_>) -> Result<SharedSink, String> {
        let shared = ctx.shared.downcast_ref::<Shared>();
        Ok(SharedSink::new(self.sink_with(SinkOptions {
            catalog: shared.and_then(|s| s.catalog.clone()),
            sweep_source: shared.map(|s| s.store.clone()),
            span: Some(ctx.span),
            journal_id: Some(ctx.journal_id.to_string()),
            ..Default::default()
        })?))
    }
    async fn protect(&self) -> Result<Option<Box<dyn Opener>>, String> {
        let store = self.store()?;
        let name = self.url.to_string();
        let p = readonly::target_protection(store)
            .await
            .map_err(|e| e.to_string())?;
        if p != TargetProtection::Blockable {
            tracing::info!(target = %name, "{}", p.describe());
            return Ok(None);
        }
        readonly::set_user_write_block(store, true)
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(target = %name, "user writes blocked on the target until the cutover opens it");
        Ok(Some(Box::new(Unblock(store.clone()))))
    }
    fn deployment(&self) -> Option<String> {
        hosts(&self.url)
    }
    fn reader(&self, _source: &dyn Source) -> Result<Reader, String> {
        Ok(Reader::Documents(Arc::new(Docs {
            store: self.store()?.clone(),
            source: false,
        })))
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

struct Unblock(MongoStore);

#[async_trait]
impl Opener for Unblock {
    async fn open(&self) -> Result<(), String> {
        readonly::set_user_write_block(&self.0, false)
            .await
            .map_err(|e| e.to_string())
    }
}

/// A deployment's documents, for verification.
pub struct Docs {
    store: MongoStore,
    /// A source lists its selected namespaces; a target lists none.
    source: bool,
}

impl Docs {
    /// A find's cursor as a stream of documents, errors named by `what`.
    fn stream(
        &self,
        what: String,
        cursor: Result<mongodb::Cursor<RawDocumentBuf>, mongodb::error::Error>,
    ) -> Result<BoxStream<'static, Result<RawDocumentBuf, String>>, String> {
        let cursor = cursor.map_err(|e| self.store.err(&what, &e).to_string())?;
        let store = self.store.clone();
        Ok(cursor
            .map_err(move |e| store.err(&what, &e).to_string())
            .boxed())
    }
}

/// The verification reader of `store` (`source`: it lists its selection).
pub fn documents_reader(store: &MongoStore, source: bool) -> Docs {
    Docs {
        store: store.clone(),
        source,
    }
}

#[async_trait]
impl DocumentsReader for Docs {
    fn name(&self) -> &str {
        self.store.name()
    }
    async fn namespaces(&self) -> Result<Vec<Namespace>, String> {
        if !self.source {
            return Ok(Vec::new());
        }
        self.store
            .selected_namespaces()
            .await
            .map_err(|e| e.to_string())
    }
    async fn scan(
        &self,
        ns: &Namespace,
    ) -> Result<BoxStream<'static, Result<RawDocumentBuf, String>>, String> {
        let coll = self
            .store
            .client()
            .database(&ns.db)
            .collection::<RawDocumentBuf>(&ns.coll);
        self.stream(
            format!("reading {ns}"),
            coll.find(doc! {}).batch_size(1000).await,
        )
    }
    async fn lookup(&self, ns: &Namespace, ids: Vec<Bson>) -> Result<Vec<RawDocumentBuf>, String> {
        let what = format!("reading {ns}");
        self.store
            .client()
            .database(&ns.db)
            .collection::<RawDocumentBuf>(&ns.coll)
            .find(doc! {"_id": {"$in": ids}})
            .await
            .map_err(|e| self.store.err(&what, &e).to_string())?
            .try_collect::<Vec<_>>()
            .await
            .map_err(|e| self.store.err(&what, &e).to_string())
    }
    async fn indexes(&self, ns: &Namespace) -> Result<Vec<Document>, String> {
        crate::catalog::read_indexes(&self.store, ns)
            .await
            .map_err(|e| e.to_string())
    }
    fn range_reads(&self) -> bool {
        true
    }
    async fn scan_range(
        &self,
        ns: &Namespace,
        from: Option<Bson>,
        to: Option<Bson>,
    ) -> Result<BoxStream<'static, Result<RawDocumentBuf, String>>, String> {
        // min/max bound the scan of the _id index in the index's own order
        // (not bracketed by type, as $gte/$lt are); the server requires
        // the hint with them.
        let what = format!("reading a range of {ns}");
        let coll = self
            .store
            .client()
            .database(&ns.db)
            .collection::<RawDocumentBuf>(&ns.coll);
        let mut find = coll
            .find(doc! {})
            .hint(mongodb::options::Hint::Keys(doc! {"_id": 1}))
            .sort(doc! {"_id": 1})
            .batch_size(1000);
        if let Some(id) = from {
            find = find.min(doc! {"_id": id});
        }
        if let Some(id) = to {
            find = find.max(doc! {"_id": id});
        }
        self.stream(what, find.await)
    }
    async fn estimated_count(&self, ns: &Namespace) -> Result<Option<u64>, String> {
        self.store
            .client()
            .database(&ns.db)
            .collection::<RawDocumentBuf>(&ns.coll)
            .estimated_document_count()
            .await
            .map(Some)
            .map_err(|e| self.store.err(&format!("counting {ns}"), &e).to_string())
    }
    async fn binary_string_order(&self, ns: &Namespace) -> Result<bool, String> {
        let catalog = crate::catalog::Catalog::read(&self.store, std::slice::from_ref(ns))
            .await
            .map_err(|e| e.to_string())?;
        Ok(catalog.collections.iter().all(|c| {
            c.options
                .get_document("collation")
                .map_or(true, |col| col.get_str("locale") == Ok("simple"))
        }))
    }
}

/// Documents per second a copy is assumed to make when estimating its
/// duration against the oplog window (the slowest figure measured here,
/// SecantusDB through the whole pipeline, rounded down).
const ASSUMED_COPY_DOCS_PER_S: u64 = 5_000;

/// The source's oplog window against the copy's estimated duration, where
/// the server reports an oplog (`local.oplog.rs`). A window shorter than
/// twice the estimate is refused: the change stream would lose its resume
/// point before the copy ends, and Ferry would copy again, forever.
async fn oplog_window(src: &MongoStore, namespaces: &[Namespace]) -> Result<(), Refusal> {
    let mut docs = 0u64;
    for ns in namespaces {
        docs += src.estimated_count(ns).await.unwrap_or(0);
    }
    let estimate_s = docs / ASSUMED_COPY_DOCS_PER_S + 1;
    let oplog = src
        .client()
        .database("local")
        .collection::<Document>("oplog.rs");
    let edge = |dir: i32| {
        let oplog = oplog.clone();
        async move {
            oplog
                .find_one(doc! {})
                .sort(doc! {"$natural": dir})
                .await
                .ok()
                .flatten()
                .and_then(|d| d.get_timestamp("ts").ok())
        }
    };
    match (edge(1).await, edge(-1).await) {
        (Some(first), Some(last)) => {
            let window = u64::from(last.time.saturating_sub(first.time));
            // An oplog that has not wrapped yet loses nothing: its window
            // is its age, not a limit.
            let stats = src
                .client()
                .database("local")
                .run_command(doc! {"collStats": "oplog.rs"})
                .await
                .ok();
            let num = |d: &Document, k: &str| {
                d.get(k).and_then(|v| match v {
                    Bson::Int32(n) => Some(i64::from(*n)),
                    Bson::Int64(n) => Some(*n),
                    Bson::Double(f) => Some(*f as i64),
                    _ => None,
                })
            };
            let full = stats.as_ref().is_some_and(|d| {
                matches!((num(d, "size"), num(d, "maxSize")), (Some(s), Some(m)) if m > 0 && s * 10 >= m * 9)
            });
            if full && window < 2 * estimate_s {
                return Err(Refusal::refused(format!("{}'s oplog spans {window} s, less than twice the copy's estimated {estimate_s} s ({docs} documents at {ASSUMED_COPY_DOCS_PER_S}/s): the change stream could lose its resume point during the copy; enlarge the oplog (replSetResizeOplog) first", src.name())));
            }
            let state = if full { "full" } else { "not yet wrapped" };
            line("source", format!("oplog window {window} s ({state}), copy estimated at {estimate_s} s for {docs} documents"));
        }
        _ => line("source", format!("oplog window not reported by the server; copy estimated at {estimate_s} s for {docs} documents")),
    }
    Ok(())
}
