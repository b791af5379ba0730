//! Reading a partition's tail: the last record Ferry wrote there.
//!
//! The broker here answers ListOffsets wrong, so the end of a partition is
//! the high watermark a fetch reports: the reader fetches from the
//! partition's start, takes the watermark from the client's statistics
//! (which librdkafka fills from fetch responses), then fetches the last
//! record and reads its headers. Bounded in time: every poll has a
//! deadline.

use crate::context::Quiet;
use crate::{HEADER_JOURNAL, HEADER_SEQ, HEADER_SNAPSHOT, HEADER_SWEEP};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use std::time::{Duration, Instant};

/// How long a read towards the end may see nothing before the rest of the
/// log is taken to be a gap.
const GAP_WAIT: Duration = Duration::from_secs(2);

/// The last record of a partition, as far as Ferry reads it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tail {
    /// Offset one past the last record (the high watermark).
    pub end: i64,
    /// The journal sequence of the last record, if Ferry wrote it.
    pub seq: Option<u64>,
    /// The journal that wrote it.
    pub journal: Option<String>,
    /// Whether it was part of a snapshot.
    pub snapshot: bool,
    /// The sequence of that snapshot's begin marker (its records say).
    pub snapshot_begin: Option<u64>,
    /// The last record is a delete whose tombstone never landed (a crash
    /// between the two): its key and headers, to publish the tombstone.
    pub missing_tombstone: Option<(Vec<u8>, Vec<RecordHeader>)>,
}

/// A record header: name and value.
pub type RecordHeader = (String, Vec<u8>);

pub(crate) fn header(m: &impl Message, name: &str) -> Option<String> {
    let h = m.headers()?;
    h.iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// A consumer that reads without a group position, with statistics on.
pub fn consumer(bootstrap: &str) -> Result<BaseConsumer<Quiet>, KafkaError> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "ferry-tail")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest")
        .set("statistics.interval.ms", "20")
        .set("max.partition.fetch.bytes", "65536")
        // A fetch of a partition read to its end waits this long for more
        // before it answers; the default 500 ms made every tail read (a
        // sink's start, each partition's end) take over half a second.
        .set("fetch.wait.max.ms", "10")
        .create_with_context(Quiet::default())
}

fn assign(c: &BaseConsumer<Quiet>, topic: &str, partition: i32, at: i64) -> Result<(), String> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(at))
        .map_err(|e| e.to_string())?;
    c.assign(&tpl).map_err(|e| e.to_string())
}

/// The end of `topic`'s partition `partition`: the high watermark of a
/// fetch (blocking; call from `spawn_blocking`).
pub fn end(bootstrap: &str, topic: &str, partition: i32, timeout: Duration) -> Result<i64, String> {
    let deadline = Instant::now() + timeout;
    let c = consumer(bootstrap).map_err(|e| e.to_string())?;
    high_watermark(&c, topic, partition, deadline)
}

fn high_watermark(
    c: &BaseConsumer<Quiet>,
    topic: &str,
    partition: i32,
    deadline: Instant,
) -> Result<i64, String> {
    assign(c, topic, partition, 0)?;
    // Fetch until the statistics carry the fetch's high watermark.
    loop {
        if let Some(h) = c.context().high_watermark(topic, partition) {
            return Ok(h);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("timed out reading the end of {topic}/{partition}; check that the broker answers fetches"));
        }
        match c.poll(left.min(Duration::from_millis(50))) {
            None | Some(Ok(_)) | Some(Err(KafkaError::PartitionEOF(_))) => {}
            Some(Err(e)) => return Err(format!("reading the end of {topic}/{partition}: {e}")),
        }
    }
}

/// When `m` is a delete event (its tombstone is then the next record): its
/// key and headers, for the tombstone.
fn missing_tombstone(m: &impl Message) -> Option<(Vec<u8>, Vec<RecordHeader>)> {
    let v: serde_json::Value = serde_json::from_slice(m.payload()?).ok()?;
    if v["op"] != "d" {
        return None;
    }
    let headers = m
        .headers()?
        .iter()
        .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
        .collect();
    Some((m.key()?.to_vec(), headers))
}

