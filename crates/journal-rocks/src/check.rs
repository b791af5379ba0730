//! `verify` and `repair`: finding and removing damaged records.
//!
//! Verification reads every record of every shard once, in key order, and
//! checks that each shard holds exactly `first..=last`, every frame's
//! checksum and payload, and that the payload names the shard and sequence
//! it is stored under. Memory is bounded: one record at a time.
//!
//! Repair truncates each damaged shard to its last valid record: the log is
//! ordered, so nothing after a hole can be applied. Because dropped records
//! may cover changes no other record holds, repair also removes every source
//! checkpoint (the next start re-snapshots, which captures them again) and
//! moves back any applied checkpoint past the new end (the one place a
//! checkpoint may move back: an offline operator action that says so).

use crate::columns::{self, event_key, parse_event_key};
use crate::RocksJournal;
use ferry_core::{Seq, ShardId};
use ferry_journal::{decode_frame, JournalError, ShardBounds};
use rocksdb::{IteratorMode, WriteBatch, WriteOptions};
use std::collections::BTreeMap;

/// One problem found by [`verify`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Damage {
    /// The record at `seq` of `shard` (or where it should be) is bad.
    Record {
        shard: ShardId,
        seq: Seq,
        reason: String,
    },
    /// A record lies outside any shard's bounds (left over, never readable).
    Stray { shard: ShardId, seq: Seq },
    /// A source checkpoint does not decode.
    Checkpoint { source: String },
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Damage::Record { shard, seq, reason } => {
                write!(f, "shard {shard} sequence {seq}: {reason}")
            }
            Damage::Stray { shard, seq } => {
                write!(
                    f,
                    "shard {shard} sequence {seq}: record outside the shard's bounds"
                )
            }
            Damage::Checkpoint { source } => {
                write!(f, "checkpoint of source {source}: does not decode")
            }
        }
    }
}

/// What [`verify`] found.
#[derive(Clone, Debug, Default)]
pub struct VerifyReport {
    pub shards: BTreeMap<ShardId, ShardBounds>,
    /// Valid records read.
    pub records: u64,
    pub bytes: u64,
    /// At most the first damage of each shard (what follows it is dropped by
    /// repair anyway), plus every stray record and bad checkpoint.
    pub damage: Vec<Damage>,
}

impl VerifyReport {
    pub fn is_ok(&self) -> bool {
        self.damage.is_empty()
    }
}

/// Reads the whole journal and reports every problem. Changes nothing.
pub fn verify(j: &RocksJournal) -> Result<VerifyReport, JournalError> {
    let db = j.db();
    let shards = j.bounds.lock().expect("bounds lock").clone();
    let mut report = VerifyReport {
        shards: shards.clone(),
        ..Default::default()
    };
    // Per shard: the next sequence expected, or None once damage was found.
    let mut expected: BTreeMap<ShardId, Option<Seq>> =
        shards.iter().map(|(s, b)| (*s, Some(b.first))).collect();
    let cf = db.cf_handle(columns::EVENTS).expect("events cf");
    let mut last_key: Option<(ShardId, Seq)> = None;
    for item in db.iterator_cf(cf, IteratorMode::Start) {
        let (k, v) = match item {
            Ok(kv) => kv,
            Err(e) => {
                // RocksDB's own checksums failed: say where the scan stopped.
                let (shard, seq) = last_key.map_or((ShardId(0), 1), |(s, q)| (s, q + 1));
                report.damage.push(Damage::Record {
                    shard,
                    seq,
                    reason: format!("storage error after this point: {e}"),
                });
                return Ok(report);
            }
        };
        let Some((shard, start)) = parse_event_key(&k) else {
            report.damage.push(Damage::Record {
                shard: ShardId(u32::MAX),
                seq: 0,
                reason: format!("a record key of {} bytes is malformed", k.len()),
            });
            continue;
        };
        last_key = Some((shard, start));
        let Some(b) = shards.get(&shard).copied() else {
            report.damage.push(Damage::Stray { shard, seq: start });
            continue;
        };
        let Some(Some(mut want)) = expected.get(&shard).copied() else {
            continue; // this shard is already damaged
        };
        if start > b.last || (start < want && want > b.first) {
            // Beyond the end, or overlapping records already seen.
            report.damage.push(Damage::Stray { shard, seq: start });
            continue;
        }
        if start > want {
            report.damage.push(Damage::Record {
                shard,
                seq: want,
                reason: "the record is missing".into(),
            });
            expected.insert(shard, None);
            continue;
        }
        let mut problem = None;
        for (i, rec) in columns::records(&v).enumerate() {
            let seq = start + i as u64;
            if seq < want {
                continue; // truncated away; readers skip it too
            }
            if seq > b.last {
                problem = Some((
                    seq,
                    "a record lies past the shard's last sequence".to_string(),
                ));
                break;
            }
            let frame = match rec {
                Ok((_, f)) => f,
                Err(_) => {
                    problem = Some((seq, "the record's length runs past its chunk".to_string()));
                    break;
                }
            };
            match decode_frame(frame) {
                Err(e) => {
                    problem = Some((seq, e.to_string()));
                    break;
                }
                Ok(ev) if ev.shard != shard || ev.seq != seq => {
                    problem = Some((
                        seq,
                        format!("the record holds shard {} sequence {}", ev.shard, ev.seq),
                    ));
                    break;
                }
                Ok(_) => {
                    report.records += 1;
                    report.bytes += frame.len() as u64;
                    want = seq + 1;
                }
            }
        }
        match problem {
            Some((seq, reason)) => {
                report.damage.push(Damage::Record { shard, seq, reason });
                expected.insert(shard, None);
            }
            None => {
                expected.insert(shard, Some(want));
            }
        }
    }
    // Shards whose records ended early.
    for (shard, want) in expected {
        if let Some(want) = want {
            if want <= shards[&shard].last {
                report.damage.push(Damage::Record {
                    shard,
                    seq: want,
                    reason: "the record is missing".into(),
                });
            }
        }
    }
    let cf = db.cf_handle(columns::SOURCE_CHECKPOINTS).expect("cf");
    for item in db.iterator_cf(cf, IteratorMode::Start) {
        let (k, v) = item.map_err(|e| JournalError::Io(e.into_string()))?;
        if columns::decode_position(&v).is_none() {
            report.damage.push(Damage::Checkpoint {
                source: String::from_utf8_lossy(&k).into_owned(),
            });
        }
    }
    Ok(report)
}

