//! Wiring and running one migration: journal, tailer, workers, API, cutover.

use crate::api::{AgentState, CutoverPhase};
use crate::config::AgentConfig;
use crate::control::AgentControl;
use crate::cutover::Cutover;
use crate::routes::{self, Route};
use crate::sinks::TargetSink;
use crate::{security, server};
use ferry_connect::{Fence, Opener, SinkContext, StateDir, TailContext, Tailer, Unmapped};
use ferry_coordinator::{AgentInfo, Coordinator, CoordinatorUrl};
use ferry_core::StoreUrl;
use ferry_journal::{Journal, PersistPolicy, SharedJournal};
use ferry_journal_kafka::{JournalUrl, KafkaJournal, Role};
use ferry_journal_rocks::{OpenMode, RocksJournal};
use ferry_lag::LagTracker;
use ferry_replay::{worker, Shutdown, WorkerConfig};
use std::path::PathBuf;
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

/// How long an agent of a coordinated migration may go unheard before etcd
/// drops its lease: its leadership and shards move to others then.
const COORDINATOR_TTL: Duration = Duration::from_secs(5);

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

/// A route with its stores connected and its pipeline built.
pub struct LiveRoute {
    pub route: Route,
    pub fence: Arc<dyn Fence>,
    pub sinks: Vec<Arc<TargetSink>>,
}

impl AgentRun {
    pub async fn run(self) -> Result<Outcome, String> {
        let dir = self.dir.as_path();
        let registry = routes::registry(self.cfg.connector_options());
        let plan = routes::plan(&registry, &self.sources, &self.targets, self.cfg.shards)?;
        match self.cfg.journal_url.as_deref() {
            None => {
                let journal = Arc::new(
                    RocksJournal::open(dir, OpenMode::Create, PersistPolicy::EveryBatch)
                        .map_err(|e| e.to_string())?,
                );
                let (id, first_run) =
                    security::ensure_journal_id(dir).map_err(|e| e.to_string())?;
                self.run_on(registry, plan, journal, id, first_run, None)
                    .await
            }
            Some(url) => {
                // The directory keeps the agent's own files: one agent at a time.
                let _lock = ferry_journal_rocks::dir::lock(dir).map_err(|e| e.to_string())?;
                let url = JournalUrl::parse(url)?;
                let shards = plan
                    .routes
                    .iter()
                    .map(|r| r.span.first + r.span.count)
                    .max()
                    .unwrap_or(1);
                let id = format!("kafka-{}", url.name);
                let Some(coordinator) = self.cfg.coordinator.clone() else {
                    let journal = Arc::new(
                        KafkaJournal::open(&url, shards, Role::Writer(None))
                            .await
                            .map_err(|e| e.to_string())?,
                    );
                    tracing::info!(journal = %url, epoch = journal.epoch(), "writing the journal in Kafka");
                    // A journal that had a writer before is a resumed one.
                    let first_run = journal.epoch() == 1;
                    return self
                        .run_on(registry, plan, journal, id, first_run, None)
                        .await;
                };
                let journal = Arc::new(
                    KafkaJournal::open(&url, shards, Role::Standby)
                        .await
                        .map_err(|e| e.to_string())?,
                );
                let first_run = journal.current_epoch() == 0;
                let info = AgentInfo {
                    id: format!("agent-{:016x}", rand::random::<u64>()),
                    api: self.cfg.local_url(),
                    pid: std::process::id(),
                };
                let coord = Arc::new(
                    Coordinator::join(&CoordinatorUrl::parse(&coordinator)?, info, COORDINATOR_TTL)
                        .await?,
                );
                tracing::info!(agent = coord.agent(), journal = %url, "joined the coordinated migration");
                let j = Arc::clone(&journal);
                let take_over: crate::scale::TakeOver = Arc::new(move |epoch| {
                    let j = Arc::clone(&j);
                    // The election's revision, kept above any epoch the
                    // journal already had (from runs without a coordinator).
                    let epoch = epoch.max(j.current_epoch() + 1);
                    Box::pin(async move { j.take_over(epoch).await.map_err(|e| e.to_string()) })
                });
                let mut run = self;
                // Each agent sees only its own shards' writes: range
                // verification runs at the cutover, not continuously.
                run.cfg.verify_rate = 0;
                run.run_on(
                    registry,
                    plan,
                    journal,
                    id,
                    first_run,
                    Some((coord, take_over)),
                )
                .await
            }
        }
    }

