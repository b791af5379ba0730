//! Wiring and running one migration: journal, tailer, workers, API, cutover.

use crate::api::{AgentState, CutoverPhase};
use crate::config::AgentConfig;
use crate::control::AgentControl;
use crate::cutover::Cutover;
use crate::routes::{self, Fence, Route, SourceConn, TargetConn};
use crate::sinks::TargetSink;
use crate::{security, server};
use ferry_core::StoreUrl;
use ferry_etcd::EtcdStore;
use ferry_journal::{Journal, PersistPolicy};
use ferry_journal_rocks::{OpenMode, RocksJournal};
use ferry_lag::LagTracker;
use ferry_replay::{worker, Shutdown, WorkerConfig};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;

/// How the agent ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Cut over; the target is open.
    CutOver,
    /// Stopped by `stop --abort` or a failed cutover; the target was not opened.
    Aborted(String),
    /// Stopped by a signal; `ferry start` with the same journal resumes.
    Interrupted,
}

/// How long the agent keeps answering `status` after the migration ended,
/// so a CLI waiting on `stop` sees the final state.
const LINGER: Duration = Duration::from_secs(5);

pub struct AgentRun {
    pub dir: PathBuf,
    pub cfg: AgentConfig,
    /// Full URLs (with credentials), from the environment.
    pub sources: Vec<StoreUrl>,
    pub targets: Vec<StoreUrl>,
}

fn install_metrics() -> Result<metrics_exporter_prometheus::PrometheusHandle, String> {
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| format!("cannot install the metrics recorder: {e}"))?;
    for (name, help) in ferry_core::metric_names::DESCRIPTIONS {
        metrics::describe_counter!(*name, *help);
    }
    Ok(handle)
}

/// Source-side user Ferry writes as, from the URL (keeps its permissions).
fn source_user(url: &StoreUrl) -> Option<String> {
    match url {
        StoreUrl::Etcd { user, .. } => user.clone(),
        _ => None,
    }
}

/// A route with its stores connected and its pipeline built.
pub struct LiveRoute {
    pub route: Route,
    pub source: SourceConn,
    pub targets: Vec<TargetConn>,
    pub fence: Fence,
    pub sinks: Vec<Arc<TargetSink>>,
}

