//! Ferry's journal in Kafka: `--journal kafka://broker[,broker]/name`.
//!
//! A second implementation of [`ferry_journal::Journal`], for migrations
//! whose agents share one journal (scale-out) or whose journal must outlive
//! a machine. The RocksDB journal stays the embedded default.
//!
//! # Layout
//!
//! One topic, `name`, with a partition per shard plus one: partition 0 is
//! the journal's own log ([`records::Meta`]), partition `1 + s` holds shard
//! `s`. Each event is one record whose value is the journal frame (the same
//! CRC-checked format as the RocksDB journal's) and whose headers carry the
//! writer's epoch and the event's sequence.
//!
//! # Atomic batches without transactions
//!
//! The broker's transactions cannot be relied on (this project's broker
//! delivers aborted ones), so an append is made atomic by a commit record:
//! the events go to their partitions first; once the broker has
//! acknowledged every one, a single commit record in partition 0 names each
//! shard's new last sequence and carries the source checkpoint. Readers see
//! an event only once a valid commit covers it. A crash before the commit
//! leaves records nobody sees; the next writer's epoch markers drop them
//! from the index and its appends reuse their sequences. So the source
//! checkpoint is written with the batch it covers, in one record, and it
//! cannot get ahead of the events: it is produced only after they are
//! acknowledged, and a checkpoint whose events are not all there is never
//! read because the commit that carries it is the one that makes them
//! visible.
//!
//! # One writer at a time: epochs
//!
//! A writer takes over with an epoch above every earlier one (the
//! coordinator's, or the journal's highest plus one). It writes an
//! [`records::Meta::Epoch`] record, then an epoch marker in every shard's
//! partition. From then on readers ignore commits of older epochs and, in
//! each partition, records of older epochs after the marker. A deposed
//! writer that wakes up (a paused process, a partitioned machine) can still
//! send records, but none of them becomes visible, and its own append
//! fails with [`JournalError::Fenced`] because its handle, like every
//! other, only believes what it reads back.
//!
//! # Reads
//!
//! Every handle runs a follower ([`follower`]) that reads the topic from its
//! start and indexes each shard's sequences to offsets; the newest frames
//! are kept in memory for the replay workers that read right behind the
//! tailer, older ones are fetched from the broker. `read` is synchronous,
//! as the trait says; a fetch of old records blocks for a round trip.
//!
//! Truncation is a record in partition 0; the broker's retention reclaims
//! the space (this journal does not delete records, which the broker here
//! may not support).

pub mod follower;
pub mod records;

use ferry_core::{Event, Position, Seq, ShardId};
use ferry_journal::rules::{check_append, check_applied, check_checkpoint, AppendCheck};
use ferry_journal::{
    encode_frame, AppendBatch, AppendOutcome, Journal, JournalError, ReadBudget, ShardBounds,
};
use ferry_kafka::Quiet;
use follower::State;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use records::{Marker, Meta};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How long an operation waits for the broker and the follower before it
/// fails; above the producer's own delivery timeout, so a broker restart
/// within it is ridden out.
const WAIT: Duration = Duration::from_secs(45);

/// `kafka://broker[,broker]/name`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalUrl {
    pub bootstrap: String,
    pub name: String,
}

impl JournalUrl {
    pub fn parse(s: &str) -> Result<JournalUrl, String> {
        let usage = "give it as kafka://host:port[,host:port]/name";
        let rest = s
            .strip_prefix("kafka://")
            .ok_or_else(|| format!("the journal URL {s} is not a kafka:// URL; {usage}"))?;
        let (bootstrap, name) = rest
            .split_once('/')
            .ok_or_else(|| format!("the journal URL {s} names no journal; {usage}"))?;
        let valid = !name.is_empty()
            && name.len() <= 200
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if bootstrap.is_empty() || !valid {
            return Err(format!(
                "the journal URL {s} needs brokers and a name of letters, digits, '.', '_' or '-'; {usage}"
            ));
        }
        Ok(JournalUrl {
            bootstrap: bootstrap.into(),
            name: name.into(),
        })
    }
}

