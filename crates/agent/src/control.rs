//! The agent's shared state, as the API and the cutover see it.

use crate::api::{
    AgentState, CutoverPhase, CutoverProof, CutoverStatus, ScaleStatus, StatusResponse,
    StopRequest, StopResponse,
};
use ferry_connect::verify::continuous::{RangeVerifier, VerifierStatus};
use ferry_core::metric_names as m;
use ferry_lag::LagTracker;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, watch};

struct Inner {
    state: AgentState,
    cutover: CutoverStatus,
    proof: Option<CutoverProof>,
    error: Option<String>,
    scale: Option<ScaleStatus>,
    /// Part of a coordinated migration (`--coordinator`).
    coordinated: bool,
    /// A `ferry stop` for the leader, waiting to be sent through etcd.
    forward: Option<StopRequest>,
    /// The id of the last request sent to the leader, until its view
    /// shows the leader took it.
    pending: Option<u64>,
}

/// Implements [`crate::server::Control`]; cheap to share.
pub struct AgentControl {
    inner: Mutex<Inner>,
    lag: Arc<LagTracker>,
    stop_tx: mpsc::Sender<StopRequest>,
    sources: Vec<String>,
    targets: Vec<String>,
    started_at_ms: u64,
    unmapped: Arc<ferry_connect::Unmapped>,
    verifiers: Vec<Arc<RangeVerifier>>,
    /// The leader's cutover ended (done or aborted), as its view says.
    ended: watch::Sender<Option<AgentState>>,
}

impl AgentControl {
    pub fn new(
        lag: Arc<LagTracker>,
        sources: Vec<String>,
        targets: Vec<String>,
        unmapped: Arc<ferry_connect::Unmapped>,
        verifiers: Vec<Arc<RangeVerifier>>,
    ) -> (Arc<AgentControl>, mpsc::Receiver<StopRequest>) {
        let (stop_tx, stop_rx) = mpsc::channel(8);
        let c = AgentControl {
            inner: Mutex::new(Inner {
                state: AgentState::Syncing,
                cutover: CutoverStatus::default(),
                proof: None,
                error: None,
                scale: None,
                coordinated: false,
                forward: None,
                pending: None,
            }),
            lag,
            stop_tx,
            sources,
            targets,
            started_at_ms: ferry_lag::now_ms(),
            unmapped,
            verifiers,
            ended: watch::channel(None).0,
        };
        (Arc::new(c), stop_rx)
    }

    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        f(&mut self.inner.lock().expect("agent state lock poisoned"))
    }

    /// Source entries the sinks could not map (see [`ferry_connect::Unmapped`]).
    pub fn unmapped(&self) -> Vec<ferry_connect::UnmappedEntry> {
        self.unmapped.list()
    }

    /// Each continuous verifier's state.
    pub fn verification(&self) -> Vec<VerifierStatus> {
        self.verifiers.iter().map(|v| v.status()).collect()
    }

    /// The verifiers' gauges, labelled by target.
    pub fn publish_metrics(&self) {
        for v in self.verification() {
            let t = [("target", v.target.clone())];
            metrics::gauge!(m::VERIFY_RANGES_VERIFIED, &t).set(v.verified as f64);
            metrics::gauge!(m::VERIFY_RANGES_DIRTY, &t).set((v.ranges - v.verified) as f64);
            metrics::gauge!(m::VERIFY_DIFFERENCES, &t).set(v.differences.len() as f64);
        }
    }

    pub fn state(&self) -> AgentState {
        self.with(|i| i.state)
    }

    pub fn set_state(&self, state: AgentState) {
        self.with(|i| i.state = state);
    }

    pub fn set_cutover(&self, phase: CutoverPhase, message: impl Into<String>) {
        let message = message.into();
        tracing::info!(phase = ?phase, "cutover: {message}");
        metrics::gauge!(m::CUTOVER_PHASE).set(phase.gauge());
        self.with(|i| i.cutover = CutoverStatus { phase, message });
    }

    /// The coordinated migration as last read from the coordinator.
    pub fn set_scale(&self, scale: ScaleStatus) {
        self.with(|i| i.scale = Some(scale));
    }

    /// Marks the agent as one of a coordinated migration: `stop` goes to
    /// the leader, and the leader's view is shown.
    pub fn set_coordinated(&self) {
        self.with(|i| i.coordinated = true);
    }

    /// A `ferry stop` to send to the leader, if one was asked for.
    pub fn take_forward(&self) -> Option<StopRequest> {
        self.with(|i| i.forward.take())
    }

    /// The request was sent with `id`.
    pub fn forwarded(&self, id: u64) {
        self.with(|i| i.pending = Some(id));
    }

    /// Shows the leader's state, cutover and proof as this agent's own
    /// (unless this agent leads, failed, or waits for the leader to take
    /// its request); signals [`AgentControl::ended`] once it is done or
    /// aborted.
    pub fn mirror_leader(&self, v: &crate::barrier::LeaderView) {
        let shown = self.with(|i| {
            let leads = i.scale.as_ref().is_some_and(|s| s.agent == v.agent);
            let waiting = i.forward.is_some() || i.pending.is_some_and(|p| v.request != Some(p));
            if leads || waiting || i.state == AgentState::Failed {
                return false;
            }
            i.pending = None;
            i.state = v.state;
            i.cutover = v.cutover.clone();
            i.proof = v.proof.clone();
            true
        });
        if shown && matches!(v.state, AgentState::Done | AgentState::Aborted) {
            self.ended.send_replace(Some(v.state));
        }
    }

    /// Becomes `Some` when the leader's cutover ended.
    pub fn ended(&self) -> watch::Receiver<Option<AgentState>> {
        self.ended.subscribe()
    }

    pub fn set_proof(&self, proof: CutoverProof) {
        self.with(|i| i.proof = Some(proof));
    }

    pub fn fail(&self, error: String) {
        tracing::error!(error = %error, "the agent stopped");
        self.with(|i| {
            i.state = AgentState::Failed;
            i.error = Some(error);
        });
    }
}

