//! Vault KV v2 in the pipeline: a polling tailer and a version-exact sink.
//!
//! **Tailer.** A look lists every secret under the URL's path and reads
//! each one's metadata (`current_version`, `updated_time`, version states,
//! secret settings), a bounded number at a time. The first look after start
//! is a snapshot: every version of every secret, oldest first, data read
//! where the version is live. Later looks, every `poll_interval`, compare
//! the metadata with what was seen and journal only what changed: new
//! versions, versions deleted, undeleted or destroyed, changed settings,
//! secrets removed. Values are sealed before they reach the journal. The
//! journal's key is the secret's path relative to the URL's path, so a
//! target can root it elsewhere; a secret's versions share a shard and keep
//! their order. A restart snapshots again: the sink makes that harmless.
//!
//! **Sink.** Version numbers are the idempotency key. The next version is
//! written with check-and-set on the version before it, so a write offered
//! twice cannot create a second version: the second attempt finds the
//! version there and only brings its state (deleted, destroyed) and the
//! secret's settings in line. The sink keeps what it knows of each target
//! secret in memory (Ferry is the target's only writer during the sync) and
//! re-reads a secret only when a check-and-set says its picture is stale.
//! The target is listed once at start: a secret absent then needs no read
//! before its first write. Settings and original creation times
//! (`ferry-created-v<N>` in `custom_metadata`) are written once per secret
//! per batch, not per version.

