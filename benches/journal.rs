//! Journal benchmark: append and read throughput of the RocksDB journal,
//! each against the raw disk doing the same job in the same run, and peak
//! memory while appending 10 million events.
//!
//! Run: `cargo bench -p ferry-benches --bench journal`
//! Env: `FERRY_BENCH_SECS` (per measurement, default 2),
//!      `FERRY_BENCH_RSS_EVENTS` (default 10_000_000; 0 skips),
//!      `FERRY_BENCH_DIR` (where files go, default the system temp dir),
//!      `FERRY_BENCH_ONLY` (one configuration, e.g. `batch/128/1000`).
//!
//! The raw baseline appends the very same frame bytes to a plain file with
//! `write` and `fdatasync` at the same cadence as the journal's policy, so
//! the ratio is what the journal costs over the disk itself.

use ferry_benches::{mib, peak_rss_bytes, rate};
use ferry_core::{Event, Op, Position, ShardId, StoreMeta, Value};
use ferry_journal::{
    encode_frame, AppendBatch, Journal, PersistPolicy, ReadBudget, ShardAppend, SourceCheckpoint,
};
use ferry_journal_rocks::{OpenMode, RocksJournal};
use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn event(shard: u32, n: u64, value_bytes: usize) -> Event {
    Event {
        shard: ShardId(shard),
        seq: 0,
        position: Position::at(n),
        key: format!("/bench/key-{:012}", n).into_bytes(),
        op: Op::Put {
            value: Value::Plain(vec![(n % 251) as u8; value_bytes]),
            meta: StoreMeta::None,
        },
        source_ts_ms: n,
        capture_ts_ms: n,
    }
}

fn make_batch(shard: u32, first_seq: u64, n: usize, value_bytes: usize) -> AppendBatch {
    AppendBatch {
        shards: vec![ShardAppend {
            shard: ShardId(shard),
            first_seq,
            events: (0..n as u64)
                .map(|i| event(shard, first_seq + i, value_bytes))
                .collect(),
        }],
        checkpoint: Some(SourceCheckpoint {
            source: format!("bench-{shard}"),
            position: Position::at(first_seq + n as u64),
        }),
    }
}

struct Measured {
    events: u64,
    bytes: u64,
    elapsed: Duration,
}

/// Appends for `secs` with `appenders` concurrent streams (one shard each).
fn journal_append(
    dir: &Path,
    policy: PersistPolicy,
    value_bytes: usize,
    batch: usize,
    appenders: u32,
    secs: u64,
) -> Measured {
    let j = Arc::new(RocksJournal::open(dir, OpenMode::Create, policy).expect("open journal"));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let handles: Vec<_> = (0..appenders)
        .map(|shard| {
            let j = Arc::clone(&j);
            std::thread::spawn(move || {
                let (mut next, mut events, mut bytes) = (1u64, 0u64, 0u64);
                while Instant::now() < deadline {
                    let b = make_batch(shard, next, batch, value_bytes);
                    // Sized from one frame, not by encoding every event twice
                    // (the journal encodes each once, as the raw side does).
                    bytes +=
                        (encode_frame(&b.shards[0].events[0]).len() as u64 + 12) * batch as u64;
                    j.append_blocking(b).expect("append");
                    next += batch as u64;
                    events += batch as u64;
                }
                (events, bytes)
            })
        })
        .collect();
    let (mut events, mut bytes) = (0, 0);
    for h in handles {
        let (e, b) = h.join().expect("appender");
        events += e;
        bytes += b;
    }
    Measured {
        events,
        bytes,
        elapsed: started.elapsed(),
    }
}

