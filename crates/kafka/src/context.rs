//! The client context of every Kafka client Ferry makes: librdkafka's logs
//! and global errors go to `tracing` at debug level (every failure that
//! matters reaches the caller as a result and is said there, in one
//! sentence), and statistics keep each partition's high watermark as the
//! last fetch reported it.

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::KafkaError;
use rdkafka::statistics::Statistics;
use std::collections::HashMap;
use std::sync::Mutex;

#[derive(Default)]
pub struct Quiet {
    /// (topic, partition) → high watermark from the last fetch.
    high: Mutex<HashMap<(String, i32), i64>>,
}

impl Quiet {
    /// The high watermark the last fetch of `topic`/`partition` reported
    /// (statistics must be on: `statistics.interval.ms`).
    pub fn high_watermark(&self, topic: &str, partition: i32) -> Option<i64> {
        self.high
            .lock()
            .expect("kafka context lock poisoned")
            .get(&(topic.to_string(), partition))
            .copied()
    }
}

impl ClientContext for Quiet {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        tracing::debug!(?level, fac, "librdkafka: {log_message}");
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(%error, "librdkafka: {reason}");
    }

    fn stats(&self, statistics: Statistics) {
        let mut high = self.high.lock().expect("kafka context lock poisoned");
        for (name, t) in statistics.topics {
            for (p, s) in t.partitions {
                if p >= 0 && s.hi_offset >= 0 {
                    high.insert((name.clone(), p), s.hi_offset);
                }
            }
        }
    }
}

impl ConsumerContext for Quiet {}
