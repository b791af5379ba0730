//! Target leases that mirror source leases.
//!
//! A put whose event carries `StoreMeta::Etcd { lease_id, lease_ttl_s }`
//! attaches the target key to the target lease mapped from that source
//! lease. The mapping is persisted under `__ferry/<target prefix>/lease/<source
//! id>` (decimal target id) in the same transaction as the first put that
//! uses it, and reused after a restart while the target lease still lives.
//!
//! The keeper (one task per sink) runs about once a second: while
//! [`LeaseLiveness`] says a source lease lives and its remaining TTL is
//! longer than the target's, it sends one keep-alive, so the target TTL
//! follows the source's; once the source lease died it revokes the target
//! lease, which removes its keys as the source did, and drops the mapping.
//! Without liveness (no tailer in this process) target leases simply run
//! out their TTL.
//!
//! Invariant: at most one target lease per source lease per sink: grants go
//! through one async mutex, so concurrent shards share a lease.

use crate::error::is_lease_not_found;
use crate::lease::LeaseLiveness;
use crate::store::RangeCursor;
use crate::{EtcdError, EtcdStore};
use etcd_client::{GetOptions, LeaseGrantOptions};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// How often the keeper looks at every mapped lease.
pub(crate) const KEEPER_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug)]
struct Mapped {
    target: i64,
    granted_ttl_s: i64,
    /// When the target lease runs out, as far as Ferry knows.
    expires_at: Instant,
    /// The mapping record is on the target.
    persisted: bool,
}

pub(crate) struct TargetLeases {
    store: EtcdStore,
    liveness: Option<LeaseLiveness>,
    map: Mutex<HashMap<i64, Mapped>>,
}

