//! `ferry journal verify|inspect|repair|demo`.

use crate::cli::{DemoArgs, InspectArgs};
use crate::error::CliError;
use ferry_core::{Event, ExitCode, Op, Position, ShardId, StoreMeta, Value};
use ferry_journal::{
    AppendBatch, Journal, PersistPolicy, ReadBudget, ShardAppend, SourceCheckpoint,
};
use ferry_journal_rocks::{OpenMode, RocksJournal};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

pub fn verify(dir: &Path) -> Result<(), CliError> {
    // Read-only: verify works on a journal a running agent holds.
    let j = RocksJournal::open(dir, OpenMode::ReadOnly, PersistPolicy::Never)?;
    let report = ferry_journal_rocks::verify(&j)?;
    println!(
        "journal {}: {} shards, {} valid records, {} bytes",
        dir.display(),
        report.shards.len(),
        report.records,
        report.bytes
    );
    if report.is_ok() {
        println!("ok: no damage found");
        return Ok(());
    }
    for d in &report.damage {
        println!("damaged: {d}");
    }
    Err(CliError::new(
        ExitCode::Runtime,
        format!(
            "the journal in {} has {} damaged place(s); run `ferry journal repair {}`",
            dir.display(),
            report.damage.len(),
            dir.display()
        ),
    ))
}

pub fn repair(dir: &Path) -> Result<(), CliError> {
    let report = {
        let j = RocksJournal::open(dir, OpenMode::Existing, PersistPolicy::EveryBatch)?;
        let found = ferry_journal_rocks::verify(&j)?;
        if found.is_ok() {
            println!(
                "journal {}: no damage found, nothing changed",
                dir.display()
            );
            return Ok(());
        }
        ferry_journal_rocks::repair(&j, &found)?
    };
    for a in &report.actions {
        println!("repaired: {a}");
    }
    let j = RocksJournal::open(dir, OpenMode::ReadOnly, PersistPolicy::Never)?;
    let after = ferry_journal_rocks::verify(&j)?;
    if !after.is_ok() {
        return Err(CliError::new(
            ExitCode::Runtime,
            format!(
                "repair left {} damaged place(s), first: {}; the storage itself may be failing",
                after.damage.len(),
                after.damage[0]
            ),
        ));
    }
    println!("journal {}: verifies after repair", dir.display());
    Ok(())
}

fn op_name(op: &Op) -> &'static str {
    match op {
        Op::Put { .. } => "put",
        Op::Delete { .. } => "delete",
        Op::SnapshotBegin { .. } => "snapshot-begin",
        Op::SnapshotEnd => "snapshot-end",
        Op::Fence => "fence",
        Op::Heartbeat => "heartbeat",
    }
}

/// A printable key: UTF-8 as is, other bytes escaped, long keys shortened.
fn show_key(k: &[u8]) -> String {
    let s: String = k.escape_ascii().to_string();
    if s.len() > 80 {
        format!("{}…", &s[..80])
    } else {
        s
    }
}

/// Values are never printed: only their size, and "sealed" for secrets.
fn show_value(op: &Op) -> String {
    match op {
        Op::Put {
            value: Value::Plain(b),
            ..
        } => format!("{} bytes", b.len()),
        Op::Put {
            value: Value::Sealed { .. },
            ..
        } => "<sealed secret, redacted>".to_string(),
        _ => String::new(),
    }
}

fn record_json(e: &Event) -> serde_json::Value {
    json!({
        "shard": e.shard.0,
        "seq": e.seq,
        "position": e.position.to_string(),
        "op": op_name(&e.op),
        "key": show_key(&e.key),
        "value": show_value(&e.op),
        "source_ts_ms": e.source_ts_ms,
        "capture_ts_ms": e.capture_ts_ms,
    })
}

pub fn inspect(a: &InspectArgs) -> Result<(), CliError> {
    let j = RocksJournal::open(&a.dir, OpenMode::ReadOnly, PersistPolicy::Never)?;
    if let Some(shard) = a.shard {
        let shard = ShardId(shard);
        let budget = ReadBudget {
            max_events: a.limit,
            max_bytes: usize::MAX,
        };
        let records = j.read(shard, a.from, budget)?;
        if a.json {
            let list: Vec<_> = records.iter().map(record_json).collect();
            println!(
                "{}",
                serde_json::to_string_pretty(&json!({ "shard": shard.0, "records": list }))
                    .expect("json")
            );
        } else {
            for e in &records {
                println!(
                    "{:>5} {:>10}  pos {:<14} {:<14} {}  {}",
                    e.shard,
                    e.seq,
                    e.position.to_string(),
                    op_name(&e.op),
                    show_key(&e.key),
                    show_value(&e.op)
                );
            }
            if records.is_empty() {
                println!("shard {shard}: no records at or after sequence {}", a.from);
            }
        }
        return Ok(());
    }
    let checkpoints = j.source_checkpoints()?;
    let applied = j.applied_all()?;
    let mut shards = Vec::new();
    for s in j.shards()? {
        let b = j.bounds(s)?.expect("listed shard has bounds");
        let targets: BTreeMap<&str, u64> = applied
            .iter()
            .filter(|((_, sh), _)| *sh == s)
            .map(|((t, _), seq)| (t.as_str(), *seq))
            .collect();
        shards.push((s, b, targets));
    }
    if a.json {
        let list: Vec<_> = shards
            .iter()
            .map(|(s, b, t)| json!({"shard": s.0, "first": b.first, "last": b.last, "records": b.len(), "applied": t}))
            .collect();
        let cps: BTreeMap<&str, String> = checkpoints
            .iter()
            .map(|(k, v)| (k.as_str(), v.to_string()))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"dir": a.dir.display().to_string(), "shards": list, "source_checkpoints": cps})).expect("json")
        );
        return Ok(());
    }
    println!("journal {}", a.dir.display());
    println!(
        "{:>5} {:>12} {:>12} {:>12}  applied",
        "shard", "first", "last", "records"
    );
    for (s, b, t) in &shards {
        let applied: Vec<String> = t.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!(
            "{:>5} {:>12} {:>12} {:>12}  {}",
            s,
            b.first,
            b.last,
            b.len(),
            applied.join(" ")
        );
    }
    for (src, pos) in &checkpoints {
        println!("source {src}: checkpoint {pos}");
    }
    Ok(())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Appends generated events as a tailer would, replays them as a target
