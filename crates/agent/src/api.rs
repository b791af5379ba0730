//! The control API's types, shared by the agent and the CLI.
//!
//! `GET /v1/status` → [`StatusResponse`]; `POST /v1/stop` with
//! [`StopRequest`] → [`StopResponse`]. Both need `Authorization: Bearer
//! <token>` (the token is in the journal directory) unless the agent
//! requires client certificates. `GET /metrics` is Prometheus text and
//! needs no token. `GET /` is a status page for a browser (see
//! [`crate::page`]).

use ferry_lag::LagSnapshot;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Where the whole migration is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentState {
    /// Copying and following the sources.
    Syncing,
    /// `stop` was asked for: see [`CutoverStatus`].
    CuttingOver,
    /// The cutover finished: the target is open, the agent is exiting.
    Done,
    /// `stop --abort` or a failed cutover: the target was not opened.
    Aborted,
    /// The pipeline stopped on an error (see `error`).
    Failed,
}

/// The cutover's steps (SPEC section 5), in order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CutoverPhase {
    #[default]
    NotStarted,
    WaitingForLag,
    SourceReadOnly,
    DrainingToFence,
    Verifying,
    Done,
    Aborted,
    Failed,
}

impl CutoverPhase {
    /// The value of the `ferry_cutover_phase` gauge.
    pub fn gauge(self) -> f64 {
        match self {
            CutoverPhase::NotStarted => 0.0,
            CutoverPhase::WaitingForLag => 1.0,
            CutoverPhase::SourceReadOnly => 2.0,
            CutoverPhase::DrainingToFence => 3.0,
            CutoverPhase::Verifying => 4.0,
            CutoverPhase::Done => 5.0,
            CutoverPhase::Aborted => 6.0,
            CutoverPhase::Failed => 7.0,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CutoverStatus {
    pub phase: CutoverPhase,
    /// One sentence on what is happening or why it stopped.
    pub message: String,
}

/// One shard's part of the proof.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardProof {
    pub shard: u32,
    /// The journal sequence of this shard's fence marker.
    pub fence_seq: u64,
    /// Each target's applied sequence when the target was opened.
    pub applied: BTreeMap<String, u64>,
}

/// The recorded proof that the target holds everything the read-only
/// source will ever have (SPEC section 5, step 5).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CutoverProof {
    /// The first source's fence position (see `fences` for every source).
    pub fence_position: u64,
    /// Each source's fence: an etcd revision, or a polled source's look.
    #[serde(default)]
    pub fences: std::collections::BTreeMap<String, u64>,
    pub shards: Vec<ShardProof>,
    /// Keys compared by verification, and differences found (must be 0).
    pub verified_keys: u64,
    pub differences: u64,
    /// How the source was made read-only (`auth` or `external`).
    pub read_only_mode: String,
    /// Unix ms: source read-only, target opened.
    pub source_read_only_at_ms: u64,
    pub target_opened_at_ms: u64,
    /// Source read-only to target writable.
    pub read_only_window_ms: u64,
    /// The window's phases, in ms: `fence` (every tailer reached its
    /// fence), `drain` (every shard applied it), `after_fence` (deferred
    /// target work such as MongoDB's unique indexes), `verify`, `open`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub window_phases_ms: BTreeMap<String, u64>,
    /// What the operator does next (a Cells migration: the environment
    /// that points Cells at its new stores, the index rebuild).
    #[serde(default)]
    pub next_steps: Vec<String>,
    /// Unmapped source entries the operator accepted by name
    /// (`--cells.accept-unmapped`): not on the target.
    #[serde(default)]
    pub unmapped_accepted: Vec<String>,
    /// Where each event-stream target ends after the fence (Kafka:
    /// partition → end offset), by target.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub target_positions: BTreeMap<String, BTreeMap<String, u64>>,
    /// Per target verified continuously: what the read-only window
    /// compared (dirty ranges only) and what it left as verified before.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub window_checks: BTreeMap<String, ferry_connect::verify::continuous::WindowCheck>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusResponse {
    pub state: AgentState,
    pub pid: u32,
    pub started_at_ms: u64,
    pub sources: Vec<String>,
    pub targets: Vec<String>,
    pub lag: LagSnapshot,
    pub cutover: CutoverStatus,
    pub proof: Option<CutoverProof>,
    /// Set when the pipeline stopped on an error.
    pub error: Option<String>,
    /// Source entries that could not be mapped (a Cells Bolt value Cells
    /// itself could not read), one sentence each naming service, bucket
    /// path and key. The cutover opens nothing while one is not accepted.
    #[serde(default)]
    pub unmapped: Vec<String>,
    /// The continuous verifiers of key-value routes: ranges verified, and
    /// standing differences by key.
    #[serde(default)]
    pub verification: Vec<ferry_connect::verify::continuous::VerifierStatus>,
    /// With `--coordinator`: every agent of the migration, the shards each
    /// owns, and the tailer leader.
    #[serde(default)]
    pub scale: Option<ScaleStatus>,
}

/// A coordinated migration as one agent sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScaleStatus {
    /// This agent's id.
    pub agent: String,
    /// The tailer leader's id.
    pub leader: Option<String>,
    /// This agent's writer epoch while it leads.
    pub epoch: u64,
    pub agents: Vec<ScaleAgent>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScaleAgent {
    pub id: String,
    pub api: String,
    pub shards: Vec<u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopRequest {
    /// Skip the waits and stop at once without opening the target.
    #[serde(default)]
    pub abort: bool,
    /// Unmapped source entries this cutover may leave behind, by name (as
    /// `status` lists them), besides those `start` accepted.
    #[serde(default)]
    pub accept_unmapped: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopResponse {
    pub accepted: bool,
    pub message: String,
}
