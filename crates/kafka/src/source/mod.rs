//! Kafka as a Ferry source: `kafka://broker[,broker]/topic?group=NAME`.
//!
//! The remote half of a sync across a boundary: one agent publishes an
//! etcd prefix to a topic, another reads the topic into a target far away.
//! Records are Ferry's envelope, or Debezium's MongoDB connector's
//! ([`decode`]); `?events=` chooses etcd key-value events (the default,
//! into any key-value target) or MongoDB documents (into MongoDB).
//!
//! # Positions, and why a restart never loses or repeats a change
//!
//! Partition `p` feeds shard `first + p % shards`: each upstream shard
//! kept its order in one partition, so every key's changes stay in order.
//! The source position journaled with each batch is the next offset of
//! every partition (the token, as JSON) and their sum (the order, which
//! only grows). Events and that checkpoint are one atomic journal append,
//! so the checkpoint never gets ahead of the events it covers. A restart
//! resumes from the journal's checkpoint, not from the group; offsets are
//! committed to the group only after the batch is durable, so the group
//! shows operators (and Kafka's lag tools) how far Ferry read, never
//! further than the journal holds.
//!
//! # Fence
//!
//! Ferry cannot make a topic read-only: its writer is the upstream agent
//! (or whatever publishes to it). The operator stops that writer (the
//! upstream agent's own cutover does) and passes
//! `--source.read-only=external`; the fence then reads the end of every
//! partition (the high watermark of a fetch) and journals the fence
//! marker once the tailer has consumed every partition to that end. A
//! partition whose last offsets hold no record (a deduplicated batch's) is
//! taken as read once nothing more arrives from it for two seconds; a
//! record that arrives after the fence anyway is journaled and reported as
//! a write after the fence, and the cutover does not open the target.
//!
//! # A record that is not a change event
//!
//! It stops its shard, not the agent: the records before it are journaled,
//! its partition is paused, the shard's phase says which partition and
//! offset and why (in `ferry status`), and nothing of it reaches a target.
//! The other partitions go on. The pre-check reads the first record of
//! every partition and refuses a topic that does not hold Ferry's events.

pub mod decode;
mod reader;
mod tailer;

use crate::connector::{ends, partitions, TAIL_TIMEOUT};
use crate::tail;
use decode::{Decoder, Events, ALL_EVENTS};
use ferry_connect::{
    async_trait, CheckContext, DataModel, Reader, Refusal, Source, TailContext, Tailing,
};
use ferry_core::StoreUrl;
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A topic, as a source.
pub struct KafkaSource {
    url: StoreUrl,
    bootstrap: String,
    topic: String,
    group: String,
    events: Events,
}

impl KafkaSource {
    pub fn new(url: &StoreUrl, bootstrap: String, topic: String) -> Result<Self, String> {
        let group = match url {
            StoreUrl::Kafka { params, .. } => params.get("group").cloned(),
            _ => None,
        }
        .filter(|g| !g.is_empty())
        .ok_or_else(|| {
            format!("{url}: a Kafka source needs a consumer group to commit its offsets to: add ?group=NAME, e.g. kafka://127.0.0.1:9092/{topic}?group=ferry")
        })?;
        let events = match url {
            StoreUrl::Kafka { params, .. } => {
                Events::from_param(params.get("events").map(String::as_str))
            }
            _ => Ok(Events::Etcd),
        }
        .map_err(|e| format!("{url}: {e}"))?;
        Ok(KafkaSource {
            url: url.clone(),
            bootstrap,
            topic,
            group,
            events,
        })
    }

    async fn partition_count(&self) -> Result<usize, String> {
        partitions(&self.bootstrap, &self.topic)
            .await?
            .ok_or_else(|| {
                format!(
                    "{}: topic {} does not exist; give the topic the upstream agent publishes to",
                    self.url, self.topic
                )
            })
    }
}

/// The first record of `topic`'s partition `p`, if it has one
/// (blocking): (offset, record key, value).
type First = Option<(i64, Option<Vec<u8>>, Option<Vec<u8>>)>;

fn first_record(bootstrap: &str, topic: &str, p: i32, end: i64) -> Result<First, String> {
    if end <= 0 {
        return Ok(None);
    }
    let c = tail::consumer(bootstrap).map_err(|e| e.to_string())?;
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning)
        .map_err(|e| e.to_string())?;
    c.assign(&tpl).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + TAIL_TIMEOUT;
    while Instant::now() < deadline {
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                return Ok(Some((
                    m.offset(),
                    m.key().map(<[u8]>::to_vec),
                    m.payload().map(<[u8]>::to_vec),
                )))
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => return Ok(None),
            Some(Err(e)) => return Err(format!("reading {topic}/{p}: {e}")),
            None => {}
        }
    }
    Err(format!(
        "timed out reading the first record of {topic}/{p}; check that the broker answers fetches"
    ))
}