impl std::fmt::Display for JournalUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "kafka://{}/{}", self.bootstrap, self.name)
    }
}

/// How a handle opens the journal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Appends, taking over with this epoch, or with the journal's highest
    /// plus one when `None` (a single agent).
    Writer(Option<u64>),
    /// Opens (creating when missing) without taking over: appends wait for
    /// [`KafkaJournal::take_over`] (an agent before it is elected leader).
    Standby,
    /// Reads, truncates and records applied checkpoints; never appends
    /// (an agent that is not the tailer leader). A missing journal is an
    /// error.
    Reader,
}

struct Inner {
    url: JournalUrl,
    partitions: usize,
    /// This handle's writer epoch; 0 while it may not append.
    epoch: Arc<AtomicU64>,
    producer: FutureProducer<Quiet>,
    state: Arc<Mutex<State>>,
    progress: watch::Sender<u64>,
    stop: Arc<AtomicBool>,
    fetcher: Mutex<Option<BaseConsumer<Quiet>>>,
    appends: tokio::sync::Mutex<()>,
}

/// The journal in a Kafka topic. See the module doc.
pub struct KafkaJournal {
    inner: Inner,
    follower: Option<std::thread::JoinHandle<()>>,
}

fn io(e: impl std::fmt::Display) -> JournalError {
    JournalError::Io(e.to_string())
}

fn consumer(bootstrap: &str) -> Result<BaseConsumer<Quiet>, JournalError> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "ferry-journal")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest")
        // A fetch at a partition's end waits this long for more: short, for
        // the append's read back, but not so short that the fetches of
        // every handle keep a broker on S3 storage from serving new
        // batches (at 10 ms, tansu on moto here stopped serving a
        // partition's newest batches under load).
        .set("fetch.wait.max.ms", "100")
        // Each fetch's high watermark: where a partition ends.
        .set("statistics.interval.ms", "100")
        // Reading again within a second of a broker restart (librdkafka
        // backs off up to 10 s), and soon after a failed fetch.
        .set("reconnect.backoff.max.ms", "1000")
        .set("fetch.error.backoff.ms", "100")
        .create_with_context(Quiet::default())
        .map_err(io)
}