use crate::versions::{CasWrite, SecretMeta, VersionOp, CREATED_KEY_PREFIX};
use crate::{VaultError, VaultStore};
use ferry_core::{
    ErrorPolicy, Event, Op, Position, Seq, ShardId, ShardSpan, StoreMeta, Value, VaultVersionMeta,
};
use ferry_journal::seal::SealKey;
use ferry_journal::Journal;
use ferry_lag::{now_ms, LagTracker, Phase};
use ferry_replay::{PollFence, Shutdown, Sink, SinkError, SpanAppender};
use futures::{StreamExt, TryStreamExt};
use serde_json::{Map, Value as Json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Vault's own limit on custom metadata keys.
const MAX_CUSTOM_KEYS: usize = 64;

/// How the tailer looks at its source.
#[derive(Clone)]
pub struct TailerOptions {
    /// Between two looks for changes.
    pub poll_interval: Duration,
    /// Secrets read at once.
    pub concurrency: usize,
    /// Secrets per journal append during the snapshot.
    pub batch_secrets: usize,
}

impl Default for TailerOptions {
    fn default() -> Self {
        TailerOptions {
            poll_interval: Duration::from_secs(1),
            concurrency: 16,
            batch_secrets: 64,
        }
    }
}

/// What the tailer last saw of one secret.
#[derive(Clone, PartialEq)]
struct Seen {
    meta: SecretMeta,
}

/// Tails the secrets under one Vault path into the journal.
pub struct VaultTailer {
    store: Arc<VaultStore>,
    source: String,
    span: ShardSpan,
    opts: TailerOptions,
    seal: Arc<SealKey>,
    fence: PollFence,
}

impl VaultTailer {
    pub fn new(
        store: VaultStore,
        source_name: String,
        span: ShardSpan,
        opts: TailerOptions,
        seal: Arc<SealKey>,
    ) -> Self {
        VaultTailer {
            store: Arc::new(store),
            source: source_name,
            span,
            opts,
            seal,
            fence: PollFence::new(),
        }
    }

    pub fn fence_handle(&self) -> PollFence {
        self.fence.clone()
    }

    /// Runs until shutdown (`Ok`) or an error that is not transient.
    pub async fn run<J: Journal>(
        self,
        journal: Arc<J>,
        lag: Arc<LagTracker>,
        mut shutdown: Shutdown,
    ) -> Result<(), VaultError> {
        let mut app = SpanAppender::load(journal.as_ref(), &lag, self.source.clone(), self.span)
            .map_err(|e| self.journal_err(e))?;
        // Positions keep growing across restarts: one round per look.
        let mut round = app
            .checkpoint()
            .map_err(|e| self.journal_err(e))?
            .map_or(0, |p| p.order);
        let mut seen: Option<BTreeMap<String, Seen>> = None;
        let mut attempt = 0u32;
        loop {
            if shutdown.is_stopping() {
                return Ok(());
            }
            let request = self.fence.take_request();
            round += 1;
            let result = match &seen {
                None => self
                    .snapshot(&mut app, round, &mut shutdown)
                    .await
                    .map(|s| s.map(|s| (s, Vec::new()))),
                Some(prev) => self.look(round, prev).await.map(Some),
            };
            match result {
                Ok(Some((now, events))) => {
                    attempt = 0;
                    seen = Some(now);
                    self.fence
                        .journal_look(&mut app, &mut round, events, request)
                        .await
                        .map_err(|e| self.journal_err(e))?;
                }
                // Stopped during the snapshot.
                Ok(None) => return Ok(()),
                Err(e) => {
                    if let Some(req) = request {
                        req.fail(e.to_string());
                    }
                    match e.kind().policy(attempt) {
                        ErrorPolicy::Retry { after } => {
                            tracing::warn!(store = self.store.name(), error = %e, attempt, "Vault tailer failed; retrying in {after:?}");
                            attempt += 1;
                            tokio::select! {
                                () = tokio::time::sleep(after) => continue,
                                () = shutdown.wait() => return Ok(()),
                            }
                        }
                        _ => return Err(e),
                    }
                }
            }
            tokio::select! {
                () = tokio::time::sleep(self.opts.poll_interval) => {}
                () = shutdown.wait() => return Ok(()),
            }
        }
    }

    fn journal_err(&self, e: ferry_replay::AppendError) -> VaultError {
        VaultError::Server {
            store: self.store.name().to_string(),
            status: 0,
            detail: format!("journal: {e}"),
        }
    }

    /// Every secret's metadata, read `concurrency` at a time.
    async fn metadata_all(&self) -> Result<BTreeMap<String, SecretMeta>, VaultError> {
        let paths = self.store.list_all().await?;
        let store = &self.store;
        futures::stream::iter(paths)
            .map(|p| async move { Ok::<_, VaultError>((store.metadata(&p).await?, p)) })
            .buffer_unordered(self.opts.concurrency.max(1))
            .try_filter_map(|(m, p)| async move { Ok(m.map(|m| (p, m))) })
            .try_collect()
            .await
    }

    /// The snapshot: every version of every secret. `Ok(None)`: shutdown.
    async fn snapshot<J: Journal>(
        &self,
        app: &mut SpanAppender<'_, J>,
        round: u64,
        shutdown: &mut Shutdown,
    ) -> Result<Option<BTreeMap<String, Seen>>, VaultError> {
        let metas = self.metadata_all().await?;
        let total = metas.values().map(|m| m.current_version).sum::<u64>();
        let pos = Position::at(round);
        app.append(
            app.markers(
                Op::SnapshotBegin {
                    total_keys: Some(total),
                },
                &pos,
            ),
            None,
        )
        .await
        .map_err(|e| self.journal_err(e))?;
        app.set_phase(Phase::Snapshot { copied: 0, total });
        let mut copied = 0u64;
        let entries: Vec<(String, SecretMeta)> = metas.into_iter().collect();
        let mut seen = BTreeMap::new();
        for chunk in entries.chunks(self.opts.batch_secrets.max(1)) {
            if shutdown.is_stopping() {
                return Ok(None);
            }
            let jobs: Vec<_> = chunk
                .iter()
                .map(|(path, meta)| {
                    Box::pin(self.version_events(path, meta, 1..=meta.current_version, round))
                })
                .collect();
            let events: Vec<Vec<Event>> = futures::stream::iter(jobs)
                .buffered(self.opts.concurrency.max(1))
                .try_collect()
                .await?;
            let n: u64 = events.iter().map(|e| e.len() as u64).sum();
            app.append(app.split(events.into_iter().flatten().collect()), None)
                .await
                .map_err(|e| self.journal_err(e))?;
            copied += n;
            app.set_phase(Phase::Snapshot { copied, total });
            for (path, meta) in chunk {
                seen.insert(path.clone(), Seen { meta: meta.clone() });
            }
        }
        app.append(app.markers(Op::SnapshotEnd, &pos), Some(pos))
            .await
            .map_err(|e| self.journal_err(e))?;
        app.set_phase(Phase::Streaming);
        tracing::info!(
            store = self.store.name(),
            secrets = seen.len(),
            versions = copied,
            "Vault snapshot journaled; polling for changes"
        );
        Ok(Some(seen))
    }

    /// One look for changes against `prev`: what is there now, and the
    /// events that take the target there.
    async fn look(
        &self,
        round: u64,
        prev: &BTreeMap<String, Seen>,
    ) -> Result<(BTreeMap<String, Seen>, Vec<Event>), VaultError> {
        let metas = self.metadata_all().await?;
        let mut events = Vec::new();
        for (path, meta) in &metas {
            let old = prev.get(path).map(|s| &s.meta);
            let versions: Vec<u64> = match old {
                None => (1..=meta.current_version).collect(),
                Some(old) if old == meta => continue,
                Some(old) => {
                    let settings_changed = (
                        old.max_versions,
                        old.cas_required,
                        &old.delete_version_after,
                        &old.custom_metadata,
                    ) != (
                        meta.max_versions,
                        meta.cas_required,
                        &meta.delete_version_after,
                        &meta.custom_metadata,
                    );
                    let mut v: Vec<u64> = (1..=meta.current_version)
                        .filter(|n| {
                            *n > old.current_version || old.versions.get(n) != meta.versions.get(n)
                        })
                        .collect();
                    if v.is_empty() && settings_changed {
                        v.push(meta.current_version);
                    }
                    v
                }
            };
            events.extend(self.version_events(path, meta, versions, round).await?);
        }
        for path in prev.keys().filter(|p| !metas.contains_key(*p)) {
            events.push(self.event(
                path,
                round,
                Op::Delete {
                    meta: StoreMeta::None,
                },
            ));
        }
        Ok((
            metas
                .into_iter()
                .map(|(p, meta)| (p, Seen { meta }))
                .collect(),
            events,
        ))
    }

    /// The events for `versions` of one secret, in order.
    async fn version_events(
        &self,
        path: &str,
        meta: &SecretMeta,
        versions: impl IntoIterator<Item = u64>,
        round: u64,
    ) -> Result<Vec<Event>, VaultError> {
        let mut out = Vec::new();
        let custom: BTreeMap<String, String> = meta
            .custom_metadata
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.as_str().map_or_else(|| v.to_string(), str::to_string),
                )
            })
            .collect();
        for v in versions {
            let state = meta.versions.get(&v);
            // Trimmed at the source (below its oldest version): destroyed.
            let (deleted, destroyed) = state.map_or((false, true), |s| (s.deleted, s.destroyed));
            let data = if deleted || destroyed {
                Map::new()
            } else {
                self.store.read_version(path, v).await?.unwrap_or_default()
            };
            let bytes = serde_json::to_vec(&Json::Object(data)).expect("JSON serialises");
            let vm = VaultVersionMeta {
                version: v,
                created_time: state.map(|s| s.created_time.clone()).unwrap_or_default(),
                deletion_time: if deleted {
                    "deleted".into()
                } else {
                    String::new()
                },
                destroyed,
                custom_metadata: custom.clone(),
                max_versions: u32::try_from(meta.max_versions).unwrap_or(u32::MAX),
                cas_required: meta.cas_required,
                delete_version_after: meta.delete_version_after.clone(),
            };
            out.push(self.event(
                path,
                round,
                Op::Put {
                    value: self.seal.seal(&bytes),
                    meta: StoreMeta::Vault(Box::new(vm)),
                },
            ));
        }
        Ok(out)
    }

    fn event(&self, path: &str, round: u64, op: Op) -> Event {
        let key = self.store.relative(path).as_bytes().to_vec();
        Event {
            shard: self.span.shard_for(&key),
            seq: 0,
            position: Position::at(round),
            key,
            op,
            source_ts_ms: 0,
            capture_ts_ms: now_ms(),
        }
    }
}

