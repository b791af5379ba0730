//! The streaming half of the tailer: one watch session.
//!
//! Events are batched until `batch_max_events` or `batch_max_wait`
//! ([`TailerOptions`](super::TailerOptions)), then appended with the
//! checkpoint set to the highest revision known to be fully delivered.
//!
//! What "fully delivered" means, and why progress responses are not taken
//! at their word: without `fragment`, etcd sends all events of one revision
//! in one response, so after a response whose last event is at revision r,
//! everything through r arrived. A requested progress response says "the
//! store is at P", but etcd 3.4.23 answers it on a separate channel, ahead
//! of events still queued for the watcher and even before a watcher that is
//! still catching up (or about to be canceled for compaction) delivered
//! anything (etcd-io/etcd#15220, fixed in later 3.4/3.5 releases; observed
//! here: a fence confirmed by progress alone before the compaction cancel
//! arrived). So a progress revision P is only a *candidate*. It becomes
//! confirmed either by a later event above P (events of one watcher come in
//! revision order), or by a check on the source itself: the prefix has the
//! same key count at P as at the confirmed revision and no key modified in
//! between ([`EtcdStore::unchanged_between`](crate::EtcdStore)). Only
//! confirmed revisions become checkpoints or satisfy fences; a candidate
//! only updates the source head shown in `status`. The check reads the
//! whole prefix on the server, so it runs only for a waiting fence or an
//! idle checkpoint, throttled to a small share of the time.

use super::fence::{FenceShared, Fences};
use super::{Appender, EtcdTailer};
use crate::error::EtcdError;
use crate::store::{prefix_range, MAX_DECODING_BYTES};
use etcd_client::{EventType, WatchOptions, WatchResponse};
use ferry_core::{Event, Op, Position, ShardId, StoreMeta};
use ferry_journal::Journal;
use ferry_lag::{now_ms, LagTracker};
use ferry_replay::Shutdown;
use std::time::Instant;
use tokio::time::MissedTickBehavior;

/// How a watch session ended without an error.
pub(super) enum StreamEnd {
    Shutdown,
    Compacted { compact_revision: i64 },
}

/// The revision bookkeeping of one watch session (see the module doc).
struct Progress {
    /// Highest revision known fully delivered; everything at or below it
    /// is journaled or pending.
    confirmed: i64,
    /// A progress revision above `confirmed`, not yet confirmed.
    candidate: Option<i64>,
    /// The checkpoint last journaled.
    journaled: i64,
    last_checkpoint_at: Instant,
    /// No source check before this (throttle).
    next_check_at: Instant,
}

impl Progress {
    fn new(from: i64) -> Self {
        Progress {
            confirmed: from,
            candidate: None,
            journaled: from,
            last_checkpoint_at: Instant::now(),
            next_check_at: Instant::now(),
        }
    }

    fn on_events(&mut self, last: i64) {
        self.confirmed = self.confirmed.max(last);
        if self.candidate.is_some_and(|c| c <= self.confirmed) {
            // Everything at or below the candidate came before this event.
            self.candidate = None;
        }
    }

    fn on_progress(&mut self, p: i64) {
        if p > self.confirmed {
            self.candidate = Some(p);
        }
    }
}

/// Events waiting for the next append, per shard.
struct Pending {
    per_shard: Vec<Vec<Event>>,
    count: usize,
    since: Option<tokio::time::Instant>,
}