impl KafkaJournal {
    /// Opens (creating when missing) the journal for `shards` shards.
    pub async fn open(url: &JournalUrl, shards: u32, role: Role) -> Result<Self, JournalError> {
        let topic = &url.name;
        let needed = shards as usize + 1;
        match ferry_kafka::connector::partitions(&url.bootstrap, topic)
            .await
            .map_err(io)?
        {
            Some(n) if n < needed => {
                return Err(JournalError::Io(format!(
                    "the journal topic {topic} has {n} partitions, but {shards} shards need {needed} (one per shard and one for the journal's log); give another journal name, or add partitions to it"
                )))
            }
            Some(_) => {}
            None if role == Role::Reader => {
                return Err(JournalError::Missing {
                    dir: url.to_string(),
                })
            }
            None => ferry_kafka::connector::ensure_topic(&url.bootstrap, topic, needed as u32)
                .await
                .map_err(io)?,
        }
        let partitions = ferry_kafka::connector::partitions(&url.bootstrap, topic)
            .await
            .map_err(io)?
            .unwrap_or(needed);
        let state_topic = format!("{topic}.state");
        if role != Role::Reader {
            ferry_kafka::connector::ensure_topic(&url.bootstrap, &state_topic, 1)
                .await
                .map_err(io)?;
        }
        // Start from the last snapshot, when there is one.
        let snapshot = {
            let (b, t) = (url.bootstrap.clone(), state_topic.clone());
            tokio::task::spawn_blocking(move || {
                ferry_kafka::tail::last_payload(&b, &t, 0, Duration::from_secs(30))
            })
            .await
            .map_err(io)?
            .ok()
            .flatten()
            .and_then(|bytes| serde_json::from_slice::<follower::Snapshot>(&bytes).ok())
        };
        let producer: FutureProducer<Quiet> = ClientConfig::new()
            .set("bootstrap.servers", &url.bootstrap)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("enable.gapless.guarantee", "true")
            .set("message.timeout.ms", "30000")
            .set("linger.ms", "1")
            .set("queue.buffering.max.messages", "1000000")
            // Back at the broker within a second of its restart, not
            // librdkafka's 10 s backoff ceiling: every append waits on it.
            .set("reconnect.backoff.max.ms", "1000")
            .create_with_context(Quiet::default())
            .map_err(io)?;
        let state = Arc::new(Mutex::new(match snapshot {
            Some(snap) => State::from_snapshot(snap, partitions),
            None => State::new(partitions),
        }));
        let epoch = Arc::new(AtomicU64::new(0));
        let (progress, _) = watch::channel(0u64);
        let stop = Arc::new(AtomicBool::new(false));
        let follower = {
            let c = consumer(&url.bootstrap)?;
            let (t, st, stop, tx) = (
                topic.clone(),
                Arc::clone(&state),
                Arc::clone(&stop),
                progress.clone(),
            );
            let snapshots = follower::Snapshots {
                producer: producer.clone(),
                topic: state_topic,
                epoch: Arc::clone(&epoch),
            };
            std::thread::Builder::new()
                .name("journal-follower".into())
                .spawn(move || {
                    follower::run(
                        c,
                        &t,
                        partitions,
                        &st,
                        || {
                            tx.send_modify(|n| *n += 1);
                        },
                        &stop,
                        snapshots,
                    )
                })
                .map_err(io)?
        };
        let j = KafkaJournal {
            inner: Inner {
                url: url.clone(),
                partitions,
                epoch,
                producer,
                state,
                progress,
                stop,
                fetcher: Mutex::new(None),
                appends: tokio::sync::Mutex::new(()),
            },
            follower: Some(follower),
        };
        j.wait("reading the journal", State::caught_up).await?;
        if let Role::Writer(epoch) = role {
            let epoch = epoch.unwrap_or_else(|| j.lock().epoch + 1);
            j.take_over(epoch).await?;
        }
        Ok(j)
    }

    /// This handle's writer epoch (0: it may not append).
    pub fn epoch(&self) -> u64 {
        self.inner.epoch.load(Ordering::SeqCst)
    }

    /// The highest epoch the journal holds: the current writer's.
    pub fn current_epoch(&self) -> u64 {
        self.lock().epoch
    }

    pub fn url(&self) -> &JournalUrl {
        &self.inner.url
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .expect("journal state lock poisoned")
    }

