//! Source lease liveness, shared between the tailer and the sinks.
//!
//! etcd attaches keys to leases; when a lease expires or is revoked, its
//! keys vanish. `etcdctl make-mirror` drops leases; Ferry keeps them: the
//! tailer records each source lease it sees here (alive, remaining and
//! granted TTL, when it looked), refreshes them about once a second, and a
//! sink keeps its matching target lease alive while the source lease lives
//! and revokes it once the source lease died.
//!
//! A sink that resumes with target leases recorded by an earlier run calls
//! [`LeaseLiveness::track`] for their source leases, so the tailer checks
//! them even when no new event mentions them.
//!
//! Invariants: one entry per source lease id; an entry only goes from alive
//! to dead, never back (etcd never reuses a lease id while it lives, and a
//! dead lease stays dead); dead entries are forgotten after
//! [`DEAD_RETENTION`], so the map stays bounded by the live leases.

use crate::{EtcdError, EtcdStore};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a dead lease is remembered (so sinks that lag see it die).
pub const DEAD_RETENTION: Duration = Duration::from_secs(600);
/// A TTL looked up less than this long ago is reused instead of asking etcd
/// again (one RPC per key would dominate a snapshot of leased keys).
pub const TTL_CACHE: Duration = Duration::from_secs(1);

/// What Ferry last learned about one source lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseState {
    /// False once etcd said the lease does not exist any more.
    pub alive: bool,
    /// Remaining TTL in seconds when checked (0 when dead).
    pub ttl_s: i64,
    /// The TTL the lease was granted with (what a keep-alive resets it to).
    pub granted_ttl_s: i64,
    /// When this was learned.
    pub checked_at: Instant,
}

impl LeaseState {
    /// The remaining TTL now, extrapolated from the last check.
    pub fn remaining_s(&self) -> i64 {
        let elapsed = i64::try_from(self.checked_at.elapsed().as_secs()).unwrap_or(i64::MAX);
        (self.ttl_s - elapsed).max(0)
    }
}

/// Source lease id → state. Cheap to clone (an `Arc`).
#[derive(Clone, Default)]
pub struct LeaseLiveness {
    inner: Arc<Mutex<Known>>,
}

#[derive(Default)]
struct Known {
    states: HashMap<i64, LeaseState>,
    /// Leases a sink maps that the tailer has not looked at yet (after a
    /// restart, a lease no new event mentions would otherwise stay unknown).
    wanted: HashSet<i64>,
}

impl std::fmt::Debug for LeaseLiveness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LeaseLiveness({} leases)", self.len())
    }
}

impl LeaseLiveness {
    pub fn new() -> Self {
        Self::default()
    }

    fn with<R>(&self, f: impl FnOnce(&mut Known) -> R) -> R {
        f(&mut self.inner.lock().expect("lease liveness lock poisoned"))
    }

    /// What is known about `source_lease`, if it was ever seen.
    pub fn get(&self, source_lease: i64) -> Option<LeaseState> {
        self.with(|m| m.states.get(&source_lease).copied())
    }

    /// `Some(true)` alive, `Some(false)` dead, `None` never seen.
    pub fn is_alive(&self, source_lease: i64) -> Option<bool> {
        self.get(source_lease).map(|s| s.alive)
    }

    /// How many leases are tracked.
    pub fn len(&self) -> usize {
        self.with(|m| m.states.len())
    }

    /// Asks the tailer to check `source_lease` on its next round even if no
    /// event mentions it (a sink that resumed with mapped leases).
    pub fn track(&self, source_lease: i64) {
        self.with(|m| {
            if !m.states.contains_key(&source_lease) {
                m.wanted.insert(source_lease);
            }
        });
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records a check. A dead lease never comes back to life.
    pub(crate) fn record(&self, source_lease: i64, state: LeaseState) {
        self.with(|m| {
            let keep_dead = m.states.get(&source_lease).is_some_and(|s| !s.alive);
            let mut state = state;
            if keep_dead {
                state.alive = false;
                state.ttl_s = 0;
            }
            m.wanted.remove(&source_lease);
            m.states.insert(source_lease, state);
        });
    }

    /// Leases whose last check is older than `age`, and forgets dead ones
    /// past [`DEAD_RETENTION`].
    fn due(&self, age: Duration) -> Vec<i64> {
        self.with(|m| {
            m.states
                .retain(|_, s| s.alive || s.checked_at.elapsed() < DEAD_RETENTION);
            let stale = m
                .states
                .iter()
                .filter(|(_, s)| s.alive && s.checked_at.elapsed() >= age)
                .map(|(id, _)| *id);
            m.wanted.iter().copied().chain(stale).collect()
        })
    }
}

/// Asks the source about `lease` and records the answer.
pub(crate) async fn check(
    store: &EtcdStore,
    liveness: &LeaseLiveness,
    lease: i64,
) -> Result<LeaseState, EtcdError> {
    let mut c = store.client().lease_client();
    let r = store
        .timed("reading a lease's TTL", c.time_to_live(lease, None))
        .await?;
    // etcd answers TTL -1 for a lease that expired or was revoked.
    let state = LeaseState {
        alive: r.ttl() > 0,
        ttl_s: r.ttl().max(0),
        granted_ttl_s: r.granted_ttl().max(0),
        checked_at: Instant::now(),
    };
    liveness.record(lease, state);
    Ok(liveness.get(lease).unwrap_or(state))
}

/// The remaining TTL of `lease` for an event, from the cache when fresh.
pub(crate) async fn ttl_for_event(
    store: &EtcdStore,
    liveness: &LeaseLiveness,
    lease: i64,
) -> Result<i64, EtcdError> {
    if let Some(s) = liveness.get(lease) {
        if !s.alive || s.checked_at.elapsed() < TTL_CACHE {
            return Ok(s.remaining_s());
        }
    }
    Ok(check(store, liveness, lease).await?.ttl_s)
}

/// Refreshes every live lease about once per `every` until the task is
/// dropped. Errors are logged and retried on the next round: liveness is
/// advisory, a stale entry only delays a keep-alive or a revoke.
pub(crate) async fn refresh_loop(store: EtcdStore, liveness: LeaseLiveness, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        for id in liveness.due(every) {
            if let Err(e) = check(&store, &liveness, id).await {
                tracing::debug!(store = store.name(), lease = id, error = %e, "lease refresh failed; retrying next round");
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_stays_dead() {
        let l = LeaseLiveness::new();
        let now = Instant::now();
        l.record(
            7,
            LeaseState {
                alive: true,
                ttl_s: 5,
                granted_ttl_s: 5,
                checked_at: now,
            },
        );
        assert_eq!(l.is_alive(7), Some(true));
        l.record(
            7,
            LeaseState {
                alive: false,
                ttl_s: 0,
                granted_ttl_s: 5,
                checked_at: now,
            },
        );
        l.record(
            7,
            LeaseState {
                alive: true,
                ttl_s: 5,
                granted_ttl_s: 5,
                checked_at: now,
            },
        );
        assert_eq!(l.is_alive(7), Some(false));
        assert_eq!(l.is_alive(8), None);
        assert_eq!(l.due(Duration::ZERO), Vec::<i64>::new());
        l.track(9);
        l.track(7);
        assert_eq!(l.due(Duration::from_secs(60)), vec![9]);
        assert_eq!(l.is_alive(9), None);
    }
}
