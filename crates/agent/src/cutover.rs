//! The cutover (SPEC section 5), for an etcd source.
//!
//! 1. Wait until every shard streams and lag is under the threshold.
//! 2. Make the source read-only (etcd roles lose write permission; with
//!    `external`, the operator has stopped the writers). What was changed is
//!    saved in the journal directory first, so a crash here is undone by the
//!    next start.
//! 3. Read the fence: the source's head revision after the switch.
//! 4. Have the tailer journal a fence marker in every shard once it has
//!    seen the fence revision, and wait until every target applied every
//!    shard through its marker.
//! 5. Verify source against each target (unless disabled).
//! 6. Record the proof, then report the target open.
//!
//! Any failure after step 2 puts the source back as it was. A write seen on
//! the source after the fence (possible with `external`) fails the cutover.

use crate::api::{CutoverPhase, CutoverProof, ShardProof, StopRequest};
use crate::config::{AgentConfig, ReadOnlyMode};
use crate::control::AgentControl;
use crate::security::write_private;
use ferry_etcd::{EtcdStore, FenceHandle};
use ferry_lag::{now_ms, LagTracker};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

pub const PROOF_FILE: &str = "cutover-proof.json";
/// Saved while a cutover has the source read-only; the next agent start
/// restores it if the cutover never finished.
pub const READONLY_FILE: &str = "cutover-readonly.json";

pub struct Cutover<'a> {
    pub dir: &'a Path,
    pub cfg: &'a AgentConfig,
    pub control: &'a AgentControl,
    pub lag: &'a LagTracker,
    pub source: &'a EtcdStore,
    pub targets: &'a [EtcdStore],
    pub fence: &'a FenceHandle,
    /// The source user Ferry itself writes as (keeps its permissions).
    pub ferry_user: Option<String>,
}

/// Why the cutover did not finish.
pub struct Failed {
    pub phase: CutoverPhase,
    pub message: String,
}

fn failed(phase: CutoverPhase, message: impl Into<String>) -> Failed {
    Failed {
        phase,
        message: message.into(),
    }
}

/// Polls `ready` every 50 ms until it holds, an abort arrives, or `deadline`.
async fn wait_until(
    what: &str,
    phase: CutoverPhase,
    deadline: Instant,
    stop_rx: &mut mpsc::Receiver<StopRequest>,
    mut ready: impl FnMut() -> bool,
) -> Result<(), Failed> {
    loop {
        if ready() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(failed(phase, format!("timed out waiting for {what}")));
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
            Some(req) = stop_rx.recv() => {
                if req.abort {
                    return Err(failed(CutoverPhase::Aborted, "aborted by the operator"));
                }
            }
        }
    }
}