    /// Waits until the follower's state meets `cond`.
    async fn wait(&self, what: &str, cond: impl Fn(&State) -> bool) -> Result<(), JournalError> {
        let deadline = Instant::now() + WAIT;
        let mut rx = self.inner.progress.subscribe();
        loop {
            {
                let st = self.lock();
                if let Some(b) = &st.broken {
                    return Err(JournalError::Io(b.clone()));
                }
                if cond(&st) {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                let (behind, next) = {
                    let st = self.lock();
                    (st.behind(), st.next.clone())
                };
                tracing::warn!(?next, what, "the journal's follower did not get there");
                return Err(JournalError::Io(format!(
                    "{what}: the journal's topic at {} did not answer within {} s{}; check that the broker runs",
                    self.inner.url,
                    WAIT.as_secs(),
                    if behind.is_empty() {
                        String::new()
                    } else {
                        format!(" (partitions not read to their end, at offset: {behind:?})")
                    }
                )));
            }
            // The follower ticks at least every 100 ms.
            if rx.changed().await.is_err() {
                return Err(JournalError::Closed);
            }
        }
    }

    async fn produce(
        &self,
        partition: i32,
        payload: &[u8],
        headers: Option<rdkafka::message::OwnedHeaders>,
    ) -> Result<i64, JournalError> {
        let f = self.send(partition, payload, headers)?;
        delivered(f.await)
    }

    /// Queues one record. The queue holds a million records, so a full
    /// one is rare: it waits a moment for deliveries to drain it.
    fn send(
        &self,
        partition: i32,
        payload: &[u8],
        headers: Option<rdkafka::message::OwnedHeaders>,
    ) -> Result<DeliveryFuture, JournalError> {
        let mut r: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&self.inner.url.name)
            .partition(partition)
            .payload(payload);
        if let Some(h) = headers {
            r = r.headers(h);
        }
        let deadline = Instant::now() + WAIT;
        loop {
            match self.inner.producer.send_result(r) {
                Ok(f) => return Ok(f),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                    if Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(2));
                    r = back;
                }
                Err((e, _)) => return Err(io(format!("writing to the journal's topic: {e}"))),
            }
        }
    }

    async fn produce_meta(&self, m: &Meta) -> Result<i64, JournalError> {
        let bytes = serde_json::to_vec(m).map_err(io)?;
        self.produce(0, &bytes, None).await
    }

    /// Becomes the writer with `epoch`: above every earlier one, or the
    /// journal refuses it.
    pub async fn take_over(&self, epoch: u64) -> Result<(), JournalError> {
        let writer: u64 = rand::random();
        let at = self.produce_meta(&Meta::Epoch { epoch, writer }).await?;
        // A negative offset: the broker deduplicated a resend (its report
        // carries no offset); then wait for the epoch itself.
        self.wait("taking over the journal", |st| {
            if at >= 0 {
                st.read_past(0, at)
            } else {
                st.epoch >= epoch
            }
        })
        .await?;
        let voids: Vec<(i32, Seq)> = {
            let st = self.lock();
            if (st.epoch, st.epoch_writer) != (epoch, writer) {
                return Err(JournalError::Fenced {
                    mine: epoch,
                    by: st.epoch,
                });
            }
            (1..self.inner.partitions as i32)
                .map(|p| {
                    let committed = st.shards.get(&(p as u32 - 1)).map_or(0, |s| s.last());
                    (p, committed)
                })
                .collect()
        };
        let e = epoch.to_string();
        let mut landed = Vec::new();
        let mut pending = Vec::new();
        for (p, void_after) in voids {
            let m = serde_json::to_vec(&Marker { epoch, void_after }).map_err(io)?;
            pending.push((p, self.send(p, &m, Some(records::marker_headers(&e)))?));
        }
        for (p, f) in pending {
            landed.push((p, delivered(f.await)?));
        }
        self.wait("fencing the journal's shards", |st| {
            landed.iter().all(|(p, o)| {
                if *o >= 0 {
                    st.read_past(*p, *o)
                } else {
                    st.shards
                        .get(&(*p as u32 - 1))
                        .is_some_and(|s| s.fence >= epoch)
                }
            })
        })
        .await?;
        self.inner.epoch.store(epoch, Ordering::SeqCst);
        Ok(())
    }

    fn check_writer(&self, st: &State) -> Result<u64, JournalError> {
        let mine = self.epoch();
        if mine == 0 {
            return Err(JournalError::Io(
                "this journal handle was opened to read, not to append (the agent is not the tailer leader)".into(),
            ));
        }
        if st.epoch != mine {
            return Err(JournalError::Fenced { mine, by: st.epoch });
        }
        Ok(mine)
    }

    fn shard_partition(&self, shard: ShardId) -> Result<i32, JournalError> {
        let p = shard.0 as usize + 1;
        if p >= self.inner.partitions {
            return Err(JournalError::Io(format!(
                "journal shard {shard} has no partition in the journal's topic {} ({} partitions); give another journal name",
                self.inner.url.name, self.inner.partitions
            )));
        }
        Ok(p as i32)
    }

    /// Reads records of `partition` at `offsets` (ascending) from the broker.
    fn fetch(&self, partition: i32, offsets: &[i64]) -> Result<Vec<Vec<u8>>, JournalError> {
        let mut guard = self.inner.fetcher.lock().expect("fetcher lock poisoned");
        if guard.is_none() {
            *guard = Some(consumer(&self.inner.url.bootstrap)?);
        }
        let c = guard.as_ref().expect("set above");
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.inner.url.name, partition, Offset::Offset(offsets[0]))
            .map_err(io)?;
        c.assign(&tpl).map_err(io)?;
        let deadline = Instant::now() + WAIT;
        let mut out = Vec::with_capacity(offsets.len());
        while out.len() < offsets.len() {
            if Instant::now() > deadline {
                return Err(JournalError::Io(format!(
                    "reading the journal's topic {} partition {partition} timed out; check that the broker runs",
                    self.inner.url.name
                )));
            }
            match c.poll(Duration::from_millis(100)) {
                Some(Ok(m)) if m.offset() == offsets[out.len()] => {
                    out.push(m.payload().unwrap_or_default().to_vec())
                }
                Some(Ok(m)) if m.offset() > offsets[out.len()] => {
                    return Err(JournalError::Io(format!(
                        "the journal's record at offset {} of partition {partition} is gone from the broker (its retention removed it?)",
                        offsets[out.len()]
                    )))
                }
                Some(Ok(_)) | Some(Err(KafkaError::PartitionEOF(_))) | None => {}
                Some(Err(e)) => return Err(io(format!("reading the journal's topic: {e}"))),
            }
        }
        Ok(out)
    }
}