impl AgentRun {
    pub async fn run(self) -> Result<Outcome, String> {
        let dir = self.dir.as_path();
        let plan = routes::plan_with(
            &self.sources,
            &self.targets,
            self.cfg.shards,
            self.cfg.map_options()?,
        )?;
        let journal = Arc::new(
            RocksJournal::open(dir, OpenMode::Create, PersistPolicy::EveryBatch)
                .map_err(|e| e.to_string())?,
        );
        let metrics = install_metrics()?;
        metrics::gauge!(ferry_core::metric_names::CUTOVER_PHASE)
            .set(CutoverPhase::NotStarted.gauge());
        let listen = self.cfg.listen_addr()?;
        let id = security::ensure_identity(
            dir,
            self.cfg.cert.as_deref().zip(self.cfg.key.as_deref()),
            &[listen.ip().to_string()],
        )
        .map_err(|e| e.to_string())?;
        let token = security::ensure_token(dir).map_err(|e| e.to_string())?;
        let tls = security::server_config(&id, self.cfg.client_ca.as_deref())
            .map_err(|e| e.to_string())?;
        let listener = server::bind(listen)?;
        let seal = routes::seal_key(dir)?;
        let journal_id = security::ensure_journal_id(dir).map_err(|e| e.to_string())?;

        // One limiter for source reads, one for target writes: each side gets
        // the configured rate.
        let make_limiter = || {
            self.cfg.rate_limit_ops.map(|n| {
                let n = std::num::NonZeroU32::new(n).expect("validated non-zero");
                Arc::new(governor::RateLimiter::direct(governor::Quota::per_second(
                    n,
                )))
            })
        };
        let (source_limiter, limiter) = (make_limiter(), make_limiter());
        let unmapped = Arc::new(crate::cells::Unmapped::default());
        let opts = routes::BuildOptions {
            resnapshot_on_compaction: self.cfg.resnapshot_on_compaction,
            source_limiter,
            journal_id,
            seal,
            vault_poll: Duration::from_millis(self.cfg.vault_poll_ms),
            mongo_catalog: None,
            unmapped: Arc::clone(&unmapped),
        };

        let lag = Arc::new(LagTracker::new());
        let mut live = Vec::new();
        let mut tailers = Vec::new();
        for route in plan {
            let source = SourceConn::connect(&route.source).await?;
            match &source {
                SourceConn::Etcd(s) => recover_read_only(dir, &route.source.to_string(), s).await,
                SourceConn::Mongo(s) => {
                    recover_write_block(dir, &route.source.to_string(), s).await
                }
                _ => {}
            }
            let mut targets = Vec::new();
            for t in &route.targets {
                targets.push(TargetConn::connect(t).await?);
            }
            let names: Vec<String> = route.targets.iter().map(ToString::to_string).collect();
            for shard in route.span.iter() {
                let journaled = journal
                    .bounds(shard)
                    .map_err(|e| e.to_string())?
                    .map_or(0, |b| b.last);
                let applied: Vec<(String, u64)> = names
                    .iter()
                    .map(|n| Ok((n.clone(), journal.applied(n, shard)?.unwrap_or(0))))
                    .collect::<Result<_, ferry_journal::JournalError>>()
                    .map_err(|e| e.to_string())?;
                lag.register(shard, journaled, &applied);
            }
            let catalog = match &source {
                SourceConn::Mongo(s) => {
                    let namespaces = s.selected_namespaces().await.map_err(|e| e.to_string())?;
                    Some(
                        ferry_mongo::Catalog::read(s, &namespaces)
                            .await
                            .map_err(|e| e.to_string())?,
                    )
                }
                _ => None,
            };
            let route_opts = routes::BuildOptions {
                mongo_catalog: catalog,
                ..opts.clone()
            };
            let built = routes::build(&route, &source, &targets, &route_opts)?;
            for sink in &built.sinks {
                ferry_replay::Sink::startup(sink.as_ref())
                    .await
                    .map_err(|e| e.to_string())?;
            }
            tailers.push(built.tailer);
            live.push(LiveRoute {
                route,
                source,
                targets,
                fence: built.fence,
                sinks: built.sinks,
            });
        }
        let blocked_targets = block_targets(&live).await?;
        let (control, mut stop_rx) = AgentControl::new(
            Arc::clone(&lag),
            self.sources.iter().map(ToString::to_string).collect(),
            self.targets.iter().map(ToString::to_string).collect(),
            unmapped,
        );

        let (stop_pipeline, shutdown) = Shutdown::new();
        let (stop_api, api_shutdown) = Shutdown::new();
        let api = {
            let mut s = api_shutdown.clone();
            tokio::spawn(server::serve(
                listener,
                tls,
                token,
                self.cfg.client_ca.is_none(),
                Arc::clone(&control) as Arc<dyn server::Control>,
                metrics,
                async move { s.wait().await },
            ))
        };
        println!(
            "ferry agent {} listening on {} (certificate SHA-256 {}); token in {}",
            std::process::id(),
            self.cfg.local_url(),
            id.fingerprint,
            dir.join(security::TOKEN_FILE).display()
        );

        let mut tasks: JoinSet<Result<(), String>> = JoinSet::new();
        for tailer in tailers {
            let (j, l, s) = (Arc::clone(&journal), Arc::clone(&lag), shutdown.clone());
            tasks.spawn(async move { tailer.run(j, l, s).await });
        }
        for r in &live {
            for sink in &r.sinks {
                for shard in r.route.span.iter() {
                    let (j, k, l, lim, sd) = (
                        Arc::clone(&journal),
                        Arc::clone(sink),
                        Arc::clone(&lag),
                        limiter.clone(),
                        shutdown.clone(),
                    );
                    tasks.spawn(async move {
                        worker::run(j, k, shard, l, lim, WorkerConfig::default(), sd)
                            .await
                            .map_err(|e| e.to_string())
                    });
                }
            }
        }
        {
            let (j, s) = (Arc::clone(&journal), shutdown.clone());
            let spans: Vec<_> = live
                .iter()
                .map(|r| {
                    (
                        r.route.span,
                        r.route.targets.iter().map(ToString::to_string).collect(),
                    )
                })
                .collect();
            tasks.spawn(async move {
                ferry_replay::truncator::run(j, spans, Duration::from_secs(1), s)
                    .await
                    .map_err(|e| e.to_string())
            });
        }
        {
            let (l, mut s) = (Arc::clone(&lag), shutdown.clone());
            tasks.spawn(async move {
                loop {
                    l.publish_metrics();
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        () = s.wait() => return Ok(()),
                    }
                }
            });
        }

