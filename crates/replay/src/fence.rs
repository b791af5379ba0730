//! The fence for sources that Ferry polls (JSON files, Vault KV): the
//! cutover asks, the tailer answers after its next complete look.
//!
//! A polling tailer has no server-side head position to wait for. Once the
//! source is read-only, a look that *starts after the request* sees every
//! change there will ever be; the tailer journals that look's changes,
//! then a fence marker in every shard, and answers with the fence's
//! position. Any change a later look finds is a write after the fence: it
//! is journaled like any other (nothing is lost) and reported, and the
//! cutover refuses to open the target.

use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

#[derive(Default)]
struct Shared {
    request: Option<oneshot::Sender<Result<u64, String>>>,
    fenced_at: Option<u64>,
    after: Vec<(Vec<u8>, u64)>,
}

/// Shared between a polling tailer and the cutover.
#[derive(Clone, Default)]
pub struct PollFence {
    shared: Arc<Mutex<Shared>>,
}

impl PollFence {
    pub fn new() -> Self {
        Self::default()
    }

    fn with<R>(&self, f: impl FnOnce(&mut Shared) -> R) -> R {
        f(&mut self.shared.lock().expect("fence lock poisoned"))
    }

    /// Cutover side: waits until the tailer journaled a fence after a look
    /// that began after this call; returns the fence position.
    pub async fn fence(&self) -> Result<u64, String> {
        let (tx, rx) = oneshot::channel();
        self.with(|s| s.request = Some(tx));
        rx.await
            .map_err(|_| "the tailer stopped before it reached the fence".to_string())?
    }

    /// Changes seen after the fence: (key, position).
    pub fn writes_after_fence(&self) -> Vec<(Vec<u8>, u64)> {
        self.with(|s| s.after.clone())
    }

    /// Tailer side, before a look: takes a pending request. The tailer
    /// answers it with [`FenceRequest::done`] after journaling the look.
    pub fn take_request(&self) -> Option<FenceRequest> {
        self.with(|s| s.request.take()).map(|tx| FenceRequest {
            tx,
            fence: self.clone(),
        })
    }

    /// Tailer side: a change was journaled at `position`; recorded as a
    /// write after the fence if a fence was already journaled.
    pub fn saw_change(&self, key: &[u8], position: u64) {
        self.with(|s| {
            if s.fenced_at.is_some_and(|f| position > f) && s.after.len() < 100 {
                s.after.push((key.to_vec(), position));
            }
        });
    }
}

impl PollFence {
    /// Journals one look of a polling tailer: its `events` at look
    /// `round` (each noted by [`Self::saw_change`]) with the checkpoint,
    /// then, if the cutover asked before the look began, fence markers at a
    /// new round, and the answer. A failed append fails the request too.
    pub async fn journal_look<J: ferry_journal::Journal>(
        &self,
        app: &mut crate::SpanAppender<'_, J>,
        round: &mut u64,
        events: Vec<ferry_core::Event>,
        request: Option<FenceRequest>,
    ) -> Result<(), crate::AppendError> {
        use ferry_core::{Op, Position};
        let result = async {
            if !events.is_empty() {
                for e in &events {
                    self.saw_change(&e.key, *round);
                }
                app.append(app.split(events), Some(Position::at(*round)))
                    .await?;
            }
            if request.is_some() {
                *round += 1;
                let pos = Position::at(*round);
                app.append(app.markers(Op::Fence, &pos), Some(pos)).await?;
            }
            Ok::<(), crate::AppendError>(())
        }
        .await;
        if let Some(r) = request {
            match &result {
                Ok(()) => r.done(*round),
                Err(e) => r.fail(e.to_string()),
            }
        }
        result
    }
}

/// A cutover's request, held by the tailer during one look.
pub struct FenceRequest {
    tx: oneshot::Sender<Result<u64, String>>,
    fence: PollFence,
}

impl FenceRequest {
    /// The fence markers at `position` are durable.
    pub fn done(self, position: u64) {
        self.fence.with(|s| s.fenced_at = Some(position));
        let _ = self.tx.send(Ok(position));
    }

    /// The look failed; the cutover gets the reason.
    pub fn fail(self, reason: String) {
        let _ = self.tx.send(Err(reason));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_fence_answers_after_the_next_look_and_flags_later_changes() {
        let f = PollFence::new();
        assert!(f.take_request().is_none());
        let waiter = {
            let f = f.clone();
            tokio::spawn(async move { f.fence().await })
        };
        // The tailer's loop: look, find the request, journal, answer.
        let req = loop {
            if let Some(r) = f.take_request() {
                break r;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        };
        f.saw_change(b"before", 7);
        req.done(7);
        assert_eq!(waiter.await.unwrap(), Ok(7));
        assert!(f.writes_after_fence().is_empty());
        f.saw_change(b"late", 8);
        assert_eq!(f.writes_after_fence(), vec![(b"late".to_vec(), 8)]);
    }
}