fn delivered(
    r: Result<
        rdkafka::producer::future_producer::OwnedDeliveryResult,
        futures::channel::oneshot::Canceled,
    >,
) -> Result<i64, JournalError> {
    match r {
        Ok(Ok(d)) => Ok(d.offset),
        Ok(Err((e, _))) => Err(io(format!("writing to the journal's topic: {e}"))),
        Err(_) => Err(JournalError::Closed),
    }
}

impl Drop for KafkaJournal {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.follower.take() {
            let _ = t.join();
        }
    }
}

impl Journal for KafkaJournal {
    async fn append(&self, batch: AppendBatch) -> Result<AppendOutcome, JournalError> {
        let asked = Instant::now();
        let _one = self.inner.appends.lock().await;
        let locked = asked.elapsed();
        let epoch = {
            let st = self.lock();
            let epoch = self.check_writer(&st)?;
            let check = check_append(
                batch
                    .shards
                    .iter()
                    .map(|p| (p.shard, p.first_seq, p.events.len() as u64)),
                |s| {
                    st.shards
                        .get(&s.0)
                        .filter(|s| s.ever)
                        .map_or(1, |s| s.last() + 1)
                },
            )?;
            if check == AppendCheck::Duplicate {
                return Ok(AppendOutcome::Duplicate);
            }
            if let Some(cp) = &batch.checkpoint {
                check_checkpoint(st.sources.get(&cp.source), cp)?;
            }
            epoch
        };
        let e = epoch.to_string();
        let mut pending = Vec::new();
        let mut lasts: Vec<(u32, Seq, i32)> = Vec::new();
        let mut events = 0;
        for part in batch.shards {
            if part.events.is_empty() {
                continue;
            }
            let p = self.shard_partition(part.shard)?;
            let n = part.events.len() as u64;
            for (i, mut ev) in part.events.into_iter().enumerate() {
                ev.shard = part.shard;
                ev.seq = part.first_seq + i as u64;
                let frame = encode_frame(&ev);
                let h = records::event_headers(&e, &ev.seq.to_string());
                let last = i as u64 + 1 == n;
                pending.push((lasts.len(), last, self.send(p, &frame, Some(h))?));
            }
            events += n as usize;
            lasts.push((part.shard.0, part.first_seq + n - 1, p));
        }
        // Every event acknowledged before the commit that shows them. Each
        // shard's last event's offset, or a negative one when the broker
        // deduplicated it (a resend after a broker restart: the record is
        // in the partition, but its delivery report carries no offset).
        let mut last_offset = vec![-1i64; lasts.len()];
        for (i, last, f) in pending {
            let o = delivered(f.await)?;
            if last {
                last_offset[i] = o;
            }
        }
        let checkpoint = batch.checkpoint.map(|c| (c.source, c.position));
        let commit = Meta::Commit {
            epoch,
            shards: lasts.iter().map(|(s, l, _)| (*s, *l)).collect(),
            checkpoint: checkpoint.clone(),
        };
        let acked = asked.elapsed();
        let at = self.produce_meta(&commit).await?;
        tracing::debug!(
            ?locked,
            ?acked,
            committed = ?asked.elapsed(),
            commit_at = at,
            ?lasts,
            ?last_offset,
            "awaiting the follower"
        );
        // What the commit makes visible, for a commit whose own offset is
        // unknown (deduplicated too): every shard through its last and the
        // checkpoint.
        let visible = |st: &State| {
            lasts
                .iter()
                .all(|(s, l, _)| st.shards.get(s).is_some_and(|sh| sh.last() >= *l))
                && checkpoint
                    .as_ref()
                    .is_none_or(|(src, pos)| st.sources.get(src).is_some_and(|c| c >= pos))
        };
        // Read back: the commit, and each shard's last event, at its
        // offset when known, else wherever the follower indexed it.
        self.wait("appending to the journal", |st| {
            (if at >= 0 {
                st.read_past(0, at)
            } else {
                visible(st)
            }) && lasts.iter().zip(&last_offset).all(|((s, l, p), o)| {
                if *o >= 0 {
                    st.read_past(*p, *o)
                } else {
                    st.shards.get(s).is_some_and(|sh| sh.offset(*l).is_some())
                }
            })
        })
        .await?;
        let st = self.lock();
        // Ours: the commit valid (our epoch is the journal's), and each
        // shard's last event the record we sent. One whose offset is
        // unknown was indexed under the current epoch, which is ours; one
        // already truncated was applied by every target before this
        // handle looked (other agents' workers read it as soon as the
        // commit showed it).
        let commit_valid = if at >= 0 {
            st.verdict(at) == Some(true)
        } else {
            st.epoch == epoch && visible(&st)
        };
        let ours = commit_valid
            && lasts.iter().zip(&last_offset).all(|((s, l, _), o)| {
                st.shards.get(s).is_some_and(|sh| {
                    sh.last() >= *l && (*o < 0 || sh.offset(*l) == Some(*o) || sh.truncated >= *l)
                })
            });
        if !ours {
            if st.epoch == epoch {
                // Not another writer: say what did not match.
                let found: Vec<_> = lasts
                    .iter()
                    .map(|(s, l, _)| st.shards.get(s).map(|sh| (sh.last(), sh.offset(*l))))
                    .collect();
                tracing::warn!(commit_at = at, verdict = ?st.verdict(at), ?lasts, ?last_offset, ?found, "an append's read back does not match what it sent");
            }
            return Err(JournalError::Fenced {
                mine: epoch,
                by: st.epoch,
            });
        }
        tracing::debug!(events, took = ?asked.elapsed(), "appended");
        Ok(AppendOutcome::Appended { events })
    }

