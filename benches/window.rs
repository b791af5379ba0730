//! The cutover's read-only window as the data grows, with continuous
//! verification, against the window that verifies everything inside it,
//! in one run.
//!
//! For each size: `N` etcd keys of 256 B on a source with auth (Ferry makes
//! it read-only by revoking its writers), copied by `ferry start`; once
//! every shard streams and the continuous verifier holds every range
//! verified, a writer keeps changing 5,000 keys for 2 s, then `ferry stop`
//! cuts over: the window is the proof's `read_only_window_ms`, and the
//! proof says how many ranges and keys were compared inside it. The
//! baseline is the same cutover with `--verify.rate 0` (every key compared
//! inside the window), at the sizes in `FERRY_BENCH_WINDOW_FULL`.
//!
//! MongoDB the same way, against real mongod 7.0 servers (the testkit's):
//! `N` documents of about 150 B in `app.docs`, read-only through
//! `setUserWriteBlockMode`, a writer updating 5,000 of them during the 2 s.
//!
//! Run: `cargo build --release -p ferry-cli && cargo bench -p ferry-benches --bench window`
//! Env: `FERRY_BENCH_WINDOW_SIZES` (10000,100000,1000000),
//!      `FERRY_BENCH_WINDOW_FULL` (10000,100000), `FERRY_BENCH_WINDOW_RUNS` (3),
//!      `FERRY_BENCH_WINDOW_MONGO_SIZES` (100000,1000000),
//!      `FERRY_BENCH_WINDOW_MONGO_FULL` (100000); an empty list skips a part.

use ferry_benches::etcd_run::*;
use ferry_testkit::{Etcd, Mongod};
use mongodb::bson::{doc, Document};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn sizes(name: &str, default: &str) -> Vec<u64> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_string())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

struct Cutover {
    window_ms: u64,
    compared_keys: u64,
    compared_ranges: u64,
    ranges: u64,
    verify_secs: f64,
    keys_read: u64,
    /// The proof's phases of the window, ms.
    phases: String,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Store {
    Etcd,
    MongoDb,
}

fn cutover(rt: &tokio::runtime::Runtime, store: Store, n: u64, continuous: bool) -> Cutover {
    match store {
        Store::Etcd => etcd_cutover(rt, n, continuous),
        Store::MongoDb => mongo_cutover(rt, n, continuous),
    }
}

fn rate(continuous: bool) -> &'static str {
    if continuous {
        "50000"
    } else {
        "0"
    }
}

fn etcd_cutover(rt: &tokio::runtime::Runtime, n: u64, continuous: bool) -> Cutover {
    let src = Etcd::start().expect("etcd");
    let tgt = Etcd::start().expect("etcd");
    rt.block_on(async {
        let mut c = connect(&src.endpoint(), None).await;
        load(&mut c, "bench", n).await;
        enable_auth(&mut c, "bench").await;
    });
    let f = FerryRun::new();
    f.start(
        &format!("etcd://root:rootpw@{}/bench/", src.endpoint()),
        &tgt.url("copy/"),
        &["--verify.rate", rate(continuous)],
    );
    let stop = Arc::new(AtomicBool::new(false));
    let endpoint = src.endpoint();
    measure(
        &f,
        continuous,
        || write_load(rt, endpoint.clone(), "bench", Arc::clone(&stop)),
        &stop,
        rt,
    )
}

fn mongo_cutover(rt: &tokio::runtime::Runtime, n: u64, continuous: bool) -> Cutover {
    let src = Mongod::start().expect("mongod");
    let tgt = Mongod::start().expect("mongod");
    let uri = src.uri();
    rt.block_on(async {
        let c = mongodb::Client::with_uri_str(&uri).await.expect("connect");
        let coll = c.database("app").collection::<Document>("docs");
        let mut i = 0i64;
        while i < n as i64 {
            let docs: Vec<Document> = (i..(i + 1000).min(n as i64))
                .map(|j| doc! {"_id": j, "name": format!("user-{j}"), "n": 0i64, "tags": ["a", "b"], "nested": {"x": j as f64, "y": "some text of a typical size"}})
                .collect();
            i += docs.len() as i64;
            coll.insert_many(docs).await.expect("insert");
        }
    });
    let f = FerryRun::new();
    f.start(
        &format!("{}/app", src.uri()),
        &format!("{}/app", tgt.uri()),
        &["--verify.rate", rate(continuous)],
    );
    let stop = Arc::new(AtomicBool::new(false));
    measure(
        &f,
        continuous,
        || {
            let (uri, stop) = (uri.clone(), Arc::clone(&stop));
            rt.spawn(async move {
                // Updates of `_id` 0…4999 until stopped (at most ten million);
                // once the source is read-only they fail and go on.
                let c = mongodb::Client::with_uri_str(&uri).await.expect("connect");
                let coll = c.database("app").collection::<Document>("docs");
                let mut i = 0i64;
                while !stop.load(Ordering::Relaxed) && i < 10_000_000 {
                    let _ = coll
                        .update_one(doc! {"_id": i % 5000}, doc! {"$inc": {"n": 1i64}})
                        .await;
                    i += 1;
                }
            })
        },
        &stop,
        rt,
    )
}