impl TargetLeases {
    pub fn new(store: EtcdStore, liveness: Option<LeaseLiveness>) -> Self {
        TargetLeases {
            store,
            liveness,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// After a restart: takes over every mapping recorded on the target
    /// whose target lease still lives (so the keeper resumes keeping it
    /// alive) and asks the tailer to watch its source lease; drops records
    /// of target leases that are gone.
    pub async fn load_all(&self) -> Result<usize, EtcdError> {
        let mut prefix = crate::RESERVED_PREFIX.to_vec();
        prefix.extend_from_slice(self.store.prefix());
        prefix.extend_from_slice(b"/lease/");
        let mut cursor = RangeCursor::prefix(&prefix, 0).with_reserved();
        let mut loaded = 0;
        while let Some(page) = cursor.next_page(&self.store).await? {
            for kv in page {
                let source = std::str::from_utf8(&kv.key()[prefix.len()..])
                    .ok()
                    .and_then(|s| s.parse::<i64>().ok());
                let target = std::str::from_utf8(kv.value())
                    .ok()
                    .and_then(|s| s.parse::<i64>().ok());
                let (Some(source), Some(target)) = (source, target) else {
                    continue;
                };
                let mut lc = self.store.client().lease_client();
                let t = self
                    .store
                    .timed("reading a lease's TTL", lc.time_to_live(target, None))
                    .await?;
                if t.ttl() <= 0 {
                    let mut c = self.store.kv();
                    self.store
                        .timed(
                            "deleting a lease mapping",
                            c.delete(kv.key().to_vec(), None),
                        )
                        .await?;
                    continue;
                }
                if let Some(l) = &self.liveness {
                    l.track(source);
                }
                self.map.lock().await.entry(source).or_insert(Mapped {
                    target,
                    granted_ttl_s: t.granted_ttl(),
                    expires_at: Instant::now() + secs(t.ttl()),
                    persisted: true,
                });
                loaded += 1;
            }
        }
        Ok(loaded)
    }

    /// The mapping record's key for `source` lease.
    pub fn mapping_key(&self, source: i64) -> Vec<u8> {
        let mut k = crate::RESERVED_PREFIX.to_vec();
        k.extend_from_slice(self.store.prefix());
        k.extend_from_slice(format!("/lease/{source}").as_bytes());
        k
    }

    /// The target lease for `source` (granting one if needed) and whether
    /// its mapping record still has to be written.
    pub async fn target_for(&self, source: i64, ttl_hint_s: i64) -> Result<(i64, bool), EtcdError> {
        let mut map = self.map.lock().await;
        if let Some(m) = map.get(&source) {
            return Ok((m.target, !m.persisted));
        }
        // After a restart: reuse the recorded lease if it still lives.
        let mut kv = self.store.kv();
        let key = self.mapping_key(source);
        let r = self
            .store
            .timed("reading a lease mapping", kv.get(key, None::<GetOptions>))
            .await?;
        if let Some(id) = r
            .kvs()
            .first()
            .and_then(|kv| std::str::from_utf8(kv.value()).ok())
            .and_then(|s| s.parse::<i64>().ok())
        {
            let mut lc = self.store.client().lease_client();
            let t = self
                .store
                .timed("reading a lease's TTL", lc.time_to_live(id, None))
                .await?;
            if t.ttl() > 0 {
                let m = Mapped {
                    target: id,
                    granted_ttl_s: t.granted_ttl(),
                    expires_at: Instant::now() + secs(t.ttl()),
                    persisted: true,
                };
                map.insert(source, m);
                return Ok((id, false));
            }
        }
        // Grant with the source's granted TTL when known, so a keep-alive
        // resets the target to what a keep-alive resets the source to.
        let ttl = self
            .liveness
            .as_ref()
            .and_then(|l| l.get(source))
            .filter(|s| s.alive && s.granted_ttl_s > 0)
            .map_or(ttl_hint_s, |s| s.granted_ttl_s)
            .max(1);
        let mut lc = self.store.client().lease_client();
        let g = self
            .store
            .timed("granting a lease", lc.grant(ttl, None::<LeaseGrantOptions>))
            .await?;
        let m = Mapped {
            target: g.id(),
            granted_ttl_s: g.ttl(),
            expires_at: Instant::now() + secs(g.ttl()),
            persisted: false,
        };
        map.insert(source, m);
        Ok((m.target, true))
    }

    /// The mapping records of `sources` were committed.
    pub async fn persisted(&self, sources: &[i64]) {
        let mut map = self.map.lock().await;
        for s in sources {
            if let Some(m) = map.get_mut(s) {
                m.persisted = true;
            }
        }
    }

    /// A put failed with "lease not found": forget mappings to target leases
    /// that are gone so the retry grants new ones.
    pub async fn forget_targets(&self, targets: &[i64]) {
        self.map
            .lock()
            .await
            .retain(|_, m| !targets.contains(&m.target));
    }

    /// One keeper round (see the module doc).
    pub async fn keep_round(&self) {
        let Some(liveness) = &self.liveness else {
            return;
        };
        let snapshot: Vec<(i64, Mapped)> = self
            .map
            .lock()
            .await
            .iter()
            .map(|(s, m)| (*s, *m))
            .collect();
        for (source, m) in snapshot {
            let Some(state) = liveness.get(source) else {
                continue;
            };
            if !state.alive {
                self.revoke(source, m.target).await;
                continue;
            }
            let target_left = m
                .expires_at
                .saturating_duration_since(Instant::now())
                .as_secs() as i64;
            if state.remaining_s() > target_left + 1 {
                let mut lc = self.store.client().lease_client();
                match self.store.timed_raw(lc.keep_alive(m.target)).await {
                    Ok(_) => {
                        if let Some(e) = self.map.lock().await.get_mut(&source) {
                            e.expires_at = Instant::now() + secs(m.granted_ttl_s);
                        }
                    }
                    Err(e) => {
                        tracing::debug!(store = self.store.name(), lease = m.target, error = %e, "keep-alive of a target lease failed");
                        if is_lease_not_found(&e) || e.to_string().contains("lease not found") {
                            self.forget_targets(&[m.target]).await;
                        }
                    }
                }
            }
        }
    }

    async fn revoke(&self, source: i64, target: i64) {
        let mut lc = self.store.client().lease_client();
        match self.store.timed_raw(lc.revoke(target)).await {
            Ok(_) => {}
            Err(e) if is_lease_not_found(&e) => {}
            Err(e) => {
                tracing::debug!(store = self.store.name(), lease = target, error = %e, "revoking a target lease failed; retrying next round");
                return;
            }
        }
        let mut kv = self.store.kv();
        if self
            .store
            .timed(
                "deleting a lease mapping",
                kv.delete(self.mapping_key(source), None),
            )
            .await
            .is_ok()
        {
            self.map.lock().await.remove(&source);
            tracing::debug!(
                store = self.store.name(),
                source_lease = source,
                target_lease = target,
                "source lease died; target lease revoked"
            );
        }
    }
}

fn secs(s: i64) -> Duration {
    Duration::from_secs(u64::try_from(s).unwrap_or(0))
}
