//! The single writer thread: every mutation of the journal goes through it.
//!
//! Callers encode their frames on their own threads, then send a
//! [`Command`] over a bounded channel (a full channel makes appenders wait:
//! backpressure). The writer takes every command already queued (up to
//! [`MAX_GROUP_COMMANDS`] / [`MAX_GROUP_BYTES`]), validates each against the
//! shard bounds as they will be after the commands before it, puts all valid
//! ones into one RocksDB `WriteBatch`, writes it with at most one fsync, and
//! only then answers. This is group commit: concurrent appenders share one
//! fsync, and the bounds seen by validation are exactly the durable ones.
//!
//! Invariant: `committed` (and the shared copy readers see) only ever holds
//! state that is durable under the persist policy.

use crate::columns::{self, event_key};
use ferry_core::metric_names as m;
use ferry_core::{Position, Seq, ShardId};
use ferry_journal::{AppendOutcome, JournalError, PersistPolicy, ShardBounds, SourceCheckpoint};
use rocksdb::{WriteBatch, WriteOptions, DB};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Queue depth before appenders wait. Enough to keep the writer busy while
/// one group is being fsynced.
pub const CHANNEL_CAPACITY: usize = 1024;
/// Bounds on one write group, so one fsync never waits on an unbounded batch.
pub const MAX_GROUP_COMMANDS: usize = 512;
pub const MAX_GROUP_BYTES: usize = 32 << 20;

pub type Reply<T> = oneshot::Sender<Result<T, JournalError>>;

/// One shard's part of an append, already framed into a chunk by the caller.
pub struct EncodedShard {
    pub shard: ShardId,
    pub first_seq: Seq,
    /// Records in `chunk`.
    pub count: u64,
    pub chunk: Vec<u8>,
}

pub enum Command {
    Append {
        shards: Vec<EncodedShard>,
        checkpoint: Option<SourceCheckpoint>,
        bytes: usize,
        reply: Reply<AppendOutcome>,
    },
    Truncate {
        shard: ShardId,
        through: Seq,
        reply: Reply<()>,
    },
    SetApplied {
        target: String,
        shard: ShardId,
        seq: Seq,
        reply: Reply<()>,
    },
    /// Interval policy: time to fsync what is pending.
    Tick,
    /// Finish what is queued, sync, and exit.
    Shutdown,
}

/// State the writer validates against; `shared_bounds` is the copy readers use.
pub struct WriterState {
    pub bounds: BTreeMap<ShardId, ShardBounds>,
    pub checkpoints: HashMap<String, Position>,
    pub applied: HashMap<(String, ShardId), Seq>,
}

/// Changes staged by the commands of one group, on top of `WriterState`.
#[derive(Default)]
struct Staged {
    bounds: HashMap<ShardId, ShardBounds>,
    checkpoints: HashMap<String, Position>,
    applied: HashMap<(String, ShardId), Seq>,
    events: u64,
    bytes: u64,
}

/// An answer to send once the group is durable.
enum Pending {
    Append(Reply<AppendOutcome>, AppendOutcome),
    Unit(Reply<()>),
}

impl Pending {
    fn ok(self) {
        // A caller that stopped waiting is not an error for the journal.
        match self {
            Pending::Append(r, o) => drop(r.send(Ok(o))),
            Pending::Unit(r) => drop(r.send(Ok(()))),
        }
    }

    fn fail(self, e: &str) {
        match self {
            Pending::Append(r, _) => drop(r.send(Err(JournalError::Io(e.to_string())))),
            Pending::Unit(r) => drop(r.send(Err(JournalError::Io(e.to_string())))),
        }
    }
}

pub struct Writer {
    pub db: Arc<DB>,
    pub policy: PersistPolicy,
    pub state: WriterState,
    pub shared_bounds: Arc<Mutex<BTreeMap<ShardId, ShardBounds>>>,
}

