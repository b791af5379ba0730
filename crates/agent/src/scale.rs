//! Several agents on one migration (`--coordinator`, with the journal in
//! Kafka): the tailers run on the elected leader only, and each shard's
//! replay workers on the one agent that holds the shard.
//!
//! - [`lead`] campaigns; once elected it takes the journal over with the
//!   election's epoch (so a deposed leader's appends are refused) and runs
//!   the tailers. If the agent's lease is lost, it stops at once.
//! - [`own_shards`] keeps this agent's share of the shards
//!   ([`ferry_coordinator::share`] of the live agents): it claims the
//!   shards of its share nobody holds and runs their workers, and stops
//!   and releases those outside it. A worker resumes from the target's own
//!   applied checkpoint, whoever applied before.
//! - [`mirror`] copies what other agents did (the journal's ends, every
//!   target's applied checkpoint) into this agent's lag tracker, so the
//!   leader's cutover waits for every shard, wherever it is applied, and
//!   `status` on any agent shows the whole migration.

use crate::sinks::TargetSink;
use ferry_connect::Tailer;
use ferry_coordinator::Coordinator;
use ferry_core::ShardId;
use ferry_journal::{Journal, SharedJournal};
use ferry_lag::LagTracker;
use ferry_replay::{worker, Shutdown, WorkerConfig};
use futures::future::BoxFuture;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Makes this agent's journal handle the writer with an epoch.
pub type TakeOver = Arc<dyn Fn(u64) -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// What this agent is in a coordinated migration, for `status`.
#[derive(Clone, Debug, Default)]
pub struct Role {
    pub leader: bool,
    pub epoch: u64,
    pub shards: Vec<u32>,
}

