//! The lag tracker: where every shard is, from source to target.
//!
//! For each shard it knows the source head (the newest position the source
//! reported), what was journaled (sequence, position, capture time) and, per
//! target, what was applied. From those it derives lag in events (journaled
//! minus applied) and in seconds (how long the oldest unapplied event has
//! waited), which the cutover gates on and `status` and `/metrics` show.
//!
//! Invariants: journaled and applied sequences only grow (an older report is
//! ignored); readers get consistent copies ([`LagTracker::snapshot`]); replay
//! workers wait for new journal records on a [`tokio::sync::watch`] instead of
//! polling the journal.

use ferry_core::{metric_names as m, Position, Seq, ShardId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// What a shard's tailer is doing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Phase {
    /// Not started yet.
    #[default]
    Starting,
    /// Copying the snapshot: `copied` of about `total` keys.
    Snapshot { copied: u64, total: u64 },
    /// Following the change log.
    Streaming,
    /// The shard stopped on an error an operator must look at.
    Stopped { error: String },
}

/// One target's progress on one shard.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TargetProgress {
    pub applied_seq: Seq,
    /// The source position of the last applied event (`order` part).
    pub applied_position: u64,
    /// Events journaled but not yet applied.
    pub lag_events: u64,
    /// Seconds the oldest unapplied event has waited (0 when caught up).
    pub lag_seconds: f64,
    /// Events applied per second, smoothed.
    pub rate_per_s: f64,
    /// Set when this target's worker for the shard stopped on an error.
    pub error: Option<String>,
}

/// One shard's progress.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ShardProgress {
    pub shard: u32,
    #[serde(flatten)]
    pub phase: Phase,
    pub journaled_seq: Seq,
    pub journaled_position: u64,
    pub targets: BTreeMap<String, TargetProgress>,
}

/// A consistent copy of everything, for status and the cutover.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LagSnapshot {
    /// The newest position the source reported (etcd header revision).
    pub source_head: u64,
    /// The newest position journaled by the tailer.
    pub journaled_position: u64,
    pub shards: Vec<ShardProgress>,
}

impl LagSnapshot {
    /// The largest lag in events over all shards and targets.
    pub fn max_lag_events(&self) -> u64 {
        self.targets().map(|t| t.lag_events).max().unwrap_or(0)
    }

    /// The largest lag in seconds over all shards and targets.
    pub fn max_lag_seconds(&self) -> f64 {
        self.targets().map(|t| t.lag_seconds).fold(0.0, f64::max)
    }

    /// True when every shard streams and no worker stopped.
    pub fn all_streaming(&self) -> bool {
        !self.shards.is_empty()
            && self.shards.iter().all(|s| {
                s.phase == Phase::Streaming && s.targets.values().all(|t| t.error.is_none())
            })
    }

    fn targets(&self) -> impl Iterator<Item = &TargetProgress> {
        self.shards.iter().flat_map(|s| s.targets.values())
    }
}

#[derive(Default)]
struct TargetState {
    applied_seq: Seq,
    applied_position: u64,
    rate_per_s: f64,
    last_rate_at_ms: u64,
    error: Option<String>,
}

struct ShardState {
    phase: Phase,
    journaled_seq: Seq,
    journaled_position: u64,
    /// Capture time (ms) of journaled events, by their first sequence, kept
    /// only for what some target has not applied yet: the age of the oldest
    /// unapplied event is the lag in seconds.
    pending: BTreeMap<Seq, u64>,
    targets: BTreeMap<String, TargetState>,
    notify: watch::Sender<Seq>,
}

impl ShardState {
    fn new() -> Self {
        ShardState {
            phase: Phase::Starting,
            journaled_seq: 0,
            journaled_position: 0,
            pending: BTreeMap::new(),
            targets: BTreeMap::new(),
            notify: watch::channel(0).0,
        }
    }
}

#[derive(Default)]
struct State {
    source_head: u64,
    journaled_position: u64,
    shards: BTreeMap<ShardId, ShardState>,
}

/// Shared by the tailer, the replay workers, the API and the cutover.
#[derive(Default)]
pub struct LagTracker {
    state: Mutex<State>,
}

