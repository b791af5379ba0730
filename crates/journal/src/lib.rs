//! The journal contract, free of any storage engine.
//!
//! The journal is the durable, ordered log between tailers and the replay
//! engine. Per shard it holds a dense run of events `first..=last`, numbered
//! by the journal; beside them it keeps each source's checkpoint (where the
//! tailer resumes) and each target's applied checkpoint per shard (where
//! replay resumes).
//!
//! Contract of every implementation:
//! - **Append** takes events for one or more shards plus, optionally, a source
//!   checkpoint, and makes all of them durable atomically: after a crash
//!   either the whole batch is there or none of it. Each shard's part names
//!   the sequence its first event must get (`first_seq`). If that is the
//!   shard's next sequence, the events get `first_seq, first_seq + 1, …`. If
//!   the whole range already exists, the call is a no-op returning
//!   [`AppendOutcome::Duplicate`] (a tailer retrying after an unknown
//!   outcome). Anything else is [`JournalError::Gap`] or
//!   [`JournalError::Stale`], and nothing is written.
//! - The returned future resolves only once the batch is durable under the
//!   journal's [`PersistPolicy`]: a tailer may acknowledge upstream then.
//! - **Read** returns events of one shard in sequence order, within a budget,
//!   never skipping: a damaged or missing record, or one already truncated,
//!   is [`JournalError::Corrupt`] naming its shard and sequence, never data.
//! - **Truncate** removes a shard's events up to a sequence; sequence numbers
//!   are never reused afterwards.
//! - **Checkpoints** never move backward: a source checkpoint or applied
//!   checkpoint older than the stored one is refused.

#[cfg(feature = "conformance")]
pub mod conformance;
pub mod frame;
pub mod fuzzing;
mod persist;
pub mod rules;
pub mod seal;
pub mod shared;

pub use frame::{decode_frame, encode_frame, encode_frame_into, FrameError};
pub use persist::PersistPolicy;
pub use shared::SharedJournal;

use ferry_core::{ErrorKind, Event, Position, Seq, ShardId};
use std::future::Future;

/// Events for one shard, to be numbered from `first_seq`.
#[derive(Clone, Debug)]
pub struct ShardAppend {
    pub shard: ShardId,
    /// The sequence the first event must get; the shard's `last + 1` for
    /// new events (1 for a new shard).
    pub first_seq: Seq,
    /// The events; their `shard` and `seq` fields are set by the journal.
    pub events: Vec<Event>,
}

/// A source's resume point, written atomically with the events it covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceCheckpoint {
    /// The source's stable name (its redacted URL, or a configured id).
    pub source: String,
    pub position: Position,
}

/// One atomic append.
#[derive(Clone, Debug, Default)]
pub struct AppendBatch {
    pub shards: Vec<ShardAppend>,
    pub checkpoint: Option<SourceCheckpoint>,
}

/// What an append did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppendOutcome {
    /// The events are durable; `events` were written.
    Appended { events: usize },
    /// Every shard range already existed: nothing was written.
    Duplicate,
}

/// The sequences one shard holds: `first..=last`; empty when `first > last`
/// (everything truncated). `last` never decreases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardBounds {
    pub first: Seq,
    pub last: Seq,
}

impl ShardBounds {
    pub fn len(&self) -> u64 {
        (self.last + 1).saturating_sub(self.first)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The sequence the next appended event of this shard gets.
    pub fn next_seq(&self) -> Seq {
        self.last + 1
    }
}

/// How much one read may return. At least one event is returned when one is
/// available, even if it alone exceeds `max_bytes`, so a huge record cannot
/// stall a shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadBudget {
    pub max_events: usize,
    pub max_bytes: usize,
}

impl ReadBudget {
    /// Batches of up to 1000 events or 4 MiB: large enough to amortise a
    /// target round trip, small enough to keep a worker's memory bounded.
    pub const DEFAULT: ReadBudget = ReadBudget {
        max_events: 1000,
        max_bytes: 4 << 20,
    };
}

