//! The cutover of a coordinated migration, through etcd (`--coordinator`).
//!
//! One agent, the tailer leader, fences the sources, verifies and opens
//! the targets; every agent applies its own shards. They meet under the
//! coordinator's prefix, in keys etcd keeps for them:
//!
//! - `cutover/request`: `ferry stop` sent to an agent that does not lead is
//!   put here (a [`Forwarded`] request with a fresh id); the leader takes
//!   it as if it had been sent to it, then deletes it. A request put while
//!   no agent leads is taken by the next leader.
//! - `cutover/round`: once the sources are fenced the leader opens a round
//!   ([`Round`]: each shard's fence sequence), written only while its
//!   election key exists, so a deposed leader cannot open one.
//! - `cutover/<round>/shards/<n>`: the agent that owns shard `n` records
//!   ([`ShardRecord`]) each target's applied sequence once every target has
//!   applied the shard through its fence. A shard whose owner died is
//!   recorded by the agent it moved to. The leader opens nothing until
//!   every shard's record is there.
//! - `cutover/<round>/failed/<agent>`: an agent whose pipeline fails during
//!   a round says so here, and the leader's cutover fails with its sentence
//!   (the source is given its writes back, as on one agent).
//! - `view`: the leader's state, cutover phase, proof and tailer phases,
//!   put every half second. Other agents show it in `status`, so `ferry
//!   stop` and `ferry status` tell the same story on any agent, and they
//!   end when it says the cutover is done or aborted.
//!
//! Polling (every 100 ms) rather than etcd watches: each read is one small
//! range request, the loop has no stream to re-establish after an etcd
//! restart, and 100 ms is well inside the read-only window measured here.

use crate::api::{AgentState, CutoverProof, CutoverStatus, StopRequest};
use crate::control::AgentControl;
use crate::scale::Role;
use ferry_coordinator::Coordinator;
use ferry_core::ShardId;
use ferry_lag::{LagTracker, Phase};
use ferry_replay::Shutdown;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

const REQUEST: &str = "cutover/request";
const ROUND: &str = "cutover/round";
const VIEW: &str = "view";

/// A `ferry stop` sent to another agent, on its way to the leader.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Forwarded {
    pub id: u64,
    /// The agent it was sent to.
    pub from: String,
    pub request: StopRequest,
}

/// A cutover's meeting point: each shard's fence sequence.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Round {
    pub id: u64,
    pub fences: BTreeMap<u32, u64>,
}

/// One shard applied through its fence, by the agent that owns it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardRecord {
    pub agent: String,
    /// Target → applied sequence (each at least the fence).
    pub applied: BTreeMap<String, u64>,
}

/// The leader's state as the other agents show it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LeaderView {
    pub agent: String,
    pub state: AgentState,
    pub cutover: CutoverStatus,
    pub proof: Option<CutoverProof>,
    /// The last forwarded request the leader took.
    pub request: Option<u64>,
    /// Each shard's tailer phase (the tailers run on the leader only).
    pub phases: BTreeMap<u32, Phase>,
}

/// This agent's side of the coordinated cutover.
pub struct Barrier {
    coord: Arc<Coordinator>,
    /// The round this agent last saw open, for its failure record.
    round: Mutex<Option<u64>>,
    /// The last forwarded request the leader took.
    taken: Mutex<Option<u64>>,
}

fn json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("serialises")
}

impl Barrier {
    pub fn new(coord: Arc<Coordinator>) -> Barrier {
        Barrier {
            coord,
            round: Mutex::new(None),
            taken: Mutex::new(None),
        }
    }

    pub fn agent(&self) -> &str {
        self.coord.agent()
    }

    /// Sends `request` to the leader, whichever agent it is.
    pub async fn forward(&self, request: StopRequest) -> Result<u64, String> {
        let f = Forwarded {
            id: rand::random::<u64>() >> 1,
            from: self.agent().to_string(),
            request,
        };
        self.coord.put(REQUEST, json(&f)).await?;
        Ok(f.id)
    }

    /// The leader opens a round once every source is fenced.
    pub async fn open_round(&self, fences: &BTreeMap<u32, u64>) -> Result<u64, String> {
        let round = Round {
            id: rand::random::<u64>() >> 1,
            fences: fences.clone(),
        };
        if !self.coord.put_as_leader(ROUND, json(&round)).await? {
            return Err("this agent no longer leads the migration (its lease lapsed); the cutover is left to the new leader: run `ferry stop` again".into());
        }
        *self.round.lock().expect("round lock") = Some(round.id);
        Ok(round.id)
    }