#[async_trait]
impl Source for KafkaSource {
    fn url(&self) -> &StoreUrl {
        &self.url
    }
    fn model(&self) -> DataModel {
        self.events.model()
    }
    /// Secrets and configuration files stay secrets on their way through.
    fn holds_secrets(&self) -> bool {
        matches!(self.events, Events::Vault | Events::File | Events::Dir)
    }
    fn model_hint(&self, wanted: &[DataModel]) -> Option<String> {
        ALL_EVENTS
            .into_iter()
            .filter(|e| *e != self.events && wanted.contains(&e.model()))
            .map(|e| format!("`&{}` for {}", e.param(), e.describe()))
            .reduce(|a, b| format!("{a}, {b}"))
            .map(|options| {
                format!("to read a topic of other events, add {options} to the source URL")
            })
    }
    async fn connect(&self) -> Result<(), String> {
        self.partition_count().await.map(drop)
    }
    async fn precheck(&self, ctx: &CheckContext) -> Result<(), Refusal> {
        if !ctx.external_read_only {
            return Err(Refusal::usage(format!(
                "{}: Ferry cannot make a topic read-only, its writer is the upstream agent: stop that writer at cutover (the upstream agent's `ferry stop` does) and pass --source.read-only=external",
                self.url
            )));
        }
        let n = self.partition_count().await.map_err(Refusal::refused)?;
        let ends = ends(&self.bootstrap, &self.topic, n)
            .await
            .map_err(Refusal::refused)?;
        let mut decoder = Decoder::new(self.events);
        for (p, end) in ends.iter().enumerate() {
            let (b, t, end) = (self.bootstrap.clone(), self.topic.clone(), *end);
            let first = tokio::task::spawn_blocking(move || first_record(&b, &t, p as i32, end))
                .await
                .map_err(|e| Refusal::runtime(e.to_string()))?
                .map_err(Refusal::refused)?;
            if let Some((offset, key, value)) = first {
                decoder.set_record_key(key.as_deref());
                if let Err(why) = decoder.decode(value.as_deref()) {
                    return Err(Refusal::refused(malformed(
                        &self.url,
                        &self.topic,
                        p as i32,
                        offset,
                        &why,
                    )));
                }
            }
        }
        ferry_connect::check::line(
            "source",
            format!(
                "{}: reachable; topic {} has {n} partitions and {} records of {}; group {} (offsets committed after each durable journal batch; a restart resumes from the journal); fence: every partition read to its end once its writer stopped (--source.read-only=external)",
                self.url,
                self.topic,
                ends.iter().sum::<i64>(),
                self.events.describe(),
                self.group
            ),
        );
        Ok(())
    }
    fn tail(&self, ctx: &TailContext) -> Result<Tailing, String> {
        let fence = ferry_replay::PollFence::new();
        let t = tailer::KafkaTailer {
            name: self.url.to_string(),
            bootstrap: self.bootstrap.clone(),
            topic: self.topic.clone(),
            group: self.group.clone(),
            events: self.events,
            span: ctx.span,
            fence: fence.clone(),
        };
        Ok(Tailing {
            tailer: ferry_connect::tailer(move |j, l, s| t.run(j, l, s)),
            fence: Arc::new(fence),
            shared: Arc::new(()),
        })
    }
    /// The reader replays the topic: not once a pass in the background.
    fn background_compare(&self) -> bool {
        false
    }

    fn reader(&self) -> Result<Reader, String> {
        let topic = reader::Topic {
            name: self.url.to_string(),
            bootstrap: self.bootstrap.clone(),
            topic: self.topic.clone(),
            events: self.events,
        };
        Ok(match self.events {
            Events::Etcd => Reader::KeyValue(Arc::new(reader::TopicKv {
                topic,
                ttls: Default::default(),
            })),
            Events::Mongodb => Reader::Documents(Arc::new(reader::TopicDocs {
                topic,
                fold: Default::default(),
            })),
            Events::Vault => Reader::Secrets(Arc::new(reader::TopicSecrets {
                topic,
                fold: Default::default(),
            })),
            Events::File => Reader::Document(Arc::new(reader::TopicDocument { topic })),
            Events::Dir => Reader::Files(Arc::new(reader::TopicFiles {
                topic,
                fold: Default::default(),
            })),
        })
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// The sentence for a record that is not a change event.
pub(crate) fn malformed(url: &StoreUrl, topic: &str, p: i32, offset: i64, why: &str) -> String {
    format!("{url}: the record at {topic}/{p} offset {offset} is not one of Ferry's change events ({why}); its shard stops before it and nothing of it is written: remove the producer that writes other records to this topic, or read a topic only Ferry publishes to")
}