/// What the sink knows of one target secret.
#[derive(Clone, Debug, Default)]
struct Known {
    current: u64,
    /// (deleted, destroyed) per version.
    states: BTreeMap<u64, (bool, bool)>,
    /// The settings last written or read: max_versions, cas_required,
    /// delete_version_after, custom_metadata (Ferry's keys included).
    settings: Option<(u64, bool, String, Map<String, Json>)>,
}

impl Known {
    fn from_meta(m: &SecretMeta) -> Known {
        Known {
            current: m.current_version,
            states: m
                .versions
                .iter()
                .map(|(v, s)| (*v, (s.deleted, s.destroyed)))
                .collect(),
            settings: Some((
                m.max_versions,
                m.cas_required,
                m.delete_version_after.clone(),
                m.custom_metadata.clone(),
            )),
        }
    }
}

/// Settings to write for one secret at the end of a batch.
struct Pending {
    /// The newest version's metadata (settings are the secret's, as of it).
    meta: VaultVersionMeta,
    /// Creation times of the versions applied in this batch.
    created: BTreeMap<u64, String>,
}

/// A Vault KV v2 target. See the module doc.
pub struct VaultSink {
    store: VaultStore,
    name: String,
    /// Target secrets by absolute path; `None` until [`Sink::startup`]
    /// listed the target (after that, an absent entry is an absent secret
    /// unless `present` says it existed at start).
    known: Mutex<HashMap<String, Known>>,
    present: Mutex<HashSet<String>>,
}