    /// The leader's look at `round`: `Some` with each shard's record once
    /// every shard of `fences` is recorded through its fence for each of
    /// `targets`; an error if an agent failed.
    pub async fn check(
        &self,
        round: u64,
        fences: &BTreeMap<u32, u64>,
        targets: &BTreeMap<u32, Vec<String>>,
    ) -> Result<Option<BTreeMap<u32, ShardRecord>>, String> {
        let mut records = BTreeMap::new();
        for (key, value) in self.coord.list(&format!("cutover/{round}/")).await? {
            if let Some(agent) = key.strip_prefix("failed/") {
                return Err(format!(
                    "agent {agent} failed during the cutover: {}",
                    String::from_utf8_lossy(&value)
                ));
            }
            let shard = key
                .strip_prefix("shards/")
                .and_then(|s| s.parse::<u32>().ok());
            if let (Some(shard), Ok(r)) = (shard, serde_json::from_slice::<ShardRecord>(&value)) {
                records.insert(shard, r);
            }
        }
        let complete = fences.iter().all(|(s, fence)| {
            records.get(s).is_some_and(|r| {
                targets
                    .get(s)
                    .into_iter()
                    .flatten()
                    .all(|t| r.applied.get(t).is_some_and(|a| a >= fence))
            })
        });
        Ok(complete.then_some(records))
    }

    /// The leader closes the round (the cutover ended either way) and
    /// drops the request it took.
    pub async fn close_round(&self) {
        if let Ok(Some(v)) = self.coord.get(ROUND).await {
            let _ = self.coord.delete_if(ROUND, v).await;
        }
        *self.round.lock().expect("round lock") = None;
    }

    /// Says that this agent failed, if a round is open.
    pub async fn failed(&self, message: &str) {
        let round = *self.round.lock().expect("round lock");
        if let Some(r) = round {
            let key = format!("cutover/{r}/failed/{}", self.agent());
            let _ = self.coord.put(&key, message.as_bytes().to_vec()).await;
        }
    }

    /// The leader's view, from its own status.
    pub async fn publish(&self, control: &AgentControl, lag: &LagTracker) {
        let s = crate::server::Control::status(control);
        let view = LeaderView {
            agent: self.agent().to_string(),
            state: s.state,
            cutover: s.cutover,
            proof: s.proof,
            request: *self.taken.lock().expect("taken lock"),
            phases: lag
                .snapshot()
                .shards
                .into_iter()
                .map(|sh| (sh.shard, sh.phase))
                .collect(),
        };
        if let Err(e) = self.coord.put_as_leader(VIEW, json(&view)).await {
            tracing::warn!(error = %e, "cannot publish the leader's view");
        }
    }