impl EtcdTailer {
    /// Watches from `from + 1` (the journaled checkpoint) until shutdown,
    /// compaction, or an error.
    pub(super) async fn stream<J: Journal>(
        &mut self,
        app: &mut Appender<'_, J>,
        lag: &LagTracker,
        from: i64,
        shutdown: &mut Shutdown,
        fences: &mut Fences,
        attempt: &mut u32,
    ) -> Result<StreamEnd, EtcdError> {
        let (start, end) = prefix_range(self.store.prefix());
        let opts = WatchOptions::new()
            .with_range(end)
            .with_start_revision(from + 1)
            .with_progress_notify();
        let mut wc = self
            .store
            .client()
            .watch_client()
            .max_decoding_message_size(MAX_DECODING_BYTES);
        let mut watch = self
            .store
            .timed("starting a watch", wc.watch(start, Some(opts)))
            .await?;
        let mut progress = Progress::new(from);
        let mut pending = Pending {
            per_shard: app.empty(),
            count: 0,
            since: None,
        };
        let mut tick = tokio::time::interval(self.opts.progress_interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let shared = std::sync::Arc::clone(&self.fence_shared);
        loop {
            let flush_at = pending.since.map(|s| s + self.opts.batch_max_wait);
            // Every branch is cancel-safe: a message not yet received stays
            // in the gRPC stream, a fence request in its channel.
            tokio::select! {
                biased;
                () = shutdown.wait() => {
                    self.flush(app, &mut pending, &mut progress, fences).await?;
                    return Ok(StreamEnd::Shutdown);
                }
                msg = watch.message() => {
                    let resp = match msg {
                        Ok(Some(r)) => r,
                        Ok(None) => {
                            self.flush(app, &mut pending, &mut progress, fences).await?;
                            return Err(EtcdError::Unreachable {
                                store: self.store.name().to_string(),
                                detail: "the watch stream ended".into(),
                            });
                        }
                        Err(e) => {
                            self.flush(app, &mut pending, &mut progress, fences).await?;
                            return Err(crate::error::classify(self.store.name(), "watching", &e));
                        }
                    };
                    if resp.canceled() {
                        self.flush(app, &mut pending, &mut progress, fences).await?;
                        return self.canceled(&resp);
                    }
                    if resp.created() {
                        *attempt = 0;
                        continue;
                    }
                    if resp.events().is_empty() {
                        let p = resp.header().map_or(0, |h| h.revision());
                        lag.source_head(&Position::at(u64::try_from(p).unwrap_or(0)));
                        progress.on_progress(p);
                        self.maybe_flush_idle(app, &mut pending, &mut progress, fences).await?;
                    } else {
                        self.take_events(&resp, &mut pending, &mut progress, fences, &shared).await?;
                        if pending.count >= self.opts.batch_max_events {
                            self.flush(app, &mut pending, &mut progress, fences).await?;
                        }
                    }
                }
                req = self.fence_rx.recv() => {
                    let Some(req) = req else { continue };
                    let rev = req.revision;
                    fences.add(req, &shared);
                    if rev <= progress.confirmed {
                        self.flush(app, &mut pending, &mut progress, fences).await?;
                    } else {
                        let _ = watch.request_progress().await;
                    }
                }
                () = sleep_until(flush_at), if flush_at.is_some() => {
                    self.flush(app, &mut pending, &mut progress, fences).await?;
                }
                _ = tick.tick() => {
                    // A failed request surfaces as a stream error right after.
                    let _ = watch.request_progress().await;
                    self.maybe_flush_idle(app, &mut pending, &mut progress, fences).await?;
                }
            }
        }
    }

    /// A canceled watch: compaction, or an error the server gave as reason.
    fn canceled(&self, resp: &WatchResponse) -> Result<StreamEnd, EtcdError> {
        if resp.compact_revision() != 0 {
            return Ok(StreamEnd::Compacted {
                compact_revision: resp.compact_revision(),
            });
        }
        let reason = resp.cancel_reason();
        if reason.contains("permission denied") {
            return Err(EtcdError::PermissionDenied {
                store: self.store.name().to_string(),
                action: "watching the prefix".into(),
            });
        }
        Err(EtcdError::Server {
            store: self.store.name().to_string(),
            action: "watching".into(),
            detail: format!("the server canceled the watch ({reason:?})"),
            kind: ferry_core::ErrorKind::Transient,
        })
    }

    /// Turns a response's events into pending journal events.
    async fn take_events(
        &self,
        resp: &WatchResponse,
        pending: &mut Pending,
        progress: &mut Progress,
        fences: &mut Fences,
        shared: &FenceShared,
    ) -> Result<(), EtcdError> {
        let mut last = 0;
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            let rev = kv.mod_revision();
            last = last.max(rev);
            if Self::skip(kv.key()) {
                continue;
            }
            shared.observe(kv.key(), rev);
            fences.remember(kv.key(), rev);
            let event = match ev.event_type() {
                EventType::Put => self.put_event(kv).await?,
                EventType::Delete => self.event(
                    kv.key(),
                    rev,
                    Op::Delete {
                        meta: StoreMeta::None,
                    },
                ),
            };
            pending.per_shard[event.shard.0 as usize].push(event);
            pending.count += 1;
            pending.since.get_or_insert_with(tokio::time::Instant::now);
        }
        if last > 0 {
            progress.on_events(last);
        }
        Ok(())
    }

