//! Fences: proof points for the cutover.
//!
//! After the source was made read-only, the cutover reads its head revision
//! F and asks the tailer for a fence at F. The tailer answers once it
//! journaled, in every shard, everything through F followed by an
//! [`Op::Fence`](ferry_core::Op::Fence) marker at position F; a shard whose
//! replay reaches that marker has applied everything the source holds up
//! to F.
//!
//! From the moment a fence is asked for, any source event with a revision
//! above F is recorded (key and revision, bounded): a read-only source must
//! not have any, so the cutover aborts if [`FenceHandle::writes_after_fence`]
//! is not empty.

use crate::EtcdError;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};

/// At most this many writes after a fence are recorded; one is enough to
/// abort, more only help the operator see what wrote.
const MAX_AFTER_FENCE: usize = 1000;
/// Recent events remembered so a fence asked for late still sees writes
/// the tailer journaled before it heard of the fence.
const RECENT_EVENTS: usize = 1024;

pub(crate) struct FenceRequest {
    pub revision: i64,
    pub done: oneshot::Sender<Result<(), EtcdError>>,
}

#[derive(Default)]
pub(crate) struct FenceShared {
    /// The revision of the latest fence asked for; 0 when none.
    pub active: AtomicI64,
    pub after: Mutex<Vec<(Vec<u8>, i64)>>,
}

impl FenceShared {
    /// Records `key` written at `revision` if that is after the active fence.
    pub fn observe(&self, key: &[u8], revision: i64) {
        let f = self.active.load(Ordering::Acquire);
        if f > 0 && revision > f {
            let mut after = self.after.lock().expect("fence lock poisoned");
            if after.len() < MAX_AFTER_FENCE {
                after.push((key.to_vec(), revision));
            }
        }
    }
}

/// Asks a running [`EtcdTailer`](crate::EtcdTailer) for fences. Cheap to clone.
#[derive(Clone)]
pub struct FenceHandle {
    pub(crate) tx: mpsc::Sender<FenceRequest>,
    pub(crate) shared: Arc<FenceShared>,
    pub(crate) store: Arc<str>,
}

impl FenceHandle {
    /// Completes once the tailer durably appended an `Op::Fence` marker at
    /// position `revision` to every shard, after every event up to
    /// `revision`. Starts recording writes after `revision` at once (and
    /// forgets those recorded for an earlier fence).
    pub async fn fence(&self, revision: i64) -> Result<(), EtcdError> {
        self.shared
            .after
            .lock()
            .expect("fence lock poisoned")
            .clear();
        self.shared.active.store(revision, Ordering::Release);
        let (done, rx) = oneshot::channel();
        let stopped = || EtcdError::TailerStopped {
            store: self.store.to_string(),
        };
        self.tx
            .send(FenceRequest { revision, done })
            .await
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Source writes seen with a revision above the latest fence: (key,
    /// revision), in the order seen, at most 1000.
    pub fn writes_after_fence(&self) -> Vec<(Vec<u8>, i64)> {
        self.shared
            .after
            .lock()
            .expect("fence lock poisoned")
            .clone()
    }
}

/// The tailer's side: fences waiting for the watch to reach them, and the
/// most recent events (for fences asked for after the fact).
#[derive(Default)]
pub(crate) struct Fences {
    waiting: Vec<FenceRequest>,
    recent: VecDeque<(Vec<u8>, i64)>,
}

impl Fences {
    pub fn add(&mut self, req: FenceRequest, shared: &FenceShared) {
        // Writes journaled before the request arrived count too.
        for (key, rev) in &self.recent {
            if *rev > req.revision {
                shared.observe(key, *rev);
            }
        }
        self.waiting.push(req);
    }

    pub fn remember(&mut self, key: &[u8], revision: i64) {
        if self.recent.len() == RECENT_EVENTS {
            self.recent.pop_front();
        }
        self.recent.push_back((key.to_vec(), revision));
    }

    /// True when a fence at or below `revision` waits.
    pub fn waiting_at_most(&self, revision: i64) -> bool {
        self.waiting.iter().any(|r| r.revision <= revision)
    }

    /// Fence revisions at or below `confirmed`, ascending and deduplicated;
    /// their requests stay until [`Fences::complete`].
    pub fn ready(&self, confirmed: i64) -> Vec<i64> {
        let mut revs: Vec<i64> = self
            .waiting
            .iter()
            .map(|r| r.revision)
            .filter(|r| *r <= confirmed)
            .collect();
        revs.sort_unstable();
        revs.dedup();
        revs
    }

    /// Answers every request at or below `through`.
    pub fn complete(&mut self, through: i64, result: &Result<(), EtcdError>) {
        let (done, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|r| r.revision <= through);
        self.waiting = keep;
        for r in done {
            let _ = r.done.send(result.clone());
        }
    }

    /// Fails every waiting request (the tailer stops).
    pub fn fail_all(&mut self, err: &EtcdError) {
        for r in self.waiting.drain(..) {
            let _ = r.done.send(Err(err.clone()));
        }
    }
}