impl AgentControl {
    /// `Some` answer when this agent is coordinated and does not lead.
    fn forward_to_leader(&self, req: &StopRequest) -> Option<StopResponse> {
        self.with(|i| {
            if !i.coordinated {
                return None;
            }
            let Some(s) = i.scale.clone() else {
                return Some(StopResponse {
                    accepted: false,
                    message: "this agent has not read the coordinator yet; run `ferry stop` again in a few seconds".into(),
                });
            };
            if s.leader.as_deref() == Some(s.agent.as_str()) {
                return None;
            }
            let leader = match (&s.leader, s.agents.iter().find(|a| Some(&a.id) == s.leader.as_ref())) {
                (Some(id), Some(a)) => format!("the leader {id} at {}", a.api),
                _ => "the next leader (none leads right now)".into(),
            };
            let ok = matches!(
                (i.state, req.abort),
                (AgentState::Syncing, _) | (AgentState::CuttingOver, true)
            );
            if !ok {
                let message = match i.state {
                    AgentState::CuttingOver => "a cutover is already running".to_string(),
                    st => format!("the agent is {st:?}; nothing to stop"),
                };
                return Some(StopResponse { accepted: false, message });
            }
            i.forward = Some(req.clone());
            if !req.abort {
                i.state = AgentState::CuttingOver;
                i.cutover = CutoverStatus {
                    phase: CutoverPhase::WaitingForLag,
                    message: format!("cutover requested; sent to {leader}"),
                };
            }
            Some(StopResponse {
                accepted: true,
                message: format!(
                    "this agent does not lead the migration: the request goes to {leader}; follow it here or there with `ferry status`"
                ),
            })
        })
    }
}

impl crate::server::Control for AgentControl {
    fn status(&self) -> StatusResponse {
        let lag = self.lag.snapshot();
        self.with(|i| StatusResponse {
            state: i.state,
            pid: std::process::id(),
            started_at_ms: self.started_at_ms,
            sources: self.sources.clone(),
            targets: self.targets.clone(),
            lag,
            cutover: i.cutover.clone(),
            proof: i.proof.clone(),
            error: i.error.clone(),
            unmapped: self
                .unmapped
                .list()
                .into_iter()
                .map(|e| e.sentence)
                .collect(),
            verification: self.verification(),
            scale: i.scale.clone(),
        })
    }

    fn stop(&self, req: StopRequest) -> StopResponse {
        // In a coordinated migration only the leader fences and opens:
        // another agent sends the request on to it through etcd.
        if let Some(r) = self.forward_to_leader(&req) {
            return r;
        }
        // Decided and marked under the lock, before the request is sent: the
        // runtime may take it and fail the cutover at once (a Bolt lock
        // held), and its outcome must not be overwritten by this mark.
        let (state, ok) = self.with(|i| {
            let state = i.state;
            let ok = match (state, req.abort) {
                (AgentState::Syncing, _) | (AgentState::CuttingOver, true) => {
                    let before = (i.state, i.cutover.clone());
                    if !req.abort {
                        // Set now, not when the agent picks the request up, so
                        // a caller polling right after this answer never sees
                        // an earlier attempt's outcome as this one's.
                        i.state = AgentState::CuttingOver;
                        i.cutover = CutoverStatus {
                            phase: CutoverPhase::WaitingForLag,
                            message: "cutover requested".into(),
                        };
                    }
                    let sent = self.stop_tx.try_send(req.clone()).is_ok();
                    if !sent {
                        (i.state, i.cutover) = before;
                    }
                    sent
                }
                _ => false,
            };
            (state, ok)
        });
        if ok && !req.abort {
            tracing::info!("cutover: cutover requested");
            metrics::gauge!(m::CUTOVER_PHASE).set(CutoverPhase::WaitingForLag.gauge());
        }
        let message = match (ok, state, req.abort) {
            (true, _, true) => "aborting: the target will not be opened".to_string(),
            (true, _, false) => "cutover started; follow it with `ferry status`".to_string(),
            (false, AgentState::CuttingOver, false) => "a cutover is already running".to_string(),
            (false, s, _) => format!("the agent is {s:?}; nothing to stop"),
        };
        StopResponse {
            accepted: ok,
            message,
        }
    }
}
