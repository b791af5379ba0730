//! Fences: proof points for the cutover.
//!
//! After the source was made read-only (or its writers were stopped, in
//! external mode), the cutover reads the source's cluster time F
//! ([`MongoStore::head_position`](crate::MongoStore::head_position)) and
//! asks the tailer for a fence at F. The tailer answers once it journaled,
//! in every shard of its span, everything through F followed by an
//! [`Op::Fence`](ferry_core::Op::Fence) marker at position F.
//!
//! "Everything through F" is known when the change stream returned a batch
//! (possibly empty) from a `getMore` that was sent after the request
//! arrived, hence after F was read: the server answers a `getMore` with
//! every event it holds up to that moment. An event above F also proves it
//! (events come in cluster-time order).
//!
//! From the moment a fence is asked for, any source event above F is
//! recorded (namespace, `_id`, cluster time; bounded): a read-only source
//! must not have any, so the cutover aborts if
//! [`FenceHandle::writes_after_fence`] is not empty. That is the whole of
//! the read-only guarantee in external mode (SecantusDB has no
//! `setUserWriteBlockMode`).

use crate::MongoError;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

/// At most this many writes after a fence are recorded; one is enough to
/// abort, more only help the operator see what wrote.
const MAX_AFTER_FENCE: usize = 1000;
/// Recent events remembered so a fence asked for late still sees writes
/// the tailer journaled before it heard of the fence.
const RECENT_EVENTS: usize = 1024;

pub(crate) struct FenceRequest {
    pub position: u64,
    pub received: Instant,
    pub done: oneshot::Sender<Result<(), MongoError>>,
}

/// A source write seen after a fence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteAfterFence {
    /// `db.collection`.
    pub namespace: String,
    /// The `_id`, in a short human form.
    pub id: String,
    /// Its cluster time, packed as a position order.
    pub position: u64,
}

#[derive(Default)]
pub(crate) struct FenceShared {
    /// The position of the latest fence asked for; 0 when none.
    pub active: AtomicU64,
    pub after: Mutex<Vec<WriteAfterFence>>,
}

impl FenceShared {
    /// Records a write at `position` if that is after the active fence.
    pub fn observe(&self, w: &WriteAfterFence) {
        let f = self.active.load(Ordering::Acquire);
        if f > 0 && w.position > f {
            let mut after = self.after.lock().expect("fence lock poisoned");
            if after.len() < MAX_AFTER_FENCE {
                after.push(w.clone());
            }
        }
    }
}

/// Asks a running [`MongoTailer`](crate::MongoTailer) for fences. Cheap to clone.
#[derive(Clone)]
pub struct FenceHandle {
    pub(crate) tx: mpsc::Sender<FenceRequest>,
    pub(crate) shared: Arc<FenceShared>,
    pub(crate) store: Arc<str>,
}

impl FenceHandle {
    /// Completes once the tailer durably appended an `Op::Fence` marker at
    /// `position` (a packed cluster time, as
    /// [`MongoStore::head_position`](crate::MongoStore::head_position)
    /// gives) to every shard of its span, after every event up to it.
    /// Starts recording writes after `position` at once (and forgets those
    /// recorded for an earlier fence).
    pub async fn fence(&self, position: u64) -> Result<(), MongoError> {
        self.shared
            .after
            .lock()
            .expect("fence lock poisoned")
            .clear();
        self.shared.active.store(position, Ordering::Release);
        let (done, rx) = oneshot::channel();
        let stopped = || MongoError::TailerStopped {
            store: self.store.to_string(),
        };
        self.tx
            .send(FenceRequest {
                position,
                received: Instant::now(),
                done,
            })
            .await
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Source writes seen after the latest fence, in the order seen, at
    /// most 1000.
    pub fn writes_after_fence(&self) -> Vec<WriteAfterFence> {
        self.shared
            .after
            .lock()
            .expect("fence lock poisoned")
            .clone()
    }
}

/// The tailer's side: fences waiting for the stream to reach them, and the
/// most recent events (for fences asked for after the fact).
#[derive(Default)]
pub(crate) struct Fences {
    waiting: Vec<FenceRequest>,
    recent: VecDeque<WriteAfterFence>,
}

impl Fences {
    pub fn add(&mut self, req: FenceRequest, shared: &FenceShared) {
        for w in &self.recent {
            if w.position > req.position {
                shared.observe(w);
            }
        }
        self.waiting.push(req);
    }

    pub fn remember(&mut self, w: WriteAfterFence) {
        if self.recent.len() == RECENT_EVENTS {
            self.recent.pop_front();
        }
        self.recent.push_back(w);
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Fences proven reached: requested before a `getMore` that started at
    /// `batch_started` (when given), or at or below `seen` (the highest
    /// event position streamed). Ascending, deduplicated.
    pub fn ready(&self, batch_started: Option<Instant>, seen: u64) -> Vec<u64> {
        let mut ps: Vec<u64> = self
            .waiting
            .iter()
            .filter(|r| r.position < seen || batch_started.is_some_and(|s| s >= r.received))
            .map(|r| r.position)
            .collect();
        ps.sort_unstable();
        ps.dedup();
        ps
    }

    /// Answers every request whose position is in `positions`.
    pub fn complete(&mut self, positions: &[u64], result: &Result<(), MongoError>) {
        let (done, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|r| positions.contains(&r.position));
        self.waiting = keep;
        for r in done {
            let _ = r.done.send(result.clone());
        }
    }

    /// Fails every waiting request (the tailer stops).
    pub fn fail_all(&mut self, err: &MongoError) {
        for r in self.waiting.drain(..) {
            let _ = r.done.send(Err(err.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_by_batch_or_by_later_event() {
        let shared = FenceShared::default();
        let mut f = Fences::default();
        let before = Instant::now();
        let (done, _rx) = oneshot::channel();
        f.add(
            FenceRequest {
                position: 100,
                received: Instant::now(),
                done,
            },
            &shared,
        );
        // A batch that started before the request proves nothing.
        assert!(f.ready(Some(before), 50).is_empty());
        // An event above the fence proves it.
        assert_eq!(f.ready(None, 101), vec![100]);
        // A batch that started after it proves it.
        assert_eq!(f.ready(Some(Instant::now()), 0), vec![100]);
        f.complete(&[100], &Ok(()));
        assert!(f.is_empty());
    }
}
