//! The Kafka sink: one partition per shard, exactly once by the tail.

use crate::context::Quiet;
use crate::envelope::{envelope, Origin};
use crate::{
    tail, HEADER_JOURNAL, HEADER_SEQ, HEADER_SHARD, HEADER_SNAPSHOT, HEADER_SWEEP, MAX_RECORD_BYTES,
};
use ferry_connect::Source;
use ferry_core::{Event, Op, Seq, ShardId, ShardSpan, Value};
use ferry_replay::{Sink, SinkError};
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a tail read may take.
const TAIL_TIMEOUT: Duration = Duration::from_secs(30);

/// The producer settings every record goes out with.
pub fn producer(bootstrap: &str) -> Result<FutureProducer<Quiet>, KafkaError> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("enable.gapless.guarantee", "true")
        .set("message.timeout.ms", "30000")
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .create_with_context(Quiet::default())
}

/// How long a partition's end must stay where it is before its tail is
/// trusted as the checkpoint. A writer killed mid-batch (an earlier agent,
/// or this one's producer after a failed delivery) may have produce
/// requests the broker appends after the tail was read: read then, the
/// sink would publish those events again. So the end is read again after
/// this pause, and the tail read again until the end stays put.
const SETTLE: Duration = Duration::from_secs(1);

/// How long after this sink started (or after one of its deliveries
/// failed) an earlier writer's produce requests may still be appended.
/// Killed, a writer's requests that the broker had received are appended
/// when the broker gets to them: on this machine's broker, under the load
/// of the test suite, later than a 1 s settle after the agent's restart
/// (its events were then in the topic twice). The tail is trusted only once its end
/// has not moved from a read before this time to one after it. A sink on
/// a resumed journal pays this once per start; on a journal's first run
/// there is no earlier writer.
const QUIESCE: Duration = Duration::from_secs(5);

/// The tail of partition `p`, once its end has settled, and not before
/// `quiet` (blocking).
fn settled_tail(
    bootstrap: &str,
    topic: &str,
    p: i32,
    quiet: std::time::Instant,
) -> Result<tail::Tail, String> {
    let deadline = std::time::Instant::now().max(quiet) + TAIL_TIMEOUT;
    loop {
        let t = tail::read(bootstrap, topic, p, TAIL_TIMEOUT)?;
        std::thread::sleep(SETTLE.max(quiet.saturating_duration_since(std::time::Instant::now())));
        let end = tail::end(bootstrap, topic, p, TAIL_TIMEOUT)?;
        if end == t.end {
            return Ok(t);
        }
        if std::time::Instant::now() > deadline {
            return Err(format!(
                "partition {topic}/{p} keeps growing (end {} then {end}): another producer writes to it; give each agent a topic of its own",
                t.end
            ));
        }
    }
}

#[derive(Clone, Copy)]
struct ShardState {
    /// Events up to this sequence are in the partition already.
    published: Seq,
    /// Inside a snapshot (its records are `op: r`).
    snapshot: bool,
    /// The sequence of the current snapshot's begin marker (0: unknown).
    begin: Seq,
    /// The partition held no record when its tail was read, and nothing
    /// was published since but this snapshot: its end needs no sweep.
    fresh: bool,
    /// Where the next record of this sink lands unless another writer's
    /// come first: the end when the tail was read, then one past the last
    /// delivered.
    expect_at: Option<i64>,
}

pub struct KafkaSink {
    pub(crate) name: String,
    pub(crate) bootstrap: String,
    pub(crate) topic: String,
    pub(crate) span: ShardSpan,
    pub(crate) source: Arc<dyn Source>,
    pub(crate) journal_id: String,
    pub(crate) producer: Mutex<FutureProducer<Quiet>>,
    /// Per shard; absent: read the partition's tail before the next write.
    shards: Mutex<HashMap<u32, ShardState>>,
    /// No earlier writer's records arrive after this (see [`QUIESCE`]).
    quiet: Mutex<std::time::Instant>,
}

