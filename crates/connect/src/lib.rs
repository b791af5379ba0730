//! Stores as connectors: what a store implements, once, to be a Ferry
//! source or target.
//!
//! The agent and the CLI know no store by name. They take a URL to the
//! [`Registry`], which finds the [`Connector`] for its scheme; the connector
//! makes a [`Source`] or a [`Target`] of it; and from then on every step of a
//! migration goes through these traits:
//!
//! | step | source | target |
//! |---|---|---|
//! | plan | [`Source::model`], [`Source::shards`] | [`Target::accepts`], [`Target::check_source`] |
//! | `ferry start` pre-checks | [`Source::precheck`] | [`Target::precheck`] |
//! | agent start | [`Source::connect`], [`Source::recover`], [`Source::prepare`] | [`Target::connect`], [`Target::protect`] |
//! | sync | [`Source::tail`] → [`Tailer::run`] | [`Target::sink`] (a [`ferry_replay::Sink`]) |
//! | cutover | [`Fence::make_read_only`], [`Fence::fence`], [`Fence::writes_after_fence`] | [`ferry_replay::Sink::after_fence`], [`Opener::open`] |
//! | `verify`, cutover verification | [`Source::reader`] | [`Target::reader`] |
//!
//! # Data models
//!
//! Each side declares the [`DataModel`] it holds or accepts (key-value with
//! leases, documents by namespace and id, versioned secrets, one whole
//! document, a directory of documents). The pairs that may run are derived
//! from them: a source feeds a target whose [`Target::accepts`] lists the
//! source's model. Verification compares a source's [`Reader`] with a
//! target's by data model ([`verify::compare`]), so a store that implements
//! the reader of its model gets `ferry verify` and the cutover's
//! verification against every store of that model.
//!
//! # Contracts common to every method
//!
//! - **Connect first.** [`Source::connect`] / [`Target::connect`] are called
//!   once, before any other method that talks to the store; they may be
//!   called again (idempotent). Methods that need the connection and find
//!   none return an error rather than panic.
//! - **Errors are sentences.** Every `String` error and every [`Refusal`] is
//!   one sentence that names the store, the problem and the fix. A
//!   [`Refusal`] carries the exit code (`Usage` for a bad URL or flag,
//!   `Refused` for a store that is unreachable, refuses credentials or is
//!   not empty).
//! - **Nothing is written by a pre-check.** Pre-checks only read.
//! - **Concurrency.** A [`Tailer`] runs as one task; sinks are called as the
//!   [`ferry_replay::Sink`] contract says (one call per shard at a time,
//!   shards concurrently). Fence and reader methods may be called from any
//!   task while the tailer runs.
//!
//! # Adding a store
//!
//! 1. A crate `crates/<store>` with the store's client code, depending on
//!    this crate (never on the agent).
//! 2. A `connector` module there: a type implementing [`Connector`] (the
//!    URL scheme's [`ferry_core::StoreKind`]), and the [`Source`] and/or
//!    [`Target`] it makes, each with the [`Reader`] of its data model.
//! 3. One line in `ferry-stores`' registry. Nothing in the agent or the CLI.

pub mod check;
pub mod doc_key;
pub mod model;
pub mod place;
pub mod state;
pub mod unmapped;
pub mod verify;

pub use async_trait::async_trait;
pub use check::{CheckContext, Refusal};
pub use model::{DataModel, Namespace};
pub use state::StateDir;
pub use unmapped::{Unmapped, UnmappedEntry};
pub use verify::{Comparison, Reader};

use ferry_core::{ShardSpan, StoreKind, StoreUrl};
use ferry_journal::seal::SealKey;
use ferry_journal::SharedJournal;
use ferry_lag::LagTracker;
use ferry_replay::{RateLimiter, SharedSink, Shutdown};
use std::any::Any;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Options of a run that connectors read: the common ones as fields,
/// a connector's own flags (`--cells.prefixes`) by name in `params`.
#[derive(Clone, Default)]
pub struct Options {
    pub resnapshot_on_compaction: bool,
    /// Reads of the source per second, shared by every tailer.
    pub source_limiter: Option<Arc<RateLimiter>>,
    /// How often a polled source (Vault) is looked at.
    pub poll_interval: Option<Duration>,
    /// Connector flags by name, e.g. `cells.prefixes` → `v4-early`.
    pub params: BTreeMap<String, String>,
}