    /// Confirms the candidate through the source when a fence waits for it
    /// or an idle checkpoint is due, then flushes what became ready.
    async fn maybe_flush_idle<J: Journal>(
        &self,
        app: &mut Appender<'_, J>,
        pending: &mut Pending,
        progress: &mut Progress,
        fences: &mut Fences,
    ) -> Result<(), EtcdError> {
        let idle_due = pending.count == 0
            && progress.last_checkpoint_at.elapsed() >= self.opts.idle_checkpoint_interval;
        if let Some(c) = progress.candidate {
            let fence_needs = fences.waiting_at_most(c);
            if fence_needs || (idle_due && Instant::now() >= progress.next_check_at) {
                let started = Instant::now();
                let quiet = match self.store.unchanged_between(progress.confirmed, c).await {
                    Ok(q) => q,
                    // The watch reports the compaction itself.
                    Err(EtcdError::Compacted { .. }) => false,
                    Err(e) => return Err(e),
                };
                // Keep the check under ~2% of the time on large prefixes.
                progress.next_check_at = Instant::now() + started.elapsed() * 50;
                if quiet {
                    progress.on_events(c);
                }
            }
        }
        let fence_ready = !fences.ready(progress.confirmed).is_empty();
        if fence_ready || (idle_due && progress.confirmed > progress.journaled) {
            self.flush(app, pending, progress, fences).await?;
        }
        Ok(())
    }

    /// Appends everything pending, fence markers that are due, and the
    /// checkpoint at the confirmed revision, in one atomic append.
    async fn flush<J: Journal>(
        &self,
        app: &mut Appender<'_, J>,
        pending: &mut Pending,
        progress: &mut Progress,
        fences: &mut Fences,
    ) -> Result<(), EtcdError> {
        let ready = fences.ready(progress.confirmed);
        if pending.count == 0 && ready.is_empty() && progress.confirmed <= progress.journaled {
            return Ok(());
        }
        let mut per_shard = std::mem::replace(&mut pending.per_shard, app.empty());
        let now = now_ms();
        for &f in &ready {
            let pos = Position::at(u64::try_from(f).unwrap_or(0));
            for (s, events) in per_shard.iter_mut().enumerate() {
                // After every event at or below F, before any above it.
                let at = events.partition_point(|e| e.position <= pos);
                events.insert(
                    at,
                    Event {
                        shard: ShardId(app.span().first + s as u32),
                        seq: 0,
                        position: pos.clone(),
                        key: Vec::new(),
                        op: Op::Fence,
                        source_ts_ms: 0,
                        capture_ts_ms: now,
                    },
                );
            }
        }
        let checkpoint = progress.confirmed.max(progress.journaled);
        if let Some(limiter) = &self.opts.rate_limit {
            ferry_replay::throttle(limiter, pending.count).await;
        }
        let result = app.append(per_shard, Some(checkpoint)).await;
        pending.count = 0;
        pending.since = None;
        if let Some(&through) = ready.last() {
            fences.complete(through, &result.clone().map(|_| ()));
        }
        result?;
        progress.journaled = checkpoint;
        progress.last_checkpoint_at = Instant::now();
        Ok(())
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_events_confirm_without_a_source_check() {
        let mut p = Progress::new(10);
        p.on_progress(15);
        assert_eq!((p.confirmed, p.candidate), (10, Some(15)));
        // Another progress alone confirms nothing (etcd 3.4 may be early).
        p.on_progress(15);
        assert_eq!((p.confirmed, p.candidate), (10, Some(15)));
        // Events below the candidate move `confirmed` but keep the candidate.
        p.on_events(12);
        assert_eq!((p.confirmed, p.candidate), (12, Some(15)));
        // An event above it confirms it by stream order.
        p.on_events(16);
        assert_eq!((p.confirmed, p.candidate), (16, None));
        // A stale progress (below what events showed) is ignored.
        p.on_progress(5);
        assert_eq!((p.confirmed, p.candidate), (16, None));
    }
}
