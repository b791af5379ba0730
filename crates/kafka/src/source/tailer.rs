//! The Kafka source's tailer: every partition from the journaled offsets,
//! in batches, each journaled with its checkpoint before its offsets are
//! committed to the group (see the module doc of [`super`]).

use super::decode::{Decoder, Events};
use super::malformed;
use crate::connector::{ends, partitions};
use crate::context::Quiet;
use ferry_core::{Event, Op, Position, ShardId, ShardSpan, StoreUrl};
use ferry_journal::SharedJournal;
use ferry_lag::{now_ms, LagTracker, Phase};
use ferry_replay::{FenceRequest, PollFence, Shutdown, SpanAppender};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long one batch collects records.
const BATCH_WINDOW: Duration = Duration::from_millis(20);
/// The most records in one journal append.
const BATCH_MAX: usize = 2_000;
/// How long a partition may send nothing, past the end a read reported,
/// before the rest of it is taken to be a gap (no records at those offsets).
const GAP_WAIT: Duration = Duration::from_secs(2);

pub struct KafkaTailer {
    pub name: String,
    pub bootstrap: String,
    pub topic: String,
    pub group: String,
    pub events: Events,
    pub span: ShardSpan,
    pub fence: PollFence,
}

/// The journaled position: every partition's next offset.
fn position(next: &[i64]) -> Position {
    let order = next.iter().map(|&o| o.max(0) as u64).sum();
    Position::with_token(order, serde_json::to_vec(next).expect("offsets serialise"))
}

/// The next offsets a journaled position holds.
fn offsets(p: &Position) -> Result<Vec<i64>, String> {
    serde_json::from_slice(&p.token).map_err(|e| {
        format!("the journal's position for this Kafka source is not a list of offsets ({e}); start with a new --journal")
    })
}

/// Where each partition stands against an end being waited for.
struct Goal {
    ends: Vec<i64>,
    since: Instant,
}

impl Goal {
    /// Whether every partition was read to its end. An end-of-partition
    /// notice counts only for catching up (`eof`): at the fence, a notice
    /// from a fetch sent before the end was read could come too early.
    fn reached(
        &self,
        next: &[i64],
        heard: &[Option<Instant>],
        eof: Option<&[Option<Instant>]>,
    ) -> bool {
        (0..self.ends.len()).all(|p| {
            next[p] >= self.ends[p]
                || eof.is_some_and(|eof| eof[p].is_some_and(|t| t > self.since))
                || heard[p].map_or(self.since, |t| t.max(self.since)).elapsed() > GAP_WAIT
        })
    }
}

impl KafkaTailer {
    fn shard_of(&self, p: usize) -> ShardId {
        ShardId(self.span.first + (p as u32 % self.span.count.max(1)))
    }

    /// The span's shards that no stopped partition feeds (a shard that no
    /// partition feeds runs too: it simply receives nothing).
    fn running(&self, stopped: &[bool]) -> Vec<ShardId> {
        self.span
            .iter()
            .filter(|&s| !(0..stopped.len()).any(|p| stopped[p] && self.shard_of(p) == s))
            .collect()
    }