impl VaultSink {
    pub fn new(store: VaultStore, name: String) -> Self {
        VaultSink {
            store,
            name,
            known: Mutex::new(HashMap::new()),
            present: Mutex::new(HashSet::new()),
        }
    }

    fn err(&self, e: VaultError) -> SinkError {
        SinkError {
            kind: e.kind(),
            message: e.to_string(),
        }
    }

    /// What is known of `path`, reading the target when needed.
    async fn known(&self, path: &str) -> Result<Known, VaultError> {
        if let Some(k) = self.known.lock().expect("lock").get(path) {
            return Ok(k.clone());
        }
        let existed = self.present.lock().expect("lock").contains(path);
        let k = if existed {
            self.store
                .metadata(path)
                .await?
                .map(|m| Known::from_meta(&m))
                .unwrap_or_default()
        } else {
            Known::default()
        };
        self.known
            .lock()
            .expect("lock")
            .insert(path.to_string(), k.clone());
        Ok(k)
    }

    fn remember(&self, path: &str, k: Known) {
        self.known.lock().expect("lock").insert(path.to_string(), k);
    }

    /// Forgets `path` so the next use reads it from the target.
    fn forget(&self, path: &str) {
        self.known.lock().expect("lock").remove(path);
        self.present.lock().expect("lock").insert(path.to_string());
    }

    /// Applies one version of one secret; see the module doc.
    async fn apply_version(
        &self,
        path: &str,
        data: &Map<String, Json>,
        m: &VaultVersionMeta,
        pending_settings: &mut BTreeMap<String, Pending>,
    ) -> Result<(), VaultError> {
        let n = m.version;
        for _ in 0..3 {
            let mut k = self.known(path).await?;
            if k.current + 1 < n {
                return Err(VaultError::Server {
                    store: self.name.clone(),
                    status: 0,
                    detail: format!(
                        "{path} is at version {} on the target but the next source version is {n}; the target was changed outside Ferry: delete the secret there and start again",
                        k.current
                    ),
                });
            }
            if k.current + 1 == n {
                if n == 1 && (m.max_versions != 0 || m.delete_version_after != "0s") {
                    // Before the first write, so the target trims as the source does.
                    self.store
                        .write_metadata(
                            path,
                            u64::from(m.max_versions),
                            false,
                            &m.delete_version_after,
                            &Map::new(),
                        )
                        .await?;
                }
                match self.store.write_cas(path, data, k.current).await? {
                    CasWrite::Written(_) => {
                        k.current = n;
                        k.states.insert(n, (false, false));
                    }
                    CasWrite::Mismatch => {
                        self.forget(path);
                        continue;
                    }
                }
            }
            let (deleted, destroyed) = (!m.deletion_time.is_empty(), m.destroyed);
            let (t_del, t_des) = k.states.get(&n).copied().unwrap_or((false, false));
            if deleted && !t_del && !t_des {
                self.store.version_op(VersionOp::Delete, path, &[n]).await?;
            }
            if destroyed && !t_des {
                self.store
                    .version_op(VersionOp::Destroy, path, &[n])
                    .await?;
            }
            if !deleted && !destroyed && t_del && !t_des {
                self.store
                    .version_op(VersionOp::Undelete, path, &[n])
                    .await?;
            }
            k.states
                .insert(n, (deleted || (t_del && destroyed), destroyed || t_des));
            self.remember(path, k);
            let p = pending_settings
                .entry(path.to_string())
                .or_insert_with(|| Pending {
                    meta: m.clone(),
                    created: BTreeMap::new(),
                });
            p.meta = m.clone();
            if !m.created_time.is_empty() {
                p.created.insert(n, m.created_time.clone());
            }
            return Ok(());
        }
        Err(VaultError::Server {
            store: self.name.clone(),
            status: 0,
            detail: format!(
                "{path}: check-and-set kept failing; is something else writing the target?"
            ),
        })
    }