/// A source of one URL.
#[async_trait]
pub trait Source: Send + Sync + 'static {
    /// The URL as given (with credentials); its `Display` is redacted and
    /// names the source everywhere: journal checkpoints, metrics, messages.
    fn url(&self) -> &StoreUrl;

    /// What the source holds.
    fn model(&self) -> DataModel;

    /// How many journal shards its route takes, given `--shards`. A source
    /// whose order must hold across all its keys (one document, Cells'
    /// activity file) returns 1.
    fn shards(&self, requested: u32) -> u32 {
        requested.max(1)
    }

    /// Connects and checks the store is readable (reachable, credentials).
    async fn connect(&self) -> Result<(), String>;

    /// `ferry start`'s pre-checks: prints one [`check::line`] per finding
    /// (reachability, version, size, how it is made read-only at cutover)
    /// and refuses with one sentence. Reads only.
    async fn precheck(&self, ctx: &CheckContext) -> Result<(), Refusal>;

    /// At agent start, before tailing: undoes a read-only switch that an
    /// interrupted cutover left (recorded in `state`). Logs what it did;
    /// never fails the start.
    async fn recover(&self, _state: &StateDir) {}

    /// At agent start, after [`Source::connect`]: reads what its targets'
    /// sinks need from it (MongoDB: collection options and indexes).
    async fn prepare(&self) -> Result<(), String> {
        Ok(())
    }

    /// The route's tailer and its fence. Called once per agent run.
    fn tail(&self, ctx: &TailContext) -> Result<Tailing, String>;

    /// The verification reader (see [`verify`]).
    fn reader(&self) -> Result<Reader, String>;

    /// Whether the continuous verifier may compare this source whole in
    /// the background, pass after pass, when its reader has no range reads
    /// ([`verify::continuous::Whole`]). False for a source whose reader
    /// replays a log to build the state it compares (a Kafka topic): each
    /// pass would read the whole log again; its routes are compared whole
    /// inside the cutover's window instead.
    fn background_compare(&self) -> bool {
        true
    }

    /// `ferry set-server-mode`: makes the store read-only (`true`) for
    /// every user but Ferry's, or gives the writes back; returns the line to
    /// print. Stores Ferry cannot switch refuse with [`Refusal::usage`].
    async fn set_server_mode(&self, read_only: bool) -> Result<String, Refusal> {
        let _ = read_only;
        Err(Refusal::usage(format!(
            "{}: Ferry switches etcd and MongoDB stores; stop the writers of a {} store yourself",
            self.url(),
            self.url().kind().name()
        )))
    }

    /// How the source could hold one of `wanted` instead of its
    /// [`Source::model`] (a Kafka topic: `&events=mongodb`), as words
    /// ending the sentence of a pair that cannot run. `None` by default.
    fn model_hint(&self, wanted: &[DataModel]) -> Option<String> {
        let _ = wanted;
        None
    }

    /// Whether its values are secrets (Vault, the keyring, `pydio.json`): a
    /// target that would publish them as plain text (Kafka) refuses such a
    /// source unless told otherwise.
    fn holds_secrets(&self) -> bool {
        false
    }

    /// How one of its events reads outside Ferry (an event stream's key and
    /// `after`): see [`Rendered`]. `value` is the event's plain value (a
    /// sealed one already opened). The default shows the key as text and
    /// the value as text, or base64 when it is not UTF-8.
    fn render(&self, key: &[u8], value: Option<&[u8]>, meta: &ferry_core::StoreMeta) -> Rendered {
        let _ = meta;
        Rendered {
            key: serde_json::json!({ "key": String::from_utf8_lossy(key) }),
            after: value.map(|v| serde_json::json!({ "value": text_or_base64(v) })),
            created: None,
        }
    }

    /// The deployment the source runs on, when a switch of a target on the
    /// same deployment would reach it too (MongoDB's write block is
    /// deployment-wide). Compared with [`Target::deployment`].
    fn deployment(&self) -> Option<String> {
        None
    }

    fn as_any(&self) -> &dyn Any;
}

