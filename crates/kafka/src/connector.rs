//! Kafka as a Ferry target (see `ferry_connect` and the crate doc).

use crate::sink::KafkaSink;
use crate::{tail, HEADER_SEQ, HEADER_SHARD, HEADER_SWEEP};
use ferry_connect::verify::{Comparison, EventsReader};
use ferry_connect::{
    async_trait, CheckContext, Connector, DataModel, Options, Reader, Refusal, SinkContext, Source,
    Target,
};
use ferry_core::{StoreKind, StoreUrl};
use ferry_replay::SharedSink;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

/// `--kafka.publish-secrets`: publish values of secret sources as plain text.
pub const PUBLISH_SECRETS_PARAM: &str = "kafka.publish-secrets";

/// How long reading a partition's end may take (a broker that has just
/// restarted can take seconds to serve its first fetch).
pub(crate) const TAIL_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a metadata request may take.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// Every model: a record stream takes any change.
const ALL: &[DataModel] = &[
    DataModel::KeyValue,
    DataModel::Documents,
    DataModel::Secrets,
    DataModel::Document,
    DataModel::Files,
];

pub struct KafkaConnector;

fn parts(url: &StoreUrl) -> Result<(String, String), String> {
    match url {
        StoreUrl::Kafka { brokers, topic, .. } => Ok((
            brokers
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(","),
            topic.clone(),
        )),
        other => Err(format!("{other}: not a Kafka URL")),
    }
}

impl Connector for KafkaConnector {
    fn kind(&self) -> StoreKind {
        StoreKind::Kafka
    }
    fn source_model(&self) -> Option<DataModel> {
        Some(DataModel::KeyValue)
    }
    fn target_models(&self) -> &'static [DataModel] {
        ALL
    }
    fn source(&self, url: &StoreUrl, _options: &Options) -> Result<Arc<dyn Source>, String> {
        let (bootstrap, topic) = parts(url)?;
        Ok(Arc::new(crate::source::KafkaSource::new(
            url, bootstrap, topic,
        )?))
    }
    fn target(&self, url: &StoreUrl, options: &Options) -> Result<Arc<dyn Target>, String> {
        let (bootstrap, topic) = parts(url)?;
        Ok(Arc::new(KafkaTarget {
            url: url.clone(),
            bootstrap,
            topic,
            publish_secrets: options
                .params
                .get(PUBLISH_SECRETS_PARAM)
                .is_some_and(|v| v == "true"),
        }))
    }
}

/// A topic, as a target.
pub struct KafkaTarget {
    url: StoreUrl,
    bootstrap: String,
    topic: String,
    publish_secrets: bool,
}

