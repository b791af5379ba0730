//! [`SharedJournal`]: any [`Journal`] behind one type.
//!
//! [`Journal`] uses `async fn` in a trait, which cannot be a trait object.
//! Connectors (`ferry-connect`) hand their tailers a journal without
//! knowing which implementation the agent opened, so this wraps one in an
//! `Arc<dyn …>` whose futures are boxed. The box costs one allocation per
//! call, next to an fsync'd append or a read of a batch.

use crate::{AppendBatch, AppendOutcome, Journal, JournalError, ReadBudget, ShardBounds};
use ferry_core::{Event, Position, Seq, ShardId};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

type Fut<'a, T> = Pin<Box<dyn Future<Output = Result<T, JournalError>> + Send + 'a>>;

/// The object-safe twin of [`Journal`]; implemented for every journal.
trait Erased: Send + Sync {
    fn append(&self, batch: AppendBatch) -> Fut<'_, AppendOutcome>;
    fn read(
        &self,
        shard: ShardId,
        from: Seq,
        budget: ReadBudget,
    ) -> Result<Vec<Event>, JournalError>;
    fn bounds(&self, shard: ShardId) -> Result<Option<ShardBounds>, JournalError>;
    fn shards(&self) -> Result<Vec<ShardId>, JournalError>;
    fn truncate(&self, shard: ShardId, through: Seq) -> Fut<'_, ()>;
    fn source_checkpoint(&self, source: &str) -> Result<Option<Position>, JournalError>;
    fn set_applied(&self, target: String, shard: ShardId, seq: Seq) -> Fut<'_, ()>;
    fn applied(&self, target: &str, shard: ShardId) -> Result<Option<Seq>, JournalError>;
}

impl<J: Journal> Erased for J {
    fn append(&self, batch: AppendBatch) -> Fut<'_, AppendOutcome> {
        Box::pin(Journal::append(self, batch))
    }
    fn read(
        &self,
        shard: ShardId,
        from: Seq,
        budget: ReadBudget,
    ) -> Result<Vec<Event>, JournalError> {
        Journal::read(self, shard, from, budget)
    }
    fn bounds(&self, shard: ShardId) -> Result<Option<ShardBounds>, JournalError> {
        Journal::bounds(self, shard)
    }
    fn shards(&self) -> Result<Vec<ShardId>, JournalError> {
        Journal::shards(self)
    }
    fn truncate(&self, shard: ShardId, through: Seq) -> Fut<'_, ()> {
        Box::pin(Journal::truncate(self, shard, through))
    }
    fn source_checkpoint(&self, source: &str) -> Result<Option<Position>, JournalError> {
        Journal::source_checkpoint(self, source)
    }
    fn set_applied(&self, target: String, shard: ShardId, seq: Seq) -> Fut<'_, ()> {
        Box::pin(async move { Journal::set_applied(self, &target, shard, seq).await })
    }
    fn applied(&self, target: &str, shard: ShardId) -> Result<Option<Seq>, JournalError> {
        Journal::applied(self, target, shard)
    }
}

/// A journal of any implementation; cheap to clone, and itself a [`Journal`].
#[derive(Clone)]
pub struct SharedJournal(Arc<dyn Erased>);

impl SharedJournal {
    pub fn new<J: Journal + 'static>(journal: Arc<J>) -> Self {
        SharedJournal(journal)
    }
}

impl Journal for SharedJournal {
    fn append(
        &self,
        batch: AppendBatch,
    ) -> impl Future<Output = Result<AppendOutcome, JournalError>> + Send {
        self.0.append(batch)
    }
    fn read(
        &self,
        shard: ShardId,
        from: Seq,
        budget: ReadBudget,
    ) -> Result<Vec<Event>, JournalError> {
        self.0.read(shard, from, budget)
    }
    fn bounds(&self, shard: ShardId) -> Result<Option<ShardBounds>, JournalError> {
        self.0.bounds(shard)
    }
    fn shards(&self) -> Result<Vec<ShardId>, JournalError> {
        self.0.shards()
    }
    fn truncate(
        &self,
        shard: ShardId,
        through: Seq,
    ) -> impl Future<Output = Result<(), JournalError>> + Send {
        self.0.truncate(shard, through)
    }
    fn source_checkpoint(&self, source: &str) -> Result<Option<Position>, JournalError> {
        self.0.source_checkpoint(source)
    }
    fn set_applied(
        &self,
        target: &str,
        shard: ShardId,
        seq: Seq,
    ) -> impl Future<Output = Result<(), JournalError>> + Send {
        self.0.set_applied(target.to_string(), shard, seq)
    }
    fn applied(&self, target: &str, shard: ShardId) -> Result<Option<Seq>, JournalError> {
        self.0.applied(target, shard)
    }
}
