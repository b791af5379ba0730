//! etcd benchmark, one run against the same data (SPEC section 10):
//!
//! 1. Initial copy of 200,000 keys of 256 B: Ferry (the release `ferry`
//!    binary, start to "every shard streaming, lag 0") versus
//!    `etcdctl make-mirror` (Debian etcd-client; puts keys one at a time)
//!    versus the target's own ceiling: the same keys written directly in
//!    full transactions (128 ops) from 8 concurrent clients.
//! 2. Streaming: replication lag, source put to key visible on the target
//!    (a watch on the target), p50 and p99, while 16 clients write as fast
//!    as the source takes.
//! 3. Cutover under that load: the read-only window (source made read-only
//!    to target writable, from the recorded proof), median and p99 over
//!    several cutovers.
//!
//! Run: `cargo build --release -p ferry-cli && cargo bench -p ferry-benches --bench etcd`
//! Env: `FERRY_BENCH_KEYS` (200000), `FERRY_BENCH_CUTOVERS` (5),
//!      `FERRY_BENCH_MIRROR_SECS` (60: make-mirror is given this long).

use etcd_client::{EventType, Txn, TxnOp, WatchOptions};
use ferry_benches::etcd_run::*;
use ferry_testkit::Etcd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The target's ceiling: the same keys, full transactions, 8 clients.
async fn direct(ep: &str, prefix: &str, n: u64) -> Duration {
    let started = Instant::now();
    let per = n.div_ceil(8);
    let mut tasks = Vec::new();
    for w in 0..8u64 {
        let mut c = connect(ep, None).await;
        let prefix = prefix.to_string();
        tasks.push(tokio::spawn(async move {
            let (from, to) = (w * per, ((w + 1) * per).min(n));
            let mut i = from;
            while i < to {
                let ops: Vec<TxnOp> = (i..(i + 128).min(to))
                    .map(|k| TxnOp::put(format!("{prefix}/k{k:07}"), value(k), None))
                    .collect();
                i += ops.len() as u64;
                c.txn(Txn::new().and_then(ops)).await.expect("txn");
            }
        }));
    }
    for t in tasks {
        t.await.expect("direct writer");
    }
    started.elapsed()
}