/// One event as a consumer outside Ferry sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Rendered {
    /// The entity's identity, stable across runs (a record key).
    pub key: serde_json::Value,
    /// The entity's state after the event; `None` for a delete.
    pub after: Option<serde_json::Value>,
    /// `Some(true)` when the source says the event created the entity.
    pub created: Option<bool>,
}

/// `bytes` as a JSON string when they are UTF-8, else `{"base64": …}`.
pub fn text_or_base64(bytes: &[u8]) -> serde_json::Value {
    match std::str::from_utf8(bytes) {
        Ok(s) => serde_json::Value::String(s.to_string()),
        Err(_) => serde_json::json!({ "base64": base64(bytes) }),
    }
}

/// Standard base64 with padding (RFC 4648).
pub fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// What a source's tailer is given.
#[derive(Clone)]
pub struct TailContext {
    /// The route's shards.
    pub span: ShardSpan,
    pub options: Options,
    /// Seals secret values before they reach the journal.
    pub seal: Arc<SealKey>,
    /// Whether one of the route's targets wants a document as one key per
    /// leaf (an etcd target with `?withKeys=true`).
    pub with_keys: bool,
}

/// A route's running half at the source.
pub struct Tailing {
    pub tailer: Box<dyn Tailer>,
    pub fence: Arc<dyn Fence>,
    /// What the source shares with its targets' sinks (etcd: the lease
    /// liveness of the tailer), downcast by the target that knows it.
    pub shared: Arc<dyn Any + Send + Sync>,
}

/// Snapshot then change log into the journal, through the shared appender.
#[async_trait]
pub trait Tailer: Send {
    /// Runs until `shutdown`; an error ends the agent's run with its
    /// sentence. Durable: everything it appended is in the journal when an
    /// append returns; its checkpoint never gets ahead of its events.
    async fn run(
        self: Box<Self>,
        journal: Arc<SharedJournal>,
        lag: Arc<LagTracker>,
        shutdown: Shutdown,
    ) -> Result<(), String>;
}

/// How the cutover fences a route's source.
#[async_trait]
pub trait Fence: Send + Sync {
    /// Step 2 of the cutover: makes the source read-only for everyone but
    /// Ferry, recording what it changed in `ctx.state` first, so a crash is
    /// undone by the next start ([`Source::recover`]). `None`: nothing was
    /// switched (`external`, or a store whose writers the operator stops).
    async fn make_read_only(
        &self,
        ctx: &ReadOnlyContext<'_>,
    ) -> Result<Option<Box<dyn ReadOnlyGuard>>, String>;

    /// Journals a fence marker in every shard of the route once the tailer
    /// has everything the (read-only) source holds; returns the position.
    async fn fence(&self) -> Result<u64, String>;

    /// Changes the tailer saw after the fence: (key, position).
    fn writes_after_fence(&self) -> Vec<(Vec<u8>, u64)>;
}

/// What [`Fence::make_read_only`] is told.
pub struct ReadOnlyContext<'a> {
    /// `--source.read-only=external`: the operator stops the writers.
    pub external: bool,
    pub state: &'a StateDir,
}

/// A read-only switch in force.
#[async_trait]
pub trait ReadOnlyGuard: Send + Sync {
    /// The cutover failed: give the writes back, and forget the record.
    async fn undo(&self);
    /// The cutover succeeded: the source stays read-only; forget the
    /// crash record (the store's own record serves `set-server-mode`).
    fn keep(&self);
}