impl KafkaSink {
    pub fn new(
        name: String,
        bootstrap: String,
        topic: String,
        span: ShardSpan,
        source: Arc<dyn Source>,
        journal_id: String,
        resumed: bool,
    ) -> Result<Self, String> {
        let producer = producer(&bootstrap).map_err(|e| format!("{name}: {e}"))?;
        Ok(KafkaSink {
            name,
            bootstrap,
            topic,
            span,
            source,
            journal_id,
            producer: Mutex::new(producer),
            shards: Mutex::new(HashMap::new()),
            // On a journal's first run no earlier writer of it exists.
            quiet: Mutex::new(
                std::time::Instant::now() + if resumed { QUIESCE } else { Duration::ZERO },
            ),
        })
    }

    fn partition(&self, shard: ShardId) -> i32 {
        i32::try_from(shard.0 - self.span.first).expect("a route has fewer than 2^31 shards")
    }

    /// What the partition of `shard` holds of this journal.
    async fn read_tail(&self, shard: ShardId) -> Result<ShardState, SinkError> {
        let (b, t, p) = (
            self.bootstrap.clone(),
            self.topic.clone(),
            self.partition(shard),
        );
        let quiet = *self.quiet.lock().expect("kafka sink lock poisoned");
        let tail = tokio::task::spawn_blocking(move || settled_tail(&b, &t, p, quiet))
            .await
            .map_err(|e| SinkError::fatal(e.to_string()))?
            .map_err(|e| SinkError::transient(format!("{}: {e}", self.name)))?;
        let ours = tail.journal.as_deref() == Some(self.journal_id.as_str());
        tracing::info!(target = %self.name, %shard, partition = self.partition(shard), end = tail.end, seq = ?tail.seq, ours, "read the partition's tail: the shard's checkpoint");
        if let (true, Some((key, headers))) = (ours, &tail.missing_tombstone) {
            // A crash between a delete and its tombstone: the delete's
            // sequence counts as published, so its tombstone goes out now.
            let mut h = OwnedHeaders::new();
            for (k, v) in headers {
                h = h.insert(Header {
                    key: k,
                    value: Some(v.as_slice()),
                });
            }
            let producer = self
                .producer
                .lock()
                .expect("kafka sink lock poisoned")
                .clone();
            let mut pending = Vec::new();
            let r = self.tombstone(self.partition(shard), key, h);
            self.send(&producer, shard, r, &mut pending).await?;
            for f in pending {
                self.delivered(shard, f.await)?;
            }
            tracing::info!(target = %self.name, %shard, "published the tombstone a crash left out after its delete");
        }
        let state = ShardState {
            published: if ours { tail.seq.unwrap_or(0) } else { 0 },
            snapshot: ours && tail.snapshot,
            begin: if ours {
                tail.snapshot_begin.unwrap_or(0)
            } else {
                0
            },
            fresh: tail.end == 0,
            expect_at: Some(tail.end),
        };
        self.shards
            .lock()
            .expect("kafka sink lock poisoned")
            .insert(shard.0, state);
        Ok(state)
    }

    /// After a failed delivery the partition's state is unknown: read the
    /// tail again before the next write, with a fresh producer (an
    /// idempotent producer that failed may be fenced for good).
    fn forget(&self, shard: ShardId) {
        self.shards
            .lock()
            .expect("kafka sink lock poisoned")
            .remove(&shard.0);
        // The failed producer's requests may still be appended.
        *self.quiet.lock().expect("kafka sink lock poisoned") = std::time::Instant::now() + QUIESCE;
        match producer(&self.bootstrap) {
            Ok(p) => *self.producer.lock().expect("kafka sink lock poisoned") = p,
            Err(e) => {
                tracing::warn!(target = %self.name, error = %e, "could not make a new producer")
            }
        }
    }