/// Reads the tail of `topic`'s partition `partition` (blocking; call from
/// `spawn_blocking`).
pub fn read(
    bootstrap: &str,
    topic: &str,
    partition: i32,
    timeout: Duration,
) -> Result<Tail, String> {
    let deadline = Instant::now() + timeout;
    let c = consumer(bootstrap).map_err(|e| e.to_string())?;
    let end = high_watermark(&c, topic, partition, deadline)?;
    if end <= 0 {
        return Ok(Tail::default());
    }
    // The last record is at `end - 1`, unless the log has a gap there
    // (offsets a deduplicated or aborted batch took): then look further
    // back, reading forward to the end each time.
    let mut back = 1;
    loop {
        let from = (end - back).max(0);
        assign(&c, topic, partition, from)?;
        let mut last = None;
        let mut quiet = Instant::now();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "timed out reading the tail of {topic}/{partition} (end {end}, reading from {from}); check that the broker answers fetches"
                ));
            }
            match c.poll(left.min(Duration::from_millis(100))) {
                Some(Ok(m)) if m.offset() < from => {}
                Some(Ok(m)) => {
                    quiet = Instant::now();
                    let done = m.offset() + 1 >= end;
                    let seq: Option<u64> = header(&m, HEADER_SEQ).and_then(|s| s.parse().ok());
                    let snapshot = header(&m, HEADER_SNAPSHOT);
                    last = Some(Tail {
                        end: (m.offset() + 1).max(end),
                        // A sweep's deletes carry the sequence of the
                        // snapshot's end, which is done only once the
                        // sweep is: until then the partition holds the
                        // events before it.
                        seq: if header(&m, HEADER_SWEEP).is_some() {
                            seq.map(|s| s.saturating_sub(1))
                        } else {
                            seq
                        },
                        journal: header(&m, HEADER_JOURNAL),
                        snapshot: snapshot.as_deref().is_some_and(|s| s != "false"),
                        snapshot_begin: snapshot.and_then(|s| s.parse().ok()),
                        missing_tombstone: missing_tombstone(&m),
                    });
                    if done {
                        break;
                    }
                }
                Some(Err(KafkaError::PartitionEOF(_))) => break,
                // Nothing more comes although the end is further: a gap
                // at the end of the log.
                None if quiet.elapsed() > GAP_WAIT => break,
                None => {}
                Some(Err(e)) => {
                    return Err(format!("reading the tail of {topic}/{partition}: {e}"))
                }
            }
        }
        if let Some(t) = last {
            return Ok(t);
        }
        if from == 0 {
            return Ok(Tail::default());
        }
        back *= 16;
    }
}

/// Every record of `topic`'s partition `partition` from its start to its
/// end (the high watermark when the scan starts), in order (blocking; call
/// from `spawn_blocking`). The last offsets may hold no record (a gap):
/// the scan ends once nothing more arrives for [`GAP_WAIT`].
pub fn scan(
    bootstrap: &str,
    topic: &str,
    partition: i32,
    timeout: Duration,
    mut each: impl FnMut(&rdkafka::message::BorrowedMessage<'_>) -> Result<(), String>,
) -> Result<i64, String> {
    let deadline = Instant::now() + timeout;
    let c = consumer(bootstrap).map_err(|e| e.to_string())?;
    let end = high_watermark(&c, topic, partition, deadline)?;
    if end <= 0 {
        return Ok(0);
    }
    assign(&c, topic, partition, 0)?;
    let mut quiet = Instant::now();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "timed out reading {topic}/{partition} to its end ({end})"
            ));
        }
        match c.poll(left.min(Duration::from_millis(200))) {
            Some(Ok(m)) => {
                quiet = Instant::now();
                each(&m)?;
                if m.offset() + 1 >= end {
                    return Ok(end);
                }
            }
            Some(Err(KafkaError::PartitionEOF(_))) => return Ok(end),
            None if quiet.elapsed() > GAP_WAIT => return Ok(end),
            None => {}
            Some(Err(e)) => return Err(format!("reading {topic}/{partition}: {e}")),
        }
    }
}

/// The value of the last record of `topic`'s partition `partition`, if it
/// has one (blocking; call from `spawn_blocking`). Looks further back, as
/// [`read`] does, when the last offsets hold no record.
pub fn last_payload(
    bootstrap: &str,
    topic: &str,
    partition: i32,
    timeout: Duration,
) -> Result<Option<Vec<u8>>, String> {
    let deadline = Instant::now() + timeout;
    let c = consumer(bootstrap).map_err(|e| e.to_string())?;
    let end = high_watermark(&c, topic, partition, deadline)?;
    if end <= 0 {
        return Ok(None);
    }
    let mut back = 1;
    loop {
        let from = (end - back).max(0);
        assign(&c, topic, partition, from)?;
        let (mut last, mut quiet) = (None, Instant::now());
        loop {
            if Instant::now() > deadline {
                return Err(format!(
                    "timed out reading the last record of {topic}/{partition}"
                ));
            }
            match c.poll(Duration::from_millis(100)) {
                Some(Ok(m)) if m.offset() >= from => {
                    quiet = Instant::now();
                    last = Some(m.payload().unwrap_or_default().to_vec());
                    if m.offset() + 1 >= end {
                        break;
                    }
                }
                Some(Err(KafkaError::PartitionEOF(_))) => break,
                None if quiet.elapsed() > GAP_WAIT => break,
                Some(Err(e)) => return Err(format!("reading {topic}/{partition}: {e}")),
                _ => {}
            }
        }
        if last.is_some() || from == 0 {
            return Ok(last);
        }
        back *= 16;
    }
}