/// Journal errors. Each says what it means for the caller via [`JournalError::kind`].
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal shard {shard}: append expected sequence {got} but the shard's next is {next}; events {next}..{got} would be missing")]
    Gap { shard: ShardId, next: Seq, got: Seq },
    #[error("journal shard {shard}: append at sequence {got} overlaps existing events (next is {next}) without repeating them whole")]
    Stale { shard: ShardId, next: Seq, got: Seq },
    #[error("journal batch repeats some shards' events but adds new ones to others; a batch is atomic, so this is a caller bug")]
    MixedDuplicate,
    #[error("journal record shard {shard} sequence {seq} is damaged: {reason}; run `ferry journal repair` to drop it and what follows")]
    Corrupt {
        shard: ShardId,
        seq: Seq,
        reason: String,
    },
    #[error("the {what} checkpoint for {name} would move backward from {current} to {requested}; checkpoints only move forward")]
    CheckpointBackward {
        what: &'static str,
        name: String,
        current: String,
        requested: String,
    },
    #[error(
        "cannot truncate journal shard {shard} through {through}: its last sequence is {last}"
    )]
    TruncateBeyondEnd {
        shard: ShardId,
        through: Seq,
        last: Seq,
    },
    #[error("the journal directory {dir} is in use by another ferry process (pid in {dir}/ferry.lock); stop it or use another --journal")]
    Locked { dir: String },
    #[error("the journal directory {dir} is not writable ({reason}); fix its permissions or choose another --journal")]
    NotWritable { dir: String, reason: String },
    #[error("the journal in {dir} has format version {found}, newer than this ferry supports ({supported}); use a newer ferry")]
    NewerFormat {
        dir: String,
        found: u32,
        supported: u32,
    },
    #[error(
        "{dir} is not a Ferry journal ({reason}); choose an empty or new directory for --journal"
    )]
    NotAJournal { dir: String, reason: String },
    #[error("no journal in {dir}; start one with `ferry start --journal {dir}` or check the path")]
    Missing { dir: String },
    #[error("this agent may no longer write the journal: another writer took over with epoch {by} (this one had {mine}); it stops so that only one tailer appends")]
    Fenced { mine: u64, by: u64 },
    #[error("journal I/O failed: {0}")]
    Io(String),
    #[error("the journal is closed")]
    Closed,
}

impl JournalError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            // A damaged record stops its shard; others can go on.
            JournalError::Corrupt { .. } => ErrorKind::Permanent,
            // Everything else means the caller's view of the journal is
            // wrong or the disk failed: continuing could lose data.
            _ => ErrorKind::Fatal,
        }
    }
}

/// Decodes the stored frame of `shard`'s `seq`: a damaged frame, or one
/// holding another shard or sequence, is [`JournalError::Corrupt`].
pub fn decode_record(frame: &[u8], shard: ShardId, seq: Seq) -> Result<Event, JournalError> {
    let event = decode_frame(frame).map_err(|e| JournalError::Corrupt {
        shard,
        seq,
        reason: e.to_string(),
    })?;
    if event.shard != shard || event.seq != seq {
        return Err(JournalError::Corrupt {
            shard,
            seq,
            reason: format!(
                "the record holds shard {} sequence {}",
                event.shard, event.seq
            ),
        });
    }
    Ok(event)
}

/// The journal. See the module doc for the contract.
pub trait Journal: Send + Sync {
    /// Appends atomically and resolves once durable.
    fn append(
        &self,
        batch: AppendBatch,
    ) -> impl Future<Output = Result<AppendOutcome, JournalError>> + Send;

    /// Events of `shard` from `from` on (inclusive), within `budget`. An empty
    /// result means nothing at or after `from` exists yet.
    fn read(
        &self,
        shard: ShardId,
        from: Seq,
        budget: ReadBudget,
    ) -> Result<Vec<Event>, JournalError>;

    /// The shard's bounds, or `None` if nothing was ever appended to it.
    fn bounds(&self, shard: ShardId) -> Result<Option<ShardBounds>, JournalError>;

    /// Every shard that ever had an append, ascending.
    fn shards(&self) -> Result<Vec<ShardId>, JournalError>;

    /// Removes `shard`'s events up to and including `through`.
    fn truncate(
        &self,
        shard: ShardId,
        through: Seq,
    ) -> impl Future<Output = Result<(), JournalError>> + Send;

    /// Where `source`'s tailer resumes, if it ever checkpointed.
    fn source_checkpoint(&self, source: &str) -> Result<Option<Position>, JournalError>;

    /// Records that `target` durably applied `shard` through `seq`. Equal is
    /// a no-op; lower is [`JournalError::CheckpointBackward`].
    fn set_applied(
        &self,
        target: &str,
        shard: ShardId,
        seq: Seq,
    ) -> impl Future<Output = Result<(), JournalError>> + Send;

    /// How far `target` applied `shard`.
    fn applied(&self, target: &str, shard: ShardId) -> Result<Option<Seq>, JournalError>;
}
