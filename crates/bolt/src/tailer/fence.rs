//! The read-only switch and fences for a Bolt file.
//!
//! A Bolt file has exactly one writer, and every bbolt writer holds an
//! exclusive `flock` on the file while it has the database open. Taking
//! that lock ourselves ([`FenceHandle::make_read_only`]) is therefore the
//! read-only switch: it fails at once while a writer (Cells) has the file
//! open, and once held no bbolt process can open the file for writing. The
//! newest transaction id read after that is the fence F; the tailer
//! answers [`FenceHandle::fence`] once it journaled everything through F
//! and an [`Op::Fence`](ferry_core::Op::Fence) marker at F in every shard.
//!
//! Any change journaled at a transaction above the fence is recorded
//! (bounded); with the lock held there can be none, so one means the lock
//! was bypassed and the cutover must abort.

use crate::BoltError;
use nix::fcntl::{Flock, FlockArg};
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};

/// At most this many writes after a fence are recorded; one is enough to
/// abort, more only help the operator see what wrote.
const MAX_AFTER_FENCE: usize = 1000;

pub(crate) struct FenceRequest {
    pub txid: u64,
    pub done: oneshot::Sender<Result<(), BoltError>>,
}

#[derive(Default)]
pub(crate) struct FenceShared {
    /// The txid of the latest fence asked for; 0 when none.
    pub active: AtomicU64,
    pub after: Mutex<Vec<(Vec<u8>, u64)>>,
    lock: Mutex<Option<Flock<File>>>,
}

impl FenceShared {
    /// Records `key` changed at `txid` if that is after the active fence.
    pub fn observe(&self, key: &[u8], txid: u64) {
        let f = self.active.load(Ordering::Acquire);
        if f > 0 && txid > f {
            let mut after = self.after.lock().expect("fence lock poisoned");
            if after.len() < MAX_AFTER_FENCE {
                after.push((key.to_vec(), txid));
            }
        }
    }
}

/// Switches a Bolt source read-only and asks its running
/// [`BoltTailer`](crate::BoltTailer) for fences. Cheap to clone.
#[derive(Clone)]
pub struct FenceHandle {
    pub(crate) tx: mpsc::Sender<FenceRequest>,
    pub(crate) shared: Arc<FenceShared>,
    pub(crate) path: PathBuf,
}

impl FenceHandle {
    fn name(&self) -> String {
        self.path.display().to_string()
    }

    /// Takes the file's exclusive lock without waiting and returns the
    /// newest transaction id, which no writer can move while the lock is
    /// held. Fails with [`BoltError::Locked`] while a writer has the file
    /// open. Taking it again while held is a no-op.
    pub fn make_read_only(&self) -> Result<u64, BoltError> {
        let mut guard = self.shared.lock.lock().expect("fence lock poisoned");
        if guard.is_none() {
            let file = File::open(&self.path).map_err(|e| BoltError::Io {
                path: self.name(),
                detail: e.to_string(),
            })?;
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(l) => *guard = Some(l),
                Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                    return Err(BoltError::Locked { path: self.name() })
                }
                Err((_, e)) => {
                    return Err(BoltError::Io {
                        path: self.name(),
                        detail: format!("taking its lock failed: {e}"),
                    })
                }
            }
        }
        Ok(crate::BoltFile::open(&self.path)?.head()?.txid)
    }

    /// Gives the lock back (the cutover failed or was aborted): writers
    /// can open the file again.
    pub fn release(&self) {
        self.shared.lock.lock().expect("fence lock poisoned").take();
    }

    /// True while this handle holds the file's lock.
    pub fn is_read_only(&self) -> bool {
        self.shared
            .lock
            .lock()
            .expect("fence lock poisoned")
            .is_some()
    }

    /// Completes once the tailer durably appended an `Op::Fence` marker at
    /// position `txid` to every shard, after every change up to `txid`.
    /// Starts recording writes after `txid` at once.
    pub async fn fence(&self, txid: u64) -> Result<(), BoltError> {
        self.shared
            .after
            .lock()
            .expect("fence lock poisoned")
            .clear();
        self.shared.active.store(txid, Ordering::Release);
        let (done, rx) = oneshot::channel();
        let stopped = || BoltError::TailerStopped { path: self.name() };
        self.tx
            .send(FenceRequest { txid, done })
            .await
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Keys (event keys) changed at a transaction above the latest fence,
    /// with that transaction, in the order seen, at most 1000.
    pub fn writes_after_fence(&self) -> Vec<(Vec<u8>, u64)> {
        self.shared
            .after
            .lock()
            .expect("fence lock poisoned")
            .clone()
    }
}