    /// Brings a secret's settings and Ferry's creation-time keys in line,
    /// once per batch.
    async fn settle(&self, path: &str, p: &Pending) -> Result<(), VaultError> {
        let m = &p.meta;
        let mut k = self.known(path).await?;
        let mut custom: Map<String, Json> = m
            .custom_metadata
            .iter()
            .map(|(a, b)| (a.clone(), Json::String(b.clone())))
            .collect();
        // Keep creation times recorded before; add this version's.
        if let Some((_, _, _, old)) = &k.settings {
            for (key, v) in old
                .iter()
                .filter(|(key, _)| key.starts_with(CREATED_KEY_PREFIX))
            {
                custom.insert(key.clone(), v.clone());
            }
        }
        for (v, t) in &p.created {
            let key = format!("{CREATED_KEY_PREFIX}{v}");
            if custom.len() < MAX_CUSTOM_KEYS || custom.contains_key(&key) {
                custom.insert(key, Json::String(t.clone()));
            }
        }
        let want = (
            u64::from(m.max_versions),
            m.cas_required,
            m.delete_version_after.clone(),
            custom,
        );
        if k.settings.as_ref() == Some(&want) {
            return Ok(());
        }
        self.store
            .write_metadata(path, want.0, want.1, &want.2, &want.3)
            .await?;
        k.settings = Some(want);
        self.remember(path, k);
        Ok(())
    }

    /// A whole document (from a file source) as the secret's data: a new
    /// version only when it differs from the current one.
    async fn apply_document(&self, path: &str, bytes: &[u8]) -> Result<(), SinkError> {
        let value: Json = serde_json::from_slice(bytes).map_err(|e| {
            SinkError::permanent(format!(
                "{}: the document is not JSON ({e}); a Vault secret holds a JSON object",
                self.name
            ))
        })?;
        let Json::Object(data) = value else {
            return Err(SinkError::permanent(format!(
                "{}: a Vault secret holds a JSON object, and this document is not one",
                self.name
            )));
        };
        let current = self.store.read_at(path).await.map_err(|e| self.err(e))?;
        if current.as_ref() == Some(&data) {
            return Ok(());
        }
        self.store
            .write_at(path, &data)
            .await
            .map_err(|e| self.err(e))?;
        self.forget(path);
        Ok(())
    }
}

impl Sink for VaultSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn startup(&self) -> Result<(), SinkError> {
        let paths = self.store.list_all().await.map_err(|e| self.err(e))?;
        *self.present.lock().expect("lock") = paths.into_iter().collect();
        Ok(())
    }

    /// None: version numbers make every apply idempotent.
    async fn durable_checkpoint(&self, _shard: ShardId) -> Result<Option<Seq>, SinkError> {
        Ok(None)
    }

    async fn apply(&self, _shard: ShardId, events: &[Event]) -> Result<Seq, SinkError> {
        let mut settings: BTreeMap<String, Pending> = BTreeMap::new();
        for e in events {
            let rel = std::str::from_utf8(&e.key).map_err(|_| {
                SinkError::permanent(format!(
                    "{}: a key is not UTF-8 and cannot be a Vault path",
                    self.name
                ))
            })?;
            let path = self.store.absolute(rel);
            match &e.op {
                Op::Put { value, meta } => {
                    let Value::Plain(bytes) = value else {
                        return Err(SinkError::fatal(format!(
                            "{}: a sealed value reached the sink unopened",
                            self.name
                        )));
                    };
                    match meta {
                        StoreMeta::Vault(m) => {
                            let data = match serde_json::from_slice::<Json>(bytes) {
                                Ok(Json::Object(d)) => d,
                                _ => Map::new(),
                            };
                            self.apply_version(&path, &data, m, &mut settings)
                                .await
                                .map_err(|e| self.err(e))?;
                        }
                        _ => self.apply_document(&path, bytes).await?,
                    }
                }
                Op::Delete { .. } => {
                    self.store
                        .delete_secret(&path)
                        .await
                        .map_err(|e| self.err(e))?;
                    self.known.lock().expect("lock").remove(&path);
                    self.present.lock().expect("lock").remove(&path);
                    settings.remove(&path);
                }
                _ => {}
            }
        }
        for (path, m) in &settings {
            self.settle(path, m).await.map_err(|e| self.err(e))?;
        }
        Ok(events.last().map_or(0, |e| e.seq))
    }

    async fn shutdown(&self) {}
}