async fn lease_lost(mut lost: watch::Receiver<bool>) {
    while !*lost.borrow() {
        if lost.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Campaigns, then runs `tailers` as the leader until they end.
pub async fn lead(
    coord: Arc<Coordinator>,
    take_over: TakeOver,
    tailers: Vec<Box<dyn Tailer>>,
    journal: Arc<SharedJournal>,
    lag: Arc<LagTracker>,
    role: watch::Sender<Role>,
    mut shutdown: Shutdown,
) -> Result<(), String> {
    let epoch = tokio::select! {
        e = coord.campaign() => e?,
        () = shutdown.wait() => return Ok(()),
        () = lease_lost(coord.lost()) => return Err(lost_msg()),
    };
    take_over(epoch).await?;
    tracing::info!(
        agent = coord.agent(),
        epoch,
        "this agent leads: it runs the tailers"
    );
    role.send_modify(|r| {
        r.leader = true;
        r.epoch = epoch;
    });
    let runs = tailers.into_iter().map(|t| {
        let (j, l, s) = (Arc::clone(&journal), Arc::clone(&lag), shutdown.clone());
        async move { t.run(j, l, s).await }
    });
    tokio::select! {
        r = futures::future::try_join_all(runs) => r.map(|_| ()),
        () = lease_lost(coord.lost()) => Err(lost_msg()),
    }
}

fn lost_msg() -> String {
    "this agent lost its coordinator lease (etcd did not hear from it within the TTL): another agent leads and owns its shards now; it stops".into()
}

/// One shard's workers, one per target.
pub struct ShardWorkers<J> {
    pub journal: Arc<J>,
    pub sinks: Vec<Arc<TargetSink>>,
    pub lag: Arc<LagTracker>,
    pub limiter: Option<Arc<governor::DefaultDirectRateLimiter>>,
    pub cfg: WorkerConfig,
}

/// A shard's running workers and the switch that stops them.
type Running = (watch::Sender<bool>, JoinSet<Result<(), String>>);

/// Keeps this agent's share of `shards` running.
pub async fn own_shards<J: Journal + 'static>(
    coord: Arc<Coordinator>,
    shards: Vec<(ShardId, ShardWorkers<J>)>,
    role: watch::Sender<Role>,
    mut shutdown: Shutdown,
) -> Result<(), String> {
    let all: Vec<u32> = shards.iter().map(|(s, _)| s.0).collect();
    let by_shard: BTreeMap<u32, ShardWorkers<J>> =
        shards.into_iter().map(|(s, w)| (s.0, w)).collect();
    // shard → (its workers' stop switch, the workers)
    let mut running: BTreeMap<u32, Running> = BTreeMap::new();
    let me = coord.agent().to_string();
    let result = loop {
        let step = async {
            let ids: Vec<String> = coord.agents().await?.into_iter().map(|a| a.id).collect();
            let want = ferry_coordinator::share(&ids, &all, &me);
            let owners = coord.owners().await?;
            // Shards outside the share, or taken by another (a lease
            // that lapsed): stop their workers first.
            let give_up: Vec<u32> = running
                .keys()
                .copied()
                .filter(|s| !want.contains(s) || owners.get(s).is_some_and(|o| *o != me))
                .collect();
            for s in give_up {
                let (stop, mut set) = running.remove(&s).expect("running");
                let _ = stop.send(true);
                while set.join_next().await.is_some() {}
                coord.release(s).await?;
                tracing::info!(agent = %me, shard = s, "gave the shard up");
            }
            for s in want {
                if running.contains_key(&s) || owners.get(&s).is_some_and(|o| *o != me) {
                    continue;
                }
                if !coord.claim(s).await? {
                    continue;
                }
                let w = &by_shard[&s];
                let (stop, sd) = Shutdown::new();
                let mut set = JoinSet::new();
                for sink in &w.sinks {
                    let (j, k, l, lim, cfg, sd) = (
                        Arc::clone(&w.journal),
                        Arc::clone(sink),
                        Arc::clone(&w.lag),
                        w.limiter.clone(),
                        w.cfg.clone(),
                        sd.clone(),
                    );
                    set.spawn(async move {
                        worker::run(j, k, ShardId(s), l, lim, cfg, sd)
                            .await
                            .map_err(|e| e.to_string())
                    });
                }
                tracing::info!(agent = %me, shard = s, "took the shard");
                running.insert(s, (stop, set));
            }
            role.send_modify(|r| r.shards = running.keys().copied().collect());
            // A worker that ended on its own failed.
            for (s, (_, set)) in running.iter_mut() {
                if let Some(done) = set.try_join_next() {
                    return Err(match done {
                        Ok(Err(e)) => format!("shard {s}: {e}"),
                        Ok(Ok(())) => format!("shard {s}: a worker ended unexpectedly"),
                        Err(e) => format!("shard {s}: a worker panicked: {e}"),
                    });
                }
            }
            Ok::<(), String>(())
        };
        if let Err(e) = step.await {
            break Err(e);
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
            () = shutdown.wait() => break Ok(()),
            () = lease_lost(coord.lost()) => break Err(lost_msg()),
        }
    };
    for (_, (stop, mut set)) in running {
        let _ = stop.send(true);
        while set.join_next().await.is_some() {}
    }
    result
}

/// Copies the journal's ends and every target's applied checkpoints into
/// `lag`, every 200 ms.
pub async fn mirror<J: Journal>(
    journal: Arc<J>,
    shards: Vec<(ShardId, Vec<String>)>,
    lag: Arc<LagTracker>,
    mut shutdown: Shutdown,
) -> Result<(), String> {
    loop {
        for (shard, targets) in &shards {
            let journaled = journal
                .bounds(*shard)
                .map_err(|e| e.to_string())?
                .map_or(0, |b| b.last);
            let applied: Vec<(String, u64)> = targets
                .iter()
                .map(|t| Ok((t.clone(), journal.applied(t, *shard)?.unwrap_or(0))))
                .collect::<Result<_, ferry_journal::JournalError>>()
                .map_err(|e| e.to_string())?;
            lag.register(*shard, journaled, &applied);
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
            () = shutdown.wait() => return Ok(()),
        }
    }
}

/// Reads the migration's agents, owners and leader into `control` every
/// second, with the `agent`-labelled gauges (one value per live agent).
pub async fn report(
    coord: Arc<Coordinator>,
    control: Arc<crate::control::AgentControl>,
    role: watch::Receiver<Role>,
    mut shutdown: Shutdown,
) -> Result<(), String> {
    use ferry_core::metric_names as m;
    let mut seen: Vec<String> = Vec::new();
    loop {
        let read = async {
            let agents = coord.agents().await?;
            let owners = coord.owners().await?;
            let leader = coord.leader().await?;
            Ok::<_, String>((agents, owners, leader))
        };
        match read.await {
            Ok((agents, owners, leader)) => {
                let list: Vec<crate::api::ScaleAgent> = agents
                    .iter()
                    .map(|a| crate::api::ScaleAgent {
                        id: a.id.clone(),
                        api: a.api.clone(),
                        shards: owners
                            .iter()
                            .filter(|(_, o)| **o == a.id)
                            .map(|(s, _)| *s)
                            .collect(),
                    })
                    .collect();
                // Gauges of agents gone are zeroed once, then forgotten.
                for id in seen.drain(..) {
                    if !list.iter().any(|a| a.id == id) {
                        metrics::gauge!(m::AGENT_SHARDS_OWNED, "agent" => id.clone()).set(0.0);
                        metrics::gauge!(m::AGENT_LEADER, "agent" => id).set(0.0);
                    }
                }
                for a in &list {
                    metrics::gauge!(m::AGENT_SHARDS_OWNED, "agent" => a.id.clone())
                        .set(a.shards.len() as f64);
                    let lead = leader.as_deref() == Some(a.id.as_str());
                    metrics::gauge!(m::AGENT_LEADER, "agent" => a.id.clone()).set(if lead {
                        1.0
                    } else {
                        0.0
                    });
                    seen.push(a.id.clone());
                }
                control.set_scale(crate::api::ScaleStatus {
                    agent: coord.agent().to_string(),
                    leader,
                    epoch: role.borrow().epoch,
                    agents: list,
                });
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the coordinator"),
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = shutdown.wait() => return Ok(()),
        }
    }
}