/// would (read, apply, checkpoint, truncate), and verifies the result.
pub fn demo(a: &DemoArgs) -> Result<(), CliError> {
    const SOURCE: &str = "demo://generated";
    const TARGET: &str = "demo://replayed";
    let j = RocksJournal::open(&a.journal, OpenMode::Create, a.fsync)?;
    let shards = a.shards;
    let mut next: Vec<u64> = (0..shards)
        .map(|s| j.bounds(ShardId(s)).map(|b| b.map_or(1, |b| b.next_seq())))
        .collect::<Result<_, _>>()?;
    let start_pos = j.source_checkpoint(SOURCE)?.map_or(0, |p| p.order);
    println!(
        "appending {} events of {} B over {shards} shards in batches of {} (fsync: {}) to {}",
        a.events,
        a.value_bytes,
        a.batch,
        a.fsync,
        a.journal.display()
    );
    let started = Instant::now();
    let mut pos = start_pos;
    let mut appended = 0u64;
    let mut last_report = Instant::now();
    let value = vec![0x5au8; a.value_bytes as usize];
    while appended < a.events {
        let n = (a.events - appended).min(u64::from(a.batch));
        let mut per_shard: BTreeMap<u32, Vec<Event>> = BTreeMap::new();
        for _ in 0..n {
            pos += 1;
            let key = format!("/demo/key-{:08}", pos % 100_000).into_bytes();
            let shard = ferry_core::shard_for_key(&key, shards);
            let op = if pos % 10 == 0 {
                Op::Delete {
                    meta: StoreMeta::None,
                }
            } else {
                Op::Put {
                    value: Value::Plain(value.clone()),
                    meta: StoreMeta::None,
                }
            };
            per_shard.entry(shard.0).or_default().push(Event {
                shard,
                seq: 0,
                position: Position::at(pos),
                key,
                op,
                source_ts_ms: 0,
                capture_ts_ms: now_ms(),
            });
        }
        let batch = AppendBatch {
            shards: per_shard
                .into_iter()
                .map(|(s, events)| {
                    let first_seq = next[s as usize];
                    next[s as usize] += events.len() as u64;
                    ShardAppend {
                        shard: ShardId(s),
                        first_seq,
                        events,
                    }
                })
                .collect(),
            checkpoint: Some(SourceCheckpoint {
                source: SOURCE.into(),
                position: Position::at(pos),
            }),
        };
        j.append_blocking(batch)?;
        appended += n;
        if last_report.elapsed().as_secs() >= 2 {
            last_report = Instant::now();
            println!(
                "  appended {appended}/{} ({:.0} events/s)",
                a.events,
                appended as f64 / started.elapsed().as_secs_f64()
            );
        }
    }
    let append_s = started.elapsed().as_secs_f64();
    println!(
        "appended {appended} events in {append_s:.2} s: {:.0} events/s; source checkpoint at position {pos}",
        appended as f64 / append_s
    );
    // Replay: read each shard in bounded batches, "apply", checkpoint, truncate.
    let started = Instant::now();
    let mut replayed = 0u64;
    for s in j.shards()? {
        let mut from = j.applied(TARGET, s)?.map_or(1, |a| a + 1);
        loop {
            let batch = j.read(s, from, ReadBudget::DEFAULT)?;
            let Some(last) = batch.last().map(|e| e.seq) else {
                break;
            };
            replayed += batch.len() as u64;
            j.set_applied_blocking(TARGET, s, last)?;
            j.truncate_blocking(s, last)?;
            from = last + 1;
        }
    }
    let replay_s = started.elapsed().as_secs_f64();
    println!(
        "replayed and truncated {replayed} events in {replay_s:.2} s: {:.0} events/s",
        replayed as f64 / replay_s.max(1e-9)
    );
    let report = ferry_journal_rocks::verify(&j)?;
    println!("{:>5} {:>12} {:>12}  applied", "shard", "first", "last");
    for (s, b) in &report.shards {
        println!(
            "{:>5} {:>12} {:>12}  {}",
            s,
            b.first,
            b.last,
            j.applied(TARGET, *s)?.unwrap_or(0)
        );
    }
    if !report.is_ok() {
        return Err(CliError::new(
            ExitCode::Runtime,
            format!("verify found damage: {}", report.damage[0]),
        ));
    }
    println!(
        "verify: ok; run it yourself with `ferry journal verify {}`",
        a.journal.display()
    );
    Ok(())
}