/// The same bytes (key + frame per event, length-prefixed) appended to a
/// plain file, synced like `policy`.
fn raw_append(
    path: &Path,
    policy: PersistPolicy,
    value_bytes: usize,
    batch: usize,
    secs: u64,
) -> Measured {
    let mut f = File::create(path).expect("raw file");
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let mut last_sync = Instant::now();
    let (mut next, mut events, mut bytes) = (1u64, 0u64, 0u64);
    let mut buf = Vec::new();
    while Instant::now() < deadline {
        buf.clear();
        for i in 0..batch as u64 {
            let mut e = event(0, next + i, value_bytes);
            e.seq = next + i;
            let frame = encode_frame(&e);
            buf.extend_from_slice(&(frame.len() as u32 + 12).to_be_bytes());
            buf.extend_from_slice(&[0u8; 12]);
            buf.extend_from_slice(&frame);
        }
        f.write_all(&buf).expect("raw write");
        match policy {
            PersistPolicy::EveryBatch => f.sync_data().expect("fdatasync"),
            PersistPolicy::Interval(d) if last_sync.elapsed() >= d => {
                f.sync_data().expect("fdatasync");
                last_sync = Instant::now();
            }
            _ => {}
        }
        next += batch as u64;
        events += batch as u64;
        bytes += buf.len() as u64 - 4 * batch as u64;
    }
    Measured {
        events,
        bytes,
        elapsed: started.elapsed(),
    }
}

fn journal_read(dir: &Path) -> Measured {
    let j = RocksJournal::open(dir, OpenMode::ReadOnly, PersistPolicy::Never).expect("open");
    let started = Instant::now();
    let (mut events, mut bytes) = (0u64, 0u64);
    for shard in j.shards().expect("shards") {
        let mut from = 1;
        loop {
            let got = j.read(shard, from, ReadBudget::DEFAULT).expect("read");
            let Some(last) = got.last() else { break };
            from = last.seq + 1;
            events += got.len() as u64;
            bytes += got.iter().map(|e| e.key.len() as u64 + 40).sum::<u64>();
        }
    }
    Measured {
        events,
        bytes,
        elapsed: started.elapsed(),
    }
}

/// Reads the raw file back and decodes every frame, as the journal does.
fn raw_read(path: &Path) -> Measured {
    let started = Instant::now();
    let mut data = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut data))
        .expect("read raw");
    let (mut at, mut events) = (0usize, 0u64);
    while at + 4 <= data.len() {
        let len = u32::from_be_bytes(data[at..at + 4].try_into().expect("4")) as usize;
        let frame = &data[at + 4 + 12..at + 4 + len];
        ferry_journal::decode_frame(frame).expect("raw frame");
        at += 4 + len;
        events += 1;
    }
    Measured {
        events,
        bytes: data.len() as u64,
        elapsed: started.elapsed(),
    }
}

/// Child mode: append `events` 128 B events in 1000-event batches (fsync per
/// batch) and print the peak RSS. Run in a fresh process so earlier
/// measurements do not count.
fn rss_child(dir: &Path, events: u64, raw: bool) {
    const BATCH: usize = 1000;
    if raw {
        let mut f = File::create(dir.join("raw.bin")).expect("raw");
        let mut n = 0;
        while n < events {
            let mut buf = Vec::new();
            for i in 0..BATCH as u64 {
                buf.extend_from_slice(&encode_frame(&event(0, n + i, 128)));
            }
            f.write_all(&buf).and_then(|()| f.sync_data()).expect("raw");
            n += BATCH as u64;
        }
    } else {
        let j = RocksJournal::open(
            &dir.join("journal"),
            OpenMode::Create,
            PersistPolicy::EveryBatch,
        )
        .expect("open");
        let mut n = 0;
        while n < events {
            let shard = ((n / BATCH as u64) % 8) as u32;
            let next = j
                .bounds(ShardId(shard))
                .expect("bounds")
                .map_or(1, |b| b.next_seq());
            j.append_blocking(make_batch(shard, next, BATCH, 128))
                .expect("append");
            n += BATCH as u64;
        }
    }
    println!("{}", peak_rss_bytes());
}