/// Bounded memory: at most this many pending capture times per shard; older
/// entries merge into their neighbour, which only makes the lag in seconds
/// coarser, never wrong by more than one batch.
const MAX_PENDING: usize = 4096;

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl LagTracker {
    pub fn new() -> Self {
        Self::default()
    }

    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self.state.lock().expect("lag tracker lock poisoned"))
    }

    /// Registers a shard and its targets with what the journal already holds
    /// (on start or resume).
    pub fn register(&self, shard: ShardId, journaled_seq: Seq, targets: &[(String, Seq)]) {
        self.with(|s| {
            let st = s.shards.entry(shard).or_insert_with(ShardState::new);
            st.journaled_seq = st.journaled_seq.max(journaled_seq);
            st.notify.send_replace(st.journaled_seq);
            for (t, applied) in targets {
                let ts = st.targets.entry(t.clone()).or_default();
                ts.applied_seq = ts.applied_seq.max(*applied);
            }
        });
    }

    /// The target answered again: forget the error a retry reported.
    pub fn clear_error(&self, shard: ShardId, target: &str) {
        self.with(|s| {
            if let Some(ts) = s
                .shards
                .get_mut(&shard)
                .and_then(|st| st.targets.get_mut(target))
            {
                ts.error = None;
            }
        });
    }

    pub fn set_phase(&self, shard: ShardId, phase: Phase) {
        self.with(|s| s.shards.entry(shard).or_insert_with(ShardState::new).phase = phase);
    }

    /// Sets every registered shard's phase.
    pub fn set_phase_all(&self, phase: Phase) {
        self.with(|s| {
            s.shards
                .values_mut()
                .for_each(|st| st.phase = phase.clone())
        });
    }

    /// The source reported its head position.
    pub fn source_head(&self, position: &Position) {
        self.with(|s| s.source_head = s.source_head.max(position.order));
        metrics::gauge!(m::SOURCE_HEAD_POSITION).set(position.order as f64);
    }

    /// The tailer made events durable in the journal: shard's last sequence is
    /// now `seq`, captured at `capture_ms`.
    pub fn journaled(
        &self,
        shard: ShardId,
        first_seq: Seq,
        seq: Seq,
        position: &Position,
        capture_ms: u64,
    ) {
        self.with(|s| {
            s.journaled_position = s.journaled_position.max(position.order);
            s.source_head = s.source_head.max(position.order);
            let st = s.shards.entry(shard).or_insert_with(ShardState::new);
            if seq <= st.journaled_seq {
                return;
            }
            st.journaled_seq = seq;
            st.journaled_position = st.journaled_position.max(position.order);
            st.pending.insert(first_seq, capture_ms);
            if st.pending.len() > MAX_PENDING {
                // Drop the second-oldest entry: the oldest keeps the lag honest.
                if let Some(k) = st.pending.keys().nth(1).copied() {
                    st.pending.remove(&k);
                }
            }
            st.notify.send_replace(seq);
        });
    }

    /// Records that the whole source checkpoint moved (markers only).
    pub fn journaled_position(&self, position: &Position) {
        self.with(|s| {
            s.journaled_position = s.journaled_position.max(position.order);
            s.source_head = s.source_head.max(position.order);
        });
    }

    /// A receiver that changes whenever the shard's journaled sequence grows.
    pub fn subscribe(&self, shard: ShardId) -> watch::Receiver<Seq> {
        self.with(|s| {
            s.shards
                .entry(shard)
                .or_insert_with(ShardState::new)
                .notify
                .subscribe()
        })
    }

    /// `target` durably applied `shard` through `seq` (`count` events in this
    /// batch, the last at source `position`).
    pub fn applied(&self, shard: ShardId, target: &str, seq: Seq, count: u64, position: u64) {
        let now = now_ms();
        self.with(|s| {
            let st = s.shards.entry(shard).or_insert_with(ShardState::new);
            let ts = st.targets.entry(target.to_string()).or_default();
            if seq < ts.applied_seq {
                return;
            }
            ts.applied_seq = seq;
            ts.applied_position = ts.applied_position.max(position);
            ts.error = None;
            let dt = now.saturating_sub(ts.last_rate_at_ms) as f64 / 1000.0;
            if ts.last_rate_at_ms > 0 && dt > 0.0 {
                // Exponential smoothing over about a second of batches.
                let inst = count as f64 / dt;
                let alpha = (dt / 1.0).min(1.0);
                ts.rate_per_s = alpha * inst + (1.0 - alpha) * ts.rate_per_s;
            }
            ts.last_rate_at_ms = now;
            let min_applied = st
                .targets
                .values()
                .map(|t| t.applied_seq)
                .min()
                .unwrap_or(seq);
            // Forget capture times every target is past.
            while let Some((&first, _)) = st.pending.first_key_value() {
                let next = st.pending.range(first + 1..).next().map(|(k, _)| *k);
                match next {
                    Some(n) if n <= min_applied + 1 => {
                        st.pending.remove(&first);
                    }
                    None if st.journaled_seq <= min_applied => {
                        st.pending.remove(&first);
                    }
                    _ => break,
                }
            }
        });
        metrics::counter!(m::REPLAY_APPLIED_EVENTS_TOTAL, "target" => target.to_string())
            .increment(count);
    }

    /// A worker stopped on an error an operator must handle.
    pub fn worker_error(&self, shard: ShardId, target: &str, error: String) {
        self.with(|s| {
            let st = s.shards.entry(shard).or_insert_with(ShardState::new);
            st.targets.entry(target.to_string()).or_default().error = Some(error);
        });
    }

    pub fn snapshot(&self) -> LagSnapshot {
        let now = now_ms();
        self.with(|s| LagSnapshot {
            source_head: s.source_head,
            journaled_position: s.journaled_position,
            shards: s
                .shards
                .iter()
                .map(|(id, st)| ShardProgress {
                    shard: id.0,
                    phase: st.phase.clone(),
                    journaled_seq: st.journaled_seq,
                    journaled_position: st.journaled_position,
                    targets: st
                        .targets
                        .iter()
                        .map(|(name, t)| {
                            let lag_events = st.journaled_seq.saturating_sub(t.applied_seq);
                            // The oldest pending batch not yet applied by this target.
                            let oldest = st
                                .pending
                                .range(..=t.applied_seq + 1)
                                .next_back()
                                .filter(|_| lag_events > 0)
                                .or_else(|| {
                                    st.pending
                                        .range(t.applied_seq + 1..)
                                        .next()
                                        .filter(|_| lag_events > 0)
                                })
                                .map(|(_, ms)| *ms);
                            let lag_seconds =
                                oldest.map_or(0.0, |ms| now.saturating_sub(ms) as f64 / 1000.0);
                            (
                                name.clone(),
                                TargetProgress {
                                    applied_seq: t.applied_seq,
                                    applied_position: t.applied_position,
                                    lag_events,
                                    lag_seconds,
                                    rate_per_s: t.rate_per_s,
                                    error: t.error.clone(),
                                },
                            )
                        })
                        .collect(),
                })
                .collect(),
        })
    }

    /// Publishes per-shard lag gauges (called about once a second, not per event).
    pub fn publish_metrics(&self) {
        let snap = self.snapshot();
        for sh in &snap.shards {
            for (t, p) in &sh.targets {
                let labels = [("shard", sh.shard.to_string()), ("target", t.clone())];
                metrics::gauge!(m::REPLAY_LAG_EVENTS, &labels).set(p.lag_events as f64);
                metrics::gauge!(m::REPLAY_LAG_SECONDS, &labels).set(p.lag_seconds);
                metrics::gauge!(m::REPLAY_APPLIED_SEQ, &labels).set(p.applied_seq as f64);
            }
            metrics::gauge!(m::JOURNAL_LAST_SEQ, "shard" => sh.shard.to_string())
                .set(sh.journaled_seq as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_follows_journal_and_apply() {
        let t = LagTracker::new();
        let s = ShardId(0);
        t.register(s, 0, &[("a".into(), 0), ("b".into(), 0)]);
        let mut rx = t.subscribe(s);
        t.journaled(s, 1, 10, &Position::at(100), now_ms() - 2000);
        assert!(rx.has_changed().unwrap());
        assert_eq!(*rx.borrow_and_update(), 10);
        let snap = t.snapshot();
        assert_eq!(snap.max_lag_events(), 10);
        assert!(snap.max_lag_seconds() >= 1.9, "{}", snap.max_lag_seconds());
        t.applied(s, "a", 10, 10, 100);
        t.applied(s, "b", 4, 4, 40);
        t.applied(s, "b", 3, 1, 30); // older report ignored
        let snap = t.snapshot();
        let sh = &snap.shards[0];
        assert_eq!(sh.targets["a"].lag_events, 0);
        assert_eq!(sh.targets["a"].lag_seconds, 0.0);
        assert_eq!(sh.targets["b"].lag_events, 6);
        assert!(sh.targets["b"].lag_seconds >= 1.9);
        t.applied(s, "b", 10, 6, 100);
        assert_eq!(t.snapshot().max_lag_events(), 0);
        assert_eq!(t.snapshot().max_lag_seconds(), 0.0);
        assert!(!t.snapshot().all_streaming());
        t.set_phase_all(Phase::Streaming);
        assert!(t.snapshot().all_streaming());
        t.worker_error(s, "a", "boom".into());
        assert!(!t.snapshot().all_streaming());
    }
}