/// Once `f` caught up (and with `continuous`, its verifier's first pass
/// is done): the cutover under the load `writer` starts.
fn measure(
    f: &FerryRun,
    continuous: bool,
    writer: impl FnOnce() -> tokio::task::JoinHandle<()>,
    stop: &AtomicBool,
    rt: &tokio::runtime::Runtime,
) -> Cutover {
    f.wait_caught_up(Duration::from_secs(1800));
    let t = Instant::now();
    let mut keys_read = 0;
    if continuous {
        // Until the verifier holds every range verified (its first pass).
        let deadline = Instant::now() + Duration::from_secs(3600);
        loop {
            assert!(
                Instant::now() < deadline,
                "the verifier never finished a pass"
            );
            if let Some(s) = f.status() {
                let v = &s["verification"][0];
                keys_read = v["keys_read"].as_u64().unwrap_or(0);
                if v["ranges"].as_u64().unwrap_or(0) > 0 && v["verified"] == v["ranges"] {
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let verify_secs = t.elapsed().as_secs_f64();
    let load_task = writer();
    std::thread::sleep(Duration::from_secs(2));
    let proof = f.stop();
    stop.store(true, Ordering::Relaxed);
    let _ = rt.block_on(load_task);
    let w = proof["window_checks"]
        .as_object()
        .and_then(|m| m.values().next().cloned())
        .unwrap_or_default();
    Cutover {
        window_ms: proof["read_only_window_ms"].as_u64().unwrap_or(0),
        compared_keys: proof["verified_keys"].as_u64().unwrap_or(0),
        compared_ranges: w["compared_ranges"].as_u64().unwrap_or(0),
        ranges: w["ranges"].as_u64().unwrap_or(0),
        verify_secs,
        keys_read,
        phases: proof["window_phases_ms"].to_string(),
    }
}

fn pct(v: &[u64], p: f64) -> u64 {
    let mut v = v.to_vec();
    v.sort_unstable();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let runs = env_u64("FERRY_BENCH_WINDOW_RUNS", 3).max(1);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut rows = Vec::new();
    for (store, continuous, list) in [
        (
            Store::Etcd,
            true,
            sizes("FERRY_BENCH_WINDOW_SIZES", "10000,100000,1000000"),
        ),
        (
            Store::Etcd,
            false,
            sizes("FERRY_BENCH_WINDOW_FULL", "10000,100000"),
        ),
        (
            Store::MongoDb,
            true,
            sizes("FERRY_BENCH_WINDOW_MONGO_SIZES", "100000,1000000"),
        ),
        (
            Store::MongoDb,
            false,
            sizes("FERRY_BENCH_WINDOW_MONGO_FULL", "100000"),
        ),
    ] {
        for n in list {
            let mut windows = Vec::new();
            let mut last = None;
            for _ in 0..runs {
                let c = cutover(&rt, store, n, continuous);
                println!(
                    "{} {n}, {}: window {} ms {}, compared inside it {} keys ({} of {} ranges); first verifier pass {:.1} s, {} keys read",
                    name(store),
                    if continuous { "continuous" } else { "all inside the window" },
                    c.window_ms, c.phases, c.compared_keys, c.compared_ranges, c.ranges, c.verify_secs, c.keys_read
                );
                windows.push(c.window_ms);
                last = Some(c);
            }
            rows.push((
                store,
                n,
                continuous,
                pct(&windows, 0.5),
                pct(&windows, 0.99),
                last,
            ));
        }
    }
    println!("\n| store | keys or documents | verification | window median | window p99 | compared inside | verifier ranges (memory ≈ 100 B + key each) | first pass: keys read (cut + both sides), done this long after catching up |");
    println!("|---|---|---|---|---|---|---|---|");
    for (store, n, continuous, med, p99, last) in &rows {
        let c = last.as_ref().expect("one run");
        println!(
            "| {} | {n} | {} | {med} ms | {p99} ms | {} | {} | {} |",
            name(*store),
            if *continuous {
                "continuous"
            } else {
                "all inside the window"
            },
            c.compared_keys,
            if *continuous {
                c.ranges.to_string()
            } else {
                "-".into()
            },
            if *continuous && c.verify_secs > 0.0 {
                format!("{:.0} keys/s", c.keys_read as f64 / c.verify_secs)
            } else {
                "-".into()
            },
        );
    }
    let p99 = |store: Store, n: u64, cont: bool| {
        rows.iter()
            .find(|r| r.0 == store && r.1 == n && r.2 == cont)
            .map(|r| r.4)
    };
    if let (Some(small), Some(big)) = (
        p99(Store::Etcd, 10_000, true),
        rows.iter()
            .filter(|r| r.0 == Store::Etcd && r.2)
            .map(|r| r.4)
            .next_back(),
    ) {
        println!("\netcd: largest size's p99 window / 10k's: {:.2}x (goal ≤ 1.5x); goal p99 < 250 ms at every size", big as f64 / small.max(1) as f64);
    }
    if let (Some(small), Some(big)) = (
        p99(Store::MongoDb, 100_000, true),
        rows.iter()
            .filter(|r| r.0 == Store::MongoDb && r.2)
            .map(|r| r.4)
            .next_back(),
    ) {
        println!(
            "MongoDB: largest size's p99 window / 100k's: {:.2}x",
            big as f64 / small.max(1) as f64
        );
    }
    for (store, n) in [
        (Store::Etcd, 10_000),
        (Store::Etcd, 100_000),
        (Store::MongoDb, 100_000),
    ] {
        if let (Some(c), Some(f)) = (p99(store, n, true), p99(store, n, false)) {
            println!("{} {n}: continuous p99 {c} ms against {f} ms verifying everything inside the window ({:.2}x)", name(store), c as f64 / f.max(1) as f64);
        }
    }
}

fn name(store: Store) -> &'static str {
    match store {
        Store::Etcd => "etcd",
        Store::MongoDb => "MongoDB",
    }
}