/// What [`repair`] changed, in words an operator can act on.
#[derive(Clone, Debug, Default)]
pub struct RepairReport {
    pub actions: Vec<String>,
}

/// Removes damage found by [`verify`]; `j` must be open for writing (so it
/// holds the directory lock) and is left stale: drop it afterwards.
pub fn repair(j: &RocksJournal, found: &VerifyReport) -> Result<RepairReport, JournalError> {
    let db = j.db();
    let cf_events = db.cf_handle(columns::EVENTS).expect("cf");
    let cf_shards = db.cf_handle(columns::SHARDS).expect("cf");
    let mut batch = WriteBatch::default();
    let mut report = RepairReport::default();
    let mut new_last: BTreeMap<ShardId, Seq> = BTreeMap::new();
    for d in &found.damage {
        match d {
            Damage::Record { shard, seq, reason } => {
                let Some(b) = found.shards.get(shard).copied() else {
                    continue;
                };
                let cut = (*seq).max(b.first);
                // The chunk holding `cut` keeps its records before it; every
                // later chunk of the shard goes.
                let holder = crate::chunk_start(db, *shard, cut)
                    .map_err(|e| JournalError::Io(e.into_string()))?;
                match holder {
                    Some(c) if c < cut => {
                        let value = db
                            .get_cf(cf_events, event_key(*shard, c))
                            .map_err(|e| JournalError::Io(e.into_string()))?
                            .unwrap_or_default();
                        let mut prefix = Vec::new();
                        for rec in columns::records(&value).take((cut - c) as usize) {
                            match rec {
                                Ok((_, frame)) => columns::push_record(&mut prefix, frame),
                                Err(_) => break,
                            }
                        }
                        batch.put_cf(cf_events, event_key(*shard, c), prefix);
                        batch.delete_range_cf(
                            cf_events,
                            event_key(*shard, c + 1),
                            event_key(*shard, u64::MAX),
                        );
                    }
                    _ => batch.delete_range_cf(
                        cf_events,
                        event_key(*shard, cut),
                        event_key(*shard, u64::MAX),
                    ),
                }
                let nb = ShardBounds {
                    first: b.first.min(cut),
                    last: (cut - 1).min(b.last),
                };
                let dropped = b.last - nb.last;
                batch.put_cf(
                    cf_shards,
                    columns::shard_key(*shard),
                    columns::encode_bounds(nb),
                );
                if dropped > 0 {
                    new_last.insert(*shard, nb.last);
                }
                report.actions.push(format!(
                    "shard {shard}: dropped sequences {cut}..={} ({dropped} records) because sequence {seq} {reason}; the shard now ends at {}",
                    b.last, nb.last
                ));
            }
            Damage::Stray { shard, seq } => {
                batch.delete_cf(cf_events, event_key(*shard, *seq));
                report.actions.push(format!(
                    "shard {shard}: removed stray record at sequence {seq}"
                ));
            }
            Damage::Checkpoint { source } => {
                report.actions.push(format!(
                    "source {source}: removed its damaged checkpoint; the next start re-snapshots it"
                ));
            }
        }
    }
    let lost_records = !new_last.is_empty();
    let damaged_checkpoint = found
        .damage
        .iter()
        .any(|d| matches!(d, Damage::Checkpoint { .. }));
    if lost_records || damaged_checkpoint {
        let cf = db.cf_handle(columns::SOURCE_CHECKPOINTS).expect("cf");
        let names: Vec<Box<[u8]>> = db
            .iterator_cf(cf, IteratorMode::Start)
            .map(|kv| kv.map(|(k, _)| k))
            .collect::<Result<_, _>>()
            .map_err(|e| JournalError::Io(e.into_string()))?;
        for name in names {
            batch.delete_cf(cf, &name);
            if lost_records {
                report.actions.push(format!(
                    "source {}: removed its checkpoint so the next start re-snapshots it and captures the dropped changes again",
                    String::from_utf8_lossy(&name)
                ));
            }
        }
    }
    let cf_applied = db.cf_handle(columns::APPLIED).expect("cf");
    for ((target, shard), seq) in j.applied_all()? {
        if let Some(&last) = new_last.get(&shard) {
            if seq > last {
                batch.put_cf(
                    cf_applied,
                    columns::applied_key(&target, shard),
                    columns::encode_seq(last),
                );
                report.actions.push(format!(
                    "target {target} shard {shard}: applied checkpoint moved back from {seq} to {last}"
                ));
            }
        }
    }
    let mut opts = WriteOptions::default();
    opts.set_sync(true);
    db.write_opt(batch, &opts)
        .map_err(|e| JournalError::Io(e.into_string()))?;
    // Make the range deletions physical so dropped bytes leave the disk.
    db.compact_range_cf(cf_events, None::<&[u8]>, None::<&[u8]>);
    Ok(report)
}