    /// `snapshot`: the sequence of the snapshot's begin marker, inside one.
    fn headers(&self, e: &Event, snapshot: Option<Seq>) -> OwnedHeaders {
        let (shard, seq) = (e.shard.0.to_string(), e.seq.to_string());
        let snapshot = snapshot.map_or_else(|| "false".to_string(), |b| b.to_string());
        OwnedHeaders::new()
            .insert(Header {
                key: HEADER_SHARD,
                value: Some(shard.as_bytes()),
            })
            .insert(Header {
                key: HEADER_SEQ,
                value: Some(seq.as_bytes()),
            })
            .insert(Header {
                key: HEADER_JOURNAL,
                value: Some(self.journal_id.as_bytes()),
            })
            .insert(Header {
                key: HEADER_SNAPSHOT,
                value: Some(snapshot.as_bytes()),
            })
    }

    /// The end of a snapshot on `shard`: every key the partition holds live
    /// whose last record came before the snapshot began (`begin`) is gone
    /// from the source (the snapshot did not read it), so it gets a delete
    /// and its tombstone, as a target store's sweep removes it. Those
    /// deletes carry the end marker's sequence and a sweep number; the
    /// partition's tail counts them as before the end marker, so a sweep
    /// cut short is done again, and keys it already deleted are no longer
    /// live.
    async fn sweep(&self, end: &Event, begin: Seq) -> Result<usize, SinkError> {
        let (b, t, p) = (
            self.bootstrap.clone(),
            self.topic.clone(),
            self.partition(end.shard),
        );
        let live = tokio::task::spawn_blocking(move || {
            let mut live: HashMap<Vec<u8>, (bool, Seq)> = HashMap::new();
            tail::scan(&b, &t, p, Duration::from_secs(600), |m| {
                use rdkafka::message::Message;
                if let Some(k) = m.key() {
                    let seq = tail::header(m, HEADER_SEQ)
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0);
                    // A delete is followed by its tombstone: the value
                    // decides.
                    live.insert(k.to_vec(), (m.payload().is_some(), seq));
                }
                Ok(())
            })?;
            Ok::<_, String>(live)
        })
        .await
        .map_err(|e| SinkError::fatal(e.to_string()))?
        .map_err(|e| SinkError::transient(format!("{}: {e}", self.name)))?;
        let mut stale: Vec<Vec<u8>> = live
            .into_iter()
            .filter(|(_, (alive, seq))| *alive && *seq < begin)
            .map(|(k, _)| k)
            .collect();
        stale.sort();
        if stale.is_empty() {
            return Ok(0);
        }
        let producer = self
            .producer
            .lock()
            .expect("kafka sink lock poisoned")
            .clone();
        let partition = self.partition(end.shard);
        let source_name = self.source.url().to_string();
        let origin = Origin {
            kind: self.source.url().kind().name(),
            name: &source_name,
            snapshot: true,
            ts_ms: ferry_lag::now_ms(),
        };
        let mut pending = Vec::new();
        for (n, key) in stale.iter().enumerate() {
            let rendered = ferry_connect::Rendered {
                key: serde_json::from_slice(key).unwrap_or(serde_json::Value::Null),
                after: None,
                created: None,
            };
            let body = serde_json::to_vec(&envelope(end, rendered, true, &origin))
                .expect("JSON serialises");
            let number = n.to_string();
            let headers = self.headers(end, Some(begin)).insert(Header {
                key: HEADER_SWEEP,
                value: Some(number.as_bytes()),
            });
            for r in [
                FutureRecord::to(&self.topic)
                    .partition(partition)
                    .key(key)
                    .payload(&body)
                    .headers(headers.clone()),
                self.tombstone(partition, key, headers),
            ] {
                self.send(&producer, end.shard, r, &mut pending).await?;
            }
        }
        for f in pending {
            self.delivered(end.shard, f.await)?;
        }
        tracing::info!(target = %self.name, shard = %end.shard, deleted = stale.len(), "the snapshot's sweep published deletes for keys the new snapshot no longer has");
        Ok(stale.len())
    }

    /// The tombstone of `key`: no value, so a compacted topic forgets it.
    fn tombstone<'a>(
        &'a self,
        partition: i32,
        key: &'a Vec<u8>,
        headers: OwnedHeaders,
    ) -> FutureRecord<'a, Vec<u8>, Vec<u8>> {
        FutureRecord::to(&self.topic)
            .partition(partition)
            .key(key)
            .headers(headers)
    }

    /// Queues `r`; on a full queue, waits for what is in flight first.
    async fn send<'a>(
        &self,
        producer: &FutureProducer<Quiet>,
        shard: ShardId,
        mut r: FutureRecord<'a, Vec<u8>, Vec<u8>>,
        pending: &mut Vec<rdkafka::producer::DeliveryFuture>,
    ) -> Result<(), SinkError> {
        loop {
            match producer.send_result(r) {
                Ok(f) => {
                    pending.push(f);
                    return Ok(());
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    for f in pending.drain(..) {
                        self.delivered(shard, f.await)?;
                    }
                    r = back;
                }
                Err((err, _)) => return Err(self.failed(shard, &err)),
            }
        }
    }

    async fn publish(&self, shard: ShardId, events: &[Event]) -> Result<Seq, SinkError> {
        let cached = self
            .shards
            .lock()
            .expect("kafka sink lock poisoned")
            .get(&shard.0)
            .copied();
        let state = match cached {
            Some(s) => s,
            None => self.read_tail(shard).await?,
        };
        let producer = self
            .producer
            .lock()
            .expect("kafka sink lock poisoned")
            .clone();
        let partition = self.partition(shard);
        let kind = self.source.url().kind().name();
        let source_name = self.source.url().to_string();
        let ts_ms = ferry_lag::now_ms();
        let mut snapshot = state.snapshot;
        let (mut begin, mut fresh) = (state.begin, state.fresh);
        let mut pending = Vec::new();
        for e in events {
            let (value, meta) = match &e.op {
                Op::SnapshotBegin { .. } => {
                    snapshot = true;
                    begin = e.seq;
                    continue;
                }
                Op::SnapshotEnd => {
                    if e.seq > state.published && snapshot && begin > 0 && !fresh {
                        for f in pending.drain(..) {
                            self.delivered(shard, f.await)?;
                        }
                        self.sweep(e, begin).await?;
                    }
                    snapshot = false;
                    fresh = false;
                    continue;
                }
                Op::Put { value, meta } => (Some(value), meta),
                Op::Delete { meta } => (None, meta),
                _ => continue,
            };
            if e.seq <= state.published {
                continue;
            }
            let plain = match value {
                Some(Value::Plain(b)) => Some(b.as_slice()),
                Some(Value::Sealed { .. }) => {
                    return Err(SinkError::fatal(format!(
                        "{}: shard {} sequence {}: a sealed value reached the sink unopened",
                        self.name, e.shard, e.seq
                    )))
                }
                None => None,
            };
            let deleted = plain.is_none();
            let rendered = self.source.render(&e.key, plain, meta);
            let key = serde_json::to_vec(&rendered.key).expect("JSON serialises");
            let origin = Origin {
                kind,
                name: &source_name,
                snapshot,
                ts_ms,
            };
            let body = serde_json::to_vec(&envelope(e, rendered, deleted, &origin))
                .expect("JSON serialises");
            if key.len() + body.len() > MAX_RECORD_BYTES {
                // What went out before it is in the partition: wait for it.
                for f in pending.drain(..) {
                    self.delivered(shard, f.await)?;
                }
                self.forget(shard);
                return Err(SinkError::permanent(format!(
                    "{}: shard {} sequence {} (key {}) makes a record of {} bytes, more than Kafka's client sends ({MAX_RECORD_BYTES} bytes); shrink the value at the source",
                    self.name,
                    e.shard,
                    e.seq,
                    String::from_utf8_lossy(&key),
                    key.len() + body.len()
                )));
            }
            let headers = self.headers(e, snapshot.then_some(begin));
            let event = FutureRecord::to(&self.topic)
                .partition(partition)
                .key(&key)
                .payload(&body);
            if !snapshot {
                fresh = false;
            }
            let records: Vec<FutureRecord<'_, Vec<u8>, Vec<u8>>> = if deleted {
                // A delete is followed by its tombstone (same key, no value).
                vec![
                    event.headers(headers.clone()),
                    self.tombstone(partition, &key, headers),
                ]
            } else {
                vec![event.headers(headers)]
            };
            for r in records {
                self.send(&producer, shard, r, &mut pending).await?;
            }
        }
        for f in pending {
            self.delivered(shard, f.await)?;
        }
        let last = events.last().map_or(state.published, |e| e.seq);
        let mut shards = self.shards.lock().expect("kafka sink lock poisoned");
        let expect_at = shards.get(&shard.0).and_then(|s| s.expect_at);
        shards.insert(
            shard.0,
            ShardState {
                published: last.max(state.published),
                snapshot,
                begin,
                fresh,
                expect_at,
            },
        );
        Ok(last)
    }

    fn delivered(
        &self,
        shard: ShardId,
        r: Result<
            rdkafka::producer::future_producer::OwnedDeliveryResult,
            futures::channel::oneshot::Canceled,
        >,
    ) -> Result<(), SinkError> {
        match r {
            Ok(Ok(d)) => {
                self.landed(shard, d.offset);
                Ok(())
            }
            Ok(Err((err, _))) => Err(self.failed(shard, &err)),
            Err(_) => Err(self.failed(shard, &KafkaError::Canceled)),
        }
    }

    /// The first record after a tail read lands where the tail ended,
    /// unless another writer's records came in between: a previous
    /// writer's produce requests that the broker appended after the
    /// settle (their events are then in the partition twice).
    fn landed(&self, shard: ShardId, offset: i64) {
        let mut shards = self.shards.lock().expect("kafka sink lock poisoned");
        let Some(st) = shards.get_mut(&shard.0) else {
            return;
        };
        if let Some(at) = st.expect_at {
            if offset > at {
                tracing::warn!(target = %self.name, %shard, partition = self.partition(shard), expected_at = at, landed_at = offset, "{} records reached the partition that this sink did not write: another writer (an earlier agent's produce requests still in the broker) wrote to it", offset - at);
            }
        }
        st.expect_at = Some(offset + 1);
    }

    fn failed(&self, shard: ShardId, err: &KafkaError) -> SinkError {
        self.forget(shard);
        let msg = format!(
            "{}: publishing shard {shard} to partition {} failed: {err}",
            self.name,
            self.partition(shard)
        );
        match err.rdkafka_error_code() {
            Some(RDKafkaErrorCode::MessageSizeTooLarge) => SinkError::permanent(format!(
                "{msg}; the broker refuses records this large: raise its message.max.bytes or shrink the value at the source"
            )),
            _ => SinkError::transient(msg),
        }
    }
}

impl Sink for KafkaSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn startup(&self) -> Result<(), SinkError> {
        crate::connector::ensure_topic(&self.bootstrap, &self.topic, self.span.count)
            .await
            .map_err(SinkError::fatal)
    }

    /// The partition's tail, read once per process (and again after a
    /// failed delivery): later calls answer from what this sink published.
    async fn durable_checkpoint(&self, shard: ShardId) -> Result<Option<Seq>, SinkError> {
        let cached = self
            .shards
            .lock()
            .expect("kafka sink lock poisoned")
            .get(&shard.0)
            .copied();
        let s = match cached {
            Some(s) => s,
            None => self.read_tail(shard).await?,
        };
        Ok((s.published > 0).then_some(s.published))
    }

    async fn apply(&self, shard: ShardId, events: &[Event]) -> Result<Seq, SinkError> {
        self.publish(shard, events).await
    }

    async fn shutdown(&self) {
        let p = self
            .producer
            .lock()
            .expect("kafka sink lock poisoned")
            .clone();
        let _ = tokio::task::spawn_blocking(move || {
            use rdkafka::producer::Producer;
            p.flush(Duration::from_secs(10))
        })
        .await;
    }
}
