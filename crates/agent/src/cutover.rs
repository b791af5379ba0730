//! The cutover (SPEC section 5), for every route of the agent at once.
//!
//! 1. Wait until every shard streams and lag is under the threshold.
//! 2. Make each source read-only (etcd roles lose write permission; with
//!    `external`, and always for JSON files and Vault, the operator has
//!    stopped the writers). What was changed is saved in the journal
//!    directory first, so a crash here is undone by the next start.
//! 3. Fence each source: for etcd, its head revision after the switch; for
//!    a polled source, one more complete look that starts after the switch.
//! 4. Have each tailer journal a fence marker in every shard of its route
//!    once it has everything up to the fence, and wait until every target
//!    applied every shard through its marker.
//! 5. Verify source against each target (unless disabled).
//! 6. Record the proof, then report the target open.
//!
//! Any failure after step 2 puts the source back as it was. A write seen on
//! the source after the fence (possible with `external`) fails the cutover.

use crate::api::{CutoverPhase, CutoverProof, ShardProof, StopRequest};
use crate::config::{AgentConfig, ReadOnlyMode};
use crate::control::AgentControl;
use crate::runtime::LiveRoute;
use crate::security::write_private;
use ferry_connect::{Opener, ReadOnlyContext, ReadOnlyGuard, StateDir};
use ferry_lag::{now_ms, LagTracker};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

pub const PROOF_FILE: &str = "cutover-proof.json";

/// Saved while a cutover has a source read-only; the next agent start
/// restores it if the cutover never finished. One file per source.
pub use ferry_connect::state::readonly_file;

pub struct Cutover<'a> {
    pub state: &'a StateDir,
    /// Targets kept closed to users during the sync, by name; opened last.
    pub blocked_targets: &'a [(String, Box<dyn Opener>)],
    /// What the operator does after the cutover (a composite source's).
    pub next_steps: &'a [String],
    /// Unmapped source entries the operator accepted, by name.
    pub accept_unmapped: Vec<String>,
    pub cfg: &'a AgentConfig,
    pub control: &'a AgentControl,
    pub lag: &'a LagTracker,
    pub routes: &'a [LiveRoute],
    /// With `--coordinator`: the shards are applied by several agents, and
    /// each records its shards through the fence in etcd (see
    /// [`crate::barrier`]).
    pub barrier: Option<&'a crate::barrier::Barrier>,
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

