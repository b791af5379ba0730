//! The Kafka sink: one partition per shard, exactly once by the tail.

use crate::context::Quiet;
use crate::envelope::{envelope, Origin};
use crate::{tail, HEADER_JOURNAL, HEADER_SEQ, HEADER_SHARD, HEADER_SNAPSHOT, MAX_RECORD_BYTES};
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

#[derive(Clone, Copy)]
struct ShardState {
    /// Events up to this sequence are in the partition already.
    published: Seq,
    /// Inside a snapshot (its records are `op: r`).
    snapshot: bool,
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
}

impl KafkaSink {
    pub fn new(
        name: String,
        bootstrap: String,
        topic: String,
        span: ShardSpan,
        source: Arc<dyn Source>,
        journal_id: String,
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
        let tail = tokio::task::spawn_blocking(move || tail::read(&b, &t, p, TAIL_TIMEOUT))
            .await
            .map_err(|e| SinkError::fatal(e.to_string()))?
            .map_err(|e| SinkError::transient(format!("{}: {e}", self.name)))?;
        let ours = tail.journal.as_deref() == Some(self.journal_id.as_str());
        let state = ShardState {
            published: if ours { tail.seq.unwrap_or(0) } else { 0 },
            snapshot: ours && tail.snapshot,
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
        match producer(&self.bootstrap) {
            Ok(p) => *self.producer.lock().expect("kafka sink lock poisoned") = p,
            Err(e) => {
                tracing::warn!(target = %self.name, error = %e, "could not make a new producer")
            }
        }
    }

    fn headers(&self, e: &Event, snapshot: bool) -> OwnedHeaders {
        let (shard, seq) = (e.shard.0.to_string(), e.seq.to_string());
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
                value: Some(if snapshot { "true" } else { "false" }.as_bytes()),
            })
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
        let mut pending = Vec::new();
        for e in events {
            let (value, meta) = match &e.op {
                Op::SnapshotBegin { .. } => {
                    snapshot = true;
                    continue;
                }
                Op::SnapshotEnd => {
                    snapshot = false;
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
            let headers = self.headers(e, snapshot);
            let event = FutureRecord::to(&self.topic)
                .partition(partition)
                .key(&key)
                .payload(&body);
            let records: Vec<FutureRecord<'_, Vec<u8>, Vec<u8>>> = if deleted {
                // A delete is followed by its tombstone (same key, no value).
                vec![
                    event.headers(headers.clone()),
                    FutureRecord::to(&self.topic)
                        .partition(partition)
                        .key(&key)
                        .headers(headers),
                ]
            } else {
                vec![event.headers(headers)]
            };
            for mut r in records {
                loop {
                    match producer.send_result(r) {
                        Ok(f) => {
                            pending.push(f);
                            break;
                        }
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                            // Full queue: wait for what is in flight, then retry.
                            for f in pending.drain(..) {
                                self.delivered(shard, f.await)?;
                            }
                            r = back;
                        }
                        Err((err, _)) => return Err(self.failed(shard, &err)),
                    }
                }
            }
        }
        for f in pending {
            self.delivered(shard, f.await)?;
        }
        let last = events.last().map_or(state.published, |e| e.seq);
        self.shards
            .lock()
            .expect("kafka sink lock poisoned")
            .insert(
                shard.0,
                ShardState {
                    published: last.max(state.published),
                    snapshot,
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
            Ok(Ok(_)) => Ok(()),
            Ok(Err((err, _))) => Err(self.failed(shard, &err)),
            Err(_) => Err(self.failed(shard, &KafkaError::Canceled)),
        }
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

    async fn durable_checkpoint(&self, shard: ShardId) -> Result<Option<Seq>, SinkError> {
        let s = self.read_tail(shard).await?;
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