        let ferry_user = self.sources.first().and_then(source_user);
        let outcome = loop {
            tokio::select! {
                req = stop_rx.recv() => match req {
                    Some(r) if r.abort => {
                        control.set_cutover(CutoverPhase::Aborted, "aborted by the operator before the cutover");
                        control.set_state(AgentState::Aborted);
                        break Outcome::Aborted("aborted by the operator".into());
                    }
                    Some(req) => {
                        control.set_state(AgentState::CuttingOver);
                        let mut accept_unmapped = self.cfg.cells_accept_unmapped.clone();
                        accept_unmapped.extend(req.accept_unmapped);
                        let c = Cutover {
                            dir,
                            blocked_targets: &blocked_targets,
                            accept_unmapped,
                            cfg: &self.cfg,
                            control: &control,
                            lag: &lag,
                            routes: &live,
                            ferry_user: ferry_user.clone(),
                        };
                        match Box::pin(c.run(&mut stop_rx)).await {
                            Ok(proof) => {
                                let window = proof.read_only_window_ms;
                                control.set_proof(proof);
                                control.set_cutover(CutoverPhase::Done, format!("target open; the source was read-only for {window} ms"));
                                control.set_state(AgentState::Done);
                                break Outcome::CutOver;
                            }
                            Err(f) if f.phase == CutoverPhase::Aborted => {
                                control.set_cutover(CutoverPhase::Aborted, f.message.clone());
                                control.set_state(AgentState::Aborted);
                                break Outcome::Aborted(f.message);
                            }
                            Err(f) => {
                                // Nothing was opened and the source is back as
                                // it was: keep syncing so the operator can fix
                                // the cause and run `ferry stop` again.
                                control.set_cutover(CutoverPhase::Failed, f.message);
                                control.set_state(AgentState::Syncing);
                            }
                        }
                    }
                    None => break Outcome::Interrupted,
                },
                Some(done) = tasks.join_next() => {
                    let msg = match done {
                        Ok(Ok(())) => "a pipeline task ended unexpectedly".to_string(),
                        Ok(Err(e)) => e,
                        Err(e) => format!("a pipeline task panicked: {e}"),
                    };
                    control.fail(msg.clone());
                    break Outcome::Aborted(msg);
                }
                () = termination() => break Outcome::Interrupted,
            }
        };

        // Stop the pipeline: workers finish their batch, checkpoints are saved.
        let _ = stop_pipeline.send(true);
        while let Some(r) = tasks.join_next().await {
            if let Ok(Err(e)) = r {
                tracing::warn!(error = %e, "task ended with an error during shutdown");
            }
        }
        for r in &live {
            for s in &r.sinks {
                ferry_replay::Sink::shutdown(s.as_ref()).await;
            }
        }
        if outcome != Outcome::Interrupted {
            tokio::time::sleep(LINGER).await;
        }
        let _ = stop_api.send(true);
        let _ = api.await;
        drop(journal);
        Ok(outcome)
    }
}

/// SIGINT or SIGTERM: stop cleanly; the next start resumes.
async fn termination() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
}

/// Blocks user writes on every MongoDB target that allows it while Ferry's
/// user still writes (see [`ferry_mongo::readonly::TargetProtection`]),
/// until the cutover opens it. A target on the deployment of a MongoDB
/// source is left alone: the block is deployment-wide and would stop the
/// source's own applications. Returns the blocked targets, by name.
async fn block_targets(
    live: &[LiveRoute],
) -> Result<Vec<(String, ferry_mongo::MongoStore)>, String> {
    let hosts = |u: &ferry_core::StoreUrl| match u {
        ferry_core::StoreUrl::Mongo { hosts, .. } => Some(hosts.clone()),
        _ => None,
    };
    let source_hosts: Vec<_> = live.iter().filter_map(|r| hosts(&r.route.source)).collect();
    let mut blocked: Vec<(String, ferry_mongo::MongoStore)> = Vec::new();
    for r in live {
        for (url, conn) in r.route.targets.iter().zip(&r.targets) {
            let routes::TargetConn::Mongo(store) = conn else {
                continue;
            };
            let name = url.to_string();
            if blocked.iter().any(|(n, _)| *n == name)
                || hosts(url).is_some_and(|h| source_hosts.contains(&h))
            {
                continue;
            }
            let p = ferry_mongo::readonly::target_protection(store)
                .await
                .map_err(|e| e.to_string())?;
            if p != ferry_mongo::readonly::TargetProtection::Blockable {
                tracing::info!(target = %name, "{}", p.describe());
                continue;
            }
            ferry_mongo::readonly::set_user_write_block(store, true)
                .await
                .map_err(|e| e.to_string())?;
            tracing::info!(target = %name, "user writes blocked on the target until the cutover opens it");
            blocked.push((name, store.clone()));
        }
    }
    Ok(blocked)
}

/// A previous agent died with a MongoDB source write-blocked: lift it.
async fn recover_write_block(dir: &Path, name: &str, source: &ferry_mongo::MongoStore) {
    let path = dir.join(crate::cutover::readonly_file(name));
    if !path.exists() {
        return;
    }
    match ferry_mongo::readonly::set_user_write_block(source, false).await {
        Ok(()) => {
            tracing::warn!(source = name, "a previous cutover was interrupted with the source write-blocked; writes are allowed again");
            let _ = std::fs::remove_file(&path);
        }
        Err(e) => {
            tracing::error!(source = name, error = %e, "could not lift the write block an interrupted cutover left; run `ferry set-server-mode --mode default`")
        }
    }
}

/// A previous agent died with the source read-only: give the writes back.
async fn recover_read_only(dir: &Path, name: &str, source: &EtcdStore) {
    let path = dir.join(crate::cutover::readonly_file(name));
    let Ok(data) = std::fs::read(&path) else {
        return;
    };
    match serde_json::from_slice::<ferry_etcd::readonly::SavedPermissions>(&data) {
        Ok(saved) => match ferry_etcd::readonly::restore(source, &saved).await {
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
