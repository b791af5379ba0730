//! Bolt benchmark: reading every key of a large Bolt file with Ferry's
//! reader against the Go bbolt library iterating the same file in the same
//! run, and the cost of change detection per committed transaction on that
//! file while bbolt commits small transactions.
//!
//! Run: `cargo bench -p ferry-benches --bench bolt`
//! Env: `FERRY_BENCH_BOLT_MB` (file size, default 256; the goal figure is
//!      1024), `FERRY_BENCH_DIR` (where the file goes, default
//!      /var/tmp; the file is kept and reused across runs),
//!      `FERRY_BENCH_BOLT_TXS` (small transactions, default 300, one every
//!      20 ms: about the tailer's poll interval).
//!
//! Both readers run on a warm page cache (the file is read once first),
//! three times each; the best time counts. Both visit every entry of every
//! bucket without copying it (bbolt's cursor, Ferry's `Snapshot::visit`)
//! and sum key and value lengths. bbolt maps the file and copies nothing;
//! Ferry (no `unsafe`, so no mmap) copies every page out of the page cache
//! with `pread`, on helper threads (one per core, up to 4) once the walk
//! is large: the ratio depends on free cores (see crates/bolt/README.md).

#[path = "../tests/bolt-fixture/fixture.rs"]
mod fixture;

use ferry_benches::{mib, peak_rss_bytes, rate, rss_bytes};
use ferry_bolt::{BoltError, BoltFile, ChangeTracker};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn warm(path: &Path) {
    let mut f = std::fs::File::open(path).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    while f.read(&mut buf).unwrap() > 0 {}
}

fn rust_read(path: &Path) -> (u64, u64, Duration) {
    let start = Instant::now();
    let file = BoltFile::open(path).unwrap();
    let snap = file.snapshot().unwrap();
    let mut bytes = 0u64;
    let n = snap
        .visit(&mut |_, k, v| bytes += (k.len() + v.map_or(0, <[u8]>::len)) as u64)
        .unwrap();
    (n, bytes, start.elapsed())
}

fn go_read(bin: &Path, path: &Path) -> (u64, u64, Duration) {
    let r = fixture::run(bin, "iterate", path, &[]);
    (
        fixture::field(&r, "entries"),
        fixture::field(&r, "bytes"),
        Duration::from_nanos(fixture::field(&r, "elapsed_ns")),
    )
}

fn main() {
    let Some(bin) = fixture::program() else {
        return;
    };
    let mb = env_u64("FERRY_BENCH_BOLT_MB", 256);
    let txs = env_u64("FERRY_BENCH_BOLT_TXS", 300);
    let dir = std::env::var_os("FERRY_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp"));
    let path = dir.join(format!("ferry-bench-bolt-{mb}mb.db"));
    if !path.exists() {
        let t = Instant::now();
        let r = fixture::run(&bin, "big", &path, &["-mb", &mb.to_string()]);
        println!("made {} in {:.1?}: {r}", path.display(), t.elapsed());
    }
    let size = std::fs::metadata(&path).unwrap().len();
    warm(&path);

    // 1. Every key: Ferry's reader against bbolt.
    let mut best_rust = (0, 0, Duration::MAX);
    let mut best_go = (0, 0, Duration::MAX);
    for _ in 0..3 {
        let r = rust_read(&path);
        if r.2 < best_rust.2 {
            best_rust = r;
        }
        let g = go_read(&bin, &path);
        if g.2 < best_go.2 {
            best_go = g;
        }
    }
    assert_eq!(
        best_rust.0, best_go.0,
        "the readers saw different entry counts"
    );
    println!(
        "bolt read-all, file {:.0} MiB, {} entries:",
        mib(size),
        best_rust.0
    );
    println!(
        "  ferry  {:>8.1?}  {:>12.0} entries/s  {:>8.0} MiB/s",
        best_rust.2,
        rate(best_rust.0, best_rust.2),
        mib(size) / best_rust.2.as_secs_f64()
    );
    println!(
        "  bbolt  {:>8.1?}  {:>12.0} entries/s  {:>8.0} MiB/s",
        best_go.2,
        rate(best_go.0, best_go.2),
        mib(size) / best_go.2.as_secs_f64()
    );
    println!(
        "  ratio (bbolt time / ferry time): {:.2}x  (goal >= 1.0x)",
        best_go.2.as_secs_f64() / best_rust.2.as_secs_f64()
    );
    println!("  peak RSS so far {:.0} MiB", mib(peak_rss_bytes()));

    // 2. Change detection per committed transaction. The file is copied so
    // the read benchmark's file stays as made.
    let live = dir.join(format!("ferry-bench-bolt-{mb}mb-live.db"));
    std::fs::copy(&path, &live).unwrap();
    let file = BoltFile::open(&live).unwrap();
    let rss0 = rss_bytes();
    let t = Instant::now();
    let mut tracker = ChangeTracker::index(&file).unwrap();
    println!(
        "change tracker: first read {:.1?}, {} pages summarized, RSS +{:.0} MiB",
        t.elapsed(),
        tracker.pages(),
        mib(rss_bytes().saturating_sub(rss0))
    );
    let mut writer = std::process::Command::new(&bin)
        .arg("smalltx")
        .arg(&live)
        .args(["-txs", &txs.to_string(), "-nosync", "-pause", "20ms"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (mut diffs, mut adjacent, mut covered, mut pages, mut moved) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut busy = Duration::ZERO;
    let mut adjacent_busy = Duration::ZERO;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        assert!(
            Instant::now() < deadline,
            "the writer did not finish in 10 minutes"
        );
        let exited = writer.try_wait().unwrap().is_some();
        let from = tracker.txid();
        let t = Instant::now();
        match tracker.poll(&file) {
            Ok(Some(d)) => {
                let spent = t.elapsed();
                busy += spent;
                diffs += 1;
                covered += d.to - from;
                pages += d.pages_read;
                if d.adjacent {
                    adjacent += 1;
                    adjacent_busy += spent;
                }
            }
            Ok(None) if exited => break,
            Ok(None) => std::thread::sleep(Duration::from_micros(100)),
            Err(BoltError::Moved { .. }) => moved += 1,
            Err(e) => panic!("{e}"),
        }
    }
    println!(
        "change detection, {covered} transactions of one overwrite each on the {:.0} MiB file:",
        mib(size)
    );
    println!(
        "  {diffs} diffs ({adjacent} of one transaction), {moved} reads overtaken by the writer"
    );
    println!(
        "  per committed transaction: {:.1} us, {:.1} pages read",
        busy.as_secs_f64() * 1e6 / covered.max(1) as f64,
        pages as f64 / covered.max(1) as f64
    );
    if adjacent > 0 {
        println!(
            "  per one-transaction diff: {:.1} us",
            adjacent_busy.as_secs_f64() * 1e6 / adjacent as f64
        );
    }
    let _ = std::fs::remove_file(&live);
}