    fn read(
        &self,
        shard: ShardId,
        from: Seq,
        budget: ReadBudget,
    ) -> Result<Vec<Event>, JournalError> {
        let from = from.max(1);
        // Under the lock: the offsets to read and the frames cached.
        let (partition, wanted) = {
            let st = self.lock();
            let Some(sh) = st.shards.get(&shard.0).filter(|s| s.ever) else {
                return Ok(Vec::new());
            };
            if from <= sh.truncated {
                return Err(JournalError::Corrupt {
                    shard,
                    seq: from,
                    reason: format!(
                        "it was truncated (the shard now starts at {})",
                        sh.truncated + 1
                    ),
                });
            }
            let last = sh.last().min(from + budget.max_events.max(1) as u64 - 1);
            let mut wanted = Vec::new();
            for seq in from..=last {
                let offset = sh.offset(seq).ok_or_else(|| JournalError::Corrupt {
                    shard,
                    seq,
                    reason: "the journal's index has no record for it".into(),
                })?;
                wanted.push((seq, offset, sh.cached(seq)));
            }
            (self.shard_partition(shard)?, wanted)
        };
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut i = 0;
        while i < wanted.len() && (out.is_empty() || bytes < budget.max_bytes) {
            // A run of records not in memory is fetched in one go.
            let frames: Vec<Arc<[u8]>> = if let Some(f) = &wanted[i].2 {
                vec![Arc::clone(f)]
            } else {
                let end = wanted[i..]
                    .iter()
                    .position(|w| w.2.is_some())
                    .map_or(wanted.len(), |k| i + k);
                let offsets: Vec<i64> = wanted[i..end].iter().map(|w| w.1).collect();
                self.fetch(partition, &offsets)?
                    .into_iter()
                    .map(Arc::from)
                    .collect()
            };
            for f in frames {
                let seq = wanted[i].0;
                if !out.is_empty() && bytes + f.len() > budget.max_bytes {
                    return Ok(out);
                }
                let ev = ferry_journal::decode_record(&f, shard, seq)?;
                bytes += f.len();
                out.push(ev);
                i += 1;
            }
        }
        Ok(out)
    }