/// Polls `ready` every 5 ms until it holds, an abort arrives, or `deadline`
/// (inside the read-only window each poll interval is up to one interval
/// more of it: 50 ms showed as a 50 ms floor on the drain in the window
/// bench; a lag snapshot costs microseconds).
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
            () = tokio::time::sleep(Duration::from_millis(5)) => {}
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

        // 2. Sources read-only, each as its connector does it; what was
        // changed is recorded in the state directory first.
        let mut guards: Vec<Box<dyn ReadOnlyGuard>> = Vec::new();
        let ctx = ReadOnlyContext {
            external: self.cfg.source_read_only == ReadOnlyMode::External,
            state: self.state,
        };
        for r in self.routes {
            match r.fence.make_read_only(&ctx).await {
                Ok(Some(g)) => guards.push(g),
                Ok(None) => {}
                Err(e) => {
                    undo(&guards).await;
                    return Err(failed(
                        CutoverPhase::SourceReadOnly,
                        format!("{}: {e}", r.route.source.url()),
                    ));
                }
            }
        }
        let read_only_at = now_ms();
        self.control.set_cutover(
            CutoverPhase::SourceReadOnly,
            "sources are read-only; reading the fences",
        );
        let result = self
            .drain_verify_record(stop_rx, deadline, read_only_at)
            .await;
        match &result {
            // Put the sources back; the targets stay as they are, not opened.
            Err(_) => undo(&guards).await,
            // The sources stay read-only: the service now runs on the
            // targets. The record on each source itself serves
            // `set-server-mode --mode default`.
            Ok(_) => guards.iter().for_each(|g| g.keep()),
        }
        result
    }

    async fn drain_verify_record(
        &self,
        stop_rx: &mut mpsc::Receiver<StopRequest>,
        deadline: Instant,
        read_only_at: u64,
    ) -> Result<CutoverProof, Failed> {
        self.control.set_cutover(
            CutoverPhase::DrainingToFence,
            "fencing every source; then waiting until every shard applied its fence",
        );
        // Where the window's time goes, phase by phase, for the proof.
        let mut phases = BTreeMap::new();
        let mut lap = Instant::now();
        let mut phase = |name: &str| {
            phases.insert(name.to_string(), lap.elapsed().as_millis() as u64);
            lap = Instant::now();
        };
        let fences = futures::future::try_join_all(self.routes.iter().map(|r| async move {
            let f = r.fence.fence().await.map_err(|e| {
                failed(
                    CutoverPhase::DrainingToFence,
                    format!("{}: {e}", r.route.source.url()),
                )
            })?;
            Ok::<_, Failed>((r.route.source.url().to_string(), f))
        }));
        let fences: BTreeMap<String, u64> = tokio::select! {
            r = fences => r?.into_iter().collect(),
            () = tokio::time::sleep_until(deadline) => return Err(failed(CutoverPhase::DrainingToFence, "timed out waiting for the tailers to reach their fences")),
        };
        let fence = fences.values().copied().next().unwrap_or(0);
        phase("fence");
        let fence_seqs: BTreeMap<u32, u64> = self
            .lag
            .snapshot()
            .shards
            .iter()
            .map(|s| (s.shard, s.journaled_seq))
            .collect();
        let recorded = match self.barrier {
            None => {
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
                None
            }
            Some(b) => Some(self.await_agents(b, &fence_seqs, deadline, stop_rx).await?),
        };
        phase("drain");
        self.check_no_writes_after_fence()?;
        for r in self.routes {
            for sink in &r.sinks {
                ferry_replay::Sink::after_fence(sink.as_ref())
                    .await
                    .map_err(|e| failed(CutoverPhase::DrainingToFence, e.message))?;
            }
        }
        phase("after_fence");
        let (mut verified, mut differences) = (0, 0);
        let mut unmapped: BTreeMap<String, String> = self
            .control
            .unmapped()
            .into_iter()
            .map(|e| (e.name, e.sentence))
            .collect();
        let mut target_positions = BTreeMap::new();
        let mut window_checks = BTreeMap::new();
        if self.cfg.verify_on_cutover {
            self.control
                .set_cutover(CutoverPhase::Verifying, "comparing source and target");
            for r in self.routes {
                for (i, t) in r.route.targets.iter().enumerate() {
                    let turl = t.url();
                    // Verified continuously: only what changed since (the
                    // dirty ranges) is compared inside the window.
                    let verifier = r.sinks.get(i).and_then(|s| s.verifier.as_ref());
                    let report = match verifier.filter(|v| v.ready()) {
                        Some(v) => v.verify_dirty().await.map(|w| {
                            let c = w.comparison();
                            window_checks.insert(turl.to_string(), w);
                            c
                        }),
                        None => {
                            crate::routes::compare(
                                r.route.source.as_ref(),
                                t.as_ref(),
                                crate::config::DEFAULT_VERIFY_TTL_TOLERANCE_S,
                            )
                            .await
                        }
                    }
                    .map_err(|e| failed(CutoverPhase::Verifying, e))?;
                    verified += report.compared;
                    if !report.positions.is_empty() {
                        target_positions.insert(turl.to_string(), report.positions.clone());
                    }
                    differences += report.differences;
                    unmapped.extend(
                        report
                            .unmapped
                            .iter()
                            .map(|e| (e.name.clone(), e.sentence.clone())),
                    );
                    if !report.is_equal() {
                        return Err(failed(
                            CutoverPhase::Verifying,
                            format!(
                                "verification found {} differences between {} and {turl}; the target was not opened (first: {})",
                                report.differences,
                                r.route.source.url(),
                                report.details.first().cloned().unwrap_or_default()
                            ),
                        ));
                    }
                }
            }
            self.check_no_writes_after_fence()?;
        }
        let refused: Vec<&String> = unmapped
            .iter()
            .filter(|(name, _)| !self.accept_unmapped.contains(name))
            .map(|(_, sentence)| sentence)
            .collect();
        if let Some(first) = refused.first() {
            return Err(failed(
                CutoverPhase::Verifying,
                format!(
                    "{} source entries could not be mapped for the target and are not on it; the target was not opened (first: {first}); fix them at the source, or accept each by name with `ferry stop --accept-unmapped <service>:<path>`",
                    refused.len()
                ),
            ));
        }
        phase("verify");
        // 6. The targets open: lift the protection kept since start.
        for (name, opener) in self.blocked_targets {
            opener.open().await.map_err(|e| {
                    failed(
                        CutoverPhase::Failed,
                        format!("{name}: the target could not be opened ({e}); run `ferry set-server-mode --source {name} --mode default`"),
                    )
                })?;
        }
        phase("open");
        let snap = self.lag.snapshot();
        let opened_at = now_ms();
        let proof = CutoverProof {
            fence_position: fence,
            fences,
            shards: snap
                .shards
                .iter()
                .map(|s| ShardProof {
                    shard: s.shard,
                    fence_seq: fence_seqs.get(&s.shard).copied().unwrap_or(0),
                    // Coordinated: what the owning agent recorded.
                    applied: match recorded.as_ref().and_then(|r| r.get(&s.shard)) {
                        Some(r) => r.applied.clone(),
                        None => s
                            .targets
                            .iter()
                            .map(|(k, v)| (k.clone(), v.applied_seq))
                            .collect(),
                    },
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
            window_phases_ms: phases,
            window_checks,
            next_steps: self.next_steps.to_vec(),
            unmapped_accepted: unmapped.into_values().collect(),
            target_positions,
        };
        let data = serde_json::to_vec_pretty(&proof).expect("proof serialises");
        write_private(&self.state.path().join(PROOF_FILE), &data).map_err(|e| {
            failed(
                CutoverPhase::Verifying,
                format!("recording the proof failed: {e}"),
            )
        })?;
        Ok(proof)
    }

    /// Opens a round in etcd and waits until every shard's owner recorded
    /// it applied through the fence; an agent's failure fails it.
    async fn await_agents(
        &self,
        b: &crate::barrier::Barrier,
        fence_seqs: &BTreeMap<u32, u64>,
        deadline: Instant,
        stop_rx: &mut mpsc::Receiver<StopRequest>,
    ) -> Result<BTreeMap<u32, crate::barrier::ShardRecord>, Failed> {
        let drain = |e: String| failed(CutoverPhase::DrainingToFence, e);
        let targets: BTreeMap<u32, Vec<String>> = self
            .routes
            .iter()
            .flat_map(|r| {
                let names: Vec<String> = r
                    .route
                    .targets
                    .iter()
                    .map(|t| t.url().to_string())
                    .collect();
                r.route.span.iter().map(move |s| (s.0, names.clone()))
            })
            .collect();
        let round = b.open_round(fence_seqs).await.map_err(drain)?;
        self.control.set_cutover(
            CutoverPhase::DrainingToFence,
            format!(
                "every source fenced; waiting until the agents record each of {} shards applied through its fence",
                fence_seqs.len()
            ),
        );
        loop {
            if let Some(r) = b.check(round, fence_seqs, &targets).await.map_err(drain)? {
                return Ok(r);
            }
            if Instant::now() >= deadline {
                return Err(drain(
                    "timed out waiting for every agent to record its shards applied through the fence; `ferry status` shows which agent owns which shard".into(),
                ));
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(20)) => {}
                Some(req) = stop_rx.recv() => {
                    if req.abort {
                        return Err(failed(CutoverPhase::Aborted, "aborted by the operator"));
                    }
                }
            }
        }
    }

    fn check_no_writes_after_fence(&self) -> Result<(), Failed> {
        for r in self.routes {
            if let Some((key, pos)) = r.fence.writes_after_fence().first() {
                return Err(failed(
                    CutoverPhase::Failed,
                    format!(
                        "{} was written after the fence (key `{}` at position {pos}); stop every writer and run `ferry stop` again",
                        r.route.source.url(),
                        String::from_utf8_lossy(key)
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Gives every switched source its writes back (a failed cutover).
async fn undo(guards: &[Box<dyn ReadOnlyGuard>]) {
    for g in guards.iter().rev() {
        g.undo().await;
    }
}
