//! The agent's shared state, as the API and the cutover see it.

use crate::api::{
    AgentState, CutoverPhase, CutoverProof, CutoverStatus, ScaleStatus, StatusResponse,
    StopRequest, StopResponse,
};
use ferry_connect::verify::continuous::{RangeVerifier, VerifierStatus};
use ferry_core::metric_names as m;
use ferry_lag::LagTracker;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

struct Inner {
    state: AgentState,
    cutover: CutoverStatus,
    proof: Option<CutoverProof>,
    error: Option<String>,
    scale: Option<ScaleStatus>,
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
            }),
            lag,
            stop_tx,
            sources,
            targets,
            started_at_ms: ferry_lag::now_ms(),
            unmapped,
            verifiers,
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
        // In a coordinated migration only the leader fences and opens.
        if let Some(s) = self.with(|i| i.scale.clone()) {
            if s.leader.as_deref() != Some(s.agent.as_str()) {
                let at = s
                    .agents
                    .iter()
                    .find(|a| Some(&a.id) == s.leader.as_ref())
                    .map_or_else(|| "(no leader yet)".to_string(), |a| a.api.clone());
                return StopResponse {
                    accepted: false,
                    message: format!(
                        "this agent does not lead the migration; send `ferry stop` to the leader {} at {at} (`ferry status` names it)",
                        s.leader.as_deref().unwrap_or("-")
                    ),
                };
            }
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