/// Partitions of `topic` (`None`: no such topic), by a metadata request.
pub async fn partitions(bootstrap: &str, topic: &str) -> Result<Option<usize>, String> {
    let (b, t) = (bootstrap.to_string(), topic.to_string());
    tokio::task::spawn_blocking(move || {
        let c = tail::consumer(&b).map_err(|e| e.to_string())?;
        let md = c
            .fetch_metadata(None, METADATA_TIMEOUT)
            .map_err(|e| format!("Kafka at {b} does not answer ({e}); check that a broker runs there and that the URL's host and port are right"))?;
        Ok(md
            .topics()
            .iter()
            .find(|x| x.name() == t)
            .map(|x| x.partitions().len()))
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Creates `topic` with `needed` partitions, or checks the one there has
/// at least as many.
pub async fn ensure_topic(bootstrap: &str, topic: &str, needed: u32) -> Result<(), String> {
    match partitions(bootstrap, topic).await? {
        Some(n) if n >= needed as usize => Ok(()),
        Some(n) => Err(too_few(topic, n, needed)),
        None => {
            let admin: AdminClient<crate::context::Quiet> = ClientConfig::new()
                .set("bootstrap.servers", bootstrap)
                .create_with_context(crate::context::Quiet::default())
                .map_err(|e| e.to_string())?;
            let t = NewTopic::new(topic, needed as i32, TopicReplication::Fixed(1));
            let opts = AdminOptions::new().operation_timeout(Some(METADATA_TIMEOUT));
            let r = admin
                .create_topics(&[t], &opts)
                .await
                .map_err(|e| format!("creating {topic}: {e}"))?;
            for x in r {
                match x {
                    Ok(_) => {}
                    Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
                    Err((name, e)) => return Err(format!("creating {name}: {e}")),
                }
            }
            tracing::info!(topic, partitions = needed, "created the topic");
            Ok(())
        }
    }
}

/// The end of every partition, read concurrently.
pub(crate) async fn ends(bootstrap: &str, topic: &str, n: usize) -> Result<Vec<i64>, String> {
    let reads = (0..n as i32).map(|p| {
        let (b, t) = (bootstrap.to_string(), topic.to_string());
        tokio::task::spawn_blocking(move || tail::end(&b, &t, p, TAIL_TIMEOUT))
    });
    futures::future::join_all(reads)
        .await
        .into_iter()
        .map(|r| r.map_err(|e| e.to_string())?)
        .collect()
}

fn too_few(topic: &str, have: usize, needed: u32) -> String {
    format!("topic {topic} has {have} partitions, fewer than the {needed} shards of its route (each shard keeps its order in one partition); give another topic, or recreate it with {needed} partitions or more")
}

#[async_trait]
impl Target for KafkaTarget {
    fn url(&self) -> &StoreUrl {
        &self.url
    }
    fn accepts(&self) -> &'static [DataModel] {
        ALL
    }
    fn check_source(&self, source: &dyn Source) -> Result<(), String> {
        if source.holds_secrets() && !self.publish_secrets {
            return Err(format!(
                "{} holds secrets, which {} would publish as plain text to every reader of the topic; pass --kafka.publish-secrets to publish them anyway (see README, Kafka)",
                source.url(),
                self.url
            ));
        }
        Ok(())
    }
    async fn connect(&self) -> Result<(), String> {
        partitions(&self.bootstrap, &self.topic).await.map(drop)
    }
    async fn precheck(&self, source: &dyn Source, ctx: &CheckContext) -> Result<(), Refusal> {
        let needed = source.shards(ctx.shards);
        let have = partitions(&self.bootstrap, &self.topic)
            .await
            .map_err(Refusal::refused)?;
        let state = match have {
            None => format!(
                "topic {} will be created with {needed} partitions",
                self.topic
            ),
            Some(n) if n < needed as usize => {
                return Err(Refusal::refused(too_few(&self.topic, n, needed)))
            }
            Some(n) => {
                let records: i64 = ends(&self.bootstrap, &self.topic, n)
                    .await
                    .map_err(Refusal::refused)?
                    .iter()
                    .sum();
                if records > 0 && !ctx.force && !ctx.resuming {
                    return Err(Refusal::refused(format!(
                        "topic {} already holds {records} records; Ferry would add its events after them: pass --force to go ahead or choose an empty topic",
                        self.topic
                    )));
                }
                format!(
                    "topic {} has {n} partitions and {records} records",
                    self.topic
                )
            }
        };
        ferry_connect::check::line(
            "target",
            format!(
                "{}: reachable; {state}; one partition per shard, keyed by entity, Debezium-shaped values, exactly once by the partition's tail (no transactions){}",
                self.url,
                if source.holds_secrets() { "; secret values published as plain text (--kafka.publish-secrets)" } else { "" }
            ),
        );
        Ok(())
    }
    fn sink(&self, ctx: &SinkContext<'_>) -> Result<SharedSink, String> {
        Ok(SharedSink::new(KafkaSink::new(
            self.url.to_string(),
            self.bootstrap.clone(),
            self.topic.clone(),
            ctx.span,
            Arc::clone(ctx.source),
            ctx.journal_id.to_string(),
            ctx.resumed,
        )?))
    }
    fn reader(&self, _source: &dyn Source) -> Result<Reader, String> {
        Ok(Reader::Events(Arc::new(Topic {
            name: self.url.to_string(),
            bootstrap: self.bootstrap.clone(),
            topic: self.topic.clone(),
        })))
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// A topic read to its end for verification.
struct Topic {
    name: String,
    bootstrap: String,
    topic: String,
}

#[async_trait]
impl EventsReader for Topic {
    fn name(&self) -> &str {
        &self.name
    }

    async fn check(&self) -> Result<Comparison, String> {
        let (b, t) = (self.bootstrap.clone(), self.topic.clone());
        let n = partitions(&b, &t).await?.unwrap_or(0);
        tokio::task::spawn_blocking(move || read_all(&b, &t, n))
            .await
            .map_err(|e| e.to_string())?
    }
}

/// Every record of every partition: each (shard, sequence, sweep number)
/// once, and the end of each partition.
fn read_all(bootstrap: &str, topic: &str, partitions: usize) -> Result<Comparison, String> {
    let mut c = Comparison::default();
    let mut ends = BTreeMap::new();
    let mut seen: HashMap<(u32, u64, Option<u64>), i64> = HashMap::new();
    for p in 0..partitions as i32 {
        let end = tail::scan(bootstrap, topic, p, Duration::from_secs(600), |m| {
            let h = |name: &str| tail::header(m, name).and_then(|v| v.parse::<u64>().ok());
            // A delete's tombstone repeats its event's headers.
            if m.payload().is_none() {
                return Ok(());
            }
            c.compared += 1;
            if let (Some(shard), Some(seq)) = (h(HEADER_SHARD), h(HEADER_SEQ)) {
                if let Some(first) = seen.insert((shard as u32, seq, h(HEADER_SWEEP)), m.offset()) {
                    c.note(format!(
                        "{topic}/{p} offset {}: shard {shard} sequence {seq} appears twice (first at offset {first})",
                        m.offset()
                    ));
                }
            }
            Ok(())
        })?;
        ends.insert(p, end);
    }
    c.summary = format!(
        "read the {} events of topic {topic} to the end of its {partitions} partitions (ends {}): {} (shard, sequence) pairs appear twice; a topic holds events, so its state is not compared with the source's",
        c.compared,
        ends.iter()
            .map(|(p, e)| format!("{p}:{e}"))
            .collect::<Vec<_>>()
            .join(" "),
        c.differences
    );
    c.positions = ends
        .into_iter()
        .map(|(p, e)| (p.to_string(), e as u64))
        .collect();
    Ok(c)
}