/// A target of one URL.
#[async_trait]
pub trait Target: Send + Sync + 'static {
    /// As [`Source::url`].
    fn url(&self) -> &StoreUrl;

    /// The source models it takes.
    fn accepts(&self) -> &'static [DataModel];

    /// Refuses a source its model allows but this target cannot take as
    /// given (a document to an etcd target without a key), in one sentence.
    fn check_source(&self, _source: &dyn Source) -> Result<(), String> {
        Ok(())
    }

    /// Whether it wants a document source's leaves as keys (an etcd
    /// target with `?withKeys=true`): the source's tailer then journals
    /// one key per leaf.
    fn wants_leaves(&self) -> bool {
        false
    }

    /// Whether several routes may write it (MongoDB: each writes its own
    /// namespaces and keeps its own checkpoints).
    fn shared(&self) -> bool {
        false
    }

    /// Connects and checks the store is writable.
    async fn connect(&self) -> Result<(), String>;

    /// Pre-checks for the route from `source`: reachable, empty unless
    /// `ctx.force` or `ctx.resuming`, limits. Reads only.
    async fn precheck(&self, source: &dyn Source, ctx: &CheckContext) -> Result<(), Refusal>;

    /// The route's sink (see [`ferry_replay::Sink`] for its contract).
    fn sink(&self, ctx: &SinkContext<'_>) -> Result<SharedSink, String>;

    /// Called once at agent start when no source shares its deployment:
    /// keeps users' writes off the target until the cutover opens it.
    /// `None`: the target cannot be protected (said in the pre-check).
    async fn protect(&self) -> Result<Option<Box<dyn Opener>>, String> {
        Ok(None)
    }

    /// As [`Source::deployment`].
    fn deployment(&self) -> Option<String> {
        None
    }

    /// The verification reader, as this target holds `source`'s data.
    fn reader(&self, source: &dyn Source) -> Result<Reader, String>;

    fn as_any(&self) -> &dyn Any;
}

/// What [`Target::sink`] is given.
pub struct SinkContext<'a> {
    pub source: &'a Arc<dyn Source>,
    /// The source's [`Tailing::shared`].
    pub shared: &'a (dyn Any + Send + Sync),
    pub span: ShardSpan,
    /// This journal's identity, for targets that keep checkpoints.
    pub journal_id: &'a str,
    /// An earlier agent ran on this journal (and may have been killed with
    /// writes in flight); false on the journal's first run.
    pub resumed: bool,
    /// Where sinks record source entries they cannot map for the target.
    pub unmapped: &'a Arc<Unmapped>,
}

/// Opens a protected target for its users: the cutover's last step.
#[async_trait]
pub trait Opener: Send + Sync {
    async fn open(&self) -> Result<(), String>;
}

/// One route a connector planned: a source and the targets it feeds.
pub struct Planned {
    pub source: Arc<dyn Source>,
    pub targets: Vec<Arc<dyn Target>>,
}

/// What a composite source (`cells://`) expands into.
pub struct Expansion {
    pub routes: Vec<Planned>,
    /// What the operator does after the cutover (printed with the proof).
    pub next_steps: Vec<String>,
}

/// A store kind: makes sources and targets of its URLs.
pub trait Connector: Send + Sync {
    fn kind(&self) -> StoreKind;

    /// The model its sources hold, for the list of pairs in messages;
    /// `None` when it has no standalone source.
    fn source_model(&self) -> Option<DataModel>;

    /// The models its targets take.
    fn target_models(&self) -> &'static [DataModel];

    /// A source of `url` (not connected). Refuses, in one sentence, a URL it
    /// cannot read.
    fn source(&self, url: &StoreUrl, options: &Options) -> Result<Arc<dyn Source>, String>;

    /// A target of `url` (not connected).
    fn target(&self, url: &StoreUrl, options: &Options) -> Result<Arc<dyn Target>, String>;