fn run_rss(events: u64, raw: bool) -> (u64, Duration) {
    let dir = tempdir();
    let started = Instant::now();
    let out = std::process::Command::new(std::env::current_exe().expect("exe"))
        .args([
            "--rss-child",
            dir.path().to_str().expect("utf-8 path"),
            &events.to_string(),
            if raw { "raw" } else { "journal" },
        ])
        .output()
        .expect("spawn rss child");
    assert!(
        out.status.success(),
        "rss child failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rss = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("rss number");
    (rss, started.elapsed())
}

fn tempdir() -> tempfile::TempDir {
    match std::env::var_os("FERRY_BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(d),
        None => tempfile::tempdir(),
    }
    .expect("temp dir")
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--rss-child") {
        let events = args[3].parse().expect("events");
        rss_child(Path::new(&args[2]), events, args[4] == "raw");
        return;
    }
    let secs = env_u64("FERRY_BENCH_SECS", 2);
    let rss_events = env_u64("FERRY_BENCH_RSS_EVENTS", 10_000_000);
    println!("journal benchmark: {secs} s per measurement; ratio = journal / raw file doing the same job\n");
    println!(
        "{:<8} {:>6} {:>7} {:>5} | {:>12} {:>9} | {:>12} {:>9} | {:>6}",
        "fsync", "value", "batch", "appdr", "journal ev/s", "MiB/s", "raw ev/s", "MiB/s", "ratio"
    );
    let policies = [
        (PersistPolicy::EveryBatch, 1u32),
        (PersistPolicy::Interval(Duration::from_millis(10)), 16),
        (PersistPolicy::Never, 1),
    ];
    let mut read_dir = None;
    for (policy, appenders) in policies {
        for value_bytes in [128usize, 4096] {
            for batch in [1usize, 100, 1000] {
                // FERRY_BENCH_ONLY=batch/128/1000 runs one configuration (for profiling).
                let name = format!("{policy}/{value_bytes}/{batch}");
                if std::env::var("FERRY_BENCH_ONLY").is_ok_and(|o| o != name) {
                    continue;
                }
                let dir = tempdir();
                let j = journal_append(
                    &dir.path().join("j"),
                    policy,
                    value_bytes,
                    batch,
                    appenders,
                    secs,
                );
                let r = raw_append(&dir.path().join("raw"), policy, value_bytes, batch, secs);
                let (jr, rr) = (rate(j.events, j.elapsed), rate(r.events, r.elapsed));
                println!(
                    "{:<8} {:>6} {:>7} {:>5} | {:>12.0} {:>9.1} | {:>12.0} {:>9.1} | {:>6.2}",
                    policy.to_string(),
                    value_bytes,
                    batch,
                    appenders,
                    jr,
                    mib(j.bytes) / j.elapsed.as_secs_f64(),
                    rr,
                    mib(r.bytes) / r.elapsed.as_secs_f64(),
                    jr / rr
                );
                if policy == PersistPolicy::Never && value_bytes == 128 && batch == 1000 {
                    read_dir = Some(dir);
                }
            }
        }
    }
    if let Some(dir) = read_dir {
        let j = journal_read(&dir.path().join("j"));
        let r = raw_read(&dir.path().join("raw"));
        println!(
            "\nread 128 B events (decode + checksum): journal {:.0} ev/s ({} events), raw file {:.0} ev/s ({} events), ratio {:.2}",
            rate(j.events, j.elapsed),
            j.events,
            rate(r.events, r.elapsed),
            r.events,
            rate(j.events, j.elapsed) / rate(r.events, r.elapsed)
        );
    }
    if rss_events > 0 {
        let (jr, jt) = run_rss(rss_events, false);
        let (rr, rt) = run_rss(rss_events, true);
        println!(
            "\npeak RSS appending {rss_events} events of 128 B (batches of 1000, fsync per batch): journal {:.0} MiB in {:.0} s, raw file {:.0} MiB in {:.0} s (goal: journal under 256 MiB)",
            mib(jr),
            jt.as_secs_f64(),
            mib(rr),
            rt.as_secs_f64()
        );
    }
}