    pub async fn run(
        self,
        journal: Arc<SharedJournal>,
        lag: Arc<LagTracker>,
        mut shutdown: Shutdown,
    ) -> Result<(), String> {
        let url = StoreUrl::parse(&self.name).map_err(|e| e.to_string())?;
        let mut app = SpanAppender::load(&*journal, &lag, self.name.clone(), self.span)
            .map_err(|e| e.to_string())?;
        let n = partitions(&self.bootstrap, &self.topic)
            .await?
            .ok_or_else(|| format!("{}: topic {} no longer exists", self.name, self.topic))?;
        let mut next = match app.checkpoint().map_err(|e| e.to_string())? {
            Some(p) => offsets(&p)?,
            None => Vec::new(),
        };
        next.resize(n.max(next.len()), 0);
        let consumer: StreamConsumer<Quiet> = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("group.id", &self.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "true")
            .set("auto.offset.reset", "earliest")
            .set("statistics.interval.ms", "500")
            .create_with_context(Quiet::default())
            .map_err(|e| format!("{}: {e}", self.name))?;
        let mut tpl = TopicPartitionList::new();
        for (p, &o) in next.iter().enumerate().take(n) {
            tpl.add_partition_offset(&self.topic, p as i32, Offset::Offset(o))
                .map_err(|e| e.to_string())?;
        }
        consumer.assign(&tpl).map_err(|e| e.to_string())?;
        tracing::info!(source = %self.name, partitions = n, resume = ?next, "reading the topic from the journaled offsets");

        // Until every partition reached the end it had at start, the route
        // catches up (shown as a snapshot: copied of about total).
        let start_ends = ends(&self.bootstrap, &self.topic, n).await?;
        let total: i64 = start_ends
            .iter()
            .zip(&next)
            .map(|(e, s)| (e - s).max(0))
            .sum();
        let mut catch_up = Some(Goal {
            ends: start_ends,
            since: Instant::now(),
        });
        let mut copied = 0u64;
        app.set_phase(Phase::Snapshot {
            copied: 0,
            total: total as u64,
        });
        let mut decoder = Decoder::new(self.events);
        let mut heard: Vec<Option<Instant>> = vec![None; n];
        let mut eof: Vec<Option<Instant>> = vec![None; n];
        let mut stopped: Vec<bool> = vec![false; n];
        let mut fence_wait: Option<(Goal, FenceRequest)> = None;
        let mut commit_warned = false;
        let mut last_commit = next.clone();
        let mut order = position(&next).order;

        while !shutdown.is_stopping() {
            let mut batch = app.empty();
            let mut count = 0;
            let window = Instant::now() + BATCH_WINDOW;
            while count < BATCH_MAX {
                let left = window.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                let m = tokio::select! {
                    _ = shutdown.wait() => break,
                    r = tokio::time::timeout(left, consumer.recv()) => match r {
                        Err(_) => break,
                        Ok(m) => m,
                    },
                };
                match m {
                    Ok(m) => {
                        let p = m.partition() as usize;
                        if p >= n || stopped[p] || m.offset() < next[p] {
                            continue;
                        }
                        heard[p] = Some(Instant::now());
                        decoder.set_record_key(m.key());
                        let change = match decoder.decode(m.payload()) {
                            Ok(c) => c,
                            Err(why) => {
                                let error =
                                    malformed(&url, &self.topic, p as i32, m.offset(), &why);
                                tracing::error!(source = %self.name, "{error}");
                                stopped[p] = true;
                                lag.set_phase(self.shard_of(p), Phase::Stopped { error });
                                let mut one = TopicPartitionList::new();
                                let _ = one.add_partition(&self.topic, p as i32);
                                let _ = consumer.pause(&one);
                                continue;
                            }
                        };
                        // The position's order is the sum of every
                        // partition's next offset, kept as it moves.
                        order += (m.offset() + 1 - next[p].max(0)) as u64;
                        next[p] = m.offset() + 1;
                        copied += 1;
                        let shard = self.shard_of(p);
                        let Some((key, op, ts_ms)) = change.into_op() else {
                            continue;
                        };
                        self.fence.saw_change(&key, order);
                        batch[app.index(shard)].push(Event {
                            shard,
                            seq: 0,
                            position: Position::at(order),
                            key,
                            op,
                            source_ts_ms: ts_ms,
                            capture_ts_ms: now_ms(),
                        });
                        count += 1;
                    }
                    Err(KafkaError::PartitionEOF(p)) => {
                        if let Some(slot) = eof.get_mut(p as usize) {
                            *slot = Some(Instant::now());
                        }
                    }
                    Err(e) => {
                        tracing::debug!(source = %self.name, "kafka: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
            // Events move the offsets on, and so do tombstones alone.
            if next != last_commit {
                app.append(batch, Some(position(&next)))
                    .await
                    .map_err(|e| e.to_string())?;
                self.commit(&consumer, &next, &mut commit_warned);
                last_commit.clone_from(&next);
            }
            let head: i64 = (0..n)
                .map(|p| {
                    consumer
                        .context()
                        .high_watermark(&self.topic, p as i32)
                        .unwrap_or(0)
                        .max(next[p])
                })
                .sum();
            lag.source_head(&Position::at(head as u64));
            if let Some(goal) = &catch_up {
                if goal.reached(&next, &heard, Some(&eof)) {
                    catch_up = None;
                    for shard in self.running(&stopped) {
                        lag.set_phase(shard, Phase::Streaming);
                    }
                    tracing::info!(source = %self.name, records = copied, "caught up with the topic; streaming");
                } else {
                    for shard in self.running(&stopped) {
                        lag.set_phase(
                            shard,
                            Phase::Snapshot {
                                copied,
                                total: total as u64,
                            },
                        );
                    }
                }
            }
            if fence_wait.is_none() {
                if let Some(req) = self.fence.take_request() {
                    match ends(&self.bootstrap, &self.topic, n).await {
                        Ok(ends) => {
                            tracing::info!(source = %self.name, ?ends, "fencing at the end of every partition");
                            fence_wait = Some((
                                Goal {
                                    ends,
                                    since: Instant::now(),
                                },
                                req,
                            ));
                        }
                        Err(e) => req.fail(format!("{}: {e}", self.name)),
                    }
                }
            }
            if let Some((goal, _)) = &fence_wait {
                if let Some(p) = (0..n).find(|&p| stopped[p]) {
                    let (_, req) = fence_wait.take().expect("checked");
                    req.fail(format!("{}: partition {p} stopped on a record that is not a change event (see `ferry status`); the cutover cannot fence a stopped shard", self.name));
                } else if goal.reached(&next, &heard, None) {
                    let (_, req) = fence_wait.take().expect("checked");
                    let pos = position(&next);
                    match app
                        .append(app.markers(Op::Fence, &pos), Some(pos.clone()))
                        .await
                    {
                        Ok(()) => req.done(pos.order),
                        Err(e) => {
                            req.fail(e.to_string());
                            return Err(e.to_string());
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Commits `next` to the group, asynchronously: it only tells operators
    /// and Kafka's tools how far Ferry read; the journal is what resumes.
    fn commit(&self, consumer: &StreamConsumer<Quiet>, next: &[i64], warned: &mut bool) {
        let mut tpl = TopicPartitionList::new();
        for (p, &o) in next.iter().enumerate() {
            if o > 0 {
                let _ = tpl.add_partition_offset(&self.topic, p as i32, Offset::Offset(o));
            }
        }
        if tpl.count() == 0 {
            return;
        }
        if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
            if !*warned {
                *warned = true;
                tracing::warn!(source = %self.name, group = %self.group, "committing offsets to the group failed ({e}); the journal still holds the position, so nothing is lost");
            }
        }
    }
}