/// make-mirror until it copied everything or `limit` passed; (keys, time).
async fn make_mirror(src: &str, tgt: &str, n: u64, limit: Duration) -> (i64, Duration) {
    let mut child = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args([
            "--endpoints",
            src,
            "make-mirror",
            "--prefix",
            "bench/",
            "--dest-prefix",
            "mirror/",
            tgt,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("etcdctl make-mirror (Debian etcd-client)");
    let mut c = connect(tgt, None).await;
    let started = Instant::now();
    let mut copied = 0;
    while started.elapsed() < limit {
        copied = count(&mut c, "mirror/").await;
        if copied as u64 >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let elapsed = started.elapsed();
    let _ = child.kill();
    let _ = child.wait();
    (copied, elapsed)
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// 16 writers putting timestamped keys as fast as the source takes, while a
/// watch on the target records put-to-visible latency. Returns (puts/s, latencies µs).
async fn streaming_lag(
    src: &str,
    src_user: Option<(&str, &str)>,
    tgt: &str,
    secs: u64,
) -> (f64, Vec<u64>) {
    let mut watcher = connect(tgt, None).await;
    let mut stream = watcher
        .watch("copy/live/", Some(WatchOptions::new().with_prefix()))
        .await
        .expect("watch");
    let stop = Arc::new(AtomicBool::new(false));
    let puts = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..16u64 {
        let mut c = connect(src, src_user).await;
        let (stop, puts) = (Arc::clone(&stop), Arc::clone(&puts));
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) && i < 1_000_000 {
                let key = format!("bench/live/w{w}-{i}");
                if c.put(key, now_us().to_string(), None).await.is_ok() {
                    puts.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
            }
        }));
    }
    let mut lat = Vec::new();
    let started = Instant::now();
    let end = started + Duration::from_secs(secs);
    while Instant::now() < end {
        let Ok(Some(Ok(resp))) = tokio::time::timeout(Duration::from_millis(200), stream.message())
            .await
            .map(|r| r.transpose())
        else {
            continue;
        };
        let t = now_us();
        for ev in resp.events() {
            if ev.event_type() == EventType::Put {
                if let Some(kv) = ev.kv() {
                    if let Ok(sent) = kv.value_str().unwrap_or("").parse::<u64>() {
                        lat.push(t.saturating_sub(sent));
                    }
                }
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    (
        puts.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64(),
        lat,
    )
}

fn pct(v: &mut [u64], p: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let n = env_u64("FERRY_BENCH_KEYS", 200_000);
    let cutovers = env_u64("FERRY_BENCH_CUTOVERS", 5);
    let mirror_secs = env_u64("FERRY_BENCH_MIRROR_SECS", 60);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let src = Etcd::start().expect("source etcd");
    let tgt = Etcd::start().expect("target etcd");
    let (se, te) = (src.endpoint(), tgt.endpoint());
    println!("etcd benchmark: {n} keys of 256 B; etcd 3.4 on loopback; 2 cores\n");
    rt.block_on(async {
        let mut c = connect(&se, None).await;
        load(&mut c, "bench", n).await;
    });

    // 1a. The target's ceiling.
    let d = rt.block_on(direct(&te, "direct", n));
    let ceiling = n as f64 / d.as_secs_f64();
    println!(
        "direct txns (8 clients x 128 ops): {n} keys in {:.2} s = {ceiling:.0} keys/s",
        d.as_secs_f64()
    );

    // 1b. Ferry.
    let f = FerryRun::new();
    let started = Instant::now();
    f.start(
        &src.url("bench/"),
        &tgt.url("copy/"),
        &["--source.read-only=external"],
    );
    f.wait_caught_up(Duration::from_secs(1800));
    let fd = started.elapsed();
    let done_ms = now_us() / 1000;
    let ferry_rate = n as f64 / fd.as_secs_f64();
    println!("ferry initial copy: {n} keys in {:.2} s = {ferry_rate:.0} keys/s (`ferry start` to every shard streaming with lag 0: pre-checks, agent start-up, snapshot, apply)", fd.as_secs_f64());
    // The copy itself: from the agent's start to caught up.
    let agent_started_ms = f
        .status()
        .and_then(|s| s["started_at_ms"].as_u64())
        .unwrap_or(0);
    let copy_s = done_ms.saturating_sub(agent_started_ms) as f64 / 1000.0;
    let copy_rate = n as f64 / copy_s.max(1e-3);
    println!(
        "ferry copy phase alone (agent start to caught up): {copy_s:.2} s = {copy_rate:.0} keys/s"
    );

    // 2. Streaming lag while the source is written as fast as it takes.
    let (put_rate, mut lat) = rt.block_on(streaming_lag(&se, None, &te, 15));
    println!(
        "streaming at {put_rate:.0} puts/s from 16 clients: lag put-to-visible p50 {:.1} ms, p99 {:.1} ms ({} samples)",
        pct(&mut lat, 0.5) as f64 / 1000.0,
        pct(&mut lat, 0.99) as f64 / 1000.0,
        lat.len()
    );
    println!(
        "where the time went inside the agent (captured: the event read from the source's watch):\n{}",
        pipeline_stages(f.port)
    );
    f.abort();
    std::thread::sleep(Duration::from_secs(6));

    // 1c. make-mirror, given at most `mirror_secs`.
    let (copied, md) = rt.block_on(make_mirror(&se, &te, n, Duration::from_secs(mirror_secs)));
    let mirror_rate = copied as f64 / md.as_secs_f64();
    println!(
        "etcdctl make-mirror: {copied} keys in {:.2} s = {mirror_rate:.0} keys/s",
        md.as_secs_f64()
    );
    println!(
        "\nratios: ferry / make-mirror = {:.1}x (goal >= 10x); ferry / direct ceiling = {:.2} end to end, {:.2} for the copy phase (goal >= 0.8)",
        ferry_rate / mirror_rate.max(1e-9),
        ferry_rate / ceiling,
        copy_rate / ceiling
    );

    // 3. Cutover windows under write load (auth source: its writers are refused at read-only).
    let mut windows = Vec::new();
    for round in 0..cutovers {
        let src = Etcd::start().expect("etcd");
        let tgt = Etcd::start().expect("etcd");
        rt.block_on(async {
            let mut c = connect(&src.endpoint(), None).await;
            load(&mut c, "bench", 10_000).await;
            enable_auth(&mut c, "bench").await;
        });
        let f = FerryRun::new();
        f.start(
            &format!("etcd://root:rootpw@{}/bench/", src.endpoint()),
            &tgt.url("copy/"),
            &[],
        );
        f.wait_caught_up(Duration::from_secs(300));
        let stop = Arc::new(AtomicBool::new(false));
        let load_task = write_load(&rt, src.endpoint(), "bench", Arc::clone(&stop));
        std::thread::sleep(Duration::from_secs(2));
        let proof = f.stop();
        stop.store(true, Ordering::Relaxed);
        let _ = rt.block_on(load_task);
        let w = proof["read_only_window_ms"].as_u64().unwrap_or(0);
        println!("cutover {round}: read-only window {w} ms");
        windows.push(w);
    }
    if !windows.is_empty() {
        let med = pct(&mut windows.clone(), 0.5);
        let p99 = pct(&mut windows, 0.99);
        println!("cutover read-only window over {cutovers} runs under write load: median {med} ms, p99 {p99} ms (goal p99 < 1000 ms)");
    }
}