    async fn run_on<J: Journal + 'static>(
        self,
        registry: ferry_connect::Registry,
        plan: routes::Plan,
        journal: Arc<J>,
        journal_id: String,
        first_run: bool,
        scale: Option<(Arc<Coordinator>, crate::scale::TakeOver)>,
    ) -> Result<Outcome, String> {
        let dir = self.dir.as_path();
        let unmapped = Arc::new(Unmapped::default());
        let next_steps = plan.next_steps;
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

        // One limiter for source reads, one for target writes: each side gets
        // the configured rate (target writes their own, when given).
        let make_limiter = |rate: Option<u32>| {
            rate.map(|n| {
                let n = std::num::NonZeroU32::new(n).expect("validated non-zero");
                Arc::new(governor::RateLimiter::direct(governor::Quota::per_second(
                    n,
                )))
            })
        };
        let (source_limiter, limiter) = (
            make_limiter(self.cfg.rate_limit_ops),
            make_limiter(self.cfg.target_rate_limit_ops.or(self.cfg.rate_limit_ops)),
        );
        let mut options = registry.options().clone();
        options.source_limiter = source_limiter;
        let state = StateDir::new(dir);

        let lag = Arc::new(LagTracker::new());
        let mut live = Vec::new();
        let mut tailers: Vec<Box<dyn Tailer>> = Vec::new();
        for route in plan.routes {
            let source = &route.source;
            source.connect().await?;
            source.recover(&state).await;
            for t in &route.targets {
                t.connect().await?;
            }
            let names: Vec<String> = route.targets.iter().map(|t| t.url().to_string()).collect();
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
            source.prepare().await?;
            let tailing = source.tail(&TailContext {
                span: route.span,
                options: options.clone(),
                seal: Arc::clone(&seal),
                with_keys: route.targets.iter().any(|t| t.wants_leaves()),
            })?;
            let mut sinks = Vec::new();
            for t in &route.targets {
                let sink = t.sink(&SinkContext {
                    source,
                    shared: tailing.shared.as_ref(),
                    span: route.span,
                    journal_id: &journal_id,
                    resumed: !first_run,
                    unmapped: &unmapped,
                })?;
                let verifier = (self.cfg.verify_rate > 0)
                    .then(|| crate::routes::range_verifier(source.as_ref(), t.as_ref()))
                    .flatten();
                let sink = Arc::new(TargetSink::new(sink, Arc::clone(&seal), verifier));
                ferry_replay::Sink::startup(sink.as_ref())
                    .await
                    .map_err(|e| e.to_string())?;
                sinks.push(sink);
            }
            tailers.push(tailing.tailer);
            live.push(LiveRoute {
                route,
                fence: tailing.fence,
                sinks,
            });
        }
        let blocked_targets = block_targets(&live).await?;
        let (control, mut stop_rx) = AgentControl::new(
            Arc::clone(&lag),
            self.sources.iter().map(ToString::to_string).collect(),
            self.targets.iter().map(ToString::to_string).collect(),
            unmapped,
            live.iter()
                .flat_map(|r| r.sinks.iter().filter_map(|s| s.verifier.clone()))
                .collect(),
        );

        let barrier = scale
            .as_ref()
            .map(|(coord, _)| Arc::new(crate::barrier::Barrier::new(Arc::clone(coord))));
        if barrier.is_some() {
            control.set_coordinated();
        }
        let mut ended = control.ended();
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
        let shared = Arc::new(SharedJournal::new(Arc::clone(&journal)));
        let worker_cfg = WorkerConfig {
            apply_timeout: Duration::from_millis(self.cfg.apply_timeout_ms.max(1)),
            // Each applied checkpoint in a Kafka journal is a record every
            // handle reads; spaced out (see `ferry_replay::worker`).
            record_every: if self.cfg.journal_url.is_some() {
                worker::KAFKA_RECORD_EVERY
            } else {
                Duration::ZERO
            },
            ..WorkerConfig::default()
        };
        if let Some((coord, take_over)) = scale {
            // A coordinated migration: tailers on the leader, each shard's
            // workers on its owner, everyone's progress mirrored here.
            let (role_tx, role_rx) = tokio::sync::watch::channel(crate::scale::Role::default());
            let mut by_shard = Vec::new();
            let mut targets_of = Vec::new();
            for r in &live {
                for shard in r.route.span.iter() {
                    by_shard.push((
                        shard,
                        crate::scale::ShardWorkers {
                            journal: Arc::clone(&journal),
                            sinks: r.sinks.clone(),
                            lag: Arc::clone(&lag),
                            limiter: limiter.clone(),
                            cfg: worker_cfg.clone(),
                        },
                    ));
                    targets_of.push((
                        shard,
                        r.route
                            .targets
                            .iter()
                            .map(|t| t.url().to_string())
                            .collect(),
                    ));
                }
            }
            tasks.spawn(crate::scale::lead(
                Arc::clone(&coord),
                take_over,
                tailers,
                Arc::clone(&shared),
                Arc::clone(&lag),
                role_tx.clone(),
                shutdown.clone(),
            ));
            tasks.spawn(crate::scale::own_shards(
                Arc::clone(&coord),
                by_shard,
                role_tx,
                shutdown.clone(),
            ));
            tasks.spawn(crate::scale::mirror(
                Arc::clone(&journal),
                targets_of,
                Arc::clone(&lag),
                shutdown.clone(),
            ));
            tasks.spawn(crate::scale::report(
                coord,
                Arc::clone(&control),
                role_rx.clone(),
                shutdown.clone(),
            ));
            if let Some(b) = &barrier {
                tasks.spawn(Arc::clone(b).run(
                    Arc::clone(&control),
                    Arc::clone(&lag),
                    role_rx,
                    shutdown.clone(),
                ));
            }
        } else {
            for tailer in tailers {
                let (j, l, s) = (Arc::clone(&shared), Arc::clone(&lag), shutdown.clone());
                tasks.spawn(async move { tailer.run(j, l, s).await });
            }
            for r in &live {
                for sink in &r.sinks {
                    for shard in r.route.span.iter() {
                        let (j, k, l, lim, sd, cfg) = (
                            Arc::clone(&journal),
                            Arc::clone(sink),
                            Arc::clone(&lag),
                            limiter.clone(),
                            shutdown.clone(),
                            worker_cfg.clone(),
                        );
                        tasks.spawn(async move {
                            worker::run(j, k, shard, l, lim, cfg, sd)
                                .await
                                .map_err(|e| e.to_string())
                        });
                    }
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
                        r.route
                            .targets
                            .iter()
                            .map(|t| t.url().to_string())
                            .collect(),
                    )
                })
                .collect();
            tasks.spawn(async move {
                ferry_replay::truncator::run(j, spans, Duration::from_secs(1), s)
                    .await
                    .map_err(|e| e.to_string())
            });
        }
        // The continuous verifiers: a quarter of --rate-limit at most.
        let verify_rate = match self.cfg.rate_limit_ops {
            Some(n) => self.cfg.verify_rate.min(u64::from(n) / 4).max(1),
            None => self.cfg.verify_rate,
        };
        for r in &live {
            for sink in &r.sinks {
                let Some(v) = sink.verifier.clone() else {
                    continue;
                };
                let (l, s, span, target) = (
                    Arc::clone(&lag),
                    shutdown.clone(),
                    r.route.span,
                    ferry_replay::Sink::name(sink.as_ref()).to_string(),
                );
                tasks.spawn(async move {
                    let lag_zero = move || {
                        l.snapshot()
                            .shards
                            .iter()
                            .filter(|sh| span.contains(ferry_core::ShardId(sh.shard)))
                            .all(|sh| {
                                matches!(sh.phase, ferry_lag::Phase::Streaming)
                                    && sh.targets.get(&target).is_some_and(|t| t.lag_events == 0)
                            })
                    };
                    v.run(verify_rate, lag_zero, move || s.is_stopping()).await;
                    Ok(())
                });
            }
        }
        {
            let (l, mut s) = (Arc::clone(&lag), shutdown.clone());
            let c = Arc::clone(&control);
            tasks.spawn(async move {
                loop {
                    c.publish_metrics();
                    l.publish_metrics();
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        () = s.wait() => return Ok(()),
                    }
                }
            });
        }

        let outcome = loop {
            tokio::select! {
                req = stop_rx.recv() => match req {
                    Some(r) if r.abort => {
                        control.set_cutover(CutoverPhase::Aborted, "aborted by the operator before the cutover");
                        control.set_state(AgentState::Aborted);
                        if let Some(b) = &barrier {
                            b.publish(&control, &lag).await;
                        }
                        break Outcome::Aborted("aborted by the operator".into());
                    }
                    Some(req) => {
                        control.set_state(AgentState::CuttingOver);
                        let mut accept_unmapped = self.cfg.cells_accept_unmapped.clone();
                        accept_unmapped.extend(req.accept_unmapped);
                        let c = Cutover {
                            state: &state,
                            blocked_targets: &blocked_targets,
                            next_steps: &next_steps,
                            accept_unmapped,
                            cfg: &self.cfg,
                            control: &control,
                            lag: &lag,
                            routes: &live,
                            barrier: barrier.as_deref(),
                        };
                        let result = Box::pin(c.run(&mut stop_rx)).await;
                        if let Some(b) = &barrier {
                            b.close_round().await;
                        }
                        // The other agents show the outcome and end with it.
                        let publish = || async {
                            if let Some(b) = &barrier {
                                b.publish(&control, &lag).await;
                            }
                        };
                        match result {
                            Ok(proof) => {
                                let window = proof.read_only_window_ms;
                                control.set_proof(proof);
                                control.set_cutover(CutoverPhase::Done, format!("target open; the source was read-only for {window} ms"));
                                control.set_state(AgentState::Done);
                                publish().await;
                                break Outcome::CutOver;
                            }
                            Err(f) if f.phase == CutoverPhase::Aborted => {
                                control.set_cutover(CutoverPhase::Aborted, f.message.clone());
                                control.set_state(AgentState::Aborted);
                                publish().await;
                                break Outcome::Aborted(f.message);
                            }
                            Err(f) => {
                                // Nothing was opened and the source is back as
                                // it was: keep syncing so the operator can fix
                                // the cause and run `ferry stop` again.
                                control.set_cutover(CutoverPhase::Failed, f.message);
                                control.set_state(AgentState::Syncing);
                                publish().await;
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
                    if let Some(b) = &barrier {
                        b.failed(&msg).await;
                    }
                    break Outcome::Aborted(msg);
                }
                // Another agent led the cutover; it ended there.
                Ok(()) = ended.changed() => match *ended.borrow() {
                    Some(AgentState::Done) => break Outcome::CutOver,
                    Some(_) => break Outcome::Aborted("the leader's cutover was aborted".into()),
                    None => {}
                },
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

/// Keeps users' writes off every target that allows it while Ferry still
/// writes ([`ferry_connect::Target::protect`]), until the cutover opens
/// it. A target on the deployment of a source is left alone: the switch
/// is deployment-wide and would stop the source's own applications.
/// Returns the protected targets, by name, each once.
async fn block_targets(live: &[LiveRoute]) -> Result<Vec<(String, Box<dyn Opener>)>, String> {
    let source_deployments: Vec<String> = live
        .iter()
        .filter_map(|r| r.route.source.deployment())
        .collect();
    let mut blocked: Vec<(String, Box<dyn Opener>)> = Vec::new();
    let mut seen: Vec<String> = Vec::new();
    for r in live {
        for t in &r.route.targets {
            let name = t.url().to_string();
            if seen.contains(&name) {
                continue;
            }
            seen.push(name.clone());
            if t.deployment()
                .is_some_and(|d| source_deployments.contains(&d))
            {
                continue;
            }
            if let Some(opener) = t.protect().await? {
                blocked.push((name, opener));
            }
        }
    }
    Ok(blocked)
}