    /// The document at `url`, for `ferry config copy`.
    fn document(&self, url: &StoreUrl) -> Result<Arc<dyn place::DocumentPlace>, Refusal> {
        Err(not_a_place(url))
    }

    /// The versioned secrets under `url`, for `ferry config copy --versions`.
    fn versioned(&self, _url: &StoreUrl) -> Result<Arc<dyn place::VersionedPlace>, Refusal> {
        Err(not_versioned())
    }

    /// Whether its URLs name a composite source (see [`Connector::expand`]).
    fn composite(&self) -> bool {
        false
    }

    /// A composite source expands, with the targets given, into routes of
    /// other connectors; `None` for ordinary sources.
    fn expand(
        &self,
        _url: &StoreUrl,
        _targets: &[StoreUrl],
        _registry: &Registry,
    ) -> Option<Result<Expansion, String>> {
        None
    }
}

/// URL scheme → connector.
pub struct Registry {
    connectors: Vec<Box<dyn Connector>>,
    options: Options,
}

impl Registry {
    pub fn new(connectors: Vec<Box<dyn Connector>>) -> Self {
        Registry {
            connectors,
            options: Options::default(),
        }
    }

    /// The same connectors with a run's options.
    pub fn with_options(mut self, options: Options) -> Self {
        self.options = options;
        self
    }

    pub fn options(&self) -> &Options {
        &self.options
    }

    pub fn connector(&self, kind: StoreKind) -> Option<&dyn Connector> {
        self.connectors
            .iter()
            .find(|c| c.kind() == kind)
            .map(AsRef::as_ref)
    }

    fn of(&self, url: &StoreUrl) -> Result<&dyn Connector, String> {
        self.connector(url.kind()).ok_or_else(|| {
            format!(
                "{url}: {} stores arrive with a later release",
                url.kind().name()
            )
        })
    }

    pub fn source(&self, url: &StoreUrl) -> Result<Arc<dyn Source>, String> {
        self.of(url)?.source(url, &self.options)
    }

    pub fn target(&self, url: &StoreUrl) -> Result<Arc<dyn Target>, String> {
        self.of(url)?.target(url, &self.options)
    }

    /// The document at `url` (`ferry config copy`).
    pub fn document(&self, url: &StoreUrl) -> Result<Arc<dyn place::DocumentPlace>, Refusal> {
        match self.connector(url.kind()) {
            Some(c) => c.document(url),
            None => Err(not_a_place(url)),
        }
    }

    /// The versioned secrets under `url` (`ferry config copy --versions`).
    pub fn versioned(&self, url: &StoreUrl) -> Result<Arc<dyn place::VersionedPlace>, Refusal> {
        match self.connector(url.kind()) {
            Some(c) => c.versioned(url),
            None => Err(not_versioned()),
        }
    }

    /// `url`'s expansion if it is a composite source.
    pub fn expand(
        &self,
        url: &StoreUrl,
        targets: &[StoreUrl],
    ) -> Option<Result<Expansion, String>> {
        self.connector(url.kind())?.expand(url, targets, self)
    }

    /// Whether `url` names a composite source.
    pub fn is_composite(&self, url: &StoreUrl) -> bool {
        self.connector(url.kind()).is_some_and(Connector::composite)
    }

    /// The pairs this build moves, derived from the models, as a phrase:
    /// "etcd to etcd, file to etcd, file or vault, …".
    pub fn pairs_phrase(&self) -> String {
        let mut parts = Vec::new();
        for c in &self.connectors {
            let Some(m) = c.source_model() else { continue };
            let to: Vec<&str> = self
                .connectors
                .iter()
                .filter(|t| t.target_models().contains(&m))
                .map(|t| t.kind().name())
                .collect();
            if !to.is_empty() {
                parts.push(format!("{} to {}", c.kind().name(), or_list(&to)));
            }
        }
        parts.join(", ")
    }
}

fn not_a_place(url: &StoreUrl) -> Refusal {
    Refusal::usage(format!(
        "{url}: this build copies configuration between JSON files, etcd keys and Vault KV secrets only"
    ))
}