impl Cutover<'_> {
    pub async fn run(
        &self,
        stop_rx: &mut mpsc::Receiver<StopRequest>,
    ) -> Result<CutoverProof, Failed> {
        let deadline = Instant::now() + Duration::from_millis(self.cfg.cutover_timeout_ms);
        let max_lag = self.cfg.cutover_max_lag_events;
        self.control.set_cutover(
            CutoverPhase::WaitingForLag,
            format!("waiting until every shard streams with lag under {max_lag} events"),
        );
        wait_until(
            "lag to drop",
            CutoverPhase::WaitingForLag,
            deadline,
            stop_rx,
            || {
                let s = self.lag.snapshot();
                s.all_streaming() && s.max_lag_events() <= max_lag
            },
        )
        .await?;

        // 2. Source read-only.
        let saved = match self.cfg.source_read_only {
            ReadOnlyMode::Auth => {
                let user = self.ferry_user.clone().unwrap_or_else(|| "root".into());
                let saved = ferry_etcd::readonly::make_read_only(self.source, &user)
                    .await
                    .map_err(|e| failed(CutoverPhase::SourceReadOnly, e.to_string()))?;
                let data = serde_json::to_vec(&saved).expect("permissions serialise");
                if let Err(e) = write_private(&self.dir.join(READONLY_FILE), &data) {
                    let _ = ferry_etcd::readonly::restore(self.source, &saved).await;
                    return Err(failed(CutoverPhase::SourceReadOnly, e.to_string()));
                }
                Some(saved)
            }
            ReadOnlyMode::External => None,
        };
        let read_only_at = now_ms();
        self.control.set_cutover(
            CutoverPhase::SourceReadOnly,
            "source is read-only; reading the fence",
        );
        let result = self
            .drain_verify_record(stop_rx, deadline, read_only_at)
            .await;
        match (&result, &saved) {
            (Err(_), Some(saved)) => {
                // Put the source back; the target stays as it is, not opened.
                match ferry_etcd::readonly::restore(self.source, saved).await {
                    Ok(()) => {
                        let _ = std::fs::remove_file(self.dir.join(READONLY_FILE));
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "could not give the source its write permissions back; run `ferry set-server-mode --mode default`")
                    }
                }
            }
            (Ok(_), Some(_)) => {
                // The source stays read-only: the service now runs on the
                // target. The record on the source itself serves
                // `set-server-mode --mode default`.
                let _ = std::fs::remove_file(self.dir.join(READONLY_FILE));
            }
            _ => {}
        }
        result
    }

    async fn drain_verify_record(
        &self,
        stop_rx: &mut mpsc::Receiver<StopRequest>,
        deadline: Instant,
        read_only_at: u64,
    ) -> Result<CutoverProof, Failed> {
        let fence = self
            .source
            .head_revision()
            .await
            .map_err(|e| failed(CutoverPhase::SourceReadOnly, e.to_string()))?;
        self.control.set_cutover(
            CutoverPhase::DrainingToFence,
            format!("fence at revision {fence}; waiting until every shard applied it"),
        );
        tokio::select! {
            r = self.fence.fence(fence) => r.map_err(|e| failed(CutoverPhase::DrainingToFence, e.to_string()))?,
            () = tokio::time::sleep_until(deadline) => return Err(failed(CutoverPhase::DrainingToFence, "timed out waiting for the tailer to reach the fence")),
        }
        let fence_seqs: BTreeMap<u32, u64> = self
            .lag
            .snapshot()
            .shards
            .iter()
            .map(|s| (s.shard, s.journaled_seq))
            .collect();
        wait_until(
            "every shard to apply the fence",
            CutoverPhase::DrainingToFence,
            deadline,
            stop_rx,
            || {
                self.lag.snapshot().shards.iter().all(|s| {
                    let want = fence_seqs.get(&s.shard).copied().unwrap_or(0);
                    s.targets.values().all(|t| t.applied_seq >= want)
                })
            },
        )
        .await?;
        self.check_no_writes_after_fence(fence)?;
        let (mut verified, mut differences) = (0, 0);
        if self.cfg.verify_on_cutover {
            self.control
                .set_cutover(CutoverPhase::Verifying, "comparing source and target");
            for t in self.targets {
                let report = ferry_etcd::verify::compare(
                    self.source,
                    t,
                    crate::config::DEFAULT_VERIFY_TTL_TOLERANCE_S,
                )
                .await
                .map_err(|e| failed(CutoverPhase::Verifying, e.to_string()))?;
                let diff = report.missing_on_target
                    + report.extra_on_target
                    + report.value_differs
                    + report.lease_differs;
                verified += report.source_keys;
                differences += diff;
                if !report.is_equal() {
                    return Err(failed(
                        CutoverPhase::Verifying,
                        format!(
                            "verification found {} differing keys between {} and {}; the target was not opened (first: {})",
                            diff,
                            self.source.name(),
                            t.name(),
                            report
                                .differences
                                .first()
                                .map(|d| format!("{} {:?}: {}", d.key_suffix, d.kind, d.detail))
                                .unwrap_or_default()
                        ),
                    ));
                }
            }
            self.check_no_writes_after_fence(fence)?;
        }
        let snap = self.lag.snapshot();
        let opened_at = now_ms();
        let proof = CutoverProof {
            fence_position: fence as u64,
            shards: snap
                .shards
                .iter()
                .map(|s| ShardProof {
                    shard: s.shard,
                    fence_seq: fence_seqs.get(&s.shard).copied().unwrap_or(0),
                    applied: s
                        .targets
                        .iter()
                        .map(|(k, v)| (k.clone(), v.applied_seq))
                        .collect(),
                })
                .collect(),
            verified_keys: verified,
            differences,
            read_only_mode: match self.cfg.source_read_only {
                ReadOnlyMode::Auth => "auth".into(),
                ReadOnlyMode::External => "external".into(),
            },
            source_read_only_at_ms: read_only_at,
            target_opened_at_ms: opened_at,
            read_only_window_ms: opened_at.saturating_sub(read_only_at),
        };
        let data = serde_json::to_vec_pretty(&proof).expect("proof serialises");
        write_private(&self.dir.join(PROOF_FILE), &data).map_err(|e| {
            failed(
                CutoverPhase::Verifying,
                format!("recording the proof failed: {e}"),
            )
        })?;
        Ok(proof)
    }

    fn check_no_writes_after_fence(&self, fence: i64) -> Result<(), Failed> {
        let after = self.fence.writes_after_fence();
        if let Some((key, rev)) = after.first() {
            return Err(failed(
                CutoverPhase::Failed,
                format!(
                    "the source was written after the fence (key {} at revision {rev}, fence {fence}); stop every writer and run `ferry stop` again",
                    String::from_utf8_lossy(key)
                ),
            ));
        }
        Ok(())
    }
}