impl Writer {
    pub fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        // Answers written but not yet fsynced (Interval policy only).
        let mut unsynced: Vec<Pending> = Vec::new();
        let mut unsynced_bounds: HashMap<ShardId, ShardBounds> = HashMap::new();
        let mut last_sync = Instant::now();
        let mut shutting_down = false;
        while !shutting_down {
            let Some(first) = rx.blocking_recv() else {
                break;
            };
            let mut group = vec![first];
            let mut bytes = 0usize;
            while group.len() < MAX_GROUP_COMMANDS && bytes < MAX_GROUP_BYTES {
                match rx.try_recv() {
                    Ok(cmd) => {
                        if let Command::Append { bytes: b, .. } = &cmd {
                            bytes += b;
                        }
                        group.push(cmd);
                    }
                    Err(_) => break,
                }
            }
            let mut staged = Staged::default();
            let mut batch = WriteBatch::default();
            let mut answers = Vec::new();
            let mut tick = false;
            for cmd in group {
                match cmd {
                    Command::Tick => tick = true,
                    Command::Shutdown => shutting_down = true,
                    other => self.stage(other, &mut staged, &mut batch, &mut answers),
                }
            }
            if !batch.is_empty() {
                let started = Instant::now();
                let mut opts = WriteOptions::default();
                opts.set_sync(self.policy == PersistPolicy::EveryBatch);
                if let Err(e) = self.db.write_opt(batch, &opts) {
                    let msg = format!("writing to RocksDB: {e}");
                    tracing::error!(error = %e, "journal write failed");
                    answers.into_iter().for_each(|a| a.fail(&msg));
                    continue;
                }
                metrics::counter!(m::JOURNAL_APPENDED_EVENTS_TOTAL).increment(staged.events);
                metrics::counter!(m::JOURNAL_APPENDED_BYTES_TOTAL).increment(staged.bytes);
                metrics::counter!(m::JOURNAL_COMMIT_GROUPS_TOTAL).increment(1);
                metrics::histogram!(m::JOURNAL_COMMIT_SECONDS)
                    .record(started.elapsed().as_secs_f64());
                let new_bounds = self.commit(staged);
                match self.policy {
                    PersistPolicy::Interval(_) => {
                        unsynced.extend(answers);
                        unsynced_bounds.extend(new_bounds);
                    }
                    _ => {
                        self.publish(new_bounds);
                        answers.into_iter().for_each(Pending::ok);
                    }
                }
            } else {
                answers.into_iter().for_each(Pending::ok);
            }
            let due = match self.policy {
                PersistPolicy::Interval(d) => tick || last_sync.elapsed() >= d,
                _ => false,
            };
            if !unsynced.is_empty() && (due || shutting_down) {
                last_sync = Instant::now();
                match self.db.flush_wal(true) {
                    Ok(()) => {
                        self.publish(std::mem::take(&mut unsynced_bounds));
                        unsynced.drain(..).for_each(Pending::ok);
                    }
                    Err(e) => {
                        let msg = format!("syncing the RocksDB WAL: {e}");
                        unsynced.drain(..).for_each(|a| a.fail(&msg));
                    }
                }
            }
        }
        if self.policy == PersistPolicy::Never {
            // Best effort at a clean exit; the policy promised nothing more.
            let _ = self.db.flush_wal(true);
        }
    }

    fn publish(&self, bounds: HashMap<ShardId, ShardBounds>) {
        if bounds.is_empty() {
            return;
        }
        let mut shared = self.shared_bounds.lock().expect("bounds lock poisoned");
        shared.extend(bounds);
    }

    /// Folds a written group into `state`; returns the bounds that changed.
    fn commit(&mut self, staged: Staged) -> HashMap<ShardId, ShardBounds> {
        self.state.checkpoints.extend(staged.checkpoints);
        self.state.applied.extend(staged.applied);
        for (s, b) in &staged.bounds {
            self.state.bounds.insert(*s, *b);
        }
        staged.bounds
    }

    fn bounds(&self, staged: &Staged, shard: ShardId) -> Option<ShardBounds> {
        staged
            .bounds
            .get(&shard)
            .or_else(|| self.state.bounds.get(&shard))
            .copied()
    }

    fn stage(
        &self,
        cmd: Command,
        staged: &mut Staged,
        batch: &mut WriteBatch,
        answers: &mut Vec<Pending>,
    ) {
        match cmd {
            Command::Append {
                shards,
                checkpoint,
                reply,
                ..
            } => match self.stage_append(shards, checkpoint, staged, batch) {
                Ok(outcome) => answers.push(Pending::Append(reply, outcome)),
                Err(e) => drop(reply.send(Err(e))),
            },
            Command::Truncate {
                shard,
                through,
                reply,
            } => match self.stage_truncate(shard, through, staged, batch) {
                Ok(()) => answers.push(Pending::Unit(reply)),
                Err(e) => drop(reply.send(Err(e))),
            },
            Command::SetApplied {
                target,
                shard,
                seq,
                reply,
            } => match self.stage_applied(target, shard, seq, staged, batch) {
                Ok(()) => answers.push(Pending::Unit(reply)),
                Err(e) => drop(reply.send(Err(e))),
            },
            Command::Tick | Command::Shutdown => unreachable!("handled by run"),
        }
    }

    fn stage_append(
        &self,
        shards: Vec<EncodedShard>,
        checkpoint: Option<SourceCheckpoint>,
        staged: &mut Staged,
        batch: &mut WriteBatch,
    ) -> Result<AppendOutcome, JournalError> {
        // Validate every shard before staging anything: the batch is atomic.
        let check = ferry_journal::rules::check_append(
            shards.iter().map(|p| (p.shard, p.first_seq, p.count)),
            |shard| self.bounds(staged, shard).map_or(1, |b| b.next_seq()),
        )?;
        if check == ferry_journal::rules::AppendCheck::Duplicate {
            return Ok(AppendOutcome::Duplicate);
        }
        if let Some(cp) = &checkpoint {
            let current = staged
                .checkpoints
                .get(&cp.source)
                .or_else(|| self.state.checkpoints.get(&cp.source));
            ferry_journal::rules::check_checkpoint(current, cp)?;
        }
        let cf_events = self.db.cf_handle(columns::EVENTS).expect("events cf");
        let cf_shards = self.db.cf_handle(columns::SHARDS).expect("shards cf");
        let mut events = 0usize;
        for part in shards {
            if part.count == 0 {
                continue;
            }
            let prior = self.bounds(staged, part.shard);
            batch.put_cf(
                cf_events,
                event_key(part.shard, part.first_seq),
                &part.chunk,
            );
            staged.bytes += part.chunk.len() as u64;
            events += part.count as usize;
            let b = ShardBounds {
                first: prior.map_or(part.first_seq, |b| b.first),
                last: part.first_seq + part.count - 1,
            };
            batch.put_cf(
                cf_shards,
                columns::shard_key(part.shard),
                columns::encode_bounds(b),
            );
            staged.bounds.insert(part.shard, b);
        }
        if let Some(cp) = checkpoint {
            let cf = self.db.cf_handle(columns::SOURCE_CHECKPOINTS).expect("cf");
            batch.put_cf(
                cf,
                cp.source.as_bytes(),
                columns::encode_position(&cp.position),
            );
            staged.checkpoints.insert(cp.source, cp.position);
        }
        staged.events += events as u64;
        Ok(AppendOutcome::Appended { events })
    }

    fn stage_truncate(
        &self,
        shard: ShardId,
        through: Seq,
        staged: &mut Staged,
        batch: &mut WriteBatch,
    ) -> Result<(), JournalError> {
        // Only committed records may be truncated: the chunk boundaries are
        // read from RocksDB, which does not see this group's staged writes.
        let Some(committed) = self.state.bounds.get(&shard).copied() else {
            return Err(JournalError::TruncateBeyondEnd {
                shard,
                through,
                last: 0,
            });
        };
        if through > committed.last {
            return Err(JournalError::TruncateBeyondEnd {
                shard,
                through,
                last: committed.last,
            });
        }
        // The bounds as this group leaves them so far: an append staged
        // before this truncation in the same group must keep its `last`.
        let b = self.bounds(staged, shard).unwrap_or(committed);
        if through < b.first {
            return Ok(());
        }
        let cf_events = self.db.cf_handle(columns::EVENTS).expect("events cf");
        let cf_shards = self.db.cf_handle(columns::SHARDS).expect("shards cf");
        // Whole chunks below the one holding `through + 1` go; a chunk that
        // straddles the cut stays, and readers skip its records below `first`.
        let keep_from = crate::chunk_start(&self.db, shard, through + 1)
            .map_err(|e| JournalError::Io(e.into_string()))?
            .filter(|start| *start <= through + 1)
            .unwrap_or(through + 1);
        batch.delete_range_cf(cf_events, event_key(shard, 0), event_key(shard, keep_from));
        let nb = ShardBounds {
            first: through + 1,
            last: b.last,
        };
        batch.put_cf(
            cf_shards,
            columns::shard_key(shard),
            columns::encode_bounds(nb),
        );
        staged.bounds.insert(shard, nb);
        metrics::counter!(m::JOURNAL_TRUNCATED_EVENTS_TOTAL).increment(through + 1 - b.first);
        Ok(())
    }

    fn stage_applied(
        &self,
        target: String,
        shard: ShardId,
        seq: Seq,
        staged: &mut Staged,
        batch: &mut WriteBatch,
    ) -> Result<(), JournalError> {
        let key = (target, shard);
        let current = staged
            .applied
            .get(&key)
            .or_else(|| self.state.applied.get(&key))
            .copied();
        if !ferry_journal::rules::check_applied(current, &key.0, shard, seq)? {
            return Ok(());
        }
        let cf = self.db.cf_handle(columns::APPLIED).expect("applied cf");
        batch.put_cf(
            cf,
            columns::applied_key(&key.0, shard),
            columns::encode_seq(seq),
        );
        staged.applied.insert(key, seq);
        Ok(())
    }
}

/// Sends `Tick` every `every` until the channel closes or `stop` is set.
pub fn spawn_ticker(
    tx: mpsc::Sender<Command>,
    every: Duration,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("journal-ticker".into())
        .spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(every);
                // A full queue means the writer is busy and will sync on its
                // own schedule check; dropping this tick loses nothing.
                if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(Command::Tick) {
                    break;
                }
            }
        })
        .expect("spawn journal ticker")
}
