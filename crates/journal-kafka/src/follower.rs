//! The follower: one consumer per journal handle that reads the whole
//! topic in order and keeps what the journal answers from (the index of
//! each shard's sequences to offsets, the visible ends, checkpoints),
//! whoever wrote it. It is the only thing that changes [`State`], so a
//! handle that appends sees its own writes exactly as another agent does:
//! an append returns once the follower has read its records and accepted
//! them.

use crate::records::{self, Marker, Meta, Record};
use ferry_core::{Position, Seq};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Frames kept in memory per shard for reads near the end (replay reads
/// what was just appended); older reads fetch from the broker.
const CACHE_PER_SHARD: usize = 4 << 20;
/// Commit verdicts kept for appenders to look up.
const VERDICTS: usize = 4096;

#[derive(Default)]
pub struct ShardState {
    /// Appended to at least once (a commit named it).
    pub ever: bool,
    /// Highest sequence a valid commit made visible.
    pub committed: Seq,
    /// Events through this are truncated.
    pub truncated: Seq,
    /// The epoch of the last marker in the shard's partition.
    pub fence: u64,
    /// The sequence of `offsets[0]`.
    base: Seq,
    /// Offsets of the indexed events `base..`.
    offsets: VecDeque<i64>,
    /// Frames of the newest indexed events: `(seq, frame)`, contiguous.
    cache: VecDeque<(Seq, Arc<[u8]>)>,
    cache_bytes: usize,
    /// Each epoch marker read: (offset, epoch), for snapshots.
    markers: Vec<(i64, u64)>,
}

impl ShardState {
    fn indexed_last(&self) -> Seq {
        (self.base + self.offsets.len() as u64).saturating_sub(1)
    }

    /// The last visible sequence: committed and read by the follower.
    pub fn last(&self) -> Seq {
        self.committed.min(self.indexed_last()).max(self.truncated)
    }

    pub fn offset(&self, seq: Seq) -> Option<i64> {
        let i = seq.checked_sub(self.base)?;
        self.offsets.get(i as usize).copied()
    }

    pub fn cached(&self, seq: Seq) -> Option<Arc<[u8]>> {
        let (first, _) = self.cache.front()?;
        let i = seq.checked_sub(*first)?;
        self.cache.get(i as usize).map(|(_, f)| Arc::clone(f))
    }

    fn index(&mut self, epoch: u64, seq: Seq, offset: i64, frame: &[u8]) {
        if epoch < self.fence || seq != self.indexed_last() + 1 {
            // A deposed writer's record, or one already indexed (a
            // producer's retry the broker kept twice).
            return;
        }
        if self.offsets.is_empty() && seq <= self.truncated {
            self.base = seq + 1;
            return;
        }
        if self.offsets.is_empty() {
            self.base = seq;
        }
        self.offsets.push_back(offset);
        if self.cache.back().is_some_and(|(s, _)| *s + 1 != seq) {
            self.cache.clear();
            self.cache_bytes = 0;
        }
        self.cache_bytes += frame.len();
        self.cache.push_back((seq, Arc::from(frame)));
        while self.cache_bytes > CACHE_PER_SHARD && self.cache.len() > 1 {
            let (_, f) = self.cache.pop_front().expect("non-empty");
            self.cache_bytes -= f.len();
        }
    }

    fn mark(&mut self, offset: i64, m: Marker) {
        if m.epoch < self.fence {
            return;
        }
        self.fence = m.epoch;
        self.markers.push((offset, m.epoch));
        let last = self.indexed_last();
        if last > m.void_after {
            let drop = (last - m.void_after) as usize;
            self.offsets
                .truncate(self.offsets.len().saturating_sub(drop));
            while self.cache.back().is_some_and(|(s, _)| *s > m.void_after) {
                let (_, f) = self.cache.pop_back().expect("non-empty");
                self.cache_bytes -= f.len();
            }
        }
    }

    fn truncate(&mut self, through: Seq) {
        self.truncated = self.truncated.max(through);
        while self.base <= self.truncated && !self.offsets.is_empty() {
            self.offsets.pop_front();
            self.base += 1;
        }
        while self
            .cache
            .front()
            .is_some_and(|(s, _)| *s <= self.truncated)
        {
            let (_, f) = self.cache.pop_front().expect("non-empty");
            self.cache_bytes -= f.len();
        }
    }
}

/// The follower's state at a point of the topic, so that a new handle
/// starts there instead of at offset 0 (on durable storage the broker
/// reads every stored batch back one by one: a long journal took minutes).
/// The writer puts one in the journal's `.state` topic every few seconds;
/// a handle opens from the last one.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Snapshot {
    /// The next offset of partition 0 the snapshot does not cover.
    pub meta_next: i64,
    pub epoch: u64,
    pub epoch_writer: u64,
    pub sources: Vec<(String, Position)>,
    pub applied: Vec<(String, u32, Seq)>,
    pub shards: Vec<ShardSnapshot>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ShardSnapshot {
    pub shard: u32,
    pub ever: bool,
    pub committed: Seq,
    pub truncated: Seq,
    /// Where reading the shard's partition resumes, the sequence the next
    /// valid record there has, and the epoch fence in force at that offset.
    pub offset: i64,
    pub base: Seq,
    pub fence: u64,
}

#[derive(Default)]
pub struct State {
    pub shards: BTreeMap<u32, ShardState>,
    pub sources: HashMap<String, Position>,
    pub applied: HashMap<(String, u32), Seq>,
    /// The highest writer epoch and the writer that took it.
    pub epoch: u64,
    pub epoch_writer: u64,
    /// Per partition: the next offset to read, and whether its end was
    /// reached at least once.
    pub next: Vec<i64>,
    pub eof: Vec<bool>,
    /// Whether the commit record at an offset was accepted.
    verdicts: VecDeque<(i64, bool)>,
    /// Why the journal cannot go on (a record it cannot read).
    pub broken: Option<String>,
}

impl State {
    pub fn new(partitions: usize) -> State {
        State {
            next: vec![0; partitions],
            eof: vec![false; partitions],
            ..State::default()
        }
    }

    /// The state as a [`Snapshot`].
    pub fn snapshot(&self) -> Snapshot {
        let shards = self
            .shards
            .iter()
            .map(|(s, sh)| {
                let indexed_last = sh.indexed_last();
                let next = self.next.get(*s as usize + 1).copied().unwrap_or(0);
                let (base, offset) = match sh.offset(sh.truncated + 1) {
                    Some(o) if sh.truncated < indexed_last => (sh.truncated + 1, o),
                    _ => (indexed_last + 1, next),
                };
                let fence = sh
                    .markers
                    .iter()
                    .take_while(|(o, _)| *o < offset)
                    .map(|(_, e)| *e)
                    .max()
                    .unwrap_or(0);
                ShardSnapshot {
                    shard: *s,
                    ever: sh.ever,
                    committed: sh.committed,
                    truncated: sh.truncated,
                    offset,
                    base,
                    fence,
                }
            })
            .collect();
        Snapshot {
            meta_next: self.next.first().copied().unwrap_or(0),
            epoch: self.epoch,
            epoch_writer: self.epoch_writer,
            sources: self
                .sources
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            applied: self
                .applied
                .iter()
                .map(|((t, s), q)| (t.clone(), *s, *q))
                .collect(),
            shards,
        }
    }

    /// The state a snapshot describes; reading resumes at `next`.
    pub fn from_snapshot(snap: Snapshot, partitions: usize) -> State {
        let mut st = State::new(partitions);
        st.next[0] = snap.meta_next;
        st.epoch = snap.epoch;
        st.epoch_writer = snap.epoch_writer;
        st.sources = snap.sources.into_iter().collect();
        st.applied = snap
            .applied
            .into_iter()
            .map(|(t, s, q)| ((t, s), q))
            .collect();
        for sh in snap.shards {
            if let Some(n) = st.next.get_mut(sh.shard as usize + 1) {
                *n = sh.offset;
            }
            st.shards.insert(
                sh.shard,
                ShardState {
                    ever: sh.ever,
                    committed: sh.committed,
                    truncated: sh.truncated,
                    fence: sh.fence,
                    base: sh.base,
                    ..ShardState::default()
                },
            );
        }
        st
    }

    /// An applied checkpoint: each (target, shard) keeps its highest.
    pub fn note_applied(&mut self, target: String, shard: u32, seq: Seq) {
        let cur = self.applied.entry((target, shard)).or_default();
        *cur = (*cur).max(seq);
    }

    pub fn caught_up(&self) -> bool {
        self.eof.iter().all(|e| *e)
    }

    /// The partitions not yet read to their end, with the offset reached.
    pub fn behind(&self) -> Vec<(usize, i64)> {
        self.eof
            .iter()
            .enumerate()
            .filter(|(_, e)| !**e)
            .map(|(p, _)| (p, self.next[p]))
            .collect()
    }

    pub fn read_past(&self, partition: i32, offset: i64) -> bool {
        self.next
            .get(partition as usize)
            .is_some_and(|n| *n > offset)
    }

    pub fn verdict(&self, offset: i64) -> Option<bool> {
        self.verdicts
            .iter()
            .rev()
            .find(|(o, _)| *o == offset)
            .map(|(_, v)| *v)
    }

    fn apply(&mut self, partition: i32, offset: i64, record: Record<'_>) {
        match record {
            Record::Meta(m) => self.apply_meta(offset, m),
            Record::Marker(m) => self.shard(partition).mark(offset, m),
            Record::Event { epoch, seq, frame } => {
                self.shard(partition).index(epoch, seq, offset, frame)
            }
            Record::Foreign(what) => {
                self.broken.get_or_insert_with(|| {
                    format!("partition {partition} offset {offset} of the journal's topic holds {what}; the topic is not (only) a Ferry journal")
                });
            }
        }
    }

    fn shard(&mut self, partition: i32) -> &mut ShardState {
        self.shards.entry(partition as u32 - 1).or_default()
    }

    fn apply_meta(&mut self, offset: i64, m: Meta) {
        match m {
            Meta::Epoch { epoch, writer } => {
                if epoch > self.epoch {
                    self.epoch = epoch;
                    self.epoch_writer = writer;
                }
            }
            Meta::Commit {
                epoch,
                shards,
                checkpoint,
            } => {
                let valid = epoch == self.epoch;
                if valid {
                    for (s, last) in shards {
                        let sh = self.shards.entry(s).or_default();
                        sh.ever = true;
                        sh.committed = sh.committed.max(last);
                    }
                    if let Some((source, pos)) = checkpoint {
                        let cur = self.sources.entry(source).or_default();
                        if pos > *cur {
                            *cur = pos;
                        }
                    }
                }
                if self.verdicts.len() == VERDICTS {
                    self.verdicts.pop_front();
                }
                self.verdicts.push_back((offset, valid));
            }
            Meta::Applied { target, shard, seq } => self.note_applied(target, shard, seq),
            Meta::Truncate { shard, through } => {
                self.shards.entry(shard).or_default().truncate(through);
            }
        }
    }
}

/// Where the follower writes snapshots: the producer, the `.state` topic,
/// and this handle's writer epoch (only a writer writes them).
pub struct Snapshots {
    pub producer: rdkafka::producer::FutureProducer<ferry_kafka::Quiet>,
    pub topic: String,
    pub epoch: Arc<std::sync::atomic::AtomicU64>,
}

/// How often a writer's follower puts a snapshot in the `.state` topic.
const SNAPSHOT_EVERY: Duration = Duration::from_secs(2);

/// Reads `topic` into `state` from the offsets `state.next` holds until
/// `stop`; `tick` is called after every record and every idle poll, so
/// waiters wake up.
pub fn run(
    consumer: BaseConsumer<ferry_kafka::Quiet>,
    topic: &str,
    partitions: usize,
    state: &Mutex<State>,
    tick: impl Fn(),
    stop: &AtomicBool,
    snapshots: Snapshots,
) {
    let mut tpl = TopicPartitionList::new();
    {
        let st = state.lock().expect("journal state");
        for p in 0..partitions as i32 {
            // An explicit offset (0 when new), not Beginning: this broker's
            // ListOffsets answers wrong.
            let at = st.next.get(p as usize).copied().unwrap_or(0);
            tpl.add_partition_offset(topic, p, Offset::Offset(at))
                .expect("a valid partition");
        }
    }
    if let Err(e) = consumer.assign(&tpl) {
        state.lock().expect("journal state").broken = Some(format!(
            "cannot read the journal's topic {topic}: {e}; check the broker"
        ));
        tick();
        return;
    }
    let mut last_snapshot = (std::time::Instant::now(), -1i64);
    while !stop.load(Ordering::Relaxed) {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let record = records::parse(&m);
                let mut st = state.lock().expect("journal state");
                st.apply(m.partition(), m.offset(), record);
                if let Some(n) = st.next.get_mut(m.partition() as usize) {
                    *n = m.offset() + 1;
                }
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                let mut st = state.lock().expect("journal state");
                if let Some(e) = st.eof.get_mut(p as usize) {
                    *e = true;
                }
            }
            Some(Err(e)) => tracing::debug!(error = %e, topic, "journal follower"),
            None => {
                // The end of a partition is also known from the fetch's
                // high watermark (an end-of-partition event may not come).
                let mut st = state.lock().expect("journal state");
                for p in 0..partitions {
                    let high = consumer.context().high_watermark(topic, p as i32);
                    if high.is_some_and(|h| h <= st.next[p]) {
                        st.eof[p] = true;
                    }
                }
            }
        }
        tick();
        if last_snapshot.0.elapsed() >= SNAPSHOT_EVERY
            && snapshots.epoch.load(Ordering::Relaxed) > 0
        {
            let snap = {
                let st = state.lock().expect("journal state");
                (st.caught_up() && st.next[0] != last_snapshot.1).then(|| st.snapshot())
            };
            last_snapshot.0 = std::time::Instant::now();
            if let Some(snap) = snap {
                last_snapshot.1 = snap.meta_next;
                let bytes = serde_json::to_vec(&snap).expect("a snapshot serialises");
                let r: rdkafka::producer::FutureRecord<'_, [u8], [u8]> =
                    rdkafka::producer::FutureRecord::to(&snapshots.topic)
                        .partition(0)
                        .payload(&bytes);
                // Fire and forget: a lost snapshot only means the next
                // handle reads a little more.
                if let Err((e, _)) = snapshots.producer.send_result(r) {
                    tracing::debug!(error = %e, "journal snapshot not sent");
                }
            }
        }
    }
}