    /// One look, every 100 ms until `shutdown`: the leader takes forwarded
    /// requests and publishes its view; every agent records its shards of
    /// an open round and mirrors the leader's view.
    pub async fn run(
        self: Arc<Self>,
        control: Arc<AgentControl>,
        lag: Arc<LagTracker>,
        role: watch::Receiver<Role>,
        mut shutdown: Shutdown,
    ) -> Result<(), String> {
        // (round, shard) already recorded by this agent.
        let mut recorded: BTreeSet<(u64, u32)> = BTreeSet::new();
        let mut tick: u64 = 0;
        loop {
            let Role { leader, shards, .. } = role.borrow().clone();
            let step = async {
                if let Some(req) = control.take_forward() {
                    let id = self.forward(req).await?;
                    control.forwarded(id);
                    tracing::info!(
                        agent = self.agent(),
                        "cutover: sent `ferry stop` to the leader"
                    );
                }
                if leader {
                    if let Some(raw) = self.coord.get(REQUEST).await? {
                        if let Ok(f) = serde_json::from_slice::<Forwarded>(&raw) {
                            let seen = *self.taken.lock().expect("taken lock") == Some(f.id);
                            if !seen {
                                let resp =
                                    crate::server::Control::stop(control.as_ref(), f.request);
                                tracing::info!(from = %f.from, accepted = resp.accepted, "cutover: `ferry stop` forwarded by another agent: {}", resp.message);
                                *self.taken.lock().expect("taken lock") = Some(f.id);
                                self.publish(&control, &lag).await;
                            }
                        }
                        self.coord.delete_if(REQUEST, raw).await?;
                    }
                    if tick.is_multiple_of(5) {
                        self.publish(&control, &lag).await;
                    }
                } else if tick.is_multiple_of(5) {
                    if let Some(raw) = self.coord.get(VIEW).await? {
                        if let Ok(v) = serde_json::from_slice::<LeaderView>(&raw) {
                            for (s, p) in &v.phases {
                                lag.set_phase(ShardId(*s), p.clone());
                            }
                            control.mirror_leader(&v);
                        }
                    }
                }
                let round = match self.coord.get(ROUND).await? {
                    Some(raw) => serde_json::from_slice::<Round>(&raw).ok(),
                    None => None,
                };
                *self.round.lock().expect("round lock") = round.as_ref().map(|r| r.id);
                if let Some(r) = round {
                    let snap = lag.snapshot();
                    for sh in snap.shards.iter().filter(|sh| shards.contains(&sh.shard)) {
                        let Some(fence) = r.fences.get(&sh.shard) else {
                            continue;
                        };
                        if recorded.contains(&(r.id, sh.shard))
                            || sh.targets.is_empty()
                            || sh.targets.values().any(|t| t.applied_seq < *fence)
                        {
                            continue;
                        }
                        let rec = ShardRecord {
                            agent: self.agent().to_string(),
                            applied: sh
                                .targets
                                .iter()
                                .map(|(t, p)| (t.clone(), p.applied_seq))
                                .collect(),
                        };
                        let key = format!("cutover/{}/shards/{}", r.id, sh.shard);
                        self.coord.put_new(&key, json(&rec)).await?;
                        tracing::debug!(
                            round = r.id,
                            shard = sh.shard,
                            "cutover: recorded the shard applied through its fence"
                        );
                        recorded.insert((r.id, sh.shard));
                    }
                }
                Ok::<(), String>(())
            };
            if let Err(e) = step.await {
                tracing::warn!(error = %e, "cutover barrier: cannot read or write the coordinator");
            }
            tick += 1;
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
                () = shutdown.wait() => return Ok(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_coordinator::{AgentInfo, CoordinatorUrl};
    use ferry_testkit::{require, Etcd};

    async fn join(url: &CoordinatorUrl, id: &str) -> Arc<Coordinator> {
        let info = AgentInfo {
            id: id.into(),
            api: format!("https://127.0.0.1:1/{id}"),
            pid: 1,
        };
        Arc::new(
            Coordinator::join(url, info, Duration::from_secs(5))
                .await
                .unwrap(),
        )
    }

    fn control(lag: &Arc<LagTracker>) -> Arc<AgentControl> {
        let (c, _rx) = AgentControl::new(
            Arc::clone(lag),
            vec![],
            vec![],
            Arc::new(ferry_connect::Unmapped::default()),
            vec![],
        );
        c
    }

    /// Every shard recorded applied through its fence, for the one target.
    async fn wait_complete(
        b: &Barrier,
        round: u64,
        fences: &BTreeMap<u32, u64>,
        targets: &BTreeMap<u32, Vec<String>>,
    ) -> Result<BTreeMap<u32, ShardRecord>, String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(r) = b.check(round, fences, targets).await? {
                return Ok(r);
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the round was not complete within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[test]
    fn the_leader_opens_on_every_owners_record_and_fails_on_an_agents_failure() {
        let Some(etcd) = require(Etcd::start()) else {
            return;
        };
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let url = CoordinatorUrl::parse(&etcd.url("ferry/barrier")).unwrap();
            let (lead, other) = (join(&url, "a").await, join(&url, "b").await);
            let leader = Barrier::new(Arc::clone(&lead));
            let fences: BTreeMap<u32, u64> = [(0, 10), (1, 20)].into();
            let targets: BTreeMap<u32, Vec<String>> =
                [(0, vec!["t".to_string()]), (1, vec!["t".to_string()])].into();
            // Only the elected leader opens a round.
            let stranger = Barrier::new(Arc::clone(&other));
            assert!(stranger
                .open_round(&fences)
                .await
                .unwrap_err()
                .contains("no longer leads"));
            lead.campaign().await.unwrap();
            let round = leader.open_round(&fences).await.unwrap();
            assert_eq!(leader.check(round, &fences, &targets).await.unwrap(), None);

            // Agent b owns both shards; shard 1 is not applied through its
            // fence yet, so only shard 0 is recorded.
            let lag = Arc::new(LagTracker::new());
            lag.register(ShardId(0), 10, &[("t".into(), 10)]);
            lag.register(ShardId(1), 20, &[("t".into(), 19)]);
            let (role_tx, role_rx) = watch::channel(Role {
                leader: false,
                epoch: 0,
                shards: vec![0, 1],
            });
            let (stop, sd) = Shutdown::new();
            let b = Arc::new(Barrier::new(Arc::clone(&other)));
            let task =
                tokio::spawn(Arc::clone(&b).run(control(&lag), Arc::clone(&lag), role_rx, sd));
            tokio::time::sleep(Duration::from_millis(600)).await;
            assert_eq!(
                leader.check(round, &fences, &targets).await.unwrap(),
                None,
                "shard 1 is one event short of its fence"
            );
            lag.register(ShardId(1), 20, &[("t".into(), 21)]);
            let records = wait_complete(&leader, round, &fences, &targets)
                .await
                .unwrap();
            assert_eq!(records[&0].agent, "b");
            assert_eq!(records[&1].applied["t"], 21);

            // A failure during a round fails the leader's look at it.
            let round2 = leader.open_round(&fences).await.unwrap();
            tokio::time::sleep(Duration::from_millis(300)).await;
            b.failed("shard 1: the target refused a write").await;
            let e = wait_complete(&leader, round2, &fences, &targets)
                .await
                .unwrap_err();
            assert!(
                e.contains("agent b failed") && e.contains("refused a write"),
                "{e}"
            );

            // A `stop` sent to b reaches the leader's control.
            drop(role_tx);
            let _ = stop.send(true);
            task.await.unwrap().unwrap();
            let id = b.forward(StopRequest::default()).await.unwrap();
            let raw = lead
                .get(REQUEST)
                .await
                .unwrap()
                .expect("the request is there");
            let f: Forwarded = serde_json::from_slice(&raw).unwrap();
            assert_eq!((f.id, f.from.as_str()), (id, "b"));
        });
    }
}