    fn bounds(&self, shard: ShardId) -> Result<Option<ShardBounds>, JournalError> {
        let st = self.lock();
        Ok(st
            .shards
            .get(&shard.0)
            .filter(|s| s.ever)
            .map(|s| ShardBounds {
                first: s.truncated + 1,
                last: s.last(),
            }))
    }

    fn shards(&self) -> Result<Vec<ShardId>, JournalError> {
        let st = self.lock();
        Ok(st
            .shards
            .iter()
            .filter(|(_, s)| s.ever)
            .map(|(k, _)| ShardId(*k))
            .collect())
    }

    async fn truncate(&self, shard: ShardId, through: Seq) -> Result<(), JournalError> {
        let b = self.bounds(shard)?;
        let last = b.map_or(0, |b| b.last);
        if b.is_none() || through > last {
            return Err(JournalError::TruncateBeyondEnd {
                shard,
                through,
                last,
            });
        }
        if through < b.map_or(1, |b| b.first) {
            return Ok(());
        }
        let at = self
            .produce_meta(&Meta::Truncate {
                shard: shard.0,
                through,
            })
            .await?;
        self.wait("truncating the journal", |st| st.read_past(0, at))
            .await
    }

    fn source_checkpoint(&self, source: &str) -> Result<Option<Position>, JournalError> {
        Ok(self.lock().sources.get(source).cloned())
    }

    async fn set_applied(
        &self,
        target: &str,
        shard: ShardId,
        seq: Seq,
    ) -> Result<(), JournalError> {
        let current = self.applied(target, shard)?;
        if !check_applied(current, target, shard, seq)? {
            return Ok(());
        }
        // Durable once the broker acknowledged it (`acks=all`). No read
        // back: an applied checkpoint carries no epoch (any agent's worker
        // writes one) and readers keep each one's highest, so the record
        // means the same to every reader once it is in the topic; this
        // handle takes it at once. Waiting for the follower cost a fetch
        // round trip per applied batch: on tansu's `s3://` storage that
        // was most of a coordinated cutover's drain.
        self.produce_meta(&Meta::Applied {
            target: target.into(),
            shard: shard.0,
            seq,
        })
        .await?;
        self.lock().note_applied(target.to_string(), shard.0, seq);
        Ok(())
    }

    fn applied(&self, target: &str, shard: ShardId) -> Result<Option<Seq>, JournalError> {
        Ok(self
            .lock()
            .applied
            .get(&(target.to_string(), shard.0))
            .copied())
    }
}
