//! The tailers' side of the journal: appends a source's events to its span
//! of shards with per-shard sequences, and tells the lag tracker what
//! became durable.
//!
//! Every tailer (etcd, file, Vault, MongoDB, Bolt) appends through this, so
//! the rules live in one place: sequences come from the journal's bounds
//! at start and only this appender moves them; a batch and its source
//! checkpoint are one atomic append; a `Duplicate` outcome means someone
//! else appends to these shards, which is an error, not a retry.

use ferry_core::{Event, Op, Position, Seq, ShardId, ShardSpan};
use ferry_journal::{
    AppendBatch, AppendOutcome, Journal, JournalError, ShardAppend, SourceCheckpoint,
};
use ferry_lag::{now_ms, LagTracker, Phase};

/// Why an append failed.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error("journal: {0}")]
    Journal(#[from] JournalError),
    #[error("an append to the journal was reported as a duplicate; is another ferry tailing into this journal?")]
    Duplicate,
}

impl AppendError {
    pub fn kind(&self) -> ferry_core::ErrorKind {
        match self {
            AppendError::Journal(e) => e.kind(),
            AppendError::Duplicate => ferry_core::ErrorKind::Fatal,
        }
    }
}

/// Appends one source's events to its span of shards.
pub struct SpanAppender<'a, J> {
    journal: &'a J,
    lag: &'a LagTracker,
    source: String,
    span: ShardSpan,
    next_seq: Vec<Seq>,
}

impl<'a, J: Journal> SpanAppender<'a, J> {
    /// Reads each shard's next sequence from the journal and registers the
    /// shards with the lag tracker.
    pub fn load(
        journal: &'a J,
        lag: &'a LagTracker,
        source: String,
        span: ShardSpan,
    ) -> Result<Self, AppendError> {
        let mut next_seq = Vec::with_capacity(span.count as usize);
        for shard in span.iter() {
            let next = journal.bounds(shard)?.map_or(1, |b| b.next_seq());
            lag.register(shard, next - 1, &[]);
            next_seq.push(next);
        }
        Ok(SpanAppender {
            journal,
            lag,
            source,
            span,
            next_seq,
        })
    }

    pub fn span(&self) -> ShardSpan {
        self.span
    }

    /// The source's journaled checkpoint, if any.
    pub fn checkpoint(&self) -> Result<Option<Position>, AppendError> {
        Ok(self.journal.source_checkpoint(&self.source)?)
    }

    /// One empty event list per shard of the span (index = shard - first).
    pub fn empty(&self) -> Vec<Vec<Event>> {
        vec![Vec::new(); self.next_seq.len()]
    }

    /// Where `event` goes in a [`Self::empty`] list.
    pub fn index(&self, shard: ShardId) -> usize {
        (shard.0 - self.span.first) as usize
    }

    /// Sorts `events` into per-shard lists by their `shard` field.
    pub fn split(&self, events: Vec<Event>) -> Vec<Vec<Event>> {
        let mut out = self.empty();
        for e in events {
            let i = self.index(e.shard);
            out[i].push(e);
        }
        out
    }

    /// One marker event per shard, at `position`.
    pub fn markers(&self, op: Op, position: &Position) -> Vec<Vec<Event>> {
        let now = now_ms();
        self.span
            .iter()
            .map(|shard| {
                vec![Event {
                    shard,
                    seq: 0,
                    position: position.clone(),
                    key: Vec::new(),
                    op: op.clone(),
                    source_ts_ms: 0,
                    capture_ts_ms: now,
                }]
            })
            .collect()
    }

    /// A whole snapshot in one atomic append: begin markers, `events`, end
    /// markers, and the source checkpoint at `pos` (small sources: a
    /// document, a directory).
    pub async fn append_snapshot(
        &mut self,
        events: Vec<Event>,
        pos: Position,
    ) -> Result<(), AppendError> {
        let total = Some(events.len() as u64);
        let mut per_shard = self.markers(Op::SnapshotBegin { total_keys: total }, &pos);
        for e in events {
            let i = self.index(e.shard);
            per_shard[i].push(e);
        }
        for (i, m) in self.markers(Op::SnapshotEnd, &pos).into_iter().enumerate() {
            per_shard[i].extend(m);
        }
        self.append(per_shard, Some(pos)).await
    }

    /// Sets the phase of every shard of the span.
    pub fn set_phase(&self, phase: Phase) {
        for shard in self.span.iter() {
            self.lag.set_phase(shard, phase.clone());
        }
    }

    /// Appends `per_shard` (as from [`Self::empty`]) and, if given, the
    /// source checkpoint, atomically; resolves once durable.
    pub async fn append(
        &mut self,
        per_shard: Vec<Vec<Event>>,
        checkpoint: Option<Position>,
    ) -> Result<(), AppendError> {
        let mut shards = Vec::new();
        let mut durable = Vec::new();
        let mut oldest_capture = Vec::new();
        for (i, events) in per_shard.into_iter().enumerate() {
            if events.is_empty() {
                continue;
            }
            // Events come in capture order: the first captured is the oldest.
            if let Some(c) = events.iter().map(|e| e.capture_ts_ms).find(|&c| c > 0) {
                oldest_capture.push(c);
            }
            let last = events.last().map(|e| (e.position.clone(), e.capture_ts_ms));
            let first_seq = self.next_seq[i];
            durable.push((i, first_seq, first_seq + events.len() as u64 - 1, last));
            shards.push(ShardAppend {
                shard: ShardId(self.span.first + i as u32),
                first_seq,
                events,
            });
        }
        let checkpoint = checkpoint.map(|position| SourceCheckpoint {
            source: self.source.clone(),
            position,
        });
        if shards.is_empty() && checkpoint.is_none() {
            return Ok(());
        }
        let cp_position = checkpoint.as_ref().map(|c| c.position.clone());
        let outcome = self
            .journal
            .append(AppendBatch { shards, checkpoint })
            .await?;
        if outcome == AppendOutcome::Duplicate {
            return Err(AppendError::Duplicate);
        }
        let now = now_ms();
        for &oldest in &oldest_capture {
            metrics::histogram!(ferry_core::metric_names::PIPELINE_SECONDS, "stage" => "journaled")
                .record(now.saturating_sub(oldest) as f64 / 1000.0);
        }
        for (i, first, last, info) in durable {
            self.next_seq[i] = last + 1;
            if let Some((pos, capture)) = info {
                self.lag.journaled(
                    ShardId(self.span.first + i as u32),
                    first,
                    last,
                    &pos,
                    capture,
                );
            }
        }
        if let Some(p) = cp_position {
            self.lag.journaled_position(&p);
        }
        Ok(())
    }
}