fn not_versioned() -> Refusal {
    Refusal::usage("--versions copies between two Vault KV v2 locations; give vault:// URLs to --from and --to")
}

fn or_list(names: &[&str]) -> String {
    match names {
        [] => String::new(),
        [one] => (*one).to_string(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

/// Why `source` cannot feed `target`, in one sentence, if it cannot.
pub fn check_pair(
    registry: &Registry,
    source: &dyn Source,
    target: &dyn Target,
) -> Result<(), String> {
    if !target.accepts().contains(&source.model()) {
        let hint = source
            .model_hint(target.accepts())
            .map(|h| format!("; {h}"))
            .unwrap_or_default();
        return Err(format!(
            "{} cannot feed {}: {} holds {} and {} takes {}; this build moves {}{hint}",
            source.url(),
            target.url(),
            source.url().kind().name(),
            source.model().describe(),
            target.url().kind().name(),
            target
                .accepts()
                .iter()
                .map(|m| m.describe())
                .collect::<Vec<_>>()
                .join(", "),
            registry.pairs_phrase()
        ));
    }
    target.check_source(source)
}

/// A polled source's fence (JSON files, Vault, directories): one more
/// complete look that starts after the switch. Their writers are stopped
/// by the operator, so the switch itself is nothing.
#[async_trait]
impl Fence for ferry_replay::PollFence {
    async fn make_read_only(
        &self,
        _ctx: &ReadOnlyContext<'_>,
    ) -> Result<Option<Box<dyn ReadOnlyGuard>>, String> {
        Ok(None)
    }
    async fn fence(&self) -> Result<u64, String> {
        ferry_replay::PollFence::fence(self).await
    }
    fn writes_after_fence(&self) -> Vec<(Vec<u8>, u64)> {
        ferry_replay::PollFence::writes_after_fence(self)
    }
}

/// A [`Tailer`] from a closure that runs a store's tailer: every store's
/// tailer has the same `run(journal, lag, shutdown)`, with its own error.
pub fn tailer<F, Fut, E>(run: F) -> Box<dyn Tailer>
where
    F: FnOnce(Arc<SharedJournal>, Arc<LagTracker>, Shutdown) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(), E>> + Send,
    E: std::fmt::Display,
{
    struct Run<F>(F);
    #[async_trait]
    impl<F, Fut, E> Tailer for Run<F>
    where
        F: FnOnce(Arc<SharedJournal>, Arc<LagTracker>, Shutdown) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<(), E>> + Send,
        E: std::fmt::Display,
    {
        async fn run(
            self: Box<Self>,
            journal: Arc<SharedJournal>,
            lag: Arc<LagTracker>,
            shutdown: Shutdown,
        ) -> Result<(), String> {
            (self.0)(journal, lag, shutdown)
                .await
                .map_err(|e| e.to_string())
        }
    }
    Box::new(Run(run))
}

/// A store's client, made once by `connect` and used by every later call.
pub struct Connection<T>(std::sync::OnceLock<T>);

impl<T> Default for Connection<T> {
    fn default() -> Self {
        Connection(std::sync::OnceLock::new())
    }
}

impl<T> Connection<T> {
    /// The client, or the sentence saying `connect` was not called first.
    pub fn get(&self, url: &StoreUrl) -> Result<&T, String> {
        self.0.get().ok_or_else(|| {
            format!("{url}: not connected (a connector method was called before connect)")
        })
    }

    /// Connects with `make` unless connected already.
    pub async fn connect<E: std::fmt::Display>(
        &self,
        make: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<&T, String> {
        if self.0.get().is_none() {
            let c = make.await.map_err(|e| e.to_string())?;
            let _ = self.0.set(c);
        }
        Ok(self.0.get().expect("set above"))
    }

    /// Keeps a client made elsewhere (a pre-check's).
    pub fn set(&self, client: T) {
        let _ = self.0.set(client);
    }
}
